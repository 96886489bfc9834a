//! Header carriers: read and write access to whatever holds the headers of a request.
//!
//! Header names are matched case-insensitively (ASCII) everywhere. Extraction sees every header
//! line separately, so a repeated `traceparent` can be told apart from a single one.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// Read access to incoming headers.
///
/// Implemented for `HashMap`/`BTreeMap` of strings, for lists of `(name, value)` pairs
/// (`Vec`, slices and arrays, where a name may repeat), for `http::HeaderMap` (the `http` 1
/// crate, `ureq::http`) and, with the `tiny_http` feature, for `tiny_http::Request`. Implement
/// it for your own request type to extract a remote context from it.
pub trait Extractor {
    /// Every value of the header `name` (matched case-insensitively), in order, one entry per
    /// header line. Empty when the header is absent.
    fn get_all(&self, name: &str) -> Vec<&str>;
}

/// Write access to outgoing headers.
///
/// Implemented for `HashMap<String, String>`, `Vec<(String, String)>`, `http::HeaderMap` (the
/// `http` 1 crate, `ureq::http`) and a ureq request builder (`ureq::RequestBuilder`).
pub trait Injector {
    /// True when a header `name` (matched case-insensitively) is already present.
    fn contains(&self, name: &str) -> bool;
    /// Adds the header `name` with `value`. Callers check [`Injector::contains`] first and never
    /// call this for a header that is already present.
    fn set(&mut self, name: &str, value: String);
}

impl<T: Extractor + ?Sized> Extractor for &T {
    fn get_all(&self, name: &str) -> Vec<&str> {
        (**self).get_all(name)
    }
}

impl<T: Extractor + ?Sized> Extractor for &mut T {
    fn get_all(&self, name: &str) -> Vec<&str> {
        (**self).get_all(name)
    }
}

impl<T: Injector + ?Sized> Injector for &mut T {
    fn contains(&self, name: &str) -> bool {
        (**self).contains(name)
    }
    fn set(&mut self, name: &str, value: String) {
        (**self).set(name, value)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, S> Extractor for HashMap<K, V, S> {
    /// A map holds one value per key, but keys differing only in case are separate entries:
    /// all of them are returned, ordered by key so the result does not depend on hashing.
    fn get_all(&self, name: &str) -> Vec<&str> {
        let mut found: Vec<(&str, &str)> = self
            .iter()
            .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        if found.len() > 1 {
            found.sort_unstable();
        }
        found.into_iter().map(|(_, v)| v).collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extractor for BTreeMap<K, V> {
    fn get_all(&self, name: &str) -> Vec<&str> {
        self.iter()
            .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
            .collect()
    }
}

fn pairs_get_all<'a, K: AsRef<str>, V: AsRef<str>>(
    pairs: &'a [(K, V)],
    name: &str,
) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
        .collect()
}

impl<K: AsRef<str>, V: AsRef<str>> Extractor for [(K, V)] {
    fn get_all(&self, name: &str) -> Vec<&str> {
        pairs_get_all(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Extractor for [(K, V); N] {
    fn get_all(&self, name: &str) -> Vec<&str> {
        pairs_get_all(self, name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Extractor for Vec<(K, V)> {
    fn get_all(&self, name: &str) -> Vec<&str> {
        pairs_get_all(self, name)
    }
}

impl<S: BuildHasher> Injector for HashMap<String, String, S> {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name) || self.keys().any(|k| k.eq_ignore_ascii_case(name))
    }
    fn set(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value);
    }
}

impl Injector for BTreeMap<String, String> {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name) || self.keys().any(|k| k.eq_ignore_ascii_case(name))
    }
    fn set(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value);
    }
}

impl Injector for Vec<(String, String)> {
    fn contains(&self, name: &str) -> bool {
        self.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
    fn set(&mut self, name: &str, value: String) {
        self.push((name.to_owned(), value));
    }
}

/// Stands in for a header value that is not UTF-8: it keeps its line counted (two
/// `traceparent` lines stay two) and fails every id and `tracestate` grammar.
const NOT_UTF8: &str = "\u{fffd}";

/// `http::HeaderMap` (the `http` 1 crate, which ureq 3 re-exports as `ureq::http`): every
/// line of a header, in order.
impl Extractor for ureq::http::HeaderMap {
    fn get_all(&self, name: &str) -> Vec<&str> {
        // `HeaderMap` parses `&str` names case-insensitively; an invalid name finds nothing.
        ureq::http::HeaderMap::get_all(self, name)
            .iter()
            .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or(NOT_UTF8))
            .collect()
    }
}

/// `http::HeaderMap` (the `http` 1 crate, which ureq 3 re-exports as `ureq::http`).
impl Injector for ureq::http::HeaderMap {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
    /// A name or value that is not a valid HTTP header is silently not written.
    fn set(&mut self, name: &str, value: String) {
        use ureq::http::header::{Entry, HeaderName, HeaderValue};
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) else {
            return;
        };
        if let Entry::Vacant(slot) = self.entry(name) {
            slot.insert(value);
        }
    }
}

/// A ureq request before it is sent (`agent.get(url)`), for calls made without
/// [`TracingMiddleware`](crate::ureq_tracing::TracingMiddleware):
/// `span.inject(&mut request)`. A builder that already failed (an invalid URL) takes nothing.
impl<B> Injector for ureq::RequestBuilder<B> {
    fn contains(&self, name: &str) -> bool {
        self.headers_ref().is_some_and(|h| h.contains_key(name))
    }
    fn set(&mut self, name: &str, value: String) {
        if let Some(headers) = self.headers_mut() {
            Injector::set(headers, name, value);
        }
    }
}

/// A request received by a [tiny_http](https://docs.rs/tiny_http) 0.12 server (feature
/// `tiny_http`): `incoming::with_route(route, method, url, &request)`.
#[cfg(feature = "tiny_http")]
impl Extractor for tiny_http::Request {
    fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers().get_all(name)
    }
}

/// The headers of a tiny_http 0.12 request or response (feature `tiny_http`).
#[cfg(feature = "tiny_http")]
impl Extractor for [tiny_http::Header] {
    fn get_all(&self, name: &str) -> Vec<&str> {
        self.iter()
            .filter(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_keep_every_line_in_order_and_ignore_case() {
        let v = vec![
            ("TraceParent".to_string(), "a".to_string()),
            ("other".to_string(), "x".to_string()),
            ("traceparent".to_string(), "b".to_string()),
        ];
        assert_eq!(v.get_all("traceparent"), ["a", "b"]);
        assert_eq!(v.get_all("TRACEPARENT"), ["a", "b"]);
        assert!(v.get_all("tracestate").is_empty());
        let s: &[(&str, &str)] = &[("Request-Id", "|abc.1."), ("request-id", "|d.")];
        assert_eq!(s.get_all("request-id"), ["|abc.1.", "|d."]);
        let a = [("TraceId", "abc")];
        assert_eq!(a.get_all("traceid"), ["abc"]);
        let r = &a;
        assert_eq!(r.get_all("TRACEID"), ["abc"]);
    }

    #[test]
    fn maps_match_case_insensitively_and_in_a_stable_order() {
        let mut m = HashMap::new();
        m.insert("tracestate".to_string(), "b=2".to_string());
        m.insert("TraceState".to_string(), "a=1".to_string());
        assert_eq!(m.get_all("TRACESTATE"), ["a=1", "b=2"]);
        let b: BTreeMap<&str, &str> = [("Eagleeye-Traceid", "x")].into_iter().collect();
        assert_eq!(b.get_all("eagleeye-traceid"), ["x"]);
    }

    #[test]
    fn injectors_see_existing_headers_in_any_case() {
        let mut m: HashMap<String, String> = HashMap::new();
        m.insert("TraceParent".into(), "mine".into());
        assert!(Injector::contains(&m, "traceparent"));
        assert!(!Injector::contains(&m, "tracestate"));
        m.set("tracestate", "a=1".into());
        assert_eq!(m["tracestate"], "a=1");

        let mut v: Vec<(String, String)> = vec![("TRACESTATE".into(), "x=1".into())];
        assert!(Injector::contains(&v, "tracestate"));
        v.set("traceparent", "tp".into());
        assert_eq!(v.len(), 2);
        let mut b: BTreeMap<String, String> = BTreeMap::new();
        b.set("a", "1".into());
        assert!(Injector::contains(&b, "A"));
    }

    #[test]
    fn header_map_sees_every_line_and_never_overwrites() {
        use ureq::http;
        let mut h = http::HeaderMap::new();
        h.append("traceparent", http::HeaderValue::from_static("a"));
        h.append("traceparent", http::HeaderValue::from_static("b"));
        h.append(
            "tracestate",
            http::HeaderValue::from_bytes(b"k=\xff").unwrap(),
        );
        assert_eq!(Extractor::get_all(&h, "TraceParent"), ["a", "b"]);
        assert_eq!(Extractor::get_all(&h, "tracestate"), [NOT_UTF8]);
        assert!(Extractor::get_all(&h, "bad name").is_empty());
        assert!(Injector::contains(&h, "TRACEPARENT"));
        h.set("TraceParent", "c".into());
        assert_eq!(Extractor::get_all(&h, "traceparent"), ["a", "b"]);
        h.set("X-New", "v".into());
        assert_eq!(Extractor::get_all(&h, "x-new"), ["v"]);
        h.set("x-bad", "line\nbreak".into());
        assert!(!Injector::contains(&h, "x-bad"));
    }

    #[test]
    fn ureq_request_builder_takes_headers_it_lacks() {
        let mut req = ureq::get("http://127.0.0.1:1/x").header("TraceParent", "mine");
        assert!(Injector::contains(&req, "traceparent"));
        req.set("tracestate", "a=1".into());
        let headers = req.headers_ref().unwrap();
        assert_eq!(headers["tracestate"], "a=1");
        assert_eq!(headers["traceparent"], "mine");
    }

    #[cfg(feature = "tiny_http")]
    #[test]
    fn tiny_http_requests_give_every_line_ignoring_case() {
        let header = |n: &str, v: &str| tiny_http::Header::from_bytes(n, v).unwrap();
        let req: tiny_http::Request = tiny_http::TestRequest::new()
            .with_header(header("TraceParent", "a"))
            .with_header(header("x-other", "o"))
            .with_header(header("traceparent", "b"))
            .into();
        assert_eq!(Extractor::get_all(&req, "TRACEPARENT"), ["a", "b"]);
        assert!(Extractor::get_all(&req, "tracestate").is_empty());
        assert_eq!(req.headers().get_all("X-Other"), ["o"]);
    }
}
