//! End to end against the strict fake Stardust server (the fake server of `stardust-test-support`): login
//! and token handling, reply parsing, clock sync, reports (plain and gzip), the retry queue,
//! excludes, shutdown. Every test counts what the server recorded, exactly.
//!
//! Periods are cut with `flush()` (the first automatic cut is 60 s away), except in the
//! retry-queue tests, whose first cut is automatic (a failed flush is retried within the
//! flush), and the concurrent test at the end, which runs on 1-s periods.
//!
//! No assertion depends on how fast the machine is: the tests wait for what the server
//! recorded (with deadlines far above any scheduling delay: a wait ends as soon as its
//! condition holds), and where a time bound is the point of a test, the alternative it rules out
//! is made many times slower than the bound.

use stardust_test_support as support;
use stardust_test_support::common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use stardust_runtime::{Config, Guard, trace};
use support::fake_stardust::*;

const APP: &str = "ProtoApp";
const SECRET: &str = "s3cret-Value-42";
/// How long to wait for something that must happen soon: generous, as a loaded 2-core machine
/// can be many times slower than a workstation, and free when the condition holds early.
const WAIT: Duration = Duration::from_secs(30);

// ---- helpers -------------------------------------------------------------------------------

/// Every log line of the runtime, to check that no secret or token is ever logged.
fn log_lines() -> Vec<String> {
    common::log_lines()
}

fn install_logger() {
    common::capture_logs();
}

/// Client config: flush-driven periods, short timeouts, a big span channel (nothing dropped).
fn config(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .secret(SECRET)
        .version("1.2.3")
        .period(Duration::from_secs(60))
        .first_report_delay(Duration::from_secs(60))
        .request_timeout(Duration::from_millis(500))
        .shutdown_timeout(Duration::from_secs(3))
        .handoff_capacity(16 * 1024 * 256)
        // These tests count operations exactly: exception statistics have tests of their own.
        .exception_spans(false)
        .console(false)
}

fn fake_with_app() -> FakeStardust {
    FakeStardust::builder().app(APP, Some(SECRET)).start()
}

/// Starts the runtime. That `init` does not wait for the network is tested on its own, against
/// a server that never answers (`hung_server_delays_neither_init_nor_shutdown`).
fn start(cfg: Config) -> Guard {
    install_logger();
    stardust_runtime::init_with(cfg).expect("init")
}

fn wait_totals(fake: &FakeStardust, want: &BTreeMap<String, (u64, u64)>, timeout: Duration) {
    let ok = fake.wait_for(|r| r.totals_by_name() == *want, timeout);
    assert!(
        ok,
        "server totals {:?} != calls made {want:?}",
        fake.totals_by_name()
    );
}

/// Builders of a report as the client sent them, by name.
fn sent_builders(rep: &ReportRecord) -> BTreeMap<String, Value> {
    rep.model["Builders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["Name"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

fn count(b: &Value, key: &str) -> i64 {
    b[key].as_i64().unwrap_or_else(|| panic!("{key} in {b}"))
}

fn samples(b: &Value, key: &str) -> usize {
    b[key].as_array().map_or(0, Vec::len)
}

fn bearer(r: &RecordedRequest) -> Option<String> {
    r.header("authorization").map(|a| {
        a.strip_prefix("Bearer ")
            .expect("Bearer prefix")
            .to_string()
    })
}

/// No token or secret in any URL, no plaintext secret anywhere, only `Bearer` auth, and none
/// of the fake's strictness rules broken.
fn assert_clean(fake: &FakeStardust, secret: Option<&str>) {
    for r in fake.requests() {
        let q = r.query.to_ascii_lowercase();
        assert!(!q.contains("token"), "token in the URL: {} {q}", r.path);
        if let Some(a) = r.header("authorization") {
            assert!(a.starts_with("Bearer "), "{a}");
            let t = &a["Bearer ".len()..];
            assert!(!q.contains(&t.to_ascii_lowercase()));
        }
        if let Some(s) = secret {
            let s = s.to_ascii_lowercase();
            assert!(!q.contains(&s), "secret in the URL");
            assert!(!r.body_text().to_ascii_lowercase().contains(&s));
            if let Some(j) = &r.json {
                assert!(!j.to_string().to_ascii_lowercase().contains(&s));
            }
            for (k, v) in &r.headers {
                assert!(!v.to_ascii_lowercase().contains(&s), "secret in header {k}");
            }
        }
    }
    // Nothing secret in the log: no app secret, no token.
    let rec = fake.recorded();
    let mut secrets: Vec<String> = fake.apps().into_iter().filter_map(|a| a.secret).collect();
    secrets.extend(secret.map(str::to_string));
    secrets.extend(rec.logins.iter().filter_map(|l| l.token.clone()));
    secrets.extend(rec.pings.iter().filter_map(|p| p.new_token.clone()));
    for line in log_lines() {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "logged a secret or token: {line}"
            );
        }
    }
    fake.assert_no_violations();
}

#[trace("proto/ok")]
fn ok_op() {}

#[trace("proto/fail")]
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

// ---- login, replies, tokens ----------------------------------------------------------------

#[test]
fn login_body_and_salted_secret() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake).app_name("Proto App"));
    // Logged in in the background, with no span made.
    fake.expect_logins(1, WAIT);
    let l = &fake.logins()[0];
    assert_eq!(l.code, 0);
    assert_eq!(l.app_id, APP);
    assert_eq!(l.secret.form, SecretForm::Salted, "{:?}", l.secret);
    assert!(l.secret.ok, "{:?}", l.secret);
    assert!(!l.auto_registered && !l.disclosed_secret);
    let body = l.body.as_object().unwrap();
    assert_eq!(body["AppId"], APP);
    assert_eq!(body["Code"], APP);
    assert_eq!(body["AppName"], "Proto App");
    assert_eq!(body["Version"], "1.2.3");
    let client_id = body["ClientId"].as_str().unwrap();
    let (ip, pid) = client_id.split_once('@').unwrap();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{client_id}");
    assert_eq!(pid, std::process::id().to_string());
    assert!((body["Time"].as_i64().unwrap() - common::now_ms()).abs() < 10_000);
    assert!(body["IP"].is_string());
    // `$md5$<unixSec>$<MD5u(MD5u(secret) + unixSec)>`, checked here independently.
    let sent = body["Secret"].as_str().unwrap();
    let parts: Vec<&str> = sent.split('$').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!((parts[0], parts[1]), ("", "md5"));
    let salt: i64 = parts[2].parse().unwrap();
    assert!((salt - common::now_ms() / 1000).abs() < 10);
    assert_eq!(parts[3], md5_upper(&(md5_upper(SECRET) + parts[2])));
    assert_ne!(sent, SECRET);
    // The HTTP request itself.
    let req = fake
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Login)
        .unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/App/Login");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("authorization"), None, "login is anonymous");

    // First ping ~3 s after login, with the token and the process metrics. Not sooner (a
    // slow machine only makes it later), and well before the server's 60-s ping period: the
    // upper bound rules out waiting a whole period, not a slow scheduler.
    assert!(fake.wait_for(|r| !r.pings.is_empty(), WAIT));
    let reqs = fake.requests();
    let login_at = reqs[0].received_instant;
    let ping_req = reqs.iter().find(|r| r.endpoint == Endpoint::Ping).unwrap();
    let after = ping_req.received_instant - login_at;
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(30),
        "first ping {after:?} after login"
    );
    assert_eq!(bearer(ping_req), l.token);
    let ping = &fake.pings()[0];
    assert_eq!(ping.app, APP);
    assert_eq!(ping.client_id, client_id);
    assert_eq!(ping.body["Id"], std::process::id());
    assert_eq!(ping.body["Version"], "1.2.3");
    assert!((ping.body["Time"].as_i64().unwrap() - common::now_ms()).abs() < 10_000);
    drop(guard);
    assert_eq!(fake.logins().len(), 1);
    assert_clean(&fake, Some(SECRET));
}

/// Login, report and reply handling with the given reply style: the token is used, the
/// server clock (5 min ahead) is adopted, and the TraceResponse settings are applied.
fn replies_are_understood(pascal: bool, code_200: bool) {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .pascal_case(pascal)
        .success_code_200(code_200)
        .clock_offset_ms(300_000)
        .trace_response(TraceResponseCfg {
            max_samples: 3,
            ..Default::default()
        })
        .start();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    let token = fake.logins()[0].token.clone().unwrap();
    if pascal {
        let r = fake.requests()[0].response.clone().unwrap();
        let j = r.json.unwrap();
        assert!(
            j.get("Code").is_some() && j["Data"].get("Token").is_some(),
            "{j}"
        );
    }
    if code_200 {
        assert_eq!(fake.requests()[0].response_code(), Some(200));
    }

    for _ in 0..10 {
        ok_op();
    }
    assert!(guard.flush().is_ok());
    for _ in 0..10 {
        ok_op();
    }
    assert!(guard.flush().is_ok());
    wait_totals(&fake, &totals(&[("proto/ok", 20, 0)]), WAIT);

    let reps = fake.reports();
    assert_eq!(reps.len(), 2);
    let (b1, b2) = (
        &sent_builders(&reps[0])["proto/ok"],
        &sent_builders(&reps[1])["proto/ok"],
    );
    // Default 1 sample, then the 3 the server asked for.
    assert_eq!(samples(b1, "Samples"), 1, "{b1}");
    assert_eq!(samples(b2, "Samples"), 3, "{b2}");
    // Timestamps follow the server clock (5 minutes ahead), not the local one.
    let start = count(b2, "StartTime");
    assert!(
        (start - fake.server_now_ms()).abs() < 10_000,
        "StartTime {start} vs server {}",
        fake.server_now_ms()
    );
    assert!(start - common::now_ms() > 280_000);

    let reqs = fake.report_requests();
    assert_eq!(reqs.len(), 2, "a success must not be retried");
    for r in &reqs {
        assert_eq!(bearer(r).as_deref(), Some(token.as_str()));
    }
    assert_eq!(fake.logins().len(), 1);
    drop(guard);
    assert_eq!(fake.logouts().len(), 1);
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn camel_case_replies() {
    replies_are_understood(false, false);
}

#[test]
fn pascal_case_replies() {
    replies_are_understood(true, false);
}

#[test]
fn code_200_is_success() {
    replies_are_understood(false, true);
}

#[test]
fn token_refresh_through_ping() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .token_lifetime(Duration::from_secs(4))
        .ping_period(1)
        .start();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    let login_at = Instant::now();
    let token0 = fake.logins()[0].token.clone().unwrap();
    // First ping at ~3 s; each reply carries a fresh token (lifetime < refresh window).
    assert!(fake.wait_for(|r| r.pings.len() >= 3, WAIT));
    // Outlive the login token (4..5 s), then report.
    std::thread::sleep(Duration::from_millis(6000).saturating_sub(login_at.elapsed()));
    assert!(fake.verify_token(&token0).is_none(), "login token expired");
    calls(2, 1);
    assert!(guard.flush().is_ok());
    wait_totals(
        &fake,
        &totals(&[("proto/ok", 2, 0), ("proto/fail", 1, 1)]),
        WAIT,
    );

    let rec = fake.recorded();
    // Each ping used the token the previous reply handed out.
    let ping_reqs: Vec<_> = rec.requests_to(Endpoint::Ping).collect();
    let mut expected = token0.clone();
    for (req, ping) in ping_reqs.iter().zip(&rec.pings) {
        assert_eq!(req.seq, ping.seq, "every ping was accepted");
        assert_eq!(bearer(req).as_deref(), Some(expected.as_str()));
        expected = ping.new_token.clone().expect("refreshed");
    }
    let rep = fake.report_requests();
    assert_eq!(rep.len(), 1);
    let used = bearer(&rep[0]).unwrap();
    assert_ne!(used, token0);
    assert!(
        rec.pings
            .iter()
            .any(|p| p.new_token.as_ref() == Some(&used))
    );
    assert_eq!(rep[0].response_code(), Some(0));
    assert_eq!(rec.logins.len(), 1, "no re-login was needed");
    drop(guard);
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn code_401_logs_in_again_and_retries_the_same_call() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);

    // The server forgot its tokens (restart with a new TokenSecret): the JWT gets a real 401.
    calls(5, 2);
    fake.invalidate_tokens();
    assert!(guard.flush().is_ok());
    wait_totals(
        &fake,
        &totals(&[("proto/ok", 5, 0), ("proto/fail", 2, 2)]),
        WAIT,
    );
    // Then an injected `{code:401}` envelope.
    calls(1, 1);
    fake.push_fault(
        On::Report,
        Fault::code(401, "非法访问[ProtoApp] 令牌已过期"),
    );
    assert!(guard.flush().is_ok());
    wait_totals(
        &fake,
        &totals(&[("proto/ok", 6, 0), ("proto/fail", 3, 3)]),
        WAIT,
    );

    let rec = fake.recorded();
    let logins: Vec<_> = rec.requests_to(Endpoint::Login).collect();
    let reports: Vec<_> = rec.requests.iter().filter(|r| r.is_report()).collect();
    assert_eq!(logins.len(), 3);
    assert_eq!(reports.len(), 4);
    assert_eq!(rec.reports.len(), 2);
    for (refused, relogin, retry) in [
        (reports[0], logins[1], reports[1]),
        (reports[2], logins[2], reports[3]),
    ] {
        assert_eq!(refused.response_code(), Some(401));
        assert!(refused.seq < relogin.seq && relogin.seq < retry.seq);
        assert_eq!(retry.response_code(), Some(0));
        assert_eq!(retry.endpoint, refused.endpoint);
        assert_eq!(retry.json, refused.json, "the same report is sent again");
        let new_token = rec.logins.iter().find(|l| l.seq == relogin.seq).unwrap();
        assert_eq!(bearer(retry), new_token.token);
    }
    drop(guard);
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn ping_401_and_403_log_in_again() {
    let _s = common::serial();
    // Pings every 8 s: a refused ping retried at once (what is tested) is then told apart from
    // one left to the next scheduled ping by seconds, not by a scheduler's delay.
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .ping_period(8)
        .start();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    // 401 on ping: log in again and send that ping again.
    fake.push_fault(On::Ping, Fault::code(401, "非法访问[ProtoApp] 令牌已过期"));
    assert!(fake.wait_for(|r| r.logins.len() >= 2 && !r.pings.is_empty(), WAIT));
    fake.push_fault(On::Ping, Fault::code(403, "无效客户端！"));
    assert!(fake.wait_for(|r| r.logins.len() >= 3, WAIT));

    let rec = fake.recorded();
    let pings: Vec<_> = rec.requests_to(Endpoint::Ping).collect();
    let logins: Vec<_> = rec.requests_to(Endpoint::Login).collect();
    assert_eq!(logins.len(), 3);
    assert_eq!(pings[0].response_code(), Some(401));
    assert!(pings[0].seq < logins[1].seq && logins[1].seq < pings[1].seq);
    assert_eq!(pings[1].response_code(), Some(0));
    assert_eq!(pings[1].seq, rec.pings[0].seq);
    assert!(
        pings[1].received_instant - logins[1].received_instant < Duration::from_secs(5),
        "the refused ping is retried right after the new login, not at the next ping"
    );
    assert_eq!(bearer(pings[1]), rec.logins[1].token);
    let p403 = pings
        .iter()
        .find(|p| p.response_code() == Some(403))
        .unwrap();
    assert!(p403.seq < logins[2].seq);
    assert!(
        logins[2].received_instant - p403.received_instant < Duration::from_secs(5),
        "a 403 logs in again at once, not at the next ping"
    );

    // Reports then use the newest token.
    calls(1, 0);
    assert!(guard.flush().is_ok());
    wait_totals(&fake, &totals(&[("proto/ok", 1, 0)]), WAIT);
    let rep = fake.report_requests();
    assert_eq!(rep.len(), 1);
    assert_eq!(bearer(&rep[0]), fake.logins()[2].token);
    drop(guard);
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn auto_registered_secret_is_adopted() {
    let _s = common::serial();
    let fake = FakeStardust::start();
    let guard = start(config(&fake).app_id("FreshApp").secret("wrong-but-unknown"));
    fake.expect_logins(1, WAIT);
    let first = fake.logins()[0].clone();
    assert!(first.auto_registered && first.disclosed_secret);
    let issued = fake.app("FreshApp").unwrap().secret.unwrap();
    // Force a second login (401 on the report): it uses the issued secret, salted.
    calls(1, 0);
    fake.invalidate_tokens();
    assert!(guard.flush().is_ok());
    wait_totals(&fake, &totals(&[("proto/ok", 1, 0)]), WAIT);
    let logins = fake.logins();
    assert_eq!(logins.len(), 2);
    assert!(!logins[1].auto_registered);
    assert_eq!(logins[1].secret.form, SecretForm::Salted);
    assert!(logins[1].secret.ok, "{:?}", logins[1].secret);
    let sent = logins[1].body["Secret"].as_str().unwrap().to_string();
    let salt = sent.split('$').nth(2).unwrap();
    assert_eq!(
        sent,
        format!("$md5${salt}${}", md5_upper(&(md5_upper(&issued) + salt)))
    );
    assert!(
        log_lines()
            .iter()
            .any(|l| l.contains("registered") && l.contains("FreshApp")),
        "the adoption is announced once in the log"
    );
    drop(guard);
    assert_clean(&fake, Some(&issued));
}

#[test]
fn no_token_no_ping() {
    let _s = common::serial();
    // Auto-registered but kept disabled: login succeeds with `token: null`.
    let fake = FakeStardust::builder()
        .auto_register_enabled(false)
        .ping_period(1)
        .start();
    let guard = start(config(&fake).app_id("Unapproved"));
    fake.expect_logins(1, WAIT);
    assert_eq!(fake.logins()[0].token, None);
    std::thread::sleep(Duration::from_millis(4000));
    drop(guard);
    let rec = fake.recorded();
    assert_eq!(rec.requests_to(Endpoint::Ping).count(), 0);
    assert_eq!(rec.requests_to(Endpoint::Logout).count(), 0);
    assert_eq!(rec.logins.len(), 1, "no login loop");
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn fails_over_to_the_next_server() {
    let _s = common::serial();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fake = fake_with_app();
    let servers = [format!("http://127.0.0.1:{dead}/"), fake.base_url()];
    let guard = start(config(&fake).servers(servers));
    fake.expect_logins(1, WAIT);
    calls(2, 1);
    assert!(guard.flush().is_ok());
    wait_totals(
        &fake,
        &totals(&[("proto/ok", 2, 0), ("proto/fail", 1, 1)]),
        WAIT,
    );
    drop(guard);
    assert_eq!(fake.logouts().len(), 1);
    assert_clean(&fake, Some(SECRET));
}

// ---- failures and the retry queue ----------------------------------------------------------

/// CPU time (user + system) of this process, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn server_down_at_start_then_up_delivers_everything() {
    let _s = common::serial();
    let fake = fake_with_app();
    fake.refuse_connections();
    let budget = Duration::from_secs(1);
    let guard = start(config(&fake).shutdown_timeout(budget));
    calls(3, 1);
    // A flush tries until its deadline (the shutdown timeout, at least 1 s), then says no: not
    // sooner (a slow machine only makes it later), and not for much longer (the bound is wide,
    // for a loaded machine: what it rules out is a flush that waits without a deadline).
    let t = Instant::now();
    assert!(guard.flush().is_err());
    let took = t.elapsed();
    assert!(
        took >= budget - Duration::from_millis(200) && took < budget + Duration::from_secs(15),
        "flush took {took:?}"
    );
    let first_queued = Instant::now();
    calls(2, 0);
    assert!(guard.flush().is_err());
    assert!(fake.requests().is_empty());

    // While logged out with reports queued, the uploader must wait, not spin (the retry
    // timer of the queue is 5 s; measure past it).
    #[cfg(target_os = "linux")]
    {
        std::thread::sleep(Duration::from_millis(5300).saturating_sub(first_queued.elapsed()));
        let (c0, t0) = (cpu_ticks(), Instant::now());
        std::thread::sleep(Duration::from_millis(1000));
        let used = (cpu_ticks() - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
        assert!(used < 0.3, "process busy {:.0}% while idle", used * 100.0);
    }
    let _ = first_queued;

    fake.accept_connections();
    calls(1, 0);
    assert!(guard.flush().is_ok());
    wait_totals(
        &fake,
        &totals(&[("proto/ok", 6, 0), ("proto/fail", 1, 1)]),
        WAIT,
    );
    let reps = fake.reports();
    assert_eq!(reps.len(), 3);
    // A flush delivers the queue, oldest first (kept without samples), then its cut.
    let ok_totals: Vec<i64> = reps
        .iter()
        .map(|r| count(&sent_builders(r)["proto/ok"], "Total"))
        .collect();
    assert_eq!(ok_totals, [3, 2, 1]);
    assert!(sent_builders(&reps[0]).contains_key("proto/fail"));
    assert_eq!(samples(&sent_builders(&reps[2])["proto/ok"], "Samples"), 1);
    for r in &reps[..2] {
        for b in sent_builders(r).values() {
            assert_eq!(samples(b, "Samples") + samples(b, "ErrorSamples"), 0, "{b}");
        }
    }
    assert_eq!(fake.logins().len(), 1);
    drop(guard);
    assert_eq!(fake.totals_by_name().len(), 2);
    assert_clean(&fake, Some(SECRET));
}

/// One report fails with `fault`, exactly once each time. A periodic one is kept (without
/// samples) and delivered by the next flush, before that flush's cut (oldest first); a flush's
/// own report is retried within the flush.
fn failed_report_is_replayed(fault: Fault) {
    let _s = common::serial();
    let fake = fake_with_app();
    // The first cut is automatic (300 ms after the first span); the next one 60 s later.
    let guard = start(config(&fake).first_report_delay(Duration::from_millis(300)));
    fake.expect_logins(1, WAIT);
    fake.push_fault(On::Report, fault.clone());
    calls(3, 2);
    assert!(
        fake.wait_for(|r| r.requests.iter().any(RecordedRequest::is_report), WAIT),
        "the first period is reported"
    );
    let reqs = fake.report_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].fault.as_ref(), Some(&fault));
    assert!(fake.reports().is_empty(), "nothing stored yet");

    calls(4, 1);
    assert!(guard.flush().is_ok());
    let want = totals(&[("proto/ok", 7, 0), ("proto/fail", 3, 3)]);
    assert_eq!(fake.totals_by_name(), want, "delivered when flush returns");
    let reqs = fake.report_requests();
    assert_eq!(reqs.len(), 3, "failed, replayed, current");
    let reps = fake.reports();
    assert_eq!(reps.len(), 2);
    let replay = sent_builders(&reps[0]);
    assert_eq!(count(&replay["proto/ok"], "Total"), 3);
    assert_eq!(count(&replay["proto/fail"], "Errors"), 2);
    for b in replay.values() {
        assert_eq!(samples(b, "Samples") + samples(b, "ErrorSamples"), 0, "{b}");
    }
    assert_eq!(count(&sent_builders(&reps[1])["proto/ok"], "Total"), 4);

    // A flush whose report fails retries it at once, samples and all.
    fake.push_fault(On::Report, fault.clone());
    calls(1, 1);
    assert!(guard.flush().is_ok());
    let want = totals(&[("proto/ok", 8, 0), ("proto/fail", 4, 4)]);
    assert_eq!(fake.totals_by_name(), want);
    let reqs = fake.report_requests();
    assert_eq!(reqs.len(), 5, "then failed and retried");
    assert_eq!(reqs[3].fault.as_ref(), Some(&fault));
    let retried = sent_builders(fake.reports().last().unwrap());
    assert_eq!(samples(&retried["proto/ok"], "Samples"), 1);
    assert_eq!(samples(&retried["proto/fail"], "ErrorSamples"), 1);
    assert_eq!(
        fake.logins().len(),
        1,
        "a transport error is not a reason to log in"
    );
    drop(guard);
    assert_eq!(fake.totals_by_name(), want);
    assert_eq!(fake.logouts().len(), 1);
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn http_500_is_queued_and_replayed() {
    failed_report_is_replayed(Fault::status(500));
}

#[test]
fn http_503_is_queued_and_replayed() {
    failed_report_is_replayed(Fault::status(503));
}

#[test]
fn connection_reset_is_queued_and_replayed() {
    failed_report_is_replayed(Fault::Drop);
}

#[test]
fn garbage_body_is_queued_and_replayed() {
    failed_report_is_replayed(Fault::garbage());
}

/// The reply would come after the client's 500 ms request timeout. (The fake only processes
/// the request after the delay, i.e. never within this test, so the count stays exact.)
#[test]
fn slow_reply_is_queued_and_replayed() {
    failed_report_is_replayed(Fault::slow(Duration::from_secs(120)));
}

/// A business error (code other than 0/200/401) drops that report: it is not retried.
#[test]
fn business_error_drops_the_report() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    calls(3, 1);
    fake.push_fault(On::Report, Fault::code(500, "应用[ProtoApp]已禁用！"));
    assert!(guard.flush().is_ok());
    calls(1, 0);
    assert!(guard.flush().is_ok());
    let want = totals(&[("proto/ok", 1, 0)]);
    wait_totals(&fake, &want, WAIT);
    drop(guard);
    assert_eq!(fake.report_requests().len(), 2);
    assert_eq!(fake.totals_by_name(), want);
    assert_eq!(fake.logins().len(), 1);
    assert_clean(&fake, Some(SECRET));
}

/// A report the server can never bind (HTTP 400, 413 or 415) is dropped like a business
/// error: it does not sit at the head of the retry queue, blocking every report behind it.
#[test]
fn report_that_does_not_bind_is_dropped_not_retried() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    calls(3, 1);
    fake.push_fault(On::Report, Fault::status(400));
    assert!(
        guard.flush().is_ok(),
        "a refused report is not left to retry"
    );
    calls(1, 0);
    assert!(guard.flush().is_ok());
    let want = totals(&[("proto/ok", 1, 0)]);
    wait_totals(&fake, &want, WAIT);
    drop(guard);
    assert_eq!(
        fake.report_requests().len(),
        2,
        "the refused report was not sent again"
    );
    assert_eq!(fake.totals_by_name(), want);
    assert!(
        log_lines()
            .iter()
            .any(|l| l.contains("the server refused a report") && l.contains("400")),
        "the drop is logged: {:?}",
        log_lines()
    );
}

#[test]
fn queued_report_is_retried_by_the_timer() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake).first_report_delay(Duration::from_millis(300)));
    fake.expect_logins(1, WAIT);
    fake.push_fault(On::Report, Fault::status(500));
    calls(2, 1);
    // The automatic first cut fails; no further report: the queue is replayed ~5 s later by
    // itself. Not sooner, and long before the next period (60 s) would have sent it: the upper
    // bound rules out waiting for a period, not a slow scheduler.
    let want = totals(&[("proto/ok", 2, 0), ("proto/fail", 1, 1)]);
    wait_totals(&fake, &want, WAIT);
    let reqs = fake.report_requests();
    assert_eq!(reqs.len(), 2);
    let after = reqs[1].received_instant - reqs[0].received_instant;
    assert!(
        after > Duration::from_millis(4500) && after < Duration::from_secs(30),
        "replayed {after:?} after the failure"
    );
    drop(guard);
    assert_eq!(fake.totals_by_name(), want);
    assert_clean(&fake, Some(SECRET));
}

// ---- report format and reply settings ------------------------------------------------------

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn large_report_goes_gzip_to_report_raw() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    let mut made = BTreeMap::new();
    for i in 0..40u32 {
        let name = format!("raw/operation-{i:03}");
        let (n, errs) = (i % 3 + 1, u32::from(i % 4 == 0));
        for k in 0..n {
            let mut g = stardust_runtime::span(name.clone());
            if k < errs {
                g.set_error(format!("error in {name}"));
            }
        }
        made.insert(name, (n as u64, errs as u64));
    }
    assert!(guard.flush().is_ok());
    wait_totals(&fake, &made, WAIT);
    let req = &fake.report_requests()[0];
    assert_eq!(req.endpoint, Endpoint::ReportRaw);
    assert_eq!(req.path, "/Trace/ReportRaw");
    assert_eq!(req.header("content-type"), Some("application/x-gzip"));
    let json = gunzip(&req.body);
    assert!(json.len() > 1024);
    let model: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(model["AppId"], APP);
    assert_eq!(model["Version"], "1.2.3");
    let sent: BTreeMap<String, (u64, u64)> = model["Builders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["Name"].as_str().unwrap().to_string(),
                (count(b, "Total") as u64, count(b, "Errors") as u64),
            )
        })
        .collect();
    assert_eq!(sent, made);
    assert!(fake.reports()[0].gzip);

    // A small one stays plain JSON on /Trace/Report.
    calls(1, 0);
    assert!(guard.flush().is_ok());
    made.insert("proto/ok".into(), (1, 0));
    wait_totals(&fake, &made, WAIT);
    let req = &fake.report_requests()[1];
    assert_eq!(req.endpoint, Endpoint::Report);
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(req.body.len() <= 1024 && req.body[0] == b'{');
    drop(guard);
    assert_clean(&fake, Some(SECRET));
}

#[trace("proto/excluded")]
fn excluded_op() {}

#[test]
fn excludes_from_the_reply_apply_to_the_next_period() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .trace_response(TraceResponseCfg {
            excludes: Some(vec!["PROTO/EXCL*".into(), "other".into()]),
            ..Default::default()
        })
        .start();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    let period = |ok: u32, excl: u32| {
        calls(ok, 0);
        for _ in 0..excl {
            excluded_op();
        }
        assert!(guard.flush().is_ok());
    };
    let names = |i: usize| -> Vec<String> {
        let reps = fake.reports();
        assert!(reps.len() > i, "report {i} missing");
        sent_builders(&reps[i]).into_keys().collect()
    };
    // 1: the client does not know the patterns yet.
    period(2, 3);
    assert_eq!(names(0), ["proto/excluded", "proto/ok"]);
    // 2: it does now (wildcard, ignoring case).
    period(1, 4);
    assert_eq!(names(1), ["proto/ok"]);
    // 3: the server drops the list; this period still uses it, the reply (null) clears it.
    fake.update_settings(|s| s.trace_response.excludes = None);
    period(1, 1);
    assert_eq!(names(2), ["proto/ok"]);
    // 4: nothing excluded any more.
    period(1, 2);
    assert_eq!(names(3), ["proto/excluded", "proto/ok"]);
    assert_eq!(fake.reports()[2].response["excludes"], Value::Null);
    drop(guard);
    assert_eq!(
        fake.recorded().totals_by_name(),
        totals(&[("proto/excluded", 2, 0), ("proto/ok", 5, 0)])
    );
    assert_clean(&fake, Some(SECRET));
}

#[test]
fn server_clock_one_day_ahead_is_followed() {
    let _s = common::serial();
    const DAY: i64 = 86_400_000;
    let fake = FakeStardust::builder()
        .app("SkewApp", None)
        .clock_offset_ms(DAY)
        .start();
    let guard = start(
        Config::new()
            .server(fake.base_url())
            .app_id("SkewApp")
            .version("1.2.3")
            .first_report_delay(Duration::from_secs(60))
            .request_timeout(Duration::from_millis(500))
            .exception_spans(false)
            .console(false),
    );
    fake.expect_logins(1, WAIT);
    // A first report, delivered with the login's token, shows that the client has taken the
    // login reply in (the server clock with it) however slow the machine: the next period is
    // the one checked.
    calls(1, 0);
    assert!(guard.flush().is_ok());
    assert_eq!(fake.reports().len(), 1);
    calls(1, 1);
    assert!(guard.flush().is_ok());
    wait_totals(
        &fake,
        &totals(&[("proto/ok", 2, 0), ("proto/fail", 1, 1)]),
        WAIT,
    );
    let server_now = fake.server_now_ms();
    let local_now = common::now_ms();
    let rep = fake.reports().pop().unwrap();
    for b in sent_builders(&rep).values() {
        for k in ["StartTime", "EndTime"] {
            let t = count(b, k);
            assert!(
                (t - server_now).abs() < 10_000,
                "{k} {t} vs server {server_now}"
            );
            assert!((t - local_now - DAY).abs() < 10_000);
        }
        for s in ["Samples", "ErrorSamples"] {
            for sample in b[s].as_array().into_iter().flatten() {
                let t = count(sample, "StartTime");
                assert!((t - server_now).abs() < 10_000, "sample {t}");
            }
        }
    }
    assert!(rep.dropped.is_empty());
    drop(guard);
    assert_clean(&fake, None);
}

// ---- shutdown ------------------------------------------------------------------------------

#[test]
fn shutdown_delivers_the_last_period_and_logs_out() {
    let _s = common::serial();
    let fake = fake_with_app();
    let guard = start(config(&fake));
    fake.expect_logins(1, WAIT);
    calls(4, 3);
    drop(guard);
    assert_eq!(
        fake.totals_by_name(),
        totals(&[("proto/ok", 4, 0), ("proto/fail", 3, 3)])
    );
    let rec = fake.recorded();
    assert_eq!(rec.reports.len(), 1);
    assert_eq!(rec.logouts.len(), 1);
    let logout = rec.requests_to(Endpoint::Logout).next().unwrap();
    assert_eq!(logout.path, "/App/Logout");
    assert_eq!(logout.query, "reason=Dispose");
    assert_eq!(rec.logouts[0].reason.as_deref(), Some("Dispose"));
    assert_eq!(bearer(logout), rec.logins[0].token);
    assert_eq!(logout.response_code(), Some(0));
    assert!(rec.reports[0].seq < logout.seq, "report first, then logout");
    assert_eq!(
        rec.requests.last().unwrap().seq,
        logout.seq,
        "nothing after logout"
    );
    assert_clean(&fake, Some(SECRET));
}

/// Neither `init` nor shutdown waits for a server that never answers. The calls to it could
/// only end at the request timeout, 120 s: the bounds (shutdown timeout + 10 s, and 10 s for
/// `init`) are far below that, and far above any scheduling delay of a loaded machine, so only
/// a client that waits for the network fails them.
#[test]
fn hung_server_delays_neither_init_nor_shutdown() {
    let _s = common::serial();
    let bound = Duration::from_secs(1);
    let margin = Duration::from_secs(10);
    let hung = Duration::from_secs(120);
    let fake = fake_with_app();
    // Logged in, then every call hangs (only the shutdown bound helps).
    let guard = start(config(&fake).request_timeout(hung).shutdown_timeout(bound));
    fake.expect_logins(1, WAIT);
    fake.set_fault(On::Any, Fault::Hang);
    calls(3, 1);
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < bound + margin, "shutdown took {took:?}");
    assert!(fake.wait_for(|r| r.requests.iter().any(RecordedRequest::is_report), WAIT));
    assert!(fake.reports().is_empty());
    drop(fake);

    // Hung from the start: init does not wait for the login, shutdown does not either.
    let fake = fake_with_app();
    fake.set_fault(On::Any, Fault::Hang);
    let t = Instant::now();
    let guard = start(config(&fake).request_timeout(hung).shutdown_timeout(bound));
    let took = t.elapsed();
    assert!(
        took < margin,
        "init must not wait for the network (took {took:?})"
    );
    assert!(fake.wait_for(|r| !r.requests.is_empty(), WAIT));
    calls(1, 0);
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(took < bound + margin, "shutdown took {took:?}");
    assert!(fake.logins().is_empty());
    drop(fake);
}

// ---- the done-when -----------------------------------------------------------------

#[trace("dw/query")]
fn dw_query(i: u64) -> Result<u64, String> {
    if i % 7 == 0 {
        Err(format!("no row {i}"))
    } else {
        Ok(i)
    }
}

#[trace("dw/update")]
fn dw_update(i: u64) -> Result<(), std::io::Error> {
    if i % 5 == 0 {
        Err(std::io::Error::other(format!("conflict {i}")))
    } else {
        Ok(())
    }
}

#[trace("dw/render")]
fn dw_render(i: u64) -> u64 {
    dw_cache(i) * 2
}

#[trace("dw/cache")]
fn dw_cache(i: u64) -> u64 {
    i + 1
}

#[derive(Default)]
struct Made {
    query: (AtomicU64, AtomicU64),
    update: (AtomicU64, AtomicU64),
    render: AtomicU64,
}

#[test]
fn concurrent_calls_survive_three_failing_periods() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .trace_response(TraceResponseCfg {
            period: 1,
            ..Default::default()
        })
        .start();
    let guard = start(
        config(&fake)
            .period(Duration::from_secs(1))
            .first_report_delay(Duration::from_millis(200))
            .request_timeout(Duration::from_millis(400)),
    );
    fake.expect_logins(1, WAIT);

    let made = Arc::new(Made::default());
    // Stopped and joined on unwind too: a failed assertion must not leave them calling the
    // traced `dw/*` functions into the next tests of this binary.
    let mut workers = common::Workers::new();
    for t in 0..4u64 {
        let made = made.clone();
        workers.spawn(move |stop| {
            let mut i = t * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match i % 3 {
                    0 => {
                        let err = dw_query(i).is_err();
                        made.query.0.fetch_add(1, Ordering::Relaxed);
                        made.query.1.fetch_add(err as u64, Ordering::Relaxed);
                    }
                    1 => {
                        let err = dw_update(i).is_err();
                        made.update.0.fetch_add(1, Ordering::Relaxed);
                        made.update.1.fetch_add(err as u64, Ordering::Relaxed);
                    }
                    _ => {
                        dw_render(i);
                        made.render.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
    }

    // One fault after the other, each until a period's report has met it.
    let faults = [
        Fault::status(500),
        Fault::Drop,
        Fault::garbage(),
        Fault::slow(Duration::from_secs(120)),
    ];
    let met = |f: &Fault| {
        let f = f.clone();
        move |r: &Recorded| {
            r.requests
                .iter()
                .any(|q| q.is_report() && q.fault.as_ref() == Some(&f))
        }
    };
    for f in &faults {
        fake.set_fault(On::Report, f.clone());
        assert!(fake.wait_for(met(f), WAIT), "no report met {f:?}");
        fake.clear_faults();
    }
    // Recovering with a hiccup: the next report goes through (a zero delay is no fault), the
    // first replay of the queue after it is reset: the rest stays queued for the next success.
    // Waited for as the server recorded them: the fake takes a fault off its list before it
    // records the request it met, so an empty list alone does not mean both are recorded yet
    // (reading the count then is what made this test fail on loaded machines).
    let hiccup = Fault::slow(Duration::ZERO);
    fake.fault_next(On::Report, 1, hiccup.clone());
    fake.push_fault(On::Report, Fault::Drop);
    let reset_after_hiccup = |r: &Recorded| {
        let mut reports = r.requests.iter().filter(|q| q.is_report());
        reports.any(|q| q.fault.as_ref() == Some(&hiccup))
            && reports.any(|q| q.fault == Some(Fault::Drop))
    };
    assert!(fake.wait_for(reset_after_hiccup, WAIT), "hiccup not met");
    assert_eq!(fake.pending_faults(), 0);
    let n = fake.report_requests().len();
    assert!(n >= 2 + faults.len(), "{n} report requests");
    // Recovered: one more period, and enough calls of each kind, then stop the callers and cut.
    let periods = fake.reports().len();
    let enough = || {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ld(&made.query.0) > 500 && ld(&made.query.1) > 50 && ld(&made.update.1) > 50
    };
    assert!(
        fake.wait_for(|r| r.reports.len() > periods, WAIT) && common::wait_until(WAIT, enough),
        "no period delivered after recovery, or too few calls"
    );
    workers.stop();
    assert!(guard.flush().is_ok());

    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let want: BTreeMap<String, (u64, u64)> = [
        ("dw/query", (ld(&made.query.0), ld(&made.query.1))),
        ("dw/update", (ld(&made.update.0), ld(&made.update.1))),
        ("dw/render", (ld(&made.render), 0)),
        ("dw/cache", (ld(&made.render), 0)),
    ]
    .into_iter()
    .map(|(n, c)| (n.to_string(), c))
    .collect();
    assert!(
        want["dw/query"].0 > 500 && want["dw/query"].1 > 50,
        "{want:?}"
    );
    assert!(want["dw/update"].1 > 50, "{want:?}");
    wait_totals(&fake, &want, WAIT);

    let failed = fake
        .report_requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(failed >= faults.len());
    drop(guard);
    assert_eq!(fake.totals_by_name(), want, "nothing counted twice");
    assert_eq!(fake.logins().len(), 1);
    assert_eq!(fake.logouts().len(), 1);
    assert_clean(&fake, Some(SECRET));
}

/// A failed login is retried on its own schedule (5 s later): a report that arrives meanwhile
/// waits in the queue instead of logging in again at once (it used to, 10 ms later).
#[test]
fn failed_login_is_not_retried_before_its_backoff() {
    let _s = common::serial();
    let fake = fake_with_app();
    fake.push_fault(On::Login, Fault::status(500));
    let guard = start(config(&fake).first_report_delay(Duration::from_millis(300)));
    calls(3, 1);
    // The first login fails at start; the first report comes ~300 ms later.
    std::thread::sleep(Duration::from_millis(1500));
    let logins: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::Login)
        .map(|r| r.received_instant)
        .collect();
    assert_eq!(logins.len(), 1, "one login so far, the backoff is 5 s");
    // The retry comes after the backoff and delivers the queued report.
    wait_totals(
        &fake,
        &BTreeMap::from([
            ("proto/ok".to_owned(), (3, 0)),
            ("proto/fail".to_owned(), (1, 1)),
        ]),
        WAIT,
    );
    let logins: Vec<Instant> = fake
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::Login)
        .map(|r| r.received_instant)
        .collect();
    assert!(logins.len() >= 2);
    let gap = logins[1].duration_since(logins[0]);
    assert!(
        gap >= Duration::from_millis(4500),
        "second login {gap:?} after the first"
    );
    drop(guard);
    fake.assert_no_violations();
}
