//! Every function shape `#[trace]` supports, compiled with every lint denied
//! (`cargo clippy --all-targets -- -D warnings` lints this file together with the
//! expansion) and run to check that the instrumented functions still behave as
//! written: same values, same early returns, same `?` conversions.
#![deny(warnings, clippy::all, clippy::pedantic)]
#![allow(clippy::unused_async, clippy::unnecessary_wraps)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use stardust_runtime::trace;

/// Polls a future to completion on this thread (the futures here never wait).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = Box::pin(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[derive(Debug, PartialEq)]
struct MyError(String);

impl fmt::Display for MyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "my error: {}", self.0)
    }
}

impl From<std::num::ParseIntError> for MyError {
    fn from(e: std::num::ParseIntError) -> Self {
        Self(e.to_string())
    }
}

// ---- free functions -------------------------------------------------------------

#[trace]
fn plain() {}

#[trace("named")]
fn positional_name(x: u32) -> u32 {
    x + 1
}

#[trace(name = "named", tag = "x={x} y={y:?}")]
fn name_and_tag(x: u32, y: &str) -> String {
    format!("{x}{y}")
}

#[trace(tag = "constant {{braces}}")]
fn plain_tag() -> u8 {
    7
}

#[trace(tag = "w={value:>width$} p={value:.prec$}", name = "spec")]
fn tag_with_spec(value: f64, width: usize, prec: usize) -> f64 {
    let _ = (width, prec);
    value
}

#[trace]
fn early_return(x: u32) -> u32 {
    if x > 10 {
        return 10;
    }
    x
}

#[trace(tag = "input={input}")]
fn parse(input: &str) -> Result<u32, MyError> {
    let n: u32 = input.parse()?;
    if n == 0 {
        return Err(MyError("zero".into()));
    }
    Ok(n * 2)
}

#[trace]
fn io_result(fail: bool) -> std::io::Result<()> {
    if fail {
        Err(std::io::Error::other("boom"))
    } else {
        Ok(())
    }
}

#[trace]
fn result_with_impl_trait(n: u32) -> Result<impl fmt::Display, MyError> {
    Ok(n)
}

#[trace]
fn returns_impl_trait(n: u32) -> impl Iterator<Item = u32> {
    0..n
}

#[trace]
fn takes_impl_trait(items: impl IntoIterator<Item = u32>) -> u32 {
    items.into_iter().sum()
}

#[trace(tag = "a={a} b={b}")]
fn pattern_params((a, b): (u32, u32), mut c: u32, _: u8) -> u32 {
    c += a + b;
    c
}

#[trace]
fn generic<'a, T, U: Clone>(t: &'a T, u: &U) -> (&'a T, U)
where
    T: fmt::Debug + ?Sized,
{
    (t, u.clone())
}

#[trace]
fn generic_result<T: std::str::FromStr>(s: &str) -> Result<T, T::Err> {
    s.parse()
}

/// A doc comment that stays.
#[trace]
#[must_use]
#[inline]
pub fn attributes_kept() -> u32 {
    #![allow(clippy::let_and_return)]
    let x = 3;
    x
}

#[trace]
unsafe fn unsafe_fn(p: *const u32) -> u32 {
    unsafe { *p }
}

#[trace]
unsafe fn unsafe_result(p: *const u32) -> Result<u32, MyError> {
    Ok(unsafe { *p })
}

#[trace]
extern "C" fn extern_c(x: u32) -> u32 {
    x * 3
}

#[trace]
pub(crate) fn diverges() -> ! {
    panic!("diverges")
}

// ---- methods --------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct Counter {
    n: u32,
    items: Vec<u32>,
}

impl Counter {
    #[trace(tag = "self={self:?}")]
    fn by_ref(&self) -> u32 {
        self.n
    }

    #[trace]
    fn by_mut(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    #[trace]
    fn by_value(self) -> u32 {
        self.n
    }

    #[trace]
    fn by_mut_value(mut self) -> u32 {
        self.n += 10;
        self.n
    }

    #[trace]
    #[allow(clippy::boxed_local)] // the user's own code, not the expansion
    fn boxed(self: Box<Self>) -> u32 {
        self.n
    }

    #[trace]
    fn mut_ref_result(&mut self, i: usize) -> Result<&mut u32, MyError> {
        self.items
            .get_mut(i)
            .ok_or_else(|| MyError(format!("no item {i}")))
    }

    #[trace]
    fn ref_result(&self) -> Result<&[u32], MyError> {
        Ok(&self.items)
    }

    #[trace]
    fn self_type() -> Result<Self, MyError> {
        Ok(Self::default())
    }

    #[trace]
    async fn async_by_ref(&self) -> u32 {
        self.n
    }

    #[trace]
    async fn async_by_mut(&mut self) -> Result<&mut Vec<u32>, MyError> {
        self.items.push(1);
        Ok(&mut self.items)
    }

    #[trace]
    async fn async_by_value(self) -> u32 {
        self.n
    }
}

trait Greeter {
    fn greet(&self, name: &str) -> String;

    #[trace]
    fn default_greet(&self) -> String {
        self.greet("world")
    }

    #[trace(tag = "name={name}")]
    async fn async_default(&self, name: &str) -> Result<String, MyError> {
        if name.is_empty() {
            return Err(MyError("empty".into()));
        }
        Ok(self.greet(name))
    }
}

struct English;

impl Greeter for English {
    #[trace]
    fn greet(&self, name: &str) -> String {
        format!("hello {name}")
    }
}

// ---- async ----------------------------------------------------------------------

#[trace]
async fn async_unit() {}

#[trace(tag = "x={x}")]
async fn async_value(x: u32) -> u32 {
    async_unit().await;
    x + 1
}

#[trace]
async fn async_question_mark(input: &str) -> Result<u32, MyError> {
    let n: u32 = input.parse()?;
    Ok(n)
}

#[trace]
async fn async_early_return(x: u32) -> Option<u32> {
    if x == 0 {
        return None;
    }
    let y = x.checked_sub(1)?;
    Some(y)
}

#[trace]
async fn async_impl_trait(n: u32) -> impl fmt::Display {
    n
}

#[trace]
async fn async_just_await() -> u32 {
    async_value(1).await
}

#[trace]
async fn async_generic<T: Send + fmt::Debug>(t: T) -> String {
    format!("{t:?}")
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

// ---- the async-trait shape --------------------------------------------------------

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait Store {
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u32, MyError>> + Send + 'a>>;
    fn count(&self) -> BoxFuture<'_, usize>;
}

struct MemStore(Vec<(String, u32)>);

impl Store for MemStore {
    #[trace(tag = "key={key}")]
    fn load<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<u32, MyError>> + Send + 'a>> {
        Box::pin(async move {
            let __self = self;
            let key = key;
            let __ret: Result<u32, MyError> = {
                for (k, v) in &__self.0 {
                    if k == key {
                        return Ok(*v);
                    }
                }
                Err(MyError(format!("missing {key}")))
            };
            #[allow(unreachable_code)]
            __ret
        })
    }

    #[trace]
    fn count(&self) -> BoxFuture<'_, usize> {
        Box::pin(async move { self.0.len() })
    }
}

// ---- tests ----------------------------------------------------------------------

#[test]
fn free_functions_behave_as_written() {
    plain();
    assert_eq!(positional_name(1), 2);
    assert_eq!(name_and_tag(1, "a"), "1a");
    assert_eq!(plain_tag(), 7);
    assert!((tag_with_spec(1.5, 4, 2) - 1.5).abs() < f64::EPSILON);
    assert_eq!(early_return(20), 10);
    assert_eq!(early_return(3), 3);
    assert_eq!(parse("21"), Ok(42));
    assert_eq!(parse("0"), Err(MyError("zero".into())));
    assert_eq!(
        parse("x"),
        Err(MyError("invalid digit found in string".into()))
    );
    assert!(io_result(true).is_err());
    assert!(io_result(false).is_ok());
    assert_eq!(result_with_impl_trait(5).unwrap().to_string(), "5");
    assert_eq!(returns_impl_trait(3).sum::<u32>(), 3);
    assert_eq!(takes_impl_trait(vec![1, 2, 3]), 6);
    assert_eq!(pattern_params((1, 2), 3, 0), 6);
    assert_eq!(generic("str", &5u8), ("str", 5u8));
    assert_eq!(generic_result::<u8>("7"), Ok(7));
    assert!(generic_result::<u8>("300").is_err());
    assert_eq!(attributes_kept(), 3);
    let x = 9;
    assert_eq!(unsafe { unsafe_fn(&raw const x) }, 9);
    assert_eq!(unsafe { unsafe_result(&raw const x) }, Ok(9));
    assert_eq!(extern_c(2), 6);
    assert!(std::panic::catch_unwind(|| diverges()).is_err());
}

#[test]
fn methods_behave_as_written() {
    let mut c = Counter {
        n: 1,
        items: vec![5, 6],
    };
    assert_eq!(c.by_ref(), 1);
    assert_eq!(c.by_mut(), 2);
    *c.mut_ref_result(1).unwrap() = 60;
    assert_eq!(c.ref_result().unwrap(), &[5, 60]);
    assert_eq!(c.mut_ref_result(7), Err(MyError("no item 7".into())));
    assert_eq!(c.clone().by_value(), 2);
    assert_eq!(c.clone().by_mut_value(), 12);
    assert_eq!(Box::new(c.clone()).boxed(), 2);
    assert_eq!(Counter::self_type().unwrap().n, 0);
    assert_eq!(block_on(c.async_by_ref()), 2);
    assert_eq!(block_on(c.async_by_mut()).unwrap(), &[5, 60, 1]);
    assert_eq!(block_on(c.async_by_value()), 2);
    assert_eq!(English.default_greet(), "hello world");
    assert_eq!(block_on(English.async_default("you")).unwrap(), "hello you");
    assert!(block_on(English.async_default("")).is_err());
}

#[test]
fn async_functions_behave_as_written() {
    block_on(async_unit());
    assert_eq!(block_on(assert_send(async_value(1))), 2);
    assert_eq!(block_on(async_question_mark("4")), Ok(4));
    assert!(block_on(async_question_mark("four")).is_err());
    assert_eq!(block_on(async_early_return(0)), None);
    assert_eq!(block_on(async_early_return(3)), Some(2));
    assert_eq!(block_on(async_impl_trait(3)).to_string(), "3");
    assert_eq!(block_on(async_just_await()), 2);
    assert_eq!(block_on(assert_send(async_generic(1u8))), "1");
}

#[test]
fn async_trait_shape_behaves_as_written() {
    let store = MemStore(vec![("a".into(), 1)]);
    assert_eq!(block_on(assert_send(store.load("a"))), Ok(1));
    assert_eq!(block_on(store.load("b")), Err(MyError("missing b".into())));
    assert_eq!(block_on(store.count()), 1);
}
