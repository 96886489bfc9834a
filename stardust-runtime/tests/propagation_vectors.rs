//! The public side of propagation: the carrier traits and their implementations.
//! (Header parsing itself is crate-private and tested by unit tests in `src/propagation/`.)

use std::collections::{BTreeMap, HashMap};

use stardust_runtime::propagation::{Extractor, Injector};

#[test]
fn vec_of_pairs_exposes_every_line_in_order() {
    let h: Vec<(String, String)> = vec![
        ("traceparent".into(), "one".into()),
        ("Content-Type".into(), "text/plain".into()),
        ("TraceParent".into(), "two".into()),
        ("TRACESTATE".into(), "a=1".into()),
    ];
    assert_eq!(h.get_all("traceparent"), ["one", "two"]);
    assert_eq!(h.get_all("TRACEPARENT"), ["one", "two"]);
    assert_eq!(h.get_all("tracestate"), ["a=1"]);
    assert!(h.get_all("request-id").is_empty());
    assert!(h.get_all("").is_empty());
}

#[test]
fn borrowed_pairs_slices_and_arrays() {
    let v: Vec<(&str, &str)> = vec![("Request-Id", "|abc.1."), ("request-id", "|def.")];
    assert_eq!(v.get_all("REQUEST-ID"), ["|abc.1.", "|def."]);
    let s: &[(&str, &str)] = &[("TraceId", "abc")];
    assert_eq!(s.get_all("traceid"), ["abc"]);
    let a = [("Eagleeye-Traceid", "abc-1"), ("x", "y")];
    assert_eq!(a.get_all("eagleeye-traceid"), ["abc-1"]);
}

#[test]
fn maps_match_names_in_any_case() {
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("TraceParent".into(), "tp".into());
    assert_eq!(m.get_all("traceparent"), ["tp"]);
    m.insert("traceparent".into(), "tp2".into());
    // Keys that differ in case are distinct lines, returned in a stable order.
    assert_eq!(m.get_all("TRACEPARENT"), ["tp", "tp2"]);
    let b: BTreeMap<&str, &str> = [("tracestate", "a=1"), ("other", "x")]
        .into_iter()
        .collect();
    assert_eq!(b.get_all("TraceState"), ["a=1"]);
}

#[test]
fn extractor_works_through_references_and_trait_objects() {
    let h: Vec<(String, String)> = vec![("traceparent".into(), "x".into())];
    let d: &dyn Extractor = &h;
    assert_eq!(d.get_all("TraceParent"), ["x"]);
    fn generic(e: &(impl Extractor + ?Sized)) -> usize {
        e.get_all("traceparent").len()
    }
    assert_eq!(generic(&h), 1);
    assert_eq!(generic(&&h), 1);
    assert_eq!(generic(d), 1);
}

#[test]
fn injectors_never_see_a_header_as_missing_because_of_case() {
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("TRACEPARENT".into(), "mine".into());
    assert!(m.contains("traceparent"));
    assert!(!m.contains("tracestate"));
    m.set("tracestate", "a=1".into());
    assert!(m.contains("TraceState"));

    let mut v: Vec<(String, String)> = Vec::new();
    assert!(!v.contains("traceparent"));
    v.set("traceparent", "tp".into());
    assert!(v.contains("TraceParent"));
    assert_eq!(v, [("traceparent".to_string(), "tp".to_string())]);

    let mut b: BTreeMap<String, String> = BTreeMap::new();
    b.set("traceparent", "tp".into());
    assert!(b.contains("TRACEPARENT"));

    let dyn_inj: &mut dyn Injector = &mut v;
    assert!(dyn_inj.contains("traceparent"));
}

/// A user's own request type.
struct MyRequest {
    headers: Vec<(&'static str, String)>,
}

impl Extractor for MyRequest {
    fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl Injector for MyRequest {
    fn contains(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
    fn set(&mut self, name: &str, value: String) {
        let name: &'static str = if name.eq_ignore_ascii_case("traceparent") {
            "traceparent"
        } else {
            "tracestate"
        };
        self.headers.push((name, value));
    }
}

#[test]
fn user_types_can_be_carriers() {
    let mut r = MyRequest {
        headers: vec![("TraceParent", "x".into())],
    };
    assert_eq!(r.get_all("traceparent"), ["x"]);
    assert!(r.contains("TRACEPARENT"));
    r.set("tracestate", "a=1".into());
    assert_eq!(r.get_all("TraceState"), ["a=1"]);
}

#[test]
fn http_header_map() {
    use ureq::http::{HeaderMap, HeaderValue};
    let mut h = HeaderMap::new();
    h.append("traceparent", HeaderValue::from_static("one"));
    h.append("traceparent", HeaderValue::from_static("two"));
    assert_eq!(Extractor::get_all(&h, "TraceParent"), ["one", "two"]);
    assert!(Injector::contains(&h, "TRACEPARENT"));
    // Never overwrites.
    h.set("traceparent", "three".into());
    assert_eq!(Extractor::get_all(&h, "traceparent"), ["one", "two"]);
    h.set("tracestate", "a=1".into());
    assert_eq!(Extractor::get_all(&h, "tracestate"), ["a=1"]);
    // A name that is not a valid header name is simply absent.
    assert!(Extractor::get_all(&h, "not a name").is_empty());
    assert!(!Injector::contains(&h, "not a name"));
}
