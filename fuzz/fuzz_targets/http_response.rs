#![no_main]
//! Arbitrary bytes as HTTP responses (the webhook client's side): no panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::proto::http::fuzzing::parse_responses(data));
