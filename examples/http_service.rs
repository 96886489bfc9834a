//! Two small blocking HTTP services on 127.0.0.1: `shop` handles `/api/order/...` in an entry
//! span named after its route and calls `stock` three times over ureq with
//! `TracingMiddleware`, which injects `traceparent`; `stock` continues the trace in its own
//! entry span. The tiny_http requests are read as carriers directly (feature `tiny_http`). The
//! console table shows the same sample trace id for the entry, exit and downstream operations,
//! and no sku in any operation's name.
//!
//! ```text
//! cargo run --example http_service
//! ```

use std::thread::JoinHandle;
use std::time::Duration;

use stardust_runtime::incoming::with_route;
use stardust_runtime::trace;
use stardust_runtime::ureq_tracing::TracingMiddleware;

/// Serves `n` requests with `handle`, which returns the status and body.
fn serve(
    n: usize,
    handle: impl Fn(&tiny_http::Request) -> (u16, String) + Send + 'static,
) -> (String, JoinHandle<()>) {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let thread = std::thread::spawn(move || {
        for _ in 0..n {
            match server.recv_timeout(Duration::from_secs(10)) {
                Ok(Some(req)) => {
                    let (status, body) = handle(&req);
                    let _ = req
                        .respond(tiny_http::Response::from_string(body).with_status_code(status));
                }
                _ => return,
            }
        }
    });
    (url, thread)
}

#[trace("stock/lookup")]
fn lookup(sku: &str) -> u32 {
    std::thread::sleep(Duration::from_millis(2));
    sku.len() as u32
}

#[trace("shop/price")]
fn price(count: u32) -> u32 {
    count * 7
}

fn main() {
    let guard = stardust_runtime::init().expect("stardust init");

    // stock: continues the caller's trace from the incoming headers.
    let (stock, stock_thread) = serve(3, |req| {
        let span = with_route("GET /stock/level/{sku}", "GET", req.url(), req);
        let sku = req.url().rsplit('/').next().unwrap_or("").to_owned();
        let n = lookup(&sku);
        span.finish(200);
        (200, n.to_string())
    });

    // shop: one entry span, three traced outgoing calls.
    let stock_url = stock.clone();
    let (shop, shop_thread) = serve(1, move |req| {
        let span = with_route("GET /api/order/{id}", "GET", req.url(), req);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .middleware(TracingMiddleware)
            .build()
            .into();
        let mut total = 0;
        for sku in [
            "sku-red-000000000000001",
            "sku-blue-00000000000002",
            "sku-green-0000000000003",
        ] {
            let mut resp = agent
                .get(format!("{stock_url}/stock/level/{sku}"))
                .call()
                .expect("call stock");
            total += resp
                .body_mut()
                .read_to_string()
                .unwrap()
                .parse::<u32>()
                .unwrap();
        }
        let body = price(total).to_string();
        span.finish(200);
        (200, body)
    });

    let mut resp = ureq::get(format!("{shop}/api/order/42"))
        .call()
        .expect("call shop");
    let body = resp.body_mut().read_to_string().unwrap();
    shop_thread.join().unwrap();
    stock_thread.join().unwrap();
    eprintln!("http_service: shop answered {body}; one trace id across shop and stock below");
    drop(guard);
}
