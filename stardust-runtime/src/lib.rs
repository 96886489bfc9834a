#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod aggregator;
mod builder;
mod callsite;
mod clock;
mod collector;
mod config;
mod console;
mod context;
mod future;
pub mod http;
mod id;
mod model;
pub mod propagation;
mod runtime;
mod segment;
mod settings;
#[cfg(feature = "skywalking")]
pub mod skywalking;
mod span;
mod stardust;
mod sysinfo;
#[cfg(feature = "tracing")]
mod tracing_layer;
mod uploader;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;

pub use stardust_runtime_macros::trace;

pub use config::Config;
pub use context::{AttachGuard, SpanContext, capture, entry_span, exit_span, spawn, wrap};
pub use id::{SpanId, TraceId};
pub use model::{SpanBuilderModel, SpanModel, TraceModel};
pub use propagation::{Extractor, Injector};
pub use runtime::{Guard, InitError, dropped_spans, flush, init, init_with};
#[cfg(feature = "skywalking")]
pub use skywalking::correlation;
pub use span::{SpanGuard, SpanKind, current_span_id, current_trace_id, span};
#[cfg(feature = "tracing")]
pub use tracing_layer::StardustLayer;
pub use uploader::Reporter;
