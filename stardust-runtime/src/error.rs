//! The runtime's public errors.

use std::fmt;

pub use crate::delivery::Undelivered;

/// Why `init` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitError {
    /// The runtime is already running; drop its [`Guard`](crate::Guard) first.
    AlreadyInitialized,
    /// A configuration value is unusable; the error names the setting or environment
    /// variable that held it.
    InvalidConfig(ConfigError),
    /// A background thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::AlreadyInitialized => {
                f.write_str("stardust runtime is already initialised (drop its Guard first)")
            }
            InitError::InvalidConfig(e) => write!(f, "invalid stardust configuration: {e}"),
            InitError::Spawn(e) => write!(f, "cannot start a stardust thread: {e}"),
        }
    }
}

impl std::error::Error for InitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InitError::Spawn(e) => Some(e),
            InitError::InvalidConfig(e) => Some(e),
            _ => None,
        }
    }
}

/// An unusable configuration value, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    problem: String,
}

impl ConfigError {
    /// `setting` names where the value came from: a builder method (`Config::server`) or an
    /// environment variable (`StarServer`).
    pub(crate) fn new(setting: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            problem: problem.into(),
        }
    }

    /// The builder method or environment variable that held the bad value.
    pub fn setting(&self) -> &str {
        self.setting
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Why [`flush`](crate::flush) did not confirm delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushError {
    /// The runtime is not running (no [`Guard`](crate::Guard) alive), or it stopped during the
    /// flush.
    NotRunning,
    /// The deadline passed first. What was not delivered yet stays queued and is retried; the
    /// counts are given when the reporters said (`None`: no answer in time, e.g. a reporter
    /// busy with an earlier call).
    TimedOut(Option<Undelivered>),
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::NotRunning => f.write_str("the stardust runtime is not running"),
            FlushError::TimedOut(Some(u)) => {
                write!(
                    f,
                    "flush deadline passed; {u} not delivered yet (kept for retry)"
                )
            }
            FlushError::TimedOut(None) => {
                f.write_str("flush deadline passed; no answer from the reporters")
            }
        }
    }
}

impl std::error::Error for FlushError {}
