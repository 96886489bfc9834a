//! Application events for the Stardust server's app history (`/App/PostEvents`,
//! [docs/stardust-protocol.md §10](crate::docs::stardust_protocol)): the public [`event`]
//! function, the bounded queue it writes to, and the start-up event.
//!
//! [`event`] never blocks: it cuts the texts, takes the local time and tries to put the event
//! into a fixed-size channel; when the channel is full the event is dropped and counted. The
//! Stardust reporter on the uploader thread takes them out in batches once logged in.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{Value, json};

use crate::clock;
use crate::report::sink::Waker;
use crate::util::diag;
use crate::util::text::cut_utf16;

/// Events kept while they wait to be posted (the server is down, or not logged in yet); past
/// it new events are dropped and counted.
pub(crate) const CAPACITY: usize = 1000;
/// Longest event name the server stores (`AppHistory.Action`; longer fails the whole batch).
pub(crate) const MAX_NAME: usize = 50;
/// Longest remark the server stores (it cuts the rest).
pub(crate) const MAX_REMARK: usize = 2000;
/// Name of the event written at start, as the .NET client writes it ("application started").
pub(crate) const STARTUP_NAME: &str = "应用启动";

/// The kind of an application [`event`]: its `Type` on the server. Only [`EventKind::Error`]
/// marks the history record as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// Type `info`: something that happened.
    Info,
    /// Type `alert`: worth a look (the record still counts as a success).
    Alert,
    /// Type `error`: a failure (the record is marked as failed).
    Error,
}

impl EventKind {
    /// The `Type` sent to the server: `info`, `alert` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Info => "info",
            EventKind::Alert => "alert",
            EventKind::Error => "error",
        }
    }
}

/// One queued event. The time is the local wall clock; the server offset known when it is
/// posted is added then (as for span times), so events written before the first login get the
/// server's time too.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub local_ms: i64,
    pub kind: EventKind,
    pub name: String,
    pub remark: String,
}

impl Event {
    fn new(kind: EventKind, name: &str, remark: &str) -> Event {
        Event {
            local_ms: clock::local_unix_ms(clock::now()),
            kind,
            name: cut_utf16(name, MAX_NAME).to_owned(),
            remark: cut_utf16(remark, MAX_REMARK).to_owned(),
        }
    }

    /// The `EventModel` as .NET writes it (PascalCase), timed with the server offset now.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "Time": self.local_ms.saturating_add(clock::server_offset_ms()),
            "Type": self.kind.as_str(),
            "Name": self.name,
            "Remark": self.remark,
        })
    }
}

struct Installed {
    tx: Sender<Event>,
    waker: Waker,
}

/// The running Stardust reporter's queue; `None` before `init`, after shutdown and without a
/// Stardust server. Written only at init and shutdown, so readers never wait in practice.
static QUEUE: RwLock<Option<Installed>> = RwLock::new(None);
/// Events dropped because the queue was full, since `init`.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether the first drop of this runtime has been logged.
static DROP_LOGGED: AtomicBool = AtomicBool::new(false);

/// A new queue with the start-up event .NET writes (`info`, `应用启动`, `pid=…, Name=…,
/// FileName=…`) already in it. The sender goes to [`install`], the receiver to the reporter.
pub(crate) fn queue() -> (Sender<Event>, Receiver<Event>) {
    let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
    let _ = tx.try_send(Event::new(EventKind::Info, STARTUP_NAME, &startup_remark()));
    (tx, rx)
}

/// `pid=<pid>, Name=<process name>, FileName=<executable path>`, as .NET's `StarFactory`.
fn startup_remark() -> String {
    let file = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!(
        "pid={}, Name={}, FileName={file}",
        std::process::id(),
        crate::util::host::process_name()
    )
}

/// Makes [`event`] write to `tx` (at `init`, once the threads run); resets the drop count.
pub(crate) fn install(tx: Sender<Event>, waker: Waker) {
    DROPPED.store(0, Ordering::Relaxed);
    DROP_LOGGED.store(false, Ordering::Relaxed);
    *QUEUE.write().unwrap_or_else(|e| e.into_inner()) = Some(Installed { tx, waker });
}

/// [`event`] does nothing from now on (shutdown). What is queued stays with the reporter.
pub(crate) fn uninstall() {
    *QUEUE.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Writes an application event to the Stardust server's app history (its `应用历史` page), as
/// the .NET client's `WriteEvent` does. Returns at once: the event is queued and posted by the
/// runtime's uploader in batches (at most 100 per request) about a second later, once logged
/// in; while the server is unreachable up to 1000 events wait, and further ones are dropped and
/// counted ([`dropped_events`]). Events still queued at shutdown are posted within the
/// shutdown budget.
///
/// `name` is cut to 50 characters and `remark` to 2000 (counted in UTF-16 units, as the server
/// counts). The time is the server's (corrected by the offset learnt at login).
///
/// Returns `true` when the event was queued; `false` before [`init`](crate::init()), after the
/// [`Guard`](crate::Guard) is dropped, without a Stardust server (nothing is sent then), or
/// when the queue is full.
///
/// ```no_run
/// use stardust_runtime::{EventKind, event};
/// let _guard = stardust_runtime::init!().unwrap();
/// event(EventKind::Info, "config/reload", "3 keys changed");
/// event(EventKind::Error, "payment/gateway", "circuit open for 30 s");
/// ```
pub fn event(kind: EventKind, name: &str, remark: &str) -> bool {
    let queue = QUEUE.read().unwrap_or_else(|e| e.into_inner());
    let Some(q) = queue.as_ref() else {
        log::debug!(
            "stardust: event `{name}` not sent: no Stardust server is configured, or the runtime is not running"
        );
        return false;
    };
    match q.tx.try_send(Event::new(kind, name, remark)) {
        Ok(()) => {
            // The first of a burst wakes the uploader; it waits a second for the rest.
            if q.tx.len() <= 1 {
                q.waker.wake();
            }
            true
        }
        Err(TrySendError::Full(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            if !DROP_LOGGED.swap(true, Ordering::Relaxed) {
                diag::report(
                    log::Level::Warn,
                    "events-dropped",
                    &format!(
                        "event `{name}` dropped: {CAPACITY} events are waiting to be posted to the Stardust server; further events are dropped and counted (stardust_runtime::dropped_events)"
                    ),
                    "is the Stardust server reachable? events wait until the reporter is logged in",
                );
            }
            false
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// Events dropped since [`init`](crate::init()) because the queue of events waiting to be posted
/// was full (see [`event`]).
pub fn dropped_events() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_and_written_as_dotnet_writes_them() {
        let e = Event::new(EventKind::Alert, &"订".repeat(60), &"x".repeat(2100));
        assert_eq!(e.name.chars().count(), MAX_NAME);
        assert_eq!(e.remark.len(), MAX_REMARK);
        let j = e.to_json();
        assert_eq!(j["Type"], "alert");
        assert!(j["Time"].as_i64().unwrap() > 1_700_000_000_000);
        let e = Event::new(EventKind::Info, &"😀".repeat(30), "");
        assert_eq!(e.name.chars().count(), 25, "50 UTF-16 units");
    }

    #[test]
    fn the_queue_starts_with_the_startup_event() {
        let (_tx, rx) = queue();
        let e = rx.try_recv().unwrap();
        assert_eq!((e.kind, e.name.as_str()), (EventKind::Info, STARTUP_NAME));
        assert!(
            e.remark
                .starts_with(&format!("pid={}, Name=", std::process::id())),
            "{}",
            e.remark
        );
        assert!(e.remark.contains(", FileName="));
    }
}
