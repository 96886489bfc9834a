//! A strict fake Apache SkyWalking OAP (REST port) for integration tests (stardust-runtime/docs/skywalking.md §4–§6).
//!
//! ```ignore
//! mod support;
//! use support::fake_oap::FakeOap;
//! let oap = FakeOap::start();
//! // point the client at oap.base_url() ...
//! assert!(oap.wait_for(|s| !s.segments.is_empty(), Duration::from_secs(5)));
//! oap.assert_no_violations();
//! ```
//!
//! It answers only what the OAP answers (`POST` on the four v3 paths, 405 for other methods,
//! 404 elsewhere) and refuses, with 400 and a recorded violation, every request the real OAP
//! would mis-read rather than reject: a body without `Content-Type: application/json` (the OAP
//! would parse protobuf), a span without `spanType` (read as `Entry`), an exit span without
//! `peer`, a segment without exactly one span with `spanId` 0, times that are not epoch
//! milliseconds, empty fields in references, the deprecated `status_code` tag. It is as strict
//! as SkyWalking's agents about a segment's span tree, which the OAP does not check: span ids
//! must be exactly 0..n−1, and every `parentSpanId` (except the root's −1) must name a span of
//! the same segment with a smaller id. Valid requests get 200 with `{}`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Everything the fake received.
#[derive(Clone, Debug, Default)]
pub struct OapState {
    /// Accepted segments, in arrival order.
    pub segments: Vec<Value>,
    /// Accepted `reportProperties` bodies.
    pub properties: Vec<Value>,
    /// Accepted `keepAlive` bodies.
    pub keep_alives: Vec<Value>,
    /// Why requests were refused.
    pub violations: Vec<String>,
    /// `(method, path, status)` of every request.
    pub requests: Vec<(String, String, u16)>,
    /// Segment batches (`POST /v3/segments` bodies) accepted.
    pub batches: usize,
}

struct Shared {
    state: Mutex<OapState>,
    changed: Condvar,
    /// Further `POST /v3/segments` answered 503.
    fail_segments: Mutex<u32>,
}

pub struct FakeOap {
    url: String,
    shared: Arc<Shared>,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeOap {
    pub fn start() -> FakeOap {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake OAP"));
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let shared = Arc::new(Shared {
            state: Mutex::new(OapState::default()),
            changed: Condvar::new(),
            fail_segments: Mutex::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (server, shared, stop) = (server.clone(), shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fake-oap".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match server.recv_timeout(Duration::from_millis(50)) {
                            Ok(Some(req)) => handle(&shared, req),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })
                .unwrap()
        };
        FakeOap {
            url,
            shared,
            server,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        self.url.clone()
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    /// Answers the next `n` segment posts with 503.
    pub fn fail_next_segment_posts(&self, n: u32) {
        *self.shared.fail_segments.lock().unwrap() = n;
    }

    pub fn snapshot(&self) -> OapState {
        self.shared.state.lock().unwrap().clone()
    }

    pub fn segments(&self) -> Vec<Value> {
        self.snapshot().segments
    }

    /// Waits until `pred` holds (true) or `timeout` passes (false).
    pub fn wait_for(&self, pred: impl Fn(&OapState) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if pred(&state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    pub fn assert_no_violations(&self) {
        let v = self.snapshot().violations;
        assert!(v.is_empty(), "the fake OAP refused requests: {v:#?}");
    }
}

impl Drop for FakeOap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(shared: &Shared, mut req: tiny_http::Request) {
    let method = req.method().as_str().to_owned();
    let path = req.url().split('?').next().unwrap_or("").to_owned();
    let content_type = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_owned());
    let mut body = Vec::new();
    let _ = req.as_reader().read_to_end(&mut body);
    let known = matches!(
        path.as_str(),
        "/v3/segments"
            | "/v3/segment"
            | "/v3/management/reportProperties"
            | "/v3/management/keepAlive"
    );
    let (status, violations) = if !known {
        (404, vec![format!("{method} {path}: no such endpoint")])
    } else if method != "POST" {
        (405, vec![format!("{method} {path}: only POST is handled")])
    } else if path == "/v3/segments" && take_failure(shared) {
        (503, Vec::new())
    } else {
        match check_request(&path, content_type.as_deref(), &body) {
            Ok(value) => {
                let mut state = shared.state.lock().unwrap();
                match path.as_str() {
                    "/v3/segments" => {
                        state.batches += 1;
                        state
                            .segments
                            .extend(value.as_array().cloned().unwrap_or_default());
                    }
                    "/v3/segment" => state.segments.push(value),
                    "/v3/management/reportProperties" => state.properties.push(value),
                    _ => state.keep_alives.push(value),
                }
                (200, Vec::new())
            }
            Err(errors) => (
                400,
                errors
                    .into_iter()
                    .map(|e| format!("POST {path}: {e}"))
                    .collect(),
            ),
        }
    };
    {
        let mut state = shared.state.lock().unwrap();
        state.violations.extend(violations);
        state.requests.push((method, path, status));
    }
    shared.changed.notify_all();
    let response = tiny_http::Response::from_string(if status == 200 { "{}" } else { "" })
        .with_status_code(status)
        .with_header(
            "Content-Type: application/json"
                .parse::<tiny_http::Header>()
                .unwrap(),
        );
    let _ = req.respond(response);
}

fn take_failure(shared: &Shared) -> bool {
    let mut n = shared.fail_segments.lock().unwrap();
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// Checks one request as the OAP would read it: `Ok` with the parsed body, or every problem.
pub fn check_request(
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, Vec<String>> {
    let json_type = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|c| c == "application/json" || c.ends_with("+json"));
    if !json_type {
        return Err(vec![format!(
            "Content-Type is {content_type:?}: the OAP would parse the body as protobuf"
        )]);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| vec![format!("not JSON: {e}")])?;
    let mut errors = Vec::new();
    match path {
        "/v3/segments" => match value.as_array() {
            Some(list) if !list.is_empty() => {
                for (i, seg) in list.iter().enumerate() {
                    errors.extend(
                        check_segment(seg)
                            .into_iter()
                            .map(|e| format!("segment {i}: {e}")),
                    );
                }
            }
            Some(_) => errors.push("empty segment list".into()),
            None => errors.push("/v3/segments takes a JSON array".into()),
        },
        "/v3/segment" => errors.extend(check_segment(&value)),
        "/v3/management/reportProperties" => {
            errors.extend(check_names(&value));
            match value.get("properties").and_then(Value::as_array) {
                Some(props) => {
                    for p in props {
                        errors.extend(check_kv(p, "property"));
                    }
                    if !props.iter().any(|p| p["key"] == "language") {
                        errors.push("properties without `language`".into());
                    }
                }
                None => errors.push("no `properties` array".into()),
            }
        }
        _ => errors.extend(check_names(&value)),
    }
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

fn check_names(v: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for key in ["service", "serviceInstance"] {
        match v.get(key).and_then(Value::as_str) {
            Some(s) if !s.is_empty() && s.chars().count() <= 70 => {}
            other => errors.push(format!("`{key}` is {other:?}: need 1..=70 characters")),
        }
    }
    errors
}

fn non_empty_str<'a>(
    v: &'a Value,
    key: &str,
    errors: &mut Vec<String>,
    what: &str,
) -> Option<&'a str> {
    match v.get(key).and_then(Value::as_str) {
        Some(s) if !s.is_empty() => Some(s),
        _ => {
            errors.push(format!("{what}: `{key}` missing or empty"));
            None
        }
    }
}

fn check_kv(v: &Value, what: &str) -> Vec<String> {
    let mut errors = Vec::new();
    non_empty_str(v, "key", &mut errors, what);
    if !v.get("value").is_some_and(Value::is_string) {
        errors.push(format!("{what}: `value` is not a string"));
    }
    errors
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An epoch-ms JSON number from 2020 to a day from now (seconds, µs and ns fall outside).
fn epoch_ms(v: &Value, key: &str, errors: &mut Vec<String>, what: &str) -> Option<i64> {
    match v.get(key).and_then(Value::as_i64) {
        Some(t) if (1_577_836_800_000..now_ms() + 86_400_000).contains(&t) => Some(t),
        other => {
            errors.push(format!(
                "{what}: `{key}` = {other:?} is not epoch milliseconds"
            ));
            None
        }
    }
}

fn enum_value(v: Option<&Value>, names: &[&str]) -> Option<usize> {
    match v? {
        Value::String(s) => names.iter().position(|n| n == s),
        Value::Number(n) => n.as_u64().map(|n| n as usize).filter(|n| *n < names.len()),
        _ => None,
    }
}

const SPAN_TYPES: [&str; 3] = ["Entry", "Exit", "Local"];
const LAYERS: [&str; 7] = [
    "Unknown",
    "Database",
    "RPCFramework",
    "Http",
    "MQ",
    "Cache",
    "FAAS",
];
const REF_TYPES: [&str; 2] = ["CrossProcess", "CrossThread"];

/// Everything in a segment the OAP would mis-read.
pub fn check_segment(seg: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if !seg.is_object() {
        return vec!["segment is not an object".into()];
    }
    non_empty_str(seg, "traceId", &mut e, "segment");
    non_empty_str(seg, "traceSegmentId", &mut e, "segment");
    e.extend(check_names(seg));
    let Some(spans) = seg
        .get("spans")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
    else {
        e.push("segment without spans (the OAP drops it)".into());
        return e;
    };
    let ids: Vec<Option<i64>> = spans
        .iter()
        .map(|s| s.get("spanId").and_then(Value::as_i64))
        .collect();
    let known: HashSet<i64> = ids.iter().flatten().copied().collect();
    if known.len() != spans.len() {
        e.push(format!("span ids missing or not unique: {ids:?}"));
    }
    let roots = ids.iter().filter(|i| **i == Some(0)).count();
    if roots != 1 {
        e.push(format!(
            "{roots} spans with spanId 0; the OAP needs exactly one"
        ));
    }
    // SkyWalking agents number a segment's spans 0, 1, 2, … as they start.
    if known != (0..spans.len() as i64).collect::<HashSet<i64>>() {
        let mut sorted: Vec<i64> = known.iter().copied().collect();
        sorted.sort_unstable();
        e.push(format!(
            "span ids {sorted:?} are not 0..{}: agents number a segment's spans from 0 as they start",
            spans.len()
        ));
    }
    for (i, span) in spans.iter().enumerate() {
        let what = format!("span {i} ({:?})", span.get("operationName"));
        let id = ids[i].unwrap_or(-2);
        if !(0..=i32::MAX as i64).contains(&id) {
            e.push(format!("{what}: spanId {id} is not an int32 >= 0"));
        }
        let parent = span.get("parentSpanId").and_then(Value::as_i64);
        match (id, parent) {
            (0, Some(-1)) => {}
            (0, p) => e.push(format!(
                "{what}: the first span needs parentSpanId -1, not {p:?}"
            )),
            (_, Some(p)) if p >= 0 && p < id && known.contains(&p) => {}
            (_, Some(p)) if p >= id && known.contains(&p) => e.push(format!(
                "{what}: parentSpanId {p} is not below spanId {id}: a parent starts before its children"
            )),
            (_, p) => e.push(format!(
                "{what}: parentSpanId {p:?} is not a span of the segment"
            )),
        }
        let start = epoch_ms(span, "startTime", &mut e, &what);
        let end = epoch_ms(span, "endTime", &mut e, &what);
        if let (Some(s), Some(t)) = (start, end) {
            if t < s {
                e.push(format!("{what}: endTime before startTime"));
            }
        }
        non_empty_str(span, "operationName", &mut e, &what);
        let kind = match span.get("spanType") {
            None => {
                e.push(format!("{what}: no spanType (the OAP would read Entry)"));
                None
            }
            v => {
                let k = enum_value(v, &SPAN_TYPES);
                if k.is_none() {
                    e.push(format!("{what}: spanType {v:?} is not Entry/Exit/Local"));
                }
                k
            }
        };
        if kind == Some(1)
            && span
                .get("peer")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            e.push(format!("{what}: exit span without `peer`"));
        }
        if let Some(l) = span.get("spanLayer") {
            if enum_value(Some(l), &LAYERS).is_none() {
                e.push(format!("{what}: spanLayer {l:?} is unknown"));
            }
        }
        if span
            .get("componentId")
            .and_then(Value::as_i64)
            .is_none_or(|c| c < 0)
        {
            e.push(format!("{what}: componentId missing"));
        }
        if let Some(b) = span.get("isError") {
            if !b.is_boolean() {
                e.push(format!("{what}: isError is not a bool"));
            }
        }
        for tag in span
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            e.extend(check_kv(tag, &format!("{what} tag")));
            if tag["key"] == "status_code" {
                e.push(format!(
                    "{what}: deprecated tag key `status_code` (use http.status_code)"
                ));
            }
        }
        for log in span
            .get("logs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            epoch_ms(log, "time", &mut e, &format!("{what} log"));
            match log.get("data").and_then(Value::as_array) {
                Some(data) if !data.is_empty() => {
                    for kv in data {
                        e.extend(check_kv(kv, &format!("{what} log data")));
                    }
                }
                _ => e.push(format!("{what}: log without data")),
            }
        }
        for r in span
            .get("refs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let rw = format!("{what} ref");
            let t = enum_value(r.get("refType"), &REF_TYPES);
            if t.is_none() {
                e.push(format!("{rw}: refType {:?} unknown", r.get("refType")));
            }
            for key in [
                "traceId",
                "parentTraceSegmentId",
                "parentService",
                "parentServiceInstance",
                "parentEndpoint",
            ] {
                non_empty_str(r, key, &mut e, &rw);
            }
            if t == Some(0) {
                non_empty_str(r, "networkAddressUsedAtPeer", &mut e, &rw);
            }
            if !r
                .get("parentSpanId")
                .and_then(Value::as_i64)
                .is_some_and(|p| (0..=i32::MAX as i64).contains(&p))
            {
                e.push(format!("{rw}: parentSpanId missing or negative"));
            }
        }
    }
    e
}
