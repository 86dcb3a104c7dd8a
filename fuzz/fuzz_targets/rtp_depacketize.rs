#![no_main]
//! Arbitrary bytes as an RTP packet (keyframe and parameter-set helpers) and as an Annex-B/ADTS frame (packetizers lose no NAL unit).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::proto::fuzz_rtsp::rtp_depacketize(data));
