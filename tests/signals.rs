//! SIGTERM — how services are normally stopped — reports the last period before the process
//! exits (feature `signals`). The test runs this binary again as a child that traces, waits,
//! and is then sent SIGTERM.
#![cfg(all(feature = "signals", unix))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use stardust_runtime::{Config, Reporter, TraceModel, trace};
use stardust_test_support::common::{self, KillOnDrop};

const CHILD: &str = "STARDUST_SIGNALS_CHILD";
/// Deadline of each wait for the child (to be ready, to exit): long enough for a loaded
/// machine, so that only a child that hangs fails it (a wait that passes ends at once).
const WAIT: Duration = Duration::from_secs(60);

/// The child process, killed and reaped when dropped: a failing test does not leave it
/// running (it would sleep forever).
#[trace("signals/op")]
fn op() {}

/// Prints each period's total of `signals/op` to stdout (read by the parent).
struct PrintTotals;
impl Reporter for PrintTotals {
    fn report(&mut self, model: &TraceModel) {
        let total: i64 = model
            .builders
            .iter()
            .filter(|b| b.name == "signals/op")
            .map(|b| b.total as i64)
            .sum();
        println!("REPORTED {total}");
    }
}

#[test]
#[ignore = "the child process's body; run by the tests below"]
fn child_entry() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let _guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .reporter(PrintTotals)
            .first_report_delay(Duration::from_secs(3600)),
    )
    .unwrap();
    stardust_runtime::exit_on_signals().unwrap();
    for _ in 0..42 {
        op();
    }
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn sigterm_reports_the_last_period_then_exits_143() {
    // Scoped: the thread reading the child's stdout is joined before the test ends. On a
    // panic the child is killed first (it is dropped inside the scope), which ends the reader.
    let (status, rest) = std::thread::scope(|s| {
        let mut child = KillOnDrop(
            common::child_test("child_entry")
                .env(CHILD, "1")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // The child's stdout line by line, so that every wait below has a deadline; the
        // channel disconnects when the child's stdout closes (it exited).
        let stdout = child.0.stdout.take().unwrap();
        let (tx, lines) = crossbeam_channel::unbounded::<String>();
        s.spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            match lines.recv_deadline(deadline) {
                Ok(line) if line.trim_end().ends_with("READY") => break,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("the child was not ready after {WAIT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("child ended early"),
            }
        }
        let killed = Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + WAIT;
        let mut rest = String::new();
        loop {
            match lines.recv_deadline(deadline) {
                Ok(line) => {
                    rest.push_str(&line);
                    rest.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the child did not exit within {WAIT:?} of SIGTERM; stdout: {rest}")
                }
            }
        }
        let mut status = None;
        assert!(
            common::wait_until(WAIT, || {
                status = child.0.try_wait().unwrap();
                status.is_some()
            }),
            "the child closed its stdout but did not exit; stdout: {rest}"
        );
        (status.unwrap(), rest)
    });
    assert_eq!(status.code(), Some(143), "exit status; stdout: {rest}");
    let reported: i64 = rest
        .lines()
        .filter_map(|l| l.strip_prefix("REPORTED "))
        .map(|n| n.trim().parse::<i64>().unwrap())
        .sum();
    assert_eq!(reported, 42, "the last period was reported: {rest}");
}
