//! Generics, lifetimes, where-clauses and `impl Trait` in both positions.
#![deny(warnings)]

use std::fmt::{Debug, Display};

use stardust_runtime::trace;

#[trace(tag = "t={t:?}")]
fn pick<'a, 'b: 'a, T, const N: usize>(t: &'a T, others: &'b [T; N]) -> &'a T
where
    T: Debug + PartialEq,
{
    others.iter().find(|o| **o == *t).unwrap_or(t)
}

#[trace]
fn parse_all<T>(items: &[&str]) -> Result<Vec<T>, T::Err>
where
    T: std::str::FromStr,
{
    items.iter().map(|s| s.parse()).collect()
}

#[trace]
fn shown(x: impl Display, y: impl Into<String>) -> impl Display {
    format!("{x}{}", y.into())
}

#[trace]
fn result_impl(x: impl Display) -> Result<impl Display, String> {
    Ok(x.to_string())
}

#[trace]
fn longest<'a>(a: &'a str, b: &'a str) -> Result<&'a str, String> {
    if a.len() >= b.len() { Ok(a) } else { Ok(b) }
}

#[trace]
fn elided(s: &str) -> Result<&str, std::fmt::Error> {
    Ok(s.trim())
}

struct Wrapper<T>(T);

impl<T: Clone + Debug> Wrapper<T> {
    #[trace]
    fn get<U>(&self, f: impl Fn(T) -> U) -> U {
        f(self.0.clone())
    }
}

fn main() {
    assert_eq!(*pick(&2, &[1, 2, 3]), 2);
    assert_eq!(parse_all::<u8>(&["1", "2"]), Ok(vec![1, 2]));
    assert!(parse_all::<u8>(&["x"]).is_err());
    assert_eq!(shown(1, "a").to_string(), "1a");
    assert_eq!(result_impl(3).unwrap().to_string(), "3");
    assert_eq!(longest("ab", "c"), Ok("ab"));
    assert_eq!(elided(" x "), Ok("x"));
    assert_eq!(Wrapper(4).get(|x| x * 2), 8);
}
