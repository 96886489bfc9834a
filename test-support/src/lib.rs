//! Test support for the stardust-rs workspace (not published): a strict fake Stardust server
//! ([`fake_stardust`]), a strict fake SkyWalking OAP ([`fake_oap`]), a downstream HTTP peer ([`http`]) and helpers for tests that
//! run the process-global runtime ([`common`]).
//!
//! Kept as a crate of its own (as `tracing` keeps `tracing-mock`) so it is compiled once and
//! every test binary links the same code, instead of each test including the sources.

pub mod common;
pub mod fake_oap;
pub mod fake_stardust;
pub mod http;
