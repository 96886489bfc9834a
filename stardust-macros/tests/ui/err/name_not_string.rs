use stardust_runtime::trace;

#[trace(42)]
fn positional_int() {}

#[trace(name = 1)]
fn named_int() {}

#[trace(name = load)]
fn named_ident() {}

fn main() {
    positional_int();
    named_int();
    named_ident();
}
