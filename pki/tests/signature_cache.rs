//! The memo of certificate-path signature checks (pki::signature_cache_stats): a device's
//! second handshake needs no curve arithmetic for its path, and the memo never lets through
//! what a full check refuses (a tampered certificate, a device revoked after it was remembered).
//!
//! One test in its own binary: the memo and its counters are per process, and other tests
//! running in parallel threads would move them.

mod common;

use base64::Engine;
use common::{handshake, new_pki, HandshakeError, UID};
use pki::{signature_cache_stats, DeviceKey, RevokedSerial, DEFAULT_DEVICE_VALIDITY};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::CertificateError;

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn rejected_as(result: Result<common::Established, HandshakeError>) -> rustls::Error {
    match result {
        Err(HandshakeError::Server(e)) => e,
        Err(other) => panic!("expected the server to reject, got {other:?}"),
        Ok(_) => panic!("handshake unexpectedly succeeded"),
    }
}

#[test]
fn second_handshake_of_a_device_skips_the_path_arithmetic_but_not_the_checks() {
    let (_dir, pki) = new_pki(&[]);
    let issued = pki
        .issue_device(UID, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    let key_pem = issued.key_pem.clone().unwrap();
    let config = pki
        .client_config_for_device(&issued.cert_chain_pem, &key_pem)
        .unwrap();

    let before = signature_cache_stats();
    handshake(config.clone(), pki.mtls_config()).unwrap();
    let first = signature_cache_stats();
    // Server: device cert, intermediate, CRL; client: server cert, intermediate (the same
    // intermediate check as the server's, so possibly already remembered).
    assert!(
        first.verified - before.verified >= 3,
        "a device's first handshake verifies its path in full: {before:?} -> {first:?}"
    );

    handshake(config.clone(), pki.mtls_config()).unwrap();
    let second = signature_cache_stats();
    assert_eq!(
        second.verified, first.verified,
        "the same device again: every path signature is remembered"
    );
    assert!(second.hits - first.hits >= 5, "{first:?} -> {second:?}");

    // Another device: only its own certificate is new.
    let other = pki
        .issue_device(
            "95270000ZZZZZZZZ",
            DeviceKey::Generate,
            DEFAULT_DEVICE_VALIDITY,
        )
        .unwrap();
    let other_config = pki
        .client_config_for_device(&other.cert_chain_pem, other.key_pem.as_deref().unwrap())
        .unwrap();
    handshake(other_config, pki.mtls_config()).unwrap();
    let third = signature_cache_stats();
    assert_eq!(
        third.verified - second.verified,
        1,
        "{second:?} -> {third:?}"
    );

    // The remembered device's certificate with one byte of its signed part changed (its UID):
    // a new key for the memo, verified in full, refused.
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_chain_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let mut der = chain[0].to_vec();
    let at = der
        .windows(UID.len())
        .position(|w| w == UID.as_bytes())
        .expect("the UID is in the certificate");
    der[at + UID.len() - 1] ^= 0x01;
    chain[0] = CertificateDer::from(der);
    let tampered_pem: String = chain.iter().map(|c| pem(c)).collect();
    let tampered = pki
        .client_config_for_device(&tampered_pem, &key_pem)
        .unwrap();
    let failed_before = signature_cache_stats().failed;
    let err = rejected_as(handshake(tampered, pki.mtls_config()));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadSignature)
        ),
        "{err:?}"
    );
    assert!(signature_cache_stats().failed > failed_before);

    // Revoked after its path was remembered: the revocation lookup still runs every time.
    pki.write_crl(&[RevokedSerial {
        serial_hex: issued.serial_hex.clone(),
        revoked_at: 1_700_000_000,
    }])
    .unwrap();
    let err = rejected_as(handshake(config.clone(), pki.mtls_config()));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        ),
        "{err:?}"
    );
    // Un-revoked: accepted again.
    pki.write_crl(&[]).unwrap();
    handshake(config, pki.mtls_config()).unwrap();
}
