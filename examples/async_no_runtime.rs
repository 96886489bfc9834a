//! `#[trace]` on `async fn` with no async runtime at all: a hand-written `block_on` (park the
//! thread until a waker unparks it), a timer future woken from a helper thread, nested traced
//! async functions (children of the span that awaits them, even across `Pending`), two futures
//! interleaved by a hand-written `join`, and futures dropped before completion (recorded as
//! `cancelled`). With no `StarServer` set, the console reporter prints the per-operation table
//! to stderr when the guard is dropped.
//!
//! ```text
//! cargo run --example async_no_runtime
//! ```

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use stardust_runtime::trace;

/// Waits `ms` milliseconds: returns `Pending` once, then is woken by a helper thread.
#[trace("io/wait", tag = "ms={ms}")]
async fn wait(ms: u64) {
    Sleep::new(Duration::from_millis(ms)).await;
}

/// A leaf: one wait, then a result (an error for id 0).
#[trace("page/fetch", tag = "id={id}")]
async fn fetch(id: u64) -> Result<String, String> {
    wait(2).await;
    if id == 0 {
        return Err("page 0 does not exist".into());
    }
    Ok(format!("page {id}"))
}

/// Nested: `page/fetch` spans (and their `io/wait` spans) are children of this one.
#[trace("page/render")]
async fn render(ids: Vec<u64>) -> Result<usize, String> {
    let mut len = 0;
    for id in ids {
        let parent = stardust_runtime::current_span_id();
        len += fetch(id).await?.len();
        // Still this function's span after the child finished, even though it yielded.
        assert_eq!(stardust_runtime::current_span_id(), parent);
    }
    Ok(len)
}

/// A slow operation that the caller gives up on.
#[trace("page/slow")]
async fn slow() -> u32 {
    wait(10_000).await;
    1
}

fn main() {
    let guard = stardust_runtime::init().expect("stardust init");

    // Nested async spans, sequentially.
    let len = block_on(render(vec![1, 2, 3])).expect("pages render");
    // An error from a nested call propagates with `?`: both spans are errors.
    let failed = block_on(render(vec![4, 0, 5])).unwrap_err();

    // Two traced futures interleaved on one thread: each keeps its own span between polls.
    let (a, b) = block_on(join(render(vec![6, 7]), render(vec![8])));

    // Cancelled: polled once (the span started), then dropped before completion.
    for _ in 0..3 {
        let mut fut = Box::pin(slow());
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        assert!(
            fut.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(fut); // `page/slow` and its `io/wait` are recorded with the error `cancelled`
    }
    // A timeout built by hand: the first of two futures to finish wins, the other is dropped.
    let winner = block_on(select(slow(), wait(5)));

    eprintln!(
        "async_no_runtime: rendered {len} bytes; failed with {failed:?}; joined {a:?} / {b:?}; \
         3 cancelled; select: {winner}"
    );
    // Dropping the guard reports the last period: the table below.
    drop(guard);
}

/// Parks the thread that polls until it is woken.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// The smallest executor: poll, and park the thread until woken.
fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Runs two futures to completion, interleaving their polls.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Runs both futures until one finishes; the other is dropped (cancelled).
async fn select<A: Future, B: Future>(a: A, b: B) -> &'static str {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    std::future::poll_fn(move |cx| {
        if a.as_mut().poll(cx).is_ready() {
            return Poll::Ready("first");
        }
        if b.as_mut().poll(cx).is_ready() {
            return Poll::Ready("second");
        }
        Poll::Pending
    })
    .await
}

/// A future that is ready after a delay, woken by a helper thread.
struct Sleep {
    until: Instant,
    /// When the helper thread armed last will wake the task.
    wake_at: Option<Instant>,
}

impl Sleep {
    fn new(d: Duration) -> Sleep {
        Sleep {
            until: Instant::now() + d,
            wake_at: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.until {
            return Poll::Ready(());
        }
        if self.wake_at.is_none_or(|t| now >= t) {
            // Wake at most 50 ms later (then arm again), so a long sleep that is dropped
            // leaves no thread behind for long.
            let wait = (self.until - now).min(Duration::from_millis(50));
            self.wake_at = Some(now + wait);
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                waker.wake();
            });
        }
        Poll::Pending
    }
}
