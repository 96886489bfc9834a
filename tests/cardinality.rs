//! High cardinality: a million distinct dynamic span names in one period keep memory bounded —
//! at most 5,000 builders of run-time names per period, the rest counted under one overflow
//! builder, nothing lost — and never push out the operations declared in code.

use stardust_test_support::common;

use std::time::{Duration, Instant};

use stardust_runtime::{Config, TraceModel};

/// The flush (and shutdown) budget: `flush()` answers `Ok` as soon as the cut is delivered, so
/// a generous budget costs nothing on a fast machine and keeps a loaded one (where cutting a
/// period of a million names may take seconds) from failing.
const BUDGET: Duration = Duration::from_secs(60);

/// Makes `n` spans of distinct run-time names, paced so that the aggregator keeps up: after
/// each 10,000 the producer sleeps `pace` times as long as it took to make them (at least
/// 40 ms). The aggregator does about as much per span as the producer, so it gets the CPU it
/// needs on a slow machine as on a fast one. (Names past the process's first 10,000 travel to
/// the aggregator as records, through a mailbox of 64 Ki; this test is about builders, not
/// about overload: that is the soak's and the bench's.)
fn make_names(n: usize, pace: u32) {
    let mut chunk = Instant::now();
    for i in 0..n {
        drop(stardust_runtime::span(format!("user/{i}")));
        if i % 10_000 == 9_999 {
            std::thread::sleep((chunk.elapsed() * pace).max(Duration::from_millis(40)));
            chunk = Instant::now();
        }
    }
}

#[test]
fn a_million_names_in_one_period_stay_bounded() {
    let _serial = common::serial();
    const N: usize = 1_000_000;
    const ATTEMPTS: u32 = 3;
    let before = common::peak_rss_kb();
    // Should the aggregator fall behind all the same (starved by other processes: spans
    // dropped, counted and logged), the run says nothing about builders: it is repeated, paced
    // four times slower. The last attempt's results are checked, `dropped_spans() == 0` too.
    let mut pace = 2;
    let (models, dropped) = (1..=ATTEMPTS)
        .find_map(|attempt| {
            let (guard, rx) = common::start(Config::new().shutdown_timeout(BUDGET));
            make_names(N, pace);
            assert!(guard.flush().is_ok());
            let dropped = stardust_runtime::dropped_spans();
            // `Ok`: every period was handed to the reporter, which sent it to the channel.
            let models: Vec<TraceModel> = rx.try_iter().collect();
            drop(guard);
            if dropped > 0 && attempt < ATTEMPTS {
                eprintln!(
                    "cardinality: the aggregator fell behind ({dropped} spans dropped); again, paced slower"
                );
                pace *= 4;
                return None;
            }
            Some((models, dropped))
        })
        .expect("the last attempt returns");
    let after = common::peak_rss_kb();
    let builders: Vec<_> = models.iter().flat_map(|m| &m.builders).collect();
    let total: i64 = builders.iter().map(|b| b.total as i64).sum();
    assert_eq!(total, N as i64, "every span counted");
    assert_eq!(dropped, 0);
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
    let (guard, rx) = common::start(Config::new().shutdown_timeout(BUDGET));
    // 12,000 records fit in a thread's mailbox (64 Ki) even if the aggregator took none
    // before the cut: nothing here depends on it keeping up.
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
