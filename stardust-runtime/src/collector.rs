//! From the span guard to the aggregator: finished spans go into a thread-local batch, and
//! whole batches move to the aggregator through one bounded crossbeam channel.
//!
//! A batch is sent when the thread's outermost span closes, when it is full, or when its
//! oldest record is older than [`MAX_BATCH_AGE_NS`]. A full channel never blocks the caller:
//! the batch is dropped and counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::span::SpanRecord;

/// Records in one batch.
pub(crate) const BATCH_CAPACITY: usize = 256;
/// Oldest record a batch may hold before it is sent, in ns.
pub(crate) const MAX_BATCH_AGE_NS: u64 = 100_000_000;
/// Empty batch vectors kept for reuse.
const POOL_CAPACITY: usize = 512;

/// Messages to the aggregator thread.
pub(crate) enum Msg {
    Batch(Vec<SpanRecord>),
    /// Cut the period now; the reply comes once the reporters have handled it.
    Flush(Sender<()>),
    /// Cut, report and stop by the deadline; the reply comes when everything downstream has
    /// stopped.
    Shutdown(Sender<()>, std::time::Instant),
}

/// Whether spans are recorded at all. The one load a traced call pays before `init()`.
pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);
/// Bumped at every `init`, so thread-local senders of an old runtime are refreshed.
pub(crate) static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Spans dropped because the channel was full.
pub(crate) static DROPPED: AtomicU64 = AtomicU64::new(0);
static DROP_LOGGED: AtomicBool = AtomicBool::new(false);

static SENDER: Mutex<Option<(u64, Sender<Msg>)>> = Mutex::new(None);

#[inline]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn install(generation: u64, tx: Sender<Msg>) {
    *SENDER.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, tx));
}

pub(crate) fn uninstall() {
    *SENDER.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

pub(crate) fn current_sender() -> Option<(u64, Sender<Msg>)> {
    SENDER.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

type Pool = (Sender<Vec<SpanRecord>>, Receiver<Vec<SpanRecord>>);

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| crossbeam_channel::bounded(POOL_CAPACITY))
}

/// An empty batch vector, reused when one is available.
pub(crate) fn new_batch() -> Vec<SpanRecord> {
    pool()
        .1
        .try_recv()
        .unwrap_or_else(|_| Vec::with_capacity(BATCH_CAPACITY))
}

/// Gives a drained batch vector back for reuse.
pub(crate) fn recycle(mut batch: Vec<SpanRecord>) {
    batch.clear();
    if batch.capacity() >= BATCH_CAPACITY {
        let _ = pool().0.try_send(batch);
    }
}

pub(crate) fn count_dropped(n: usize) {
    if n == 0 {
        return;
    }
    let before = DROPPED.fetch_add(n as u64, Ordering::Relaxed);
    if before == 0 && !DROP_LOGGED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "stardust: span channel full, dropping spans (counted; the total is reported at shutdown)"
        );
    }
}

pub(crate) fn reset_dropped() {
    DROPPED.store(0, Ordering::Relaxed);
    DROP_LOGGED.store(false, Ordering::Relaxed);
}

/// The per-thread end of the channel.
pub(crate) struct LocalSender {
    generation: u64,
    tx: Option<Sender<Msg>>,
}

impl LocalSender {
    pub(crate) const fn new() -> LocalSender {
        LocalSender {
            generation: u64::MAX,
            tx: None,
        }
    }

    /// Sends `batch` (records of runtime `generation`) and leaves an empty vector in its place.
    pub(crate) fn send(&mut self, batch: &mut Vec<SpanRecord>, generation: u64) {
        if batch.is_empty() {
            return;
        }
        let current = GENERATION.load(Ordering::Acquire);
        if generation != current {
            // Records of a runtime that has been shut down: nobody is counting them any more.
            batch.clear();
            return;
        }
        if self.generation != current || self.tx.is_none() {
            match current_sender() {
                Some((g, tx)) if g == current => {
                    self.generation = g;
                    self.tx = Some(tx);
                }
                _ => {
                    batch.clear();
                    return;
                }
            }
        }
        let full = std::mem::replace(batch, new_batch());
        let n = full.len();
        if let Some(tx) = &self.tx {
            match tx.try_send(Msg::Batch(full)) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Batch(v))) => {
                    count_dropped(n);
                    recycle(v);
                }
                Err(TrySendError::Disconnected(Msg::Batch(v))) => {
                    self.tx = None;
                    recycle(v);
                }
                Err(_) => {}
            }
        }
    }
}
