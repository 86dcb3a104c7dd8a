#![no_main]
//! Arbitrary bytes as a pull source's answers, fed to the relay's RTSP client session: no panic,
//! requests only in the states that send them, header rules only in handshake mode.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| relay::pull::fuzzing::pull_client(data));
