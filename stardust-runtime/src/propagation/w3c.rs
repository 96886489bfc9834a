//! W3C Trace Context: `traceparent` and `tracestate` ([docs/propagation.md §3](crate::docs::propagation)).

use crate::id::{SpanId, TraceId, TraceRepr};

use super::trim_ows;

/// Flag bits kept from an incoming `traceparent` and sent in an outgoing one:
/// bit 0 (sampled; Stardust's forced-sampling TraceFlag) and bit 1 (random trace id).
pub(crate) use crate::flags::FLAGS_PROPAGATED as FLAGS_MASK;

/// Most list members a `tracestate` may have.
pub(crate) const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest combined `tracestate` (all header lines joined with `,`) that is looked at; anything
/// longer is discarded whole without being parsed.
pub(crate) const MAX_TRACESTATE_INPUT: usize = 8 * 1024;
/// The size W3C requires a vendor to keep when truncating `tracestate`.
pub(crate) const MIN_TRACESTATE_KEEP: usize = 512;
/// Members longer than this are the first to go when truncating.
const LONG_MEMBER: usize = 128;

/// Length of a version-00 `traceparent` with a 32-hex trace id.
const TRACEPARENT_LEN: usize = 55;

/// A valid incoming `traceparent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub trace_id: TraceId,
    pub parent: SpanId,
    /// Bits 0 and 1 of the incoming flags; the others are dropped.
    pub flags: u8,
}

/// Parses one `traceparent` value (one header line).
///
/// Rules ([docs/propagation.md §3](crate::docs::propagation)): `version-traceid-parentid-flags` of 2/32/16/2 lowercase hex;
/// version `ff` is invalid; version `00` must end after the flags; a higher version must be at
/// least 55 characters and the flags must be followed by the end or `-` (the extra fields are
/// ignored, the context is re-emitted as version `00`); all-zero trace or parent ids are invalid;
/// spaces and tabs around the value are tolerated.
///
/// NewLife compatibility: with version `00` only, a trace id of exactly 30 lowercase hex
/// characters (what NewLife .NET generates) is accepted and kept as [`TraceRepr::Hex30`]. The
/// other fields follow the W3C rules unchanged: the parent must be 16 lowercase hex (the .NET
/// span id format) and nothing may follow the flags.
pub(crate) fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let value = trim_ows(value);
    let mut fields = value.splitn(5, '-');
    let version = fields.next()?;
    let trace = fields.next()?;
    let parent = fields.next()?;
    let flags = fields.next()?;
    let rest = fields.next();

    if version.len() != 2 || !crate::id::is_lower_hex(version) || version == "ff" {
        return None;
    }
    let v00 = version == "00";
    if v00 {
        // Nothing after the flags: `…-01-x` leaves a fifth field, `…-01.x` a long flags field.
        if rest.is_some() {
            return None;
        }
    } else if value.len() < TRACEPARENT_LEN {
        return None;
    }

    let trace_id = match trace.len() {
        32 => TraceId::parse(trace)?,
        30 if v00 => TraceId::parse(trace)?,
        _ => return None,
    };
    // `TraceId::parse` also takes other text verbatim; only the hex forms are valid here.
    if !matches!(trace_id.0, TraceRepr::Hex32(_) | TraceRepr::Hex30(_)) {
        return None;
    }
    let parent = SpanId::parse(parent)?;
    if flags.len() != 2 || !crate::id::is_lower_hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()? & FLAGS_MASK;
    Some(TraceParent {
        trace_id,
        parent,
        flags,
    })
}

/// Formats a version-00 `traceparent`. The trace id is written as given (32 or 30 hex).
pub(crate) fn format_traceparent(trace: &TraceId, span: SpanId, flags: u8) -> String {
    format!("00-{trace}-{span}-{:02x}", flags & FLAGS_MASK)
}

/// Validates the `tracestate` header lines that came with a valid `traceparent` and returns the
/// list normalized: members in order, joined with `,`, without empty members or the spaces and
/// tabs around members. Duplicate keys are kept.
///
/// Returns `None` (discard) when there is no non-empty member, when any member is invalid, when
/// there are more than 32 members, or when the joined lines exceed [`MAX_TRACESTATE_INPUT`].
pub(crate) fn parse_tracestate(lines: &[&str]) -> Option<String> {
    let mut total = 0usize;
    for (i, line) in lines.iter().enumerate() {
        total = total
            .saturating_add(line.len())
            .saturating_add(usize::from(i > 0));
        if total > MAX_TRACESTATE_INPUT {
            return None;
        }
    }
    let mut out = String::with_capacity(total);
    let mut members = 0usize;
    for member in lines.iter().flat_map(|line| line.split(',')) {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > MAX_TRACESTATE_MEMBERS || !is_valid_member(member) {
            return None;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(member);
    }
    (!out.is_empty()).then_some(out)
}

/// `key=value` with the grammar of [docs/propagation.md §3](crate::docs::propagation):
/// key = `[a-z0-9]` then up to 255 of `[a-z0-9_\-*/@]`;
/// value = 1–256 characters in 0x20–0x7E except `,` and `=`, the last one not a space.
fn is_valid_member(member: &str) -> bool {
    let Some((key, value)) = member.split_once('=') else {
        return false;
    };
    is_valid_key(key) && is_valid_value(value)
}

fn is_valid_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= 256
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest.iter().all(|&b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

fn is_valid_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.last() != Some(&b' ')
        && bytes
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// Shortens a `tracestate` to at most `max_len` characters the W3C way: members longer than 128
/// characters are removed first (from the right), then members from the right, until it fits.
/// `max_len` below 512 is raised to 512 (W3C requires at least 512 characters to be kept).
///
/// The input is split on `,` with spaces and tabs around members removed and empty members
/// skipped; the result is normalized the same way. `None` when nothing is left.
pub(crate) fn truncate_tracestate(tracestate: &str, max_len: usize) -> Option<String> {
    let limit = max_len.max(MIN_TRACESTATE_KEEP);
    let members: Vec<&str> = tracestate
        .split(',')
        .map(trim_ows)
        .filter(|m| !m.is_empty())
        .collect();
    let mut keep = vec![true; members.len()];
    let mut kept = members.len();
    let mut len: usize = members.iter().map(|m| m.len()).sum::<usize>() + kept.saturating_sub(1);

    let remove = |i: usize, keep: &mut [bool], kept: &mut usize, len: &mut usize| {
        keep[i] = false;
        *kept -= 1;
        // The member and one separator go (there is none left when the last member goes).
        *len -= members[i].len() + usize::from(*kept > 0);
    };
    for i in (0..members.len()).rev() {
        if len <= limit {
            break;
        }
        if members[i].len() > LONG_MEMBER {
            remove(i, &mut keep, &mut kept, &mut len);
        }
    }
    for i in (0..members.len()).rev() {
        if len <= limit {
            break;
        }
        if keep[i] {
            remove(i, &mut keep, &mut kept, &mut len);
        }
    }
    let out = members
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(m, _)| *m)
        .collect::<Vec<_>>()
        .join(",");
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const P: &str = "00f067aa0ba902b7";

    fn tp(s: &str) -> Option<TraceParent> {
        parse_traceparent(s)
    }

    fn ok(s: &str) -> TraceParent {
        tp(s).unwrap_or_else(|| panic!("should parse: {s:?}"))
    }

    #[test]
    fn valid_version_00() {
        let p = ok(&format!("00-{T}-{P}-01"));
        assert_eq!(p.trace_id.to_string(), T);
        assert!(p.trace_id.is_w3c());
        assert_eq!(p.parent.to_string(), P);
        assert_eq!(p.flags, 1);
        assert_eq!(ok(&format!("00-{T}-{P}-00")).flags, 0);
    }

    #[test]
    fn flags_keep_sampled_and_random_bits_only() {
        assert_eq!(ok(&format!("00-{T}-{P}-02")).flags, 2);
        assert_eq!(ok(&format!("00-{T}-{P}-03")).flags, 3);
        assert_eq!(ok(&format!("00-{T}-{P}-ff")).flags, 3);
        assert_eq!(ok(&format!("00-{T}-{P}-fc")).flags, 0);
        assert_eq!(ok(&format!("00-{T}-{P}-09")).flags, 1);
        assert_eq!(ok(&format!("00-{T}-{P}-0a")).flags, 2);
    }

    #[test]
    fn version_rules() {
        // Not exactly 2 lowercase hex.
        for v in ["0", "000", "0g", "zz", "AA", "0A", "", "-0"] {
            assert!(tp(&format!("{v}-{T}-{P}-01")).is_none(), "version {v:?}");
        }
        assert!(tp(&format!("ff-{T}-{P}-01")).is_none());
        // Any other version parses.
        for v in ["01", "cc", "fe", "a0"] {
            assert_eq!(ok(&format!("{v}-{T}-{P}-01")).trace_id.to_string(), T);
        }
    }

    #[test]
    fn version_00_must_end_after_the_flags() {
        for tail in [
            "-",
            "-x",
            ".x",
            "x",
            "0",
            " x",
            "-what-the-future-will-be-like",
        ] {
            assert!(
                tp(&format!("00-{T}-{P}-01{tail}")).is_none(),
                "tail {tail:?}"
            );
        }
    }

    #[test]
    fn future_versions() {
        // Exactly 55 characters, and longer with `-` after the flags.
        assert_eq!(ok(&format!("cc-{T}-{P}-01")).flags, 1);
        let p = ok(&format!("cc-{T}-{P}-01-what-the-future-will-be-like"));
        assert_eq!((p.trace_id.to_string(), p.flags), (T.to_string(), 1));
        assert!(tp(&format!("cc-{T}-{P}-01-x")).is_some());
        assert!(tp(&format!("cc-{T}-{P}-01-")).is_some());
        // Junk right after the flags.
        assert!(tp(&format!("cc-{T}-{P}-01.what-the-future-will-be-like")).is_none());
        assert!(tp(&format!("cc-{T}-{P}-01x")).is_none());
        assert!(tp(&format!("cc-{T}-{P}-012")).is_none());
        // Shorter than 55 characters.
        assert!(tp(&format!("cc-{T}-{P}-1")).is_none());
        assert!(tp(&format!("cc-{T}-{}-01", &P[..15])).is_none());
        // Future versions still need valid fields.
        assert!(tp(&format!("cc-{}-{P}-01-x", "0".repeat(32))).is_none());
        assert!(tp(&format!("cc-{T}-{P}-0X-x")).is_none());
        // The NewLife 30-hex form is a version-00 thing only.
        assert!(tp(&format!("cc-{}-{P}-01-xx", &T[..30])).is_none());
    }

    #[test]
    fn field_lengths() {
        assert!(tp(&format!("00-{}-{P}-01", &T[..31])).is_none());
        assert!(tp(&format!("00-{T}0-{P}-01")).is_none());
        assert!(tp(&format!("00-{}-{P}-01", &T[..29])).is_none());
        assert!(tp(&format!("00-{T}-{}-01", &P[..15])).is_none());
        assert!(tp(&format!("00-{T}-{P}0-01")).is_none());
        assert!(tp(&format!("00-{T}-{P}-1")).is_none());
        assert!(tp(&format!("00-{T}-{P}-001")).is_none());
        assert!(tp(&format!("00-{T}-{P}")).is_none());
        assert!(tp(&format!("00-{T}")).is_none());
        assert!(tp("").is_none());
        assert!(tp("-").is_none());
        assert!(tp("---").is_none());
        assert!(tp(&format!("00-{T}-{P}--01")).is_none());
        assert!(tp(&format!("00--{T}-{P}-01")).is_none());
        assert!(tp(&format!("00_{T}_{P}_01")).is_none());
    }

    #[test]
    fn uppercase_and_non_hex_are_invalid() {
        assert!(tp(&format!("00-{}-{P}-01", T.to_uppercase())).is_none());
        assert!(tp(&format!("00-{T}-{}-01", P.to_uppercase())).is_none());
        assert!(tp(&format!("00-{T}-{P}-0A")).is_none());
        assert!(tp(&format!("00-{T}-{P}-0g")).is_none());
        let mut t = T.to_string();
        t.replace_range(5..6, "g");
        assert!(tp(&format!("00-{t}-{P}-01")).is_none());
        t.replace_range(5..6, ".");
        assert!(tp(&format!("00-{t}-{P}-01")).is_none());
        // Non-ASCII of the right byte length must not panic or parse.
        assert!(tp(&format!("00-{}é-{P}-01", &T[..30])).is_none());
        assert!(tp(&format!("00-{T}-{}é-01", &P[..14])).is_none());
        assert!(tp(&format!("0é-{T}-{P}-01")).is_none());
        assert!(tp(&format!("00-{T}-{P}-é")).is_none());
    }

    #[test]
    fn all_zero_ids_are_invalid() {
        let z32 = "0".repeat(32);
        let z16 = "0".repeat(16);
        let z30 = "0".repeat(30);
        assert!(tp(&format!("00-{z32}-{P}-01")).is_none());
        assert!(tp(&format!("00-{T}-{z16}-01")).is_none());
        assert!(tp(&format!("00-{z30}-{P}-01")).is_none());
        // A single non-zero digit is enough.
        assert!(tp(&format!("00-{}1-{}1-01", &z32[..31], &z16[..15])).is_some());
    }

    #[test]
    fn ows_around_the_value_is_tolerated() {
        let v = format!("00-{T}-{P}-01");
        for s in [
            format!(" {v}"),
            format!("{v} "),
            format!("\t{v}\t"),
            format!(" \t {v} \t "),
        ] {
            assert_eq!(ok(&s).trace_id.to_string(), T, "{s:?}");
        }
        // Only around the value, and only spaces and tabs.
        assert!(tp(&format!("00- {T}-{P}-01")).is_none());
        assert!(tp(&format!("00-{T}-{P}- 01")).is_none());
        assert!(tp(&format!("\n{v}")).is_none());
        assert!(tp(&format!("{v}\r")).is_none());
        assert!(tp(&format!("\u{a0}{v}")).is_none());
    }

    #[test]
    fn newlife_30_hex_trace_id_is_kept() {
        let nl = "0a000005175410000012300a1e1092";
        let p = ok(&format!("00-{nl}-0a0000051092002a-01"));
        assert_eq!(p.trace_id.to_string(), nl);
        assert!(matches!(p.trace_id.0, TraceRepr::Hex30(_)));
        assert_eq!(p.parent.to_string(), "0a0000051092002a");
        assert_eq!(p.flags, 1);
        // The parent of a 30-hex trace must still be 16 lowercase hex, not zero.
        assert!(tp(&format!("00-{nl}-0a0000051092002-01")).is_none());
        assert!(tp(&format!("00-{nl}-0A0000051092002A-01")).is_none());
        assert!(tp(&format!("00-{nl}-0000000000000000-01")).is_none());
        // Uppercase or 31 characters: invalid.
        assert!(tp(&format!("00-{}-{P}-01", nl.to_uppercase())).is_none());
        assert!(tp(&format!("00-{nl}a-{P}-01")).is_none());
        // Version 00 rules still apply.
        assert!(tp(&format!("00-{nl}-{P}-01-x")).is_none());
    }

    #[test]
    fn formatting() {
        let t = TraceId::parse(T).unwrap();
        let s = SpanId::parse(P).unwrap();
        assert_eq!(format_traceparent(&t, s, 1), format!("00-{T}-{P}-01"));
        assert_eq!(format_traceparent(&t, s, 0xff), format!("00-{T}-{P}-03"));
        assert_eq!(format_traceparent(&t, s, 0x04), format!("00-{T}-{P}-00"));
        let nl = TraceId::parse("0a000005175410000012300a1e1092").unwrap();
        assert_eq!(
            format_traceparent(&nl, s, 1),
            format!("00-0a000005175410000012300a1e1092-{P}-01")
        );
        let small = TraceId::from_u128(1).unwrap();
        assert_eq!(
            format_traceparent(&small, SpanId::from_u64(2).unwrap(), 0),
            format!("00-{:032x}-{:016x}-00", 1, 2)
        );
    }

    fn ts(lines: &[&str]) -> Option<String> {
        parse_tracestate(lines)
    }

    #[test]
    fn tracestate_valid_lists() {
        assert_eq!(ts(&["foo=1"]).as_deref(), Some("foo=1"));
        assert_eq!(ts(&["foo=1,bar=2"]).as_deref(), Some("foo=1,bar=2"));
        assert_eq!(
            ts(&["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]).as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        // Multi-tenant and the other key characters.
        assert_eq!(
            ts(&["fw529a3039@dt=abc,0a*b/c_d-e@f=x"]).as_deref(),
            Some("fw529a3039@dt=abc,0a*b/c_d-e@f=x")
        );
        // Values may contain spaces inside and any printable character but `,` and `=`.
        assert_eq!(ts(&["k=a b"]).as_deref(), Some("k=a b"));
        assert_eq!(ts(&["k= b"]).as_deref(), Some("k= b"));
        assert!(ts(&["k=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~"]).is_some());
    }

    #[test]
    fn tracestate_ows_and_empty_members() {
        assert_eq!(
            ts(&[" foo=1 \t, \tbar=2\t "]).as_deref(),
            Some("foo=1,bar=2")
        );
        assert_eq!(ts(&["foo=1,,bar=2"]).as_deref(), Some("foo=1,bar=2"));
        assert_eq!(ts(&[",foo=1,"]).as_deref(), Some("foo=1"));
        assert_eq!(ts(&["foo=1, ,\t,bar=2"]).as_deref(), Some("foo=1,bar=2"));
        // A trailing space after a value is OWS before the end of the member, not part of it.
        assert_eq!(ts(&["foo=bar "]).as_deref(), Some("foo=bar"));
        assert_eq!(ts(&["foo=bar ,x=1"]).as_deref(), Some("foo=bar,x=1"));
        // Nothing but empty members: nothing to propagate.
        assert_eq!(ts(&[""]), None);
        assert_eq!(ts(&[" , ,"]), None);
        assert_eq!(ts(&[]), None);
        assert_eq!(ts(&["", ""]), None);
    }

    #[test]
    fn tracestate_lines_are_joined_in_order() {
        assert_eq!(ts(&["foo=1", "bar=2"]).as_deref(), Some("foo=1,bar=2"));
        assert_eq!(
            ts(&["bar=2", "foo=1,baz=3"]).as_deref(),
            Some("bar=2,foo=1,baz=3")
        );
        assert_eq!(ts(&["foo=1", "", "bar=2"]).as_deref(), Some("foo=1,bar=2"));
        // An invalid member in any line discards everything.
        assert_eq!(ts(&["foo=1", "bar"]), None);
    }

    #[test]
    fn tracestate_member_limit() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(ts(&[&list(1)]).is_some());
        assert_eq!(ts(&[&list(32)]).as_deref(), Some(list(32).as_str()));
        assert_eq!(ts(&[&list(33)]), None);
        // Empty members do not count.
        let with_empties = format!("{},,,, ,", list(32));
        assert_eq!(ts(&[&with_empties]).as_deref(), Some(list(32).as_str()));
        // Counted across lines.
        assert!(ts(&[&list(16), &list(16)]).is_some());
        assert_eq!(ts(&[&list(16), &list(17)]), None);
    }

    #[test]
    fn tracestate_key_grammar() {
        assert!(ts(&["a=1"]).is_some());
        assert!(ts(&["0=1"]).is_some());
        for bad in [
            "=1",
            "Foo=1",
            "fOo=1",
            "_foo=1",
            "-foo=1",
            "*foo=1",
            "@foo=1",
            "/foo=1",
            "foo.bar=1",
            "foo bar=1",
            "foo =1",
            "foo\t=1",
            "foo!=1",
            "foo#=1",
            "fé=1",
        ] {
            assert_eq!(ts(&[bad]), None, "{bad:?}");
        }
        let k256 = format!("a{}", "b".repeat(255));
        assert!(ts(&[&format!("{k256}=1")]).is_some());
        let k257 = format!("a{}", "b".repeat(256));
        assert_eq!(ts(&[&format!("{k257}=1")]), None);
    }

    #[test]
    fn tracestate_value_grammar() {
        let v256 = "x".repeat(256);
        assert!(ts(&[&format!("k={v256}")]).is_some());
        let v257 = "x".repeat(257);
        assert_eq!(ts(&[&format!("k={v257}")]), None);
        for bad in [
            "k=",
            "k",
            "k=a=b",
            "k==",
            "k=\u{7f}",
            "k=\u{1f}",
            "k=a\tb",
            "k=é",
            "k=a\nb",
            "foo=1,bar",
        ] {
            assert_eq!(ts(&[bad]), None, "{bad:?}");
        }
        // `,` splits members: `k=a,b` is `k=a` and the invalid member `b`.
        assert_eq!(ts(&["k=a,b"]), None);
        // The trailing-space rule, checked directly on the value.
        assert!(!is_valid_value("a "));
        assert!(!is_valid_value(" "));
        assert!(is_valid_value(" a"));
    }

    #[test]
    fn tracestate_duplicates_are_kept() {
        assert_eq!(ts(&["foo=1,foo=2"]).as_deref(), Some("foo=1,foo=2"));
        assert_eq!(ts(&["foo=1", "foo=1"]).as_deref(), Some("foo=1,foo=1"));
    }

    #[test]
    fn tracestate_size_cap() {
        // 32 members of 256-character values: about 8.3 KiB joined, over the cap.
        let big = (0..32)
            .map(|i| format!("k{i}={}", "v".repeat(256)))
            .collect::<Vec<_>>()
            .join(",");
        assert!(big.len() > MAX_TRACESTATE_INPUT);
        assert_eq!(ts(&[&big]), None);
        // Exactly at the cap is looked at.
        let mut at_cap = "k=v".to_string();
        at_cap.push_str(&",".repeat(MAX_TRACESTATE_INPUT - at_cap.len()));
        assert_eq!(at_cap.len(), MAX_TRACESTATE_INPUT);
        assert_eq!(ts(&[&at_cap]).as_deref(), Some("k=v"));
        let over = format!("{at_cap},");
        assert_eq!(ts(&[&over]), None);
        // The separators between lines count.
        let half = "k=v".to_string() + &",".repeat(MAX_TRACESTATE_INPUT / 2 - 3);
        assert_eq!(ts(&[&half, &half]), None);
        // Many lines: bounded by the total as well.
        let many = vec![""; MAX_TRACESTATE_INPUT + 2];
        assert_eq!(ts(&many), None);
    }

    #[test]
    fn truncation_drops_long_members_first_then_from_the_right() {
        // Fits: unchanged (normalized).
        assert_eq!(
            truncate_tracestate("a=1, b=2", 512).as_deref(),
            Some("a=1,b=2")
        );
        // The limit never goes below 512.
        let short = (0..20)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            truncate_tracestate(&short, 10).as_deref(),
            Some(short.as_str())
        );

        let long = format!("big={}", "x".repeat(200)); // 204 characters
        let small: Vec<String> = (0..10)
            .map(|i| format!("k{i}={}", "y".repeat(40)))
            .collect(); // 43 each
        let mut members = vec![small[0].clone(), long.clone()];
        members.extend(small[1..].iter().cloned());
        let joined = members.join(",");
        assert!(joined.len() > 512);
        // Removing the one long member is enough: 10 * 43 + 9 = 439.
        let t = truncate_tracestate(&joined, 512).unwrap();
        assert_eq!(t, small.join(","));

        // Long members go even when they are on the left, and before any short one.
        let mut many = vec![long.clone(), long.clone()];
        many.extend(small.iter().cloned());
        many.extend(small.iter().cloned());
        let joined = many.join(",");
        let t = truncate_tracestate(&joined, 512).unwrap();
        assert!(!t.contains("big="));
        assert!(t.len() <= 512);
        // Then from the right: the kept members are a prefix of the short ones.
        let all_small = [small.clone(), small.clone()].concat();
        let kept: Vec<&str> = t.split(',').collect();
        assert_eq!(kept.len(), 11); // 11 * 43 + 10 = 483; 12 would be 527
        assert_eq!(
            kept,
            all_small[..11]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );

        // Long members on the right go first, from the right, only as many as needed.
        let long2 = format!("big2={}", "z".repeat(200));
        let mut v = small[..5].to_vec(); // 5 * 43 + 4 = 219
        v.push(long.clone()); // +205 = 424
        v.push(long2.clone()); // +206 = 630
        let t = truncate_tracestate(&v.join(","), 512).unwrap();
        assert!(t.contains("big=") && !t.contains("big2="));
        assert!(t.len() <= 512);

        assert_eq!(truncate_tracestate("", 512), None);
        assert_eq!(truncate_tracestate(" , ", 512), None);
        let huge = format!("k={}", "v".repeat(2000));
        assert_eq!(truncate_tracestate(&huge, 512), None);
    }
}
