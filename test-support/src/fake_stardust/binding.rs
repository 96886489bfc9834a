//! Model binding of `/App/*` bodies as the real server does it: ASP.NET Core `[ApiController]`
//! with System.Text.Json on the Web defaults plus NewLife's converters
//! (stardust-runtime/docs/stardust-protocol.md §6.1, §6.4), the .NET `System.Version` parser
//! (stardust-runtime/docs/stardust-protocol.md §6.6) and the DateTime text the ping reply uses for command times (stardust-runtime/docs/stardust-protocol.md §9.2).

use std::str::FromStr;

use serde_json::{Map, Value};

use super::Endpoint;
use super::handlers::is_json_media_type;

/// .NET type of a bound member (stardust-runtime/docs/stardust-protocol.md §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    /// `SafeInt64Converter`: a JSON integer, or a string `Int64.Parse` reads.
    I64,
    /// STJ Int32 with AllowReadingFromString.
    I32,
    /// STJ Double with AllowReadingFromString (no named literals).
    F64,
    /// An enum without a string converter: a JSON integer only.
    Enum,
    /// `LocalTimeConverter`: integer, any string, or null; never bool/object/array.
    DateTime,
    /// `String?`: a string or null.
    Str,
}

use Ty::*;

/// `AppModel` (+ `LoginRequest`), stardust-runtime/docs/stardust-protocol.md §3.1, §4.1.
pub(crate) const LOGIN: &[(&str, Ty)] = &[
    ("Code", Str),
    ("Secret", Str),
    ("ClientId", Str),
    ("Version", Str),
    ("Compile", I64),
    ("IP", Str),
    ("Macs", Str),
    ("UUID", Str),
    ("Time", I64),
    ("AppId", Str),
    ("AppName", Str),
    ("NodeCode", Str),
    ("Project", Str),
];

/// `AppInfo`, the ping body (stardust-runtime/docs/stardust-protocol.md §6.2, stardust-runtime/docs/stardust-protocol.md §4.1, §4.4).
pub(crate) const APP_INFO: &[(&str, Ty)] = &[
    ("Id", I32),
    ("Name", Str),
    ("Version", Str),
    ("AppName", Str),
    ("CommandLine", Str),
    ("UserName", Str),
    ("MachineName", Str),
    ("IP", Str),
    ("StartTime", DateTime),
    ("ProcessorTime", I64),
    ("CpuUsage", F64),
    ("WorkingSet", I64),
    ("HeapSize", I64),
    ("Threads", I32),
    ("WorkerThreads", I32),
    ("IOThreads", I32),
    ("AvailableThreads", I32),
    ("PendingItems", I64),
    ("CompletedItems", I64),
    ("Handles", I32),
    ("Connections", I32),
    ("Listens", Str),
    ("GCCount", I32),
    ("Time", I64),
];

/// `EventModel` (stardust-runtime/docs/stardust-protocol.md §10.1).
pub(crate) const EVENT: &[(&str, Ty)] =
    &[("Time", I64), ("Type", Str), ("Name", Str), ("Remark", Str)];

/// `CommandReplyModel` (stardust-runtime/docs/stardust-protocol.md §9.5).
pub(crate) const REPLY: &[(&str, Ty)] = &[("Id", I64), ("Status", Enum), ("Data", Str)];

/// Why a body did not bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BindError {
    /// HTTP 415: the Content-Type is not JSON.
    MediaType(String),
    /// HTTP 400 ValidationProblemDetails: (JSON path, message), first error first.
    Invalid(Vec<(String, String)>),
}

impl BindError {
    pub fn describe(&self) -> String {
        match self {
            BindError::MediaType(ct) => format!("HTTP 415: Content-Type {ct}"),
            BindError::Invalid(errs) => {
                let e: Vec<String> = errs.iter().map(|(p, m)| format!("{p}: {m}")).collect();
                format!("HTTP 400: {}", e.join("; "))
            }
        }
    }
}

fn type_name(t: Ty) -> &'static str {
    match t {
        I64 => "System.Int64",
        I32 => "System.Int32",
        F64 => "System.Double",
        Enum => "NewLife.Remoting.Models.CommandStatus",
        DateTime => "System.DateTime",
        Str => "System.String",
    }
}

fn conv_error(t: &str, path: &str) -> String {
    format!(
        "The JSON value could not be converted to {t}. Path: {path} | LineNumber: 0 | BytePositionInLine: 0."
    )
}

/// White space of .NET number parsing (`NumberStyles.AllowLeadingWhite`/`AllowTrailingWhite`).
fn dotnet_ws(c: char) -> bool {
    matches!(c, '\u{9}'..='\u{d}' | ' ')
}

/// `Int64.Parse`/`Int32.Parse` with `NumberStyles.Integer`: white space around, one sign, digits.
/// `Err(true)` = overflow, `Err(false)` = format error.
pub(crate) fn parse_dotnet_integer(s: &str, min: i64, max: i64) -> Result<i64, bool> {
    let t = s.trim_matches(dotnet_ws);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(false);
    }
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v * 10 + (b - b'0') as i128;
        if v > i128::from(i64::MAX) + 1 {
            return Err(true);
        }
    }
    let v = if neg { -v } else { v };
    if v < i128::from(min) || v > i128::from(max) {
        return Err(true);
    }
    Ok(v as i64)
}

/// A number read from a string under `AllowReadingFromString`: the whole string must be the
/// number, no white space.
fn stj_int_string(s: &str, min: i64, max: i64) -> Option<i64> {
    if s.starts_with(dotnet_ws) || s.ends_with(dotnet_ws) {
        return None;
    }
    parse_dotnet_integer(s, min, max).ok()
}

fn stj_double_string(s: &str) -> Option<f64> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    if s.is_empty() || !ok_chars {
        return None; // rejects "NaN", "Infinity", white space
    }
    f64::from_str(s).ok().filter(|f| f.is_finite())
}

/// Binds one member value; returns the normalized value or the error message.
fn bind_value(t: Ty, v: &Value, path: &str) -> Result<Value, String> {
    let err = || conv_error(type_name(t), path);
    match t {
        I64 | I32 | Enum => {
            let (min, max) = match t {
                I64 => (i64::MIN, i64::MAX),
                _ => (i32::MIN as i64, i32::MAX as i64),
            };
            match v {
                Value::Number(n) => match n.as_i64() {
                    Some(i) if (min..=max).contains(&i) => Ok(Value::from(i)),
                    _ => Err(err()),
                },
                Value::String(s) if t == I64 => parse_dotnet_integer(s, min, max)
                    .map(Value::from)
                    .map_err(|_| err()),
                Value::String(s) if t == I32 => {
                    stj_int_string(s, min, max).map(Value::from).ok_or_else(err)
                }
                _ => Err(err()),
            }
        }
        F64 => match v {
            Value::Number(n) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(|_| v.clone())
                .ok_or_else(err),
            Value::String(s) => stj_double_string(s)
                .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                .ok_or_else(err),
            _ => Err(err()),
        },
        DateTime => match v {
            Value::Null | Value::String(_) => Ok(v.clone()),
            Value::Number(n) if n.is_i64() => Ok(v.clone()),
            _ => Err(err()),
        },
        Str => match v {
            Value::Null | Value::String(_) => Ok(v.clone()),
            _ => Err(err()),
        },
    }
}

/// Binds an object against a schema: names ignore case, unknown members are ignored, absent
/// members are absent from the result (the model keeps its default). Keys of the result are
/// the schema's names.
fn bind_object(
    obj: &Map<String, Value>,
    schema: &[(&str, Ty)],
    prefix: &str,
    errs: &mut Vec<(String, String)>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in obj {
        let Some((name, t)) = schema.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)) else {
            continue;
        };
        let path = format!("{prefix}.{k}");
        match bind_value(*t, v, &path) {
            Ok(v) => {
                out.insert(name.to_string(), v);
            }
            Err(m) => errs.push((path, m)),
        }
    }
    out
}

/// Members of a body model: (name, .NET type).
type Schema = &'static [(&'static str, Ty)];

/// The schema of an endpoint's body, whether the body is an array of it, and the model name.
fn schema_of(ep: Endpoint) -> Option<(Schema, bool, &'static str)> {
    Some(match ep {
        Endpoint::Login => (LOGIN, false, "Stardust.Models.AppModel"),
        Endpoint::Ping => (APP_INFO, false, "Stardust.Models.AppInfo"),
        Endpoint::PostEvents => (EVENT, true, "NewLife.Remoting.Models.EventModel[]"),
        Endpoint::CommandReply => (REPLY, false, "NewLife.Remoting.Models.CommandReplyModel"),
        _ => return None,
    })
}

/// Binds the body of an `/App/*` endpoint with a `[FromBody]` model. `None` for endpoints
/// without one. The result is an object (or, for PostEvents, an array whose elements are
/// objects or `null`) with the schema's member names.
pub(crate) fn bind_request(
    ep: Endpoint,
    content_type: Option<&str>,
    body: &[u8],
) -> Option<Result<Value, BindError>> {
    let (schema, is_array, model_name) = schema_of(ep)?;
    Some(bind_body(schema, is_array, model_name, content_type, body))
}

fn bind_body(
    schema: &[(&str, Ty)],
    is_array: bool,
    model_name: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Value, BindError> {
    match content_type {
        Some(ct) if !is_json_media_type(Some(ct)) => {
            return Err(BindError::MediaType(format!("{ct:?}")));
        }
        None if !body.is_empty() => return Err(BindError::MediaType("(none)".into())),
        _ => {}
    }
    let required = || {
        BindError::Invalid(vec![(
            String::new(),
            "A non-empty request body is required.".into(),
        )])
    };
    if body.is_empty() {
        return Err(required());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        BindError::Invalid(vec![(
            "$".into(),
            format!("The input is not valid JSON ({e}). Path: $ | LineNumber: 0 | BytePositionInLine: 0."),
        )])
    })?;
    let mut errs = Vec::new();
    let out = match (&v, is_array) {
        (Value::Null, _) => return Err(required()),
        (Value::Object(o), false) => Value::Object(bind_object(o, schema, "$", &mut errs)),
        (Value::Array(a), true) => {
            let mut items = Vec::with_capacity(a.len());
            for (i, e) in a.iter().enumerate() {
                let prefix = format!("$[{i}]");
                match e {
                    Value::Null => items.push(Value::Null),
                    Value::Object(o) => {
                        items.push(Value::Object(bind_object(o, schema, &prefix, &mut errs)))
                    }
                    _ => errs.push((prefix.clone(), conv_error(model_name, &prefix))),
                }
            }
            Value::Array(items)
        }
        _ => {
            return Err(BindError::Invalid(vec![(
                "$".into(),
                conv_error(model_name, "$"),
            )]));
        }
    };
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(BindError::Invalid(errs))
    }
}

/// Binds an `AppInfo` object (e.g. a report's `Info`); errors as in [`bind_request`].
pub(crate) fn bind_app_info(v: &Value, path: &str) -> Result<Map<String, Value>, String> {
    let Value::Object(o) = v else {
        return Err(conv_error("Stardust.Models.AppInfo", path));
    };
    let mut errs = Vec::new();
    let m = bind_object(o, APP_INFO, path, &mut errs);
    match errs.into_iter().next() {
        None => Ok(m),
        Some((_, e)) => Err(e),
    }
}

// ---- System.Version -----------------------------------------------------------------------

/// `System.Version.Parse` (stardust-runtime/docs/stardust-protocol.md §6.6): 2–4 parts separated by `.`, each parsed by `Int32.Parse`
/// with `NumberStyles.Integer` and required to be ≥ 0. Returns the parts (missing = −1, so that
/// comparing arrays ranks `1.2` below `1.2.0`) or the .NET exception's message.
pub(crate) fn parse_dotnet_version(s: &str) -> Result<[i64; 4], String> {
    let parts: Vec<&str> = s.split('.').collect();
    if !(2..=4).contains(&parts.len()) {
        return Err("Version string portion was too short or too long. (Parameter 'input')".into());
    }
    const NAMES: [&str; 4] = ["major", "minor", "build", "revision"];
    let mut out = [-1i64; 4];
    for (i, p) in parts.iter().enumerate() {
        let v = match parse_dotnet_integer(p, i32::MIN as i64, i32::MAX as i64) {
            Ok(v) => v,
            Err(true) => return Err("Value was either too large or too small for an Int32.".into()),
            Err(false) => {
                return Err(format!(
                    "The input string '{p}' was not in a correct format."
                ));
            }
        };
        if v < 0 {
            let n = NAMES[i];
            return Err(format!(
                "{n} ('{v}') must be a non-negative value. (Parameter '{n}')\nActual value was {v}."
            ));
        }
        out[i] = v;
    }
    Ok(out)
}

// ---- DateTime text -------------------------------------------------------------------------

/// (year, month, day, hour, minute, second, millisecond) of a Unix ms time (proleptic Gregorian).
pub(crate) fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let secs = rem / 1000;
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
        (rem % 1000) as u32,
    )
}

/// Year of a Unix ms time.
pub(crate) fn year_of(ms: i64) -> i64 {
    civil(ms).0
}

/// A command time as the ping reply writes it (stardust-runtime/docs/stardust-protocol.md §9.2–§9.3): unset (`None` or ≤ 0) →
/// `0001-01-01 00:00:00`; UTC → ISO "O" with `Z`; otherwise server-local wall time
/// `yyyy-MM-dd HH:mm:ss` (server zone = UTC + `tz_offset_min`).
pub(crate) fn command_time_text(ms: Option<i64>, utc: bool, tz_offset_min: i32) -> String {
    let Some(ms) = ms.filter(|m| *m > 0) else {
        return "0001-01-01 00:00:00".into();
    };
    if utc {
        let (y, mo, d, h, mi, s, f) = civil(ms);
        format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:07}Z",
            u64::from(f) * 10_000
        )
    } else {
        let (y, mo, d, h, mi, s, _) = civil(ms + i64::from(tz_offset_min) * 60_000);
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_like_dotnet() {
        for ok in [
            "1.0",
            "0.3.1",
            "3.10.2026.0801",
            "1.1.2.01702",
            " 1.+2",
            "1.-0",
        ] {
            assert!(parse_dotnet_version(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1",
            "1.2.3.4.5",
            "v1.2.3",
            "V1.2",
            "1.2.3-beta.1",
            "1.2.3+g1a2b",
            "1..2",
            "1.2.",
            "1.-2",
            "1.2.3.2150000000",
            "",
        ] {
            assert!(parse_dotnet_version(bad).is_err(), "{bad}");
        }
        assert!(parse_dotnet_version("1.2").unwrap() < parse_dotnet_version("1.2.0").unwrap());
        assert!(parse_dotnet_version("1.10").unwrap() > parse_dotnet_version("1.9.9").unwrap());
    }

    #[test]
    fn times() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0, 0));
        // 2026-08-02T10:05:00.123Z
        let t = 1_785_665_100_123;
        assert_eq!(
            command_time_text(Some(t), true, 0),
            "2026-08-02T10:05:00.1230000Z"
        );
        assert_eq!(
            command_time_text(Some(t), false, 480),
            "2026-08-02 18:05:00"
        );
        assert_eq!(command_time_text(None, true, 0), "0001-01-01 00:00:00");
    }

    #[test]
    fn value_binding() {
        let p = "$.x";
        assert!(bind_value(I64, &Value::Null, p).is_err());
        assert!(bind_value(I64, &serde_json::json!(5.0), p).is_err());
        assert!(bind_value(I64, &serde_json::json!(1e3), p).is_err());
        assert!(bind_value(I64, &serde_json::json!(true), p).is_err());
        assert_eq!(
            bind_value(I64, &serde_json::json!(" 42 "), p),
            Ok(42.into())
        );
        assert!(bind_value(I64, &serde_json::json!("4.2"), p).is_err());
        assert!(bind_value(I32, &serde_json::json!(2_147_483_648i64), p).is_err());
        assert!(bind_value(I32, &serde_json::json!(" 4"), p).is_err());
        assert!(bind_value(F64, &serde_json::json!("NaN"), p).is_err());
        assert!(bind_value(F64, &serde_json::json!("0.5"), p).is_ok());
        assert!(bind_value(Enum, &serde_json::json!("Done"), p).is_err());
        assert!(bind_value(DateTime, &Value::Null, p).is_ok());
        assert!(bind_value(DateTime, &serde_json::json!(false), p).is_err());
        assert!(bind_value(Str, &serde_json::json!(1), p).is_err());
    }
}
