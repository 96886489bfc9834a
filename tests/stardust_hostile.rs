//! A hostile or broken server: absurd settings (period 0, −1, 10^9; maxSamples 10^9;
//! maxTagLength 10^9; 100,000 excludes), a 50 MB reply, deeply nested JSON, wrong types. Each
//! is clamped or rejected with one log line, memory stays bounded, nothing panics, and tracing
//! goes on with every count delivered.

use stardust_test_support::common;

use stardust_test_support as support;

use std::sync::{Mutex, Once};
use std::time::Duration;

use serde_json::Value;
use stardust_runtime::{Config, Guard};
use support::fake_stardust::*;

const APP: &str = "HostileApp";
/// Deadline of every wait for something that only has to happen eventually (a loaded machine
/// may be many times slower than a workstation; a wait that passes ends at once).
const WAIT: Duration = Duration::from_secs(60);

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct TestLog;

impl log::Log for TestLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("stardust")
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            LINES
                .lock()
                .unwrap()
                .push(format!("{} {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn lines_containing(s: &str) -> usize {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(s))
        .count()
}

fn start(fake: &FakeStardust) -> Guard {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&TestLog).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
    let guard = stardust_runtime::init_with(
        Config::new()
            .server(fake.base_url())
            .app_id(APP)
            .version("1.0.0")
            .console(false)
            .first_report_delay(Duration::from_secs(3600))
            // Long: the huge replies and 100,000 excludes take the fake (and the client) a
            // while on a loaded machine. A flush that ran out of time, or a request that timed
            // out after the server stored the report (and was sent again), would change the
            // outcomes below; both end as soon as they are done.
            .request_timeout(Duration::from_secs(30))
            .shutdown_timeout(WAIT),
    )
    .unwrap();
    fake.expect_logins(1, WAIT);
    guard
}

/// The builders the client sent in its last report (before the server's own filters).
fn last_report(fake: &FakeStardust) -> Vec<Value> {
    fake.reports()
        .last()
        .and_then(|r| r.model["Builders"].as_array().cloned())
        .unwrap_or_default()
}

fn named<'a>(builders: &'a [Value], name: &str) -> Option<&'a Value> {
    builders.iter().find(|b| b["Name"] == name)
}

#[test]
fn absurd_settings_are_clamped_with_one_log_line() {
    let _serial = common::serial();
    let fake = FakeStardust::builder().app(APP, None).start();
    let guard = start(&fake);
    let before = lines_containing("out-of-range");

    // Period 0 and −1 are ignored (positive values replace); 10^9 values are clamped.
    for period in [0, -1] {
        fake.set_trace_response(TraceResponseCfg {
            period,
            ..Default::default()
        });
        drop(stardust_runtime::span("hostile/warmup"));
        assert!(guard.flush().is_ok());
    }
    fake.set_trace_response(TraceResponseCfg {
        period: 1_000_000_000,
        max_samples: 1_000_000_000,
        max_errors: 1_000_000_000,
        max_tag_length: 1_000_000_000,
        timeout: 1_000_000_000,
        excludes: Some((0..100_000).map(|i| format!("/excluded/{i}")).collect()),
        ..Default::default()
    });
    drop(stardust_runtime::span("hostile/warmup"));
    assert!(guard.flush().is_ok());

    // The clamped values are in force for the next period.
    const N: usize = 12_000;
    for i in 0..N {
        let mut s = stardust_runtime::span("hostile/many");
        if i == 0 {
            s.set_tag("x".repeat(100_000));
        }
    }
    drop(stardust_runtime::span("/excluded/5"));
    drop(stardust_runtime::span("/excluded/99999"));
    assert!(guard.flush().is_ok());
    let builders = last_report(&fake);
    let many = named(&builders, "hostile/many").expect("reported");
    assert_eq!(many["Total"], N as i64);
    let samples = many["Samples"].as_array().unwrap();
    assert_eq!(
        samples.len(),
        1000,
        "maxSamples 10^9 clamped to 1000 (unclamped: all 12,000)"
    );
    let tag = samples[0]["Tag"].as_str().unwrap();
    assert_eq!(
        tag.chars().count(),
        64 * 1024,
        "maxTagLength clamped to 64 Ki"
    );
    assert!(
        named(&builders, "/excluded/5").is_none(),
        "the first excludes apply"
    );
    assert!(
        named(&builders, "/excluded/99999").is_some(),
        "excludes past the first 1000 are not taken"
    );
    assert_eq!(
        lines_containing("out-of-range") - before,
        1,
        "clamping is said once: {:?}",
        LINES.lock().unwrap()
    );
    drop(guard);
    assert!(fake.violations().iter().all(|v| v.rule != "samples-cap"));
}

#[test]
fn huge_nested_and_mistyped_replies_are_rejected_and_the_data_kept() {
    let _serial = common::serial();
    let fake = FakeStardust::builder().app(APP, None).start();
    let guard = start(&fake);

    let huge = {
        let mut b = br#"{"code":0,"data":{"excludes":[""#.to_vec();
        b.resize(50 * 1024 * 1024, b'a');
        b.extend_from_slice(br#""]}}"#);
        b
    };
    let nested = {
        let mut b = br#"{"code":0,"data":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', 100_000));
        b
    };
    let wrong_types =
        br#"{"code":"0","data":{"period":"soon","maxSamples":[1],"timeout":{"a":1},"excludes":"x","maxTagLength":true}}"#
            .to_vec();
    let faults = [
        ("huge", huge),
        ("nested", nested),
        ("wrong types", wrong_types),
    ];
    let mut made = 0i64;
    for (what, body) in faults {
        fake.push_fault(
            On::Report,
            Fault::Raw {
                status: 200,
                content_type: "application/json".into(),
                body,
            },
        );
        drop(stardust_runtime::span("hostile/op"));
        made += 1;
        assert!(guard.flush().is_ok(), "{what}: flush completes");
    }
    // The mistyped reply is a success envelope, so the client rightly counts that report as
    // delivered, but the fake stored nothing for it (a Raw fault skips processing).
    made -= 1;
    // One more period against a healthy server: the queued ones are replayed.
    drop(stardust_runtime::span("hostile/op"));
    made += 1;
    assert!(guard.flush().is_ok());
    let arrived = fake.wait_for(
        |r| {
            r.totals_by_name()
                .get("hostile/op")
                .is_some_and(|t| t.0 as i64 == made)
        },
        WAIT,
    );
    drop(guard);
    // The fake processes nothing it answers with a fault, so each refused report was queued by
    // the client and replayed once: exact totals.
    assert!(
        arrived,
        "all {made} stored spans arrive: {:?}\n{:#?}",
        fake.recorded().totals_by_name(),
        LINES.lock().unwrap()
    );
    let lines = LINES.lock().unwrap().clone();
    let refused: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("report failed"))
        .collect();
    assert_eq!(refused.len(), 2, "the huge and the nested reply: {lines:?}");
    assert!(
        refused.iter().any(|l| l.contains("not JSON")),
        "{refused:?}"
    );
}
