//! The whole loop on one machine, nothing else needed: traced sync functions, nested spans,
//! an `Err`, a caught panic, worker threads and an async fn driven by a hand-written
//! `block_on`. With no `StarServer` set, the console reporter prints the per-operation table
//! to stderr when the guard is dropped.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use stardust_runtime::trace;

#[trace("order/create")]
fn create_order(id: u32) -> Result<u32, String> {
    validate(id)?;
    let total = price(id) * 2;
    Ok(total)
}

#[trace("order/validate")]
fn validate(id: u32) -> Result<(), String> {
    if id % 10 == 0 {
        Err(format!("order {id} is invalid"))
    } else {
        Ok(())
    }
}

#[trace("order/price", tag = "id={id}")]
fn price(id: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(1));
    id * 3
}

#[trace("report/crash")]
fn crash(n: u32) -> u32 {
    if n == 3 {
        panic!("crash {n}");
    }
    n
}

#[trace("fetch/remote")]
async fn fetch(n: u32) -> u32 {
    Sleep::new(Duration::from_millis(2)).await;
    n * 10
}

#[trace("fetch/all")]
async fn fetch_all() -> u32 {
    let mut sum = 0;
    for n in 0..5 {
        sum += fetch(n).await;
    }
    sum
}

fn main() {
    // No server configured: the embedded console reporter prints the table. `init!()` also
    // knows this crate's name, version and build time (what a Stardust server shows).
    let guard = stardust_runtime::init!().expect("stardust init");

    // Sync calls on this thread: 20 orders, 2 of them invalid.
    let failures = (1..=20).filter(|&id| create_order(id).is_err()).count();

    // Worker threads: 4 × 25 more orders.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                (1..=25)
                    .filter(|&i| create_order(100 + w * 25 + i).is_err())
                    .count()
            })
        })
        .collect();
    let worker_failures: usize = workers.into_iter().map(|h| h.join().unwrap()).sum();

    // A panic, caught: the span records the error "panicked".
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let crashed = (1..=5)
        .filter(|&n| std::panic::catch_unwind(|| crash(n)).is_err())
        .count();
    std::panic::set_hook(hook);

    // Async without a runtime.
    let sum = block_on(fetch_all());

    eprintln!(
        "quickstart: 120 orders ({} invalid), {crashed} crash of 5, async sum {sum}",
        failures + worker_failures
    );
    // Dropping the guard reports the last period: the table below.
    drop(guard);
}

/// A future that is ready after `d`, woken by a helper thread.
struct Sleep {
    until: std::time::Instant,
    armed: bool,
}

impl Sleep {
    fn new(d: Duration) -> Sleep {
        Sleep {
            until: std::time::Instant::now() + d,
            armed: false,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = std::time::Instant::now();
        if now >= self.until {
            return Poll::Ready(());
        }
        if !self.armed {
            self.armed = true;
            let waker = cx.waker().clone();
            let wait = self.until - now;
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                waker.wake();
            });
        }
        Poll::Pending
    }
}

/// The smallest executor: park the thread until woken.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
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
