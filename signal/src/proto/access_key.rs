//! encryptTCP access keys, derived the way the platform's server derives them so that devices
//! registered with it keep working: `accesskey = keyIndex (16 chars) + hex(SHA-256(uid))[..16]`
//! and `secretAccesskey = base64(HMAC-SHA256(deviceKeys[keyIndex], that 16-char hex))[..32]`.
//! The secret is a pure function of the access key and the device keys, so the server stores
//! no per-device secret: the keep-alive and stream ports re-derive it from the hello.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Length of the key index at the start of an access key.
pub const KEY_INDEX_LEN: usize = 16;
/// Length of an access key (index + UID hash).
pub const ACCESS_KEY_LEN: usize = 32;
/// Length of a secret access key.
pub const SECRET_LEN: usize = 32;

/// The access key pair a device receives at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKeyPair {
    /// 32 ASCII characters: key index + UID hash.
    pub access_key: String,
    /// 32 base64 characters: the HMAC key of the encryptTCP hello and frames.
    pub secret: String,
}

impl AccessKeyPair {
    /// The pair for `uid` under device key `key` named `key_index`.
    pub fn derive(key_index: &str, key: &[u8], uid: &str) -> Self {
        let uid_hash = uid_hash(uid);
        Self {
            access_key: format!("{key_index}{uid_hash}"),
            secret: secret_for(key, &uid_hash),
        }
    }
}

/// `hex(SHA-256(uid))[..16]`: the second half of an access key.
pub fn uid_hash(uid: &str) -> String {
    Sha256::digest(uid.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Splits an access key into (key index, UID hash); `None` unless it has the right form.
pub fn split_access_key(access_key: &str) -> Option<(&str, &str)> {
    (access_key.len() == ACCESS_KEY_LEN && access_key.is_ascii())
        .then(|| access_key.split_at(KEY_INDEX_LEN))
}

/// The secret of the access key whose UID hash is `uid_hash`, under device key `key`.
pub fn secret_for(key: &[u8], uid_hash: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(uid_hash.as_bytes());
    let mut secret = BASE64.encode(mac.finalize().into_bytes());
    secret.truncate(SECRET_LEN);
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // Computed independently: node -e 'c=require("crypto");u="952700000A5S348E";
        // h=c.createHash("sha256").update(u).digest("hex").slice(0,16);
        // console.log(h, c.createHmac("sha256","NG3Sp8mEAm0lEokTRCncdJk7EPOWzHJ8").update(h).digest("base64").slice(0,32))'
        let pair = AccessKeyPair::derive(
            "oof0bBqcuEOtT6tC",
            b"NG3Sp8mEAm0lEokTRCncdJk7EPOWzHJ8",
            "952700000A5S348E",
        );
        assert_eq!(pair.access_key, "oof0bBqcuEOtT6tC900901e79d483735");
        assert_eq!(pair.secret, "JZX8srPeJl8hjk//CEtTh9ewoWsyD4t/");
        let (index, hash) = split_access_key(&pair.access_key).unwrap();
        assert_eq!(index, "oof0bBqcuEOtT6tC");
        assert_eq!(
            secret_for(b"NG3Sp8mEAm0lEokTRCncdJk7EPOWzHJ8", hash),
            pair.secret
        );
        assert_eq!(split_access_key("short"), None);
    }
}
