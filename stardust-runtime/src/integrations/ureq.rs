//! Exit spans for outgoing HTTP calls made with [ureq](https://docs.rs/ureq) 3, named as the
//! .NET Stardust client names them ([docs/sampling.md §6.3](crate::docs::sampling)), with context propagation: add
//! [`TracingMiddleware`] to the agent's config. The runtime's own uploads never go through it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::propagation::Injector;
use crate::span::context::exit_span;
use crate::util::url::{redact_url, without_userinfo};

/// Most distinct outgoing span names per host; past it calls are named `{scheme}://{authority}`.
const MAX_NAMES_PER_HOST: usize = 64;
/// Most hosts whose outgoing names are tracked; calls to further hosts are named by host only.
const MAX_HOSTS: usize = 1024;
/// Longest path segment kept in an outgoing span name.
const MAX_SEGMENT_CHARS: usize = 16;

/// The outgoing names handed out, per host, and the runtime generation they belong to: a new
/// `init` starts with an empty table.
static OUTGOING_NAMES: Mutex<Option<(u64, NamesPerHost)>> = Mutex::new(None);

/// Outgoing names handed out, by `{scheme}://{authority}`.
type NamesPerHost = HashMap<String, HashSet<String>>;

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
    let generation = crate::state::generation();
    if names.as_ref().is_some_and(|(g, _)| *g != generation) {
        *names = None;
    }
    let (_, hosts) = names.get_or_insert_with(|| (generation, HashMap::new()));
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
///     .middleware(stardust_runtime::ureq_tracing::TracingMiddleware)
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
        if !crate::state::enabled() {
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
