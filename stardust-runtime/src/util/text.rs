//! Text limits as the Stardust server counts them (.NET string lengths, in UTF-16 code units),
//! and text from outside the program made safe for a log line.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Length of `s` in UTF-16 code units (what a .NET `string.Length` gives).
pub(crate) fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// `s` cut to at most `max` UTF-16 code units, on a character boundary.
pub(crate) fn cut_utf16(s: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &s[..i];
        }
    }
    s
}

/// The message of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

/// The longest application id the server stores (its `Name` column; longer is a `{code:500}`).
pub(crate) const MAX_APP_ID_UNITS: usize = 50;

/// What makes `id` unusable as an application id, the same for a configured one
/// (`Config::app_id`, `StarAppId`) and one the server's login reply hands out (its `code`):
/// more than [`MAX_APP_ID_UNITS`] characters, or a control character (a line break, an
/// escape). The words follow "the application id … ". `None`: usable (emptiness is the
/// caller's check).
pub(crate) fn app_id_problem(id: &str) -> Option<String> {
    if id.trim().is_empty() {
        return Some("is empty".to_owned());
    }
    let units = utf16_len(id);
    if units > MAX_APP_ID_UNITS {
        return Some(format!(
            "is {units} characters long; the server takes at most {MAX_APP_ID_UNITS}"
        ));
    }
    if id.chars().any(needs_escape) {
        return Some("holds a control character (a line break, an escape, ...)".to_owned());
    }
    None
}

/// Most characters one piece of outside text takes in a log line; the rest is cut, marked `…`.
pub(crate) const SHOWN_MAX: usize = 1000;

/// A character that must not reach a log line as it is: control characters (CR, LF, ESC, C1
/// controls, ...), the Unicode line and paragraph separators, and the bidirectional overrides
/// (which reorder what a terminal shows).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Text from outside the program — the server's messages and codes, command names, error
/// texts — as a log line shows it (see [`escaped`]).
pub(crate) struct Escaped<T> {
    text: T,
    max: usize,
}

/// `text` for a log line: the credentials of any URL in it removed
/// ([`redact_urls`](crate::util::url::redact_urls)), control characters written as escapes
/// (`\r`, `\n`, `\t`, else `\u{1b}`), and cut to [`SHOWN_MAX`] characters. A server's text
/// thus never starts a line of its own, colours a terminal or shows a password. The result
/// is printable and a fixed point: escaping it again changes nothing (a `\` is kept as it is).
pub(crate) fn escaped<T: fmt::Display>(text: T) -> Escaped<T> {
    Escaped {
        text,
        max: SHOWN_MAX,
    }
}

/// [`escaped`] without the length cap: for whole messages the runtime composed.
pub(crate) fn escaped_uncut<T: fmt::Display>(text: T) -> Escaped<T> {
    Escaped {
        text,
        max: usize::MAX,
    }
}

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text.to_string();
        let text = crate::util::url::redact_urls(&text);
        let mut shown = 0usize;
        let mut buf = [0u8; 4];
        for c in text.chars() {
            let piece: Cow<'_, str> = if !needs_escape(c) {
                Cow::Borrowed(c.encode_utf8(&mut buf))
            } else {
                match c {
                    '\r' => "\\r".into(),
                    '\n' => "\\n".into(),
                    '\t' => "\\t".into(),
                    c => format!("\\u{{{:x}}}", c as u32).into(),
                }
            };
            let n = piece.chars().count();
            if shown + n > self.max {
                return f.write_char('…');
            }
            shown += n;
            f.write_str(&piece)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_cuts_in_utf16_units() {
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("订单"), 2);
        assert_eq!(utf16_len("😀"), 2);
        assert_eq!(cut_utf16("a😀b", 2), "a");
        assert_eq!(cut_utf16("a😀b", 3), "a😀");
        assert_eq!(cut_utf16("订单服务", 2), "订单");
        assert_eq!(cut_utf16("short", 50), "short");
    }

    #[test]
    fn outside_text_is_escaped_redacted_and_cut() {
        let forged = "boom\r\nERROR forged line\x1b[31m\u{202e}\u{85}";
        let shown = escaped(forged).to_string();
        assert_eq!(
            shown,
            "boom\\r\\nERROR forged line\\u{1b}[31m\\u{202e}\\u{85}"
        );
        assert_eq!(escaped(&shown).to_string(), shown, "a fixed point");
        assert_eq!(escaped("a\\nb\tc").to_string(), "a\\nb\\tc");
        assert_eq!(escaped("订单 ok").to_string(), "订单 ok");
        assert_eq!(
            escaped("io: http://u:P4ss#w0rd@h:1/App/Login").to_string(),
            "io: http://h:1/App/Login"
        );
        let long = escaped("x".repeat(5000)).to_string();
        assert_eq!(long.chars().count(), SHOWN_MAX + 1);
        assert!(long.ends_with('…'));
        let escapes = escaped("\x1b".repeat(1000)).to_string();
        assert!(escapes.chars().count() <= SHOWN_MAX + 1);
        assert!(escapes.ends_with("\\u{1b}…"), "an escape is never split");
        assert_eq!(escaped_uncut("y".repeat(5000)).to_string().len(), 5000);
    }

    #[test]
    fn application_ids_are_checked() {
        assert_eq!(app_id_problem("orders"), None);
        assert_eq!(app_id_problem(&"订".repeat(50)), None);
        assert!(
            app_id_problem(&"x".repeat(51))
                .unwrap()
                .contains("at most 50")
        );
        assert!(
            app_id_problem(&"😀".repeat(26)).is_some(),
            "52 UTF-16 units"
        );
        assert!(app_id_problem("a\r\nb").unwrap().contains("control"));
        assert!(app_id_problem("a\x1b[31m").is_some());
    }
}
