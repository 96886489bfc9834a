//! Memory stays bounded when the server is unreachable: produce spans at a fixed rate for a
//! while with `StarServer` pointing at a closed port on loopback, then print the peak resident
//! set (`VmHWM` from /proc/self/status) and fail (exit 1) above the bound.
//!
//! ```sh
//! cargo run --release --example rss_soak               # 5 s at 1 million spans/s (CI-sized)
//! cargo run --release --example rss_soak -- 60         # the issue's 60 s soak
//! cargo run --release --example rss_soak -- 60 2000000 # seconds, spans per second
//! ```
//!
//! `STARDUST_SOAK_SECS`, `STARDUST_SOAK_RATE` and `STARDUST_SOAK_MAX_MIB` (default 64) do the
//! same from the environment. Reports are cut every second, so the uploader keeps failing and
//! retrying against the closed port for the whole run. Linux only (reads /proc).

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stardust_runtime::{Config, trace};

#[trace("soak/load")]
#[inline(never)]
fn load(x: u64) -> u64 {
    black_box(x).wrapping_mul(3)
}

#[trace("soak/store", tag = "x={x}")] // tagged: the sampled spans carry a tag
#[inline(never)]
fn store(x: u64) -> Result<u64, String> {
    if x % 1000 == 999 {
        Err(format!("store {x} failed")) // some error samples too
    } else {
        Ok(black_box(x))
    }
}

/// Spans per root: the root and its children.
const PER_ROOT: u64 = 100;

fn request(i: u64) {
    let _root = stardust_runtime::span("soak/request");
    for k in 0..(PER_ROOT - 1) / 2 {
        black_box(load(k));
    }
    for k in 0..(PER_ROOT - 1) - (PER_ROOT - 1) / 2 {
        let _ = black_box(store(i * PER_ROOT + k));
    }
}

/// Prints the runtime's warnings to stderr (the first few; the rest are counted) and keeps the
/// dropped total it logs at shutdown.
struct Log {
    shown: AtomicU64,
    dropped: Mutex<Option<u64>>,
}

impl log::Log for Log {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = r.args().to_string();
        if let Some(n) = text
            .strip_prefix("stardust: ")
            .and_then(|t| t.split_once(" spans were dropped").map(|(n, _)| n))
            .and_then(|n| n.parse().ok())
        {
            *self.dropped.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
        }
        if self.shown.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("[{}] {text}", r.level());
        }
    }
    fn flush(&self) {}
}

static LOG: Log = Log {
    shown: AtomicU64::new(0),
    dropped: Mutex::new(None),
};

fn arg_or_env(index: usize, var: &str, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .or_else(|| std::env::var(var).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let secs = arg_or_env(1, "STARDUST_SOAK_SECS", 5).max(1);
    let rate = arg_or_env(2, "STARDUST_SOAK_RATE", 1_000_000).max(PER_ROOT);
    let max_mib = arg_or_env(3, "STARDUST_SOAK_MAX_MIB", 64) as f64;
    let _ = log::set_logger(&LOG);
    log::set_max_level(log::LevelFilter::Warn);

    // A port nobody listens on: bind one, note it, close it.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port();
    let server = format!("http://127.0.0.1:{closed_port}");
    let guard = stardust_runtime::init_with(
        Config::new()
            .server(server.as_str())
            .app_id("rss-soak")
            .request_timeout(Duration::from_millis(200))
            .period(Duration::from_secs(1))
            .first_report_delay(Duration::from_secs(1))
            .shutdown_timeout(Duration::from_secs(2)),
    )
    .expect("runtime starts");
    println!("rss_soak: {secs} s at {rate} spans/s, server {server} (closed), bound {max_mib} MiB");

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut made = 0u64;
    let mut roots = 0u64;
    let mut next_print = start + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now - start).as_nanos() as u64 * rate / 1_000_000_000;
        if made + PER_ROOT <= due {
            request(roots);
            roots += 1;
            made += PER_ROOT;
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
        if now >= next_print {
            next_print += Duration::from_secs(1);
            println!(
                "  t={:>3} s  spans {:>11}  VmRSS {:>6.1} MiB  VmHWM {:>6.1} MiB",
                (now - start).as_secs(),
                made,
                status_mib("VmRSS:"),
                status_mib("VmHWM:")
            );
        }
    }
    let elapsed = start.elapsed();
    let t = Instant::now();
    drop(guard);
    let shutdown = t.elapsed();

    let peak = status_mib("VmHWM:");
    let dropped = LOG
        .dropped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(0);
    println!(
        "spans made {made} in {:.2} s ({:.0} spans/s); dropped {dropped}; shutdown {:.0} ms; runtime warnings {}",
        elapsed.as_secs_f64(),
        made as f64 / elapsed.as_secs_f64(),
        shutdown.as_secs_f64() * 1e3,
        LOG.shown.load(Ordering::Relaxed)
    );
    println!("peak RSS (VmHWM): {peak:.1} MiB");
    if peak <= max_mib {
        println!("PASS: peak RSS {peak:.1} MiB <= {max_mib} MiB");
    } else {
        println!("FAIL: peak RSS {peak:.1} MiB > {max_mib} MiB");
        std::process::exit(1);
    }
}
