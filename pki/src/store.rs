//! The PKI of one installation: its files under `DIR/pki/`, the CA that signs device and server
//! certificates, the revocation list and the TLS configurations built on them.
//!
//! One [`Pki`] is shared (in an `Arc`) by every shard. Things that change at run time (the
//! server certificate, the CRL) sit behind locks inside the resolver and the verifier, so the
//! `ServerConfig`s handed out once keep seeing the current state.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::crl::{crl_number_of_pem, crl_params, crls_from_pem, RevokedSerial};
use crate::csr::{parse_device_csr, validate_uid};
use crate::files::{self, FileStamp, KEY_MODE, PUBLIC_MODE};
use crate::inspect::{hex_upper, serial_hex, CertInfo};
use crate::profile::{
    default_hosts, device_params, installation_tag, intermediate_params, root_params,
    server_params, validate_hosts, BACKDATE, DAY, SERVER_RENEW_BEFORE,
};
use crate::tls::{self, DeviceCertVerifier, ServerCertResolver};
use crate::PkiError;

/// Where the PKI keeps its files: `DIR/pki/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PkiPaths {
    /// `DIR/pki`
    pub dir: PathBuf,
    /// Root CA certificate: the "CA PEM file" devices download.
    pub root_cert: PathBuf,
    /// Root CA key (absent when it was written elsewhere at init).
    pub root_key: PathBuf,
    /// Intermediate CA certificate.
    pub intermediate_cert: PathBuf,
    /// Intermediate CA key: signs device and server certificates and the CRL.
    pub intermediate_key: PathBuf,
    /// Server certificate followed by the intermediate.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Revocation list signed by the intermediate.
    pub crl: PathBuf,
}

impl PkiPaths {
    /// The paths for data directory `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        let dir = data_dir.join("pki");
        PkiPaths {
            root_cert: dir.join("root-ca.pem"),
            root_key: dir.join("root-ca.key"),
            intermediate_cert: dir.join("intermediate-ca.pem"),
            intermediate_key: dir.join("intermediate-ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            crl: dir.join("crl.pem"),
            dir,
        }
    }
}

/// How to create a PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// DNS names and IP addresses for the server certificate; empty means localhost and 127.0.0.1.
    pub hosts: Vec<String>,
    /// Replace an existing PKI (every device certificate issued before stops working).
    pub force: bool,
    /// Write the root CA key to this file instead of the data directory, to be kept offline.
    pub root_key_out: Option<PathBuf>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            hosts: default_hosts(),
            force: false,
            root_key_out: None,
        }
    }
}

/// The key of a device certificate: made by the server, or the device's own from a CSR.
#[derive(Debug, Clone, Copy)]
pub enum DeviceKey<'a> {
    /// Generate a P-256 key; it is returned in [`IssuedDevice::key_pem`].
    Generate,
    /// Certify the key of this PEM CSR (subject CN must be the UID, key P-256).
    Csr(&'a str),
}

/// A device certificate just issued.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedDevice {
    /// Device certificate followed by the intermediate CA certificate, PEM.
    pub cert_chain_pem: String,
    /// The generated private key (PKCS#8 PEM); `None` when the device sent a CSR.
    pub key_pem: Option<String>,
    /// Serial number, upper-case hex: the handle for revocation.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for IssuedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedDevice")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Expiry report of one certificate of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertStatus {
    /// "root CA", "intermediate CA" or "server".
    pub name: &'static str,
    /// Subject distinguished name, e.g. "O=ROP Relay, CN=ROP Relay Root CA".
    pub subject: String,
    /// Serial number, upper-case hex.
    pub serial_hex: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
}

/// The intermediate CA in the form rcgen signs with.
struct Issuer {
    cert: rcgen::Certificate,
    key: KeyPair,
}

struct ServerState {
    info: CertInfo,
    cert_stamp: Option<FileStamp>,
    key_stamp: Option<FileStamp>,
}

/// A loaded PKI. Cheap to share: wrap it in an `Arc`.
pub struct Pki {
    paths: PkiPaths,
    root_pem: String,
    root_info: CertInfo,
    ca_hash: String,
    root_fingerprint: String,
    intermediate_pem: String,
    intermediate_info: CertInfo,
    issuer: Issuer,
    provider: Arc<CryptoProvider>,
    resolver: Arc<ServerCertResolver>,
    verifier: Arc<DeviceCertVerifier>,
    server_config: Arc<ServerConfig>,
    mtls_config: Arc<ServerConfig>,
    /// Serializes renewals and reloads of the server certificate.
    server: Mutex<ServerState>,
    /// Serializes CRL writes and reloads; holds the stamp of the CRL file last loaded.
    crl: Mutex<Option<FileStamp>>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.paths.dir)
            .field("root_fingerprint", &self.root_fingerprint)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn origin(path: &Path) -> String {
    path.display().to_string()
}

/// A new server certificate and key, PEM.
struct ServerMaterial {
    chain_pem: String,
    key_pem: String,
}

fn issue_server(
    issuer: &Issuer,
    intermediate_pem: &str,
    hosts: &[String],
    now: SystemTime,
) -> Result<ServerMaterial, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = server_params(hosts, now)?.signed_by(&key, &issuer.cert, &issuer.key)?;
    Ok(ServerMaterial {
        chain_pem: join_pem(&cert.pem(), intermediate_pem),
        key_pem: key.serialize_pem(),
    })
}

fn join_pem(first: &str, second: &str) -> String {
    let mut out = String::with_capacity(first.len() + second.len() + 1);
    out.push_str(first);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(second);
    out
}

fn single_cert(
    pem: &str,
    what: &'static str,
    path: &Path,
) -> Result<(CertificateDer<'static>, CertInfo), PkiError> {
    let der = tls::certs_from_pem(pem, what, &origin(path))?.swap_remove(0);
    let info = CertInfo::parse(&der, what, &origin(path))?;
    Ok((der, info))
}

/// Loads server.pem + server.key as a rustls key, with the certificate's facts.
fn load_server(
    paths: &PkiPaths,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertInfo), PkiError> {
    let chain_pem = files::read_string(&paths.server_cert)?;
    let key_pem = files::read_string(&paths.server_key)?;
    server_key_from_pem(&chain_pem, &key_pem, paths, provider)
}

fn server_key_from_pem(
    chain_pem: &str,
    key_pem: &str,
    paths: &PkiPaths,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertInfo), PkiError> {
    let (_, info) = single_cert(chain_pem, "server certificate", &paths.server_cert)?;
    let key = tls::certified_key(chain_pem, key_pem, provider, &origin(&paths.server_key))
        .map_err(|e| match e {
            PkiError::Tls(rustls::Error::InconsistentKeys(_)) => PkiError::KeyMismatch {
                what: "server",
                key_path: paths.server_key.clone(),
            },
            other => other,
        })?;
    Ok((key, info))
}

impl Pki {
    /// Creates a new PKI under `data_dir/pki` and loads it.
    ///
    /// Refuses when PKI files (or `root_key_out`) already exist, unless `options.force`.
    pub fn init(data_dir: &Path, options: &InitOptions) -> Result<Pki, PkiError> {
        let paths = PkiPaths::new(data_dir);
        let hosts = validate_hosts(&options.hosts)?;
        if !options.force {
            let guarded = [
                &paths.root_cert,
                &paths.root_key,
                &paths.intermediate_cert,
                &paths.intermediate_key,
                &paths.server_cert,
                &paths.server_key,
            ];
            let existing = guarded
                .into_iter()
                .chain(options.root_key_out.as_ref())
                .find(|p| p.exists());
            if let Some(path) = existing {
                return Err(PkiError::AlreadyInitialized { path: path.clone() });
            }
        }
        files::create_dir(&paths.dir)?;

        let now = SystemTime::now();
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let tag = installation_tag()?;
        let root = root_params(&tag, now)?.self_signed(&root_key)?;
        let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let intermediate =
            intermediate_params(&tag, now)?.signed_by(&intermediate_key, &root, &root_key)?;
        let issuer = Issuer {
            cert: intermediate,
            key: intermediate_key,
        };
        let intermediate_pem = issuer.cert.pem();
        let server = issue_server(&issuer, &intermediate_pem, &hosts, now)?;
        let crl = crl_params(&[], 1, now)?.signed_by(&issuer.cert, &issuer.key)?;

        // Keys first and the root certificate last: a PKI whose root-ca.pem exists is complete.
        match &options.root_key_out {
            Some(out) => {
                files::write_atomic(out, root_key.serialize_pem().as_bytes(), KEY_MODE)?;
                files::remove_if_exists(&paths.root_key)?;
            }
            None => files::write_atomic(
                &paths.root_key,
                root_key.serialize_pem().as_bytes(),
                KEY_MODE,
            )?,
        }
        files::write_atomic(
            &paths.intermediate_key,
            issuer.key.serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        files::write_atomic(&paths.server_key, server.key_pem.as_bytes(), KEY_MODE)?;
        files::write_atomic(
            &paths.intermediate_cert,
            intermediate_pem.as_bytes(),
            PUBLIC_MODE,
        )?;
        files::write_atomic(&paths.server_cert, server.chain_pem.as_bytes(), PUBLIC_MODE)?;
        files::write_atomic(&paths.crl, crl.pem()?.as_bytes(), PUBLIC_MODE)?;
        files::write_atomic(&paths.root_cert, root.pem().as_bytes(), PUBLIC_MODE)?;
        tracing::info!(dir = %paths.dir.display(), ?hosts, "created PKI");
        Pki::open(data_dir)
    }

    /// Loads the PKI under `data_dir/pki`. The root key is not needed.
    pub fn open(data_dir: &Path) -> Result<Pki, PkiError> {
        let paths = PkiPaths::new(data_dir);
        if !paths.root_cert.exists() {
            return Err(PkiError::NotInitialized {
                path: paths.root_cert,
            });
        }
        let root_pem = files::read_string(&paths.root_cert)?;
        let (root_der, root_info) =
            single_cert(&root_pem, "root CA certificate", &paths.root_cert)?;
        let intermediate_pem = files::read_string(&paths.intermediate_cert)?;
        let (intermediate_der, intermediate_info) = single_cert(
            &intermediate_pem,
            "intermediate CA certificate",
            &paths.intermediate_cert,
        )?;
        check_issued_by(&intermediate_der, &root_der, &paths.intermediate_cert)?;

        let key_pem = files::read_string(&paths.intermediate_key)?;
        let intermediate_key = KeyPair::from_pem(&key_pem).map_err(|e| {
            PkiError::parse("intermediate CA key", origin(&paths.intermediate_key), e)
        })?;
        if intermediate_key.public_key_der() != intermediate_info.spki_der {
            return Err(PkiError::KeyMismatch {
                what: "intermediate CA",
                key_path: paths.intermediate_key,
            });
        }
        let issuer_params =
            rcgen::CertificateParams::from_ca_cert_der(&intermediate_der).map_err(|e| {
                PkiError::parse(
                    "intermediate CA certificate",
                    origin(&paths.intermediate_cert),
                    e,
                )
            })?;
        let issuer = Issuer {
            cert: issuer_params.self_signed(&intermediate_key)?,
            key: intermediate_key,
        };

        let provider = tls::crypto_provider();
        let (server_key, server_info) = match load_server(&paths, &provider) {
            Ok(loaded) => loaded,
            Err(PkiError::KeyMismatch { .. }) => {
                // A crash between writing server.key and server.pem during a renewal.
                tracing::warn!(path = %paths.server_key.display(), "server key does not match server.pem; issuing a new server certificate");
                let (_, old) = single_cert(
                    &files::read_string(&paths.server_cert)?,
                    "server certificate",
                    &paths.server_cert,
                )?;
                let hosts = if old.san_hosts.is_empty() {
                    default_hosts()
                } else {
                    old.san_hosts
                };
                let fresh = issue_server(&issuer, &intermediate_pem, &hosts, SystemTime::now())?;
                files::write_atomic(&paths.server_key, fresh.key_pem.as_bytes(), KEY_MODE)?;
                files::write_atomic(&paths.server_cert, fresh.chain_pem.as_bytes(), PUBLIC_MODE)?;
                server_key_from_pem(&fresh.chain_pem, &fresh.key_pem, &paths, &provider)?
            }
            Err(e) => return Err(e),
        };

        let crl_stamp = FileStamp::of(&paths.crl)?;
        let crls = if crl_stamp.is_some() {
            crls_from_pem(
                &std::fs::read(&paths.crl).map_err(|e| PkiError::io("read", &paths.crl, e))?,
                &origin(&paths.crl),
            )?
        } else {
            tracing::warn!(path = %paths.crl.display(), "no CRL file; no device certificate is treated as revoked");
            Vec::new()
        };

        let resolver = Arc::new(ServerCertResolver::new(Arc::new(server_key)));
        let verifier = Arc::new(DeviceCertVerifier::new(
            root_der.clone(),
            vec![intermediate_der],
            crls,
            Arc::clone(&provider),
        )?);
        let server_config = Arc::new(tls::server_config(
            Arc::clone(&resolver),
            Arc::clone(&provider),
        )?);
        let mtls_config = Arc::new(tls::mtls_server_config(
            Arc::clone(&resolver),
            Arc::clone(&verifier),
            Arc::clone(&provider),
        )?);

        let ca_hash =
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(root_pem.as_bytes()));
        let root_fingerprint = hex_upper(&Sha256::digest(&root_der), Some(':'));
        let server = ServerState {
            info: server_info,
            cert_stamp: FileStamp::of(&paths.server_cert)?,
            key_stamp: FileStamp::of(&paths.server_key)?,
        };
        Ok(Pki {
            paths,
            root_pem,
            root_info,
            ca_hash,
            root_fingerprint,
            intermediate_pem,
            intermediate_info,
            issuer,
            provider,
            resolver,
            verifier,
            server_config,
            mtls_config,
            server: Mutex::new(server),
            crl: Mutex::new(crl_stamp),
        })
    }

    /// Opens the PKI if `data_dir/pki/root-ca.pem` exists, else creates one for `hosts`.
    /// Returns whether it was created. When an existing server certificate lacks one of
    /// `hosts`, it is reissued for its old hosts plus the missing ones.
    pub fn open_or_init(data_dir: &Path, hosts: &[String]) -> Result<(Pki, bool), PkiError> {
        if PkiPaths::new(data_dir).root_cert.exists() {
            let pki = Pki::open(data_dir)?;
            if !hosts.is_empty() {
                pki.ensure_server_hosts(hosts)?;
            }
            return Ok((pki, false));
        }
        let options = InitOptions {
            hosts: hosts.to_vec(),
            force: false,
            root_key_out: None,
        };
        Ok((Pki::init(data_dir, &options)?, true))
    }

    /// The file locations.
    pub fn paths(&self) -> &PkiPaths {
        &self.paths
    }

    /// The root CA certificate PEM, byte for byte as in `root-ca.pem` (what `GET /v1.0/ca` returns).
    pub fn ca_pem(&self) -> &str {
        &self.root_pem
    }

    /// base64(SHA-256(`ca_pem()` bytes)): the `caHash` the app hands to devices.
    pub fn ca_hash(&self) -> String {
        self.ca_hash.clone()
    }

    /// SHA-256 fingerprint of the root certificate (DER), as `openssl x509 -fingerprint -sha256`
    /// prints it: upper-case hex pairs separated by colons.
    pub fn root_fingerprint_sha256(&self) -> String {
        self.root_fingerprint.clone()
    }

    /// The intermediate CA certificate PEM.
    pub fn intermediate_pem(&self) -> &str {
        &self.intermediate_pem
    }

    /// Issues a device certificate valid from an hour ago for `validity`
    /// (normally [`crate::DEFAULT_DEVICE_VALIDITY`]).
    pub fn issue_device(
        &self,
        uid: &str,
        key: DeviceKey<'_>,
        validity: Duration,
    ) -> Result<IssuedDevice, PkiError> {
        let now = SystemTime::now();
        self.issue_device_with_validity(uid, key, now - BACKDATE, now + validity)
    }

    /// Issues a device certificate with an explicit validity period (tests use periods in the past).
    pub fn issue_device_with_validity(
        &self,
        uid: &str,
        key: DeviceKey<'_>,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedDevice, PkiError> {
        validate_uid(uid)?;
        let params = device_params(uid, not_before, not_after)?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| serial_hex(&s.to_bytes()))
            .unwrap_or_default();
        let (not_before, not_after) = (
            params.not_before.unix_timestamp(),
            params.not_after.unix_timestamp(),
        );
        let (cert, key_pem) = match key {
            DeviceKey::Generate => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                (
                    params.signed_by(&key, &self.issuer.cert, &self.issuer.key)?,
                    Some(key.serialize_pem()),
                )
            }
            DeviceKey::Csr(pem) => {
                let csr = parse_device_csr(pem.as_bytes())?;
                csr.require_uid(uid)?;
                let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.public_key_spki_der)
                    .map_err(|_| PkiError::CsrKeyType {
                        found: "unsupported encoding of a P-256 key".to_owned(),
                    })?;
                (
                    params.signed_by(&public_key, &self.issuer.cert, &self.issuer.key)?,
                    None,
                )
            }
        };
        tracing::info!(uid, serial = %serial, not_after, "issued device certificate");
        Ok(IssuedDevice {
            cert_chain_pem: join_pem(&cert.pem(), &self.intermediate_pem),
            key_pem,
            serial_hex: serial,
            not_before,
            not_after,
        })
    }

    /// Writes `crl.pem` listing `revoked` (the complete list), signed by the intermediate, with
    /// the next CRL number, and puts it in force at once for this process. Returns the CRL number.
    pub fn write_crl(&self, revoked: &[RevokedSerial]) -> Result<u64, PkiError> {
        let mut stamp = lock(&self.crl);
        let previous = std::fs::read(&self.paths.crl)
            .ok()
            .and_then(|pem| crl_number_of_pem(&pem))
            .unwrap_or(0);
        let number = previous.saturating_add(1);
        let crl = crl_params(revoked, number, SystemTime::now())?
            .signed_by(&self.issuer.cert, &self.issuer.key)?;
        files::write_atomic(&self.paths.crl, crl.pem()?.as_bytes(), PUBLIC_MODE)?;
        self.verifier.set_crls(vec![crl.der().clone()])?;
        *stamp = FileStamp::of(&self.paths.crl)?;
        tracing::info!(number, revoked = revoked.len(), "wrote CRL");
        Ok(number)
    }

    /// Re-reads `crl.pem` and puts it in force for every mutual-TLS configuration handed out.
    /// On error (missing or corrupt file) the lists in force stay.
    pub fn reload_crl(&self) -> Result<(), PkiError> {
        let mut stamp = lock(&self.crl);
        self.reload_crl_locked(&mut stamp)
    }

    /// [`Pki::reload_crl`] if `crl.pem` was replaced or changed since it was last loaded or
    /// written; cheap enough (one `stat`) to call every second. Returns whether it reloaded.
    pub fn reload_crl_if_changed(&self) -> Result<bool, PkiError> {
        let mut stamp = lock(&self.crl);
        if FileStamp::of(&self.paths.crl)? == *stamp {
            return Ok(false);
        }
        self.reload_crl_locked(&mut stamp)?;
        Ok(true)
    }

    fn reload_crl_locked(&self, stamp: &mut Option<FileStamp>) -> Result<(), PkiError> {
        let before = FileStamp::of(&self.paths.crl)?;
        let pem =
            std::fs::read(&self.paths.crl).map_err(|e| PkiError::io("read", &self.paths.crl, e))?;
        let crls = crls_from_pem(&pem, &origin(&self.paths.crl))?;
        self.verifier.set_crls(crls)?;
        *stamp = before;
        tracing::info!(path = %self.paths.crl.display(), "loaded CRL");
        Ok(())
    }

    /// Configuration for TLS ports without client certificates (61000, 61001, RTSPS, HTTPS).
    /// No ALPN; clone it and set `alpn_protocols` where needed.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }

    /// Configuration for the mutual-TLS device ports (61002, 61005, 61006).
    pub fn mtls_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.mtls_config)
    }

    /// The verifier inside [`Pki::mtls_config`], to build other configurations on it.
    pub fn device_verifier(&self) -> Arc<DeviceCertVerifier> {
        Arc::clone(&self.verifier)
    }

    /// A client configuration trusting this PKI's root.
    pub fn client_config_trusting_root(&self) -> Result<Arc<ClientConfig>, PkiError> {
        tls::client_config_trusting(&self.root_pem)
    }

    /// A device's client configuration: trusts this root, presents the given certificate.
    pub fn client_config_for_device(
        &self,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<Arc<ClientConfig>, PkiError> {
        tls::client_config_for_device(&self.root_pem, cert_chain_pem, key_pem)
    }

    /// Expiry report of the root, the intermediate and the current server certificate.
    pub fn status(&self) -> Vec<CertStatus> {
        self.status_at(SystemTime::now())
    }

    /// [`Pki::status`] as of `now`.
    pub fn status_at(&self, now: SystemTime) -> Vec<CertStatus> {
        let server = lock(&self.server).info.clone();
        let now = unix_secs(now);
        [
            ("root CA", &self.root_info),
            ("intermediate CA", &self.intermediate_info),
            ("server", &server),
        ]
        .into_iter()
        .map(|(name, info)| CertStatus {
            name,
            subject: info.subject.clone(),
            serial_hex: info.serial_hex.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            days_left: (info.not_after - now).div_euclid(DAY.as_secs() as i64),
        })
        .collect()
    }

    /// Whether the server certificate expires within 30 days of `now`.
    pub fn server_needs_renewal(&self, now: SystemTime) -> bool {
        let not_after = lock(&self.server).info.not_after;
        not_after - unix_secs(now) <= SERVER_RENEW_BEFORE.as_secs() as i64
    }

    /// The DNS names and IP addresses of the current server certificate.
    pub fn server_hosts(&self) -> Vec<String> {
        lock(&self.server).info.san_hosts.clone()
    }

    /// Issues a new server certificate for the same hosts, writes it and serves it to new
    /// handshakes; established connections are not touched.
    pub fn renew_server(&self) -> Result<CertStatus, PkiError> {
        let mut state = lock(&self.server);
        let hosts = if state.info.san_hosts.is_empty() {
            default_hosts()
        } else {
            state.info.san_hosts.clone()
        };
        self.replace_server_locked(&mut state, &hosts)
    }

    /// [`Pki::renew_server`] when [`Pki::server_needs_renewal`] says so; for a daily timer.
    pub fn renew_server_if_due(&self, now: SystemTime) -> Result<Option<CertStatus>, PkiError> {
        if !self.server_needs_renewal(now) {
            return Ok(None);
        }
        self.renew_server().map(Some)
    }

    /// Reissues the server certificate if it lacks any of `hosts`, keeping its other hosts.
    /// Returns whether it did.
    pub fn ensure_server_hosts(&self, hosts: &[String]) -> Result<bool, PkiError> {
        let wanted = validate_hosts(hosts)?;
        let mut state = lock(&self.server);
        let mut all = state.info.san_hosts.clone();
        let missing: Vec<String> = wanted.into_iter().filter(|h| !all.contains(h)).collect();
        if missing.is_empty() {
            return Ok(false);
        }
        tracing::info!(?missing, "server certificate lacks hosts; reissuing it");
        all.extend(missing);
        self.replace_server_locked(&mut state, &all)?;
        Ok(true)
    }

    fn replace_server_locked(
        &self,
        state: &mut ServerState,
        hosts: &[String],
    ) -> Result<CertStatus, PkiError> {
        let fresh = issue_server(
            &self.issuer,
            &self.intermediate_pem,
            hosts,
            SystemTime::now(),
        )?;
        let (key, info) = server_key_from_pem(
            &fresh.chain_pem,
            &fresh.key_pem,
            &self.paths,
            &self.provider,
        )?;
        // Key first: a crash in between leaves a mismatch that `open` repairs.
        files::write_atomic(&self.paths.server_key, fresh.key_pem.as_bytes(), KEY_MODE)?;
        files::write_atomic(
            &self.paths.server_cert,
            fresh.chain_pem.as_bytes(),
            PUBLIC_MODE,
        )?;
        self.resolver.set(Arc::new(key));
        state.cert_stamp = FileStamp::of(&self.paths.server_cert)?;
        state.key_stamp = FileStamp::of(&self.paths.server_key)?;
        state.info = info;
        tracing::info!(serial = %state.info.serial_hex, not_after = state.info.not_after, "renewed server certificate");
        Ok(self.server_status(&state.info))
    }

    fn server_status(&self, info: &CertInfo) -> CertStatus {
        let now = unix_secs(SystemTime::now());
        CertStatus {
            name: "server",
            subject: info.subject.clone(),
            serial_hex: info.serial_hex.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            days_left: (info.not_after - now).div_euclid(DAY.as_secs() as i64),
        }
    }

    /// Re-reads `server.pem` and `server.key` (renewed by another process) and serves them to
    /// new handshakes. A key that does not match the certificate is refused and the current
    /// certificate stays.
    pub fn reload_server_cert(&self) -> Result<(), PkiError> {
        let mut state = lock(&self.server);
        self.reload_server_locked(&mut state)
    }

    /// [`Pki::reload_server_cert`] if either file changed since it was last loaded or written.
    pub fn reload_server_cert_if_changed(&self) -> Result<bool, PkiError> {
        let mut state = lock(&self.server);
        if FileStamp::of(&self.paths.server_cert)? == state.cert_stamp
            && FileStamp::of(&self.paths.server_key)? == state.key_stamp
        {
            return Ok(false);
        }
        self.reload_server_locked(&mut state)?;
        Ok(true)
    }

    fn reload_server_locked(&self, state: &mut ServerState) -> Result<(), PkiError> {
        let cert_stamp = FileStamp::of(&self.paths.server_cert)?;
        let key_stamp = FileStamp::of(&self.paths.server_key)?;
        let (key, info) = load_server(&self.paths, &self.provider)?;
        self.resolver.set(Arc::new(key));
        *state = ServerState {
            info,
            cert_stamp,
            key_stamp,
        };
        Ok(())
    }
}

/// Checks that `cert` carries a valid signature by `issuer`'s key.
fn check_issued_by(cert: &[u8], issuer: &[u8], path: &Path) -> Result<(), PkiError> {
    let what = "intermediate CA certificate";
    let (_, cert) =
        X509Certificate::from_der(cert).map_err(|e| PkiError::parse(what, origin(path), e))?;
    let (_, issuer) = X509Certificate::from_der(issuer)
        .map_err(|e| PkiError::parse("root CA certificate", origin(path), e))?;
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|_| {
            PkiError::parse(
                what,
                origin(path),
                "not signed by the root CA in root-ca.pem",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pki>();
    }
}
