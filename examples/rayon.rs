//! Thread pools: four requests handled at once, each splitting CPU work over rayon's pool —
//! `par_iter().map` with `stardust_runtime::wrap_fn` and `rayon::scope` with
//! `SpanContext::in_scope`. The pool's threads serve all four requests interleaved, yet every
//! chunk's span lands in its own request's trace, as a child of that request's span. The
//! example checks it from the reports and exits non-zero if any span is misplaced; the
//! console table is printed as well.
//!
//! ```text
//! cargo run --example rayon
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use stardust_runtime::{Config, Reporter, TraceModel, incoming, trace};

const REQUESTS: u64 = 4;
const CHUNKS: usize = 16;
const PARTS: usize = 3;

#[trace("report/chunk")]
fn sum_chunk(chunk: &[u64]) -> u64 {
    chunk.iter().map(|x| x * x % 7919).sum()
}

/// One request: an entry span named after its route, the work split over the pool.
fn handle_report(n: u64) -> (String, String, u64) {
    let path = format!("/api/report/{n}");
    let mut span = incoming::with_route(
        "GET /api/report/{n}",
        "GET",
        &path,
        &Vec::<(String, String)>::new(),
    );
    let trace = span.guard().trace_id().expect("running").to_string();
    let id = span.guard().span_id().expect("running").to_string();

    let data: Vec<u64> = (0..CHUNKS as u64 * 1000).map(|x| x + n).collect();
    // `par_iter().map` takes an `Fn`, called on any pool thread: `wrap_fn` runs each call under
    // the request's span.
    let sums: Vec<u64> = data
        .par_chunks(1000)
        .map(stardust_runtime::wrap_fn(sum_chunk))
        .collect();
    // `rayon::scope`: capture the context once, attach it in each job.
    let ctx = stardust_runtime::capture().expect("inside the request's span");
    rayon::scope(|s| {
        for part in 0..PARTS {
            let ctx = &ctx;
            s.spawn(move |_| {
                ctx.in_scope(|| {
                    let mut merge = stardust_runtime::span("report/merge");
                    merge.set_value(part as i64);
                })
            });
        }
    });
    span.finish(200);
    (trace, id, sums.iter().sum())
}

/// Keeps every report, to check the traces after the run.
struct Keep(Arc<Mutex<Vec<TraceModel>>>);

impl Reporter for Keep {
    fn report(&mut self, model: &TraceModel) {
        self.0.lock().unwrap().push(model.clone());
    }
}

fn main() {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let guard = stardust_runtime::init_with(
        Config::from_env()
            .max_samples(1000) // every span a sample, to check each one
            .console(true)
            .reporter(Keep(kept.clone())),
    )
    .expect("stardust init");

    // Four requests at once, as a server's workers would handle them.
    let handled: Vec<(String, String, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=REQUESTS)
            .map(|n| s.spawn(move || handle_report(n)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(guard); // reports the last period (and prints the table)

    // Which request each span id belongs to.
    let requests: HashMap<&str, &str> = handled
        .iter()
        .map(|(trace, id, _)| (id.as_str(), trace.as_str()))
        .collect();
    let models = kept.lock().unwrap();
    let mut children: HashMap<(&str, &str), usize> = HashMap::new();
    let mut failures = Vec::new();
    for b in models.iter().flat_map(|m| &m.builders) {
        if b.name != "report/chunk" && b.name != "report/merge" {
            continue;
        }
        for s in b.samples.iter().flatten() {
            let parent = s.parent_id.as_deref().unwrap_or("none");
            match requests.get(parent) {
                Some(trace) if *trace == s.trace_id => {
                    *children.entry((b.name.as_str(), parent)).or_default() += 1;
                }
                _ => failures.push(format!(
                    "{} span {} in trace {} with parent {parent}: not under its request",
                    b.name, s.id, s.trace_id
                )),
            }
        }
    }
    for (_, id, _) in &handled {
        for (name, want) in [("report/chunk", CHUNKS), ("report/merge", PARTS)] {
            let got = children.get(&(name, id.as_str())).copied().unwrap_or(0);
            if got != want {
                failures.push(format!("request {id}: {got} {name} spans, want {want}"));
            }
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("rayon: {f}");
        }
        std::process::exit(1);
    }
    eprintln!(
        "rayon: {REQUESTS} requests, each with its {CHUNKS} chunk and {PARTS} merge spans in its \
         own trace (sums {:?})",
        handled.iter().map(|h| h.2).collect::<Vec<_>>()
    );
}
