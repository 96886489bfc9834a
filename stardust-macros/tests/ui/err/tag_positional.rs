use stardust_runtime::trace;

#[trace(tag = "user={}")]
fn empty_braces(user_id: u64) {
    let _ = user_id;
}

#[trace(tag = "user={0}")]
fn indexed(user_id: u64) {
    let _ = user_id;
}

#[trace(tag = "x={x:.*}")]
fn star_precision(x: f64) {
    let _ = x;
}

#[trace(tag = "x={x:1$}")]
fn indexed_width(x: f64) {
    let _ = x;
}

fn main() {
    empty_braces(1);
    indexed(1);
    star_precision(1.0);
    indexed_width(1.0);
}
