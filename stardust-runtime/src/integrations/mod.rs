//! Integrations with other libraries: incoming HTTP requests, ureq, the `tracing` bridge.

pub mod incoming;
#[cfg(feature = "tracing")]
pub(crate) mod tracing_layer;
pub mod ureq;
