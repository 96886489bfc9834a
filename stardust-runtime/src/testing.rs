//! Testing instrumented code: record what a closure reports, in your own tests.
//!
//! The runtime is one per process, and cargo runs a binary's tests on parallel threads, so two
//! tests that each call `init_with` race for it (one of them gets
//! [`InitError::AlreadyInitialized`](crate::InitError::AlreadyInitialized)). [`record`] takes
//! a process-wide lock, starts the runtime with a reporter that keeps every report, runs the
//! closure, flushes, stops the runtime and hands back what was reported, as a [`Recorded`]:
//!
//! ```
//! use stardust_runtime::{testing, trace};
//!
//! #[trace("order/create")]
//! fn create(id: u64) -> Result<u64, String> {
//!     if id == 0 { Err("no order 0".into()) } else { Ok(id) }
//! }
//!
//! let rec = testing::record(|| {
//!     create(7).unwrap();
//!     create(0).unwrap_err();
//! });
//! assert_eq!(rec.count("order/create"), 2);
//! assert_eq!(rec.errors("order/create"), 1);
//! assert_eq!(rec.error_samples("order/create")[0].error.as_deref(), Some("no order 0"));
//! ```
//!
//! - Calls of `record` (and [`record_with`]) in one process run one at a time.
//! - Everything reported while the closure runs is recorded, from any thread: spans of threads
//!   the closure starts (join them before it returns), and also spans of other tests running
//!   traced code at the same time outside `record`. Keep every test that runs traced code
//!   inside `record`, or make it hold [`lock`] while it runs.
//! - A test that starts the runtime itself (`init_with`, to test its own configuration) holds
//!   [`lock`] while its `Guard` is alive; then it cannot race with `record`.
//! - By default up to 1000 spans per operation are kept as samples (with their trace and
//!   parent ids), enough to check the shape of traces.

use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::model::{SpanBuilderModel, SpanModel, TraceModel};
use crate::report::sink::Reporter;
use crate::runtime;

/// How long [`record`] waits for a runtime started elsewhere to stop.
const WAIT_FOR_OTHER_RUNTIME: Duration = Duration::from_secs(10);

/// Samples per operation kept by [`record`].
const SAMPLES: u32 = 1000;

struct Owner {
    thread: Option<ThreadId>,
    depth: usize,
}

static OWNER: Mutex<Owner> = Mutex::new(Owner {
    thread: None,
    depth: 0,
});
static FREED: Condvar = Condvar::new();

/// Holds the testing lock; dropping it releases it. See [`lock`].
#[must_use = "the lock is released when the guard is dropped"]
pub struct TestLock {
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for TestLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestLock")
    }
}

/// The process-wide lock that [`record`] takes: hold it in tests that start the runtime
/// themselves, so they never overlap with `record` or with each other. Re-entrant: a thread
/// that holds it may call [`record`] (and `lock`) again. Released when the guard is dropped,
/// also when the test panics.
pub fn lock() -> TestLock {
    let me = std::thread::current().id();
    let mut owner = OWNER.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match owner.thread {
            None => {
                owner.thread = Some(me);
                owner.depth = 1;
                break;
            }
            Some(t) if t == me => {
                owner.depth += 1;
                break;
            }
            Some(_) => owner = FREED.wait(owner).unwrap_or_else(|e| e.into_inner()),
        }
    }
    TestLock {
        _not_send: PhantomData,
    }
}

impl Drop for TestLock {
    fn drop(&mut self) {
        let mut owner = OWNER.lock().unwrap_or_else(|e| e.into_inner());
        owner.depth = owner.depth.saturating_sub(1);
        if owner.depth == 0 {
            owner.thread = None;
            FREED.notify_all();
        }
    }
}

/// Keeps every report.
struct Keep(Arc<Mutex<Vec<TraceModel>>>);

impl Reporter for Keep {
    fn report(&mut self, model: &TraceModel) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(model.clone());
    }
}

/// Runs `f` with the runtime started and returns what it reported. Takes [`lock`] for the
/// whole call; starts the runtime with defaults ([`Config::new`], no environment), no console,
/// up to 1000 samples and 1000 error samples per operation, and a reporter that keeps every
/// report; flushes after `f` and stops the runtime before returning.
///
/// # Panics
/// When the runtime cannot be started: another one is still running 10 s later (a `Guard`
/// alive outside `record`). A panic of `f` stops the runtime and propagates.
pub fn record(f: impl FnOnce()) -> Recorded {
    record_with(Config::new().max_samples(SAMPLES).max_errors(SAMPLES), f)
}

/// [`record`] with your configuration (sampling, tag length, excludes, ...). The report
/// period and first report delay are set to an hour, so that the only cuts are `record`'s own;
/// add no server unless the test is meant to report to it.
///
/// ```
/// use stardust_runtime::{Config, testing};
///
/// let rec = testing::record_with(Config::new().excludes(["health*"]), || {
///     drop(stardust_runtime::span("health/check"));
///     drop(stardust_runtime::span("order/create"));
/// });
/// assert_eq!(rec.names(), ["order/create"]);
/// ```
///
/// # Panics
/// As [`record`].
pub fn record_with(config: Config, f: impl FnOnce()) -> Recorded {
    let _lock = lock();
    let waited_until = Instant::now() + WAIT_FOR_OTHER_RUNTIME;
    while runtime::is_running() && Instant::now() < waited_until {
        std::thread::sleep(Duration::from_millis(5));
    }
    let kept = Arc::new(Mutex::new(Vec::new()));
    let config = config
        .reporter(Keep(kept.clone()))
        .period(Duration::from_secs(3600))
        .first_report_delay(Duration::from_secs(3600));
    let guard = match runtime::init_with(config) {
        Ok(g) => g,
        Err(e) => panic!(
            "stardust_runtime::testing::record: cannot start the runtime: {e} (a runtime \
             started outside `record` must be stopped first; tests that start their own \
             hold `testing::lock()`)"
        ),
    };
    f();
    if let Err(e) = guard.flush() {
        log::warn!("stardust: testing::record: flush: {e}; the shutdown reports the rest");
    }
    drop(guard); // reports what the flush did not see, and stops the threads
    let models = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
    Recorded { models }
}

/// What the runtime reported while [`record`] ran: the reports, and their operations merged
/// by name.
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    models: Vec<TraceModel>,
}

impl Recorded {
    /// Every report, as a reporter received them (usually one).
    pub fn models(&self) -> &[TraceModel] {
        &self.models
    }

    /// The operations, one per name (merged over the reports), sorted by name.
    pub fn builders(&self) -> Vec<SpanBuilderModel> {
        let mut out: Vec<SpanBuilderModel> = Vec::new();
        for b in self.models.iter().flat_map(|m| &m.builders) {
            match out.iter_mut().find(|o| o.name == b.name) {
                Some(o) => merge(o, b),
                None => out.push(b.clone()),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The operation `name`, merged over the reports; `None` when nothing of that name was
    /// reported.
    pub fn builder(&self, name: &str) -> Option<SpanBuilderModel> {
        self.builders().into_iter().find(|b| b.name == name)
    }

    /// The names of the operations, sorted.
    pub fn names(&self) -> Vec<String> {
        self.builders().into_iter().map(|b| b.name).collect()
    }

    /// Spans of the operation `name` (0 when there were none).
    pub fn count(&self, name: &str) -> u64 {
        self.of(name).map(|b| b.total.max(0) as u64).sum()
    }

    /// Spans of the operation `name` that carried an error.
    pub fn errors(&self, name: &str) -> u64 {
        self.of(name).map(|b| b.errors.max(0) as u64).sum()
    }

    /// The sampled spans of the operation `name` without an error, in the order reported.
    pub fn samples(&self, name: &str) -> Vec<&SpanModel> {
        self.of(name)
            .flat_map(|b| b.samples.iter().flatten())
            .collect()
    }

    /// The sampled spans of the operation `name` with an error, in the order reported.
    pub fn error_samples(&self, name: &str) -> Vec<&SpanModel> {
        self.of(name)
            .flat_map(|b| b.error_samples.iter().flatten())
            .collect()
    }

    /// Every sampled span, with or without an error, and its operation's name: to check the
    /// shape of traces (`trace_id`, `id`, `parent_id`).
    pub fn spans(&self) -> Vec<(&str, &SpanModel)> {
        self.models
            .iter()
            .flat_map(|m| &m.builders)
            .flat_map(|b| {
                let name = b.name.as_str();
                b.samples
                    .iter()
                    .flatten()
                    .chain(b.error_samples.iter().flatten())
                    .map(move |s| (name, s))
            })
            .collect()
    }

    /// The builders named `name`, one per report that had it.
    fn of(&self, name: &str) -> std::vec::IntoIter<&SpanBuilderModel> {
        let found: Vec<&SpanBuilderModel> = self
            .models
            .iter()
            .flat_map(|m| &m.builders)
            .filter(|b| b.name == name)
            .collect();
        found.into_iter()
    }
}

fn merge(into: &mut SpanBuilderModel, b: &SpanBuilderModel) {
    into.start_time = into.start_time.min(b.start_time);
    into.end_time = into.end_time.max(b.end_time);
    into.total = into.total.saturating_add(b.total);
    into.errors = into.errors.saturating_add(b.errors);
    into.cost = into.cost.saturating_add(b.cost);
    into.max_cost = into.max_cost.max(b.max_cost);
    into.min_cost = match (into.min_cost, b.min_cost) {
        (a, b) if a < 0 => b,
        (a, b) if b < 0 => a,
        (a, b) => a.min(b),
    };
    into.value = into.value.wrapping_add(b.value);
    for (to, from) in [
        (&mut into.samples, &b.samples),
        (&mut into.error_samples, &b.error_samples),
    ] {
        if let Some(from) = from {
            to.get_or_insert_with(Vec::new).extend(from.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder(name: &str, total: i32, errors: i32, min: i32, max: i32) -> SpanBuilderModel {
        SpanBuilderModel {
            name: name.into(),
            start_time: 10,
            end_time: 20,
            total,
            errors,
            cost: (total * 2).into(),
            max_cost: max,
            min_cost: min,
            value: 1,
            samples: Some(vec![SpanModel::default()]),
            error_samples: None,
        }
    }

    #[test]
    fn reports_merge_by_name() {
        let rec = Recorded {
            models: vec![
                TraceModel {
                    builders: vec![builder("b", 2, 1, 1, 5), builder("a", 1, 0, 3, 3)],
                    ..Default::default()
                },
                TraceModel {
                    builders: vec![builder("b", 3, 0, -1, 9)],
                    ..Default::default()
                },
            ],
        };
        assert_eq!(rec.names(), ["a", "b"]);
        assert_eq!((rec.count("b"), rec.errors("b")), (5, 1));
        assert_eq!(rec.count("missing"), 0);
        let b = rec.builder("b").unwrap();
        assert_eq!((b.cost, b.min_cost, b.max_cost, b.value), (10, 1, 9, 2));
        assert_eq!(rec.samples("b").len(), 2);
        assert_eq!(b.samples.unwrap().len(), 2);
        assert_eq!(rec.spans().len(), 3);
    }

    #[test]
    fn the_lock_is_reentrant_and_exclusive() {
        let outer = lock();
        let inner = lock();
        let other = std::thread::spawn(|| {
            let _l = lock();
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(inner);
        std::thread::sleep(Duration::from_millis(50));
        let released = Instant::now();
        drop(outer);
        assert!(other.join().unwrap() >= released);
    }
}
