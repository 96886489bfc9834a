//! Context propagation through real HTTP on loopback, threads, and the header formats of
//! .NET (NewLife) peers.

use stardust_test_support::common;
use stardust_test_support::http::headers_of;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stardust_runtime::incoming::incoming;
use stardust_runtime::ureq_tracing::TracingMiddleware;
use stardust_runtime::{Config, SpanBuilderModel, SpanContext, SpanModel, TraceModel};
use stardust_test_support::common::Workers;

/// A blocking HTTP server on 127.0.0.1 that handles each request with `handler`, for `n`
/// requests. It waits for them as long as it takes (no deadline a slow machine could miss);
/// [`Workers::stop`] (once the test has had its answers) joins it and raises a panic of the
/// handler, and dropping it (a failing test) stops it, so it never serves into the next test.
fn serve(
    n: usize,
    handler: impl Fn(&tiny_http::Request) -> u16 + Send + 'static,
) -> (String, Workers) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let mut thread = Workers::new();
    thread.spawn(move |stop| {
        let mut served = 0;
        while served < n && !stop.load(Ordering::Relaxed) {
            if let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(20)) {
                let status = handler(&req);
                let _ =
                    req.respond(tiny_http::Response::from_string("ok").with_status_code(status));
                served += 1;
            }
        }
    });
    (url, thread)
}

fn traced_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .middleware(TracingMiddleware)
        .http_status_as_error(false)
        .build()
        .into()
}

fn samples(models: &[TraceModel]) -> HashMap<String, Vec<SpanModel>> {
    let mut out: HashMap<String, Vec<SpanModel>> = HashMap::new();
    for b in models.iter().flat_map(|m| &m.builders) {
        let SpanBuilderModel {
            name,
            samples,
            error_samples,
            ..
        } = b.clone();
        let e = out.entry(name).or_default();
        e.extend(samples.unwrap_or_default());
        e.extend(error_samples.unwrap_or_default());
    }
    out
}

fn start() -> (
    stardust_runtime::Guard,
    crossbeam_channel::Receiver<TraceModel>,
) {
    // A flush budget far above any scheduling delay: `flush()` is `Ok` as soon as the cut is
    // delivered, and then every model is with the test's channel.
    common::start(
        Config::new()
            .max_samples(100)
            .shutdown_timeout(Duration::from_secs(60)),
    )
}

#[test]
fn one_request_three_calls_three_parents_one_trace() {
    let _serial = common::serial();
    let (guard, rx) = start();

    // Backend: records the traceparent of each call and answers inside an entry span.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    let (backend, backend_thread) = serve(3, move |req| {
        let headers = headers_of(req);
        let tp = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        seen2.lock().unwrap().push(tp);
        let span = incoming(req.method().as_str(), req.url(), &headers);
        span.finish(200);
        200
    });

    // Front: one incoming request, three outgoing calls to the backend.
    let backend_url = backend.clone();
    let (front, front_thread) = serve(1, move |req| {
        let span = incoming(req.method().as_str(), req.url(), &headers_of(req));
        let agent = traced_agent();
        for i in 0..3 {
            let r = agent
                .get(format!("{backend_url}/inventory/check/sku-{i:020}"))
                .call()
                .unwrap();
            assert_eq!(r.status(), 200);
        }
        span.finish(200);
        200
    });

    // The caller: a W3C context of its own, sampled.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = ureq::get(format!("{front}/api/order/create?id=7"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The front answered: it made its three calls (answered by the backend) and ended its
    // span before; both servers are done.
    front_thread.stop();
    backend_thread.stop();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let parents: Vec<&str> = seen
        .iter()
        .map(|tp| {
            let f: Vec<&str> = tp.split('-').collect();
            assert_eq!(f.len(), 4, "{tp}");
            assert_eq!(f[0], "00");
            assert_eq!(f[1], caller_trace, "one trace across both services");
            assert_eq!(f[3], "01", "the caller's sampled flag is carried");
            f[2]
        })
        .collect();
    let mut distinct = parents.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "a new span id per outgoing call: {parents:?}"
    );

    assert!(guard.flush().is_ok());
    let by = samples(&common::drain(&rx));
    let entry = &by["/api/order"];
    assert_eq!(entry.len(), 1);
    assert_eq!(entry[0].trace_id, caller_trace);
    assert_eq!(entry[0].parent_id.as_deref(), Some(caller_span));
    let exits = &by[&format!("{backend}/inventory/check/{{id}}")]; // the sku left out
    assert_eq!(exits.len(), 3);
    for e in exits {
        assert_eq!(e.trace_id, caller_trace);
        assert_eq!(e.parent_id.as_deref(), Some(entry[0].id.as_str()));
        assert!(
            parents.contains(&e.id.as_str()),
            "the id sent is the exit span's"
        );
    }
    let backend_entries = &by["/inventory/check"];
    assert_eq!(backend_entries.len(), 3);
    for b in backend_entries {
        assert_eq!(b.trace_id, caller_trace);
        assert!(parents.contains(&b.parent_id.as_deref().unwrap()));
    }
}

#[test]
fn dotnet_headers_are_continued_and_bad_ones_start_a_new_trace() {
    let _serial = common::serial();
    let (guard, rx) = start();

    // NewLife 30-hex trace id in traceparent: continued verbatim.
    let newlife = "0a000005175410000012300a1e1092";
    let h = vec![(
        "TraceParent".to_string(),
        format!("00-{newlife}-0a0000051092002a-01"),
    )];
    let s = stardust_runtime::entry_span("nl", &h);
    assert_eq!(s.trace_id().unwrap().to_string(), newlife);
    let mut out: HashMap<String, String> = HashMap::new();
    s.inject(&mut out);
    assert!(out["traceparent"].starts_with(&format!("00-{newlife}-")));
    drop(s);

    // Request-Id: trace = first piece without `|`, parent = last piece (none when empty).
    let h = vec![("request-id".to_string(), "|abc123.1.2.".to_string())];
    let ctx = SpanContext::extract(&h).unwrap();
    assert_eq!(ctx.trace_id().to_string(), "abc123");
    assert_eq!(ctx.parent_id(), None);
    let h = vec![("Request-Id".to_string(), "|abc123.1_2".to_string())];
    drop(stardust_runtime::entry_span("rid", &h));

    // Invalid headers: a new trace, and the request goes on.
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
        "",
    ] {
        let h = vec![("traceparent".to_string(), bad.to_string())];
        let s = stardust_runtime::entry_span("bad", &h);
        assert!(s.is_recording());
        let t = s.trace_id().unwrap().to_string();
        assert_eq!(t.len(), 32);
        assert_ne!(t, "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    assert!(guard.flush().is_ok());
    let by = samples(&common::drain(&rx));
    assert_eq!(by["nl"][0].trace_id, newlife);
    assert_eq!(by["nl"][0].parent_id.as_deref(), Some("0a0000051092002a"));
    assert_eq!(by["rid"][0].trace_id, "abc123");
    assert_eq!(by["rid"][0].parent_id.as_deref(), Some("2"));
    assert_eq!(by["bad"].len(), 4);
    assert!(by["bad"].iter().all(|s| s.parent_id.is_none()));
}

#[test]
fn context_crosses_threads_by_capture_attach_spawn_and_wrap() {
    let _serial = common::serial();
    let (guard, rx) = start();
    let root = stardust_runtime::span("root");
    let root_id = root.span_id().unwrap().to_string();
    let trace = root.trace_id().unwrap().to_string();

    let ctx = stardust_runtime::capture().unwrap();
    assert!(ctx.is_sampled());
    std::thread::spawn(move || {
        let _a = ctx.attach();
        assert_eq!(
            stardust_runtime::current_span_id().unwrap().to_string(),
            ctx.span_id().unwrap().to_string()
        );
        drop(stardust_runtime::span("attached"));
    })
    .join()
    .unwrap();
    stardust_runtime::spawn_thread(|| drop(stardust_runtime::span("spawned")))
        .join()
        .unwrap();
    let f = stardust_runtime::wrap(|| drop(stardust_runtime::span("wrapped")));
    std::thread::spawn(f).join().unwrap();
    drop(root);

    assert!(guard.flush().is_ok());
    let by = samples(&common::drain(&rx));
    for name in ["attached", "spawned", "wrapped"] {
        let s = &by[name][0];
        assert_eq!(s.trace_id, trace, "{name}");
        assert_eq!(s.parent_id.as_deref(), Some(root_id.as_str()), "{name}");
        assert_eq!(s.trace_flag, 1, "{name} inherits the flag");
    }
}

#[test]
fn http_status_and_transport_errors_mark_spans() {
    let _serial = common::serial();
    let (guard, rx) = start();
    let (url, server) = serve(2, |req| {
        if req.url().starts_with("/missing") {
            404
        } else {
            503
        }
    });

    // A caller-set traceparent is never overwritten.
    let r = traced_agent()
        .get(format!("{url}/fail/now"))
        .header(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-00",
        )
        .call()
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = traced_agent()
        .get(format!("{url}/missing/page"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop();

    // Nothing listens here any more: a transport error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert!(
        traced_agent()
            .get(format!("http://{closed}/x"))
            .call()
            .is_err()
    );

    // Incoming: 404 abandons, 500 and 400 are errors, 200 is not.
    let no_headers: Vec<(String, String)> = Vec::new();
    incoming("GET", "/in/missing", &no_headers).finish(404);
    incoming("GET", "/in/broken", &no_headers).finish(500);
    incoming("GET", "/in/bad", &no_headers).finish(400);
    incoming("GET", "/in/fine", &no_headers).finish(200);

    assert!(guard.flush().is_ok());
    let models = common::drain(&rx);
    let b = |n: &str| {
        models
            .iter()
            .flat_map(|m| &m.builders)
            .find(|b| b.name == n)
            .cloned()
    };
    assert_eq!(b(&format!("{url}/fail/now")).unwrap().errors, 1);
    assert_eq!(b(&format!("{url}/missing/page")).unwrap().errors, 1);
    let refused = b(&format!("http://{closed}/x")).unwrap();
    assert_eq!((refused.total, refused.errors), (1, 1));
    assert!(b("/in/missing").is_none(), "404 is abandoned");
    let broken = b("/in/broken").unwrap();
    assert_eq!(
        broken.error_samples.unwrap()[0].error.as_deref(),
        Some("Http Error 500 /in/broken")
    );
    assert_eq!(b("/in/bad").unwrap().errors, 1);
    assert_eq!(b("/in/fine").unwrap().errors, 0);
}
