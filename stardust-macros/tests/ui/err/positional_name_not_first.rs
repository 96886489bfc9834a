use stardust_runtime::trace;

#[trace(tag = "x", "load")]
fn f() {}

fn main() {
    f();
}
