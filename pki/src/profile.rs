//! Certificate profiles: what each kind of certificate in the hierarchy contains.
//!
//! root CA (P-384, 10 years, pathlen 1) -> intermediate CA (P-384, 5 years, pathlen 0)
//! -> server (P-256, 90 days, serverAuth) and devices (P-256, 180 days, clientAuth, CN = UID).
//! Every certificate gets a random positive 16-byte serial and starts an hour in the past so
//! that devices with a slightly slow clock accept it at once.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::ServerName;
use time::OffsetDateTime;

use crate::PkiError;

pub(crate) const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Validity of the root CA.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Validity of the intermediate CA.
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(1825 * 24 * 60 * 60);
/// Validity of the server certificate.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Validity of a device certificate unless the caller asks otherwise.
pub const DEFAULT_DEVICE_VALIDITY: Duration = Duration::from_secs(180 * 24 * 60 * 60);
/// How long before expiry the server certificate is renewed.
pub const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How far in the past a new certificate starts, for clients whose clock lags.
pub(crate) const BACKDATE: Duration = Duration::from_secs(60 * 60);

pub(crate) const ORGANIZATION: &str = "ROP Relay";
pub(crate) const ROOT_CN: &str = "ROP Relay Root CA";
pub(crate) const INTERMEDIATE_CN: &str = "ROP Relay Intermediate CA";

/// Hosts put in the server certificate when none are given.
pub fn default_hosts() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

/// A random tag that makes this installation's CA names unique, so that certificates of two
/// installations are never mistaken for each other's (by name) during path building.
pub(crate) fn installation_tag() -> Result<String, PkiError> {
    let mut bytes = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    Ok(crate::inspect::hex_upper(&bytes, None))
}

pub(crate) fn root_params(tag: &str, now: SystemTime) -> Result<CertificateParams, PkiError> {
    let mut params = base_params(ca_name(ROOT_CN, tag), now - BACKDATE, now + ROOT_VALIDITY)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

pub(crate) fn intermediate_params(
    tag: &str,
    now: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = base_params(
        ca_name(INTERMEDIATE_CN, tag),
        now - BACKDATE,
        now + INTERMEDIATE_VALIDITY,
    )?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The server certificate for `hosts` (already checked by [`validate_hosts`]).
pub(crate) fn server_params(
    hosts: &[String],
    now: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(
        DnType::CommonName,
        hosts.first().map_or("ROP Relay server", String::as_str),
    );
    let mut params = base_params(name, now - BACKDATE, now + SERVER_VALIDITY)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = hosts.iter().map(|h| san(h)).collect::<Result<_, _>>()?;
    Ok(params)
}

pub(crate) fn device_params(
    uid: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, uid);
    let mut params = base_params(name, not_before, not_after)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn ca_name(cn: &str, tag: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, format!("{cn} {tag}"));
    name
}

fn base_params(
    name: DistinguishedName,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = (
        OffsetDateTime::from(not_before),
        OffsetDateTime::from(not_after),
    );
    if not_after <= not_before {
        return Err(PkiError::InvalidValidity {
            not_before: not_before.unix_timestamp(),
            not_after: not_after.unix_timestamp(),
        });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// 16 random bytes with the top bit clear (so the INTEGER is positive without a sign octet)
/// and a non-zero first byte (so it keeps all 16 bytes and prints the same everywhere).
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Checks every host and returns the list to use (the defaults when `hosts` is empty),
/// without duplicates.
pub(crate) fn validate_hosts(hosts: &[String]) -> Result<Vec<String>, PkiError> {
    if hosts.is_empty() {
        return Ok(default_hosts());
    }
    let mut out: Vec<String> = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = host.trim();
        let valid = !host.is_empty() && ServerName::try_from(host).is_ok();
        if !valid {
            return Err(PkiError::InvalidHost {
                host: host.to_owned(),
            });
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => host.to_ascii_lowercase(),
        };
        if !out.contains(&host) {
            out.push(host);
        }
    }
    Ok(out)
}

fn san(host: &str) -> Result<SanType, PkiError> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(host.to_owned().try_into().map_err(
            |_| PkiError::InvalidHost {
                host: host.to_owned(),
            },
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_and_normalized() {
        assert_eq!(validate_hosts(&[]).unwrap(), default_hosts());
        let hosts = validate_hosts(&[
            "Relay.Example.com".into(),
            "10.0.0.1".into(),
            "relay.example.com".into(),
            "::1".into(),
        ])
        .unwrap();
        assert_eq!(hosts, vec!["relay.example.com", "10.0.0.1", "::1"]);
        for bad in ["", "bad host", "a..b", "-"] {
            assert!(
                matches!(
                    validate_hosts(&[bad.into()]),
                    Err(PkiError::InvalidHost { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn serials_are_positive_16_bytes() {
        for _ in 0..64 {
            let serial = random_serial().unwrap().to_bytes();
            assert_eq!(serial.len(), 16);
            assert!(serial[0] != 0 && serial[0] < 0x80);
        }
    }

    #[test]
    fn validity_must_not_be_empty() {
        let now = SystemTime::now();
        assert!(matches!(
            device_params("95270000ABCDEFGH", now, now),
            Err(PkiError::InvalidValidity { .. })
        ));
    }
}
