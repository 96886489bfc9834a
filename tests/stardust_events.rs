//! Application events (`stardust_runtime::event`) and the start-up event, against the strict
//! fake Stardust server: fields as .NET writes them, batches of at most 100, a bounded queue
//! while the server is down, delivery at shutdown.

use stardust_test_support::common;
use stardust_test_support::fake_stardust::*;

use std::time::Duration;

use serde_json::Value;
use stardust_runtime::{Config, EventKind, dropped_events, event};

const APP: &str = "EventApp";
const SECRET: &str = "s3cret-Events-1";
/// Deadline of every wait for something that only has to happen eventually (a loaded machine
/// may be many times slower than a workstation; a wait that passes ends at once).
const WAIT: Duration = Duration::from_secs(60);
/// The server's clock runs 5 minutes ahead of ours (within the login's salt window): event
/// times must be the server's.
const OFFSET: i64 = 300_000;
/// How far an event's time may lie outside the server-time span in which it was written: the
/// client's estimate of the server's clock is off by up to half a request's round trip, which
/// on a loaded machine may be seconds. Far below [`OFFSET`], the error of a local time.
const TIME_SLACK: i64 = 30_000;

/// Long request timeout and budget: a reply that comes late on a loaded machine must not make
/// the client post a batch again that the server already stored (the counts are exact), and a
/// shutdown ends as soon as it has delivered.
fn config(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .secret(SECRET)
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(30))
        .first_report_delay(Duration::from_secs(3600))
        .console(false)
}

/// The bodies of every `/App/PostEvents` request.
fn batches(fake: &FakeStardust) -> Vec<Vec<Value>> {
    fake.requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::PostEvents)
        .map(|r| {
            r.json
                .and_then(|j| j.as_array().cloned())
                .expect("an array")
        })
        .collect()
}

#[test]
fn the_startup_event_and_user_events_arrive_with_their_fields() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .clock_offset_ms(OFFSET)
        .start();
    assert!(
        !event(EventKind::Info, "before/init", ""),
        "not running yet"
    );
    // The login is held until every event below is written: events are posted once logged in,
    // the burst in one batch; however slowly this thread runs, none comes too late for it.
    fake.push_fault(On::Login, Fault::Hang);
    let written_from = common::now_ms() + OFFSET;
    let guard = stardust_runtime::init_with(config(&fake)).unwrap();
    assert!(event(EventKind::Info, "order/paid", "id=1"));
    assert!(event(EventKind::Alert, "stock/low", "sku=7 left=2"));
    let long_name = "订单".repeat(30);
    assert!(event(EventKind::Error, &long_name, &"x".repeat(2100)));
    let written_to = common::now_ms() + OFFSET;
    // Released once the login is held (a release before it got there would not count), until
    // the server has answered it.
    assert!(
        common::wait_until(WAIT, || {
            if fake
                .requests()
                .iter()
                .any(|q| q.endpoint == Endpoint::Login)
            {
                fake.release_hangs();
            }
            !fake.logins().is_empty()
        }),
        "the login: {:?}",
        fake.requests()
    );
    assert!(
        fake.wait_for(|r| r.events.len() >= 4, WAIT),
        "{:?}",
        fake.events()
    );
    let events = fake.events();
    assert_eq!(events.len(), 4);
    for e in &events {
        assert!(
            (written_from - TIME_SLACK..=written_to + TIME_SLACK).contains(&e.time),
            "server time: {} vs written between {written_from} and {written_to}",
            e.time
        );
        assert_eq!(e.app, APP);
    }
    // The start-up event, as .NET's StarFactory writes it, first.
    let start = &events[0];
    assert_eq!(start.event_type.as_deref(), Some("info"));
    assert_eq!(start.name.as_deref(), Some("应用启动"));
    let remark = start.remark.as_deref().unwrap();
    assert!(
        remark.starts_with(&format!("pid={}, Name=", std::process::id())),
        "{remark}"
    );
    let exe = std::env::current_exe().unwrap();
    assert!(
        remark.ends_with(&format!(", FileName={}", exe.display())),
        "{remark}"
    );
    assert!(start.success);
    assert_eq!(
        (events[1].event_type.as_deref(), events[1].name.as_deref()),
        (Some("info"), Some("order/paid"))
    );
    assert_eq!(events[1].remark.as_deref(), Some("id=1"));
    assert_eq!(events[2].event_type.as_deref(), Some("alert"));
    assert!(events[2].success, "alert counts as a success");
    let err = &events[3];
    assert_eq!(err.event_type.as_deref(), Some("error"));
    assert!(!err.success);
    assert_eq!(
        err.name.as_deref(),
        Some(&long_name[..long_name.len() / 60 * 50])
    );
    assert_eq!(err.remark.as_deref().map(str::len), Some(2000));
    // One batch: the burst waited for its last event.
    assert_eq!(batches(&fake).len(), 1);
    drop(guard);
    assert!(!event(EventKind::Info, "after/shutdown", ""));
    assert_eq!(fake.events().len(), 4);
    fake.assert_no_violations();
    fake.assert_commands_answered();
}

/// Without a Stardust server there is nowhere to send events: `event` does nothing.
#[test]
fn without_a_server_events_do_nothing() {
    let _s = common::serial();
    let guard = stardust_runtime::init_with(Config::new().console(false)).unwrap();
    assert!(!event(EventKind::Info, "nowhere", ""));
    assert_eq!(dropped_events(), 0);
    drop(guard);
}

/// While the server cannot be reached events wait in a queue of 1000 (the start-up event
/// included); further ones are dropped and counted. Once the server is back they are posted,
/// in order, 100 per request.
#[test]
fn a_full_event_queue_drops_and_counts() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, Some(SECRET)).start();
    fake.refuse_connections();
    let guard = stardust_runtime::init_with(config(&fake)).unwrap();
    let accepted = (0..1005)
        .filter(|i| event(EventKind::Info, &format!("e{i}"), "queued"))
        .count();
    assert_eq!(accepted, 999, "the start-up event takes one place");
    assert_eq!(dropped_events(), 6);
    fake.accept_connections();
    assert!(
        fake.wait_for(|r| r.events.len() >= 1000, WAIT),
        "{} events arrived",
        fake.events().len()
    );
    let events = fake.events();
    assert_eq!(events.len(), 1000);
    assert_eq!(events[0].name.as_deref(), Some("应用启动"));
    for (i, e) in events[1..].iter().enumerate() {
        assert_eq!(e.name, Some(format!("e{i}")));
    }
    let sizes: Vec<usize> = batches(&fake).iter().map(Vec::len).collect();
    assert_eq!(sizes, [100; 10], "batches of 100");
    assert_eq!(dropped_events(), 6);
    drop(guard);
    fake.assert_no_violations();
}

/// Events written just before the guard is dropped are posted by the shutdown, before the
/// logout.
#[test]
fn events_are_posted_at_shutdown() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, Some(SECRET)).start();
    let guard = stardust_runtime::init_with(config(&fake)).unwrap();
    assert!(
        fake.wait_for(|r| !r.events.is_empty(), WAIT),
        "start-up event"
    );
    assert!(event(EventKind::Info, "app/stopping", "bye"));
    drop(guard);
    // The logout has at most 1 s of its own: on a loaded machine the server may record it
    // after the client gave up on it.
    assert!(
        fake.wait_for(|r| r.requests_to(Endpoint::Logout).next().is_some(), WAIT),
        "logged out: {:?}",
        fake.requests()
    );
    let events = fake.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].name.as_deref(), Some("app/stopping"));
    let order: Vec<Endpoint> = fake
        .requests()
        .into_iter()
        .map(|r| r.endpoint)
        .filter(|e| matches!(e, Endpoint::PostEvents | Endpoint::Logout))
        .collect();
    assert_eq!(
        order,
        [Endpoint::PostEvents, Endpoint::PostEvents, Endpoint::Logout]
    );
    fake.assert_no_violations();
}
