//! The fuzz targets' inputs, run on stable in CI: every committed corpus file, then a bounded
//! property test of random inputs through the same entry points (`fuzz/fuzz_targets/`).

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
        let r = std::panic::catch_unwind(|| stardust_runtime::__fuzz::headers(&data));
        assert!(r.is_ok(), "{} panicked", path.display());
    }
}

#[test]
fn server_reply_corpus() {
    for (path, data) in corpus("server_reply") {
        let r = std::panic::catch_unwind(|| stardust_runtime::__fuzz::server_reply(&data));
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
        stardust_runtime::__fuzz::headers(lines.join("\n").as_bytes());
    }

    #[test]
    fn random_header_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        stardust_runtime::__fuzz::headers(&data);
    }

    #[test]
    fn random_reply_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        stardust_runtime::__fuzz::server_reply(&data);
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
        stardust_runtime::__fuzz::server_reply(body.as_bytes());
    }
}
