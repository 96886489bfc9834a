//! `crate = path` reaches the runtime through a re-export.
#![deny(warnings)]

mod telemetry {
    pub use ::stardust_runtime as rt;
    pub use ::stardust_runtime::trace;
}

mod glob {
    pub use ::stardust_runtime::*;
}

use telemetry::trace;

#[trace(crate = crate::telemetry::rt)]
fn through_module() -> u32 {
    1
}

#[trace(name = "g", crate = crate::glob)]
fn through_glob() -> ::core::result::Result<u32, ::std::string::String> {
    Ok(2)
}

mod nested {
    use super::telemetry::trace;

    #[trace(crate = super::telemetry::rt, tag = "x={x}")]
    pub async fn relative(x: u32) -> u32 {
        x
    }
}

fn main() {
    assert_eq!(through_module(), 1);
    assert_eq!(through_glob(), Ok(2));
    drop(nested::relative(3));
}
