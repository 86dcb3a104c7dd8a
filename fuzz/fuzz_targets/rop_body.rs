#![no_main]
//! Arbitrary bytes as an XML body: no panic; every typed message read from it survives encode and parse.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::proto::body::fuzzing::parse_body(data));
