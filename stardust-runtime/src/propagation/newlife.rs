//! The other headers NewLife .NET's `Detach` reads ([docs/propagation.md §2.3](crate::docs::propagation), [docs/propagation.md §2](crate::docs::propagation)):
//! `Request-Id`, `Eagleeye-Traceid` and `TraceId`.
//!
//! These carry no flags and no `tracestate`. Each function takes one header value; the caller
//! rejects a header that appears on more than one line.

use std::sync::Arc;

use crate::id::{ParentId, SpanId, TraceId, is_lower_hex, is_verbatim_id};

use super::trim_ows;
use super::w3c::{TraceParent, parse_traceparent};

/// A parent id received from a NewLife header: empty → no parent; 16 lowercase hex (not zero) →
/// a span id; any other valid verbatim id (1..=50 visible ASCII characters without separators,
/// not all `0`) → kept verbatim. Anything else makes the whole header invalid.
pub(crate) fn parse_parent(text: &str) -> Option<ParentId> {
    if text.is_empty() {
        return Some(ParentId::None);
    }
    if text.len() == 16 && is_lower_hex(text) {
        return SpanId::parse(text).map(|s| ParentId::Span(s.to_u64()));
    }
    (is_verbatim_id(text) && !text.bytes().all(|b| b == b'0'))
        .then(|| ParentId::Verbatim(Arc::from(text)))
}

/// `Request-Id`, the .NET hierarchical id: `|abc.1.2.` → trace `abc`, parent = the last piece
/// after splitting on `.` and `_` (empty after a trailing `.`, which means no parent).
///
/// The first piece with `|` trimmed from both ends is the trace id. A value with a single piece
/// (`abc`, `|abc`) is a trace id with no parent: the first piece is not its own parent.
pub(crate) fn request_id(value: &str) -> Option<(TraceId, ParentId)> {
    let value = trim_ows(value);
    let mut pieces = value.split(['.', '_']);
    let trace = TraceId::parse(pieces.next()?.trim_matches('|'))?;
    let parent = match pieces.next_back() {
        None => ParentId::None,
        Some(last) => parse_parent(last)?,
    };
    Some((trace, parent))
}

/// `Eagleeye-Traceid`: `traceid` or `traceid-parent` (split on `-`; more than two fields is
/// invalid; an empty parent means no parent).
pub(crate) fn eagleeye(value: &str) -> Option<(TraceId, ParentId)> {
    let value = trim_ows(value);
    let mut fields = value.split('-');
    let trace = TraceId::parse(fields.next()?)?;
    let parent = match fields.next() {
        None => ParentId::None,
        Some(p) => parse_parent(p)?,
    };
    if fields.next().is_some() {
        return None;
    }
    Some((trace, parent))
}

/// What a `TraceId` header held.
pub(crate) enum TraceIdHeader {
    /// A full traceparent, with the W3C rules of [docs/propagation.md §3](crate::docs::propagation) (including the 30-hex NewLife form).
    TraceParent(TraceParent),
    /// A bare trace id: no parent, no flags.
    Bare(TraceId),
}

/// `TraceId`: a full traceparent or a bare trace id (32 hex, 30 hex, or verbatim ≤ 50
/// characters). A traceparent-shaped value that fails the W3C rules is always longer than
/// 50 characters, so it is never taken as a bare id instead.
pub(crate) fn trace_id(value: &str) -> Option<TraceIdHeader> {
    if let Some(p) = parse_traceparent(value) {
        return Some(TraceIdHeader::TraceParent(p));
    }
    TraceId::parse(trim_ows(value)).map(TraceIdHeader::Bare)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TraceRepr;

    fn verbatim(s: &str) -> ParentId {
        ParentId::Verbatim(Arc::from(s))
    }

    fn rid(s: &str) -> Option<(String, ParentId)> {
        request_id(s).map(|(t, p)| (t.to_string(), p))
    }

    fn ee(s: &str) -> Option<(String, ParentId)> {
        eagleeye(s).map(|(t, p)| (t.to_string(), p))
    }

    #[test]
    fn parents() {
        assert_eq!(parse_parent(""), Some(ParentId::None));
        assert_eq!(
            parse_parent("00f067aa0ba902b7"),
            Some(ParentId::Span(0x00f0_67aa_0ba9_02b7))
        );
        assert_eq!(parse_parent("0000000000000000"), None);
        assert_eq!(parse_parent("0"), None);
        assert_eq!(parse_parent("000"), None);
        assert_eq!(parse_parent("2"), Some(verbatim("2")));
        assert_eq!(
            parse_parent("00F067AA0BA902B7"),
            Some(verbatim("00F067AA0BA902B7"))
        );
        assert_eq!(
            parse_parent("00f067aa0ba902b"),
            Some(verbatim("00f067aa0ba902b"))
        );
        assert_eq!(
            parse_parent(&"a".repeat(50)),
            Some(verbatim(&"a".repeat(50)))
        );
        assert_eq!(parse_parent(&"a".repeat(51)), None);
        assert_eq!(parse_parent("a b"), None);
        assert_eq!(parse_parent("a,b"), None);
        assert_eq!(parse_parent("é"), None);
    }

    #[test]
    fn request_id_forms() {
        assert_eq!(rid("|abc.1.2."), Some(("abc".into(), ParentId::None)));
        assert_eq!(rid("|abc.1_2"), Some(("abc".into(), verbatim("2"))));
        assert_eq!(rid("|abc.1.2"), Some(("abc".into(), verbatim("2"))));
        assert_eq!(
            rid("|abc.1_a1b2c3d4."),
            Some(("abc".into(), ParentId::None))
        );
        assert_eq!(
            rid("|abc.1.a1b2c3d4_"),
            Some(("abc".into(), ParentId::None))
        );
        assert_eq!(rid("|abc."), Some(("abc".into(), ParentId::None)));
        assert_eq!(rid("abc"), Some(("abc".into(), ParentId::None)));
        assert_eq!(rid("|abc"), Some(("abc".into(), ParentId::None)));
        assert_eq!(rid("|abc|.1."), Some(("abc".into(), ParentId::None)));
        assert_eq!(rid(" |abc.1.2.\t"), Some(("abc".into(), ParentId::None)));
        assert_eq!(
            rid("|4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7"),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                ParentId::Span(0x00f0_67aa_0ba9_02b7)
            ))
        );
        let (t, _) = request_id("|4bf92f3577b34da6a3ce929d0e0e4736.1.").unwrap();
        assert!(t.is_w3c());
        let (t, _) = request_id("|0a000005175410000012300a1e1092.1.").unwrap();
        assert!(matches!(t.0, TraceRepr::Hex30(_)));
        // Invalid.
        for bad in [
            "", "|", "||", ".", "|.1.", "_1", "|abc.1.0", "|0.1.", "|000.1.", "|a b.1.",
        ] {
            assert_eq!(rid(bad), None, "{bad:?}");
        }
        assert_eq!(rid("|abc.1.bad,parent"), None);
        assert_eq!(rid("|abc.1.0000000000000000"), None);
        // Ids over 50 characters.
        assert!(rid(&format!("|{}.1.", "a".repeat(50))).is_some());
        assert_eq!(rid(&format!("|{}.1.", "a".repeat(51))), None);
        assert_eq!(rid(&format!("|abc.1.{}", "b".repeat(51))), None);
        assert!(rid(&format!("|abc.1.{}", "b".repeat(50))).is_some());
    }

    #[test]
    fn eagleeye_forms() {
        let nl = "0a000005175410000012300a1e1092";
        assert_eq!(ee(nl), Some((nl.into(), ParentId::None)));
        let (t, p) = eagleeye(&format!("{nl}-0a0000051092002a")).unwrap();
        assert!(matches!(t.0, TraceRepr::Hex30(_)));
        assert_eq!(p, ParentId::Span(0x0a00_0005_1092_002a));
        assert_eq!(ee("abc-1"), Some(("abc".into(), verbatim("1"))));
        assert_eq!(ee("abc-"), Some(("abc".into(), ParentId::None)));
        assert_eq!(ee("\tabc-1 "), Some(("abc".into(), verbatim("1"))));
        for bad in ["", "-", "-1", "abc-1-2", "abc--", "a b-1", "abc-0", "0-1"] {
            assert_eq!(ee(bad), None, "{bad:?}");
        }
        // A UUID splits into five fields: not `traceid-parent`.
        assert_eq!(ee("cff945a9-0059-a740-f0e2-c06661fcf04b"), None);
        assert_eq!(ee(&format!("{}-1", "a".repeat(51))), None);
        assert_eq!(ee(&format!("abc-{}", "1".repeat(51))), None);
    }

    #[test]
    fn trace_id_header_forms() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        match trace_id(t) {
            Some(TraceIdHeader::Bare(id)) => assert!(id.is_w3c()),
            _ => panic!("bare 32-hex"),
        }
        match trace_id(" abc ") {
            Some(TraceIdHeader::Bare(id)) => assert_eq!(id.to_string(), "abc"),
            _ => panic!("bare verbatim"),
        }
        match trace_id(&format!("00-{t}-00f067aa0ba902b7-01")) {
            Some(TraceIdHeader::TraceParent(p)) => {
                assert_eq!(p.trace_id.to_string(), t);
                assert_eq!(p.flags, 1);
            }
            _ => panic!("traceparent"),
        }
        // A UUID is a bare verbatim id.
        assert!(matches!(
            trace_id("550e8400-e29b-41d4-a716-446655440000"),
            Some(TraceIdHeader::Bare(_))
        ));
        // A broken traceparent is not taken as a bare id.
        assert!(trace_id(&format!("00-{t}-0000000000000000-01")).is_none());
        assert!(trace_id(&format!("00-{t}-00f067aa0ba902b7-01-x")).is_none());
        assert!(trace_id("").is_none());
        assert!(trace_id(&"0".repeat(32)).is_none());
        assert!(trace_id(&"a".repeat(51)).is_none());
        assert!(trace_id(&"a".repeat(50)).is_some());
    }
}
