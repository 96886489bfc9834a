use stardust_runtime::trace;

#[trace("a", "b")]
fn two_positional() {}

#[trace(name = "a", name = "b")]
fn two_named() {}

#[trace("a", name = "b")]
fn positional_and_named() {}

#[trace(tag = "x", tag = "y")]
fn two_tags() {}

#[trace(crate = stardust_runtime, crate = stardust_runtime)]
fn two_crates() {}

fn main() {
    two_positional();
    two_named();
    positional_and_named();
    two_tags();
    two_crates();
}
