//! Real rustls handshakes in memory against the configurations the PKI hands out.

mod common;

use std::time::{Duration, SystemTime};

use common::{handshake, new_pki, serial_of, HandshakeError, UID};
use pki::{connection_peer_uid, peer_uid, DeviceKey, RevokedSerial, DEFAULT_DEVICE_VALIDITY};
use rustls::{CertificateError, ClientConfig};

const DAY: Duration = Duration::from_secs(86_400);

fn device_config(pki: &pki::Pki, uid: &str) -> (pki::IssuedDevice, std::sync::Arc<ClientConfig>) {
    let issued = pki
        .issue_device(uid, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    let config = pki
        .client_config_for_device(&issued.cert_chain_pem, issued.key_pem.as_deref().unwrap())
        .unwrap();
    (issued, config)
}

fn server_rejects(result: Result<common::Established, HandshakeError>) -> rustls::Error {
    match result {
        Err(HandshakeError::Server(e)) => e,
        Err(other) => panic!("expected the server to reject, got {other:?}"),
        Ok(_) => panic!("handshake unexpectedly succeeded"),
    }
}

#[test]
fn server_config_serves_the_server_certificate() {
    let (_dir, pki) = new_pki(&["localhost", "127.0.0.1"]);
    let est = handshake(
        pki.client_config_trusting_root().unwrap(),
        pki.server_config(),
    )
    .unwrap();
    let chain = est.client.peer_certificates().unwrap();
    assert_eq!(chain.len(), 2, "server certificate and intermediate");
    assert_eq!(serial_of(&chain[0]), pki.status()[2].serial_hex);
    assert!(est.server.alpn_protocol().is_none());
}

#[test]
fn mtls_accepts_a_valid_device_and_names_it() {
    let (_dir, pki) = new_pki(&[]);
    let (_, config) = device_config(&pki, UID);
    let est = handshake(config, pki.mtls_config()).unwrap();
    assert_eq!(connection_peer_uid(&est.server).as_deref(), Some(UID));
    assert_eq!(
        peer_uid(est.server.peer_certificates().unwrap()).as_deref(),
        Some(UID)
    );
    assert_eq!(
        est.server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[test]
fn mtls_works_over_tls12() {
    let (_dir, pki) = new_pki(&[]);
    let issued = pki
        .issue_device(UID, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pem_certs(pki.ca_pem()).remove(0),
        ))
        .unwrap();
    let config = ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pem_certs(&issued.cert_chain_pem)
                .into_iter()
                .map(Into::into)
                .collect(),
            rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.unwrap().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let est = handshake(std::sync::Arc::new(config), pki.mtls_config()).unwrap();
    assert_eq!(
        est.server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(connection_peer_uid(&est.server).as_deref(), Some(UID));
}

use rustls::pki_types::pem::PemObject;

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

#[test]
fn mtls_accepts_a_device_sending_only_its_own_certificate() {
    let (_dir, pki) = new_pki(&[]);
    let issued = pki
        .issue_device(UID, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    let leaf_only = issued
        .cert_chain_pem
        .split_inclusive("-----END CERTIFICATE-----")
        .next()
        .unwrap();
    let config = pki
        .client_config_for_device(leaf_only, issued.key_pem.as_deref().unwrap())
        .unwrap();
    let est = handshake(config, pki.mtls_config()).unwrap();
    assert_eq!(connection_peer_uid(&est.server).as_deref(), Some(UID));
}

#[test]
fn mtls_rejects_a_client_without_certificate() {
    let (_dir, pki) = new_pki(&[]);
    let err = server_rejects(handshake(
        pki.client_config_trusting_root().unwrap(),
        pki.mtls_config(),
    ));
    assert!(
        matches!(err, rustls::Error::NoCertificatesPresented),
        "{err:?}"
    );
}

#[test]
fn mtls_rejects_a_certificate_from_another_ca() {
    let (_dir, pki) = new_pki(&[]);
    let (_other_dir, other) = new_pki(&[]);
    let issued = other
        .issue_device(UID, DeviceKey::Generate, DEFAULT_DEVICE_VALIDITY)
        .unwrap();
    // The client trusts our server but presents a certificate of the other PKI.
    let config = pki
        .client_config_for_device(&issued.cert_chain_pem, issued.key_pem.as_deref().unwrap())
        .unwrap();
    let err = server_rejects(handshake(config, pki.mtls_config()));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn mtls_rejects_an_expired_certificate() {
    let (_dir, pki) = new_pki(&[]);
    let now = SystemTime::now();
    let issued = pki
        .issue_device_with_validity(UID, DeviceKey::Generate, now - 10 * DAY, now - DAY)
        .unwrap();
    let config = pki
        .client_config_for_device(&issued.cert_chain_pem, issued.key_pem.as_deref().unwrap())
        .unwrap();
    let err = server_rejects(handshake(config, pki.mtls_config()));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[test]
fn mtls_rejects_a_server_certificate_used_as_client_certificate() {
    let (dir, pki) = new_pki(&[]);
    let chain = std::fs::read_to_string(dir.path().join("pki/server.pem")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("pki/server.key")).unwrap();
    let config = pki.client_config_for_device(&chain, &key).unwrap();
    let err = server_rejects(handshake(config, pki.mtls_config()));
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn revocation_applies_to_configs_handed_out_before() {
    let (dir, pki) = new_pki(&[]);
    let mtls = pki.mtls_config(); // taken before anything is revoked
    let (revoked, revoked_config) = device_config(&pki, UID);
    let (_, other_config) = device_config(&pki, "95270000ZZZZZZZZ");
    handshake(revoked_config.clone(), mtls.clone()).unwrap();

    // Another process (the control plane) writes the CRL; this one reloads it.
    let writer = pki::Pki::open(dir.path()).unwrap();
    writer
        .write_crl(&[RevokedSerial {
            serial_hex: revoked.serial_hex.clone(),
            revoked_at: 1_700_000_000,
        }])
        .unwrap();
    handshake(revoked_config.clone(), mtls.clone()).expect("not reloaded yet: still accepted");
    assert!(pki.reload_crl_if_changed().unwrap());
    assert!(
        !pki.reload_crl_if_changed().unwrap(),
        "second check without change must not reload"
    );

    let err = server_rejects(handshake(revoked_config.clone(), mtls.clone()));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        ),
        "{err:?}"
    );
    let est = handshake(other_config, mtls).unwrap();
    assert_eq!(
        connection_peer_uid(&est.server).as_deref(),
        Some("95270000ZZZZZZZZ")
    );

    // An explicit reload of the same file keeps the device revoked.
    pki.reload_crl().unwrap();
    server_rejects(handshake(revoked_config.clone(), pki.mtls_config()));
    // Un-revoking (a new, empty list) lets it in again.
    pki.write_crl(&[]).unwrap();
    handshake(revoked_config, pki.mtls_config()).unwrap();
}

#[test]
fn write_crl_applies_in_the_same_process_at_once() {
    let (_dir, pki) = new_pki(&[]);
    let mtls = pki.mtls_config();
    let (issued, config) = device_config(&pki, UID);
    pki.write_crl(&[RevokedSerial {
        serial_hex: issued.serial_hex.to_lowercase(),
        revoked_at: 1_700_000_000,
    }])
    .unwrap();
    let err = server_rejects(handshake(config, mtls));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        ),
        "{err:?}"
    );
}

#[test]
fn a_corrupt_crl_file_is_refused_and_the_old_list_stays() {
    let (dir, pki) = new_pki(&[]);
    let (issued, config) = device_config(&pki, UID);
    pki.write_crl(&[RevokedSerial {
        serial_hex: issued.serial_hex,
        revoked_at: 1_700_000_000,
    }])
    .unwrap();
    std::fs::write(
        dir.path().join("pki/crl.pem"),
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let err = pki.reload_crl_if_changed().unwrap_err();
    assert!(
        matches!(err, pki::PkiError::Parse { what: "CRL", .. }),
        "{err}"
    );
    server_rejects(handshake(config, pki.mtls_config()));
}

#[test]
fn renewal_swaps_the_certificate_for_new_handshakes_only() {
    let (_dir, pki) = new_pki(&["localhost"]);
    let server_config = pki.server_config();
    let (_, device) = device_config(&pki, UID);

    let mut old_tls = handshake(
        pki.client_config_trusting_root().unwrap(),
        server_config.clone(),
    )
    .unwrap();
    let mut old_mtls = handshake(device.clone(), pki.mtls_config()).unwrap();
    let old_serial = serial_of(&old_tls.client.peer_certificates().unwrap()[0]);

    let renewed = pki.renew_server().unwrap();
    assert_ne!(renewed.serial_hex, old_serial);
    assert_eq!(pki.server_hosts(), vec!["localhost"]);

    let new_tls = handshake(pki.client_config_trusting_root().unwrap(), server_config).unwrap();
    assert_eq!(
        serial_of(&new_tls.client.peer_certificates().unwrap()[0]),
        renewed.serial_hex
    );
    let new_mtls = handshake(device, pki.mtls_config()).unwrap();
    assert_eq!(
        serial_of(&new_mtls.client.peer_certificates().unwrap()[0]),
        renewed.serial_hex
    );

    // Connections established before the renewal keep working.
    common::exchange(&mut old_tls).unwrap();
    common::exchange(&mut old_mtls).unwrap();
}

#[test]
fn reload_server_cert_picks_up_another_process_renewal() {
    let (dir, pki) = new_pki(&["localhost"]);
    let before = pki.status()[2].serial_hex.clone();
    assert!(!pki.reload_server_cert_if_changed().unwrap());
    let other = pki::Pki::open(dir.path()).unwrap();
    let renewed = other.renew_server().unwrap();
    assert!(pki.reload_server_cert_if_changed().unwrap());
    assert_eq!(pki.status()[2].serial_hex, renewed.serial_hex);
    assert_ne!(before, renewed.serial_hex);
    let est = handshake(
        pki.client_config_trusting_root().unwrap(),
        pki.server_config(),
    )
    .unwrap();
    assert_eq!(
        serial_of(&est.client.peer_certificates().unwrap()[0]),
        renewed.serial_hex
    );
    pki.reload_server_cert().unwrap();
}
