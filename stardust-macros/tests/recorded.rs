//! What `#[trace]` records, end to end: the real runtime runs with a reporter that keeps
//! every report, and each check reads the span the expansion produced — its name, its
//! tag, its error text, its parent.
//!
//! The runtime is process-wide, so everything runs in one test, one scenario after the
//! other, each under its own operation names.
#![deny(warnings, clippy::all)]

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use stardust_runtime::{Config, Reporter, SpanBuilderModel, TraceModel, trace};

#[derive(Clone, Default)]
struct Keep(Arc<Mutex<Vec<TraceModel>>>);

impl Reporter for Keep {
    fn report(&mut self, model: &TraceModel) {
        self.0.lock().unwrap().push(model.clone());
    }
}

impl Keep {
    /// The builder reported for `name` since the last call, after a flush.
    fn take(&self, name: &str) -> Option<SpanBuilderModel> {
        assert!(stardust_runtime::flush().is_ok(), "flush timed out");
        let mut models = self.0.lock().unwrap();
        let found = models
            .iter()
            .flat_map(|m| &m.builders)
            .find(|b| b.name == name)
            .cloned();
        models.clear();
        found
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[derive(Debug)]
struct DebugOnly;

#[trace]
fn default_name() -> u32 {
    1
}

#[trace("sync/tagged", tag = "user={user_id} q={query:?}")]
fn tagged(user_id: u64, query: &str) -> usize {
    query.len() + usize::try_from(user_id).unwrap()
}

#[trace("sync/result")]
fn fallible(fail: bool) -> Result<u32, std::io::Error> {
    if fail {
        return Err(std::io::Error::other("disk full"));
    }
    Ok(1)
}

#[trace("sync/debug-error")]
fn debug_error() -> Result<(), DebugOnly> {
    Err(DebugOnly)
}

#[trace("sync/outer")]
fn outer() -> Result<u32, String> {
    Ok(inner() + 1)
}

#[trace("sync/inner")]
fn inner() -> u32 {
    1
}

#[trace("async/result", tag = "input={input}")]
async fn parse(input: &str) -> Result<u32, std::num::ParseIntError> {
    let n = input.parse()?;
    Ok(n)
}

#[trace("async/outer")]
async fn async_outer() -> u32 {
    async_inner().await + 1
}

#[trace("async/inner")]
async fn async_inner() -> u32 {
    inner()
}

trait Store {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send + 'a>>;
}

struct Empty;

impl Store for Empty {
    #[trace("async-trait/load", tag = "key={key}")]
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send + 'a>> {
        Box::pin(async move { Err(format!("no {key}")) })
    }
}

#[test]
fn spans_carry_what_the_attribute_says() {
    let keep = Keep::default();
    let _guard = stardust_runtime::init_with(
        Config::new()
            .console(false)
            .max_samples(100)
            .reporter(keep.clone())
            // A flush budget far above any scheduling delay: `flush()` is `Ok` as soon as the
            // cut is delivered, on a loaded machine too.
            .shutdown_timeout(std::time::Duration::from_secs(60)),
    )
    .unwrap();

    // The default name is the function's path.
    assert_eq!(default_name(), 1);
    let b = keep.take("recorded::default_name").expect("default name");
    assert_eq!((b.total, b.errors), (1, 0));

    // The tag is formatted from the arguments.
    assert_eq!(tagged(7, "ab"), 9);
    let b = keep.take("sync/tagged").expect("tagged");
    let sample = &b.samples.expect("a sample")[0];
    assert_eq!(sample.tag.as_deref(), Some(r#"user=7 q="ab""#));
    assert_eq!(sample.error, None);

    // An `Err` is recorded with its Display text; an `Ok` is not an error.
    assert!(fallible(true).is_err());
    assert_eq!(fallible(false).unwrap(), 1);
    let b = keep.take("sync/result").expect("result");
    assert_eq!((b.total, b.errors), (2, 1));
    let error = &b.error_samples.expect("an error sample")[0];
    assert_eq!(error.error.as_deref(), Some("disk full"));

    // Without Display, the Debug text.
    assert!(debug_error().is_err());
    let b = keep.take("sync/debug-error").expect("debug error");
    let error = &b.error_samples.expect("an error sample")[0];
    assert_eq!(error.error.as_deref(), Some("DebugOnly"));

    // A span opened inside a traced body is its child, also through the Result wrapper.
    assert_eq!(outer(), Ok(2));
    assert!(stardust_runtime::flush().is_ok());
    let models = std::mem::take(&mut *keep.0.lock().unwrap());
    let find = |name: &str| {
        models
            .iter()
            .flat_map(|m| &m.builders)
            .find(|b| b.name == name)
            .and_then(|b| b.samples.clone())
            .unwrap_or_else(|| panic!("no sample of {name}"))[0]
            .clone()
    };
    let (o, i) = (find("sync/outer"), find("sync/inner"));
    assert_eq!(i.parent_id.as_deref(), Some(o.id.as_str()));
    assert_eq!(i.trace_id, o.trace_id);

    // Async: the error and tag land on the instrumented span.
    assert!(block_on(parse("x")).is_err());
    assert_eq!(block_on(parse("5")), Ok(5));
    let b = keep.take("async/result").expect("async result");
    assert_eq!((b.total, b.errors), (2, 1));
    let error = &b.error_samples.expect("an error sample")[0];
    assert_eq!(
        error.error.as_deref(),
        Some("invalid digit found in string")
    );
    assert_eq!(error.tag.as_deref(), Some("input=x"));

    // Async nesting: the inner future's span, and a sync span inside it, are children.
    assert_eq!(block_on(async_outer()), 2);
    assert!(stardust_runtime::flush().is_ok());
    let models = std::mem::take(&mut *keep.0.lock().unwrap());
    let find = |name: &str| {
        models
            .iter()
            .flat_map(|m| &m.builders)
            .find(|b| b.name == name)
            .and_then(|b| b.samples.clone())
            .unwrap_or_else(|| panic!("no sample of {name}"))[0]
            .clone()
    };
    let (o, i, s) = (find("async/outer"), find("async/inner"), find("sync/inner"));
    assert_eq!(i.parent_id.as_deref(), Some(o.id.as_str()));
    assert_eq!(s.parent_id.as_deref(), Some(i.id.as_str()));

    // The async-trait shape: the boxed future is the span, with its error and tag.
    let fut = Empty.load("k");
    assert!(
        keep.take("async-trait/load").is_none(),
        "span opened before the first poll"
    );
    assert_eq!(block_on(fut), Err("no k".to_owned()));
    let b = keep.take("async-trait/load").expect("async-trait");
    assert_eq!((b.total, b.errors), (1, 1));
    let error = &b.error_samples.expect("an error sample")[0];
    assert_eq!(error.error.as_deref(), Some("no k"));
    assert_eq!(error.tag.as_deref(), Some("key=k"));
}
