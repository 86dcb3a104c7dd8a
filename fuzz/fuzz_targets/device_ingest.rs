#![no_main]
//! Arbitrary bytes into a device stream ingest in each mode (TLS plaintext, encryptTCP, TCP).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    relay::ingest::fuzzing::ingest(data);
});
