//! Reporters: the uploader thread and what it drives (the console table, the Stardust client,
//! users' [`Reporter`]s), the Stardust server's commands and events, and the SkyWalking
//! backend (feature `skywalking`).

pub(crate) mod commands;
pub(crate) mod console;
pub(crate) mod events;
pub(crate) mod failover;
pub(crate) mod sink;
#[cfg(feature = "skywalking")]
pub mod skywalking;
pub(crate) mod stardust;
pub(crate) mod uploader;
