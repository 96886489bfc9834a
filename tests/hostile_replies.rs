//! Replies a broken or hostile server may send that look fine on the wire: a gzip bomb (a few
//! kilobytes that inflate to 64 MiB), a token that cannot go back in a header (CR/LF in it, or
//! 3.9 MB long), a server clock nine years off. Each is refused with one warning, memory stays
//! bounded, nothing of a token is logged, and the client goes on delivering every count.
//!
//! Every test prints its figures (`eprintln!`): run with `--nocapture` to see them.

use stardust_test_support as support;
use stardust_test_support::common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use stardust_runtime::{Config, Guard};
use support::fake_stardust::*;

const APP: &str = "HostileReplies";
/// How long to wait for something that must happen soon: generous, as a loaded 2-core machine
/// can be many times slower than a workstation, and free when the condition holds early.
const WAIT: Duration = Duration::from_secs(30);

fn config(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .version("1.0.0")
        .first_report_delay(Duration::from_secs(3600))
        .request_timeout(Duration::from_secs(10))
        // The budget of a flush: far above what the retries below need.
        .shutdown_timeout(WAIT)
        .exception_spans(false)
        .console(false)
}

fn start(fake: &FakeStardust) -> Guard {
    common::capture_logs();
    common::clear_log_lines();
    stardust_runtime::init_with(config(fake)).expect("init")
}

/// `n` spans named `op`.
fn spans(op: &'static str, n: usize) {
    for _ in 0..n {
        drop(stardust_runtime::span(op));
    }
}

fn wait_totals(fake: &FakeStardust, want: &BTreeMap<String, (u64, u64)>) {
    assert!(
        fake.wait_for(|r| r.totals_by_name() == *want, WAIT),
        "server totals {:?} != spans made {want:?}\n{:#?}",
        fake.totals_by_name(),
        common::log_lines()
    );
}

fn bearer(r: &RecordedRequest) -> Option<String> {
    r.header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// Warning lines containing `what`.
fn warnings(what: &str) -> Vec<String> {
    common::log_lines()
        .into_iter()
        .filter(|l| l.starts_with("WARN") && l.contains(what))
        .collect()
}

/// A request's faulted reply was answered (the client has it, or is reading it).
fn answered_with_fault(r: &Recorded, ep: Endpoint, n: usize) -> bool {
    r.requests
        .iter()
        .filter(|q| q.endpoint == ep && q.fault.is_some() && q.response.is_some())
        .count()
        >= n
}

// ---- (1) a gzip bomb -------------------------------------------------------------------------

/// The head of the fake's reply to a faulted request, read off a raw socket: what the client
/// gets, through the fake's front proxy.
fn raw_reply_head(fake: &FakeStardust) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(fake.addr()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /selftest HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    (
        String::from_utf8_lossy(&all[..end]).to_ascii_lowercase(),
        all[end..].to_vec(),
    )
}

#[test]
fn a_gzip_bomb_is_refused_without_inflating_it() {
    let _s = common::serial();
    const INFLATED: usize = 64 * 1024 * 1024;
    let fake = FakeStardust::builder().app(APP, None).start();
    let bomb = Fault::gzip_bomb(INFLATED);
    let Fault::RawHeaders { body, .. } = &bomb else {
        unreachable!()
    };
    let wire = body.len();
    // The encoding header reaches the client unchanged, with the compressed body.
    fake.push_fault(On::Only(Endpoint::Other), bomb.clone());
    let (head, body) = raw_reply_head(&fake);
    assert!(head.contains("\r\ncontent-encoding: gzip\r\n"), "{head}");
    // Chunked (tiny_http's choice for a body this size): the first chunk's size line first.
    let data = if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        let line = body.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        &body[line..]
    } else {
        &body[..]
    };
    assert_eq!(&data[..2], b"\x1f\x8b", "gzip bytes");

    // The first ping and the first report get the bomb.
    fake.push_fault(On::Ping, bomb.clone());
    fake.push_fault(On::Report, bomb);
    let rss_before = common::peak_rss_kb();
    let guard = start(&fake);
    fake.expect_logins(1, WAIT);
    // The first ping comes 3 s after the login.
    assert!(
        fake.wait_for(|r| answered_with_fault(r, Endpoint::Ping, 1), WAIT),
        "{:#?}",
        fake.requests()
    );
    // A flush is handled after the ping (one uploader thread): the report gets the bomb, is
    // kept, sent again within the flush and stored once.
    spans("bomb/op", 3);
    let t = Instant::now();
    let flushed = guard.flush();
    let flush_time = t.elapsed();
    let rss_after = common::peak_rss_kb();
    let grown_mb = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    eprintln!(
        "gzip bomb: {wire} bytes on the wire, {INFLATED} inflated; peak RSS {rss_before} kB -> {rss_after} kB (+{grown_mb:.1} MB); flush {flush_time:?}"
    );
    assert!(flushed.is_ok(), "{flushed:?}");
    wait_totals(&fake, &totals(&[("bomb/op", 3, 0)]));
    assert!(
        grown_mb < 20.0,
        "a reply is inflated no further than the 4 MiB cap: +{grown_mb:.1} MB"
    );
    let lines = common::log_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ping failed") && l.contains("reply unreadable")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("report failed") && l.contains("reply unreadable")),
        "{lines:#?}"
    );
    let reports = fake.report_requests();
    assert_eq!(reports.len(), 2, "the refused report and its second try");
    assert_eq!(reports[0].json, reports[1].json, "the same report again");
    drop(guard);
    // Compression is not asked for: replies are a few hundred bytes.
    for r in fake.requests() {
        assert_eq!(
            r.header("accept-encoding"),
            None,
            "{} {:?}",
            r.path,
            r.headers
        );
    }
    fake.assert_no_violations();
}

// ---- (2) a token that cannot be sent ---------------------------------------------------------

/// A login reply (as the fake's, with the server's time) carrying `token`.
fn login_reply(token: &str) -> Fault {
    let body = json!({"code": 0, "data": {
        "name": APP, "token": token, "expire": 7200, "time": 0, "serverTime": common::now_ms(),
    }});
    Fault::Raw {
        status: 200,
        content_type: "application/json; charset=utf-8".into(),
        body: body.to_string().into_bytes(),
    }
}

/// A ping reply carrying `token`, asking for the next ping in 1 s.
fn ping_reply(token: &str) -> Fault {
    let body = json!({"code": 0, "data": {
        "time": 0, "serverTime": common::now_ms(), "period": 1, "token": token, "commands": null,
    }});
    Fault::Raw {
        status: 200,
        content_type: "application/json; charset=utf-8".into(),
        body: body.to_string().into_bytes(),
    }
}

/// A JWT-looking token with a header injected after a CR/LF.
const SPLIT_TOKEN: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJIb3N0aWxlIn0.c2ln\r\nX-Injected: leak-7f3a9c";
/// Marks that would show a logged token: parts of the split one, a run of the long one's byte.
const TOKEN_MARKS: [&str; 3] = [
    "leak-7f3a9c",
    "eyJzdWIiOiJIb3N0aWxlIn0",
    "QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
];

fn long_token() -> String {
    "Q".repeat(3_900_000)
}

fn assert_no_token_logged() {
    let lines = common::log_lines();
    for mark in TOKEN_MARKS {
        let leaked: Vec<_> = lines
            .iter()
            .filter(|l| l.contains(mark))
            .map(|l| l.chars().take(300).collect::<String>())
            .collect();
        assert!(leaked.is_empty(), "token logged: {leaked:#?}");
    }
}

#[test]
fn a_login_token_that_cannot_be_sent_is_refused_and_the_login_tried_again() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, None).start();
    fake.push_fault(On::Login, login_reply(SPLIT_TOKEN));
    fake.push_fault(On::Login, login_reply(&long_token()));
    let guard = start(&fake);
    // The first login (in the background) got the split token.
    assert!(fake.wait_for(|r| answered_with_fault(r, Endpoint::Login, 1), WAIT));
    // The flush logs in again (the long token, refused too), then with a good token.
    spans("token/op", 5);
    let t = Instant::now();
    let flushed = guard.flush();
    let flush_time = t.elapsed();
    let logins = fake.recorded().requests_to(Endpoint::Login).count();
    eprintln!(
        "bad login tokens: flush {flushed:?} in {flush_time:?}; {logins} login requests; {} warnings about the token",
        warnings("token is unusable").len()
    );
    assert!(flushed.is_ok(), "{flushed:?}\n{:#?}", common::log_lines());
    wait_totals(&fake, &totals(&[("token/op", 5, 0)]));
    let rec = fake.recorded();
    assert_eq!(logins, 3, "two refused tokens, then a good one");
    assert_eq!(rec.logins.len(), 1, "the good login");
    let report = fake.report_requests();
    assert_eq!(report.len(), 1);
    assert_eq!(bearer(&report[0]), rec.logins[0].token);
    let said = warnings("token is unusable");
    assert_eq!(said.len(), 2, "one warning per refused token: {said:#?}");
    assert!(said[0].contains("not visible ASCII"), "{said:#?}");
    assert!(said[1].contains("3900000 bytes"), "{said:#?}");
    drop(guard);
    assert_no_token_logged();
    fake.assert_no_violations();
}

#[test]
fn a_ping_token_that_cannot_be_sent_is_refused_and_the_current_one_kept() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, None).start();
    fake.push_fault(On::Ping, ping_reply(SPLIT_TOKEN));
    fake.push_fault(On::Ping, ping_reply(&long_token()));
    let guard = start(&fake);
    fake.expect_logins(1, WAIT);
    let token = fake.logins()[0].token.clone();
    // Two refused tokens (1 s apart), then a ping the server takes: with the login's token.
    assert!(
        fake.wait_for(|r| !r.pings.is_empty(), WAIT),
        "{:#?}",
        common::log_lines()
    );
    spans("token/op", 4);
    let flushed = guard.flush();
    eprintln!(
        "bad ping tokens: flush {flushed:?}; {} pings accepted; {} warnings about the token",
        fake.pings().len(),
        warnings("new token is unusable").len()
    );
    assert!(flushed.is_ok(), "{flushed:?}");
    wait_totals(&fake, &totals(&[("token/op", 4, 0)]));
    let rec = fake.recorded();
    assert!(answered_with_fault(&rec, Endpoint::Ping, 2));
    for r in rec
        .requests
        .iter()
        .filter(|r| r.endpoint != Endpoint::Login)
    {
        assert_eq!(bearer(r), token, "{} with the login's token", r.path);
    }
    assert_eq!(rec.logins.len(), 1, "no new login was needed");
    let said = warnings("new token is unusable");
    assert_eq!(said.len(), 1, "said once: {said:#?}");
    drop(guard);
    assert_no_token_logged();
    fake.assert_no_violations();
}

// ---- (3) a server clock nine years off -------------------------------------------------------

#[test]
fn a_server_clock_nine_years_off_is_not_followed_and_said_once() {
    let _s = common::serial();
    const NINE_YEARS: i64 = 9 * 365 * 86_400_000;
    let fake = FakeStardust::builder()
        .app(APP, None)
        .clock_offset_ms(NINE_YEARS)
        .ping_period(1)
        .start();
    let guard = start(&fake);
    fake.expect_logins(1, WAIT);
    // The login's and three pings' server times, each refused.
    assert!(fake.wait_for(|r| r.pings.len() >= 3, WAIT));
    spans("clock/op", 2);
    assert!(guard.flush().is_ok());
    let local_now = common::now_ms();
    let rep = fake.reports().pop().expect("a report");
    let builders = rep.model["Builders"].as_array().unwrap().clone();
    assert_eq!(builders.len(), 1);
    let start_time = builders[0]["StartTime"].as_i64().unwrap();
    let said = warnings("days ahead of");
    eprintln!(
        "server clock +9 years: StartTime - local now = {} ms; {} replies with the server time; {} warning(s): {said:?}",
        start_time - local_now,
        1 + fake.pings().len(),
        said.len()
    );
    assert!(
        (start_time - local_now).abs() < 600_000,
        "StartTime {start_time} on the local clock ({local_now})"
    );
    assert_eq!(said.len(), 1, "said once, not per ping: {said:#?}");
    assert!(
        said[0].contains("3284 days") || said[0].contains("3285 days"),
        "{said:?}"
    );
    drop(guard);
}
