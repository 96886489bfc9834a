//! Span contexts that cross threads and processes: capture the current span on one thread and
//! continue it on another; read one from incoming headers, write one into outgoing headers.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::flags::{FLAG_SAMPLED, FLAGS_PROPAGATED};
use crate::id::{ParentId, SpanId, TraceId};
use crate::propagation::seam::{self, CaptureView, InjectView};
use crate::propagation::{self, Extractor, Injector};
use crate::span::guard::SpanGuard;
use crate::span::local::{self, Origin, Stack, with_current, with_local};
use crate::span::record::{Extra, FLAG_CAPTURED, Name, OpenSpan, SpanKind};
use crate::state;

pub use crate::span::record::SpanContext;

impl SpanContext {
    /// Reads a context from incoming headers: `traceparent` (+ `tracestate`), `Request-Id`,
    /// `Eagleeye-Traceid` or `TraceId`, the first valid one in that order, then `sw8` while
    /// SkyWalking is enabled (which also reads the parent segment from `sw8` and correlation
    /// entries from `sw8-correlation`). Invalid headers are ignored: `None` means "start a new
    /// trace".
    pub fn extract(headers: &(impl Extractor + ?Sized)) -> Option<SpanContext> {
        SpanContext::extract_using(seam::installed().as_deref(), headers)
    }

    /// [`SpanContext::extract`] with `propagator` as the installed one.
    pub(crate) fn extract_using(
        propagator: Option<&dyn seam::Propagator>,
        headers: &(impl Extractor + ?Sized),
    ) -> Option<SpanContext> {
        let mut extracted = match propagator {
            Some(p) => p.extract(&headers),
            None => seam::Extracted::default(),
        };
        let remote = propagation::extract_with(headers, |_| extracted.context.take())?;
        // A sampling decision from any header is kept (docs/propagation.md §1.3).
        let sampled = if extracted.sampled { FLAG_SAMPLED } else { 0 };
        Some(SpanContext {
            trace_id: remote.trace_id,
            parent: remote.parent,
            flags: (remote.flags | sampled) & FLAGS_PROPAGATED,
            tracestate: remote.tracestate.map(Arc::from),
            correlation: extracted.correlation,
            link: extracted.link,
        })
    }

    /// The trace id.
    pub fn trace_id(&self) -> &TraceId {
        &self.trace_id
    }

    /// The id of the span this context continues (the parent of spans opened from it), when
    /// it is a 16-hex span id.
    pub fn span_id(&self) -> Option<SpanId> {
        match self.parent {
            ParentId::Span(v) => SpanId::from_u64(v),
            _ => None,
        }
    }

    /// The parent id as text, whatever its form (`None` when there is none).
    pub fn parent_id(&self) -> Option<String> {
        match &self.parent {
            ParentId::None => None,
            ParentId::Span(v) => Some(format!("{v:016x}")),
            ParentId::Verbatim(s) => Some(s.to_string()),
        }
    }

    /// True when the trace is force-sampled (TraceFlag 1).
    pub fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// Trace flags as sent in `traceparent` (bit 0 sampled, bit 1 random).
    pub fn flags(&self) -> u8 {
        self.flags & FLAGS_PROPAGATED
    }

    /// The W3C `tracestate` received with this trace, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Opens a span named `name` as a child of this context on the calling thread and makes
    /// it current until the guard is dropped.
    pub fn child(&self, name: impl Into<Cow<'static, str>>) -> SpanGuard {
        self.child_of_kind(name.into(), SpanKind::Local)
    }

    pub(crate) fn child_of_kind(&self, name: Cow<'static, str>, kind: SpanKind) -> SpanGuard {
        if !state::enabled() {
            return SpanGuard::disabled();
        }
        SpanGuard::from_id(local::open(
            Name::from(name),
            Origin::Remote(self),
            None,
            kind,
        ))
    }

    /// Makes this context the parent of the spans opened on this thread until the returned
    /// guard is dropped. Attaching records no span of its own.
    pub fn attach(&self) -> AttachGuard {
        let (parent, remote_parent) = self.parent.split();
        // Most contexts carry nothing beyond the trace and parent: then no allocation.
        let extra = (remote_parent.is_some()
            || self.tracestate.is_some()
            || self.correlation.is_some()
            || self.link.is_some())
        .then(|| {
            Box::new(Extra {
                remote_parent,
                tracestate: self.tracestate.clone(),
                correlation: self.correlation.clone(),
                link: self.link.clone(),
                ..Default::default()
            })
        });
        let id = with_local(|local| {
            let id = local.next_id();
            let frame =
                OpenSpan::context_frame(id, self.trace_id.clone(), parent, self.flags, extra);
            local.stack.push(frame);
            id
        });
        AttachGuard {
            id: id.unwrap_or(0),
            _not_send: PhantomData,
        }
    }

    /// Writes `traceparent` (and `tracestate`) for this context into outgoing headers, never
    /// overwriting a header already set. Use [`SpanGuard::inject`] to send an exit span's id.
    /// While SkyWalking is enabled, also `sw8` (for a context with a peer address: an exit
    /// span's, or one received in `sw8`) and `sw8-correlation` (when there are entries).
    pub fn inject(&self, headers: &mut (impl Injector + ?Sized)) {
        let span = match &self.parent {
            ParentId::Span(v) => SpanId(*v),
            _ => SpanId::random(),
        };
        propagation::inject(
            headers,
            &self.trace_id,
            span,
            self.flags,
            self.tracestate.as_deref(),
        );
        if let Some(p) = seam::installed() {
            let view = InjectView {
                link: self.link.as_ref(),
                correlation: self.correlation.as_deref(),
            };
            let mut headers = headers;
            p.inject(&view, &mut headers);
        }
    }

    /// Wraps `f` so that, wherever it runs, spans it opens are children of this context.
    pub fn wrap<R>(self, f: impl FnOnce() -> R) -> impl FnOnce() -> R {
        move || {
            let _attached = self.attach();
            f()
        }
    }

    /// Runs `f` on this thread with this context attached: spans `f` opens are children of
    /// the context. Detaches when `f` returns (or panics). Takes `&self`, so one context can
    /// serve many tasks at once, e.g. the jobs of a `rayon::scope`:
    ///
    /// ```
    /// let _g = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
    /// let _request = stardust_runtime::span("request");
    /// let ctx = stardust_runtime::capture().expect("inside a span");
    /// std::thread::scope(|s| {
    ///     for part in 0..4 {
    ///         let ctx = &ctx;
    ///         s.spawn(move || ctx.in_scope(|| drop(stardust_runtime::span(format!("part/{}", part % 2)))));
    ///     }
    /// });
    /// ```
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _attached = self.attach();
        f()
    }

    /// Wraps `f`, a closure that may be called many times and on many threads at once, so
    /// that every call runs with this context attached ([`in_scope`](Self::in_scope)): for
    /// `Fn` closures such as rayon's `par_iter().map(..)` or a worker pool's handler. The
    /// wrapper is `Send` and `Sync` when `f` is. See also [`wrap_fn`](crate::wrap_fn),
    /// which captures the current span itself.
    pub fn wrap_fn<A, R>(&self, f: impl Fn(A) -> R) -> impl Fn(A) -> R {
        let ctx = self.clone();
        move |arg| ctx.in_scope(|| f(arg))
    }
}

/// Keeps a [`SpanContext`] attached to this thread; dropping it detaches.
#[must_use = "the context is detached when the guard is dropped"]
pub struct AttachGuard {
    id: u64,
    _not_send: PhantomData<*const ()>,
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        if self.id != 0 {
            local::close(self.id);
        }
    }
}

impl std::fmt::Debug for AttachGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachGuard")
    }
}

/// The context a child of the open span `s` gets: the span itself, or for an attached context
/// frame the context it stands for. `stack` is the thread's stack `s` is on (for its local
/// root, which an installed propagator may describe in the context's link).
pub(crate) fn context_of(s: &OpenSpan, stack: &Stack) -> SpanContext {
    let extra = s.extra.as_deref();
    let tracestate = extra.and_then(|e| e.tracestate.clone());
    let correlation = extra.and_then(|e| e.correlation.clone());
    if s.is_context_frame() {
        let parent = if s.parent != 0 {
            ParentId::Span(s.parent)
        } else if let Some(r) = extra.and_then(|e| e.remote_parent.clone()) {
            ParentId::Verbatim(r)
        } else {
            ParentId::None
        };
        return SpanContext {
            trace_id: s.trace.clone(),
            parent,
            flags: s.flags & FLAGS_PROPAGATED,
            tracestate,
            correlation,
            link: extra.and_then(|e| e.link.clone()),
        };
    }
    let link = seam::installed().and_then(|p| {
        let root = stack.find(s.local_root);
        p.capture(&CaptureView {
            trace: &s.trace,
            position: extra.map_or(0, |e| e.position),
            local_root: s.local_root,
            local_root_name: root.map(|f| f.name.as_str()).unwrap_or(s.name.as_str()),
            local_root_link: root
                .and_then(|f| f.extra.as_deref())
                .and_then(|e| e.link.as_ref()),
            exit_peer: extra
                .and_then(|e| e.peer.as_deref())
                .filter(|_| s.kind == SpanKind::Exit),
        })
    });
    SpanContext {
        trace_id: s.trace.clone(),
        parent: ParentId::Span(s.span_id),
        flags: s.flags & FLAGS_PROPAGATED,
        tracestate,
        correlation,
        link,
    }
}

/// The thread's current span as a [`SpanContext`], to continue it on another thread.
///
/// ```
/// let _g = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
/// let _root = stardust_runtime::span("root");
/// let ctx = stardust_runtime::capture().expect("inside a span");
/// std::thread::spawn(move || {
///     let _child = ctx.child("work");
/// })
/// .join()
/// .unwrap();
/// ```
pub fn capture() -> Option<SpanContext> {
    with_local(|local| {
        let s = local.stack.top()?;
        let ctx = context_of(s, &local.stack);
        mark_captured(&ctx, local.stack.top_mut());
        Some(ctx)
    })
    .flatten()
}

/// Notes on the span that a propagator's link now names it (see [`FLAG_CAPTURED`]).
fn mark_captured(ctx: &SpanContext, s: Option<&mut OpenSpan>) {
    if let (Some(_), Some(s)) = (&ctx.link, s) {
        if !s.is_context_frame() {
            s.flags |= FLAG_CAPTURED;
        }
    }
}

/// Wraps `f` so that spans it opens, on whatever thread it runs, are children of the current
/// span (when there is one).
pub fn wrap<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let ctx = capture();
    move || {
        let _attached = ctx.as_ref().map(SpanContext::attach);
        f()
    }
}

/// Wraps `f`, a closure that may be called many times and on many threads at once, so that
/// spans it opens are children of the current span (when there is one), wherever and however
/// often it is called: the thread-pool form of [`wrap`], for `Fn` closures such as rayon's
/// `par_iter().map(..)` or a worker pool's handler. Each call attaches the captured context
/// for its duration ([`SpanContext::in_scope`]).
///
/// ```
/// let _g = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
/// let data: Vec<u64> = (1..=100).collect();
/// let _request = stardust_runtime::span("report");
/// let sum_chunk = stardust_runtime::wrap_fn(|chunk: &[u64]| {
///     let _span = stardust_runtime::span("report/chunk"); // a child of `report`
///     chunk.iter().sum::<u64>()
/// });
/// // Any pool: here scoped threads, each calling the same wrapper.
/// let total: u64 = std::thread::scope(|s| {
///     let sum_chunk = &sum_chunk;
///     let handles: Vec<_> = data.chunks(25).map(|c| s.spawn(move || sum_chunk(c))).collect();
///     handles.into_iter().map(|h| h.join().unwrap()).sum()
/// });
/// assert_eq!(total, 5050);
/// ```
pub fn wrap_fn<A, R>(f: impl Fn(A) -> R) -> impl Fn(A) -> R {
    let ctx = capture();
    move |arg| match &ctx {
        Some(ctx) => ctx.in_scope(|| f(arg)),
        None => f(arg),
    }
}

/// `std::thread::spawn` whose thread continues the current span: spans opened on the new
/// thread are its children.
pub fn spawn_thread<F, R>(f: F) -> std::thread::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    std::thread::spawn(wrap(f))
}

impl SpanGuard {
    /// This span's context, to continue it elsewhere (`None` for an inert guard).
    pub fn context(&self) -> Option<SpanContext> {
        if !self.is_recording() {
            return None;
        }
        let id = self.raw_id();
        with_local(|local| {
            let s = local.stack.find(id)?;
            let ctx = context_of(s, &local.stack);
            mark_captured(&ctx, local.stack.find_mut(id));
            Some(ctx)
        })
        .flatten()
    }

    /// Writes this span's `traceparent` (and `tracestate`) into outgoing headers, never
    /// overwriting a header already set. On an inert guard it writes nothing.
    pub fn inject(&self, headers: &mut (impl Injector + ?Sized)) {
        if let Some(ctx) = self.context() {
            ctx.inject(headers);
        }
    }
}

/// Opens an entry span: the handling of an incoming request whose headers may carry the
/// caller's context. With a valid context the span continues the caller's trace; otherwise
/// (no header, or an invalid one) it starts a new trace. Never fails.
pub fn entry_span(
    name: impl Into<Cow<'static, str>>,
    headers: &(impl Extractor + ?Sized),
) -> SpanGuard {
    if !state::enabled() {
        return SpanGuard::disabled();
    }
    match SpanContext::extract(headers) {
        Some(ctx) => ctx.child_of_kind(name.into(), SpanKind::Entry),
        None => SpanGuard::from_id(local::open(
            Name::from(name.into()),
            Origin::Current,
            None,
            SpanKind::Entry,
        )),
    }
}

/// Opens an exit span: an outgoing call to `peer` (`host:port`). Write its context into the
/// request with [`SpanGuard::inject`].
pub fn exit_span(name: impl Into<Cow<'static, str>>, peer: &str) -> SpanGuard {
    if !state::enabled() {
        return SpanGuard::disabled();
    }
    let guard = SpanGuard::from_id(local::open(
        Name::from(name.into()),
        Origin::Current,
        None,
        SpanKind::Exit,
    ));
    if guard.is_recording() {
        let peer: Arc<str> = Arc::from(peer);
        local::with_span(guard.raw_id(), |s| s.extra_mut().peer = Some(peer));
    }
    guard
}

/// The id of the thread's current span (for an attached context: the span it continues).
///
/// A plain read: unlike [`capture`], it builds no context and leaves the span as it is.
pub fn current_span_id() -> Option<SpanId> {
    with_current(|s| {
        SpanId::from_u64(if s.is_context_frame() {
            s.parent
        } else {
            s.span_id
        })
    })
    .flatten()
}
