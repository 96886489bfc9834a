//! Shared test support. Use from an integration test with `mod support;`.
#![allow(dead_code, unused_imports)]

pub mod fake_oap;
pub mod fake_stardust;
