//! Every argument form, alone and combined in any order.
#![deny(warnings)]

use stardust_runtime::trace;

#[trace]
fn default_name() {}

#[trace("positional")]
fn positional() {}

#[trace(name = "named")]
fn named() {}

#[trace("load", tag = "user={user_id} q={query:?}")]
fn positional_and_tag(user_id: u64, query: &str) -> usize {
    query.len() + user_id as usize
}

#[trace(tag = "user={user_id}", name = "load")]
fn tag_then_name(user_id: u64) -> u64 {
    user_id
}

#[trace(crate = ::stardust_runtime, tag = "plain text {{no placeholders}}", name = "all",)]
fn everything() {}

#[trace(r"raw name", tag = r"raw {x}")]
fn raw_strings(x: u8) -> u8 {
    x
}

#[trace]
fn r#match(r#type: u8) -> u8 {
    r#type
}

#[trace(tag = "type={type}")]
fn raw_param(r#type: u8) -> u8 {
    r#type
}

fn main() {
    default_name();
    positional();
    named();
    assert_eq!(positional_and_tag(1, "ab"), 3);
    assert_eq!(tag_then_name(4), 4);
    everything();
    assert_eq!(raw_strings(2), 2);
    assert_eq!(r#match(3), 3);
    assert_eq!(raw_param(5), 5);
}
