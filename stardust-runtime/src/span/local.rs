//! The thread's span state: the stack of open spans, its tally and the batch of records.
//!
//! An open span lives in the thread's [`Stack`] while it is current; a span guard is only a
//! handle (the span's id), so the hot path allocates nothing. A span that closes is counted in
//! the thread's tally (see [`tally`](super::tally)): a handful of adds. Only a span that may
//! become a sample — among its thread's first `MaxSamples` of the period for its callsite, or
//! an error among the first `MaxErrors`, or slow or flagged within ten times those — travels
//! on as a record, handed over to the thread's mailbox at once (see
//! [`mailbox`](super::mailbox)). Records of spans without a slot (names past the registry's
//! cap) travel too, and are counted by the aggregator. While a tap needs every span (the
//! SkyWalking assembler) every span also travels as a record, batched: the batch is handed
//! over when the thread's outermost span closes, when it is full or 10 ms old, or when a new
//! period starts.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::clock;
use crate::flags::{FLAG_SAMPLED, FLAGS_PROPAGATED};
use crate::id::TraceId;
use crate::settings::SETTINGS;
use crate::span::callsite::{self, Callsite};
use crate::span::mailbox::{BATCH_CAPACITY, LocalSender};
use crate::span::record::{
    Extra, FLAG_ABANDONED, FLAG_CONTEXT, FLAG_LOCAL_ROOT, Name, OpenSpan, RecordKind, RecordTally,
    SpanContext, SpanKind, SpanRecord,
};
use crate::span::tally::{LocalTally, MAX_COST_MS, SpanCounts};
use crate::state;

/// Where a new span takes its trace from.
pub(crate) enum Origin<'a> {
    /// The thread's current span, or a new trace when there is none.
    Current,
    /// A new trace, whatever is current.
    #[cfg(feature = "tracing")]
    NewTrace,
    /// A context captured elsewhere or extracted from headers.
    Remote(&'a SpanContext),
}

pub(crate) struct Local {
    pub(crate) stack: Stack,
    tally: LocalTally,
    batch: Vec<SpanRecord>,
    batch_generation: u64,
    batch_started: u64,
    batch_epoch: u32,
    sender: LocalSender,
    /// The runtime's own threads record nothing.
    suppressed: bool,
    /// This thread's id generator (kept here: one thread-local access per span, not two).
    rng: Cell<u64>,
}

impl Local {
    const fn new() -> Local {
        Local {
            stack: Stack { spans: Vec::new() },
            tally: LocalTally::new(),
            batch: Vec::new(),
            batch_generation: 0,
            batch_started: 0,
            batch_epoch: 0,
            sender: LocalSender::new(),
            suppressed: false,
            rng: Cell::new(0),
        }
    }

    fn push_record(&mut self, record: SpanRecord) {
        if !self.batch.is_empty() && record.tally.epoch != self.batch_epoch {
            // A new period: the batch of the last one goes first.
            self.flush();
        }
        if self.batch.is_empty() {
            self.batch_generation = crate::state::generation_relaxed();
            self.batch_started = record.end;
            self.batch_epoch = record.tally.epoch;
            if self.batch.capacity() == 0 {
                self.batch.reserve(BATCH_CAPACITY);
            }
        }
        let end = record.end;
        self.batch.push(record);
        if !state::tapped()
            || self.stack.top().is_none_or(OpenSpan::is_context_frame)
            || self.batch.len() >= BATCH_CAPACITY
            || end.saturating_sub(self.batch_started) > clock::batch_age_limit()
        {
            self.flush();
        }
    }

    /// A new span id from this thread's generator.
    pub(crate) fn next_id(&self) -> u64 {
        crate::id::next_u64(&self.rng)
    }

    pub(crate) fn flush(&mut self) {
        let generation = self.batch_generation;
        self.sender.send(&mut self.batch, generation);
    }

    /// Builds a span that starts now as a child of `origin` (see [`new_span`]).
    #[inline]
    pub(crate) fn new_span(
        &self,
        name: Name,
        origin: Origin<'_>,
        callsite: Option<&'static Callsite>,
        kind: SpanKind,
    ) -> OpenSpan {
        new_span(&self.stack, &self.rng, name, origin, callsite, kind)
    }

    /// Opens a span of the `#[trace]` callsite `cs` as the thread's current span; returns its
    /// id (0 on a runtime thread). A child of a span that has nothing to pass on but its trace
    /// and flags (the common case) is built in place on the stack; any other through
    /// [`new_span`].
    #[inline]
    pub(crate) fn enter(&mut self, cs: &'static Callsite) -> u64 {
        if self.suppressed {
            return 0;
        }
        let Some(top) = self
            .stack
            .top()
            .filter(|top| top.flags & FLAG_CONTEXT == 0 && top.extra.is_none())
        else {
            let span = self.new_span(
                Name::Static(cs.name),
                Origin::Current,
                Some(cs),
                SpanKind::Local,
            );
            let id = span.span_id;
            self.stack.spans.push(span);
            return id;
        };
        let (trace, parent, local_root) = (top.trace.clone(), top.span_id, top.local_root);
        let flags = child_flags(top.flags, cs);
        let span_id = crate::id::next_u64(&self.rng);
        let slot = cs.slot().unwrap_or(0);
        // Written straight into the stack's storage: moving a span (over 100 bytes) in from
        // elsewhere costs as much as the rest of opening it.
        let spans = &mut self.stack.spans;
        spans.reserve(1);
        let len = spans.len();
        spans.spare_capacity_mut()[0].write(OpenSpan {
            name: Name::Static(cs.name),
            trace,
            span_id,
            parent,
            local_root,
            start: clock::now(),
            value: 0,
            flags,
            kind: SpanKind::Local,
            slot,
            extra: None,
        });
        // SAFETY: `reserve(1)` left room for an element at index `len`, and the `write` above
        // initialised it.
        unsafe { spans.set_len(len + 1) };
        span_id
    }

    /// Builds a local span that is a child of the open span (or frame) `id` wherever it is on
    /// this thread's stack; gives the name back when `id` is not here.
    pub(crate) fn child_of_open(&mut self, id: u64, name: Name) -> Result<OpenSpan, Name> {
        if self.stack.find(id).is_none() {
            return Err(name);
        }
        let rng = &self.rng;
        Ok(self
            .stack
            .with_on_top(id, |stack| {
                new_span(stack, rng, name, Origin::Current, None, SpanKind::Local)
            })
            .expect("found above"))
    }

    #[cfg(feature = "tracing")]
    /// Builds a local span that is a child of the context `frame` (see
    /// [`OpenSpan::context_frame`]).
    pub(crate) fn child_of_frame(&mut self, frame: OpenSpan, name: Name) -> OpenSpan {
        let rng = &self.rng;
        self.stack.with_frame(frame, |stack| {
            new_span(stack, rng, name, Origin::Current, None, SpanKind::Local)
        })
    }

    /// Takes the open span `id` off the stack and records it (unless abandoned) as ending at
    /// `end`. Spans above it stay in place (a guard dropped out of order).
    #[inline]
    pub(crate) fn close(&mut self, id: u64, end: u64, panicking: bool) {
        let n = self.stack.spans.len();
        if n == 0 || self.stack.spans[n - 1].span_id != id {
            if let Some(span) = self.stack.remove(id) {
                self.finish(span, end, panicking);
            }
            return;
        }
        // The common case: the current span closes. It is counted where it lies on the
        // stack, and moved only when it travels on as a record.
        let top = &mut self.stack.spans[n - 1];
        if panicking {
            mark_panicked(top);
        }
        if top.flags & FLAG_ABANDONED != 0 {
            // Abandoned (or an attached context's frame): `finish` sends the marker.
            let span = self.stack.spans.pop().expect("checked above");
            self.finish(span, end, false);
            return;
        }
        self.tally.begin();
        if let Some(tally) = count(&mut self.tally, top, end) {
            let span = self.stack.spans.pop().expect("checked above");
            self.push_record(SpanRecord { span, end, tally });
            self.tally.end();
            return;
        }
        self.tally.end();
        if self.stack.spans[n - 1].owns_nothing() {
            // The common case, without the out-of-line drop of a span that owns nothing.
            std::mem::forget(self.stack.spans.pop());
        } else {
            self.stack.spans.truncate(n - 1);
        }
    }

    /// Ends a span taken off the stack: `panicked` when closed during a panic; counted unless
    /// abandoned (or longer than an hour), and sent on as a record when it may become a sample
    /// (or has no slot, or a tap wants every span).
    pub(crate) fn finish(&mut self, mut span: OpenSpan, end: u64, panicking: bool) {
        if panicking {
            mark_panicked(&mut span);
        }
        if span.flags & FLAG_ABANDONED != 0 {
            // An abandoned span still travels as a marker (rare: a 404, an explicit abandon) so
            // that its children's samples and segments are re-parented to its parent;
            // nothing counts it.
            if !span.is_context_frame() {
                let (start_ms, end_ms) = clock::span_ms(span.start, end);
                let mut tally = RecordTally::count(state::epoch(), start_ms, end_ms);
                tally.kind = RecordKind::TapOnly;
                self.push_record(SpanRecord { span, end, tally });
            }
            return;
        }
        self.tally.begin();
        if let Some(tally) = count(&mut self.tally, &span, end) {
            self.push_record(SpanRecord { span, end, tally });
        }
        self.tally.end();
    }

    /// Takes span `id` and every span above it off the stack (an instrumented future or a
    /// bridged span yielding): returns the span, and appends the spans above it to `above`,
    /// bottom first (a vector the caller keeps, so a yield allocates nothing once it has
    /// grown). When the stack is left empty the batch is handed over (the thread may go idle
    /// now).
    pub(crate) fn suspend(&mut self, id: u64, above: &mut Vec<OpenSpan>) -> Option<OpenSpan> {
        let out = self.stack.suspend(id, above);
        if self.stack.is_empty() {
            self.flush();
        }
        out
    }
}

/// The thread's open spans, innermost last. Its invariants: span ids are unique on the stack;
/// a span is removed only by id (closing out of order leaves the others in place); a suspended
/// span comes back with the spans that were above it, in the same order.
#[derive(Debug)]
pub(crate) struct Stack {
    spans: Vec<OpenSpan>,
}

impl Stack {
    /// Makes `span` the thread's current span.
    #[inline]
    pub(crate) fn push(&mut self, span: OpenSpan) {
        self.spans.push(span);
    }

    /// The current span (or attached-context frame).
    pub(crate) fn top(&self) -> Option<&OpenSpan> {
        self.spans.last()
    }

    /// The current span (or attached-context frame), mutably.
    pub(crate) fn top_mut(&mut self) -> Option<&mut OpenSpan> {
        self.spans.last_mut()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Index of the open span `id`, searching from the top.
    #[inline]
    fn position(&self, id: u64) -> Option<usize> {
        self.spans.iter().rposition(|s| s.span_id == id)
    }

    /// The open span (or frame) `id`.
    pub(crate) fn find(&self, id: u64) -> Option<&OpenSpan> {
        self.position(id).map(|i| &self.spans[i])
    }

    /// The open span (or frame) `id`, mutably.
    pub(crate) fn find_mut(&mut self, id: u64) -> Option<&mut OpenSpan> {
        self.position(id).map(|i| &mut self.spans[i])
    }

    #[cfg(feature = "tracing")]
    /// The open span `id` itself, never a context frame standing for it.
    pub(crate) fn find_span_mut(&mut self, id: u64) -> Option<&mut OpenSpan> {
        self.spans
            .iter_mut()
            .rev()
            .find(|s| s.span_id == id && !s.is_context_frame())
    }

    /// Takes the open span (or frame) `id` off the stack, wherever it is.
    #[inline]
    pub(crate) fn remove(&mut self, id: u64) -> Option<OpenSpan> {
        let idx = self.position(id)?;
        Some(if idx + 1 == self.spans.len() {
            self.spans.pop().expect("index checked")
        } else {
            self.spans.remove(idx)
        })
    }

    #[cfg(feature = "tracing")]
    /// Takes the open span `id` itself (never a frame standing for it) off the stack.
    pub(crate) fn remove_span(&mut self, id: u64) -> Option<OpenSpan> {
        let idx = self
            .spans
            .iter()
            .rposition(|s| s.span_id == id && !s.is_context_frame())?;
        Some(self.spans.remove(idx))
    }

    /// See [`Local::suspend`].
    fn suspend(&mut self, id: u64, above: &mut Vec<OpenSpan>) -> Option<OpenSpan> {
        let idx = self.position(id)?;
        above.extend(self.spans.drain(idx + 1..));
        Some(self.spans.pop().expect("index checked"))
    }

    /// Puts back a suspended span and the spans that were above it.
    pub(crate) fn resume(&mut self, own: OpenSpan, above: &mut Vec<OpenSpan>) {
        self.spans.push(own);
        self.spans.append(above);
    }

    /// Runs `f` with the open span (or frame) `id` moved to the top for a moment, so that a
    /// span built in `f` is its child; puts it back where it was. `None` when `id` is not here.
    pub(crate) fn with_on_top<R>(&mut self, id: u64, f: impl FnOnce(&Stack) -> R) -> Option<R> {
        let idx = self.position(id)?;
        let own = self.spans.remove(idx);
        self.spans.push(own);
        let out = f(self);
        let own = self.spans.pop().expect("pushed above");
        self.spans.insert(idx, own);
        Some(out)
    }

    #[cfg(feature = "tracing")]
    /// Runs `f` with `frame` on top for a moment (see [`Stack::with_on_top`]).
    pub(crate) fn with_frame<R>(&mut self, frame: OpenSpan, f: impl FnOnce(&Stack) -> R) -> R {
        self.spans.push(frame);
        let out = f(self);
        self.spans.pop();
        out
    }

    #[cfg(feature = "skywalking")]
    /// The open spans of the local root `root` that sit at the top of the stack, innermost
    /// first (stopping at the root itself or at the first span of another local root).
    pub(crate) fn local_tree_mut(&mut self, root: u64) -> impl Iterator<Item = &mut OpenSpan> {
        let mut done = false;
        self.spans.iter_mut().rev().take_while(move |s| {
            if done || s.local_root != root {
                return false;
            }
            done = s.span_id == root;
            true
        })
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Thread exit: whatever finished is sent (and counted: the aggregator reads the tally
        // before dropping it); spans still open are lost with the thread.
        self.flush();
        self.tally.retire();
    }
}

/// The flags of a span of callsite `cs` opened under a span with flags `parent`: the
/// propagated ones, and TraceFlag 1 while it is among the first MaxSamples of its callsite
/// this period (see [`new_span`]).
#[inline]
fn child_flags(parent: u8, cs: &Callsite) -> u8 {
    let mut flags = parent & FLAGS_PROPAGATED;
    if flags & FLAG_SAMPLED == 0 && cs.take_flag() {
        flags |= FLAG_SAMPLED;
    }
    flags
}

/// A span closed during a panic is an error, `panicked` (unless it has an error already).
#[cold]
fn mark_panicked(span: &mut OpenSpan) {
    if span.error().is_none() {
        span.extra_mut().error = Some("panicked".to_owned());
    }
}

/// Counts a finished span (not abandoned) in the thread's tally, between `tally.begin()` and
/// `tally.end()`: the period it ends in, its cost in whole ms (discarded past an hour). Returns
/// what its record carries when the span must travel on (see the module docs), else `None`.
#[inline]
fn count(tally: &mut LocalTally, span: &OpenSpan, end: u64) -> Option<RecordTally> {
    let epoch = state::epoch();
    let (start_ms, end_ms) = clock::span_ms(span.start, end);
    let cost = end_ms - start_ms;
    if cost > MAX_COST_MS {
        // Not counted, not sampled; a tap still sees it.
        return state::tapped().then(|| RecordTally {
            kind: RecordKind::TapOnly,
            ..RecordTally::count(epoch, start_ms, end_ms)
        });
    }
    let cost = cost.max(0) as u32;
    if span.slot == 0 {
        return Some(RecordTally::count(epoch, start_ms, end_ms));
    }
    let error = span.extra.as_ref().is_some_and(|e| e.error.is_some());
    let counts = SpanCounts {
        cost,
        start_ms,
        value: span.value,
        error,
    };
    let (total, errors) = tally.add(span.slot, epoch, &counts);
    let kind = if may_sample(total, errors, error, span.is_sampled(), cost) {
        RecordKind::Candidate
    } else if state::tapped() {
        RecordKind::TapOnly
    } else {
        return None;
    };
    Some(RecordTally {
        kind,
        epoch,
        total: total.min(u32::MAX as u64) as u32,
        errors,
        stream: ((tally.id() as u64) << 32) | span.slot as u64,
        start_ms,
        end_ms,
    })
}

/// True when a span that is its stream's `total`-th of the period (`errors`-th error) may
/// become a sample: the aggregator places it at or after that index among all the spans of its
/// operation, so a span past the caps here can never be one ([docs/sampling.md §3](crate::docs::sampling)).
#[inline]
fn may_sample(total: u64, errors: u32, error: bool, force: bool, cost: u32) -> bool {
    if error {
        let max = SETTINGS.max_errors() as i64;
        let e = errors as i64;
        e <= max || (force && e <= 10 * max)
    } else {
        let max = SETTINGS.max_samples() as i64;
        let t = total as i64;
        t <= max
            || ((force || {
                let timeout = SETTINGS.timeout_ms();
                timeout > 0 && cost as i64 > timeout as i64
            }) && t <= 10 * max)
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
fn new_span(
    stack: &Stack,
    rng: &Cell<u64>,
    name: Name,
    origin: Origin<'_>,
    callsite: Option<&'static Callsite>,
    kind: SpanKind,
) -> OpenSpan {
    let span_id = crate::id::next_u64(rng);
    let inherited = |s: &OpenSpan| {
        s.extra
            .as_ref()
            .map(|e| (e.tracestate.clone(), e.correlation.clone()))
            .unwrap_or_default()
    };
    let current = match origin {
        Origin::Current => stack.top(),
        _ => None,
    };
    let (trace, parent, remote_parent, mut flags, (tracestate, correlation), link, local_root) =
        match origin {
            Origin::Remote(ctx) => {
                let (parent, remote_parent) = ctx.parent.split();
                (
                    ctx.trace_id.clone(),
                    parent,
                    remote_parent,
                    (ctx.flags & FLAGS_PROPAGATED) | FLAG_LOCAL_ROOT,
                    (ctx.tracestate.clone(), ctx.correlation.clone()),
                    ctx.link.clone(),
                    span_id,
                )
            }
            _ => match current {
                Some(top) if !top.is_context_frame() => (
                    top.trace.clone(),
                    top.span_id,
                    None,
                    top.flags & FLAGS_PROPAGATED,
                    inherited(top),
                    None,
                    top.local_root,
                ),
                Some(frame) => (
                    frame.trace.clone(),
                    frame.parent,
                    frame.extra.as_ref().and_then(|e| e.remote_parent.clone()),
                    (frame.flags & FLAGS_PROPAGATED) | FLAG_LOCAL_ROOT,
                    inherited(frame),
                    frame.extra.as_ref().and_then(|e| e.link.clone()),
                    span_id,
                ),
                None => (
                    TraceId::random_from(rng),
                    0,
                    None,
                    FLAG_LOCAL_ROOT,
                    (None, None),
                    None,
                    span_id,
                ),
            },
        };
    let cs = callsite.unwrap_or_else(|| match &name {
        Name::Static(s) => callsite::for_static(s),
        Name::Owned(s) => callsite::for_name(s),
    });
    // Any span that inherited no flag takes one while it is among the first MaxSamples of its
    // name this period (.NET `DefaultSpanBuilder.Start`, docs/sampling.md §4).
    if flags & FLAG_SAMPLED == 0 && cs.take_flag() {
        flags |= FLAG_SAMPLED;
    }
    // The span's position within its local root, counted only while taps want records.
    let (position, opened) = if !crate::state::tapped() {
        (0, None)
    } else if local_root == span_id {
        (0, Some(Arc::new(AtomicU32::new(1))))
    } else {
        match current.and_then(|top| top.extra.as_ref()?.opened.clone()) {
            Some(c) => (c.fetch_add(1, Ordering::Relaxed), Some(c)),
            None => (0, None),
        }
    };
    let slot = cs.slot().unwrap_or(0);
    let extra = (remote_parent.is_some()
        || tracestate.is_some()
        || correlation.is_some()
        || link.is_some()
        || opened.is_some())
    .then(|| {
        Box::new(Extra {
            remote_parent,
            tracestate,
            correlation,
            link,
            position,
            opened,
            ..Default::default()
        })
    });
    OpenSpan {
        name,
        trace,
        span_id,
        parent,
        local_root,
        start: clock::now(),
        value: 0,
        flags,
        kind,
        slot,
        extra,
    }
}

/// Opens a span and makes it the thread's current span. Returns its id, or 0 when nothing is
/// recorded (a runtime thread, thread teardown).
#[inline]
pub(crate) fn open(
    name: Name,
    origin: Origin<'_>,
    callsite: Option<&'static Callsite>,
    kind: SpanKind,
) -> u64 {
    with_local(|local| {
        if local.suppressed {
            return 0;
        }
        let span = local.new_span(name, origin, callsite, kind);
        let id = span.span_id;
        local.stack.push(span);
        id
    })
    .unwrap_or(0)
}

/// Opens a span of a `#[trace]` callsite and makes it the thread's current span. Returns its
/// id, or 0 when nothing is recorded (a runtime thread, thread teardown). Not inlined, so that
/// a traced call before `init` stays one load and a branch in the caller.
#[inline(never)]
pub(crate) fn enter(cs: &'static Callsite) -> u64 {
    with_local(|local| local.enter(cs)).unwrap_or(0)
}

/// Records no span on this thread from now on: the runtime's own threads call it, so that
/// their work (and a logger or reporter that opens spans) is never traced.
pub(crate) fn suppress_this_thread() {
    with_local(|local| local.suppressed = true);
}

/// Closes an open span of this thread: records it (unless abandoned) with the current time.
#[inline]
pub(crate) fn close(id: u64) {
    let panicking = std::thread::panicking();
    with_local(|local| local.close(id, clock::now(), panicking));
}

/// Records a span that is not on the stack (an instrumented future's own span).
pub(crate) fn record(span: OpenSpan, end: u64, panicking: bool) {
    with_local(|local| local.finish(span, end, panicking));
}

/// Runs `f` on the open span `id` of this thread.
pub(crate) fn with_span<R>(id: u64, f: impl FnOnce(&mut OpenSpan) -> R) -> Option<R> {
    with_local(|local| local.stack.find_mut(id).map(f)).flatten()
}

/// Runs `f` on the thread's current span.
pub(crate) fn with_current<R>(f: impl FnOnce(&mut OpenSpan) -> R) -> Option<R> {
    with_local(|local| local.stack.top_mut().map(f)).flatten()
}

/// Sends this thread's finished spans to the aggregator now.
pub(crate) fn flush_thread() {
    with_local(|local| local.flush());
}
