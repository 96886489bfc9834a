//! The application as the Stardust server sees it, against the strict fake server (which binds
//! bodies as the real one): its version and build time, and pings that bind on every OS.

use stardust_test_support::common;
use stardust_test_support::fake_stardust::*;

use std::time::Duration;

use stardust_runtime::{Config, trace};

const APP: &str = "AppIdentity";
const SECRET: &str = "s3cret-Identity-1";
/// Deadline of every wait for something that only has to happen eventually (the first ping
/// comes 3 s after the login, later on a loaded machine; a wait that passes ends at once).
const WAIT: Duration = Duration::from_secs(60);

#[trace("app/op")]
fn op() {}

/// Long request timeout: a login or ping that is answered late on a loaded machine is not
/// given up and retried seconds later.
fn base(fake: &FakeStardust) -> Config {
    Config::new()
        .server(fake.base_url())
        .app_id(APP)
        .secret(SECRET)
        .first_report_delay(Duration::from_secs(3600))
        .request_timeout(Duration::from_secs(30))
        .console(false)
}

/// `config!()` sends this crate's version and its build time (`Compile`, a real past time,
/// never "now"); the display name is the crate's name.
#[test]
fn config_macro_sends_the_crates_version_and_build_time() {
    let _s = common::serial();
    let fake = FakeStardust::builder()
        .app(APP, Some(SECRET))
        .require_compile(true)
        .start();
    let cfg = stardust_runtime::config!()
        .server(fake.base_url())
        .app_id(APP)
        .secret(SECRET)
        .first_report_delay(Duration::from_secs(3600))
        // The flush below must not run out of time on a loaded machine (it ends as soon as it
        // has delivered).
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(30))
        .console(false);
    let guard = stardust_runtime::init_with(cfg).unwrap();
    op();
    assert!(guard.flush().is_ok());
    let login = fake.logins().into_iter().next().expect("a login");
    assert_eq!(login.code, 0);
    assert_eq!(login.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    let compile = login.compile.expect("Compile sent");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        compile > 1_700_000_000_000 && compile < now,
        "{compile} vs {now}"
    );
    let meta = fake.app_meta(APP).expect("app record");
    assert_eq!(meta.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(meta.compile_ms, compile);
    drop(guard);
    fake.assert_no_violations();
}

/// A version the server cannot parse as a .NET `System.Version` is reduced to one, so pings
/// keep working once the app's build is more than 30 days old.
#[test]
fn a_semver_prerelease_is_sent_as_a_dotnet_version() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, Some(SECRET)).start();
    // An old build: the server parses versions on every ping.
    fake.set_app_compile_ms(APP, 1_600_000_000_000);
    fake.set_app_version(APP, Some("1.0.0"));
    let guard = stardust_runtime::init_with(base(&fake).version("v2.4.0-rc.1+g1a2b")).unwrap();
    op();
    assert!(fake.wait_for(|r| !r.pings.is_empty(), WAIT), "a ping");
    let ping = &fake.pings()[0];
    assert_eq!(ping.code, 0, "the ping binds and parses: {:?}", ping.body);
    assert_eq!(ping.body["Version"], "2.4.0");
    assert_eq!(fake.logins()[0].version.as_deref(), Some("2.4.0"));
    drop(guard);
    fake.assert_no_violations();
}

/// A ping as it is built on a system without `/proc` (macOS, Windows, BSD): no `null` in any
/// field, so the server binds it (a `null` number is HTTP 400 for the whole ping).
#[test]
fn a_ping_without_process_metrics_binds() {
    let _s = common::serial();
    let fake = FakeStardust::builder().app(APP, Some(SECRET)).start();
    let guard = stardust_runtime::init_with(base(&fake).process_metrics(false)).unwrap();
    op();
    assert!(fake.wait_for(|r| !r.pings.is_empty(), WAIT), "a ping");
    let ping = &fake.pings()[0];
    assert_eq!(ping.code, 0);
    let body = ping.body.as_object().unwrap();
    assert!(body.values().all(|v| !v.is_null()), "{body:?}");
    assert!(!body.contains_key("WorkingSet") && !body.contains_key("CpuUsage"));
    assert_eq!(
        body["Version"], "0.0",
        "no version known: the lowest valid one"
    );
    assert!(body["StartTime"].is_i64() && body["MachineName"].is_string());
    drop(guard);
    fake.assert_no_violations();
}
