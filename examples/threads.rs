//! One trace across threads: a request's span captured on one thread and continued on others
//! with each of the runtime's four ways — `capture` + `attach`, `capture` + `child`,
//! `stardust_runtime::spawn_thread` and `stardust_runtime::wrap` (for a hand-rolled worker pool). Every
//! thread prints the trace id it sees; with no `StarServer` set, the console reporter prints the
//! per-operation table to stderr when the guard is dropped, and its "sample trace" column shows
//! the same trace id on every row but `job/unrelated` (a thread started with no context).
//!
//! ```text
//! cargo run --example threads
//! ```

use std::sync::mpsc;
use std::time::Duration;

use stardust_runtime::{TraceId, current_trace_id, trace};

/// A traced function, called on whichever thread the work lands on.
#[trace("job/resize", tag = "image={image}")]
fn resize(image: u32) -> Result<u32, String> {
    std::thread::sleep(Duration::from_millis(2));
    if image == 3 {
        Err(format!("image {image} is corrupt")) // one error, shown in the table
    } else {
        Ok(image * 100)
    }
}

/// Prints which trace the current thread is in, and returns it.
fn report(way: &str) -> Option<TraceId> {
    let id = current_trace_id();
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    match &id {
        Some(id) => eprintln!("threads: {way:<24} on {name:<10} trace {id}"),
        None => eprintln!("threads: {way:<24} on {name:<10} no trace"),
    }
    id
}

fn main() {
    let guard = stardust_runtime::init().expect("stardust init");
    let mut seen = Vec::new();

    {
        let _request = stardust_runtime::span("job/request");
        let root = report("root span").expect("a span is open");

        // 1. Capture here, attach there: everything on that thread while the guard lives is a
        //    child of `job/request`.
        let ctx = stardust_runtime::capture().expect("a span is open");
        let h = std::thread::Builder::new()
            .name("attached".into())
            .spawn(move || {
                let _attached = ctx.attach();
                let _step = stardust_runtime::span("job/download");
                let _ = resize(1);
                report("capture + attach")
            })
            .unwrap();
        seen.push(h.join().unwrap());

        // 2. Capture here, open exactly one child span there.
        let ctx = stardust_runtime::capture().expect("a span is open");
        let h = std::thread::Builder::new()
            .name("child".into())
            .spawn(move || {
                let _upload = ctx.child("job/upload");
                report("capture + child")
            })
            .unwrap();
        seen.push(h.join().unwrap());

        // 3. `stardust_runtime::spawn_thread`: std::thread::spawn that carries the current span.
        let h = stardust_runtime::spawn_thread(|| {
            let _ = resize(2);
            report("stardust_runtime::spawn_thread")
        });
        seen.push(h.join().unwrap());

        // 4. `wrap`: a closure that carries the current span, run later by a worker pool.
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() -> Option<TraceId> + Send>>();
        let (done_tx, done_rx) = mpsc::channel();
        let pool = std::thread::Builder::new()
            .name("pool-0".into())
            .spawn(move || {
                for task in rx {
                    done_tx.send(task()).unwrap();
                }
            })
            .unwrap();
        for image in [3, 4] {
            tx.send(Box::new(stardust_runtime::wrap(move || {
                let _ = resize(image);
                report("wrap (pool task)")
            })))
            .unwrap();
        }
        drop(tx);
        pool.join().unwrap();
        seen.extend(done_rx.iter());

        assert!(
            seen.iter().all(|t| t.as_ref() == Some(&root)),
            "every thread continues the request's trace"
        );
        eprintln!("threads: {} continuations, all in trace {root}", seen.len());
    }

    // A thread started with plain std::thread::spawn and no context starts its own trace.
    let other = std::thread::spawn(|| {
        let _alone = stardust_runtime::span("job/unrelated");
        current_trace_id()
    })
    .join()
    .unwrap();
    let other = other.map_or_else(|| "none".to_owned(), |t| t.to_string());
    eprintln!("threads: plain std::thread::spawn, no context: its own trace {other}");

    // Dropping the guard reports the last period: the table below.
    drop(guard);
}
