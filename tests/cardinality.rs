//! High cardinality: a million distinct dynamic span names in one period keep memory bounded —
//! at most 10,000 builders per period, the rest counted under one overflow builder, nothing
//! lost.

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
    assert!(builders.len() <= 10_001, "{} builders", builders.len());
    let overflow = builders
        .iter()
        .find(|b| b.name == "stardust:overflow")
        .expect("an overflow builder");
    assert_eq!(overflow.total as usize, N - 10_000);
    eprintln!("cardinality: peak RSS {before} kB before, {after} kB after");
    assert!(
        after < before + 64 * 1024,
        "memory grew by {} kB",
        after - before
    );
}
