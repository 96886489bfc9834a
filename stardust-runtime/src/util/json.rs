//! Reading fields of JSON objects that the server writes in either camelCase or PascalCase.

use serde_json::{Map, Value};

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
