//! Tests written as a user of the crate writes them for their own instrumented code, with
//! `stardust_runtime::testing`: several `#[test]`s that each record what their code reports,
//! run on cargo's parallel test threads, with exact counts every time (no
//! `AlreadyInitialized`, no spans of one test in another's counts). Also a test that starts
//! the runtime itself, holding `testing::lock()`.
//!
//! Repeated in a loop to show it is not flaky:
//! `for i in $(seq 20); do cargo test --test user_style_recorder || break; done`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stardust_runtime::{Config, Reporter, TraceModel, testing, trace};

// The "application" under test.

#[trace("cart/add", tag = "sku={sku}")]
fn add_to_cart(sku: &str, qty: u32) -> Result<u32, String> {
    if qty == 0 {
        return Err(format!("no quantity for {sku}"));
    }
    price(sku).map(|p| p * qty)
}

#[trace("cart/price")]
fn price(sku: &str) -> Result<u32, String> {
    std::thread::sleep(Duration::from_millis(1)); // give the other tests time to overlap
    Ok(sku.len() as u32)
}

#[trace("batch/run")]
fn run_batch(items: &[u32]) -> u32 {
    let work = stardust_runtime::wrap_fn(|x: u32| {
        let _span = stardust_runtime::span("batch/item");
        x * 2
    });
    std::thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = items.iter().map(|&x| s.spawn(move || work(x))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

// The tests.

#[test]
fn cart_counts_calls_and_errors() {
    let rec = testing::record(|| {
        for i in 0..20 {
            let _ = add_to_cart("sku-1", i % 5);
        }
    });
    // Each error also counts under its type (Stardust's exception statistics).
    assert_eq!(rec.names(), ["cart/add", "cart/price", "ex:String"]);
    assert_eq!(rec.count("cart/add"), 20);
    assert_eq!(rec.errors("cart/add"), 4);
    assert_eq!((rec.count("ex:String"), rec.errors("ex:String")), (4, 0));
    assert_eq!(rec.count("cart/price"), 16);
    assert_eq!(
        rec.error_samples("cart/add")[0].error.as_deref(),
        Some("no quantity for sku-1")
    );
    assert_eq!(rec.samples("cart/add")[0].tag.as_deref(), Some("sku=sku-1"));
    // Each price lookup is a child of a cart span, in its trace.
    for p in rec.samples("cart/price") {
        let parent = rec
            .samples("cart/add")
            .into_iter()
            .find(|a| Some(a.id.as_str()) == p.parent_id.as_deref())
            .expect("a cart/add parent");
        assert_eq!(parent.trace_id, p.trace_id);
    }
}

#[test]
fn batch_items_on_other_threads_are_children_of_the_batch() {
    let rec = testing::record(|| {
        assert_eq!(run_batch(&[1, 2, 3, 4, 5]), 30);
        assert_eq!(run_batch(&[10]), 20);
    });
    assert_eq!(rec.names(), ["batch/item", "batch/run"]);
    assert_eq!((rec.count("batch/run"), rec.count("batch/item")), (2, 6));
    let batches = rec.samples("batch/run");
    for item in rec.samples("batch/item") {
        assert!(
            batches
                .iter()
                .any(|b| Some(b.id.as_str()) == item.parent_id.as_deref()
                    && b.trace_id == item.trace_id),
            "{item:?} is a child of a batch"
        );
    }
}

#[test]
fn nothing_traced_nothing_recorded() {
    let rec = testing::record(|| {
        let _ = 1 + 1;
    });
    assert!(rec.names().is_empty());
    assert_eq!(rec.count("cart/add"), 0);
}

/// A test of the application's own reporter: it starts the runtime itself, so it holds the
/// testing lock while its guard is alive, and never overlaps with `record`.
#[test]
fn own_reporter_with_the_lock_held() {
    struct Keep(Arc<Mutex<Vec<TraceModel>>>);
    impl Reporter for Keep {
        fn report(&mut self, model: &TraceModel) {
            self.0.lock().unwrap().push(model.clone());
        }
    }
    let _lock = testing::lock();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let guard = stardust_runtime::init_with(
        Config::new()
            .app_id("shop")
            .reporter(Keep(kept.clone()))
            .first_report_delay(Duration::from_secs(3600))
            // `flush` waits at most this long for the reporter: far above any scheduling
            // delay, and no longer than the cut takes.
            .shutdown_timeout(Duration::from_secs(60)),
    )
    .expect("no other runtime while the lock is held");
    add_to_cart("sku-22", 1).unwrap();
    guard.flush().expect("the reporter handled the cut");
    drop(guard);
    let kept = kept.lock().unwrap();
    assert_eq!(kept[0].app_id, "shop");
    let total: i32 = kept
        .iter()
        .flat_map(|m| &m.builders)
        .filter(|b| b.name == "cart/add")
        .map(|b| b.total)
        .sum();
    assert_eq!(total, 1);
}
