#![no_main]
//! Arbitrary bytes in arbitrary chunks as a core-packet stream: no panic, chunking never changes the packets.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::proto::core_packet::fuzzing::read_chunked(data));
