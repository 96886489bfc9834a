//! What a user sees without a `log` logger: problems with the server go to stderr once per
//! condition, with a hint. Each case runs this test binary again as a child process (the
//! stderr fallback depends on process-wide `log` state), pointed at a refused port or at a
//! server that answers HTML.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stardust_runtime::{Config, trace};
use stardust_test_support::common::{self, Workers};

#[trace("diag/op")]
fn op() {}

const CHILD: &str = "STARDUST_DIAG_CHILD_URL";
const CHILD_LOGGER: &str = "STARDUST_DIAG_CHILD_LOGGER";

struct Stderr;
impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        eprintln!("LOGGER {} {}", r.level(), r.args());
    }
    fn flush(&self) {}
}
static LOGGER: Stderr = Stderr;

/// The child: a service pointed at `url`, two periods, then a normal exit.
fn child(url: &str) {
    if std::env::var_os(CHILD_LOGGER).is_some() {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    }
    let guard = stardust_runtime::init_with(
        Config::new()
            .server(url)
            .app_id("DiagApp")
            .first_report_delay(Duration::from_millis(100))
            .period(Duration::from_secs(1))
            // Long: on a loaded machine the HTML server's answer may be slow to come, and a
            // login that timed out would be reported as a slow server instead. (A refused
            // connection and an HTML page are answered at once, so nothing waits this long.)
            .request_timeout(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_millis(800)),
    )
    .unwrap();
    for _ in 0..3 {
        op();
        std::thread::sleep(Duration::from_millis(700));
    }
    drop(guard);
}

/// Runs the child against `url` and returns its stderr.
fn run_child(url: &str, with_logger: bool) -> String {
    let mut cmd = common::child_test("child_entry");
    cmd.env(CHILD, url);
    if with_logger {
        cmd.env(CHILD_LOGGER, "1");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Not a test of its own: the child's body when `STARDUST_DIAG_CHILD_URL` is set.
#[test]
#[ignore = "the child process's body; run by the tests below"]
fn child_entry() {
    if let Ok(url) = std::env::var(CHILD) {
        child(&url);
    }
}

fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// A server that answers every request with an HTML page (a web server, not Stardust). It
/// serves until the returned [`Workers`] is stopped or dropped (also when the test fails), so
/// it never outlives its test.
fn html_server() -> (String, Workers) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    l.set_nonblocking(true).unwrap();
    let mut server = Workers::new();
    server.spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            let mut s = match l.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    // Nothing to accept yet (or a failed accept): look again shortly.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            let _ = std::io::Read::read_exact(&mut r, &mut body);
            let page = "<html><body>It works!</body></html>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    (url, server)
}

fn stardust_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("stardust warning") || l.starts_with("stardust error"))
        .collect()
}

#[test]
fn a_refused_server_is_shown_on_stderr_once_with_a_hint() {
    let url = closed_port();
    let err = run_child(&url, false);
    let lines = stardust_lines(&err);
    let login: Vec<_> = lines.iter().filter(|l| l.contains("login to")).collect();
    assert_eq!(login.len(), 1, "once per condition:\n{err}");
    assert!(login[0].contains(&url), "{err}");
    assert!(
        err.contains("hint: is the Stardust server running, and is StarServer"),
        "{err}"
    );
    assert!(
        err.contains("shutdown deadline passed") || err.contains("not delivered"),
        "the loss at exit is said:\n{err}"
    );
    println!("--- stderr of a service whose server refuses connections:\n{err}");
}

#[test]
fn an_html_server_is_named_not_stardust() {
    let (url, server) = html_server();
    let err = run_child(&url, false);
    server.stop();
    assert!(
        err.contains("does not answer like a Stardust server"),
        "{err}"
    );
    assert!(err.contains("looks like HTML"), "{err}");
    println!("--- stderr of a service pointed at a web server:\n{err}");
}

#[test]
fn with_a_logger_nothing_extra_goes_to_stderr() {
    let err = run_child(&closed_port(), true);
    assert!(stardust_lines(&err).is_empty(), "{err}");
    assert!(err.contains("LOGGER WARN stardust: login to"), "{err}");
}
