//! Entry points for the fuzz targets (`fuzz/`) and the corpus test. Not public API.

use std::collections::HashMap;

use crate::context::SpanContext;

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
    crate::stardust::fuzz_reply(data);
}
