//! Spans: opening, the thread's current-span stack, closing into the thread-local batch.
//!
//! An open span lives in the thread's stack while it is current. [`SpanGuard`] is only a
//! handle (the span's id); the data stays in the stack, so the hot path moves one small record
//! and allocates nothing. An instrumented future keeps its span (and any spans opened inside
//! it that are still open) while it is not being polled, and puts them back on each poll.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::callsite::{self, Callsite};
use crate::clock;
use crate::collector::{self, BATCH_CAPACITY, GENERATION, LocalSender};
use crate::id::{SpanId, TraceId};

/// A span's name: static for `#[trace]` and literal names, owned for names built at run time.
#[derive(Clone, Debug)]
pub(crate) enum Name {
    Static(&'static str),
    Owned(Box<str>),
}

impl From<Cow<'static, str>> for Name {
    fn from(name: Cow<'static, str>) -> Name {
        match name {
            Cow::Borrowed(s) => Name::Static(s),
            Cow::Owned(s) => Name::Owned(s.into_boxed_str()),
        }
    }
}

impl Name {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Owned(s) => s,
        }
    }
}

/// What a span stands for; kept for reporters that distinguish them (SkyWalking).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpanKind {
    /// Work inside this process (the default).
    #[default]
    Local,
    /// The handling of an incoming request.
    Entry,
    /// An outgoing call to another service.
    Exit,
}

/// Fields most spans never set, kept behind one pointer so the common record stays small.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extra {
    pub tag: Option<String>,
    pub error: Option<String>,
    /// A parent id received from a peer in a non-16-hex form.
    pub remote_parent: Option<Arc<str>>,
    /// W3C tracestate received with the trace (inherited by children through the stack).
    pub tracestate: Option<Arc<str>>,
    /// `host:port` of the peer of an exit span.
    pub peer: Option<Arc<str>>,
    /// Correlation entries (SkyWalking `sw8-correlation`), inherited by children.
    pub correlation: Option<Arc<[(String, String)]>>,
    /// On a segment root: the reference to the parent segment (another thread or process).
    pub sw_ref: Option<Arc<crate::segment::SwRef>>,
    /// Structured attributes for reporters that keep them (`http.method`, `url`, …).
    pub attrs: Vec<(&'static str, String)>,
}

/// Flag bit: the span is force-sampled (Stardust TraceFlag, W3C sampled).
pub(crate) const FLAG_SAMPLED: u8 = 0x01;
/// Flag bit: the W3C "random trace id" flag, carried over from a peer.
pub(crate) const FLAG_RANDOM: u8 = 0x02;
/// Internal bit: the span was abandoned and is not recorded.
pub(crate) const FLAG_ABANDONED: u8 = 0x80;
/// Internal bit: the stack frame is an attached context, not a span: spans opened under it
/// take its `parent` (and `Extra::remote_parent`) as their parent.
pub(crate) const FLAG_CONTEXT: u8 = 0x40;
/// Internal bit: the span is the root of its segment (first span of its trace on this thread).
pub(crate) const FLAG_SEG_ROOT: u8 = 0x20;
/// Internal bit: the span's parent is the root of its segment.
pub(crate) const FLAG_PARENT_SEG_ROOT: u8 = 0x10;
/// The flag bits a child inherits and `traceparent` carries.
pub(crate) const FLAGS_PROPAGATED: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// A span that has started and not finished.
#[derive(Debug)]
pub(crate) struct OpenSpan {
    pub name: Name,
    pub trace: TraceId,
    pub span_id: u64,
    /// Parent span id; 0 for none (see `Extra::remote_parent` for a verbatim one).
    pub parent: u64,
    /// Span id of the root of this span's segment (its own id for a root).
    pub seg_root: u64,
    pub start: u64,
    pub value: i64,
    pub flags: u8,
    pub kind: SpanKind,
    pub extra: Option<Box<Extra>>,
}

impl OpenSpan {
    pub(crate) fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub(crate) fn error(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.error.as_deref())
    }

    pub(crate) fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// A finished span on its way to the aggregator.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub span: OpenSpan,
    pub end: u64,
}

/// Where a new span takes its trace from.
pub(crate) enum Origin<'a> {
    /// The thread's current span, or a new trace when there is none.
    Current,
    /// A context captured elsewhere or extracted from headers.
    Remote(&'a crate::context::SpanContext),
}

pub(crate) struct Local {
    pub stack: Vec<OpenSpan>,
    batch: Vec<SpanRecord>,
    batch_generation: u64,
    batch_started: u64,
    sender: LocalSender,
    /// The runtime's own threads record nothing.
    pub suppressed: bool,
    /// This thread's id generator (kept here: one thread-local access per span, not two).
    rng: std::cell::Cell<u64>,
}

impl Local {
    const fn new() -> Local {
        Local {
            stack: Vec::new(),
            batch: Vec::new(),
            batch_generation: 0,
            batch_started: 0,
            sender: LocalSender::new(),
            suppressed: false,
            rng: std::cell::Cell::new(0),
        }
    }

    fn push_record(&mut self, record: SpanRecord) {
        if self.batch.is_empty() {
            self.batch_generation = GENERATION.load(Ordering::Relaxed);
            self.batch_started = record.end;
            if self.batch.capacity() == 0 {
                self.batch.reserve(BATCH_CAPACITY);
            }
        }
        let end = record.end;
        self.batch.push(record);
        if self
            .stack
            .last()
            .is_none_or(|top| top.flags & FLAG_CONTEXT != 0)
            || self.batch.len() >= BATCH_CAPACITY
            || end.saturating_sub(self.batch_started) > clock::batch_age_limit()
        {
            self.flush();
        }
    }

    pub(crate) fn flush(&mut self) {
        let generation = self.batch_generation;
        self.sender.send(&mut self.batch, generation);
    }

    /// Index of the open span `id`, searching from the top.
    fn position(&self, id: u64) -> Option<usize> {
        self.stack.iter().rposition(|s| s.span_id == id)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Thread exit: whatever finished is sent; spans still open are lost with the thread.
        self.flush();
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local::new()) };
}

/// Runs `f` on this thread's span state; `None` during thread teardown or re-entrancy.
#[inline]
pub(crate) fn with_local<R>(f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    LOCAL
        .try_with(|l| l.try_borrow_mut().ok().map(|mut l| f(&mut l)))
        .ok()
        .flatten()
}

/// Builds a span that starts now, as a child of `origin`, without making it current. A span
/// that starts a trace here, or continues one whose flag is not set, takes TraceFlag 1 while it
/// is among the first `MaxSamples` of its name in this period (`callsite`, else by name).
#[inline]
pub(crate) fn new_span(
    local: &Local,
    name: Name,
    origin: Origin<'_>,
    callsite: Option<&Callsite>,
    kind: SpanKind,
) -> OpenSpan {
    let span_id = crate::id::next_u64(&local.rng);
    let inherited = |s: &OpenSpan| {
        s.extra
            .as_ref()
            .map(|e| (e.tracestate.clone(), e.correlation.clone()))
            .unwrap_or_default()
    };
    let (trace, parent, remote_parent, mut flags, (tracestate, correlation), sw_ref, seg_root) =
        match origin {
            Origin::Current => match local.stack.last() {
                Some(top) if top.flags & FLAG_CONTEXT == 0 => (
                    top.trace.clone(),
                    top.span_id,
                    None,
                    (top.flags & FLAGS_PROPAGATED)
                        | if top.flags & FLAG_SEG_ROOT != 0 {
                            FLAG_PARENT_SEG_ROOT
                        } else {
                            0
                        },
                    inherited(top),
                    None,
                    top.seg_root,
                ),
                Some(frame) => (
                    frame.trace.clone(),
                    frame.parent,
                    frame.extra.as_ref().and_then(|e| e.remote_parent.clone()),
                    (frame.flags & FLAGS_PROPAGATED) | FLAG_SEG_ROOT,
                    inherited(frame),
                    frame.extra.as_ref().and_then(|e| e.sw_ref.clone()),
                    span_id,
                ),
                None => (
                    TraceId::random_from(&local.rng),
                    0,
                    None,
                    FLAG_SEG_ROOT,
                    (None, None),
                    None,
                    span_id,
                ),
            },
            Origin::Remote(ctx) => {
                let (parent, remote_parent) = ctx.parent.split();
                (
                    ctx.trace_id.clone(),
                    parent,
                    remote_parent,
                    (ctx.flags & FLAGS_PROPAGATED) | FLAG_SEG_ROOT,
                    (ctx.tracestate.clone(), ctx.correlation.clone()),
                    ctx.sw.clone(),
                    span_id,
                )
            }
        };
    // Any span that inherited no flag takes one while it is among the first MaxSamples of its
    // name this period (.NET `DefaultSpanBuilder.Start`, stardust.md §B5.6).
    if flags & FLAG_SAMPLED == 0 {
        let cs = callsite.unwrap_or_else(|| match &name {
            Name::Static(s) => callsite::for_static(s),
            Name::Owned(s) => callsite::for_name(s),
        });
        if cs.take_flag() {
            flags |= FLAG_SAMPLED;
        }
    }
    let extra = (remote_parent.is_some()
        || tracestate.is_some()
        || correlation.is_some()
        || sw_ref.is_some())
    .then(|| {
        Box::new(Extra {
            remote_parent,
            tracestate,
            correlation,
            sw_ref,
            ..Default::default()
        })
    });
    OpenSpan {
        name,
        trace,
        span_id,
        parent,
        seg_root,
        start: clock::now(),
        value: 0,
        flags,
        kind,
        extra,
    }
}

/// Opens a span and makes it the thread's current span.
#[inline]
pub(crate) fn open(
    name: Name,
    origin: Origin<'_>,
    callsite: Option<&Callsite>,
    kind: SpanKind,
) -> SpanGuard {
    with_local(|local| {
        if local.suppressed {
            return SpanGuard::disabled();
        }
        let span = new_span(local, name, origin, callsite, kind);
        let id = span.span_id;
        local.stack.push(span);
        SpanGuard::from_id(id)
    })
    .unwrap_or_else(SpanGuard::disabled)
}

/// Records no span on this thread from now on: the runtime's own threads call it, so that
/// their work (and a logger or reporter that opens spans) is never traced.
pub(crate) fn suppress_this_thread() {
    with_local(|local| local.suppressed = true);
}

/// Closes an open span of this thread: records it (unless abandoned) with the current time.
pub(crate) fn close(id: u64) {
    let end = clock::now();
    let panicking = std::thread::panicking();
    with_local(|local| {
        let Some(idx) = local.position(id) else {
            return;
        };
        let span = if idx + 1 == local.stack.len() {
            local.stack.pop().expect("index checked")
        } else {
            // Closed out of order (a guard dropped early by hand): keep the others in place.
            local.stack.remove(idx)
        };
        finish(local, span, end, panicking);
    });
}

/// Records a span that is not on the stack (an instrumented future's own span).
pub(crate) fn record(span: OpenSpan, end: u64, panicking: bool) {
    with_local(|local| finish(local, span, end, panicking));
}

/// Ends a span taken off the stack: `panicked` when closed during a panic; into the batch
/// unless abandoned.
fn finish(local: &mut Local, mut span: OpenSpan, end: u64, panicking: bool) {
    if panicking && span.error().is_none() {
        span.extra_mut().error = Some("panicked".to_owned());
    }
    if span.flags & FLAG_ABANDONED == 0 {
        local.push_record(SpanRecord { span, end });
    }
}

/// Runs `f` on the open span `id` of this thread.
pub(crate) fn with_span<R>(id: u64, f: impl FnOnce(&mut OpenSpan) -> R) -> Option<R> {
    with_local(|local| local.position(id).map(|i| f(&mut local.stack[i]))).flatten()
}

/// Runs `f` on the thread's current span.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut OpenSpan) -> R) -> Option<R> {
    with_local(|local| local.stack.last_mut().map(f)).flatten()
}

/// Sends this thread's finished spans to the aggregator now.
pub(crate) fn flush_thread() {
    with_local(|local| local.flush());
}

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
        if self.id != 0 && crate::segment::enabled() {
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
    pub fn set_error(&mut self, error: impl fmt::Display) {
        if self.id != 0 {
            let text = error.to_string();
            with_span(self.id, |s| s.extra_mut().error = Some(text));
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
            close(self.id);
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
    if !collector::enabled() {
        return SpanGuard::disabled();
    }
    open(
        Name::from(name.into()),
        Origin::Current,
        None,
        SpanKind::Local,
    )
}

/// Opens a span for a `#[trace]` callsite.
#[inline]
pub(crate) fn enter(cs: &'static Callsite) -> SpanGuard {
    if !collector::enabled() {
        return SpanGuard::disabled();
    }
    open(
        Name::Static(cs.name),
        Origin::Current,
        Some(cs),
        SpanKind::Local,
    )
}

/// The trace id of the thread's current span.
pub fn current_trace_id() -> Option<TraceId> {
    with_current(|s| s.trace.clone())
}

/// The id of the thread's current span (for an attached context: the span it continues).
pub fn current_span_id() -> Option<SpanId> {
    crate::context::capture().and_then(|c| c.span_id())
}
