use stardust_runtime::trace;

#[trace(foo = "x")]
fn first() {}

#[trace("load", level = "debug")]
fn later() {}

fn main() {
    first();
    later();
}
