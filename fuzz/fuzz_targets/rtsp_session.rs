#![no_main]
//! Arbitrary bytes as a client's RTSP connection driven through the session state machine
//! (`PLAYURL`/`PUBURL` in the input become valid signed URLs): one response per request with its
//! CSeq, only documented state changes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::rtsp::fuzzing::rtsp_session(data));
