//! `cargo run --example quickstart` prints a table whose counts equal the calls it made.
//! `cargo test` builds the examples, so the test runs the built binary directly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/<name>
    let mut p = std::env::current_exe().unwrap();
    p.pop();
    p.pop();
    p.push("examples");
    p.push(name);
    p
}

#[test]
fn quickstart_table_counts_every_call() {
    let out = Command::new(example("quickstart"))
        .env_remove("StarServer")
        .env_remove("STARSERVER")
        .output()
        .expect("run the quickstart example (built by cargo test)");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Sum every table the run printed: name -> (total, errors).
    let mut rows: HashMap<String, (u64, u64)> = HashMap::new();
    for line in stderr.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 3 && line.starts_with("  ") && cols[0] != "operation" {
            if let (Ok(t), Ok(e)) = (cols[1].parse::<u64>(), cols[2].parse::<u64>()) {
                let r = rows.entry(cols[0].to_owned()).or_default();
                r.0 += t;
                r.1 += e;
            }
        }
    }
    let expect = [
        ("order/create", (120, 12)),
        ("order/validate", (120, 12)),
        ("order/price", (108, 0)),
        ("report/crash", (5, 1)),
        ("fetch/remote", (5, 0)),
        ("fetch/all", (1, 0)),
        // Each error also counts under its type (the exception statistics): the invalid
        // orders (a `String` error, counted once although it passes through two functions)
        // and the crash.
        ("ex:String", (12, 0)),
        ("ex:panic", (1, 0)),
    ];
    for (name, counts) in expect {
        assert_eq!(rows.get(name), Some(&counts), "{name} in:\n{stderr}");
    }
    assert_eq!(rows.len(), expect.len(), "{stderr}");
}
