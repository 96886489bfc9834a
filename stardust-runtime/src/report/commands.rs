//! Commands from the Stardust server ([docs/stardust-protocol.md §9](crate::docs::stardust_protocol)):
//! reading them from a ping reply, de-duplicating them by id, and running the handlers
//! registered with [`Config::command`](crate::Config::command) off the uploader thread, with a
//! time bound, each answered exactly once with a final status.
//!
//! The uploader thread owns a [`Dispatcher`]: it parses the `commands` of each ping reply,
//! drops ids it has seen ([`SeenIds`]), takes at most [`MAX_NEW_PER_REPLY`] new ones per reply
//! and hands them to the command thread (started with the first command). That thread cancels
//! expired commands, answers a command with a future start time with "processing" and keeps it
//! until it is due, and runs the others one at a time, each on a thread of its own in a span
//! `cmd:<name>` (the name as registered; [`UNKNOWN_COMMAND_OP`] for every command without a
//! handler) that continues the command's trace. A handler that runs past the time bound is
//! answered "timed out" and left to finish alone (its result is ignored). Replies go back to
//! the uploader, which posts them (`/App/CommandReply`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{Value, json};

use crate::clock;
use crate::report::sink::Waker;
use crate::span::context::entry_span;
use crate::util::diag::{REPEAT_AFTER, Throttle};
use crate::util::json::{get_ci, get_i64};
use crate::util::text::cut_utf16;
use crate::util::text::escaped;

/// A command handler: the command's argument (empty when it has none) in, the result text
/// (status Done) or an error text (status Error) out.
pub(crate) type Handler = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Default bound of a handler's run time.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The window of de-duplication: an id is remembered at least this long after the server last
/// sent it, and at least this long past its start time and its expiry, within
/// [`MAX_AHEAD_MS`]. Within it, however often the server re-sends a command, it is run and
/// answered once.
const SEEN_FOR_MS: i64 = 3_600_000;
/// How far past the time the server last sent an id its start time and expiry keep it
/// remembered: a day. Unbounded, ids with a start time or expiry years ahead, sent once, would
/// hold [`MAX_SEEN`]'s places for years and no new command would be taken again. The server
/// re-sends a scheduled command on every ping (docs/stardust-protocol.md §9.6), and each send
/// keeps its id a day ahead again, up to its start time and a window past it.
const MAX_AHEAD_MS: i64 = 86_400_000;
/// Most ids remembered. An id is never forgotten before its window has passed: while this many
/// are remembered, new commands are not taken (the server sends them again later).
const MAX_SEEN: usize = 10_000;
/// Most new commands taken from one ping reply: the most the server lists in one
/// (docs/stardust-protocol.md §9.1). Further new ones are left alone — not run, not answered,
/// not remembered — for a later reply: the server re-sends a command until it has a final
/// status. Answering them instead would cost a request each and need their ids remembered.
const MAX_NEW_PER_REPLY: usize = 100;
/// The operation of every command without a handler (one row, whatever names the server sends:
/// they never take the application's operation names); the name sent is the span's tag.
const UNKNOWN_COMMAND_OP: &str = "cmd:(unknown)";
/// Commands handed to the command thread and not yet taken; past it a command is refused.
const MAX_INBOX: usize = 256;
/// Commands waiting for their start time, and commands waiting for their turn.
const MAX_SCHEDULED: usize = 1000;
const MAX_READY: usize = 1000;
/// Handlers still running past their bound; past it new commands are refused (their threads
/// cannot be stopped, only not multiplied).
const MAX_LATE: usize = 4;
/// Longest `Data` the server stores (`AppCommand.Result`).
const MAX_DATA: usize = 500;
/// Unix ms of 2000-01-01: earlier command times mean "unset".
const YEAR_2000_MS: i64 = 946_684_800_000;

/// A command's final or interim status (`CommandStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Scheduled for its start time (the server keeps re-sending it).
    Processing = 1,
    Done = 2,
    /// Expired.
    Cancelled = 3,
    /// Failed: unknown command, handler error or panic, timed out, refused.
    Error = 4,
}

/// An answer to post to `/App/CommandReply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub id: i64,
    pub status: Status,
    pub data: Option<String>,
}

impl Reply {
    fn new(id: i64, status: Status, data: Option<String>) -> Reply {
        Reply {
            id,
            status,
            data: data.map(|d| cut_utf16(&d, MAX_DATA).to_owned()),
        }
    }

    /// `CommandReplyModel` as .NET writes it; `Status` as a number, no `null` member.
    pub(crate) fn to_json(&self) -> Value {
        let mut body = json!({"Id": self.id, "Status": self.status as i64});
        if let Some(d) = &self.data {
            body["Data"] = Value::String(d.clone());
        }
        body
    }
}

/// A command as delivered (`CommandModel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    pub id: i64,
    pub name: String,
    pub argument: Option<String>,
    /// Server time, Unix ms; `None` = unset.
    pub start_ms: Option<i64>,
    pub expire_ms: Option<i64>,
    pub trace_id: Option<String>,
}

/// The handlers by name, ignoring case (as .NET's dictionary).
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    map: HashMap<String, (String, Handler)>,
}

impl Handlers {
    fn key(name: &str) -> String {
        name.trim().to_lowercase()
    }

    /// Registers `handler` for `name`, replacing one registered before under any case.
    pub(crate) fn insert(&mut self, name: String, handler: Handler) {
        self.map.insert(Self::key(&name), (name, handler));
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Handler> {
        self.find(name).map(|(_, h)| h)
    }

    /// The handler for `name` with its name as registered.
    fn find(&self, name: &str) -> Option<(&str, &Handler)> {
        self.map
            .get(&Self::key(name))
            .map(|(registered, h)| (registered.as_str(), h))
    }

    /// The names as registered, sorted (for `Config`'s `Debug`).
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.map.values().map(|(n, _)| n.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// These handlers plus the built-in ones not overridden (see [`builtins`]).
    pub(crate) fn with_builtins(mut self) -> Handlers {
        for (name, h) in builtins() {
            if self.get(name).is_none() {
                self.insert(name.to_owned(), h);
            }
        }
        self
    }
}

/// The built-in handlers. Of the .NET built-ins (docs/stardust-protocol.md §9.7) only
/// `app/freeMemory` has a Rust meaning, and only with glibc: `malloc_trim` hands the allocator's
/// free memory back to the system. Everything else (`registry/*`, `config/publish`,
/// `App/Upgrade`) is answered as unknown.
fn builtins() -> Vec<(&'static str, Handler)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        vec![("app/freeMemory", Arc::new(|_: &str| Ok(free_memory())))]
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        Vec::new()
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_memory() -> String {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    use crate::util::host::rss_kb;
    let before = rss_kb();
    // SAFETY: glibc's `malloc_trim` takes a plain size, touches only the allocator's own
    // state (under its locks) and may be called from any thread at any time.
    let released = unsafe { malloc_trim(0) } == 1;
    let after = rss_kb();
    let what = if released {
        "memory returned to the system"
    } else {
        "nothing to return"
    };
    match (before, after) {
        (Some(b), Some(a)) => format!("OK: {what}, RSS {} MB -> {} MB", b / 1024, a / 1024),
        _ => format!("OK: {what}"),
    }
}

// ---- reading commands ---------------------------------------------------------------------

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A `CommandModel` (camelCase from a ping, PascalCase from the WebSocket); `None` when it is
/// not an object or has no usable id.
pub(crate) fn parse_command(v: &Value) -> Option<Command> {
    let o = v.as_object()?;
    let id = get_i64(o, "id")?;
    Some(Command {
        id,
        name: text_of(get_ci(o, "command")).unwrap_or_default(),
        argument: text_of(get_ci(o, "argument")),
        start_ms: get_ci(o, "startTime").and_then(parse_time),
        expire_ms: get_ci(o, "expire").and_then(parse_time),
        trace_id: text_of(get_ci(o, "traceId")).filter(|t| !t.trim().is_empty()),
    })
}

/// A command time as Unix ms (docs/stardust-protocol.md §9.2): `yyyy-MM-dd HH:mm:ss`,
/// `yyyy-MM-ddTHH:mm:ss[.fffffff]`, each with `Z`, an offset `±hh:mm` or no zone (read as UTC,
/// as .NET reads it), or a Unix time number (ms above 3,153,600,000, else s). Before 2000,
/// `""`, `null` or unreadable: unset (`None`).
pub(crate) fn parse_time(v: &Value) -> Option<i64> {
    let ms = match v {
        Value::Number(n) => {
            let t = n.as_i64()?;
            if t > 3_153_600_000 {
                t
            } else {
                t.checked_mul(1000)?
            }
        }
        Value::String(s) => parse_time_text(s.trim())?,
        _ => return None,
    };
    (ms >= YEAR_2000_MS).then_some(ms)
}

fn parse_time_text(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day).checked_mul(86_400_000)?;
    let mut i = 10;
    if matches!(b.get(i), Some(b'T' | b't' | b' ')) {
        let (h, mi) = (num(i + 1, 2)?, num(i + 4, 2)?);
        if b.get(i + 3) != Some(&b':') || h > 23 || mi > 59 {
            return None;
        }
        ms += (h * 3600 + mi * 60) * 1000;
        i += 6;
        if b.get(i) == Some(&b':') {
            let sec = num(i + 1, 2)?;
            if sec > 60 {
                return None;
            }
            ms += sec * 1000;
            i += 3;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 {
                    return None;
                }
                let frac: i64 = b[i..i + digits.min(3)]
                    .iter()
                    .fold(0, |n, d| n * 10 + i64::from(d - b'0'));
                ms += frac * [100, 10, 1][digits.min(3) - 1];
                i += digits;
            }
        }
    }
    match &b[i..] {
        [] | [b'Z' | b'z'] => Some(ms),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [_, _, b':', _, _] => (num(i + 1, 2)?, num(i + 4, 2)?),
                [_, _, _, _] => (num(i + 1, 2)?, num(i + 3, 2)?),
                [_, _] => (num(i + 1, 2)?, 0),
                _ => return None,
            };
            let offset = (h * 60 + m) * 60_000;
            Some(if *sign == b'+' {
                ms - offset
            } else {
                ms + offset
            })
        }
        _ => None,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `yyyy-MM-ddTHH:mm:ssZ` of Unix ms.
fn format_utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let secs = ms.rem_euclid(86_400_000) / 1000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// ---- the uploader's side ------------------------------------------------------------------

/// The ids taken, each until it may be forgotten: lookup, insertion and forgetting in constant
/// time (amortised), memory bounded by [`MAX_SEEN`].
///
/// `ids` holds each id's time to forget it (server Unix ms, see [`window_end`]); `checks`
/// holds every remembered id once, in the order it is due to be looked at again,
/// [`SEEN_FOR_MS`] after it was queued. Queue times only grow, so the front is always the next
/// due: [`SeenIds::forget_due`] pops from the front, forgets the ids whose time has come and
/// queues the others (sent again since, or with a later start time or expiry) once more, at
/// most once per window.
#[derive(Default)]
struct SeenIds {
    ids: HashMap<i64, Remembered>,
    checks: VecDeque<(i64, i64)>,
    /// The latest `now` seen: queue times never go back when the server's clock does.
    now: i64,
}

/// One remembered id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remembered {
    /// When it may be forgotten.
    until: i64,
    /// The later of its start time and expiry (0: neither).
    latest: i64,
}

/// When an id the server sent at `now`, with start time and expiry at most `latest`, may be
/// forgotten: a window after `now`, and a window past `latest` as long as that is at most
/// [`MAX_AHEAD_MS`] after `now`.
fn window_end(now: i64, latest: i64) -> i64 {
    latest
        .saturating_add(SEEN_FOR_MS)
        .min(now.saturating_add(MAX_AHEAD_MS))
        .max(now.saturating_add(SEEN_FOR_MS))
}

impl SeenIds {
    /// Forgets the ids whose window has passed by `now`.
    fn forget_due(&mut self, now: i64) {
        self.now = self.now.max(now);
        while let Some(&(due, id)) = self.checks.front() {
            if due > self.now {
                break;
            }
            self.checks.pop_front();
            match self.ids.get(&id) {
                Some(r) if r.until > self.now => self
                    .checks
                    .push_back((self.now.saturating_add(SEEN_FOR_MS), id)),
                _ => {
                    self.ids.remove(&id);
                }
            }
        }
    }

    /// Whether `id` was taken before; if so, its window starts again at `now` (see
    /// [`window_end`]).
    fn seen_again(&mut self, id: i64, now: i64) -> bool {
        match self.ids.get_mut(&id) {
            Some(r) => {
                r.until = r.until.max(window_end(now, r.latest));
                true
            }
            None => false,
        }
    }

    fn is_full(&self) -> bool {
        self.len() >= MAX_SEEN
    }

    /// Remembers a new id sent at `now` (see [`window_end`]).
    fn insert(&mut self, cmd: &Command, now: i64) {
        let latest = cmd.start_ms.unwrap_or(0).max(cmd.expire_ms.unwrap_or(0));
        let r = Remembered {
            until: window_end(now, latest),
            latest,
        };
        if self.ids.insert(cmd.id, r).is_none() {
            self.checks
                .push_back((self.now.max(now).saturating_add(SEEN_FOR_MS), cmd.id));
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// What became of the commands of one ping reply, for its one log line.
#[derive(Default)]
struct ReplyTally {
    taken: usize,
    /// New, past [`MAX_NEW_PER_REPLY`].
    over_bound: usize,
    /// New, while [`MAX_SEEN`] ids are remembered.
    memory_full: usize,
    /// Not a command, or no id or no name.
    unusable: usize,
    /// Taken, and answered with an error at once (the command thread is busy or gone).
    refused: usize,
    refused_why: String,
}

impl ReplyTally {
    /// Logs [`ReplyTally::line`].
    fn log(&self, listed: usize, warnings: &mut ReplyWarnings, now: Instant) {
        if let Some((level, line)) = self.line(listed, warnings, now) {
            log::log!(level, "{line}");
        }
    }

    /// One line for the whole reply (counts only, never a command's name or argument), none
    /// when every listed command was taken or was a repeat. Commands left for later or
    /// refused make it a warning as [`ReplyWarnings`] allows, otherwise it is debug.
    fn line(
        &self,
        listed: usize,
        warnings: &mut ReplyWarnings,
        now: Instant,
    ) -> Option<(log::Level, String)> {
        let left = self.over_bound + self.memory_full;
        if left + self.unusable + self.refused == 0 {
            return None;
        }
        let w = warnings;
        let mut warn = false;
        for (n, throttle) in [
            (self.over_bound, &mut w.over_bound),
            (self.memory_full, &mut w.memory_full),
            (self.refused, &mut w.refused),
        ] {
            // Every condition present is counted, also when an earlier one already warns.
            if n > 0 && throttle.due(now).is_some() {
                warn = true;
            }
        }
        let mut parts = vec![format!("{} new ones taken", self.taken)];
        if self.over_bound > 0 {
            parts.push(format!(
                "{} left for a later reply (at most {MAX_NEW_PER_REPLY} new ones are taken per reply)",
                self.over_bound
            ));
        }
        if self.memory_full > 0 {
            parts.push(format!(
                "{} left for a later reply ({MAX_SEEN} ids taken recently are remembered)",
                self.memory_full
            ));
        }
        if self.unusable > 0 {
            parts.push(format!(
                "{} ignored (not a command, or no id or no name)",
                self.unusable
            ));
        }
        if self.refused > 0 {
            parts.push(format!(
                "{} answered with an error ({})",
                self.refused, self.refused_why
            ));
        }
        let mut line = format!(
            "stardust: a ping reply listed {listed} commands: {}",
            parts.join(", ")
        );
        if !warn {
            if left + self.refused > 0 {
                w.held_replies += 1;
                w.held_left += left;
                w.held_refused += self.refused;
            }
            return Some((log::Level::Debug, line));
        }
        if w.held_replies > 0 {
            line.push_str(&format!(
                "; since the last warning, {} more replies left {} commands for a later reply \
                 and {} were answered with an error",
                w.held_replies, w.held_left, w.held_refused
            ));
            (w.held_replies, w.held_left, w.held_refused) = (0, 0, 0);
        }
        line.push_str(&format!(
            "; more of the same within {} minutes is logged at debug level",
            REPEAT_AFTER.as_secs() / 60
        ));
        Some((log::Level::Warn, line))
    }
}

/// When the line of a ping reply with commands left for later or refused is a warning: the
/// first time each of the conditions (left past the bound of a reply, left while the id memory
/// is full, refused) occurs, then at most once every [`REPEAT_AFTER`] per condition; with the
/// counts of the lines logged at debug level in between. A server that lists more new commands
/// than are taken on every ping (every second, at its shortest period) would otherwise give one
/// warning per ping for as long as it does.
#[derive(Default)]
struct ReplyWarnings {
    over_bound: Throttle,
    memory_full: Throttle,
    refused: Throttle,
    /// Since the last warning: replies with commands left or refused logged at debug level,
    /// and the commands they left for later and refused.
    held_replies: usize,
    held_left: usize,
    held_refused: usize,
}

/// What the uploader thread keeps: seen ids, the way to the command thread, the replies.
pub(crate) struct Dispatcher {
    handlers: Arc<Handlers>,
    timeout: Duration,
    waker: Waker,
    seen: SeenIds,
    warnings: ReplyWarnings,
    inbox: Option<Sender<Command>>,
    replies_tx: Sender<Reply>,
    replies_rx: Receiver<Reply>,
    thread_failed: bool,
}

impl Dispatcher {
    pub(crate) fn new(handlers: Handlers, timeout: Duration, waker: Waker) -> Dispatcher {
        let (replies_tx, replies_rx) = crossbeam_channel::unbounded();
        Dispatcher {
            handlers: Arc::new(handlers.with_builtins()),
            timeout,
            waker,
            seen: SeenIds::default(),
            warnings: ReplyWarnings::default(),
            inbox: None,
            replies_tx,
            replies_rx,
            thread_failed: false,
        }
    }

    /// Replies ready to post, oldest first.
    pub(crate) fn replies(&self) -> &Receiver<Reply> {
        &self.replies_rx
    }

    /// The `listed` commands of a ping reply, which `each` hands over one at a time: ids seen
    /// before are dropped without a reply (the server re-sends until it has a final one); of
    /// the new ones the first [`MAX_NEW_PER_REPLY`] go to the command thread (while fewer than
    /// [`MAX_SEEN`] ids are remembered), the others are left for a later reply. One log line
    /// tells what was left, ignored or refused, however long the list.
    pub(crate) fn receive_each(
        &mut self,
        listed: usize,
        each: impl FnOnce(&mut dyn FnMut(&Value)),
    ) {
        let now = clock::unix_ms_now();
        self.seen.forget_due(now);
        let mut tally = ReplyTally::default();
        each(&mut |v| self.take(v, now, &mut tally));
        tally.log(listed, &mut self.warnings, Instant::now());
    }

    /// One listed command (see [`Dispatcher::receive_each`]).
    fn take(&mut self, v: &Value, now: i64, tally: &mut ReplyTally) {
        // The id alone first: a repeat costs a lookup, whatever else it carries.
        let id = v.as_object().and_then(|o| get_i64(o, "id"));
        if id.is_some_and(|id| self.seen.seen_again(id, now)) {
            return;
        }
        if tally.taken >= MAX_NEW_PER_REPLY {
            tally.over_bound += 1;
            return;
        }
        if self.seen.is_full() {
            tally.memory_full += 1;
            return;
        }
        let Some(cmd) = parse_command(v) else {
            tally.unusable += 1;
            return;
        };
        if cmd.id <= 0 || cmd.name.trim().is_empty() {
            // As .NET: no name, nothing to run; id 0 cannot be answered.
            tally.unusable += 1;
            return;
        }
        self.seen.insert(&cmd, now);
        tally.taken += 1;
        log::debug!(
            "stardust: command {} `{}` received",
            cmd.id,
            escaped(&cmd.name)
        );
        if let Some(why) = self.dispatch(cmd) {
            tally.refused += 1;
            tally.refused_why = why;
        }
    }

    /// Hands `cmd` to the command thread; when it cannot take it, answers it with an error and
    /// returns why.
    fn dispatch(&mut self, cmd: Command) -> Option<String> {
        if self.inbox.is_none() && !self.thread_failed {
            self.inbox = self.spawn();
            self.thread_failed = self.inbox.is_none();
        }
        let (cmd, why) = match &self.inbox {
            None => (cmd, "the command thread could not be started".to_owned()),
            Some(tx) => match tx.try_send(cmd) {
                Ok(()) => return None,
                Err(TrySendError::Full(cmd)) => (
                    cmd,
                    format!("busy: {MAX_INBOX} commands are waiting to run"),
                ),
                Err(TrySendError::Disconnected(cmd)) => {
                    (cmd, "the command thread has stopped".to_owned())
                }
            },
        };
        let _ = self
            .replies_tx
            .send(Reply::new(cmd.id, Status::Error, Some(why.clone())));
        self.waker.wake();
        Some(why)
    }

    fn spawn(&self) -> Option<Sender<Command>> {
        let (tx, rx) = crossbeam_channel::bounded(MAX_INBOX);
        let (results_tx, results_rx) = crossbeam_channel::unbounded();
        let worker = Worker {
            inbox: rx,
            handlers: self.handlers.clone(),
            timeout: self.timeout,
            out: self.replies_tx.clone(),
            waker: self.waker.clone(),
            results_tx,
            results_rx,
            scheduled: BinaryHeap::new(),
            ready: VecDeque::new(),
            running: None,
            late: HashSet::new(),
            next_seq: 0,
            refused: 0,
            refused_why: String::new(),
            refused_warning: Throttle::default(),
            refused_held: 0,
        };
        match std::thread::Builder::new()
            .name("stardust-commands".into())
            .spawn(move || worker.run())
        {
            Ok(_) => Some(tx),
            Err(e) => {
                crate::util::diag::report(
                    log::Level::Error,
                    "command-thread",
                    &format!(
                        "the command thread could not be started ({e}); commands are answered with an error"
                    ),
                    "",
                );
                None
            }
        }
    }
}

// ---- the command thread -------------------------------------------------------------------

/// How a handler's run ended.
enum Outcome {
    Ok(String),
    Err(String),
    Panicked(String),
}

struct Running {
    seq: u64,
    id: i64,
    name: String,
    deadline: Instant,
}

struct Worker {
    inbox: Receiver<Command>,
    handlers: Arc<Handlers>,
    timeout: Duration,
    out: Sender<Reply>,
    waker: Waker,
    results_tx: Sender<(u64, Outcome)>,
    results_rx: Receiver<(u64, Outcome)>,
    /// Commands waiting for their start time: (start, arrival order, command).
    scheduled: BinaryHeap<Reverse<(i64, u64, CommandOrd)>>,
    ready: VecDeque<Command>,
    running: Option<Running>,
    /// Runs that timed out and have not returned yet.
    late: HashSet<u64>,
    next_seq: u64,
    /// Commands refused since the last log line about it, and the last reason.
    refused: usize,
    refused_why: String,
    /// When that line is a warning, and the commands refused in debug lines since the last.
    refused_warning: Throttle,
    refused_held: usize,
}

/// A command in the schedule heap, ordered only by the heap's other keys.
struct CommandOrd(Command);

impl PartialEq for CommandOrd {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for CommandOrd {}
impl PartialOrd for CommandOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for CommandOrd {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// The longest the command thread sleeps without looking at the clock (the server offset may
/// change while a command waits for its start time).
const MAX_SLEEP: Duration = Duration::from_secs(10);

impl Worker {
    fn run(mut self) {
        loop {
            self.start_next();
            if self.inbox.is_empty() {
                self.log_refused();
            }
            let now_ms = clock::unix_ms_now();
            let mut wait = MAX_SLEEP;
            if let Some(Reverse((start, _, _))) = self.scheduled.peek() {
                wait = wait.min(Duration::from_millis(
                    start.saturating_sub(now_ms).max(0) as u64
                ));
            }
            if let Some(r) = &self.running {
                wait = wait.min(r.deadline.saturating_duration_since(Instant::now()));
            }
            crossbeam_channel::select! {
                recv(self.inbox) -> cmd => match cmd {
                    Ok(cmd) => self.accept(cmd),
                    // The reporter is gone: nobody could post a reply any more.
                    Err(_) => return,
                },
                recv(self.results_rx) -> r => {
                    if let Ok((seq, outcome)) = r {
                        self.finished(seq, outcome);
                    }
                },
                default(wait) => {},
            }
            self.check_deadline();
            self.release_due();
        }
    }

    fn reply(&self, id: i64, status: Status, data: Option<String>) {
        let _ = self.out.send(Reply::new(id, status, data));
        self.waker.wake();
    }

    /// A command from the ping: cancelled when expired, scheduled when its start time is
    /// ahead, else queued to run.
    fn accept(&mut self, cmd: Command) {
        let now = clock::unix_ms_now();
        if self.cancel_if_expired(&cmd, now) {
            return;
        }
        match cmd.start_ms {
            Some(start) if start > now => {
                if self.scheduled.len() >= MAX_SCHEDULED {
                    self.refuse(
                        &cmd,
                        format!("busy: {MAX_SCHEDULED} commands are scheduled"),
                    );
                    return;
                }
                log::debug!(
                    "stardust: command {} `{}` scheduled for {}",
                    cmd.id,
                    escaped(&cmd.name),
                    format_utc(start)
                );
                // As .NET: "scheduled for <time>"; the final status follows when it has run.
                self.reply(
                    cmd.id,
                    Status::Processing,
                    Some(format!("已安排计划执行 {}", format_utc(start))),
                );
                self.next_seq += 1;
                self.scheduled
                    .push(Reverse((start, self.next_seq, CommandOrd(cmd))));
            }
            _ => self.enqueue(cmd),
        }
    }

    fn enqueue(&mut self, cmd: Command) {
        if self.ready.len() >= MAX_READY {
            self.refuse(
                &cmd,
                format!("busy: {MAX_READY} commands are waiting to run"),
            );
        } else {
            self.ready.push_back(cmd);
        }
    }

    /// Answers `cmd` with an error; the refusals of a batch are logged together once the
    /// inbox is empty ([`Worker::log_refused`]).
    fn refuse(&mut self, cmd: &Command, why: String) {
        log::debug!(
            "stardust: command {} `{}` refused: {}",
            cmd.id,
            escaped(&cmd.name),
            escaped(&why)
        );
        self.refused += 1;
        self.reply(cmd.id, Status::Error, Some(why.clone()));
        self.refused_why = why;
    }

    /// One line for the commands refused since the last one: a warning the first time and at
    /// most once every [`REPEAT_AFTER`] after it (with the count refused in between), debug
    /// otherwise, as [`ReplyWarnings`] does for the uploader's lines.
    fn log_refused(&mut self) {
        if self.refused == 0 {
            return;
        }
        let line = format!(
            "stardust: {} commands refused, answered with an error ({})",
            self.refused,
            escaped(&self.refused_why)
        );
        if self.refused_warning.due(Instant::now()).is_some() {
            let held = std::mem::take(&mut self.refused_held);
            let since = if held > 0 {
                format!("; {held} more refused since the last warning")
            } else {
                String::new()
            };
            log::warn!(
                "{line}{since}; more within {} minutes is logged at debug level",
                REPEAT_AFTER.as_secs() / 60
            );
        } else {
            self.refused_held += self.refused;
            log::debug!("{line}");
        }
        self.refused = 0;
    }

    /// Answers Cancelled when the command's expiry has passed (server time).
    fn cancel_if_expired(&self, cmd: &Command, now: i64) -> bool {
        let Some(expire) = cmd.expire_ms.filter(|e| *e <= now) else {
            return false;
        };
        let registered = self.handlers.find(&cmd.name).map(|(n, _)| n);
        let mut span = command_span(cmd, registered);
        let expired = format!("expired at {}", format_utc(expire));
        span.set_tag(match registered {
            Some(_) => expired,
            None => format!("{} {expired}", cmd.name),
        });
        drop(span);
        log::debug!(
            "stardust: command {} `{}` expired at {}; cancelled",
            cmd.id,
            escaped(&cmd.name),
            format_utc(expire)
        );
        self.reply(cmd.id, Status::Cancelled, None);
        true
    }

    /// Moves scheduled commands whose start time has come to the run queue.
    fn release_due(&mut self) {
        let now = clock::unix_ms_now();
        while self
            .scheduled
            .peek()
            .is_some_and(|Reverse((start, _, _))| *start <= now)
        {
            let Some(Reverse((_, _, CommandOrd(cmd)))) = self.scheduled.pop() else {
                break;
            };
            self.enqueue(cmd);
        }
    }

    /// Starts the next queued command when none runs.
    fn start_next(&mut self) {
        while self.running.is_none() {
            let Some(cmd) = self.ready.pop_front() else {
                return;
            };
            if self.cancel_if_expired(&cmd, clock::unix_ms_now()) {
                continue;
            }
            let Some((registered, handler)) = self
                .handlers
                .find(&cmd.name)
                .map(|(n, h)| (n.to_owned(), h.clone()))
            else {
                // The text .NET answers (its ApiException 404 "service not found").
                let text = format!("找不到服务[{}]", cmd.name);
                let mut span = command_span(&cmd, None);
                span.set_error(&text);
                drop(span);
                log::debug!(
                    "stardust: command {} `{}`: no handler",
                    cmd.id,
                    escaped(&cmd.name)
                );
                self.reply(cmd.id, Status::Error, Some(text));
                continue;
            };
            if self.late.len() >= MAX_LATE {
                self.refuse(
                    &cmd,
                    format!(
                        "busy: {MAX_LATE} command handlers are still running past their time bound"
                    ),
                );
                continue;
            }
            self.next_seq += 1;
            let seq = self.next_seq;
            let results = self.results_tx.clone();
            let timeout = self.timeout;
            let (id, name) = (cmd.id, cmd.name.clone());
            let spawned = std::thread::Builder::new()
                .name("stardust-command".into())
                .spawn(move || {
                    let outcome = run_handler(&cmd, &registered, &handler, timeout);
                    let _ = results.send((seq, outcome));
                });
            match spawned {
                Ok(_) => {
                    self.running = Some(Running {
                        seq,
                        id,
                        name,
                        deadline: Instant::now() + timeout,
                    });
                }
                Err(e) => self.reply(
                    id,
                    Status::Error,
                    Some(format!("could not start a thread for the command: {e}")),
                ),
            }
        }
    }

    fn finished(&mut self, seq: u64, outcome: Outcome) {
        if self.late.remove(&seq) {
            log::debug!(
                "stardust: a command handler that timed out has returned; its result is ignored"
            );
            return;
        }
        let Some(r) = self.running.take_if(|r| r.seq == seq) else {
            return;
        };
        let (status, data) = match outcome {
            Outcome::Ok(text) => (Status::Done, text),
            Outcome::Err(text) => (Status::Error, text),
            Outcome::Panicked(text) => {
                log::warn!(
                    "stardust: the handler of command `{}` panicked: {}",
                    escaped(&r.name),
                    escaped(&text)
                );
                (Status::Error, text)
            }
        };
        log::debug!(
            "stardust: command {} `{}`: {status:?}",
            r.id,
            escaped(&r.name)
        );
        self.reply(r.id, status, Some(data));
    }

    /// Answers a handler that ran past its bound "timed out" and stops waiting for it.
    fn check_deadline(&mut self) {
        let Some(r) = self.running.take_if(|r| Instant::now() >= r.deadline) else {
            return;
        };
        log::warn!(
            "stardust: the handler of command {} `{}` did not return within {:?}; answered as timed out",
            r.id,
            escaped(&r.name),
            self.timeout
        );
        self.late.insert(r.seq);
        self.reply(
            r.id,
            Status::Error,
            Some(format!(
                "timed out after {} ms (the handler keeps running; its result is ignored)",
                self.timeout.as_millis()
            )),
        );
    }
}

/// The span of a command, continuing its trace (a W3C traceparent, or a bare trace id from the
/// WebSocket) when it has one. With a handler it is `cmd:<name as registered>` (one operation
/// per handler, however the server spells the name) and its tag, when sampled, is the
/// argument; without, it is [`UNKNOWN_COMMAND_OP`] and its tag the name the server sent: names
/// that come from the server never become operation names.
fn command_span(cmd: &Command, registered: Option<&str>) -> crate::span::guard::SpanGuard {
    let headers: Vec<(&str, &str)> = cmd
        .trace_id
        .as_deref()
        .map(|t| ("TraceId", t.trim()))
        .into_iter()
        .collect();
    match registered {
        Some(name) => {
            let mut span = entry_span(format!("cmd:{name}"), &headers);
            if let Some(arg) = cmd.argument.as_deref().filter(|a| !a.is_empty()) {
                span.tag_with(|| arg.to_owned());
            }
            span
        }
        None => {
            let mut span = entry_span(UNKNOWN_COMMAND_OP, &headers);
            span.tag_with(|| cmd.name.clone());
            span
        }
    }
}

/// Runs one handler (registered as `registered`) in its span, catching a panic.
fn run_handler(cmd: &Command, registered: &str, handler: &Handler, timeout: Duration) -> Outcome {
    let mut span = command_span(cmd, Some(registered));
    let started = Instant::now();
    let arg = cmd.argument.as_deref().unwrap_or("");
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(arg))) {
        Ok(Ok(text)) => Outcome::Ok(text),
        Ok(Err(text)) => Outcome::Err(text),
        Err(p) => Outcome::Panicked(
            crate::util::text::panic_text(&*p).unwrap_or_else(|| "the handler panicked".to_owned()),
        ),
    };
    match &outcome {
        Outcome::Ok(_) if started.elapsed() > timeout => span.set_error("timed out"),
        Outcome::Ok(_) => {}
        Outcome::Err(e) | Outcome::Panicked(e) => span.set_error(e),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Option<i64> {
        parse_time(&Value::String(s.to_owned()))
    }

    const T: i64 = 1_785_665_100_000; // 2026-08-02T10:05:00Z

    #[test]
    fn command_times_read_in_every_form_the_server_writes() {
        assert_eq!(format_utc(T), "2026-08-02T10:05:00Z");
        // Ping reply, UTC (App.Compile ≥ 2025) and server-local (zone-less, read as UTC).
        assert_eq!(ms("2026-08-02T10:05:00.0000000Z"), Some(T));
        assert_eq!(ms("2026-08-02T10:05:00.1234567Z"), Some(T + 123));
        assert_eq!(ms("2026-08-02 10:05:00"), Some(T));
        // WebSocket forms.
        assert_eq!(ms("2026-08-02T10:05:00Z"), Some(T));
        assert_eq!(ms("2026-08-02T10:05:00"), Some(T));
        // Offsets, minutes only, a date alone, numbers.
        assert_eq!(ms("2026-08-02T18:05:00+08:00"), Some(T));
        assert_eq!(ms("2026-08-02T05:05:00-0500"), Some(T));
        assert_eq!(ms("2026-08-02T10:05"), Some(T));
        assert_eq!(ms("2026-08-02"), Some(T - 36_300_000));
        assert_eq!(parse_time(&json!(T)), Some(T));
        assert_eq!(parse_time(&json!(T / 1000)), Some(T));
        // Unset.
        for unset in [
            "0001-01-01 00:00:00",
            "",
            "1999-12-31 23:59:59",
            "garbage",
            "2026-13-01",
        ] {
            assert_eq!(ms(unset), None, "{unset}");
        }
        assert_eq!(parse_time(&Value::Null), None);
        assert_eq!(ms("2000-01-01 00:00:00"), Some(YEAR_2000_MS));
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn command_models_read_ignoring_case() {
        let c = parse_command(&json!({
            "id": 7, "command": "app/echo", "argument": "hi",
            "startTime": "0001-01-01 00:00:00", "expire": "2026-08-02T10:05:00.0000000Z",
            "traceId": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "status": 0
        }))
        .unwrap();
        assert_eq!(
            (c.id, c.name.as_str(), c.argument.as_deref()),
            (7, "app/echo", Some("hi"))
        );
        assert_eq!((c.start_ms, c.expire_ms), (None, Some(T)));
        let c = parse_command(
            &json!({"Id": "8", "Command": "x", "Argument": null, "StartTime": "", "TraceId": ""}),
        )
        .unwrap();
        assert_eq!(
            (c.id, c.argument, c.start_ms, c.trace_id),
            (8, None, None, None)
        );
        assert!(parse_command(&json!({"command": "x"})).is_none());
        assert!(parse_command(&json!([1])).is_none());
    }

    #[test]
    fn replies_are_pascal_case_without_null() {
        let r = Reply::new(3, Status::Done, Some("订".repeat(600)));
        let j = r.to_json();
        assert_eq!(j["Status"], 2);
        assert_eq!(j["Data"].as_str().unwrap().chars().count(), MAX_DATA);
        assert_eq!(
            Reply::new(4, Status::Cancelled, None).to_json(),
            json!({"Id": 4, "Status": 3})
        );
    }

    #[test]
    fn handlers_are_found_ignoring_case_and_override_builtins() {
        let mut h = Handlers::default();
        h.insert("App/Echo".into(), Arc::new(|a: &str| Ok(a.to_owned())));
        h.insert(
            "app/freememory".into(),
            Arc::new(|_: &str| Err("no".into())),
        );
        let h = h.with_builtins();
        assert!(h.get("APP/ECHO").is_some());
        assert_eq!(h.get("app/freeMemory").unwrap()(""), Err("no".to_owned()));
        assert_eq!(h.names(), ["App/Echo", "app/freememory"]);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn free_memory_is_built_in_with_glibc() {
        let h = Handlers::default().with_builtins();
        let out = h.get("APP/FREEMEMORY").unwrap()("").unwrap();
        assert!(out.starts_with("OK"), "{out}");
    }

    fn cmd(id: i64, start: Option<i64>) -> Command {
        Command {
            id,
            name: "x".into(),
            argument: None,
            start_ms: start,
            expire_ms: None,
            trace_id: None,
        }
    }

    #[test]
    fn ids_are_remembered_a_window_past_start_expiry_and_the_last_send() {
        let mut seen = SeenIds::default();
        let now = T;
        seen.insert(&cmd(1, None), now);
        seen.insert(&cmd(2, Some(now + 10 * SEEN_FOR_MS)), now);
        seen.insert(&cmd(3, None), now);
        assert_eq!(seen.ids[&1].until, now + SEEN_FOR_MS);
        assert_eq!(seen.ids[&2].until, now + 11 * SEEN_FOR_MS);
        // Sent again half a window later: remembered a window from then.
        let later = now + SEEN_FOR_MS / 2;
        seen.forget_due(later);
        assert!(seen.seen_again(3, later));
        assert!(!seen.seen_again(4, later));
        // A window on, only the one not sent again is forgotten.
        seen.forget_due(now + SEEN_FOR_MS);
        assert!(!seen.ids.contains_key(&1));
        assert!(seen.ids.contains_key(&2) && seen.ids.contains_key(&3));
        seen.forget_due(now + 2 * SEEN_FOR_MS);
        assert!(
            !seen.ids.contains_key(&3),
            "forgotten a window after its last send"
        );
        assert!(seen.ids.contains_key(&2), "kept a window past its start");
        seen.forget_due(now + 12 * SEEN_FOR_MS);
        assert_eq!((seen.len(), seen.checks.len()), (0, 0));
    }

    /// A start time or expiry keeps an id at most a day past its last send; each send moves
    /// that day on, up to a window past the start time.
    #[test]
    fn start_and_expiry_keep_an_id_at_most_a_day_past_its_last_send() {
        let mut seen = SeenIds::default();
        let now = T;
        let years = now + 3_000 * MAX_AHEAD_MS;
        seen.insert(&cmd(1, Some(years)), now);
        seen.insert(
            &Command {
                expire_ms: Some(years),
                ..cmd(2, None)
            },
            now,
        );
        let start = now + 2 * MAX_AHEAD_MS;
        seen.insert(&cmd(3, Some(start)), now);
        for id in 1..=3 {
            assert_eq!(seen.ids[&id].until, now + MAX_AHEAD_MS, "{id}");
        }
        // Id 3 is sent again on every ping, as the server sends a scheduled command: it stays
        // remembered until a window past its start.
        let mut t = now;
        while t < start + 2 * SEEN_FOR_MS {
            t += SEEN_FOR_MS / 2;
            seen.forget_due(t);
            if t <= start {
                assert!(seen.seen_again(3, t), "remembered while scheduled, at {t}");
            }
        }
        assert!(seen.ids.is_empty(), "{:?}", seen.ids);
        assert!(seen.checks.is_empty());
    }

    /// 10,000 ids expiring in years fill the memory: no new command is taken while they are
    /// remembered, and new ones are taken again a day after the server last sent them.
    #[test]
    fn ids_expiring_in_years_do_not_block_new_commands_for_more_than_a_day() {
        let (waker, _rx) = crate::report::sink::waker();
        let mut d = Dispatcher::new(Handlers::default(), DEFAULT_TIMEOUT, waker);
        d.thread_failed = true;
        let list: Vec<Value> = (1..=MAX_SEEN as i64)
            .map(|id| json!({"id": id, "command": "x", "expire": "2999-01-01T00:00:00Z"}))
            .collect();
        for _ in 0..MAX_SEEN / MAX_NEW_PER_REPLY {
            d.receive(&list);
        }
        assert_eq!(d.seen.len(), MAX_SEEN);
        assert_eq!(d.replies().try_iter().count(), MAX_SEEN);
        let new = [json!({"id": MAX_SEEN + 1, "command": "x"})];
        d.receive(&new);
        assert_eq!(d.replies().try_iter().count(), 0, "full: nothing new taken");
        // A day and a window later, without those ids sent again.
        let later = clock::unix_ms_now() + MAX_AHEAD_MS + SEEN_FOR_MS;
        d.seen.forget_due(later);
        assert_eq!(d.seen.len(), 0);
        d.receive(&new);
        let answered: Vec<i64> = d.replies().try_iter().map(|r| r.id).collect();
        assert_eq!(
            answered,
            [MAX_SEEN as i64 + 1],
            "a new command is taken again"
        );
    }

    /// A server that leaves commands over on every ping: a warning the first time each
    /// condition occurs and once per window after it, counting what the debug lines between
    /// held; never a warning for commands that are only unusable.
    #[test]
    fn a_reply_warns_once_per_condition_and_window_and_counts_what_it_held_back() {
        use log::Level::{Debug, Warn};
        let mut w = ReplyWarnings::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut level = |tally: &ReplyTally, listed: usize, now: Instant| {
            tally.line(listed, &mut w, now).map(|(level, line)| {
                eprintln!("{level}: {line}");
                (level, line)
            })
        };
        let over = ReplyTally {
            taken: 100,
            over_bound: 900,
            ..ReplyTally::default()
        };
        let (l, first) = level(&over, 1000, at(0)).unwrap();
        assert_eq!(l, Warn);
        assert!(first.contains("900 left for a later reply") && !first.contains("since"));
        // One ping a second: debug lines.
        for s in 1..100 {
            assert_eq!(level(&over, 1000, at(s)).unwrap().0, Debug);
        }
        // A new condition warns at once, with what was held back.
        let full = ReplyTally {
            memory_full: 5,
            ..ReplyTally::default()
        };
        let (l, line) = level(&full, 5, at(100)).unwrap();
        assert_eq!(l, Warn);
        assert!(
            line.contains("99 more replies left 89100 commands for a later reply and 0 were"),
            "{line}"
        );
        let refused = ReplyTally {
            taken: 1,
            refused: 1,
            refused_why: "busy".into(),
            ..ReplyTally::default()
        };
        assert_eq!(level(&refused, 1, at(101)).unwrap().0, Warn);
        assert_eq!(level(&refused, 1, at(102)).unwrap().0, Debug);
        assert_eq!(level(&full, 5, at(103)).unwrap().0, Debug);
        let unusable = ReplyTally {
            unusable: 3,
            ..ReplyTally::default()
        };
        assert_eq!(level(&unusable, 3, at(104)).unwrap().0, Debug);
        assert_eq!(level(&ReplyTally::default(), 0, at(105)), None);
        // A window after its last warning, a condition warns again, with the count since.
        assert_eq!(
            level(&over, 1000, at(0) + REPEAT_AFTER - Duration::from_secs(1))
                .unwrap()
                .0,
            Debug
        );
        let (l, line) = level(&over, 1000, at(0) + REPEAT_AFTER).unwrap();
        assert_eq!(l, Warn);
        assert!(
            line.contains("3 more replies left 905 commands for a later reply and 1 were"),
            "{line}"
        );
    }

    #[test]
    fn each_id_is_queued_once_and_a_clock_going_back_keeps_the_queue_in_order() {
        let mut seen = SeenIds::default();
        seen.insert(&cmd(1, None), T);
        seen.insert(&cmd(1, None), T);
        assert_eq!(seen.checks.len(), 1);
        // The server's clock went back an hour: ids taken now are not due before the others.
        seen.forget_due(T);
        seen.insert(&cmd(2, None), T - SEEN_FOR_MS);
        assert!(
            seen.checks
                .iter()
                .zip(seen.checks.iter().skip(1))
                .all(|(a, b)| a.0 <= b.0)
        );
    }

    impl Dispatcher {
        fn receive(&mut self, list: &[Value]) {
            self.receive_each(list.len(), |take| list.iter().for_each(take));
        }
    }

    /// A reply of 20,000 new commands: 100 are taken; re-sent, the next 100; never more than
    /// [`MAX_SEEN`] remembered, and none forgotten early (new ones wait instead).
    #[test]
    fn a_reply_gives_at_most_100_new_commands_and_memory_stays_bounded() {
        let (waker, _rx) = crate::report::sink::waker();
        let mut d = Dispatcher::new(Handlers::default(), DEFAULT_TIMEOUT, waker);
        // No command thread: every command taken is answered at once, through the replies.
        d.thread_failed = true;
        let list: Vec<Value> = (1..=20_000)
            .map(|id| json!({"id": id, "command": "x"}))
            .collect();
        d.receive(&list);
        assert_eq!(d.seen.len(), MAX_NEW_PER_REPLY);
        d.receive(&list);
        let answered: Vec<i64> = d.replies().try_iter().map(|r| r.id).collect();
        assert_eq!(answered, (1..=200).collect::<Vec<i64>>());
        for _ in 0..100 {
            d.receive(&list);
        }
        assert_eq!(d.seen.len(), MAX_SEEN);
        let answered = d.replies().try_iter().count();
        assert_eq!(answered, MAX_SEEN - 200, "each id answered once");
        // Full: nothing new is taken, and what was taken is still remembered.
        d.receive(&list);
        assert_eq!(d.replies().try_iter().count(), 0);
        assert!(d.seen.seen_again(1, clock::unix_ms_now()));
    }
}
