//! The expansion names everything it uses by its full path, so user items called
//! `Result`, `Option`, `Box`, `Span`, `trace`, `core`, `std` or `stardust_runtime`
//! change nothing.
#![deny(warnings)]
#![allow(dead_code, non_camel_case_types)]

#[derive(Debug, PartialEq)]
pub enum Result<T> {
    Good(T),
    Bad(::std::string::String),
}

pub struct Option;
pub struct Box;
pub struct Span;
pub struct String;
pub struct Some;
pub struct None;
pub struct Ok;
pub struct Err;
pub struct Callsite;
pub struct Instrumented;
pub struct ResultProbe;
pub struct ErrText;
pub trait Future {}
pub trait Display {}
pub trait Debug {}
pub trait FnOnce {}
pub fn format() {}
pub fn concat() {}
pub fn module_path() {}
pub fn enter() {}
pub fn instrument() {}
pub fn call_once() {}

mod core {}
mod std {}
mod stardust_runtime {}

// `trace` is a local function here; the attribute is reached by its full path.
fn trace() -> u32 {
    1
}

#[::stardust_runtime::trace]
fn custom_result(ok: bool) -> Result<u32> {
    if ok {
        Result::Good(trace())
    } else {
        Result::Bad(::std::string::String::from("no"))
    }
}

#[::stardust_runtime::trace(tag = "x={x}")]
fn std_result(x: u32) -> ::core::result::Result<u32, ::std::string::String> {
    let _span = Span;
    let _box = Box;
    let _option = Option;
    ::core::result::Result::Ok(x)
}

#[::stardust_runtime::trace]
async fn async_custom_result() -> Result<u32> {
    Result::Good(2)
}

#[::stardust_runtime::trace(tag = "x={x}")]
async fn async_std_result(x: u32) -> ::core::result::Result<u32, u8> {
    ::core::result::Result::Err(x as u8)
}

fn main() {
    assert_eq!(custom_result(true), Result::Good(1));
    assert!(matches!(custom_result(false), Result::Bad(_)));
    assert_eq!(std_result(3), ::core::result::Result::Ok(3));
    drop(async_custom_result());
    drop(async_std_result(1));
}
