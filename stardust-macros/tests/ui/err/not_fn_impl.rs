use stardust_runtime::trace;

struct S;

#[trace]
impl S {
    fn f(&self) {}
}

fn main() {
    S.f();
}
