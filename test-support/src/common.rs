//! Shared helpers for the end-to-end tests: a reporter that hands every period's model to the
//! test, and a lock that keeps runtime-initialising tests of one binary from overlapping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use stardust_runtime::{Reporter, TraceModel};

static SERIAL: Mutex<()> = Mutex::new(());

/// Only one test of a binary may run the (process-global) runtime at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads that run until told to stop, and are told to stop and joined when this is dropped:
/// a test that fails (panics) while they run does not leave them running into the next test
/// of its binary, where their spans would land in that test's counts.
///
/// ```no_run
/// # use stardust_test_support::common::Workers;
/// let mut workers = Workers::new();
/// for _ in 0..4 {
///     workers.spawn(|stop| {
///         while !stop.load(std::sync::atomic::Ordering::Relaxed) { /* traced calls */ }
///     });
/// }
/// // ... assertions: a panic here stops and joins the workers on unwind ...
/// workers.stop(); // or drop(workers); `stop` also re-raises a worker's panic
/// ```
#[derive(Default)]
pub struct Workers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a thread running `body`, which should return soon after the flag it gets is set.
    pub fn spawn(&mut self, body: impl FnOnce(&AtomicBool) + Send + 'static) {
        let stop = self.stop.clone();
        self.handles.push(std::thread::spawn(move || body(&stop)));
    }

    /// Sets the stop flag and joins every thread; a worker's panic is raised here.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The running test binary as a command that runs only its ignored test `entry`, alone and
/// with its output shown: how a test starts a helper process of its own (set the environment
/// the entry reads, then spawn).
pub fn child_test(entry: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([
        "--exact",
        entry,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}

/// A child process (a test binary re-run as a helper process) that is killed and reaped when
/// dropped: a failing test leaves no process behind, and a thread reading its output ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` has passed; returns whether it held.
/// For waiting on a condition itself rather than sleeping a guessed time: give a generous
/// timeout, as a loaded 2-core CI machine may be many times slower than a workstation.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends each report to the test.
pub struct Capture(pub Sender<TraceModel>);

impl Reporter for Capture {
    fn report(&mut self, model: &TraceModel) {
        let _ = self.0.send(model.clone());
    }
}

/// A future that returns `Pending` once (waking itself), then `Ready`: an `.await` that
/// really suspends.
pub fn yield_once() -> impl std::future::Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
}

/// The wall clock, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

pub fn capture() -> (Capture, Receiver<TraceModel>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (Capture(tx), rx)
}

/// Every model received so far, merged by builder name is up to the caller.
pub fn drain(rx: &Receiver<TraceModel>) -> Vec<TraceModel> {
    let mut out = Vec::new();
    while let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
        out.push(m);
    }
    out
}

/// Peak resident set of this process (VmHWM), kB; 0 where /proc is not available.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Sets this process's peak resident set (VmHWM) back to its current resident set, so that
/// [`peak_rss_kb`] measures from now; does nothing where /proc does not allow it.
pub fn reset_peak_rss() {
    // "5" resets the peak (Linux 4.0 and later).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Starts the runtime with `config` plus a capturing reporter; the first automatic cut is an
/// hour away, so the test cuts periods with `flush()`.
pub fn start(config: stardust_runtime::Config) -> (stardust_runtime::Guard, Receiver<TraceModel>) {
    let (capture, rx) = capture();
    let guard = stardust_runtime::init_with(
        config
            .reporter(capture)
            .first_report_delay(Duration::from_secs(3600)),
    )
    .expect("init");
    (guard, rx)
}

/// Every `stardust` log line of this test binary (once [`capture_logs`] installed the
/// logger), also echoed to stderr.
static LOG_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CaptureLog;

impl log::Log for CaptureLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("stardust")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}: {}", r.level(), r.target(), r.args());
            eprintln!("{line}");
            LOG_LINES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    }
    fn flush(&self) {}
}

/// Installs a logger (once per test binary, at debug level) that keeps every `stardust` line
/// for [`log_lines`].
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CaptureLog).expect("logger");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// The lines kept so far.
pub fn log_lines() -> Vec<String> {
    LOG_LINES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Forgets the lines kept so far.
pub fn clear_log_lines() {
    LOG_LINES.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
