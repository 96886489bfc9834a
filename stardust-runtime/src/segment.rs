//! What SkyWalking needs to know about segments, computed where spans are opened.
//!
//! A segment is the spans of one trace under one root in one thread of this process. A span is
//! a segment root when it starts a trace, continues a remote context (headers) or a captured
//! one (another thread); its children on the same thread belong to its segment. Segment ids
//! and span indices are derived from span ids, so any thread can name another thread's segment
//! (for `CrossThread` references) without shared state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// True while a SkyWalking reporter is running: only then are references built.
static ENABLED: AtomicBool = AtomicBool::new(false);
static IDENTITY: RwLock<Option<Arc<Identity>>> = RwLock::new(None);

/// This process as SkyWalking names it.
#[derive(Debug)]
pub(crate) struct Identity {
    pub service: String,
    pub instance: String,
}

/// A reference from a segment to its parent segment (SkyWalking `SegmentReference`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SwRef {
    /// `CrossProcess` (from an incoming `sw8`) or `CrossThread` (from a captured context).
    pub cross_process: bool,
    /// The SkyWalking trace id as text (verbatim from `sw8`, else our trace id).
    pub trace_id: Arc<str>,
    pub parent_segment: String,
    pub parent_span: i32,
    pub parent_service: String,
    pub parent_instance: String,
    pub parent_endpoint: String,
    /// `networkAddressUsedAtPeer` (sw8 field 8); empty for `CrossThread`.
    pub address: String,
}

#[cfg(feature = "skywalking")]
pub(crate) fn enable(identity: Identity) {
    *IDENTITY.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(identity));
    ENABLED.store(true, Ordering::Release);
}

#[cfg(feature = "skywalking")]
pub(crate) fn disable() {
    ENABLED.store(false, Ordering::Release);
}

#[inline]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn identity() -> Option<Arc<Identity>> {
    IDENTITY.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn salt() -> u64 {
    static SALT: OnceLock<u64> = OnceLock::new();
    *SALT.get_or_init(crate::id::random_u64)
}

/// The `traceSegmentId` of the segment whose root span is `seg_root`.
pub(crate) fn segment_id(seg_root: u64) -> String {
    format!("{:016x}{:016x}", salt(), seg_root)
}

/// A span's `spanId` inside its segment: 0 for the root, else a positive number derived from
/// its span id (unique within a segment unless two of its span ids share their low 31 bits).
pub(crate) fn span_index(span_id: u64, is_root: bool) -> i32 {
    if is_root {
        0
    } else {
        ((span_id & 0x7fff_ffff) as i32).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_in_range() {
        assert_eq!(segment_id(5), segment_id(5));
        assert_ne!(segment_id(5), segment_id(6));
        assert_eq!(segment_id(5).len(), 32);
        assert_eq!(span_index(123, true), 0);
        assert_eq!(span_index(0x8000_0000, false), 1);
        assert_eq!(span_index(0xffff_ffff_7fff_ffff, false), i32::MAX);
    }
}
