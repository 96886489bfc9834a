//! The runtime's public errors.

use std::fmt;

/// Why `init` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitError {
    /// The runtime is already running; drop its [`Guard`](crate::Guard) first.
    AlreadyInitialized,
    /// A configuration value is unusable.
    InvalidConfig(String),
    /// A background thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::AlreadyInitialized => {
                f.write_str("stardust runtime is already initialised (drop its Guard first)")
            }
            InitError::InvalidConfig(why) => write!(f, "invalid stardust configuration: {why}"),
            InitError::Spawn(e) => write!(f, "cannot start a stardust thread: {e}"),
        }
    }
}

impl std::error::Error for InitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InitError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`flush`](crate::flush) did not confirm delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlushError {
    /// The runtime is not running (no [`Guard`](crate::Guard) alive).
    NotRunning,
    /// The deadline passed before every reporter had handled the cut.
    TimedOut,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::NotRunning => f.write_str("stardust runtime is not running"),
            FlushError::TimedOut => {
                f.write_str("stardust flush timed out before the reporters handled the cut")
            }
        }
    }
}

impl std::error::Error for FlushError {}
