//! How many spans per second the aggregator thread absorbs, and what happens under overload.
//! Public API only: nothing here reaches into the runtime.
//!
//! - `absorb/<P> producers` (criterion): P threads each make their share of 2^20 spans as fast
//!   as they can — roots of 256 spans (a root and 255 `#[trace]` children, so each closes one
//!   full thread-local batch) — then `flush()` waits until the aggregator has counted every one
//!   and the reporter has seen the period. Elements = spans, so criterion's throughput is spans
//!   per second absorbed end to end (made, batched, sent, aggregated, reported). A counting
//!   `Reporter` checks that every span made was counted (`handoff_capacity(4096 * 256)`: deep enough
//!   for no drops).
//! - Summary runs (printed at the end): the same with a long burst, split into the time the
//!   producers took and the drain tail after they stopped; then overload — the default
//!   `handoff_capacity` (65,536) and `handoff_capacity(256)`, two producers flat out with 16-span
//!   roots — with
//!   made, counted and dropped, where dropped is both `made − counted` and the exact total the
//!   runtime logs at shutdown (`log` warning), which must agree: drops are counted, never
//!   silent. Peak RSS (VmHWM) is printed after each run.
//!
//! Reproduce: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench aggregator`
//!
//! Since #15, spans are counted on the thread that closes them and only sample candidates
//! travel to the aggregator: the absorb runs below now measure that path (a few records per
//! operation and period, the rest counted in place), and the overload runs drop no counts. The
//! figures below are from before that change; `benches/whole_process.rs` measures the whole
//! pipeline now.
//!
//! ## Results (2026-06, this machine)
//! Machine: AMD EPYC (family 26 model 2, Zen 5), KVM guest, 2 vCPUs (1 thread per core),
//! 24 GiB RAM; `nproc` = 2; rustc 1.95.0 (59807616e 2026-04-14); criterion 0.7.0.
//!
//! Commit of 2026-11-22 ~05:50 (mailboxes with early wake-up, Fx-hashed builder index),
//! shared machine (load ≈ 3):
//!
//! | run | made | counted | dropped (= logged) | absorbed end to end | aggregator CPU per span |
//! |---|---|---|---|---|---|
//! | criterion `absorb/2 producers` | 238,026,752 in all runs | all | 0 | 19.4 M spans/s | |
//! | 1 producer, capacity 4096 | 16,777,216 | all | 0 | 25.4 M spans/s | 13.7 ns (capacity 73 M/s) |
//! | 2 producers, capacity 4096 | 16,777,216 | all | 0 | 33.3 M spans/s | 13.7 ns |
//! | 2 producers, default capacity | 16,777,216 | 77.5 % | 22.5 % | 29.8 M spans/s | 13.1 ns |
//! | overload: 16-span roots, capacity 1 | 16,777,216 | 9.6 % | 90.4 % | — | — |
//!
//! Target ≥ 10 M spans/s absorbed: met (≈ 73 M/s of aggregator capacity, 25–33 M/s end to
//! end). Every drop is counted: `made − counted` equals the total the runtime logs. The
//! default capacity (64 Ki spans per thread) still drops under two producers flat out at
//! 38 M spans/s — a bound on memory by design. Peak RSS here includes the capacity-4096 runs
//! (1 Mi spans per thread buffered on purpose): 386 MiB; at the default capacity see
//! `examples/rss_soak.rs` (5.6 MiB).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use stardust_runtime::{Config, Reporter, TraceModel};

/// Spans per criterion iteration.
const BURST: u64 = 1 << 20;

#[stardust_runtime::trace("bench/agg-child")]
#[inline(never)]
fn child(x: u64) -> u64 {
    black_box(x).wrapping_mul(3)
}

/// Makes `roots` roots of `per_root` spans each (the root and `per_root - 1` children).
fn produce(roots: u64, per_root: u64) {
    for _ in 0..roots {
        let _root = stardust_runtime::span("bench/agg-root");
        let mut acc = 0u64;
        for i in 1..per_root {
            acc = acc.wrapping_add(child(i));
        }
        black_box(acc);
    }
}

/// Runs `produce` on `producers` threads at once; returns when all are done (their batches
/// sent: each thread's outermost span closed, and the thread exited).
fn produce_on(producers: u64, roots_per_thread: u64, per_root: u64) {
    std::thread::scope(|s| {
        for _ in 0..producers {
            s.spawn(move || produce(roots_per_thread, per_root));
        }
    });
}

/// Sums every reported builder's span count.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicU64>);

impl Reporter for Counting {
    fn report(&mut self, model: &TraceModel) {
        let n: u64 = model.builders.iter().map(|b| b.total.max(0) as u64).sum();
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Keeps the runtime's `log` messages, to read the exact dropped total it logs at shutdown.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        let _ = log::set_logger(c);
        log::set_max_level(log::LevelFilter::Warn);
        c
    })
}

/// The dropped total of the last shutdown message ("N spans were dropped …"), then clears.
fn take_logged_drops() -> u64 {
    let mut lines = capture().0.lock().unwrap_or_else(|e| e.into_inner());
    let n = lines
        .iter()
        .filter_map(|l| l.strip_prefix("stardust: "))
        .filter_map(|l| l.split_once(" spans were dropped").map(|(n, _)| n))
        .filter_map(|n| n.parse::<u64>().ok())
        .next_back()
        .unwrap_or(0);
    lines.clear();
    n
}

fn start(capacity: usize, counted: &Counting) -> stardust_runtime::Guard {
    stardust_runtime::init_with(
        Config::new()
            .console(false)
            .reporter(counted.clone())
            .handoff_capacity(capacity * 256),
    )
    .expect("runtime starts")
}

/// Peak resident set of this process, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time (user + system) the runtime's aggregator thread has used, in seconds, read from
/// /proc/self/task/*/stat (Linux; clock ticks of 10 ms). Divided into the spans it counted,
/// this is the drain capacity of the aggregator alone, whatever the producers' speed.
fn aggregator_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter(|stat| stat.contains("(stardust-aggreg"))
        .filter_map(|stat| {
            let rest: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
            let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .sum()
}

struct Run {
    label: String,
    made: u64,
    counted: u64,
    logged_drops: u64,
    produce: Duration,
    total: Duration,
    aggregator_cpu: f64,
}

impl Run {
    fn print(&self) {
        let dropped = self.made - self.counted.min(self.made);
        println!(
            "  {:<44} made {:>10}  counted {:>10}  dropped {:>9} ({:5.2}%, logged {:>9}{})",
            self.label,
            self.made,
            self.counted,
            dropped,
            100.0 * dropped as f64 / self.made as f64,
            self.logged_drops,
            if dropped == self.logged_drops {
                ", agree"
            } else {
                ", DISAGREE"
            },
        );
        println!(
            "  {:<44} producers {:>7.1} ms ({:>6.2} M spans/s made)  flushed at {:>7.1} ms ({:>6.2} M spans/s absorbed)  drain tail {:>6.1} ms  peak RSS {:.1} MiB",
            "",
            self.produce.as_secs_f64() * 1e3,
            self.made as f64 / self.produce.as_secs_f64() / 1e6,
            self.total.as_secs_f64() * 1e3,
            self.counted as f64 / self.total.as_secs_f64() / 1e6,
            (self.total - self.produce).as_secs_f64() * 1e3,
            peak_rss_mib(),
        );
        println!(
            "  {:<44} aggregator thread CPU {:>7.1} ms: {:>5.1} ns per span counted = capacity {:>6.1} M spans/s",
            "",
            self.aggregator_cpu * 1e3,
            self.aggregator_cpu * 1e9 / self.counted as f64,
            self.counted as f64 / self.aggregator_cpu / 1e6,
        );
    }
}

/// One summary run: its own runtime, `producers` threads × `roots` roots × `per_root` spans.
fn summary_run(label: &str, capacity: usize, producers: u64, roots: u64, per_root: u64) -> Run {
    let counted = Counting::default();
    let guard = start(capacity, &counted);
    let made = producers * roots * per_root;
    let t0 = Instant::now();
    produce_on(producers, roots, per_root);
    let produce = t0.elapsed();
    assert!(
        stardust_runtime::flush().is_ok(),
        "flush returns within its timeout"
    );
    let total = t0.elapsed();
    let aggregator_cpu = aggregator_cpu_secs();
    drop(guard);
    Run {
        label: label.to_owned(),
        made,
        counted: counted.0.load(Ordering::Relaxed),
        logged_drops: take_logged_drops(),
        produce,
        total,
        aggregator_cpu,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let test_mode = args.iter().any(|a| a == "--test");
    let list_mode = args.iter().any(|a| a == "--list");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let summary = !list_mode
        && std::env::var("STARDUST_BENCH_SUMMARY").map_or(true, |v| v != "0")
        && filter.is_none_or(|f| f.contains("summary"));
    capture();

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();

    {
        let counted = Counting::default();
        let guard = start(4096, &counted);
        let mut made = 0u64;
        let mut g = c.benchmark_group("absorb");
        g.throughput(Throughput::Elements(BURST));
        for producers in [1u64, 2] {
            g.bench_function(format!("{producers} producers"), |b| {
                b.iter_custom(|iters| {
                    let roots = BURST / 256 / producers;
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        produce_on(producers, roots, 256);
                    }
                    assert!(
                        stardust_runtime::flush().is_ok(),
                        "flush returns within its timeout"
                    );
                    made += iters * producers * roots * 256;
                    t0.elapsed()
                })
            });
        }
        g.finish();
        drop(guard);
        let counted = counted.0.load(Ordering::Relaxed);
        let logged = take_logged_drops();
        println!(
            "absorb (criterion runs): made {made}, counted {counted}, dropped {} (logged {logged})",
            made - counted.min(made)
        );
        assert_eq!(made, counted + logged, "every span is counted or dropped");
    }

    c.final_summary();
    if !summary {
        return;
    }
    let scale = if test_mode { 1 } else { 64 };
    println!("\nsummary (one runtime per run):");
    let runs = [
        // 2^24 spans at full speed into a deep channel: no drops expected.
        summary_run(
            "1 producer, 256-span roots, capacity 4096",
            4096,
            1,
            1024 * scale,
            256,
        ),
        summary_run(
            "2 producers, 256-span roots, capacity 4096",
            4096,
            2,
            512 * scale,
            256,
        ),
        // Defaults, flat out: does the default capacity keep up?
        summary_run(
            "2 producers, 256-span roots, default capacity",
            256,
            2,
            512 * scale,
            256,
        ),
        // Overload: small roots, the smallest hand-over capacity.
        summary_run(
            "overload: 2 producers, 16-span roots, capacity 1",
            1,
            2,
            8192 * scale,
            16,
        ),
    ];
    for r in &runs {
        r.print();
        assert_eq!(
            r.made,
            r.counted + r.logged_drops,
            "{}: every span is counted or dropped",
            r.label
        );
    }
}
