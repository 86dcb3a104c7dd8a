#![no_main]
//! Arbitrary bytes as an ANNOUNCE body: no panic, typed views work, encoding is stable.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::proto::fuzz_rtsp::sdp(data));
