#![no_main]
//! Arbitrary bytes into a device session in each link mode (signalling, keep-alive raw, keep-alive
//! inside valid frames), split anywhere, interleaved with requests, acks, sweeps and clock steps.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signal::session::fuzzing::session(data));
