//! What the uploader thread drives: the public [`Reporter`] trait and the internal `Sink`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::collect::aggregator::UpMsg;
use crate::delivery::FlushOutcome;
use crate::model::TraceModel;

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
    fn shutdown(&mut self, model: Option<&TraceModel>, deadline: Instant) -> FlushOutcome {
        self.flush(model, deadline)
    }
}

/// Tells a sink's background work (replaying queued reports, posting command replies and
/// events) that the uploader thread has something more urgent to do: a period to report, a
/// flush, or the shutdown. That work asks before each request and gives the thread back when
/// this says so, so reports never wait behind it for more than the request in flight.
#[derive(Clone)]
pub(crate) struct Urgent {
    /// The uploader's inbox (periods, flushes, the shutdown).
    inbox: Receiver<UpMsg>,
    /// Set when the shutdown begins, before its message is sent.
    stopping: Arc<AtomicBool>,
}

impl Urgent {
    pub(crate) fn new(inbox: Receiver<UpMsg>, stopping: Arc<AtomicBool>) -> Urgent {
        Urgent { inbox, stopping }
    }

    /// Something waits for the uploader thread.
    pub(crate) fn waiting(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || !self.inbox.is_empty()
    }
}

/// Wakes the uploader thread so it ticks its reporters now (an event was written, a command
/// has a reply ready). Cheap and never blocking: a wake already pending absorbs the next ones.
#[derive(Clone)]
pub(crate) struct Waker(Sender<()>);

impl Waker {
    pub(crate) fn wake(&self) {
        // Full: a wake is pending already; disconnected: the uploader has stopped.
        let _ = self.0.try_send(());
    }
}

/// A [`Waker`] and the receiving end the uploader waits on.
pub(crate) fn waker() -> (Waker, Receiver<()>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    (Waker(tx), rx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urgent_when_a_message_waits_or_the_shutdown_began() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let stopping = Arc::new(AtomicBool::new(false));
        let urgent = Urgent::new(rx.clone(), stopping.clone());
        assert!(!urgent.waiting(), "nothing waits");
        tx.send(UpMsg::Model(TraceModel::default())).unwrap();
        assert!(urgent.waiting(), "a period waits");
        rx.recv().unwrap();
        assert!(!urgent.waiting(), "taken");
        stopping.store(true, Ordering::Release);
        assert!(urgent.waiting(), "the shutdown began");
    }
}
