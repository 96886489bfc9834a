//! The aggregator thread and what it builds: per-operation builders with Stardust's sampling
//! rules, cut into a [`TraceModel`](crate::TraceModel) every period.

pub(crate) mod aggregator;
pub(crate) mod builder;
