#![no_main]
//! Arbitrary bytes as pipelined HTTP requests: no panic; complete requests stay inside the input.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::proto::http::fuzzing::parse_requests(data));
