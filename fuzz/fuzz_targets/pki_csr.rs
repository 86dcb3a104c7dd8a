#![no_main]
//! Arbitrary bytes as a device CSR (PEM or DER): must return a value or an error, never panic.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = pki::parse_device_csr(data) {
        let _ = csr.require_uid("95270000ABCDEFGH");
    }
});
