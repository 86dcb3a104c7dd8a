#![no_main]
//! Arbitrary bytes as an RTSP connection stream (messages and `$` frames): chunking changes nothing, encoding is stable.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::proto::fuzz_rtsp::rtsp_message(data));
