//! Reading facts back out of certificates: subject, serial, validity, SAN hosts, public key.
//!
//! Used for expiry reports, for renewing the server certificate with the hosts it already has,
//! for checking that stored keys belong to their certificates, and for the peer UID after a
//! mutual-TLS handshake.

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::PkiError;

/// What the PKI needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) subject: String,
    pub(crate) common_name: Option<String>,
    pub(crate) serial_hex: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    /// DNS names and IP addresses of the subjectAltName extension, in order.
    pub(crate) san_hosts: Vec<String>,
    pub(crate) spki_der: Vec<u8>,
}

impl CertInfo {
    pub(crate) fn parse(
        der: &[u8],
        what: &'static str,
        origin: &str,
    ) -> Result<CertInfo, PkiError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| PkiError::parse(what, origin, e))?;
        if !rest.is_empty() {
            return Err(PkiError::parse(
                what,
                origin,
                "trailing bytes after the certificate",
            ));
        }
        let san_hosts = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(general_name_host)
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(PkiError::parse(what, origin, e)),
        };
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            common_name: single_common_name(&cert),
            serial_hex: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            san_hosts,
            spki_der: cert.public_key().raw.to_vec(),
        })
    }
}

fn single_common_name(cert: &X509Certificate<'_>) -> Option<String> {
    let mut names = cert.subject().iter_common_name();
    match (names.next(), names.next()) {
        (Some(cn), None) => cn.as_str().ok().map(str::to_owned),
        _ => None,
    }
}

fn general_name_host(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|b| IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Upper-case hex of a serial's content octets without a leading sign octet, the way
/// `openssl x509 -serial` and `openssl crl -text` print it.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let mut bytes = raw;
    while bytes.len() > 1 && bytes[0] == 0 {
        bytes = &bytes[1..];
    }
    hex_upper(bytes, None)
}

pub(crate) fn hex_upper(bytes: &[u8], separator: Option<char>) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            if let Some(sep) = separator {
                out.push(sep);
            }
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// The device UID a verified client presented: the CN of the end-entity certificate (the first
/// of `chain`), if it is a well-formed UID. Call it after a mutual-TLS handshake with
/// `conn.peer_certificates()`.
pub fn peer_uid(chain: &[CertificateDer<'_>]) -> Option<String> {
    let end_entity = chain.first()?;
    let (_, cert) = X509Certificate::from_der(end_entity).ok()?;
    let cn = single_common_name(&cert)?;
    crate::validate_uid(&cn).ok()?;
    Some(cn)
}

/// [`peer_uid`] of a server connection whose handshake has completed.
pub fn connection_peer_uid(conn: &rustls::ServerConnection) -> Option<String> {
    peer_uid(conn.peer_certificates()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_drops_sign_octet() {
        assert_eq!(serial_hex(&[0x00, 0x8A, 0x01]), "8A01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(hex_upper(&[0xAB, 0x01], Some(':')), "AB:01");
    }

    #[test]
    fn reads_sans_and_names() {
        let mut params = rcgen::CertificateParams::new(vec![
            "cam.example".to_owned(),
            "10.0.0.7".to_owned(),
            "::1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "95270000ABCDEFGH");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der(), "test", "memory").unwrap();
        assert_eq!(info.san_hosts, vec!["cam.example", "10.0.0.7", "::1"]);
        assert_eq!(info.spki_der, key.public_key_der());
        assert_eq!(
            peer_uid(&[cert.der().clone()]).as_deref(),
            Some("95270000ABCDEFGH")
        );
        assert_eq!(peer_uid(&[]), None);
        assert_eq!(peer_uid(&[CertificateDer::from(vec![0x30, 0x00])]), None);
    }
}
