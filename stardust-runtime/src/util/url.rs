//! URL handling shared by the reporters and integrations: credentials never reach a span
//! name, a tag or a log line.
//!
//! Two readings of where a URL's `user:password@` ends:
//!
//! - [`redact_url`] and [`redact_urls`] (log lines, error messages, `Config`'s `Debug`) assume
//!   the worst: a password may hold a raw `/`, `?`, `#`, `:` or `@` (such a URL is invalid,
//!   but it must not reach a log line either), and what follows the host (a port, a path,
//!   sentence punctuation, a closing quote) cannot be told apart from a piece of a password.
//!   So no host is looked for: the userinfo ends at the **last** `@` of the URL, the URL
//!   running from its `scheme://` to the end of the text, or in a longer text to the next
//!   white space or the start of the next URL of a list (see [`redact_urls`]). A path or
//!   query holding an `@` loses what precedes it (`http://h/?to=a@b` → `http://b`): a server
//!   URL cannot have one (`init` refuses it, see [`server_url_problem`]), so only text that
//!   would otherwise risk a password loses more than its credentials.
//! - [`redact_parsed_url`] (span tags of outgoing calls) takes a URL the `http` crate has
//!   parsed: its authority ends at the first `/`, `?` or `#`, and an `@` after it is kept.

use std::borrow::Cow;

/// `host:port` of an authority, without any `user:password@`.
pub(crate) fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// A character of a host name (ASCII or not) or an IPv4 address (`%` for percent-encoding).
fn is_host_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '%')
}

/// Whether `s` is a whole `host[:port]`: a name or IPv4 address or a bracketed IPv6 address,
/// then an optional `:` and digits (the port ends at the first non-digit, so `h:1.` is not).
fn is_host_and_port(s: &str) -> bool {
    let after_host = match s.strip_prefix('[') {
        Some(bracketed) => {
            let Some((inside, after)) = bracketed.split_once(']') else {
                return false;
            };
            if inside.is_empty() || !inside.chars().all(|c| is_host_char(c) || c == ':') {
                return false;
            }
            after
        }
        None => {
            let n = s.find(|c| !is_host_char(c)).unwrap_or(s.len());
            if n == 0 {
                return false;
            }
            &s[n..]
        }
    };
    match after_host.strip_prefix(':') {
        Some(port) => port.bytes().all(|b| b.is_ascii_digit()),
        None => after_host.is_empty(),
    }
}

/// `url` with any `user:password@` removed, the worst case assumed (see the module doc): all
/// from its `scheme://` to its last `@`, the `@` included. For log lines, error messages and
/// `Debug`. Without a `scheme://` the whole text is read as what follows one
/// (`user:pw@host:1` → `host:1`).
pub(crate) fn redact_url(url: &str) -> Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]).into(),
        None => url.into(),
    }
}

/// Characters after which a `scheme://` starts a new URL of a list rather than going on with
/// the URL before it (`http://a,http://b`, `"http://a";"http://b"`, `(http://a)[http://b]`).
/// `init` refuses a password with a raw `/`, so none of a server's holds a `://`.
const LIST_SEPARATORS: &[u8] = b",;|()[]{}<>\"'`";

/// Where a new URL starts whose `://` is at `mark`, when one does: its scheme (a letter, then
/// letters, digits, `+`, `-` or `.`) follows one of [`LIST_SEPARATORS`] at or after `from`.
fn list_url_start(text: &str, from: usize, mark: usize) -> Option<usize> {
    let b = text.as_bytes();
    let run = b[from..mark]
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        .count();
    let scheme = mark - run;
    let follows_separator = scheme > from && LIST_SEPARATORS.contains(&b[scheme - 1]);
    (run > 0 && b[scheme].is_ascii_alphabetic() && follows_separator).then_some(scheme)
}

/// Where the URL whose `scheme://` ends at `start` ends in `text`, given the end of the white
/// space free run it is in (`token_end`): there, or where the next URL of a list starts
/// ([`list_url_start`]), whichever is first. Any other `://` (`?next=http://…`, a password
/// holding one) is part of the URL.
fn url_end(text: &str, start: usize, token_end: usize) -> usize {
    text[start..token_end]
        .match_indices("://")
        .find_map(|(i, _)| list_url_start(text, start, start + i))
        .unwrap_or(token_end)
}

/// `text` (a log line, an error message) with [`redact_url`] applied to every URL in it: all
/// from each `scheme://` to the last `@` before the URL ends is removed. A URL ends at white
/// space or where the next URL of a list starts ([`url_end`]), so `http://a:p@x, http://b:q@y`
/// and `http://a:p@x,http://b:q@y` keep both hosts, and punctuation, quotes or brackets after
/// a URL are kept as they are: no host is looked for, so nothing after one can hide it.
pub(crate) fn redact_urls(text: &str) -> Cow<'_, str> {
    if !text.contains('@') || !text.contains("://") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    let mut token_end = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        if start > token_end {
            token_end = text[start..]
                .find(char::is_whitespace)
                .map_or(text.len(), |e| start + e);
        }
        let end = url_end(text, start, token_end);
        if let Some(at) = text[start..end].rfind('@') {
            out.push_str(&text[copied..start]);
            copied = start + at + 1;
        }
        from = end;
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
    if !is_host_and_port(authority) {
        return Some("it has no host, or a port that is not a number");
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
    if is_host_and_port(host) {
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
            // No host after the last `@`: all before it may be a password.
            ("http://h/mail@", "http://"),
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
        assert_eq!(redact_urls("x://@"), "x://");
    }

    /// Pieces of `password` a reader could use: the whole, and every run between its
    /// delimiters that is at least 3 characters long.
    fn secret_pieces(password: &str) -> Vec<&str> {
        let mut pieces = vec![password];
        pieces.extend(
            password
                .split(['#', '@', '/', '?', ':'])
                .filter(|p| p.chars().count() >= 3),
        );
        pieces
    }

    /// Panics when `shown` (what became of `input`) holds a piece of `password`.
    fn assert_hidden(shown: &str, input: &str, password: &str) {
        for piece in secret_pieces(password) {
            assert!(
                !shown.contains(piece),
                "{piece:?} of the password is left in {shown:?} (from {input:?})"
            );
        }
    }

    /// Passwords a user may configure (raw or not) whose pieces appear nowhere else.
    const PASSWORDS: [&str; 8] = [
        "P4ss#w0rd",
        "Adm1n@s3cret-pw",
        "qq1/zz2?yy3#xx4:ww5@vv6",
        "tok://en99",
        "pä55wört",
        "s3cret%2Fpct",
        "trailing@",
        "Sem1;c0l0n,c0mma",
    ];

    /// Hosts (with a port or not) and paths a server URL may have.
    const HOSTS: [&str; 9] = [
        "h",
        "h:1",
        "127.0.0.1:6600",
        "stardust.example.com:6600",
        "[::1]:6600",
        "[fe80::1%25eth0]",
        "例子.cn:1",
        "bücher.example",
        "h-1.example.:8080",
    ];
    const PATHS: [&str; 3] = ["", "/", "/App/Login"];

    /// Messages a URL (`{}`) may appear in, and what is shown of the URL's host in them.
    const MESSAGES: [&str; 16] = [
        "{}",
        "login to {}. done",
        "{}: refused",
        "connect {}:",
        "{}.",
        "{}...",
        "see ({}).",
        "`{}`",
        "\"{}\"",
        "'{}'.",
        "[{}]",
        "<{}>",
        "io: {}\nnext line",
        "servers {} and {}, both down",
        "StarServer={},{}",
        "{};{}",
    ];

    #[test]
    fn no_password_is_left_in_any_shape() {
        for password in PASSWORDS {
            for host in HOSTS {
                for path in PATHS {
                    let url = format!("http://user:{password}@{host}{path}");
                    let clean = format!("http://{host}{path}");
                    let shown = redact_url(&url);
                    assert_hidden(&shown, &url, password);
                    assert_eq!(shown, clean, "{url}");
                    for message in MESSAGES {
                        let text = message.replace("{}", &url);
                        let shown = redact_urls(&text);
                        assert_hidden(&shown, &text, password);
                        assert_eq!(shown, message.replace("{}", &clean), "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_port_ends_at_the_first_non_digit() {
        for (text, shown) in [
            (
                "login to http://u:pw@h:1. done",
                "login to http://h:1. done",
            ),
            ("http://u:pw@h:6600: refused", "http://h:6600: refused"),
            ("http://u:pw@h:6600:", "http://h:6600:"),
            ("http://u:pw@h:1-x", "http://h:1-x"),
            ("http://u:pw@h:1abc", "http://h:1abc"),
            ("http://u:pw@h:1..", "http://h:1.."),
        ] {
            assert_eq!(redact_urls(text), shown, "{text}");
            assert_eq!(redact_url(text), shown, "{text}");
        }
    }

    #[test]
    fn non_ascii_hosts_are_hosts() {
        for (text, shown) in [
            ("http://u:pw@例子.cn:1/x", "http://例子.cn:1/x"),
            ("http://u:pw@例子.cn", "http://例子.cn"),
            (
                "http://u:pw@bücher.example:80.",
                "http://bücher.example:80.",
            ),
        ] {
            assert_eq!(redact_urls(text), shown, "{text}");
            assert_eq!(redact_url(text), shown, "{text}");
        }
        assert_eq!(
            redact_urls("连接 http://u:pw@例子.cn:1 失败"),
            "连接 http://例子.cn:1 失败"
        );
    }

    #[test]
    fn bracketed_ipv6_hosts_are_hosts() {
        for (text, shown) in [
            ("https://u:pw@[::1]:6600/x", "https://[::1]:6600/x"),
            ("http://u:pw@[::1]:1.", "http://[::1]:1."),
            ("[http://u:pw@[::1]:1]", "[http://[::1]:1]"),
            (
                "(http://u:pw@[fe80::1%25eth0]:1):",
                "(http://[fe80::1%25eth0]:1):",
            ),
        ] {
            assert_eq!(redact_urls(text), shown, "{text}");
        }
    }

    #[test]
    fn several_urls_in_one_line_are_each_redacted() {
        assert_eq!(
            redact_urls("http://a:pw1@x:1. then http://b:pw2@y:2: refused"),
            "http://x:1. then http://y:2: refused"
        );
        assert_eq!(
            redact_urls("http://a:pw1@x.example:1,http://b:pw2@例子.cn:2"),
            "http://x.example:1,http://例子.cn:2"
        );
        assert_eq!(
            redact_urls("http://h1:1,http://b:pw2@h2:2;https://c:pw3@[::1]:3]"),
            "http://h1:1,http://h2:2;https://[::1]:3]"
        );
        // A `scheme://` after anything but a list separator may be a piece of a password:
        // the URLs are read as one, and all up to the last `@` goes.
        assert_eq!(
            redact_urls("a=http://u:pw1@x:1;b=http://v:pw2@y:2"),
            "a=http://y:2"
        );
    }

    #[test]
    fn a_userinfo_with_no_host_after_it_is_removed() {
        assert_eq!(redact_url("http://u:pw@"), "http://");
        assert_eq!(redact_url("http://u:p@ss@"), "http://");
        assert_eq!(
            redact_urls("server http://u:pw@ has no host"),
            "server http:// has no host"
        );
        assert_eq!(redact_urls("http://u:pw@/App/Login"), "http:///App/Login");
        assert_eq!(redact_urls("http://u:pw@:1"), "http://:1");
    }

    #[test]
    fn a_password_holding_a_scheme_is_removed_whole() {
        for (text, shown) in [
            ("http://u:s3cr://pw@h:1", "http://h:1"),
            ("http://u:s3cr://pw@h:1, http://h2", "http://h:1, http://h2"),
            ("http://u:xy1+http://pw@h:1", "http://h:1"),
        ] {
            assert_eq!(redact_urls(text), shown, "{text}");
            assert_eq!(redact_url(text.split(", ").next().unwrap()), "http://h:1");
        }
    }

    #[test]
    fn messages_without_userinfo_are_unchanged() {
        for text in [
            "GET /users/7?to=a@b.com",
            "GET http://h:1/users/7 for a@b.com",
            "http://h:1 refused; mail ops@example.com",
            "no url: a@b",
            "http://h:1 ok",
            "servers http://a:1, http://b:2",
            "http://[::1]:6600/x?y=1",
            "连接 http://例子.cn:1 失败",
        ] {
            assert_eq!(redact_urls(text), text);
        }
        // Span tags of outgoing calls keep an `@` in a path or query.
        assert_eq!(
            redact_parsed_url("http://h:1/users/7?to=a@b.com"),
            "http://h:1/users/7?to=a@b.com"
        );
        assert_eq!(
            redact_parsed_url("http://u:pw@h:1/users/7?to=a@b.com"),
            "http://h:1/users/7?to=a@b.com"
        );
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
