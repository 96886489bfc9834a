//! The protocol notes this crate is built on, in our words: what the code relies on, so a
//! reader of the code (or of these docs) can follow every rule it cites.
//!
//! - [`stardust_protocol`]: the Stardust app-client protocol as we implement it.
//! - [`sampling`]: per-operation aggregation and sampling rules.
//! - [`propagation`]: trace headers (W3C, NewLife, `sw8`) and cross-thread rules.
//! - [`skywalking`]: SkyWalking's headers, segments and reporting.

#[doc = include_str!("../docs/stardust-protocol.md")]
pub mod stardust_protocol {}

#[doc = include_str!("../docs/sampling.md")]
pub mod sampling {}

#[doc = include_str!("../docs/propagation.md")]
pub mod propagation {}

#[doc = include_str!("../docs/skywalking.md")]
pub mod skywalking {}
