//! The data of a span: what is open on a thread's stack and what travels to the aggregator.
//! The lowest layer of `span`: plain types, no thread-local state.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crate::flags::FLAG_SAMPLED;
use crate::id::{ParentId, TraceId};
use crate::propagation::LinkRef;

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
    /// On a local root: what a propagation backend keeps about the parent (SkyWalking: the
    /// reference to the parent segment in another thread or process). Opaque to the core.
    pub link: Option<LinkRef>,
    /// Structured attributes for reporters that keep them (`http.method`, `url`, …).
    pub attrs: Vec<(&'static str, String)>,
    /// The span's position within its local root: 0 for the root, then 1, 2, … in the order
    /// the root's spans open, on whatever thread. Counted only while taps want records
    /// (`state::tapped`).
    pub position: u32,
    /// How many spans have opened under the span's local root so far (the next position);
    /// shared by the root's spans. Set only while taps want records.
    pub opened: Option<Arc<AtomicU32>>,
}

/// Internal bit: the span was abandoned and is not recorded. Its record still travels as a
/// marker with this bit set, so that its children are re-parented to its parent (in Stardust
/// samples and SkyWalking segments alike); nothing counts it.
pub(crate) const FLAG_ABANDONED: u8 = 0x80;
/// Internal bit: the stack frame is an attached context, not a span: spans opened under it
/// take its `parent` (and `Extra::remote_parent`) as their parent.
pub(crate) const FLAG_CONTEXT: u8 = 0x40;
/// Internal bit: the span is a *local root*: the first span of its trace on this thread (it
/// starts a trace, or continues one from headers or from another thread).
pub(crate) const FLAG_LOCAL_ROOT: u8 = 0x20;
/// Internal bit: a context was taken from the span while a propagator was installed, so
/// another thread or process may name it (by its position within its local root).
pub(crate) const FLAG_CAPTURED: u8 = 0x08;
/// Internal bit: an `ex:<Type>` span (exception statistics for Stardust; reporters that
/// assemble traces, such as SkyWalking's, leave it out).
pub(crate) const FLAG_EXCEPTION: u8 = 0x04;

/// A span that has started and not finished.
#[derive(Debug)]
pub(crate) struct OpenSpan {
    pub name: Name,
    pub trace: TraceId,
    pub span_id: u64,
    /// Parent span id; 0 for none (see `Extra::remote_parent` for a verbatim one).
    pub parent: u64,
    /// Span id of this span's local root (its own id for a local root).
    pub local_root: u64,
    pub start: u64,
    pub value: i64,
    pub flags: u8,
    pub kind: SpanKind,
    /// The callsite's slot in the threads' tallies; 0 when the span is counted from its
    /// record instead (see `span::tally`).
    pub slot: u32,
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

    /// True when the span owns no memory (static name, hex trace id, no extra fields): then
    /// dropping it does nothing, and forgetting it is the same.
    #[inline]
    pub(crate) fn owns_nothing(&self) -> bool {
        self.extra.is_none()
            && matches!(self.name, Name::Static(_))
            && !matches!(self.trace.0, crate::id::TraceRepr::Verbatim(_))
    }
}

/// A finished span on its way to the aggregator.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub span: OpenSpan,
    pub end: u64,
    pub tally: RecordTally,
}

/// Why a record travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    /// Not counted where it closed (its name has no slot): the aggregator counts it, and may
    /// sample it.
    Count,
    /// Counted where it closed; it may become a sample.
    Candidate,
    /// Counted where it closed, never a sample: only for the aggregator's taps (SkyWalking).
    TapOnly,
}

/// What the closing thread knew about a record: its period, and for a counted span its place
/// among the spans of its *stream* (its thread's spans of its slot) in that period.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordTally {
    pub kind: RecordKind,
    /// The period (epoch) the span ended in.
    pub epoch: u32,
    /// This span's index among its stream's spans in the period (1-based; 0 for `Count`).
    pub total: u32,
    /// Its stream's errors so far in the period, this span included.
    pub errors: u32,
    /// The stream: thread table id (high 32 bits) and slot.
    pub stream: u64,
    /// Local Unix ms of the start and end, as the closing thread measured the cost.
    pub start_ms: i64,
    pub end_ms: i64,
}

impl RecordTally {
    /// For a record counted by the aggregator (tests, and spans without a slot).
    pub(crate) fn count(epoch: u32, start_ms: i64, end_ms: i64) -> RecordTally {
        RecordTally {
            kind: RecordKind::Count,
            epoch,
            total: 0,
            errors: 0,
            stream: 0,
            start_ms,
            end_ms,
        }
    }
}

impl OpenSpan {
    /// The stack frame of an attached context: it records nothing (abandoned), and spans
    /// opened under it take its `parent` (or `remote_parent`) as their parent and become
    /// local roots. `id` must be unique on the thread's stack.
    pub(crate) fn context_frame(
        id: u64,
        trace: TraceId,
        parent: u64,
        flags: u8,
        extra: Option<Box<Extra>>,
    ) -> OpenSpan {
        OpenSpan {
            name: Name::Static(""),
            trace,
            span_id: id,
            parent,
            local_root: id,
            start: 0,
            value: 0,
            flags: (flags & crate::flags::FLAGS_PROPAGATED) | FLAG_CONTEXT | FLAG_ABANDONED,
            kind: SpanKind::Local,
            slot: 0,
            extra,
        }
    }

    /// True for an attached-context frame (not a span).
    pub(crate) fn is_context_frame(&self) -> bool {
        self.flags & FLAG_CONTEXT != 0
    }
}

/// A span's identity as its children elsewhere see it: trace id, the parent span for spans
/// opened from it, trace flags and the W3C `tracestate`. `Send + Clone`; cheap to clone.
/// Made by [`capture`](crate::capture), [`SpanGuard::context`](crate::SpanGuard::context) or
/// [`SpanContext::extract`].
#[derive(Clone, Debug)]
pub struct SpanContext {
    pub(crate) trace_id: TraceId,
    /// The span that children of this context get as parent.
    pub(crate) parent: ParentId,
    pub(crate) flags: u8,
    pub(crate) tracestate: Option<Arc<str>>,
    /// Correlation entries (SkyWalking `sw8-correlation`).
    pub(crate) correlation: Option<Arc<[(String, String)]>>,
    /// What a propagation backend keeps about this context (opaque to the core).
    pub(crate) link: Option<LinkRef>,
}

impl PartialEq for SpanContext {
    fn eq(&self, other: &SpanContext) -> bool {
        self.trace_id == other.trace_id
            && self.parent == other.parent
            && self.flags == other.flags
            && self.tracestate == other.tracestate
            && self.correlation == other.correlation
            && match (&self.link, &other.link) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_link(&**b),
                _ => false,
            }
    }
}

impl Eq for SpanContext {}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
