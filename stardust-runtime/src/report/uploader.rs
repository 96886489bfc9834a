//! The uploader thread: receives each period's `TraceModel` from the aggregator and hands it to
//! the reporters (console, Stardust server, user reporters). It runs apart from the
//! aggregator so a slow server never stops spans from being aggregated.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::collect::aggregator::UpMsg;
use crate::model::TraceModel;
use crate::report::sink::Sink;

pub(crate) struct Uploader {
    pub rx: Receiver<UpMsg>,
    pub sinks: Vec<Box<dyn Sink>>,
    pub shutdown_timeout: Duration,
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
                UpMsg::Model(model) => self.report(&model),
                UpMsg::Flush(model, reply) => {
                    let deadline = Instant::now() + self.shutdown_timeout;
                    for s in &mut self.sinks {
                        guarded("flush", || s.flush(model.as_ref(), deadline));
                    }
                    let _ = reply.send(());
                }
                UpMsg::Shutdown(model, reply, deadline) => {
                    for s in &mut self.sinks {
                        guarded("shutdown", || s.shutdown(model.as_ref(), deadline));
                    }
                    let _ = reply.send(());
                    return;
                }
            }
            next_tick = self.tick();
        }
        let deadline = Instant::now() + self.shutdown_timeout;
        for s in &mut self.sinks {
            guarded("shutdown", || s.shutdown(None, deadline));
        }
    }

    fn report(&mut self, model: &TraceModel) {
        for s in &mut self.sinks {
            guarded("report", || s.report(model));
        }
    }

    fn tick(&mut self) -> Option<Instant> {
        let now = Instant::now();
        self.sinks
            .iter_mut()
            .filter_map(|s| guarded("tick", || s.tick(now)).flatten())
            .min()
    }
}
