use stardust_runtime::trace;

#[trace]
fn broken(x: u32) -> u32 {
    let y = x +;
    y
}

fn main() {
    broken(1);
}
