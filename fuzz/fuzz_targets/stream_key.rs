#![no_main]
//! Arbitrary text as a stream key: no panic, and whatever parses prints back to the same key.

use libfuzzer_sys::fuzz_target;
use relay::stream_key::StreamKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = text.parse::<StreamKey>() {
        assert_eq!(key.to_string().parse::<StreamKey>(), Ok(key));
    }
});
