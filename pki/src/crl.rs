//! Certificate revocation lists issued by the intermediate CA.
//!
//! The list of revoked devices lives in the control plane's store; each change is written out
//! as a complete, signed CRL (`DIR/pki/crl.pem`) that the mutual-TLS verifier reloads. The CRL
//! number grows by one with every list so that a newer list can always be told from an older.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::PkiError;

/// How long a CRL stays current (its nextUpdate). The server rewrites it on every revocation;
/// an operator's job should rewrite it at least this often for outside relying parties.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// The certificate serial in hex, as [`crate::IssuedDevice::serial_hex`] gives it (case and
    /// `:` separators are ignored).
    pub serial_hex: String,
    /// When it was revoked, unix seconds.
    pub revoked_at: i64,
}

/// Parses a hex serial into its minimal big-endian magnitude (at most 20 octets, RFC 5280).
pub fn parse_serial_hex(serial: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |reason| PkiError::InvalidSerial {
        serial: serial.chars().take(80).collect(),
        reason,
    };
    let digits: Vec<u8> = serial.bytes().filter(|&b| b != b':').collect();
    if digits.is_empty() {
        return Err(invalid("empty"));
    }
    if digits.len() > 64 {
        return Err(invalid("too long"));
    }
    let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut bytes = Vec::with_capacity(digits.len() / 2 + 1);
    let odd = digits.len() % 2 == 1;
    let mut pending: Option<u8> = if odd { Some(0) } else { None };
    for &d in &digits {
        let value = nibble(d).ok_or_else(|| invalid("not hexadecimal"))?;
        match pending.take() {
            Some(high) => bytes.push(high << 4 | value),
            None => pending = Some(value),
        }
    }
    let first_non_zero = bytes.iter().position(|&b| b != 0);
    let magnitude = match first_non_zero {
        Some(i) => bytes.split_off(i),
        None => return Err(invalid("serial numbers must be positive")),
    };
    if magnitude.len() > 20 {
        return Err(invalid("longer than 20 octets"));
    }
    Ok(magnitude)
}

/// Builds the parameters of CRL number `crl_number` listing `revoked`.
pub(crate) fn crl_params(
    revoked: &[RevokedSerial],
    crl_number: u64,
    now: SystemTime,
) -> Result<CertificateRevocationListParams, PkiError> {
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&parse_serial_hex(&r.serial_hex)?),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at).map_err(
                    |_| PkiError::InvalidSerial {
                        serial: r.serial_hex.clone(),
                        reason: "revocation time out of range",
                    },
                )?,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    Ok(CertificateRevocationListParams {
        this_update: OffsetDateTime::from(now),
        next_update: OffsetDateTime::from(now + CRL_VALIDITY),
        crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    })
}

/// The CRL number of a PEM CRL, or `None` if it is not a parsable CRL with a number that fits
/// in 64 bits.
pub(crate) fn crl_number_of_pem(pem: &[u8]) -> Option<u64> {
    let der = CertificateRevocationListDer::from_pem_slice(pem).ok()?;
    let (_, crl) = CertificateRevocationList::from_der(&der).ok()?;
    let digits = crl.crl_number()?.to_u64_digits();
    match digits.as_slice() {
        [] => Some(0),
        [n] => Some(*n),
        _ => None,
    }
}

/// Decodes the PEM CRLs in `pem` (an empty file means no CRL).
pub(crate) fn crls_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::parse("CRL", origin, e))?;
    for crl in &crls {
        CertificateRevocationList::from_der(crl).map_err(|e| PkiError::parse("CRL", origin, e))?;
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_forms() {
        assert_eq!(parse_serial_hex("0A:bc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial_hex("abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial_hex("00ff").unwrap(), vec![0xff]);
        for bad in ["", "xyz", "00", &"1".repeat(42), &"f".repeat(65)] {
            assert!(
                matches!(parse_serial_hex(bad), Err(PkiError::InvalidSerial { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn crl_number_round_trip() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&key).unwrap();
        let revoked = [RevokedSerial {
            serial_hex: "7F01".into(),
            revoked_at: 1_700_000_000,
        }];
        let crl = crl_params(&revoked, 41, SystemTime::now())
            .unwrap()
            .signed_by(&ca, &key)
            .unwrap();
        let pem = crl.pem().unwrap();
        assert_eq!(crl_number_of_pem(pem.as_bytes()), Some(41));
        assert_eq!(crls_from_pem(pem.as_bytes(), "memory").unwrap().len(), 1);
        assert!(crls_from_pem(b"", "memory").unwrap().is_empty());
        assert_eq!(crl_number_of_pem(b"garbage"), None);
    }
}
