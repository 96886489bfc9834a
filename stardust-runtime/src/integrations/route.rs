//! Route templates from concrete paths: the path segments that look like ids become `{id}`, so
//! that the default names of HTTP spans stay few however many orders, users or files there are.

/// What an id-like segment is replaced with.
pub(crate) const ID: &str = "{id}";

/// Longest segment kept as it is; longer ones are taken for ids (tokens, slugs, hashes).
const MAX_WORD_CHARS: usize = 32;

/// True when a path segment looks like an id rather than a fixed part of a route:
///
/// - a number (`42`), or digits with separators (`2024-01-31`, `1.2.3`, `12:30`);
/// - a UUID (`8-4-4-4-12` hex digits), or 16 or more hex digits (`0af7651916cd43dd`);
/// - more than 16 characters with at least one digit (`sku-red-000000000000001`, a token);
/// - more than 32 characters (a slug or a token without digits).
pub(crate) fn is_id_segment(seg: &str) -> bool {
    let len = seg.chars().count();
    let has_digit = seg.bytes().any(|b| b.is_ascii_digit());
    if has_digit
        && seg
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b':' | b','))
    {
        return true;
    }
    if len >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    if is_uuid(seg) {
        return true;
    }
    (len > 16 && has_digit) || len > MAX_WORD_CHARS
}

fn is_uuid(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `seg`, or `{id}` when it looks like an id ([`is_id_segment`]).
pub(crate) fn template_segment(seg: &str) -> &str {
    if is_id_segment(seg) { ID } else { seg }
}

/// The route template of a concrete path: query and fragment dropped, and every segment that
/// looks like an id replaced by `{id}` (numbers, dates, UUIDs, 16 or more hex digits, segments
/// longer than 16 characters with a digit, segments longer than 32 characters).
///
/// Use it to name spans after paths you do not have a route for (the default names of
/// [`incoming`](crate::incoming::incoming) and of the ureq middleware use the same rule).
///
/// ```
/// use stardust_runtime::template_path;
///
/// assert_eq!(template_path("/api/orders/1234/items?page=2"), "/api/orders/{id}/items");
/// assert_eq!(
///     template_path("/files/3f2a1c9e-1d2b-4c3d-9e8f-0123456789ab"),
///     "/files/{id}"
/// );
/// assert_eq!(template_path("/v1/users/me"), "/v1/users/me");
/// ```
pub fn template_path(path: &str) -> String {
    template_first(path, usize::MAX)
}

/// [`template_path`] of the first `segments` segments of `path`.
pub(crate) fn template_first(path: &str, segments: usize) -> String {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()).take(segments) {
        out.push('/');
        out.push_str(template_segment(seg));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_numbers_dates_uuids_hex_and_long_tokens() {
        for id in [
            "7",
            "0",
            "123456789012345678901234567890",
            "2024-01-31",
            "1.2.3",
            "12:30",
            "3f2a1c9e-1d2b-4c3d-9e8f-0123456789ab",
            "3F2A1C9E-1D2B-4C3D-9E8F-0123456789AB",
            "0af7651916cd43dd",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "507f1f77bcf86cd799439011",
            "sku-red-000000000000001",
            "eyJhbGciOiJIUzI1NiJ9x",
            "a-very-long-slug-of-a-blog-post-without-any-digit",
        ] {
            assert!(is_id_segment(id), "{id} is an id");
        }
        for word in [
            "api",
            "orders",
            "v1",
            "v2beta",
            "me",
            "health",
            "cafe",
            "deadbeef",
            "order-items",
            "index.html",
            "my-first-post",
            "a-slug-of-exactly-thirtytwo-char",
        ] {
            assert!(!is_id_segment(word), "{word} is a word");
        }
    }

    #[test]
    fn templates_keep_words_and_replace_ids() {
        assert_eq!(template_path("/api/orders/7"), "/api/orders/{id}");
        assert_eq!(
            template_path("/api/orders/7/items/9"),
            "/api/orders/{id}/items/{id}"
        );
        assert_eq!(template_path("//a//b/?x=1#f"), "/a/b");
        assert_eq!(template_path(""), "/");
        assert_eq!(template_path("/"), "/");
        assert_eq!(template_path("?q"), "/");
    }
}
