//! # stardust-runtime
//!
//! Instrument Rust programs for the [Stardust](https://github.com/NewLifeX/Stardust) APM
//! platform. Put `#[trace]` on functions, call [`init`] once, and every call is timed,
//! counted, sampled and reported — per operation, per period — with no async runtime and
//! next to no cost on the calling thread.
//!
//! ```
//! use stardust_runtime::trace;
//!
//! #[trace("order/create")]
//! fn create_order(id: u64) -> Result<u64, String> {
//!     if id == 0 { Err("no id".into()) } else { Ok(id) }
//! }
//!
//! let guard = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
//! let _ = create_order(1);
//! let _ = create_order(0); // recorded as an error: "no id"
//! drop(guard); // reports the last period and stops the background threads
//! ```
//!
//! ## How spans flow
//! `#[trace]` (or [`span`]) opens a span on the calling thread; closing it moves a small record
//! into a thread-local batch; when the thread's outermost span closes, the batch moves to the
//! thread's mailbox, which the aggregator thread sweeps every few milliseconds into one builder
//! per operation name per period (Stardust's rules for counts, costs and sampling); at each
//! period's end the uploader thread hands the report to the reporters: the console (the
//! default with no server configured), the Stardust server, or your own [`Reporter`].
//!
//! Before [`init`] a traced call costs one relaxed atomic load.

#![warn(missing_docs)]

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

pub use stardust_macros::trace;

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
