//! End to end: traced functions on several threads (errors, slow calls, panics, async), one
//! forced period cut, and the exact `TraceModel` that comes out.
//!
//! No assertion depends on how fast the machine is: every runtime gets a flush budget (its
//! shutdown timeout) far above any scheduling delay, so `flush()` returns `Ok` once the cut is
//! with the reporter, and what the reporter got is then all there is.

use stardust_test_support::common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use stardust_runtime::{Config, SpanBuilderModel, TraceModel, trace};

#[trace("e2e/work")]
fn work(i: u32) -> Result<u32, String> {
    if i % 5 == 0 {
        return Err(format!("bad input {i}"));
    }
    let v = parse(i)?;
    Ok(v + 1)
}

#[derive(Debug)]
struct ParseError(u32);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot parse {}", self.0)
    }
}

impl From<ParseError> for String {
    fn from(e: ParseError) -> String {
        e.to_string()
    }
}

#[trace("e2e/parse")]
fn parse(i: u32) -> Result<u32, ParseError> {
    if i % 7 == 0 {
        Err(ParseError(i))
    } else {
        Ok(i)
    }
}

#[trace("e2e/slow")]
fn slow() {
    std::thread::sleep(Duration::from_millis(30));
}

#[trace("e2e/boom")]
fn boom(i: u32) -> u32 {
    if i % 2 == 0 {
        panic!("boom {i}");
    }
    i
}

#[trace("e2e/outer")]
fn outer() -> (String, String) {
    let trace = stardust_runtime::current_trace_id().unwrap().to_string();
    let span = stardust_runtime::current_span_id().unwrap().to_string();
    inner();
    (trace, span)
}

#[trace("e2e/inner")]
fn inner() {}

#[trace("e2e/async_outer")]
async fn async_outer() -> u32 {
    let a = async_leaf(1).await;
    common::yield_once().await;
    let b = async_leaf(2).await;
    a + b
}

#[trace("e2e/async_leaf")]
async fn async_leaf(x: u32) -> u32 {
    common::yield_once().await;
    x
}

/// The flush and shutdown budget of every runtime of these tests: `flush()` answers `Ok` as
/// soon as the cut is delivered, so a generous budget costs nothing on a fast machine and
/// keeps a loaded one (where a cut may take seconds) from failing.
const BUDGET: Duration = Duration::from_secs(60);

struct NoopWake;
impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn merged(models: &[TraceModel]) -> HashMap<String, SpanBuilderModel> {
    let mut out: HashMap<String, SpanBuilderModel> = HashMap::new();
    for m in models {
        for b in &m.builders {
            let e = out.entry(b.name.clone()).or_insert_with(|| {
                let mut m = SpanBuilderModel::default();
                m.name = b.name.clone();
                m.min_cost = -1;
                m
            });
            e.total += b.total;
            e.errors += b.errors;
            e.cost += b.cost;
            e.max_cost = e.max_cost.max(b.max_cost);
            e.min_cost = if e.min_cost < 0 {
                b.min_cost
            } else {
                e.min_cost.min(b.min_cost)
            };
            e.samples = match (e.samples.take(), b.samples.clone()) {
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
            e.error_samples = match (e.error_samples.take(), b.error_samples.clone()) {
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
        }
    }
    out
}

#[test]
fn one_period_on_several_threads_is_counted_exactly() {
    let _serial = common::serial();
    let (guard, rx) = common::start(
        Config::new()
            .app_id("e2e")
            .max_samples(2)
            .max_errors(3)
            .slow_threshold(Duration::from_millis(20))
            .period(Duration::from_secs(3600))
            .shutdown_timeout(BUDGET),
    );

    const THREADS: u32 = 4;
    const CALLS: u32 = 50;
    // Scoped: every thread is joined before this returns, also when one of them panics, so
    // none is left running (and tracing) into the next test.
    // Each thread says how long its `slow()` call took (wall clock, measured around the span).
    let slow_took: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    for i in 0..CALLS {
                        let _ = work(t * CALLS + i + 1);
                    }
                    let t0 = Instant::now();
                    slow();
                    let took = t0.elapsed();
                    for i in 0..4 {
                        let r = std::panic::catch_unwind(|| boom(i));
                        assert_eq!(r.is_err(), i % 2 == 0);
                    }
                    took
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let slowest_ms = slow_took.iter().max().unwrap().as_millis() as i32;
    assert!(guard.flush().is_ok());
    let models = common::drain(&rx);
    assert_eq!(models.len(), 1, "one forced cut, one model");
    let model = &models[0];
    assert_eq!(model.app_id, "e2e");
    assert!(model.client_id.as_deref().unwrap().contains('@'));
    assert!(!model.version.as_deref().unwrap().is_empty());

    let by = merged(&models);
    let n = THREADS * CALLS;
    let values = 1..=n;
    let work_errors = values
        .clone()
        .filter(|i| i % 5 == 0 || (i % 7 == 0))
        .count() as i32;
    let parse_calls = values.clone().filter(|i| i % 5 != 0).count() as i32;
    let parse_errors = values.filter(|i| i % 5 != 0 && i % 7 == 0).count() as i32;

    let w = &by["e2e/work"];
    assert_eq!(w.total, n as i32);
    assert_eq!(w.errors, work_errors);
    assert_eq!(
        w.error_samples.as_ref().unwrap().len(),
        3,
        "MaxErrors error samples"
    );
    let texts: Vec<_> = w
        .error_samples
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.error.clone().unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .all(|t| t.starts_with("bad input") || t.starts_with("cannot parse")),
        "{texts:?}"
    );

    let p = &by["e2e/parse"];
    assert_eq!(p.total, parse_calls);
    assert_eq!(p.errors, parse_errors);
    // `?` propagated the parse error through `work`: both spans carry it.
    let parse_err = &p.error_samples.as_ref().unwrap()[0];
    assert!(
        parse_err
            .error
            .as_deref()
            .unwrap()
            .starts_with("cannot parse")
    );
    assert!(parse_err.parent_id.is_some(), "parse is a child of work");

    let s = &by["e2e/slow"];
    assert_eq!((s.total, s.errors), (THREADS as i32, 0));
    // Milliseconds (not µs): at least the 30 ms slept, at most what the slowest call took as
    // measured around it (+1 for the rounding of the span's ends to whole ms, +1% for the
    // span clock's calibration), however long a loaded machine made it.
    assert!(
        s.min_cost >= 29 && s.max_cost <= slowest_ms + slowest_ms / 100 + 2,
        "{s:?}, slowest call {slowest_ms} ms"
    );
    assert!(s.cost >= 29 * THREADS as i64);
    // All four are slower than the 20 ms threshold: sampled up to 10 × MaxSamples.
    assert_eq!(s.samples.as_ref().unwrap().len(), THREADS as usize);

    let b = &by["e2e/boom"];
    assert_eq!(
        (b.total, b.errors),
        (4 * THREADS as i32, 2 * THREADS as i32)
    );
    assert!(
        b.error_samples
            .as_ref()
            .unwrap()
            .iter()
            .all(|s| s.error.as_deref() == Some("panicked"))
    );

    for b in &model.builders {
        assert!(b.errors <= b.total);
        assert!(
            b.min_cost >= 0
                && b.min_cost <= b.max_cost
                && b.max_cost as i64 <= b.cost.max(b.max_cost as i64)
        );
        assert!(b.start_time <= b.end_time);
        assert!(b.start_time > 1_600_000_000_000, "Unix ms");
    }
    drop(guard);
}

#[test]
fn parents_and_trace_ids_link_in_sync_and_async_code() {
    let _serial = common::serial();
    let (guard, rx) = common::start(Config::new().max_samples(100).shutdown_timeout(BUDGET));

    let (trace, outer_id) = outer();
    assert_eq!(trace.len(), 32);
    assert_eq!(outer_id.len(), 16);
    assert!(
        stardust_runtime::current_span_id().is_none(),
        "outer closed"
    );
    assert_eq!(block_on(async_outer()), 3);

    // A future dropped before completion records `cancelled`.
    {
        let waker = Waker::from(Arc::new(NoopWake));
        let mut cx = Context::from_waker(&waker);
        let mut f = Box::pin(async_leaf(9));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        drop(f);
    }

    assert!(guard.flush().is_ok());
    let by = merged(&common::drain(&rx));

    let o = &by["e2e/outer"].samples.as_ref().unwrap()[0];
    let i = &by["e2e/inner"].samples.as_ref().unwrap()[0];
    assert_eq!(o.trace_id, trace);
    assert_eq!(o.id, outer_id);
    assert_eq!(o.parent_id, None);
    assert_eq!(i.trace_id, trace);
    assert_eq!(i.parent_id.as_deref(), Some(outer_id.as_str()));
    assert_eq!(
        o.trace_flag, 1,
        "first spans of a name per period are force-sampled"
    );
    assert_eq!(i.trace_flag, 1, "children inherit the flag");

    let ao = &by["e2e/async_outer"].samples.as_ref().unwrap()[0];
    let leaf = &by["e2e/async_leaf"];
    assert_eq!(leaf.total, 3);
    assert_eq!(leaf.errors, 1);
    assert_eq!(
        leaf.error_samples.as_ref().unwrap()[0].error.as_deref(),
        Some("cancelled")
    );
    let children: Vec<_> = leaf.samples.as_ref().unwrap().iter().collect();
    assert_eq!(children.len(), 2);
    for c in children {
        assert_eq!(c.trace_id, ao.trace_id);
        assert_eq!(c.parent_id.as_deref(), Some(ao.id.as_str()));
    }
    assert_ne!(ao.trace_id, trace, "a new root starts a new trace");
    drop(guard);
}

#[test]
fn second_init_is_an_error_and_reinit_after_drop_works() {
    let _serial = common::serial();
    let g =
        stardust_runtime::init_with(Config::new().console(false).shutdown_timeout(BUDGET)).unwrap();
    let err = stardust_runtime::init_with(Config::new().console(false)).unwrap_err();
    assert!(matches!(
        err,
        stardust_runtime::InitError::AlreadyInitialized
    ));
    assert!(err.to_string().contains("already"));
    drop(g);
    assert!(
        stardust_runtime::flush().is_err(),
        "nothing runs after the guard is dropped"
    );
    let g =
        stardust_runtime::init_with(Config::new().console(false).shutdown_timeout(BUDGET)).unwrap();
    assert!(g.flush().is_ok());
}

#[test]
fn before_init_traced_calls_record_nothing() {
    let _serial = common::serial();
    let span = stardust_runtime::span("not-initialised");
    assert!(!span.is_recording());
    assert_eq!(work(1), Ok(2));
    drop(span);
    // Spans made before init are not delivered to a runtime started later.
    let (capture, rx) = common::capture();
    let g = stardust_runtime::init_with(Config::new().reporter(capture).shutdown_timeout(BUDGET))
        .unwrap();
    assert!(g.flush().is_ok());
    assert!(common::drain(&rx).is_empty());

    // A span opened under that runtime and closed after it stopped belongs to nobody: the
    // next runtime must not count it.
    let stale = stardust_runtime::span("stale/old-runtime");
    assert!(stale.is_recording());
    drop(g);
    drop(stale);
    let (g, rx) = common::start(Config::new().shutdown_timeout(BUDGET));
    drop(stardust_runtime::span("fresh/new-runtime"));
    assert!(g.flush().is_ok());
    let names: Vec<String> = common::drain(&rx)
        .iter()
        .flat_map(|m| m.builders.iter().map(|b| b.name.clone()))
        .collect();
    assert_eq!(names, ["fresh/new-runtime"]);
}

/// Panics on its first report, then forwards.
struct Flaky(crossbeam_channel::Sender<TraceModel>, bool);

impl stardust_runtime::Reporter for Flaky {
    fn report(&mut self, model: &TraceModel) {
        if !self.1 {
            self.1 = true;
            panic!("reporter bug");
        }
        let _ = self.0.send(model.clone());
    }
}

#[test]
fn a_panicking_reporter_is_contained_and_the_runtime_goes_on() {
    let _serial = common::serial();
    let (tx, rx) = crossbeam_channel::unbounded();
    let (capture, rx2) = common::capture();
    let guard = stardust_runtime::init_with(
        Config::new()
            .reporter(Flaky(tx, false))
            .reporter(capture)
            .first_report_delay(Duration::from_secs(3600))
            .shutdown_timeout(BUDGET),
    )
    .unwrap();
    drop(stardust_runtime::span("first"));
    assert!(
        guard.flush().is_ok(),
        "the flush completes despite the panic"
    );
    drop(stardust_runtime::span("second"));
    assert!(guard.flush().is_ok());
    let flaky: Vec<_> = common::drain(&rx);
    assert_eq!(flaky.len(), 1, "the panicking reporter stays installed");
    assert_eq!(flaky[0].builders[0].name, "second");
    let other = common::drain(&rx2);
    assert_eq!(other.len(), 2, "other reporters are not affected");
}

#[test]
fn arguments_are_never_captured_unless_a_tag_asks() {
    #[trace("secret/login")]
    fn login(user: &str, password: &str) -> usize {
        user.len() + password.len()
    }
    #[trace("secret/tagged", tag = "user={user}")]
    fn tagged(user: &str, password: &str) -> usize {
        user.len() + password.len()
    }
    let _serial = common::serial();
    let (guard, rx) = common::start(
        Config::new()
            .max_samples(10)
            .max_tag_length(8)
            .shutdown_timeout(BUDGET),
    );
    login("alice", "hunter2-pw");
    tagged("bob-the-builder", "hunter2-pw");
    assert!(guard.flush().is_ok());
    let models = common::drain(&rx);
    let json = serde_json::to_string(&models).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    assert!(!json.contains("alice"), "{json}");
    let by = merged(&models);
    assert_eq!(by["secret/login"].samples.as_ref().unwrap()[0].tag, None);
    assert_eq!(
        by["secret/tagged"].samples.as_ref().unwrap()[0]
            .tag
            .as_deref(),
        Some("user=bob"),
        "tag cut to MaxTagLength characters"
    );
}

/// Panics when dropped (a user's destructor gone wrong).
struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("destructor panicked");
    }
}

#[trace("e2e/holds_a_bad_destructor")]
async fn holds_a_bad_destructor() {
    let _bad = PanicOnDrop;
    let _inner = stardust_runtime::span("e2e/open_across_await");
    common::yield_once().await;
}

/// A future dropped mid-way whose destructor panics: the panic reaches the caller, the span
/// is recorded as `panicked`, and the thread's span stack is left as it was (nothing of the
/// future's stays current).
#[test]
fn a_panicking_destructor_leaves_the_stack_whole() {
    let _serial = common::serial();
    let (capture, rx) = common::capture();
    let guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .reporter(capture)
            .shutdown_timeout(BUDGET),
    )
    .unwrap();
    let root = stardust_runtime::span("e2e/root_of_bad_future");
    let root_id = root.span_id().unwrap();
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut f = Box::pin(holds_a_bad_destructor());
    assert!(f.as_mut().poll(&mut cx).is_pending());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(f)));
    assert!(
        dropped.is_err(),
        "the destructor's panic reaches the caller"
    );
    assert_eq!(
        stardust_runtime::current_span_id(),
        Some(root_id),
        "the future's spans are off the stack"
    );
    drop(root);
    assert!(stardust_runtime::current_span_id().is_none());
    assert!(guard.flush().is_ok());
    let by = merged(&common::drain(&rx));
    let bad = &by["e2e/holds_a_bad_destructor"];
    assert_eq!((bad.total, bad.errors), (1, 1));
    assert_eq!(
        bad.error_samples.as_ref().unwrap()[0].error.as_deref(),
        Some("panicked")
    );
    assert_eq!(by["e2e/root_of_bad_future"].total, 1);
}

#[trace("e2e/parse")]
fn parse_num(s: &str) -> Result<u32, std::num::ParseIntError> {
    s.parse()
}

#[trace("e2e/caller")]
fn caller(s: &str) -> Result<u32, std::num::ParseIntError> {
    Ok(parse_num(s)? + 1)
}

/// An error also counts under `ex:<Type>`: a child of the failing span, from its start, not
/// an error itself, its tag the error text when sampled; one per error although `?` passes it
/// through two traced functions; none with the switch off.
#[test]
fn errors_count_under_their_type_once() {
    let _serial = common::serial();
    let (capture, rx) = common::capture();
    let guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .max_samples(10)
            .reporter(capture)
            .shutdown_timeout(BUDGET),
    )
    .unwrap();
    assert!(caller("x").is_err());
    assert!(caller("7").is_ok());
    assert!(guard.flush().is_ok());
    drop(guard);
    let by = merged(&common::drain(&rx));
    let ex = &by["ex:ParseIntError"];
    assert_eq!((ex.total, ex.errors), (1, 0), "once, not an error");
    assert_eq!((by["e2e/parse"].errors, by["e2e/caller"].errors), (1, 1));
    let failing = &by["e2e/parse"].error_samples.as_ref().unwrap()[0];
    let s = &ex.samples.as_ref().unwrap()[0];
    assert_eq!(s.parent_id.as_deref(), Some(failing.id.as_str()));
    assert_eq!(s.trace_id, failing.trace_id);
    assert_eq!(s.start_time, failing.start_time);
    assert!(s.error.is_none());
    assert_eq!(s.tag.as_deref(), Some("invalid digit found in string"));

    let (capture, rx) = common::capture();
    let guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .exception_spans(false)
            .reporter(capture)
            .shutdown_timeout(BUDGET),
    )
    .unwrap();
    assert!(caller("x").is_err());
    assert!(guard.flush().is_ok());
    drop(guard);
    let by = merged(&common::drain(&rx));
    assert!(!by.keys().any(|k| k.starts_with("ex:")), "{:?}", by.keys());
}
