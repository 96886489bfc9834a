//! What `#[trace]` expands to. Not public API: may change in any release.

use std::fmt::{Debug, Display};
use std::future::Future;

pub use crate::span::callsite::Callsite;
pub use crate::span::future::Instrumented;
pub use crate::span::guard::SpanGuard;
pub use stardust_runtime_macros::build_time_ms;

/// Opens the span of a sync `#[trace]` function.
#[inline]
pub fn enter(callsite: &'static Callsite) -> SpanGuard {
    crate::span::guard::enter(callsite)
}

/// Calls `f` once. Taking the closure as `FnOnce` lets a wrapped body return borrows of the
/// function's arguments.
#[inline(always)]
pub fn call_once<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// Wraps an `async fn` body in its span.
#[inline]
pub fn instrument<F: Future>(callsite: &'static Callsite, fut: F) -> Instrumented<F> {
    crate::span::future::instrument(callsite, fut)
}

/// Sets the current span's tag from `f`, only when the span is sampled.
#[inline]
pub fn tag_current<F: FnOnce() -> String>(f: F) {
    let sampled = crate::span::local::with_current(|s| s.is_sampled()).unwrap_or(false);
    if sampled {
        let tag = f();
        crate::span::local::with_current(|s| s.extra_mut().tag = Some(tag));
    }
}

/// Marks the current span as an error.
fn set_current_error(text: String) {
    crate::span::local::with_current(|s| s.extra_mut().error = Some(text));
}

/// Marks the current span as an error of type `kind` (also counted under `ex:<kind>`).
pub fn set_current_error_of(text: String, kind: &str) {
    if let Some(id) = crate::span::local::with_current(|s| s.span_id) {
        crate::span::exception::record(id, kind, &text);
    }
    set_current_error(text);
}

/// Marks `guard`'s span as an error of type `kind` (also counted under `ex:<kind>`).
pub fn set_error_of(guard: &mut SpanGuard, text: String, kind: &str) {
    guard.set_error_of(text, kind);
}

/// The short name of `E` (`ParseIntError`), for `ex:<Type>`.
pub fn error_kind<E: ?Sized>(_: &E) -> &'static str {
    crate::span::exception::short_type_name(std::any::type_name::<E>())
}

/// An uninhabited error type for return values that are not `Result`s.
#[derive(Debug)]
pub enum Never {}

impl Display for Never {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// `(&ResultProbe(&value)).__stardust_err()` is `Some(&e)` for an `Err(e)` of a
/// `core::result::Result`, and `None` for any other value.
pub struct ResultProbe<'a, T: ?Sized>(pub &'a T);

/// Probe for `core::result::Result`.
pub trait ProbeResult<'a> {
    /// The error type.
    type Err;
    /// The error, when the value is an `Err`.
    fn __stardust_err(&self) -> Option<&'a Self::Err>;
}

impl<'a, T, E> ProbeResult<'a> for ResultProbe<'a, Result<T, E>> {
    type Err = E;
    #[inline]
    fn __stardust_err(&self) -> Option<&'a E> {
        self.0.as_ref().err()
    }
}

/// Fallback probe for values that are not `Result`s.
pub trait ProbeOther<'a> {
    /// Always `None`.
    fn __stardust_err(&self) -> Option<&'a Never>;
}

impl<'a, T: ?Sized> ProbeOther<'a> for &ResultProbe<'a, T> {
    #[inline]
    fn __stardust_err(&self) -> Option<&'a Never> {
        None
    }
}

/// `(&&&ErrText(&e)).__stardust_error_text()`: `e`'s `Display` text, else its `Debug` text,
/// else its type name — without requiring either trait.
pub struct ErrText<'a, T: ?Sized>(pub &'a T);

/// Preferred: `Display`.
pub trait ErrTextDisplay {
    /// The error's text.
    fn __stardust_error_text(&self) -> String;
}

impl<T: Display + ?Sized> ErrTextDisplay for &&ErrText<'_, T> {
    fn __stardust_error_text(&self) -> String {
        self.0.to_string()
    }
}

/// Then: `Debug`.
pub trait ErrTextDebug {
    /// The error's text.
    fn __stardust_error_text(&self) -> String;
}

impl<T: Debug + ?Sized> ErrTextDebug for &ErrText<'_, T> {
    fn __stardust_error_text(&self) -> String {
        format!("{:?}", self.0)
    }
}

/// Last: the type's name.
pub trait ErrTextTypeName {
    /// The error's type name.
    fn __stardust_error_text(&self) -> String;
}

impl<T: ?Sized> ErrTextTypeName for ErrText<'_, T> {
    fn __stardust_error_text(&self) -> String {
        std::any::type_name::<T>().to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::needless_borrow)] // the probes need the exact autoref depth
mod tests {
    use super::*;

    struct Plain;
    #[derive(Debug)]
    struct OnlyDebug;

    #[test]
    fn error_text_prefers_display_then_debug_then_type_name() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::other("disk"));
        let e = (&ResultProbe(&r)).__stardust_err().unwrap();
        assert_eq!((&&&ErrText(e)).__stardust_error_text(), "disk");
        assert_eq!(
            (&&&ErrText(&OnlyDebug)).__stardust_error_text(),
            "OnlyDebug"
        );
        assert!(
            (&&&ErrText(&Plain))
                .__stardust_error_text()
                .ends_with("Plain")
        );
        let not_result = 5u8;
        assert!((&ResultProbe(&not_result)).__stardust_err().is_none());
        let ok: Result<u8, Plain> = Ok(1);
        assert!((&ResultProbe(&ok)).__stardust_err().is_none());
    }
}
