//! Endpoint logic (runs on the tiny_http backend).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{Map, Value, json};

use super::auth::{self, TokenClaims, TokenError};
use super::binding::{self, BindError};
use super::model::{self, Binding, str_ci, utf16_len};
use super::{
    AppMeta, CommandReplyRecord, Endpoint, EventRecord, Fault, LoginRecord, LogoutRecord,
    PingRecord, RecordedRequest, RecordedResponse, ReportRecord, Shared, Violation, WrongSecret,
    checks, command_status, lock, random_alnum, random_u64,
};

pub(crate) struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: Some("text/plain; charset=utf-8".into()),
            body: body.as_bytes().to_vec(),
        }
    }
    fn empty(status: u16) -> Reply {
        Reply {
            status,
            content_type: None,
            body: Vec::new(),
        }
    }
    /// ASP.NET's automatic 400 (ValidationProblemDetails, no `code`). Like STJ, which stops at
    /// the first conversion error, only the first error is reported.
    fn problem_400_errors(errs: &[(String, String)]) -> Reply {
        let mut errors = Map::new();
        if let Some((path, msg)) = errs.first() {
            errors.insert(path.clone(), json!([msg]));
        }
        let body = json!({
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "One or more validation errors occurred.",
            "status": 400,
            "errors": errors,
            "traceId": format!("00-{}-{}-00", trace_id(), &trace_id()[..16]),
        });
        Reply {
            status: 400,
            content_type: Some("application/problem+json; charset=utf-8".into()),
            body: body.to_string().into_bytes(),
        }
    }
}

fn trace_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// Parsed view of an incoming request.
pub(crate) struct Incoming {
    pub seq: u64,
    pub endpoint: Endpoint,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub fault: Option<Fault>,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        percent_decode(k)
            .eq_ignore_ascii_case(name)
            .then(|| percent_decode(v))
    })
}

pub(crate) fn split_target(target: &str) -> (String, String) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    }
}

pub(crate) fn is_gzip(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
}

pub(crate) fn gunzip(b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip: {e}"))?;
    Ok(out)
}

/// JSON view of a body (gunzipped for ReportRaw with the exact gzip content type).
pub(crate) fn body_json(
    endpoint: Endpoint,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Value> {
    if endpoint == Endpoint::ReportRaw && content_type == Some("application/x-gzip") {
        return serde_json::from_slice(&gunzip(body).ok()?).ok();
    }
    if is_gzip(body) {
        return serde_json::from_slice(&gunzip(body).ok()?).ok();
    }
    serde_json::from_slice(body).ok()
}

/// Record a request (and its violations); returns its seq.
pub(crate) fn record_incoming(
    sh: &Shared,
    method: &str,
    target: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    peer: Option<SocketAddr>,
    fault: Option<Fault>,
) -> u64 {
    let seq = sh
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (path, query) = split_target(target);
    let endpoint = Endpoint::from_path(&path);
    let ct = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone());
    let json = body_json(endpoint, ct.as_deref(), &body);
    let inc = Incoming {
        seq,
        endpoint,
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.clone(),
        body: body.clone(),
        fault: fault.clone(),
    };
    let violations = {
        let cfg = lock(&sh.cfg);
        checks::check(&cfg, &inc, json.as_ref())
    };
    let rr = RecordedRequest {
        seq,
        endpoint,
        method: method.to_string(),
        path,
        query,
        headers,
        body,
        json,
        received_at: SystemTime::now(),
        received_instant: Instant::now(),
        peer,
        fault,
        response: None,
    };
    sh.with_rec(|r| {
        r.requests.push(rr);
        r.violations.extend(violations);
    });
    seq
}

/// Handle one request from the backend server.
pub(crate) fn serve(sh: &Arc<Shared>, mut rq: tiny_http::Request) {
    let pending = rq
        .remote_addr()
        .and_then(|a| lock(&sh.pending).remove(&a.port()));
    let (fault, hang_gen, peer) = pending
        .map(|p| (p.fault, p.hang_gen, p.peer))
        .unwrap_or((None, 0, None));
    let method = rq.method().to_string();
    let target = rq.url().to_string();
    let headers: Vec<(String, String)> = rq
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.to_string().to_ascii_lowercase(),
                h.value.to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    let _ = rq.as_reader().read_to_end(&mut body);
    let seq = record_incoming(
        sh,
        &method,
        &target,
        headers.clone(),
        body.clone(),
        peer,
        fault.clone(),
    );
    let (path, query) = split_target(&target);
    let inc = Incoming {
        seq,
        endpoint: Endpoint::from_path(&path),
        method,
        path,
        query,
        headers,
        body,
        fault: fault.clone(),
    };

    match &fault {
        Some(Fault::Slow(d)) if !sh.sleep(*d) => return,
        Some(Fault::Hang) if !sh.hang(hang_gen) => return,
        _ => {}
    }
    let reply = match &fault {
        Some(Fault::Status { status, body }) => Reply::text(*status, body),
        Some(Fault::Code { code, message }) => envelope_err(sh, *code, message, true),
        Some(Fault::Raw {
            status,
            content_type,
            body,
        }) => Reply {
            status: *status,
            content_type: Some(content_type.clone()),
            body: body.clone(),
        },
        Some(Fault::RawHeaders { status, body, .. }) => Reply {
            status: *status,
            content_type: None,
            body: body.clone(),
        },
        _ => route(sh, &inc),
    };
    let rec_resp = if reply.body.len() <= lock(&sh.cfg).settings.max_recorded_response_bytes {
        RecordedResponse {
            status: reply.status,
            body: reply.body.clone(),
            json: serde_json::from_slice(&reply.body).ok(),
        }
    } else {
        RecordedResponse {
            status: reply.status,
            body: Vec::new(),
            json: None,
        }
    };
    sh.with_rec(|r| {
        if let Some(q) = r.requests.iter_mut().rev().find(|q| q.seq == seq) {
            q.response = Some(rec_resp);
        }
    });
    let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    let ct_header = reply
        .content_type
        .and_then(|ct| tiny_http::Header::from_bytes(&b"Content-Type"[..], ct.as_bytes()).ok());
    if let Some(h) = ct_header {
        resp = resp.with_header(h);
    }
    if let Some(Fault::RawHeaders { headers, .. }) = &fault {
        for (k, v) in headers {
            if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
                resp = resp.with_header(h);
            }
        }
    }
    let _ = rq.respond(resp);
}

// ---- envelopes ---------------------------------------------------------------------------------

fn pascalize(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let mut c = k.chars();
                    let k = match c.next() {
                        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                        None => k,
                    };
                    (k, pascalize(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(pascalize).collect()),
        other => other,
    }
}

fn json_reply(sh: &Shared, v: Value) -> Reply {
    let v = if lock(&sh.cfg).settings.pascal_case {
        pascalize(v)
    } else {
        v
    };
    Reply {
        status: 200,
        content_type: Some("application/json; charset=utf-8".into()),
        body: v.to_string().into_bytes(),
    }
}

fn envelope_ok(sh: &Shared, data: Value) -> Reply {
    let code = if lock(&sh.cfg).settings.success_code_200 {
        200
    } else {
        0
    };
    json_reply(sh, json!({"code": code, "data": data}))
}

fn envelope_err(sh: &Shared, code: i64, message: &str, with_trace_id: bool) -> Reply {
    let mut m = Map::new();
    m.insert("code".into(), json!(code));
    m.insert("message".into(), json!(message));
    if with_trace_id {
        m.insert("traceId".into(), json!(trace_id()));
    }
    json_reply(sh, Value::Object(m))
}

// ---- routing -----------------------------------------------------------------------------------

fn route(sh: &Shared, inc: &Incoming) -> Reply {
    let m = inc.method.to_ascii_uppercase();
    let allowed = match inc.endpoint {
        Endpoint::Login
        | Endpoint::Report
        | Endpoint::ReportRaw
        | Endpoint::PostEvents
        | Endpoint::CommandReply => m == "POST",
        Endpoint::Ping | Endpoint::Logout => m == "POST" || m == "GET",
        Endpoint::Other => return Reply::empty(404),
    };
    if !allowed {
        return Reply::empty(405);
    }
    match inc.endpoint {
        Endpoint::Login => login(sh, inc),
        Endpoint::Ping => ping(sh, inc),
        Endpoint::Logout => logout(sh, inc),
        Endpoint::Report => report(sh, inc, false),
        Endpoint::ReportRaw => report(sh, inc, true),
        Endpoint::PostEvents => post_events(sh, inc),
        Endpoint::CommandReply => command_reply(sh, inc),
        Endpoint::Other => Reply::empty(404),
    }
}

/// Binds the `[FromBody]` model of an `/App/*` action; the error is the automatic 415/400.
fn bind(inc: &Incoming) -> Result<Map<String, Value>, Reply> {
    match binding::bind_request(inc.endpoint, inc.header("content-type"), &inc.body) {
        Some(Ok(Value::Object(m))) => Ok(m),
        Some(Ok(Value::Array(a))) => {
            // PostEvents: wrap the array so callers get one shape.
            let mut m = Map::new();
            m.insert("$".into(), Value::Array(a));
            Ok(m)
        }
        Some(Ok(_)) | None => Ok(Map::new()),
        Some(Err(BindError::MediaType(_))) => Err(Reply::empty(415)),
        Some(Err(BindError::Invalid(errs))) => Err(Reply::problem_400_errors(&errs)),
    }
}

fn bound_i64(m: &Map<String, Value>, k: &str) -> i64 {
    m.get(k).and_then(Value::as_i64).unwrap_or(0)
}

fn bound_str(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(String::from)
}

/// XCode's string-column check on insert/update (stardust-runtime/docs/stardust-protocol.md §6.5): the message of the
/// `ArgumentOutOfRangeException` the action turns into `{code:500}`.
fn column_error(value: Option<&str>, field: &str, table: &str, limit: usize) -> Option<String> {
    let v = value?;
    let n = utf16_len(v);
    (n > limit).then(|| {
        format!("[{field}/{table}]长度限制{limit}字符，实际长度{n}字符 (Parameter '{field}')")
    })
}

fn violation(inc: &Incoming, rule: &str, detail: impl Into<String>) -> Violation {
    Violation {
        seq: inc.seq,
        endpoint: inc.endpoint,
        rule: rule.into(),
        detail: detail.into(),
    }
}

/// `App.Compile` + 30 days < now, the condition under which a ping parses versions (stardust-runtime/docs/stardust-protocol.md §6.6).
const THIRTY_DAYS_MS: i64 = 30 * 86_400_000;

/// What `AppOnline.Fill` does with a non-empty `Version` against the `App` record (stardust-runtime/docs/stardust-protocol.md §6.6):
/// `Ok(Some(v))` = store `v` as `App.Version`; `Err` = the `System.Version` exception message.
fn fill_version(meta: &AppMeta, version: &str, now_ms: i64) -> Result<Option<String>, String> {
    match meta.version.as_deref().filter(|v| !v.is_empty()) {
        None => Ok(Some(version.to_string())),
        Some(stored) if meta.compile_ms + THIRTY_DAYS_MS < now_ms => {
            let new = binding::parse_dotnet_version(version)?;
            let old = binding::parse_dotnet_version(stored)?;
            Ok((new > old).then(|| version.to_string()))
        }
        Some(_) => Ok(None),
    }
}

/// Token lookup order of ApiFilterAttribute.GetToken (stardust-runtime/docs/stardust-protocol.md §3.5).
pub(crate) fn find_token(inc: &Incoming) -> Option<String> {
    if let Some(t) = inc.query_param("Token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    if let Some(a) = inc.header("authorization").filter(|a| !a.is_empty()) {
        let t = a.strip_prefix("Bearer ").unwrap_or(a);
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    if let Some(t) = inc.header("x-token").filter(|t| !t.is_empty()) {
        return Some(t.to_string());
    }
    cookie_token(inc)
}

pub(crate) fn cookie_token(inc: &Incoming) -> Option<String> {
    inc.headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .find_map(|(_, v)| {
            v.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k.trim().eq_ignore_ascii_case("Token") && !v.trim().is_empty())
                    .then(|| v.trim().to_string())
            })
        })
}

fn token_error_message(e: &TokenError) -> String {
    match e {
        TokenError::Format => "非法访问 JWT格式不正确".into(),
        TokenError::Expired(sub) => format!("非法访问[{sub}] 令牌已过期"),
        TokenError::Signature(sub) => format!("非法访问[{sub}] 令牌签名无效"),
    }
}

/// BaseController authorization: token required, app must exist and be enabled.
fn authorize(sh: &Shared, inc: &Incoming) -> Result<TokenClaims, Reply> {
    let Some(token) = find_token(inc) else {
        return Err(envelope_err(sh, 401, "认证失败", true));
    };
    let now = sh.server_now_ms();
    let res = auth::verify_token(&lock(&sh.cfg).token_key, &token, now);
    let claims = res.map_err(|e| envelope_err(sh, 401, &token_error_message(&e), true))?;
    let ok = lock(&sh.cfg)
        .apps
        .get(&claims.sub)
        .is_some_and(|a| a.enabled);
    if !ok {
        return Err(envelope_err(sh, 403, "无效客户端！", true));
    }
    Ok(claims)
}

fn json_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn issue(sh: &Shared, app: &str, client_id: &str) -> (String, i64) {
    let now_ms = sh.server_now_ms();
    let cfg = lock(&sh.cfg);
    let life = cfg.settings.token_lifetime;
    // Round up: the token is valid for at least `life` (at most `life` + 1 s).
    let exp = (now_ms + life.as_millis() as i64 + 999).div_euclid(1000);
    let t = auth::issue_token(
        &cfg.token_key,
        &TokenClaims {
            sub: app.into(),
            jti: client_id.into(),
            iat: now_ms / 1000,
            exp,
        },
    );
    (t, life.as_secs() as i64)
}

// ---- /App/Login --------------------------------------------------------------------------------

fn login(sh: &Shared, inc: &Incoming) -> Reply {
    let bound = match bind(inc) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let obj = json_object(&inc.body).unwrap_or_default();
    let app_id = str_ci(&obj, "AppId")
        .filter(|s| !s.is_empty())
        .or_else(|| str_ci(&obj, "Code").filter(|s| !s.is_empty()));
    let client_id = str_ci(&obj, "ClientId")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| random_alnum(8));
    let sent = str_ci(&obj, "Secret");
    let version = str_ci(&obj, "Version");
    let app_name = str_ci(&obj, "AppName").filter(|s| !s.is_empty());
    let compile = bound.get("Compile").and_then(Value::as_i64);
    // NewLife ToDateTime: ms above 3,153,600,000, else seconds (stardust-runtime/docs/stardust-protocol.md §6.7).
    let compile_ms = model::unix_to_ms(compile.unwrap_or(0).max(0));
    let body = Value::Object(obj);
    let now_ms = sh.server_now_ms();
    let mut rec = LoginRecord {
        seq: inc.seq,
        app_id: app_id.clone().unwrap_or_default(),
        client_id: client_id.clone(),
        version: version.clone(),
        secret: auth::verify_secret(None, sent.as_deref(), 0, 0),
        code: 0,
        token: None,
        auto_registered: false,
        disclosed_secret: false,
        compile,
        body,
    };
    let Some(app_id) = app_id else {
        rec.code = 500;
        sh.with_rec(|r| r.logins.push(rec));
        return envelope_err(sh, 500, "应用标识AppId/Code不能为空", false);
    };
    // Columns of AppOnline written by every successful login (stardust-runtime/docs/stardust-protocol.md §6.5).
    let online_error = || {
        column_error(version.as_deref(), "Version", "应用在线", 50)
            .or_else(|| column_error(Some(&client_id), "Client", "应用在线", 50))
    };

    // Decide under the config lock; build the reply after.
    enum Outcome {
        Err(i64, String),
        Ok {
            enabled: bool,
            disclose: Option<(String, String)>,
        },
    }
    let outcome = {
        let mut cfg = lock(&sh.cfg);
        let s = cfg.settings.clone();
        match cfg.apps.get(&app_id).cloned() {
            Some(app) => {
                rec.secret = auth::verify_secret(
                    app.secret.as_deref(),
                    sent.as_deref(),
                    now_ms.div_euclid(1000),
                    s.salt_time_secs,
                );
                let disclose = if !app.enabled {
                    Err(Outcome::Err(403, "禁止登录".into()))
                } else if rec.secret.ok {
                    Ok(None)
                } else if s.wrong_secret == WrongSecret::Strict {
                    Err(Outcome::Err(401, "非法访问 密钥错误".into()))
                } else {
                    Ok(Some((
                        app.name.clone(),
                        app.secret.clone().unwrap_or_default(),
                    )))
                };
                match disclose {
                    Err(o) => o,
                    Ok(disclose) => {
                        let meta = cfg.meta.entry(app_id.clone()).or_default().clone();
                        let newer = meta.compile_ms < compile_ms;
                        let display_err = meta
                            .display_name
                            .is_none()
                            .then(|| {
                                column_error(app_name.as_deref(), "DisplayName", "应用系统", 50)
                            })
                            .flatten();
                        let app_version_err = newer
                            .then(|| column_error(version.as_deref(), "Version", "应用系统", 50))
                            .flatten();
                        match display_err.or(app_version_err).or_else(online_error) {
                            Some(e) => Outcome::Err(500, e),
                            None => {
                                let m = cfg.meta.entry(app_id.clone()).or_default();
                                if newer {
                                    // Only a strictly newer build replaces both (stardust-runtime/docs/stardust-protocol.md §6.7).
                                    m.compile_ms = compile_ms;
                                    m.version = version.clone();
                                }
                                if m.display_name.is_none() {
                                    m.display_name = app_name.clone();
                                }
                                Outcome::Ok {
                                    enabled: true,
                                    disclose,
                                }
                            }
                        }
                    }
                }
            }
            None => {
                let insert_err = column_error(Some(&app_id), "Name", "应用系统", 50)
                    .or_else(|| column_error(app_name.as_deref(), "DisplayName", "应用系统", 50))
                    .or_else(|| column_error(version.as_deref(), "Version", "应用系统", 50))
                    .or_else(online_error);
                match insert_err {
                    Some(e) => Outcome::Err(500, e),
                    None => {
                        let secret = random_alnum(16);
                        let enabled = s.auto_register_enabled;
                        cfg.apps.insert(
                            app_id.clone(),
                            super::AppEntry {
                                name: app_id.clone(),
                                secret: Some(secret.clone()),
                                enabled,
                                auto_registered: true,
                            },
                        );
                        // A new app takes the login's Compile (1970 when 0) and Version (stardust-runtime/docs/stardust-protocol.md §6.7).
                        cfg.meta.insert(
                            app_id.clone(),
                            AppMeta {
                                version: version.clone(),
                                compile_ms,
                                display_name: app_name.clone(),
                            },
                        );
                        rec.auto_registered = true;
                        rec.secret.detail = "unknown app: auto-registered".into();
                        Outcome::Ok {
                            enabled,
                            disclose: Some((app_id.clone(), secret)),
                        }
                    }
                }
            }
        }
    };
    let reply = match outcome {
        Outcome::Err(code, msg) => {
            rec.code = code;
            envelope_err(sh, code, &msg, false)
        }
        Outcome::Ok { enabled, disclose } => {
            let (token, expire) = if enabled {
                let (t, e) = issue(sh, &app_id, &client_id);
                (Some(t), e)
            } else {
                (None, lock(&sh.cfg).settings.token_lifetime.as_secs() as i64)
            };
            rec.token = token.clone();
            let forced = {
                let cfg = lock(&sh.cfg);
                cfg.settings.login_code.clone().map(|c| {
                    let secret = cfg.apps.get(&app_id).and_then(|a| a.secret.clone());
                    (c, secret.unwrap_or_default())
                })
            };
            let disclose = forced.or(disclose);
            rec.disclosed_secret = disclose.is_some();
            let (code, secret) = disclose
                .map(|(c, s)| (json!(c), json!(s)))
                .unwrap_or((Value::Null, Value::Null));
            envelope_ok(
                sh,
                json!({"code": code, "secret": secret, "name": app_id, "token": token, "expire": expire, "time": 0, "serverTime": now_ms}),
            )
        }
    };
    sh.with_rec(|r| {
        // A build time is constant for a build: one process (ClientId) must not change it.
        if let Some(c) = rec.compile.filter(|c| *c != 0) {
            let prev = r
                .logins
                .iter()
                .filter(|l| l.app_id == rec.app_id && l.client_id == rec.client_id)
                .filter_map(|l| l.compile.filter(|p| *p != 0 && *p != c))
                .next_back();
            if let Some(p) = prev {
                r.violations.push(violation(
                    inc,
                    "compile-changed",
                    format!(
                        "Compile {c} differs from {p} sent by an earlier login of {:?}: send the build time, constant per build (stardust-runtime/docs/stardust-protocol.md §6.7)",
                        rec.client_id
                    ),
                ));
            }
        }
        r.logins.push(rec)
    });
    reply
}

// ---- /App/Ping ---------------------------------------------------------------------------------

fn ping(sh: &Shared, inc: &Incoming) -> Reply {
    let claims = match authorize(sh, inc) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bound = match bind(inc) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let obj = json_object(&inc.body).unwrap_or_default();
    let now_ms = sh.server_now_ms();
    let time = bound_i64(&bound, "Time");
    let version = bound_str(&bound, "Version").filter(|v| !v.is_empty());

    // AppOnline.Fill, then Save (stardust-runtime/docs/stardust-protocol.md §6.5, stardust-runtime/docs/stardust-protocol.md §6.6): a version the App record cannot compare, or a
    // string over its column, throws → {code:500}; nothing after it happens.
    let (window, period, failure, utc, tz) = {
        let mut cfg = lock(&sh.cfg);
        let meta = cfg.meta.entry(claims.sub.clone()).or_default();
        let failure = match version.as_deref().map(|v| fill_version(meta, v, now_ms)) {
            Some(Err(e)) => Some(e),
            other => {
                let err = column_error(version.as_deref(), "Version", "应用在线", 50)
                    .or_else(|| {
                        column_error(
                            bound_str(&bound, "UserName").as_deref(),
                            "UserName",
                            "应用在线",
                            50,
                        )
                    })
                    .or_else(|| {
                        column_error(
                            bound_str(&bound, "MachineName").as_deref(),
                            "MachineName",
                            "应用在线",
                            50,
                        )
                    });
                if err.is_none() {
                    if let Some(Ok(Some(v))) = other {
                        meta.version = Some(v);
                    }
                }
                err
            }
        };
        let utc = binding::year_of(meta.compile_ms) >= 2025;
        (
            cfg.settings.token_refresh_window.as_millis() as i64,
            cfg.settings.ping_period,
            failure,
            utc,
            cfg.settings.server_utc_offset_min,
        )
    };
    if let Some(msg) = failure {
        sh.with_rec(|r| {
            r.violations.push(violation(
                inc,
                "ping-500",
                format!("the real server answers this ping {{code:500}}: {msg}"),
            ));
            r.pings.push(PingRecord {
                seq: inc.seq,
                app: claims.sub.clone(),
                client_id: claims.jti.clone(),
                body: Value::Object(obj),
                new_token: None,
                code: 500,
                commands: Vec::new(),
            })
        });
        return envelope_err(sh, 500, &msg, true);
    }
    let new_token =
        (claims.exp * 1000 - now_ms < window).then(|| issue(sh, &claims.sub, &claims.jti).0);
    let commands = sh.with_rec(|r| {
        let cmds = deliver_commands(r, &claims.sub, inc.seq, now_ms, utc, tz);
        r.pings.push(PingRecord {
            seq: inc.seq,
            app: claims.sub.clone(),
            client_id: claims.jti.clone(),
            body: Value::Object(obj),
            new_token: new_token.clone(),
            code: 0,
            commands: cmds.iter().filter_map(|c| c["id"].as_i64()).collect(),
        });
        cmds
    });
    let commands = if commands.is_empty() {
        Value::Null
    } else {
        Value::Array(commands)
    };
    envelope_ok(
        sh,
        json!({"time": time, "serverTime": now_ms, "period": period, "token": new_token, "newServer": null, "commands": commands}),
    )
}

/// The server's per-ping command pass (stardust-runtime/docs/stardust-protocol.md §9.6): up to 100 pending commands of the app, oldest
/// first; cancel those sent more than 10 times (100 with an expiry) or expired; count a send only
/// when due; every listed command becomes status 1. Returns the camelCase `CommandModel`s.
fn deliver_commands(
    r: &mut super::Recorded,
    app: &str,
    seq: u64,
    now_ms: i64,
    utc: bool,
    tz: i32,
) -> Vec<Value> {
    let mut out = Vec::new();
    let pending = r
        .commands
        .iter_mut()
        .filter(|c| c.app == app && c.is_pending())
        .take(100);
    for c in pending {
        let max_times = if c.expire_ms.is_some() { 100 } else { 10 };
        if c.times > max_times || c.expire_ms.is_some_and(|e| e < now_ms) {
            c.status = command_status::CANCELLED;
            c.cancelled_by_server = true;
            continue;
        }
        if c.start_time_ms.is_none_or(|t| t <= now_ms) {
            c.times += 1;
        }
        c.status = command_status::PROCESSING;
        c.delivered_in.push(seq);
        out.push(json!({
            "id": c.id,
            "command": c.command,
            "argument": c.argument,
            "startTime": binding::command_time_text(c.start_time_ms, utc, tz),
            "expire": binding::command_time_text(c.expire_ms, utc, tz),
            "traceId": c.trace_id,
            "status": 0,
        }));
    }
    out
}

// ---- /App/Logout -------------------------------------------------------------------------------

fn logout(sh: &Shared, inc: &Incoming) -> Reply {
    let claims = match authorize(sh, inc) {
        Ok(c) => c,
        Err(r) => return r,
    };
    // `String reason` is a non-nullable [FromQuery] parameter: required (stardust-runtime/docs/stardust-protocol.md §6.1).
    let reason = inc.query_param("reason");
    if reason.as_deref().is_none_or(str::is_empty) {
        return Reply::problem_400_errors(&[(
            "reason".into(),
            "The reason field is required.".into(),
        )]);
    }
    sh.with_rec(|r| {
        r.logouts.push(LogoutRecord {
            seq: inc.seq,
            app: claims.sub.clone(),
            client_id: claims.jti.clone(),
            reason,
        })
    });
    let now_ms = sh.server_now_ms();
    envelope_ok(
        sh,
        json!({"code": null, "secret": null, "name": claims.sub, "token": null, "expire": 0, "time": 0, "serverTime": now_ms}),
    )
}

// ---- /App/PostEvents ---------------------------------------------------------------------------

fn post_events(sh: &Shared, inc: &Incoming) -> Reply {
    let claims = match authorize(sh, inc) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bound = match bind(inc) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let events = match bound.get("$") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    // Every row is validated before the batch insert: one bad row fails all (stardust-runtime/docs/stardust-protocol.md §10.1).
    for e in &events {
        let Value::Object(e) = e else {
            return envelope_err(
                sh,
                500,
                "Object reference not set to an instance of an object.",
                true,
            );
        };
        if let Some(msg) = column_error(bound_str(e, "Name").as_deref(), "Action", "应用历史", 50)
        {
            return envelope_err(sh, 500, &msg, true);
        }
    }
    let now_ms = sh.server_now_ms();
    let rows: Vec<EventRecord> = events
        .iter()
        .filter_map(Value::as_object)
        .map(|e| {
            let time = bound_i64(e, "Time");
            let event_type = bound_str(e, "Type");
            let remark = bound_str(e, "Remark").map(|r| cut_utf16(&r, 2000));
            let t_ms = model::unix_to_ms(time);
            EventRecord {
                seq: inc.seq,
                app: claims.sub.clone(),
                client_id: claims.jti.clone(),
                time,
                success: !event_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case("error")),
                event_type,
                name: bound_str(e, "Name"),
                remark,
                created_ms: if time > 0 && binding::year_of(t_ms) > 2000 {
                    t_ms
                } else {
                    now_ms
                },
            }
        })
        .collect();
    let n = rows.len();
    sh.with_rec(|r| r.events.extend(rows));
    envelope_ok(sh, json!(n))
}

/// The first `limit` UTF-16 units of `s` (not splitting a surrogate pair).
fn cut_utf16(s: &str, limit: usize) -> String {
    let mut n = 0;
    let mut out = String::new();
    for c in s.chars() {
        n += c.len_utf16();
        if n > limit {
            break;
        }
        out.push(c);
    }
    out
}

// ---- /App/CommandReply -------------------------------------------------------------------------

fn command_reply(sh: &Shared, inc: &Incoming) -> Reply {
    let claims = match authorize(sh, inc) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bound = match bind(inc) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let sent_id = bound_i64(&bound, "Id");
    // The server casts the id to Int32 (stardust-runtime/docs/stardust-protocol.md §9.5).
    let id = i64::from(sent_id as i32);
    let status = bound_i64(&bound, "Status");
    let data = bound_str(&bound, "Data");
    let mut rec = CommandReplyRecord {
        seq: inc.seq,
        app: claims.sub.clone(),
        client_id: claims.jti.clone(),
        id: sent_id,
        status,
        data: data.clone(),
        code: 0,
        data_reply: json!(0),
    };
    sh.with_rec(|r| {
        let mut vs = Vec::new();
        match r.commands.iter_mut().find(|c| c.id == id && id > 0) {
            None => vs.push(violation(
                inc,
                "command-reply-unknown",
                format!("reply for unknown command id {sent_id}: the server answers data 0"),
            )),
            Some(c) if c.app != claims.sub => {
                rec.code = 403;
                rec.data_reply = Value::Null;
                vs.push(violation(
                    inc,
                    "command-reply-foreign",
                    format!(
                        "reply for command {id} of app {:?} with a token of {:?}: the server answers 403",
                        c.app, claims.sub
                    ),
                ));
            }
            Some(c) => {
                let earlier: Vec<i64> = r
                    .command_replies
                    .iter()
                    .filter(|q| q.code == 0 && q.data_reply == json!(1))
                    .filter(|q| i64::from(q.id as i32) == id)
                    .map(|q| q.status)
                    .collect();
                let had_final = earlier.iter().any(|s| (2..=4).contains(s));
                let had_processing = earlier.contains(&command_status::PROCESSING);
                if had_final || (status == command_status::PROCESSING && had_processing) {
                    vs.push(violation(
                        inc,
                        "command-reply-twice",
                        format!(
                            "command {id} ({:?}) answered again (earlier statuses {earlier:?}, now {status}): reply once per id with a final status (stardust-runtime/docs/stardust-protocol.md §9.8)",
                            c.command
                        ),
                    ));
                }
                if status == command_status::PROCESSING && c.start_time_ms.is_none() {
                    vs.push(violation(
                        inc,
                        "command-reply-processing",
                        format!(
                            "status 1 for command {id} ({:?}), which has no start time: status 1 is only for a scheduled command (stardust-runtime/docs/stardust-protocol.md §9.8)",
                            c.command
                        ),
                    ));
                }
                c.status = status;
                c.result = data.as_deref().map(|d| cut_utf16(d, 500));
                c.replies.push(inc.seq);
                rec.data_reply = json!(1);
            }
        }
        r.violations.extend(vs);
        r.command_replies.push(rec.clone());
    });
    if rec.code == 403 {
        return envelope_err(sh, 403, "非法操作", true);
    }
    envelope_ok(sh, rec.data_reply)
}

// ---- /Trace/Report(Raw) ------------------------------------------------------------------------

pub(crate) fn is_json_media_type(ct: Option<&str>) -> bool {
    let Some(ct) = ct else { return false };
    let mt = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mt == "application/json"
        || mt == "text/json"
        || (mt.starts_with("application/") && mt.ends_with("+json"))
}

fn report(sh: &Shared, inc: &Incoming, raw: bool) -> Reply {
    let ct = inc.header("content-type");
    let mut gzip = false;
    let model = if !raw {
        if !is_json_media_type(ct) {
            return Reply::empty(415);
        }
        let Ok(v) = serde_json::from_slice::<Value>(&inc.body) else {
            return envelope_ok(sh, Value::Null);
        };
        match model::bind_trace_model(&v, Binding::Strict) {
            Ok(m) => (v, m),
            Err(_) => return envelope_ok(sh, Value::Null),
        }
    } else {
        if inc.body.is_empty() {
            return envelope_ok(sh, Value::Null);
        }
        let bytes = if ct == Some("application/x-gzip") {
            gzip = true;
            match gunzip(&inc.body) {
                Ok(b) => b,
                Err(e) => return envelope_err(sh, 500, &e, false),
            }
        } else {
            inc.body.clone()
        };
        let v = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => v,
            Err(e) => return envelope_err(sh, 500, &format!("JSON: {e}"), false),
        };
        match model::bind_trace_model(&v, Binding::Lenient) {
            Ok(m) => (v, m),
            Err(_) => return envelope_ok(sh, Value::Null),
        }
    };
    let (raw_json, model) = model;
    let app_id = model["AppId"].as_str().unwrap_or("").to_string();
    if app_id.is_empty() {
        return envelope_ok(sh, Value::Null);
    }
    // Optional token: validated only when it has 3 dot-separated parts.
    if let Some(t) = find_token(inc).filter(|t| t.split('.').count() == 3) {
        let now = sh.server_now_ms();
        let res = auth::verify_token(&lock(&sh.cfg).token_key, &t, now);
        if let Err(e) = res {
            return envelope_err(sh, 401, &token_error_message(&e), false);
        }
    }
    let (disabled, trc) = {
        let cfg = lock(&sh.cfg);
        (
            cfg.apps.get(&app_id).is_some_and(|a| !a.enabled),
            cfg.settings.trace_response.clone(),
        )
    };
    if disabled {
        return envelope_err(
            sh,
            500,
            &format!("应用[{app_id}]已禁用！ (Parameter 'appId')"),
            false,
        );
    }
    let now_ms = sh.server_now_ms();
    // A report carrying `Info` runs the same AppOnline.Fill as a ping (stardust-runtime/docs/stardust-protocol.md §6.6).
    let info_version = model["Info"]
        .as_object()
        .and_then(|i| str_ci(i, "Version"))
        .filter(|v| !v.is_empty());
    if let Some(v) = info_version {
        let res = {
            let mut cfg = lock(&sh.cfg);
            let meta = cfg.meta.entry(app_id.clone()).or_default();
            let res = fill_version(meta, &v, now_ms);
            if let Ok(Some(new)) = &res {
                meta.version = Some(new.clone());
            }
            res
        };
        if let Err(msg) = res {
            sh.with_rec(|r| {
                r.violations.push(violation(
                    inc,
                    "report-500",
                    format!(
                        "the real server answers this report {{code:500}} (Info.Version): {msg}"
                    ),
                ))
            });
            return envelope_err(sh, 500, &msg, true);
        }
    }
    let excludes = trc.excludes.clone().unwrap_or_default();
    let (mut accepted, mut dropped) = (Vec::new(), Vec::new());
    for b in model["Builders"].as_array().cloned().unwrap_or_default() {
        match model::builder_drop_reason(&b, now_ms, &excludes) {
            Some(reason) => dropped.push((b, reason)),
            None => accepted.push(b),
        }
    }
    let version_set = model["Version"].as_str().is_some_and(|v| !v.is_empty());
    let data = json!({
        "period": trc.period,
        "maxSamples": trc.max_samples,
        "maxErrors": trc.max_errors,
        "timeout": trc.timeout,
        "maxTagLength": trc.max_tag_length,
        "requestTagLength": trc.request_tag_length,
        "enableMeter": trc.enable_meter,
        "excludes": if version_set { json!(trc.excludes) } else { Value::Null },
    });
    if inc.fault != Some(Fault::DropAfterProcessing) {
        let mut cfg = lock(&sh.cfg);
        let cur = cfg.eff.0;
        let mut next = cur;
        if trc.max_samples > 0 {
            next.max_samples = trc.max_samples as i64;
        }
        if trc.max_errors > 0 {
            next.max_errors = trc.max_errors as i64;
        }
        if trc.max_tag_length > 0 {
            next.max_tag_length = trc.max_tag_length as i64;
        }
        cfg.eff = (next, cur);
    }
    let endpoint = inc.endpoint;
    sh.with_rec(|r| {
        r.reports.push(ReportRecord {
            seq: inc.seq,
            endpoint,
            gzip,
            raw: raw_json,
            model,
            accepted,
            dropped,
            response: data.clone(),
        })
    });
    envelope_ok(sh, data)
}
