//! The uploader thread: receives each period's `TraceModel` from the aggregator and hands it to
//! the reporters (console, Stardust server, user reporters). It runs apart from the
//! aggregator so a slow server never stops spans from being aggregated.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::model::TraceModel;

/// Messages to the uploader thread.
pub(crate) enum UpMsg {
    Model(TraceModel),
    /// A forced cut (maybe empty): report it and what is queued by the deadline, then reply
    /// whether it was delivered.
    Flush(Option<TraceModel>, Sender<FlushOutcome>, Instant),
    /// The last cut; report it and what is queued, stop the reporters (by the deadline),
    /// reply, exit.
    Shutdown(Option<TraceModel>, Sender<FlushOutcome>, Instant),
}

/// What was not delivered by a deadline: reports, the periods they cover and the spans they
/// count. One reporter sends one report per period, so there `periods == reports`; summed over
/// several reporters the two can differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Undelivered {
    pub reports: u64,
    pub periods: u64,
    pub spans: u64,
}

impl Undelivered {
    /// The counts of `models`, one period each.
    pub(crate) fn of<'a>(models: impl IntoIterator<Item = &'a TraceModel>) -> Undelivered {
        let mut u = Undelivered::default();
        for m in models {
            u.reports += 1;
            u.periods += 1;
            u.spans += m
                .builders
                .iter()
                .map(|b| b.total.max(0) as u64)
                .sum::<u64>();
        }
        u
    }
}

impl fmt::Display for Undelivered {
    /// `2 reports (2 periods, 1,234,567 spans)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: u64, one: &str, many: &str| {
            format!("{} {}", thousands(n), if n == 1 { one } else { many })
        };
        write!(
            f,
            "{} ({}, {})",
            plural(self.reports, "report", "reports"),
            plural(self.periods, "period", "periods"),
            plural(self.spans, "span", "spans")
        )
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The outcome of a forced cut (`flush()` or shutdown) at one reporter, or at all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushOutcome {
    /// The cut and every report queued before it were delivered.
    Delivered,
    /// The deadline passed first. At a flush what is counted here stays queued and is retried;
    /// at shutdown it is lost.
    TimedOut(Undelivered),
}

impl FlushOutcome {
    /// Both outcomes together: delivered only when both were, the losses summed.
    pub(crate) fn and(self, other: FlushOutcome) -> FlushOutcome {
        match (self, other) {
            (FlushOutcome::Delivered, o) | (o, FlushOutcome::Delivered) => o,
            (FlushOutcome::TimedOut(a), FlushOutcome::TimedOut(b)) => {
                FlushOutcome::TimedOut(Undelivered {
                    reports: a.reports + b.reports,
                    periods: a.periods + b.periods,
                    spans: a.spans + b.spans,
                })
            }
        }
    }
}

/// Receives every period's report. Implement it to send reports somewhere of your own; add it
/// with [`Config::reporter`](crate::Config::reporter). Called on the runtime's uploader thread.
pub trait Reporter: Send + 'static {
    /// One period's aggregated spans.
    fn report(&mut self, model: &TraceModel);

    /// Called once after the last report, at shutdown.
    fn shutdown(&mut self) {}
}

/// What the uploader thread drives. Internal reporters also get periodic work and deadlines.
pub(crate) trait Sink: Send {
    fn report(&mut self, model: &TraceModel);
    /// A period that arrived after shutdown began: keep it for [`Sink::shutdown`], which
    /// delivers it within the shutdown deadline (a reporter without a queue reports it now).
    fn hold(&mut self, model: &TraceModel) {
        self.report(model);
    }
    /// Periodic work (pings, retries); returns when it wants to run next.
    fn tick(&mut self, _now: Instant) -> Option<Instant> {
        None
    }
    /// A forced cut: report `model` (if any) and what is pending before `deadline`.
    fn flush(&mut self, model: Option<&TraceModel>, _deadline: Instant) -> FlushOutcome {
        if let Some(m) = model {
            self.report(m);
        }
        FlushOutcome::Delivered
    }
    /// The last cut: report it, deliver what is pending and stop, before `deadline`.
    fn shutdown(&mut self, model: Option<&TraceModel>, _deadline: Instant) -> FlushOutcome {
        if let Some(m) = model {
            self.report(m);
        }
        FlushOutcome::Delivered
    }
}

pub(crate) struct UserReporter(pub Box<dyn Reporter>);

impl Sink for UserReporter {
    fn report(&mut self, model: &TraceModel) {
        self.0.report(model);
    }
    fn shutdown(&mut self, model: Option<&TraceModel>, _deadline: Instant) -> FlushOutcome {
        if let Some(m) = model {
            self.0.report(m);
        }
        self.0.shutdown();
        FlushOutcome::Delivered
    }
}

pub(crate) struct Uploader {
    pub rx: Receiver<UpMsg>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub shutdown_timeout: Duration,
    /// Set when shutdown begins: periods still on their way are held for the shutdown's
    /// deadline-bound delivery, and no periodic work starts.
    pub stopping: Arc<AtomicBool>,
}

/// Runs `f` on one sink; a panic in it is caught and logged (the sink keeps its place and
/// gets the next call), never propagated. Returns `None` when it panicked.
fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic".to_owned());
            log::error!("stardust: a reporter panicked in {what} ({why}); it stays installed");
            None
        }
    }
}

impl Uploader {
    pub(crate) fn run(mut self) {
        let mut next_tick: Option<Instant> = self.tick();
        loop {
            let msg = match next_tick {
                Some(at) => match self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        next_tick = self.tick();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            match msg {
                UpMsg::Model(model) if self.stopping.load(Ordering::Acquire) => {
                    for s in &mut self.sinks {
                        guarded("report", || s.hold(&model));
                    }
                }
                UpMsg::Model(model) => self.report(&model),
                UpMsg::Flush(model, reply, deadline) => {
                    let outcome = self.each("flush", |s| s.flush(model.as_ref(), deadline));
                    let _ = reply.send(outcome);
                }
                UpMsg::Shutdown(model, reply, deadline) => {
                    let outcome = self.each("shutdown", |s| s.shutdown(model.as_ref(), deadline));
                    let _ = reply.send(outcome);
                    return;
                }
            }
            next_tick = self.tick();
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        self.each("shutdown", |s| s.shutdown(None, deadline));
    }

    /// Runs `f` on every sink; the outcomes together (a sink that panicked counts as done).
    fn each(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Box<dyn Sink>) -> FlushOutcome,
    ) -> FlushOutcome {
        let mut outcome = FlushOutcome::Delivered;
        for s in &mut self.sinks {
            if let Some(o) = guarded(what, || f(s)) {
                outcome = outcome.and(o);
            }
        }
        outcome
    }

    fn report(&mut self, model: &TraceModel) {
        for s in &mut self.sinks {
            guarded("report", || s.report(model));
        }
    }

    fn tick(&mut self) -> Option<Instant> {
        if self.stopping.load(Ordering::Acquire) {
            return None;
        }
        let now = Instant::now();
        self.sinks
            .iter_mut()
            .filter_map(|s| guarded("tick", || s.tick(now)).flatten())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the uploader asked of it.
    struct Recording(Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Sink for Recording {
        fn report(&mut self, _: &TraceModel) {
            self.0.lock().unwrap().push("report");
        }
        fn hold(&mut self, _: &TraceModel) {
            self.0.lock().unwrap().push("hold");
        }
        fn flush(&mut self, _: Option<&TraceModel>, _: Instant) -> FlushOutcome {
            self.0.lock().unwrap().push("flush");
            FlushOutcome::TimedOut(Undelivered {
                reports: 1,
                periods: 1,
                spans: 7,
            })
        }
        fn shutdown(&mut self, _: Option<&TraceModel>, _: Instant) -> FlushOutcome {
            self.0.lock().unwrap().push("shutdown");
            FlushOutcome::Delivered
        }
    }

    #[test]
    fn periods_arriving_after_shutdown_began_are_held_for_it() {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = crossbeam_channel::unbounded();
        let stopping = Arc::new(AtomicBool::new(false));
        let uploader = Uploader {
            rx,
            sinks: vec![
                Box::new(Recording(calls.clone())),
                Box::new(Recording(calls.clone())),
            ],
            shutdown_timeout: Duration::from_secs(1),
            stopping: stopping.clone(),
        };
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(2);
        let deadline = Instant::now() + Duration::from_secs(1);
        tx.send(UpMsg::Model(TraceModel::default())).unwrap();
        tx.send(UpMsg::Flush(None, reply_tx.clone(), deadline))
            .unwrap();
        let thread = std::thread::spawn(move || uploader.run());
        assert_eq!(
            reply_rx.recv().unwrap(),
            FlushOutcome::TimedOut(Undelivered {
                reports: 2,
                periods: 2,
                spans: 14
            }),
            "the outcomes of both sinks together"
        );
        stopping.store(true, Ordering::Release);
        tx.send(UpMsg::Model(TraceModel::default())).unwrap();
        tx.send(UpMsg::Shutdown(None, reply_tx, deadline)).unwrap();
        assert_eq!(reply_rx.recv().unwrap(), FlushOutcome::Delivered);
        thread.join().unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "report", "report", "flush", "flush", "hold", "hold", "shutdown", "shutdown"
            ]
        );
    }

    #[test]
    fn undelivered_reads_as_counts() {
        let u = Undelivered {
            reports: 2,
            periods: 2,
            spans: 1_234_567,
        };
        assert_eq!(u.to_string(), "2 reports (2 periods, 1,234,567 spans)");
        let one = Undelivered {
            reports: 1,
            periods: 1,
            spans: 1,
        };
        assert_eq!(one.to_string(), "1 report (1 period, 1 span)");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(123_456), "123,456");
        let d = FlushOutcome::Delivered;
        assert_eq!(d.and(d), d);
        assert_eq!(
            d.and(FlushOutcome::TimedOut(one)),
            FlushOutcome::TimedOut(one)
        );
        assert_eq!(
            FlushOutcome::TimedOut(one).and(FlushOutcome::TimedOut(u)),
            FlushOutcome::TimedOut(Undelivered {
                reports: 3,
                periods: 3,
                spans: 1_234_568
            })
        );
    }
}
