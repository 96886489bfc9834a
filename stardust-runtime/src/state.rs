//! The runtime's process-wide switches, in one place. Only the composition root
//! (`runtime.rs`) starts and stops the runtime; the aggregator advances the period epoch;
//! everything else only reads, through these accessors.
//!
//! Sampling and reporting settings (which the server may change) are in
//! [`settings`](crate::settings).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Whether spans are recorded at all. The one load a traced call pays before `init()`.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Bumped at every `init`, so records of an old runtime are discarded.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Records one thread's mailbox holds before spans are dropped.
static MAILBOX_CAPACITY: AtomicUsize = AtomicUsize::new(64 * 1024);
/// Whether a tap that assembles span trees runs (the SkyWalking reporter): then every
/// finished span travels to the aggregator as a record, not only those that may become
/// samples, and spans keep their structured attributes.
static TAPPED: AtomicBool = AtomicBool::new(false);
/// Current period number; the aggregator advances it at every cut.
static EPOCH: AtomicU32 = AtomicU32::new(1);
/// Whether errors also count under `ex:<Type>`.
static EXCEPTION_SPANS: AtomicBool = AtomicBool::new(true);

/// True when errors also record an `ex:<Type>` span.
#[inline]
pub(crate) fn exception_spans() -> bool {
    EXCEPTION_SPANS.load(Ordering::Relaxed)
}

/// Sets [`exception_spans`] (at `init`, from the `Config`).
pub(crate) fn set_exception_spans(on: bool) {
    EXCEPTION_SPANS.store(on, Ordering::Relaxed);
}

/// True while the runtime runs.
#[inline]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The running (or last) runtime's generation.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The generation a batch started now belongs to (no ordering needed: checked again at
/// hand-over).
#[inline]
pub(crate) fn generation_relaxed() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Records a thread's mailbox holds.
#[inline]
pub(crate) fn mailbox_capacity() -> usize {
    MAILBOX_CAPACITY.load(Ordering::Relaxed)
}

/// True while a tap wants every finished span as a record, with its structured attributes
/// (see [`TAPPED`] and `span::local`).
#[inline]
pub(crate) fn tapped() -> bool {
    TAPPED.load(Ordering::Relaxed)
}

/// The current period's number.
#[inline]
pub(crate) fn epoch() -> u32 {
    EPOCH.load(Ordering::Relaxed)
}

/// A new period starts (called by the aggregator at each cut).
pub(crate) fn advance_epoch() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// Starts a new runtime generation with these settings; returns the generation. Spans are
/// recorded only once [`enable`] is called. A new period starts too, so that nothing counted
/// after an earlier runtime stopped is reported by this one.
pub(crate) fn begin(mailbox_capacity: usize, tapped: bool) -> u64 {
    MAILBOX_CAPACITY.store(mailbox_capacity, Ordering::Relaxed);
    TAPPED.store(tapped, Ordering::Relaxed);
    advance_epoch();
    GENERATION.fetch_add(1, Ordering::AcqRel) + 1
}

/// Spans are recorded from now on.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// Spans are no longer recorded (shutdown).
pub(crate) fn disable() {
    ENABLED.store(false, Ordering::Release);
    TAPPED.store(false, Ordering::Release);
}
