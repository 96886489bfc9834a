use stardust_runtime::trace;

#[trace(tag = "{nope}")]
fn load(user_id: u64, query: &str) {
    let _ = (user_id, query);
}

#[trace(tag = "{self:?} {other}")]
fn no_params() {}

#[trace(tag = "{user_id:>width$}")]
fn width_not_param(user_id: u64) {
    let _ = user_id;
}

fn main() {
    load(1, "q");
    no_params();
    width_not_param(1);
}
