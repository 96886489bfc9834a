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

use std::collections::{BTreeMap, HashMap};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod auth;
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

/// An injected fault. The request is always recorded (with the fault) before it applies.
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

/// A strictness violation (a rule the real server does not enforce, or a requirement of stardust-runtime/docs/stardust-protocol.md §1.2).
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
    pub token_key: Vec<u8>,
    /// (current, previous) effective client parameters.
    pub eff: (Effective, Effective),
}

#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub fault: Option<Fault>,
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

    pub fn take_fault(&self, ep: Endpoint) -> Option<Fault> {
        let mut fs = lock(&self.faults);
        let idx = fs.rules.iter().position(|r| r.on.matches(ep))?;
        let rule = &mut fs.rules[idx];
        let fault = rule.fault.clone();
        if let Some(n) = rule.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                fs.rules.remove(idx);
            }
        }
        Some(fault)
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
    pub fn hang(&self) -> bool {
        let mut g = lock(&self.faults);
        let gen0 = g.hang_gen;
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
        lock(&self.shared.cfg).apps.insert(name.into(), e);
    }
    /// Enable/disable an app (no-op if unknown).
    pub fn set_app_enabled(&self, name: &str, enabled: bool) {
        if let Some(a) = lock(&self.shared.cfg).apps.get_mut(name) {
            a.enabled = enabled;
        }
    }
    pub fn remove_app(&self, name: &str) {
        lock(&self.shared.cfg).apps.remove(name);
    }
    pub fn app(&self, name: &str) -> Option<AppEntry> {
        lock(&self.shared.cfg).apps.get(name).cloned()
    }
    pub fn apps(&self) -> Vec<AppEntry> {
        lock(&self.shared.cfg).apps.values().cloned().collect()
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
    /// Number of fault rules still armed.
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
    /// Forget all records (not apps, settings or faults).
    pub fn clear_records(&self) {
        self.shared.with_rec(|r| *r = Recorded::default());
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
