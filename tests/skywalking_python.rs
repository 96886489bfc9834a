//! Cross-check of `sw8` / `sw8-correlation` with an implementation we did not write: the Python
//! agent's carrier (`apache-skywalking` 1.3.0, `skywalking.trace.carrier.Carrier`). Python must
//! decode our headers to the same fields, and we must decode its output to the same fields.
//!
//! Needs only `python3` with its `venv` module: on first use the test creates a virtual
//! environment under Cargo's target directory (`target/tmp/skywalking-venv`), installs the pinned
//! package into it from the package index and reuses it afterwards. The system interpreter's
//! site-packages are never used, so the test proves the fresh-machine path. Without `python3`,
//! `venv` or the package index these tests fail with a message saying which; they never skip.
#![cfg(feature = "skywalking")]

use stardust_test_support as support;
use stardust_test_support::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use stardust_runtime::skywalking::correlation;
use stardust_runtime::{Config, SpanContext, entry_span, exit_span, init_with};
use support::fake_oap::FakeOap;

/// How long the guard's drop may take to post the segment to the fake OAP, and how long the
/// test waits for it there: far longer than needed (both return as soon as it is done), so a
/// loaded machine cannot make them give up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The package the cross-check pins.
const PACKAGE: &str = "apache-skywalking==1.3.0";

/// The environment's interpreter, provisioned once per test process.
fn venv_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| match provision() {
        Ok(p) => p,
        Err(e) => panic!("the SkyWalking cross-check could not set up Python: {e}"),
    })
}

fn describe(cmd: &str, out: &Output) -> String {
    format!(
        "`{cmd}` exited with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Creates `target/tmp/skywalking-venv` with [`PACKAGE`] installed, unless a complete one is
/// there already (a marker file is written last, so an interrupted set-up is redone). Built in a
/// scratch directory and renamed into place, so a half-made environment is never reused.
fn provision() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = root.join("skywalking-venv");
    let python = dir.join("bin").join("python");
    let marker = dir.join("installed.txt");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == PACKAGE) && python.exists() {
        return Ok(python);
    }
    let scratch = root.join(format!("skywalking-venv.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&scratch)
        .output()
        .map_err(|e| {
            format!("`python3` could not be run ({e}); install Python 3 with its venv module")
        })?;
    if !out.status.success() {
        return Err(format!(
            "{}(on Debian and Ubuntu the venv module is the package python3-venv)",
            describe("python3 -m venv", &out)
        ));
    }
    let out = Command::new(scratch.join("bin").join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            PACKAGE,
        ])
        .env("PIP_NO_INPUT", "1")
        .output()
        .map_err(|e| format!("the new environment's python could not be run: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(format!(
            "could not fetch `{PACKAGE}` from the Python package index (is it reachable?): {}",
            describe(&format!("pip install --no-deps {PACKAGE}"), &out)
        ));
    }
    std::fs::write(scratch.join("installed.txt"), PACKAGE)
        .map_err(|e| format!("cannot write the marker: {e}"))?;
    // The environment's scripts hold its absolute path: it is made under its final name's
    // parent and only renamed, and `python -m` is all this test runs, which does not use them.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&scratch, &dir)
        .map_err(|e| format!("cannot move the environment into {}: {e}", dir.display()))?;
    Ok(python)
}

/// Runs `script` with the provisioned Python, the carrier module imported, `env` in the
/// environment; the script prints one JSON value.
fn python(script: &str, env: &[(&str, &str)]) -> Value {
    let prelude = "\
import json, os, sys
from importlib.metadata import version
v = version('apache-skywalking')
assert v == '1.3.0', 'apache-skywalking ' + v + ' installed, the cross-check pins 1.3.0'
from skywalking.trace.carrier import Carrier
";
    let out = Command::new(venv_python())
        .arg("-I") // isolated: no user site-packages, no PYTHON* variables
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .envs(env.iter().copied())
        .output()
        .expect("the provisioned python could not be run");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const DECODE: &str = "\
c = Carrier()
c.val = os.environ['SW8']
for item in c:
    if item.key == 'sw8-correlation':
        item.val = os.environ.get('SW8_CORRELATION', '')
print(json.dumps({
    'valid': c.is_valid,
    'trace_id': c.trace_id, 'segment_id': c.segment_id, 'span_id': c.span_id,
    'service': c.service, 'service_instance': c.service_instance,
    'endpoint': c.endpoint, 'client_address': c.client_address,
    'correlation': c.correlation_carrier.correlation,
}))
";

const ENCODE: &str = "\
c = Carrier(trace_id=os.environ['T'], segment_id=os.environ['S'], span_id='7',
            service='py-svc', service_instance='py-inst@host-1', endpoint='/py/übersicht',
            client_address='rust-svc:8080', correlation={'tenant': 'acme', 'region': 'eu-1'})
print(json.dumps({'sw8': c.val, 'sw8-correlation': c.correlation_carrier.val}))
";

/// Our `sw8` (from an exit span of a segment with non-ASCII names) read by Python's carrier.
#[test]
fn python_decodes_our_sw8_to_the_same_fields() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let guard = init_with(
        Config::new()
            .console(false)
            .skywalking(&oap.base_url())
            .skywalking_service("订单-service")
            .skywalking_instance("orders@host-1")
            .shutdown_timeout(DELIVERY_TIMEOUT),
    )
    .unwrap();
    let mut headers: HashMap<String, String> = HashMap::new();
    {
        let _root = entry_span("/checkout/确认", &Vec::<(String, String)>::new());
        correlation::set("tenant", "acme").unwrap();
        correlation::set("note", "a-b:c,d=é").unwrap();
        let exit = exit_span("inventory/check", "inventory:8080");
        exit.inject(&mut headers);
    }
    drop(guard);
    assert!(oap.wait_for(|s| !s.segments.is_empty(), DELIVERY_TIMEOUT));
    oap.assert_no_violations();
    let seg = &oap.segments()[0];
    let exit = seg["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spanType"] == "Exit")
        .expect("exit span");

    let got = python(
        DECODE,
        &[
            ("SW8", &headers["sw8"]),
            ("SW8_CORRELATION", &headers["sw8-correlation"]),
        ],
    );
    assert_eq!(got["valid"], true, "{got}");
    assert_eq!(got["trace_id"], seg["traceId"]);
    assert_eq!(got["segment_id"], seg["traceSegmentId"]);
    assert_eq!(got["span_id"], exit["spanId"].to_string());
    assert_eq!(got["service"], "订单-service");
    assert_eq!(got["service_instance"], "orders@host-1");
    assert_eq!(got["endpoint"], "/checkout/确认");
    assert_eq!(got["client_address"], "inventory:8080");
    assert_eq!(got["correlation"]["tenant"], "acme");
    assert_eq!(got["correlation"]["note"], "a-b:c,d=é");
}

/// Python's `sw8` (a trace id that is not 32 hex, unpadded-safe Base64 of UTF-8) read by us:
/// the context continues its trace, the segment refers to its span, correlation arrives.
#[test]
fn we_decode_python_sw8_to_the_same_fields() {
    let _s = common::serial();
    let trace = "py.4bf92f3577b34da6.17000000000001";
    let segment = "0b3e4c2f9a1d4e7f8a6b5c4d3e2f1a0b";
    let made = python(ENCODE, &[("T", trace), ("S", segment)]);
    let headers = vec![
        ("sw8".to_owned(), made["sw8"].as_str().unwrap().to_owned()),
        (
            "sw8-correlation".to_owned(),
            made["sw8-correlation"].as_str().unwrap().to_owned(),
        ),
    ];

    let oap = FakeOap::start();
    let guard = init_with(
        Config::new()
            .console(false)
            .skywalking(&oap.base_url())
            .skywalking_service("rust-svc")
            .shutdown_timeout(DELIVERY_TIMEOUT),
    )
    .unwrap();
    let ctx = SpanContext::extract(&headers).expect("python's sw8 gives a context");
    assert_eq!(ctx.trace_id().to_string(), trace);
    let (tenant, region) = {
        let _entry = entry_span("/from-python", &headers);
        (correlation::get("tenant"), correlation::get("region"))
    };
    assert_eq!(tenant.as_deref(), Some("acme"));
    assert_eq!(region.as_deref(), Some("eu-1"));
    drop(guard);
    assert!(oap.wait_for(|s| !s.segments.is_empty(), DELIVERY_TIMEOUT));
    oap.assert_no_violations();
    let seg = &oap.segments()[0];
    assert_eq!(seg["traceId"], trace);
    let root = &seg["spans"][0];
    assert_eq!(root["spanType"], "Entry");
    let r = &root["refs"][0];
    assert_eq!(r["refType"], "CrossProcess");
    assert_eq!(r["traceId"], trace);
    assert_eq!(r["parentTraceSegmentId"], segment);
    assert_eq!(r["parentSpanId"], 7);
    assert_eq!(r["parentService"], "py-svc");
    assert_eq!(r["parentServiceInstance"], "py-inst@host-1");
    assert_eq!(r["parentEndpoint"], "/py/übersicht");
    assert_eq!(r["networkAddressUsedAtPeer"], "rust-svc:8080");
}
