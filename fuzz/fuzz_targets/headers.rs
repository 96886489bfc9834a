//! Every incoming-header parser (traceparent, tracestate, Request-Id, Eagleeye-Traceid,
//! TraceId) through `SpanContext::extract`, and the inject → extract round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stardust_runtime::__fuzz::headers(data);
});
