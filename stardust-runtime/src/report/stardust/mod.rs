//! The Stardust reporter: login, token, ping with process metrics, clock sync, reports
//! (gzip above 1 KiB), the retry queue, command replies and events, logout. Runs on the
//! uploader thread with blocking `ureq`; nothing here is traced
//! ([docs/stardust-protocol.md §1.2](crate::docs::stardust_protocol)).

mod api;
mod procinfo;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use crate::clock;
use crate::delivery::{FlushOutcome, Undelivered};
use crate::model::TraceModel;
use crate::report::commands::{Dispatcher, Handlers, Reply};
use crate::report::events::Event;
use crate::report::failover::HttpError;
use crate::report::sink::{Sink, Urgent, Waker};
use crate::settings::{SETTINGS, Settings};
use crate::util::diag;
use crate::util::text::cut_utf16;
use crate::util::text::{app_id_problem, escaped};

use crate::util::json::{get_ci, get_i64, get_str};
use api::{Api, Body, CallError, Transport};

/// Most reports kept for retry (two days of one-minute periods, as the .NET client).
pub(crate) const MAX_QUEUE: usize = 2880;
/// JSON longer than this goes gzip-compressed to `/Trace/ReportRaw`.
const RAW_THRESHOLD: usize = 1024;
/// Conditions that clear once a login succeeds.
const CONNECTION_CONDITIONS: &[&str] = &[
    "server-slow",
    "server-unreachable",
    "not-stardust",
    "server-error",
    "login-refused",
    "server-refused",
];

/// The server's common string column: 50 UTF-16 units (AppId, AppName, ClientId, Version,
/// UserName, MachineName, event names).
pub(crate) const COLUMN: usize = 50;
/// Most exclude patterns taken from a reply.
const MAX_EXCLUDES: usize = 1000;
/// First pause between two attempts of a flush or shutdown; it doubles up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Time kept for the logout at shutdown (a quarter of the budget, at most this), and the
/// logout's own time bound.
const LOGOUT_MAX: Duration = Duration::from_secs(1);
/// The queue of reports kept for retry is replayed this long after a failure.
const QUEUE_RETRY: Duration = Duration::from_secs(5);
/// Longest the uploader keeps starting requests in one round of background work (replaying
/// queued reports, posting command replies and events, together): the rest waits for the next
/// tick, after the pings, logins and other work due meanwhile. A round also ends, and a tick
/// does nothing, as soon as a period, a flush or the shutdown waits for the thread ([`Urgent`]),
/// so such traffic never holds reports back for longer than the requests in flight (one of the
/// round's, or a login or ping that was due) ([docs/stardust-protocol.md §8.5](crate::docs::stardust_protocol)).
const POST_ROUND: Duration = Duration::from_secs(1);
/// Longest a flush or the shutdown keeps starting requests for command replies and events,
/// after its reports (a request started goes on to its end, within the deadline, so that the
/// server does not get it twice): the server re-sends commands without a final reply, and a
/// slow server must not make an exit wait for them.
const PENDING_MAX: Duration = Duration::from_secs(2);
/// Most events per `/App/PostEvents` request.
const EVENT_BATCH: usize = 100;
/// Events are posted this long after the first of them is written (the rest of a burst
/// joins the batch), as .NET does.
const EVENT_DELAY: Duration = Duration::from_secs(1);
/// First wait before posting events or command replies again after a failure; it doubles up
/// to `POST_RETRY_MAX`.
const POST_RETRY_MIN: Duration = Duration::from_secs(5);
const POST_RETRY_MAX: Duration = Duration::from_secs(60);
/// Most command replies waiting to be posted (the oldest go first when it overflows).
const MAX_REPLIES: usize = 1000;

pub(crate) struct StardustOptions {
    pub servers: Vec<String>,
    pub app_id: String,
    pub app_name: Option<String>,
    pub secret: Option<String>,
    /// The application's version (`None`: not sent).
    pub version: Option<String>,
    /// The application's build time, Unix ms UTC, sent as `Compile` at login.
    pub compile_ms: Option<i64>,
    /// Process metrics in pings (`Config::process_metrics`).
    pub process_metrics: bool,
    pub client_id: String,
    pub request_timeout: Duration,
    /// Trusted CA certificates for `https://` servers; `None`: the built-in web roots.
    pub tls_roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    /// Command handlers by name (`Config::command`) and their time bound.
    pub commands: Handlers,
    pub command_timeout: Duration,
    /// Wakes the uploader when a command reply is ready.
    pub waker: Waker,
    /// The events `stardust_runtime::event` queues (the start-up event first).
    pub events: crossbeam_channel::Receiver<Event>,
    /// Says when background work must give the uploader thread back.
    pub urgent: Urgent,
}

pub(crate) struct StardustSink {
    api: Api,
    app_id: String,
    app_name: Option<String>,
    secret: Option<String>,
    version: Option<String>,
    compile_ms: Option<i64>,
    client_id: String,
    ips: String,
    request_timeout: Duration,
    logged_in: bool,
    next_login: Instant,
    login_failures: u32,
    next_ping: Option<Instant>,
    ping_period: Duration,
    queue: VecDeque<TraceModel>,
    next_drain: Option<Instant>,
    queue_dropped: u64,
    clamp_logged: bool,
    /// A refused server clock was said (until an offset is taken again).
    clock_refused_logged: bool,
    /// A ping's unusable token was said (until a token is taken again).
    token_refused_logged: bool,
    /// A login reply's `code` was refused (logged once).
    code_refused_logged: bool,
    proc: procinfo::ProcSampler,
    commands: Dispatcher,
    /// Command replies not posted yet, oldest first; retried from `replies_retry.due`.
    replies: VecDeque<Reply>,
    replies_retry: Backoff,
    replies_dropped: u64,
    events: crossbeam_channel::Receiver<Event>,
    /// The batch being posted (kept while the server fails, before newer events).
    event_batch: Vec<Event>,
    /// When events are posted next.
    events_due: Backoff,
    urgent: Urgent,
}

impl StardustSink {
    pub(crate) fn new(o: StardustOptions) -> StardustSink {
        let ips = crate::util::host::local_ipv4s()
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(",");
        StardustSink {
            api: Api::new(
                o.servers,
                concat!("stardust-rs/", env!("CARGO_PKG_VERSION")),
                o.tls_roots,
            ),
            app_id: o.app_id,
            app_name: o.app_name,
            secret: o.secret,
            version: o.version,
            compile_ms: o.compile_ms,
            client_id: o.client_id,
            ips,
            request_timeout: o.request_timeout,
            logged_in: false,
            next_login: Instant::now(),
            login_failures: 0,
            next_ping: None,
            ping_period: Duration::from_secs(60),
            queue: VecDeque::new(),
            next_drain: None,
            queue_dropped: 0,
            clamp_logged: false,
            clock_refused_logged: false,
            token_refused_logged: false,
            code_refused_logged: false,
            proc: procinfo::ProcSampler::new(o.process_metrics),
            commands: Dispatcher::new(o.commands, o.command_timeout, o.waker),
            replies: VecDeque::new(),
            replies_retry: Backoff::new(),
            replies_dropped: 0,
            events: o.events,
            event_batch: Vec::new(),
            events_due: Backoff::new(),
            urgent: o.urgent,
        }
    }

    fn local_ms() -> i64 {
        clock::local_unix_ms(clock::now())
    }

    /// `$md5$<unixSec>$<MD5u(MD5u(secret) + unixSec)>` ([docs/stardust-protocol.md §3.2](crate::docs::stardust_protocol)), salted with the
    /// server-corrected time.
    fn salted_secret(secret: &str) -> String {
        let salt = (clock::unix_ms_now() / 1000).to_string();
        let inner = md5_upper(secret.as_bytes());
        let outer = md5_upper(format!("{inner}{salt}").as_bytes());
        format!("$md5${salt}${outer}")
    }

    /// The largest server clock offset followed, either way: 30 days
    /// ([docs/stardust-protocol.md §5.1](crate::docs::stardust_protocol)). Real offsets are far
    /// smaller: the server sends UTC ms, so time zones do not count; a free-running clock drifts
    /// seconds a day; a machine keeping local time in its UTC clock is off by at most 14 h (26 h
    /// when both are); one resumed after a long suspend, or started with a stale hardware
    /// clock, is off by days until NTP steps it. Following the server through all of these keeps
    /// reports in the window it stores (3 days back, 1 day ahead, §7.8). Beyond a month only a
    /// wrong date explains the offset, and following it would date every span that far off.
    const MAX_OFFSET_MS: i64 = 30 * 86_400_000;

    /// Learns the server clock from a reply: `offset = serverTime + delay/2 − localNow`. An
    /// offset beyond [`Self::MAX_OFFSET_MS`] is not taken (the clock stays as it was: local, or
    /// the last offset taken) and is returned; `Ok` says whether the reply carried a time.
    fn sync_clock(data: &Map<String, Value>, sent_local_ms: i64) -> Result<bool, i64> {
        if let Some(server) = get_i64(data, "serverTime").filter(|t| *t > 0) {
            let now = Self::local_ms();
            let delay = now.saturating_sub(sent_local_ms).max(0);
            let offset = server.saturating_add(delay / 2).saturating_sub(now);
            if offset.abs() > Self::MAX_OFFSET_MS {
                return Err(offset);
            }
            clock::set_server_offset_ms(offset);
            return Ok(true);
        }
        Ok(false)
    }

    /// [`Self::sync_clock`], saying once that an offset was refused (again after one is taken).
    fn learn_clock(&mut self, data: &Map<String, Value>, sent_local_ms: i64) {
        match Self::sync_clock(data, sent_local_ms) {
            Ok(true) => self.clock_refused_logged = false,
            Ok(false) => {}
            Err(_) if self.clock_refused_logged => {}
            Err(offset) => {
                self.clock_refused_logged = true;
                let days = offset.unsigned_abs() / 86_400_000;
                let way = if offset > 0 { "ahead of" } else { "behind" };
                diag::report(
                    log::Level::Warn,
                    "server-clock",
                    &format!(
                        "the clock of {} is {days} days {way} this machine's (offset {offset} ms); more than {} days is a wrong date, not clock skew: not followed, span times keep the clock they had",
                        self.api.server(),
                        Self::MAX_OFFSET_MS / 86_400_000
                    ),
                    "check the date of the server and of this machine; the server drops spans more than 3 days old or 1 day ahead of its clock",
                );
            }
        }
    }

    fn login(&mut self, deadline: Option<Instant>) -> Result<(), CallError> {
        self.api.token = None;
        let sent = Self::local_ms();
        let mut body = json!({
            "AppId": self.app_id,
            "Code": self.app_id,
            "ClientId": self.client_id,
            // Columns of 50 UTF-16 units on the server: longer is a `{code:500}`.
            "AppName": self.app_name.as_deref().map(|n| cut_utf16(n, COLUMN)),
            "Version": self.version,
            "Time": clock::unix_ms_now(),
            "IP": self.ips,
        });
        if let Some(ms) = self.compile_ms {
            // The build time: the server keeps the version of the newest build.
            body["Compile"] = Value::from(ms);
        }
        if let Some(secret) = &self.secret {
            body["Secret"] = Value::String(Self::salted_secret(secret));
        }
        let bytes = serde_json::to_vec(&body).expect("JSON of plain values");
        let data = self.api.call(
            "/App/Login",
            Body::Json(&bytes),
            self.request_timeout,
            deadline,
        )?;
        let empty = Map::new();
        let data = data.as_object().unwrap_or(&empty);
        let token = get_str(data, "token");
        if let Some(why) = token.as_deref().and_then(api::unusable_token) {
            // A server fault: nothing of this reply is taken, the login is tried again later.
            return Err(CallError::Transport(Transport::BadToken(why)));
        }
        self.learn_clock(data, sent);
        self.api.token = token;
        if let (Some(code), Some(secret)) = (get_str(data, "code"), get_str(data, "secret")) {
            self.adopt(code, secret);
        }
        self.logged_in = true;
        self.login_failures = 0;
        diag::clear(CONNECTION_CONDITIONS);
        self.next_ping = Some(Instant::now() + Duration::from_secs(3));
        log::info!(
            "stardust: logged in to {} as `{}`",
            self.api.server(),
            self.app_id
        );
        Ok(())
    }

    /// Takes the `code` and `secret` a login reply handed out (an auto-registration, a rename)
    /// for the rest of the process, when the code passes the checks a configured application
    /// id passes (`Config::app_id`); otherwise keeps the configured pair and says so once.
    fn adopt(&mut self, code: String, secret: String) {
        match app_id_problem(&code) {
            None => {
                log::info!(
                    "stardust: the server registered this application as `{}` and issued a new secret; using them for this process",
                    escaped(&code)
                );
                self.app_id = code;
                self.secret = Some(secret);
            }
            Some(problem) => {
                if !self.code_refused_logged {
                    self.code_refused_logged = true;
                    log::warn!(
                        "stardust: the server handed out the application id `{}`, which {problem}; keeping `{}` and its secret",
                        escaped(&code),
                        escaped(&self.app_id)
                    );
                }
            }
        }
    }

    /// Counts a failed login and sets when the background retries it: 5 s, +5 s per failure,
    /// at most 30 s. Returns the wait in seconds.
    fn login_failed(&mut self) -> u64 {
        self.logged_in = false;
        self.login_failures += 1;
        let wait = (5 * self.login_failures as u64).min(30);
        self.next_login = Instant::now() + Duration::from_secs(wait);
        wait
    }

    fn try_login(&mut self, deadline: Option<Instant>) -> bool {
        match self.login(deadline) {
            Ok(()) => true,
            Err(e) => {
                let wait = self.login_failed();
                let (key, hint) = self.diagnose(&e, true);
                diag::report(
                    log::Level::Warn,
                    key,
                    &format!(
                        "login to {} failed: {}; retrying in {wait} s",
                        self.api.server(),
                        escaped(&e)
                    ),
                    &hint,
                );
                false
            }
        }
    }

    /// A call that needs the token: on code 401, log in again once and retry once.
    fn authed(
        &mut self,
        path: &str,
        body: Body<'_>,
        deadline: Option<Instant>,
    ) -> Result<Value, CallError> {
        self.authed_with(path, body, deadline, |b| api::parse_envelope(&b))
    }

    /// [`authed`](Self::authed) with the reply's body read by `parse`.
    fn authed_with<T>(
        &mut self,
        path: &str,
        body: Body<'_>,
        deadline: Option<Instant>,
        parse: fn(Vec<u8>) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        match self
            .api
            .call_with(path, body, self.request_timeout, deadline, parse)
        {
            Err(CallError::Business { code: 401, message }) => {
                log::info!(
                    "stardust: {path} answered 401 ({}); logging in again",
                    escaped(&message)
                );
                self.logged_in = false;
                // A failed re-login is not the report's fault: keep the data (Transport).
                if let Err(e) = self.login(deadline) {
                    self.login_failed();
                    return Err(CallError::Transport(Transport::LoginFailed(Box::new(e))));
                }
                self.api
                    .call_with(path, body, self.request_timeout, deadline, parse)
            }
            other => other,
        }
    }

    fn ping(&mut self) {
        let sent = Self::local_ms();
        let info = self
            .proc
            .sample(self.version.as_deref(), &self.ips, clock::unix_ms_now());
        let body = serde_json::to_vec(&info).expect("JSON of plain values");
        match self.authed_with("/App/Ping", Body::Json(&body), None, api::parse_ping_reply) {
            Ok(reply) => {
                let empty = Map::new();
                let data = reply.data.as_object().unwrap_or(&empty);
                self.learn_clock(data, sent);
                // Takes effect at once: the caller arms the next ping with it.
                if let Some(p) = get_i64(data, "period").filter(|p| *p > 0) {
                    self.ping_period = Duration::from_secs(p.clamp(1, 3600) as u64);
                }
                if let Some(token) = get_str(data, "token") {
                    match api::unusable_token(&token) {
                        None => {
                            self.api.token = Some(token);
                            self.token_refused_logged = false;
                        }
                        // The current token still works until it expires (then a 401 brings a
                        // new login).
                        Some(why) if !self.token_refused_logged => {
                            self.token_refused_logged = true;
                            log::warn!(
                                "stardust: the ping reply's new token is unusable ({why}); keeping the current one"
                            );
                        }
                        Some(_) => {}
                    }
                }
                if reply.commands > 0 {
                    self.commands
                        .receive_each(reply.commands, |take| reply.for_each_command(take));
                }
            }
            Err(CallError::Business {
                code: code @ (401 | 403),
                message,
            }) => {
                log::warn!(
                    "stardust: ping answered {code} ({}); logging in again",
                    escaped(&message)
                );
                self.logged_in = false;
                self.next_login = Instant::now();
            }
            Err(e) => {
                let (key, hint) = self.diagnose(&e, false);
                diag::report(
                    log::Level::Warn,
                    key,
                    &format!("ping failed: {}", escaped(&e)),
                    &hint,
                );
            }
        }
    }

    /// Sends one report. `Ok` carries the reply data.
    fn upload(
        &mut self,
        model: &TraceModel,
        deadline: Option<Instant>,
    ) -> Result<Value, CallError> {
        // After an auto-registration under another code, report under the adopted one.
        let renamed;
        let model = if model.app_id == self.app_id {
            model
        } else {
            renamed = TraceModel {
                app_id: self.app_id.clone(),
                ..model.clone()
            };
            &renamed
        };
        let json = serde_json::to_vec(model).expect("TraceModel serialises");
        if json.len() > RAW_THRESHOLD {
            let gz = api::gzip(&json);
            self.authed("/Trace/ReportRaw", Body::Gzip(&gz), deadline)
        } else {
            self.authed("/Trace/Report", Body::Json(&json), deadline)
        }
    }

    /// Reports `model`, or keeps it for later when the server cannot take it now.
    fn deliver(&mut self, model: &TraceModel, deadline: Option<Instant>) -> bool {
        if !self.logged_in {
            // In the background a failed login is retried on its own schedule (5 s, +5 s per
            // failure): a report arriving meanwhile waits in the queue instead of trying at once.
            let backing_off = deadline.is_none() && Instant::now() < self.next_login;
            if backing_off || !self.try_login(deadline) {
                self.enqueue(model);
                return false;
            }
        }
        match self.upload(model, deadline) {
            Ok(reply) => {
                self.apply(&reply);
                true
            }
            Err(e) if refused_for_good(&e) => {
                report_refused(&e, model);
                true
            }
            Err(CallError::Business { message, .. }) => {
                log::warn!(
                    "stardust: report refused after logging in again (401 {}); kept for retry",
                    escaped(&message)
                );
                self.enqueue(model);
                false
            }
            Err(CallError::Transport(m)) => {
                let (key, hint) = self.diagnose_transport(&m);
                diag::report(
                    log::Level::Warn,
                    key,
                    &format!(
                        "report to {} failed ({}); kept for retry ({} queued)",
                        self.api.server(),
                        escaped(&m),
                        self.queue.len() + 1
                    ),
                    &hint,
                );
                self.enqueue(model);
                false
            }
        }
    }

    fn enqueue(&mut self, model: &TraceModel) {
        self.keep(model.without_samples());
        if self.next_drain.is_none() {
            self.next_drain = Some(Instant::now() + QUEUE_RETRY);
        }
    }

    /// Appends to the retry queue (dropping the oldest when it is full).
    fn keep(&mut self, model: TraceModel) {
        if self.queue.len() >= MAX_QUEUE {
            self.queue.pop_front();
            self.queue_dropped += 1;
            if self.queue_dropped == 1 {
                log::error!(
                    "stardust: retry queue full ({MAX_QUEUE} reports); dropping the oldest"
                );
            }
        }
        self.queue.push_back(model);
    }

    /// Whether another request may start now: by `deadline` for a flush or the shutdown; in
    /// the background (`None`), within the round (`round_end`) and while nothing more urgent
    /// waits for the thread.
    fn may_call(&self, round_end: Instant, deadline: Option<Instant>) -> bool {
        let now = Instant::now();
        now < round_end
            && match deadline {
                Some(d) => d.saturating_duration_since(now) >= api::MIN_CALL_TIME,
                None => !self.urgent.waiting(),
            }
    }

    /// Replays queued reports in the background, oldest first, until one fails on the network
    /// (then again [`QUEUE_RETRY`] later) or the round ends (then at the next tick).
    fn drain(&mut self, round_end: Instant) {
        while !self.queue.is_empty() {
            if !self.may_call(round_end, None) {
                self.next_drain = Some(Instant::now());
                return;
            }
            let model = self.queue.pop_front().expect("not empty");
            match self.upload(&model, None) {
                Ok(reply) => self.apply(&reply),
                Err(e) if refused_for_good(&e) => report_refused(&e, &model),
                Err(e) => {
                    log::debug!("stardust: retry stopped: {}", escaped(&e));
                    self.queue.push_front(model);
                    self.next_drain = Some(Instant::now() + QUEUE_RETRY);
                    return;
                }
            }
        }
        self.next_drain = None;
    }

    /// Delivers the queue, oldest first, until it is empty or `deadline` comes: for a flush
    /// and at shutdown. A send that fails is retried after a pause (100 ms, doubling up to
    /// 1 s), after a new login when needed (code 401 included), and on the next server of the
    /// list (network errors fail over within each call already). A business error drops that
    /// report, as always; a login the server refuses ends the attempt. Returns the last error
    /// when something is left.
    fn deliver_queue(&mut self, deadline: Instant) -> Option<String> {
        let mut pause = RETRY_MIN;
        let mut last_error = None;
        let mut warned = false;
        let mut login_failed = false;
        while !self.queue.is_empty()
            && deadline.saturating_duration_since(Instant::now()) >= api::MIN_CALL_TIME
        {
            let failure = if !self.logged_in {
                match self.login(Some(deadline)) {
                    Ok(()) => None,
                    Err(e @ CallError::Business { .. }) => {
                        // Refused (wrong secret, disabled app): trying again at once would
                        // only be refused again; the background login keeps its backoff.
                        self.login_failed();
                        last_error = Some(format!("login refused: {e}"));
                        break;
                    }
                    Err(e) => {
                        // One step of the background login's backoff per flush, not per try.
                        if !login_failed {
                            login_failed = true;
                            self.login_failed();
                        }
                        Some(format!("login failed: {e}"))
                    }
                }
            } else {
                None
            };
            let failure = failure.or_else(|| {
                let model = self.queue.pop_front()?;
                match self.upload(&model, Some(deadline)) {
                    Ok(reply) => {
                        self.apply(&reply);
                        pause = RETRY_MIN;
                        None
                    }
                    Err(e) if refused_for_good(&e) => {
                        report_refused(&e, &model);
                        None
                    }
                    Err(e) => {
                        self.queue.push_front(model);
                        Some(match e {
                            CallError::Transport(m) => m.to_string(),
                            other => other.to_string(),
                        })
                    }
                }
            });
            let Some(failure) = failure else { continue };
            if warned {
                log::debug!("stardust: report failed again ({})", escaped(&failure));
            } else {
                warned = true;
                log::warn!(
                    "stardust: report failed ({}); retrying until the deadline ({} queued)",
                    escaped(&failure),
                    self.queue.len()
                );
            }
            last_error = Some(failure);
            self.api.fail_over();
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(RETRY_MAX);
        }
        if self.queue.is_empty() {
            self.next_drain = None;
            None
        } else {
            Some(last_error.unwrap_or_else(|| "out of time".to_owned()))
        }
    }

    /// The condition a failed call stands for, and what a user should check (for the log and
    /// the stderr fallback, [`diag`]).
    fn diagnose(&self, e: &CallError, login: bool) -> (&'static str, String) {
        match e {
            CallError::Transport(t) => self.diagnose_transport(t),
            CallError::Business { .. } if login => (
                "login-refused",
                "check StarAppId and StarSecret; the application may be disabled in the Stardust web UI".to_owned(),
            ),
            CallError::Business { .. } => (
                "server-refused",
                "the server's log says why".to_owned(),
            ),
        }
    }

    /// [`StardustSink::diagnose`] of a call that got no usable reply.
    fn diagnose_transport(&self, t: &Transport) -> (&'static str, String) {
        let servers = self.api.servers_for_log();
        match t {
            Transport::Http(HttpError::Unreachable(ureq::Error::Timeout(_))) => (
                "server-slow",
                format!(
                    "no answer within request_timeout: is the Stardust server at {servers} overloaded, or is StarServer pointing at something that never answers?"
                ),
            ),
            Transport::Http(HttpError::Unreachable(_)) => (
                "server-unreachable",
                format!(
                    "is the Stardust server running, and is StarServer ({servers}) the right address?"
                ),
            ),
            Transport::Http(HttpError::Status(404 | 405 | 501)) | Transport::NotEnvelope(_) => (
                "not-stardust",
                format!(
                    "{servers} does not answer like a Stardust server: StarServer must be its base URL (e.g. http://star:6600), not a web page or another service"
                ),
            ),
            // The new login after a 401 failed: the hint of that login's failure.
            Transport::LoginFailed(login) => self.diagnose(login, true),
            Transport::BadToken(_) => (
                "server-error",
                format!(
                    "{servers}, or something between it and this process, sent a token that cannot be sent back in a header; logging in again"
                ),
            ),
            Transport::Http(_) => (
                "server-error",
                "reports are kept and retried; the server's log says why it failed".to_owned(),
            ),
        }
    }

    /// Applies a `TraceResponse` (see [`apply_trace_response`]); clamping is logged once.
    fn apply(&mut self, reply: &Value) {
        let clamped = apply_trace_response(reply);
        if !clamped.is_empty() && !self.clamp_logged {
            self.clamp_logged = true;
            log::warn!(
                "stardust: server sent out-of-range settings ({}); clamped",
                clamped.join(", ")
            );
        }
    }

    /// Posts the command replies that are ready, oldest first, until one fails on the network
    /// (then they wait for `replies_retry.due`), `deadline` comes, or in the background the
    /// round ends (then the rest goes at the next tick). Needs a login.
    fn post_replies(&mut self, round_end: Instant, deadline: Option<Instant>) {
        self.replies.extend(self.commands.replies().try_iter());
        while self.replies.len() > MAX_REPLIES {
            self.replies.pop_front();
            self.replies_dropped += 1;
            if self.replies_dropped == 1 {
                log::error!(
                    "stardust: {MAX_REPLIES} command replies wait for the server; dropping the oldest (the server re-sends those commands)"
                );
            }
        }
        while let Some(reply) = self.replies.front().cloned() {
            if !self.may_call(round_end, deadline) {
                if deadline.is_none() {
                    self.replies_retry.due = Some(Instant::now());
                }
                return;
            }
            let body = serde_json::to_vec(&reply.to_json()).expect("JSON of plain values");
            match self.authed("/App/CommandReply", Body::Json(&body), deadline) {
                Ok(data) => {
                    if data == 0 {
                        log::debug!(
                            "stardust: the server does not know command {} (deleted?)",
                            reply.id
                        );
                    }
                }
                Err(e) if refused_for_good(&e) => log::warn!(
                    "stardust: the server refused the reply to command {} ({}); dropped",
                    reply.id,
                    escaped(&e)
                ),
                Err(e) => {
                    log::debug!(
                        "stardust: reply to command {} failed ({}); retrying in {:?}",
                        reply.id,
                        escaped(&e),
                        self.replies_retry.step
                    );
                    self.replies_retry.failed();
                    return;
                }
            }
            self.replies.pop_front();
        }
        self.replies_retry.reset();
    }

    /// Posts queued events in batches of at most [`EVENT_BATCH`], until the queue is empty, a
    /// post fails on the network (the batch is kept and retried after a backoff), `deadline`
    /// comes, or in the background the round ends (the rest goes at the next tick: the due
    /// time stays passed). Needs a login.
    fn post_events(&mut self, round_end: Instant, deadline: Option<Instant>) {
        loop {
            if self.event_batch.is_empty() {
                self.event_batch
                    .extend(self.events.try_iter().take(EVENT_BATCH));
            }
            if self.event_batch.is_empty() {
                self.events_due.reset();
                return;
            }
            if !self.may_call(round_end, deadline) {
                return;
            }
            let batch: Vec<Value> = self.event_batch.iter().map(Event::to_json).collect();
            let body = serde_json::to_vec(&batch).expect("JSON of plain values");
            match self.authed("/App/PostEvents", Body::Json(&body), deadline) {
                Ok(_) => {}
                Err(e) if refused_for_good(&e) => diag::report(
                    log::Level::Error,
                    "events-refused",
                    &format!(
                        "the server refused {} events ({}); dropped",
                        self.event_batch.len(),
                        escaped(&e)
                    ),
                    "the server's log says why",
                ),
                Err(e) => {
                    log::debug!(
                        "stardust: posting {} events failed ({}); retrying in {:?}",
                        self.event_batch.len(),
                        escaped(&e),
                        self.events_due.step
                    );
                    self.events_due.failed();
                    return;
                }
            }
            self.event_batch.clear();
        }
    }

    /// Command replies and events, by `deadline` (a flush, the shutdown), starting requests for
    /// at most [`PENDING_MAX`], when logged in.
    fn post_pending(&mut self, deadline: Instant) {
        if self.logged_in && self.api.token.is_some() {
            // Only the start of requests is limited: one under way goes on to its end (within
            // the deadline), or the server would get it again from the retry.
            let round_end = Instant::now() + PENDING_MAX;
            self.post_replies(round_end, Some(deadline));
            self.post_events(round_end, Some(deadline));
        }
    }

    fn logout(&mut self, deadline: Instant) {
        if !self.logged_in || self.api.token.is_none() {
            return;
        }
        let bound = Some(deadline.min(Instant::now() + LOGOUT_MAX));
        match self
            .api
            .call("/App/Logout?reason=Dispose", Body::None, LOGOUT_MAX, bound)
        {
            Ok(_) => log::debug!("stardust: logged out"),
            Err(e) => log::debug!("stardust: logout failed: {}", escaped(&e)),
        }
        self.logged_in = false;
    }
}

/// Applies a `TraceResponse` by the .NET rules: positive values replace, `excludes` always
/// replaces (absent or null clears it). Absurd values are clamped (period 1..=3600 s, samples
/// and errors ≤ 1000, timeout ≤ 1 h, tags ≤ 64 Ki characters, ≤ 1000 exclude patterns of ≤ 256
/// bytes); returns what was clamped. Wrong types are ignored.
pub(crate) fn apply_trace_response(reply: &Value) -> Vec<String> {
    let mut clamped = Vec::new();
    let Value::Object(data) = reply else {
        return clamped;
    };
    let mut set = |key: &str, max: i64, target: fn(&Settings, i32)| {
        if let Some(v) = get_i64(data, key).filter(|v| *v > 0) {
            if v > max {
                clamped.push(format!("{key}={v}"));
            }
            target(&SETTINGS, v.min(max) as i32);
        }
    };
    set("maxSamples", 1000, Settings::set_max_samples);
    set("maxErrors", 1000, Settings::set_max_errors);
    set("timeout", 3_600_000, Settings::set_timeout_ms);
    set("maxTagLength", 64 * 1024, Settings::set_max_tag_length);
    if let Some(p) = get_i64(data, "period").filter(|v| *v > 0) {
        if p > 3600 {
            clamped.push(format!("period={p}"));
        }
        SETTINGS.set_period_secs(p.clamp(1, 3600) as u32);
    }
    let excludes = match get_ci(data, "excludes") {
        Some(Value::Array(items)) => {
            if items.len() > MAX_EXCLUDES {
                clamped.push(format!("excludes: {} patterns", items.len()));
            }
            items
                .iter()
                .filter_map(|v| v.as_str())
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .take(MAX_EXCLUDES)
                .map(str::to_owned)
                .collect()
        }
        _ => Vec::new(),
    };
    SETTINGS.set_excludes(excludes);
    clamped
}

/// Fuzz entry: a reply body read as the client reads every reply — the envelope, then the
/// fields of a `TraceResponse`, a login and a ping reply (its commands included). The shared
/// settings are put back afterwards.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_reply(data: &[u8]) {
    let Ok(value) = api::parse_envelope(data) else {
        assert!(api::parse_ping_reply(data.to_vec()).is_err());
        return;
    };
    check_ping_reply(data, &value);
    let saved = SETTINGS.snapshot();
    let saved_period = SETTINGS.period_secs();
    let saved_excludes = SETTINGS.excludes();
    apply_trace_response(&value);
    let after = SETTINGS.snapshot();
    assert!((1..=1000).contains(&after.max_samples) || after.max_samples == saved.max_samples);
    assert!(after.max_tag_length <= 64 * 1024 || after.max_tag_length == saved.max_tag_length);
    assert!((1..=3600).contains(&SETTINGS.period_secs()));
    assert!(SETTINGS.excludes().len() <= MAX_EXCLUDES);
    let saved_offset = clock::server_offset_ms();
    if let Value::Object(o) = &value {
        let _ = (
            get_str(o, "token"),
            get_str(o, "code"),
            get_str(o, "secret"),
        );
        let _ = StardustSink::sync_clock(o, StardustSink::local_ms());
        assert!(clock::server_offset_ms().abs() <= StardustSink::MAX_OFFSET_MS);
        if let Some(Value::Array(commands)) = get_ci(o, "commands") {
            for c in commands {
                if let Some(c) = crate::report::commands::parse_command(c) {
                    assert!(c.start_ms.is_none_or(|t| t >= 946_684_800_000));
                }
            }
        }
    }
    clock::set_server_offset_ms(saved_offset);
    SETTINGS.restore(saved);
    SETTINGS.set_period_secs(saved_period);
    SETTINGS.set_excludes(saved_excludes);
}

/// A ping reply read lean ([`api::parse_ping_reply`]) reads as `value`, the envelope's data,
/// except that the data's `commands` come one at a time instead of in the data: exactly the
/// list the data holds (none when it holds no list), whether the data is a `data` member or
/// the whole object, and nothing of any other `commands` member of the body.
#[cfg(any(fuzzing, test))]
fn check_ping_reply(body: &[u8], value: &Value) {
    let lean = api::parse_ping_reply(body.to_vec()).expect("read wherever the envelope reads");
    let mut streamed = Vec::new();
    lean.for_each_command(|c| streamed.push(c.clone()));
    assert_eq!(streamed.len(), lean.commands);
    match value {
        Value::Object(o) => {
            let without: Map<String, Value> = o
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("commands"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(lean.data, Value::Object(without));
            match get_ci(o, "commands") {
                Some(Value::Array(list)) => assert_eq!(&streamed, list),
                _ => assert!(streamed.is_empty()),
            }
        }
        _ => {
            assert_eq!(&lean.data, value);
            assert!(streamed.is_empty());
        }
    }
}

/// The certificates of a PEM (other items ignored); an error when there is none or the PEM
/// does not parse.
pub(crate) fn parse_ca_pem(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("the TLS CA PEM does not parse: {e}")),
        }
    }
    if certs.is_empty() {
        return Err("the TLS CA PEM holds no certificate".to_owned());
    }
    Ok(certs)
}

/// A failure that sending the same body again cannot fix: a business code (after the re-login
/// on 401), or HTTP 400/413/415 (the body does not bind). Anything else is retried.
fn refused_for_good(e: &CallError) -> bool {
    match e {
        CallError::Business { code, .. } => *code != 401,
        CallError::Transport(Transport::Http(HttpError::Status(status))) => {
            matches!(status, 400 | 413 | 415)
        }
        CallError::Transport(_) => false,
    }
}

/// Logs a report that is dropped because the server will never take it (see
/// [`refused_for_good`]).
fn report_refused(e: &CallError, model: &TraceModel) {
    diag::report(
        log::Level::Error,
        "report-refused",
        &format!(
            "the server refused a report ({}); {} operations dropped",
            escaped(e),
            model.builders.len()
        ),
        "the server's log says why; an operation name or tag it cannot store is a common cause",
    );
}

/// When to post again: [`POST_RETRY_MIN`] after a failure, doubling up to
/// [`POST_RETRY_MAX`] while failures go on; cleared by a success.
struct Backoff {
    due: Option<Instant>,
    /// The wait after the next failure.
    step: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            due: None,
            step: POST_RETRY_MIN,
        }
    }

    fn failed(&mut self) {
        self.due = Some(Instant::now() + self.step);
        self.step = (self.step * 2).min(POST_RETRY_MAX);
    }

    fn reset(&mut self) {
        self.due = None;
        self.step = POST_RETRY_MIN;
    }
}

fn md5_upper(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

impl Sink for StardustSink {
    fn report(&mut self, model: &TraceModel) {
        if self.deliver(model, None) && !self.queue.is_empty() {
            self.drain(Instant::now() + POST_ROUND);
        }
    }

    fn tick(&mut self, now: Instant) -> Option<Instant> {
        if self.urgent.waiting() {
            // A period, a flush or the shutdown first: ticked again right after it.
            return Some(now);
        }
        if !self.logged_in && now >= self.next_login {
            self.try_login(None);
        }
        if self.logged_in {
            if let Some(at) = self.next_ping {
                if now >= at {
                    // No token (an auto-registered app the server keeps disabled): a ping could
                    // only be refused and trigger a login loop.
                    if self.api.token.is_some() {
                        self.ping();
                    }
                    self.next_ping = Some(Instant::now() + self.ping_period);
                }
            }
        }
        // One round for the replay, the replies and the events together.
        let round_end = Instant::now() + POST_ROUND;
        if self.logged_in && !self.queue.is_empty() && self.next_drain.is_some_and(|d| now >= d) {
            self.drain(round_end);
        }
        if self.queue.is_empty() {
            self.next_drain = None;
        }
        // Without a token (a disabled auto-registered app) nothing could be posted.
        let can_post = self.logged_in && self.api.token.is_some();
        if can_post {
            let now = Instant::now();
            let replies_waiting = !self.replies.is_empty() || !self.commands.replies().is_empty();
            if replies_waiting && self.replies_retry.due.is_none_or(|t| now >= t) {
                self.post_replies(round_end, None);
            }
            let events_waiting = !self.event_batch.is_empty() || !self.events.is_empty();
            if events_waiting && self.events_due.due.is_none() {
                self.events_due.due = Some(now + EVENT_DELAY);
            }
            if self.events_due.due.is_some_and(|d| now >= d) {
                self.post_events(round_end, None);
            }
        }
        let mut next = Vec::with_capacity(5);
        if !self.logged_in {
            // The queue is only replayed once logged in: wake for the next login, not for a
            // retry time that may have passed (that would spin the uploader thread).
            next.push(self.next_login);
        } else {
            next.extend(self.next_ping);
            next.extend(self.next_drain);
            if can_post {
                next.extend(self.replies_retry.due);
                next.extend(self.events_due.due);
            }
        }
        next.into_iter().min()
    }

    fn hold(&mut self, model: &TraceModel) {
        self.keep(model.clone());
    }

    /// The cut and the queue before it, oldest first, by `deadline`; what is left stays queued
    /// (without samples) for the background retry.
    fn flush(&mut self, model: Option<&TraceModel>, deadline: Instant) -> FlushOutcome {
        if let Some(m) = model {
            self.keep(m.clone());
        }
        let delivered = self.deliver_queue(deadline);
        // Command replies and events go too, in the time left.
        self.post_pending(deadline);
        let Some(error) = delivered else {
            return FlushOutcome::Delivered;
        };
        if model.is_some() {
            // Delivery goes oldest first: when anything is left, the cut is still at the back.
            if let Some(last) = self.queue.back_mut() {
                *last = last.without_samples();
            }
        }
        if self.next_drain.is_none() {
            self.next_drain = Some(Instant::now() + QUEUE_RETRY);
        }
        let left = Undelivered::of(&self.queue);
        diag::report(
            log::Level::Warn,
            "flush-timeout",
            &format!(
                "flush deadline passed: {left} not delivered yet to {}; kept for retry (last error: {})",
                self.api.servers_for_log(),
                escaped(&error)
            ),
            "",
        );
        FlushOutcome::TimedOut(left)
    }

    /// The last cut and the queue before it, oldest first, then the logout, by `deadline`. A
    /// quarter of the time left (at most 1 s) is kept for the logout, so it goes out even when
    /// a report hung. What is not delivered by then is lost, with one log line saying how much.
    fn shutdown(&mut self, model: Option<&TraceModel>, deadline: Instant) -> FlushOutcome {
        if let Some(m) = model {
            self.keep(m.clone());
        }
        let reserve = (deadline.saturating_duration_since(Instant::now()) / 4).min(LOGOUT_MAX);
        let outcome = match self.deliver_queue(deadline - reserve) {
            None => FlushOutcome::Delivered,
            Some(error) => {
                let lost = Undelivered::of(&self.queue);
                diag::report(
                    log::Level::Warn,
                    "shutdown-loss",
                    &format!(
                        "shutdown deadline passed: {lost} not delivered to {}; lost (last error: {})",
                        self.api.servers_for_log(),
                        escaped(&error)
                    ),
                    "a longer Config::shutdown_timeout waits longer for the server",
                );
                self.queue.clear();
                FlushOutcome::TimedOut(lost)
            }
        };
        self.post_pending(deadline - reserve);
        let events_left = self.event_batch.len() + self.events.len();
        if events_left > 0 {
            log::warn!(
                "stardust: {events_left} event(s) not posted to the Stardust server by the shutdown deadline; lost"
            );
        }
        self.replies.extend(self.commands.replies().try_iter());
        if !self.replies.is_empty() {
            log::warn!(
                "stardust: {} command replies not posted by the shutdown deadline; the server re-sends those commands",
                self.replies.len()
            );
        }
        self.logout(deadline);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_secret_matches_the_dotnet_form() {
        assert_eq!(md5_upper(b"abc"), "900150983CD24FB0D6963F7D28E17F72");
        let s = StardustSink::salted_secret("pass");
        let parts: Vec<&str> = s.split('$').collect();
        assert_eq!(parts[1], "md5");
        let salt = parts[2];
        assert_eq!(
            parts[3],
            md5_upper(format!("{}{salt}", md5_upper(b"pass")).as_bytes())
        );
        assert!(!s.contains("pass"));
    }
}
