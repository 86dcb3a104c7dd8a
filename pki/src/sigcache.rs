//! Memoized certificate-path signature checks.
//!
//! webpki verifies every signature of a path on every handshake: for a device on the signalling
//! port that is the device certificate (signed by the P-384 intermediate), the intermediate
//! (signed by the P-384 root) and the CRL's signature (by the intermediate), three P-384
//! verifications, each about half a millisecond in ring's portable P-384 code; webpki says so
//! itself (rustls/webpki#81: the CRL signature is checked per lookup, not once). Two of the
//! three are the same computation every time, and the third repeats whenever a device
//! reconnects. Profiles of 1,000 devices coming online put 85 % of the relay's CPU there, and
//! the loadgen paid the same for the server's chain on every simulated camera.
//!
//! A signature check is a pure function of (algorithm, public key, message, signature), so its
//! success can be remembered: [`memoized`] wraps the provider's algorithms so that a check that
//! passed once passes again without the elliptic-curve work, keyed by a SHA-256 over all of its
//! inputs (finding a different input with the same key is a second preimage of SHA-256). Only
//! successes are kept; a changed byte anywhere (another certificate, a tampered signature, a
//! new CRL) is a new key and is verified in full. Path building, validity times, key usage,
//! name constraints and the revocation lookup still run on every handshake: only the curve
//! arithmetic is skipped.
//!
//! Used for certificate paths and CRLs only (`WebPkiSupportedAlgorithms::all`); the handshake's
//! own signatures (CertificateVerify, ServerKeyExchange) cover a fresh transcript each time and
//! go through the unwrapped algorithms (`mapping`), so they never fill the cache.
//!
//! The cache is one per process, bounded at [`CAPACITY`] entries (32-byte keys: about 5 MB when
//! full); when it is full it starts over, which costs one full verification per entry again.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};
use sha2::{Digest, Sha256};

/// Most remembered signature checks (about one per device certificate, plus the intermediate
/// and each CRL).
pub const CAPACITY: usize = 1 << 17;

/// How often the memo answered and how often the curve arithmetic ran, since the start of the
/// process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureCacheStats {
    /// Checks answered from the memo.
    pub hits: u64,
    /// Checks verified in full (and remembered if they passed).
    pub verified: u64,
    /// Checks that failed (never remembered).
    pub failed: u64,
}

struct Memo {
    passed: Mutex<HashSet<[u8; 32]>>,
    hits: AtomicU64,
    verified: AtomicU64,
    failed: AtomicU64,
}

fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(|| Memo {
        passed: Mutex::new(HashSet::new()),
        hits: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    })
}

/// This process's memo counters.
pub fn signature_cache_stats() -> SignatureCacheStats {
    let memo = memo();
    SignatureCacheStats {
        hits: memo.hits.load(Ordering::Relaxed),
        verified: memo.verified.load(Ordering::Relaxed),
        failed: memo.failed.load(Ordering::Relaxed),
    }
}

/// One algorithm of the provider, with its successes remembered.
struct Memoized {
    inner: &'static dyn SignatureVerificationAlgorithm,
}

impl fmt::Debug for Memoized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memoized")
            .field("inner", &self.inner)
            .finish()
    }
}

fn key(
    algorithm: &dyn SignatureVerificationAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        &algorithm.public_key_alg_id()[..],
        &algorithm.signature_alg_id()[..],
        public_key,
        message,
        signature,
    ] {
        // Length prefixes keep the boundaries: no two different inputs hash the same bytes.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

impl SignatureVerificationAlgorithm for Memoized {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let memo = memo();
        let key = key(self.inner, public_key, message, signature);
        let known = match memo.passed.lock() {
            Ok(passed) => passed.contains(&key),
            Err(poisoned) => poisoned.into_inner().contains(&key),
        };
        if known {
            memo.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match self.inner.verify_signature(public_key, message, signature) {
            Ok(()) => {
                memo.verified.fetch_add(1, Ordering::Relaxed);
                let mut passed = memo.passed.lock().unwrap_or_else(|e| e.into_inner());
                if passed.len() >= CAPACITY {
                    passed.clear();
                }
                passed.insert(key);
                Ok(())
            }
            Err(e) => {
                memo.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

/// `algorithms` with every check's success remembered (see the module comment). The wrappers
/// are made once per process for the first list given (the provider's list is a constant).
pub(crate) fn memoized(
    algorithms: &'static [&'static dyn SignatureVerificationAlgorithm],
) -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    static WRAPPED: OnceLock<&'static [&'static dyn SignatureVerificationAlgorithm]> =
        OnceLock::new();
    WRAPPED.get_or_init(|| {
        let wrapped: Vec<&'static dyn SignatureVerificationAlgorithm> = algorithms
            .iter()
            .map(|inner| {
                let leaked: &'static Memoized = Box::leak(Box::new(Memoized { inner: *inner }));
                leaked as &'static dyn SignatureVerificationAlgorithm
            })
            .collect();
        Box::leak(wrapped.into_boxed_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_separates_the_parts() {
        let alg = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all[0];
        assert_ne!(key(alg, b"ab", b"c", b"d"), key(alg, b"a", b"bc", b"d"));
        assert_ne!(key(alg, b"a", b"b", b"c"), key(alg, b"a", b"b", b"d"));
    }
}
