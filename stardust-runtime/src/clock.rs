//! The clock spans are timed with.
//!
//! A span records a *reading*: on x86-64 with an invariant TSC (`constant_tsc` and
//! `nonstop_tsc`), the raw time-stamp counter — one instruction, a few ns; elsewhere,
//! nanoseconds of `Instant` since a process-wide anchor (a `clock_gettime` call, 20–30 ns in a
//! VM). Readings are turned into time only off the hot path, by the aggregator: ticks are scaled
//! with a ratio measured against `Instant` and refined at every sweep (so it only gets more
//! exact), then placed on the wall clock with the anchor taken at start-up, plus the server
//! clock offset learnt by the uploader. Durations never jump with the wall clock.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    instant: Instant,
    /// TSC at `instant` (0 when the TSC is not used).
    tsc: u64,
    use_tsc: bool,
    /// Wall clock at `instant`, whole Unix ms …
    unix_ms: i64,
    /// … plus this many ns.
    unix_sub_ms_ns: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();
/// Nanoseconds per TSC tick, as `f64` bits.
static NS_PER_TICK: AtomicU64 = AtomicU64::new(0);
/// The batch age limit in reading units.
static BATCH_AGE_READING: AtomicU64 = AtomicU64::new(BATCH_AGE_NS);
/// A thread-local batch is handed over once its oldest record is this old (ns).
const BATCH_AGE_NS: u64 = 10_000_000;
/// Server clock minus local clock, in milliseconds.
static SERVER_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC is available on every x86-64 CPU and has no preconditions.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn rdtsc() -> u64 {
    0
}

/// True when the TSC ticks at a constant rate in every power state, on every core (Linux
/// reports it as the `constant_tsc` and `nonstop_tsc` CPU flags).
fn tsc_is_invariant() -> bool {
    if !cfg!(target_arch = "x86_64") || std::env::var_os("STARDUST_NO_TSC").is_some() {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    has("constant_tsc") && has("nonstop_tsc")
}

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| {
        let use_tsc = tsc_is_invariant();
        let instant = Instant::now();
        let tsc = if use_tsc { rdtsc() } else { 0 };
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let a = Anchor {
            instant,
            tsc,
            use_tsc,
            unix_ms: since_epoch.as_millis() as i64,
            unix_sub_ms_ns: (since_epoch.subsec_nanos() % 1_000_000) as u64,
        };
        if use_tsc {
            // A first ratio from a short busy wait; the aggregator refines it as time passes.
            let t = Instant::now();
            while t.elapsed().as_micros() < 2_000 {
                std::hint::spin_loop();
            }
            calibrate(&a);
        }
        a
    })
}

/// Measures ns per tick over everything since the anchor.
fn calibrate(a: &Anchor) {
    let ticks = rdtsc().wrapping_sub(a.tsc);
    let ns = a.instant.elapsed().as_nanos() as f64;
    if ticks > 0 && ns > 0.0 {
        let ratio = ns / ticks as f64;
        NS_PER_TICK.store(ratio.to_bits(), Ordering::Relaxed);
        BATCH_AGE_READING.store((BATCH_AGE_NS as f64 / ratio) as u64, Ordering::Relaxed);
    }
}

/// Makes sure the anchor exists (called by `init`, so the first span does not pay for it).
pub(crate) fn init() {
    anchor();
}

/// Refines the tick ratio (the aggregator calls it at every sweep).
pub(crate) fn recalibrate() {
    let a = anchor();
    if a.use_tsc {
        calibrate(a);
    }
}

/// A reading of the span clock (ticks or ns, see the module docs).
#[inline]
pub(crate) fn now() -> u64 {
    let a = anchor();
    if a.use_tsc {
        rdtsc()
    } else {
        Instant::now()
            .saturating_duration_since(a.instant)
            .as_nanos() as u64
    }
}

/// The batch age limit (10 ms) in reading units.
#[inline]
pub(crate) fn batch_age_limit() -> u64 {
    BATCH_AGE_READING.load(Ordering::Relaxed)
}

/// Nanoseconds from the anchor to a reading.
#[inline]
pub(crate) fn to_ns(reading: u64) -> u64 {
    let a = anchor();
    if a.use_tsc {
        let ratio = f64::from_bits(NS_PER_TICK.load(Ordering::Relaxed));
        (reading.saturating_sub(a.tsc) as f64 * ratio) as u64
    } else {
        reading
    }
}

/// Local wall clock as Unix ms for a reading (no server correction).
#[inline]
pub(crate) fn local_unix_ms(reading: u64) -> i64 {
    let a = anchor();
    a.unix_ms + ((to_ns(reading) + a.unix_sub_ms_ns) / 1_000_000) as i64
}

/// Server clock minus local clock, ms (0 until the server has been heard).
#[inline]
pub(crate) fn server_offset_ms() -> i64 {
    SERVER_OFFSET_MS.load(Ordering::Relaxed)
}

/// Server-corrected Unix milliseconds now.
pub(crate) fn unix_ms_now() -> i64 {
    local_unix_ms(now()) + server_offset_ms()
}

/// Sets the server clock offset (server minus local), in milliseconds.
pub(crate) fn set_server_offset_ms(offset: i64) {
    SERVER_OFFSET_MS.store(offset, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_monotonic_and_map_to_wall_time() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = now();
        assert!(b > a);
        let gap_ms = (to_ns(b) - to_ns(a)) as f64 / 1e6;
        assert!((18.0..200.0).contains(&gap_ms), "{gap_ms} ms");
        recalibrate();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((local_unix_ms(now()) - wall).abs() < 50);
        assert!(batch_age_limit() > 0);
    }
}
