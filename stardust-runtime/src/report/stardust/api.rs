//! HTTP calls to the Stardust server: fail-over across servers, the token header, and the
//! response envelope read the way the .NET client reads it ([docs/stardust-protocol.md §2.4](crate::docs::stardust_protocol)).

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::report::failover::{FailoverClient, HttpError, Request};
use crate::util::json::get_ci;

pub(crate) use crate::report::failover::MIN_CALL_TIME;

/// Why a call did not succeed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The data is kept and retried: the server could not be reached or answered HTTP ≥ 400,
    /// or the reply is not a JSON envelope (see [`Transport`]).
    Transport(Transport),
    /// The server answered with a code other than 0/200.
    Business { code: i64, message: String },
}

/// The kinds of [`CallError::Transport`].
#[derive(Debug)]
pub(crate) enum Transport {
    /// No reply, or an HTTP error status.
    Http(HttpError),
    /// A reply that is not a Stardust envelope (HTML, not JSON, not an object).
    NotEnvelope(String),
    /// A new login (after a 401) failed.
    LoginFailed(Box<CallError>),
    /// A login reply whose token could not be sent back (see [`unusable_token`]): why.
    BadToken(String),
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Http(e) => write!(f, "{e}"),
            Transport::NotEnvelope(m) => f.write_str(m),
            Transport::LoginFailed(e) => write!(f, "login again failed: {e}"),
            Transport::BadToken(why) => write!(f, "the login reply's token is unusable ({why})"),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "transport error: {m}"),
            CallError::Business { code, message } => write!(f, "server error {code}: {message}"),
        }
    }
}

impl CallError {
    fn not_envelope(m: impl Into<String>) -> CallError {
        CallError::Transport(Transport::NotEnvelope(m.into()))
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Body<'a> {
    None,
    Json(&'a [u8]),
    Gzip(&'a [u8]),
}

/// The Stardust server's API over the reporters' [`FailoverClient`], with the token.
pub(crate) struct Api {
    client: FailoverClient,
    pub token: Option<String>,
}

impl Api {
    pub(crate) fn new(
        servers: Vec<String>,
        user_agent: &str,
        tls_roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    ) -> Api {
        Api {
            client: FailoverClient::new(servers, "Stardust server", user_agent, tls_roots),
            token: None,
        }
    }

    /// The server calls currently go to, credentials redacted (for log lines).
    pub(crate) fn server(&self) -> std::borrow::Cow<'_, str> {
        self.client.server()
    }

    /// The configured servers, credentials redacted, for log lines.
    pub(crate) fn servers_for_log(&self) -> String {
        self.client.servers_for_log()
    }

    /// Sends the next calls to the next server (see [`FailoverClient::fail_over`]).
    pub(crate) fn fail_over(&mut self) {
        self.client.fail_over();
    }

    /// One call: tries the current server, then the others on network errors (not on HTTP or
    /// business errors), within `timeout` per attempt and `deadline` overall.
    pub(crate) fn call(
        &mut self,
        path: &str,
        body: Body<'_>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Value, CallError> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let body = match body {
            Body::Gzip(bytes) => Some((bytes, "application/x-gzip")),
            Body::Json(bytes) => Some((bytes, "application/json")),
            Body::None => None,
        };
        let reply = self
            .client
            .send(&Request {
                body,
                path,
                authorization: auth.as_deref(),
                timeout,
                deadline,
            })
            .map_err(|e| CallError::Transport(Transport::Http(e)))?;
        if reply.status >= 400 {
            return Err(CallError::Transport(Transport::Http(HttpError::Status(
                reply.status,
            ))));
        }
        parse_envelope(&reply.body)
    }
}

/// Longest token taken from a reply. The server's JWTs are a few hundred bytes (the app name,
/// the client id, two times, a signature); servers and proxies commonly refuse request headers
/// of 8 KiB and more in all.
pub(crate) const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token from a reply cannot go back in `Authorization: Bearer <token>`, if it cannot:
/// longer than [`MAX_TOKEN_BYTES`], or a byte outside visible ASCII (a CR or LF would end the
/// header, ureq refuses to send it). The reason never quotes the token.
pub(crate) fn unusable_token(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Some(format!(
            "{} bytes, more than {MAX_TOKEN_BYTES}",
            token.len()
        ));
    }
    if let Some(at) = token.bytes().position(|b| !b.is_ascii_graphic()) {
        return Some(format!(
            "byte {at} of {} is not visible ASCII; a header cannot carry it",
            token.len()
        ));
    }
    None
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

/// Reads `{code, data, message}`: success is code 0 or 200 (or `true`, or no code at all);
/// the data is `data`, or the whole object when there is no `data` key.
pub(crate) fn parse_envelope(bytes: &[u8]) -> Result<Value, CallError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| {
        CallError::not_envelope(format!(
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
        return Err(CallError::not_envelope("reply is not a JSON object"));
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
    use crate::util::json::{get_i64, get_str};

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
            matches!(parse_envelope(b"<html>oops</html>"), Err(CallError::Transport(m)) if m.to_string().contains("HTML"))
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
    fn tokens_that_a_header_cannot_carry_are_named_without_quoting_them() {
        assert_eq!(
            unusable_token("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJBIn0.c2ln"),
            None
        );
        assert_eq!(unusable_token(&"a".repeat(MAX_TOKEN_BYTES)), None);
        for bad in [
            "abc\r\nX-Evil: 1".to_owned(),
            "abc def".to_owned(),
            "abc\u{7f}".to_owned(),
            "jeton-é".to_owned(),
            "a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            let why = unusable_token(&bad).expect("refused");
            assert!(!why.contains("abc") && !why.contains("aaaa"), "{why}");
        }
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
