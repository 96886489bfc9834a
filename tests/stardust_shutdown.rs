//! Shutdown and flush against the strict fake Stardust server (`stardust-test-support`/fake_stardust.rs):
//! the last period and every queued report are delivered within the shutdown budget (retried,
//! through a re-login and fail-over, oldest first), the logout still goes out, what is lost at
//! the deadline is said in one log line; and a period sent by the server takes effect at once.
//!
//! Every test counts what the server recorded, exactly. No outcome depends on the machine's
//! speed (a loaded 2-core CI machine may be many times slower than a workstation): waits are
//! for the recorded evidence, with long deadlines that cost nothing when they pass; budgets
//! are long wherever nothing may be lost (a shutdown that delivers ends at once); and where a
//! time bound is the point of a test, it is [`SLACK`] above what the code may take and far
//! below the slow alternative it rules out (a 60-s period, a 60-s budget, a 120-s request
//! timeout).

use stardust_test_support as support;
use stardust_test_support::common::{self, Workers};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use stardust_runtime::{Config, Guard, trace};
use support::fake_stardust::*;

const APP: &str = "ShutdownApp";
const SECRET: &str = "s3cret-Shutdown-7";
/// Deadline of every wait for something that only has to happen eventually.
const WAIT: Duration = Duration::from_secs(30);
/// Slack on every upper time bound: far above any scheduling delay, far below the slow
/// alternative each bound rules out.
const SLACK: Duration = Duration::from_secs(10);

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

/// Flush-driven periods (the first automatic cut is an hour away). The request timeout is long:
/// a reply that comes late on a loaded machine must not make the client send a report the
/// server already stored again (the counts are exact); refused connections and error statuses
/// fail at once anyway.
fn config(servers: &str) -> Config {
    Config::new()
        .servers(servers.split(','))
        .app_id(APP)
        .secret(SECRET)
        .version("1.2.3")
        .period(Duration::from_secs(60))
        .first_report_delay(Duration::from_secs(3600))
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(3))
        .handoff_capacity(16 * 1024 * 256)
        // Totals are compared exactly: exception statistics have tests of their own.
        .exception_spans(false)
        .console(false)
}

fn fake_with_app() -> FakeStardust {
    FakeStardust::builder().app(APP, Some(SECRET)).start()
}

/// Waits until the server has recorded a logout request (`processed`: and processed it; a hung
/// one is only recorded). The logout has at most 1 s of its own at shutdown: on a loaded
/// machine the client may give up on it before the server has even read it, but it was sent,
/// and the server records it when it gets to it.
fn wait_for_logout(fake: &FakeStardust, processed: bool) {
    assert!(
        fake.wait_for(
            |r| if processed {
                !r.logouts.is_empty()
            } else {
                r.requests_to(Endpoint::Logout).next().is_some()
            },
            WAIT
        ),
        "a logout was sent: {:#?}",
        fake.requests()
    );
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
    // Nothing may be lost here, however slow the machine: a budget it never needs all of (a
    // shutdown that has delivered everything ends at once).
    let budget = Duration::from_secs(30);
    let guard = start(
        config(&fake.base_url())
            .period(Duration::from_secs(2))
            .first_report_delay(Duration::from_millis(300))
            .shutdown_timeout(budget),
    );
    fake.expect_logins(1, WAIT);

    let made = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    // Stopped and joined on unwind too (a failing assertion below).
    let mut workers = Workers::new();
    for t in 0..4u64 {
        let made = made.clone();
        workers.spawn(move |stop| {
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
        });
    }

    // Two healthy periods, then the next two report requests fail.
    assert!(
        fake.wait_for(|r| r.reports.len() >= 2, WAIT),
        "two periods reported"
    );
    fake.fault_next(On::Report, 2, Fault::status(500));
    assert!(
        fake.wait_for(
            |r| r
                .requests
                .iter()
                .any(|q| q.is_report() && q.fault.is_some()),
            WAIT
        ),
        "a periodic report met the first 500"
    );
    // Enough failed queries for the check below, however slowly the workers ran.
    assert!(
        common::wait_until(WAIT, || made[1].load(Ordering::Relaxed) > 10),
        "failed queries: {}",
        made[1].load(Ordering::Relaxed)
    );
    workers.stop();
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
    wait_for_logout(&fake, true);
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
    // Pings an hour apart: once the first is out of the way, none comes during the test.
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .ping_period(3600)
        .start();
    let budget = Duration::from_secs(5);
    // A request timeout far longer than the budget: only the deadlines bound the calls. A call
    // that ignored them would hang for two minutes, far past every bound below.
    let guard = start(
        config(&fake.base_url())
            .request_timeout(Duration::from_secs(120))
            .shutdown_timeout(budget),
    );
    fake.expect_logins(1, WAIT);
    // The first ping (3 s after the login) before any fault: the next is an hour later.
    assert!(fake.wait_for(|r| !r.pings.is_empty(), WAIT), "first ping");

    // The next three report requests answer 500, and from then on the server hangs every call.
    // One set of rules for the flush and the shutdown: switching rules in between would leave a
    // moment in which a flush attempt the client gave up on at its deadline could still reach
    // the server and be stored.
    fake.fault_next(On::Report, 3, Fault::status(500));
    fake.set_fault(On::Any, Fault::Hang);

    // A flush: retried with a short backoff through the three 500s, then it hangs until its
    // deadline, and the report is kept.
    calls(3, 1);
    let t = Instant::now();
    let flushed = guard.flush();
    let flush_took = t.elapsed();
    // Straight on to the shutdown (assertions on the flush after it): the report the flush
    // kept is retried in the background 5 s after it, and that retry would hang too.
    calls(5, 0);
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    eprintln!("flush took {flush_took:?}, shutdown took {took:?}");

    assert!(flushed.is_err(), "the flush was not delivered");
    // The flush ends at its deadline (it cannot end sooner: the server never answers), and
    // `flush()` waits no longer than that deadline.
    assert!(
        flush_took >= budget - Duration::from_millis(200) && flush_took < budget + SLACK,
        "flush took {flush_took:?}"
    );
    let answered_500 = fake
        .report_requests()
        .iter()
        .filter(|q| matches!(q.fault, Some(Fault::Status { status: 500, .. })))
        .count();
    assert_eq!(
        answered_500, 3,
        "retried with a short backoff: all three 500s met well within the flush's {budget:?}"
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

    // The shutdown cannot end sooner than the time it gives the reports; it ends by its
    // deadline (the hung calls' request timeout, 120 s, is far beyond this bound).
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
    wait_for_logout(&fake, false);
    let rec = fake.recorded();
    assert!(rec.reports.is_empty(), "nothing was stored");
    let logout: Vec<_> = rec.requests_to(Endpoint::Logout).collect();
    assert_eq!(logout.len(), 1, "the logout still went out");
    // Sent within the budget, with the time kept for it; a logout that waited for the hung
    // reports' request timeout would come two minutes after the drop.
    assert!(
        logout[0].received_instant < t + budget + SLACK,
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
    // Nothing may be lost here, however slow the machine: a budget it never needs all of (a
    // shutdown that has delivered everything ends at once).
    let budget = Duration::from_secs(30);
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
    wait_for_logout(&second, true);
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
/// 2 s after the first, not 60 s. The ping period (1 s) likewise applies from the first ping's
/// reply. (The upper bounds leave [`SLACK`] for a loaded machine: far below the 60 s that an
/// ignored period would take.)
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
    let mut worker = Workers::new();
    worker.spawn(|stop| {
        while !stop.load(Ordering::Relaxed) {
            ok_op();
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // Both waits end well before the 60 s an ignored period would take.
    let two_reports = fake.wait_for(|r| r.reports.len() >= 2, WAIT);
    let two_pings = fake.wait_for(|r| r.pings.len() >= 2, WAIT);
    worker.stop();
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
    let fake = fake_with_app();
    // Long enough that waiting it out could not pass for "no longer" below.
    let budget = Duration::from_secs(60);
    let guard = start(config(&fake.base_url()).shutdown_timeout(budget));
    fake.expect_logins(1, WAIT);
    calls(4, 2);
    fake.refuse_connections();
    let away = Duration::from_secs(3);
    // Taken before the thread that brings the server back starts, so that it is back no
    // sooner than `away` after it.
    let t = Instant::now();
    let took = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(away);
            fake.accept_connections();
        });
        drop(guard);
        t.elapsed()
    });
    eprintln!("shutdown took {took:?}");
    assert!(took >= away, "waited for the server: {took:?}");
    // Retries at most 1 s apart once the server is back; waiting out the budget would take 60 s.
    assert!(
        took < away + Duration::from_secs(1) + SLACK,
        "shutdown took {took:?}"
    );
    assert_eq!(
        fake.totals_by_name(),
        totals(&[("shut/ok", 4, 0), ("shut/fail", 2, 2)])
    );
    wait_for_logout(&fake, true);
    assert_eq!(fake.logouts().len(), 1);
    assert!(lines_with("deadline passed").is_empty());
    fake.assert_no_violations();
}
