use stardust_runtime::trace;

trait Store {
    #[trace]
    type Key;

    #[trace]
    const LIMIT: usize;
}

struct S;

impl S {
    #[trace]
    const LIMIT: usize = 1;
}

fn main() {
    let _ = S::LIMIT;
}
