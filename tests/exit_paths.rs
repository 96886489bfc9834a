//! Exit paths, through the `exit_paths` example binary (built by `cargo test`): which endings
//! report the last period.

use std::process::Command;

fn run(mode: &str) -> (bool, String) {
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push("exit_paths");
    let out = Command::new(p)
        .arg(mode)
        .env_remove("StarServer")
        .env_remove("STARSERVER")
        .output()
        .expect("run the exit_paths example (built by cargo test)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `exit/work` row's total, if the table was printed.
fn total(stderr: &str) -> Option<u32> {
    stderr
        .lines()
        .find(|l| l.trim_start().starts_with("exit/work"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[test]
fn guard_drop_reports_the_last_period() {
    let (ok, err) = run("drop");
    assert!(ok, "{err}");
    assert_eq!(total(&err), Some(7), "{err}");
}

#[test]
fn a_panic_unwinding_through_main_still_reports() {
    let (ok, err) = run("panic");
    assert!(!ok, "the process fails with the panic");
    assert!(err.contains("panicking with the guard alive"), "{err}");
    assert_eq!(total(&err), Some(7), "{err}");
}

#[test]
fn process_exit_skips_the_guard_so_the_period_is_lost() {
    let (ok, err) = run("exit");
    assert!(ok, "{err}");
    assert!(err.contains("mode exit"), "{err}");
    assert_eq!(
        total(&err),
        None,
        "documented: exit() skips destructors\n{err}"
    );
}

#[test]
fn flush_before_exit_reports() {
    let (ok, err) = run("flush-exit");
    assert!(ok, "{err}");
    assert_eq!(total(&err), Some(7), "{err}");
}
