#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Layers, lowest first; each module imports only from the layers below it (checked in CI by
// `.ci/layers.py` against `.ci/layers.txt`). Data flows the same way: span guard →
// thread-local tally (counts, read at the cut) and batch (sample records) → mailbox →
// aggregator → reporters → HTTP.
//
//   util, error, clock, id, flags, model   no dependency on the rest
//   settings, state                        shared runtime state, behind accessors
//   propagation                            carriers, W3C, NewLife, the propagator seam
//   span                                   records, stack, mailbox, guard, future, context
//   collect                                aggregator (with its tap seam), builders
//   report                                 uploader, console, Stardust (commands, events),
//                                          SkyWalking
//   integrations                           incoming requests, routes, ureq, the tracing bridge
//   config, runtime                        the composition root
//   testing                                record what a closure reports, in users' tests

mod clock;
mod collect;
mod config;
mod delivery;
pub mod docs;
mod error;
mod flags;
mod id;
mod integrations;
mod macros;
mod model;
pub mod propagation;
mod report;
mod runtime;
mod settings;
mod span;
mod state;
pub mod testing;
mod util;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// The fuzz targets' entry points: only for `cargo fuzz` (which sets `cfg(fuzzing)`) and tests.
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
#[path = "fuzzing.rs"]
pub mod __fuzz;

pub use stardust_runtime_macros::trace;

pub use config::Config;
pub use error::{ConfigError, FlushError, InitError, Undelivered};
pub use id::{SpanId, TraceId};
pub use integrations::route::template_path;
#[cfg(feature = "tracing")]
pub use integrations::tracing_layer::StardustLayer;
pub use integrations::{incoming, ureq as ureq_tracing};
pub use model::{SpanBuilderModel, SpanModel, TraceModel};
pub use propagation::{Extractor, Injector};
pub use report::events::{EventKind, dropped_events, event};
pub use report::sink::Reporter;
#[cfg(feature = "skywalking")]
pub use report::skywalking;
#[cfg(all(feature = "signals", unix))]
pub use runtime::exit_on_signals;
pub use runtime::{Guard, dropped_samples, dropped_spans, flush, init, init_with};
pub use span::context::{
    AttachGuard, SpanContext, capture, current_span_id, entry_span, exit_span, spawn_thread, wrap,
    wrap_fn,
};
pub use span::guard::{SpanGuard, current_trace_id, span};
pub use span::record::SpanKind;
