//! The SkyWalking reporter thread: segments to `POST /v3/segments` in bounded JSON batches,
//! instance properties and keep-alives, a bounded retry queue. Blocking `ureq`, its own named
//! thread, never traced (its agent has no tracing middleware).
//!
//! It is fed by a bounded data channel (segments, from the assembler on the aggregator thread)
//! and a small control channel (flush, shutdown with a deadline).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};

use super::Stats;
use super::model::{InstancePingPkg, InstanceProperties, KeyValue, SegmentObject};
use crate::report::failover::{FailoverClient, HttpError, Request};

/// Most segments in one `POST /v3/segments`.
pub(crate) const MAX_BATCH_SEGMENTS: usize = 200;
/// Largest JSON body posted (a single larger segment is sent alone).
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;
/// Most bytes of failed batches kept for retry.
pub(crate) const MAX_RETRY_BYTES: usize = 16 << 20;
/// Most batches kept for retry.
pub(crate) const MAX_RETRY_BATCHES: usize = 256;
/// A batch the OAP rejects as malformed (4xx) is dropped after this many attempts.
const MAX_REJECTED_ATTEMPTS: u32 = 3;
/// `reportProperties` again every this many heartbeats (the properties' TTL refresh).
const PROPERTIES_EVERY: u64 = 10;
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Control messages to the reporter thread.
pub(crate) enum Ctl {
    /// Post everything received so far (and retry the queue once) before the deadline, then
    /// reply.
    Flush(Sender<()>, Instant),
    /// Post what is left before the deadline, then stop.
    Shutdown(Instant),
}

pub(crate) struct Options {
    pub backends: Vec<String>,
    pub service: String,
    pub instance: String,
    pub properties: Vec<KeyValue>,
    pub heartbeat: Duration,
    pub request_timeout: Duration,
}

struct Batch {
    body: Vec<u8>,
    segments: usize,
    rejected: u32,
}

/// The OAP's REST endpoints over the reporters' [`FailoverClient`] (fail-over across backends
/// on network errors; URLs redacted in every message).
struct Oap(FailoverClient);

impl Oap {
    fn new(backends: Vec<String>) -> Oap {
        Oap(FailoverClient::new(
            backends,
            "SkyWalking OAP",
            concat!("stardust-rs/", env!("CARGO_PKG_VERSION")),
            None,
        ))
    }

    /// Posts `body` (JSON); any status outside 2xx is an error.
    fn post(&mut self, path: &str, body: &[u8], timeout: Duration) -> Result<(), HttpError> {
        log::trace!(
            "stardust: SkyWalking POST {path} {}",
            String::from_utf8_lossy(body)
        );
        let reply = self.0.send(&Request {
            body: Some((body, "application/json")),
            path,
            authorization: None,
            timeout,
            deadline: None,
        })?;
        if (200..300).contains(&reply.status) {
            Ok(())
        } else {
            Err(HttpError::Status(reply.status))
        }
    }
}

pub(crate) struct Reporter {
    data: Receiver<SegmentObject>,
    ctl: Receiver<Ctl>,
    oap: Oap,
    service: String,
    instance: String,
    properties: Vec<KeyValue>,
    heartbeat: Duration,
    request_timeout: Duration,
    next_heartbeat: Instant,
    heartbeats: u64,
    properties_due: bool,
    properties_failed: bool,
    /// Serialized segments not yet in a batch.
    ready: Vec<Vec<u8>>,
    /// Batches waiting to be posted: new ones, and failed ones for retry (bounded).
    retry: VecDeque<Batch>,
    retry_bytes: usize,
    next_retry: Instant,
    backoff: Duration,
    failure_logged: bool,
    stats: Arc<Stats>,
}

impl Reporter {
    pub(crate) fn new(
        o: Options,
        data: Receiver<SegmentObject>,
        ctl: Receiver<Ctl>,
        stats: Arc<Stats>,
    ) -> Reporter {
        let now = Instant::now();
        Reporter {
            data,
            ctl,
            oap: Oap::new(o.backends),
            service: o.service,
            instance: o.instance,
            properties: o.properties,
            heartbeat: o.heartbeat,
            request_timeout: o.request_timeout,
            next_heartbeat: now + o.heartbeat,
            heartbeats: 0,
            properties_due: true,
            properties_failed: false,
            ready: Vec::new(),
            retry: VecDeque::new(),
            retry_bytes: 0,
            next_retry: now,
            backoff: MIN_BACKOFF,
            failure_logged: false,
            stats,
        }
    }

    pub(crate) fn run(mut self) {
        self.report_properties(None);
        let deadline = loop {
            let wake = if self.retry.is_empty() {
                self.next_heartbeat
            } else {
                self.next_heartbeat.min(self.next_retry)
            };
            select! {
                recv(self.ctl) -> msg => match msg {
                    Ok(Ctl::Flush(reply, deadline)) => {
                        self.drain(Some(deadline));
                        let _ = reply.send(());
                    }
                    Ok(Ctl::Shutdown(deadline)) => break deadline,
                    Err(_) => break Instant::now() + self.request_timeout,
                },
                recv(self.data) -> msg => match msg {
                    Ok(segment) => {
                        self.serialize(segment);
                        self.take_ready();
                        self.send_batches(None);
                    }
                    // The assembler is gone: its shutdown message, if any, is already queued.
                    Err(_) => match self.ctl.recv_timeout(Duration::from_millis(100)) {
                        Ok(Ctl::Shutdown(deadline)) => break deadline,
                        Ok(Ctl::Flush(reply, deadline)) => {
                            self.drain(Some(deadline));
                            let _ = reply.send(());
                            break deadline;
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                            break Instant::now() + self.request_timeout
                        }
                    },
                },
                default(wake.saturating_duration_since(Instant::now())) => {}
            }
            let now = Instant::now();
            if now >= self.next_heartbeat {
                self.beat();
            }
            if !self.retry.is_empty() && Instant::now() >= self.next_retry {
                self.send_batches(None);
            }
        };
        self.drain(Some(deadline));
        let lost = self.retry.iter().map(|b| b.segments as u64).sum::<u64>()
            + self.ready.len() as u64
            + self.data.len() as u64;
        self.stats.oap_dropped.fetch_add(lost, Ordering::Relaxed);
        self.stats.log_totals();
    }

    fn serialize(&mut self, segment: SegmentObject) {
        match serde_json::to_vec(&segment) {
            Ok(json) => self.ready.push(json),
            Err(e) => log::error!("stardust: cannot serialise a SkyWalking segment: {e}"),
        }
    }

    /// Moves what is queued in the data channel to `ready` (at most a batch's worth more).
    fn take_ready(&mut self) {
        while self.ready.len() < MAX_BATCH_SEGMENTS {
            match self.data.try_recv() {
                Ok(segment) => self.serialize(segment),
                Err(_) => break,
            }
        }
    }

    /// Cuts `ready` into batches of at most [`MAX_BATCH_SEGMENTS`] segments and
    /// [`MAX_BODY_BYTES`] bytes, appended to the queue.
    fn make_batches(&mut self) {
        let mut body = Vec::new();
        let mut segments = 0;
        for json in std::mem::take(&mut self.ready) {
            if segments > 0
                && (segments == MAX_BATCH_SEGMENTS || body.len() + json.len() + 2 > MAX_BODY_BYTES)
            {
                body.push(b']');
                self.enqueue(std::mem::take(&mut body), segments);
                segments = 0;
            }
            body.push(if segments == 0 { b'[' } else { b',' });
            body.extend_from_slice(&json);
            segments += 1;
        }
        if segments > 0 {
            body.push(b']');
            self.enqueue(body, segments);
        }
    }

    fn enqueue(&mut self, body: Vec<u8>, segments: usize) {
        self.retry_bytes += body.len();
        self.retry.push_back(Batch {
            body,
            segments,
            rejected: 0,
        });
        while self.retry.len() > 1
            && (self.retry.len() > MAX_RETRY_BATCHES || self.retry_bytes > MAX_RETRY_BYTES)
        {
            let old = self.retry.pop_front().expect("non-empty");
            self.retry_bytes -= old.body.len();
            self.count_dropped(old.segments, "the retry queue is full");
        }
    }

    fn count_dropped(&self, segments: usize, why: &str) {
        if self
            .stats
            .oap_dropped
            .fetch_add(segments as u64, Ordering::Relaxed)
            == 0
        {
            log::warn!(
                "stardust: dropping SkyWalking segments: {why} (the total is logged at shutdown)"
            );
        }
    }

    /// Posts queued batches, oldest first, until one fails or the queue is empty. Waits for
    /// the back-off unless a deadline is given (flush, shutdown), which bounds every call.
    fn send_batches(&mut self, deadline: Option<Instant>) {
        self.make_batches();
        if deadline.is_none() && Instant::now() < self.next_retry {
            return;
        }
        while let Some(batch) = self.retry.front_mut() {
            let mut timeout = self.request_timeout;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left < Duration::from_millis(20) {
                    return;
                }
                timeout = timeout.min(left);
            }
            let result = self.oap.post("/v3/segments", &batch.body, timeout);
            match result {
                Ok(()) => {
                    let done = self.retry.pop_front().expect("non-empty");
                    self.retry_bytes -= done.body.len();
                    self.stats
                        .sent
                        .fetch_add(done.segments as u64, Ordering::Relaxed);
                    self.backoff = MIN_BACKOFF;
                    if self.failure_logged {
                        self.failure_logged = false;
                        log::info!("stardust: SkyWalking OAP accepts segments again");
                    }
                }
                Err(e) => {
                    if let HttpError::Status(s) = e {
                        if (400..500).contains(&s) && s != 408 && s != 429 {
                            batch.rejected += 1;
                            if batch.rejected >= MAX_REJECTED_ATTEMPTS {
                                let bad = self.retry.pop_front().expect("non-empty");
                                self.retry_bytes -= bad.body.len();
                                log::warn!(
                                    "stardust: SkyWalking OAP rejected a batch of {} segments {MAX_REJECTED_ATTEMPTS} times (HTTP {s}); dropped",
                                    bad.segments
                                );
                                self.count_dropped(bad.segments, "rejected by the OAP");
                                continue;
                            }
                        }
                    }
                    if !self.failure_logged {
                        self.failure_logged = true;
                        log::warn!(
                            "stardust: posting SkyWalking segments to {} failed ({}); {} batch(es) kept for retry",
                            self.oap.0.server(),
                            crate::util::text::escaped(&e),
                            self.retry.len()
                        );
                    }
                    self.next_retry = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Everything received so far, posted before `deadline`.
    fn drain(&mut self, deadline: Option<Instant>) {
        while let Ok(segment) = self.data.try_recv() {
            self.serialize(segment);
        }
        self.send_batches(deadline.or_else(|| Some(Instant::now() + self.request_timeout)));
    }

    fn beat(&mut self) {
        self.heartbeats += 1;
        self.next_heartbeat = Instant::now() + self.heartbeat;
        if self.heartbeats % PROPERTIES_EVERY == 0 {
            self.properties_due = true;
        }
        if self.properties_due {
            self.report_properties(None);
        }
        let body = serde_json::to_vec(&InstancePingPkg {
            service: &self.service,
            service_instance: &self.instance,
        })
        .expect("JSON of plain values");
        if let Err(e) = self
            .oap
            .post("/v3/management/keepAlive", &body, self.request_timeout)
        {
            log::debug!(
                "stardust: SkyWalking keepAlive failed: {}",
                crate::util::text::escaped(&e)
            );
        }
    }

    fn report_properties(&mut self, deadline: Option<Instant>) {
        let body = serde_json::to_vec(&InstanceProperties {
            service: &self.service,
            service_instance: &self.instance,
            properties: &self.properties,
        })
        .expect("JSON of plain values");
        let timeout = deadline.map_or(self.request_timeout, |d| {
            self.request_timeout
                .min(d.saturating_duration_since(Instant::now()))
        });
        match self
            .oap
            .post("/v3/management/reportProperties", &body, timeout)
        {
            Ok(()) => {
                self.properties_due = false;
                self.properties_failed = false;
            }
            Err(e) => {
                self.properties_due = true;
                let level = if self.properties_failed {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                self.properties_failed = true;
                log::log!(
                    level,
                    "stardust: SkyWalking reportProperties to {} failed ({}); retrying at the next heartbeat",
                    self.oap.0.server(),
                    crate::util::text::escaped(&e)
                );
            }
        }
    }
}
