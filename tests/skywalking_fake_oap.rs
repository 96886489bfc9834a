//! The fake OAP itself: it accepts a well-formed body and refuses, over real HTTP, each thing
//! the real OAP would mis-read. Without this, the scenario tests could pass against a fake
//! that checks nothing.
#![cfg(feature = "skywalking")]

use stardust_test_support as support;
use stardust_test_support::common;

use serde_json::{Value, json};
use support::fake_oap::{FakeOap, check_segment};

/// the example body of stardust-runtime/docs/skywalking.md §5.5, with current timestamps.
fn good() -> Value {
    let t = common::now_ms() - 1000;
    json!({"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","traceSegmentId":"0b3e4c2f9a1d4e7f8a6b5c4d3e2f1a0b",
      "service":"orders","serviceInstance":"orders@host-1","isSizeLimited":false,
      "spans":[
       {"spanId":1,"parentSpanId":0,"startTime":t + 20,"endTime":t + 80,
        "operationName":"/inventory/check","peer":"inventory:8080","spanType":"Exit","spanLayer":"Http",
        "componentId":11000,"isError":false,
        "tags":[{"key":"http.method","value":"GET"},{"key":"http.status_code","value":"200"}]},
       {"spanId":0,"parentSpanId":-1,"startTime":t,"endTime":t + 100,
        "operationName":"/orders","spanType":"Entry","spanLayer":"Http","componentId":11000,"isError":false,
        "refs":[{"refType":"CrossProcess","traceId":"4bf92f3577b34da6a3ce929d0e0e4736",
                 "parentTraceSegmentId":"a1b2c3d4e5f60718293a4b5c6d7e8f90","parentSpanId":1,
                 "parentService":"frontend","parentServiceInstance":"frontend@10.0.0.1",
                 "parentEndpoint":"/checkout","networkAddressUsedAtPeer":"orders:8080"}]}]})
}

fn post(url: &str, content_type: Option<&str>, body: &Value) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.post(url);
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    req.send(body.to_string().as_bytes())
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn accepts_the_documented_example() {
    assert_eq!(check_segment(&good()), Vec::<String>::new());
    let oap = FakeOap::start();
    let url = format!("{}/v3/segments", oap.base_url());
    assert_eq!(post(&url, Some("application/json"), &json!([good()])), 200);
    assert_eq!(oap.segments().len(), 1);
    oap.assert_no_violations();
}

#[test]
fn refuses_what_the_oap_would_misread() {
    let oap = FakeOap::start();
    let url = format!("{}/v3/segments", oap.base_url());
    assert_eq!(post(&url, None, &json!([good()])), 400, "no content type");
    assert_eq!(post(&url, Some("text/plain"), &json!([good()])), 400);
    assert_eq!(
        post(&url, Some("application/json"), &good()),
        400,
        "not an array"
    );

    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut v = good();
        edit(&mut v);
        post(&url, Some("application/json"), &json!([v]))
    };
    type Edit<'a> = &'a dyn Fn(&mut Value);
    let cases: [(&str, Edit); 13] = [
        ("no spanType", &|v| {
            v["spans"][0].as_object_mut().unwrap().remove("spanType");
        }),
        ("exit without peer", &|v| {
            v["spans"][0].as_object_mut().unwrap().remove("peer");
        }),
        ("exit with empty peer", &|v| {
            v["spans"][0]["peer"] = json!("")
        }),
        ("no span 0", &|v| v["spans"][1]["spanId"] = json!(2)),
        ("two spans 0", &|v| v["spans"][0]["spanId"] = json!(0)),
        ("seconds", &|v| {
            v["spans"][1]["startTime"] = json!(common::now_ms() / 1000);
        }),
        ("nanoseconds", &|v| {
            v["spans"][1]["endTime"] = json!(common::now_ms() * 1_000_000);
        }),
        ("empty sw8 address", &|v| {
            v["spans"][1]["refs"][0]["networkAddressUsedAtPeer"] = json!("")
        }),
        ("empty parent endpoint", &|v| {
            v["spans"][1]["refs"][0]["parentEndpoint"] = json!("")
        }),
        ("old status tag", &|v| {
            v["spans"][0]["tags"][1]["key"] = json!("status_code")
        }),
        ("no parent -1 on span 0", &|v| {
            v["spans"][1]["parentSpanId"] = json!(0)
        }),
        ("span ids not 0..n-1", &|v| {
            v["spans"][0]["spanId"] = json!(5)
        }),
        ("parent not in the segment", &|v| {
            v["spans"][0]["parentSpanId"] = json!(3)
        }),
    ];
    for (what, edit) in cases {
        assert_eq!(bad(edit), 400, "{what}");
    }
    let state = oap.snapshot();
    assert!(state.segments.is_empty());
    let refused = state.requests.iter().filter(|r| r.2 == 400).count();
    assert_eq!(refused, 16);
    assert!(state.violations.len() >= 16, "{:#?}", state.violations);

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    assert_eq!(agent.get(&url).call().unwrap().status(), 405);
    let other = format!("{}/v3/nothing", oap.base_url());
    assert_eq!(post(&other, Some("application/json"), &json!({})), 404);
}

/// The span tree inside a segment: ids exactly 0..n-1, every parent a span of the segment that
/// started before (a smaller id).
#[test]
fn span_trees_are_checked_like_an_agent_builds_them() {
    let three = |ids: [(i64, i64); 3]| {
        let mut v = good();
        let child = v["spans"][0].clone();
        v["spans"].as_array_mut().unwrap().push(child);
        for (k, (id, parent)) in [1, 0, 2].into_iter().zip(ids) {
            v["spans"][k]["spanId"] = json!(id);
            v["spans"][k]["parentSpanId"] = json!(parent);
        }
        check_segment(&v)
    };
    assert_eq!(three([(0, -1), (1, 0), (2, 1)]), Vec::<String>::new());
    assert_eq!(three([(0, -1), (1, 0), (2, 0)]), Vec::<String>::new());
    let errors = three([(0, -1), (1, 2), (2, 0)]);
    assert!(errors.iter().any(|e| e.contains("not below")), "{errors:?}");
    let errors = three([(0, -1), (1, 0), (3, 1)]);
    assert!(
        errors.iter().any(|e| e.contains("are not 0..3")),
        "{errors:?}"
    );
    let errors = three([(0, -1), (1, 0), (2, 7)]);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not a span of the segment")),
        "{errors:?}"
    );
}
