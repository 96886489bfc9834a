//! The span hot path allocates nothing: a counting global allocator counts the allocations
//! made on this test's thread while it opens and closes spans with static names and no tag
//! (sync `#[trace]`, async `#[trace]` hand-polled, manual `span("literal")`), after a warm-up
//! that fills the runtime's pools. The counter is shown to work: a span named by a `String`
//! built at run time is seen allocating. Every span measured is also checked to have been
//! counted by the real aggregator (a counting `Reporter`), so the guards were not inert.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use stardust_runtime::{Config, Reporter, TraceModel, trace};

/// Counts allocations (and reallocations) made by threads that switched counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: during thread teardown the flag may be gone; nothing is counted then.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; counting has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// Spans the runtime reported, per operation name.
#[derive(Clone, Default)]
struct Totals(Arc<Mutex<Vec<(String, u64)>>>);

impl Reporter for Totals {
    fn report(&mut self, model: &TraceModel) {
        let mut t = self.0.lock().unwrap();
        for b in &model.builders {
            match t.iter_mut().find(|(n, _)| *n == b.name) {
                Some((_, n)) => *n += b.total as u64,
                None => t.push((b.name.clone(), b.total as u64)),
            }
        }
    }
}

impl Totals {
    fn of(&self, name: &str) -> u64 {
        let t = self.0.lock().unwrap();
        t.iter().find(|(n, _)| n == name).map_or(0, |(_, n)| *n)
    }
}

/// One runtime at a time in this process.
static SERIAL: Mutex<()> = Mutex::new(());

/// Starts the runtime with `totals` as its only reporter, and a flush budget (its shutdown
/// timeout) far above any scheduling delay: `flush()` answers `Ok` as soon as the cut is
/// delivered, on a loaded machine too.
fn start(totals: &Totals) -> stardust_runtime::Guard {
    stardust_runtime::init_with(
        Config::new()
            .console(false)
            .reporter(totals.clone())
            .shutdown_timeout(std::time::Duration::from_secs(60)),
    )
    .unwrap()
}

#[trace("zero-alloc/child")]
#[inline(never)]
fn child(x: u64) -> u64 {
    black_box(x).wrapping_mul(3)
}

#[trace("zero-alloc/async-child")]
async fn async_child(x: u64) -> u64 {
    black_box(x).wrapping_mul(3)
}

#[trace("zero-alloc/async-root")]
async fn async_root() -> u64 {
    let mut acc = 0u64;
    for i in 0..CHILDREN {
        acc = acc.wrapping_add(async_child(i).await);
    }
    acc
}

const CHILDREN: u64 = 100;

/// A manual root with `CHILDREN` traced children: one full trace, one batch sent.
fn sync_trace() {
    let _root = stardust_runtime::span("zero-alloc/root");
    let mut acc = 0u64;
    for i in 0..CHILDREN {
        acc = acc.wrapping_add(child(i));
    }
    black_box(acc);
}

fn async_trace() {
    let mut fut = pin!(async_root());
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => {
            black_box(v);
        }
        Poll::Pending => unreachable!("never waits"),
    }
}

/// Runs `trace` enough times to fill the runtime's per-thread state and its pool of batch
/// vectors, and waits until the aggregator has taken (and recycled) every batch.
fn warm_up(trace: fn()) {
    for _ in 0..1_000 {
        trace();
    }
    assert!(stardust_runtime::flush().is_ok());
}

#[test]
fn sync_spans_with_static_names_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let totals = Totals::default();
    let guard = start(&totals);
    warm_up(sync_trace);
    let before = totals.of("zero-alloc/child");

    // 100 traces of 101 spans: 100 batches, fewer than the pool holds after the warm-up.
    const TRACES: u64 = 100;
    let n = allocations_in(|| {
        for _ in 0..TRACES {
            sync_trace();
        }
    });
    assert!(stardust_runtime::flush().is_ok());
    assert_eq!(
        totals.of("zero-alloc/child") - before,
        TRACES * CHILDREN,
        "the spans measured were recorded"
    );
    assert_eq!(
        n,
        0,
        "{n} allocations for {} spans with static names",
        TRACES * (CHILDREN + 1)
    );
    drop(guard);
}

#[test]
fn async_spans_with_static_names_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let totals = Totals::default();
    let guard = start(&totals);
    warm_up(async_trace);
    let before = totals.of("zero-alloc/async-child");

    const TRACES: u64 = 100;
    let n = allocations_in(|| {
        for _ in 0..TRACES {
            async_trace();
        }
    });
    assert!(stardust_runtime::flush().is_ok());
    assert_eq!(
        totals.of("zero-alloc/async-child") - before,
        TRACES * CHILDREN,
        "the spans measured were recorded"
    );
    assert_eq!(
        n,
        0,
        "{n} allocations for {} async spans with static names",
        TRACES * (CHILDREN + 1)
    );
    drop(guard);
}

#[test]
fn the_counter_sees_a_span_named_at_run_time_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let totals = Totals::default();
    let guard = start(&totals);
    warm_up(sync_trace);

    // The same trace shape, but each child's name is a `String` built at run time.
    const TRACES: u64 = 10;
    let n = allocations_in(|| {
        for _ in 0..TRACES {
            let _root = stardust_runtime::span("zero-alloc/root");
            for i in 0..CHILDREN {
                let _child = stardust_runtime::span(format!("zero-alloc/dyn-{}", i % 2));
            }
        }
    });
    assert!(stardust_runtime::flush().is_ok());
    assert_eq!(
        totals.of("zero-alloc/dyn-0") + totals.of("zero-alloc/dyn-1"),
        TRACES * CHILDREN
    );
    assert!(
        n >= TRACES * CHILDREN,
        "a dynamic name allocates at least once per span; the counter saw {n}"
    );
    drop(guard);
}

/// Attaching a captured context (what `wrap_fn` and `in_scope` do for each task of a thread
/// pool) and tracing under it allocate nothing when the context carries only a trace and a
/// parent.
#[test]
fn attaching_a_plain_context_does_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let totals = Totals::default();
    let guard = start(&totals);
    warm_up(sync_trace);
    let ctx = {
        let _root = stardust_runtime::span("zero-alloc/root");
        stardust_runtime::capture().expect("a current span")
    };
    // Warm the path (the thread's stack may grow once).
    {
        let _attached = ctx.attach();
        child(0);
    }
    assert!(stardust_runtime::flush().is_ok());
    let before = totals.of("zero-alloc/child");
    const TASKS: u64 = 100;
    let n = allocations_in(|| {
        for i in 0..TASKS {
            let _attached = ctx.attach();
            std::hint::black_box(child(i));
        }
    });
    assert!(stardust_runtime::flush().is_ok());
    assert_eq!(
        totals.of("zero-alloc/child") - before,
        TASKS,
        "the spans measured were recorded"
    );
    assert_eq!(n, 0, "{n} allocations for {TASKS} attached tasks");
    drop(guard);
}

/// Returns `Pending` once, then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[trace("zero-alloc/held")]
async fn held_across_awaits(yields: u64) {
    // A span guard held across real suspensions: at each yield the instrumented future takes
    // it off the thread's stack with its own span, and puts both back when polled again.
    let _inner = stardust_runtime::span("zero-alloc/inner");
    for _ in 0..yields {
        YieldOnce(false).await;
    }
}

#[test]
fn a_guard_held_across_awaits_does_not_allocate_per_yield() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let totals = Totals::default();
    let guard = start(&totals);
    warm_up(sync_trace);
    const YIELDS: u64 = 100;
    let mut fut = pin!(held_across_awaits(YIELDS));
    let mut cx = Context::from_waker(Waker::noop());
    // The first yield sets the future's stash up (one allocation, kept for its life).
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    let n = allocations_in(|| {
        for _ in 1..YIELDS {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
    });
    assert!(fut.as_mut().poll(&mut cx).is_ready());
    assert!(stardust_runtime::flush().is_ok());
    assert_eq!(
        totals.of("zero-alloc/inner"),
        1,
        "the span held was recorded"
    );
    assert_eq!(
        totals.of("zero-alloc/held"),
        1,
        "the future's span was recorded"
    );
    assert_eq!(
        n,
        0,
        "{n} allocations for {} yields with a guard held",
        YIELDS - 1
    );
    drop(guard);
}
