#![no_main]
//! Arbitrary bytes in arbitrary chunks as a ROP media stream: no panic, chunking and re-encoding keep the frames.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::proto::media::fuzzing::frames(data));
