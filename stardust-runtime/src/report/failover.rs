//! The reporters' one HTTP client: blocking `ureq`, a list of servers tried in turn, typed
//! errors, and URLs redacted in every message it produces. The Stardust client and the
//! SkyWalking reporter both use it, so fail-over and redaction behave the same for both.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::time::{Duration, Instant};

use crate::util::url::redact_url;

/// Largest reply body read, counted both as received and as decoded (ureq inflates a body sent
/// with `Content-Encoding: gzip` whatever the request asked for, so a few kilobytes on the wire
/// may stand for gigabytes); a larger one is an error.
const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;
/// A call is not started with less time than this left before its deadline.
pub(crate) const MIN_CALL_TIME: Duration = Duration::from_millis(20);

/// Why a request got no usable reply.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// No answer from any server (connect, TLS, timeout, reset): the whole list was tried.
    Unreachable(ureq::Error),
    /// A server answered with a status the caller does not accept.
    Status(u16),
    /// The reply's body could not be read (larger than 4 MiB on the wire or once decoded, cut
    /// off, not valid gzip).
    Body(ureq::Error),
    /// Not enough time was left before the deadline to start a call.
    OutOfTime,
    /// No server is configured.
    NoServer,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Unreachable(ureq::Error::Timeout(t)) => write!(f, "timed out ({t})"),
            HttpError::Unreachable(e) => write!(f, "{e}"),
            HttpError::Status(s) => write!(f, "HTTP {s}"),
            HttpError::Body(e) => write!(f, "reply unreadable: {e}"),
            HttpError::OutOfTime => f.write_str("out of time"),
            HttpError::NoServer => f.write_str("no server configured"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Unreachable(e) | HttpError::Body(e) => Some(e),
            _ => None,
        }
    }
}

/// One request, relative to the current server's base URL.
pub(crate) struct Request<'a> {
    /// `POST` when there is a body, else `GET`.
    pub body: Option<(&'a [u8], &'a str)>,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    /// Per attempt.
    pub timeout: Duration,
    /// Overall, across servers.
    pub deadline: Option<Instant>,
}

/// A reply with any status (the caller decides what the status means).
pub(crate) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Servers tried in turn: the current one first, then the next on a transport error.
pub(crate) struct FailoverClient {
    agent: ureq::Agent,
    servers: Vec<String>,
    current: usize,
    /// What the servers are, for log lines (`Stardust server`, `SkyWalking OAP`).
    what: &'static str,
}

impl FailoverClient {
    pub(crate) fn new(
        servers: Vec<String>,
        what: &'static str,
        user_agent: &str,
        tls_roots: Option<Vec<ureq::tls::Certificate<'static>>>,
    ) -> FailoverClient {
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
            // Replies are a few hundred bytes: compressing them saves nothing, and a server
            // that is not asked to compress has no reason to (the .NET client does not ask
            // either). A reply compressed anyway is still decoded, within the cap of `once`.
            .accept_encoding("")
            .max_redirects(0)
            .build()
            .into();
        FailoverClient {
            agent,
            servers,
            current: 0,
            what,
        }
    }

    /// The server requests go to now, credentials redacted (for log lines).
    pub(crate) fn server(&self) -> Cow<'_, str> {
        self.servers
            .get(self.current)
            .map_or(Cow::Borrowed(""), |s| redact_url(s))
    }

    /// Every configured server, credentials redacted, for log lines.
    pub(crate) fn servers_for_log(&self) -> String {
        self.servers
            .iter()
            .map(|s| redact_url(s))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Sends the next requests to the next server (no-op with one server): for failures the
    /// client does not fail over on itself (a status, a reply that is not understood), when
    /// the caller retries against a deadline.
    pub(crate) fn fail_over(&mut self) {
        self.advance(log::Level::Debug, "failed");
    }

    /// Makes the next server of the list the current one, saying so at `level` with `why`
    /// the current one is left (nothing with one server).
    fn advance(&mut self, level: log::Level, why: &str) {
        let next = (self.current + 1) % self.servers.len().max(1);
        if next != self.current {
            log::log!(
                level,
                "stardust: {} {} {why}; trying {} next",
                self.what,
                redact_url(&self.servers[self.current]),
                redact_url(&self.servers[next])
            );
            self.current = next;
        }
    }

    /// Sends `req` to the current server, then to the others on transport errors (never on a
    /// status), within `req.timeout` per attempt and `req.deadline` overall.
    pub(crate) fn send(&mut self, req: &Request<'_>) -> Result<Reply, HttpError> {
        let mut last = HttpError::NoServer;
        for _ in 0..self.servers.len() {
            let mut timeout = req.timeout;
            if let Some(d) = req.deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left < MIN_CALL_TIME {
                    return Err(HttpError::OutOfTime);
                }
                timeout = timeout.min(left);
            }
            let url = format!("{}{}", self.servers[self.current], req.path);
            match self.once(&url, req, timeout) {
                Err(HttpError::Unreachable(e)) => {
                    let err = HttpError::Unreachable(e);
                    self.advance(
                        log::Level::Warn,
                        &format!("unreachable ({})", crate::util::text::escaped(&err)),
                    );
                    last = err;
                }
                other => return other,
            }
        }
        Err(last)
    }

    fn once(&self, url: &str, req: &Request<'_>, timeout: Duration) -> Result<Reply, HttpError> {
        log::trace!(
            "stardust: {} {}",
            if req.body.is_some() { "POST" } else { "GET" },
            redact_url(url)
        );
        let result = match req.body {
            Some((bytes, content_type)) => {
                let mut r = self
                    .agent
                    .post(url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .header("Content-Type", content_type);
                if let Some(a) = req.authorization {
                    r = r.header("Authorization", a);
                }
                r.send(bytes)
            }
            None => {
                let mut r = self
                    .agent
                    .get(url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build();
                if let Some(a) = req.authorization {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
        };
        let mut resp = result.map_err(HttpError::Unreachable)?;
        let status = resp.status().as_u16();
        let body = read_capped(resp.body_mut());
        match body {
            Ok(body) => Ok(Reply { status, body }),
            // An error status with an unreadable body is still that status.
            Err(_) if status >= 400 => Ok(Reply {
                status,
                body: Vec::new(),
            }),
            Err(e) => Err(HttpError::Body(e)),
        }
    }
}

/// The body, at most [`MAX_REPLY_BYTES`] as received and as decoded: `limit` counts the bytes
/// received (before ureq's gzip decoder), the `take` the decoded ones, so a compressed reply is
/// inflated no further than one byte past the cap.
fn read_capped(body: &mut ureq::Body) -> Result<Vec<u8>, ureq::Error> {
    let mut out = Vec::new();
    body.with_config()
        .limit(MAX_REPLY_BYTES)
        .reader()
        .take(MAX_REPLY_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(ureq::Error::from)?;
    if out.len() as u64 > MAX_REPLY_BYTES {
        return Err(ureq::Error::BodyExceedsLimit(MAX_REPLY_BYTES));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_logged_redacted_and_failed_over_in_turn() {
        let mut c = FailoverClient::new(
            vec![
                "http://user:pw@a.example:1".into(),
                "http://b.example:2".into(),
            ],
            "test server",
            "test",
            None,
        );
        assert_eq!(
            c.servers_for_log(),
            "http://a.example:1, http://b.example:2"
        );
        assert_eq!(c.server(), "http://a.example:1");
        c.fail_over();
        assert_eq!(c.server(), "http://b.example:2");
        c.fail_over();
        assert_eq!(c.server(), "http://a.example:1");
        let mut one = FailoverClient::new(vec!["http://c.example:3".into()], "t", "t", None);
        one.fail_over();
        assert_eq!(one.server(), "http://c.example:3");
    }

    /// Answers one request on a local port with `head` and `body`, then closes; gives the
    /// port and the request head received.
    fn serve_once(head: String, body: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                got.push(byte[0]);
            }
            // The client may hang up before reading it all: that is what is tested.
            let _ = s
                .write_all(head.as_bytes())
                .and_then(|_| s.write_all(&body));
            String::from_utf8_lossy(&got).into_owned()
        });
        (url, t)
    }

    /// A gzip body that inflates to `len` bytes of spaces.
    fn gzip_spaces(len: usize) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = [b' '; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            enc.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        enc.finish().unwrap()
    }

    fn get_gzip(inflated: usize) -> (Result<Reply, HttpError>, String) {
        let body = gzip_spaces(inflated);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (url, server) = serve_once(head, body);
        let mut c = FailoverClient::new(vec![url], "test server", "t", None);
        let reply = c.send(&Request {
            body: None,
            path: "/x",
            authorization: None,
            timeout: Duration::from_secs(30),
            deadline: None,
        });
        (reply, server.join().unwrap())
    }

    #[test]
    fn replies_are_capped_once_decoded_and_compression_is_not_asked_for() {
        let max = MAX_REPLY_BYTES as usize;
        // 4 MiB + 1 decoded from a few kilobytes on the wire: refused.
        let (reply, request) = get_gzip(max + 1);
        assert!(
            matches!(
                reply,
                Err(HttpError::Body(ureq::Error::BodyExceedsLimit(_)))
            ),
            "{:?}",
            reply.map(|r| r.body.len())
        );
        assert!(
            !request.to_ascii_lowercase().contains("accept-encoding"),
            "{request}"
        );
        // Exactly the cap: read whole.
        let (reply, _) = get_gzip(max);
        assert_eq!(reply.unwrap().body.len(), max);
    }

    #[test]
    fn refused_servers_fail_over_and_say_which_error() {
        // Two closed local ports: both are tried, the error is typed.
        let closed = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            format!("http://127.0.0.1:{port}")
        };
        let mut c = FailoverClient::new(vec![closed(), closed()], "test server", "t", None);
        let req = Request {
            body: None,
            path: "/x",
            authorization: None,
            timeout: Duration::from_secs(2),
            deadline: None,
        };
        assert!(matches!(c.send(&req), Err(HttpError::Unreachable(_))));
        let past = Request {
            deadline: Some(Instant::now()),
            ..req
        };
        assert!(matches!(c.send(&past), Err(HttpError::OutOfTime)));
    }
}
