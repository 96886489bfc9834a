//! Binding a `TraceModel` JSON like the server does (stardust-runtime/docs/stardust-protocol.md §6.2–§6.3), normalized to PascalCase.

use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// System.Text.Json (`/Trace/Report`): null in an int field, wrong types → bind failure.
    Strict,
    /// NewLife FastJson (`/Trace/ReportRaw`): nulls become defaults, loose conversion.
    Lenient,
}

/// Case-insensitive member lookup.
pub(crate) fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Case-insensitive string member ("" and non-strings → None).
pub(crate) fn str_ci(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match get_ci(obj, key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_field(
    obj: &Map<String, Value>,
    key: &str,
    min: i64,
    max: i64,
    mode: Binding,
    default: i64,
) -> Result<i64, String> {
    let strict = mode == Binding::Strict;
    let v = match get_ci(obj, key) {
        None => return Ok(default),
        Some(v) => v,
    };
    let n = match v {
        Value::Null if strict => return Err(format!("null in int field {key}")),
        Value::Null => default,
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None if strict => return Err(format!("{key}: {n} is not an integer")),
            None => n.as_f64().unwrap_or(0.0) as i64,
        },
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => i,
            Err(_) if strict => return Err(format!("{key}: {s:?} is not a number")),
            Err(_) => default,
        },
        Value::Bool(b) if !strict => *b as i64,
        _ if strict => return Err(format!("{key}: wrong JSON type")),
        _ => default,
    };
    if n < min || n > max {
        if strict {
            return Err(format!("{key}: {n} out of range"));
        }
        return Ok(n.clamp(min, max));
    }
    Ok(n)
}

fn string_field(obj: &Map<String, Value>, key: &str, mode: Binding) -> Result<Value, String> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(_) if mode == Binding::Strict => Err(format!("{key}: not a string")),
        Some(Value::Number(n)) => Ok(Value::String(n.to_string())),
        Some(Value::Bool(b)) => Ok(Value::String(b.to_string())),
        Some(_) => Ok(Value::Null),
    }
}

const I32: (i64, i64) = (i32::MIN as i64, i32::MAX as i64);
const I64: (i64, i64) = (i64::MIN, i64::MAX);

fn parse_span(v: &Value, mode: Binding) -> Result<Option<Value>, String> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => return Ok(None),
        _ if mode == Binding::Strict => return Err("span is not an object".into()),
        _ => return Ok(None),
    };
    Ok(Some(json!({
        "Id": string_field(obj, "Id", mode)?,
        "ParentId": string_field(obj, "ParentId", mode)?,
        "TraceId": string_field(obj, "TraceId", mode)?,
        "StartTime": int_field(obj, "StartTime", I64.0, I64.1, mode, 0)?,
        "EndTime": int_field(obj, "EndTime", I64.0, I64.1, mode, 0)?,
        "Value": int_field(obj, "Value", I64.0, I64.1, mode, 0)?,
        "Tag": string_field(obj, "Tag", mode)?,
        "TraceFlag": int_field(obj, "TraceFlag", 0, 255, mode, 0)?,
        "Error": string_field(obj, "Error", mode)?,
    })))
}

fn parse_spans(obj: &Map<String, Value>, key: &str, mode: Binding) -> Result<Value, String> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for s in a {
                if let Some(s) = parse_span(s, mode)? {
                    out.push(s);
                }
            }
            Ok(Value::Array(out))
        }
        Some(_) if mode == Binding::Strict => Err(format!("{key}: not an array")),
        Some(_) => Ok(Value::Null),
    }
}

fn parse_builder(v: &Value, mode: Binding) -> Result<Option<Value>, String> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => return Ok(None),
        _ if mode == Binding::Strict => return Err("builder is not an object".into()),
        _ => return Ok(None),
    };
    Ok(Some(json!({
        "Name": string_field(obj, "Name", mode)?,
        "StartTime": int_field(obj, "StartTime", I64.0, I64.1, mode, 0)?,
        "EndTime": int_field(obj, "EndTime", I64.0, I64.1, mode, 0)?,
        "Total": int_field(obj, "Total", I32.0, I32.1, mode, 0)?,
        "Errors": int_field(obj, "Errors", I32.0, I32.1, mode, 0)?,
        "Cost": int_field(obj, "Cost", I64.0, I64.1, mode, 0)?,
        "MaxCost": int_field(obj, "MaxCost", I32.0, I32.1, mode, 0)?,
        "MinCost": int_field(obj, "MinCost", I32.0, I32.1, mode, 0)?,
        "Value": int_field(obj, "Value", I64.0, I64.1, mode, 0)?,
        "Samples": parse_spans(obj, "Samples", mode)?,
        "ErrorSamples": parse_spans(obj, "ErrorSamples", mode)?,
    })))
}

/// A bound TraceModel: PascalCase keys, numbers normalized; `Info` copied verbatim.
/// Null builder entries are left out.
pub(crate) fn bind_trace_model(v: &Value, mode: Binding) -> Result<Value, String> {
    let obj = v.as_object().ok_or("TraceModel is not a JSON object")?;
    let builders = match get_ci(obj, "Builders") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for b in a {
                if let Some(b) = parse_builder(b, mode)? {
                    out.push(b);
                }
            }
            out
        }
        Some(_) if mode == Binding::Strict => return Err("Builders: not an array".into()),
        Some(_) => Vec::new(),
    };
    let info = get_ci(obj, "Info").cloned().unwrap_or(Value::Null);
    if mode == Binding::Strict && !info.is_null() {
        super::binding::bind_app_info(&info, "$.Info")?;
    }
    Ok(json!({
        "AppId": string_field(obj, "AppId", mode)?,
        "AppName": string_field(obj, "AppName", mode)?,
        "ClientId": string_field(obj, "ClientId", mode)?,
        "Version": string_field(obj, "Version", mode)?,
        "Info": info,
        "Builders": builders,
    }))
}

/// Unix time → ms like NewLife `ToDateTime`: an int64 above 3,153,600,000 is ms, else seconds
/// (stardust-runtime/docs/stardust-protocol.md §6.7).
pub(crate) fn unix_to_ms(t: i64) -> i64 {
    if t > 3_153_600_000 {
        t
    } else {
        t.saturating_mul(1000)
    }
}

/// Length in UTF-16 code units (what .NET `string.Length` counts).
pub(crate) fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Whole-name wildcard match (`*`, `?`), ignoring case.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

pub(crate) const DAY_MS: i64 = 86_400_000;

/// Server-side per-builder filter (stardust-runtime/docs/stardust-protocol.md §7.8): returns the drop reason, if any.
pub(crate) fn builder_drop_reason(b: &Value, now_ms: i64, excludes: &[String]) -> Option<String> {
    let name = b["Name"].as_str().unwrap_or("");
    if name.is_empty() {
        return Some("empty name".into());
    }
    if let Some(p) = excludes.iter().find(|p| wildcard_match(p, name)) {
        return Some(format!("excluded by {p:?}"));
    }
    let st = unix_to_ms(b["StartTime"].as_i64().unwrap_or(0));
    if st < now_ms - 3 * DAY_MS || st > now_ms + DAY_MS {
        return Some(format!(
            "StartTime {st} outside [now-3d, now+1d] (server now {now_ms})"
        ));
    }
    if utf16_len(name) > 200 {
        return Some("name longer than 200".into());
    }
    None
}
