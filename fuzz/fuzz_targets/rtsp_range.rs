#![no_main]
//! Arbitrary text as an RTSP `Range` value: refusals are 457 at a byte inside the value, and a parsed range prints back to itself.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::proto::fuzz_rtsp::rtsp_range(data));
