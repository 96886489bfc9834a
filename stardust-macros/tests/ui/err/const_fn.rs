use stardust_runtime::trace;

#[trace]
const fn answer() -> u32 {
    42
}

fn main() {
    let _ = answer();
}
