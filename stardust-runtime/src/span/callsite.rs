//! Per-name state read when a root span starts: whether it is one of the first
//! `MaxSamples` spans of its name in this period, and so gets TraceFlag 1.
//!
//! `#[trace]` gives every function a `static Callsite`, so the decision costs two relaxed
//! loads once the period's flags are handed out. Spans opened by name through the manual API
//! find their callsite through a per-thread cache in front of a global registry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::settings::SETTINGS;
use crate::util::hash::FxBuild;

/// Most names the global registry holds; names past it share hashed slots.
const REGISTRY_CAP: usize = 10_000;
/// Hashed slots for names past the cap.
const OVERFLOW_SLOTS: usize = 1024;
/// Per-thread cache entries before the cache is cleared.
const THREAD_CACHE_CAP: usize = 1024;

/// The static state of one instrumented place. Created by `#[trace]`; not for direct use.
#[derive(Debug)]
pub struct Callsite {
    pub(crate) name: &'static str,
    /// High 32 bits: the period the count belongs to; low 32 bits: root spans started.
    state: AtomicU64,
}

impl Callsite {
    /// A callsite for spans named `name`.
    pub const fn new(name: &'static str) -> Callsite {
        Callsite {
            name,
            state: AtomicU64::new(0),
        }
    }

    /// Counts a root span start; true while fewer than `MaxSamples` started this period.
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

struct Registry {
    by_name: Mutex<HashMap<Box<str>, &'static Callsite>>,
    overflow: Vec<Callsite>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        by_name: Mutex::new(HashMap::new()),
        overflow: (0..OVERFLOW_SLOTS).map(|_| Callsite::new("")).collect(),
    })
}

fn lookup_global(name: &str) -> &'static Callsite {
    let reg = registry();
    let mut map = reg.by_name.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cs) = map.get(name) {
        return cs;
    }
    if map.len() >= REGISTRY_CAP {
        let slot = fnv(name) as usize % OVERFLOW_SLOTS;
        return &reg.overflow[slot];
    }
    // Leaked once per distinct name, bounded by REGISTRY_CAP.
    let cs: &'static Callsite = Box::leak(Box::new(Callsite::new("")));
    map.insert(name.into(), cs);
    cs
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
