//! Counts are exact at any span rate: spans are counted on the thread that closes them, so no
//! buffer can fill and drop a count. Four producer threads call traced functions flat out for
//! 5 s while the main thread cuts a period every 250 ms; over all periods each operation's
//! Total, Errors and Value equal what the threads did, no span is dropped uncounted, and every
//! period's samples keep the caps. A span belongs to the period it ends in, also when its
//! thread is idle at the cut, or still inside an outer span.
//!
//! No assertion depends on how fast the machine is: the run lasts until enough periods were
//! reported (5 s at least), each flush has a budget far above any scheduling delay, and the
//! producers stop (and are joined) also when an assertion fails.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stardust_runtime::{Config, TraceModel, trace};
use stardust_test_support::common::{self, Workers};

const LEAVES: u64 = 20;

/// What the runtime logs (at debug level) when a cut met a thread inside a close.
const STALLED: &str = "still closing a span at the cut";

/// The flush (and shutdown) budget: `flush()` answers `Ok` as soon as the cut is delivered, so
/// a generous budget costs nothing on a fast machine and keeps a loaded one from failing.
const BUDGET: Duration = Duration::from_secs(60);
/// The producers run at least this long …
const RUN: Duration = Duration::from_secs(5);
/// … and until more periods than this were reported (a slow machine cuts fewer per second) …
const MIN_PERIODS: usize = 10;
/// … unless this much time passed without them: then something is broken, not slow.
const GIVE_UP: Duration = Duration::from_secs(300);

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
    // The runtime's debug lines say when a cut met a thread the scheduler had stopped inside a
    // close (see the sampling checks below).
    common::capture_logs();
    common::clear_log_lines();
    let (guard, rx) = common::start(
        Config::new()
            .max_samples(2)
            .max_errors(3)
            .shutdown_timeout(BUDGET),
    );
    // Each producer sends what it made when it stops. `Workers` stops and joins them also
    // when an assertion below fails, so none runs on into the next test.
    let (made_tx, made_rx) = crossbeam_channel::unbounded();
    let mut workers = Workers::new();
    for _ in 0..4 {
        let made_tx = made_tx.clone();
        workers.spawn(move |stop| {
            let mut made = Made::default();
            while !stop.load(Ordering::Relaxed) {
                made.rounds += 1;
                let i = made.rounds;
                std::hint::black_box(round(i));
                made.errors += (i % 7 == 0) as u64;
                made.value += (i % 5) as i64;
            }
            let _ = made_tx.send(made);
        });
    }
    drop(made_tx);
    let started = Instant::now();
    let mut cuts = 0;
    let mut models = Vec::new();
    // Per model: whether the cut before its period met a stalled close (see below).
    let mut after_stall = Vec::new();
    let mut stalled_at_last_cut = false;
    // Cut every 250 ms for 5 s, and on until more than MIN_PERIODS periods were reported: a
    // slow machine takes longer, it does not fail.
    while started.elapsed() < RUN || models.len() <= MIN_PERIODS {
        assert!(
            started.elapsed() < GIVE_UP,
            "only {} periods reported in {:?} ({cuts} cuts)",
            models.len(),
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
        let lines_before = common::log_lines().len();
        assert!(guard.flush().is_ok());
        cuts += 1;
        // `Ok`: the cut (and every period before it) was handed to the reporter, which sent
        // it to the channel before the flush returned.
        models.extend(rx.try_iter());
        after_stall.resize(models.len(), stalled_at_last_cut);
        // The cut logged before it answered.
        stalled_at_last_cut = common::log_lines()[lines_before..]
            .iter()
            .any(|l| l.contains(STALLED));
    }
    workers.stop();
    let ran = started.elapsed();
    let made: Vec<Made> = made_rx.try_iter().collect();
    assert_eq!(made.len(), 4, "every producer said what it made");
    // The threads have exited: their last spans are counted by this cut all the same.
    assert!(guard.flush().is_ok());
    models.extend(rx.try_iter());
    after_stall.resize(models.len(), stalled_at_last_cut);
    drop(guard);

    let rounds: u64 = made.iter().map(|m| m.rounds).sum();
    let errors: u64 = made.iter().map(|m| m.errors).sum();
    let value: i64 = made.iter().map(|m| m.value).sum();
    let spans = rounds * (LEAVES + 3);
    eprintln!(
        "exact_counts: {rounds} rounds, {spans} spans by 4 threads in {ran:.1?} ({:.1} M spans/s), {cuts} cuts, {} periods reported",
        spans as f64 / ran.as_secs_f64() / 1e6,
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

    // A thread the scheduler stops inside a close for longer than a cut waits for it is read
    // as it is, and what it adds is counted in the next period (documented in `span::tally`;
    // logged). Counts stay exact, but the per-period minimums of samples then need not hold:
    // - a sample candidate handed over after its period was reported is not sampled (logged);
    // - the period after such a cut may hold what the stalled close added without the records
    //   that come with fresh spans (the last one, after the producers stopped, may hold little
    //   else; another one does when every producer was stopped through it).
    // On a loaded 2-core machine these happen; the minimums are checked where they did not
    // (the caps and the counts always are).
    let late_samples = common::log_lines()
        .iter()
        .any(|l| l.contains("arrived after their period was reported"));
    let samples_complete = !late_samples && stardust_runtime::dropped_samples() == 0;
    let unchecked = if samples_complete {
        after_stall.iter().filter(|s| **s).count()
    } else {
        models.len()
    };
    eprintln!(
        "exact_counts: per-period sample minimums checked in {} of {} periods (late sample candidates: {late_samples}, records dropped: {})",
        models.len() - unchecked,
        models.len(),
        stardust_runtime::dropped_samples(),
    );
    for (m, stalled_before) in models.iter().zip(&after_stall) {
        let samples_complete = samples_complete && !stalled_before;
        for b in &m.builders {
            let samples = b.samples.as_ref().map_or(0, Vec::len);
            let error_samples = b.error_samples.as_ref().map_or(0, Vec::len);
            assert!(samples <= 20, "{}: {samples} samples", b.name);
            assert!(
                error_samples <= 30,
                "{}: {error_samples} error samples",
                b.name
            );
            if samples_complete && b.total > 0 && b.errors < b.total {
                assert!(
                    samples >= 1,
                    "{}: the first span of a period is sampled",
                    b.name
                );
            }
            if samples_complete && b.errors > 0 {
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
}

#[test]
fn a_span_is_counted_in_the_period_it_ends_in() {
    let _serial = common::serial();
    let (guard, rx) = common::start(Config::new().shutdown_timeout(BUDGET));
    // Scoped, and `go_tx` is the scope's: when an assertion fails, unwinding drops it, which
    // releases the worker, and the scope joins it before the runtime stops.
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(0);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(0);
        let worker = s.spawn(move || {
            let _outer = stardust_runtime::span("ends-in/outer");
            for i in 0..10 {
                leaf(i);
            }
            // Idle, inside a span that stays open across the cut.
            ready_tx.send(()).unwrap();
            let _ = go_rx.recv();
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
    });
}
