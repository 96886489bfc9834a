//! Async functions and methods, async fn in traits (default bodies), `?` and early
//! `return` inside the instrumented body, `Send` futures.
#![deny(warnings)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use stardust_runtime::trace;

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn assert_send<F: Future + Send>(f: F) -> F {
    f
}

#[trace]
async fn unit() {}

#[trace(tag = "x={x}")]
async fn value(x: u32) -> u32 {
    unit().await;
    x + 1
}

#[trace("parse", tag = "input={input:?}")]
async fn parse(input: &str) -> Result<u32, std::num::ParseIntError> {
    let n: u32 = input.trim().parse()?;
    if n == 0 {
        return Ok(1);
    }
    Ok(n)
}

#[trace]
async fn converts(input: &str) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    let n: u32 = input.parse()?;
    Ok(n)
}

#[trace]
async fn option(x: Option<u32>) -> Option<u32> {
    let x = x?;
    Some(x * 2)
}

#[trace]
async fn impl_trait(x: u32) -> impl std::fmt::Display {
    x
}

#[trace]
async fn only_awaits() -> u32 {
    value(1).await
}

#[trace]
async fn generic<T, E>(t: T, e: E) -> Result<T, E>
where
    T: Send + PartialEq<u32>,
    E: Send,
{
    if t == 0 { Err(e) } else { Ok(t) }
}

#[trace]
async fn mut_and_patterns(mut v: Vec<u32>, (a, b): (u32, u32)) -> Vec<u32> {
    v.push(a);
    v.push(b);
    v
}

struct Db {
    rows: Vec<String>,
}

impl Db {
    #[trace(tag = "n={n}")]
    async fn get(&self, n: usize) -> Option<&str> {
        self.rows.get(n).map(String::as_str)
    }

    #[trace]
    async fn push(&mut self, row: String) -> Result<&mut String, String> {
        self.rows.push(row);
        self.rows.last_mut().ok_or_else(|| "empty".to_owned())
    }

    #[trace]
    async fn into_rows(self) -> Vec<String> {
        self.rows
    }

    #[trace]
    async unsafe fn unchecked(&self, n: usize) -> &str {
        unsafe { self.rows.get_unchecked(n) }
    }
}

trait Service {
    fn id(&self) -> u32;

    #[trace]
    async fn call(&self, x: u32) -> Result<u32, String> {
        if x == 0 {
            return Err("zero".into());
        }
        Ok(self.id() + x)
    }

    async fn plain(&self) -> u32;
}

struct S;

impl Service for S {
    fn id(&self) -> u32 {
        10
    }

    #[trace]
    async fn plain(&self) -> u32 {
        self.id()
    }
}

fn main() {
    block_on(unit());
    assert_eq!(block_on(assert_send(value(1))), 2);
    assert_eq!(block_on(assert_send(parse(" 5 "))), Ok(5));
    assert!(block_on(parse("x")).is_err());
    assert_eq!(block_on(converts("3")).unwrap(), 3);
    assert!(block_on(converts("x")).is_err());
    assert_eq!(block_on(option(Some(2))), Some(4));
    assert_eq!(block_on(option(None)), None);
    assert_eq!(block_on(impl_trait(3)).to_string(), "3");
    assert_eq!(block_on(only_awaits()), 2);
    assert_eq!(block_on(assert_send(generic(1u32, ()))), Ok(1));
    assert_eq!(block_on(mut_and_patterns(vec![1], (2, 3))), vec![1, 2, 3]);

    let mut db = Db {
        rows: vec!["a".into()],
    };
    assert_eq!(block_on(db.get(0)), Some("a"));
    block_on(db.push("b".into())).unwrap().push('!');
    assert_eq!(unsafe { block_on(db.unchecked(1)) }, "b!");
    assert_eq!(block_on(db.into_rows()).len(), 2);

    assert_eq!(block_on(S.call(1)), Ok(11));
    assert!(block_on(S.call(0)).is_err());
    assert_eq!(block_on(S.plain()), 10);
}
