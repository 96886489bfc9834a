//! Reports come first: command replies and events that a slow server takes seconds to accept
//! do not hold back a period's report, a flush, or the shutdown. Against the strict fake,
//! which answers every `/App/CommandReply` only after 4 s.

use stardust_test_support::common;
use stardust_test_support::fake_stardust::*;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stardust_runtime::{Config, Guard};

const APP: &str = "FairApp";
const SECRET: &str = "s3cret-Fair-7";
/// Each command reply is answered this late (and then accepted).
const SLOW_REPLY: Duration = Duration::from_secs(4);
/// Commands answered: posted one after the other, their replies alone would hold a thread that
/// posted them all in one go for 30 × 4 s = 2 minutes.
const COMMANDS: usize = 30;
/// The flush and shutdown budget. Far above what delivering a report takes once the reply in
/// flight is answered (4 s), and far below the two minutes the replies would take.
const BUDGET: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(60);

fn start(fake: &FakeStardust) -> Guard {
    common::capture_logs();
    common::clear_log_lines();
    stardust_runtime::init_with(
        Config::new()
            .server(fake.base_url())
            .app_id(APP)
            .secret(SECRET)
            // Longer than the slow replies: each of them succeeds, none is sent twice.
            .request_timeout(Duration::from_secs(10))
            .shutdown_timeout(BUDGET)
            .first_report_delay(Duration::from_secs(3600))
            .exception_spans(false)
            .console(false)
            .command("fair/echo", |arg: &str| Ok(arg.to_owned())),
    )
    .expect("init")
}

fn spans(name: &'static str, n: u64) {
    for _ in 0..n {
        drop(stardust_runtime::span(name));
    }
}

/// Starts the fake with slow command replies and `COMMANDS` commands queued, and waits until
/// the client is posting their replies.
fn busy_with_replies() -> (FakeStardust, Guard) {
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .ping_period(1)
        .start();
    fake.set_fault(On::Only(Endpoint::CommandReply), Fault::slow(SLOW_REPLY));
    for i in 0..COMMANDS {
        fake.send_command(APP, "fair/echo", Some(&format!("arg-{i}")));
    }
    let guard = start(&fake);
    assert!(
        fake.wait_for(
            |r| r
                .requests
                .iter()
                .any(|q| q.endpoint == Endpoint::CommandReply),
            WAIT
        ),
        "the client posts command replies"
    );
    (fake, guard)
}

fn totals(pairs: &[(&str, u64)]) -> BTreeMap<String, (u64, u64)> {
    pairs
        .iter()
        .map(|(n, c)| (n.to_string(), (*c, 0)))
        .collect()
}

/// No command reply was sent twice: a request under way is not given up and sent again (the
/// ids of every `/App/CommandReply` request, as they arrived).
fn assert_each_reply_sent_once(fake: &FakeStardust) {
    let mut ids: Vec<i64> = fake
        .requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::CommandReply)
        .map(|r| r.json.as_ref().expect("JSON")["Id"].as_i64().expect("Id"))
        .collect();
    let sent = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), sent, "a command reply was sent twice");
}

/// What the server counted of the test's own operations (the commands run as `cmd:` spans).
fn reported(fake: &FakeStardust) -> BTreeMap<String, (u64, u64)> {
    let mut t = fake.totals_by_name();
    t.retain(|name, _| name.starts_with("fair/"));
    t
}

#[test]
fn a_flush_does_not_wait_behind_command_replies() {
    let _s = common::serial();
    let (fake, guard) = busy_with_replies();
    spans("fair/flushed", 7);
    let t = Instant::now();
    let flushed = guard.flush();
    let took = t.elapsed();
    let posted = fake.command_replies().len();
    eprintln!("flush took {took:?}, with {posted} of {COMMANDS} command replies posted");
    assert!(
        flushed.is_ok(),
        "the flush delivered its report ({flushed:?} after {took:?})"
    );
    assert_eq!(reported(&fake), totals(&[("fair/flushed", 7)]));
    assert!(
        posted < COMMANDS,
        "the replies were still being posted: the flush did not just wait for them"
    );
    // The rest of the replies still go, in later rounds.
    assert!(
        fake.wait_for(|r| r.command_replies.len() > posted, WAIT),
        "replies go on after the flush"
    );
    drop(guard);
    assert_each_reply_sent_once(&fake);
    fake.assert_no_violations();
}

#[test]
fn shutdown_delivers_the_last_report_while_replies_are_slow() {
    let _s = common::serial();
    let (fake, guard) = busy_with_replies();
    spans("fair/last", 11);
    let t = Instant::now();
    drop(guard);
    let took = t.elapsed();
    let posted = fake.command_replies().len();
    eprintln!("shutdown took {took:?}, with {posted} of {COMMANDS} command replies posted");
    assert_eq!(
        reported(&fake),
        totals(&[("fair/last", 11)]),
        "the last period was delivered within the shutdown budget"
    );
    assert!(fake.wait_for(|r| !r.logouts.is_empty(), WAIT), "logged out");
    let lost_lines: Vec<String> = common::log_lines()
        .into_iter()
        .filter(|l| l.contains("shutdown deadline passed") || l.contains("did not finish"))
        .collect();
    assert!(lost_lines.is_empty(), "{lost_lines:?}");
    // The shutdown waited for the reply in flight (4 s) and gave the others at most 2 s, not
    // its whole 30-s budget: the bound is far from both.
    assert!(
        took < BUDGET / 2,
        "shutdown took {took:?}: it waited for the command replies"
    );
    // Replies left are re-sent by the server as commands: nothing counted is lost.
    assert!(posted < COMMANDS, "{posted} replies posted");
    assert_each_reply_sent_once(&fake);
}
