//! Text that must not reach a log line as it is: a password in a server URL (wherever its
//! delimiters are), and the server's own text — error messages, command names, the `code` a
//! login reply hands out — which could forge log lines with CR/LF or colour a terminal with
//! escapes. Checked with a logger and, in a child process, through the stderr fallback.

use std::net::TcpListener;
use std::time::Duration;

use stardust_runtime::{Config, EventKind, InitError, trace};
use stardust_test_support::common::{self, capture_logs, clear_log_lines, log_lines, wait_until};
use stardust_test_support::fake_stardust::*;

const APP: &str = "HostileText";
/// Deadline of every wait for something that only has to happen eventually (a loaded machine
/// may be many times slower than a workstation; a wait that passes ends at once).
const WAIT: Duration = Duration::from_secs(60);
/// Server text that would start a forged log line and turn a terminal red.
const FORGED: &str = "denied\r\nERROR forged line\x1b[31m";
/// How a log line must show [`FORGED`].
const FORGED_SHOWN: &str = "denied\\r\\nERROR forged line\\u{1b}[31m";

#[trace("hostile/op")]
fn op() {}

/// The runtime against `fake`, periods cut by flushes, with budgets far above any scheduling
/// delay.
fn config(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .version("1.0.0")
        .console(false)
        .first_report_delay(Duration::from_secs(3600))
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(WAIT)
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// Every captured line is one line, without a terminal escape, and shows the forged text only
/// escaped.
fn assert_clean(lines: &[String]) {
    for l in lines {
        assert!(
            !l.contains(['\r', '\n', '\x1b', '\u{85}']),
            "a raw control character in a log line: {l:?}"
        );
        if l.contains("forged line") {
            assert!(
                l.contains("\\r\\nERROR forged line\\u{1b}[31m"),
                "not escaped: {l:?}"
            );
        }
    }
}

fn with_lines_containing(s: &str) -> Vec<String> {
    log_lines().into_iter().filter(|l| l.contains(s)).collect()
}

// ---- passwords in server URLs ----------------------------------------------------------------

#[test]
fn a_server_url_whose_password_holds_a_raw_delimiter_fails_init_without_the_password() {
    let _s = common::serial();
    let port = closed_port();
    for url in [
        format!("http://user:P4ss#w0rd@127.0.0.1:{port}"),
        format!("http://user:P4ss?w0rd@127.0.0.1:{port}"),
        format!("http://user:P4ss/w0rd@127.0.0.1:{port}"),
        format!("http://user:1234/w0rd@127.0.0.1:{port}"),
    ] {
        let config = Config::new().server(&url).app_id(APP).console(false);
        let debug = format!("{config:?}");
        assert!(!debug.contains("w0rd"), "Debug shows the password: {debug}");
        let e = match stardust_runtime::init_with(config) {
            Err(e) => e,
            Ok(guard) => {
                drop(guard);
                panic!("init accepted {url}");
            }
        };
        let shown = e.to_string();
        assert!(matches!(&e, InitError::InvalidConfig(c) if c.setting() == "Config::server"));
        assert!(shown.contains("cannot be used"), "{shown}");
        assert!(
            shown.contains(&format!("`http://127.0.0.1:{port}`")),
            "{shown}"
        );
        assert!(
            !shown.contains("P4ss") && !shown.contains("w0rd"),
            "{shown}"
        );
        println!("{url:?} → {shown}");
    }
    // Several servers in one StarServer value: the bad one is named by its place.
    let Err(e) = stardust_runtime::init_with(Config::new().with_vars([(
        "StarServer".to_owned(),
        format!("http://a:s3cret@127.0.0.1:{port}, http://b:P4ss#w0rd@127.0.0.1:{port}"),
    )])) else {
        panic!("init accepted the list");
    };
    let shown = e.to_string();
    assert!(shown.contains("StarServer: server"), "{shown}");
    assert!(shown.contains("(2 of 2)"), "{shown}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("P4ss") && !shown.contains("w0rd"),
        "{shown}"
    );
    // Percent-encoded, the same password is usable.
    let guard = stardust_runtime::init_with(
        Config::new()
            .server(format!("http://user:P4ss%23w0rd@127.0.0.1:{port}"))
            .app_id(APP)
            .console(false)
            .stderr_diagnostics(false)
            .shutdown_timeout(Duration::from_millis(200)),
    )
    .expect("an encoded password is accepted");
    drop(guard);
}

#[test]
fn passwords_of_failing_servers_never_reach_the_log() {
    let _s = common::serial();
    capture_logs();
    clear_log_lines();
    let (a, b) = (closed_port(), closed_port());
    let guard = stardust_runtime::init_with(
        Config::new()
            .servers([
                format!("http://user:s3cret-pw@127.0.0.1:{a}"),
                format!("http://admin:p@ss-w0rd@127.0.0.1:{b}/base"),
            ])
            .app_id(APP)
            .console(false)
            .first_report_delay(Duration::from_secs(3600))
            .shutdown_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    op();
    assert!(stardust_runtime::flush().is_err(), "no server answers");
    let logged = |s: &str| !with_lines_containing(s).is_empty();
    assert!(
        wait_until(WAIT, || logged("login to") && logged("trying http://")),
        "{:#?}",
        log_lines()
    );
    drop(guard);
    let lines = log_lines();
    for l in &lines {
        for secret in ["s3cret", "ss-w0rd", "p@ss"] {
            assert!(!l.contains(secret), "a password in the log: {l}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("http://127.0.0.1:{a}"))
                && l.contains(&format!("http://127.0.0.1:{b}/base"))),
        "the servers are named, redacted: {lines:#?}"
    );
    assert_clean(&lines);
}

// ---- the stderr fallback (no logger), in a child process ---------------------------------------

const CHILD: &str = "STARDUST_HOSTILE_TEXT_CHILD_SERVERS";

/// Not a test of its own: the child's body when `STARDUST_HOSTILE_TEXT_CHILD_SERVERS` is set
/// (comma-separated servers). No logger: problems go to stderr.
#[test]
#[ignore = "the child process's body; run by the tests below"]
fn child_entry() {
    let Ok(servers) = std::env::var(CHILD) else {
        return;
    };
    let guard = stardust_runtime::init_with(
        Config::new()
            .servers(servers.split(','))
            .app_id(APP)
            .first_report_delay(Duration::from_secs(3600))
            .request_timeout(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    op();
    // The login is refused: the flush ends at once, with the error.
    let _ = stardust_runtime::flush();
    drop(guard);
}

#[test]
fn the_stderr_fallback_shows_no_password_and_no_forged_line() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, None).start();
    fake.set_fault(On::Login, Fault::code(403, FORGED));
    let dead = closed_port();
    let servers = format!(
        "http://user:s3cret-pw@127.0.0.1:{dead},http://admin:p@ss-w0rd@127.0.0.1:{}",
        fake.port()
    );
    let out = common::child_test("child_entry")
        .env(CHILD, &servers)
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("--- stderr of the child:\n{err}");
    for secret in ["s3cret", "ss-w0rd", "p@ss"] {
        assert!(!err.contains(secret), "a password on stderr:\n{err}");
    }
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    assert!(
        !err.lines().any(|l| l.starts_with("ERROR forged line")),
        "a forged line:\n{err}"
    );
    let warning = err
        .lines()
        .find(|l| l.starts_with("stardust warning: login to"))
        .unwrap_or_else(|| panic!("no login warning:\n{err}"));
    assert!(
        warning.contains(&format!("http://127.0.0.1:{}", fake.port())),
        "{warning}"
    );
    assert!(warning.contains(FORGED_SHOWN), "{warning}");
}

// ---- the server's text in log lines -----------------------------------------------------------

#[test]
fn forged_server_text_is_escaped_in_every_log_line() {
    let _s = common::serial();
    capture_logs();
    clear_log_lines();
    let fake = FakeStardust::builder()
        .app(APP, None)
        .ping_period(1)
        .start();
    // One refusal per endpoint, each with the forged text; then the server behaves.
    fake.push_fault(On::Login, Fault::code(403, FORGED));
    fake.push_fault(On::Ping, Fault::code(401, FORGED));
    fake.push_fault(On::Report, Fault::code(500, FORGED));
    fake.push_fault(On::Only(Endpoint::CommandReply), Fault::code(500, FORGED));
    fake.push_fault(On::Only(Endpoint::PostEvents), Fault::code(500, FORGED));
    let forged_name = "app/x\r\nERROR forged line\x1b[31m";
    let id = fake.send_command(APP, forged_name, None);
    let guard = stardust_runtime::init_with(config(&fake)).unwrap();
    fake.expect_logins(1, WAIT);
    stardust_runtime::event(EventKind::Info, "hostile/event", "one");
    op();
    // The report is refused for good (code 500): dropped, so the flush succeeds.
    let _ = stardust_runtime::flush();
    let command_shown = "`app/x\\r\\nERROR forged line\\u{1b}[31m`";
    let seen = |s: &str| {
        with_lines_containing(s)
            .iter()
            .any(|l| l.contains("forged line"))
    };
    let all_seen = || {
        seen("login to")
            && seen("answered 401")
            && seen("refused a report")
            && seen(&format!("refused the reply to command {id}"))
            && seen("events (")
            && with_lines_containing(command_shown).len() >= 2
    };
    assert!(wait_until(WAIT, all_seen), "{:#?}", log_lines());
    drop(guard);
    let lines = log_lines();
    assert_clean(&lines);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("command {id} {command_shown}: no handler"))),
        "{lines:#?}"
    );
    for l in lines.iter().filter(|l| l.contains("forged line")) {
        println!("{l}");
    }
}

/// Runs the runtime against a server whose login replies hand out `code` (with the app's
/// secret), through two logins; returns the `AppId`s of the reports it sent.
fn reports_after_login_code(code: &str) -> Vec<String> {
    const SECRET: &str = "app-secret";
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .login_code(code)
        .start();
    let guard = stardust_runtime::init_with(config(&fake).secret(SECRET)).unwrap();
    fake.expect_logins(1, WAIT);
    op();
    let _ = stardust_runtime::flush();
    // A second login (the token is refused, the report retried after it).
    fake.invalidate_tokens();
    op();
    let _ = stardust_runtime::flush();
    assert!(
        fake.wait_for(
            |r| r.logins.len() >= 2 && r.requests.iter().filter(|q| q.is_report()).count() >= 2,
            WAIT
        ),
        "{:#?}",
        fake.requests()
    );
    drop(guard);
    fake.report_requests()
        .iter()
        .map(|q| {
            q.json.as_ref().expect("a JSON report")["AppId"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn a_login_code_that_fails_the_app_id_checks_is_not_adopted() {
    let _s = common::serial();
    capture_logs();
    for code in ["C".repeat(60), format!("Renamed{FORGED}"), "   ".to_owned()] {
        clear_log_lines();
        let app_ids = reports_after_login_code(&code);
        assert!(
            app_ids.iter().all(|id| id == APP),
            "reports must keep the configured AppId: {app_ids:?}"
        );
        let lines = log_lines();
        assert_clean(&lines);
        let warned = with_lines_containing("keeping `HostileText`");
        assert_eq!(warned.len(), 1, "warned once: {lines:#?}");
        assert!(with_lines_containing("registered this application as").is_empty());
        println!("{}", warned[0]);
    }
}
