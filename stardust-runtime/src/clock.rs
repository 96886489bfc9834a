//! The clock spans are timed with.
//!
//! Spans record a monotonic reading (nanoseconds since a process-wide anchor). The aggregator
//! turns readings into Unix milliseconds with the wall-clock anchor taken at the same moment,
//! plus the server clock offset learnt by the uploader, so every timestamp sent is
//! server-corrected and durations never jump with the wall clock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    instant: Instant,
    unix_ns: i128,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();
/// Server clock minus local clock, in milliseconds.
static SERVER_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| {
        let instant = Instant::now();
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Anchor { instant, unix_ns }
    })
}

/// Makes sure the anchor exists (called by `init`, so the first span does not pay for it).
pub(crate) fn init() {
    anchor();
}

/// Monotonic nanoseconds since the anchor.
#[inline]
pub(crate) fn now() -> u64 {
    let a = anchor();
    Instant::now()
        .saturating_duration_since(a.instant)
        .as_nanos() as u64
}

/// Local wall clock as Unix ms, derived from the monotonic clock (no server correction).
pub(crate) fn local_unix_ms(reading: u64) -> i64 {
    ((anchor().unix_ns + reading as i128) / 1_000_000) as i64
}

/// A reading converted to server-corrected Unix milliseconds.
#[inline]
pub(crate) fn to_unix_ms(reading: u64) -> i64 {
    local_unix_ms(reading) + SERVER_OFFSET_MS.load(Ordering::Relaxed)
}

/// Server-corrected Unix milliseconds now.
pub(crate) fn unix_ms_now() -> i64 {
    to_unix_ms(now())
}

/// Sets the server clock offset (server minus local), in milliseconds.
#[allow(dead_code)] // used by the Stardust uploader
pub(crate) fn set_server_offset_ms(offset: i64) {
    SERVER_OFFSET_MS.store(offset, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_monotonic_and_map_to_wall_time() {
        let a = now();
        let b = now();
        assert!(b >= a);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((local_unix_ms(now()) - wall).abs() < 1000);
    }
}
