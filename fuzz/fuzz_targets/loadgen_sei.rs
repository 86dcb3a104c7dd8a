#![no_main]
//! Arbitrary bytes as the H.264 NAL units and RTP payloads a loadgen viewer looks into for the
//! devices' SEI send stamps: no panic, and a stamp found round-trips through its encoder.

use libfuzzer_sys::fuzz_target;
use loadgen::sei::{stamp_in_rtp_payload, FrameStamp};

fuzz_target!(|data: &[u8]| {
    for stamp in [FrameStamp::from_nal(data), stamp_in_rtp_payload(data)]
        .into_iter()
        .flatten()
    {
        assert_eq!(FrameStamp::from_nal(&stamp.to_sei_nal()), Some(stamp));
    }
});
