//! From the span guard to the aggregator: the span records that travel (see
//! [`local`](super::local) for which ones do; counts stay in the threads' tallies).
//!
//! Records go into a thread-local batch (no lock, no allocation), handed over to the thread's
//! *mailbox* at once — or, while a tap wants every span, when the thread's outermost span
//! closes, when the batch is full, when a span closes and the batch's oldest record is older
//! than 10 ms, or when a new period starts: one uncontended lock and a move of the records into
//! a vector that keeps its capacity. The aggregator sweeps every mailbox every few milliseconds
//! and at every period cut.
//!
//! Why mailboxes rather than one message per batch on a channel: a busy thread closes many
//! small root spans; one message per root made the channel carry a few spans per message, and
//! on a loaded 2-core machine the aggregator, woken once per scheduler slice, could not keep up
//! (the soak test lost a third of its spans to a full channel). A mailbox absorbs whole
//! scheduler slices of spans and the aggregator takes them in one swap.
//!
//! Since spans are counted where they close (see [`tally`](super::tally)), most records are
//! sample candidates: a full mailbox drops those (counted and logged, [`dropped_samples`]),
//! never a count. Only records of spans without a slot carry their own count; dropping them
//! is counted in [`dropped`].
//!
//! A mailbox is bounded (`MAILBOX_CAPACITY` records): past it, new records are dropped and
//! counted, never silently. Control messages (flush, shutdown) go through a small bounded
//! crossbeam channel.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::delivery::FlushOutcome;
use crate::span::record::{RecordKind, SpanRecord};
use crate::state;

/// Records in one thread-local batch before it is handed to the mailbox.
pub(crate) const BATCH_CAPACITY: usize = 256;

/// Mailbox vectors larger than this (records) are shrunk back after a sweep.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Messages to the aggregator thread.
pub(crate) enum Msg {
    /// Cut the period now and deliver it by the deadline; the reply says whether it was.
    Flush(Sender<FlushOutcome>, std::time::Instant),
    /// Cut, report and stop by the deadline; the reply comes when everything downstream has
    /// stopped.
    Shutdown(Sender<FlushOutcome>, std::time::Instant),
    /// A mailbox is half full: sweep now.
    Wake,
}

/// Set when a producer has asked for an early sweep; cleared by the sweep.
static WAKE_PENDING: AtomicBool = AtomicBool::new(false);

/// Spans (uncounted) dropped because a mailbox was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static DROP_LOGGED: AtomicBool = AtomicBool::new(false);
/// Records of counted spans (sample candidates, records for taps) dropped because a mailbox
/// was full.
static DROPPED_SAMPLES: AtomicU64 = AtomicU64::new(0);
static SAMPLE_DROP_LOGGED: AtomicBool = AtomicBool::new(false);

static SENDER: Mutex<Option<(u64, Sender<Msg>)>> = Mutex::new(None);

/// Spans dropped uncounted since the runtime started (a full mailbox).
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Records of counted spans dropped since the runtime started (a full mailbox).
pub(crate) fn dropped_samples() -> u64 {
    DROPPED_SAMPLES.load(Ordering::Relaxed)
}

pub(crate) fn install(generation: u64, tx: Sender<Msg>) {
    // Spans handed over before this runtime started belong to nobody.
    for mb in registry().lock().unwrap_or_else(|e| e.into_inner()).iter() {
        mb.records.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    *SENDER.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, tx));
}

pub(crate) fn uninstall() {
    *SENDER.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

pub(crate) fn count_dropped(n: usize) {
    if n == 0 {
        return;
    }
    let before = DROPPED.fetch_add(n as u64, Ordering::Relaxed);
    if before == 0 && !DROP_LOGGED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "stardust: the aggregator is behind; dropping spans (counted; see dropped_spans())"
        );
    }
}

/// Counts a dropped batch: uncounted spans in [`dropped`], the others in
/// [`dropped_samples`].
fn count_dropped_batch(batch: &[SpanRecord]) {
    let uncounted = batch
        .iter()
        .filter(|r| r.tally.kind == RecordKind::Count)
        .count();
    count_dropped(uncounted);
    let records = batch.len() - uncounted;
    if records > 0 {
        let before = DROPPED_SAMPLES.fetch_add(records as u64, Ordering::Relaxed);
        if before == 0 && !SAMPLE_DROP_LOGGED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "stardust: the aggregator is behind; dropping span records (counts are kept; samples may be missing; see dropped_samples())"
            );
        }
    }
}

pub(crate) fn reset_dropped() {
    DROPPED.store(0, Ordering::Relaxed);
    DROP_LOGGED.store(false, Ordering::Relaxed);
    DROPPED_SAMPLES.store(0, Ordering::Relaxed);
    SAMPLE_DROP_LOGGED.store(false, Ordering::Relaxed);
}

/// One thread's hand-over point.
pub(crate) struct Mailbox {
    records: Mutex<Vec<SpanRecord>>,
    /// False once the owning thread has exited; the mailbox is removed when empty.
    alive: AtomicBool,
}

fn registry() -> &'static Mutex<Vec<Arc<Mailbox>>> {
    static REGISTRY: Mutex<Vec<Arc<Mailbox>>> = Mutex::new(Vec::new());
    &REGISTRY
}

/// The per-thread end: owns the thread's mailbox.
pub(crate) struct LocalSender {
    mailbox: Option<Arc<Mailbox>>,
}

impl LocalSender {
    pub(crate) const fn new() -> LocalSender {
        LocalSender { mailbox: None }
    }

    /// Moves `batch` (records of runtime `generation`) into this thread's mailbox; `batch`
    /// keeps its capacity.
    pub(crate) fn send(&mut self, batch: &mut Vec<SpanRecord>, generation: u64) {
        if batch.is_empty() {
            return;
        }
        if generation != state::generation() || !state::enabled() {
            // Records of a runtime that has been shut down: nobody is counting them any more.
            batch.clear();
            return;
        }
        let mailbox = self.mailbox.get_or_insert_with(|| {
            let mb = Arc::new(Mailbox {
                records: Mutex::new(Vec::with_capacity(BATCH_CAPACITY)),
                alive: AtomicBool::new(true),
            });
            registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(mb.clone());
            mb
        });
        let capacity = state::mailbox_capacity();
        let mut records = mailbox.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() + batch.len() > capacity {
            drop(records);
            count_dropped_batch(batch);
            batch.clear();
        } else {
            records.append(batch);
            let half_full = records.len() > capacity / 2;
            drop(records);
            if half_full && !WAKE_PENDING.swap(true, Ordering::Relaxed) {
                // Do not wait for the next timed sweep.
                if let Some((_, tx)) = &*SENDER.lock().unwrap_or_else(|e| e.into_inner()) {
                    let _ = tx.try_send(Msg::Wake);
                }
            }
        }
    }
}

impl Drop for LocalSender {
    fn drop(&mut self) {
        if let Some(mb) = &self.mailbox {
            mb.alive.store(false, Ordering::Release);
        }
    }
}

/// Takes everything handed over so far, calling `f` on each mailbox's records (in the order
/// they were handed over). `spare` is swapped in as the mailbox's next vector. Mailboxes of
/// exited threads are removed once empty. Returns the number of records taken.
pub(crate) fn sweep(
    spare: &mut Vec<SpanRecord>,
    boxes: &mut Vec<Arc<Mailbox>>,
    mut f: impl FnMut(&mut Vec<SpanRecord>),
) -> usize {
    WAKE_PENDING.store(false, Ordering::Relaxed);
    // No lock is held while `f` runs: it may log, and a logger may open spans whose hand-over
    // needs the registry (or this thread's own mailbox).
    boxes.clear();
    boxes.extend(
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    let mut taken = 0;
    let mut dead = false;
    for mb in boxes.iter() {
        // The vector swapped in takes a few hand-overs without growing on the thread.
        if spare.capacity() < BATCH_CAPACITY {
            spare.reserve_exact(BATCH_CAPACITY);
        }
        {
            let mut records = mb.records.lock().unwrap_or_else(|e| e.into_inner());
            if !records.is_empty() {
                std::mem::swap(&mut *records, spare);
            }
        }
        if !spare.is_empty() {
            let n = spare.len();
            taken += n;
            f(spare);
            spare.clear();
            // Keep the capacity: vectors circulate between the mailboxes and this spare, so
            // after a warm-up nothing allocates. Give memory back only when a large vector is
            // mostly unused (after an overload burst), not under steady load.
            if spare.capacity() > SHRINK_ABOVE && n < spare.capacity() / 8 {
                spare.shrink_to((n * 2).max(SHRINK_ABOVE));
            }
        }
        dead |= !mb.alive.load(Ordering::Acquire);
    }
    if dead {
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|mb| {
                mb.alive.load(Ordering::Acquire)
                    || !mb
                        .records
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty()
            });
    }
    boxes.clear();
    taken
}
