//! The `tracing` bridge end to end: `tracing` spans (`#[instrument]`, `info_span!`) and
//! `#[trace]` functions in one subscriber-wide tree, error events, explicit parents, async
//! spans polled on several threads, and the exact report that comes out.

#![cfg(feature = "tracing")]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Barrier, Mutex, MutexGuard, Once};
use std::task::{Context, Poll, Waker};

use crossbeam_channel::Sender;
use stardust_runtime::{
    Config, Reporter, SpanBuilderModel, SpanModel, StardustLayer, TraceModel, trace,
};
use tracing::{info_span, instrument};
use tracing_subscriber::layer::SubscriberExt;

static SERIAL: Mutex<()> = Mutex::new(());

/// The runtime is process-global: one test at a time runs it.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The layer, installed once for every thread of the test binary.
fn install_layer() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(StardustLayer::new());
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    });
}

struct Capture(Sender<TraceModel>);

impl Reporter for Capture {
    fn report(&mut self, model: &TraceModel) {
        let _ = self.0.send(model.clone());
    }
}

/// Runs `f` under a fresh runtime and returns every builder reported, by name.
fn run(f: impl FnOnce()) -> HashMap<String, SpanBuilderModel> {
    install_layer();
    let (tx, rx) = crossbeam_channel::unbounded();
    let guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .max_samples(100)
            .max_errors(100)
            .reporter(Capture(tx)),
    )
    .expect("init");
    f();
    assert!(stardust_runtime::flush().is_ok(), "flush timed out");
    drop(guard);
    let mut builders: HashMap<String, SpanBuilderModel> = HashMap::new();
    for model in rx.try_iter() {
        for b in model.builders {
            match builders.get_mut(&b.name) {
                None => {
                    builders.insert(b.name.clone(), b);
                }
                Some(acc) => {
                    acc.total += b.total;
                    acc.errors += b.errors;
                    let more = b.samples.into_iter().flatten();
                    acc.samples.get_or_insert_with(Vec::new).extend(more);
                    let more = b.error_samples.into_iter().flatten();
                    acc.error_samples.get_or_insert_with(Vec::new).extend(more);
                }
            }
        }
    }
    builders
}

fn builder<'a>(report: &'a HashMap<String, SpanBuilderModel>, name: &str) -> &'a SpanBuilderModel {
    report
        .get(name)
        .unwrap_or_else(|| panic!("no builder {name:?} in {:?}", report.keys()))
}

/// Every sampled span of `name` (normal and error samples).
fn spans<'a>(report: &'a HashMap<String, SpanBuilderModel>, name: &str) -> Vec<&'a SpanModel> {
    let b = builder(report, name);
    b.samples
        .iter()
        .flatten()
        .chain(b.error_samples.iter().flatten())
        .collect()
}

/// The one sampled span of `name`.
fn one<'a>(report: &'a HashMap<String, SpanBuilderModel>, name: &str) -> &'a SpanModel {
    let all = spans(report, name);
    assert_eq!(all.len(), 1, "spans of {name}: {all:?}");
    all[0]
}

fn assert_child(child: &SpanModel, parent: &SpanModel) {
    assert_eq!(child.parent_id.as_deref(), Some(parent.id.as_str()));
    assert_eq!(child.trace_id, parent.trace_id);
}

// ---- nesting both ways ----

#[instrument]
fn bridge_outer() {
    bridge_middle();
}

#[trace("bridge/middle")]
fn bridge_middle() {
    info_span!("bridge_inner").in_scope(bridge_leaf);
}

#[trace("bridge/leaf")]
fn bridge_leaf() {}

#[test]
fn tracing_spans_and_trace_functions_nest_both_ways() {
    let _s = serial();
    let report = run(|| {
        bridge_outer();
        bridge_outer();
    });
    for name in [
        "bridge_outer",
        "bridge/middle",
        "bridge_inner",
        "bridge/leaf",
    ] {
        let b = builder(&report, name);
        assert_eq!((b.total, b.errors), (2, 0), "{name}");
    }
    let outers = spans(&report, "bridge_outer");
    assert_eq!(outers.len(), 2);
    for outer in outers {
        assert_eq!(outer.parent_id, None, "a tracing root starts a trace");
        assert_eq!(
            outer.trace_flag, 1,
            "the first roots of a name take the flag"
        );
        let middle = spans(&report, "bridge/middle")
            .into_iter()
            .find(|m| m.trace_id == outer.trace_id)
            .expect("middle in the outer's trace");
        assert_child(middle, outer);
        let inner = spans(&report, "bridge_inner")
            .into_iter()
            .find(|m| m.trace_id == outer.trace_id)
            .expect("inner in the outer's trace");
        assert_child(inner, middle);
        let leaf = spans(&report, "bridge/leaf")
            .into_iter()
            .find(|m| m.trace_id == outer.trace_id)
            .expect("leaf in the outer's trace");
        assert_child(leaf, inner);
        assert!(outer.start_time <= leaf.start_time && leaf.end_time <= outer.end_time);
    }
}

// ---- errors ----

#[instrument(err)]
fn bridge_fails(fail: bool) -> Result<u32, String> {
    if fail {
        Err("no route to host".into())
    } else {
        Ok(1)
    }
}

#[instrument(err(Debug))]
fn bridge_fails_debug() -> Result<(), String> {
    Err("quoted".into())
}

#[trace("bridge/traced_logs_error")]
fn traced_logs_error() {
    tracing::error!("inside the traced function");
}

#[test]
fn error_events_mark_the_innermost_span() {
    let _s = serial();
    let report = run(|| {
        info_span!("bridge_message").in_scope(|| {
            tracing::warn!("only a warning");
            tracing::error!(code = 7, "disk full on {}", "/var");
        });
        info_span!("bridge_fields_only").in_scope(|| tracing::error!(code = 7, retry = false));
        info_span!("bridge_warn_only").in_scope(|| tracing::warn!("not an error"));
        info_span!("bridge_around_traced").in_scope(traced_logs_error);
        let _ = bridge_fails(true);
        let _ = bridge_fails(false);
        let _ = bridge_fails_debug();
        let later = info_span!("bridge_explicit_error");
        tracing::error!(parent: &later, "reported against a span not entered");
        drop(later);
        tracing::error!("outside every span: marks nothing");
    });

    assert_eq!(
        one(&report, "bridge_explicit_error").error.as_deref(),
        Some("reported against a span not entered")
    );

    let b = builder(&report, "bridge_message");
    assert_eq!((b.total, b.errors), (1, 1));
    assert_eq!(
        one(&report, "bridge_message").error.as_deref(),
        Some("disk full on /var")
    );

    assert_eq!(
        one(&report, "bridge_fields_only").error.as_deref(),
        Some("code=7 retry=false")
    );

    let b = builder(&report, "bridge_warn_only");
    assert_eq!((b.total, b.errors), (1, 0));
    assert_eq!(one(&report, "bridge_warn_only").error, None);

    // The event is inside the `#[trace]` function: that span is the error, not its parent.
    let around = one(&report, "bridge_around_traced");
    let traced = one(&report, "bridge/traced_logs_error");
    assert_child(traced, around);
    assert_eq!(around.error, None);
    assert_eq!(traced.error.as_deref(), Some("inside the traced function"));

    // `#[instrument(err)]`: the error's Display text, as `#[trace]` reports an `Err`.
    let b = builder(&report, "bridge_fails");
    assert_eq!((b.total, b.errors), (2, 1));
    let errors: Vec<_> = b.error_samples.iter().flatten().collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error.as_deref(), Some("no route to host"));
    assert_eq!(
        one(&report, "bridge_fails_debug").error.as_deref(),
        Some("\"quoted\"")
    );
}

#[test]
fn a_panic_inside_a_tracing_span_is_an_error() {
    let _s = serial();
    let report = run(|| {
        let span = info_span!("bridge_panics");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            span.in_scope(|| panic!("boom"))
        }));
        assert!(caught.is_err());
        drop(span);
    });
    let b = builder(&report, "bridge_panics");
    assert_eq!((b.total, b.errors), (1, 1));
    assert_eq!(
        one(&report, "bridge_panics").error.as_deref(),
        Some("panicked")
    );
}

// ---- parents ----

#[trace("bridge/unrelated")]
fn unrelated_scope(root: &tracing::Span) -> (tracing::Span, tracing::Span) {
    let child = info_span!(parent: root, "bridge_explicit_child");
    let detached = info_span!(parent: None, "bridge_detached");
    // A `#[trace]` function inside the explicit child is the child's, not ours.
    child.in_scope(bridge_leaf);
    (child, detached)
}

#[test]
fn explicit_parents_are_followed() {
    let _s = serial();
    let report = run(|| {
        let root = info_span!("bridge_explicit_root");
        let (child, detached) = unrelated_scope(&root);
        drop((child, detached, root));
    });
    let root = one(&report, "bridge_explicit_root");
    let child = one(&report, "bridge_explicit_child");
    let unrelated = one(&report, "bridge/unrelated");
    let detached = one(&report, "bridge_detached");
    let leaf = one(&report, "bridge/leaf");
    assert_eq!(root.parent_id, None);
    assert_child(child, root);
    assert_child(leaf, child);
    assert_ne!(unrelated.trace_id, root.trace_id);
    assert_eq!(detached.parent_id, None);
    assert_ne!(detached.trace_id, unrelated.trace_id);
    assert_ne!(detached.trace_id, root.trace_id);
}

// ---- async ----

/// Pending once, then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

#[trace("bridge/async_child")]
async fn async_child(i: u32) -> u32 {
    YieldOnce(false).await;
    i
}

#[instrument]
async fn bridge_async(n: u32) -> u32 {
    let mut sum = 0;
    for i in 0..n {
        YieldOnce(false).await;
        sum += async_child(i).await;
    }
    sum
}

#[instrument]
async fn bridge_async_held() {
    let _held = stardust_runtime::span("bridge/held_across_await");
    YieldOnce(false).await;
    bridge_leaf();
}

#[test]
fn an_async_instrumented_function_is_one_span_across_polls_and_threads() {
    let _s = serial();
    let report = run(|| {
        let mut fut = Box::pin(bridge_async(3));
        let mut cx = Context::from_waker(Waker::noop());
        let mut polls = 0;
        // The first polls here, the rest on other threads, one thread per poll.
        for _ in 0..2 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            polls += 1;
        }
        loop {
            polls += 1;
            let (ready, back) = std::thread::spawn(move || {
                let mut cx = Context::from_waker(Waker::noop());
                let ready = fut.as_mut().poll(&mut cx);
                (ready, fut)
            })
            .join()
            .unwrap();
            fut = back;
            if let Poll::Ready(v) = ready {
                assert_eq!(v, 3);
                break;
            }
        }
        assert_eq!(polls, 7);
        // Nothing is left on this thread's stack.
        assert_eq!(stardust_runtime::current_span_id(), None);
    });
    let b = builder(&report, "bridge_async");
    assert_eq!((b.total, b.errors), (1, 0));
    let outer = one(&report, "bridge_async");
    assert_eq!(outer.parent_id, None);
    let children = spans(&report, "bridge/async_child");
    assert_eq!(children.len(), 3);
    for c in children {
        assert_child(c, outer);
        assert_eq!(c.error, None);
    }
}

#[test]
fn a_guard_held_across_an_await_stays_inside_the_async_span() {
    let _s = serial();
    let report = run(|| {
        let mut fut = Box::pin(bridge_async_held());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        // Between polls the held span is off this thread's stack: this call is a new trace.
        assert_eq!(stardust_runtime::current_span_id(), None);
        bridge_leaf();
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    });
    let outer = one(&report, "bridge_async_held");
    let held = one(&report, "bridge/held_across_await");
    assert_child(held, outer);
    let leaves = spans(&report, "bridge/leaf");
    assert_eq!(leaves.len(), 2);
    let (inside, between): (Vec<_>, Vec<_>) = leaves
        .into_iter()
        .partition(|l| l.trace_id == outer.trace_id);
    assert_child(inside[0], held);
    assert_eq!(between[0].parent_id, None);
}

// ---- several threads in one span ----

#[trace("bridge/worker")]
fn worker() -> Option<stardust_runtime::SpanId> {
    stardust_runtime::current_span_id()
}

#[test]
fn a_span_entered_on_several_threads_at_once_parents_their_spans() {
    let _s = serial();
    let mut seen = Vec::new();
    let report = run(|| {
        let span = info_span!("bridge_fan_out");
        let barrier = Barrier::new(4);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let span = &span;
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let _entered = span.enter();
                        // All four are inside the span at once.
                        barrier.wait();
                        let current = stardust_runtime::current_span_id();
                        let ctx = stardust_runtime::capture().expect("a current span");
                        let inside = worker();
                        barrier.wait();
                        (current, ctx.span_id(), inside)
                    })
                })
                .collect();
            for h in handles {
                seen.push(h.join().unwrap());
            }
        });
    });
    let fan_out = one(&report, "bridge_fan_out");
    let workers = spans(&report, "bridge/worker");
    assert_eq!(workers.len(), 4);
    for w in &workers {
        assert_child(w, fan_out);
    }
    for (current, captured, inside) in seen {
        assert_eq!(
            current.map(|s| s.to_string()).as_deref(),
            Some(&*fan_out.id)
        );
        assert_eq!(captured, current);
        let inside = inside.expect("inside the worker span").to_string();
        assert!(workers.iter().any(|w| w.id == inside));
    }
}

#[test]
fn spans_finished_inside_a_span_exited_on_an_idle_thread_are_reported() {
    let _s = serial();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let mut worker = None;
    let report = run(|| {
        let span = info_span!("bridge_idle_worker");
        let on_worker = span.clone();
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        worker = Some(std::thread::spawn(move || {
            on_worker.in_scope(bridge_leaf);
            drop(on_worker);
            done_tx.send(()).unwrap();
            // Stays alive, recording nothing more, until the report is in.
            let _ = release_rx.recv();
        }));
        done_rx.recv().unwrap();
        drop(span); // closes here, on this thread
    });
    drop(release_tx);
    worker.unwrap().join().unwrap();
    let span = one(&report, "bridge_idle_worker");
    assert_child(one(&report, "bridge/leaf"), span);
}

// ---- names, tags, the runtime switched off ----

#[test]
fn a_stardust_name_field_names_the_operation_and_fields_are_the_tag() {
    let _s = serial();
    let report = run(|| {
        let span = info_span!("query", stardust.name = "db/users", id = 5, kind = "read");
        span.record("id", 6);
        drop(span);
    });
    assert!(!report.contains_key("query"));
    let b = builder(&report, "db/users");
    assert_eq!((b.total, b.errors), (1, 0));
    let s = one(&report, "db/users");
    assert_eq!(s.trace_flag, 1);
    assert_eq!(s.tag.as_deref(), Some("id=5 kind=read id=6"));
}

#[test]
fn spans_created_before_init_record_nothing() {
    let _s = serial();
    install_layer();
    let early = info_span!("bridge_before_init");
    let report = run(move || {
        early.in_scope(|| info_span!("bridge_after_init").in_scope(|| {}));
        drop(early);
    });
    assert!(!report.contains_key("bridge_before_init"));
    let after = one(&report, "bridge_after_init");
    assert_eq!(after.parent_id, None);
    assert_eq!(builder(&report, "bridge_after_init").total, 1);
}
