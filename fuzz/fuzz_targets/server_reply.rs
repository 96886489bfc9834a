//! Server-reply handling: the response envelope and the TraceResponse/login/ping fields.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stardust_runtime::__fuzz::server_reply(data);
});
