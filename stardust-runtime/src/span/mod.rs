//! Spans: their data, the thread-local stack, tally and batch, the hand-over to the
//! aggregator, the guard, instrumented futures and contexts that cross threads and processes.
//!
//! Layers inside, lowest first (each imports only the ones before it): `record` (plain data),
//! `callsite`, `mailbox` and `tally` (the per-thread counters), `local` (the thread's stack
//! and batch), `exception` (the `ex:<Type>` spans), `guard`, then `context` and `future`.

pub(crate) mod callsite;
pub(crate) mod context;
pub(crate) mod exception;
pub(crate) mod future;
pub(crate) mod guard;
pub(crate) mod local;
pub(crate) mod mailbox;
pub(crate) mod record;
pub(crate) mod tally;
