//! A strict fake Stardust server for integration tests (stardust-runtime/docs/stardust-protocol.md §13).
//!
//! ```ignore
//! mod support;
//! use support::fake_stardust::*;
//! let fake = FakeStardust::builder()
//!     .app("MyApp", Some("s3cret-value"))
//!     .token_lifetime(Duration::from_secs(3))
//!     .start();
//! // point the client at fake.base_url() ...
//! assert!(fake.wait_for(|r| !r.reports.is_empty(), Duration::from_secs(5)));
//! fake.assert_no_violations();
//! ```
//!
//! Layout: a raw TCP front proxy (owned here, so connections can be reset or refused) listens on
//! `base_url()` and forwards each request to a tiny_http backend on another loopback port, which
//! implements the endpoints. Every request is recorded; faults are chosen per request at the
//! proxy, from rules consulted in FIFO order (first matching rule wins).
//!
//! Notes:
//! - Tokens are JWT-shaped (`{"alg":"HS256"}` header) but signed with HMAC-MD5; only this server
//!   verifies them. `exp` is rounded up to whole seconds.
//! - The salted secret is checked against the *server* clock (incl. `clock_offset_ms`), ±600 s.
//! - The sample-cap and tag-length checks use the larger of the last two values the server sent
//!   (client defaults 1/10/1024 before any reply), over all clients together.
//! - `wait_for` runs its predicate under the record lock: don't call `FakeStardust` methods in it.
//!
//! Strictness of the real server (stardust-runtime/docs/stardust-protocol.md §6, §9, §10):
//! - `/App/Login`, `/App/Ping`, `/App/PostEvents`, `/App/CommandReply` bind their body like
//!   ASP.NET `[ApiController]` + System.Text.Json (stardust-runtime/docs/stardust-protocol.md §6.1–§6.4): after authorization (never for
//!   Login), a `null`, a fraction or a wrong JSON type in a number/enum/date member, a body that
//!   is empty, not JSON or of the wrong shape → HTTP 400 ProblemDetails without `code`; a
//!   non-JSON Content-Type → 415. `/App/Logout` without `reason` → 400. `/Trace/Report` binds a
//!   report's `Info` the same way (failure = the silent `{code:0,data:null}`).
//! - Strings over their columns → `{code:500}` (stardust-runtime/docs/stardust-protocol.md §6.5): login AppId/Code, AppName, Version,
//!   ClientId; ping Version, UserName, MachineName; event Name (the whole batch) — 50 each.
//! - The `App` record ([`AppMeta`]) keeps `Version` and `Compile` as stardust-runtime/docs/stardust-protocol.md §6.6–§6.7 describe: a login
//!   with a strictly newer `Compile` replaces both; a ping stores its version while the app has
//!   none, and once `App.Compile` is over 30 days old parses both as `System.Version` — an
//!   unparseable one answers `{code:500}` (no token refresh, no commands).
//! - Commands ([`FakeStardust::send_command`]) are delivered in ping replies and re-sent until a
//!   final reply, at most 11 (with an expiry 101) times (stardust-runtime/docs/stardust-protocol.md §9); `/App/CommandReply` and
//!   `/App/PostEvents` (stardust-runtime/docs/stardust-protocol.md §10) are recorded.
//!
//! Every request the real server would reject is also a [`Violation`] (rules `http-400`,
//! `http-415`, `column-length`, `ping-500`, `report-500`, …), recorded even when the request
//! got an auth error or an injected fault, so `assert_no_violations()` catches it.

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod auth;
mod binding;
mod checks;
mod handlers;
mod model;
mod proxy;

pub use auth::{
    SecretCheck, SecretForm, TokenClaims, decode_token_payload, md5_upper, salted_secret,
};
pub use model::wildcard_match;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// What `/App/Login` does with a known app and a wrong secret (stardust-runtime/docs/stardust-protocol.md §3.3 step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrongSecret {
    /// Reply `{code:401,message:"密钥错误"}` (default).
    Strict,
    /// Real HEAD behaviour: log in anyway and disclose the app's real `code`/`secret`.
    Head,
}

/// The `TraceResponse` returned by `/Trace/Report(Raw)` (camelCase on the wire).
/// Defaults are those of a newly created AppTracer (stardust-runtime/docs/stardust-protocol.md §7.6).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceResponseCfg {
    pub period: i32,
    pub max_samples: i32,
    pub max_errors: i32,
    pub timeout: i32,
    pub max_tag_length: i32,
    pub request_tag_length: i32,
    /// Real server: always Some.
    pub enable_meter: Option<bool>,
    /// Sent only when the report's `Version` is non-empty (else `excludes: null`).
    /// Also applied server-side to drop builders, as the real server does.
    pub excludes: Option<Vec<String>>,
}

impl Default for TraceResponseCfg {
    fn default() -> Self {
        TraceResponseCfg {
            period: 60,
            max_samples: 1,
            max_errors: 10,
            timeout: 5000,
            max_tag_length: 1024,
            request_tag_length: 1024,
            enable_meter: Some(true),
            excludes: None,
        }
    }
}

/// Runtime-changeable server behaviour.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Emit PascalCase keys (envelope and data) instead of camelCase.
    pub pascal_case: bool,
    /// Success envelopes carry `code: 200` instead of `0`.
    pub success_code_200: bool,
    /// Added to the server's clock (serverTime, token times, salt window, builder time window).
    pub clock_offset_ms: i64,
    /// JWT lifetime (`expire` in the login reply is its whole seconds). `exp` is rounded up to
    /// whole seconds, so a token lives between this and this + 1 s. Default 7200 s.
    pub token_lifetime: Duration,
    /// Ping returns a fresh token when the current one expires within this window. Default 10 min.
    pub token_refresh_window: Duration,
    /// `period` in the ping reply. Default 60.
    pub ping_period: i32,
    pub wrong_secret: WrongSecret,
    /// Whether auto-registered apps are enabled (false → login replies code/secret with `token:null`).
    pub auto_register_enabled: bool,
    /// Salted secret window, seconds. Default 600.
    pub salt_time_secs: i64,
    pub trace_response: TraceResponseCfg,
    /// The server's time zone, minutes east of UTC. Used where the real server writes its local
    /// wall time: command `startTime`/`expire` of apps whose `App.Compile` is before 2025
    /// (stardust-runtime/docs/stardust-protocol.md §9.3). Default 0.
    pub server_utc_offset_min: i32,
    /// A login without a `Compile` (or with 0) is a violation (`compile-missing`). The real
    /// server accepts it (stardust-runtime/docs/stardust-protocol.md §6.7); default false.
    pub require_compile: bool,
    /// When set, every successful login reply carries this `code` (and the app's secret as
    /// `secret`), as a server that registered the app under another name would; the token
    /// stays the logged-in app's. A client must check a code before it reports under it.
    /// Default `None` (the real rules of stardust-runtime/docs/stardust-protocol.md §3.3).
    pub login_code: Option<String>,
    /// Replies longer than this are recorded ([`RecordedRequest::response`]) with their status
    /// only: no body, no JSON (not even parsed). Default unlimited; for tests that send replies
    /// of megabytes and measure the memory of the process.
    pub max_recorded_response_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pascal_case: false,
            success_code_200: false,
            clock_offset_ms: 0,
            token_lifetime: Duration::from_secs(7200),
            token_refresh_window: Duration::from_secs(600),
            ping_period: 60,
            wrong_secret: WrongSecret::Strict,
            auto_register_enabled: true,
            salt_time_secs: 600,
            trace_response: TraceResponseCfg::default(),
            server_utc_offset_min: 0,
            require_compile: false,
            login_code: None,
            max_recorded_response_bytes: usize::MAX,
        }
    }
}

/// An app known to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEntry {
    pub name: String,
    pub secret: Option<String>,
    pub enabled: bool,
    pub auto_registered: bool,
}

/// What the server stores about an app besides [`AppEntry`]: the `App` record's `Version`,
/// `Compile` and `DisplayName` (stardust-runtime/docs/stardust-protocol.md §6.6, §6.7). A pre-registered app starts
/// with no version, compile time 0 (1970) and no display name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppMeta {
    /// `App.Version`: set at creation, replaced by a login with a strictly newer `Compile`, set by
    /// a ping while empty, raised by a ping once `App.Compile` is 30 days old.
    pub version: Option<String>,
    /// `App.Compile`, Unix ms (the newest `Compile` any login sent; 0 = 1970).
    pub compile_ms: i64,
    /// `App.DisplayName` (written by a login's `AppName` only while empty).
    pub display_name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// `CommandStatus` values (stardust-runtime/docs/stardust-protocol.md §9.5).
pub mod command_status {
    /// 就绪: not started (pending).
    pub const READY: i64 = 0;
    /// 处理中: accepted or scheduled (still pending: re-sent).
    pub const PROCESSING: i64 = 1;
    /// 已完成.
    pub const DONE: i64 = 2;
    /// 取消: expired or refused; also set by the server after too many sends.
    pub const CANCELLED: i64 = 3;
    /// 错误: failed, including an unknown command.
    pub const ERROR: i64 = 4;
}

/// Optional parts of a command queued with [`FakeStardust::send_command_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// Do not run before this server time (Unix ms). `None` = immediate.
    pub start_time_ms: Option<i64>,
    /// Do not run after this server time (Unix ms). `None` = no expiry. With an expiry the server
    /// sends the command up to 101 times instead of 11 (stardust-runtime/docs/stardust-protocol.md §9.6).
    pub expire_ms: Option<i64>,
    /// `traceId` of the command. `None` = a fresh traceparent `00-<trace>-<span>-01`.
    pub trace_id: Option<String>,
}

/// A command queued for an app (the server's `AppCommand` row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// `Id` (an Int32 on the server; 1, 2, … per fake).
    pub id: i64,
    pub app: String,
    pub command: String,
    pub argument: Option<String>,
    pub start_time_ms: Option<i64>,
    pub expire_ms: Option<i64>,
    pub trace_id: Option<String>,
    /// Server time when queued.
    pub created_ms: i64,
    /// Current status (see [`command_status`]); 0/1 = pending.
    pub status: i64,
    /// The server's `Times`: counted sends (a not-yet-due command is sent without counting).
    pub times: u32,
    /// Seq of every ping whose reply carried this command.
    pub delivered_in: Vec<u64>,
    /// `Result` (`Data` of the last reply, trimmed to 500).
    pub result: Option<String>,
    /// Cancelled by the server (expired, or sent more than 10 / 100 times) rather than by a reply.
    pub cancelled_by_server: bool,
    /// Seqs of the `/App/CommandReply` requests for it.
    pub replies: Vec<u64>,
}

impl CommandRecord {
    /// A command queued now, immediate, without argument, expiry or trace id, never sent.
    fn ready(id: i64, app: &str, command: &str, now: i64) -> CommandRecord {
        CommandRecord {
            id,
            app: app.into(),
            command: command.into(),
            argument: None,
            start_time_ms: None,
            expire_ms: None,
            trace_id: None,
            created_ms: now,
            status: command_status::READY,
            times: 0,
            delivered_in: Vec::new(),
            result: None,
            cancelled_by_server: false,
            replies: Vec::new(),
        }
    }
}

impl CommandRecord {
    /// Status 0 or 1: the server keeps sending it.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.status,
            command_status::READY | command_status::PROCESSING
        )
    }
}

/// An authorized, bound `/App/CommandReply`.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandReplyRecord {
    pub seq: u64,
    /// `sub` / `jti` of the token.
    pub app: String,
    pub client_id: String,
    /// `Id` as sent.
    pub id: i64,
    pub status: i64,
    /// `Data` as sent (the command stores it trimmed to 500).
    pub data: Option<String>,
    /// Envelope of the reply: `(code, data)`: (0, 1) stored, (0, 0) unknown id, (403, null) another
    /// app's command.
    pub code: i64,
    pub data_reply: Value,
}

/// One event of an accepted `/App/PostEvents` batch (an `AppHistory` row, stardust-runtime/docs/stardust-protocol.md §10.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub seq: u64,
    /// `sub` / `jti` of the token.
    pub app: String,
    pub client_id: String,
    /// `Time` as sent (0 when absent).
    pub time: i64,
    pub event_type: Option<String>,
    /// `Name` as sent (the server stores `null` as `事件`).
    pub name: Option<String>,
    /// `Remark` as stored (cut to 2000).
    pub remark: Option<String>,
    /// `Type` is not `error` (ignoring case).
    pub success: bool,
    /// `CreateTime`: `Time` when its year is after 2000, else the arrival (server) time; Unix ms.
    pub created_ms: i64,
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

/// Which endpoint(s) a fault rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    Any,
    Login,
    Ping,
    Logout,
    /// Both `/Trace/Report` and `/Trace/ReportRaw`.
    Report,
    /// Exactly one endpoint.
    Only(Endpoint),
}

impl On {
    fn matches(self, ep: Endpoint) -> bool {
        match self {
            On::Any => true,
            On::Login => ep == Endpoint::Login,
            On::Ping => ep == Endpoint::Ping,
            On::Logout => ep == Endpoint::Logout,
            On::Report => matches!(ep, Endpoint::Report | Endpoint::ReportRaw),
            On::Only(e) => e == ep,
        }
    }
}

/// An injected fault. The request is always recorded (with the fault) before the fault applies;
/// the rule that gave it is used up a moment earlier (see [`FakeStardust::pending_faults`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Reply this HTTP status with a small text/plain body; nothing is processed.
    Status { status: u16, body: String },
    /// HTTP 200 with a business error envelope `{code, message}`; nothing is processed.
    Code { code: i64, message: String },
    /// Arbitrary reply, e.g. HTML garbage with 200; nothing is processed.
    Raw {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
    /// Arbitrary reply with these headers (e.g. `Content-Type` and `Content-Encoding`), sent
    /// as they are; nothing is processed.
    RawHeaders {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Sleep this long (interruptible by drop), then process and answer normally.
    Slow(Duration),
    /// Read the whole request, then reset the TCP connection (SO_LINGER 0) without any response.
    /// Nothing is processed.
    Drop,
    /// Process the request normally (stored!), then reset the connection instead of answering:
    /// "response lost" (the client may resend and double-count).
    DropAfterProcessing,
    /// Hold the request without answering until `release_hangs()`/`clear_faults()` (then it is
    /// processed and answered normally) or until the server is dropped (no answer).
    Hang,
}

impl Fault {
    /// HTTP status with a short body (e.g. `Fault::status(503)`).
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            body: format!("fake stardust: injected HTTP {status}"),
        }
    }
    /// Business error code in a 200 envelope.
    pub fn code(code: i64, message: &str) -> Fault {
        Fault::Code {
            code,
            message: message.to_string(),
        }
    }
    /// `200 text/html <html>oops</html>`.
    pub fn garbage() -> Fault {
        Fault::Raw {
            status: 200,
            content_type: "text/html".into(),
            body: b"<html>oops</html>".to_vec(),
        }
    }
    pub fn slow(d: Duration) -> Fault {
        Fault::Slow(d)
    }
    /// `200 application/json` with `Content-Encoding: gzip`: a success envelope
    /// `{"code":0,"data":{}}` followed by JSON whitespace, `inflated` bytes in all once
    /// decoded, about a thousandth of that on the wire.
    pub fn gzip_bomb(inflated: usize) -> Fault {
        use std::io::Write;
        let envelope = br#"{"code":0,"data":{}}"#;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(envelope).expect("write to a Vec");
        let spaces = [b' '; 64 * 1024];
        let mut left = inflated.saturating_sub(envelope.len());
        while left > 0 {
            let n = left.min(spaces.len());
            enc.write_all(&spaces[..n]).expect("write to a Vec");
            left -= n;
        }
        Fault::RawHeaders {
            status: 200,
            headers: vec![
                (
                    "Content-Type".into(),
                    "application/json; charset=utf-8".into(),
                ),
                ("Content-Encoding".into(), "gzip".into()),
            ],
            body: enc.finish().expect("write to a Vec"),
        }
    }
}

#[derive(Clone, Debug)]
struct FaultRule {
    on: On,
    fault: Fault,
    /// None = until cleared.
    remaining: Option<u32>,
}

#[derive(Default)]
pub(crate) struct FaultState {
    rules: Vec<FaultRule>,
    /// Bumped by release_hangs()/clear_faults().
    hang_gen: u64,
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// Endpoint a request path maps to (case-insensitive, trailing `/` ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Login,
    Ping,
    Logout,
    Report,
    ReportRaw,
    /// `/App/PostEvents` (stardust-runtime/docs/stardust-protocol.md §10).
    PostEvents,
    /// `/App/CommandReply` (stardust-runtime/docs/stardust-protocol.md §9.5).
    CommandReply,
    Other,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Endpoint {
        let p = path.split(['?', '#']).next().unwrap_or("");
        let p = p.trim_end_matches('/').to_ascii_lowercase();
        match p.as_str() {
            "/app/login" => Endpoint::Login,
            "/app/ping" => Endpoint::Ping,
            "/app/logout" => Endpoint::Logout,
            "/trace/report" => Endpoint::Report,
            "/trace/reportraw" => Endpoint::ReportRaw,
            "/app/postevents" => Endpoint::PostEvents,
            "/app/commandreply" => Endpoint::CommandReply,
            _ => Endpoint::Other,
        }
    }
}

/// The reply the fake produced for a request.
#[derive(Clone, Debug)]
pub struct RecordedResponse {
    pub status: u16,
    pub body: Vec<u8>,
    pub json: Option<Value>,
}

/// One HTTP request as received through the front port.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub seq: u64,
    pub endpoint: Endpoint,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string without `?` ("" if none).
    pub query: String,
    /// Header names lowercased, in order received.
    pub headers: Vec<(String, String)>,
    /// Body bytes as received (de-chunked; still gzip for ReportRaw).
    pub body: Vec<u8>,
    /// JSON of the body (gunzipped first for ReportRaw with `application/x-gzip`), if it parses.
    pub json: Option<Value>,
    pub received_at: SystemTime,
    pub received_instant: Instant,
    pub peer: Option<SocketAddr>,
    pub fault: Option<Fault>,
    /// None while unanswered, and for dropped / hung-then-killed requests.
    pub response: Option<RecordedResponse>,
}

impl RecordedRequest {
    /// True for `/Trace/Report` and `/Trace/ReportRaw`.
    pub fn is_report(&self) -> bool {
        matches!(self.endpoint, Endpoint::Report | Endpoint::ReportRaw)
    }
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Envelope `code` of the reply (case-insensitive), if it was a JSON envelope.
    pub fn response_code(&self) -> Option<i64> {
        let j = self.response.as_ref()?.json.as_ref()?.as_object()?;
        model::get_ci(j, "code")?.as_i64()
    }
}

/// A processed `/App/Login`.
#[derive(Clone, Debug)]
pub struct LoginRecord {
    pub seq: u64,
    /// AppId (or Code) as sent.
    pub app_id: String,
    /// ClientId as sent (or the one the server invented when empty).
    pub client_id: String,
    pub version: Option<String>,
    pub secret: SecretCheck,
    /// Envelope code of the reply (0 = success even in code-200 mode).
    pub code: i64,
    pub token: Option<String>,
    pub auto_registered: bool,
    /// Whether the reply disclosed code/secret.
    pub disclosed_secret: bool,
    /// `Compile` as bound (Int64 as sent; `None` when absent).
    pub compile: Option<i64>,
    pub body: Value,
}

/// An authorized `/App/Ping`.
#[derive(Clone, Debug)]
pub struct PingRecord {
    pub seq: u64,
    /// `sub` of the token.
    pub app: String,
    /// `jti` of the token.
    pub client_id: String,
    pub body: Value,
    /// A fresh token was returned (old one was within the refresh window).
    pub new_token: Option<String>,
    /// Envelope code of the reply: 0, or 500 when the action failed (an unparseable `Version`
    /// with an `App.Compile` over 30 days old, a string over its column; stardust-runtime/docs/stardust-protocol.md §6.5, §6.6). A failed
    /// ping refreshes no token and delivers no commands.
    pub code: i64,
    /// Ids of the commands delivered in the reply.
    pub commands: Vec<i64>,
}

/// An authorized `/App/Logout`.
#[derive(Clone, Debug)]
pub struct LogoutRecord {
    pub seq: u64,
    pub app: String,
    pub client_id: String,
    pub reason: Option<String>,
}

/// An accepted `/Trace/Report(Raw)` (bound, token ok, app not disabled).
#[derive(Clone, Debug)]
pub struct ReportRecord {
    pub seq: u64,
    pub endpoint: Endpoint,
    /// Body arrived gzip-compressed.
    pub gzip: bool,
    /// The JSON as sent.
    pub raw: Value,
    /// Bound model: PascalCase keys, numeric strings converted, null builders removed.
    pub model: Value,
    /// Builders that passed the server's filters (normalized, PascalCase).
    pub accepted: Vec<Value>,
    /// Builders the server dropped, with the reason.
    pub dropped: Vec<(Value, String)>,
    /// `data` of the reply (camelCase TraceResponse).
    pub response: Value,
}

/// A strictness violation: a request the real server would reject (HTTP 400/415, `{code:500}`),
/// a rule the real server does not enforce, or a requirement of
/// stardust-runtime/docs/stardust-protocol.md §1.2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seq: u64,
    pub endpoint: Endpoint,
    /// Short rule id, e.g. "errors-gt-total", "token-in-query".
    pub rule: String,
    pub detail: String,
}

/// Everything recorded so far (a snapshot is handed to `wait_for` predicates).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    pub requests: Vec<RecordedRequest>,
    pub logins: Vec<LoginRecord>,
    pub pings: Vec<PingRecord>,
    pub logouts: Vec<LogoutRecord>,
    pub reports: Vec<ReportRecord>,
    pub violations: Vec<Violation>,
    /// Accepted events, one per row, in arrival order.
    pub events: Vec<EventRecord>,
    /// Commands queued with `send_command*`, by id (kept by `clear_records`).
    pub commands: Vec<CommandRecord>,
    /// Authorized, bound `/App/CommandReply` requests.
    pub command_replies: Vec<CommandReplyRecord>,
}

impl Recorded {
    /// Sum of (Total, Errors) per builder name over all accepted builders of all accepted reports.
    pub fn totals_by_name(&self) -> BTreeMap<String, (u64, u64)> {
        let mut m = BTreeMap::new();
        for b in self.accepted_builders() {
            let name = b["Name"].as_str().unwrap_or("").to_string();
            let e: &mut (u64, u64) = m.entry(name).or_default();
            e.0 += b["Total"].as_i64().unwrap_or(0).max(0) as u64;
            e.1 += b["Errors"].as_i64().unwrap_or(0).max(0) as u64;
        }
        m
    }
    /// All accepted builders, in arrival order.
    pub fn accepted_builders(&self) -> impl Iterator<Item = &Value> {
        self.reports.iter().flat_map(|r| r.accepted.iter())
    }
    /// Requests to one endpoint.
    pub fn requests_to(&self, ep: Endpoint) -> impl Iterator<Item = &RecordedRequest> {
        self.requests.iter().filter(move |r| r.endpoint == ep)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Totals and errors by operation name, as [`Recorded::totals_by_name`] gives them, from
/// `(name, total, errors)` rows.
pub fn totals(rows: &[(&str, u64, u64)]) -> BTreeMap<String, (u64, u64)> {
    rows.iter()
        .map(|(n, t, e)| (n.to_string(), (*t, *e)))
        .collect()
}

pub(crate) fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn random_u64() -> u64 {
    static CTR: AtomicU64 = AtomicU64::new(0);
    let n = CTR.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64) << 32;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn random_alnum(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    (0..n)
        .map(|_| A[(random_u64() % A.len() as u64) as usize] as char)
        .collect()
}

/// Sampling parameters as the client should have them (positive values replace, stardust-runtime/docs/stardust-protocol.md §7.6).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Effective {
    pub max_samples: i64,
    pub max_errors: i64,
    pub max_tag_length: i64,
}

impl Default for Effective {
    fn default() -> Self {
        Effective {
            max_samples: 1,
            max_errors: 10,
            max_tag_length: 1024,
        }
    }
}

pub(crate) struct Config {
    pub settings: Settings,
    pub apps: BTreeMap<String, AppEntry>,
    /// `App` record fields, by app name (created on first use).
    pub meta: BTreeMap<String, AppMeta>,
    pub token_key: Vec<u8>,
    /// (current, previous) effective client parameters.
    pub eff: (Effective, Effective),
}

#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub fault: Option<Fault>,
    /// The release generation when the fault was taken: a `Hang` waits for a later one, so a
    /// release between taking the fault and hanging is not missed.
    pub hang_gen: u64,
    pub peer: Option<SocketAddr>,
}

pub(crate) struct Shared {
    pub cfg: Mutex<Config>,
    pub rec: Mutex<Recorded>,
    pub rec_cv: Condvar,
    pub faults: Mutex<FaultState>,
    pub fault_cv: Condvar,
    pub pending: Mutex<HashMap<u16, Pending>>,
    pub conns: Mutex<HashMap<u64, TcpStream>>,
    pub next_id: AtomicU64,
    pub stop: AtomicBool,
    pub backend_addr: SocketAddr,
}

impl Shared {
    pub fn server_now_ms(&self) -> i64 {
        unix_ms_now() + lock(&self.cfg).settings.clock_offset_ms
    }

    /// The fault for a request to `ep`, if a rule matches (using up one of a counted rule's
    /// turns), with the release generation of hung requests at that moment.
    pub fn take_fault(&self, ep: Endpoint) -> (Option<Fault>, u64) {
        let mut fs = lock(&self.faults);
        let hang_gen = fs.hang_gen;
        let Some(idx) = fs.rules.iter().position(|r| r.on.matches(ep)) else {
            return (None, hang_gen);
        };
        let rule = &mut fs.rules[idx];
        let fault = rule.fault.clone();
        if let Some(n) = rule.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                fs.rules.remove(idx);
            }
        }
        (Some(fault), hang_gen)
    }

    /// Sleep up to `d`; returns early (false) if the server stops.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.faults);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            g = self
                .fault_cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Block until hangs are released (true) or the server stops (false).
    /// Waits until hung requests are released after generation `gen0` (the one current when
    /// the fault was taken); false if the server stops first.
    pub fn hang(&self, gen0: u64) -> bool {
        let mut g = lock(&self.faults);
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            if g.hang_gen != gen0 {
                return true;
            }
            g = self
                .fault_cv
                .wait_timeout(g, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn with_rec<R>(&self, f: impl FnOnce(&mut Recorded) -> R) -> R {
        let r = f(&mut lock(&self.rec));
        self.rec_cv.notify_all();
        r
    }

    pub fn register_conn(&self, s: &TcpStream) -> Option<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let c = s.try_clone().ok()?;
        lock(&self.conns).insert(id, c);
        Some(id)
    }

    pub fn unregister_conn(&self, id: Option<u64>) {
        if let Some(id) = id {
            lock(&self.conns).remove(&id);
        }
    }

    pub fn shutdown_conns(&self) {
        for (_, c) in lock(&self.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Builder and server
// ---------------------------------------------------------------------------------------------

/// Configures a [`FakeStardust`] before it starts.
#[derive(Clone, Debug, Default)]
pub struct FakeStardustBuilder {
    settings: Settings,
    apps: Vec<AppEntry>,
}

impl FakeStardustBuilder {
    /// Pre-register an enabled app (`secret: None` = no secret required).
    pub fn app(mut self, name: &str, secret: Option<&str>) -> Self {
        self.apps.push(AppEntry {
            name: name.into(),
            secret: secret.map(Into::into),
            enabled: true,
            auto_registered: false,
        });
        self
    }
    /// Pre-register a disabled app (login → 403 "禁止登录").
    pub fn disabled_app(mut self, name: &str, secret: Option<&str>) -> Self {
        self.apps.push(AppEntry {
            name: name.into(),
            secret: secret.map(Into::into),
            enabled: false,
            auto_registered: false,
        });
        self
    }
    pub fn pascal_case(mut self, on: bool) -> Self {
        self.settings.pascal_case = on;
        self
    }
    pub fn success_code_200(mut self, on: bool) -> Self {
        self.settings.success_code_200 = on;
        self
    }
    pub fn clock_offset_ms(mut self, ms: i64) -> Self {
        self.settings.clock_offset_ms = ms;
        self
    }
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.settings.token_lifetime = d;
        self
    }
    pub fn token_refresh_window(mut self, d: Duration) -> Self {
        self.settings.token_refresh_window = d;
        self
    }
    pub fn ping_period(mut self, secs: i32) -> Self {
        self.settings.ping_period = secs;
        self
    }
    pub fn wrong_secret(mut self, m: WrongSecret) -> Self {
        self.settings.wrong_secret = m;
        self
    }
    pub fn auto_register_enabled(mut self, on: bool) -> Self {
        self.settings.auto_register_enabled = on;
        self
    }
    pub fn salt_time_secs(mut self, secs: i64) -> Self {
        self.settings.salt_time_secs = secs;
        self
    }
    pub fn trace_response(mut self, r: TraceResponseCfg) -> Self {
        self.settings.trace_response = r;
        self
    }
    pub fn settings(mut self, s: Settings) -> Self {
        self.settings = s;
        self
    }
    /// See [`Settings::server_utc_offset_min`].
    pub fn server_utc_offset_min(mut self, minutes: i32) -> Self {
        self.settings.server_utc_offset_min = minutes;
        self
    }
    /// See [`Settings::require_compile`].
    pub fn require_compile(mut self, on: bool) -> Self {
        self.settings.require_compile = on;
        self
    }
    /// See [`Settings::max_recorded_response_bytes`].
    pub fn max_recorded_response_bytes(mut self, n: usize) -> Self {
        self.settings.max_recorded_response_bytes = n;
        self
    }

    /// See [`Settings::login_code`].
    pub fn login_code(mut self, code: &str) -> Self {
        self.settings.login_code = Some(code.to_owned());
        self
    }

    /// Bind both ports on 127.0.0.1 and start serving. Panics if binding fails.
    pub fn start(self) -> FakeStardust {
        let backend = tiny_http::Server::http("127.0.0.1:0").expect("fake stardust: bind backend");
        let backend_addr = backend
            .server_addr()
            .to_ip()
            .expect("fake stardust: backend is TCP");
        let backend = Arc::new(backend);
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake stardust: bind front");
        let front_addr = listener.local_addr().expect("front addr");

        let mut key = [0u8; 16];
        key.iter_mut().for_each(|b| *b = random_u64() as u8);
        let shared = Arc::new(Shared {
            cfg: Mutex::new(Config {
                settings: self.settings,
                apps: self.apps.into_iter().map(|a| (a.name.clone(), a)).collect(),
                meta: BTreeMap::new(),
                token_key: key.to_vec(),
                eff: Default::default(),
            }),
            rec: Mutex::new(Recorded::default()),
            rec_cv: Condvar::new(),
            faults: Mutex::new(FaultState::default()),
            fault_cv: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            backend_addr,
        });

        let backend_thread = {
            let shared = shared.clone();
            let server = backend.clone();
            std::thread::Builder::new()
                .name("fake-stardust-backend".into())
                .spawn(move || {
                    while !shared.stop.load(Ordering::SeqCst) {
                        match server.recv_timeout(Duration::from_millis(100)) {
                            Ok(Some(rq)) => {
                                let sh = shared.clone();
                                let _ = std::thread::Builder::new()
                                    .name("fake-stardust-req".into())
                                    .spawn(move || handlers::serve(&sh, rq));
                            }
                            Ok(None) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })
                .expect("spawn backend thread")
        };

        let front = proxy::Front::start(shared.clone(), listener);
        FakeStardust {
            shared,
            front: Mutex::new(front),
            backend,
            backend_thread: Some(backend_thread),
            addr: front_addr,
        }
    }
}

/// The fake server. Stops (bounded) on drop.
pub struct FakeStardust {
    shared: Arc<Shared>,
    front: Mutex<proxy::Front>,
    backend: Arc<tiny_http::Server>,
    backend_thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl FakeStardust {
    /// Start with default settings and no pre-registered apps.
    pub fn start() -> FakeStardust {
        FakeStardustBuilder::default().start()
    }
    pub fn builder() -> FakeStardustBuilder {
        FakeStardustBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    // ---- settings --------------------------------------------------------------------------

    pub fn settings(&self) -> Settings {
        lock(&self.shared.cfg).settings.clone()
    }
    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut lock(&self.shared.cfg).settings)
    }
    pub fn set_pascal_case(&self, on: bool) {
        self.update_settings(|s| s.pascal_case = on)
    }
    pub fn set_success_code_200(&self, on: bool) {
        self.update_settings(|s| s.success_code_200 = on)
    }
    pub fn set_clock_offset_ms(&self, ms: i64) {
        self.update_settings(|s| s.clock_offset_ms = ms)
    }
    pub fn set_token_lifetime(&self, d: Duration) {
        self.update_settings(|s| s.token_lifetime = d)
    }
    pub fn set_token_refresh_window(&self, d: Duration) {
        self.update_settings(|s| s.token_refresh_window = d)
    }
    pub fn set_ping_period(&self, secs: i32) {
        self.update_settings(|s| s.ping_period = secs)
    }
    pub fn set_wrong_secret(&self, m: WrongSecret) {
        self.update_settings(|s| s.wrong_secret = m)
    }
    pub fn set_auto_register_enabled(&self, on: bool) {
        self.update_settings(|s| s.auto_register_enabled = on)
    }
    pub fn set_trace_response(&self, r: TraceResponseCfg) {
        self.update_settings(|s| s.trace_response = r)
    }
    pub fn set_server_utc_offset_min(&self, minutes: i32) {
        self.update_settings(|s| s.server_utc_offset_min = minutes)
    }
    pub fn set_require_compile(&self, on: bool) {
        self.update_settings(|s| s.require_compile = on)
    }
    pub fn set_max_recorded_response_bytes(&self, n: usize) {
        self.update_settings(|s| s.max_recorded_response_bytes = n)
    }

    /// Server clock: Unix ms now + clock_offset_ms.
    pub fn server_now_ms(&self) -> i64 {
        self.shared.server_now_ms()
    }

    // ---- apps ------------------------------------------------------------------------------

    /// Register (or replace) an enabled app.
    pub fn add_app(&self, name: &str, secret: Option<&str>) {
        let e = AppEntry {
            name: name.into(),
            secret: secret.map(Into::into),
            enabled: true,
            auto_registered: false,
        };
        let mut cfg = lock(&self.shared.cfg);
        cfg.apps.insert(name.into(), e);
        cfg.meta.remove(name);
    }
    /// Enable/disable an app (no-op if unknown).
    pub fn set_app_enabled(&self, name: &str, enabled: bool) {
        if let Some(a) = lock(&self.shared.cfg).apps.get_mut(name) {
            a.enabled = enabled;
        }
    }
    pub fn remove_app(&self, name: &str) {
        let mut cfg = lock(&self.shared.cfg);
        cfg.apps.remove(name);
        cfg.meta.remove(name);
    }
    pub fn app(&self, name: &str) -> Option<AppEntry> {
        lock(&self.shared.cfg).apps.get(name).cloned()
    }
    pub fn apps(&self) -> Vec<AppEntry> {
        lock(&self.shared.cfg).apps.values().cloned().collect()
    }
    /// The `App` record's version, compile time and display name (None if the server has none
    /// for this name yet).
    pub fn app_meta(&self, name: &str) -> Option<AppMeta> {
        lock(&self.shared.cfg).meta.get(name).cloned()
    }
    /// Set `App.Version` as if stored earlier (e.g. by another instance, or in the web UI).
    pub fn set_app_version(&self, name: &str, version: Option<&str>) {
        lock(&self.shared.cfg)
            .meta
            .entry(name.into())
            .or_default()
            .version = version.map(Into::into);
    }
    /// Set `App.Compile` (Unix ms; 0 = 1970) as if stored by an earlier login.
    pub fn set_app_compile_ms(&self, name: &str, compile_ms: i64) {
        lock(&self.shared.cfg)
            .meta
            .entry(name.into())
            .or_default()
            .compile_ms = compile_ms;
    }

    // ---- commands and events (stardust-runtime/docs/stardust-protocol.md §9, §10) ---------------------------------

    /// Queue an immediate command without expiry for `app` (as the web UI or
    /// `/App/SendCommand` would); returns its id. It is delivered in the `commands` of every
    /// successful ping of any instance of the app until it gets a final status (2/3/4) by
    /// `/App/CommandReply`, and cancelled by the server after 11 sends (stardust-runtime/docs/stardust-protocol.md §9.6).
    pub fn send_command(&self, app: &str, command: &str, argument: Option<&str>) -> i64 {
        self.send_command_with(app, command, argument, CommandOptions::default())
    }
    /// Queue a command with a start time, an expiry and/or a trace id; returns its id. With an
    /// expiry it is sent up to 101 times or until it expires; a future start time is sent on
    /// every ping without counting until due (stardust-runtime/docs/stardust-protocol.md §9.6).
    /// Panics when `command` is empty or longer than 50, or `argument` longer than 500
    /// (the real server cannot store such a command).
    pub fn send_command_with(
        &self,
        app: &str,
        command: &str,
        argument: Option<&str>,
        opts: CommandOptions,
    ) -> i64 {
        assert!(
            !command.is_empty() && model::utf16_len(command) <= 50,
            "fake stardust: command name must be 1..=50 chars: {command:?}"
        );
        assert!(
            argument.is_none_or(|a| model::utf16_len(a) <= 500),
            "fake stardust: command argument longer than 500"
        );
        let now = self.server_now_ms();
        let trace_id = opts.trace_id.clone().or_else(|| {
            Some(format!(
                "00-{:016x}{:016x}-{:016x}-01",
                random_u64(),
                random_u64(),
                random_u64()
            ))
        });
        self.shared.with_rec(|r| {
            let id = r.commands.iter().map(|c| c.id).max().unwrap_or(0) + 1;
            r.commands.push(CommandRecord {
                argument: argument.map(Into::into),
                start_time_ms: opts.start_time_ms.filter(|t| *t > 0),
                expire_ms: opts.expire_ms.filter(|t| *t > 0),
                trace_id,
                ..CommandRecord::ready(id, app, command, now)
            });
            id
        })
    }
    /// Queue one immediate command without argument or expiry per name, all at once (in time
    /// linear in their number, where [`send_command`](Self::send_command) looks at every
    /// command queued before); returns their ids, in order. Panics as `send_command_with` does.
    pub fn send_commands(&self, app: &str, names: &[String]) -> Vec<i64> {
        for n in names {
            assert!(
                !n.is_empty() && model::utf16_len(n) <= 50,
                "fake stardust: command name must be 1..=50 chars: {n:?}"
            );
        }
        let now = self.server_now_ms();
        self.shared.with_rec(|r| {
            let first = r.commands.iter().map(|c| c.id).max().unwrap_or(0) + 1;
            let ids: Vec<i64> = (first..).take(names.len()).collect();
            r.commands.extend(
                ids.iter()
                    .zip(names)
                    .map(|(&id, name)| CommandRecord::ready(id, app, name, now)),
            );
            ids
        })
    }
    /// All commands queued so far, by id.
    pub fn commands(&self) -> Vec<CommandRecord> {
        lock(&self.shared.rec).commands.clone()
    }
    pub fn command(&self, id: i64) -> Option<CommandRecord> {
        lock(&self.shared.rec)
            .commands
            .iter()
            .find(|c| c.id == id)
            .cloned()
    }
    pub fn command_replies(&self) -> Vec<CommandReplyRecord> {
        lock(&self.shared.rec).command_replies.clone()
    }
    /// Accepted events (one per row).
    pub fn events(&self) -> Vec<EventRecord> {
        lock(&self.shared.rec).events.clone()
    }
    /// Panics listing every command that was delivered at least once but has no final status
    /// from a reply (the client must answer each command once with 2, 3 or 4; stardust-runtime/docs/stardust-protocol.md §9.8).
    pub fn assert_commands_answered(&self) {
        let open: Vec<String> = self
            .commands()
            .into_iter()
            .filter(|c| !c.delivered_in.is_empty())
            .filter(|c| c.is_pending() || c.cancelled_by_server)
            .map(|c| {
                format!(
                    "  #{} {:?} status {} after {} deliveries",
                    c.id,
                    c.command,
                    c.status,
                    c.delivered_in.len()
                )
            })
            .collect();
        assert!(
            open.is_empty(),
            "fake stardust: {} delivered command(s) without a final reply:\n{}",
            open.len(),
            open.join("\n")
        );
    }

    // ---- tokens ----------------------------------------------------------------------------

    /// Mint a token signed with the current key; `exp` = server now (s) + `lifetime_secs`
    /// (negative → already expired).
    pub fn mint_token(&self, app: &str, client_id: &str, lifetime_secs: i64) -> String {
        let now_s = self.server_now_ms() / 1000;
        let cfg = lock(&self.shared.cfg);
        auth::issue_token(
            &cfg.token_key,
            &TokenClaims {
                sub: app.into(),
                jti: client_id.into(),
                iat: now_s,
                exp: now_s + lifetime_secs,
            },
        )
    }
    /// Verify a token like the server would (None if invalid or expired).
    pub fn verify_token(&self, token: &str) -> Option<TokenClaims> {
        let now = self.server_now_ms();
        auth::verify_token(&lock(&self.shared.cfg).token_key, token, now).ok()
    }
    /// Rotate the signing key: every token issued so far becomes invalid (server restart with a
    /// new TokenSecret).
    pub fn invalidate_tokens(&self) {
        let mut cfg = lock(&self.shared.cfg);
        cfg.token_key = (0..16).map(|_| random_u64() as u8).collect();
    }

    // ---- faults ----------------------------------------------------------------------------

    /// Queue a one-shot fault (rules are consulted in FIFO order; first match wins).
    pub fn push_fault(&self, on: On, fault: Fault) {
        self.fault_next(on, 1, fault)
    }
    /// Apply `fault` to the next `n` matching requests.
    pub fn fault_next(&self, on: On, n: u32, fault: Fault) {
        if n > 0 {
            lock(&self.shared.faults).rules.push(FaultRule {
                on,
                fault,
                remaining: Some(n),
            });
        }
    }
    /// Apply `fault` to every matching request until `clear_faults()`.
    pub fn set_fault(&self, on: On, fault: Fault) {
        lock(&self.shared.faults).rules.push(FaultRule {
            on,
            fault,
            remaining: None,
        });
    }
    /// Remove all fault rules and release hung requests.
    pub fn clear_faults(&self) {
        let mut fs = lock(&self.shared.faults);
        fs.rules.clear();
        fs.hang_gen += 1;
        self.shared.fault_cv.notify_all();
    }
    /// Let hung requests proceed (they are then processed and answered normally).
    pub fn release_hangs(&self) {
        lock(&self.shared.faults).hang_gen += 1;
        self.shared.fault_cv.notify_all();
    }
    /// Number of fault rules still armed. A rule is used up when a request meets it, before
    /// that request is recorded: to act on what a fault did, wait (`wait_for`) for the recorded
    /// request carrying it, not for this count to reach zero.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.faults).rules.len()
    }
    /// Close the listening socket (new connects are refused) and reset all open client
    /// connections. Idempotent.
    pub fn refuse_connections(&self) {
        lock(&self.front).close();
        self.shared.shutdown_conns();
    }
    /// Listen again on the same port. Idempotent. Panics if the port cannot be re-bound.
    pub fn accept_connections(&self) {
        lock(&self.front).reopen(self.shared.clone());
    }
    pub fn is_accepting(&self) -> bool {
        lock(&self.front).is_open()
    }

    // ---- records ---------------------------------------------------------------------------

    /// Snapshot of everything recorded.
    pub fn recorded(&self) -> Recorded {
        lock(&self.shared.rec).clone()
    }
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.rec).requests.clone()
    }
    pub fn reports(&self) -> Vec<ReportRecord> {
        lock(&self.shared.rec).reports.clone()
    }
    /// Every report request (`/Trace/Report` or `/Trace/ReportRaw`), whatever its outcome.
    pub fn report_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(RecordedRequest::is_report)
            .collect()
    }
    /// Waits until `n` logins were answered with success (panics after `timeout`), then a
    /// little longer, so that the client has taken the last reply in (its token and the server
    /// clock: spans aggregated before that carry local time).
    pub fn expect_logins(&self, n: usize, timeout: Duration) {
        let answered = |r: &Recorded| {
            r.requests
                .iter()
                .filter(|q| {
                    q.endpoint == Endpoint::Login && matches!(q.response_code(), Some(0 | 200))
                })
                .count()
        };
        assert!(
            self.wait_for(|r| answered(r) >= n, timeout),
            "expected {n} successful login(s); got {:#?}",
            self.logins()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    pub fn logins(&self) -> Vec<LoginRecord> {
        lock(&self.shared.rec).logins.clone()
    }
    pub fn pings(&self) -> Vec<PingRecord> {
        lock(&self.shared.rec).pings.clone()
    }
    pub fn logouts(&self) -> Vec<LogoutRecord> {
        lock(&self.shared.rec).logouts.clone()
    }
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.shared.rec).violations.clone()
    }
    /// Panics listing all violations, if any.
    pub fn assert_no_violations(&self) {
        let v = self.violations();
        if !v.is_empty() {
            let lines: Vec<String> = v
                .iter()
                .map(|v| format!("  #{} {:?} [{}] {}", v.seq, v.endpoint, v.rule, v.detail))
                .collect();
            panic!(
                "fake stardust recorded {} violation(s):\n{}",
                v.len(),
                lines.join("\n")
            );
        }
    }
    pub fn totals_by_name(&self) -> BTreeMap<String, (u64, u64)> {
        lock(&self.shared.rec).totals_by_name()
    }
    /// Forget all records (not apps, settings, faults or queued commands).
    pub fn clear_records(&self) {
        self.shared.with_rec(|r| {
            let commands = std::mem::take(&mut r.commands);
            *r = Recorded::default();
            r.commands = commands;
        });
    }
    /// Block until `pred` holds on the recorded state (true) or `timeout` passes (false).
    pub fn wait_for(&self, mut pred: impl FnMut(&Recorded) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.rec);
        loop {
            if pred(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .rec_cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for FakeStardust {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Kill client connections first, so released hung/slow requests cannot answer anyone.
        self.shared.shutdown_conns();
        lock(&self.front).close();
        self.shared.shutdown_conns();
        {
            let _g = lock(&self.shared.faults);
            self.shared.fault_cv.notify_all();
        }
        self.backend.unblock();
        if let Some(t) = self.backend_thread.take() {
            let _ = t.join();
        }
    }
}
