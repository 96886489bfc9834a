//! The uploader thread: receives each period's `TraceModel` from the aggregator and hands it to
//! the reporters (console, Stardust server, user reporters). It runs apart from the
//! aggregator so a slow server never stops spans from being aggregated.

use crate::delivery::FlushOutcome;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::collect::aggregator::UpMsg;
use crate::model::TraceModel;
use crate::report::sink::Sink;

pub(crate) struct Uploader {
    pub rx: Receiver<UpMsg>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub shutdown_timeout: Duration,
    /// Set when shutdown begins: periods still on their way are held for the shutdown's
    /// deadline-bound delivery, and no periodic work starts.
    pub stopping: Arc<AtomicBool>,
    /// Wakes the loop for a tick before its time ([`Waker`](crate::report::sink::Waker)):
    /// events written, command replies ready.
    pub wake: Receiver<()>,
}

/// Runs `f` on one sink; a panic in it is caught and logged (the sink keeps its place and
/// gets the next call), never propagated. Returns `None` when it panicked.
fn guarded<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            let why =
                crate::util::text::panic_text(&*p).unwrap_or_else(|| "non-text panic".to_owned());
            log::error!("stardust: a reporter panicked in {what} ({why}); it stays installed");
            None
        }
    }
}

impl Uploader {
    pub(crate) fn run(mut self) {
        let mut next_tick: Option<Instant> = self.tick();
        loop {
            let timer = next_tick.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            let msg = crossbeam_channel::select! {
                recv(self.rx) -> m => match m {
                    Ok(m) => m,
                    Err(_) => break,
                },
                recv(self.wake) -> w => {
                    if w.is_err() {
                        // Every waker is gone: stop listening (a closed channel is always ready).
                        self.wake = crossbeam_channel::never();
                    }
                    next_tick = self.tick();
                    continue;
                },
                recv(timer) -> _ => {
                    next_tick = self.tick();
                    continue;
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
    use crate::delivery::Undelivered;

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
            wake: crossbeam_channel::never(),
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
}
