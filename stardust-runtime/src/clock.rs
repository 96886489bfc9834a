//! The clock spans are timed with.
//!
//! A span records a *reading*: on x86-64 with an invariant TSC (`constant_tsc` and
//! `nonstop_tsc`), the raw time-stamp counter — one instruction, a few ns; elsewhere,
//! nanoseconds of `Instant` since a process-wide anchor (a `clock_gettime` call, 20–30 ns in a
//! VM). A reading becomes local wall-clock milliseconds through one fixed-point multiply
//! ([`local_unix_ms`]): milliseconds per tick, measured against `Instant` over everything since
//! the anchor and refined at every aggregator sweep (so it only gets more exact), placed on the
//! wall clock with the anchor taken at start-up. The server clock offset learnt by the uploader
//! is added at the period cut. Durations never jump with the wall clock.
//!
//! Nothing waits at start-up: the first ratio is measured lazily, over the time from the anchor
//! to the first conversion (`init` itself takes longer than the 20 µs that needs), and refined
//! from then on.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

struct Anchor {
    instant: Instant,
    /// TSC at `instant` (0 when the TSC is not used).
    tsc: u64,
    use_tsc: bool,
    /// Wall clock at `instant`, whole Unix ms …
    unix_ms: i64,
    /// … plus this fraction of a millisecond, 0.64 fixed point.
    unix_sub_ms_frac: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();
/// Copies of the anchor's fields for the span hot path (no `OnceLock` check, no call), set
/// when the anchor is taken; `ms_per_unit` is published after them.
struct Hot {
    use_tsc: AtomicBool,
    /// The anchor's reading.
    base: AtomicU64,
    base_unix_ms: AtomicI64,
    base_frac: AtomicU64,
    /// Milliseconds per reading unit (tick or ns), 0.64 fixed point; 0 until first measured.
    ms_per_unit: AtomicU64,
}

static HOT: Hot = Hot {
    use_tsc: AtomicBool::new(false),
    base: AtomicU64::new(0),
    base_unix_ms: AtomicI64::new(0),
    base_frac: AtomicU64::new(0),
    ms_per_unit: AtomicU64::new(0),
};
/// The shortest interval a ratio is measured over (ns).
const MIN_CALIBRATION_NS: u128 = 20_000;
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
        let unix_sub_ms_ns = (since_epoch.subsec_nanos() % 1_000_000) as u64;
        let a = Anchor {
            instant,
            tsc,
            use_tsc,
            unix_ms: since_epoch.as_millis() as i64,
            unix_sub_ms_frac: ((unix_sub_ms_ns as u128) << 64).div_euclid(1_000_000) as u64,
        };
        HOT.base.store(a.tsc, Ordering::Relaxed);
        HOT.base_unix_ms.store(a.unix_ms, Ordering::Relaxed);
        HOT.base_frac.store(a.unix_sub_ms_frac, Ordering::Relaxed);
        HOT.use_tsc.store(use_tsc, Ordering::Release);
        if !use_tsc {
            // Readings are nanoseconds: the ratio is exact from the start.
            HOT.ms_per_unit
                .store(((1u128 << 64) / 1_000_000) as u64, Ordering::Release);
        }
        // With the TSC, the ratio is measured lazily (see `ms_per_unit`): no busy wait here.
        a
    })
}

/// Measures the tick ratio over everything since the anchor (at least
/// [`MIN_CALIBRATION_NS`]; a first measurement waits for that much to have passed).
fn calibrate(a: &Anchor) {
    let mut ns = a.instant.elapsed().as_nanos();
    if ns < MIN_CALIBRATION_NS {
        if HOT.ms_per_unit.load(Ordering::Relaxed) != 0 {
            return;
        }
        // Only when a span closes within 20 µs of the anchor (start-up takes longer).
        while ns < MIN_CALIBRATION_NS {
            std::hint::spin_loop();
            ns = a.instant.elapsed().as_nanos();
        }
    }
    let ticks = rdtsc().wrapping_sub(a.tsc);
    if ticks > 0 && ns > 0 {
        let ratio = ns as f64 / ticks as f64;
        BATCH_AGE_READING.store((BATCH_AGE_NS as f64 / ratio) as u64, Ordering::Relaxed);
        // ms per tick = ns / (ticks × 10^6), 0.64 fixed point.
        let mult = (ns << 64) / (ticks as u128 * 1_000_000);
        HOT.ms_per_unit
            .store(mult.clamp(1, u64::MAX as u128) as u64, Ordering::Release);
    }
}

/// Milliseconds per reading unit (0.64 fixed point), measured now if it never was.
#[inline]
fn ms_per_unit() -> u64 {
    match HOT.ms_per_unit.load(Ordering::Acquire) {
        0 => first_ratio(),
        m => m,
    }
}

#[cold]
#[inline(never)]
fn first_ratio() -> u64 {
    recalibrate();
    HOT.ms_per_unit.load(Ordering::Acquire)
}

/// Makes sure the anchor exists (called by `init`, so the first span does not pay for it).
/// Does not wait: the tick ratio is measured later (see the module docs).
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
    if HOT.use_tsc.load(Ordering::Relaxed) {
        rdtsc()
    } else {
        now_slow()
    }
}

#[inline(never)]
fn now_slow() -> u64 {
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
#[cfg(test)]
pub(crate) fn to_ns(reading: u64) -> u64 {
    let a = anchor();
    let ns_per_unit = ms_per_unit() as f64 * 1e6 / 2f64.powi(64);
    (reading.saturating_sub(a.tsc) as f64 * ns_per_unit) as u64
}

/// Local wall clock as Unix ms for a reading (no server correction).
#[inline]
pub(crate) fn local_unix_ms(reading: u64) -> i64 {
    span_ms(reading, reading).0
}

/// A span's start and end readings as local Unix ms, converted with one ratio, so that their
/// difference is the span's cost in whole milliseconds.
#[inline]
pub(crate) fn span_ms(start: u64, end: u64) -> (i64, i64) {
    let mult = ms_per_unit() as u128;
    // After `ms_per_unit`, which makes sure the anchor's copies are set.
    let base = HOT.base.load(Ordering::Relaxed);
    let frac = HOT.base_frac.load(Ordering::Relaxed) as u128;
    let unix_ms = HOT.base_unix_ms.load(Ordering::Relaxed);
    let ms = |reading: u64| {
        unix_ms + ((reading.saturating_sub(base) as u128 * mult + frac) >> 64) as i64
    };
    (ms(start), ms(end))
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
    use std::time::Duration;

    fn wall_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    /// The span clock against `Instant` and the wall clock, with margins for a loaded machine.
    /// The scheduler may stop a thread between any two readings: this one between the readings
    /// compared (so each comparison is bracketed by its reference), or a thread calibrating
    /// (other tests' aggregators recalibrate concurrently) between the two clocks it reads, which
    /// skews the ratio until the next calibration. So a gap out of bounds is measured again, a
    /// few times; a wrong unit or ratio fails every attempt. The wall clock is compared within a
    /// second: what that catches is a wrong base or unit, not the anchor's sub-ms placement.
    #[test]
    fn readings_are_monotonic_and_map_to_wall_time() {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            let a = now();
            std::thread::sleep(Duration::from_millis(20));
            let b = now();
            let outer_ms = t0.elapsed().as_secs_f64() * 1e3;
            assert!(b > a);
            recalibrate();
            let gap_ms = (to_ns(b) as f64 - to_ns(a) as f64) / 1e6;
            // At least the 20 ms slept, at most the time between the `Instant`s around the
            // readings (each with 10% for the ratio).
            if (18.0..=outer_ms * 1.1 + 1.0).contains(&gap_ms) {
                failures.clear();
                break;
            }
            failures.push(format!("{gap_ms} ms between readings {outer_ms} ms apart"));
        }
        assert!(failures.is_empty(), "{failures:?}");

        let before = wall_ms();
        let local = local_unix_ms(now());
        let after = wall_ms();
        assert!(
            (before - 1000..=after + 1000).contains(&local),
            "local {local}, wall {before}..={after}"
        );
        assert!(batch_age_limit() > 0);
    }
}
