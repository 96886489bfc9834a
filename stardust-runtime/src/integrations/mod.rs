//! Integrations with other libraries: incoming HTTP requests, route templates, ureq, the
//! `tracing` bridge.

pub mod incoming;
pub(crate) mod route;
#[cfg(feature = "tracing")]
pub(crate) mod tracing_layer;
pub mod ureq;
