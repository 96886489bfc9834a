//! Per-name state read when a span starts and ends: whether it is one of the first
//! `MaxSamples` spans of its name in this period, and so gets TraceFlag 1; and the callsite's
//! *slot*, the index of its counters in every thread's tally (see [`tally`](super::tally)).
//!
//! `#[trace]` gives every function a `static Callsite`, so the decision costs three relaxed
//! loads (the setting, the period and the callsite's count) once the period's flags are handed
//! out. Spans opened by name through the manual API
//! find their callsite through a per-thread cache in front of a global registry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::settings::SETTINGS;
use crate::util::hash::FxBuild;

/// Most names the global registry holds; names past it share hashed slots.
const REGISTRY_CAP: usize = 10_000;
/// Hashed slots for names past the cap.
const OVERFLOW_SLOTS: usize = 1024;
/// Per-thread cache entries before the cache is cleared.
const THREAD_CACHE_CAP: usize = 1024;
/// Most callsites that get a slot; spans of further callsites travel as records and are
/// counted by the aggregator.
pub(crate) const MAX_SLOTS: u32 = 1 << 16;
/// `slot` of a callsite that has not asked for one yet.
const SLOT_UNASSIGNED: u32 = 0;
/// `slot` of a callsite that never gets one (shared by several names, or past `MAX_SLOTS`).
const SLOT_NONE: u32 = u32::MAX;

/// The static state of one instrumented place. Created by `#[trace]`; not for direct use.
#[derive(Debug)]
pub struct Callsite {
    pub(crate) name: &'static str,
    /// High 32 bits: the period the count belongs to; low 32 bits: root spans started.
    state: AtomicU64,
    /// Index of this callsite's counters in the threads' tallies (1-based; see `slot`).
    slot: AtomicU32,
    /// Made for a name built at run time (`span(String)`): its operation is within the
    /// run-time names' budget of builders, not one declared in code.
    pub(crate) dynamic: bool,
}

impl Callsite {
    /// A callsite for spans named `name`.
    pub const fn new(name: &'static str) -> Callsite {
        Callsite {
            name,
            state: AtomicU64::new(0),
            slot: AtomicU32::new(SLOT_UNASSIGNED),
            dynamic: false,
        }
    }

    /// A callsite for spans named at run time `name` (see [`Callsite::dynamic`]).
    const fn for_run_time_name(name: &'static str) -> Callsite {
        Callsite {
            name,
            state: AtomicU64::new(0),
            slot: AtomicU32::new(SLOT_UNASSIGNED),
            dynamic: true,
        }
    }

    /// A callsite shared by spans of different names: they are never tallied by callsite.
    const fn shared() -> Callsite {
        Callsite {
            name: "",
            state: AtomicU64::new(0),
            slot: AtomicU32::new(SLOT_NONE),
            dynamic: true,
        }
    }

    /// This callsite's slot in the threads' tallies (assigned at first use), or `None` when
    /// its spans are counted from records instead (see [`MAX_SLOTS`]).
    #[inline]
    pub(crate) fn slot(&'static self) -> Option<u32> {
        match self.slot.load(Ordering::Relaxed) {
            SLOT_UNASSIGNED => self.assign_slot(),
            SLOT_NONE => None,
            s => Some(s),
        }
    }

    #[cold]
    #[inline(never)]
    fn assign_slot(&'static self) -> Option<u32> {
        let mut slots = slots().lock().unwrap_or_else(|e| e.into_inner());
        let slot = match self.slot.load(Ordering::Relaxed) {
            SLOT_UNASSIGNED if slots.len() >= MAX_SLOTS as usize => SLOT_NONE,
            SLOT_UNASSIGNED => {
                slots.push(self);
                // Slot 0 is never used: `slots[0]` is a placeholder.
                (slots.len() - 1) as u32
            }
            s => s,
        };
        self.slot.store(slot, Ordering::Relaxed);
        (slot != SLOT_NONE).then_some(slot)
    }

    /// Counts the start of a span that inherited no TraceFlag; true while fewer than
    /// `MaxSamples` such spans of this callsite started this period.
    #[inline]
    pub(crate) fn take_flag(&self) -> bool {
        let max = SETTINGS.max_samples().max(0) as u32;
        let epoch = crate::state::epoch();
        let mut s = self.state.load(Ordering::Relaxed);
        if (s >> 32) as u32 == epoch && (s as u32) >= max {
            return false;
        }
        loop {
            let count = if (s >> 32) as u32 == epoch {
                s as u32
            } else {
                0
            };
            if count >= max {
                return false;
            }
            let next = ((epoch as u64) << 32) | (count as u64 + 1);
            match self
                .state
                .compare_exchange_weak(s, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => s = actual,
            }
        }
    }
}

/// Every callsite that has a slot, by slot (index 0 is a placeholder).
fn slots() -> &'static Mutex<Vec<&'static Callsite>> {
    static PLACEHOLDER: Callsite = Callsite::shared();
    static SLOTS: OnceLock<Mutex<Vec<&'static Callsite>>> = OnceLock::new();
    SLOTS.get_or_init(|| Mutex::new(vec![&PLACEHOLDER]))
}

/// Calls `f` with the callsites by slot (for the aggregator, at a cut).
pub(crate) fn with_slots<R>(f: impl FnOnce(&[&'static Callsite]) -> R) -> R {
    f(&slots().lock().unwrap_or_else(|e| e.into_inner()))
}

struct Registry {
    by_name: Mutex<HashMap<&'static str, &'static Callsite>>,
    overflow: Vec<Callsite>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        by_name: Mutex::new(HashMap::new()),
        overflow: (0..OVERFLOW_SLOTS).map(|_| Callsite::shared()).collect(),
    })
}

fn lookup_global(name: &str) -> &'static Callsite {
    let reg = registry();
    let mut map = reg.by_name.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cs) = map.get(name) {
        return cs;
    }
    if map.len() >= REGISTRY_CAP {
        let slot = crate::util::hash::fnv1a(name) as usize % OVERFLOW_SLOTS;
        return &reg.overflow[slot];
    }
    // Leaked once per distinct name (the name too: the callsite's spans are tallied under
    // it), bounded by REGISTRY_CAP.
    let name: &'static str = Box::leak(name.into());
    let cs: &'static Callsite = Box::leak(Box::new(Callsite::for_run_time_name(name)));
    map.insert(name, cs);
    cs
}

thread_local! {
    static CACHE: RefCell<HashMap<Box<str>, &'static Callsite>> = RefCell::new(HashMap::new());
    static STATIC_CACHE: RefCell<HashMap<(usize, usize), &'static Callsite, FxBuild>> =
        RefCell::new(HashMap::default());
}

/// [`for_name`] for a `&'static str`, cached by the string's address (no hashing of the text).
pub(crate) fn for_static(name: &'static str) -> &'static Callsite {
    let key = (name.as_ptr() as usize, name.len());
    STATIC_CACHE
        .try_with(|cache| {
            if let Some(cs) = cache.borrow().get(&key) {
                return *cs;
            }
            let cs = for_name(name);
            let mut cache = cache.borrow_mut();
            if cache.len() >= THREAD_CACHE_CAP {
                cache.clear();
            }
            cache.insert(key, cs);
            cs
        })
        .unwrap_or_else(|_| lookup_global(name))
}

/// The callsite shared by every span opened with this name through the manual API.
pub(crate) fn for_name(name: &str) -> &'static Callsite {
    CACHE
        .try_with(|cache| {
            if let Some(cs) = cache.borrow().get(name) {
                return *cs;
            }
            let cs = lookup_global(name);
            let mut cache = cache.borrow_mut();
            if cache.len() >= THREAD_CACHE_CAP {
                cache.clear();
            }
            cache.insert(name.into(), cs);
            cs
        })
        .unwrap_or_else(|_| lookup_global(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_max_samples_starts_per_period_get_the_flag() {
        let cs = Callsite::new("t");
        let max = SETTINGS.max_samples();
        let flagged = (0..10).filter(|_| cs.take_flag()).count();
        assert_eq!(flagged as i32, max.min(10));
        crate::state::advance_epoch();
        let flagged = (0..10).filter(|_| cs.take_flag()).count();
        assert_eq!(flagged as i32, max.min(10));
    }

    #[test]
    fn same_name_same_callsite() {
        let a = for_name("registry-test-name") as *const Callsite;
        let b = for_name(&String::from("registry-test-name")) as *const Callsite;
        assert_eq!(a, b);
        let c = std::thread::spawn(|| for_name("registry-test-name") as *const Callsite as usize)
            .join()
            .unwrap();
        assert_eq!(a as usize, c);
    }
}
