//! Reporting to Apache SkyWalking: one request handled with entry, local and exit spans, work
//! handed to another thread, correlation entries, and the headers sent downstream.
//!
//! ```text
//! cargo run --example skywalking --features skywalking
//! SW_AGENT_COLLECTOR_BACKEND_SERVICES=http://oap:12800 SW_AGENT_NAME=demo \
//!     cargo run --example skywalking --features skywalking
//! ```
//!
//! The OAP defaults to `http://127.0.0.1:12800`. Every body posted to it is printed (the
//! runtime logs it at trace level), followed by whether the OAP took it; with no OAP running
//! the example says so and still ends within its 2-second shutdown bound.

use std::collections::HashMap;
use std::time::Duration;

use stardust_runtime::incoming::incoming;
use stardust_runtime::skywalking::correlation;
use stardust_runtime::{Config, exit_span, trace};

/// Prints the runtime's diagnostics (and the JSON it posts) to stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.target().starts_with("stardust")
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{:<5}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

#[trace("orders/price")]
fn price(items: u32) -> u64 {
    u64::from(items) * 250
}

fn main() {
    log::set_logger(&StderrLog).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    let mut config = Config::from_env()
        .console(false)
        .request_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(2));
    if std::env::var_os("SW_AGENT_COLLECTOR_BACKEND_SERVICES").is_none() {
        config = config.skywalking("http://127.0.0.1:12800");
    }
    if std::env::var_os("SW_AGENT_NAME").is_none() {
        config = config.skywalking_service("skywalking-demo");
    }
    let guard = stardust_runtime::init_with(config).expect("start the runtime");

    // An incoming request from a SkyWalking-instrumented caller (its headers, as they arrive).
    let caller = vec![(
        "sw8".to_owned(),
        "1-MQ==-NQ==-3-bWVzaA==-aW5zdGFuY2U=-L2FwaS92MS9oZWFsdGg=-ZXhhbXBsZS5jb206ODA4MA=="
            .to_owned(),
    )];
    let request = incoming("POST", "/orders/create", &caller);
    correlation::set("tenant", "acme").expect("a span is open");
    let total = price(4);

    // Work handed to another thread: its spans form a segment of their own, referring back.
    stardust_runtime::spawn_thread(|| {
        let _audit = stardust_runtime::span("orders/audit");
        println!(
            "audit thread sees tenant = {:?}",
            correlation::get("tenant")
        );
    })
    .join()
    .unwrap();

    // An outgoing call: the headers an HTTP client would send.
    let mut headers: HashMap<String, String> = HashMap::new();
    {
        let call = exit_span("inventory/reserve", "inventory:8080");
        call.inject(&mut headers);
    }
    let mut names: Vec<_> = headers.keys().collect();
    names.sort();
    for name in names {
        println!("outgoing {name}: {}", headers[name]);
    }
    request.finish(200);
    println!("order total {total}; shutting down (segments are posted now)");
    drop(guard);
}
