//! Correlation entries: a few key/value pairs that travel with the trace context — to spans
//! opened later on this thread, to other threads ([`capture`](crate::capture),
//! [`spawn_thread`](crate::spawn_thread)) and to other processes (`sw8-correlation`, read and written with
//! the other trace headers when SkyWalking is enabled). SkyWalking's limits apply: at most 3
//! keys, values of at most 128 characters.
//!
//! An entry set inside a span is seen by the open spans of the same segment on this thread
//! (the span, its open parents up to the segment's root) and by everything opened from them
//! afterwards, as in the SkyWalking agents' per-segment correlation context.
//!
//! ```
//! use stardust_runtime::skywalking::correlation;
//!
//! let _g = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
//! let _root = stardust_runtime::span("checkout");
//! correlation::set("tenant", "acme").unwrap();
//! let seen = stardust_runtime::spawn_thread(|| {
//!     let _work = stardust_runtime::span("work");
//!     correlation::get("tenant")
//! })
//! .join()
//! .unwrap();
//! assert_eq!(seen.as_deref(), Some("acme"));
//! ```

use std::fmt;
use std::sync::Arc;

use super::sw8::{MAX_CORRELATION_KEYS, MAX_CORRELATION_VALUE_CHARS};
use crate::span::local::{with_current, with_local};

/// Why [`set`] refused an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorrelationError {
    /// No span is open (and no context attached) on this thread, or the runtime is not running.
    NoSpan,
    /// The key is empty.
    EmptyKey,
    /// The entry would be the fourth key.
    TooManyKeys,
    /// The value is longer than 128 characters.
    ValueTooLong,
}

impl fmt::Display for CorrelationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CorrelationError::NoSpan => "no span is open on this thread",
            CorrelationError::EmptyKey => "correlation keys must not be empty",
            CorrelationError::TooManyKeys => "at most 3 correlation keys are allowed",
            CorrelationError::ValueTooLong => "correlation values are limited to 128 characters",
        })
    }
}

impl std::error::Error for CorrelationError {}

/// Sets `key` to `value` in the current context; an empty `value` removes the key.
pub fn set(key: &str, value: &str) -> Result<(), CorrelationError> {
    if key.is_empty() {
        return Err(CorrelationError::EmptyKey);
    }
    if value.chars().count() > MAX_CORRELATION_VALUE_CHARS {
        return Err(CorrelationError::ValueTooLong);
    }
    with_local(|local| {
        let top = local.stack.top().ok_or(CorrelationError::NoSpan)?;
        let mut entries: Vec<(String, String)> = top
            .extra
            .as_ref()
            .and_then(|e| e.correlation.as_deref())
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        match entries.iter().position(|(k, _)| k == key) {
            Some(i) if value.is_empty() => {
                entries.remove(i);
            }
            Some(i) => entries[i].1 = value.to_owned(),
            None if value.is_empty() => return Ok(()),
            None if entries.len() >= MAX_CORRELATION_KEYS => {
                return Err(CorrelationError::TooManyKeys);
            }
            None => entries.push((key.to_owned(), value.to_owned())),
        }
        let new: Option<Arc<[(String, String)]>> = (!entries.is_empty()).then(|| entries.into());
        // The open spans of the top's segment (an attached context is its own root).
        let local_root = top.local_root;
        for s in local.stack.local_tree_mut(local_root) {
            s.extra_mut().correlation = new.clone();
        }
        Ok(())
    })
    .unwrap_or(Err(CorrelationError::NoSpan))
}

/// The value of `key` in the current context.
pub fn get(key: &str) -> Option<String> {
    with_current(|s| {
        s.extra
            .as_ref()?
            .correlation
            .as_ref()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    })
    .flatten()
}
