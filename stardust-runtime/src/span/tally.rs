//! Per-thread tallies: every span is counted where it closes.
//!
//! Each thread keeps, per callsite slot and period, the counters a Stardust builder reports —
//! Total, Errors, Cost, MinCost, MaxCost, Value and the earliest start — in memory only that
//! thread writes (relaxed loads and stores, no read-modify-write, no lock). Closing a span adds
//! to them; no record travels unless the span may become a sample (see `local`). The
//! aggregator reads every thread's counters at the period cut, so a count never waits in a
//! buffer that could fill: counts are exact at any span rate, and memory is bounded by threads
//! × callsites, whatever the rate.
//!
//! **Periods.** Each slot has two halves, for even and odd periods (the global epoch). A span
//! is counted in the half of the epoch it loads when it closes: it belongs to the period it
//! ends in. The first span of a period on a thread restarts that half (its contents are two
//! periods old and were read at their cut).
//!
//! **The cut** (aggregator thread): advance the epoch, then wait until each thread has been seen
//! outside a close once (each thread's `busy` flag, set around every close): from then on its
//! closes load the new epoch. Then read the old epoch's halves. Threads are waited for one at a
//! time, not for a moment when all are idle at once, which busy threads may never give. A thread sets `busy` before it loads the epoch
//! (a compiler fence keeps that order; the store becomes visible within microseconds, and the
//! aggregator first waits [`GRACE`]). A thread that stays inside a close for longer than the
//! cut waits (stopped, or starved for CPU) is read as it is, and read again at the next cut:
//! what it added meanwhile is counted in the next period, never lost. The table of a thread that
//! exits is read and dropped at the aggregator's next sweep (its counts go to the current
//! period), so a pool that churns threads leaves no tables behind.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering, compiler_fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Spans longer than this (ms) are discarded entirely: not counted, not sampled.
pub(crate) const MAX_COST_MS: i64 = 3_600_000;
/// Slots per chunk: a thread allocates its counters 32 callsites at a time.
const CHUNK: usize = 32;
/// The cut waits this long after advancing the epoch before it trusts the `busy` flags.
pub(crate) const GRACE: Duration = Duration::from_millis(1);

/// One slot's counters for one period.
#[derive(Default)]
struct Half {
    /// The period these counters belong to (0: never used).
    epoch: AtomicU32,
    errors: AtomicU32,
    min: AtomicU32,
    max: AtomicU32,
    total: AtomicU64,
    cost: AtomicU64,
    /// Sum of the spans' values (`i64`, wrapping), as bits.
    value: AtomicU64,
    /// Earliest start, local Unix ms.
    start: AtomicI64,
}

#[derive(Default)]
struct Slot {
    halves: [Half; 2],
}

struct Chunk {
    slots: [Slot; CHUNK],
    /// Per parity: the last epoch in which a slot of this chunk was restarted.
    touched: [AtomicU32; 2],
}

/// One thread's counters, shared with the aggregator.
pub(crate) struct Table {
    id: u32,
    /// True while the owning thread is inside a close.
    busy: AtomicBool,
    /// False once the owning thread has exited.
    alive: AtomicBool,
    /// Cuts that found the thread exited (aggregator only): the table goes at the second, once
    /// what the thread counted after the first cut's epoch moved on has been read.
    dead_cuts: AtomicU32,
    /// By chunk index; `None` where the thread never counted a slot.
    chunks: Mutex<Vec<Option<Arc<Chunk>>>>,
}

/// Set when a thread starts counting a slot in a new period; taken by the aggregator (which
/// schedules its first cut when spans were counted).
static ACTIVITY: AtomicBool = AtomicBool::new(false);

/// True when spans were counted since the last call.
pub(crate) fn take_activity() -> bool {
    ACTIVITY.load(Ordering::Relaxed) && ACTIVITY.swap(false, Ordering::Relaxed)
}

fn registry() -> &'static Mutex<Vec<Arc<Table>>> {
    static TABLES: OnceLock<Mutex<Vec<Arc<Table>>>> = OnceLock::new();
    TABLES.get_or_init(|| Mutex::new(Vec::new()))
}

/// What one span adds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanCounts {
    pub cost: u32,
    pub start_ms: i64,
    pub value: i64,
    pub error: bool,
}

/// A slot's counters for one period, as the aggregator reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub total: u64,
    pub errors: u64,
    pub cost: u64,
    pub min: u32,
    pub max: u32,
    pub value: i64,
    pub start_ms: i64,
}

impl Counts {
    fn read(h: &Half) -> Counts {
        Counts {
            total: h.total.load(Ordering::Relaxed),
            errors: h.errors.load(Ordering::Relaxed) as u64,
            cost: h.cost.load(Ordering::Relaxed),
            min: h.min.load(Ordering::Relaxed),
            max: h.max.load(Ordering::Relaxed),
            value: h.value.load(Ordering::Relaxed) as i64,
            start_ms: h.start.load(Ordering::Relaxed),
        }
    }

    /// What was added since `taken` was read (min, max and start as they are now).
    fn since(&self, taken: &Counts) -> Counts {
        Counts {
            total: self.total.saturating_sub(taken.total),
            errors: self.errors.saturating_sub(taken.errors),
            cost: self.cost.saturating_sub(taken.cost),
            value: self.value.wrapping_sub(taken.value),
            ..*self
        }
    }
}

/// The thread's end: its table, and its own index of the table's chunks (no lock to find one).
pub(crate) struct LocalTally {
    table: Option<Arc<Table>>,
    chunks: Vec<Option<Arc<Chunk>>>,
}

impl LocalTally {
    pub(crate) const fn new() -> LocalTally {
        LocalTally {
            table: None,
            chunks: Vec::new(),
        }
    }

    /// A close starts: marks the thread busy (see the module docs). Call before loading the
    /// epoch.
    #[inline]
    pub(crate) fn begin(&mut self) {
        match &self.table {
            Some(t) => t.busy.store(true, Ordering::Relaxed),
            None => self.create_table(),
        }
        // The epoch is loaded after `busy` is set.
        compiler_fence(Ordering::SeqCst);
    }

    /// The close is done: its counters (and records handed over) are visible to the cut.
    #[inline]
    pub(crate) fn end(&self) {
        if let Some(t) = &self.table {
            t.busy.store(false, Ordering::Release);
        }
    }

    /// The table's id (records of this thread's streams carry it).
    #[inline]
    pub(crate) fn id(&self) -> u32 {
        self.table.as_ref().map_or(0, |t| t.id)
    }

    #[cold]
    #[inline(never)]
    fn create_table(&mut self) {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let table = Arc::new(Table {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            busy: AtomicBool::new(true),
            alive: AtomicBool::new(true),
            dead_cuts: AtomicU32::new(0),
            chunks: Mutex::new(Vec::new()),
        });
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(table.clone());
        self.table = Some(table);
    }

    /// Counts one span in `slot` for `epoch` (between `begin` and `end`). Returns the span's
    /// index among this thread's spans of the slot in the period, and among its errors (the
    /// error index as it stands after this span).
    #[inline]
    pub(crate) fn add(&mut self, slot: u32, epoch: u32, span: &SpanCounts) -> (u64, u32) {
        let chunk = match self.chunks.get(slot as usize / CHUNK) {
            Some(Some(c)) => c,
            _ => self.new_chunk(slot),
        };
        let parity = (epoch & 1) as usize;
        let h = &chunk.slots[slot as usize % CHUNK].halves[parity];
        if h.epoch.load(Ordering::Relaxed) != epoch {
            return restart(chunk, h, parity, epoch, span);
        }
        let total = h.total.load(Ordering::Relaxed) + 1;
        h.total.store(total, Ordering::Relaxed);
        h.cost.store(
            h.cost.load(Ordering::Relaxed) + span.cost as u64,
            Ordering::Relaxed,
        );
        if span.cost > h.max.load(Ordering::Relaxed) {
            h.max.store(span.cost, Ordering::Relaxed);
        }
        if span.cost < h.min.load(Ordering::Relaxed) {
            h.min.store(span.cost, Ordering::Relaxed);
        }
        if span.value != 0 {
            let v = h.value.load(Ordering::Relaxed);
            h.value
                .store(v.wrapping_add(span.value as u64), Ordering::Relaxed);
        }
        if span.start_ms < h.start.load(Ordering::Relaxed) {
            h.start.store(span.start_ms, Ordering::Relaxed);
        }
        let mut errors = h.errors.load(Ordering::Relaxed);
        if span.error {
            errors += 1;
            h.errors.store(errors, Ordering::Relaxed);
        }
        (total, errors)
    }

    #[cold]
    #[inline(never)]
    fn new_chunk(&mut self, slot: u32) -> &Arc<Chunk> {
        let index = slot as usize / CHUNK;
        if self.table.is_none() {
            self.create_table();
        }
        let table = self.table.as_ref().expect("created above");
        let chunk = Arc::new(Chunk {
            slots: std::array::from_fn(|_| Slot::default()),
            touched: Default::default(),
        });
        {
            let mut shared = table.chunks.lock().unwrap_or_else(|e| e.into_inner());
            if shared.len() <= index {
                shared.resize(index + 1, None);
            }
            shared[index] = Some(chunk.clone());
        }
        if self.chunks.len() <= index {
            self.chunks.resize(index + 1, None);
        }
        self.chunks[index].insert(chunk)
    }

    /// The thread exits: its table is removed once its last period has been read.
    pub(crate) fn retire(&mut self) {
        if let Some(t) = &self.table {
            t.busy.store(false, Ordering::Release);
            t.alive.store(false, Ordering::Release);
        }
    }
}

/// The first span of `epoch` in this half: the half's old contents (two periods old, read at
/// their cut) are replaced.
#[cold]
#[inline(never)]
fn restart(chunk: &Chunk, h: &Half, parity: usize, epoch: u32, span: &SpanCounts) -> (u64, u32) {
    let errors = span.error as u32;
    h.total.store(1, Ordering::Relaxed);
    h.errors.store(errors, Ordering::Relaxed);
    h.cost.store(span.cost as u64, Ordering::Relaxed);
    h.min.store(span.cost, Ordering::Relaxed);
    h.max.store(span.cost, Ordering::Relaxed);
    h.value.store(span.value as u64, Ordering::Relaxed);
    h.start.store(span.start_ms, Ordering::Relaxed);
    // Last: a reader that sees the epoch sees this period's counters.
    h.epoch.store(epoch, Ordering::Release);
    chunk.touched[parity].store(epoch, Ordering::Release);
    if !ACTIVITY.load(Ordering::Relaxed) {
        ACTIVITY.store(true, Ordering::Relaxed);
    }
    (1, errors)
}

/// A table read at a cut while its thread was still inside a close: read again at the next
/// cut, what was added meanwhile is counted then.
struct Late {
    table: Arc<Table>,
    epoch: u32,
    taken: Vec<(u32, Counts)>,
}

/// The aggregator's side: reads the tables at each cut.
#[derive(Default)]
pub(crate) struct Collector {
    late: Vec<Late>,
    tables: Vec<Arc<Table>>,
}

impl Collector {
    /// Counts added, since the last cut read them, to the tables that were busy then. Call
    /// before advancing the epoch (so that no thread restarts those halves meanwhile).
    pub(crate) fn reread_late(&mut self, mut f: impl FnMut(u32, &Counts)) {
        for late in std::mem::take(&mut self.late) {
            let mut taken = late.taken.into_iter().peekable();
            each_half(&late.table, late.epoch, |slot, now| {
                let before = match taken.peek() {
                    Some((s, c)) if *s == slot => {
                        let c = *c;
                        taken.next();
                        c
                    }
                    _ => Counts::default(),
                };
                let added = now.since(&before);
                if added.total > 0 || added.cost > 0 || added.errors > 0 || added.value != 0 {
                    f(slot, &added);
                }
            });
        }
    }

    /// Takes the tables of threads that have exited, giving their counts of `epoch` (the
    /// current period: call between cuts) to `f`: a pool that churns threads leaves no tables
    /// behind for long.
    pub(crate) fn reap(&mut self, epoch: u32, mut f: impl FnMut(u32, &Counts)) {
        let mut dead = Vec::new();
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|t| {
                // Set by the thread after its last close: everything it counted is visible.
                let alive = t.alive.load(Ordering::Acquire);
                if !alive {
                    dead.push(t.clone());
                }
                alive
            });
        for table in dead {
            each_half(&table, epoch, |slot, counts| f(slot, &counts));
        }
    }

    /// Reads every thread's counters of `epoch`, which the caller has just ended (the global
    /// epoch is past it): waits [`GRACE`], then until each thread has been seen outside a
    /// close (at most until `limit`), then calls `f` with each slot's counts. Tables of exited
    /// threads are dropped once read.
    pub(crate) fn collect(&mut self, epoch: u32, limit: Instant, mut f: impl FnMut(u32, &Counts)) {
        self.tables.clear();
        self.tables.extend(
            registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        if self.tables.is_empty() {
            return;
        }
        std::thread::sleep(GRACE);
        // Once seen outside a close, a thread adds nothing more to the old epoch: its later
        // closes load the new one. A thread still inside a close at `limit` is read as it is.
        let stalled: Vec<bool> = self
            .tables
            .iter()
            .map(|t| {
                loop {
                    if !t.busy.load(Ordering::Acquire) {
                        break false;
                    }
                    if Instant::now() >= limit {
                        break true;
                    }
                    std::thread::sleep(GRACE);
                }
            })
            .collect();
        let mut dead = false;
        for (table, &still_busy) in self.tables.iter().zip(&stalled) {
            let mut taken = Vec::new();
            each_half(table, epoch, |slot, counts| {
                f(slot, &counts);
                if still_busy {
                    taken.push((slot, counts));
                }
            });
            if still_busy {
                log::debug!(
                    "stardust: a thread was still closing a span at the cut; what it adds is counted in the next period"
                );
                self.late.push(Late {
                    table: table.clone(),
                    epoch,
                    taken,
                });
            }
            if !table.alive.load(Ordering::Acquire) {
                dead |= table.dead_cuts.fetch_add(1, Ordering::Relaxed) >= 1;
            }
        }
        if dead {
            // Read at two cuts since its thread exited: it has nothing more to give (a table
            // still in `late` is kept there).
            registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|t| t.dead_cuts.load(Ordering::Relaxed) < 2);
        }
        self.tables.clear();
    }
}

/// Calls `f` with every slot of `table` counted in `epoch`, in slot order.
fn each_half(table: &Table, epoch: u32, mut f: impl FnMut(u32, Counts)) {
    let parity = (epoch & 1) as usize;
    let chunks: Vec<(usize, Arc<Chunk>)> = table
        .chunks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.clone()?)))
        .collect();
    for (index, chunk) in chunks {
        if chunk.touched[parity].load(Ordering::Acquire) != epoch {
            continue;
        }
        let base = (index * CHUNK) as u32;
        for (i, slot) in chunk.slots.iter().enumerate() {
            let h = &slot.halves[parity];
            if h.epoch.load(Ordering::Acquire) == epoch {
                f(base + i as u32, Counts::read(h));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots no callsite of the other tests uses.
    const SLOT: u32 = 60_001;

    /// The tables are global: these tests read (and drop) each other's, one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn span(cost: u32, start_ms: i64, value: i64, error: bool) -> SpanCounts {
        SpanCounts {
            cost,
            start_ms,
            value,
            error,
        }
    }

    /// What `collect` gives for `slot` (other tests' tables are read too, and ignored).
    fn collected(c: &mut Collector, epoch: u32, slot: u32) -> Vec<Counts> {
        let mut out = Vec::new();
        c.collect(epoch, Instant::now(), |s, counts| {
            if s == slot {
                out.push(*counts);
            }
        });
        out
    }

    #[test]
    fn a_period_is_counted_and_the_next_period_of_the_same_parity_starts_afresh() {
        let _serial = serial();
        let mut t = LocalTally::new();
        t.begin();
        assert_eq!(t.add(SLOT, 1_000_001, &span(5, 100, 2, false)), (1, 0));
        assert_eq!(t.add(SLOT, 1_000_001, &span(1, 90, 3, true)), (2, 1));
        assert_eq!(t.add(SLOT, 1_000_001, &span(9, 95, 0, false)), (3, 1));
        t.end();
        let mut c = Collector::default();
        let counts = collected(&mut c, 1_000_001, SLOT);
        assert_eq!(
            counts,
            [Counts {
                total: 3,
                errors: 1,
                cost: 15,
                min: 1,
                max: 9,
                value: 5,
                start_ms: 90,
            }]
        );
        assert!(
            collected(&mut c, 1_000_002, SLOT).is_empty(),
            "nothing in the other half"
        );
        // Two periods on: the same half restarts.
        t.begin();
        assert_eq!(t.add(SLOT, 1_000_003, &span(7, 200, -1, true)), (1, 1));
        t.end();
        let counts = collected(&mut c, 1_000_003, SLOT);
        assert_eq!((counts[0].total, counts[0].errors), (1, 1));
        assert_eq!((counts[0].min, counts[0].max, counts[0].value), (7, 7, -1));
    }

    #[test]
    fn a_thread_still_closing_at_the_cut_is_read_again_at_the_next() {
        let _serial = serial();
        let mut t = LocalTally::new();
        let slot = SLOT + 1;
        t.begin();
        t.add(slot, 2_000_001, &span(1, 10, 0, false));
        // Still busy: the cut reads what is there (without waiting: the limit is now) …
        let mut c = Collector::default();
        let counts = collected(&mut c, 2_000_001, slot);
        assert_eq!(counts[0].total, 1);
        // … and the rest of that close is counted at the next cut.
        t.add(slot, 2_000_001, &span(3, 10, 4, true));
        t.end();
        let mut late = Vec::new();
        c.reread_late(|s, counts| {
            if s == slot {
                late.push(*counts)
            }
        });
        assert_eq!(late.len(), 1);
        assert_eq!(
            (late[0].total, late[0].errors, late[0].cost, late[0].value),
            (1, 1, 3, 4)
        );
        let mut again = Vec::new();
        c.reread_late(|s, counts| {
            if s == slot {
                again.push(*counts)
            }
        });
        assert!(again.is_empty(), "read once");
    }

    #[test]
    fn an_exited_threads_table_is_reaped_between_cuts() {
        let _serial = serial();
        let slot = SLOT + 3;
        let id = std::thread::spawn(move || {
            let mut t = LocalTally::new();
            t.begin();
            t.add(slot, 4_000_001, &span(2, 1, 0, false));
            t.add(slot, 4_000_001, &span(4, 1, 0, true));
            t.end();
            let id = t.id();
            t.retire();
            id
        })
        .join()
        .unwrap();
        let mut c = Collector::default();
        let mut got = Vec::new();
        c.reap(4_000_001, |s, counts| {
            if s == slot {
                got.push(*counts)
            }
        });
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].total, got[0].errors, got[0].cost), (2, 1, 6));
        assert!(!registry().lock().unwrap().iter().any(|t| t.id == id));
    }

    #[test]
    fn an_exited_threads_table_is_read_then_dropped() {
        let _serial = serial();
        let slot = SLOT + 2;
        let id = std::thread::spawn(move || {
            let mut t = LocalTally::new();
            t.begin();
            t.add(slot, 3_000_001, &span(2, 1, 0, false));
            t.end();
            let id = t.id();
            t.retire();
            id
        })
        .join()
        .unwrap();
        let present = || registry().lock().unwrap().iter().any(|t| t.id == id);
        let mut c = Collector::default();
        assert_eq!(collected(&mut c, 3_000_001, slot)[0].total, 1, "read");
        assert!(collected(&mut c, 3_000_002, slot).is_empty());
        assert!(
            !present(),
            "dropped by the second cut after the thread exited"
        );
    }
}
