//! Whole SkyWalking segments, against the strict fake OAP: a segment is sent once all its spans
//! have ended, whatever order their guards are dropped in; its span ids are 0..n-1 in start
//! order; every `parentSpanId` names a span of the same segment (children of an abandoned span
//! take its parent); references name the span ids the parent segment is sent with; and a
//! sampling decision received in `sw8` reaches the outgoing `traceparent`.
#![cfg(feature = "skywalking")]

use stardust_test_support as support;
use stardust_test_support::common;

use std::collections::HashMap;
use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use stardust_runtime::incoming::incoming;
use stardust_runtime::ureq_tracing::TracingMiddleware;
use stardust_runtime::{Config, capture, exit_span, flush, init_with, span, trace};
use support::fake_oap::FakeOap;
use support::http::{self, Headers, downstream};

/// `flush()` waits (bounded by the shutdown timeout) until the fake OAP has the segments cut so
/// far: far longer than it needs, so a loaded machine cannot make it give up (it returns as
/// soon as it is done).
fn sw_config(oap: &FakeOap, service: &str) -> Config {
    Config::new()
        .console(false)
        .skywalking(&oap.base_url())
        .skywalking_service(service)
        .skywalking_instance(format!("{service}-1"))
        .shutdown_timeout(Duration::from_secs(30))
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

/// An `sw8` value from an upstream agent, with the given sample field.
fn upstream_sw8(sample: &str) -> String {
    [
        sample.to_owned(),
        b64("upstream-trace-1"),
        b64("upstream-segment-1"),
        "4".to_owned(),
        b64("frontend"),
        b64("frontend@10.0.0.1"),
        b64("/checkout"),
        b64("orders:8080"),
    ]
    .join("-")
}

fn spans(seg: &Value) -> &Vec<Value> {
    seg["spans"].as_array().expect("spans")
}

fn name_of(seg: &Value, id: i64) -> String {
    spans(seg)
        .iter()
        .find(|s| s["spanId"] == id)
        .and_then(|s| s["operationName"].as_str())
        .unwrap_or_else(|| panic!("no span {id} in {seg:#}"))
        .to_owned()
}

fn span_named<'a>(seg: &'a Value, name: &str) -> &'a Value {
    spans(seg)
        .iter()
        .find(|s| s["operationName"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {seg:#}"))
}

/// Asserts what the fake OAP also checks, here explicitly: span ids exactly 0..n-1, the root
/// 0, every other span's parent a span of this segment with a smaller id. Returns the tree
/// as `(name, parent name)` in span id order (the root's parent is `-`).
fn whole(seg: &Value) -> Vec<(String, String)> {
    let spans = spans(seg);
    let mut ids: Vec<i64> = spans
        .iter()
        .map(|s| s["spanId"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..spans.len() as i64).collect::<Vec<_>>(), "{seg:#}");
    let mut tree: Vec<(i64, String, String)> = spans
        .iter()
        .map(|s| {
            let id = s["spanId"].as_i64().unwrap();
            let parent = s["parentSpanId"].as_i64().unwrap();
            if id == 0 {
                assert_eq!(parent, -1, "{seg:#}");
                (
                    id,
                    s["operationName"].as_str().unwrap().to_owned(),
                    "-".into(),
                )
            } else {
                assert!(
                    (0..id).contains(&parent),
                    "parent {parent} of {id}: {seg:#}"
                );
                let name = s["operationName"].as_str().unwrap().to_owned();
                (id, name, name_of(seg, parent))
            }
        })
        .collect();
    tree.sort();
    tree.into_iter().map(|(_, n, p)| (n, p)).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn segment_rooted_at<'a>(segments: &'a [Value], root: &str) -> &'a Value {
    segments
        .iter()
        .find(|s| {
            spans(s)
                .iter()
                .any(|x| x["spanId"] == 0 && x["operationName"] == root)
        })
        .unwrap_or_else(|| panic!("no segment rooted at {root}: {segments:#?}"))
}

/// Guards dropped root first: the child (and a span it opens afterwards) still belong to the
/// segment, which is sent once they have ended.
#[test]
fn a_root_closed_before_its_child_waits_for_it() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let _guard = init_with(sw_config(&oap, "ooo")).unwrap();
    let root = span("root");
    let child = span("child");
    drop(root);
    {
        let _late = span("child/late");
    }
    assert!(flush().is_ok());
    assert!(oap.segments().is_empty(), "sent before `child` ended");
    drop(child);
    assert!(flush().is_ok());
    let segments = oap.segments();
    assert_eq!(segments.len(), 1, "{segments:#?}");
    assert_eq!(
        whole(&segments[0]),
        pairs(&[("root", "-"), ("child", "root"), ("child/late", "child")])
    );
    oap.assert_no_violations();
}

#[trace("task")]
async fn task() {
    drop(span("task/before"));
    common::yield_once().await;
    drop(span("task/after"));
}

/// A future started under a span, moved to another thread after that span has ended, opens
/// more spans there: they are numbered in the same segment, which waits for them.
#[test]
fn a_future_finished_on_another_thread_after_its_root() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let _guard = init_with(sw_config(&oap, "async")).unwrap();
    let mut fut = Box::pin(task());
    let mut cx = Context::from_waker(Waker::noop());
    {
        let _root = span("request");
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    assert!(flush().is_ok());
    assert!(oap.segments().is_empty(), "sent before `task` ended");
    std::thread::spawn(move || {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    })
    .join()
    .unwrap();
    assert!(flush().is_ok());
    let segments = oap.segments();
    assert_eq!(segments.len(), 1, "{segments:#?}");
    assert_eq!(
        whole(&segments[0]),
        pairs(&[
            ("request", "-"),
            ("task", "request"),
            ("task/before", "task"),
            ("task/after", "task"),
        ])
    );
    oap.assert_no_violations();
}

/// `abandon()` on a span whose children had ended: they are re-parented to its parent, and
/// the ids stay 0..n-1. Stardust does not count the abandoned span either.
#[test]
fn children_of_an_abandoned_span_take_its_parent() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let (capture_reporter, models) = common::capture();
    let guard = init_with(sw_config(&oap, "abandon").reporter(capture_reporter)).unwrap();
    {
        let _root = span("root");
        let mid = span("mid");
        {
            let _child = span("mid/child");
            drop(span("mid/grandchild"));
        }
        mid.abandon();
        drop(span("after"));
    }
    assert!(flush().is_ok());
    let segments = oap.segments();
    assert_eq!(segments.len(), 1, "{segments:#?}");
    assert_eq!(
        whole(&segments[0]),
        pairs(&[
            ("root", "-"),
            ("mid/child", "root"),
            ("mid/grandchild", "mid/child"),
            ("after", "root"),
        ])
    );
    oap.assert_no_violations();
    drop(guard);
    let names: Vec<String> = common::drain(&models)
        .iter()
        .flat_map(|m| m.builders.iter().map(|b| b.name.clone()))
        .collect();
    for n in ["root", "mid/child", "mid/grandchild", "after"] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }
    assert!(!names.iter().any(|x| x == "mid"), "{names:?}");
}

/// An incoming request answered 404 (abandoned) inside a local span: its children hang under
/// the local span.
#[test]
fn a_404_incoming_span_inside_a_local_span() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let _guard = init_with(sw_config(&oap, "web")).unwrap();
    {
        let _conn = span("connection");
        let request = incoming("GET", "/missing/page?x=1", &Vec::<(String, String)>::new());
        drop(exit_span("SELECT page", "db:5432"));
        {
            let _render = span("render");
            drop(span("render/template"));
        }
        request.finish(404);
    }
    assert!(flush().is_ok());
    let segments = oap.segments();
    assert_eq!(segments.len(), 1, "{segments:#?}");
    let seg = &segments[0];
    assert_eq!(
        whole(seg),
        pairs(&[
            ("connection", "-"),
            ("SELECT page", "connection"),
            ("render", "connection"),
            ("render/template", "render"),
        ])
    );
    assert_eq!(span_named(seg, "SELECT page")["spanType"], "Exit");
    oap.assert_no_violations();
}

/// An incoming request continued from `sw8` and answered 404: the segment's root is abandoned,
/// so its children are re-parented to the caller's span: each becomes the root of a segment
/// with the caller's reference.
#[test]
fn children_of_an_abandoned_incoming_root_take_the_callers_reference() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let _guard = init_with(sw_config(&oap, "web")).unwrap();
    {
        let headers = vec![("sw8".to_owned(), upstream_sw8("1"))];
        let request = incoming("GET", "/missing/page", &headers);
        drop(exit_span("SELECT page", "db:5432"));
        {
            let _render = span("render");
            drop(span("render/template"));
        }
        request.finish(404);
    }
    assert!(flush().is_ok());
    let segments = oap.segments();
    assert_eq!(segments.len(), 2, "{segments:#?}");
    let db = segment_rooted_at(&segments, "SELECT page");
    let render = segment_rooted_at(&segments, "render");
    assert_eq!(whole(db), pairs(&[("SELECT page", "-")]));
    assert_eq!(
        whole(render),
        pairs(&[("render", "-"), ("render/template", "render")])
    );
    assert_ne!(db["traceSegmentId"], render["traceSegmentId"]);
    for seg in [db, render] {
        assert_eq!(seg["traceId"], "upstream-trace-1");
        let r = &span_named(seg, &name_of(seg, 0))["refs"][0];
        assert_eq!(r["refType"], "CrossProcess");
        assert_eq!(r["parentTraceSegmentId"], "upstream-segment-1");
        assert_eq!(r["parentSpanId"], 4);
        assert_eq!(r["networkAddressUsedAtPeer"], "orders:8080");
    }
    oap.assert_no_violations();
}

/// Span ids are the spans' start order, and what another thread or process was told (a
/// `CrossThread` reference, `sw8`'s span field) names the span that is sent with that id.
#[test]
fn references_name_the_ids_spans_are_sent_with() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let _guard = init_with(sw_config(&oap, "refs")).unwrap();
    let mut headers = HashMap::new();
    {
        let _root = span("root");
        drop(span("first"));
        let _second = span("second");
        let ctx = capture().unwrap();
        std::thread::spawn(move || drop(ctx.child("worker")))
            .join()
            .unwrap();
        {
            let call = exit_span("call", "inventory:8080");
            call.inject(&mut headers);
            drop(span("call/inner"));
        }
    }
    assert!(flush().is_ok());
    let segments = oap.segments();
    assert_eq!(segments.len(), 2, "{segments:#?}");
    let main = segment_rooted_at(&segments, "root");
    assert_eq!(
        whole(main),
        pairs(&[
            ("root", "-"),
            ("first", "root"),
            ("second", "root"),
            ("call", "second"),
            ("call/inner", "call"),
        ])
    );
    let worker = segment_rooted_at(&segments, "worker");
    let r = &span_named(worker, "worker")["refs"][0];
    assert_eq!(r["refType"], "CrossThread");
    assert_eq!(r["parentTraceSegmentId"], main["traceSegmentId"]);
    assert_eq!(r["parentSpanId"], span_named(main, "second")["spanId"]);
    let sw8: Vec<&str> = headers["sw8"].split('-').collect();
    assert_eq!(sw8[3], span_named(main, "call")["spanId"].to_string());
    oap.assert_no_violations();
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    http::header(headers, name).unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

/// A sampling decision received in one protocol's header is kept in the others: `sw8` sample
/// 1 gives `traceparent` flags 01 (0 gives 00), and a sampled `traceparent` gives `sw8`
/// sample 1. Stardust's own sampling is off (`max_samples(0)`), so only the caller's decision
/// can set the flag.
#[test]
fn sampling_decisions_cross_protocols() {
    let _s = common::serial();
    let oap = FakeOap::start();
    let (url, seen) = downstream(3);
    let _guard = init_with(sw_config(&oap, "sampling").max_samples(0)).unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .middleware(TracingMiddleware)
        .build()
        .into();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let callers: [Headers; 3] = [
        vec![("sw8".into(), upstream_sw8("1"))],
        vec![("sw8".into(), upstream_sw8("0"))],
        vec![("traceparent".into(), traceparent.into())],
    ];
    for headers in &callers {
        let request = incoming("GET", "/pay", headers);
        agent.get(&format!("{url}/next/hop")).call().unwrap();
        request.finish(200);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(
        header(&seen[0], "traceparent").ends_with("-01"),
        "{:?}",
        seen[0]
    );
    assert!(header(&seen[0], "sw8").starts_with("1-"));
    assert!(
        header(&seen[1], "traceparent").ends_with("-00"),
        "{:?}",
        seen[1]
    );
    // Our sw8 always says sample 1: our segments are always reported (docs/skywalking.md).
    assert!(header(&seen[1], "sw8").starts_with("1-"), "{:?}", seen[1]);
    assert!(
        header(&seen[2], "traceparent").ends_with("-01"),
        "{:?}",
        seen[2]
    );
    assert!(header(&seen[2], "sw8").starts_with("1-"), "{:?}", seen[2]);
    assert!(flush().is_ok());
    oap.assert_no_violations();
}
