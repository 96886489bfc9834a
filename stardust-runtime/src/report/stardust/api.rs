//! HTTP calls to the Stardust server: fail-over across servers, the token header, and the
//! response envelope read the way the .NET client reads it ([docs/stardust-protocol.md §2.4](crate::docs::stardust_protocol)).

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// Largest reply body read; anything larger is a transport error.
const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;
/// A call is not started with less time than this left before its deadline.
pub(crate) const MIN_CALL_TIME: Duration = Duration::from_millis(20);

/// Why a call did not succeed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Network failure, timeout, HTTP status ≥ 400, or a reply that is not a JSON envelope:
    /// the data is kept and retried.
    Transport(String),
    /// The server answered with a code other than 0/200.
    Business { code: i64, message: String },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "transport error: {m}"),
            CallError::Business { code, message } => write!(f, "server error {code}: {message}"),
        }
    }
}

pub(crate) enum Body<'a> {
    None,
    Json(&'a [u8]),
    Gzip(&'a [u8]),
}

pub(crate) struct Api {
    agent: ureq::Agent,
    servers: Vec<String>,
    current: usize,
    pub token: Option<String>,
}

impl Api {
    pub(crate) fn new(
        servers: Vec<String>,
        user_agent: &str,
        tls_roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    ) -> Api {
        let mut builder = ureq::Agent::config_builder();
        if let Some(roots) = tls_roots {
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let agent: ureq::Agent = builder
            .http_status_as_error(false)
            .user_agent(user_agent)
            .accept("application/json")
            .max_redirects(0)
            .build()
            .into();
        Api {
            agent,
            servers,
            current: 0,
            token: None,
        }
    }

    /// The server calls currently go to (for log lines).
    pub(crate) fn server(&self) -> &str {
        &self.servers[self.current]
    }

    /// The configured servers, credentials redacted, for log lines.
    pub(crate) fn servers_for_log(&self) -> String {
        self.servers
            .iter()
            .map(|s| crate::util::url::redact_url(s))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Sends the next calls to the next server of the list (no-op with one server). For
    /// failures that [`Api::call`] does not fail over on itself (HTTP errors, replies that are
    /// not an envelope) when retrying against a deadline.
    pub(crate) fn fail_over(&mut self) {
        let next = (self.current + 1) % self.servers.len().max(1);
        if next != self.current {
            log::debug!(
                "stardust: {} failed; trying {} next",
                crate::util::url::redact_url(&self.servers[self.current]),
                crate::util::url::redact_url(&self.servers[next])
            );
            self.current = next;
        }
    }

    /// One call: tries the current server, then the others on network errors (not on HTTP or
    /// business errors), within `timeout` per attempt and `deadline` overall.
    pub(crate) fn call(
        &mut self,
        post: bool,
        path: &str,
        body: Body<'_>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Value, CallError> {
        let mut last = CallError::Transport("no server configured".into());
        for _ in 0..self.servers.len() {
            let mut t = timeout;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left < MIN_CALL_TIME {
                    return Err(CallError::Transport("out of time".into()));
                }
                t = t.min(left);
            }
            let url = format!("{}{}", self.servers[self.current], path);
            match self.once(post, &url, &body, t) {
                Err(Failure::Network(m)) => {
                    let next = (self.current + 1) % self.servers.len();
                    if next != self.current {
                        log::warn!(
                            "stardust: {} unreachable ({m}); failing over to {}",
                            crate::util::url::redact_url(&self.servers[self.current]),
                            crate::util::url::redact_url(&self.servers[next])
                        );
                    }
                    self.current = next;
                    last = CallError::Transport(m);
                }
                Err(Failure::Other(e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
        Err(last)
    }

    fn once(
        &self,
        post: bool,
        url: &str,
        body: &Body<'_>,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = if post {
            let mut req = self
                .agent
                .post(url)
                .config()
                .timeout_global(Some(timeout))
                .build();
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Body::Gzip(bytes) => req
                    .header("Content-Type", "application/x-gzip")
                    .send(*bytes),
                Body::Json(bytes) => req.header("Content-Type", "application/json").send(*bytes),
                Body::None => req
                    .header("Content-Type", "application/json")
                    .send(&b"{}"[..]),
            }
        } else {
            let mut req = self
                .agent
                .get(url)
                .config()
                .timeout_global(Some(timeout))
                .build();
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        };
        let mut resp = result.map_err(|e| Failure::Network(describe(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec();
        if status >= 400 {
            return Err(Failure::Other(CallError::Transport(format!(
                "HTTP {status}"
            ))));
        }
        let bytes = bytes.map_err(|e| Failure::Other(CallError::Transport(describe(&e))))?;
        parse_envelope(&bytes).map_err(Failure::Other)
    }
}

enum Failure {
    /// Could not talk to the server at all: try the next one.
    Network(String),
    Other(CallError),
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    }
}

/// Gzip for `/Trace/ReportRaw`.
pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::default(),
    );
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// The value under `key`, matching the key ignoring ASCII case.
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// A number field: JSON number or numeric string.
pub(crate) fn get_i64(obj: &Map<String, Value>, key: &str) -> Option<i64> {
    match get_ci(obj, key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A non-empty string field.
pub(crate) fn get_str(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match get_ci(obj, key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Reads `{code, data, message}`: success is code 0 or 200 (or `true`, or no code at all);
/// the data is `data`, or the whole object when there is no `data` key.
pub(crate) fn parse_envelope(bytes: &[u8]) -> Result<Value, CallError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| {
        CallError::Transport(format!(
            "reply is not JSON ({} bytes{})",
            bytes.len(),
            if bytes.starts_with(b"<") {
                ", looks like HTML"
            } else {
                ""
            }
        ))
    })?;
    let Value::Object(obj) = &value else {
        return Err(CallError::Transport("reply is not a JSON object".into()));
    };
    let code = ["code", "errcode", "status"]
        .iter()
        .find_map(|k| get_ci(obj, k))
        .map(|c| match c {
            Value::Number(n) => n.as_i64().unwrap_or(-1),
            Value::Bool(true) => 0,
            Value::Bool(false) => -1,
            Value::String(s) => s.trim().parse().unwrap_or(-1),
            Value::Null => 0,
            _ => -1,
        })
        .unwrap_or(0);
    let data = get_ci(obj, "data");
    if code == 0 || code == 200 {
        return Ok(match data {
            Some(d) => d.clone(),
            None => value.clone(),
        });
    }
    let message = ["message", "msg", "errmsg", "error"]
        .iter()
        .find_map(|k| match get_ci(obj, k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
        .or_else(|| data.map(|d| d.to_string()))
        .unwrap_or_default();
    let message: String = message.chars().take(500).collect();
    Err(CallError::Business { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Value {
        parse_envelope(s.as_bytes()).unwrap()
    }

    #[test]
    fn envelopes_read_like_the_dotnet_client() {
        assert_eq!(data(r#"{"code":0,"data":{"a":1}}"#)["a"], 1);
        assert_eq!(data(r#"{"Code":200,"Data":{"a":2}}"#)["a"], 2);
        assert_eq!(data(r#"{"status":true,"data":3}"#), 3);
        assert_eq!(
            data(r#"{"a":4}"#)["a"],
            4,
            "no data key: the object is the data"
        );
        assert_eq!(data(r#"{"code":"0","data":null}"#), Value::Null);
        match parse_envelope(br#"{"code":401,"msg":"expired"}"#) {
            Err(CallError::Business { code: 401, message }) => assert_eq!(message, "expired"),
            other => panic!("{other:?}"),
        }
        match parse_envelope(br#"{"Code":500,"Message":"boom"}"#) {
            Err(CallError::Business { code: 500, message }) => assert_eq!(message, "boom"),
            other => panic!("{other:?}"),
        }
        match parse_envelope(br#"{"errcode":403,"errmsg":"no"}"#) {
            Err(CallError::Business { code: 403, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse_envelope(b"<html>oops</html>"), Err(CallError::Transport(m)) if m.contains("HTML"))
        );
        assert!(matches!(
            parse_envelope(b"[1,2]"),
            Err(CallError::Transport(_))
        ));
        assert!(matches!(parse_envelope(b""), Err(CallError::Transport(_))));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse_envelope(deep.as_bytes()),
            Err(CallError::Transport(_))
        ));
    }

    #[test]
    fn servers_are_logged_redacted_and_failed_over_in_turn() {
        let mut api = Api::new(
            vec![
                "http://user:pw@a.example:1".into(),
                "http://b.example:2".into(),
            ],
            "test",
            None,
        );
        assert_eq!(
            api.servers_for_log(),
            "http://a.example:1, http://b.example:2"
        );
        assert_eq!(api.server(), "http://user:pw@a.example:1");
        api.fail_over();
        assert_eq!(api.server(), "http://b.example:2");
        api.fail_over();
        assert_eq!(api.server(), "http://user:pw@a.example:1");
        let mut one = Api::new(vec!["http://c.example:3".into()], "test", None);
        one.fail_over();
        assert_eq!(one.server(), "http://c.example:3");
    }

    #[test]
    fn fields_are_read_ignoring_case_and_leniently() {
        let v: Value =
            serde_json::from_str(r#"{"ServerTime":"123","token":"","PERIOD":5.0}"#).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(get_i64(o, "serverTime"), Some(123));
        assert_eq!(get_i64(o, "period"), Some(5));
        assert_eq!(get_str(o, "token"), None);
    }
}
