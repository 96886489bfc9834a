//! HTTP calls to the Stardust server: fail-over across servers, the token header, and the
//! response envelope read the way the .NET client reads it ([docs/stardust-protocol.md §2.4](crate::docs::stardust_protocol)).

use std::io::Write;
use std::time::{Duration, Instant};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

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
    /// business errors), within `timeout` per attempt and `deadline` overall; the reply is read
    /// with [`parse_envelope`].
    pub(crate) fn call(
        &mut self,
        path: &str,
        body: Body<'_>,
        timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<Value, CallError> {
        self.call_with(path, body, timeout, deadline, |b| parse_envelope(&b))
    }

    /// [`call`](Api::call) with the reply's body read by `parse`.
    pub(crate) fn call_with<T>(
        &mut self,
        path: &str,
        body: Body<'_>,
        timeout: Duration,
        deadline: Option<Instant>,
        parse: impl FnOnce(Vec<u8>) -> Result<T, CallError>,
    ) -> Result<T, CallError> {
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
        parse(reply.body)
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
    let value: Value = serde_json::from_slice(bytes).map_err(|_| not_json(bytes))?;
    envelope_data(value)
}

fn not_json(bytes: &[u8]) -> CallError {
    CallError::not_envelope(format!(
        "reply is not JSON ({} bytes{})",
        bytes.len(),
        if bytes.starts_with(b"<") {
            ", looks like HTML"
        } else {
            ""
        }
    ))
}

/// A ping reply (docs/stardust-protocol.md §4.2) read as [`parse_envelope`] reads it, except
/// that its `commands` list never exists as one `Value`: 100,000 small commands fit in the
/// 4 MiB a reply may have and would take some 80 MB as values. The first pass leaves every
/// `commands` member out — of the top-level object and of its `data` member(s), any case — and
/// only counts their elements; the envelope's rules then say which of them is the data's
/// (`data.commands`, or the top-level `commands` of a reply without `data`, the whole object
/// being the data; with repeated keys, the one the envelope and [`get_ci`] would keep), and
/// [`for_each_command`](PingReply::for_each_command) reads that one again, one element at a
/// time. The others are never run.
pub(crate) struct PingReply {
    /// The data without its `commands` member(s) (any case).
    pub data: Value,
    /// Elements of the data's `commands` list (0: none, or not a list).
    pub commands: usize,
    /// Which `commands` member, in the order they appear in the body, is the data's.
    chosen: Option<usize>,
    body: Vec<u8>,
}

pub(crate) fn parse_ping_reply(body: Vec<u8>) -> Result<PingReply, CallError> {
    let mut out = Lean {
        sink: None::<fn(&Value)>,
        want: None,
        seen: 0,
    };
    let mut value = read_lean(&body, &mut out).map_err(|_| not_json(&body))?;
    // The member the data would hold, as a placeholder `[n, elements]`; then every
    // placeholder goes.
    let chosen = match data_of(&value) {
        Value::Object(data) => match get_ci(data, "commands") {
            Some(Value::Array(p)) => match p[..] {
                [Value::Number(ref n), Value::Number(ref count)] => n
                    .as_u64()
                    .zip(count.as_u64())
                    .map(|(n, count)| (n as usize, count as usize)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    if let Value::Object(top) = &mut value {
        top.retain(|k, _| !is_commands(k));
        for (_, v) in top.iter_mut().filter(|(k, _)| is_data(k)) {
            if let Value::Object(data) = v {
                data.retain(|k, _| !is_commands(k));
            }
        }
    }
    Ok(PingReply {
        data: envelope_data(value)?,
        commands: chosen.map_or(0, |(_, count)| count),
        chosen: chosen.map(|(n, _)| n),
        body,
    })
}

impl PingReply {
    /// Calls `f` with each element of the data's `commands` list, in order.
    pub(crate) fn for_each_command(&self, f: impl FnMut(&Value)) {
        if self.chosen.is_none() {
            return;
        }
        let mut out = Lean {
            sink: Some(f),
            want: self.chosen,
            seen: 0,
        };
        // The body read without error the first time.
        let _ = read_lean(&self.body, &mut out);
    }
}

fn is_data(key: &str) -> bool {
    key.eq_ignore_ascii_case("data")
}

fn is_commands(key: &str) -> bool {
    key.eq_ignore_ascii_case("commands")
}

/// Where the elements of the `commands` member number `want` go.
struct Lean<F> {
    sink: Option<F>,
    want: Option<usize>,
    /// `commands` members met so far.
    seen: usize,
}

fn read_lean<F: FnMut(&Value)>(body: &[u8], out: &mut Lean<F>) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = LeanValue { depth: 0, out }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A JSON value read as `Value`, except that in the top-level object and in its `data`
/// objects (`depth` 0 and 1; keys ignoring case) a `commands` member is replaced by the
/// placeholder `[n, elements]`: it is the `n`th such member of the body (from 0), and its
/// list had `elements` elements (`null` when it is not a list), which went to [`Lean::sink`]
/// when `n` is [`Lean::want`]. Every other member and element is read by `Value`'s own
/// `Deserialize`; only the top level and `data` are built here.
struct LeanValue<'a, F> {
    depth: u8,
    out: &'a mut Lean<F>,
}

impl<'de, F: FnMut(&Value)> DeserializeSeed<'de> for LeanValue<'_, F> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(&Value)> Visitor<'de> for LeanValue<'_, F> {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(e) = seq.next_element()? {
            v.push(e);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = if self.depth == 0 && is_data(&key) {
                map.next_value_seed(LeanValue {
                    depth: 1,
                    out: &mut *self.out,
                })?
            } else if is_commands(&key) {
                let n = self.out.seen;
                self.out.seen += 1;
                let count = map.next_value_seed(Commands {
                    out: &mut *self.out,
                    n,
                })?;
                Value::Array(vec![n.into(), count.map_or(Value::Null, Value::from)])
            } else {
                map.next_value()?
            };
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

/// The `commands` member number `n`: a list's elements counted, and, when it is the one
/// wanted, handed to the sink one at a time; anything else skipped (`None`: not a list).
struct Commands<'a, F> {
    out: &'a mut Lean<F>,
    n: usize,
}

impl<'de, F: FnMut(&Value)> DeserializeSeed<'de> for Commands<'_, F> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(&Value)> Visitor<'de> for Commands<'_, F> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<usize>, A::Error> {
        let mut count = 0;
        match &mut self.out.sink {
            Some(sink) if self.out.want == Some(self.n) => {
                while let Some(e) = seq.next_element::<Value>()? {
                    count += 1;
                    sink(&e);
                }
            }
            _ => {
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
            }
        }
        Ok(Some(count))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<usize>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<usize>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<usize>, E> {
        Ok(None)
    }
}

/// The key of an envelope's data member: `data`, else the first key that is `data` ignoring
/// case; `None` when there is none (the whole object is the data).
fn data_key(obj: &Map<String, Value>) -> Option<&String> {
    obj.get_key_value("data")
        .map(|(k, _)| k)
        .or_else(|| obj.keys().find(|k| is_data(k)))
}

/// What [`envelope_data`] gives as the data of `value`, when it succeeds.
fn data_of(value: &Value) -> &Value {
    match value {
        Value::Object(obj) => data_key(obj).map_or(value, |k| &obj[k]),
        _ => value,
    }
}

/// The data of an envelope (see [`parse_envelope`]).
fn envelope_data(value: Value) -> Result<Value, CallError> {
    let Value::Object(mut obj) = value else {
        return Err(CallError::not_envelope("reply is not a JSON object"));
    };
    let code = ["code", "errcode", "status"]
        .iter()
        .find_map(|k| get_ci(&obj, k))
        .map(|c| match c {
            Value::Number(n) => n.as_i64().unwrap_or(-1),
            Value::Bool(true) => 0,
            Value::Bool(false) => -1,
            Value::String(s) => s.trim().parse().unwrap_or(-1),
            Value::Null => 0,
            _ => -1,
        })
        .unwrap_or(0);
    if code == 0 || code == 200 {
        // Taken out, not copied: a reply may be megabytes of values.
        let key = data_key(&obj).cloned();
        return Ok(match key.and_then(|k| obj.remove(&k)) {
            Some(d) => d,
            None => Value::Object(obj),
        });
    }
    let data = get_ci(&obj, "data");
    let message = ["message", "msg", "errmsg", "error"]
        .iter()
        .find_map(|k| match get_ci(&obj, k) {
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

    #[test]
    fn a_ping_reply_is_read_with_its_commands_one_at_a_time() {
        let body = br#"{"code":0,"Data":{"period":5,"Commands":[{"id":1},{"id":2,"x":[1,{"y":null}]}],"token":"t"}}"#;
        let reply = parse_ping_reply(body.to_vec()).unwrap();
        assert_eq!(reply.data, serde_json::json!({"period": 5, "token": "t"}));
        assert_eq!(reply.commands, 2);
        let mut seen = Vec::new();
        reply.for_each_command(|c| seen.push(c.clone()));
        assert_eq!(
            seen,
            [
                serde_json::json!({"id": 1}),
                serde_json::json!({"id": 2, "x": [1, {"y": null}]})
            ]
        );
        // Read as the envelope is read: errors, no data member, a list that is not one.
        let err = |b: &str| {
            parse_ping_reply(b.as_bytes().to_vec())
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            err(r#"{"code":401,"data":{"commands":[{"id":1}]},"message":"m"}"#).as_deref(),
            Some("server error 401: m")
        );
        assert!(err("<html>").unwrap().contains("looks like HTML"));
        assert!(err(r#"{"code":0,"data":{"commands":[1,]}}"#).is_some());
        let odd = parse_ping_reply(br#"{"code":0,"data":{"commands":{"id":3},"n":1.5}}"#.to_vec());
        let odd = odd.unwrap();
        assert_eq!(
            (odd.commands, &odd.data),
            (0, &serde_json::json!({"n": 1.5}))
        );
    }

    /// The ids of the commands a ping reply gives, and its data.
    fn ping_commands(body: &str) -> (Vec<i64>, Value) {
        let reply = parse_ping_reply(body.as_bytes().to_vec()).unwrap();
        let mut ids = Vec::new();
        reply.for_each_command(|c| ids.push(c["id"].as_i64().unwrap()));
        assert_eq!(ids.len(), reply.commands);
        (ids, reply.data)
    }

    /// Only the list the data holds is given, as [`parse_envelope`] and `get_ci` pick the
    /// data and its `commands`: the top-level list of a reply without `data` (also read one
    /// at a time), never the top-level list beside a `data`, never a repeated key's list that
    /// the data does not keep.
    #[test]
    fn a_ping_reply_gives_the_commands_of_its_data_only() {
        let cases: [(&str, &[i64], Value); 7] = [
            (
                r#"{"code":0,"period":5,"commands":[{"id":3},{"id":4}]}"#,
                &[3, 4],
                serde_json::json!({"code": 0, "period": 5}),
            ),
            (
                r#"{"code":0,"commands":[{"id":9}],"data":{"period":5}}"#,
                &[],
                serde_json::json!({"period": 5}),
            ),
            (
                r#"{"code":0,"data":{"commands":[{"id":1}]},"Data":{"commands":[{"id":2}]}}"#,
                &[1],
                serde_json::json!({}),
            ),
            (
                r#"{"code":0,"Data":{"commands":[{"id":1}]},"data":{"commands":[{"id":2}]}}"#,
                &[2],
                serde_json::json!({}),
            ),
            (
                r#"{"code":0,"data":{"commands":[{"id":1}]},"data":{"commands":[{"id":2}],"n":1}}"#,
                &[2],
                serde_json::json!({"n": 1}),
            ),
            (
                r#"{"code":0,"data":{"Commands":[{"id":1}],"commands":[{"id":2}]}}"#,
                &[2],
                serde_json::json!({}),
            ),
            (
                r#"{"code":0,"data":{"commands":[{"id":1}],"commands":null}}"#,
                &[],
                serde_json::json!({}),
            ),
        ];
        for (body, ids, data) in cases {
            assert_eq!(ping_commands(body), (ids.to_vec(), data), "{body}");
        }
        // An error names the data without its commands, as before.
        match parse_ping_reply(br#"{"code":500,"data":{"commands":[{"id":1}],"x":1}}"#.to_vec()) {
            Err(CallError::Business { code: 500, message }) => assert_eq!(message, r#"{"x":1}"#),
            other => panic!("{:?}", other.err()),
        }
    }
}
