//! Commands from a server that misbehaves, against the strict fake: a ping reply listing
//! 100,000 commands (the real server lists at most 100), sent again and again, and a server
//! that sends tens of thousands of distinct command names. The client takes a bounded number of
//! commands per reply, answers each id once, stays responsive and small, logs a bounded number
//! of lines, and the server's command names never take the application's operation names.

use stardust_test_support::common;
use stardust_test_support::fake_stardust::*;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stardust_runtime::Config;

const APP: &str = "HostileCommandApp";
const SECRET: &str = "s3cret-Hostile-1";
/// Deadline of every wait for something that only has to happen eventually (pings are 1 s
/// apart; the machine may be many times slower than a workstation; a wait that passes ends at
/// once).
const WAIT: Duration = Duration::from_secs(120);
/// Commands the client takes from one ping reply: the most the real server lists in one
/// (docs/stardust-protocol.md §9.1).
const PER_REPLY: usize = 100;

/// Pings every second; the fake does not keep (nor parse) the replies of megabytes it sends, so
/// the process's memory is the client's.
fn fake() -> FakeStardust {
    FakeStardust::builder()
        .app(APP, Some(SECRET))
        .ping_period(1)
        .max_recorded_response_bytes(64 << 10)
        .start()
}

/// Long request timeout and budget: a reply that comes late on a loaded machine must not make
/// the client post a command reply again, and a flush ends as soon as it has delivered.
fn config(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .secret(SECRET)
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(60))
        .console(false)
}

/// Where a flood's commands sit in the ping reply.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `{"code":0,"data":{…,"commands":[…]}}`, as the server writes it.
    InData,
    /// `{"code":0,…,"commands":[…]}`: an envelope without `data`, whose whole object is the
    /// data (docs/stardust-protocol.md §2.4).
    WithoutData,
}

/// A ping reply (camelCase, as the fake's) listing `n` commands, as short as the client's
/// 4 MiB reply limit needs: odd ids are `f` with the id as argument (the test's handler counts
/// its runs per argument), even ids `u`, which has no handler.
fn flood_reply(n: usize, shape: Shape) -> Vec<u8> {
    let mut s = String::with_capacity(n * 40 + 100);
    s.push_str(match shape {
        Shape::InData => r#"{"code":0,"data":{"period":1,"token":null,"commands":["#,
        Shape::WithoutData => r#"{"code":0,"period":1,"token":null,"commands":["#,
    });
    for id in 1..=n {
        if id > 1 {
            s.push(',');
        }
        if id % 2 == 1 {
            s.push_str(&format!(r#"{{"id":{id},"command":"f","argument":"{id}"}}"#));
        } else {
            s.push_str(&format!(r#"{{"id":{id},"command":"u"}}"#));
        }
    }
    s.push_str(match shape {
        Shape::InData => "]}}",
        Shape::WithoutData => "]}",
    });
    assert!(s.len() < 4 << 20, "within the client's reply limit");
    s.into_bytes()
}

/// Pings answered with the flood (the fault) so far.
fn flood_pings(r: &Recorded) -> usize {
    r.requests
        .iter()
        .filter(|q| q.endpoint == Endpoint::Ping && q.fault.is_some() && q.response.is_some())
        .count()
}

/// One ping reply with 100,000 commands, then the same reply twice more (the server re-sends
/// what has no reply): the client takes 100 new ones per reply and ignores the rest with one
/// counted line per reply (a warning for the first, the others at debug level), runs and
/// answers each id once, a report made right after the first flood is delivered at once, and
/// memory and log stay small.
#[test]
fn a_ping_reply_with_100000_commands_is_taken_100_at_a_time_each_id_answered_once() {
    flood(Shape::InData);
}

/// The same flood in an envelope without `data` (the whole object is the data): its commands
/// are read one at a time as well, within the same memory bound.
#[test]
fn a_ping_reply_without_data_with_100000_commands_stays_as_small() {
    flood(Shape::WithoutData);
}

/// Peak memory the process may add while the client reads three floods of 100,000 commands
/// (about 3.7 MB each, the fake's copies included) one command at a time and runs 300 of
/// them, debug log lines captured included. Measured in a debug build: 40 to 60 MB, either
/// shape. A flood read as one JSON value instead took 116 to 133 MB, which this bound refuses.
const FLOOD_RSS_KB: u64 = 80 * 1024;

fn flood(shape: Shape) {
    let _s = common::serial();
    common::capture_logs();
    const N: usize = 100_000;
    const FLOODS: usize = 3;
    let fake = fake();
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counted = runs.clone();
    let (guard, _rx) = common::start(config(&fake).command("f", move |arg: &str| {
        *counted.lock().unwrap().entry(arg.to_owned()).or_default() += 1;
        Ok(String::new())
    }));
    fake.expect_logins(1, WAIT);
    let flood = flood_reply(N, shape);
    // The peak so far is another test's (or the fake's start): measure from here.
    common::reset_peak_rss();
    let rss_before = common::peak_rss_kb();
    common::clear_log_lines();
    let floods_from = Instant::now();
    fake.fault_next(
        On::Ping,
        FLOODS as u32,
        Fault::Raw {
            status: 200,
            content_type: "application/json; charset=utf-8".into(),
            body: flood,
        },
    );

    // The first flood has gone out: a report made now is delivered without waiting for it.
    assert!(fake.wait_for(|r| flood_pings(r) >= 1, WAIT), "a flood");
    let start = Instant::now();
    drop(stardust_runtime::span("after/flood"));
    guard
        .flush()
        .expect("the report made after the flood is delivered");
    let stalled = start.elapsed();
    eprintln!("hostile_commands: a report made after the first flood was delivered in {stalled:?}");
    assert!(fake.wait_for(|r| r.totals_by_name().contains_key("after/flood"), WAIT));

    // The re-sends, and two ordinary pings after them.
    assert!(fake.wait_for(|r| flood_pings(r) >= FLOODS, WAIT), "re-sent");
    let mut last_flood = 0;
    fake.wait_for(
        |r| {
            last_flood = r
                .requests
                .iter()
                .filter(|q| q.endpoint == Endpoint::Ping && q.fault.is_some())
                .map(|q| q.seq)
                .max()
                .unwrap_or(0);
            true
        },
        WAIT,
    );
    assert!(
        fake.wait_for(
            |r| r.pings.iter().filter(|p| p.seq > last_flood).count() >= 2,
            WAIT
        ),
        "ordinary pings after the floods"
    );
    // Every command taken has its reply.
    let all_replies = fake.wait_for(|r| r.command_replies.len() >= PER_REPLY * FLOODS, WAIT);
    let flushed = guard.flush();
    let rss_after = common::peak_rss_kb();

    let replies = fake.command_replies();
    let mut per_id: HashMap<i64, usize> = HashMap::new();
    for r in &replies {
        *per_id.entry(r.id).or_default() += 1;
    }
    let twice = per_id.values().filter(|n| **n > 1).count();
    let runs_twice = runs.lock().unwrap().values().filter(|n| **n > 1).count();
    let lines = common::log_lines();
    // The same warning is given again at most every 5 minutes: however slow this machine,
    // the floods can have given no more warnings than that allows.
    let warnings_allowed = 1 + (floods_from.elapsed().as_secs() / 300) as usize;
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let warnings = lines
        .iter()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR"))
        .count();
    eprintln!(
        "hostile_commands: {N} commands ({shape:?}) x {FLOODS} replies: uploader stalled {stalled:?}; \
         peak RSS {rss_before} kB -> {rss_after} kB (+{} kB); {} ids answered, {twice} twice or \
         more; {runs_twice} handler runs twice or more; {} log lines ({bytes} bytes), {warnings} \
         warnings",
        rss_after.saturating_sub(rss_before),
        per_id.len(),
        lines.len(),
    );
    for l in lines.iter().filter(|l| !l.starts_with("DEBUG")).take(20) {
        eprintln!("  {l}");
    }

    assert!(all_replies, "{} replies", replies.len());
    flushed.expect("flushed");
    assert_eq!(twice, 0, "each id answered at most once");
    assert_eq!(runs_twice, 0, "each id run at most once");
    assert_eq!(
        per_id.len(),
        PER_REPLY * FLOODS,
        "{PER_REPLY} new commands taken from each reply"
    );
    // Ids are taken in the order listed: each reply's first new ones.
    assert!(
        per_id
            .keys()
            .all(|id| *id >= 1 && *id <= (PER_REPLY * FLOODS) as i64)
    );
    assert!(
        stalled < Duration::from_secs(30),
        "the uploader was stalled {stalled:?}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < FLOOD_RSS_KB,
        "peak RSS grew by {} kB ({shape:?})",
        rss_after - rss_before
    );
    // One counted line per flood (no line per command refused), a warning for the first only
    // (the others are debug lines), and a debug line or two per command taken.
    assert!(
        warnings <= warnings_allowed,
        "{warnings} warnings, {warnings_allowed} allowed"
    );
    assert!(
        lines.len() <= 4 * PER_REPLY * FLOODS + 20,
        "{} log lines",
        lines.len()
    );
    let violations: Vec<_> = fake
        .violations()
        .into_iter()
        // The fake never queued these commands: it answers their replies "unknown id".
        .filter(|v| v.rule != "command-reply-unknown")
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
    drop(guard);
}

/// 20,000 distinct command names queued on the server, delivered 100 per ping, none with a
/// handler: more than the 5,000 operation names built at run time that a period keeps. The
/// application's own operation, traced after more than 5,000 of them in the same period, keeps
/// its row with its exact count: every unknown command is counted under one operation.
#[test]
fn server_command_names_never_take_the_applications_operation_names() {
    let _s = common::serial();
    const NAMES: usize = 20_000;
    /// More than the period's budget of run-time names (5,000).
    const BEFORE_APP: usize = 5_200;
    const APP_SPANS: u64 = 1_000;
    let fake = fake();
    let names: Vec<String> = (0..NAMES).map(|i| format!("hostile/{i}")).collect();
    let (guard, rx) = common::start(config(&fake).command("known/op", |_: &str| Ok("ok".into())));
    fake.expect_logins(1, WAIT);
    // A known command keeps its own operation, named as registered.
    let known = fake.send_command(APP, "KNOWN/OP", None);
    let started = Instant::now();
    fake.send_commands(APP, &names);
    assert!(
        fake.wait_for(
            |r| r.command_replies.len() > BEFORE_APP,
            Duration::from_secs(600)
        ),
        "{} commands answered",
        fake.command_replies().len()
    );
    let answered = fake.command_replies().len();
    // An operation named at run time (as the HTTP helpers name requests): within the
    // period's budget of such names, which the commands' names used up before the fix.
    let op = String::from("orders/list");
    for _ in 0..APP_SPANS {
        drop(stardust_runtime::span(op.clone()));
    }
    guard.flush().expect("flushed");
    let models = common::drain(&rx);
    let builders: Vec<_> = models.iter().flat_map(|m| &m.builders).collect();
    let total = |name: &str| -> u64 {
        builders
            .iter()
            .filter(|b| b.name == name)
            .map(|b| b.total as u64)
            .sum()
    };
    let app = total("orders/list");
    let overflow = total("stardust:overflow");
    let unknown = total("cmd:(unknown)");
    let per_name = builders
        .iter()
        .filter(|b| b.name.starts_with("cmd:hostile/"))
        .count();
    eprintln!(
        "hostile_commands: {answered} of {NAMES} distinct command names answered in {:?}; \
         app row {app} of {APP_SPANS}; `stardust:overflow` {overflow}; `cmd:(unknown)` {unknown}; \
         {per_name} rows `cmd:hostile/…`; {} rows in all ({:?}…); dropped spans {}",
        started.elapsed(),
        builders.len(),
        builders.iter().take(4).map(|b| &b.name).collect::<Vec<_>>(),
        stardust_runtime::dropped_spans(),
    );
    assert_eq!(app, APP_SPANS, "the application's operation keeps its row");
    assert_eq!(overflow, 0, "nothing overflowed");
    assert_eq!(per_name, 0, "no row per server-sent name");
    assert!(
        unknown as usize >= BEFORE_APP,
        "{unknown} unknown commands counted"
    );
    let c = fake.command(known).unwrap();
    assert_eq!(c.status, command_status::DONE, "{c:?}");
    assert_eq!(total("cmd:known/op"), 1, "as registered, not as sent");
    assert_eq!(total("cmd:KNOWN/OP"), 0);
    assert_eq!(stardust_runtime::dropped_spans(), 0);
    drop(guard);
    fake.assert_no_violations();
}
