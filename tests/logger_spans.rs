//! A logger that itself opens spans (a log shipper over traced HTTP, say) must not deadlock the
//! runtime when the runtime logs, and the runtime's own threads record no spans.

use stardust_test_support::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stardust_runtime::Config;

static LOGGED: AtomicUsize = AtomicUsize::new(0);

struct SpanningLogger;

impl log::Log for SpanningLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, _: &log::Record<'_>) {
        LOGGED.fetch_add(1, Ordering::Relaxed);
        drop(stardust_runtime::span("logger/ship"));
    }
    fn flush(&self) {}
}

#[test]
fn a_logger_that_opens_spans_does_not_deadlock_the_aggregator() {
    let _serial = common::serial();
    static LOGGER: SpanningLogger = SpanningLogger;
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    // A flush budget far above any scheduling delay: `flush()` is `Ok` as soon as the cut is
    // delivered, and then every model is with the test's channel.
    let (guard, rx) = common::start(Config::new().shutdown_timeout(Duration::from_secs(60)));
    // More names than a period keeps: the aggregator logs the overflow warning.
    for i in 0..10_050 {
        drop(stardust_runtime::span(format!("name/{i}")));
    }
    assert!(guard.flush().is_ok(), "flush completes");
    assert!(LOGGED.load(Ordering::Relaxed) > 0, "the runtime logged");
    // A new thread can still hand spans over.
    std::thread::spawn(|| drop(stardust_runtime::span("after/thread")))
        .join()
        .unwrap();
    assert!(guard.flush().is_ok());
    let models = common::drain(&rx);
    let names: Vec<&str> = models
        .iter()
        .flat_map(|m| &m.builders)
        .map(|b| b.name.as_str())
        .collect();
    assert!(
        names.contains(&"after/thread"),
        "{:?}",
        &names[names.len().saturating_sub(3)..]
    );
    // Spans the logger opened on the runtime's own threads were not recorded; the ones opened
    // on this thread were (the test thread logs nothing itself, so there are none).
    assert!(
        !names.contains(&"logger/ship"),
        "runtime threads record no spans"
    );
}

#[test]
fn huge_durations_in_config_do_not_panic() {
    let _serial = common::serial();
    let (capture, rx) = common::capture();
    let guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .reporter(capture)
            .shutdown_timeout(Duration::MAX)
            .first_report_delay(Duration::MAX)
            .request_timeout(Duration::MAX)
            .slow_threshold(Duration::MAX)
            .period(Duration::MAX),
    )
    .unwrap();
    drop(stardust_runtime::span("x"));
    assert!(guard.flush().is_ok());
    // The span was counted, and shutting down with nothing left to send does not wait for
    // the (unbounded) shutdown budget.
    let total: u64 = common::drain(&rx)
        .iter()
        .flat_map(|m| &m.builders)
        .filter(|b| b.name == "x")
        .map(|b| b.total as u64)
        .sum();
    assert_eq!(total, 1, "the span made under huge settings is counted");
    // Waiting for the budget would take an hour (`shutdown_timeout` is capped there): a bound
    // of a minute rules that out and is far above any scheduling delay of a loaded machine.
    let t = std::time::Instant::now();
    drop(guard);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "shutdown took {:?}",
        t.elapsed()
    );
}
