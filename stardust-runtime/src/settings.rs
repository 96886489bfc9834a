//! Sampling and reporting settings shared by the span hot path, the aggregator and the
//! uploader. Values start from the `Config` (set by the composition root at `init`) and are
//! replaced by what the server sends back (the Stardust reporter); everyone else reads them
//! through these accessors.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

pub(crate) struct Settings {
    /// Normal samples per builder per period; also how many root spans per name per period
    /// get TraceFlag 1.
    max_samples: AtomicI32,
    /// Error samples per builder per period.
    max_errors: AtomicI32,
    /// Spans slower than this (ms) are force-sampled; 0 disables.
    timeout_ms: AtomicI32,
    /// Tags are cut to this many characters; ≤ 0 disables tags.
    max_tag_length: AtomicI32,
    /// Report period, seconds.
    period_secs: AtomicU32,
    /// Builder-name wildcard patterns dropped at report time.
    excludes: Mutex<Vec<String>>,
}

pub(crate) static SETTINGS: Settings = Settings {
    max_samples: AtomicI32::new(1),
    max_errors: AtomicI32::new(10),
    timeout_ms: AtomicI32::new(5000),
    max_tag_length: AtomicI32::new(1024),
    period_secs: AtomicU32::new(60),
    excludes: Mutex::new(Vec::new()),
};

/// A plain copy of the settings, read once per batch by the aggregator.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snapshot {
    pub max_samples: i32,
    pub max_errors: i32,
    pub timeout_ms: i32,
    pub max_tag_length: i32,
}

impl Settings {
    /// Normal samples per builder per period (and root spans flagged per name per period).
    #[inline]
    pub(crate) fn max_samples(&self) -> i32 {
        self.max_samples.load(Ordering::Relaxed)
    }

    /// Error samples per builder per period.
    #[inline]
    pub(crate) fn max_errors(&self) -> i32 {
        self.max_errors.load(Ordering::Relaxed)
    }

    /// Spans slower than this (ms) are force-sampled; 0 disables.
    #[inline]
    pub(crate) fn timeout_ms(&self) -> i32 {
        self.timeout_ms.load(Ordering::Relaxed)
    }

    /// The report period, seconds (at least 1).
    pub(crate) fn period_secs(&self) -> u32 {
        self.period_secs.load(Ordering::Relaxed).max(1)
    }

    /// Sets the report period (clamped to 1 s ..= 1 h); the aggregator re-arms its next cut.
    pub(crate) fn set_period_secs(&self, secs: u32) {
        self.period_secs
            .store(secs.clamp(1, 3600), Ordering::Relaxed);
    }

    pub(crate) fn set_max_samples(&self, n: i32) {
        self.max_samples.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_max_errors(&self, n: i32) {
        self.max_errors.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_timeout_ms(&self, ms: i32) {
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn set_max_tag_length(&self, n: i32) {
        self.max_tag_length.store(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            max_samples: self.max_samples.load(Ordering::Relaxed),
            max_errors: self.max_errors.load(Ordering::Relaxed),
            timeout_ms: self.timeout_ms.load(Ordering::Relaxed),
            max_tag_length: self.max_tag_length.load(Ordering::Relaxed),
        }
    }

    /// Puts back the values of a snapshot.
    pub(crate) fn restore(&self, s: Snapshot) {
        self.max_samples.store(s.max_samples, Ordering::Relaxed);
        self.max_errors.store(s.max_errors, Ordering::Relaxed);
        self.timeout_ms.store(s.timeout_ms, Ordering::Relaxed);
        self.max_tag_length
            .store(s.max_tag_length, Ordering::Relaxed);
    }

    pub(crate) fn excludes(&self) -> Vec<String> {
        self.excludes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_excludes(&self, list: Vec<String>) {
        *self.excludes.lock().unwrap_or_else(|e| e.into_inner()) = list;
    }
}

#[cfg(test)]
impl Snapshot {
    pub(crate) fn for_tests(max_samples: i32, max_errors: i32, timeout_ms: i32) -> Snapshot {
        Snapshot {
            max_samples,
            max_errors,
            timeout_ms,
            max_tag_length: 1024,
        }
    }
}
