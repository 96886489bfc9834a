use stardust_runtime::trace;

#[trace]
fn sync_type_error(x: u32) -> u32 {
    let s: String = x;
    s.len()
}

#[trace]
fn result_type_error(x: u32) -> Result<u32, String> {
    let n: u32 = "7";
    Ok(n + x)
}

#[trace]
async fn async_type_error(x: u32) -> Result<u32, String> {
    Ok("x" + x)
}

fn main() {
    let _ = sync_type_error(1);
    let _ = result_type_error(1);
    let _ = async_type_error(1);
}
