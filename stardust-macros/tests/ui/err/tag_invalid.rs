use stardust_runtime::trace;

#[trace(tag = "user={user_id")]
fn unclosed(user_id: u64) {
    let _ = user_id;
}

#[trace(tag = "user=}{user_id}")]
fn unmatched(user_id: u64) {
    let _ = user_id;
}

#[trace(tag = "user={user id}")]
fn not_a_name(user_id: u64) {
    let _ = user_id;
}

fn main() {
    unclosed(1);
    unmatched(1);
    not_a_name(1);
}
