//! Trace and span identifiers, and the per-thread random generator behind them.
//!
//! Ids are kept as integers and formatted only when they leave the process. A trace id
//! received from another service is kept in the form it arrived in: 32 hex (W3C), 30 hex
//! (NewLife .NET), or verbatim text of up to 50 characters for anything else.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// Longest incoming id kept verbatim (the Stardust server's column size).
pub(crate) const MAX_VERBATIM_ID: usize = 50;

/// A trace id: 32 lowercase hex characters when generated here.
///
/// Ids received from other services are kept in their own form: 30-hex NewLife ids and other
/// verbatim ids (up to 50 characters) print exactly as they arrived.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TraceId(pub(crate) TraceRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum TraceRepr {
    /// W3C: 32 lowercase hex digits.
    Hex32(u128),
    /// NewLife .NET: 30 lowercase hex digits (the top 8 bits are zero).
    Hex30(u128),
    /// Anything else that was accepted from a peer, kept as text.
    Verbatim(Arc<str>),
}

impl TraceId {
    /// A new random W3C trace id (never all zero).
    pub fn random() -> TraceId {
        TraceId(TraceRepr::Hex32(random_u128()))
    }

    /// The id as a 128-bit number when it is a hex id, `None` for a verbatim id.
    pub fn to_u128(&self) -> Option<u128> {
        match self.0 {
            TraceRepr::Hex32(v) | TraceRepr::Hex30(v) => Some(v),
            TraceRepr::Verbatim(_) => None,
        }
    }

    /// Builds a W3C trace id from a number; `None` for zero, which W3C forbids.
    pub fn from_u128(value: u128) -> Option<TraceId> {
        (value != 0).then_some(TraceId(TraceRepr::Hex32(value)))
    }

    /// Parses an incoming trace id. 32 lowercase hex → W3C; 30 lowercase hex → NewLife;
    /// other printable ASCII without separators, 1..=50 characters → kept verbatim.
    /// All-zero ids and anything else are rejected.
    pub fn parse(text: &str) -> Option<TraceId> {
        if is_lower_hex(text) && (text.len() == 32 || text.len() == 30) {
            let v = u128::from_str_radix(text, 16).ok()?;
            if v == 0 {
                return None;
            }
            return Some(TraceId(if text.len() == 32 {
                TraceRepr::Hex32(v)
            } else {
                TraceRepr::Hex30(v)
            }));
        }
        if is_verbatim_id(text) && !text.bytes().all(|b| b == b'0') {
            return Some(TraceId(TraceRepr::Verbatim(Arc::from(text))));
        }
        None
    }

    /// True when the id is 32 lowercase hex, the W3C form.
    pub fn is_w3c(&self) -> bool {
        matches!(self.0, TraceRepr::Hex32(_))
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            TraceRepr::Hex32(v) => write!(f, "{v:032x}"),
            TraceRepr::Hex30(v) => write!(f, "{v:030x}"),
            TraceRepr::Verbatim(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// A span id: 16 lowercase hex characters (a non-zero 64-bit number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub(crate) u64);

impl SpanId {
    /// A new random span id (never zero).
    pub fn random() -> SpanId {
        SpanId(random_u64())
    }

    /// The id as a number.
    pub fn to_u64(self) -> u64 {
        self.0
    }

    /// Builds a span id from a number; `None` for zero.
    pub fn from_u64(value: u64) -> Option<SpanId> {
        (value != 0).then_some(SpanId(value))
    }

    /// Parses 16 lowercase hex characters (not all zero).
    pub fn parse(text: &str) -> Option<SpanId> {
        if text.len() == 16 && is_lower_hex(text) {
            SpanId::from_u64(u64::from_str_radix(text, 16).ok()?)
        } else {
            None
        }
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The parent of a span: none (a root), a span of this process or of a W3C peer, or an id
/// received verbatim from a peer that does not use 16-hex span ids.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum ParentId {
    None,
    Span(u64),
    Verbatim(Arc<str>),
}

impl ParentId {
    /// As stored on a span: a numeric parent (0 for none or verbatim) and the verbatim text.
    pub(crate) fn split(&self) -> (u64, Option<Arc<str>>) {
        match self {
            ParentId::None => (0, None),
            ParentId::Span(v) => (*v, None),
            ParentId::Verbatim(s) => (0, Some(s.clone())),
        }
    }
}

pub(crate) fn is_lower_hex(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An id a peer may send that we keep as text: 1..=50 visible ASCII characters with no
/// separators that would break the headers or the wire model.
pub(crate) fn is_verbatim_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_VERBATIM_ID
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'=' | b'"' | b'\\'))
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

fn seed() -> u64 {
    // RandomState is seeded from the OS once per thread; mix in the thread and the time.
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    let v = h.finish();
    if v == 0 { 0x9e37_79b9_7f4a_7c15 } else { v }
}

/// wyrand: fast, good-quality, thread-local, lock-free.
#[inline]
pub(crate) fn random_u64() -> u64 {
    RNG.with(next_u64)
}

/// The next non-zero number of the generator whose state is `cell` (seeded on first use).
#[inline]
pub(crate) fn next_u64(cell: &Cell<u64>) -> u64 {
    let mut s = cell.get();
    if s == 0 {
        s = seed();
    }
    loop {
        s = s.wrapping_add(0xa076_1d64_78bd_642f);
        cell.set(s);
        let t = (s as u128).wrapping_mul((s ^ 0xe703_7ed1_a0b4_28db) as u128);
        let v = (t >> 64) as u64 ^ t as u64;
        if v != 0 {
            return v;
        }
    }
}

#[inline]
pub(crate) fn random_u128() -> u128 {
    ((random_u64() as u128) << 64) | random_u64() as u128
}

impl TraceId {
    /// A new random W3C trace id from the generator `cell`.
    #[inline]
    pub(crate) fn random_from(cell: &Cell<u64>) -> TraceId {
        TraceId(TraceRepr::Hex32(
            ((next_u64(cell) as u128) << 64) | next_u64(cell) as u128,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_format_as_lowercase_hex() {
        let t = TraceId::random().to_string();
        assert_eq!(t.len(), 32);
        assert!(is_lower_hex(&t));
        let s = SpanId::random().to_string();
        assert_eq!(s.len(), 16);
        assert!(is_lower_hex(&s));
    }

    #[test]
    fn small_values_keep_leading_zeros() {
        assert_eq!(
            TraceId::from_u128(1).unwrap().to_string(),
            format!("{:032}", 1)
        );
        assert_eq!(
            SpanId::from_u64(0xab).unwrap().to_string(),
            "00000000000000ab"
        );
        assert!(TraceId::from_u128(0).is_none());
        assert!(SpanId::from_u64(0).is_none());
    }

    #[test]
    fn parse_keeps_the_form_it_received() {
        let w3c = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(TraceId::parse(w3c).unwrap().to_string(), w3c);
        let newlife = "0a000005175410000012300a1e1092";
        let id = TraceId::parse(newlife).unwrap();
        assert_eq!(id.to_string(), newlife);
        assert!(!id.is_w3c());
        assert_eq!(TraceId::parse("abc").unwrap().to_string(), "abc");
        assert!(TraceId::parse(&"0".repeat(32)).is_none());
        assert!(TraceId::parse(&"a".repeat(51)).is_none());
        assert!(TraceId::parse("has space").is_none());
        assert!(TraceId::parse("").is_none());
        assert_eq!(
            SpanId::parse("00f067aa0ba902b7").unwrap().to_u64(),
            0x00f0_67aa_0ba9_02b7
        );
        assert!(SpanId::parse("00F067AA0BA902B7").is_none());
        assert!(SpanId::parse("0000000000000000").is_none());
    }

    #[test]
    fn random_ids_differ() {
        let a: Vec<u64> = (0..1000).map(|_| random_u64()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }
}
