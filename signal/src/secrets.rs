//! The server's own secrets, kept in `DATA/secrets/` (mode 0600) so that they survive restarts:
//! the play-token key (the platform's key dies with its process, and every play URL with it),
//! the sign key of long-term device codes, the device keys from which encryptTCP access keys
//! are derived (rotatable by key index, as in the platform's `deviceAuth`), the client API
//! bearer token, and the key that signs alarm webhooks (`alarm-webhook.key`, 64 hex digits: the
//! partner verifies `X-ROP-Signature` with the same 32 bytes; see docs/alarms.md).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rand::distributions::{Alphanumeric, DistString};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Why the secrets could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// A file could not be read or written.
    #[error("secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds something else than expected (edited by hand?).
    #[error("secret file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Device keys: access keys are `index (16 chars) + hex(SHA-256(uid))[..16]`, secrets are
/// derived from the key named by the index. The field names are the platform's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    /// The index new registrations get.
    #[serde(rename = "currentKeyIndex")]
    pub current_index: String,
    /// Every key ever used, by index; old ones stay so that registered devices keep working.
    #[serde(rename = "deviceKeys")]
    pub keys: BTreeMap<String, String>,
}

impl DeviceKeys {
    fn generate() -> Self {
        let index = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 16);
        let key = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
        Self {
            current_index: index.clone(),
            keys: BTreeMap::from([(index, key)]),
        }
    }

    /// The key of the current index.
    pub fn current_key(&self) -> &str {
        self.keys
            .get(&self.current_index)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The key named by `index`, if it was ever issued.
    pub fn key(&self, index: &str) -> Option<&str> {
        self.keys.get(index).map(String::as_str)
    }
}

/// The device keys as every part of one server sees them. A rotation (`relay pki
/// rotate-device-key`, `POST /v1.0/device-keys/rotation`) is written to
/// `device-keys.json` first and then replaces the set here, so new registrations get the new
/// index and new links verify against it at once; a link already open keeps the snapshot it
/// was opened with (old indices are never removed, so that snapshot stays valid). Clones share
/// the same set.
#[derive(Debug, Clone)]
pub struct DeviceKeyRing {
    path: PathBuf,
    keys: Arc<RwLock<Arc<DeviceKeys>>>,
}

impl DeviceKeyRing {
    fn new(path: PathBuf, keys: DeviceKeys) -> Self {
        Self {
            path,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
        }
    }

    /// The keys as of now (cheap: one shared pointer).
    pub fn snapshot(&self) -> Arc<DeviceKeys> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Starts a new key index and returns it; every older key stays, so access keys issued
    /// under them still authenticate (the hello then says 400: register again).
    pub fn rotate(&self) -> Result<String, SecretsError> {
        let mut guard = match self.keys.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fresh = DeviceKeys::generate();
        let mut keys = DeviceKeys::clone(&guard);
        keys.current_index = fresh.current_index.clone();
        keys.keys.extend(fresh.keys);
        write_private_file(
            &self.path,
            serde_json::to_string_pretty(&keys)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        *guard = Arc::new(keys);
        Ok(fresh.current_index)
    }
}

/// Every secret of one data directory.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// HMAC key of play and publish tokens.
    pub token_key: [u8; 32],
    /// HMAC key of long-term device codes.
    pub code_sign_key: [u8; 32],
    /// Device keys for encryptTCP access keys (shared by every clone of these secrets).
    pub device_keys: DeviceKeyRing,
    /// Bearer token of the client API (used when `api.auth = "token"`).
    pub api_token: String,
    /// HMAC-SHA256 key of the alarm webhook signature (`alarm-webhook.key`), shared with the
    /// partner out of band. An operator may replace the file with 64 hex digits of their own.
    pub alarm_webhook_key: [u8; 32],
}

impl Secrets {
    /// Loads the secrets under `data_dir/secrets`, creating the missing ones.
    pub fn open_or_create(data_dir: &Path) -> Result<Self, SecretsError> {
        let dir = data_dir.join("secrets");
        std::fs::create_dir_all(&dir).map_err(|source| SecretsError::Io {
            path: dir.clone(),
            source,
        })?;
        set_mode(&dir, 0o700)?;
        let token_key = load_or_create_key(&dir.join("token.key"))?;
        let code_sign_key = load_or_create_key(&dir.join("code-sign.key"))?;
        let alarm_webhook_key = load_or_create_key(&dir.join("alarm-webhook.key"))?;
        let keys_path = dir.join("device-keys.json");
        let device_keys = match read_optional(&keys_path)? {
            Some(text) => {
                let keys: DeviceKeys =
                    serde_json::from_str(&text).map_err(|e| SecretsError::Corrupt {
                        path: keys_path.clone(),
                        reason: e.to_string(),
                    })?;
                if keys.current_index.len() != 16 || !keys.keys.contains_key(&keys.current_index) {
                    return Err(SecretsError::Corrupt {
                        path: keys_path,
                        reason:
                            "currentKeyIndex must be 16 characters and name a key in deviceKeys"
                                .into(),
                    });
                }
                keys
            }
            None => {
                let keys = DeviceKeys::generate();
                write_private_file(
                    &keys_path,
                    serde_json::to_string_pretty(&keys)
                        .unwrap_or_default()
                        .as_bytes(),
                )?;
                keys
            }
        };
        let token_path = dir.join("api-token");
        let api_token = match read_optional(&token_path)? {
            Some(text) => text.trim().to_owned(),
            None => {
                let token = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 40);
                write_private_file(&token_path, token.as_bytes())?;
                token
            }
        };
        Ok(Self {
            token_key,
            code_sign_key,
            api_token,
            alarm_webhook_key,
            device_keys: DeviceKeyRing::new(keys_path, device_keys),
        })
    }

    /// Starts a new device key index; devices registered before keep their old access keys.
    pub fn rotate_device_key(&mut self) -> Result<String, SecretsError> {
        self.device_keys.rotate()
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, SecretsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretsError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A 32-byte key stored as 64 hex digits.
fn load_or_create_key(path: &Path) -> Result<[u8; 32], SecretsError> {
    if let Some(text) = read_optional(path)? {
        let text = text.trim();
        let mut key = [0u8; 32];
        if text.len() != 64 || !text.is_ascii() {
            return Err(SecretsError::Corrupt {
                path: path.to_owned(),
                reason: "expected 64 hex digits".into(),
            });
        }
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| {
                SecretsError::Corrupt {
                    path: path.to_owned(),
                    reason: "expected 64 hex digits".into(),
                }
            })?;
        }
        return Ok(key);
    }
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_private_file(path, hex.as_bytes())?;
    Ok(key)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SecretsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SecretsError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename), readable by the owner only.
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SecretsError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_survive_reopen_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Secrets::open_or_create(dir.path()).unwrap();
        let b = Secrets::open_or_create(dir.path()).unwrap();
        assert_eq!(a.token_key, b.token_key);
        assert_eq!(a.code_sign_key, b.code_sign_key);
        assert_ne!(a.token_key, a.code_sign_key);
        assert_eq!(a.device_keys.snapshot(), b.device_keys.snapshot());
        assert_eq!(a.api_token, b.api_token);
        assert_eq!(a.alarm_webhook_key, b.alarm_webhook_key);
        assert_ne!(a.alarm_webhook_key, a.token_key);
        assert_eq!(a.device_keys.snapshot().current_index.len(), 16);
        for name in [
            "token.key",
            "code-sign.key",
            "device-keys.json",
            "api-token",
            "alarm-webhook.key",
        ] {
            let mode = std::fs::metadata(dir.path().join("secrets").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn rotation_keeps_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Secrets::open_or_create(dir.path()).unwrap();
        let shared = s.clone();
        let before = s.device_keys.snapshot();
        let old = before.current_index.clone();
        let new = s.rotate_device_key().unwrap();
        assert_ne!(old, new);
        assert_eq!(
            before.current_index, old,
            "a snapshot taken before keeps its keys"
        );
        assert_eq!(
            shared.device_keys.snapshot().current_index,
            new,
            "clones see it"
        );
        let reopened = Secrets::open_or_create(dir.path()).unwrap();
        let keys = reopened.device_keys.snapshot();
        assert_eq!(keys.current_index, new);
        assert_eq!(keys.key(&old), before.key(&old));
    }

    #[test]
    fn corrupt_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        Secrets::open_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join("secrets/token.key"), "zz").unwrap();
        let err = Secrets::open_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("token.key"), "{err}");
    }
}
