//! HTTPS to a local server with a self-signed certificate made in the test: trusted when its
//! CA is configured, refused with a clear error otherwise, never a fall-back to plain HTTP.
//! Also: neither the secret nor the token ever appears in the diagnostics log.

use stardust_test_support::common::{self, Workers};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use stardust_runtime::{Config, InitError};

const SECRET: &str = "tls-secret-Zq81";
const TOKEN: &str = "eyJhbGciOi.tls-token-Wk4.sig";

/// Every log line of the process at debug level and above, for the leak checks.
struct Capture;
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        // ureq hex-dumps whole bodies at trace level (its choice, documented in our README);
        // everything at debug and above, from any crate, is checked.
        if r.level() <= log::Level::Debug {
            LINES
                .lock()
                .unwrap()
                .push(format!("{} {} {}", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn logs() -> Vec<String> {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        static LOGGER: Capture = Capture;
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
    LINES.lock().unwrap().clone()
}

#[derive(Default)]
struct Seen {
    /// Paths of requests that arrived over TLS.
    paths: Vec<String>,
    /// Connections whose TLS handshake failed.
    failed_handshakes: usize,
    /// Connections that spoke plain HTTP to the TLS port.
    plain_http: usize,
}

/// A minimal HTTPS Stardust: answers login with a token and everything else with success.
/// It accepts connections until the returned [`Workers`] is stopped or dropped (also when the
/// test fails), so it never outlives its test; each connection ends with the client's.
fn https_server() -> (String, String, Arc<Mutex<Seen>>, Workers) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert_der = ck.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seen2 = seen.clone();
    listener.set_nonblocking(true).unwrap();
    let mut accept = Workers::new();
    accept.spawn(move |stop| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((tcp, _)) => {
                    tcp.set_nonblocking(false).unwrap();
                    let config = config.clone();
                    let seen = seen2.clone();
                    std::thread::spawn(move || serve(tcp, config, &seen));
                }
                Err(_) => {
                    // Nothing to accept yet (or a failed accept): look again shortly.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    (url, cert_pem, seen, accept)
}

fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, seen: &Mutex<Seen>) {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).unwrap_or(0) == 1 && first[0] != 0x16 {
        seen.lock().unwrap().plain_http += 1;
        return;
    }
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => {
                if reader.get_ref().conn.is_handshaking() {
                    seen.lock().unwrap().failed_handshakes += 1;
                }
                return;
            }
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        seen.lock().unwrap().paths.push(path.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let reply = if path.eq_ignore_ascii_case("/App/Login") {
            format!(r#"{{"code":0,"data":{{"token":"{TOKEN}","expire":7200,"serverTime":{now}}}}}"#)
        } else {
            r#"{"code":0,"data":null}"#.to_owned()
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        let tls = reader.get_mut();
        if tls.write_all(resp.as_bytes()).is_err() || tls.flush().is_err() {
            return;
        }
    }
}

/// Waits for something that only has to happen eventually: long enough for a loaded machine
/// (a wait that passes ends at once).
fn wait(f: impl FnMut() -> bool) -> bool {
    common::wait_until(Duration::from_secs(60), f)
}

fn config(url: &str) -> Config {
    Config::new()
        .server(url)
        .app_id("tls-app")
        .secret(SECRET)
        .console(false)
        .request_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(2))
        .first_report_delay(Duration::from_secs(3600))
}

#[test]
fn https_with_the_test_ca_configured_is_trusted() {
    let _serial = common::serial();
    logs();
    let (url, ca, seen, _server) = https_server();
    // The flush below must not run out of time on a loaded machine (TLS handshakes of a debug
    // build are slow); it ends as soon as it has delivered.
    let guard = stardust_runtime::init_with(
        config(&url)
            .tls_ca_pem(ca)
            .request_timeout(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_secs(30)),
    )
    .unwrap();
    assert!(
        wait(|| seen.lock().unwrap().paths.iter().any(|p| p == "/App/Login")),
        "login over TLS"
    );
    drop(stardust_runtime::span("tls/work"));
    assert!(guard.flush().is_ok());
    assert!(
        wait(|| seen
            .lock()
            .unwrap()
            .paths
            .iter()
            .any(|p| p == "/Trace/Report")),
        "report over TLS"
    );
    drop(guard);
    let s = seen.lock().unwrap();
    assert_eq!(s.plain_http, 0);
    assert_eq!(s.failed_handshakes, 0);
    for line in logs() {
        assert!(!line.contains(SECRET), "secret in the log: {line}");
        assert!(!line.contains("tls-token-Wk4"), "token in the log: {line}");
    }
}

#[test]
fn https_without_the_ca_is_refused_clearly_and_never_downgraded() {
    let _serial = common::serial();
    logs();
    let (url, _ca, seen, _server) = https_server();
    let guard = stardust_runtime::init_with(config(&url)).unwrap();
    assert!(
        wait(|| seen.lock().unwrap().failed_handshakes > 0),
        "the client tried TLS and rejected the certificate"
    );
    drop(stardust_runtime::span("tls/work"));
    // Nothing can be delivered: the flush says so when its deadline passes, and the report
    // stays queued (never sent over plain HTTP).
    assert!(
        matches!(
            guard.flush(),
            Err(stardust_runtime::FlushError::TimedOut(_))
        ),
        "an undeliverable flush is an error"
    );
    drop(guard);
    let s = seen.lock().unwrap();
    assert!(s.paths.is_empty(), "no request got through: {:?}", s.paths);
    assert_eq!(s.plain_http, 0, "no fall-back to plain HTTP");
    let lines = logs();
    let refused: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("login") && l.contains(url.as_str()))
        .collect();
    assert!(
        !refused.is_empty(),
        "a log line names the failed login: {lines:?}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.to_ascii_lowercase().contains("certificate")),
        "the reason names the certificate: {refused:?}"
    );
    for line in &lines {
        assert!(!line.contains(SECRET), "secret in the log: {line}");
    }
}

#[test]
fn a_ca_pem_without_certificates_is_an_init_error() {
    let _serial = common::serial();
    let err = stardust_runtime::init_with(config("https://127.0.0.1:1").tls_ca_pem("not a pem"))
        .unwrap_err();
    assert!(matches!(err, InitError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
    let secret_debug = format!("{:?}", config("https://127.0.0.1:1"));
    assert!(!secret_debug.contains(SECRET), "{secret_debug}");
}
