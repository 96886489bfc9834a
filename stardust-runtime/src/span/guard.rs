//! [`SpanGuard`], the handle of an open span, and [`span`], the manual way to open one.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use crate::id::{SpanId, TraceId};
use crate::span::callsite::Callsite;
use crate::span::exception;
use crate::span::local::{self, Origin, with_current, with_span};
use crate::span::record::{FLAG_ABANDONED, Name, SpanKind};
use crate::state;

/// Handle of an open span. Dropping it closes the span: the span is timed, counted and
/// (maybe) sampled. It marks the span as an error with `panicked` when dropped during a panic.
///
/// The guard belongs to the thread that opened the span (it is neither `Send` nor `Sync`).
/// Before `init()` (or after shutdown) guards are inert and cost nothing.
#[must_use = "the span closes when the guard is dropped"]
pub struct SpanGuard {
    id: u64,
    _not_send: PhantomData<*const ()>,
}

impl SpanGuard {
    #[inline]
    pub(crate) fn from_id(id: u64) -> SpanGuard {
        SpanGuard {
            id,
            _not_send: PhantomData,
        }
    }

    /// A guard that records nothing.
    #[inline]
    pub fn disabled() -> SpanGuard {
        SpanGuard::from_id(0)
    }

    pub(crate) fn raw_id(&self) -> u64 {
        self.id
    }

    /// Adds a structured attribute, kept only when a reporter uses them (SkyWalking).
    pub(crate) fn add_attr(&mut self, key: &'static str, value: impl FnOnce() -> String) {
        if self.id != 0 && state::tapped() {
            let value = value();
            with_span(self.id, |s| s.extra_mut().attrs.push((key, value)));
        }
    }

    /// What the span stands for (`None` for an inert guard).
    pub fn kind(&self) -> Option<SpanKind> {
        with_span(self.id, |s| s.kind)
    }

    /// True when this guard will record a span (the runtime was initialised when it opened).
    pub fn is_recording(&self) -> bool {
        self.id != 0
    }

    /// True when the span is force-sampled (TraceFlag 1): its tags are kept and it is sent
    /// as a sample. Only worth asking before building an expensive tag.
    pub fn is_sampled(&self) -> bool {
        self.id != 0 && with_span(self.id, |s| s.is_sampled()).unwrap_or(false)
    }

    /// Sets the span's data tag (cut to `MaxTagLength` when reported).
    pub fn set_tag(&mut self, tag: impl Into<String>) {
        if self.id != 0 {
            let tag = tag.into();
            with_span(self.id, |s| s.extra_mut().tag = Some(tag));
        }
    }

    /// Calls `f` and sets its result as the tag, only when the span is sampled.
    pub fn tag_with<F: FnOnce() -> String>(&mut self, f: F) {
        // `f` may itself open spans, so it runs outside any borrow of the span state.
        if self.is_sampled() {
            let tag = f();
            with_span(self.id, |s| s.extra_mut().tag = Some(tag));
        }
    }

    /// Marks the span as an error with this text.
    ///
    /// The error also counts under `ex:<Type>` (the short name of `error`'s type), as the .NET
    /// client records exceptions, unless [`Config::exception_spans`](crate::Config::exception_spans)
    /// is off.
    pub fn set_error<E: fmt::Display>(&mut self, error: E) {
        if self.id != 0 {
            let text = error.to_string();
            self.set_error_of(text, exception::short_type_name(std::any::type_name::<E>()));
        }
    }

    /// Marks the span as an error with `text`, counted under `ex:<kind>`.
    pub(crate) fn set_error_of(&mut self, text: String, kind: &str) {
        if self.id != 0 {
            exception::record(self.id, kind, &text);
            with_span(self.id, |s| s.extra_mut().error = Some(text));
        }
    }

    /// Marks the span as an error with `error()` unless it is one already.
    pub(crate) fn set_error_if_none(&mut self, error: impl FnOnce() -> String) {
        if self.id != 0 {
            with_span(self.id, |s| {
                if s.error().is_none() {
                    s.extra_mut().error = Some(error());
                }
            });
        }
    }

    /// Sets the span's user number (rows, bytes, …), summed per operation.
    pub fn set_value(&mut self, value: i64) {
        if self.id != 0 {
            with_span(self.id, |s| s.value = value);
        }
    }

    /// The span's trace id (`None` for an inert guard).
    pub fn trace_id(&self) -> Option<TraceId> {
        (self.id != 0)
            .then(|| with_span(self.id, |s| s.trace.clone()))
            .flatten()
    }

    /// The span's id (`None` for an inert guard).
    pub fn span_id(&self) -> Option<SpanId> {
        (self.id != 0).then_some(SpanId(self.id))
    }

    /// Ends the span without recording it (e.g. a request answered 404).
    pub fn abandon(self) {
        if self.id != 0 {
            with_span(self.id, |s| s.flags |= FLAG_ABANDONED);
        }
    }
}

impl Drop for SpanGuard {
    #[inline]
    fn drop(&mut self) {
        if self.id != 0 {
            if std::thread::panicking() {
                exception::record(self.id, "panic", "panicked");
            }
            local::close(self.id);
        }
    }
}

impl fmt::Debug for SpanGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpanGuard")
            .field("span_id", &self.span_id())
            .finish()
    }
}

/// Opens a span named `name` as a child of the thread's current span (or as the root of a new
/// trace) and makes it current until the returned guard is dropped.
///
/// A `&'static str` name costs no allocation; a `String` name is for names built at run time.
///
/// ```
/// let _guard = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
/// {
///     let mut span = stardust_runtime::span("load-config");
///     span.set_value(3);
/// } // the span closes here
/// ```
#[inline]
pub fn span(name: impl Into<Cow<'static, str>>) -> SpanGuard {
    if !state::enabled() {
        return SpanGuard::disabled();
    }
    SpanGuard::from_id(local::open(
        Name::from(name.into()),
        Origin::Current,
        None,
        SpanKind::Local,
    ))
}

/// Opens a span for a `#[trace]` callsite.
#[inline]
pub(crate) fn enter(cs: &'static Callsite) -> SpanGuard {
    if !state::enabled() {
        return SpanGuard::disabled();
    }
    SpanGuard::from_id(local::enter(cs))
}

/// The trace id of the thread's current span.
pub fn current_trace_id() -> Option<TraceId> {
    with_current(|s| s.trace.clone())
}
