//! The aggregator thread: cuts a `TraceModel` every period (first cut a few seconds after the
//! first span, as the .NET tracer does) and hands it to the uploader thread.
//!
//! Spans are counted where they close, in per-thread tallies (`span::tally`); at the cut the
//! aggregator ends the period (advances the epoch), waits until no thread is still closing a
//! span of it, and adds every thread's counters to the per-name builders. Between cuts it
//! sweeps the mailboxes every few milliseconds for the records that do travel: sample
//! candidates (placed and sampled by the builders), spans without a slot (counted here), and,
//! while a tap needs them, every span.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::clock;
use crate::collect::builder::{Builder, Excludes, normalize_name};
use crate::delivery::FlushOutcome;
use crate::model::{SpanBuilderModel, TraceModel};
use crate::settings::{SETTINGS, Snapshot};
use crate::span::callsite;
use crate::span::mailbox::{self, Msg};
use crate::span::record::{Name, RecordKind, SpanRecord};
use crate::span::tally::{self, Counts};
use crate::util::hash::FxBuild;

/// Most builders kept per period; spans of further names go to one overflow builder.
pub(crate) const MAX_BUILDERS: usize = 10_000;
/// Restarts after a panic before the aggregator gives up (a bug that panics on every period
/// must not spin a core).
const MAX_RESTARTS: u32 = 10;
/// How often the mailboxes are swept while spans flow.
const SWEEP_INTERVAL: Duration = Duration::from_millis(5);
/// How often they are swept after a while without spans.
const IDLE_SWEEP_INTERVAL: Duration = Duration::from_millis(50);
/// Most abandoned spans remembered per period for re-parenting (their children's samples).
const MAX_ABANDONED: usize = 4096;
/// Most builders per period for names built at run time (`span(String)`, the HTTP helpers):
/// a budget of their own, so that ids in URLs never push out the operations declared in code.
pub(crate) const MAX_DYNAMIC_BUILDERS: usize = 5_000;
/// Name of the builder that counts spans of run-time names past [`MAX_DYNAMIC_BUILDERS`].
pub(crate) const OVERFLOW_NAME: &str = "stardust:overflow";
/// Name of the builder that counts spans of names declared in code past [`MAX_BUILDERS`]
/// (a program with that many `#[trace]` functions and literal names).
pub(crate) const STATIC_OVERFLOW_NAME: &str = "stardust:overflow:static";
/// Longest a cut waits for threads still closing a span of the period it ends.
const QUIESCE_LIMIT: Duration = Duration::from_millis(200);

/// Messages from the aggregator to the uploader thread (the reporters' layer above).
pub(crate) enum UpMsg {
    Model(TraceModel),
    /// A forced cut (maybe empty): report it and what is queued by the deadline, then reply
    /// whether it was delivered.
    Flush(Option<TraceModel>, Sender<FlushOutcome>, Instant),
    /// The last cut; report it and what is queued, stop the reporters (by the deadline),
    /// reply, exit.
    Shutdown(Option<TraceModel>, Sender<FlushOutcome>, Instant),
}

#[derive(Clone, Copy)]
struct StaticName {
    name: Option<&'static str>,
    period: u32,
    index: usize,
}

/// What the model's header carries.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub app_id: String,
    pub app_name: Option<String>,
    pub client_id: String,
    /// The application's version, when known (`None`: not sent).
    pub version: Option<String>,
}

/// Sees every finished span before it is aggregated (the SkyWalking segment assembler).
/// Runs on the aggregator thread: it must not block.
pub(crate) trait Tap: Send {
    fn on_record(&mut self, record: &SpanRecord);
    /// The period was cut (housekeeping, e.g. evicting segments whose root never ended).
    fn on_cut(&mut self) {}
    /// The runtime is stopping: hand over what is complete, within `deadline`.
    fn on_shutdown(&mut self, _deadline: Instant) {}
}

pub(crate) struct Aggregator {
    taps: Vec<Box<dyn Tap>>,
    /// Reused list of the mailboxes being swept.
    boxes: Vec<std::sync::Arc<mailbox::Mailbox>>,
    rx: Receiver<Msg>,
    up: Sender<UpMsg>,
    identity: Identity,
    /// This period's builders; `by_name` indexes them.
    builders: Vec<Builder>,
    by_name: HashMap<Cow<'static, str>, usize, FxBuild>,
    /// Static names seen, keyed by the name's address and length: the normalised name, and
    /// the builder index it had in period `period` (saves hashing the name per span).
    static_names: HashMap<(usize, usize), StaticName, FxBuild>,
    /// Counts cuts; tells which cached builder indices are current.
    period: u32,
    first_delay: Duration,
    next_cut: Option<Instant>,
    /// When the last periodic cut was made.
    last_cut: Option<Instant>,
    /// When this period began (the previous cut, or the start), local Unix ms.
    period_start_ms: i64,
    /// The report period (seconds) the schedule follows; a new one re-arms `next_cut`.
    period_secs: u32,
    overflow_logged: bool,
    /// Builders of run-time names this period.
    dynamic_builders: usize,
    /// Spans abandoned this period: their parents, for re-parenting their children's samples.
    abandoned: HashMap<u64, u64, FxBuild>,
    dynamic_overflow_logged: bool,
    /// The period (epoch) whose spans the builders hold.
    epoch: u32,
    /// Reads the threads' tallies at each cut.
    collector: tally::Collector,
    /// Counts read at a cut, before they are added to the builders.
    counts: Vec<(u32, Counts)>,
    /// By slot: the callsite's normalised name (`None`: never recorded) and whether it was
    /// built at run time; filled as slots are first seen.
    slot_names: Vec<Option<(&'static str, bool)>>,
    /// Records of the next period swept during a cut, added once it is done.
    next: Vec<SpanRecord>,
    /// The vector swapped into a mailbox at each sweep.
    spare: Vec<SpanRecord>,
    /// Sample candidates that arrived after their period was reported.
    late_samples: u64,
}

impl Aggregator {
    pub(crate) fn new(
        rx: Receiver<Msg>,
        up: Sender<UpMsg>,
        identity: Identity,
        first_delay: Duration,
        taps: Vec<Box<dyn Tap>>,
    ) -> Aggregator {
        Aggregator {
            taps,
            boxes: Vec::new(),
            rx,
            up,
            identity,
            builders: Vec::new(),
            by_name: HashMap::default(),
            static_names: HashMap::default(),
            period: 0,
            first_delay,
            next_cut: None,
            last_cut: None,
            period_start_ms: clock::local_unix_ms(clock::now()),
            period_secs: SETTINGS.period_secs(),
            overflow_logged: false,
            dynamic_builders: 0,
            abandoned: HashMap::default(),
            dynamic_overflow_logged: false,
            epoch: crate::state::epoch(),
            collector: tally::Collector::default(),
            counts: Vec::new(),
            slot_names: Vec::new(),
            next: Vec::new(),
            spare: Vec::new(),
            late_samples: 0,
        }
    }

    /// The thread's body: a panic inside is caught, logged, and the loop restarted with the
    /// builders it had (a panic never reaches the application).
    pub(crate) fn run(mut self) {
        for attempt in 1..=MAX_RESTARTS {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop())) {
                Ok(()) => return,
                Err(_) if attempt < MAX_RESTARTS => {
                    log::error!("stardust: the aggregator thread panicked; restarting it")
                }
                Err(_) => log::error!(
                    "stardust: the aggregator thread panicked {MAX_RESTARTS} times; spans are no longer aggregated"
                ),
            }
        }
    }

    fn run_loop(&mut self) {
        let mut idle_sweeps = 0u32;
        loop {
            self.follow_period();
            // Sweep often while spans flow, less often when idle.
            let sweep_every = if idle_sweeps > 50 {
                IDLE_SWEEP_INTERVAL
            } else {
                SWEEP_INTERVAL
            };
            let mut wake = Instant::now() + sweep_every;
            if let Some(at) = self.next_cut {
                wake = wake.min(at);
            }
            let msg = match self.rx.recv_deadline(wake) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if self.sweep() == 0 {
                idle_sweeps = idle_sweeps.saturating_add(1);
            } else {
                idle_sweeps = 0;
            }
            self.reap();
            match msg {
                None => {
                    if self.next_cut.is_some_and(|at| Instant::now() >= at) {
                        self.cut(None);
                        self.period_secs = SETTINGS.period_secs();
                        let now = Instant::now();
                        self.last_cut = Some(now);
                        self.next_cut = Some(now + Duration::from_secs(self.period_secs as u64));
                    }
                }
                Some(Msg::Wake) => {}
                Some(Msg::Flush(reply, deadline)) => self.cut(Some((reply, deadline))),
                Some(Msg::Shutdown(reply, deadline)) => {
                    self.sweep();
                    // A flush that raced the shutdown gets no reply (its caller sees the
                    // runtime stopped); its spans are in the last cut.
                    while self.rx.try_recv().is_ok() {}
                    let model = self.take_model(deadline.min(Instant::now() + QUIESCE_LIMIT));
                    for tap in &mut self.taps {
                        tap.on_shutdown(deadline);
                    }
                    if self
                        .up
                        .send(UpMsg::Shutdown(model, reply, deadline))
                        .is_err()
                    {
                        log::warn!("stardust: uploader thread is gone; last period not reported");
                    }
                    return;
                }
            }
        }
        // Every sender is gone without a shutdown: report what we have.
        if let Some(model) = self.take_model(Instant::now() + QUIESCE_LIMIT) {
            let _ = self.up.send(UpMsg::Model(model));
        }
    }

    /// Re-arms the next cut when the report period changed (the server sent another one): the
    /// next cut comes one new period after the last cut, or now if that has passed, unless it
    /// was due sooner anyway. So a shorter period takes effect at once, not one old period
    /// later.
    fn follow_period(&mut self) {
        let secs = SETTINGS.period_secs();
        if secs == self.period_secs {
            return;
        }
        self.period_secs = secs;
        let Some(at) = self.next_cut else {
            return;
        };
        let now = Instant::now();
        let period = Duration::from_secs(secs as u64);
        let due = self
            .last_cut
            .map_or(now + period, |c| (c + period).max(now));
        if due < at {
            self.next_cut = Some(due);
            log::debug!(
                "stardust: report period now {secs} s; next cut in {} ms",
                due.saturating_duration_since(now).as_millis()
            );
        }
    }

    /// Takes every record handed over so far. Returns how many there were, or 1 when none
    /// came but spans were counted (so that the first cut gets scheduled).
    fn sweep(&mut self) -> usize {
        clock::recalibrate();
        let settings = SETTINGS.snapshot();
        let mut boxes = std::mem::take(&mut self.boxes);
        let mut spare = std::mem::take(&mut self.spare);
        let mut taken = mailbox::sweep(&mut spare, &mut boxes, |records| {
            for record in records.drain(..) {
                for tap in &mut self.taps {
                    tap.on_record(&record);
                }
                self.add(record, &settings);
            }
        });
        self.boxes = boxes;
        self.spare = spare;
        if taken == 0 && tally::take_activity() {
            taken = 1;
        }
        if taken > 0 && self.next_cut.is_none() {
            self.next_cut = Some(Instant::now() + self.first_delay);
        }
        taken
    }

    /// A record (the taps have seen it): counted here when its span has no slot, offered to
    /// its builder as a sample when it is a candidate.
    fn add(&mut self, record: SpanRecord, settings: &Snapshot) {
        let t = record.tally;
        // An abandoned span's marker (a tap record) is not counted; its children's samples are
        // re-parented to its parent at the cut (the rule SkyWalking segments follow too).
        let abandoned = record.span.flags & crate::span::record::FLAG_ABANDONED != 0;
        if t.kind == RecordKind::TapOnly && !abandoned {
            return;
        }
        let ahead = t.epoch.wrapping_sub(self.epoch) as i32;
        if ahead > 0 {
            // Swept while a cut is under way: the next period's.
            self.next.push(record);
            return;
        }
        if abandoned {
            if self.abandoned.len() < MAX_ABANDONED {
                self.abandoned
                    .insert(record.span.span_id, record.span.parent);
            }
            return;
        }
        if ahead < 0 && t.kind == RecordKind::Candidate {
            // Its period was reported already (its thread handed it over late); its count
            // was in that report.
            self.late_samples += 1;
            return;
        }
        let Some(index) = self.index_for(&record.span.name, t.start_ms) else {
            return;
        };
        let builder = &mut self.builders[index];
        match t.kind {
            // A late one is counted now rather than never.
            RecordKind::Count => {
                builder.add_timed(&record, t.start_ms, t.end_ms, settings);
            }
            _ => builder.offer(
                &record,
                t.start_ms,
                t.end_ms,
                t.stream,
                t.total as u64,
                t.errors as u64,
                settings,
            ),
        }
    }

    /// The index of the builder for a span named `name` (`None` for names never recorded).
    fn index_for(&mut self, name: &Name, start_ms: i64) -> Option<usize> {
        Some(match name {
            Name::Static(s) => {
                let key = (s.as_ptr() as usize, s.len());
                let cached = *self.static_names.entry(key).or_insert_with(|| StaticName {
                    name: normalize_name(s),
                    period: u32::MAX,
                    index: 0,
                });
                let name = cached.name?;
                if cached.period == self.period {
                    cached.index
                } else {
                    let index = self.index_of(Cow::Borrowed(name), start_ms, false);
                    self.static_names.insert(
                        key,
                        StaticName {
                            name: Some(name),
                            period: self.period,
                            index,
                        },
                    );
                    index
                }
            }
            Name::Owned(s) => {
                let name = normalize_name(s)?;
                match self.by_name.get(name) {
                    Some(i) => *i,
                    None => self.index_of(Cow::Owned(name.to_owned()), start_ms, true),
                }
            }
        })
    }

    /// Adds the counts of threads that have exited to the builders, and drops their tables.
    fn reap(&mut self) {
        let mut counts = std::mem::take(&mut self.counts);
        self.collector
            .reap(self.epoch, |slot, c| counts.push((slot, *c)));
        for (slot, c) in counts.drain(..) {
            self.merge(slot, &c);
        }
        self.counts = counts;
    }

    /// Adds a thread's counters of `slot` to its builder.
    fn merge(&mut self, slot: u32, counts: &Counts) {
        if counts.total == 0 {
            return;
        }
        let Some((name, dynamic)) = self.slot_name(slot) else {
            return;
        };
        let index = self.index_of(Cow::Borrowed(name), counts.start_ms, dynamic);
        self.builders[index].merge(counts);
    }

    /// The normalised name of a slot's callsite and whether it was built at run time (`None`
    /// for names never recorded).
    fn slot_name(&mut self, slot: u32) -> Option<(&'static str, bool)> {
        let slot = slot as usize;
        if slot >= self.slot_names.len() {
            callsite::with_slots(|all| {
                self.slot_names.extend(
                    all[self.slot_names.len().min(all.len())..]
                        .iter()
                        .map(|cs| normalize_name(cs.name).map(|n| (n, cs.dynamic))),
                )
            });
        }
        self.slot_names.get(slot).copied().flatten()
    }

    /// The index of `name`'s builder this period, created if needed. `dynamic`: a name built
    /// at run time, within its own budget ([`MAX_DYNAMIC_BUILDERS`], then [`OVERFLOW_NAME`]);
    /// names declared in code have [`MAX_BUILDERS`] (then [`STATIC_OVERFLOW_NAME`]).
    fn index_of(&mut self, name: Cow<'static, str>, start_ms: i64, dynamic: bool) -> usize {
        if let Some(i) = self.by_name.get(name.as_ref()) {
            return *i;
        }
        let name = if dynamic && self.dynamic_builders >= MAX_DYNAMIC_BUILDERS {
            if !self.dynamic_overflow_logged {
                self.dynamic_overflow_logged = true;
                crate::util::diag::report(
                    log::Level::Warn,
                    "dynamic-overflow",
                    &format!(
                        "more than {MAX_DYNAMIC_BUILDERS} operation names built at run time in one period; further ones are counted under `{OVERFLOW_NAME}` (names declared in code keep their rows)"
                    ),
                    "ids in names (URLs, keys) make a new operation per id: name by route or template (incoming::with_route, template_path)",
                );
            }
            Cow::Borrowed(OVERFLOW_NAME)
        } else if !dynamic && self.builders.len() - self.dynamic_builders >= MAX_BUILDERS {
            if !self.overflow_logged {
                self.overflow_logged = true;
                log::warn!(
                    "stardust: more than {MAX_BUILDERS} operation names declared in code in one period; further ones are counted under `{STATIC_OVERFLOW_NAME}`"
                );
            }
            Cow::Borrowed(STATIC_OVERFLOW_NAME)
        } else {
            if dynamic {
                self.dynamic_builders += 1;
            }
            name
        };
        if let Some(i) = self.by_name.get(name.as_ref()) {
            return *i;
        }
        let index = self.builders.len();
        self.builders.push(Builder::new(name.to_string(), start_ms));
        self.by_name.insert(name, index);
        index
    }

    /// Samples whose parent was abandoned (not recorded) take the abandoned span's parent,
    /// following chains of abandoned spans; with none left, they become roots.
    fn reparent(&mut self, builders: &mut [SpanBuilderModel]) {
        if self.abandoned.is_empty() {
            return;
        }
        let abandoned = std::mem::take(&mut self.abandoned);
        let resolve = |mut id: u64| {
            for _ in 0..64 {
                match abandoned.get(&id) {
                    Some(&parent) => id = parent,
                    None => break,
                }
            }
            id
        };
        for b in builders.iter_mut() {
            for s in b
                .samples
                .iter_mut()
                .chain(b.error_samples.iter_mut())
                .flatten()
            {
                let Some(parent) = s
                    .parent_id
                    .as_deref()
                    .and_then(|p| u64::from_str_radix(p, 16).ok())
                else {
                    continue;
                };
                if abandoned.contains_key(&parent) {
                    let p = resolve(parent);
                    s.parent_id = (p != 0).then(|| format!("{p:016x}"));
                }
            }
        }
    }

    /// Ends the period: every thread's counters of it and the records still in the mailboxes
    /// go to the builders, and the builders with spans become a model. Waits for threads
    /// still closing a span of the period at most until `limit`.
    fn take_model(&mut self, limit: Instant) -> Option<TraceModel> {
        // What threads that were still closing a span at the last cut added since: counted in
        // this period (before the epoch moves on, so that none restarts those counters).
        let mut counts = std::mem::take(&mut self.counts);
        self.collector
            .reread_late(|slot, c| counts.push((slot, *c)));
        let epoch = self.epoch;
        crate::state::advance_epoch();
        self.collector
            .collect(epoch, limit, |slot, c| counts.push((slot, *c)));
        // The closes waited for have handed their records over: take them too.
        self.sweep();
        for (slot, c) in counts.drain(..) {
            self.merge(slot, &c);
        }
        self.counts = counts;
        self.epoch = epoch.wrapping_add(1);
        if self.late_samples > 0 {
            log::debug!(
                "stardust: {} sample candidates arrived after their period was reported; not sampled",
                self.late_samples
            );
            self.late_samples = 0;
        }

        for tap in &mut self.taps {
            tap.on_cut();
        }
        self.overflow_logged = false;
        self.dynamic_builders = 0;
        let offset = clock::server_offset_ms();
        let cut_ms = clock::local_unix_ms(clock::now());
        let end_time = cut_ms.saturating_add(offset);
        // A builder's StartTime lies within its period, as the .NET builder's creation time
        // does: never before the previous cut, even when its first span started earlier (the
        // server files the whole operation under it; docs/sampling.md §2).
        let period_start = std::mem::replace(&mut self.period_start_ms, cut_ms);
        let excludes = Excludes::new(&SETTINGS.excludes());
        self.period = self.period.wrapping_add(1);
        self.by_name.clear();
        let mut builders: Vec<_> = self
            .builders
            .drain(..)
            .filter(|b| b.total > 0 && !excludes.matches(&b.name))
            .map(|b| b.into_model(period_start, end_time, offset))
            .collect();
        if self.static_names.len() > MAX_BUILDERS {
            self.static_names.clear();
        }
        // This period's abandoned spans re-parent its samples; then the records of the new
        // period swept during the cut (their markers are the new period's).
        self.reparent(&mut builders);
        let settings = SETTINGS.snapshot();
        for record in std::mem::take(&mut self.next) {
            self.add(record, &settings);
        }
        if builders.is_empty() {
            return None;
        }
        builders.sort_by(|a, b| a.name.cmp(&b.name));
        Some(TraceModel {
            app_id: self.identity.app_id.clone(),
            app_name: self.identity.app_name.clone(),
            client_id: Some(self.identity.client_id.clone()),
            version: self.identity.version.clone(),
            builders,
        })
    }

    fn cut(&mut self, reply: Option<(Sender<FlushOutcome>, Instant)>) {
        let model = self.take_model(Instant::now() + QUIESCE_LIMIT);
        let msg = match (model, reply) {
            (Some(m), None) => UpMsg::Model(m),
            (None, None) => return,
            (model, Some((reply, deadline))) => UpMsg::Flush(model, reply, deadline),
        };
        if let Err(e) = self.up.try_send(msg) {
            match e.into_inner() {
                UpMsg::Model(m) | UpMsg::Flush(Some(m), _, _) => log::error!(
                    "stardust: uploader queue full; a period with {} operations was dropped",
                    m.builders.len()
                ),
                _ => {}
            }
        }
    }
}
