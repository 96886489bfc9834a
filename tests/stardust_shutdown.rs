//! Shutdown and flush against the strict fake Stardust server (`stardust-test-support`/fake_stardust.rs):
//! the last period and every queued report are delivered within the shutdown budget (retried,
//! through a re-login and fail-over, oldest first), the logout still goes out, what is lost at
//! the deadline is said in one log line; and a period sent by the server takes effect at once.
//!
//! Every test counts what the server recorded, exactly. Time bounds are generous (budget +
//! 1.5 s): the machine may be loaded.

use stardust_test_support as support;
use stardust_test_support::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use stardust_runtime::{Config, Guard, trace};
use support::fake_stardust::*;

const APP: &str = "ShutdownApp";
const SECRET: &str = "s3cret-Shutdown-7";
const WAIT: Duration = Duration::from_secs(5);
/// Slack on every upper time bound.
const SLACK: Duration = Duration::from_millis(1500);

// ---- helpers -------------------------------------------------------------------------------

/// The log lines containing `s`.
fn lines_with(s: &str) -> Vec<String> {
    common::log_lines()
        .into_iter()
        .filter(|l| l.contains(s))
        .collect()
}

fn start(cfg: Config) -> Guard {
    common::capture_logs();
    common::clear_log_lines();
    stardust_runtime::init_with(cfg).expect("init")
}

/// Flush-driven periods (the first automatic cut is an hour away), short request timeouts.
fn config(servers: &str) -> Config {
    Config::new()
        .servers(servers.split(','))
        .app_id(APP)
        .secret(SECRET)
        .version("1.2.3")
        .period(Duration::from_secs(60))
        .first_report_delay(Duration::from_secs(3600))
        .request_timeout(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(3))
        .handoff_capacity(16 * 1024 * 256)
        // Totals are compared exactly: exception statistics have tests of their own.
        .exception_spans(false)
        .console(false)
}

fn fake_with_app() -> FakeStardust {
    FakeStardust::builder().app(APP, Some(SECRET)).start()
}

/// The cut time of a stored report (every builder of a report carries it as `EndTime`).
fn cut_time(rep: &ReportRecord) -> i64 {
    let builders = rep.model["Builders"].as_array().expect("builders");
    builders[0]["EndTime"].as_i64().expect("EndTime")
}

#[trace("shut/ok")]
fn ok_op() {}

#[trace("shut/fail")]
fn fail_op(i: u32) -> Result<u32, String> {
    Err(format!("failure {i}"))
}

fn calls(ok: u32, fail: u32) {
    for _ in 0..ok {
        ok_op();
    }
    for i in 0..fail {
        let _ = fail_op(i);
    }
}

// ---- (a) the last two reports answer 500 ---------------------------------------------------

#[trace("shut/query")]
fn query(i: u64) -> Result<u64, String> {
    if i % 7 == 0 {
        Err(format!("no row {i}"))
    } else {
        Ok(i)
    }
}

#[trace("shut/render")]
fn render(i: u64) -> u64 {
    i * 2
}

/// The program: four threads on 2-s periods, the server healthy except for the last two
/// report requests (one periodic, one at shutdown), which answer HTTP 500. Everything arrives,
/// oldest first, within the budget, and the logout goes out last.
#[test]
fn last_two_reports_failing_are_retried_at_shutdown() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .trace_response(TraceResponseCfg {
            period: 2,
            ..Default::default()
        })
        .start();
    let budget = Duration::from_secs(3);
    let guard = start(
        config(&fake.base_url())
            .period(Duration::from_secs(2))
            .first_report_delay(Duration::from_millis(300))
            .shutdown_timeout(budget),
    );
    fake.expect_logins(1, WAIT);

    let made = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (made, stop) = (made.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = t * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if i % 2 == 0 {
                        let err = query(i).is_err();
                        made[0].fetch_add(1, Ordering::Relaxed);
                        made[1].fetch_add(err as u64, Ordering::Relaxed);
                    } else {
                        render(i);
                        made[2].fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        })
        .collect();

    // Two healthy periods, then the next two report requests fail.
    assert!(
        fake.wait_for(|r| r.reports.len() >= 2, Duration::from_secs(8)),
        "two periods reported"
    );
    fake.fault_next(On::Report, 2, Fault::status(500));
    assert!(
        fake.wait_for(
            |r| r
                .requests
                .iter()
                .any(|q| q.is_report() && q.fault.is_some()),
            Duration::from_secs(5)
        ),
        "a periodic report met the first 500"
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < budget + SLACK, "shutdown took {took:?}");

    let ld = |i: usize| made[i].load(Ordering::Relaxed);
    let want: BTreeMap<String, (u64, u64)> = [
        ("shut/query".to_string(), (ld(0), ld(1))),
        ("shut/render".to_string(), (ld(2), 0)),
    ]
    .into_iter()
    .collect();
    assert!(want["shut/query"].1 > 10, "{want:?}");
    assert_eq!(fake.totals_by_name(), want, "every period arrived, once");
    assert_eq!(fake.pending_faults(), 0, "both faults were met");
    let reqs = fake.report_requests();
    assert_eq!(reqs.iter().filter(|r| r.fault.is_some()).count(), 2);
    // Oldest first: the stored reports' cut times only go up.
    let cuts: Vec<i64> = fake.reports().iter().map(cut_time).collect();
    assert!(cuts.windows(2).all(|w| w[0] <= w[1]), "cut order {cuts:?}");
    let rec = fake.recorded();
    assert_eq!(rec.logouts.len(), 1);
    assert_eq!(rec.logins.len(), 1);
    assert_eq!(
        rec.requests.last().unwrap().endpoint,
        Endpoint::Logout,
        "the logout comes last"
    );
    assert!(lines_with("deadline passed").is_empty());
    fake.assert_no_violations();
}

// ---- (b) the server hangs through the whole budget -----------------------------------------

/// A flush that cannot deliver says so (false, one line with the counts) and keeps the report;
/// at shutdown the server hangs: shutdown still ends on time, the logout is still sent, and one
/// line says exactly what was lost.
#[test]
fn hung_server_loses_only_what_is_left_and_says_so() {
    let _s = common::serial();
    let fake = fake_with_app();
    let budget = Duration::from_secs(2);
    // Request timeout longer than the budget: only the deadlines bound the calls.
    let guard = start(
        config(&fake.base_url())
            .request_timeout(Duration::from_secs(5))
            .shutdown_timeout(budget),
    );
    fake.expect_logins(1, WAIT);

    // A flush against a server answering 500: retried until its deadline, then kept.
    fake.set_fault(On::Report, Fault::status(500));
    calls(3, 1);
    let t = Instant::now();
    assert!(guard.flush().is_err(), "the flush was not delivered");
    let took = t.elapsed();
    assert!(
        took >= budget - Duration::from_millis(200) && took < budget + SLACK,
        "flush took {took:?}"
    );
    let retries = fake.report_requests().len();
    assert!(
        retries >= 3,
        "retried with a short backoff: {retries} tries"
    );
    let flush_lines = lines_with("flush deadline passed");
    assert_eq!(flush_lines.len(), 1, "{flush_lines:?}");
    assert!(
        flush_lines[0].contains(&format!(
            "1 report (4 spans) not delivered yet to {}; kept for retry",
            fake.base_url()
        )),
        "{}",
        flush_lines[0]
    );

    // The first ping (3 s after the login) is out of the way (the next is a minute later), then
    // the server hangs every call through the whole shutdown budget.
    assert!(fake.wait_for(|r| !r.pings.is_empty(), WAIT), "first ping");
    fake.clear_faults();
    fake.set_fault(On::Any, Fault::Hang);
    calls(5, 0);
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < budget + SLACK, "shutdown took {took:?}");
    assert!(
        took >= budget / 2,
        "the reports were tried until their deadline: {took:?}"
    );

    let lost = lines_with("shutdown deadline passed");
    assert_eq!(lost.len(), 1, "{lost:?}");
    eprintln!("the loss line: {}", lost[0]);
    assert!(
        lost[0].contains(&format!(
            "stardust: shutdown deadline passed: 2 reports (9 spans) not delivered to {}; lost",
            fake.base_url()
        )),
        "{}",
        lost[0]
    );
    let rec = fake.recorded();
    assert!(rec.reports.is_empty(), "nothing was stored");
    let logout: Vec<_> = rec.requests_to(Endpoint::Logout).collect();
    assert_eq!(logout.len(), 1, "the logout still went out");
    assert!(
        logout[0].received_instant < t + budget,
        "within the budget: {:?} after the drop",
        logout[0].received_instant - t
    );
    let last_report = rec.requests.iter().rfind(|q| q.is_report()).unwrap();
    assert!(last_report.seq < logout[0].seq, "reports first");
    fake.assert_no_violations();
}

// ---- (c) two servers, the first refusing at shutdown ---------------------------------------

/// The first server fails at shutdown (`refuse`: connections refused, else HTTP 503): the last
/// period goes to the second, through a login there (its token is not the first's), and the
/// logout too.
fn shutdown_fails_over(refuse: bool) {
    let _s = common::serial();
    let first = fake_with_app();
    let second = fake_with_app();
    let servers = format!("{},{}", first.base_url(), second.base_url());
    let budget = Duration::from_secs(3);
    let guard = start(config(&servers).shutdown_timeout(budget));
    first.expect_logins(1, WAIT);
    calls(3, 1);
    assert!(guard.flush().is_ok());
    assert_eq!(
        first.totals_by_name(),
        totals(&[("shut/ok", 3, 0), ("shut/fail", 1, 1)])
    );

    if refuse {
        first.refuse_connections();
    } else {
        first.set_fault(On::Any, Fault::status(503));
    }
    calls(2, 2);
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < budget + SLACK, "shutdown took {took:?}");

    assert_eq!(
        second.totals_by_name(),
        totals(&[("shut/ok", 2, 0), ("shut/fail", 2, 2)]),
        "the last period went to the second server"
    );
    assert_eq!(
        first.totals_by_name(),
        totals(&[("shut/ok", 3, 0), ("shut/fail", 1, 1)]),
        "and nothing more to the first"
    );
    let rec = second.recorded();
    assert_eq!(rec.logins.len(), 1, "logged in at the second server");
    assert_eq!(rec.reports.len(), 1);
    assert_eq!(rec.logouts.len(), 1, "logged out there");
    assert!(rec.reports[0].seq < rec.requests_to(Endpoint::Logout).next().unwrap().seq);
    assert_eq!(first.logouts().len(), 0);
    assert!(lines_with("deadline passed").is_empty());
    first.assert_no_violations();
    second.assert_no_violations();
}

#[test]
fn shutdown_fails_over_when_the_first_server_refuses_connections() {
    shutdown_fails_over(true);
}

#[test]
fn shutdown_fails_over_when_the_first_server_answers_503() {
    shutdown_fails_over(false);
}

// ---- (d) a period from the server takes effect at once -------------------------------------

/// Configured period 60 s; the server says 2 s in the first report's reply: the next cut comes
/// at most 2 s after the first, not 60 s. The ping period (1 s) likewise applies from the first
/// ping's reply.
#[test]
fn server_period_takes_effect_at_the_next_cut() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .trace_response(TraceResponseCfg {
            period: 2,
            ..Default::default()
        })
        .ping_period(1)
        .start();
    let guard = start(
        config(&fake.base_url())
            .period(Duration::from_secs(60))
            .first_report_delay(Duration::from_millis(300)),
    );
    fake.expect_logins(1, WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                ok_op();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let two_reports = fake.wait_for(|r| r.reports.len() >= 2, Duration::from_secs(2) + WAIT);
    let two_pings = fake.wait_for(|r| r.pings.len() >= 2, WAIT);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    drop(guard);
    assert!(two_reports, "a second report within seconds, not 60 s");
    let reps = fake.reports();
    assert_eq!(reps[0].response["period"], Value::from(2));
    let gap = cut_time(&reps[1]) - cut_time(&reps[0]);
    assert!(
        (1000..=2000 + SLACK.as_millis() as i64).contains(&gap),
        "second cut {gap} ms after the first"
    );
    assert!(two_pings, "two pings");
    let rec = fake.recorded();
    let pings: Vec<_> = rec.requests_to(Endpoint::Ping).collect();
    let gap = pings[1].received_instant - pings[0].received_instant;
    assert!(
        gap < Duration::from_secs(1) + SLACK,
        "second ping {gap:?} after the first"
    );
    fake.assert_no_violations();
}

// ---- (e) a longer budget waits instead of losing -------------------------------------------

/// With a long shutdown budget, a server that is away for a few seconds at shutdown still gets
/// the last period: shutdown waits for it (and no longer).
#[test]
fn a_long_budget_waits_for_the_server_to_come_back() {
    let _s = common::serial();
    let fake = Arc::new(fake_with_app());
    let budget = Duration::from_secs(30);
    let guard = start(config(&fake.base_url()).shutdown_timeout(budget));
    fake.expect_logins(1, WAIT);
    calls(4, 2);
    fake.refuse_connections();
    let away = Duration::from_secs(3);
    let back = {
        let fake = fake.clone();
        std::thread::spawn(move || {
            std::thread::sleep(away);
            fake.accept_connections();
        })
    };
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    back.join().unwrap();
    eprintln!("shutdown took {took:?}");
    assert!(took >= away, "waited for the server: {took:?}");
    // Retries at most 1 s apart once the server is back.
    assert!(
        took < away + Duration::from_secs(1) + SLACK,
        "shutdown took {took:?}"
    );
    assert_eq!(
        fake.totals_by_name(),
        totals(&[("shut/ok", 4, 0), ("shut/fail", 2, 2)])
    );
    assert_eq!(fake.logouts().len(), 1);
    assert!(lines_with("deadline passed").is_empty());
    fake.assert_no_violations();
}
