//! rustls configurations for the platform's TLS ports and for clients of them.
//!
//! - [`ServerCertResolver`] holds the server certificate behind a lock so that a renewal or a
//!   reload applies to the next handshake while existing connections go on.
//! - [`DeviceCertVerifier`] is the mutual-TLS verifier: webpki path validation to our root,
//!   through the intermediate the device sends or the one the server knows, plus the CRL,
//!   which can be swapped at run time under every configuration already handed out.
//!
//! The cipher suites are listed explicitly: TLS 1.3 and TLS 1.2 ECDHE suites, all AEAD
//! (AES-GCM, ChaCha20-Poly1305); no CBC, no static RSA, no SHA-1 MACs.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::PkiError;

/// Protocol versions offered everywhere.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring provider restricted to the suites we mean to offer, in preference order, with the
/// signature checks of certificate paths and CRLs memoized (see [`crate::sigcache`]); the
/// handshake's own signatures are verified in full every time.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use ring_provider::cipher_suite as cs;
    let mut provider = ring_provider::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        // RSA suites only matter to clients talking to servers with RSA keys (pulled cameras).
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    provider.kx_groups = vec![
        ring_provider::kx_group::X25519,
        ring_provider::kx_group::SECP256R1,
        ring_provider::kx_group::SECP384R1,
    ];
    let algorithms = provider.signature_verification_algorithms;
    provider.signature_verification_algorithms = WebPkiSupportedAlgorithms {
        all: crate::sigcache::memoized(algorithms.all),
        mapping: algorithms.mapping,
    };
    Arc::new(provider)
}

/// Serves the current server certificate; [`ServerCertResolver::set`] replaces it for all
/// later handshakes.
pub struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertResolver {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        ServerCertResolver {
            current: RwLock::new(key),
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut guard) => *guard = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl fmt::Debug for ServerCertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Loads a certificate chain and its private key (PEM) into a rustls [`CertifiedKey`],
/// checking that the key belongs to the first certificate.
pub(crate) fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
    origin: &str,
) -> Result<CertifiedKey, PkiError> {
    let chain = certs_from_pem(chain_pem, "certificate chain", origin)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::parse("private key", origin, e))?;
    let certified = CertifiedKey::from_der(chain, key, provider)?;
    Ok(certified)
}

pub(crate) fn certs_from_pem(
    pem: &str,
    what: &'static str,
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::parse(what, origin, e))?;
    if certs.is_empty() {
        return Err(PkiError::parse(what, origin, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The mutual-TLS client verifier: device certificates chaining to our root, not revoked,
/// with a well-formed UID as CN. Clones of one `Arc` share the CRL: [`DeviceCertVerifier::set_crls`]
/// affects every configuration that holds it.
pub struct DeviceCertVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// Intermediates the server knows, tried when the device sends an incomplete chain.
    known_intermediates: Vec<CertificateDer<'static>>,
    root_hints: Vec<DistinguishedName>,
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl DeviceCertVerifier {
    pub(crate) fn new(
        root: CertificateDer<'static>,
        known_intermediates: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, PkiError> {
        let mut store = RootCertStore::empty();
        store.add(root)?;
        let roots = Arc::new(store);
        let inner = build_webpki_verifier(&roots, &provider, crls)?;
        Ok(DeviceCertVerifier {
            root_hints: inner.root_hint_subjects().to_vec(),
            roots,
            provider,
            known_intermediates,
            inner: RwLock::new(inner),
        })
    }

    /// Replaces the revocation lists for every later handshake. A list that webpki cannot use
    /// is refused and the old lists stay in force.
    pub fn set_crls(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), PkiError> {
        let verifier = build_webpki_verifier(&self.roots, &self.provider, crls)?;
        match self.inner.write() {
            Ok(mut guard) => *guard = verifier,
            Err(poisoned) => *poisoned.into_inner() = verifier,
        }
        Ok(())
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        match self.inner.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

fn build_webpki_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    // Only the intermediate issues a CRL; the root has none, so revocation is checked for the
    // device certificate only. An outdated CRL still counts: refusing every device because a
    // list was not re-signed in time would be an outage, not security.
    Ok(
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .build()?,
    )
}

impl fmt::Debug for DeviceCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCertVerifier")
            .field("known_intermediates", &self.known_intermediates.len())
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let inner = self.inner();
        let missing_known = self
            .known_intermediates
            .iter()
            .any(|known| !intermediates.contains(known));
        let verified = if missing_known {
            let mut chain: Vec<CertificateDer<'_>> = intermediates.to_vec();
            chain.extend(
                self.known_intermediates
                    .iter()
                    .filter(|known| !intermediates.contains(known))
                    .cloned(),
            );
            inner.verify_client_cert(end_entity, &chain, now)?
        } else {
            inner.verify_client_cert(end_entity, intermediates, now)?
        };
        if crate::peer_uid(std::slice::from_ref(end_entity)).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

/// Server configuration presenting the resolver's certificate, without client authentication.
pub(crate) fn server_config(
    resolver: Arc<ServerCertResolver>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Our order (strongest first), not the client's: a client preferring a weaker suite of the
    // list does not get it when both support a stronger one.
    config.ignore_client_order = true;
    Ok(config)
}

/// Server configuration requiring a device certificate. Session resumption is off: a resumed
/// session would skip the certificate (and CRL) check of a device revoked since.
pub(crate) fn mtls_server_config(
    resolver: Arc<ServerCertResolver>,
    verifier: Arc<DeviceCertVerifier>,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    Ok(config)
}

fn root_store_from_pem(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut store = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem, "CA certificate", "input")? {
        store.add(cert)?;
    }
    Ok(store)
}

/// Client configuration that trusts only the CA(s) in `ca_pem` and sends no certificate.
pub fn client_config_trusting(ca_pem: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(root_store_from_pem(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Client configuration for a device: trusts the CA(s) in `ca_pem` and presents
/// `cert_chain_pem` (device certificate, then intermediate) with its key `key_pem`
/// (PKCS#8, SEC1 or PKCS#1 PEM).
pub fn client_config_for_device(
    ca_pem: &str,
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, PkiError> {
    let chain = certs_from_pem(cert_chain_pem, "device certificate chain", "input")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::parse("device private key", "input", e))?;
    let config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(root_store_from_pem(ca_pem)?)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}
