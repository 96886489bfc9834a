//! Counts are exact at any span rate: spans are counted on the thread that closes them, so no
//! buffer can fill and drop a count. Four producer threads call traced functions flat out for
//! 5 s while the main thread cuts a period every 250 ms; over all periods each operation's
//! Total, Errors and Value equal what the threads did, no span is dropped uncounted, and every
//! period's samples keep the caps. A span belongs to the period it ends in, also when its
//! thread is idle at the cut, or still inside an outer span.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use stardust_runtime::{Config, TraceModel, trace};
use stardust_test_support::common;

const LEAVES: u64 = 20;

#[trace("exact/leaf")]
#[inline(never)]
fn leaf(i: u64) -> u64 {
    std::hint::black_box(i).wrapping_mul(3)
}

#[trace("exact/fallible")]
#[inline(never)]
fn fallible(i: u64) -> Result<u64, String> {
    if i % 7 == 0 {
        Err(format!("{i} is a multiple of 7"))
    } else {
        Ok(i)
    }
}

/// One round: a root with `LEAVES` leaves, a fallible call and a manual span with a value.
#[trace("exact/root")]
fn round(i: u64) -> u64 {
    let mut acc = 0;
    for k in 0..LEAVES {
        acc += leaf(k);
    }
    let _ = fallible(i);
    let mut valued = stardust_runtime::span("exact/valued");
    valued.set_value((i % 5) as i64);
    acc
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Made {
    rounds: u64,
    errors: u64,
    value: i64,
}

/// Per operation: (Total, Errors, Value) summed over every period.
fn totals(models: &[TraceModel]) -> HashMap<String, (i64, i64, i64)> {
    let mut out: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for b in models.iter().flat_map(|m| &m.builders) {
        let e = out.entry(b.name.clone()).or_default();
        e.0 += b.total as i64;
        e.1 += b.errors as i64;
        e.2 += b.value;
    }
    out
}

#[test]
fn four_threads_flat_out_for_five_seconds_are_counted_exactly() {
    let _serial = common::serial();
    let (guard, rx) = common::start(Config::new().max_samples(2).max_errors(3));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut made = Made::default();
                while !stop.load(Ordering::Relaxed) {
                    made.rounds += 1;
                    let i = made.rounds;
                    std::hint::black_box(round(i));
                    made.errors += (i % 7 == 0) as u64;
                    made.value += (i % 5) as i64;
                }
                made
            })
        })
        .collect();
    let started = Instant::now();
    let mut cuts = 0;
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        assert!(guard.flush().is_ok());
        cuts += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let made: Vec<Made> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // The threads have exited: their last spans are counted by this cut all the same.
    assert!(guard.flush().is_ok());
    let models = common::drain(&rx);
    drop(guard);

    let rounds: u64 = made.iter().map(|m| m.rounds).sum();
    let errors: u64 = made.iter().map(|m| m.errors).sum();
    let value: i64 = made.iter().map(|m| m.value).sum();
    let spans = rounds * (LEAVES + 3);
    eprintln!(
        "exact_counts: {rounds} rounds, {spans} spans by 4 threads in 5 s ({:.1} M spans/s), {cuts} cuts, {} periods reported",
        spans as f64 / 5e6,
        models.len()
    );
    assert!(models.len() > 10, "periods were cut while the threads ran");
    assert!(rounds > 0);

    let t = totals(&models);
    let r = rounds as i64;
    assert_eq!(t["exact/root"], (r, 0, 0), "root");
    assert_eq!(t["exact/leaf"], (r * LEAVES as i64, 0, 0), "leaf");
    assert_eq!(t["exact/fallible"], (r, errors as i64, 0), "fallible");
    assert_eq!(t["exact/valued"], (r, 0, value), "valued");
    assert_eq!(
        stardust_runtime::dropped_spans(),
        0,
        "no span lost uncounted"
    );

    for b in models.iter().flat_map(|m| &m.builders) {
        let samples = b.samples.as_ref().map_or(0, Vec::len);
        let error_samples = b.error_samples.as_ref().map_or(0, Vec::len);
        assert!(samples <= 20, "{}: {samples} samples", b.name);
        assert!(
            error_samples <= 30,
            "{}: {error_samples} error samples",
            b.name
        );
        if b.total > 0 && b.errors < b.total {
            assert!(
                samples >= 1,
                "{}: the first span of a period is sampled",
                b.name
            );
        }
        if b.errors > 0 && stardust_runtime::dropped_samples() == 0 {
            assert!(
                error_samples >= 3.min(b.errors as usize),
                "{}: the first MaxErrors errors are sampled",
                b.name
            );
        }
        assert!(0 <= b.min_cost && b.min_cost <= b.max_cost, "{b:?}");
        assert!(b.cost >= b.max_cost as i64, "{b:?}");
        assert!(b.start_time <= b.end_time, "{b:?}");
    }
}

#[test]
fn a_span_is_counted_in_the_period_it_ends_in() {
    let _serial = common::serial();
    let (guard, rx) = common::start(Config::new());
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(0);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
    let worker = std::thread::spawn(move || {
        let _outer = stardust_runtime::span("ends-in/outer");
        for i in 0..10 {
            leaf(i);
        }
        // Idle, inside a span that stays open across the cut.
        ready_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    ready_rx.recv().unwrap();
    assert!(guard.flush().is_ok());
    let first = totals(&common::drain(&rx));
    assert_eq!(first.get("exact/leaf"), Some(&(10, 0, 0)), "{first:?}");
    assert!(!first.contains_key("ends-in/outer"), "{first:?}");

    go_tx.send(()).unwrap();
    worker.join().unwrap();
    assert!(guard.flush().is_ok());
    let second = totals(&common::drain(&rx));
    assert_eq!(second.get("ends-in/outer"), Some(&(1, 0, 0)), "{second:?}");
    assert!(!second.contains_key("exact/leaf"), "{second:?}");
}
