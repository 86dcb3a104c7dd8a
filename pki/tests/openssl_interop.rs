//! The PKI's output checked by an independent implementation: the openssl command line.

mod common;

use std::path::Path;

use common::{combined, new_pki, openssl, stdout, UID};
use pki::{DeviceKey, PkiError, RevokedSerial, DEFAULT_DEVICE_VALIDITY};

fn verify(dir: &Path, cert: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["verify"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "-CAfile",
        "pki/root-ca.pem",
        "-untrusted",
        "pki/intermediate-ca.pem",
        cert,
    ]);
    openssl(dir, &args)
}

#[test]
fn server_certificate_verifies_and_names_every_host() {
    let (dir, _pki) = new_pki(&["relay.example.com", "10.1.2.3", "localhost", "::1"]);
    let out = verify(dir.path(), "pki/server.pem", &["-purpose", "sslserver"]);
    assert!(out.status.success(), "{}", combined(&out));
    assert!(
        stdout(&out).contains("pki/server.pem: OK"),
        "{}",
        combined(&out)
    );

    let out = openssl(
        dir.path(),
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "pki/server.pem",
        ],
    );
    let san = stdout(&out);
    for expected in [
        "DNS:relay.example.com",
        "IP Address:10.1.2.3",
        "DNS:localhost",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(san.contains(expected), "{expected} missing from {san}");
    }

    let out = openssl(
        dir.path(),
        &["x509", "-noout", "-text", "-in", "pki/server.pem"],
    );
    let text = stdout(&out);
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
}

#[test]
fn ca_certificates_have_the_documented_profile() {
    let (dir, pki) = new_pki(&[]);
    let root = stdout(&openssl(
        dir.path(),
        &["x509", "-noout", "-text", "-in", "pki/root-ca.pem"],
    ));
    assert!(
        root.contains("secp384r1") && root.contains("CA:TRUE"),
        "{root}"
    );
    let intermediate = stdout(&openssl(
        dir.path(),
        &["x509", "-noout", "-text", "-in", "pki/intermediate-ca.pem"],
    ));
    assert!(
        intermediate.contains("secp384r1") && intermediate.contains("pathlen:0"),
        "{intermediate}"
    );
    let out = verify(dir.path(), "pki/intermediate-ca.pem", &[]);
    assert!(out.status.success(), "{}", combined(&out));

    // The fingerprint is the one openssl prints.
    let fp = stdout(&openssl(
        dir.path(),
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            "pki/root-ca.pem",
        ],
    ));
    assert_eq!(
        fp.trim(),
        format!("sha256 Fingerprint={}", pki.root_fingerprint_sha256())
    );
}

#[test]
fn ca_hash_is_sha256_of_the_pem_file_bytes() {
    let (dir, pki) = new_pki(&[]);
    let out = openssl(
        dir.path(),
        &["dgst", "-sha256", "-binary", "pki/root-ca.pem"],
    );
    use base64::Engine as _;
    assert_eq!(
        pki.ca_hash(),
        base64::engine::general_purpose::STANDARD.encode(&out.stdout)
    );
    assert_eq!(
        pki.ca_pem(),
        std::fs::read_to_string(dir.path().join("pki/root-ca.pem")).unwrap()
    );
}

#[test]
fn device_certificate_verifies_for_client_auth() {
    let (dir, pki) = new_pki(&[]);
    let issued = pki
        .issue_device(UID, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    std::fs::write(dir.path().join("device.pem"), &issued.cert_chain_pem).unwrap();
    let out = verify(dir.path(), "device.pem", &["-purpose", "sslclient"]);
    assert!(out.status.success(), "{}", combined(&out));

    let text = stdout(&openssl(
        dir.path(),
        &[
            "x509",
            "-noout",
            "-text",
            "-serial",
            "-subject",
            "-in",
            "device.pem",
        ],
    ));
    assert!(
        text.contains(&format!("serial={}", issued.serial_hex)),
        "{text}"
    );
    assert!(text.contains(&format!("subject=CN = {UID}")), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
    let days = (issued.not_after - issued.not_before) / 86_400;
    assert!((180..=181).contains(&days), "{days} days");

    // The generated key is a P-256 key that belongs to the certificate.
    std::fs::write(
        dir.path().join("device.key"),
        issued.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    let out = openssl(
        dir.path(),
        &["x509", "-noout", "-pubkey", "-in", "device.pem"],
    );
    let from_key = openssl(dir.path(), &["pkey", "-pubout", "-in", "device.key"]);
    assert_eq!(stdout(&out), stdout(&from_key));
}

#[test]
fn revoked_device_is_listed_in_the_crl_and_rejected_by_openssl() {
    let (dir, pki) = new_pki(&[]);
    let revoked = pki
        .issue_device(UID, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    let kept = pki
        .issue_device(
            "95270000ZZZZZZZZ",
            DeviceKey::Generate,
            DEFAULT_DEVICE_VALIDITY,
        )
        .unwrap();
    std::fs::write(dir.path().join("revoked.pem"), &revoked.cert_chain_pem).unwrap();
    std::fs::write(dir.path().join("kept.pem"), &kept.cert_chain_pem).unwrap();

    let first = pki
        .write_crl(&[RevokedSerial {
            serial_hex: revoked.serial_hex.clone(),
            revoked_at: 1_700_000_000,
        }])
        .unwrap();
    let text = stdout(&openssl(
        dir.path(),
        &["crl", "-in", "pki/crl.pem", "-text", "-noout"],
    ));
    assert!(
        text.contains(&format!("Serial Number: {}", revoked.serial_hex)),
        "{text}"
    );
    assert!(!text.contains(&kept.serial_hex), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    assert!(
        text.contains(&format!("X509v3 CRL Number: \n                {first}")),
        "{text}"
    );
    assert_eq!(first, 2, "init wrote CRL number 1");

    let out = openssl(
        dir.path(),
        &[
            "crl",
            "-in",
            "pki/crl.pem",
            "-noout",
            "-CAfile",
            "pki/intermediate-ca.pem",
        ],
    );
    assert!(combined(&out).contains("verify OK"), "{}", combined(&out));

    let crl_check = ["-crl_check", "-CRLfile", "pki/crl.pem"];
    let out = verify(dir.path(), "revoked.pem", &crl_check);
    assert!(!out.status.success(), "{}", combined(&out));
    assert!(
        combined(&out).contains("certificate revoked"),
        "{}",
        combined(&out)
    );
    let out = verify(dir.path(), "kept.pem", &crl_check);
    assert!(out.status.success(), "{}", combined(&out));

    assert_eq!(pki.write_crl(&[]).unwrap(), first + 1);
}

#[test]
fn invalid_serials_are_refused_before_anything_is_written() {
    let (dir, pki) = new_pki(&[]);
    let before = std::fs::read(dir.path().join("pki/crl.pem")).unwrap();
    let err = pki
        .write_crl(&[RevokedSerial {
            serial_hex: "not-hex".into(),
            revoked_at: 0,
        }])
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidSerial { .. }), "{err}");
    assert!(err.is_client_error());
    assert_eq!(
        std::fs::read(dir.path().join("pki/crl.pem")).unwrap(),
        before
    );
}

fn openssl_csr(dir: &Path, name: &str, newkey: &[&str], subject: &str) -> String {
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend_from_slice(newkey);
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    args.extend_from_slice(&["-keyout", &key, "-subj", subject, "-out", &csr]);
    let out = openssl(dir, &args);
    assert!(out.status.success(), "{}", combined(&out));
    std::fs::read_to_string(dir.join(csr)).unwrap()
}

const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

#[test]
fn openssl_csr_is_certified_and_the_device_can_connect() {
    let (dir, pki) = new_pki(&[]);
    let csr = openssl_csr(dir.path(), "dev", P256, &format!("/CN={UID}"));
    let issued = pki
        .issue_device(UID, DeviceKey::Csr(&csr), DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    assert!(issued.key_pem.is_none());
    std::fs::write(dir.path().join("dev.pem"), &issued.cert_chain_pem).unwrap();
    let out = verify(dir.path(), "dev.pem", &["-purpose", "sslclient"]);
    assert!(out.status.success(), "{}", combined(&out));

    let key = std::fs::read_to_string(dir.path().join("dev.key")).unwrap();
    let config = pki
        .client_config_for_device(&issued.cert_chain_pem, &key)
        .unwrap();
    let est = common::handshake(config, pki.mtls_config()).unwrap();
    assert_eq!(pki::connection_peer_uid(&est.server).as_deref(), Some(UID));
}

#[test]
fn csr_with_another_cn_is_a_subject_mismatch() {
    let (dir, pki) = new_pki(&[]);
    let csr = openssl_csr(dir.path(), "dev", P256, "/CN=95270000XXXXXXXX");
    let err = pki
        .issue_device(UID, DeviceKey::Csr(&csr), DEFAULT_DEVICE_VALIDITY)
        .unwrap_err();
    match &err {
        PkiError::CsrSubjectMismatch { expected, found } => {
            assert_eq!(expected, UID);
            assert_eq!(found, "95270000XXXXXXXX");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.is_client_error());
    assert!(err.to_string().contains("95270000XXXXXXXX"), "{err}");
}

#[test]
fn csr_with_rsa_or_p384_key_is_a_key_type_error() {
    let (dir, pki) = new_pki(&[]);
    let subject = format!("/CN={UID}");
    let rsa = openssl_csr(dir.path(), "rsa", &["-newkey", "rsa:2048"], &subject);
    let p384 = openssl_csr(
        dir.path(),
        "p384",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &subject,
    );
    for (csr, found) in [(rsa, "RSA"), (p384, "ECDSA P-384")] {
        match pki.issue_device(UID, DeviceKey::Csr(&csr), DEFAULT_DEVICE_VALIDITY) {
            Err(PkiError::CsrKeyType { found: f }) => assert_eq!(f, found),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn garbage_csr_and_bad_uid_are_precise_errors() {
    let (_dir, pki) = new_pki(&[]);
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = pki
            .issue_device(UID, DeviceKey::Csr(garbage), DEFAULT_DEVICE_VALIDITY)
            .unwrap_err();
        assert!(
            matches!(err, PkiError::CsrInvalid { .. }),
            "{garbage:?}: {err}"
        );
    }
    let huge = "A".repeat(pki::MAX_CSR_LEN + 1);
    assert!(matches!(
        pki.issue_device(UID, DeviceKey::Csr(&huge), DEFAULT_DEVICE_VALIDITY),
        Err(PkiError::CsrTooLarge { .. })
    ));
    let err = pki
        .issue_device(
            "lowercase0000000",
            DeviceKey::Generate,
            DEFAULT_DEVICE_VALIDITY,
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidUid { .. }), "{err}");
}
