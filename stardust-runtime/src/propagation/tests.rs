//! Extraction and injection end to end: source order, tracestate pairing, flags, NewLife forms,
//! and property tests over arbitrary headers.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const P: &str = "00f067aa0ba902b7";
const P_U64: u64 = 0x00f0_67aa_0ba9_02b7;
const NL_TRACE: &str = "0a000005175410000012300a1e1092";
const NL_SPAN: &str = "0a0000051092002a";

fn tp(flags: &str) -> String {
    format!("00-{T}-{P}-{flags}")
}

fn ex(headers: &[(&str, &str)]) -> Option<RemoteContext> {
    extract(headers)
}

fn ex_ok(headers: &[(&str, &str)]) -> RemoteContext {
    ex(headers).unwrap_or_else(|| panic!("should extract: {headers:?}"))
}

fn verbatim(s: &str) -> ParentId {
    ParentId::Verbatim(Arc::from(s))
}

fn span(s: &str) -> SpanId {
    SpanId::parse(s).unwrap()
}

// ---------------------------------------------------------------- traceparent

#[test]
fn traceparent_is_extracted() {
    let c = ex_ok(&[("traceparent", &tp("01"))]);
    assert_eq!(c.trace_id.to_string(), T);
    assert!(c.trace_id.is_w3c());
    assert_eq!(c.parent, ParentId::Span(P_U64));
    assert_eq!(c.flags, 1);
    assert_eq!(c.tracestate, None);
    assert_eq!(c.source, Source::TraceParent);
}

#[test]
fn header_names_are_case_insensitive() {
    for name in ["traceparent", "TraceParent", "TRACEPARENT", "tRaCePaReNt"] {
        assert_eq!(ex_ok(&[(name, &tp("01"))]).source, Source::TraceParent);
    }
    let c = ex_ok(&[("TraceParent", &tp("01")), ("TRACESTATE", "a=1")]);
    assert_eq!(c.tracestate.as_deref(), Some("a=1"));
    for name in ["request-id", "REQUEST-ID", "Request-Id"] {
        assert_eq!(ex_ok(&[(name, "|abc.1.")]).source, Source::RequestId);
    }
    for name in ["eagleeye-traceid", "EagleEye-TraceId", "EAGLEEYE-TRACEID"] {
        assert_eq!(ex_ok(&[(name, "abc-1")]).source, Source::EagleEye);
    }
    for name in ["traceid", "TraceId", "TRACEID"] {
        assert_eq!(ex_ok(&[(name, "abc")]).source, Source::TraceId);
    }
}

#[test]
fn two_traceparent_lines_are_invalid() {
    let v = tp("01");
    assert_eq!(ex(&[("traceparent", &v), ("traceparent", &v)]), None);
    assert_eq!(ex(&[("traceparent", &v), ("TraceParent", &v)]), None);
    assert_eq!(
        ex(&[
            ("traceparent", &v),
            ("traceparent", &v),
            ("traceparent", &v)
        ]),
        None
    );
    // Even when one of them is invalid.
    assert_eq!(ex(&[("traceparent", &v), ("traceparent", "junk")]), None);
    // A HashMap with the name in two cases has two lines as well.
    let mut m = HashMap::new();
    m.insert("traceparent".to_string(), v.clone());
    m.insert("Traceparent".to_string(), v.clone());
    assert_eq!(extract(&m), None);
    // The next source still applies, and tracestate is dropped.
    let c = ex_ok(&[
        ("traceparent", &v),
        ("traceparent", &v),
        ("tracestate", "a=1"),
        ("Request-Id", "|abc.1."),
    ]);
    assert_eq!(c.source, Source::RequestId);
    assert_eq!(c.tracestate, None);
}

#[test]
fn traceparent_vectors_through_extract() {
    let z32 = "0".repeat(32);
    let z16 = "0".repeat(16);
    let invalid = [
        format!("ff-{T}-{P}-01"),
        format!("0-{T}-{P}-01"),
        format!("000-{T}-{P}-01"),
        format!("0G-{T}-{P}-01"),
        format!("00-{}-{P}-01", T.to_uppercase()),
        format!("00-{T}-{}-01", P.to_uppercase()),
        format!("00-{T}-{P}-0A"),
        format!("00-{z32}-{P}-01"),
        format!("00-{T}-{z16}-01"),
        format!("00-{T}-{P}-01.x"),
        format!("00-{T}-{P}-01-x"),
        format!("00-{}-{P}-01", &T[..31]),
        format!("00-{T}1-{P}-01"),
        format!("00-{T}-{}-01", &P[..15]),
        format!("00-{T}-{P}1-01"),
        format!("00-{T}-{P}-1"),
        format!("00-{T}-{P}-011"),
        format!("cc-{T}-{P}-01.x"),
        format!("cc-{T}-{P}-01x"),
        "cc-1-2-3".to_string(),
        String::new(),
        " ".to_string(),
    ];
    for v in &invalid {
        assert_eq!(
            ex(&[("traceparent", v), ("tracestate", "a=1")]),
            None,
            "{v:?}"
        );
    }
    let valid = [
        (format!("cc-{T}-{P}-01"), 1),
        (format!("cc-{T}-{P}-01-what-the-future-will-be-like"), 1),
        (format!("01-{T}-{P}-03-x"), 3),
        (format!(" \t00-{T}-{P}-00\t "), 0),
        (format!("00-{T}-{P}-ff"), 3),
    ];
    for (v, flags) in &valid {
        let c = ex_ok(&[("traceparent", v)]);
        assert_eq!(
            (c.trace_id.to_string(), c.flags),
            (T.to_string(), *flags),
            "{v:?}"
        );
        // Re-emitted as version 00.
        assert_eq!(
            traceparent(&c.trace_id, span(P), c.flags).unwrap(),
            format!("00-{T}-{P}-{flags:02x}")
        );
    }
}

// ---------------------------------------------------------------- tracestate

#[test]
fn tracestate_comes_with_a_valid_traceparent_only() {
    let c = ex_ok(&[("traceparent", &tp("01")), ("tracestate", "foo=1,bar=2")]);
    assert_eq!(c.tracestate.as_deref(), Some("foo=1,bar=2"));
    // Order of headers does not matter.
    let c = ex_ok(&[("tracestate", "foo=1"), ("traceparent", &tp("01"))]);
    assert_eq!(c.tracestate.as_deref(), Some("foo=1"));
    // Without traceparent: no context from it alone, and not attached to another source.
    assert_eq!(ex(&[("tracestate", "foo=1")]), None);
    let c = ex_ok(&[("tracestate", "foo=1"), ("Request-Id", "|abc.1.")]);
    assert_eq!(c.tracestate, None);
    // With an invalid traceparent: dropped, even when TraceId holds a valid traceparent.
    let c = ex_ok(&[
        ("traceparent", "00-bad"),
        ("tracestate", "foo=1"),
        ("TraceId", &tp("01")),
    ]);
    assert_eq!(c.source, Source::TraceId);
    assert_eq!(c.tracestate, None);
}

#[test]
fn tracestate_lines_are_joined_and_validated() {
    let c = ex_ok(&[
        ("traceparent", &tp("01")),
        ("tracestate", "foo=1"),
        ("x", "y"),
        ("TraceState", " bar=2 ,, baz=3"),
    ]);
    assert_eq!(c.tracestate.as_deref(), Some("foo=1,bar=2,baz=3"));
    // Duplicates kept.
    let c = ex_ok(&[
        ("traceparent", &tp("01")),
        ("tracestate", "foo=1"),
        ("tracestate", "foo=2"),
    ]);
    assert_eq!(c.tracestate.as_deref(), Some("foo=1,foo=2"));
    // An invalid member anywhere discards the whole tracestate, not the context.
    let c = ex_ok(&[
        ("traceparent", &tp("01")),
        ("tracestate", "foo=1"),
        ("tracestate", "Bad=2"),
    ]);
    assert_eq!(c.tracestate, None);
    assert_eq!(c.trace_id.to_string(), T);
    // 32 members fine, 33 discarded.
    let list = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let c = ex_ok(&[("traceparent", &tp("01")), ("tracestate", &list(32))]);
    assert_eq!(c.tracestate, Some(list(32)));
    let c = ex_ok(&[("traceparent", &tp("01")), ("tracestate", &list(33))]);
    assert_eq!(c.tracestate, None);
    // Empty tracestate: none.
    let c = ex_ok(&[("traceparent", &tp("01")), ("tracestate", "")]);
    assert_eq!(c.tracestate, None);
}

// ---------------------------------------------------------------- flags

#[test]
fn random_flag_is_carried_over_and_other_bits_dropped() {
    for (incoming, kept) in [
        ("00", 0),
        ("01", 1),
        ("02", 2),
        ("03", 3),
        ("ff", 3),
        ("fd", 1),
        ("04", 0),
    ] {
        let c = ex_ok(&[("traceparent", &tp(incoming))]);
        assert_eq!(c.flags, kept, "{incoming}");
        let mut out: Vec<(String, String)> = Vec::new();
        inject(
            &mut out,
            &c.trace_id,
            span("1111111111111111"),
            c.flags,
            None,
        );
        assert_eq!(out[0].1, format!("00-{T}-1111111111111111-{kept:02x}"));
    }
}

// ---------------------------------------------------------------- NewLife

#[test]
fn newlife_30_hex_trace_id_is_continued() {
    let incoming = format!("00-{NL_TRACE}-{NL_SPAN}-01");
    let c = ex_ok(&[("traceparent", &incoming), ("tracestate", "nl=1")]);
    assert_eq!(c.trace_id.to_string(), NL_TRACE);
    assert!(matches!(c.trace_id.0, TraceRepr::Hex30(_)));
    assert_eq!(c.parent, ParentId::Span(0x0a00_0005_1092_002a));
    assert_eq!(c.flags, 1);
    assert_eq!(c.tracestate.as_deref(), Some("nl=1"));
    let mut out: Vec<(String, String)> = Vec::new();
    inject(
        &mut out,
        &c.trace_id,
        span("0a0000051092002b"),
        c.flags,
        c.tracestate.as_deref(),
    );
    assert_eq!(
        out,
        [
            (
                "traceparent".to_string(),
                format!("00-{NL_TRACE}-0a0000051092002b-01")
            ),
            ("tracestate".to_string(), "nl=1".to_string()),
        ]
    );
    // The same id is accepted from the other NewLife headers.
    let c = ex_ok(&[("Eagleeye-Traceid", &format!("{NL_TRACE}-{NL_SPAN}"))]);
    assert!(matches!(c.trace_id.0, TraceRepr::Hex30(_)));
    let c = ex_ok(&[("TraceId", NL_TRACE)]);
    assert!(matches!(c.trace_id.0, TraceRepr::Hex30(_)));
    let c = ex_ok(&[("TraceId", &incoming)]);
    assert_eq!(
        (c.parent.clone(), c.flags),
        (ParentId::Span(0x0a00_0005_1092_002a), 1)
    );
}

#[test]
fn request_id_forms() {
    let c = ex_ok(&[("Request-Id", "|abc.1.2.")]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent.clone(), c.flags, c.source),
        ("abc".to_string(), ParentId::None, 0, Source::RequestId)
    );
    assert_eq!(c.tracestate, None);
    let c = ex_ok(&[("Request-Id", "|abc.1_2")]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent),
        ("abc".to_string(), verbatim("2"))
    );
    let c = ex_ok(&[("Request-Id", "abc")]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent),
        ("abc".to_string(), ParentId::None)
    );
    let c = ex_ok(&[("Request-Id", &format!("|{T}.{P}"))]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent),
        (T.to_string(), ParentId::Span(P_U64))
    );
    assert_eq!(ex(&[("Request-Id", "")]), None);
    assert_eq!(ex(&[("Request-Id", "|")]), None);
    assert_eq!(
        ex(&[("Request-Id", "|abc."), ("Request-Id", "|def.")]),
        None
    );
}

#[test]
fn eagleeye_and_trace_id_headers() {
    let c = ex_ok(&[("Eagleeye-Traceid", "abc-def")]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent, c.source),
        ("abc".to_string(), verbatim("def"), Source::EagleEye)
    );
    let c = ex_ok(&[("Eagleeye-Traceid", "abc")]);
    assert_eq!(c.parent, ParentId::None);

    let c = ex_ok(&[("TraceId", T)]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent, c.flags, c.source),
        (T.to_string(), ParentId::None, 0, Source::TraceId)
    );
    let c = ex_ok(&[("TraceId", &tp("03"))]);
    assert_eq!(
        (c.trace_id.to_string(), c.parent, c.flags, c.source),
        (T.to_string(), ParentId::Span(P_U64), 3, Source::TraceId)
    );
    assert_eq!(
        ex(&[("TraceId", &format!("00-{T}-{}-01", "0".repeat(16)))]),
        None
    );
}

#[test]
fn ids_over_50_characters_are_rejected_everywhere() {
    let a50 = "a".repeat(50);
    let a51 = "a".repeat(51);
    assert!(ex(&[("Request-Id", &format!("|{a50}.1."))]).is_some());
    assert_eq!(ex(&[("Request-Id", &format!("|{a51}.1."))]), None);
    assert_eq!(ex(&[("Request-Id", &format!("|abc.{a51}"))]), None);
    assert!(ex(&[("Eagleeye-Traceid", &format!("{a50}-{a50}"))]).is_some());
    assert_eq!(ex(&[("Eagleeye-Traceid", &a51)]), None);
    assert_eq!(ex(&[("Eagleeye-Traceid", &format!("abc-{a51}"))]), None);
    assert!(ex(&[("TraceId", &a50)]).is_some());
    assert_eq!(ex(&[("TraceId", &a51)]), None);
}

// ---------------------------------------------------------------- precedence

#[test]
fn sources_are_tried_in_order() {
    let tpv = tp("01");
    let all = [
        ("TraceId", "tid"),
        ("Eagleeye-Traceid", "eagle-1"),
        ("Request-Id", "|req.1."),
        ("traceparent", tpv.as_str()),
    ];
    let pick = |skip: usize, broken: bool| {
        let hs: Vec<(&str, String)> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < all.len() - skip || broken)
            .map(|(i, (n, v))| {
                let v = if broken && i >= all.len() - skip {
                    "!!bad!!,".to_string()
                } else {
                    v.to_string()
                };
                (*n, v)
            })
            .collect();
        extract(&hs).map(|c| (c.source, c.trace_id.to_string()))
    };
    let expected = [
        Some((Source::TraceParent, T.to_string())),
        Some((Source::RequestId, "req".to_string())),
        Some((Source::EagleEye, "eagle".to_string())),
        Some((Source::TraceId, "tid".to_string())),
        None,
    ];
    for (skip, want) in expected.iter().enumerate() {
        // Absent higher-priority headers, and present but invalid ones, give the same result.
        assert_eq!(&pick(skip, false), want, "skip {skip}");
        assert_eq!(&pick(skip, true), want, "broken {skip}");
    }
}

#[test]
fn nothing_valid_gives_none() {
    assert_eq!(ex(&[]), None);
    assert_eq!(ex(&[("x", "y")]), None);
    assert_eq!(
        ex(&[
            ("traceparent", "00-x"),
            ("tracestate", "a=1"),
            ("Request-Id", "|"),
            ("Eagleeye-Traceid", "-"),
            ("TraceId", ""),
            (
                "sw8",
                "1-MQ==-NQ==-3-bWVzaA==-aW5zdGFuY2U=-L2FwaS92MS9oZWFsdGg=-ZXhhbXBsZS5jb206ODA4MA=="
            ),
        ]),
        None
    );
}

#[test]
fn the_fallback_hook_runs_last() {
    let fallback = |c: &[(&str, &str)]| {
        let v = *c.get_all("sw8").first()?;
        Some(RemoteContext {
            trace_id: TraceId::parse(v)?,
            parent: ParentId::None,
            flags: 0,
            tracestate: None,
            source: Source::Sw8,
        })
    };
    let hs: &[(&str, &str)] = &[("sw8", "fromsw8")];
    assert_eq!(extract_with(hs, fallback).unwrap().source, Source::Sw8);
    let hs: &[(&str, &str)] = &[("sw8", "fromsw8"), ("TraceId", "tid")];
    assert_eq!(extract_with(hs, fallback).unwrap().source, Source::TraceId);
    let mut called = false;
    let hs: &[(&str, &str)] = &[("traceparent", "00-x")];
    assert_eq!(
        extract_with(hs, |_| {
            called = true;
            None
        }),
        None
    );
    assert!(called);
}

// ---------------------------------------------------------------- inject

#[test]
fn inject_writes_traceparent_and_tracestate() {
    let trace = TraceId::parse(T).unwrap();
    let mut v: Vec<(String, String)> = Vec::new();
    inject(&mut v, &trace, span(P), 1, None);
    assert_eq!(v, [("traceparent".to_string(), tp("01"))]);

    let mut m: HashMap<String, String> = HashMap::new();
    inject(&mut m, &trace, span(P), 0x83, Some("a=1,b=2"));
    assert_eq!(m["traceparent"], tp("03"));
    assert_eq!(m["tracestate"], "a=1,b=2");

    // An oversized tracestate is truncated W3C-style before it is sent.
    let big = (0..40)
        .map(|i| format!("k{i}={}", "v".repeat(250)))
        .collect::<Vec<_>>()
        .join(",");
    let mut v: Vec<(String, String)> = Vec::new();
    inject(&mut v, &trace, span(P), 0, Some(&big));
    assert!(v[1].1.len() <= w3c::MAX_TRACESTATE_INPUT);
    assert!(big.starts_with(&v[1].1));
    let back = extract(&v).unwrap();
    assert_eq!(back.tracestate.as_deref(), Some(v[1].1.as_str()));

    // An empty tracestate is not written.
    let mut v: Vec<(String, String)> = Vec::new();
    inject(&mut v, &trace, span(P), 0, Some(""));
    assert_eq!(v.len(), 1);
}

#[test]
fn inject_never_overwrites() {
    let trace = TraceId::parse(T).unwrap();
    // The caller's traceparent (any case) stays, and our tracestate is not added to it.
    let mut v: Vec<(String, String)> = vec![("TraceParent".into(), "mine".into())];
    inject(&mut v, &trace, span(P), 1, Some("a=1"));
    assert_eq!(v, [("TraceParent".to_string(), "mine".to_string())]);
    // The caller's tracestate stays; our traceparent is still added.
    let mut m: HashMap<String, String> = HashMap::new();
    m.insert("TRACESTATE".into(), "theirs=1".into());
    inject(&mut m, &trace, span(P), 1, Some("a=1"));
    assert_eq!(m.len(), 2);
    assert_eq!(m["TRACESTATE"], "theirs=1");
    assert_eq!(m["traceparent"], tp("01"));
}

#[test]
fn traceparent_formats() {
    let s = span(P);
    assert_eq!(
        traceparent(&TraceId::parse(T).unwrap(), s, 1).unwrap(),
        tp("01")
    );
    assert_eq!(
        traceparent(&TraceId::parse(T).unwrap(), s, 0xfe).unwrap(),
        tp("02")
    );
    assert_eq!(
        traceparent(&TraceId::parse(NL_TRACE).unwrap(), s, 1).unwrap(),
        format!("00-{NL_TRACE}-{P}-01")
    );
    assert_eq!(traceparent(&TraceId::parse("abc").unwrap(), s, 1), None);
}

#[test]
fn verbatim_trace_ids_get_a_stable_w3c_id_downstream() {
    let c = ex_ok(&[("Request-Id", "|abc.1.")]);
    let mut a: Vec<(String, String)> = Vec::new();
    inject(&mut a, &c.trace_id, span(P), 0x03, Some("a=1"));
    let mut b: Vec<(String, String)> = Vec::new();
    inject(&mut b, &c.trace_id, span("1111111111111111"), 0x03, None);
    assert_eq!(a.len(), 1, "tracestate of another id is not sent");
    let derived = w3c_trace_id_for("abc");
    assert!(derived.is_w3c());
    assert_eq!(a[0].1, format!("00-{derived}-{P}-01"), "bit 1 is cleared");
    assert_eq!(b[0].1, format!("00-{derived}-1111111111111111-01"));
    assert_ne!(w3c_trace_id_for("abd"), derived);
    assert_eq!(w3c_trace_id_for("abc"), derived);
    // Round trip: what we send is a valid traceparent.
    let back = extract(&a).unwrap();
    assert_eq!(back.trace_id, derived);
    assert_eq!(back.parent, ParentId::Span(P_U64));
}

// ---------------------------------------------------------------- properties

const NAMES: &[&str] = &[
    "traceparent",
    "TraceParent",
    "TRACEPARENT",
    "tracestate",
    "TraceState",
    "Request-Id",
    "request-id",
    "Eagleeye-Traceid",
    "EAGLEEYE-TRACEID",
    "TraceId",
    "traceid",
    "sw8",
    "other",
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..120)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[ \t]{0,2}[0-9a-fA-F]{1,3}-[0-9a-f]{28,33}-[0-9a-f]{15,17}-[0-9a-f]{1,3}(-[ -~]{0,5})?[ \t]{0,2}",
        "[ \t]?(00|01|cc)-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[ -~]{0,3})?",
        "00-[0-9a-f]{30}-[0-9a-f]{16}-0[0-3]",
        "[a-z0-9]{1,4}=[a-z0-9 ]{0,4}[a-z0-9]([ \t]*,[ \t]*[a-z0-9]{1,4}=[a-z0-9]{1,4}){0,35}",
        "[0-9a-f]{2}-0{30,32}-[0-9a-f]{16}-0[0-3]",
        "[0-9a-f]{2}-[0-9a-f]{32}-0{16}-0[0-3]",
        "([ \t]*[0-9a-zA-Z@_*/-]{0,4}=[ -~]{0,6}[ \t]*,){0,40}",
        "\\|?[0-9a-zA-Z|]{0,55}([._][0-9a-f0]{0,17}){0,4}",
        "[0-9a-z]{0,55}(-[0-9a-z0]{0,55}){0,2}",
        "0{1,60}",
        "[!-~]{0,60}",
    ]
}

const VALID_TRACEPARENT: &str = "[ \t]?(00|01|cc)-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}";
const VALID_TRACESTATE: &str =
    "[a-z0-9]{1,4}=[a-z0-9 ]{0,4}[a-z0-9]([ \t]*,[ \t]*[a-z0-9]{1,4}=[a-z0-9]{1,4}){0,12}";

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![random_headers(), traceparent_headers()]
}

/// Mostly valid traceparent + tracestate lines, with random others mixed in.
fn traceparent_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        prop::collection::vec(
            prop_oneof![4 => VALID_TRACEPARENT, 1 => header_value()],
            0..3,
        ),
        prop::collection::vec(
            prop_oneof![6 => VALID_TRACESTATE, 1 => header_value()],
            0..4,
        ),
        random_headers(),
    )
        .prop_map(|(tps, tss, mut others)| {
            let mut hs: Vec<(String, String)> = tps
                .into_iter()
                .map(|v| ("traceparent".to_string(), v))
                .chain(tss.into_iter().map(|v| ("TraceState".to_string(), v)))
                .collect();
            hs.append(&mut others);
            hs
        })
}

fn random_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![
                4 => prop::sample::select(NAMES).prop_map(str::to_string),
                1 => "[ -~]{0,20}",
            ],
            header_value(),
        ),
        0..8,
    )
}

fn all_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

fn check_invariants(c: &RemoteContext) {
    let t = c.trace_id.to_string();
    assert!(!t.is_empty() && t.len() <= MAX_ID, "{t:?}");
    assert!(!all_zero(&t));
    assert_ne!(c.trace_id.to_u128(), Some(0));
    match &c.parent {
        ParentId::None => {}
        ParentId::Span(v) => assert_ne!(*v, 0),
        ParentId::Verbatim(s) => assert!(!s.is_empty() && s.len() <= MAX_ID && !all_zero(s)),
    }
    assert_eq!(c.flags & !FLAGS_MASK, 0);
    if !matches!(c.source, Source::TraceParent | Source::TraceId) {
        assert_eq!(c.flags, 0);
    }
    if let Some(ts) = &c.tracestate {
        assert_eq!(c.source, Source::TraceParent);
        assert!(!ts.is_empty() && ts.len() <= w3c::MAX_TRACESTATE_INPUT);
        assert!(ts.split(',').count() <= w3c::MAX_TRACESTATE_MEMBERS);
        // Normalized tracestate is itself valid.
        assert_eq!(w3c::parse_tracestate(&[ts]).as_deref(), Some(ts.as_str()));
    }
}

const MAX_ID: usize = crate::id::MAX_VERBATIM_ID;

fn trace_strategy() -> impl Strategy<Value = TraceId> {
    prop_oneof![
        (1u128..).prop_map(|v| TraceId(TraceRepr::Hex32(v))),
        (1u128..(1u128 << 120)).prop_map(|v| TraceId(TraceRepr::Hex30(v))),
    ]
}

fn tracestate_strategy() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::collection::vec(
            (
                "[a-z0-9][a-z0-9_*/@-]{0,12}",
                "[ -+\\--<>-~]{0,12}[!-+\\--<>-~]",
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
            1..=32,
        )
        .prop_map(|m| m.join(",")),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_headers_never_panic_and_give_sane_ids(hs in headers()) {
        if let Some(c) = extract(&hs) {
            check_invariants(&c);
            // Whatever was extracted can be sent on and read back.
            let mut out: Vec<(String, String)> = Vec::new();
            inject(&mut out, &c.trace_id, span(P), c.flags, c.tracestate.as_deref());
            let back = extract(&out).expect("re-extract");
            check_invariants(&back);
            if matches!(c.trace_id.0, TraceRepr::Verbatim(_)) {
                prop_assert_eq!(back.trace_id, w3c_trace_id_for(&c.trace_id.to_string()));
                prop_assert_eq!(back.flags, c.flags & 1);
                prop_assert_eq!(back.tracestate, None);
            } else {
                prop_assert_eq!(back.trace_id, c.trace_id);
                prop_assert_eq!(back.flags, c.flags);
                prop_assert_eq!(back.tracestate, c.tracestate);
            }
        }
        let map: HashMap<String, String> = hs.iter().cloned().collect();
        if let Some(c) = extract(&map) {
            check_invariants(&c);
        }
    }

    #[test]
    fn single_headers_never_panic(name in prop::sample::select(NAMES), value in header_value()) {
        let hs = [(name, value.as_str())];
        if let Some(c) = extract(&hs) {
            check_invariants(&c);
        }
        let _ = w3c::parse_traceparent(&value);
        let _ = w3c::parse_tracestate(&[&value]);
        let _ = w3c::truncate_tracestate(&value, 0);
        let _ = newlife::request_id(&value);
        let _ = newlife::eagleeye(&value);
        let _ = newlife::trace_id(&value);
    }

    #[test]
    fn inject_then_extract_round_trips(
        trace in trace_strategy(),
        span_id in 1u64..,
        flags in any::<u8>(),
        tracestate in tracestate_strategy(),
        name_case in any::<bool>(),
    ) {
        let span_id = SpanId::from_u64(span_id).unwrap();
        let mut out: Vec<(String, String)> = Vec::new();
        inject(&mut out, &trace, span_id, flags, tracestate.as_deref());
        if name_case {
            for (n, _) in &mut out {
                *n = n.to_uppercase();
            }
        }
        let c = extract(&out).expect("round trip");
        prop_assert_eq!(&c.trace_id, &trace);
        prop_assert_eq!(c.parent, ParentId::Span(span_id.to_u64()));
        prop_assert_eq!(c.flags, flags & 0x03);
        prop_assert_eq!(c.tracestate, tracestate);
        prop_assert_eq!(c.source, Source::TraceParent);
        prop_assert_eq!(
            traceparent(&trace, span_id, flags).unwrap(),
            out[0].1.clone()
        );
    }

    #[test]
    fn verbatim_ids_round_trip_to_their_derived_id(text in "[!-~]{1,50}", flags in any::<u8>()) {
        let Some(trace) = TraceId::parse(&text) else { return Ok(()); };
        let mut out: Vec<(String, String)> = Vec::new();
        inject(&mut out, &trace, span(P), flags, Some("a=1"));
        let c = extract(&out).expect("round trip");
        match trace.0 {
            TraceRepr::Verbatim(_) => {
                prop_assert_eq!(c.trace_id, w3c_trace_id_for(&text));
                prop_assert_eq!(c.flags, flags & 1);
                prop_assert_eq!(c.tracestate, None);
            }
            _ => {
                prop_assert_eq!(c.trace_id, trace);
                prop_assert_eq!(c.tracestate.as_deref(), Some("a=1"));
            }
        }
    }

    #[test]
    fn inject_never_overwrites_existing_headers(
        existing in prop::collection::vec((prop::sample::select(NAMES), "[ -~]{0,10}"), 0..4),
        tracestate in tracestate_strategy(),
    ) {
        let mut out: Vec<(String, String)> =
            existing.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        let before = out.clone();
        inject(&mut out, &TraceId::random(), SpanId::random(), 1, tracestate.as_deref());
        prop_assert_eq!(&out[..before.len()], &before[..]);
        let count = |n: &str| out.iter().filter(|(k, _)| k.eq_ignore_ascii_case(n)).count();
        let had = |n: &str| before.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        prop_assert!(count("traceparent") <= 1.max(before.iter().filter(|(k, _)| k.eq_ignore_ascii_case("traceparent")).count()));
        if had("traceparent") {
            prop_assert_eq!(out.len(), before.len());
        }
        if had("tracestate") {
            prop_assert_eq!(count("tracestate"), before.iter().filter(|(k, _)| k.eq_ignore_ascii_case("tracestate")).count());
        }
    }

    #[test]
    fn truncation_respects_the_limit(
        members in prop::collection::vec("[a-z]{1,8}=[a-z]{1,200}", 0..40),
        limit in 0usize..3000,
    ) {
        let joined = members.join(",");
        let out = w3c::truncate_tracestate(&joined, limit);
        let limit = limit.max(512);
        match out {
            None => prop_assert!(members.iter().all(|m| m.len() > limit) || members.is_empty()),
            Some(t) => {
                prop_assert!(t.len() <= limit);
                if joined.len() <= limit {
                    prop_assert_eq!(&t, &joined);
                }
                // Kept members keep their order.
                let kept: Vec<&str> = t.split(',').collect();
                let mut it = members.iter();
                for k in kept {
                    prop_assert!(it.any(|m| m == k));
                }
            }
        }
    }
}
