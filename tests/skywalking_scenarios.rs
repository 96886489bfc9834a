//! The SkyWalking backend end to end, against a strict fake OAP over loopback HTTP: the three
//! classic agent scenarios (one request with entry, local and exit spans; a call across two
//! processes linked by `sw8`; work handed to another thread), retries, heartbeats and a
//! bounded shutdown.
#![cfg(feature = "skywalking")]

use stardust_test_support as support;
use stardust_test_support::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use stardust_runtime::incoming::incoming;
use stardust_runtime::skywalking::Layer;
use stardust_runtime::skywalking::correlation;
use stardust_runtime::ureq_tracing::TracingMiddleware;
use stardust_runtime::{Config, capture, entry_span, exit_span, flush, init_with, span, trace};
use support::fake_oap::FakeOap;
use support::http::{downstream, header, headers_of};

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn unb64(s: &str) -> String {
    String::from_utf8(STANDARD.decode(s).expect("base64")).expect("utf-8")
}

/// The 8 fields of an `sw8` value, Base64 fields decoded.
fn decode_sw8(value: &str) -> Vec<String> {
    let f: Vec<&str> = value.split('-').collect();
    assert_eq!(f.len(), 8, "{value}");
    f.iter()
        .enumerate()
        .map(|(i, v)| {
            if i == 0 || i == 3 {
                v.to_string()
            } else {
                unb64(v)
            }
        })
        .collect()
}

/// How long `flush()` and the guard's drop may take to post to the fake OAP: far longer than
/// they need, so a loaded machine cannot make them give up (they return as soon as they are
/// done).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn sw_config(oap: &FakeOap, service: &str) -> Config {
    Config::new()
        .console(false)
        .skywalking(&oap.base_url())
        .skywalking_service(service)
        .skywalking_instance(format!("{service}-1"))
        .shutdown_timeout(DELIVERY_TIMEOUT)
}

/// Kills the child process when dropped (a failing test does not leave it running); after a
/// successful `wait` this does nothing.
fn traced_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .middleware(TracingMiddleware)
        .http_status_as_error(false)
        .build()
        .into()
}

fn segment_of<'a>(segments: &'a [Value], service: &str, root: &str) -> &'a Value {
    segments
        .iter()
        .find(|s| s["service"] == service && root_span(s)["operationName"] == root)
        .unwrap_or_else(|| panic!("no segment of {service} rooted at {root}: {segments:#?}"))
}

fn root_span(seg: &Value) -> &Value {
    seg["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spanId"] == 0)
        .expect("a span with spanId 0")
}

fn span_named<'a>(seg: &'a Value, name: &str) -> &'a Value {
    seg["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["operationName"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {seg:#}"))
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
}

#[trace("orders/validate")]
fn validate(agent: &ureq::Agent, url: &str) {
    correlation::set("step", "validated").unwrap();
    let resp = agent.get(&format!("{url}/inventory/check?sku=1")).call();
    assert_eq!(resp.unwrap().status(), 200);
}

#[trace("orders/stock")]
fn check_stock() -> Result<(), String> {
    Err("out of stock".into())
}

/// One incoming request continued from an upstream SkyWalking agent, with a local span, an
/// outgoing call and a failing step: one segment, ids and kinds as the OAP reads them, and
/// `sw8` downstream naming our exit span.
#[test]
fn one_request_with_entry_local_and_exit_spans() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let (url, seen) = downstream(1);
    let (capture_reporter, models) = common::capture();
    let guard = init_with(sw_config(&oap, "orders").reporter(capture_reporter)).unwrap();

    // What a Java agent would send: its trace ids are not 32 hex.
    let upstream_trace = "a1b2c3d4e5f60718293a4b5c6d7e8f90.61.17000000000001";
    let sw8 = [
        "1".to_owned(),
        b64(upstream_trace),
        b64("upstream-segment-1"),
        "4".to_owned(),
        b64("frontend"),
        b64("frontend@10.0.0.1"),
        b64("/checkout"),
        b64("orders:8080"),
    ]
    .join("-");
    let incoming_headers = vec![
        ("SW8".to_owned(), sw8),
        (
            "sw8-correlation".to_owned(),
            format!("{}:{}", b64("tenant"), b64("acme")),
        ),
    ];
    let agent = traced_agent();
    let request = incoming("POST", "/orders/42?x=1", &incoming_headers);
    assert_eq!(correlation::get("tenant").as_deref(), Some("acme"));
    validate(&agent, &url);
    assert!(check_stock().is_err());
    request.finish(200);
    assert!(flush().is_ok());

    let segments = oap.segments();
    assert_eq!(segments.len(), 1, "{segments:#?}");
    let seg = &segments[0];
    assert_eq!(seg["service"], "orders");
    assert_eq!(seg["serviceInstance"], "orders-1");
    assert_eq!(seg["traceId"], upstream_trace, "the sw8 trace id is kept");
    assert_eq!(seg["isSizeLimited"], false);
    assert_eq!(seg["spans"].as_array().unwrap().len(), 4);

    let entry = root_span(seg);
    assert_eq!(entry["operationName"], "/orders/{id}"); // the id left out of the default name
    assert_eq!(entry["parentSpanId"], -1);
    assert_eq!(entry["spanType"], "Entry");
    assert_eq!(entry["spanLayer"], "Http");
    assert_eq!(entry["componentId"], 11000);
    assert_eq!(entry["isError"], false);
    assert_eq!(tag(entry, "http.method"), Some("POST"));
    assert_eq!(tag(entry, "url"), Some("/orders/42?x=1"));
    assert_eq!(tag(entry, "http.status_code"), Some("200"));
    let refs = entry["refs"].as_array().unwrap();
    assert_eq!(refs.len(), 1);
    let r = &refs[0];
    assert_eq!(r["refType"], "CrossProcess");
    assert_eq!(r["traceId"], upstream_trace);
    assert_eq!(r["parentTraceSegmentId"], "upstream-segment-1");
    assert_eq!(r["parentSpanId"], 4);
    assert_eq!(r["parentService"], "frontend");
    assert_eq!(r["parentServiceInstance"], "frontend@10.0.0.1");
    assert_eq!(r["parentEndpoint"], "/checkout");
    assert_eq!(r["networkAddressUsedAtPeer"], "orders:8080");

    let local = span_named(seg, "orders/validate");
    assert_eq!(local["spanType"], "Local");
    assert_eq!(local["spanLayer"], "Unknown");
    assert_eq!(local["parentSpanId"], 0);
    let local_id = local["spanId"].as_i64().unwrap();
    assert!(local_id > 0);

    let authority = url.trim_start_matches("http://");
    let exit_name = format!("{url}/inventory/check");
    let exit = span_named(seg, &exit_name);
    assert_eq!(exit["spanType"], "Exit");
    assert_eq!(exit["spanLayer"], "Http");
    assert_eq!(exit["peer"], authority);
    assert_eq!(exit["parentSpanId"], local_id);
    assert_eq!(tag(exit, "http.method"), Some("GET"));
    assert_eq!(
        tag(exit, "url"),
        Some(format!("{url}/inventory/check?sku=1").as_str())
    );
    assert_eq!(tag(exit, "http.status_code"), Some("200"));
    assert!(exit.get("refs").is_none());

    let failed = span_named(seg, "orders/stock");
    assert_eq!(failed["isError"], true);
    let log = &failed["logs"][0];
    assert!(log["time"].as_i64().unwrap() >= failed["startTime"].as_i64().unwrap());
    let data: HashMap<&str, &str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv["key"].as_str().unwrap(), kv["value"].as_str().unwrap()))
        .collect();
    assert_eq!(data["event"], "error");
    assert_eq!(data["message"], "out of stock");
    assert!(data.contains_key("error.kind"));

    // Downstream: sw8 names this segment's exit span; correlation travels on, with the entry
    // set in the local span.
    let seen = seen.lock().unwrap();
    let sent = &seen[0];
    let f = decode_sw8(header(sent, "sw8").expect("sw8 sent downstream"));
    assert_eq!(f[1], upstream_trace);
    assert_eq!(f[2], seg["traceSegmentId"].as_str().unwrap());
    assert_eq!(f[3], exit["spanId"].to_string());
    assert_eq!(f[4], "orders");
    assert_eq!(f[5], "orders-1");
    assert_eq!(f[6], "/orders/{id}");
    assert_eq!(f[7], authority);
    let corr = header(sent, "sw8-correlation").expect("sw8-correlation sent");
    assert_eq!(
        corr,
        format!(
            "{}:{},{}:{}",
            b64("tenant"),
            b64("acme"),
            b64("step"),
            b64("validated")
        )
    );
    let tp = header(sent, "traceparent").expect("traceparent sent too");
    assert_eq!(tp.len(), 55);

    let state = oap.snapshot();
    assert!(!state.properties.is_empty(), "reportProperties at start");
    let props = &state.properties[0];
    assert_eq!(props["service"], "orders");
    assert!(
        props["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["key"] == "language" && p["value"] == "rust")
    );
    oap.assert_no_violations();

    // Stardust gets every span too.
    drop(guard);
    let names: Vec<String> = common::drain(&models)
        .iter()
        .flat_map(|m| m.builders.iter().map(|b| b.name.clone()))
        .collect();
    for n in [
        "/orders/{id}",
        "orders/validate",
        "orders/stock",
        &exit_name,
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }
}

/// The second process of [`two_processes_linked_by_sw8`]: a backend that serves one request.
#[test]
#[ignore = "helper process, started by two_processes_linked_by_sw8"]
fn backend_process() {
    let Ok(oap) = std::env::var("SW_TEST_BACKEND_OAP") else {
        return;
    };
    let guard = init_with(
        Config::new()
            .console(false)
            .skywalking(&oap)
            .skywalking_service("backend")
            .skywalking_instance("backend-1")
            .shutdown_timeout(DELIVERY_TIMEOUT),
    )
    .unwrap();
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    println!("LISTENING http://{}", server.server_addr().to_ip().unwrap());
    // The parent kills this process if it fails before calling.
    let req = server
        .recv_timeout(Duration::from_secs(120))
        .unwrap()
        .expect("a request");
    let headers = headers_of(&req);
    let span = incoming(req.method().as_str(), req.url(), &headers);
    let tenant = {
        let mut db = exit_span("SELECT stock", "db:5432");
        db.set_layer(Layer::Database);
        correlation::get("tenant").unwrap_or_default()
    };
    span.finish(200);
    let _ = req.respond(tiny_http::Response::from_string(tenant));
    drop(guard);
}

/// A call from this process to another one (the test binary run again as a backend), linked
/// by `sw8` over real HTTP: the backend's segment refers to our exit span.
#[test]
fn two_processes_linked_by_sw8() {
    let _s = common::serial();
    let oap = FakeOap::start();
    // The thread that reads the backend's output ends when the backend does; the backend is
    // created in the scope, so a failing assertion kills it before the scope joins the thread.
    let url = std::thread::scope(|scope| {
        let mut child = common::KillOnDrop(
            common::child_test("backend_process")
                .env("SW_TEST_BACKEND_OAP", oap.base_url())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the backend process"),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("backend ended before listening")
                .unwrap();
            // libtest prints `test backend_process ... ` before the test's own output.
            if let Some((_, u)) = line.split_once("LISTENING ") {
                break u.trim().to_owned();
            }
        };
        scope.spawn(move || lines.for_each(drop));

        let guard = init_with(sw_config(&oap, "frontend")).unwrap();
        let body = {
            let _root = entry_span("/checkout", &Vec::<(String, String)>::new());
            correlation::set("tenant", "acme").unwrap();
            traced_agent()
                .get(&format!("{url}/stock/7"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap()
        };
        assert_eq!(body, "acme", "correlation reached the other process");
        assert!(child.0.wait().unwrap().success(), "backend process failed");
        drop(guard);
        url
    });
    // Both processes posted their segments before they ended (the backend) or before the
    // guard's drop returned (here): this only waits out a slow machine.
    assert!(oap.wait_for(|s| s.segments.len() >= 2, Duration::from_secs(30)));

    let segments = oap.segments();
    let front = segment_of(&segments, "frontend", "/checkout");
    // Default names: the id in `/stock/7` is left out.
    let back = segment_of(&segments, "backend", "/stock/{id}");
    let exit = span_named(front, &format!("{url}/stock/{{id}}"));
    assert_eq!(exit["spanType"], "Exit");
    assert_eq!(back["traceId"], front["traceId"], "one trace");
    assert_ne!(back["traceSegmentId"], front["traceSegmentId"]);
    let entry = root_span(back);
    assert_eq!(entry["spanType"], "Entry");
    let r = &entry["refs"][0];
    assert_eq!(r["refType"], "CrossProcess");
    assert_eq!(r["traceId"], front["traceId"]);
    assert_eq!(r["parentTraceSegmentId"], front["traceSegmentId"]);
    assert_eq!(r["parentSpanId"], exit["spanId"]);
    assert_eq!(r["parentService"], "frontend");
    assert_eq!(r["parentServiceInstance"], "frontend-1");
    assert_eq!(r["parentEndpoint"], "/checkout");
    assert_eq!(r["networkAddressUsedAtPeer"], exit["peer"]);
    let db = span_named(back, "SELECT stock");
    assert_eq!(db["spanType"], "Exit");
    assert_eq!(db["peer"], "db:5432");
    assert_eq!(db["spanLayer"], "Database");
    assert_eq!(db["parentSpanId"], 0);
    oap.assert_no_violations();
}

/// Work handed to other threads with capture/attach and `spawn`: one segment per thread, each
/// with a `CrossThread` reference to the span that handed the work over.
#[test]
fn work_handed_to_another_thread() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let guard = init_with(sw_config(&oap, "jobs")).unwrap();
    let (seen, headers) = {
        let _job = span("job");
        correlation::set("batch", "b-17").unwrap();
        let seen = {
            let dispatch = span("job/dispatch");
            let ctx = capture().expect("inside a span");
            let mut headers = HashMap::new();
            dispatch.inject(&mut headers);
            let seen = std::thread::spawn(move || {
                let _attached = ctx.attach();
                let _worker = span("worker");
                let _step = span("worker/step");
                correlation::get("batch")
            })
            .join()
            .unwrap();
            (seen, headers)
        };
        stardust_runtime::spawn_thread(|| {
            let _s = span("spawned");
        })
        .join()
        .unwrap();
        seen
    };
    assert_eq!(seen.as_deref(), Some("b-17"));
    // A local span has no peer: no sw8 (an empty address field would void the header), but
    // traceparent and the correlation entries still go out.
    assert!(!headers.contains_key("sw8"), "{headers:?}");
    assert!(headers.contains_key("traceparent"));
    assert_eq!(
        headers.get("sw8-correlation"),
        Some(&format!("{}:{}", b64("batch"), b64("b-17")))
    );
    drop(guard);
    assert!(oap.wait_for(|s| s.segments.len() >= 3, Duration::from_secs(30)));

    let segments = oap.segments();
    assert_eq!(segments.len(), 3, "{segments:#?}");
    let job = segment_of(&segments, "jobs", "job");
    let dispatch = span_named(job, "job/dispatch");
    assert_eq!(dispatch["parentSpanId"], 0);
    assert!(root_span(job).get("refs").is_none());

    let worker = segment_of(&segments, "jobs", "worker");
    assert_eq!(worker["traceId"], job["traceId"]);
    assert_eq!(span_named(worker, "worker/step")["parentSpanId"], 0);
    let r = &root_span(worker)["refs"][0];
    assert_eq!(r["refType"], "CrossThread");
    assert_eq!(r["traceId"], job["traceId"]);
    assert_eq!(r["parentTraceSegmentId"], job["traceSegmentId"]);
    assert_eq!(r["parentSpanId"], dispatch["spanId"]);
    assert_eq!(r["parentService"], "jobs");
    assert_eq!(r["parentServiceInstance"], "jobs-1");
    assert_eq!(r["parentEndpoint"], "job");
    assert!(r.get("networkAddressUsedAtPeer").is_none());

    let spawned = segment_of(&segments, "jobs", "spawned");
    let r = &root_span(spawned)["refs"][0];
    assert_eq!(r["refType"], "CrossThread");
    assert_eq!(r["parentTraceSegmentId"], job["traceSegmentId"]);
    assert_eq!(r["parentSpanId"], 0);
    oap.assert_no_violations();
}

/// Failed posts are retried from the queue; properties at start and every 10 heartbeats,
/// keep-alive every heartbeat.
#[test]
fn failed_posts_are_retried_and_heartbeats_keep_time() {
    let _s = common::serial();
    let oap = FakeOap::start();
    oap.fail_next_segment_posts(2);
    let guard =
        init_with(sw_config(&oap, "retry").skywalking_heartbeat(Duration::from_millis(100)))
            .unwrap();
    for _ in 0..3 {
        let _root = span("tick");
        let _child = span("tick/child");
    }
    // Two failed posts and their back-off (1 s, then 2 s) before the third goes through.
    assert!(
        oap.wait_for(|s| s.segments.len() == 3, Duration::from_secs(60)),
        "{:?}",
        oap.snapshot().requests
    );
    // Every 100 ms once the reporter is free: waited for, not timed.
    assert!(
        oap.wait_for(
            |s| s.properties.len() >= 2 && s.keep_alives.len() >= 10,
            Duration::from_secs(30)
        ),
        "{:?}",
        oap.snapshot().requests
    );
    drop(guard);
    let state = oap.snapshot();
    let failed = state
        .requests
        .iter()
        .filter(|(_, p, status)| p == "/v3/segments" && *status == 503)
        .count();
    assert_eq!(failed, 2);
    assert_eq!(state.keep_alives[0]["service"], "retry");
    assert_eq!(state.keep_alives[0]["serviceInstance"], "retry-1");
    oap.assert_no_violations();
}

/// An OAP that accepts connections and never answers cannot hold shutdown past its bound.
#[test]
fn shutdown_is_bounded_when_the_oap_hangs() {
    let _s = common::serial();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", hole.local_addr().unwrap());
    // The OAP's calls would wait out a 2 min request timeout; the shutdown's own bound is
    // 800 ms.
    let guard = init_with(
        Config::new()
            .console(false)
            .skywalking(&url)
            .request_timeout(Duration::from_secs(120))
            .shutdown_timeout(Duration::from_millis(800)),
    )
    .unwrap();
    {
        let _root = span("stuck");
    }
    let started = Instant::now();
    drop(guard);
    let took = started.elapsed();
    // Far above the 800 ms bound plus any scheduling delay, far below the 120 s a shutdown
    // waiting for the hung OAP would take.
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    // Closing the listener resets the reporter's pending calls, so the thread it left behind
    // (told to stop) ends now rather than after the request timeout; on a panic above this
    // happens on unwind.
    drop(hole);
}
