//! High cardinality: a million distinct dynamic span names in one period keep memory bounded —
//! at most 5,000 builders of run-time names per period, the rest counted under one overflow
//! builder, nothing lost — and never push out the operations declared in code.

use stardust_test_support::common;

use std::time::Duration;

use stardust_runtime::Config;

#[test]
fn a_million_names_in_one_period_stay_bounded() {
    let _serial = common::serial();
    let (guard, rx) = common::start(Config::new());
    const N: usize = 1_000_000;
    let before = common::peak_rss_kb();
    for i in 0..N {
        drop(stardust_runtime::span(format!("user/{i}")));
        if i % 10_000 == 9_999 {
            // Pace the producer so that even an unoptimised build's aggregator keeps up: this
            // test is about builders, not about overload (that is the soak's and the bench's).
            std::thread::sleep(Duration::from_millis(40));
        }
    }
    assert!(guard.flush().is_ok());
    let after = common::peak_rss_kb();
    let models = common::drain(&rx);
    let builders: Vec<_> = models.iter().flat_map(|m| &m.builders).collect();
    let total: i64 = builders.iter().map(|b| b.total as i64).sum();
    assert_eq!(total, N as i64, "every span counted");
    assert_eq!(stardust_runtime::dropped_spans(), 0);
    assert!(builders.len() <= 5_001, "{} builders", builders.len());
    let overflow = builders
        .iter()
        .find(|b| b.name == "stardust:overflow")
        .expect("an overflow builder");
    assert_eq!(overflow.total as usize, N - 5_000);
    eprintln!("cardinality: peak RSS {before} kB before, {after} kB after");
    assert!(
        after < before + 64 * 1024,
        "memory grew by {} kB",
        after - before
    );
}

#[stardust_runtime::trace("checkout/pay")]
fn pay() {}

/// 12,000 distinct incoming paths (ids in URLs), then 100 calls of a function declared in
/// code, in the same period: the function keeps its own row with its exact count.
#[test]
fn run_time_names_never_push_out_operations_declared_in_code() {
    let _serial = common::serial();
    let (guard, rx) = common::start(Config::new());
    for i in 0..12_000 {
        // As a naive service names requests: by raw path.
        drop(stardust_runtime::span(format!("GET /inventory/{i}")));
        if i % 2_000 == 1_999 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for _ in 0..100 {
        pay();
    }
    assert!(guard.flush().is_ok());
    let models = common::drain(&rx);
    let builders: Vec<_> = models.iter().flat_map(|m| &m.builders).collect();
    let pay: i64 = builders
        .iter()
        .filter(|b| b.name == "checkout/pay")
        .map(|b| b.total as i64)
        .sum();
    assert_eq!(pay, 100, "checkout/pay keeps its row");
    let overflow: i64 = builders
        .iter()
        .filter(|b| b.name == "stardust:overflow")
        .map(|b| b.total as i64)
        .sum();
    assert_eq!(overflow, 12_000 - 5_000);
    let total: i64 = builders.iter().map(|b| b.total as i64).sum();
    assert_eq!(total, 12_100, "every span counted");
}
