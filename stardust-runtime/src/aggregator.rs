//! The aggregator thread: drains span batches from the channel into per-name builders and
//! cuts a `TraceModel` every period (first cut a few seconds after the first span, as the
//! .NET tracer does), handing it to the uploader thread.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::builder::{Builder, is_excluded, normalize_name};
use crate::callsite::EPOCH;
use crate::clock;
use crate::collector::{self, Msg};
use crate::model::TraceModel;
use crate::settings::SETTINGS;
use crate::span::{Name, SpanRecord};
use crate::uploader::UpMsg;

/// Most builders kept per period; spans of further names go to one overflow builder.
pub(crate) const MAX_BUILDERS: usize = 10_000;
/// Name of the builder that counts spans of names past [`MAX_BUILDERS`].
pub(crate) const OVERFLOW_NAME: &str = "stardust:overflow";

/// What the model's header carries.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub app_id: String,
    pub app_name: Option<String>,
    pub client_id: String,
    pub version: String,
}

pub(crate) struct Aggregator {
    rx: Receiver<Msg>,
    up: Sender<UpMsg>,
    identity: Identity,
    builders: HashMap<Cow<'static, str>, Builder>,
    /// Cache of normalised static names, keyed by the name's address and length.
    static_names: HashMap<(usize, usize), Option<&'static str>>,
    first_delay: Duration,
    next_cut: Option<Instant>,
    overflow_logged: bool,
}

impl Aggregator {
    pub(crate) fn new(
        rx: Receiver<Msg>,
        up: Sender<UpMsg>,
        identity: Identity,
        first_delay: Duration,
    ) -> Aggregator {
        Aggregator {
            rx,
            up,
            identity,
            builders: HashMap::new(),
            static_names: HashMap::new(),
            first_delay,
            next_cut: None,
            overflow_logged: false,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let msg = match self.next_cut {
                Some(at) => match self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => {
                        self.cut(None);
                        let period = Duration::from_secs(
                            SETTINGS.period_secs.load(Ordering::Relaxed).max(1) as u64,
                        );
                        self.next_cut = Some(Instant::now() + period);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            match msg {
                Msg::Batch(mut batch) => {
                    if self.next_cut.is_none() {
                        self.next_cut = Some(Instant::now() + self.first_delay);
                    }
                    let settings = SETTINGS.snapshot();
                    for record in batch.drain(..) {
                        self.add(record, &settings);
                    }
                    collector::recycle(batch);
                }
                Msg::Flush(reply) => {
                    self.cut(Some(reply));
                }
                Msg::Shutdown(reply, deadline) => {
                    // Take what is still queued, then the last cut.
                    let settings = SETTINGS.snapshot();
                    while let Ok(msg) = self.rx.try_recv() {
                        match msg {
                            Msg::Batch(mut batch) => {
                                for record in batch.drain(..) {
                                    self.add(record, &settings);
                                }
                            }
                            Msg::Flush(r) | Msg::Shutdown(r, _) => {
                                let _ = r.send(());
                            }
                        }
                    }
                    let model = self.take_model();
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
        let model = self.take_model();
        if let Some(model) = model {
            let _ = self.up.send(UpMsg::Model(model));
        }
    }

    fn add(&mut self, record: SpanRecord, settings: &crate::settings::Snapshot) {
        let key: Cow<'static, str> = match &record.span.name {
            Name::Static(s) => {
                let cached = *self
                    .static_names
                    .entry((s.as_ptr() as usize, s.len()))
                    .or_insert_with(|| normalize_name(s));
                match cached {
                    Some(n) => Cow::Borrowed(n),
                    None => return,
                }
            }
            Name::Owned(s) => match normalize_name(s) {
                Some(n) => Cow::Owned(n.to_owned()),
                None => return,
            },
        };
        let start_ms = clock::to_unix_ms(record.span.start);
        let end_ms = clock::to_unix_ms(record.end);
        if let Some(b) = self.builders.get_mut(key.as_ref()) {
            b.add_timed(&record, start_ms, end_ms, settings);
            return;
        }
        let key = if self.builders.len() >= MAX_BUILDERS {
            if !self.overflow_logged {
                self.overflow_logged = true;
                log::warn!(
                    "stardust: more than {MAX_BUILDERS} operation names in one period; further names are counted under `{OVERFLOW_NAME}`"
                );
            }
            Cow::Borrowed(OVERFLOW_NAME)
        } else {
            key
        };
        let builder = self
            .builders
            .entry(key)
            .or_insert_with_key(|k| Builder::new(k.to_string(), start_ms));
        builder.add_timed(&record, start_ms, end_ms, settings);
    }

    /// Ends the period: the builders with spans become a model.
    fn take_model(&mut self) -> Option<TraceModel> {
        EPOCH.fetch_add(1, Ordering::Relaxed);
        self.overflow_logged = false;
        let end_time = clock::unix_ms_now();
        let excludes = SETTINGS.excludes();
        let mut builders: Vec<_> = self
            .builders
            .drain()
            .map(|(_, b)| b)
            .filter(|b| b.total > 0 && !is_excluded(&b.name, &excludes))
            .map(|b| b.into_model(end_time))
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
            version: Some(self.identity.version.clone()),
            builders,
        })
    }

    fn cut(&mut self, reply: Option<Sender<()>>) {
        let model = self.take_model();
        let msg = match (model, reply) {
            (Some(m), None) => UpMsg::Model(m),
            (None, None) => return,
            (model, Some(reply)) => UpMsg::Flush(model, reply),
        };
        if let Err(e) = self.up.try_send(msg) {
            match e.into_inner() {
                UpMsg::Model(m) | UpMsg::Flush(Some(m), _) => log::error!(
                    "stardust: uploader queue full; a period with {} operations was dropped",
                    m.builders.len()
                ),
                _ => {}
            }
        }
    }
}
