//! Commands from the Stardust server, against the strict fake (which delivers them in ping
//! replies, re-sends them until they have a final status and checks every reply): each command
//! is run and answered once, with the status the .NET client would give.

use stardust_test_support::common;
use stardust_test_support::fake_stardust::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use stardust_runtime::Config;

const APP: &str = "CommandApp";
const SECRET: &str = "s3cret-Commands-1";
/// Deadline of every wait for something that only has to happen eventually: the first ping (3 s
/// after the login), a few more at 1 s, and the handlers, on a machine that may be many times
/// slower than a workstation (a wait that passes ends at once).
const WAIT: Duration = Duration::from_secs(60);

/// Pings every second, so re-sends come quickly.
fn fake() -> FakeStardust {
    FakeStardust::builder()
        .app(APP, Some(SECRET))
        .ping_period(1)
        .start()
}

/// Long request timeout and budget: a reply that comes late on a loaded machine must not make
/// the client post a command reply again that the server already stored (each command is
/// answered exactly once), and a flush or shutdown ends as soon as it has delivered.
fn config(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .secret(SECRET)
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(30))
        .console(false)
}

/// The command once it has a final status (2, 3 or 4).
fn wait_final(fake: &FakeStardust, id: i64) -> CommandRecord {
    assert!(
        fake.wait_for(
            |r| r.commands.iter().any(|c| c.id == id && !c.is_pending()),
            WAIT
        ),
        "command {id} answered: {:?}",
        fake.command(id)
    );
    fake.command(id).unwrap()
}

fn replies_to(fake: &FakeStardust, id: i64) -> Vec<CommandReplyRecord> {
    fake.command_replies()
        .into_iter()
        .filter(|r| r.id == id)
        .collect()
}

fn check(fake: &FakeStardust) {
    fake.assert_no_violations();
    fake.assert_commands_answered();
}

/// A command the server re-sends while its handler runs is run once and answered once, in a
/// span `cmd:<name as registered>` that continues the command's trace.
#[test]
fn a_command_is_answered_once_although_the_server_resends_it() {
    let _s = common::serial();
    let fake = fake();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (release_tx, released) = crossbeam_channel::bounded::<()>(0);
    let (guard, rx) = common::start(
        config(&fake)
            // The handler runs as long as the test needs, not into its time bound.
            .command_timeout(Duration::from_secs(600))
            .command("app/echo", move |arg: &str| {
                counted.fetch_add(1, Ordering::SeqCst);
                // Runs until the server has sent the command again (the test drops the
                // sender then, or when it fails).
                let _ = released.recv_timeout(Duration::from_secs(600));
                Ok(format!("echo {arg}"))
            }),
    );
    // Declared after the guard: on unwind it is dropped first, so the handler returns while the
    // runtime still runs.
    let release = release_tx;
    fake.expect_logins(1, WAIT);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let id = fake.send_command_with(
        APP,
        "App/Echo",
        Some("hi"),
        CommandOptions {
            trace_id: Some(format!("00-{trace}-{parent}-01")),
            ..Default::default()
        },
    );
    assert!(
        fake.wait_for(
            |r| r
                .commands
                .iter()
                .any(|c| c.id == id && c.is_pending() && c.delivered_in.len() >= 2),
            WAIT
        ),
        "the server re-sent it while it ran: {:?}",
        fake.command(id)
    );
    drop(release);
    let c = wait_final(&fake, id);
    assert_eq!(c.status, command_status::DONE);
    assert_eq!(c.result.as_deref(), Some("echo hi"));
    assert!(
        c.delivered_in.len() >= 2,
        "the server re-sent it while it ran: {c:?}"
    );
    // Later pings do not carry it any more; none of them runs it again.
    let pings = fake.pings().len();
    assert!(fake.wait_for(|r| r.pings.len() >= pings + 2, WAIT));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "run once");
    let replies = replies_to(&fake, id);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(
        (replies[0].code, &replies[0].data_reply),
        (0, &serde_json::json!(1))
    );
    // The reply as .NET writes it.
    let req = fake
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::CommandReply)
        .unwrap();
    assert_eq!(
        req.json.unwrap(),
        serde_json::json!({"Id": id, "Status": 2, "Data": "echo hi"})
    );

    guard.flush().unwrap();
    let span = common::drain(&rx)
        .into_iter()
        .flat_map(|m| m.builders)
        // Named as registered, not as the server spelled it.
        .find(|b| b.name == "cmd:app/echo")
        .expect("a cmd: span");
    assert_eq!(span.total, 1);
    let sample = &span.samples.as_ref().expect("sampled (trace flag 01)")[0];
    assert_eq!(sample.trace_id, trace);
    assert_eq!(sample.parent_id.as_deref(), Some(parent));
    assert_eq!(sample.tag.as_deref(), Some("hi"), "the argument is the tag");
    drop(guard);
    check(&fake);
}

/// A command without a handler is answered Error with the text .NET sends; so are the .NET
/// built-ins that mean nothing to a Rust process.
#[test]
fn an_unknown_command_gets_status_4_with_the_dotnet_text() {
    let _s = common::serial();
    let fake = fake();
    let guard = stardust_runtime::init_with(config(&fake)).unwrap();
    fake.expect_logins(1, WAIT);
    let unknown = fake.send_command(APP, "no/such", Some("x"));
    let publish = fake.send_command(APP, "config/publish", None);
    for (id, name) in [(unknown, "no/such"), (publish, "config/publish")] {
        let c = wait_final(&fake, id);
        assert_eq!(c.status, command_status::ERROR);
        assert_eq!(c.result, Some(format!("找不到服务[{name}]")));
        assert_eq!(replies_to(&fake, id).len(), 1);
    }
    drop(guard);
    check(&fake);
}

/// `app/freeMemory` is built in with glibc (`malloc_trim`), unless the application registers
/// its own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn free_memory_is_built_in_and_can_be_overridden() {
    let _s = common::serial();
    let fake = fake();
    let guard = stardust_runtime::init_with(config(&fake)).unwrap();
    fake.expect_logins(1, WAIT);
    let id = fake.send_command(APP, "app/freeMemory", None);
    let c = wait_final(&fake, id);
    assert_eq!(c.status, command_status::DONE);
    assert!(c.result.as_deref().unwrap().starts_with("OK"), "{c:?}");
    drop(guard);
    check(&fake);

    let fake = self::fake();
    let guard = stardust_runtime::init_with(
        config(&fake).command("APP/FREEMEMORY", |_: &str| Ok("mine".to_owned())),
    )
    .unwrap();
    fake.expect_logins(1, WAIT);
    let id = fake.send_command(APP, "app/freeMemory", None);
    assert_eq!(wait_final(&fake, id).result.as_deref(), Some("mine"));
    drop(guard);
    check(&fake);
}

/// A handler's `Err` and a handler's panic are answered Error with their text.
#[test]
fn handler_errors_and_panics_are_status_4() {
    let _s = common::serial();
    let fake = fake();
    let guard = stardust_runtime::init_with(
        config(&fake)
            .command("order/check", |arg: &str| Err(format!("no order {arg}")))
            .command("order/crash", |arg: &str| -> Result<String, String> {
                panic!("boom {arg}")
            }),
    )
    .unwrap();
    fake.expect_logins(1, WAIT);
    let err = fake.send_command(APP, "order/check", Some("42"));
    let crash = fake.send_command(APP, "order/crash", Some("7"));
    let c = wait_final(&fake, err);
    assert_eq!(
        (c.status, c.result.as_deref()),
        (command_status::ERROR, Some("no order 42"))
    );
    let c = wait_final(&fake, crash);
    assert_eq!(c.status, command_status::ERROR);
    assert!(c.result.as_deref().unwrap().contains("boom 7"), "{c:?}");
    // The runtime goes on: another command after the panic is answered.
    let again = fake.send_command(APP, "order/check", Some("43"));
    assert_eq!(
        wait_final(&fake, again).result.as_deref(),
        Some("no order 43")
    );
    drop(guard);
    check(&fake);
}

/// An expired command is answered Cancelled without running. Here the server is two hours
/// west of UTC and the app's build is older than 2025, so it writes the expiry as its local
/// wall time without a zone; the client reads a zone-less time as UTC (as .NET does) and finds
/// it two hours old. With UTC times (a build from 2025 on) the same expiry is in the future.
#[test]
fn an_expired_command_is_cancelled() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .ping_period(1)
        .server_utc_offset_min(-120)
        .start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let guard = stardust_runtime::init_with(config(&fake).command("app/echo", move |a: &str| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(a.to_owned())
    }))
    .unwrap();
    fake.expect_logins(1, WAIT);
    let expire = Some(fake.server_now_ms() + 600_000);
    let opts = CommandOptions {
        expire_ms: expire,
        ..Default::default()
    };
    let id = fake.send_command_with(APP, "app/echo", Some("x"), opts.clone());
    let c = wait_final(&fake, id);
    assert_eq!(c.status, command_status::CANCELLED);
    assert!(!c.cancelled_by_server, "the client cancelled it");
    assert_eq!(c.result, None, "no data");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "not run");

    // Times in UTC: not expired, run.
    fake.set_app_compile_ms(APP, 1_767_225_600_000); // 2026-01-01
    let id = fake.send_command_with(APP, "app/echo", Some("y"), opts);
    let c = wait_final(&fake, id);
    assert_eq!(
        (c.status, c.result.as_deref()),
        (command_status::DONE, Some("y"))
    );
    drop(guard);
    check(&fake);
}

/// A command with a future start time is answered Processing at once (the server keeps
/// re-sending it), run when it is due, and then answered Done. The start time is 10 s ahead, so
/// that the first delivery (at the next ping, 1 s apart) comes well before it on a loaded
/// machine too.
#[test]
fn a_scheduled_command_is_answered_processing_then_done() {
    let _s = common::serial();
    let fake = fake();
    let ran_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = ran_at.clone();
    let guard = stardust_runtime::init_with(config(&fake).command("job/run", move |_: &str| {
        record.lock().unwrap().push(std::time::SystemTime::now());
        Ok("done".to_owned())
    }))
    .unwrap();
    fake.expect_logins(1, WAIT);
    // Whole seconds: the server writes times to the second.
    let start = (fake.server_now_ms() / 1000 + 10) * 1000;
    let id = fake.send_command_with(
        APP,
        "job/run",
        None,
        CommandOptions {
            start_time_ms: Some(start),
            ..Default::default()
        },
    );
    assert!(
        fake.wait_for(|r| r.command_replies.iter().any(|q| q.id == id), WAIT),
        "a first reply"
    );
    let first = replies_to(&fake, id);
    assert_eq!(first[0].status, command_status::PROCESSING);
    assert!(
        first[0]
            .data
            .as_deref()
            .unwrap()
            .starts_with("已安排计划执行 "),
        "{first:?}"
    );
    let c = wait_final(&fake, id);
    assert_eq!(
        (c.status, c.result.as_deref()),
        (command_status::DONE, Some("done"))
    );
    assert!(c.delivered_in.len() >= 2, "re-sent while scheduled: {c:?}");
    let statuses: Vec<i64> = replies_to(&fake, id).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [command_status::PROCESSING, command_status::DONE]);
    let ran = ran_at.lock().unwrap().clone();
    assert_eq!(ran.len(), 1);
    let ran_ms = ran[0].duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    // The client reads the server's time through its estimate of the server's clock offset,
    // which may be off by up to half a request's round trip: on a loaded machine that can be
    // far more than a few ms. Running at once would still be some 9 s early.
    assert!(
        ran_ms >= start - 2000,
        "ran {} ms before its start",
        start - ran_ms
    );
    drop(guard);
    check(&fake);
}

/// A handler running past the bound is answered Error "timed out"; its late result is
/// ignored, and the next command does not wait for it.
#[test]
fn a_handler_past_the_time_bound_is_answered_timed_out() {
    let _s = common::serial();
    let fake = fake();
    let returned = Arc::new(AtomicUsize::new(0));
    let flag = returned.clone();
    let (release_tx, released) = crossbeam_channel::bounded::<()>(0);
    let guard = stardust_runtime::init_with(
        config(&fake)
            .command_timeout(Duration::from_millis(300))
            .command("slow/op", move |_: &str| {
                // Runs past its bound until the test lets it return (the test drops the
                // sender then, or when it fails).
                let _ = released.recv_timeout(Duration::from_secs(600));
                flag.fetch_add(1, Ordering::SeqCst);
                Ok("too late".to_owned())
            })
            .command("quick/op", |_: &str| Ok("quick".to_owned())),
    )
    .unwrap();
    // Declared after the guard: on unwind it is dropped first, so the handler returns while the
    // runtime still runs.
    let release = release_tx;
    fake.expect_logins(1, WAIT);
    let slow = fake.send_command(APP, "slow/op", None);
    let quick = fake.send_command(APP, "quick/op", None);
    let c = wait_final(&fake, slow);
    assert_eq!(c.status, command_status::ERROR);
    assert!(
        c.result
            .as_deref()
            .unwrap()
            .starts_with("timed out after 300 ms"),
        "{c:?}"
    );
    let q = wait_final(&fake, quick);
    assert_eq!(q.result.as_deref(), Some("quick"));
    assert_eq!(
        returned.load(Ordering::SeqCst),
        0,
        "the slow one still runs"
    );
    drop(release);
    assert!(
        common::wait_until(WAIT, || returned.load(Ordering::SeqCst) == 1),
        "it returned at last"
    );
    // A command sent after the slow handler returned is answered: the command thread has
    // taken the late result in by then (and the shutdown below would post any reply to it).
    let again = fake.send_command(APP, "quick/op", None);
    assert_eq!(wait_final(&fake, again).result.as_deref(), Some("quick"));
    assert_eq!(
        replies_to(&fake, slow).len(),
        1,
        "the late result is not sent"
    );
    drop(guard);
    assert_eq!(
        replies_to(&fake, slow).len(),
        1,
        "the late result is not sent at shutdown either"
    );
    check(&fake);
}
