//! Problems a user must see even without a `log` logger: the server is unreachable, refuses the
//! secret or is not a Stardust server, spans were dropped, the shutdown lost data.
//!
//! Every message goes through `log` as usual. When no logger is installed (`log`'s maximum
//! level is still `Off`, as it is until a logger sets it) warnings and errors also go to
//! stderr — the runtime's one stderr fallback — once per distinct condition, repeated at most
//! every [`REPEAT_AFTER`] with the number of occurrences in between, and with a hint of what
//! to check. `Config::stderr_diagnostics(false)` turns the fallback off. [`Throttle`] is that
//! rule for a caller's own warnings that could otherwise repeat on every round.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::text::escaped_uncut;

/// How long a condition stays quiet on stderr after it was printed.
pub(crate) const REPEAT_AFTER: Duration = Duration::from_secs(300);

static FALLBACK: AtomicBool = AtomicBool::new(true);

/// Per condition: when it was last printed, and how often it happened since.
static SEEN: Mutex<Option<HashMap<&'static str, Throttle>>> = Mutex::new(None);

/// How often one condition is shown: the first time, then at most once every
/// [`REPEAT_AFTER`], with the number of occurrences held back in between. The stderr
/// fallback keeps one per condition; a caller whose warnings could repeat on every round
/// (a server misbehaving the same way on each ping) keeps its own.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    shown: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// An occurrence at `now`: `Some(n)` when it is to be shown, `n` occurrences having been
    /// held back since the last one shown; `None` when it is held back (and counted).
    pub(crate) fn due(&mut self, now: Instant) -> Option<u64> {
        match self.shown {
            Some(at) if now.saturating_duration_since(at) < REPEAT_AFTER => {
                self.held += 1;
                None
            }
            _ => {
                self.shown = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// Turns the stderr fallback on or off (from `Config`, at `init`).
pub(crate) fn set_stderr_fallback(on: bool) {
    FALLBACK.store(on, Ordering::Relaxed);
}

/// True when no `log` logger has been installed.
fn no_logger() -> bool {
    log::max_level() == log::LevelFilter::Off
}

/// Logs `message` at `level` (warn or error) under the condition `key`, and, without a
/// logger, prints it to stderr as the module doc says. `hint` says what to check.
///
/// `message` and `hint` are shown as [`escaped_uncut`] shows them, on both paths: a caller
/// escapes the server's text it quotes ([`escaped`](crate::util::text::escaped)); this is the
/// backstop, so no line break, terminal escape or URL password reaches the log or stderr.
pub(crate) fn report(level: log::Level, key: &'static str, message: &str, hint: &str) {
    let (message, hint) = (
        escaped_uncut(message).to_string(),
        escaped_uncut(hint).to_string(),
    );
    if hint.is_empty() {
        log::log!(level, "stardust: {message}");
    } else {
        log::log!(level, "stardust: {message} ({hint})");
    }
    if level > log::Level::Warn || !FALLBACK.load(Ordering::Relaxed) || !no_logger() {
        return;
    }
    let due = SEEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_default()
        .due(Instant::now());
    let Some(repeats) = due else {
        return;
    };
    let what = if level == log::Level::Error {
        "error"
    } else {
        "warning"
    };
    let again = if repeats > 0 {
        format!(" ({repeats} more times since the last message)")
    } else {
        String::new()
    };
    let hint = if hint.is_empty() {
        String::new()
    } else {
        format!("\n  hint: {hint}")
    };
    // One write, so lines of concurrent messages do not interleave.
    let text = format!("stardust {what}: {message}{again}{hint}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Forgets conditions (they cleared): their next occurrence prints again at once.
pub(crate) fn clear(keys: &[&'static str]) {
    if let Some(seen) = SEEN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        for k in keys {
            seen.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_is_counted_between_prints() {
        // No logger in unit tests: the fallback is active.
        report(log::Level::Warn, "test-condition", "first", "check it");
        report(log::Level::Warn, "test-condition", "second", "");
        let seen = SEEN.lock().unwrap();
        assert_eq!(seen.as_ref().unwrap()["test-condition"].held, 1);
        drop(seen);
        clear(&["test-condition"]);
        assert!(
            !SEEN
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .contains_key("test-condition")
        );
    }

    #[test]
    fn a_throttle_shows_the_first_then_one_per_window_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.due(t0), Some(0));
        assert_eq!(t.due(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.due(t0 + REPEAT_AFTER - Duration::from_secs(1)), None);
        assert_eq!(t.due(t0 + REPEAT_AFTER), Some(2));
        assert_eq!(t.due(t0 + REPEAT_AFTER), None);
        // A clock read out of order counts as no time passed.
        assert_eq!(t.due(t0), None);
        assert_eq!(t.due(t0 + 2 * REPEAT_AFTER), Some(2));
    }
}
