//! A plain HTTP peer on loopback for propagation tests: a downstream service that records the
//! headers of the requests it gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request's headers, in the order they arrived.
pub type Headers = Vec<(String, String)>;

/// The headers of a `tiny_http` request.
pub fn headers_of(req: &tiny_http::Request) -> Headers {
    req.headers()
        .iter()
        .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
        .collect()
}

/// The first header named `name` (ignoring case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A server on 127.0.0.1 answering `n` requests with 200 `ok`, recording their headers;
/// returns its base URL and the headers seen so far. It stops after `n` requests, or after a
/// minute without one (generous, for a loaded machine; it produces no spans meanwhile).
pub fn downstream(n: usize) -> (String, Arc<Mutex<Vec<Headers>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!(
        "http://{}",
        server.server_addr().to_ip().expect("an IP address")
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok(Some(req)) = server.recv_timeout(Duration::from_secs(60)) else {
                return;
            };
            s.lock().unwrap().push(headers_of(&req));
            let _ = req.respond(tiny_http::Response::from_string("ok"));
        }
    });
    (url, seen)
}
