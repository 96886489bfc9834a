//! Entry points for the fuzz targets (`fuzz/`), compiled only under `cfg(fuzzing)` (set by
//! `cargo fuzz`) and for this crate's own tests. Not public API.
//!
//! The tests below run the fuzz targets' inputs on stable in CI: every committed corpus file,
//! then a bounded property test of random inputs through the same entry points.

use std::collections::HashMap;

use crate::span::context::SpanContext;

/// Header lines `name: value` (one per line) → extract → inject → extract again: never
/// panics, and what was extracted survives a round trip.
pub fn headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<(String, String)> = text
        .lines()
        .take(64)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect();
    let Some(ctx) = SpanContext::extract(&lines) else {
        return;
    };
    let trace = ctx.trace_id().to_string();
    assert!(
        !trace.is_empty() && trace.len() <= crate::id::MAX_VERBATIM_ID,
        "{trace:?}"
    );
    assert!(
        trace.bytes().any(|b| b != b'0'),
        "all-zero trace id accepted"
    );
    assert!(ctx.flags() & !0x03 == 0);
    let mut out: HashMap<String, String> = HashMap::new();
    ctx.inject(&mut out);
    let again = SpanContext::extract(&out).expect("an injected context is extracted");
    if ctx.trace_id().is_w3c() {
        assert_eq!(again.trace_id(), ctx.trace_id());
        assert_eq!(again.flags(), ctx.flags());
        assert_eq!(again.tracestate(), ctx.tracestate());
    }
}

/// A Stardust server reply body, read as the client reads replies.
pub fn server_reply(data: &[u8]) {
    crate::report::stardust::fuzz_reply(data);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| {
                let p = e.unwrap().path();
                let data = std::fs::read(&p).unwrap();
                (p, data)
            })
            .collect();
        out.sort();
        assert!(out.len() >= 5, "corpus {target} has {} files", out.len());
        out
    }

    #[test]
    fn headers_corpus() {
        for (path, data) in corpus("headers") {
            let r = std::panic::catch_unwind(|| super::headers(&data));
            assert!(r.is_ok(), "{} panicked", path.display());
        }
    }

    #[test]
    fn server_reply_corpus() {
        for (path, data) in corpus("server_reply") {
            let r = std::panic::catch_unwind(|| super::server_reply(&data));
            assert!(r.is_ok(), "{} panicked", path.display());
        }
    }

    fn header_line() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("traceparent"),
            Just("TraceParent"),
            Just("tracestate"),
            Just("Request-Id"),
            Just("Eagleeye-Traceid"),
            Just("TraceId"),
            Just("x-other"),
        ];
        let value = prop_oneof![
            "[0-9a-f-]{0,80}",
            "00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}",
            "[ -~]{0,120}",
            "\\|[a-z0-9]{1,20}(\\.[0-9_]{0,3}){0,4}",
        ];
        (name, value).prop_map(|(n, v)| format!("{n}: {v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_header_sets(lines in proptest::collection::vec(header_line(), 0..6)) {
            super::headers(lines.join("\n").as_bytes());
        }

        #[test]
        fn random_header_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::headers(&data);
        }

        #[test]
        fn random_reply_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::server_reply(&data);
        }

        #[test]
        fn random_reply_json(
            code in prop_oneof![Just("0".to_string()), Just("200".to_string()), "-?[0-9]{1,12}", Just("\"x\"".to_string()), Just("null".to_string())],
            period in "-?[0-9]{1,12}|\"[0-9a-z]{0,5}\"|null|\\[\\]",
            samples in "-?[0-9]{1,12}|null|true",
            excludes in proptest::collection::vec("[ -~]{0,40}", 0..20),
        ) {
            let body = format!(
                r#"{{"code":{code},"data":{{"period":{period},"maxSamples":{samples},"excludes":{}}}}}"#,
                serde_json::to_string(&excludes).unwrap()
            );
            super::server_reply(body.as_bytes());
        }
    }
}
