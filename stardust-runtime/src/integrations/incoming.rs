//! Entry spans for incoming HTTP requests, with any server library: name, context from the
//! request's headers, status at the end (as the .NET Stardust middleware records them).

use crate::propagation::Extractor;
use crate::span::context::entry_span;
use crate::span::guard::SpanGuard;

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
}
