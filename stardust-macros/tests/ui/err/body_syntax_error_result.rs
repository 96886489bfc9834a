use stardust_runtime::trace;

#[trace]
async fn broken(x: u32) -> Result<u32, String> {
    let y = match x { 1 => 2 3 => 4, _ => 0 };
    Ok(y)
}

fn main() {
    let _ = broken(1);
}
