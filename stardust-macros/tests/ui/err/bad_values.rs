use stardust_runtime::trace;

#[trace(tag = 5)]
fn tag_int() {}

#[trace(crate = "stardust_runtime")]
fn crate_string() {}

#[trace("a" tag = "x")]
fn missing_comma() {}

fn main() {
    tag_int();
    crate_string();
    missing_comma();
}
