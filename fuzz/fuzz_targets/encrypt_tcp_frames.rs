#![no_main]
//! Arbitrary bytes as encryptTCP hello and frames; then as frame bodies that must decode back in any chunking.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::proto::encrypt_tcp::fuzzing::frames(data));
