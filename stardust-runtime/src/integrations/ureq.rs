//! Exit spans for outgoing HTTP calls made with [ureq](https://docs.rs/ureq) 3, named as the
//! .NET Stardust client names them ([docs/sampling.md §6.3](crate::docs::sampling)) with ids
//! left out, or by a function of yours, with context propagation: add [`TracingMiddleware`]
//! (or [`TracingMiddleware::with_name`]) to the agent's config. The runtime's own uploads never
//! go through it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::integrations::route::{ID, template_segment};
use crate::span::context::exit_span;
use crate::util::url::{redact_parsed_url, without_userinfo};

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

/// The default span name of an outgoing call to `url`: `{scheme}://{authority}/` plus the
/// leading path segments, with segments that look like ids replaced by `{id}`
/// ([`template_path`](crate::template_path) says which), stopping at the first other segment
/// longer than 16 characters: `http://stock:8080/users/7/profile?x=1` →
/// `http://stock:8080/users/{id}/profile`. After 64 distinct names for one host, further
/// ones are just `{scheme}://{authority}`.
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
        let seg = template_segment(seg);
        if seg != ID && seg.chars().count() > MAX_SEGMENT_CHARS {
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
/// marked as errors. [`TracingMiddleware::with_name`] names the spans yourself.
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

/// The name function of a [`NamedTracingMiddleware`].
type NameFn = dyn Fn(&ureq::http::Request<ureq::SendBody<'_>>) -> Cow<'static, str> + Send + Sync;

/// [`TracingMiddleware`] with span names chosen by a function of the request; made by
/// [`TracingMiddleware::with_name`].
#[derive(Clone)]
pub struct NamedTracingMiddleware {
    name: Arc<NameFn>,
}

impl fmt::Debug for NamedTracingMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NamedTracingMiddleware")
    }
}

impl TracingMiddleware {
    /// A tracing middleware whose spans are named by `name`, called with each request (its
    /// method, URI and headers) when the runtime is running. Return a name of the called
    /// route, without ids: one operation per route of the downstream service. A `&'static str`
    /// costs no allocation; [`outgoing_name`] and [`template_path`](crate::template_path) help
    /// for the calls you do not name yourself.
    ///
    /// ```no_run
    /// use stardust_runtime::ureq_tracing::{TracingMiddleware, outgoing_name};
    ///
    /// let agent: ureq::Agent = ureq::Agent::config_builder()
    ///     .middleware(TracingMiddleware::with_name(|req| {
    ///         match req.uri().path() {
    ///             p if p.starts_with("/stock/") => "stock: GET /stock/{sku}".into(),
    ///             _ => outgoing_name(&req.uri().to_string()),
    ///         }
    ///     }))
    ///     .build()
    ///     .into();
    /// let _ = agent.get("http://127.0.0.1:8080/stock/sku-1234").call();
    /// ```
    pub fn with_name<N>(
        name: impl Fn(&ureq::http::Request<ureq::SendBody<'_>>) -> N + Send + Sync + 'static,
    ) -> NamedTracingMiddleware
    where
        N: Into<Cow<'static, str>>,
    {
        NamedTracingMiddleware {
            name: Arc::new(move |req: &ureq::http::Request<ureq::SendBody<'_>>| name(req).into()),
        }
    }
}

impl ureq::middleware::Middleware for TracingMiddleware {
    fn handle(
        &self,
        request: ureq::http::Request<ureq::SendBody>,
        next: ureq::middleware::MiddlewareNext,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        traced(request, next, |req| {
            outgoing_name(&req.uri().to_string()).into()
        })
    }
}

impl ureq::middleware::Middleware for NamedTracingMiddleware {
    fn handle(
        &self,
        request: ureq::http::Request<ureq::SendBody>,
        next: ureq::middleware::MiddlewareNext,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        traced(request, next, |req| (self.name)(req))
    }
}

/// Sends `request` inside an exit span named by `name`.
fn traced(
    mut request: ureq::http::Request<ureq::SendBody>,
    next: ureq::middleware::MiddlewareNext,
    name: impl FnOnce(&ureq::http::Request<ureq::SendBody>) -> Cow<'static, str>,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    if !crate::state::enabled() {
        return next.handle(request);
    }
    let peer = request
        .uri()
        .authority()
        .map(|a| without_userinfo(a.as_str()).to_owned())
        .unwrap_or_default();
    let mut span = exit_span(name(&request), &peer);
    let uri = redact_parsed_url(&request.uri().to_string()).into_owned();
    span.tag_with(|| format!("{} {uri}", request.method()));
    span.add_attr("http.method", || request.method().to_string());
    span.add_attr("url", || uri.clone());
    span.inject(request.headers_mut());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_names_like_dotnet() {
        assert_eq!(
            outgoing_name("http://10.0.0.1:8080/inventory/check/0123456789abcdefXYZ/x?q=1"),
            "http://10.0.0.1:8080/inventory/check/{id}/x"
        );
        assert_eq!(
            outgoing_name("http://10.0.0.1:8080/inventory/authentication-service/x"),
            "http://10.0.0.1:8080/inventory"
        );
        assert_eq!(outgoing_name("https://h.example"), "https://h.example/");
        assert_eq!(
            outgoing_name("https://alice:s3cret@api.example/v1/orders"),
            "https://api.example/v1/orders"
        );
        for i in 0..100 {
            let n = outgoing_name(&format!("http://many:1/item/{i}"));
            assert_eq!(n, "http://many:1/item/{id}");
        }
        for i in 0..100 {
            let n = outgoing_name(&format!("http://many:1/item{}", word(i)));
            if i < 63 {
                assert_eq!(n, format!("http://many:1/item{}", word(i)));
            } else {
                assert_eq!(n, "http://many:1");
            }
        }
        assert_eq!(outgoing_name("http://many:1/itemd"), "http://many:1/itemd");
        assert_eq!(
            outgoing_name("http://10.0.0.1:8080/orders/7/lines/2024-01-31?x"),
            "http://10.0.0.1:8080/orders/{id}/lines/{id}"
        );
    }

    /// A word without digits for `i`.
    fn word(mut i: usize) -> String {
        let mut s = String::new();
        loop {
            s.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
            if i == 0 {
                return s;
            }
        }
    }
}
