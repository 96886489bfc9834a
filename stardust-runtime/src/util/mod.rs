//! Small utilities with no dependency on the rest of the runtime.

pub(crate) mod diag;
pub(crate) mod hash;
pub(crate) mod host;
pub(crate) mod json;
pub(crate) mod text;
pub(crate) mod url;
