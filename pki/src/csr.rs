//! Device UIDs and certificate signing requests from devices.
//!
//! A device may keep its own key and send a PKCS#10 CSR instead of taking a key made by the
//! server. This module decides, from the bytes alone, whether such a request is acceptable:
//! bounded size, PEM or DER, a self-signature that verifies, an ECDSA P-256 key. It is sans-IO
//! and never panics on input, so it is fuzzed directly (`fuzz/fuzz_targets/pki_csr.rs`).

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::PkiError;

/// Largest CSR accepted, PEM or DER. A P-256 CSR is about 500 bytes of PEM.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Length of a device UID.
pub const UID_LEN: usize = 16;

/// Checks that `uid` is a device UID: exactly 16 characters of `A-Z` and `0-9`.
pub fn validate_uid(uid: &str) -> Result<(), PkiError> {
    let reason = if uid.len() != UID_LEN {
        "must be exactly 16 characters"
    } else if !uid
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        "only the characters A-Z and 0-9 are allowed"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidUid {
        uid: uid.chars().take(64).collect(),
        reason,
    })
}

/// A CSR whose self-signature verified and whose key is ECDSA P-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCsr {
    /// The subject's common name, if the CSR has exactly one.
    pub common_name: Option<String>,
    /// The requested public key as a DER SubjectPublicKeyInfo.
    pub public_key_spki_der: Vec<u8>,
}

/// Parses and checks a CSR given as PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`)
/// or as raw DER. The subject is not compared with any UID here; see [`DeviceCsr::require_uid`].
pub fn parse_device_csr(input: &[u8]) -> Result<DeviceCsr, PkiError> {
    if input.len() > MAX_CSR_LEN {
        return Err(PkiError::CsrTooLarge {
            len: input.len(),
            limit: MAX_CSR_LEN,
        });
    }
    let der = csr_der(input)?;
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| csr_invalid(format!("not a DER PKCS#10 request ({e})")))?;
    if !rest.is_empty() {
        return Err(csr_invalid(format!(
            "{} unexpected bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    check_p256(&info.subject_pki)?;
    csr.verify_signature()
        .map_err(|e| csr_invalid(format!("the self-signature does not verify ({e})")))?;

    let mut names = info.subject.iter_common_name();
    let common_name = match (names.next(), names.next()) {
        (Some(cn), None) => Some(
            cn.as_str()
                .map_err(|_| csr_invalid("the subject CN is not a text string".to_owned()))?
                .to_owned(),
        ),
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(csr_invalid("the subject has more than one CN".to_owned()))
        }
    };
    Ok(DeviceCsr {
        common_name,
        public_key_spki_der: info.subject_pki.raw.to_vec(),
    })
}

impl DeviceCsr {
    /// Requires the subject CN to be exactly `uid`.
    pub fn require_uid(&self, uid: &str) -> Result<(), PkiError> {
        match &self.common_name {
            Some(cn) if cn == uid => Ok(()),
            other => Err(PkiError::CsrSubjectMismatch {
                expected: uid.to_owned(),
                found: other.as_deref().unwrap_or("").chars().take(64).collect(),
            }),
        }
    }
}

fn csr_invalid(reason: String) -> PkiError {
    PkiError::CsrInvalid { reason }
}

/// Extracts the DER bytes: the first PEM block when the input looks like PEM, else the input.
fn csr_der(input: &[u8]) -> Result<Vec<u8>, PkiError> {
    let trimmed = input.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        if input.is_empty() {
            return Err(csr_invalid("empty request".to_owned()));
        }
        return Ok(input.to_vec());
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(trimmed)
        .map_err(|e| csr_invalid(format!("malformed PEM ({e})")))?;
    match pem.label.as_str() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(pem.contents),
        other => Err(csr_invalid(format!(
            "PEM block is {:?}, expected \"CERTIFICATE REQUEST\"",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

fn check_p256(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), PkiError> {
    let algorithm = &spki.algorithm;
    if algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(()),
            Some(c) => Err(PkiError::CsrKeyType {
                found: format!("ECDSA {}", curve_name(&c.to_id_string())),
            }),
            None => Err(PkiError::CsrKeyType {
                found: "ECDSA key without a named curve".to_owned(),
            }),
        };
    }
    let found = if algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        "RSA".to_owned()
    } else {
        match algorithm.algorithm.to_id_string().as_str() {
            "1.3.101.112" => "Ed25519".to_owned(),
            "1.3.101.113" => "Ed448".to_owned(),
            other => format!("unknown ({other})"),
        }
    };
    Err(PkiError::CsrKeyType { found })
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.34" => "P-384".to_owned(),
        "1.3.132.0.35" => "P-521".to_owned(),
        "1.3.132.0.10" => "secp256k1".to_owned(),
        other => format!("curve {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_pem(cn: &str, alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn uid_rules() {
        validate_uid("95270000ABCDEFGH").unwrap();
        assert!(matches!(
            validate_uid("95270000abcdefgh"),
            Err(PkiError::InvalidUid { .. })
        ));
        assert!(matches!(
            validate_uid("95270000ABCDEFG"),
            Err(PkiError::InvalidUid { .. })
        ));
        assert!(matches!(
            validate_uid("95270000ABCDEFGHI"),
            Err(PkiError::InvalidUid { .. })
        ));
        assert!(validate_uid("9527000ÄABCDEFG").is_err());
        assert!(validate_uid("").is_err());
    }

    #[test]
    fn accepts_p256_pem_and_der() {
        let pem = csr_pem("95270000ABCDEFGH", &rcgen::PKCS_ECDSA_P256_SHA256);
        let csr = parse_device_csr(pem.as_bytes()).unwrap();
        assert_eq!(csr.common_name.as_deref(), Some("95270000ABCDEFGH"));
        csr.require_uid("95270000ABCDEFGH").unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(parse_device_csr(&block.contents).unwrap(), csr);
    }

    #[test]
    fn rejects_p384_with_key_type() {
        let pem = csr_pem("95270000ABCDEFGH", &rcgen::PKCS_ECDSA_P384_SHA384);
        match parse_device_csr(pem.as_bytes()) {
            Err(PkiError::CsrKeyType { found }) => assert_eq!(found, "ECDSA P-384"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_signature() {
        let pem = csr_pem("95270000ABCDEFGH", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents;
        // The CN sits inside the signed part: change one of its characters.
        let at = der
            .windows(16)
            .position(|w| w == b"95270000ABCDEFGH")
            .unwrap();
        der[at] = b'8';
        match parse_device_csr(&der) {
            Err(PkiError::CsrInvalid { reason }) => {
                assert!(reason.contains("self-signature"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_cn_is_a_subject_mismatch() {
        let pem = csr_pem("OTHERUID00000000", &rcgen::PKCS_ECDSA_P256_SHA256);
        let csr = parse_device_csr(pem.as_bytes()).unwrap();
        assert!(matches!(
            csr.require_uid("95270000ABCDEFGH"),
            Err(PkiError::CsrSubjectMismatch { found, .. }) if found == "OTHERUID00000000"
        ));
    }

    #[test]
    fn rejects_garbage_size_and_other_pem() {
        assert!(matches!(
            parse_device_csr(b""),
            Err(PkiError::CsrInvalid { .. })
        ));
        assert!(matches!(
            parse_device_csr(b"\x30\x03\x02\x01"),
            Err(PkiError::CsrInvalid { .. })
        ));
        assert!(matches!(
            parse_device_csr(b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n"),
            Err(PkiError::CsrInvalid { .. })
        ));
        assert!(matches!(
            parse_device_csr(&vec![b'A'; MAX_CSR_LEN + 1]),
            Err(PkiError::CsrTooLarge { len, .. }) if len == MAX_CSR_LEN + 1
        ));
        let cert = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
        match parse_device_csr(cert.cert.pem().as_bytes()) {
            Err(PkiError::CsrInvalid { reason }) => {
                assert!(reason.contains("CERTIFICATE"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
