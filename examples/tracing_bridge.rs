//! Code instrumented with `tracing` reports to Stardust through `StardustLayer`: `#[instrument]`
//! functions and `info_span!` spans become Stardust spans, nested with `#[trace]` functions in
//! both directions; `#[instrument(err)]` and `error!` events mark their span as an error. With
//! no `StarServer` set, the console reporter prints the per-operation table to stderr when the
//! guard is dropped.
//!
//! ```text
//! cargo run --example tracing_bridge --features tracing
//! ```

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use stardust_runtime::{StardustLayer, trace};
use tracing::{info_span, instrument};
use tracing_subscriber::layer::SubscriberExt;

/// A `tracing` span around a `#[trace]` function: `order/price` is its child.
#[instrument]
fn create_order(id: u32) -> u32 {
    price(id) * 2
}

/// A `#[trace]` function with a `tracing` span inside: `load_rates` is its child.
#[trace("order/price")]
fn price(id: u32) -> u32 {
    info_span!("load_rates", currency = "EUR").in_scope(|| id * 3)
}

/// `err`: an `Err` is logged at ERROR level, and the span is an error with its text.
#[instrument(err)]
fn charge(id: u32) -> Result<(), String> {
    if id % 4 == 0 {
        Err(format!("card declined for order {id}"))
    } else {
        Ok(())
    }
}

/// One span however many times the future is polled.
#[instrument]
async fn ship(id: u32) -> u32 {
    YieldOnce(false).await;
    let label = info_span!("print_label", stardust.name = "ship/label").in_scope(|| id + 1000);
    YieldOnce(false).await;
    label
}

fn main() {
    // Every thread reports its `tracing` spans through the layer.
    let subscriber = tracing_subscriber::registry().with(StardustLayer::new());
    tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
    let guard = stardust_runtime::init().expect("stardust init");

    for id in 1..=8 {
        create_order(id);
        let _ = charge(id);
        assert_eq!(block_on(ship(id)), id + 1000);
    }
    info_span!("nightly_cleanup").in_scope(|| {
        tracing::error!(table = "orders", "cleanup failed: disk full");
    });

    drop(guard); // reports the last period: the table on stderr
}

/// Pending once, then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A minimal executor: polls until ready (the futures here wake themselves).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
