//! The raw TCP front: accepts client connections, reads each HTTP/1.1 request, picks the fault,
//! and either resets the connection or forwards the request to the tiny_http backend and relays
//! the reply. Owning the listener makes "refuse connections" possible.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Endpoint, Fault, Pending, Shared, handlers, lock};

pub(crate) struct Front {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Front {
    pub fn start(shared: Arc<Shared>, listener: TcpListener) -> Front {
        let addr = listener.local_addr().expect("front addr");
        let mut f = Front {
            addr,
            open: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        f.spawn(shared, listener);
        f
    }

    fn spawn(&mut self, shared: Arc<Shared>, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let open = Arc::new(AtomicBool::new(true));
        self.open = open.clone();
        self.thread = Some(
            std::thread::Builder::new()
                .name("fake-stardust-accept".into())
                .spawn(move || {
                    // Polling accept so close() never depends on waking a blocked accept().
                    while open.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                let _ = s.set_nonblocking(false);
                                let sh = shared.clone();
                                let _ = std::thread::Builder::new()
                                    .name("fake-stardust-conn".into())
                                    .spawn(move || handle_conn(&sh, s));
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(3))
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                    drop(listener); // closes the port: connects are refused from here on
                })
                .expect("spawn accept thread"),
        );
    }

    pub fn close(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn reopen(&mut self, shared: Arc<Shared>) {
        if self.thread.is_some() {
            return;
        }
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr) {
                Ok(l) => return self.spawn(shared, l),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        panic!("fake stardust: cannot re-bind {}: {:?}", self.addr, last);
    }

    pub fn is_open(&self) -> bool {
        self.thread.is_some()
    }
}

/// Close with SO_LINGER 0, so the peer gets a TCP RST.
pub(crate) fn reset(stream: TcpStream) {
    #[cfg(all(
        any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "ios"
        ),
        not(any(target_arch = "mips", target_arch = "mips64", target_arch = "sparc64"))
    ))]
    {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        struct Linger {
            l_onoff: i32,
            l_linger: i32,
        }
        unsafe extern "C" {
            fn setsockopt(
                fd: i32,
                level: i32,
                name: i32,
                val: *const std::ffi::c_void,
                len: u32,
            ) -> i32;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        const LEVEL_NAME: (i32, i32) = (1, 13); // SOL_SOCKET, SO_LINGER
        #[cfg(any(target_os = "macos", target_os = "ios"))]
        const LEVEL_NAME: (i32, i32) = (0xffff, 0x80);
        let l = Linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid fd owned by `stream`, pointer/len describe a live `struct linger`.
        unsafe {
            setsockopt(
                stream.as_raw_fd(),
                LEVEL_NAME.0,
                LEVEL_NAME.1,
                &l as *const Linger as *const _,
                std::mem::size_of::<Linger>() as u32,
            );
        }
    }
    drop(stream);
}

pub(crate) struct WireRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Original-case names.
    pub headers: Vec<(String, String)>,
    /// Bytes to forward: request line + headers (minus `Expect`) + body framing as received.
    pub forward: Vec<u8>,
    /// De-chunked body.
    pub body: Vec<u8>,
}

impl WireRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        conn.contains("close")
            || (self.version.eq_ignore_ascii_case("HTTP/1.0") && !conn.contains("keep-alive"))
    }
}

const HEAD_LIMIT: usize = 64 * 1024;

fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    let n = r.by_ref().take(HEAD_LIMIT as u64).read_until(b'\n', buf)?;
    if n > 0 && !buf.ends_with(b"\n") && n >= HEAD_LIMIT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(n)
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\r\n" || line == b"\n"
}

fn read_head(r: &mut impl BufRead, first: Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
    let mut lines = vec![first];
    let mut total = lines[0].len();
    let mut line = Vec::new();
    loop {
        let n = read_line(r, &mut line)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > HEAD_LIMIT {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        if is_blank(&line) {
            return Ok(lines);
        }
        lines.push(line.clone());
    }
}

fn parse_header(line: &[u8]) -> Option<(String, String)> {
    let s = String::from_utf8_lossy(line);
    let (k, v) = s.split_once(':')?;
    Some((k.trim().to_string(), v.trim().to_string()))
}

/// Read a chunked body; returns (wire bytes, decoded body).
fn read_chunked(r: &mut impl BufRead) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let (mut wire, mut body, mut line) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        if read_line(r, &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        wire.extend_from_slice(&line);
        let s = String::from_utf8_lossy(&line);
        let size_str = s.trim().split(';').next().unwrap_or("").trim().to_string();
        let size = usize::from_str_radix(&size_str, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            loop {
                if read_line(r, &mut line)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                wire.extend_from_slice(&line);
                if is_blank(&line) {
                    return Ok((wire, body));
                }
            }
        }
        let mut buf = vec![0u8; size + 2];
        r.read_exact(&mut buf)?;
        wire.extend_from_slice(&buf);
        body.extend_from_slice(&buf[..size]);
    }
}

fn read_request(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
) -> io::Result<Option<WireRequest>> {
    let mut line = Vec::new();
    loop {
        if read_line(r, &mut line)? == 0 {
            return Ok(None);
        }
        if !is_blank(&line) {
            break;
        }
    }
    let lines = read_head(r, line)?;
    let rl = String::from_utf8_lossy(&lines[0]).trim().to_string();
    let mut parts = rl.split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("HTTP/1.0").to_string(),
    );
    let headers: Vec<(String, String)> =
        lines[1..].iter().filter_map(|l| parse_header(l)).collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let chunked =
        get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let cl: usize = match get("content-length") {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?,
        None => 0,
    };
    let expect = get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if expect && (chunked || cl > 0) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        w.flush()?;
    }
    let (wire, body) = if chunked {
        read_chunked(r)?
    } else {
        let mut b = vec![0u8; cl];
        r.read_exact(&mut b)?;
        (b.clone(), b)
    };
    let mut forward = Vec::with_capacity(wire.len() + 512);
    forward.extend_from_slice(&lines[0]);
    for l in &lines[1..] {
        if parse_header(l).is_some_and(|(k, _)| k.eq_ignore_ascii_case("expect")) {
            continue;
        }
        forward.extend_from_slice(l);
    }
    forward.extend_from_slice(b"\r\n");
    forward.extend_from_slice(&wire);
    Ok(Some(WireRequest {
        method,
        target,
        version,
        headers,
        forward,
        body,
    }))
}

/// Read one full response from the backend; returns (raw bytes, connection must close).
fn read_response(r: &mut impl BufRead, head_request: bool) -> io::Result<(Vec<u8>, bool)> {
    let mut line = Vec::new();
    if read_line(r, &mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let lines = read_head(r, line)?;
    let status: u16 = String::from_utf8_lossy(&lines[0])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> =
        lines[1..].iter().filter_map(|l| parse_header(l)).collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut raw: Vec<u8> = lines.concat();
    raw.extend_from_slice(b"\r\n");
    let mut close = get("connection").is_some_and(|v| v.to_ascii_lowercase().contains("close"));
    if head_request || status / 100 == 1 || status == 204 || status == 304 {
        // no body
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        raw.extend(read_chunked(r)?.0);
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        let mut b = vec![0u8; n];
        r.read_exact(&mut b)?;
        raw.extend(b);
    } else {
        r.read_to_end(&mut raw)?;
        close = true;
    }
    Ok((raw, close))
}

fn handle_conn(sh: &Arc<Shared>, client: TcpStream) {
    let id = sh.register_conn(&client);
    let peer = client.peer_addr().ok();
    let _ = client.set_nodelay(true);
    let Ok(rd) = client.try_clone() else {
        sh.unregister_conn(id);
        return;
    };
    let mut reader = BufReader::new(rd);
    let mut writer = client;
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let req = match read_request(&mut reader, &mut writer) {
            Ok(Some(r)) => r,
            _ => break,
        };
        let endpoint = Endpoint::from_path(&req.target);
        let (fault, hang_gen) = sh.take_fault(endpoint);
        if fault == Some(Fault::Drop) {
            let headers = req
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            handlers::record_incoming(sh, &req.method, &req.target, headers, req.body, peer, fault);
            sh.unregister_conn(id);
            reset(writer);
            return;
        }
        let relay = (|| -> io::Result<(Vec<u8>, bool)> {
            let mut backend = TcpStream::connect_timeout(&sh.backend_addr, Duration::from_secs(5))?;
            let bid = sh.register_conn(&backend);
            let port = backend.local_addr()?.port();
            lock(&sh.pending).insert(
                port,
                Pending {
                    fault: fault.clone(),
                    hang_gen,
                    peer,
                },
            );
            let res = (|| {
                backend.write_all(&req.forward)?;
                backend.flush()?;
                read_response(
                    &mut BufReader::new(&backend),
                    req.method.eq_ignore_ascii_case("HEAD"),
                )
            })();
            sh.unregister_conn(bid);
            res
        })();
        let Ok((raw, backend_close)) = relay else {
            break;
        };
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        if fault == Some(Fault::DropAfterProcessing) {
            sh.unregister_conn(id);
            reset(writer);
            return;
        }
        if writer.write_all(&raw).and_then(|_| writer.flush()).is_err() {
            break;
        }
        if req.wants_close() || backend_close {
            let _ = writer.shutdown(std::net::Shutdown::Write);
            break;
        }
    }
    sh.unregister_conn(id);
}
