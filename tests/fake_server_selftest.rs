//! Self-test of the fake Stardust server, through real HTTP over loopback.

use stardust_test_support as support;
use stardust_test_support::common;

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fake_stardust::*;

// ---- a tiny HTTP/1.1 client ---------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let cl: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; cl];
    r.read_exact(&mut body)?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn http_timeout(
    fake: &FakeStardust,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Resp> {
    let mut s = TcpStream::connect(fake.addr())?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(&request_bytes(method, path, headers, body, true))?;
    read_resp(&mut BufReader::new(s))
}

fn http(
    fake: &FakeStardust,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Resp> {
    http_timeout(fake, method, path, headers, body, REPLY_TIMEOUT)
}

/// How long the test's client waits for a reply that is due: long, as a loaded CI machine may
/// be slow to answer; a reply that comes returns at once, so it costs nothing.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn post_json(fake: &FakeStardust, path: &str, headers: &[(&str, &str)], v: &Value) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http(fake, "POST", path, &h, v.to_string().as_bytes()).expect("http")
}

const CID: &str = "127.0.0.1@4242";

fn login_body(app: &str, secret: Option<String>) -> Value {
    json!({"AppId": app, "Code": app, "ClientId": CID, "AppName": "Test App", "Version": "0.1.0", "Time": common::now_ms(), "IP": "127.0.0.1", "Secret": secret})
}

fn login_token(fake: &FakeStardust, app: &str, secret: &str) -> String {
    let r = post_json(
        fake,
        "/App/Login",
        &[],
        &login_body(app, Some(salted_secret(secret, common::now_ms() / 1000))),
    );
    let j = r.json();
    assert_eq!(j["code"], 0, "{j}");
    j["data"]["token"].as_str().expect("token").to_string()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn span(id: &str, start: i64, error: Option<&str>) -> Value {
    json!({"Id": id, "ParentId": null, "TraceId": format!("{id}{id}"), "StartTime": start, "EndTime": start + 5, "Value": 0, "Tag": "t", "TraceFlag": 1, "Error": error})
}

fn builder(name: &str, start: i64, total: i64, errors: i64) -> Value {
    json!({"Name": name, "StartTime": start, "EndTime": start + 1000, "Total": total, "Errors": errors, "Cost": 10 * total, "MaxCost": 10, "MinCost": 10, "Value": 0, "Samples": null, "ErrorSamples": null})
}

fn model(builders: Vec<Value>) -> Value {
    json!({"AppId": "App1", "AppName": "App 1", "ClientId": CID, "Version": "0.1.0", "Info": null, "Builders": builders})
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn rules(fake: &FakeStardust) -> Vec<String> {
    fake.violations().into_iter().map(|v| v.rule).collect()
}

// ---- login ------------------------------------------------------------------------------------

#[test]
fn login_salted_secret_ok() {
    let fake = FakeStardust::builder()
        .app("App1", Some("s3cret-value"))
        .start();
    let t0 = common::now_ms();
    let r = post_json(
        &fake,
        "/app/LOGIN",
        &[],
        &login_body(
            "App1",
            Some(salted_secret("s3cret-value", common::now_ms() / 1000)),
        ),
    );
    let t1 = common::now_ms();
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["code"], 0, "{j}");
    let d = &j["data"];
    assert!(
        d.get("serverTime").is_some() && d.get("ServerTime").is_none(),
        "camelCase by default: {d}"
    );
    assert_eq!(d["secret"], Value::Null, "no disclosure on a good secret");
    assert_eq!(d["expire"], 7200);
    // Unix ms of the server's clock while it answered: between the times before and after.
    let server_time = d["serverTime"].as_i64().unwrap();
    assert!(
        (t0..=t1).contains(&server_time),
        "{server_time} not in {t0}..={t1}"
    );
    let token = d["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    let p = decode_token_payload(token).unwrap();
    assert_eq!(p["sub"], "App1");
    assert_eq!(p["jti"], CID);
    // 7200 s after issue, rounded up to whole seconds.
    let exp = p["exp"].as_i64().unwrap();
    assert!(
        (t0 / 1000 + 7200..=t1 / 1000 + 7201).contains(&exp),
        "exp {exp}, login between {t0} and {t1} ms"
    );
    assert!(fake.verify_token(token).is_some());
    let l = fake.logins();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].secret.form, SecretForm::Salted);
    assert!(l[0].secret.ok);
    assert_eq!(l[0].token.as_deref(), Some(token));
    fake.assert_no_violations();
}

#[test]
fn login_secret_forms_and_wrong_secret_modes() {
    let fake = FakeStardust::builder()
        .app("App1", Some("s3cret-value"))
        .start();
    // strict (default): wrong secret → 401, no token
    let j = post_json(
        &fake,
        "/App/Login",
        &[],
        &login_body("App1", Some(salted_secret("nope", common::now_ms() / 1000))),
    )
    .json();
    assert_eq!(j["code"], 401, "{j}");
    assert!(j.get("data").is_none() || j["data"].is_null());
    // salt too old vs server clock
    let j = post_json(
        &fake,
        "/App/Login",
        &[],
        &login_body(
            "App1",
            Some(salted_secret("s3cret-value", common::now_ms() / 1000 - 700)),
        ),
    )
    .json();
    assert_eq!(j["code"], 401, "{j}");
    // MD5 form and plaintext form verify, but are violations
    let j = post_json(
        &fake,
        "/App/Login",
        &[],
        &login_body("App1", Some(md5_upper("s3cret-value").to_lowercase())),
    )
    .json();
    assert_eq!(j["code"], 0, "{j}");
    let j = post_json(
        &fake,
        "/App/Login",
        &[],
        &login_body("App1", Some("S3CRET-VALUE".into())),
    )
    .json();
    assert_eq!(j["code"], 0, "{j}");
    let forms: Vec<(SecretForm, bool)> = fake
        .logins()
        .iter()
        .map(|l| (l.secret.form, l.secret.ok))
        .collect();
    assert_eq!(
        forms,
        vec![
            (SecretForm::Salted, false),
            (SecretForm::Salted, false),
            (SecretForm::Md5, true),
            (SecretForm::Plaintext, true)
        ]
    );
    assert!(
        fake.logins()[1].secret.detail.contains("skew"),
        "{:?}",
        fake.logins()[1].secret
    );
    let r = rules(&fake);
    assert_eq!(
        r.iter().filter(|r| *r == "secret-not-salted").count(),
        2,
        "{r:?}"
    );
    assert!(
        r.contains(&"plaintext-secret".to_string()),
        "case-insensitive match is still the plaintext? {r:?}"
    );
    // HEAD mode: wrong secret logs in and discloses the real secret
    fake.set_wrong_secret(WrongSecret::Head);
    let j = post_json(
        &fake,
        "/App/Login",
        &[],
        &login_body("App1", Some(salted_secret("nope", common::now_ms() / 1000))),
    )
    .json();
    assert_eq!(j["code"], 0, "{j}");
    assert_eq!(j["data"]["secret"], "s3cret-value");
    assert_eq!(j["data"]["code"], "App1");
    assert!(j["data"]["token"].is_string());
}

#[test]
fn login_auto_register_disabled_and_bad_body() {
    let fake = FakeStardust::builder().disabled_app("Off", None).start();
    let j = post_json(&fake, "/App/Login", &[], &login_body("NewApp", None)).json();
    assert_eq!(j["code"], 0);
    assert_eq!(j["data"]["code"], "NewApp");
    let secret = j["data"]["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 16);
    assert!(j["data"]["token"].is_string());
    assert_eq!(
        fake.app("NewApp").unwrap().secret.as_deref(),
        Some(secret.as_str())
    );
    assert!(fake.logins()[0].auto_registered);
    // the adopted secret now has to be right
    let j = post_json(
        &fake,
        "/App/Login",
        &[],
        &login_body(
            "NewApp",
            Some(salted_secret(&secret, common::now_ms() / 1000)),
        ),
    )
    .json();
    assert_eq!(
        (j["code"].as_i64(), j["data"]["secret"].is_null()),
        (Some(0), true),
        "{j}"
    );

    fake.set_auto_register_enabled(false);
    let j = post_json(&fake, "/App/Login", &[], &login_body("Other", None)).json();
    assert_eq!(j["code"], 0);
    assert!(j["data"]["secret"].is_string());
    assert!(j["data"]["token"].is_null(), "{j}");

    let j = post_json(&fake, "/App/Login", &[], &login_body("Off", None)).json();
    assert_eq!(j["code"], 403);
    assert_eq!(j["message"], "禁止登录");

    let r = http(
        &fake,
        "POST",
        "/App/Login",
        &[("Content-Type", "application/json")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/problem+json")
    );
    let r = http(&fake, "GET", "/App/Login", &[], b"").unwrap();
    assert_eq!(r.status, 405);
    let r = http(&fake, "GET", "/Nope", &[], b"").unwrap();
    assert_eq!(r.status, 404);
}

#[test]
fn pascal_case_and_code_200_switches() {
    let fake = FakeStardust::builder()
        .pascal_case(true)
        .success_code_200(true)
        .start();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    assert_eq!(j["Code"], 200, "{j}");
    assert!(j.get("code").is_none());
    assert!(j["Data"]["Token"].is_string(), "{j}");
    assert!(j["Data"]["ServerTime"].is_i64());
    let t = j["Data"]["Token"].as_str().unwrap();
    let j = post_json(
        &fake,
        "/App/Ping",
        &[("Authorization", &bearer(t))],
        &json!({"Time": 1}),
    )
    .json();
    assert_eq!(j["Code"], 200);
    assert_eq!(j["Data"]["Period"], 60);
    fake.set_pascal_case(false);
    fake.set_success_code_200(false);
    let j = post_json(&fake, "/App/Ping", &[], &json!({})).json();
    assert_eq!(j["code"], 401);
    assert_eq!(j["message"], "认证失败");
}

// ---- ping / tokens ----------------------------------------------------------------------------

#[test]
fn ping_token_lookup_and_errors() {
    let fake = FakeStardust::builder()
        .app("App1", Some("sec-ret1"))
        .start();
    let token = login_token(&fake, "App1", "sec-ret1");
    let ping = |h: &[(&str, &str)], path: &str| {
        post_json(&fake, path, h, &json!({"Id": 1, "Time": 1234567890123i64})).json()
    };

    let j = ping(&[], "/App/Ping");
    assert_eq!(
        (j["code"].as_i64(), j["message"].as_str()),
        (Some(401), Some("认证失败"))
    );
    assert!(j["traceId"].is_string());

    let j = ping(&[("Authorization", &bearer(&token))], "/App/Ping");
    assert_eq!(j["code"], 0, "{j}");
    assert_eq!(j["data"]["time"], 1234567890123i64);
    assert_eq!(j["data"]["period"], 60);
    assert!(
        j["data"]["token"].is_null(),
        "no refresh with 2 h left: {j}"
    );
    assert!(j["data"].as_object().unwrap().contains_key("commands"));

    // X-Token and cookie work (but are violations); query wins over header
    assert_eq!(ping(&[("X-Token", &token)], "/App/Ping")["code"], 0);
    assert_eq!(
        ping(&[("Cookie", &format!("a=b; Token={token}"))], "/App/Ping")["code"],
        0
    );
    let j = ping(
        &[("Authorization", &bearer(&token))],
        "/App/Ping?token=garbage",
    );
    assert_eq!(j["code"], 401, "query token wins: {j}");
    let r = rules(&fake);
    assert_eq!(
        r.iter().filter(|r| *r == "token-not-bearer").count(),
        2,
        "{r:?}"
    );
    assert_eq!(
        r.iter().filter(|r| *r == "token-in-query").count(),
        1,
        "{r:?}"
    );

    // expired and forged tokens
    let expired = fake.mint_token("App1", CID, -5);
    let j = ping(&[("Authorization", &bearer(&expired))], "/App/Ping");
    assert_eq!(j["code"], 401);
    assert!(j["message"].as_str().unwrap().contains("令牌已过期"), "{j}");
    let last = if token.ends_with('A') { 'Q' } else { 'A' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert_eq!(
        ping(&[("Authorization", &bearer(&forged))], "/App/Ping")["code"],
        401
    );
    fake.invalidate_tokens();
    assert_eq!(
        ping(&[("Authorization", &bearer(&token))], "/App/Ping")["code"],
        401
    );
    // unknown app → 403
    let stranger = fake.mint_token("Stranger", CID, 3600);
    assert_eq!(
        ping(&[("Authorization", &bearer(&stranger))], "/App/Ping")["code"],
        403
    );
    // a body is required
    let good = fake.mint_token("App1", CID, 3600);
    let r = http(
        &fake,
        "POST",
        "/App/Ping",
        &[("Authorization", &bearer(&good))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(fake.pings().len(), 3);
}

#[test]
fn ping_refreshes_token_near_expiry_and_real_expiry() {
    // A 5 min token: inside the 10 min refresh window, and still valid however slow the
    // machine is between its login and the ping that uses it.
    let fake = FakeStardust::builder()
        .app("App1", None)
        .token_lifetime(Duration::from_secs(300))
        .start();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    assert_eq!(j["data"]["expire"], 300);
    let token = j["data"]["token"].as_str().unwrap().to_string();
    // expires within the 10 min window → a fresh token
    fake.set_token_lifetime(Duration::from_secs(3600));
    let j = post_json(
        &fake,
        "/App/Ping",
        &[("Authorization", &bearer(&token))],
        &json!({"Time": 1}),
    )
    .json();
    assert_eq!(j["code"], 0, "{j}");
    let fresh = j["data"]["token"]
        .as_str()
        .expect("refreshed token")
        .to_string();
    assert_ne!(fresh, token);
    assert_eq!(fake.pings()[0].new_token.as_deref(), Some(fresh.as_str()));
    // the fresh one (1 h) is outside a 10 min window → no refresh
    let j = post_json(
        &fake,
        "/App/Ping",
        &[("Authorization", &bearer(&fresh))],
        &json!({}),
    )
    .json();
    assert!(j["data"]["token"].is_null());
    // a 1 s token really expires (exp is whole seconds, so it lives 1..2 s)
    fake.set_token_lifetime(Duration::from_secs(1));
    let t_login = Instant::now();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    assert_eq!(j["data"]["expire"], 1);
    let short = j["data"]["token"].as_str().unwrap().to_string();
    assert!(
        common::wait_until(Duration::from_secs(30), || fake
            .verify_token(&short)
            .is_none()),
        "token never expired"
    );
    assert!(
        t_login.elapsed() >= Duration::from_secs(1),
        "a 1 s token must live at least 1 s"
    );
    let j = post_json(
        &fake,
        "/App/Ping",
        &[("Authorization", &bearer(&short))],
        &json!({}),
    )
    .json();
    assert_eq!(j["code"], 401, "{j}");
    // logout
    let r = http(
        &fake,
        "GET",
        "/App/Logout?reason=Dispose",
        &[("Authorization", &bearer(&fresh))],
        b"",
    )
    .unwrap();
    let j = r.json();
    assert_eq!(j["code"], 0);
    assert!(j["data"]["token"].is_null());
    assert_eq!(fake.logouts()[0].reason.as_deref(), Some("Dispose"));
    let j = http(&fake, "GET", "/App/Logout?reason=Dispose", &[], b"")
        .unwrap()
        .json();
    assert_eq!(j["code"], 401);
}

// ---- reports ----------------------------------------------------------------------------------

#[test]
fn report_content_type_binding_and_response() {
    let fake = FakeStardust::builder()
        .trace_response(TraceResponseCfg {
            period: 30,
            max_samples: 3,
            excludes: Some(vec!["/health*".into()]),
            ..Default::default()
        })
        .start();
    let now = common::now_ms();
    let body = model(vec![builder("/a", now, 2, 1)]).to_string();
    let r = http(
        &fake,
        "POST",
        "/Trace/Report",
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 415);
    assert!(r.body.is_empty());
    assert!(fake.reports().is_empty());

    // null int → silent drop
    let mut bad = model(vec![builder("/a", now, 2, 1)]);
    bad["Builders"][0]["Total"] = Value::Null;
    let j = post_json(&fake, "/Trace/Report", &[], &bad).json();
    assert_eq!(
        (j["code"].as_i64(), j["data"].is_null()),
        (Some(0), true),
        "{j}"
    );
    let j = post_json(
        &fake,
        "/Trace/Report",
        &[],
        &json!({"AppId": "", "Builders": []}),
    )
    .json();
    assert!(j["data"].is_null());
    let r = http(
        &fake,
        "POST",
        "/Trace/Report",
        &[("Content-Type", "application/json")],
        b"{not json",
    )
    .unwrap();
    assert!(r.json()["data"].is_null());
    assert!(fake.reports().is_empty());

    // good report, camelCase keys accepted too; numeric strings accepted
    let good = json!({"appId": "App1", "clientId": CID, "version": "0.1.0",
        "builders": [{"name": "/a", "startTime": now.to_string(), "endTime": now + 10, "total": 2, "errors": 1, "cost": 20, "maxCost": 10, "minCost": 10}]});
    let r = http(
        &fake,
        "POST",
        "/Trace/Report",
        &[("Content-Type", "application/json; charset=utf-8")],
        good.to_string().as_bytes(),
    );
    let j = r.unwrap().json();
    assert_eq!(j["code"], 0);
    let d = &j["data"];
    assert_eq!(
        (
            d["period"].as_i64(),
            d["maxSamples"].as_i64(),
            d["maxErrors"].as_i64(),
            d["timeout"].as_i64()
        ),
        (Some(30), Some(3), Some(10), Some(5000))
    );
    assert_eq!(d["excludes"], json!(["/health*"]));
    assert_eq!(d["enableMeter"], true);
    assert_eq!(fake.reports()[0].model["Builders"][0]["StartTime"], now);
    assert_eq!(fake.totals_by_name()["/a"], (2, 1));
    // no Version → excludes null (and a violation)
    let mut nov = model(vec![builder("/b", now, 1, 0)]);
    nov["Version"] = Value::Null;
    let j = post_json(&fake, "/Trace/Report", &[], &nov).json();
    assert!(j["data"]["excludes"].is_null(), "{j}");
    // excluded builders are dropped server-side
    post_json(
        &fake,
        "/Trace/Report",
        &[],
        &model(vec![builder("/HEALTH/live", now, 1, 0)]),
    );
    assert_eq!(
        fake.totals_by_name().keys().cloned().collect::<Vec<_>>(),
        vec!["/a", "/b"]
    );
    // token: JWT-shaped garbage → 401; non-JWT ignored
    let j = post_json(
        &fake,
        "/Trace/Report",
        &[("Authorization", "Bearer a.b.c")],
        &model(vec![builder("/c", now, 1, 0)]),
    )
    .json();
    assert_eq!(j["code"], 401);
    let j = post_json(
        &fake,
        "/Trace/Report",
        &[("Authorization", "Bearer opaque")],
        &model(vec![builder("/c", now, 1, 0)]),
    )
    .json();
    assert_eq!(j["code"], 0);
    let r = rules(&fake);
    for want in ["report-content-type", "report-unbindable", "version"] {
        assert!(r.contains(&want.to_string()), "missing {want} in {r:?}");
    }
}

#[test]
fn report_raw_gzip_round_trip() {
    let fake = FakeStardust::start();
    let now = common::now_ms();
    let m = model(vec![builder("/gz", now, 7, 2)]);
    let gz = gzip(m.to_string().as_bytes());
    let r = http(
        &fake,
        "POST",
        "/Trace/ReportRaw",
        &[("Content-Type", "application/x-gzip")],
        &gz,
    )
    .unwrap();
    assert_eq!(r.json()["code"], 0, "{}", r.text());
    let reps = fake.reports();
    assert_eq!(reps.len(), 1);
    assert!(reps[0].gzip);
    assert_eq!(reps[0].endpoint, Endpoint::ReportRaw);
    assert_eq!(reps[0].raw, m);
    assert_eq!(
        fake.requests()[0].json.as_ref(),
        Some(&m),
        "decoded JSON recorded"
    );
    assert_eq!(fake.totals_by_name()["/gz"], (7, 2));
    fake.assert_no_violations();

    // gzip under another content type → parse error 500 + violation
    let r = http(
        &fake,
        "POST",
        "/Trace/ReportRaw",
        &[("Content-Type", "application/gzip")],
        &gz,
    )
    .unwrap();
    assert_eq!(r.json()["code"], 500);
    // raw JSON under a non-gzip type is read as JSON (leniently: null int → 0)
    let mut lenient = model(vec![builder("/raw", now, 1, 0)]);
    lenient["Builders"][0]["Value"] = Value::Null;
    let r = http(
        &fake,
        "POST",
        "/Trace/ReportRaw",
        &[("Content-Type", "application/octet-stream")],
        lenient.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(r.json()["code"], 0);
    assert_eq!(fake.totals_by_name()["/raw"], (1, 0));
    // empty body
    let r = http(
        &fake,
        "POST",
        "/Trace/ReportRaw",
        &[("Content-Type", "application/x-gzip")],
        b"",
    )
    .unwrap();
    assert!(r.json()["data"].is_null());
    // gzip sent to /Trace/Report is a violation
    http(
        &fake,
        "POST",
        "/Trace/Report",
        &[("Content-Type", "application/json")],
        &gz,
    )
    .unwrap();
    let r = rules(&fake);
    assert_eq!(
        r.iter().filter(|r| *r == "reportraw-content-type").count(),
        2,
        "{r:?}"
    );
    assert!(r.contains(&"report-gzip".to_string()), "{r:?}");
}

#[test]
fn builder_drop_rules_follow_server_clock() {
    let fake = FakeStardust::start();
    let now = common::now_ms();
    let day = 86_400_000;
    let long = "/".to_string() + &"x".repeat(200);
    let bs = vec![
        builder("", now, 1, 0),
        builder(&long, now, 1, 0),
        builder("/old", now - 3 * day - 60_000, 1, 0),
        builder("/future", now + day + 60_000, 1, 0),
        builder("/seconds", now / 1000, 1, 0),
        builder("/ok", now - 2 * day, 3, 0),
    ];
    let j = post_json(&fake, "/Trace/Report", &[], &model(bs)).json();
    assert_eq!(j["code"], 0);
    let rep = &fake.reports()[0];
    let accepted: Vec<&str> = rep
        .accepted
        .iter()
        .map(|b| b["Name"].as_str().unwrap())
        .collect();
    assert_eq!(accepted, vec!["/seconds", "/ok"]);
    assert_eq!(rep.dropped.len(), 4);
    assert_eq!(fake.totals_by_name().len(), 2);

    // A server clock 2 days behind rejects the local "now" as the future; its own now is fine.
    fake.set_clock_offset_ms(-2 * day);
    let t0 = common::now_ms();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    let t1 = common::now_ms();
    let server_time = j["data"]["serverTime"].as_i64().unwrap();
    assert!(
        (t0 - 2 * day..=t1 - 2 * day).contains(&server_time),
        "{server_time} is not 2 days before {t0}..={t1}"
    );
    fake.clear_records();
    post_json(
        &fake,
        "/Trace/Report",
        &[],
        &model(vec![
            builder("/local-now", common::now_ms(), 1, 0),
            builder("/server-now", fake.server_now_ms(), 1, 0),
        ]),
    );
    let names: Vec<String> = fake.totals_by_name().into_keys().collect();
    assert_eq!(names, vec!["/server-now"]);
}

#[test]
fn violations_are_recorded() {
    let fake = FakeStardust::start();
    let now = common::now_ms();
    let mut b = builder("/bad", now, 2, 3); // errors > total
    b["MinCost"] = json!(50); // > MaxCost 10
    b["MaxCost"] = json!(60); // > Cost 20 → both mincost? MinCost 50 ≤ 60; MaxCost 60 > Cost 20
    b["Samples"] = json!(
        (0..11)
            .map(|i| span(&format!("{i:016x}"), now, None))
            .collect::<Vec<_>>()
    );
    b["ErrorSamples"] = json!([
        span("e1", now, None),
        span(&"z".repeat(51), now, Some("boom"))
    ]);
    b["Samples"][0]["Tag"] = json!("x".repeat(1025));
    let mut b2 = builder("/min", now, 1, 0);
    b2["MinCost"] = json!(11);
    let b3 = builder("/seconds", now / 1000, 1, 0);
    let b4 = builder("http://127.0.0.1:6600/Trace/Report", now, 1, 0);
    let b5 = builder("/zero", now, 0, 0);
    let b6 = builder("/q?x=1", now, 1, 0);
    let mut m = model(vec![b, b2, b3, b4, b5, b6]);
    m["ClientId"] = json!("not-a-client-id");
    m["Version"] = json!("");
    post_json(
        &fake,
        "/Trace/Report",
        &[(
            "traceparent",
            "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
        )],
        &m,
    );
    let r = rules(&fake);
    for want in [
        "errors-gt-total",
        "maxcost-gt-cost",
        "mincost-gt-maxcost",
        "samples-cap",
        "samples-exceed-counts",
        "error-sample-no-error",
        "id-too-long",
        "tag-too-long",
        "time-not-ms",
        "builder-self-trace",
        "total-zero",
        "builder-name-uncut",
        "client-id",
        "version",
        "uploader-traced",
    ] {
        assert!(r.contains(&want.to_string()), "missing {want} in {r:?}");
    }
    // the sample cap follows the last maxSamples sent
    let fake = FakeStardust::builder()
        .trace_response(TraceResponseCfg {
            max_samples: 2,
            ..Default::default()
        })
        .start();
    let mut ok = builder("/ok", common::now_ms(), 20, 0);
    ok["Samples"] = json!(
        (0..20)
            .map(|i| span(&format!("{i:016x}"), common::now_ms(), None))
            .collect::<Vec<_>>()
    );
    post_json(&fake, "/Trace/Report", &[], &model(vec![ok.clone()]));
    assert_eq!(
        rules(&fake),
        vec!["samples-cap"],
        "default MaxSamples 1 → cap 10"
    );
    post_json(&fake, "/Trace/Report", &[], &model(vec![ok]));
    assert_eq!(
        rules(&fake).len(),
        1,
        "after maxSamples 2 was sent, 20 samples are fine"
    );
    // a clean request records nothing
    let fake = FakeStardust::builder()
        .app("App1", Some("sec-ret1"))
        .start();
    login_token(&fake, "App1", "sec-ret1");
    post_json(
        &fake,
        "/Trace/Report",
        &[],
        &model(vec![builder("/fine", common::now_ms(), 1, 0)]),
    );
    fake.assert_no_violations();
    assert!(
        std::panic::catch_unwind(|| {
            let f = FakeStardust::start();
            post_json(
                &f,
                "/Trace/Report",
                &[],
                &model(vec![builder("/zero", common::now_ms(), 0, 0)]),
            );
            f.assert_no_violations();
        })
        .is_err()
    );
}

// ---- faults -----------------------------------------------------------------------------------

#[test]
fn fault_status_code_and_garbage() {
    let fake = FakeStardust::start();
    fake.push_fault(On::Login, Fault::status(503));
    fake.fault_next(On::Report, 2, Fault::code(500, "boom"));
    fake.push_fault(On::Any, Fault::garbage());
    let r = post_json(&fake, "/App/Login", &[], &login_body("App1", None));
    assert_eq!(r.status, 503);
    assert!(fake.logins().is_empty(), "faulted login is not processed");
    let m = model(vec![builder("/a", common::now_ms(), 1, 0)]);
    for _ in 0..2 {
        let j = post_json(&fake, "/Trace/Report", &[], &m).json();
        assert_eq!(
            (j["code"].as_i64(), j["message"].as_str()),
            (Some(500), Some("boom"))
        );
    }
    assert!(fake.reports().is_empty());
    let r = post_json(&fake, "/Trace/Report", &[], &m);
    assert_eq!((r.status, r.text().as_str()), (200, "<html>oops</html>"));
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(fake.pending_faults(), 0);
    assert_eq!(post_json(&fake, "/Trace/Report", &[], &m).json()["code"], 0);
    let faults: Vec<Option<Fault>> = fake.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(faults[0], Some(Fault::status(503)));
    assert_eq!(faults[4], None);
    // persistent until cleared
    fake.set_fault(On::Ping, Fault::status(500));
    for _ in 0..3 {
        assert_eq!(post_json(&fake, "/App/Ping", &[], &json!({})).status, 500);
    }
    fake.clear_faults();
    assert_eq!(post_json(&fake, "/App/Ping", &[], &json!({})).status, 200);
}

#[test]
fn fault_dropped_connection_is_an_io_error() {
    let fake = FakeStardust::start();
    fake.push_fault(On::Login, Fault::Drop);
    let r = http(
        &fake,
        "POST",
        "/App/Login",
        &[("Content-Type", "application/json")],
        login_body("App1", None).to_string().as_bytes(),
    );
    assert!(r.is_err(), "expected an I/O error, got {r:?}");
    assert!(fake.logins().is_empty());
    let req = &fake.requests()[0];
    assert_eq!(
        (req.endpoint, req.fault.clone(), req.response.is_none()),
        (Endpoint::Login, Some(Fault::Drop), true)
    );
    assert_eq!(
        req.json.as_ref().unwrap()["AppId"],
        "App1",
        "dropped request is still recorded"
    );
    // response lost after processing: stored, but the client sees an error
    fake.push_fault(On::Report, Fault::DropAfterProcessing);
    let body = model(vec![builder("/a", common::now_ms(), 4, 0)]).to_string();
    let r = http(
        &fake,
        "POST",
        "/Trace/Report",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert!(r.is_err(), "{r:?}");
    assert_eq!(fake.totals_by_name()["/a"], (4, 0));
}

#[test]
fn fault_refused_connections_and_reopen() {
    let fake = FakeStardust::start();
    assert!(http(&fake, "GET", "/Api", &[], b"").is_ok());
    fake.refuse_connections();
    assert!(!fake.is_accepting());
    let e = TcpStream::connect(fake.addr()).expect_err("connect must be refused");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    fake.accept_connections();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    assert_eq!(j["code"], 0);
}

#[test]
fn fault_slow_and_hang() {
    // The clients that wait for hung requests run in this scope and the fake lives in it: a
    // failing assertion drops the fake first (resetting their connections), so they end and are
    // joined before the panic leaves the test.
    std::thread::scope(|scope| {
        let fake = FakeStardust::start();
        fake.push_fault(On::Login, Fault::slow(Duration::from_millis(300)));
        let t = Instant::now();
        let r = post_json(&fake, "/App/Login", &[], &login_body("App1", None));
        // A lower bound: a slow machine only makes the reply later.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(r.json()["code"], 0, "slow replies are processed normally");

        // a hung request times out on the client (it never gets an answer, however long this
        // takes)...
        fake.set_fault(On::Ping, Fault::Hang);
        let r = http_timeout(
            &fake,
            "POST",
            "/App/Ping",
            &[("Content-Type", "application/json")],
            b"{}",
            Duration::from_millis(200),
        );
        assert!(
            matches!(
                r.as_ref().map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
            ),
            "{r:?}"
        );
        // ...and is answered once released
        let addr = fake.addr();
        let h = scope.spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(HUNG_CLIENT_TIMEOUT)).unwrap();
            s.write_all(&request_bytes(
                "POST",
                "/App/Ping",
                &[("Content-Type", "application/json")],
                b"{}",
                true,
            ))
            .unwrap();
            read_resp(&mut BufReader::new(s))
        });
        assert!(fake.wait_for(|r| r.requests.len() == 3, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!h.is_finished(), "a hung request was answered");
        fake.clear_faults();
        // The fake reads a hang's release generation only after recording the request, so a
        // release in that instant would be missed (a race in the fake, not in what this
        // checks): release again until the answer is in.
        assert!(
            common::wait_until(Duration::from_secs(30), || {
                fake.release_hangs();
                h.is_finished()
            }),
            "the released request was not answered"
        );
        let r = h.join().unwrap().expect("answered after release");
        assert_eq!(r.json()["code"], 401);
        assert!(!fake.wait_for(|r| r.requests.len() > 3, Duration::from_millis(50)));

        // dropping the server with a hung request is bounded
        fake.set_fault(On::Any, Fault::Hang);
        let addr = fake.addr();
        let h = scope.spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(HUNG_CLIENT_TIMEOUT)).unwrap();
            s.write_all(&request_bytes("GET", "/App/Logout", &[], b"", true))
                .unwrap();
            read_resp(&mut BufReader::new(s))
        });
        assert!(fake.wait_for(|r| r.requests.len() == 4, Duration::from_secs(30)));
        let t = Instant::now();
        drop(fake);
        // A drop that waited for the hung request would never return (only the fake releases
        // a hang); a bounded one takes well under a second, so 20 s leaves any loaded machine
        // room.
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "drop took {:?}",
            t.elapsed()
        );
        let r = h.join().unwrap();
        assert!(r.is_err(), "the hung client gets no answer: {r:?}");
        assert!(
            !matches!(
                r.as_ref().map_err(|e| e.kind()),
                Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
            ),
            "the drop closes the hung client's connection (it did not wait {HUNG_CLIENT_TIMEOUT:?}): {r:?}"
        );
    });
}

/// How long a client waits for a hung request: far longer than the test takes to release it or
/// drop the fake, so only those end its wait.
const HUNG_CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

// ---- transport --------------------------------------------------------------------------------

#[test]
fn keep_alive_chunked_and_expect_continue_through_the_proxy() {
    let fake = FakeStardust::start();
    let mut s = TcpStream::connect(fake.addr()).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    let mut rd = BufReader::new(s.try_clone().unwrap());
    // two requests on one connection
    let body = login_body("App1", None).to_string();
    s.write_all(&request_bytes(
        "POST",
        "/App/Login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        false,
    ))
    .unwrap();
    assert_eq!(read_resp(&mut rd).unwrap().json()["code"], 0);
    // chunked body
    let m = model(vec![builder("/chunked", common::now_ms(), 1, 0)]).to_string();
    let (a, b) = m.split_at(m.len() / 2);
    let req = format!(
        "POST /Trace/Report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    assert_eq!(read_resp(&mut rd).unwrap().json()["code"], 0);
    assert_eq!(fake.totals_by_name()["/chunked"], (1, 0));
    assert_eq!(fake.requests()[1].body, m.as_bytes());
    // Expect: 100-continue
    let head = format!(
        "POST /Trace/Report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        m.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let cont = read_resp(&mut rd).unwrap();
    assert_eq!(cont.status, 100);
    s.write_all(m.as_bytes()).unwrap();
    assert_eq!(read_resp(&mut rd).unwrap().json()["code"], 0);
    assert_eq!(fake.totals_by_name()["/chunked"], (2, 0));
    let req = &fake.requests()[0];
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(
        req.headers
            .iter()
            .all(|(k, _)| *k == k.to_ascii_lowercase())
    );
}

#[test]
fn fake_is_send_sync_and_wait_for_times_out() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FakeStardust>();
    let fake = FakeStardust::start();
    let t = Instant::now();
    assert!(!fake.wait_for(|r| !r.reports.is_empty(), Duration::from_millis(100)));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert!(fake.wait_for(|r| r.reports.is_empty(), Duration::ZERO));
}

// ---- model binding, versions, columns, Compile (stardust-runtime/docs/stardust-protocol.md §6) --------------------

/// An `AppInfo` as the .NET client writes it (every number present, no nulls).
fn app_info(version: &str) -> Value {
    json!({"Id": 4242, "Name": "selftest", "Version": version, "CommandLine": "selftest --x",
        "UserName": "tester", "MachineName": "host1", "IP": "127.0.0.1",
        "StartTime": common::now_ms() - 60_000, "ProcessorTime": 1200, "CpuUsage": 0.0125,
        "WorkingSet": 10_485_760, "HeapSize": 0, "Threads": 7, "WorkerThreads": 0, "IOThreads": 0,
        "AvailableThreads": 0, "PendingItems": 0, "CompletedItems": 0, "Handles": 12,
        "Connections": 0, "GCCount": 0, "Time": common::now_ms()})
}

fn authed(fake: &FakeStardust, token: &str, path: &str, v: &Value) -> Resp {
    post_json(fake, path, &[("Authorization", &bearer(token))], v)
}

fn count(fake: &FakeStardust, rule: &str) -> usize {
    rules(fake).iter().filter(|r| *r == rule).count()
}

#[test]
fn app_bodies_bind_like_aspnet() {
    let fake = FakeStardust::builder()
        .app("App1", Some("sec-ret1"))
        .start();
    let token = login_token(&fake, "App1", "sec-ret1");
    let r = authed(&fake, &token, "/App/Ping", &app_info("1.0"));
    assert_eq!(
        (r.status, r.json()["code"].as_i64()),
        (200, Some(0)),
        "{}",
        r.text()
    );
    fake.assert_no_violations();

    // null (what the client writes for an unmeasured metric), fractions, wrong types → HTTP 400
    let cases = [
        ("WorkingSet", Value::Null),
        ("CpuUsage", Value::Null),
        ("Threads", json!(5.0)),
        ("ProcessorTime", json!(1e3)),
        ("Handles", json!(true)),
        ("CpuUsage", json!("NaN")),
        ("Threads", json!(2_147_483_648i64)),
        ("WorkingSet", json!("12.5")),
        ("Id", json!(" 7")),
        ("Time", json!({})),
        ("StartTime", json!(false)),
        ("StartTime", json!(1.5)),
        ("Name", json!(42)),
        ("UserName", json!(["a"])),
    ];
    for (field, bad) in &cases {
        let mut b = app_info("1.0");
        b[*field] = bad.clone();
        let r = authed(&fake, &token, "/App/Ping", &b);
        assert_eq!(r.status, 400, "{field} = {bad}: {}", r.text());
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/problem+json")
        );
        let j = r.json();
        assert!(j.get("code").is_none(), "no envelope: {j}");
        assert_eq!(j["status"], 400);
        assert!(
            j["errors"]
                .as_object()
                .unwrap()
                .contains_key(&format!("$.{field}")),
            "{field}: {j}"
        );
    }
    assert_eq!(fake.pings().len(), 1, "a 400 ping is not processed");
    assert_eq!(count(&fake, "http-400"), cases.len(), "{:?}", rules(&fake));
    assert_eq!(rules(&fake).len(), cases.len(), "{:?}", fake.violations());

    // accepted: numeric strings (Int64 as Int64.Parse reads them), null/unparseable StartTime,
    // null strings, unknown members, any casing; an absent member keeps its default
    fake.clear_records();
    for ok in [
        json!({"id": "7", "workingset": " 1024 ", "CPUUSAGE": "0.5", "StartTime": null, "UserName": null, "time": "1234567890123", "Extra": {"x": [null]}}),
        json!({"StartTime": "garbage", "Threads": -1, "CpuUsage": 3}),
        json!({}),
    ] {
        let r = authed(&fake, &token, "/App/Ping", &ok);
        assert_eq!(
            (r.status, r.json()["code"].as_i64()),
            (200, Some(0)),
            "{ok}: {}",
            r.text()
        );
    }
    assert_eq!(fake.pings()[0].body["time"], "1234567890123");
    assert_eq!(
        authed(
            &fake,
            &token,
            "/App/Ping",
            &json!({"Time": "1234567890123"})
        )
        .json()["data"]["time"],
        1234567890123i64,
        "Time echoed as bound"
    );
    fake.assert_no_violations();

    // whole-body errors: array, not JSON, empty; a non-JSON Content-Type is 415
    let auth = bearer(&token);
    for (ct, body, status) in [
        ("application/json", &b"[]"[..], 400),
        ("application/json", b"{nope", 400),
        ("application/json", b"null", 400),
        ("application/json", b"", 400),
        ("text/plain", b"{}", 415),
    ] {
        let r = http(
            &fake,
            "POST",
            "/App/Ping",
            &[("Authorization", &auth), ("Content-Type", ct)],
            body,
        )
        .unwrap();
        assert_eq!(r.status, status, "{ct} {:?}: {}", body, r.text());
    }
    assert_eq!(count(&fake, "http-400"), 4);
    assert_eq!(count(&fake, "http-415"), 1);

    // authorization comes before binding: no token → the 401 envelope
    let j = post_json(&fake, "/App/Ping", &[], &json!({"WorkingSet": null})).json();
    assert_eq!(j["code"], 401, "{j}");

    // login binds the same way (anonymous: always 400)
    fake.clear_records();
    for (field, bad) in [
        ("Compile", Value::Null),
        ("Time", json!(1.5)),
        ("Time", json!("soon")),
        ("AppName", json!(1)),
    ] {
        let mut b = login_body(
            "App1",
            Some(salted_secret("sec-ret1", common::now_ms() / 1000)),
        );
        b[field] = bad;
        let r = post_json(&fake, "/App/Login", &[], &b);
        assert_eq!(r.status, 400, "{field}: {}", r.text());
    }
    assert!(fake.logins().is_empty());
    assert_eq!(count(&fake, "http-400"), 4, "{:?}", rules(&fake));

    // Logout: `reason` is required
    fake.clear_records();
    for (path, status) in [
        ("/App/Logout", 400),
        ("/App/Logout?reason=", 400),
        ("/App/Logout?reason=Dispose", 200),
    ] {
        let r = http(&fake, "GET", path, &[("Authorization", &auth)], b"").unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    assert_eq!(fake.logouts().len(), 1);
    assert_eq!(count(&fake, "http-400"), 2);
}

#[test]
fn ping_version_is_checked_against_the_app_record() {
    let fake = FakeStardust::builder()
        .app("App1", None)
        .token_refresh_window(Duration::from_secs(3 * 3600))
        .start();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    let token = j["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(
        fake.app_meta("App1").unwrap(),
        AppMeta {
            version: None,
            compile_ms: 0,
            display_name: Some("Test App".into())
        },
        "a login without Compile does not replace the version (0 is not newer than 0)"
    );
    // the first ping's version is stored as is, unparsed
    let j = authed(&fake, &token, "/App/Ping", &app_info("1.2.3-beta.1")).json();
    assert_eq!(j["code"], 0, "{j}");
    assert_eq!(
        fake.app_meta("App1").unwrap().version.as_deref(),
        Some("1.2.3-beta.1")
    );
    assert_eq!(count(&fake, "version"), 1, "still a violation");
    // App.Compile is 1970, so every later ping parses both versions: all fail, valid or not
    let id = fake.send_command("App1", "app/freeMemory", None);
    for v in ["1.2.3", "1.2.3-beta.1"] {
        let j = authed(&fake, &token, "/App/Ping", &app_info(v)).json();
        assert_eq!(j["code"], 500, "{j}");
        assert!(
            j["message"]
                .as_str()
                .unwrap()
                .contains("was not in a correct format"),
            "{j}"
        );
        let p = fake.pings().pop().unwrap();
        assert_eq!(p.code, 500);
        assert!(p.new_token.is_none(), "a failed ping refreshes no token");
        assert!(p.commands.is_empty(), "a failed ping delivers no command");
    }
    assert_eq!(fake.command(id).unwrap().times, 0);
    assert_eq!(count(&fake, "ping-500"), 2, "{:?}", rules(&fake));
    // a ping without Version skips the comparison
    let mut nov = app_info("");
    nov.as_object_mut().unwrap().remove("Version");
    let j = authed(&fake, &token, "/App/Ping", &nov).json();
    assert_eq!(j["code"], 0);
    assert_eq!(j["data"]["commands"][0]["id"], id);
    assert!(j["data"]["token"].is_string(), "refresh window 3 h");

    // fixed in the web UI: a greater version replaces it, a smaller one does not
    fake.set_app_version("App1", Some("1.0"));
    for (v, stored) in [("1.2.3", "1.2.3"), ("1.1", "1.2.3"), ("1.2.3.0", "1.2.3.0")] {
        let j = authed(&fake, &token, "/App/Ping", &app_info(v)).json();
        assert_eq!(j["code"], 0, "{v}: {j}");
        assert_eq!(
            fake.app_meta("App1").unwrap().version.as_deref(),
            Some(stored)
        );
    }
    // each bad form is a 500 once App.Compile is over 30 days old
    for bad in [
        "1",
        "1.2.3.4.5",
        "v1.2.3",
        "1.2.3+g1a2b",
        "1..2",
        "1.-2",
        "1.2.3.2150000000",
    ] {
        let j = authed(&fake, &token, "/App/Ping", &app_info(bad)).json();
        assert_eq!(j["code"], 500, "{bad}: {j}");
    }
    // a build from the last 30 days: no comparison, nothing fails
    fake.set_app_compile_ms("App1", common::now_ms() - 86_400_000);
    let j = authed(&fake, &token, "/App/Ping", &app_info("v9")).json();
    assert_eq!(j["code"], 0, "{j}");
    assert_eq!(
        fake.app_meta("App1").unwrap().version.as_deref(),
        Some("1.2.3.0")
    );
}

#[test]
fn strings_over_their_columns_answer_500() {
    let fake = FakeStardust::start();
    let long = "A".repeat(51);
    let login = |f: &dyn Fn(&mut Value)| {
        let mut b = login_body("App2", None);
        f(&mut b);
        post_json(&fake, "/App/Login", &[], &b).json()
    };
    let j = login(&|b| {
        b["AppId"] = json!(long);
        b["Code"] = json!(long);
    });
    assert_eq!(j["code"], 500, "{j}");
    assert!(j["message"].as_str().unwrap().contains("长度限制50"), "{j}");
    assert!(fake.app(&long).is_none(), "the app was not created");
    for f in [
        &(|b: &mut Value| b["AppName"] = json!("名".repeat(51))) as &dyn Fn(&mut Value),
        &|b| b["Version"] = json!(format!("1.{}", "0".repeat(49))),
        &|b| b["ClientId"] = json!(format!("127.0.0.1@{}", "9".repeat(42))),
        &|b| b["AppName"] = json!("😀".repeat(26)), // 52 UTF-16 units
    ] {
        let j = login(f);
        assert_eq!(j["code"], 500, "{j}");
        assert!(fake.app("App2").is_none());
    }
    assert_eq!(count(&fake, "column-length"), 6, "{:?}", rules(&fake)); // AppId + Code
    // 50 units are fine, whatever their UTF-8 length
    let j = login(&|b| b["AppName"] = json!("名".repeat(50)));
    assert_eq!(j["code"], 0, "{j}");
    let token = j["data"]["token"].as_str().unwrap().to_string();

    // ping: UserName, MachineName, Version → 500; Name, CommandLine, Listens are trimmed
    fake.clear_records();
    for (field, value) in [
        ("UserName", json!(long)),
        ("MachineName", json!("h".repeat(64))),
        ("Version", json!(format!("1.{}", "0".repeat(49)))),
    ] {
        let mut b = app_info("1.0");
        b[field] = value;
        let j = authed(&fake, &token, "/App/Ping", &b).json();
        assert_eq!(j["code"], 500, "{field}: {j}");
        assert!(j["message"].as_str().unwrap().contains(field), "{j}");
    }
    let mut b = app_info("1.0");
    b["Name"] = json!("n".repeat(300));
    b["CommandLine"] = json!("c".repeat(600));
    b["Listens"] = json!("l".repeat(300));
    assert_eq!(authed(&fake, &token, "/App/Ping", &b).json()["code"], 0);
    assert_eq!(count(&fake, "column-length"), 3, "{:?}", rules(&fake));
}

#[test]
fn login_compile_is_recorded_and_checked() {
    let fake = FakeStardust::builder().app("App1", None).start();
    let day = 86_400_000;
    let build = common::now_ms() - 3 * day;
    let login = |cid: &str, compile: Value, version: &str| {
        let mut b = login_body("App1", None);
        b["ClientId"] = json!(cid);
        b["Compile"] = compile;
        b["Version"] = json!(version);
        let j = post_json(&fake, "/App/Login", &[], &b).json();
        assert_eq!(j["code"], 0, "{j}");
    };
    login(CID, json!(build), "0.1.0");
    assert_eq!(fake.logins()[0].compile, Some(build));
    let meta = fake.app_meta("App1").unwrap();
    assert_eq!(
        (meta.compile_ms, meta.version.as_deref()),
        (build, Some("0.1.0"))
    );
    // the same build with another version changes nothing; only a strictly newer build wins
    login("127.0.0.1@2", json!(build), "0.2.0");
    assert_eq!(
        fake.app_meta("App1").unwrap().version.as_deref(),
        Some("0.1.0")
    );
    login("127.0.0.1@3", json!((build + 1000).to_string()), "0.3.0");
    let meta = fake.app_meta("App1").unwrap();
    assert_eq!(
        (meta.compile_ms, meta.version.as_deref()),
        (build + 1000, Some("0.3.0"))
    );
    login("127.0.0.1@4", json!(build - day), "0.0.9");
    assert_eq!(
        fake.app_meta("App1").unwrap().version.as_deref(),
        Some("0.3.0")
    );
    fake.assert_no_violations();

    // what a wrong Compile looks like
    login("127.0.0.1@5", json!(build / 1000), "0.3.0"); // seconds
    // "now": the login's own Time (a clock read just before it could be a slow second off)
    let mut b = login_body("App1", None);
    b["ClientId"] = json!("127.0.0.1@6");
    b["Compile"] = b["Time"].clone();
    b["Version"] = json!("0.3.0");
    let j = post_json(&fake, "/App/Login", &[], &b).json();
    assert_eq!(j["code"], 0, "{j}");
    login("127.0.0.1@7", json!(common::now_ms() + day), "0.3.0");
    login("127.0.0.1@8", json!(100_000_000_000i64), "0.3.0"); // 1973
    login(CID, json!(build - 5000), "0.1.0"); // this process sent another build time before
    assert_eq!(
        rules(&fake),
        vec![
            "compile-not-ms",
            "compile-is-now",
            "compile-future",
            "compile-implausible",
            "compile-changed"
        ]
    );
    // absence is legal, unless the test asks for it
    fake.clear_records();
    let mut b = login_body("App1", None);
    b["Compile"] = Value::Null;
    assert_eq!(post_json(&fake, "/App/Login", &[], &b).status, 400);
    assert_eq!(rules(&fake), vec!["http-400"]);
    fake.clear_records();
    let b = login_body("App1", None);
    post_json(&fake, "/App/Login", &[], &b);
    assert_eq!(fake.logins()[0].compile, None);
    fake.assert_no_violations();
    fake.set_require_compile(true);
    post_json(&fake, "/App/Login", &[], &b);
    assert_eq!(rules(&fake), vec!["compile-missing"]);
}

// ---- commands (stardust-runtime/docs/stardust-protocol.md §9) ----------------------------------------------------------------------------

#[test]
fn commands_are_delivered_resent_and_cancelled() {
    let fake = FakeStardust::builder()
        .app("App1", None)
        .app("App2", None)
        .start();
    let token = login_token_plain(&fake, "App1", None);
    let other = login_token_plain(&fake, "App2", None);
    let id = fake.send_command("App1", "app/freeMemory", Some(r#"{"x":1}"#));
    assert_eq!(id, 1);
    let ping = |t: &str| authed(&fake, t, "/App/Ping", &app_info("1.0")).json();
    assert!(ping(&other)["data"]["commands"].is_null(), "not App2's");
    let j = ping(&token);
    let c = &j["data"]["commands"][0];
    assert_eq!(c["id"], id);
    assert_eq!(c["command"], "app/freeMemory");
    assert_eq!(c["argument"], r#"{"x":1}"#);
    assert_eq!(c["startTime"], "0001-01-01 00:00:00", "unset");
    assert_eq!(c["expire"], "0001-01-01 00:00:00");
    assert_eq!(c["status"], 0);
    let tp = c["traceId"].as_str().unwrap();
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");
    // without a final reply it comes back with every ping: 11 sends, then cancelled
    for _ in 0..10 {
        assert_eq!(ping(&token)["data"]["commands"][0]["id"], id);
    }
    let c = fake.command(id).unwrap();
    assert_eq!((c.times, c.status, c.delivered_in.len()), (11, 1, 11));
    assert!(c.is_pending());
    assert!(ping(&token)["data"]["commands"].is_null());
    let c = fake.command(id).unwrap();
    assert_eq!(
        (c.status, c.cancelled_by_server),
        (command_status::CANCELLED, true)
    );
    assert_eq!(
        fake.pings()
            .iter()
            .filter(|p| p.commands == vec![id])
            .count(),
        11
    );
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || fake.assert_commands_answered()
        ))
        .is_err(),
        "never answered"
    );

    // a future start: sent on every ping without counting; times in server-local form while
    // App.Compile is before 2025
    fake.set_server_utc_offset_min(480);
    let start = 4_102_444_800_000; // 2100-01-01T00:00:00Z
    let later = fake.send_command_with(
        "App1",
        "later",
        None,
        CommandOptions {
            start_time_ms: Some(start),
            expire_ms: Some(start + 3_600_000),
            trace_id: Some("abc".into()),
        },
    );
    let gone = fake.send_command_with(
        "App1",
        "expired",
        None,
        CommandOptions {
            expire_ms: Some(fake.server_now_ms() - 1000),
            ..Default::default()
        },
    );
    for _ in 0..3 {
        let j = ping(&token);
        let cmds = j["data"]["commands"].as_array().unwrap();
        assert_eq!(cmds.len(), 1, "{j}");
        assert_eq!(cmds[0]["startTime"], "2100-01-01 08:00:00");
        assert_eq!(cmds[0]["expire"], "2100-01-01 09:00:00");
        assert_eq!(cmds[0]["traceId"], "abc");
    }
    assert_eq!(fake.command(later).unwrap().times, 0);
    let g = fake.command(gone).unwrap();
    assert!(g.delivered_in.is_empty() && g.cancelled_by_server);

    // UTC ("O" with Z) once a login brought a build from 2025 or later
    let mut b = login_body("App1", None);
    b["Compile"] = json!(common::now_ms() - 86_400_000);
    post_json(&fake, "/App/Login", &[], &b);
    let j = ping(&token);
    assert_eq!(
        j["data"]["commands"][0]["startTime"],
        "2100-01-01T00:00:00.0000000Z"
    );

    // with an expiry: up to 101 sends
    let many = fake.send_command_with(
        "App1",
        "many",
        None,
        CommandOptions {
            expire_ms: Some(fake.server_now_ms() + 3_600_000),
            ..Default::default()
        },
    );
    for _ in 0..102 {
        ping(&token);
    }
    let c = fake.command(many).unwrap();
    assert_eq!(
        (c.delivered_in.len(), c.status),
        (101, command_status::CANCELLED)
    );

    // PascalCase switch applies to the command models too
    fake.set_pascal_case(true);
    let j = ping(&token);
    assert_eq!(j["Data"]["Commands"][0]["Command"], "later", "{j}");
}

fn login_token_plain(fake: &FakeStardust, app: &str, secret: Option<&str>) -> String {
    let b = login_body(
        app,
        secret.map(|s| salted_secret(s, common::now_ms() / 1000)),
    );
    let j = post_json(fake, "/App/Login", &[], &b).json();
    j["data"]["token"].as_str().expect("token").to_string()
}

#[test]
fn command_replies_are_recorded_and_checked() {
    let fake = FakeStardust::builder()
        .app("App1", None)
        .app("App2", None)
        .start();
    let token = login_token_plain(&fake, "App1", None);
    let other = login_token_plain(&fake, "App2", None);
    let id = fake.send_command("App1", "app/freeMemory", None);
    let ping = || authed(&fake, &token, "/App/Ping", &app_info("1.0")).json();
    assert_eq!(ping()["data"]["commands"][0]["id"], id);
    let reply = |t: &str, v: Value| authed(&fake, t, "/App/CommandReply", &v);

    let j = reply(&token, json!({"Id": id, "Status": 2, "Data": "OK"})).json();
    assert_eq!(
        (j["code"].as_i64(), j["data"].as_i64()),
        (Some(0), Some(1)),
        "{j}"
    );
    let c = fake.command(id).unwrap();
    assert_eq!((c.status, c.result.as_deref()), (2, Some("OK")));
    assert!(
        ping()["data"]["commands"].is_null(),
        "answered: not sent again"
    );
    let r = &fake.command_replies()[0];
    assert_eq!(
        (
            r.id,
            r.status,
            r.data.as_deref(),
            r.app.as_str(),
            r.client_id.as_str()
        ),
        (id, 2, Some("OK"), "App1", CID)
    );
    fake.assert_no_violations();
    fake.assert_commands_answered();

    // replied twice; unknown id; another app's command
    assert_eq!(
        reply(&token, json!({"Id": id, "Status": 2})).json()["data"],
        1
    );
    assert_eq!(
        reply(&token, json!({"Id": 999, "Status": 2})).json()["data"],
        0
    );
    let id2 = fake.send_command("App1", "x", None);
    let j = reply(
        &other,
        json!({"Id": id2, "Status": 4, "Data": "找不到服务[x]"}),
    )
    .json();
    assert_eq!(j["code"], 403, "{j}");
    assert!(fake.command(id2).unwrap().is_pending());
    assert_eq!(
        rules(&fake),
        vec![
            "command-reply-twice",
            "command-reply-unknown",
            "command-reply-foreign"
        ]
    );

    // binding: the status is a number; Id an integer
    fake.clear_records();
    for bad in [
        json!({"Id": id2, "Status": "Done"}),
        json!({"Id": id2, "Status": null}),
        json!({"Id": 2.0, "Status": 2}),
        json!([]),
    ] {
        assert_eq!(reply(&token, bad.clone()).status, 400, "{bad}");
    }
    assert_eq!(count(&fake, "http-400"), 4);
    assert!(fake.command_replies().is_empty());

    // status 1 is for scheduled commands only; 0 is no answer
    fake.clear_records();
    assert_eq!(
        reply(&token, json!({"Id": id2, "Status": 1})).json()["data"],
        1
    );
    assert!(
        fake.command(id2).unwrap().is_pending(),
        "status 1 stays pending"
    );
    assert_eq!(rules(&fake), vec!["command-reply-processing"]);
    fake.clear_records();
    assert_eq!(
        reply(&token, json!({"Id": id2, "Status": 0})).json()["data"],
        1
    );
    assert_eq!(rules(&fake), vec!["command-reply-status"]);

    let sched = fake.send_command_with(
        "App1",
        "later",
        None,
        CommandOptions {
            start_time_ms: Some(fake.server_now_ms() + 3_600_000),
            ..Default::default()
        },
    );
    fake.clear_records();
    reply(
        &token,
        json!({"id": sched, "status": 1, "data": "已安排计划执行"}),
    );
    reply(
        &token,
        json!({"Id": sched.to_string(), "Status": 2, "Data": "d".repeat(600)}),
    );
    fake.assert_no_violations();
    let c = fake.command(sched).unwrap();
    assert_eq!(
        (c.status, c.result.unwrap().len(), c.replies.len()),
        (2, 500, 2)
    );
    // a second status 1 is a duplicate too
    let sched2 = fake.send_command_with(
        "App1",
        "later2",
        None,
        CommandOptions {
            start_time_ms: Some(fake.server_now_ms() + 3_600_000),
            ..Default::default()
        },
    );
    reply(&token, json!({"Id": sched2, "Status": 1}));
    reply(&token, json!({"Id": sched2, "Status": 1}));
    assert_eq!(rules(&fake), vec!["command-reply-twice"]);
    // no token → 401, nothing recorded
    let n = fake.command_replies().len();
    let j = post_json(
        &fake,
        "/App/CommandReply",
        &[],
        &json!({"Id": sched2, "Status": 2}),
    )
    .json();
    assert_eq!(j["code"], 401);
    assert_eq!(fake.command_replies().len(), n);
}

// ---- events (stardust-runtime/docs/stardust-protocol.md §10) ------------------------------------------------------------------------------

#[test]
fn events_are_recorded_and_checked() {
    let fake = FakeStardust::builder().app("App1", None).start();
    let token = login_token_plain(&fake, "App1", None);
    let post = |v: Value| authed(&fake, &token, "/App/PostEvents", &v);
    let now = common::now_ms();
    let j = post(json!([
        {"Time": now, "Type": "info", "Name": "应用启动", "Remark": "pid=1, Name=x, FileName=/bin/x"},
        {"time": now.to_string(), "type": "ERROR", "name": "boom", "remark": null},
    ]))
    .json();
    assert_eq!(
        (j["code"].as_i64(), j["data"].as_i64()),
        (Some(0), Some(2)),
        "{j}"
    );
    let ev = fake.events();
    assert_eq!(ev.len(), 2);
    assert_eq!(
        (
            ev[0].name.as_deref(),
            ev[0].event_type.as_deref(),
            ev[0].success,
            ev[0].time,
            ev[0].created_ms,
            ev[0].app.as_str(),
            ev[0].client_id.as_str()
        ),
        (Some("应用启动"), Some("info"), true, now, now, "App1", CID)
    );
    assert_eq!(
        ev[0].remark.as_deref(),
        Some("pid=1, Name=x, FileName=/bin/x")
    );
    assert!(!ev[1].success, "type error, any case");
    assert_eq!(ev[1].time, now);
    fake.assert_no_violations();
    assert_eq!(post(json!([])).json()["data"], 0);

    // a name over 50 fails the whole batch
    let j = post(json!([
        {"Time": now, "Type": "info", "Name": "ok"},
        {"Time": now, "Type": "info", "Name": "n".repeat(51)},
    ]))
    .json();
    assert_eq!(j["code"], 500, "{j}");
    assert_eq!(fake.events().len(), 2, "nothing stored");
    assert_eq!(rules(&fake), vec!["column-length"]);

    // binding
    fake.clear_records();
    for bad in [
        json!({"Time": now, "Name": "x"}),
        json!([{"Time": null, "Name": "x"}]),
        json!([{"Time": "soon", "Name": "x"}]),
        json!([{"Time": now, "Name": 5}]),
        json!([1]),
    ] {
        assert_eq!(post(bad.clone()).status, 400, "{bad}");
    }
    assert_eq!(count(&fake, "http-400"), 5);
    let j = post(json!([null])).json();
    assert_eq!(j["code"], 500);
    assert!(fake.events().is_empty());

    // accepted but against the guidance: long remark (cut to 2000), odd type, seconds, no name,
    // more than 100 in one batch
    fake.clear_records();
    let sent = common::now_ms();
    let j = post(json!([
        {"Time": now, "Type": "info", "Name": "r", "Remark": "x".repeat(2500)},
        {"Time": now / 1000, "Type": "warn", "Name": null},
        {"Type": "info", "Name": "t0"},
    ]))
    .json();
    let answered = common::now_ms();
    assert_eq!(j["data"], 3);
    let ev = fake.events();
    assert_eq!(ev[0].remark.as_ref().unwrap().len(), 2000);
    assert_eq!(
        ev[1].created_ms,
        now / 1000 * 1000,
        "seconds are read as seconds"
    );
    assert!(
        (sent..=answered).contains(&ev[2].created_ms),
        "no Time → arrival time: {} not in {sent}..={answered}",
        ev[2].created_ms
    );
    assert_eq!(
        rules(&fake),
        vec![
            "event-remark-long",
            "event-name",
            "time-not-ms",
            "event-type",
            "time-not-ms"
        ]
    );
    fake.clear_records();
    let batch: Vec<Value> = (0..101)
        .map(|i| json!({"Time": now, "Type": "info", "Name": format!("e{i}")}))
        .collect();
    assert_eq!(post(json!(batch)).json()["data"], 101);
    assert_eq!(rules(&fake), vec!["events-batch"]);
    // token required
    let j = post_json(&fake, "/App/PostEvents", &[], &json!([])).json();
    assert_eq!(j["code"], 401);
}

// ---- a report's Info (stardust-runtime/docs/stardust-protocol.md §6.6) -------------------------------------------------------------------

#[test]
fn report_info_binds_and_runs_the_version_check() {
    let fake = FakeStardust::start();
    let now = common::now_ms();
    let mut m = model(vec![builder("/a", now, 1, 0)]);
    m["Info"] = app_info("0.1.0");
    m["Info"]["WorkingSet"] = Value::Null;
    // /Trace/Report binds Info strictly: the whole report is dropped silently
    let j = post_json(&fake, "/Trace/Report", &[], &m).json();
    assert_eq!(
        (j["code"].as_i64(), j["data"].is_null()),
        (Some(0), true),
        "{j}"
    );
    assert!(fake.reports().is_empty());
    assert!(rules(&fake).contains(&"report-unbindable".to_string()));
    // /Trace/ReportRaw reads it leniently
    let r = http(
        &fake,
        "POST",
        "/Trace/ReportRaw",
        &[("Content-Type", "application/x-gzip")],
        &gzip(m.to_string().as_bytes()),
    )
    .unwrap();
    assert_eq!(r.json()["code"], 0, "{}", r.text());
    assert_eq!(
        fake.app_meta("App1").unwrap().version.as_deref(),
        Some("0.1.0")
    );
    // an unparseable App.Version (Compile 1970) fails the report like a ping
    fake.clear_records();
    fake.set_app_version("App1", Some("0.1.0-dev"));
    m["Info"] = app_info("0.1.0");
    let j = post_json(&fake, "/Trace/Report", &[], &m).json();
    assert_eq!(j["code"], 500, "{j}");
    assert!(fake.reports().is_empty());
    assert_eq!(rules(&fake), vec!["report-500"]);
}
