//! Segments as SkyWalking sees them, derived from the core's local roots.
//!
//! A segment is the spans of one trace under one local root in this process (a span that
//! starts a trace, continues a remote context from headers or a captured one from another
//! thread); its children belong to its segment, on whatever thread they close (an
//! instrumented future may move). Segment ids are
//! derived from the root's span id, so any thread can name another thread's segment (for
//! `CrossThread` references) without shared state; a span's index in its segment is its
//! position within its local root, numbered by the core as spans open (see the assembler).
//! The reference to the parent segment travels through the core as an opaque [`Link`].

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::propagation::seam::Link;

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

impl SwRef {
    /// The reference a span's link holds, when it is ours.
    pub(crate) fn of(link: Option<&crate::propagation::LinkRef>) -> Option<&SwRef> {
        link.and_then(|l| l.as_any().downcast_ref::<SwRef>())
    }
}

impl Link for SwRef {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn eq_link(&self, other: &dyn Link) -> bool {
        other.as_any().downcast_ref::<SwRef>() == Some(self)
    }
}

fn salt() -> u64 {
    static SALT: OnceLock<u64> = OnceLock::new();
    *SALT.get_or_init(crate::id::random_u64)
}

/// The `traceSegmentId` of the segment whose root span is `local_root`.
pub(crate) fn segment_id(local_root: u64) -> String {
    format!("{:016x}{:016x}", salt(), local_root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_in_range() {
        assert_eq!(segment_id(5), segment_id(5));
        assert_ne!(segment_id(5), segment_id(6));
        assert_eq!(segment_id(5).len(), 32);
    }
}
