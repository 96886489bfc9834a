//! Exception statistics: an error also counts under `ex:<Type>`, as the .NET client records
//! it ([docs/stardust-protocol.md §11](crate::docs::stardust_protocol)), so Stardust's
//! per-exception view (operations of kind `ex`) shows how often each kind of error happens.
//!
//! The `ex:` span is a child of the failing span, starts when the failing span started, ends
//! when the error is recorded, carries no error itself (it is counted as a normal call) and has
//! the error text as its tag only when sampled. `<Type>` is the error type's last path segment
//! without generics (`ex:ParseIntError`, `ex:String`), or `panic` for a panic.
//!
//! An error returned with `?` through several traced functions is one error: each frame
//! marks its own span as failed, but the `ex:` span is recorded once, under the innermost
//! span that failed with it (a frame whose direct child just failed with the same type does
//! not record another).

use std::cell::Cell;

use crate::clock;
use crate::span::local::{Local, with_local};
use crate::span::record::{FLAG_EXCEPTION, Name, OpenSpan};
use crate::state;

thread_local! {
    /// The last `ex:` recorded on this thread: the failing span's parent and a hash of the
    /// type, so that the parent failing with the same type is known to be the same error.
    static LAST: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// `a::b::ParseIntError` → `ParseIntError`; `Box<dyn Error>` → `Box`; `&str` → `String`
/// (string errors are one kind, borrowed or not).
pub(crate) fn short_type_name(full: &str) -> &str {
    let base = full.split('<').next().unwrap_or(full);
    let base = base.rsplit("::").next().unwrap_or(base);
    let base = base
        .trim_start_matches(['&', '*', ' '])
        .trim_start_matches("mut ")
        .trim();
    if base == "str" { "String" } else { base }
}

/// Never 0, the hash in [`LAST`] before any error.
fn hash(kind: &str) -> u64 {
    crate::util::hash::fnv1a(kind) | 1
}

/// Records `ex:<kind>` for the open span `failing` of this thread that has just failed with
/// `text` (see the module doc). Nothing when exception spans are off or the span is not open
/// here.
pub(crate) fn record(failing: u64, kind: &str, text: &str) {
    if failing == 0 || !state::exception_spans() || kind.is_empty() {
        return;
    }
    with_local(|local| record_in(local, failing, kind, text));
}

/// [`record`] on this thread's span state.
fn record_in(local: &mut Local, failing: u64, kind: &str, text: &str) {
    let end = clock::now();
    let h = hash(kind);
    let Some(f) = local.stack.find(failing) else {
        return;
    };
    let (start, parent) = (f.start, f.parent);
    // Only the parent's own *direct* child counts: the same error coming up with `?`.
    let (last_parent, last_kind) = LAST.replace((parent, h));
    if last_parent == failing && last_kind == h {
        return;
    }
    let name = Name::Owned(format!("ex:{kind}").into_boxed_str());
    let Ok(mut ex) = local.child_of_open(failing, name) else {
        return;
    };
    ex.start = start;
    ex.flags |= FLAG_EXCEPTION;
    if ex.is_sampled() {
        ex.extra_mut().tag = Some(text.to_owned());
    }
    local.finish(ex, end, false);
}

/// [`record`] for a span that is not on the stack (an instrumented future's own span between
/// polls): it is put on the stack for the moment and handed back.
pub(crate) fn record_detached(span: OpenSpan, kind: &str, text: &str) -> OpenSpan {
    if !state::exception_spans() {
        return span;
    }
    let mut slot = Some(span);
    with_local(|local| {
        let span = slot.take().expect("taken once");
        let id = span.span_id;
        local.stack.push(span);
        record_in(local, id, kind, text);
        slot = local.stack.remove(id);
    });
    // Put back, or never taken (thread teardown: nothing recorded).
    slot.expect("the span is handed back")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_short() {
        assert_eq!(
            short_type_name("core::num::error::ParseIntError"),
            "ParseIntError"
        );
        assert_eq!(short_type_name("alloc::string::String"), "String");
        assert_eq!(short_type_name("&str"), "String");
        assert_eq!(
            short_type_name("alloc::boxed::Box<dyn core::error::Error + Send>"),
            "Box"
        );
        assert_eq!(short_type_name("std::io::error::Error"), "Error");
    }
}
