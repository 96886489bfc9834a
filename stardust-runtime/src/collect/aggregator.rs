//! The aggregator thread: drains span batches from the channel into per-name builders and
//! cuts a `TraceModel` every period (first cut a few seconds after the first span, as the
//! .NET tracer does), handing it to the uploader thread.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::clock;
use crate::collect::builder::{Builder, Excludes, normalize_name};
use crate::delivery::FlushOutcome;
use crate::model::TraceModel;
use crate::settings::SETTINGS;
use crate::span::mailbox::{self, Msg};
use crate::span::record::{Name, SpanRecord};
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
/// Name of the builder that counts spans of names past [`MAX_BUILDERS`].
pub(crate) const OVERFLOW_NAME: &str = "stardust:overflow";

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
    /// The report period (seconds) the schedule follows; a new one re-arms `next_cut`.
    period_secs: u32,
    overflow_logged: bool,
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
            period_secs: SETTINGS.period_secs(),
            overflow_logged: false,
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
        let mut spare: Vec<SpanRecord> = Vec::new();
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
            if self.sweep(&mut spare) == 0 {
                idle_sweeps = idle_sweeps.saturating_add(1);
            } else {
                idle_sweeps = 0;
            }
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
                    self.sweep(&mut spare);
                    // A flush that raced the shutdown gets no reply (its caller sees the
                    // runtime stopped); its spans are in the last cut.
                    while self.rx.try_recv().is_ok() {}
                    let model = self.take_model();
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
        self.sweep(&mut spare);
        if let Some(model) = self.take_model() {
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

    /// Takes every span handed over so far into the builders.
    fn sweep(&mut self, spare: &mut Vec<SpanRecord>) -> usize {
        clock::recalibrate();
        let settings = SETTINGS.snapshot();
        let mut boxes = std::mem::take(&mut self.boxes);
        let taken = mailbox::sweep(spare, &mut boxes, |records| {
            for record in records.drain(..) {
                self.add(record, &settings);
            }
        });
        self.boxes = boxes;
        if taken > 0 && self.next_cut.is_none() {
            self.next_cut = Some(Instant::now() + self.first_delay);
        }
        taken
    }

    fn add(&mut self, record: SpanRecord, settings: &crate::settings::Snapshot) {
        for tap in &mut self.taps {
            tap.on_record(&record);
        }
        // An abandoned span's marker is for the taps only: it is not counted.
        if record.span.flags & crate::span::record::FLAG_ABANDONED != 0 {
            return;
        }
        // Local wall-clock ms: the server clock offset is applied at the cut, so one period's
        // timestamps all follow the offset known when it is reported.
        let start_ms = clock::local_unix_ms(record.span.start);
        let end_ms = clock::local_unix_ms(record.end);
        let index = match &record.span.name {
            Name::Static(s) => {
                let key = (s.as_ptr() as usize, s.len());
                let cached = *self.static_names.entry(key).or_insert_with(|| StaticName {
                    name: normalize_name(s),
                    period: u32::MAX,
                    index: 0,
                });
                let Some(name) = cached.name else { return };
                if cached.period == self.period {
                    cached.index
                } else {
                    let index = self.index_of(Cow::Borrowed(name), start_ms);
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
                let Some(name) = normalize_name(s) else {
                    return;
                };
                match self.by_name.get(name) {
                    Some(i) => *i,
                    None => self.index_of(Cow::Owned(name.to_owned()), start_ms),
                }
            }
        };
        self.builders[index].add_timed(&record, start_ms, end_ms, settings);
    }

    /// The index of `name`'s builder this period, created if needed (or the overflow builder
    /// once the period has [`MAX_BUILDERS`] names).
    fn index_of(&mut self, name: Cow<'static, str>, start_ms: i64) -> usize {
        if let Some(i) = self.by_name.get(name.as_ref()) {
            return *i;
        }
        let name = if self.builders.len() >= MAX_BUILDERS {
            if !self.overflow_logged {
                self.overflow_logged = true;
                log::warn!(
                    "stardust: more than {MAX_BUILDERS} operation names in one period; further names are counted under `{OVERFLOW_NAME}`"
                );
            }
            if let Some(i) = self.by_name.get(OVERFLOW_NAME) {
                return *i;
            }
            Cow::Borrowed(OVERFLOW_NAME)
        } else {
            name
        };
        let index = self.builders.len();
        self.builders.push(Builder::new(name.to_string(), start_ms));
        self.by_name.insert(name, index);
        index
    }

    /// Ends the period: the builders with spans become a model.
    fn take_model(&mut self) -> Option<TraceModel> {
        crate::state::advance_epoch();
        for tap in &mut self.taps {
            tap.on_cut();
        }
        self.overflow_logged = false;
        let offset = clock::server_offset_ms();
        let end_time = clock::local_unix_ms(clock::now()).saturating_add(offset);
        let excludes = Excludes::new(&SETTINGS.excludes());
        self.period = self.period.wrapping_add(1);
        self.by_name.clear();
        let mut builders: Vec<_> = self
            .builders
            .drain(..)
            .filter(|b| b.total > 0 && !excludes.matches(&b.name))
            .map(|b| b.into_model(end_time, offset))
            .collect();
        if self.static_names.len() > MAX_BUILDERS {
            self.static_names.clear();
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
        let model = self.take_model();
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
