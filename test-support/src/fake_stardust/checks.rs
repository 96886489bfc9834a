//! Strictness checks (stardust-runtime/docs/stardust-protocol.md §13.2 strictness list + §1.2 requirements). They never change the reply;
//! they only add `Violation`s.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::Value;

use serde_json::Map;

use super::auth::{SecretForm, classify_secret};
use super::binding::{self, BindError};
use super::handlers::{Incoming, cookie_token, is_gzip};
use super::model::{self, Binding, get_ci, utf16_len};
use super::{Config, Endpoint, Violation};

/// `<IPv4>@<pid>`.
pub fn client_id_ok(s: &str) -> bool {
    let Some((ip, pid)) = s.split_once('@') else {
        return false;
    };
    ip.parse::<Ipv4Addr>().is_ok()
        && !pid.is_empty()
        && pid.bytes().all(|b| b.is_ascii_digit())
        && pid.parse::<u32>().is_ok()
}

/// 2 to 4 dot-separated non-negative integers (what `System.Version` parses).
pub fn dotted_version_ok(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    (2..=4).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<i32>().is_ok()
        })
}

fn is_ms13(t: i64) -> bool {
    (1_000_000_000_000..10_000_000_000_000).contains(&t)
}

struct Out<'a> {
    inc: &'a Incoming,
    v: Vec<Violation>,
}

impl Out<'_> {
    fn add(&mut self, rule: &str, detail: impl Into<String>) {
        self.v.push(Violation {
            seq: self.inc.seq,
            endpoint: self.inc.endpoint,
            rule: rule.into(),
            detail: detail.into(),
        });
    }
}

pub(crate) fn check(cfg: &Config, inc: &Incoming, json: Option<&Value>) -> Vec<Violation> {
    let mut o = Out { inc, v: Vec::new() };

    // --- token placement ---
    if inc.query_param("Token").is_some_and(|t| !t.is_empty()) {
        o.add(
            "token-in-query",
            format!("token in URL query of {} {}", inc.method, inc.path),
        );
    }
    if inc.header("x-token").is_some() {
        o.add(
            "token-not-bearer",
            "token sent in X-Token header (send only Authorization: Bearer)",
        );
    }
    if cookie_token(inc).is_some() {
        o.add(
            "token-not-bearer",
            "token sent in a Token cookie (send only Authorization: Bearer)",
        );
    }
    if inc
        .header("authorization")
        .is_some_and(|a| !a.starts_with("Bearer "))
    {
        o.add(
            "token-not-bearer",
            "Authorization header without the exact `Bearer ` prefix",
        );
    }
    if inc.header("traceparent").is_some() {
        o.add(
            "uploader-traced",
            "request to Stardust carries traceparent: the uploader's own calls must not be traced",
        );
    }

    // --- plaintext secret anywhere ---
    // The server compares plaintext ignoring case, so look for it ignoring case too.
    let decoded_text = json
        .map(|j| j.to_string())
        .unwrap_or_default()
        .to_lowercase();
    let raw_text = String::from_utf8_lossy(&inc.body).to_lowercase();
    let query = inc.query.to_lowercase();
    for secret in cfg
        .apps
        .values()
        .filter_map(|a| a.secret.as_deref())
        .filter(|s| s.len() >= 6)
    {
        let secret = secret.to_lowercase();
        let secret = secret.as_str();
        let in_headers = inc
            .headers
            .iter()
            .any(|(_, v)| v.to_lowercase().contains(secret));
        if in_headers
            || query.contains(secret)
            || raw_text.contains(secret)
            || decoded_text.contains(secret)
        {
            o.add(
                "plaintext-secret",
                "an app's plaintext secret was sent in the query, a header or the body",
            );
        }
    }

    // --- model binding of /App/* bodies (stardust-runtime/docs/stardust-protocol.md §6.1, §6.4) ---
    let bound = match binding::bind_request(inc.endpoint, inc.header("content-type"), &inc.body) {
        Some(Err(e)) => {
            let rule = match e {
                BindError::MediaType(_) => "http-415",
                BindError::Invalid(_) => "http-400",
            };
            o.add(
                rule,
                format!(
                    "the real server rejects this {} {} body: {}",
                    inc.method,
                    inc.path,
                    e.describe()
                ),
            );
            None
        }
        Some(Ok(v)) => Some(v),
        None => None,
    };
    if let Some(b) = &bound {
        check_bound(&mut o, cfg, b);
    }
    if inc.endpoint == Endpoint::Logout && inc.query_param("reason").is_none_or(|r| r.is_empty()) {
        o.add(
            "http-400",
            "/App/Logout without `reason`: the real server answers HTTP 400 (stardust-runtime/docs/stardust-protocol.md §6.1)",
        );
    }

    let obj = json.and_then(Value::as_object);
    match inc.endpoint {
        Endpoint::Login => {
            match obj {
                None => o.add("login-body", "login body is not a JSON object"),
                Some(m) => {
                    let app = model::str_ci(m, "AppId").unwrap_or_default();
                    let code = model::str_ci(m, "Code").unwrap_or_default();
                    if app.is_empty() || code.is_empty() || app != code {
                        o.add("login-appid-code", format!("AppId {app:?} and Code {code:?} must both be sent, with the same value"));
                    }
                    check_version(&mut o, model::str_ci(m, "Version"), true);
                    check_client_id(&mut o, model::str_ci(m, "ClientId"));
                    let t = get_ci(m, "Time").and_then(Value::as_i64).unwrap_or(0);
                    if !is_ms13(t) {
                        o.add("time-not-ms", format!("login Time {t} is not UTC ms"));
                    }
                    let secret = model::str_ci(m, "Secret");
                    let form = classify_secret(secret.as_deref());
                    if form != SecretForm::Absent && form != SecretForm::Salted {
                        o.add("secret-not-salted", format!("login Secret sent in {form:?} form; only $md5$<salt>$<hash> is allowed"));
                    }
                }
            }
        }
        Endpoint::Ping => {
            let version = obj.and_then(|m| model::str_ci(m, "Version"));
            check_version(&mut o, version, false);
        }
        Endpoint::Report => {
            let ct = inc.header("content-type").unwrap_or("");
            if !ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
            {
                o.add(
                    "report-content-type",
                    format!("/Trace/Report with Content-Type {ct:?}"),
                );
            }
            if is_gzip(&inc.body) || inc.header("content-encoding").is_some() {
                o.add(
                    "report-gzip",
                    "/Trace/Report body must be plain JSON (gzip goes to /Trace/ReportRaw)",
                );
            }
            if let Some(Err(e)) = json.map(|j| model::bind_trace_model(j, Binding::Strict)) {
                o.add(
                    "report-unbindable",
                    format!("server would silently drop this report: {e}"),
                );
            }
            check_model(&mut o, cfg, json);
        }
        Endpoint::ReportRaw => {
            let ct = inc.header("content-type");
            if ct != Some("application/x-gzip") {
                o.add("reportraw-content-type", format!("/Trace/ReportRaw with Content-Type {ct:?} (must be exactly application/x-gzip)"));
            } else if !is_gzip(&inc.body) {
                o.add("reportraw-not-gzip", "/Trace/ReportRaw body is not gzip");
            }
            check_model(&mut o, cfg, json);
        }
        Endpoint::Logout | Endpoint::PostEvents | Endpoint::CommandReply | Endpoint::Other => {}
    }
    o.v
}

/// A string over its database column (stardust-runtime/docs/stardust-protocol.md §6.5): the real server answers `{code:500}` (or, for
/// the trimmed columns, this is not called).
fn check_column(o: &mut Out, m: &Map<String, Value>, key: &str, what: &str, limit: usize) {
    if let Some(v) = m.get(key).and_then(Value::as_str) {
        let n = utf16_len(v);
        if n > limit {
            o.add(
                "column-length",
                format!("{what} {key} is {n} UTF-16 units, over its column of {limit}: the real server answers {{code:500}} (stardust-runtime/docs/stardust-protocol.md §6.5)"),
            );
        }
    }
}

/// 2000-01-01T00:00:00Z in Unix ms.
const Y2000_MS: i64 = 946_684_800_000;

/// Checks on a bound `/App/*` body (PascalCase schema keys).
fn check_bound(o: &mut Out, cfg: &Config, b: &Value) {
    match o.inc.endpoint {
        Endpoint::Login => {
            let Some(m) = b.as_object() else { return };
            for k in ["AppId", "Code", "AppName", "Version", "ClientId"] {
                check_column(o, m, k, "login", 50);
            }
            check_compile(o, cfg, m);
        }
        Endpoint::Ping => {
            let Some(m) = b.as_object() else { return };
            for k in ["Version", "UserName", "MachineName"] {
                check_column(o, m, k, "ping", 50);
            }
        }
        Endpoint::PostEvents => {
            let events = b.as_array().map(Vec::as_slice).unwrap_or(&[]);
            if events.len() > 100 {
                o.add(
                    "events-batch",
                    format!(
                        "{} events in one batch: post at most 100 (stardust-runtime/docs/stardust-protocol.md §10.2)",
                        events.len()
                    ),
                );
            }
            for (i, e) in events.iter().enumerate() {
                let Some(m) = e.as_object() else {
                    o.add(
                        "event-null",
                        format!(
                            "event [{i}] is null: the real server fails the batch with {{code:500}}"
                        ),
                    );
                    continue;
                };
                check_column(o, m, "Name", &format!("event [{i}]"), 50);
                let name = m.get("Name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    o.add(
                        "event-name",
                        format!("event [{i}] has no Name (stored as 事件)"),
                    );
                }
                let remark = m.get("Remark").and_then(Value::as_str).map_or(0, utf16_len);
                if remark > 2000 {
                    o.add(
                        "event-remark-long",
                        format!("event [{i}] Remark is {remark} units: cut it to 2000 before posting (stardust-runtime/docs/stardust-protocol.md §10.3)"),
                    );
                }
                let t = m.get("Time").and_then(Value::as_i64).unwrap_or(0);
                if !is_ms13(t) {
                    o.add(
                        "time-not-ms",
                        format!("event [{i}] Time {t} is not UTC ms (stardust-runtime/docs/stardust-protocol.md §10.1)"),
                    );
                }
                let ty = m.get("Type").and_then(Value::as_str).unwrap_or("");
                if !["info", "alert", "error"]
                    .iter()
                    .any(|t| t.eq_ignore_ascii_case(ty))
                {
                    o.add(
                        "event-type",
                        format!("event [{i}] Type {ty:?} is not info, alert or error (stardust-runtime/docs/stardust-protocol.md §10.1)"),
                    );
                }
            }
        }
        Endpoint::CommandReply => {
            let Some(m) = b.as_object() else { return };
            let st = m.get("Status").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=4).contains(&st) {
                o.add(
                    "command-reply-status",
                    format!("CommandReply Status {st}: a reply carries 1 (scheduled) or a final 2, 3 or 4 (stardust-runtime/docs/stardust-protocol.md §9.8)"),
                );
            }
        }
        _ => {}
    }
}

/// `Compile` of a login (stardust-runtime/docs/stardust-protocol.md §6.7): when sent, it must be the build time in UTC ms: not seconds,
/// not before 2000, not later than the login's own `Time`, and not "now".
fn check_compile(o: &mut Out, cfg: &Config, m: &Map<String, Value>) {
    let c = m.get("Compile").and_then(Value::as_i64).unwrap_or(0);
    if c == 0 {
        if cfg.settings.require_compile {
            o.add(
                "compile-missing",
                "login without Compile: send the build time as UTC ms (stardust-runtime/docs/stardust-protocol.md §6.7)",
            );
        }
        return;
    }
    let time = m
        .get("Time")
        .and_then(Value::as_i64)
        .filter(|t| is_ms13(*t));
    if c < 0 || c <= 3_153_600_000 {
        o.add(
            "compile-not-ms",
            format!("login Compile {c} is not Unix ms (the server reads it as seconds) (stardust-runtime/docs/stardust-protocol.md §6.7)"),
        );
    } else if c < Y2000_MS {
        o.add(
            "compile-implausible",
            format!(
                "login Compile {c} is before 2000 (stardust-runtime/docs/stardust-protocol.md §6.7)"
            ),
        );
    } else if let Some(t) = time {
        if c > t + 1000 {
            o.add(
                "compile-future",
                format!("login Compile {c} is after the login's Time {t}: not a build time (stardust-runtime/docs/stardust-protocol.md §6.7)"),
            );
        } else if t - c < 1000 {
            o.add(
                "compile-is-now",
                format!("login Compile {c} is within 1 s of the login's Time {t}: send the build time, never \"now\" (stardust-runtime/docs/stardust-protocol.md §6.7)"),
            );
        }
    }
}

fn check_version(o: &mut Out, v: Option<String>, required: bool) {
    match v.filter(|v| !v.is_empty()) {
        None if required => o.add("version", "Version must be non-empty"),
        None => {}
        Some(v) if !dotted_version_ok(&v) => {
            o.add("version", format!("Version {v:?} is not dotted numeric"))
        }
        Some(_) => {}
    }
}

fn check_client_id(o: &mut Out, c: Option<String>) {
    let c = c.unwrap_or_default();
    if !client_id_ok(&c) {
        o.add("client-id", format!("ClientId {c:?} is not <ipv4>@<pid>"));
    }
    if utf16_len(&c) > 50 {
        o.add("id-too-long", format!("ClientId {c:?} longer than 50"));
    }
}

fn check_model(o: &mut Out, cfg: &Config, json: Option<&Value>) {
    let Some(j) = json else {
        o.add("report-not-json", "report body is not JSON");
        return;
    };
    let m = match model::bind_trace_model(j, Binding::Lenient) {
        Ok(m) => m,
        Err(e) => return o.add("report-not-json", e),
    };
    let app = m["AppId"].as_str().unwrap_or("");
    if app.is_empty() || utf16_len(app) > 50 {
        o.add(
            "appid",
            format!("AppId {app:?} must be non-empty and ≤ 50 chars"),
        );
    }
    check_version(o, m["Version"].as_str().map(String::from), true);
    check_client_id(o, m["ClientId"].as_str().map(String::from));

    let (cur, prev) = cfg.eff;
    let cap_samples = 10 * cur.max_samples.max(prev.max_samples);
    let cap_errors = 10 * cur.max_errors.max(prev.max_errors);
    let cap_tag = cur.max_tag_length.max(prev.max_tag_length);

    let mut names = HashSet::new();
    for b in m["Builders"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = b["Name"].as_str().unwrap_or("");
        let at = format!("builder {name:?}");
        if name.is_empty() {
            o.add("builder-empty-name", "builder with empty Name");
        }
        if utf16_len(name) > 200 {
            o.add("builder-name-long", format!("{at}: Name longer than 200"));
        }
        if name
            .char_indices()
            .find(|(_, c)| matches!(c, '?' | '#' | '&'))
            .is_some_and(|(i, _)| i > 0)
        {
            o.add("builder-name-uncut", format!("{at}: Name not cut at ?/#/&"));
        }
        let lower = name.to_ascii_lowercase();
        if lower.ends_with("/trace/report") || lower.ends_with("/trace/reportraw") {
            o.add(
                "builder-self-trace",
                format!("{at}: the uploader's own calls must be trimmed"),
            );
        }
        if !names.insert(name.to_string()) {
            o.add(
                "builder-duplicate",
                format!("{at}: more than one builder with this name in one report"),
            );
        }
        let n = |k: &str| b[k].as_i64().unwrap_or(0);
        let (total, errors, cost, max_cost, min_cost) = (
            n("Total"),
            n("Errors"),
            n("Cost"),
            n("MaxCost"),
            n("MinCost"),
        );
        if total <= 0 {
            o.add(
                "total-zero",
                format!("{at}: Total {total} (only builders with Total > 0 are sent)"),
            );
        }
        if errors < 0 || errors > total {
            o.add(
                "errors-gt-total",
                format!("{at}: Errors {errors} not in 0..=Total {total}"),
            );
        }
        if min_cost < 0 {
            o.add("mincost-negative", format!("{at}: MinCost {min_cost} < 0"));
        }
        if min_cost > max_cost {
            o.add(
                "mincost-gt-maxcost",
                format!("{at}: MinCost {min_cost} > MaxCost {max_cost}"),
            );
        }
        if max_cost > cost {
            o.add(
                "maxcost-gt-cost",
                format!("{at}: MaxCost {max_cost} > Cost {cost}"),
            );
        }
        for k in ["StartTime", "EndTime"] {
            if !is_ms13(n(k)) {
                o.add(
                    "time-not-ms",
                    format!("{at}: {k} {} is not 13-digit Unix ms", n(k)),
                );
            }
        }
        if n("EndTime") < n("StartTime") {
            o.add("endtime-before-start", format!("{at}: EndTime < StartTime"));
        }
        let samples = b["Samples"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let err_samples = b["ErrorSamples"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if samples.len() as i64 > cap_samples {
            o.add(
                "samples-cap",
                format!(
                    "{at}: {} Samples > 10×MaxSamples = {cap_samples}",
                    samples.len()
                ),
            );
        }
        if err_samples.len() as i64 > cap_errors {
            o.add(
                "error-samples-cap",
                format!(
                    "{at}: {} ErrorSamples > 10×MaxErrors = {cap_errors}",
                    err_samples.len()
                ),
            );
        }
        if err_samples.len() as i64 > errors || samples.len() as i64 > total - errors {
            o.add(
                "samples-exceed-counts",
                format!(
                    "{at}: {} Samples / {} ErrorSamples vs Total {total}, Errors {errors}",
                    samples.len(),
                    err_samples.len()
                ),
            );
        }
        for (is_err, list) in [(false, samples), (true, err_samples)] {
            for s in list {
                let id = s["Id"].as_str().unwrap_or("");
                let sat = format!("{at} sample {id:?}");
                if is_err && s["Error"].is_null() {
                    o.add(
                        "error-sample-no-error",
                        format!("{sat}: ErrorSample with null Error"),
                    );
                }
                if !is_err && !s["Error"].is_null() {
                    o.add(
                        "sample-has-error",
                        format!("{sat}: normal Sample with an Error"),
                    );
                }
                if id.is_empty() || s["TraceId"].as_str().unwrap_or("").is_empty() {
                    o.add("sample-missing-id", format!("{sat}: empty Id or TraceId"));
                }
                for k in ["Id", "ParentId", "TraceId"] {
                    if s[k].as_str().is_some_and(|x| utf16_len(x) > 50) {
                        o.add("id-too-long", format!("{sat}: {k} longer than 50"));
                    }
                }
                let tag_len = s["Tag"].as_str().map_or(0, utf16_len) as i64;
                if tag_len > cap_tag {
                    o.add(
                        "tag-too-long",
                        format!("{sat}: Tag of {tag_len} chars > MaxTagLength {cap_tag}"),
                    );
                }
                let (st, et) = (
                    s["StartTime"].as_i64().unwrap_or(0),
                    s["EndTime"].as_i64().unwrap_or(0),
                );
                if !is_ms13(st) || !is_ms13(et) {
                    o.add(
                        "time-not-ms",
                        format!("{sat}: StartTime/EndTime not 13-digit Unix ms"),
                    );
                }
                if et - st > 3_600_000 {
                    o.add(
                        "sample-over-1h",
                        format!("{sat}: span longer than 1 h must be discarded"),
                    );
                }
            }
        }
    }
}
