//! Self-test of the fake Stardust server, through real HTTP over loopback.

use stardust_test_support as support;

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    http_timeout(fake, method, path, headers, body, Duration::from_secs(5))
}

fn post_json(fake: &FakeStardust, path: &str, headers: &[(&str, &str)], v: &Value) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http(fake, "POST", path, &h, v.to_string().as_bytes()).expect("http")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const CID: &str = "127.0.0.1@4242";

fn login_body(app: &str, secret: Option<String>) -> Value {
    json!({"AppId": app, "Code": app, "ClientId": CID, "AppName": "Test App", "Version": "0.1.0", "Time": now_ms(), "IP": "127.0.0.1", "Secret": secret})
}

fn login_token(fake: &FakeStardust, app: &str, secret: &str) -> String {
    let r = post_json(
        fake,
        "/App/Login",
        &[],
        &login_body(app, Some(salted_secret(secret, now_ms() / 1000))),
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
    let t0 = now_ms();
    let r = post_json(
        &fake,
        "/app/LOGIN",
        &[],
        &login_body("App1", Some(salted_secret("s3cret-value", now_ms() / 1000))),
    );
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
    assert!((d["serverTime"].as_i64().unwrap() - t0).abs() < 5000);
    let token = d["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    let p = decode_token_payload(token).unwrap();
    assert_eq!(p["sub"], "App1");
    assert_eq!(p["jti"], CID);
    assert!((p["exp"].as_i64().unwrap() - (t0 / 1000 + 7200)).abs() <= 2);
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
        &login_body("App1", Some(salted_secret("nope", now_ms() / 1000))),
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
            Some(salted_secret("s3cret-value", now_ms() / 1000 - 700)),
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
        &login_body("App1", Some(salted_secret("nope", now_ms() / 1000))),
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
        &login_body("NewApp", Some(salted_secret(&secret, now_ms() / 1000))),
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
    let stranger = fake.mint_token("Stranger", CID, 60);
    assert_eq!(
        ping(&[("Authorization", &bearer(&stranger))], "/App/Ping")["code"],
        403
    );
    // a body is required
    let good = fake.mint_token("App1", CID, 60);
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
    let fake = FakeStardust::builder()
        .app("App1", None)
        .token_lifetime(Duration::from_secs(1))
        .start();
    let t_login = Instant::now();
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    assert_eq!(j["data"]["expire"], 1);
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
    // the 1 s token really expires (exp is whole seconds, so it lives 1..2 s)
    let t = Instant::now();
    while fake.verify_token(&token).is_some() {
        assert!(t.elapsed() < Duration::from_secs(3), "token never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        t_login.elapsed() >= Duration::from_secs(1),
        "a 1 s token must live at least 1 s"
    );
    let j = post_json(
        &fake,
        "/App/Ping",
        &[("Authorization", &bearer(&token))],
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
    let now = now_ms();
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
    let now = now_ms();
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
    let now = now_ms();
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
    let j = post_json(&fake, "/App/Login", &[], &login_body("App1", None)).json();
    assert!((j["data"]["serverTime"].as_i64().unwrap() - (now - 2 * day)).abs() < 5000);
    fake.clear_records();
    post_json(
        &fake,
        "/Trace/Report",
        &[],
        &model(vec![
            builder("/local-now", now_ms(), 1, 0),
            builder("/server-now", fake.server_now_ms(), 1, 0),
        ]),
    );
    let names: Vec<String> = fake.totals_by_name().into_keys().collect();
    assert_eq!(names, vec!["/server-now"]);
}

#[test]
fn violations_are_recorded() {
    let fake = FakeStardust::start();
    let now = now_ms();
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
    let mut ok = builder("/ok", now_ms(), 20, 0);
    ok["Samples"] = json!(
        (0..20)
            .map(|i| span(&format!("{i:016x}"), now_ms(), None))
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
        &model(vec![builder("/fine", now_ms(), 1, 0)]),
    );
    fake.assert_no_violations();
    assert!(
        std::panic::catch_unwind(|| {
            let f = FakeStardust::start();
            post_json(
                &f,
                "/Trace/Report",
                &[],
                &model(vec![builder("/zero", now_ms(), 0, 0)]),
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
    let m = model(vec![builder("/a", now_ms(), 1, 0)]);
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
    let body = model(vec![builder("/a", now_ms(), 4, 0)]).to_string();
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
    let fake = FakeStardust::start();
    fake.push_fault(On::Login, Fault::slow(Duration::from_millis(300)));
    let t = Instant::now();
    let r = post_json(&fake, "/App/Login", &[], &login_body("App1", None));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.json()["code"], 0, "slow replies are processed normally");

    // a hung request times out on the client...
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
    let h = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
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
    assert!(fake.wait_for(|r| r.requests.len() == 3, Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!h.is_finished());
    fake.clear_faults();
    let r = h.join().unwrap().expect("answered after release");
    assert_eq!(r.json()["code"], 401);
    assert!(!fake.wait_for(|r| r.requests.len() > 3, Duration::from_millis(50)));

    // dropping the server with a hung request is bounded
    fake.set_fault(On::Any, Fault::Hang);
    let addr = fake.addr();
    let h = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&request_bytes("GET", "/App/Logout", &[], b"", true))
            .unwrap();
        read_resp(&mut BufReader::new(s))
    });
    assert!(fake.wait_for(|r| r.requests.len() == 4, Duration::from_secs(2)));
    let t = Instant::now();
    drop(fake);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
    assert!(h.join().unwrap().is_err(), "the hung client gets no answer");
}

// ---- transport --------------------------------------------------------------------------------

#[test]
fn keep_alive_chunked_and_expect_continue_through_the_proxy() {
    let fake = FakeStardust::start();
    let mut s = TcpStream::connect(fake.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
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
    let m = model(vec![builder("/chunked", now_ms(), 1, 0)]).to_string();
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
