//! Names that stay bounded, trees that stay whole: a tiny_http service with four routes, built
//! with the helpers the guide shows (`incoming::with_route`, the tiny_http carrier,
//! `TracingMiddleware` with and without a naming function, `wrap_fn` and `in_scope` for rayon),
//! driven with a few hundred requests, reports one operation per route — not one per id — and
//! every span of a request in that request's trace. Also: what an `IncomingSpan` dropped
//! without a status records.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayon::prelude::*;
use stardust_runtime::incoming::{self, DROPPED_WITHOUT_STATUS};
use stardust_runtime::testing;
use stardust_runtime::ureq_tracing::TracingMiddleware;
use stardust_runtime::{Config, SpanModel};
use stardust_test_support::common::Workers;

const REQUESTS: usize = 320;
const CHUNKS: usize = 6;

/// A tiny_http server on 127.0.0.1 served by `workers` threads until it is stopped or dropped
/// (so a failing test does not leave it serving, and tracing, into the next test).
struct Server {
    url: String,
    workers: Workers,
}

impl Server {
    fn start(
        workers: usize,
        handle: impl Fn(&tiny_http::Request) -> (u16, String) + Send + Sync + 'static,
    ) -> Server {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let handle = Arc::new(handle);
        let mut threads = Workers::new();
        for _ in 0..workers {
            let (server, handle) = (server.clone(), handle.clone());
            threads.spawn(move |stop| {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(20)) {
                        let (status, body) = handle(&req);
                        let _ = req.respond(
                            tiny_http::Response::from_string(body).with_status_code(status),
                        );
                    }
                }
            });
        }
        Server {
            url,
            workers: threads,
        }
    }

    /// Stops and joins the workers; a handler's panic is raised here.
    fn stop(self) {
        self.workers.stop();
    }
}

/// The service's router: the route template that matches, as the span's name.
fn route(method: &str, path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match (method, segs.as_slice()) {
        ("GET", ["api", "orders", _]) => "GET /api/orders/{id}",
        ("GET", ["api", "report", _]) => "GET /api/report/{n}",
        ("POST", ["api", "pay", _]) => "POST /api/pay/{id}",
        ("GET", ["api", "users", _]) => "GET /api/users/{id}",
        _ => return None,
    })
}

fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

#[test]
fn four_routes_many_ids_four_operations_whole_trees() {
    let traceparents_seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = traceparents_seen.clone();
    let mut sent: HashMap<&'static str, usize> = HashMap::new();
    let mut pay_failures = 0;

    // A flush budget far above any scheduling delay: a few hundred requests' spans are cut and
    // reported before `record_with` returns, on a loaded machine too.
    let config = Config::new()
        .max_samples(1000)
        .max_errors(1000)
        .shutdown_timeout(Duration::from_secs(60));
    let rec = testing::record_with(config, || {
        // Downstream, untraced: answers and keeps the traceparent each call carried.
        let downstream = Server::start(2, move |req| {
            let tp = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("traceparent"))
                .map(|h| h.value.as_str().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(tp);
            (200, last_segment(req.url()).len().to_string())
        });

        // Calls to the stock service named by route; calls elsewhere by the default name.
        let named: ureq::Agent = ureq::Agent::config_builder()
            .middleware(TracingMiddleware::with_name(|req| {
                if req.uri().path().starts_with("/stock/") {
                    "stock: GET /stock/{sku}".into()
                } else {
                    stardust_runtime::ureq_tracing::outgoing_name(&req.uri().to_string())
                }
            }))
            .build()
            .into();
        let default: ureq::Agent = ureq::Agent::config_builder()
            .middleware(TracingMiddleware)
            .build()
            .into();
        let down = downstream.url.clone();

        let service = Server::start(2, move |req| {
            let method = req.method().as_str().to_owned();
            let url = req.url().to_owned();
            let path = url.split('?').next().unwrap_or("").to_owned();
            let Some(name) = route(&method, &path) else {
                let span = incoming::incoming(&method, &url, req);
                span.finish(404);
                return (404, String::new());
            };
            let span = incoming::with_route(name, &method, &url, req);
            let id = last_segment(&path).to_owned();
            let (status, body) = match name {
                "GET /api/orders/{id}" => {
                    let mut resp = named
                        .get(format!("{down}/stock/sku-{id}"))
                        .call()
                        .expect("stock");
                    (200, resp.body_mut().read_to_string().unwrap())
                }
                "GET /api/users/{id}" => {
                    let mut resp = default
                        .get(format!("{down}/users/{id}/profile"))
                        .call()
                        .expect("users");
                    (200, resp.body_mut().read_to_string().unwrap())
                }
                "GET /api/report/{n}" => {
                    let n: u64 = id.parse().unwrap();
                    let data: Vec<u64> = (0..CHUNKS as u64 * 50).map(|x| x * n).collect();
                    // `par_iter().map` needs an `Fn`: `wrap_fn`.
                    let sums: Vec<u64> = data
                        .par_chunks(50)
                        .map(stardust_runtime::wrap_fn(|chunk: &[u64]| {
                            let _span = stardust_runtime::span("report/chunk");
                            chunk.iter().sum::<u64>()
                        }))
                        .collect();
                    // `rayon::scope`: one captured context, `in_scope` in each job.
                    let ctx = stardust_runtime::capture().expect("inside the request");
                    rayon::scope(|s| {
                        for _ in 0..2 {
                            let ctx = &ctx;
                            s.spawn(move |_| {
                                ctx.in_scope(|| drop(stardust_runtime::span("report/render")))
                            });
                        }
                    });
                    (200, sums.iter().sum::<u64>().to_string())
                }
                "POST /api/pay/{id}" => {
                    let n: u64 = id.parse().unwrap();
                    if n % 10 == 0 {
                        (500, "declined".to_owned())
                    } else {
                        (200, "paid".to_owned())
                    }
                }
                _ => unreachable!(),
            };
            span.finish(status);
            (status, body)
        });

        // The clients: plain (untraced) ureq, ids all different.
        let client: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        for i in 0..REQUESTS {
            let base = &service.url;
            let (key, call) = match i % 5 {
                0 => (
                    "orders",
                    client.get(format!("{base}/api/orders/{}", 1000 + i)).call(),
                ),
                1 => (
                    "report",
                    client.get(format!("{base}/api/report/{}", i)).call(),
                ),
                2 => {
                    if (i / 5) % 10 == 0 {
                        pay_failures += 1;
                    }
                    let call = client.post(format!("{base}/api/pay/{}", i / 5)).send("");
                    ("pay", call)
                }
                3 => (
                    "users",
                    client
                        .get(format!(
                            "{base}/api/users/3f2a1c9e-1d2b-4c3d-9e8f-{:012x}",
                            i
                        ))
                        .call(),
                ),
                _ => ("missing", client.get(format!("{base}/nope/{i}")).call()),
            };
            let status = call.expect("service answers").status().as_u16();
            assert!(matches!(status, 200 | 404 | 500), "status {status}");
            *sent.entry(key).or_default() += 1;
        }
        service.stop();
        downstream.stop();
    });

    let names: BTreeSet<String> = rec.names().into_iter().collect();
    let users_out = names
        .iter()
        .find(|n| n.starts_with("http://127.0.0.1:"))
        .expect("the default-named outgoing call")
        .clone();
    let expected: BTreeSet<String> = [
        "GET /api/orders/{id}",
        "GET /api/report/{n}",
        "POST /api/pay/{id}",
        "GET /api/users/{id}",
        "stock: GET /stock/{sku}",
        "report/chunk",
        "report/render",
        // The payment errors, in Stardust's exception statistics.
        "ex:String",
    ]
    .into_iter()
    .map(String::from)
    .chain([users_out.clone()])
    .collect();
    assert_eq!(names, expected, "one operation per route, none per id");
    assert!(
        users_out.ends_with("/users/{id}/profile"),
        "default outgoing name without the id: {users_out}"
    );

    // Counts: every request of a route under its route's name; 404s not recorded.
    assert_eq!(rec.count("GET /api/orders/{id}"), sent["orders"] as u64);
    assert_eq!(rec.count("GET /api/report/{n}"), sent["report"] as u64);
    assert_eq!(rec.count("POST /api/pay/{id}"), sent["pay"] as u64);
    assert_eq!(rec.count("GET /api/users/{id}"), sent["users"] as u64);
    assert_eq!(rec.count("stock: GET /stock/{sku}"), sent["orders"] as u64);
    assert_eq!(rec.count(&users_out), sent["users"] as u64);
    assert_eq!(rec.count("report/chunk"), (sent["report"] * CHUNKS) as u64);
    assert_eq!(rec.count("report/render"), (sent["report"] * 2) as u64);
    assert_eq!(rec.errors("POST /api/pay/{id}"), pay_failures);
    assert_eq!(
        rec.error_samples("POST /api/pay/{id}")[0].error.as_deref(),
        Some("Http Error 500 POST /api/pay/{id}")
    );
    let incoming_total: u64 = rec
        .builders()
        .iter()
        .filter(|b| b.name.starts_with("GET /") || b.name.starts_with("POST /"))
        .map(|b| b.total as u64)
        .sum();
    assert_eq!(incoming_total as usize, REQUESTS - sent["missing"]);

    // Trees: every chunk, render and outgoing span is a child of its own request's span.
    let requests: HashMap<&str, &SpanModel> = rec
        .spans()
        .into_iter()
        .filter(|(n, _)| n.starts_with("GET /") || n.starts_with("POST /"))
        .map(|(_, s)| (s.id.as_str(), s))
        .collect();
    assert_eq!(
        requests.len(),
        REQUESTS - sent["missing"],
        "every request sampled"
    );
    let mut children: HashMap<&str, usize> = HashMap::new();
    for (name, span) in rec.spans() {
        if requests.contains_key(span.id.as_str()) {
            continue;
        }
        let parent = span.parent_id.as_deref().expect("a child has a parent");
        let request = requests
            .get(parent)
            .unwrap_or_else(|| panic!("{name} {span:?}: parent is no request"));
        assert_eq!(
            span.trace_id, request.trace_id,
            "{name} in its request's trace"
        );
        *children.entry(name).or_default() += 1;
        match name {
            "report/chunk" | "report/render" => assert!(
                request
                    .tag
                    .as_deref()
                    .unwrap()
                    .starts_with("GET /api/report/"),
                "{name} under {:?}",
                request.tag
            ),
            "stock: GET /stock/{sku}" => {
                assert!(
                    request
                        .tag
                        .as_deref()
                        .unwrap()
                        .starts_with("GET /api/orders/")
                )
            }
            // A failed payment's exception statistic, under the payment request.
            "ex:String" => assert!(
                request
                    .tag
                    .as_deref()
                    .unwrap()
                    .starts_with("POST /api/pay/")
            ),
            _ => assert_eq!(name, users_out),
        }
    }
    assert_eq!(children["report/chunk"], sent["report"] * CHUNKS);
    assert_eq!(children["report/render"], sent["report"] * 2);

    // The downstream got each exit span's id in `traceparent`.
    let exit_ids: HashSet<String> = rec
        .samples("stock: GET /stock/{sku}")
        .iter()
        .chain(rec.samples(&users_out).iter())
        .map(|s| s.id.clone())
        .collect();
    let seen = traceparents_seen.lock().unwrap();
    assert_eq!(seen.len(), sent["orders"] + sent["users"]);
    for tp in seen.iter() {
        let parent = tp.split('-').nth(2).unwrap_or_default();
        assert!(
            exit_ids.contains(parent),
            "traceparent {tp:?} names an exit span"
        );
    }
}

#[test]
fn an_incoming_span_dropped_without_a_status_is_an_error() {
    let no_headers: Vec<(String, String)> = Vec::new();
    let rec = testing::record(|| {
        let span = incoming::with_route("GET /dropped", "GET", "/dropped", &no_headers);
        drop(span);
        // An error set by the handler is kept.
        let mut span = incoming::with_route("GET /own-error", "GET", "/own-error", &no_headers);
        span.guard().set_error("bad input");
        drop(span);
        // A panic records `panicked`.
        let _ = std::panic::catch_unwind(|| {
            let _span = incoming::with_route("GET /panics", "GET", "/panics", &no_headers);
            panic!("handler bug");
        });
        // Finished spans are what their status says.
        incoming::with_route("GET /ok", "GET", "/ok", &no_headers).finish(200);
        incoming::with_route("GET /gone", "GET", "/gone", &no_headers).finish(404);
    });
    assert_eq!(
        rec.names(),
        [
            "GET /dropped",
            "GET /ok",
            "GET /own-error",
            "GET /panics",
            "ex:String",
            "ex:panic"
        ]
    );
    let error = |name: &str| {
        assert_eq!((rec.count(name), rec.errors(name)), (1, 1), "{name}");
        rec.error_samples(name)[0].error.clone().unwrap()
    };
    assert_eq!(error("GET /dropped"), DROPPED_WITHOUT_STATUS);
    assert_eq!(error("GET /own-error"), "bad input");
    assert_eq!(error("GET /panics"), "panicked");
    assert_eq!(rec.errors("GET /ok"), 0);
}

#[test]
fn default_names_leave_ids_out() {
    let no_headers: Vec<(String, String)> = Vec::new();
    let rec = testing::record(|| {
        for i in 0..200 {
            let span = incoming::incoming("GET", &format!("/items/{i}/detail"), &no_headers);
            span.finish(200);
            let uuid = format!("/files/3f2a1c9e-1d2b-4c3d-9e8f-{i:012x}");
            incoming::incoming("GET", &uuid, &no_headers).finish(200);
        }
    });
    assert_eq!(rec.names(), ["/files/{id}", "/items/{id}"]);
    assert_eq!(rec.count("/items/{id}"), 200);
    assert_eq!(
        stardust_runtime::template_path("/orders/0af7651916cd43dd/lines/7"),
        "/orders/{id}/lines/{id}"
    );
}

/// The children of an abandoned span (a 404) are kept and re-parented to its parent, in
/// Stardust samples as in SkyWalking segments; the abandoned span itself is not counted.
#[test]
fn children_of_an_abandoned_request_take_its_parent() {
    let no_headers: Vec<(String, String)> = Vec::new();
    let rec = testing::record(|| {
        let _outer = stardust_runtime::span("job/poll");
        let mut req = incoming::with_route("GET /item/{id}", "GET", "/item/7", &no_headers);
        {
            let _lookup = stardust_runtime::span("db/lookup");
        }
        req.guard();
        req.finish(404);
    });
    assert_eq!(rec.count("GET /item/{id}"), 0, "abandoned: not counted");
    assert_eq!(rec.count("db/lookup"), 1, "its child is kept");
    let outer = rec.samples("job/poll")[0];
    let lookup = rec.samples("db/lookup")[0];
    assert_eq!(lookup.parent_id.as_deref(), Some(outer.id.as_str()));
    assert_eq!(lookup.trace_id, outer.trace_id);
}
