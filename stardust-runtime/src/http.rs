//! HTTP helpers: entry spans for incoming requests and exit spans for outgoing ones, named as
//! the .NET Stardust client names them (stardust.md §B5.10), with context propagation.
//!
//! Outgoing calls made with [ureq](https://docs.rs/ureq) 3 are traced by adding
//! [`TracingMiddleware`] to the agent's config. The runtime's own uploads never go through it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::context::{entry_span, exit_span};
use crate::propagation::{Extractor, Injector};
use crate::span::SpanGuard;

/// Most distinct outgoing span names per host; past it calls are named `{scheme}://{authority}`.
const MAX_NAMES_PER_HOST: usize = 64;
/// Most hosts whose outgoing names are tracked; calls to further hosts are named by host only.
const MAX_HOSTS: usize = 1024;
/// Longest path segment kept in an outgoing span name.
const MAX_SEGMENT_CHARS: usize = 16;

/// The span name of an incoming request: `/{seg1}/{seg2}` of its path (query dropped).
pub fn incoming_name(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(2).collect();
    format!("/{}", segs.join("/"))
}

/// A span for the handling of one incoming request. Finish it with the response status.
#[must_use = "the span closes when dropped; call finish(status) to record the status"]
#[derive(Debug)]
pub struct IncomingSpan {
    guard: SpanGuard,
    name: String,
}

/// Starts the entry span of an incoming request, continuing the caller's trace when the
/// headers carry a valid context (else a new trace). Named by [`incoming_name`]; when sampled,
/// the tag is `METHOD path`.
pub fn incoming(method: &str, path: &str, headers: &(impl Extractor + ?Sized)) -> IncomingSpan {
    let name = incoming_name(path);
    let mut guard = entry_span(name.clone(), headers);
    guard.tag_with(|| format!("{method} {path}"));
    guard.add_attr("http.method", || method.to_owned());
    guard.add_attr("url", || path.to_owned());
    IncomingSpan { guard, name }
}

impl IncomingSpan {
    /// The span, e.g. to read its ids or open children explicitly.
    pub fn guard(&mut self) -> &mut SpanGuard {
        &mut self.guard
    }

    /// Ends the span with the response status: 400 and anything above 404 mark it as an error
    /// (`Http Error <status> <name>`); 404 abandons it (not recorded), as the .NET middleware.
    pub fn finish(mut self, status: u16) {
        self.guard
            .add_attr("http.status_code", || status.to_string());
        if status == 404 {
            self.guard.abandon();
            return;
        }
        if status == 400 || status > 404 {
            self.guard
                .set_error(format!("Http Error {status} {}", self.name));
        }
    }
}

/// `host:port` of an authority, without any `user:password@`.
fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// `url` with any `user:password@` in its authority removed (for names, tags and logs).
pub(crate) fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[end..]).into(),
        None => url.into(),
    }
}

static OUTGOING_NAMES: Mutex<Option<HashMap<String, HashSet<String>>>> = Mutex::new(None);

/// The span name of an outgoing call to `url`: `{scheme}://{authority}/` plus the leading path
/// segments of at most 16 characters (stopping at the first longer one). After 64 distinct
/// names for one host, further ones are just `{scheme}://{authority}`.
pub fn outgoing_name(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = without_userinfo(authority);
    let base = format!("{scheme}://{authority}");
    let mut name = format!("{base}/");
    let mut first = true;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg.chars().count() > MAX_SEGMENT_CHARS {
            break;
        }
        if !first {
            name.push('/');
        }
        name.push_str(seg);
        first = false;
    }
    let mut names = OUTGOING_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let hosts = names.get_or_insert_with(HashMap::new);
    if !hosts.contains_key(&base) && hosts.len() >= MAX_HOSTS {
        return base;
    }
    let per_host = hosts.entry(base.clone()).or_default();
    if per_host.contains(&name) {
        return name;
    }
    if per_host.len() >= MAX_NAMES_PER_HOST {
        return base;
    }
    per_host.insert(name.clone());
    name
}

/// Traces every call of a ureq 3 agent: an exit span named by [`outgoing_name`], `traceparent`
/// (and `tracestate`) injected unless the caller set them, HTTP ≥ 400 and transport errors
/// marked as errors.
///
/// ```no_run
/// let agent: ureq::Agent = ureq::Agent::config_builder()
///     .middleware(stardust_runtime::http::TracingMiddleware)
///     .build()
///     .into();
/// let _ = agent.get("http://127.0.0.1:8080/inventory").call();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingMiddleware;

struct HeaderAdapter<'a>(&'a mut ureq::http::HeaderMap);

impl Injector for HeaderAdapter<'_> {
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn set(&mut self, name: &str, value: String) {
        if let (Ok(n), Ok(v)) = (
            ureq::http::HeaderName::from_bytes(name.as_bytes()),
            ureq::http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(n, v);
        }
    }
}

impl ureq::middleware::Middleware for TracingMiddleware {
    fn handle(
        &self,
        mut request: ureq::http::Request<ureq::SendBody>,
        next: ureq::middleware::MiddlewareNext,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        if !crate::collector::enabled() {
            return next.handle(request);
        }
        let uri = request.uri().to_string();
        let peer = request
            .uri()
            .authority()
            .map(|a| without_userinfo(a.as_str()).to_owned())
            .unwrap_or_default();
        let mut span = exit_span(outgoing_name(&uri), &peer);
        let uri = redact_url(&uri).into_owned();
        span.tag_with(|| format!("{} {uri}", request.method()));
        span.add_attr("http.method", || request.method().to_string());
        span.add_attr("url", || uri.clone());
        span.inject(&mut HeaderAdapter(request.headers_mut()));
        let result = next.handle(request);
        if let Ok(resp) = &result {
            span.add_attr("http.status_code", || resp.status().as_u16().to_string());
        }
        match &result {
            Ok(resp) if resp.status().as_u16() >= 400 => {
                span.set_error(format!("Http Error {}", resp.status().as_u16()));
            }
            Ok(_) => {}
            Err(e) => span.set_error(e),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_names_take_two_segments() {
        assert_eq!(incoming_name("/api/order/create?id=1"), "/api/order");
        assert_eq!(incoming_name("/health"), "/health");
        assert_eq!(incoming_name("/"), "/");
        assert_eq!(incoming_name(""), "/");
    }

    #[test]
    fn outgoing_names_like_dotnet() {
        assert_eq!(
            outgoing_name("http://10.0.0.1:8080/inventory/check/0123456789abcdefXYZ/x?q=1"),
            "http://10.0.0.1:8080/inventory/check"
        );
        assert_eq!(outgoing_name("https://h.example"), "https://h.example/");
        assert_eq!(
            outgoing_name("https://alice:s3cret@api.example/v1/orders"),
            "https://api.example/v1/orders"
        );
        assert_eq!(redact_url("http://u:p@h:1/x?q"), "http://h:1/x?q");
        assert_eq!(redact_url("http://h:1/a@b"), "http://h:1/a@b");
        for i in 0..100 {
            let n = outgoing_name(&format!("http://many:1/item/{i}"));
            if i < 64 {
                assert_eq!(n, format!("http://many:1/item/{i}"));
            } else {
                assert_eq!(n, "http://many:1");
            }
        }
        assert_eq!(
            outgoing_name("http://many:1/item/3"),
            "http://many:1/item/3"
        );
    }
}
