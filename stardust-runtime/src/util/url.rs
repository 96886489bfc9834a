//! URL handling shared by the reporters and integrations: credentials never reach a span
//! name, a tag or a log line.
//!
//! Two readings of where a URL's `user:password@` ends:
//!
//! - [`redact_url`] and [`redact_urls`] (log lines, error messages, `Config`'s `Debug`) assume
//!   the worst: a password may hold a raw `/`, `?`, `#` or `@` (such a URL is invalid, but it
//!   must not reach a log line either), so the userinfo ends at the **last** `@` of the URL
//!   that is followed by a host (a name, an IPv4 or a bracketed IPv6 address, an optional
//!   numeric port, then the end, `/`, `?`, `#` or a character no host holds). A path or query
//!   holding such an `@` loses what precedes it in the line: a server URL cannot have one
//!   (`init` refuses it, see [`server_url_problem`]), so only text that would otherwise risk a
//!   password is affected.
//! - [`redact_parsed_url`] (span tags of outgoing calls) takes a URL the `http` crate has
//!   parsed: its authority ends at the first `/`, `?` or `#`, and an `@` after it is kept.

use std::borrow::Cow;

/// `host:port` of an authority, without any `user:password@`.
pub(crate) fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// A byte of a host name or an IPv4 address (`%` for percent-encoding).
fn is_host_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
}

/// Length of the `host[:port]` at the start of `s`, when `s` starts with one: a name or IPv4
/// address or a bracketed IPv6 address, an optional `:` and digits, then the end of `s` or a
/// character that ends a host (anything but a host character, `:`, `@`, `[` or `]`).
fn host_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = if b.first() == Some(&b'[') {
        let close = s.find(']')?;
        let inside = &b[1..close];
        if inside.is_empty() || !inside.iter().all(|c| is_host_byte(*c) || *c == b':') {
            return None;
        }
        close + 1
    } else {
        let n = b.iter().take_while(|c| is_host_byte(**c)).count();
        if n == 0 {
            return None;
        }
        n
    };
    if b.get(i) == Some(&b':') {
        i += 1;
        i += b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    match b.get(i) {
        Some(c) if is_host_byte(*c) || matches!(c, b':' | b'@' | b'[' | b']') => None,
        _ => Some(i),
    }
}

/// Where the userinfo of `rest` (a URL after its `scheme://`) ends: the index of its last `@`
/// that is followed by a host (see the module doc). `None`: no userinfo.
fn userinfo_end(rest: &str) -> Option<usize> {
    rest.match_indices('@')
        .rev()
        .map(|(i, _)| i)
        .find(|&i| host_len(&rest[i + 1..]).is_some())
}

/// `url` with any `user:password@` removed, the worst case assumed (see the module doc): for
/// log lines, error messages and `Debug`. Without a `scheme://` the whole text is read as what
/// follows one (`user:pw@host:1` → `host:1`).
pub(crate) fn redact_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    match userinfo_end(&url[start..]) {
        Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]).into(),
        None => url.into(),
    }
}

/// Where the scheme ending at `colon` (the index of a `://`) begins.
fn scheme_start(text: &str, colon: usize) -> usize {
    let n = text.as_bytes()[..colon]
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        .count();
    colon - n
}

/// `text` (a log line, an error message) with [`redact_url`] applied to every URL in it. A URL
/// runs from its `scheme://` to the next white space or the next URL's scheme, so several
/// servers in one line (`http://a, http://b`, `http://a,http://b`) are each redacted.
pub(crate) fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains('@') || !text.contains("://") {
        return text.into();
    }
    let marks: Vec<usize> = text.match_indices("://").map(|(i, _)| i).collect();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (k, &mark) in marks.iter().enumerate() {
        let start = mark + 3;
        if start < copied {
            continue;
        }
        let mut end = text[start..]
            .find(char::is_whitespace)
            .map_or(text.len(), |e| start + e);
        if let Some(&next) = marks.get(k + 1) {
            end = end.min(scheme_start(text, next).max(start));
        }
        if let Some(at) = userinfo_end(&text[start..end]) {
            out.push_str(&text[copied..start]);
            copied = start + at + 1;
        }
    }
    if copied == 0 {
        return text.into();
    }
    out.push_str(&text[copied..]);
    out.into()
}

/// A URL the `http` crate parsed (its authority holds no `/`, `?` or `#`) without its
/// `user:password@`; an `@` in its path or query is kept. For span tags of outgoing calls.
pub(crate) fn redact_parsed_url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = without_userinfo(&rest[..end]);
    if host.len() == end {
        return url.into();
    }
    format!("{scheme}://{host}{}", &rest[end..]).into()
}

/// What makes `url` (already known to start with `http://` or `https://`) unusable as a
/// server's base URL, in words that never quote the URL:
///
/// - a character a URL cannot hold raw (white space, a control character, a quote, `<`, `>`,
///   `\`, `^`, `` ` ``, `{`, `|`, `}`, a non-ASCII character);
/// - an `@` after a `/`, `?` or `#`: a user name or password holding a raw `/`, `?` or `#`
///   (the request would go to another host), or a path holding an `@`;
/// - a `?` or `#`: a base URL takes no query or fragment (the runtime appends `/App/Login` and
///   the like);
/// - no host, or a port that is not a number up to 65535.
pub(crate) fn server_url_problem(url: &str) -> Option<&'static str> {
    let Some((_, rest)) = url.split_once("://") else {
        return Some("it is not a URL");
    };
    let raw_ok = |c: char| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c);
    if !rest.chars().all(raw_ok) {
        return Some(
            "it holds a character a URL cannot hold as it is (white space, a control character, a quote, a non-ASCII letter, ...); percent-encode it in a user name or password",
        );
    }
    let first_delim = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rest[first_delim..].contains('@') {
        return Some(
            "it has an `@` after a `/`, `?` or `#`: in a user name or password write those as %2F, %3F and %23 (and an `@` in a path as %40)",
        );
    }
    if rest.contains(['?', '#']) {
        return Some(
            "a server's base URL takes no query (`?`) or fragment (`#`); in a user name or password write them as %3F and %23",
        );
    }
    let authority = without_userinfo(&rest[..first_delim]);
    match host_len(authority) {
        Some(n) if n == authority.len() => {}
        _ => return Some("it has no host, or a port that is not a number"),
    }
    let port = authority
        .rsplit_once(']')
        .map_or(authority, |(_, p)| p)
        .rsplit_once(':')
        .map(|(_, p)| p);
    if port.is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_err()) {
        return Some("its port is larger than 65535");
    }
    None
}

/// What an error message shows of an unusable server URL: its scheme and host (and port),
/// credentials removed, with `/…` for a path, query or fragment; only `scheme://…` when no
/// host can be told apart from what may be a piece of a password.
pub(crate) fn url_for_error(url: &str) -> String {
    let redacted = redact_url(url);
    let (scheme, rest) = match redacted.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), &*redacted),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..end];
    let tail = if end < rest.len() { "/…" } else { "" };
    if host_len(host) == Some(host.len()) {
        format!("{scheme}{host}{tail}")
    } else {
        format!("{scheme}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_removed() {
        assert_eq!(redact_url("http://u:p@h:1/x?q"), "http://h:1/x?q");
        assert_eq!(redact_url("http://h:1/a"), "http://h:1/a");
        assert_eq!(without_userinfo("u:p@h:1"), "h:1");
        assert_eq!(redact_parsed_url("http://u:p@h:1/x?q"), "http://h:1/x?q");
        assert_eq!(redact_parsed_url("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(
            redact_parsed_url("https://api/search?to=a@b.example"),
            "https://api/search?to=a@b.example"
        );
    }

    #[test]
    fn passwords_with_delimiters_are_removed_whole() {
        for (url, shown) in [
            (
                "http://user:P4ss#w0rd@127.0.0.1:6600",
                "http://127.0.0.1:6600",
            ),
            (
                "http://user:P4ss?w0rd@127.0.0.1:6600/x",
                "http://127.0.0.1:6600/x",
            ),
            ("http://user:P4ss/w0rd@host:1", "http://host:1"),
            (
                "http://user:1234/w0rd@host:1/App/Login",
                "http://host:1/App/Login",
            ),
            ("http://user:/w0rd@host", "http://host"),
            ("http://u:p@ss@host:1", "http://host:1"),
            ("http://u:a#b@c/d@host:1/x", "http://host:1/x"),
            ("https://u:p@[::1]:6600/x", "https://[::1]:6600/x"),
            ("https://u:p#@[fe80::1%25eth0]", "https://[fe80::1%25eth0]"),
            ("http://[::1]:6600", "http://[::1]:6600"),
            ("http://tok/en==@host", "http://host"),
            ("user:pw@host:1", "host:1"),
            ("w@a", "a"),
            ("localhost:6600", "localhost:6600"),
            // No host after the `@`: nothing to take for a userinfo.
            ("http://h/mail@", "http://h/mail@"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_inside_text_are_redacted() {
        assert_eq!(
            redact_urls("login to http://u:P4ss#w0rd@h:1 failed: io: refused"),
            "login to http://h:1 failed: io: refused"
        );
        assert_eq!(
            redact_urls("bad uri: http://u:P4ss#w0rd@h:1/App/Login is missing host"),
            "bad uri: http://h:1/App/Login is missing host"
        );
        assert_eq!(
            redact_urls("servers (http://a:p@x:1, https://b:q/r@y:2) and `http://u:s@z`."),
            "servers (http://x:1, https://y:2) and `http://z`."
        );
        assert_eq!(
            redact_urls("StarServer=http://a:p@x:1,http://b:q#@y:2"),
            "StarServer=http://x:1,http://y:2"
        );
        assert_eq!(redact_urls("no url: a@b"), "no url: a@b");
        assert_eq!(redact_urls("http://h:1 ok"), "http://h:1 ok");
        assert_eq!(redact_urls("x://@"), "x://@");
    }

    #[test]
    fn error_messages_show_the_host_only() {
        for (url, shown) in [
            ("http://user:P4ss#w0rd@127.0.0.1:1", "http://127.0.0.1:1"),
            ("http://user:1234/w0rd@h:1/x", "http://h:1/…"),
            ("http://h:1/#/dashboard", "http://h:1/…"),
            ("http://h:99999", "http://h:99999"),
            ("http://u:p w@h:1", "http://h:1"),
            ("http://u:p", "http://…"),
            ("http://u:p`w", "http://…"),
            ("https://[::1]:1?x", "https://[::1]:1/…"),
            ("ftp://u:pw@h", "ftp://h"),
            ("localhost:6600", "localhost:6600"),
            ("x:s3cr", "…"),
            ("et@h:1", "h:1"),
        ] {
            assert_eq!(url_for_error(url), shown, "{url}");
        }
    }

    #[test]
    fn unusable_server_urls_are_named() {
        for ok in [
            "http://h:6600",
            "https://u:p@h.example:443/base",
            "http://u:p%23w%2F@127.0.0.1:1",
            "http://[::1]:6600",
            "http://u:p@ss@h:1",
            "http://h:",
        ] {
            assert_eq!(server_url_problem(ok), None, "{ok}");
        }
        for bad in [
            "http://user:P4ss#w0rd@127.0.0.1:1",
            "http://user:P4ss?w0rd@127.0.0.1:1",
            "http://user:P4ss/w0rd@127.0.0.1:1",
            "http://user:1234/w0rd@127.0.0.1:1",
            "http://h:1/a@b",
            "http://h:1/#/dashboard",
            "http://h:1?x=1",
            "http://u:p w@h:1",
            "http://u:p\r\n@h:1",
            "http://u:pé@h:1",
            "http://u:p",
            "http://u:p@",
            "http://h:99999",
            "http://[::1",
        ] {
            assert!(server_url_problem(bad).is_some(), "{bad}");
        }
    }
}
