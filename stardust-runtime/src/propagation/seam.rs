//! The seam through which a propagation protocol outside the core plugs in at `init`
//! (SkyWalking `sw8`): the core extracts, injects and captures contexts through it without
//! knowing the protocol. One propagator at most is installed at a time.

// The one propagator today is SkyWalking's: without that feature nothing reads the views.
#![cfg_attr(not(feature = "skywalking"), allow(dead_code))]

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::{Extractor, Injector, RemoteContext};
use crate::id::TraceId;

/// What a propagator keeps about a context (SkyWalking: the parent segment reference). The
/// core carries it from a context to the local root opened from it, and hands it back to the
/// propagator and to the aggregator's taps; it never looks inside.
pub(crate) trait Link: Send + Sync + fmt::Debug + 'static {
    /// For the backend to get its own type back.
    fn as_any(&self) -> &dyn Any;
    /// Equality, for [`SpanContext`](crate::SpanContext)'s `PartialEq`.
    fn eq_link(&self, other: &dyn Link) -> bool;
}

/// A shared [`Link`].
pub(crate) type LinkRef = Arc<dyn Link>;

/// Correlation entries carried with a trace (SkyWalking `sw8-correlation`).
pub(crate) type Entries = Arc<[(String, String)]>;

/// What a propagator reads from incoming headers.
#[derive(Default)]
pub(crate) struct Extracted {
    /// A context from this protocol's own header, used when no built-in source gives one.
    pub context: Option<RemoteContext>,
    /// Kept with the context whichever source won.
    pub link: Option<LinkRef>,
    pub correlation: Option<Entries>,
    /// This protocol's header says the trace is sampled: the context's sampled flag is set,
    /// whichever source won ([docs/propagation.md §1.3](crate::docs::propagation)).
    pub sampled: bool,
}

/// A context being written into outgoing headers.
pub(crate) struct InjectView<'a> {
    pub link: Option<&'a LinkRef>,
    pub correlation: Option<&'a [(String, String)]>,
}

/// An open span being captured as a context (for another thread, or for outgoing headers).
pub(crate) struct CaptureView<'a> {
    pub trace: &'a TraceId,
    /// The span's position within its local root (0 for the root itself).
    pub position: u32,
    /// The id of the span's local root (its own id for a local root).
    pub local_root: u64,
    /// The local root's name (empty when the root is not on this thread's stack).
    pub local_root_name: &'a str,
    /// The local root's link (from the context it continued), if any.
    pub local_root_link: Option<&'a LinkRef>,
    /// The peer (`host:port`) of an exit span; `None` for other spans.
    pub exit_peer: Option<&'a str>,
}

/// A propagation protocol beside the built-in W3C and NewLife headers.
pub(crate) trait Propagator: Send + Sync {
    /// Reads this protocol's headers.
    fn extract(&self, carrier: &dyn Extractor) -> Extracted;
    /// Writes this protocol's headers, never overwriting one already set.
    fn inject(&self, view: &InjectView<'_>, carrier: &mut dyn Injector);
    /// The link a context captured from this span carries.
    fn capture(&self, view: &CaptureView<'_>) -> Option<LinkRef>;
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static PROPAGATOR: RwLock<Option<Arc<dyn Propagator>>> = RwLock::new(None);

/// Installs `p` (called by the composition root at `init`).
pub(crate) fn install(p: Arc<dyn Propagator>) {
    *PROPAGATOR.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    INSTALLED.store(true, Ordering::Release);
}

/// Removes the installed propagator (at shutdown).
pub(crate) fn uninstall() {
    INSTALLED.store(false, Ordering::Release);
    *PROPAGATOR.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The installed propagator, if any (one relaxed load when there is none).
#[inline]
pub(crate) fn installed() -> Option<Arc<dyn Propagator>> {
    if !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    PROPAGATOR.read().unwrap_or_else(|e| e.into_inner()).clone()
}
