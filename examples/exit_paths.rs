//! How a program's way of ending decides whether its last period is reported.
//!
//! ```text
//! cargo run --example exit_paths -- drop      # Guard dropped at the end of main: reported
//! cargo run --example exit_paths -- panic     # a panic unwinds through main: still reported
//! cargo run --example exit_paths -- exit      # std::process::exit: destructors skipped, lost
//! cargo run --example exit_paths -- flush-exit  # flush() first, then exit: reported
//! ```
//!
//! `std::process::exit` and `panic = "abort"` skip destructors, so the `Guard` never runs:
//! call `stardust_runtime::flush()` (or drop the guard) before them.

use stardust_runtime::trace;

#[trace("exit/work")]
fn work(i: u32) -> u32 {
    i * 2
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "drop".into());
    let guard = stardust_runtime::init().expect("stardust init");
    let sum: u32 = (0..7).map(work).sum();
    eprintln!("exit_paths: mode {mode}, 7 calls, sum {sum}");
    match mode.as_str() {
        "panic" => panic!("exit_paths: panicking with the guard alive"),
        "exit" => std::process::exit(0),
        "flush-exit" => {
            stardust_runtime::flush().expect("flushed");
            std::process::exit(0)
        }
        _ => drop(guard),
    }
}
