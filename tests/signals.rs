//! SIGTERM — how services are normally stopped — reports the last period before the process
//! exits (feature `signals`). The test runs this binary again as a child that traces, waits,
//! and is then sent SIGTERM.
#![cfg(all(feature = "signals", unix))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use stardust_runtime::{Config, Reporter, TraceModel, trace};

const CHILD: &str = "STARDUST_SIGNALS_CHILD";

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
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
        if line.trim_end().ends_with("READY") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "exit status; stdout: {rest}");
    let reported: i64 = rest
        .lines()
        .filter_map(|l| l.strip_prefix("REPORTED "))
        .map(|n| n.trim().parse::<i64>().unwrap())
        .sum();
    assert_eq!(reported, 42, "the last period was reported: {rest}");
}
