use stardust_runtime::trace;

#[trace("")]
fn positional() {}

#[trace(name = "")]
fn named() {}

fn main() {
    positional();
    named();
}
