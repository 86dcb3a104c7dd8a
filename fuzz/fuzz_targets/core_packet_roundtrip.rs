#![no_main]
//! Core packets decoded from arbitrary bytes re-encode to exactly the bytes they came from.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::proto::core_packet::fuzzing::round_trip(data));
