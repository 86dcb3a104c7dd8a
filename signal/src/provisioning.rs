//! Device provisioning, exactly as the platform does it so that real cameras enrol unchanged
//! (rop-protocol.md, "Provisioning flow"):
//!
//! 1. client API: `POST /v1.0/devices/initialization-session {uid}` -> host, ports, a one-time
//!    code (8 characters, valid 60 s), `caHash` and the time;
//! 2. `GET /v1.0/ca` on the CA port -> `{ca, now}`;
//! 3. `POST /v1.0/devices/credetials {uid, code}` on the credentials port -> `{cert, key, code}`
//!    where `code` is the long-term code that lets the device fetch a new certificate later;
//! 4. `POST /v1.0/devices/registration {uid}` over mutual TLS -> the encryptTCP access key pair,
//!    the keep-alive and signalling ports and the heartbeat interval.
//!
//! What we add: one-time codes are stored hashed in the embedded store and really are single
//! use; a `csr` field lets a device keep its own key; new credentials revoke the older ones;
//! long-term codes stop working once an operator revoked the device. This module is the logic
//! only (no HTTP): [`crate::api`] maps it onto the ports.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::access_key::AccessKeyPair;
use crate::store::{CodeRecord, CodeRefusal, IssueOutcome, IssuedCert, Store, StoreError};

/// Length of a one-time code: the platform tells short codes from long-term codes by it.
pub const SHORT_CODE_LEN: usize = 8;

/// Why a provisioning request was refused. Each maps to the platform's error symbol and
/// status code (`errors/device.js` and `errors/client.js` of the platform's server).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisioningError {
    /// The request is malformed: bad UID, missing field, bad CSR. Client's fault.
    #[error("{0}")]
    InvalidParameter(String),
    /// Unknown, used or expired code. Device's fault.
    #[error("the code is invalid: {0}")]
    CodeInvalid(&'static str),
    /// The code or the certificate belongs to another UID. Device's fault.
    #[error("the device is not matched: {0}")]
    DeviceNotMatched(String),
    /// A long-term code whose signature does not verify. Device's fault.
    #[error("the signature of the code is not matched")]
    SignatureNotMatched,
    /// The device was revoked by an operator; it needs a new initialization session.
    #[error("device {0} is revoked; create a new initialization session for it")]
    DeviceRevoked(String),
    /// Our fault: store or PKI failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProvisioningError {
    /// The platform's error symbol.
    pub fn symbol(&self) -> &'static str {
        match self {
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::CodeInvalid(_) => "code_invalid",
            Self::DeviceNotMatched(_) => "device_not_matched",
            Self::SignatureNotMatched => "signature_not_matched",
            Self::DeviceRevoked(_) => "auth_failed",
            Self::Internal(_) => "server_internal_error",
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::DeviceRevoked(_) => 403,
            Self::Internal(_) => 500,
            _ => 400,
        }
    }
}

impl From<StoreError> for ProvisioningError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// The answer to an initialization session (the platform's JSON field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializationSession {
    /// The device UID.
    pub uid: String,
    /// Host the device connects to.
    pub host: String,
    /// Port of `GET /v1.0/ca`.
    #[serde(rename = "getCAPort")]
    pub get_ca_port: u16,
    /// Port of `POST /v1.0/devices/credetials`.
    pub get_cert_port: u16,
    /// Port of `POST /v1.0/devices/registration`.
    pub register_port: u16,
    /// The one-time code.
    pub code: String,
    /// base64(SHA-256 of the CA PEM file the CA port serves).
    pub ca_hash: String,
    /// Server time, unix seconds.
    pub time: u64,
}

/// The answer of the CA port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaDownload {
    /// The root CA certificate, PEM.
    pub ca: String,
    /// Server time, unix seconds.
    pub now: u64,
}

/// A credentials request on the credentials port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsRequest {
    /// The device UID.
    pub uid: String,
    /// A one-time code from an initialization session, or the device's long-term code.
    pub code: String,
    /// Our extension: a PEM CSR (CN = UID, P-256) so that the device keeps its own key.
    #[serde(default)]
    pub csr: Option<String>,
}

/// The credentials handed to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Device certificate followed by the intermediate CA, PEM.
    pub cert: String,
    /// The device's private key, PEM (absent when the device sent a CSR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The long-term code for fetching a new certificate later.
    pub code: String,
}

/// A registration request on the registration port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationRequest {
    /// The device UID; must equal the certificate's CN.
    pub uid: String,
}

/// The registration answer (the platform's field names, including their capitalisation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// encryptTCP access key: key index + hex(SHA-256(uid))[..16].
    pub accesskey: String,
    /// encryptTCP secret.
    #[serde(rename = "secretAccesskey")]
    pub secret_accesskey: String,
    /// Keep-alive (encryptTCP) port.
    #[serde(rename = "keepAliveTCPPort")]
    pub keep_alive_tcp_port: u16,
    /// Signalling (mutual TLS) port.
    #[serde(rename = "signalingTLSPort")]
    pub signaling_tls_port: u16,
    /// Heartbeat interval, seconds.
    #[serde(rename = "heartBeatInterval")]
    pub heart_beat_interval: u32,
}

/// What devices are told: host and ports (the advertised ones, which are the bound ones
/// unless a test binds ephemeral ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEndpoints {
    /// Host name or address devices connect to.
    pub host: String,
    /// CA download port.
    pub ca_port: u16,
    /// Credentials port.
    pub credentials_port: u16,
    /// Registration port.
    pub registration_port: u16,
    /// Keep-alive port.
    pub keepalive_port: u16,
    /// Signalling port.
    pub signaling_port: u16,
}

/// The provisioning service of one server.
pub struct Provisioning {
    pki: Arc<pki::Pki>,
    store: Arc<Store>,
    crl: Arc<CrlPublisher>,
    device_keys: crate::secrets::DeviceKeyRing,
    code_sign_key: [u8; 32],
    endpoints: DeviceEndpoints,
    code_ttl_secs: u64,
    device_cert_days: u32,
    heartbeat_interval_secs: u32,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioning")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// Settings of [`Provisioning::new`].
#[derive(Debug, Clone)]
pub struct ProvisioningSettings {
    /// Advertised host and ports.
    pub endpoints: DeviceEndpoints,
    /// One-time code lifetime, seconds.
    pub code_ttl_secs: u64,
    /// Device certificate validity, days.
    pub device_cert_days: u32,
    /// Heartbeat interval handed out at registration, seconds.
    pub heartbeat_interval_secs: u32,
}

impl Provisioning {
    /// A provisioning service over the data directory's PKI, store and secrets.
    pub fn new(
        pki: Arc<pki::Pki>,
        store: Arc<Store>,
        secrets: &crate::secrets::Secrets,
        settings: ProvisioningSettings,
    ) -> Self {
        Self {
            crl: Arc::new(CrlPublisher::new(pki.clone(), store.clone())),
            pki,
            store,
            device_keys: secrets.device_keys.clone(),
            code_sign_key: secrets.code_sign_key,
            endpoints: settings.endpoints,
            code_ttl_secs: settings.code_ttl_secs,
            device_cert_days: settings.device_cert_days,
            heartbeat_interval_secs: settings.heartbeat_interval_secs,
        }
    }

    /// Starts a new device key index: registrations from now on get access keys under it, and
    /// hellos with an older index still authenticate but are answered 400 (register again),
    /// as the platform's `deviceAuth.currentKeyIndex` does. Returns the new index.
    pub fn rotate_device_key(&self) -> Result<String, crate::secrets::SecretsError> {
        self.device_keys.rotate()
    }

    /// The advertised endpoints.
    pub fn endpoints(&self) -> &DeviceEndpoints {
        &self.endpoints
    }

    /// Step 1: a one-time code for `uid`.
    pub fn create_initialization_session(
        &self,
        uid: &str,
        now: u64,
    ) -> Result<InitializationSession, ProvisioningError> {
        pki::validate_uid(uid).map_err(|e| ProvisioningError::InvalidParameter(e.to_string()))?;
        let code = Alphanumeric.sample_string(&mut rand::rngs::OsRng, SHORT_CODE_LEN);
        let record = CodeRecord {
            uid: uid.to_owned(),
            expires_at: now + self.code_ttl_secs,
        };
        self.store.put_code(&code_hash(&code), &record, now)?;
        Ok(InitializationSession {
            uid: uid.to_owned(),
            host: self.endpoints.host.clone(),
            get_ca_port: self.endpoints.ca_port,
            get_cert_port: self.endpoints.credentials_port,
            register_port: self.endpoints.registration_port,
            code,
            ca_hash: self.pki.ca_hash(),
            time: now,
        })
    }

    /// Step 2: the CA certificate.
    pub fn ca(&self, now: u64) -> CaDownload {
        CaDownload {
            ca: self.pki.ca_pem().to_owned(),
            now,
        }
    }

    /// Step 3: a device certificate (and key, unless the device sent a CSR).
    pub fn credentials(
        &self,
        req: &CredentialsRequest,
        now: u64,
    ) -> Result<Credentials, ProvisioningError> {
        pki::validate_uid(&req.uid)
            .map_err(|e| ProvisioningError::InvalidParameter(e.to_string()))?;
        let short_code_hash = if req.code.len() == SHORT_CODE_LEN {
            Some(code_hash(&req.code))
        } else {
            let uid = self.verify_long_term_code(&req.code)?;
            if uid != req.uid {
                return Err(ProvisioningError::DeviceNotMatched(format!(
                    "the code was issued to {uid}, not {}",
                    req.uid
                )));
            }
            if self.store.device(&uid)?.is_some_and(|d| d.revoked) {
                return Err(ProvisioningError::DeviceRevoked(uid));
            }
            None
        };
        let key = match &req.csr {
            Some(csr) => pki::DeviceKey::Csr(csr),
            None => pki::DeviceKey::Generate,
        };
        let outcome =
            self.store
                .issue_credentials(short_code_hash.as_deref(), &req.uid, now, || {
                    let validity =
                        std::time::Duration::from_secs(u64::from(self.device_cert_days) * 86_400);
                    let issued = self.pki.issue_device(&req.uid, key, validity)?;
                    let record = IssuedCert {
                        serial: issued.serial_hex.clone(),
                        issued_at: now,
                        not_after: u64::try_from(issued.not_after).unwrap_or(0),
                        revoked: false,
                    };
                    Ok::<_, pki::PkiError>((issued, record))
                })?;
        let (issued, revoked) = match outcome {
            IssueOutcome::Issued { issued, revoked } => (issued, revoked),
            IssueOutcome::CodeRefused(CodeRefusal::Unknown) => {
                return Err(ProvisioningError::CodeInvalid("unknown or already used"))
            }
            IssueOutcome::CodeRefused(CodeRefusal::Expired) => {
                return Err(ProvisioningError::CodeInvalid("expired"))
            }
            IssueOutcome::CodeRefused(CodeRefusal::OtherDevice) => {
                return Err(ProvisioningError::DeviceNotMatched(format!(
                    "the code was not issued to {}",
                    req.uid
                )))
            }
            IssueOutcome::Failed(e) if e.is_client_error() => {
                return Err(ProvisioningError::InvalidParameter(e.to_string()))
            }
            IssueOutcome::Failed(e) => return Err(ProvisioningError::Internal(e.to_string())),
        };
        if !revoked.is_empty() {
            // The replaced certificate is the same device's; its revocation is committed, and
            // the CRL follows within CRL_COALESCE_INTERVAL (a burst of re-enrolments signs one
            // CRL, not one each).
            self.crl.publish_soon()?;
        }
        Ok(Credentials {
            cert: issued.cert_chain_pem,
            key: issued.key_pem,
            code: self.long_term_code(&req.uid),
        })
    }

    /// Step 4: the encryptTCP access key pair, for a device authenticated by mutual TLS as
    /// `authenticated_uid`.
    pub fn register(
        &self,
        authenticated_uid: &str,
        req: &RegistrationRequest,
        now: u64,
    ) -> Result<Registration, ProvisioningError> {
        pki::validate_uid(&req.uid)
            .map_err(|e| ProvisioningError::InvalidParameter(e.to_string()))?;
        if req.uid != authenticated_uid {
            return Err(ProvisioningError::DeviceNotMatched(format!(
                "the certificate is issued to {authenticated_uid}, not {}",
                req.uid
            )));
        }
        let keys = self.device_keys.snapshot();
        let pair =
            AccessKeyPair::derive(&keys.current_index, keys.current_key().as_bytes(), &req.uid);
        self.store
            .mark_registered(&req.uid, &pair.access_key, now)?;
        Ok(Registration {
            accesskey: pair.access_key,
            secret_accesskey: pair.secret,
            keep_alive_tcp_port: self.endpoints.keepalive_port,
            signaling_tls_port: self.endpoints.signaling_port,
            heart_beat_interval: self.heartbeat_interval_secs,
        })
    }

    /// Revokes every certificate of `uid` and publishes the CRL. `None`: unknown device.
    pub fn revoke(&self, uid: &str, now: u64) -> Result<Option<Vec<String>>, ProvisioningError> {
        pki::validate_uid(uid).map_err(|e| ProvisioningError::InvalidParameter(e.to_string()))?;
        let revoked = self.store.revoke_device(uid, now)?;
        if revoked.is_some() {
            self.publish_crl()?;
        }
        Ok(revoked)
    }

    /// Rewrites `pki/crl.pem` from the store and reloads it into every mutual-TLS listener.
    pub fn publish_crl(&self) -> Result<(), ProvisioningError> {
        self.crl.publish_now()
    }

    /// The publisher of the CRL, whose [`CrlPublisher::publish_pending`] the server calls every
    /// second.
    pub fn crl_publisher(&self) -> Arc<CrlPublisher> {
        self.crl.clone()
    }

    /// base64(JSON) "." base64(HMAC-SHA256(signKey, base64(JSON))), the platform's form.
    fn long_term_code(&self, uid: &str) -> String {
        let content = BASE64.encode(serde_json::json!({ "uid": uid, "expiredAt": 0 }).to_string());
        let signature = BASE64.encode(self.code_mac(&content).finalize().into_bytes());
        format!("{content}.{signature}")
    }

    fn verify_long_term_code(&self, code: &str) -> Result<String, ProvisioningError> {
        if code.len() > 1024 {
            return Err(ProvisioningError::CodeInvalid("too long"));
        }
        let (content, signature) = code
            .split_once('.')
            .ok_or(ProvisioningError::CodeInvalid("malformed"))?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| ProvisioningError::SignatureNotMatched)?;
        self.code_mac(content)
            .verify_slice(&signature)
            .map_err(|_| ProvisioningError::SignatureNotMatched)?;
        #[derive(Deserialize)]
        struct LongTermCode {
            uid: String,
        }
        let json = BASE64
            .decode(content)
            .map_err(|_| ProvisioningError::CodeInvalid("malformed"))?;
        let parsed: LongTermCode = serde_json::from_slice(&json)
            .map_err(|_| ProvisioningError::CodeInvalid("malformed"))?;
        Ok(parsed.uid)
    }

    fn code_mac(&self, content: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.code_sign_key).expect("HMAC takes any key length");
        mac.update(content.as_bytes());
        mac
    }
}

/// Rewrites `pki/crl.pem` from the store's revocations and reloads it (used by the server
/// and by `relay pki revoke`).
pub fn publish_crl(pki: &pki::Pki, store: &Store) -> Result<(), ProvisioningError> {
    let revoked: Vec<pki::RevokedSerial> = store
        .revoked_serials()?
        .into_iter()
        .map(|(serial_hex, revoked_at)| pki::RevokedSerial {
            serial_hex,
            revoked_at: revoked_at as i64,
        })
        .collect();
    pki.write_crl(&revoked)
        .map_err(|e| ProvisioningError::Internal(e.to_string()))?;
    pki.reload_crl()
        .map_err(|e| ProvisioningError::Internal(e.to_string()))?;
    Ok(())
}

/// Longest a certificate replaced at enrolment stays off the published CRL.
pub const CRL_COALESCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Publishes the CRL. An operator's revocation is published at once; certificates replaced when
/// a device enrols again are published at most once per [`CRL_COALESCE_INTERVAL`]: signing and
/// reloading a CRL of every revoked serial for each re-enrolment made a burst of them (cameras
/// retrying after timeouts) spend two thirds of the control plane in `publish_crl` (perf, 9,900
/// loadgen cameras), which made more cameras time out and retry.
#[derive(Debug)]
pub struct CrlPublisher {
    pki: Arc<pki::Pki>,
    store: Arc<Store>,
    /// Revocations committed but not yet on the published CRL.
    pending: std::sync::atomic::AtomicBool,
    last_published: std::sync::Mutex<Option<std::time::Instant>>,
}

impl CrlPublisher {
    fn new(pki: Arc<pki::Pki>, store: Arc<Store>) -> Self {
        Self {
            pki,
            store,
            pending: std::sync::atomic::AtomicBool::new(false),
            last_published: std::sync::Mutex::new(None),
        }
    }

    /// Publishes now, with everything the store has revoked.
    pub fn publish_now(&self) -> Result<(), ProvisioningError> {
        use std::sync::atomic::Ordering;
        self.pending.store(false, Ordering::Relaxed);
        let published = publish_crl(&self.pki, &self.store);
        if published.is_err() {
            self.pending.store(true, Ordering::Relaxed);
        }
        *self
            .last_published
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        published
    }

    /// Publishes now if the last publication is older than [`CRL_COALESCE_INTERVAL`], else
    /// leaves it to [`CrlPublisher::publish_pending`].
    pub fn publish_soon(&self) -> Result<(), ProvisioningError> {
        let last = *self
            .last_published
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < CRL_COALESCE_INTERVAL) {
            self.pending
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        self.publish_now()
    }

    /// Publishes the revocations left pending by [`CrlPublisher::publish_soon`], if any;
    /// returns whether it published.
    pub fn publish_pending(&self) -> Result<bool, ProvisioningError> {
        if !self.pending.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        self.publish_now().map(|()| true)
    }
}

/// Certificates (of the hierarchy or of devices) closer than this to expiry are warned about,
/// in the server's log and on `/metrics`.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// A device certificate in force: neither it nor its device is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCertStatus {
    /// The device.
    pub uid: String,
    /// Serial number, lowercase hex (as on the CRL).
    pub serial: String,
    /// Unix seconds.
    pub not_after: u64,
    /// Whole days until `not_after` as of the time asked (negative once expired).
    pub days_left: i64,
}

/// Every device certificate in force, with its days left as of `now` (unix seconds); for
/// `relay pki status`, the expiry warnings and `/metrics`.
pub fn device_cert_status(store: &Store, now: u64) -> Result<Vec<DeviceCertStatus>, StoreError> {
    let mut out = Vec::new();
    for device in store.devices()? {
        if device.revoked {
            continue;
        }
        for cert in device.certs.iter().filter(|c| !c.revoked) {
            out.push(DeviceCertStatus {
                uid: device.uid.clone(),
                serial: cert.serial.clone(),
                not_after: cert.not_after,
                days_left: (cert.not_after as i64 - now as i64).div_euclid(86_400),
            });
        }
    }
    Ok(out)
}

/// Codes are stored by hash: a copy of the store does not give away live codes.
fn code_hash(code: &str) -> String {
    Sha256::digest(code.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secrets;

    const UID: &str = "952700000A5S348E";

    fn service(dir: &std::path::Path) -> Provisioning {
        let (pki, _) = pki::Pki::open_or_init(dir, &pki::default_hosts()).unwrap();
        let store = Store::open(dir).unwrap();
        let secrets = Secrets::open_or_create(dir).unwrap();
        let settings = ProvisioningSettings {
            endpoints: DeviceEndpoints {
                host: "localhost".into(),
                ca_port: 61000,
                credentials_port: 61001,
                registration_port: 61002,
                keepalive_port: 61003,
                signaling_port: 61005,
            },
            code_ttl_secs: 60,
            device_cert_days: 180,
            heartbeat_interval_secs: 20,
        };
        Provisioning::new(Arc::new(pki), Arc::new(store), &secrets, settings)
    }

    #[test]
    fn full_flow_with_server_made_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = service(dir.path());
        let session = p.create_initialization_session(UID, 1000).unwrap();
        assert_eq!(session.code.len(), SHORT_CODE_LEN);
        assert_eq!(session.get_ca_port, 61000);
        let ca = p.ca(1000);
        let hash = BASE64.encode(Sha256::digest(ca.ca.as_bytes()));
        assert_eq!(hash, session.ca_hash);
        let req = CredentialsRequest {
            uid: UID.into(),
            code: session.code.clone(),
            csr: None,
        };
        let creds = p.credentials(&req, 1001).unwrap();
        assert!(creds.key.as_deref().unwrap().contains("PRIVATE KEY"));
        assert_eq!(creds.cert.matches("BEGIN CERTIFICATE").count(), 2);
        // Single use.
        assert!(matches!(
            p.credentials(&req, 1002),
            Err(ProvisioningError::CodeInvalid(_))
        ));
        // The long-term code fetches a new certificate and revokes the old one.
        let renew = CredentialsRequest {
            uid: UID.into(),
            code: creds.code.clone(),
            csr: None,
        };
        p.credentials(&renew, 1003).unwrap();
        assert_eq!(p.store.revoked_serials().unwrap().len(), 1);
        // A second renewal within the coalescing interval is committed at once and published
        // by the next pending publication.
        let crl_path = dir.path().join("pki/crl.pem");
        let published = std::fs::read(&crl_path).unwrap();
        p.credentials(&renew, 1004).unwrap();
        assert_eq!(p.store.revoked_serials().unwrap().len(), 2);
        assert_eq!(
            std::fs::read(&crl_path).unwrap(),
            published,
            "not signed again yet"
        );
        assert!(p.crl_publisher().publish_pending().unwrap());
        assert_ne!(std::fs::read(&crl_path).unwrap(), published);
        assert!(
            !p.crl_publisher().publish_pending().unwrap(),
            "nothing left"
        );
        // A long-term code is bound to its UID and to our key.
        let other = CredentialsRequest {
            uid: "AAAAAAAAAAAAAAAA".into(),
            code: creds.code.clone(),
            csr: None,
        };
        assert!(matches!(
            p.credentials(&other, 1003),
            Err(ProvisioningError::DeviceNotMatched(_))
        ));
        let (content, _) = creds.code.split_once('.').unwrap();
        let forged = CredentialsRequest {
            uid: UID.into(),
            code: format!("{content}.AAAA"),
            csr: None,
        };
        assert!(matches!(
            p.credentials(&forged, 1003),
            Err(ProvisioningError::SignatureNotMatched)
        ));

        let registration = p
            .register(UID, &RegistrationRequest { uid: UID.into() }, 1004)
            .unwrap();
        assert_eq!(registration.accesskey.len(), 32);
        assert_eq!(registration.secret_accesskey.len(), 32);
        assert_eq!(registration.heart_beat_interval, 20);
        assert_eq!(registration.keep_alive_tcp_port, 61003);
        let wrong = p.register(
            "AAAAAAAAAAAAAAAA",
            &RegistrationRequest { uid: UID.into() },
            1004,
        );
        assert!(matches!(wrong, Err(ProvisioningError::DeviceNotMatched(_))));

        // After revocation the long-term code no longer works.
        assert_eq!(p.revoke(UID, 1005).unwrap().unwrap().len(), 1);
        assert!(matches!(
            p.credentials(&renew, 1006),
            Err(ProvisioningError::DeviceRevoked(_))
        ));
    }

    #[test]
    fn refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = service(dir.path());
        assert!(matches!(
            p.create_initialization_session("952700000a5s348e", 1),
            Err(ProvisioningError::InvalidParameter(_))
        ));
        let session = p.create_initialization_session(UID, 1000).unwrap();
        let bad_csr = CredentialsRequest {
            uid: UID.into(),
            code: session.code.clone(),
            csr: Some("garbage".into()),
        };
        let err = p.credentials(&bad_csr, 1001).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
        // The code survived the failed attempt.
        let ok = CredentialsRequest {
            uid: UID.into(),
            code: session.code.clone(),
            csr: None,
        };
        p.credentials(&ok, 1001).unwrap();
        let late = p.create_initialization_session(UID, 2000).unwrap();
        let late_req = CredentialsRequest {
            uid: UID.into(),
            code: late.code,
            csr: None,
        };
        assert!(matches!(
            p.credentials(&late_req, 2061),
            Err(ProvisioningError::CodeInvalid("expired"))
        ));
        assert!(p.store.revoked_serials().unwrap().is_empty());
    }
}
