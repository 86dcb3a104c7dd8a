//! The one error type of the crate.
//!
//! Variants name the problem and who caused it: a client's bad input (UID, CSR, serial, host),
//! the state of the data directory (existing PKI, unreadable or corrupt files) or an internal
//! failure. HTTP handlers turn the client variants into 400 responses with the `Display` text,
//! so those messages are written for the client.

use std::path::PathBuf;

/// Everything that can go wrong in the PKI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A device UID that is not 16 characters of `A-Z` and `0-9`.
    #[error("invalid device UID {uid:?}: {reason}")]
    InvalidUid {
        /// The UID as received (truncated to 64 characters).
        uid: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A host for the server certificate that is neither a DNS name nor an IP address.
    #[error(
        "invalid host {host:?} for the server certificate: expected a DNS name or an IP address"
    )]
    InvalidHost {
        /// The host as given.
        host: String,
    },

    /// The CSR could not be decoded or its self-signature does not verify.
    #[error("invalid certificate signing request: {reason}")]
    CsrInvalid {
        /// What is wrong, in words a client understands.
        reason: String,
    },

    /// The CSR is larger than [`crate::MAX_CSR_LEN`].
    #[error("certificate signing request too large: {len} bytes, the limit is {limit}")]
    CsrTooLarge {
        /// Size received.
        len: usize,
        /// Size accepted.
        limit: usize,
    },

    /// The CSR subject's common name is not the device UID.
    #[error(
        "certificate signing request subject CN is {found:?}, expected the device UID {expected:?}"
    )]
    CsrSubjectMismatch {
        /// The UID the certificate is requested for.
        expected: String,
        /// The CN found in the CSR (empty when it has none).
        found: String,
    },

    /// The CSR's public key is not ECDSA P-256.
    #[error("certificate signing request has a {found} key; device keys must be ECDSA P-256")]
    CsrKeyType {
        /// The key type found, e.g. "RSA" or "ECDSA P-384".
        found: String,
    },

    /// `init` found PKI files and was not told to replace them.
    #[error("a PKI already exists ({path} is present); use force to replace it")]
    AlreadyInitialized {
        /// The first existing file found.
        path: PathBuf,
    },

    /// `open` found no PKI in the data directory.
    #[error("no PKI found: {path} does not exist (initialize it first)")]
    NotInitialized {
        /// The missing root CA file.
        path: PathBuf,
    },

    /// A file system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "create directory", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Key generation or certificate/CRL signing failed inside rcgen.
    #[error("cannot generate certificate material: {0}")]
    Rcgen(#[from] rcgen::Error),

    /// A stored certificate, key or CRL could not be parsed.
    #[error("cannot parse {what} from {origin}: {reason}")]
    Parse {
        /// What was being parsed ("root CA certificate", "CRL", ...).
        what: &'static str,
        /// Where it came from: a file path or "input".
        origin: String,
        /// The parser's complaint.
        reason: String,
    },

    /// A private key does not belong to the certificate stored beside it.
    #[error("{what}: the private key in {key_path} does not match the certificate")]
    KeyMismatch {
        /// Which pair ("intermediate CA", "server").
        what: &'static str,
        /// The key file.
        key_path: PathBuf,
    },

    /// A certificate serial number given for revocation is not usable.
    #[error("invalid certificate serial {serial:?}: {reason}")]
    InvalidSerial {
        /// The serial as given.
        serial: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A requested validity period ends before it starts.
    #[error(
        "invalid validity period: not_after ({not_after}) is not after not_before ({not_before})"
    )]
    InvalidValidity {
        /// Start, unix seconds.
        not_before: i64,
        /// End, unix seconds.
        not_after: i64,
    },

    /// rustls refused a certificate, key or configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),

    /// rustls could not build the client certificate verifier (bad root or CRL).
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl PkiError {
    /// True when the error is the caller's fault (bad UID, CSR, serial, host or validity):
    /// an HTTP handler answers 400 with the message; anything else is a server problem.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            PkiError::InvalidUid { .. }
                | PkiError::InvalidHost { .. }
                | PkiError::CsrInvalid { .. }
                | PkiError::CsrTooLarge { .. }
                | PkiError::CsrSubjectMismatch { .. }
                | PkiError::CsrKeyType { .. }
                | PkiError::InvalidSerial { .. }
                | PkiError::InvalidValidity { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        PkiError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parse(
        what: &'static str,
        origin: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> Self {
        PkiError::Parse {
            what,
            origin: origin.to_string(),
            reason: reason.to_string(),
        }
    }
}
