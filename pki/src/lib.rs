//! The platform's certificates: the CA hierarchy, device credentials, revocation, rustls
//! configurations and expiry checks.
//!
//! ```text
//! root CA (P-384, 10 y) ── intermediate CA (P-384, 5 y, pathlen 0)
//!                            ├── server certificate (P-256, 90 d, serverAuth, SAN = hosts)
//!                            ├── device certificates (P-256, 180 d, clientAuth, CN = UID)
//!                            └── crl.pem
//! ```
//! Devices download the root (`GET /v1.0/ca`) and check it against the `caHash` the app gave
//! them ([`Pki::ca_hash`]). Everything lives in `DIR/pki/` (see [`PkiPaths`]); [`Pki`] loads it
//! once and hands out `rustls` configurations whose server certificate and CRL can change
//! under them at run time.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod crl;
mod csr;
mod error;
mod files;
mod inspect;
mod profile;
mod sigcache;
mod store;
mod tls;

pub use crl::{parse_serial_hex, RevokedSerial, CRL_VALIDITY};
pub use csr::{parse_device_csr, validate_uid, DeviceCsr, MAX_CSR_LEN, UID_LEN};
pub use error::PkiError;
pub use inspect::{connection_peer_uid, peer_uid};
pub use profile::{
    default_hosts, DEFAULT_DEVICE_VALIDITY, INTERMEDIATE_VALIDITY, ROOT_VALIDITY,
    SERVER_RENEW_BEFORE, SERVER_VALIDITY,
};
pub use sigcache::{signature_cache_stats, SignatureCacheStats};
pub use store::{CertStatus, DeviceKey, InitOptions, IssuedDevice, Pki, PkiPaths};
pub use tls::{
    client_config_for_device, client_config_trusting, crypto_provider, DeviceCertVerifier,
    ServerCertResolver, PROTOCOL_VERSIONS,
};
