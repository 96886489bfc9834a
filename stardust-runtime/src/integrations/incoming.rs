//! Entry spans for incoming HTTP requests, with any server library: name, context from the
//! request's headers, status at the end (as the .NET Stardust middleware records them).
//!
//! Name the span after the route that matched ([`with_route`]); without one, [`incoming`]
//! names it after the path with ids replaced ([`incoming_name`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Mutex;

use crate::integrations::route::template_first;
use crate::propagation::Extractor;
use crate::span::context::entry_span;
use crate::span::guard::SpanGuard;

/// Most distinct default names ([`incoming_name`]) in a process; past it, new ones are
/// [`OTHER`].
const MAX_DEFAULT_NAMES: usize = 256;

/// The default name of requests past [`MAX_DEFAULT_NAMES`].
const OTHER: &str = "/{other}";

/// The error of an [`IncomingSpan`] dropped without [`IncomingSpan::finish`].
pub const DROPPED_WITHOUT_STATUS: &str = "dropped without a status";

static DEFAULT_NAMES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The default span name of an incoming request: `/{seg1}/{seg2}` of its path (query
/// dropped), as the .NET middleware names requests, with segments that look like ids replaced
/// by `{id}` ([`template_path`](crate::template_path) says which):
/// `/api/orders/7` → `/api/orders`, `/orders/7/items` → `/orders/{id}`.
///
/// Bounded: after 256 distinct names in a process, requests of further ones are named
/// `/{other}`. Prefer naming requests after their route, with [`with_route`].
pub fn incoming_name(path: &str) -> String {
    let name = template_first(path, 2);
    let mut names = DEFAULT_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    admit(
        names.get_or_insert_with(HashSet::new),
        name,
        MAX_DEFAULT_NAMES,
    )
}

/// `name` when it is in `names` or there is room for it (then it is added), else [`OTHER`].
fn admit(names: &mut HashSet<String>, name: String, max: usize) -> String {
    if names.contains(&name) {
        return name;
    }
    if names.len() >= max {
        return OTHER.to_owned();
    }
    names.insert(name.clone());
    name
}

/// A span for the handling of one incoming request. Finish it with the response status.
///
/// Dropped without [`finish`](IncomingSpan::finish) (an early `return` or `?` in a handler),
/// it is recorded as an error, [`DROPPED_WITHOUT_STATUS`], unless an error was set on it
/// already; dropped during a panic, as `panicked`.
#[must_use = "the span closes when dropped; call finish(status) to record the status"]
#[derive(Debug)]
pub struct IncomingSpan {
    /// Inert once finished.
    guard: SpanGuard,
    name: Cow<'static, str>,
}

/// Starts the entry span of an incoming request, continuing the caller's trace when the
/// headers carry a valid context (else a new trace). Named by [`incoming_name`]; when sampled,
/// the tag is `METHOD path`. Prefer [`with_route`] when the route is known.
pub fn incoming(method: &str, path: &str, headers: &(impl Extractor + ?Sized)) -> IncomingSpan {
    with_route(incoming_name(path), method, path, headers)
}

/// Starts the entry span of an incoming request named `route`, the route that matched as your
/// router writes it (`"GET /api/orders/{id}"`), so that every request of a route is one
/// operation however many ids there are. Otherwise as [`incoming`]: the caller's trace is
/// continued from the headers, and the tag of a sampled span is `METHOD path` (with the ids).
///
/// A `&'static str` route costs no allocation.
///
/// ```
/// use stardust_runtime::incoming;
///
/// let _g = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
/// let headers = [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")];
/// let span = incoming::with_route("GET /api/orders/{id}", "GET", "/api/orders/7", &headers);
/// // ... handle the request ...
/// span.finish(200);
/// ```
pub fn with_route(
    route: impl Into<Cow<'static, str>>,
    method: &str,
    path: &str,
    headers: &(impl Extractor + ?Sized),
) -> IncomingSpan {
    let name = route.into();
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

    /// The span's name (the route, or the default name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the span with the response status: 400 and anything above 404 mark it as an error
    /// (`Http Error <status> <name>`); 404 abandons it (not recorded), as the .NET middleware.
    pub fn finish(mut self, status: u16) {
        let mut guard = std::mem::replace(&mut self.guard, SpanGuard::disabled());
        guard.add_attr("http.status_code", || status.to_string());
        if status == 404 {
            guard.abandon();
            return;
        }
        if status == 400 || status > 404 {
            guard.set_error(format!("Http Error {status} {}", self.name));
        }
    }
}

impl Drop for IncomingSpan {
    fn drop(&mut self) {
        // Finished spans hold an inert guard; during a panic the guard records `panicked`.
        if self.guard.is_recording() && !std::thread::panicking() {
            self.guard
                .set_error_if_none(|| DROPPED_WITHOUT_STATUS.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_names_take_two_segments_without_ids() {
        assert_eq!(incoming_name("/api/order/create?id=1"), "/api/order");
        assert_eq!(incoming_name("/api/orders/7"), "/api/orders");
        assert_eq!(incoming_name("/orders/7/items"), "/orders/{id}");
        assert_eq!(
            incoming_name("/files/3f2a1c9e-1d2b-4c3d-9e8f-0123456789ab"),
            "/files/{id}"
        );
        assert_eq!(incoming_name("/health"), "/health");
        assert_eq!(incoming_name("/"), "/");
        assert_eq!(incoming_name(""), "/");
    }

    #[test]
    fn default_names_are_bounded() {
        let mut names = HashSet::new();
        assert_eq!(admit(&mut names, "/a".into(), 3), "/a");
        assert_eq!(admit(&mut names, "/b".into(), 3), "/b");
        assert_eq!(admit(&mut names, "/c".into(), 3), "/c");
        assert_eq!(admit(&mut names, "/d".into(), 3), OTHER);
        // Names admitted before the bound keep their name.
        assert_eq!(admit(&mut names, "/b".into(), 3), "/b");
        assert_eq!(names.len(), 3);
    }
}
