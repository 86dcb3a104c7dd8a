//! The embedded transactional store (redb, `DATA/store.redb`): devices, one-time codes, issued
//! certificate serials and revocations (the alarm queue keeps its tables in the same file, see
//! [`crate::alarms`]). Every change is committed durably before the request
//! that caused it is answered, so nothing acknowledged is lost on kill -9.
//!
//! Values are JSON documents: the store is small, read rarely (provisioning, the API, startup)
//! and must stay readable by a human with a redb dump when something goes wrong.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("codes");
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked_serials");
/// Pull sources added through the API (`SourceSpec` as JSON, by UID).
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
/// Firmware upgrade sessions of the client API (`UpgradeRecord` as JSON, by session id).
const UPGRADES: TableDefinition<&str, &[u8]> = TableDefinition::new("upgrade_sessions");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (usually a running `relay serve`) holds the store.
    #[error("the store {path} is in use by another process (is `relay serve` running?)")]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The store was closed (the server is stopping).
    #[error("the store is closed")]
    Closed,
    /// The database engine failed (disk full, corruption, I/O).
    #[error("store: {0}")]
    Database(String),
    /// A stored record does not decode (written by an incompatible version?).
    #[error("store: record {key:?} in {table} is corrupt: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// The decoder's message.
        reason: String,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A one-time initialization code, stored under the SHA-256 of the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// The device the code was issued for.
    pub uid: String,
    /// Unix seconds after which the code is refused.
    pub expires_at: u64,
}

/// A certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// Whether the serial is on the CRL.
    pub revoked: bool,
}

/// Everything the server remembers about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The 16-character UID.
    pub uid: String,
    /// Unix seconds of the first initialization session.
    pub created_at: u64,
    /// Certificates issued, oldest first.
    pub certs: Vec<IssuedCert>,
    /// Unix seconds of the last registration on the registration port.
    pub registered_at: Option<u64>,
    /// The access key handed out at the last registration.
    pub access_key: Option<String>,
    /// Revoked by an operator: every certificate is on the CRL until it is provisioned again.
    pub revoked: bool,
}

/// Why a one-time code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeRefusal {
    /// No such code (never issued, or already used).
    Unknown,
    /// The code has expired.
    Expired,
    /// The code was issued for another UID.
    OtherDevice,
}

/// The outcome of [`Store::issue_credentials`].
#[derive(Debug)]
pub enum IssueOutcome<T, E> {
    /// Issued and recorded; the older serials were revoked in the same transaction.
    Issued {
        /// What the issuing closure returned.
        issued: T,
        /// Serials newly put on the revocation list.
        revoked: Vec<String>,
    },
    /// The code was refused; nothing changed.
    CodeRefused(CodeRefusal),
    /// The issuing closure failed (bad CSR, …); nothing changed, the code is still valid.
    Failed(E),
}

/// The embedded store of one data directory.
#[derive(Debug)]
pub struct Store {
    /// `None` once [`Store::close`] ran: the file lock is released even if something still
    /// holds the `Store`.
    db: std::sync::RwLock<Option<Database>>,
    /// When [`Store::put_code`] last swept out expired codes (unix seconds).
    codes_swept_at: std::sync::atomic::AtomicU64,
}

/// How often [`Store::put_code`] sweeps out expired codes. A sweep reads every code, so doing
/// it on each new code made a provisioning burst quadratic: with 9,900 cameras enrolling, the
/// codes of those not yet done piled up and each new one read them all, until the client API
/// stopped answering. An expired code is refused when it is used whether or not it was swept.
pub const CODE_SWEEP_INTERVAL_SECS: u64 = 60;

/// Read access to the open database; see [`Store::database`].
pub(crate) struct DbGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `Store::database` only hands out guards over an open database.
        self.0.as_ref().expect("checked open")
    }
}

impl Store {
    /// Opens (or creates) `data_dir/store.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("store.redb");
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path })
            }
            Err(e) => return Err(StoreError::Database(format!("{}: {e}", path.display()))),
        };
        let txn = db.begin_write()?;
        txn.open_table(DEVICES)?;
        txn.open_table(CODES)?;
        txn.open_table(REVOKED)?;
        txn.open_table(SOURCES)?;
        txn.open_table(UPGRADES)?;
        txn.commit()?;
        Ok(Self {
            db: std::sync::RwLock::new(Some(db)),
            codes_swept_at: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The database itself, for modules that keep their own tables in the same file (the alarm
    /// queue, [`crate::alarms::AlarmQueue`]), so that one process holds one lock and one fsync
    /// path.
    pub(crate) fn database(&self) -> Result<DbGuard<'_>, StoreError> {
        let guard = self
            .db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            return Err(StoreError::Closed);
        }
        Ok(DbGuard(guard))
    }

    /// Closes the database and releases its file lock; every later operation fails with
    /// [`StoreError::Closed`]. The server calls it when it stops, so that the data directory
    /// can be opened again at once, whatever still holds the `Store`.
    pub fn close(&self) {
        let mut db = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *db = None;
    }

    /// Records a new one-time code (by its hash); drops expired codes on the way, at most once
    /// every [`CODE_SWEEP_INTERVAL_SECS`].
    pub fn put_code(
        &self,
        code_hash: &str,
        record: &CodeRecord,
        now: u64,
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let swept_at = self.codes_swept_at.load(Ordering::Relaxed);
        let sweep = now >= swept_at.saturating_add(CODE_SWEEP_INTERVAL_SECS)
            && self
                .codes_swept_at
                .compare_exchange(swept_at, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let txn = self.database()?.begin_write()?;
        {
            let mut codes = txn.open_table(CODES)?;
            if sweep {
                let mut expired = Vec::new();
                for entry in codes.iter()? {
                    let (key, value) = entry?;
                    let code: CodeRecord = decode("codes", key.value(), value.value())?;
                    if code.expires_at < now {
                        expired.push(key.value().to_owned());
                    }
                }
                for key in expired {
                    codes.remove(key.as_str())?;
                }
            }
            codes.insert(code_hash, encode(record).as_slice())?;
            let mut devices = txn.open_table(DEVICES)?;
            if devices.get(record.uid.as_str())?.is_none() {
                let device = DeviceRecord {
                    uid: record.uid.clone(),
                    created_at: now,
                    certs: Vec::new(),
                    registered_at: None,
                    access_key: None,
                    revoked: false,
                };
                devices.insert(record.uid.as_str(), encode(&device).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Consumes a one-time code and records the certificate `issue` makes, in one transaction:
    /// the code is spent only if the certificate is recorded. Older certificates of the device
    /// are revoked. `code_hash: None` means the caller authenticated the device otherwise (a
    /// long-term code), and only `uid` is used.
    pub fn issue_credentials<T, E>(
        &self,
        code_hash: Option<&str>,
        uid: &str,
        now: u64,
        issue: impl FnOnce() -> Result<(T, IssuedCert), E>,
    ) -> Result<IssueOutcome<T, E>, StoreError> {
        let txn = self.database()?.begin_write()?;
        let outcome = {
            let mut codes = txn.open_table(CODES)?;
            if let Some(hash) = code_hash {
                let record: Option<CodeRecord> = match codes.get(hash)? {
                    Some(v) => Some(decode("codes", hash, v.value())?),
                    None => None,
                };
                let refusal = match record {
                    None => Some(CodeRefusal::Unknown),
                    Some(r) if r.expires_at < now => Some(CodeRefusal::Expired),
                    Some(r) if r.uid != uid => Some(CodeRefusal::OtherDevice),
                    Some(_) => None,
                };
                if let Some(refusal) = refusal {
                    // Nothing is committed: the transaction is dropped.
                    return Ok(IssueOutcome::CodeRefused(refusal));
                }
            }
            let (issued, cert) = match issue() {
                Ok(v) => v,
                Err(e) => return Ok(IssueOutcome::Failed(e)),
            };
            if let Some(hash) = code_hash {
                codes.remove(hash)?;
            }
            let mut devices = txn.open_table(DEVICES)?;
            let mut device = match devices.get(uid)? {
                Some(v) => decode::<DeviceRecord>("devices", uid, v.value())?,
                None => DeviceRecord {
                    uid: uid.to_owned(),
                    created_at: now,
                    certs: Vec::new(),
                    registered_at: None,
                    access_key: None,
                    revoked: false,
                },
            };
            let mut revoked_table = txn.open_table(REVOKED)?;
            let mut revoked = Vec::new();
            for old in device.certs.iter_mut().filter(|c| !c.revoked) {
                old.revoked = true;
                revoke_serial(&mut revoked_table, &old.serial, uid, now)?;
                revoked.push(old.serial.clone());
            }
            device.certs.push(cert);
            device.revoked = false;
            devices.insert(uid, encode(&device).as_slice())?;
            IssueOutcome::Issued { issued, revoked }
        };
        txn.commit()?;
        Ok(outcome)
    }

    /// Records a registration on the registration port.
    pub fn mark_registered(&self, uid: &str, access_key: &str, now: u64) -> Result<(), StoreError> {
        self.update_device(uid, |d| {
            d.registered_at = Some(now);
            d.access_key = Some(access_key.to_owned());
        })
        .map(|_| ())
    }

    /// Revokes every certificate of `uid`; returns the serials newly revoked (empty if the
    /// device is unknown or was revoked already).
    pub fn revoke_device(&self, uid: &str, now: u64) -> Result<Option<Vec<String>>, StoreError> {
        let txn = self.database()?.begin_write()?;
        let revoked = {
            let mut devices = txn.open_table(DEVICES)?;
            let mut device = match devices.get(uid)? {
                Some(v) => decode::<DeviceRecord>("devices", uid, v.value())?,
                None => return Ok(None),
            };
            let mut revoked_table = txn.open_table(REVOKED)?;
            let mut revoked = Vec::new();
            for cert in device.certs.iter_mut().filter(|c| !c.revoked) {
                cert.revoked = true;
                revoke_serial(&mut revoked_table, &cert.serial, uid, now)?;
                revoked.push(cert.serial.clone());
            }
            device.revoked = true;
            device.access_key = None;
            devices.insert(uid, encode(&device).as_slice())?;
            revoked
        };
        txn.commit()?;
        Ok(Some(revoked))
    }

    /// One device.
    pub fn device(&self, uid: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let devices = txn.open_table(DEVICES)?;
        let record = devices.get(uid)?;
        record
            .map(|v| decode("devices", uid, v.value()))
            .transpose()
    }

    /// Every device, in UID order.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let devices = txn.open_table(DEVICES)?;
        let mut out = Vec::new();
        for entry in devices.iter()? {
            let (key, value) = entry?;
            out.push(decode("devices", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Every revoked serial with its revocation time, for the CRL.
    pub fn revoked_serials(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let table = txn.open_table(REVOKED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let record: RevokedRecord = decode("revoked_serials", key.value(), value.value())?;
            out.push((key.value().to_owned(), record.revoked_at));
        }
        Ok(out)
    }

    /// Adds or replaces a pull source (committed, fsynced, before the API answers).
    pub fn put_source(&self, source: &crate::sources::SourceSpec) -> Result<(), StoreError> {
        let txn = self.database()?.begin_write()?;
        txn.open_table(SOURCES)?
            .insert(source.uid.as_str(), encode(source).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Removes a pull source; returns whether it existed.
    pub fn delete_source(&self, uid: &str) -> Result<bool, StoreError> {
        let txn = self.database()?.begin_write()?;
        let existed = txn.open_table(SOURCES)?.remove(uid)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    /// Every stored pull source, in UID order.
    pub fn sources(&self) -> Result<Vec<crate::sources::SourceSpec>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let table = txn.open_table(SOURCES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("sources", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Adds or replaces a firmware upgrade session (committed, fsynced, before the API
    /// answers).
    pub fn put_upgrade_session(
        &self,
        record: &crate::upgrade::UpgradeRecord,
    ) -> Result<(), StoreError> {
        let txn = self.database()?.begin_write()?;
        txn.open_table(UPGRADES)?
            .insert(record.session_id.as_str(), encode(record).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// The firmware upgrade session `id`.
    pub fn upgrade_session(
        &self,
        id: &str,
    ) -> Result<Option<crate::upgrade::UpgradeRecord>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let table = txn.open_table(UPGRADES)?;
        let value = table.get(id)?;
        value
            .map(|v| decode("upgrade_sessions", id, v.value()))
            .transpose()
    }

    /// Every firmware upgrade session, in id order.
    pub fn upgrade_sessions(&self) -> Result<Vec<crate::upgrade::UpgradeRecord>, StoreError> {
        let txn = self.database()?.begin_read()?;
        let table = txn.open_table(UPGRADES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("upgrade_sessions", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Removes the firmware upgrade sessions `ids` (expired) in one transaction.
    pub fn delete_upgrade_sessions(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let txn = self.database()?.begin_write()?;
        {
            let mut table = txn.open_table(UPGRADES)?;
            for id in ids {
                table.remove(id.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn update_device(
        &self,
        uid: &str,
        change: impl FnOnce(&mut DeviceRecord),
    ) -> Result<bool, StoreError> {
        let txn = self.database()?.begin_write()?;
        let found = {
            let mut devices = txn.open_table(DEVICES)?;
            let record = match devices.get(uid)? {
                Some(v) => Some(decode::<DeviceRecord>("devices", uid, v.value())?),
                None => None,
            };
            match record {
                Some(mut device) => {
                    change(&mut device);
                    devices.insert(uid, encode(&device).as_slice())?;
                    true
                }
                None => false,
            }
        };
        txn.commit()?;
        Ok(found)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct RevokedRecord {
    uid: String,
    revoked_at: u64,
}

fn revoke_serial(
    table: &mut redb::Table<&str, &[u8]>,
    serial: &str,
    uid: &str,
    now: u64,
) -> Result<(), StoreError> {
    let record = RevokedRecord {
        uid: uid.to_owned(),
        revoked_at: now,
    };
    table.insert(serial, encode(&record).as_slice())?;
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str) -> IssuedCert {
        IssuedCert {
            serial: serial.into(),
            issued_at: 10,
            not_after: 1000,
            revoked: false,
        }
    }

    fn code_count(store: &Store) -> u64 {
        use redb::ReadableTableMetadata as _;
        let txn = store.database().unwrap().begin_read().unwrap();
        txn.open_table(CODES).unwrap().len().unwrap()
    }

    #[test]
    fn expired_codes_are_swept_once_a_minute_not_on_every_new_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let code = |expires_at| CodeRecord {
            uid: "952700000A5S348E".into(),
            expires_at,
        };
        // The first code sweeps (nothing to sweep yet); the next ones within the minute do not.
        store.put_code("a", &code(110), 100).unwrap();
        store.put_code("b", &code(120), 101).unwrap();
        store.put_code("c", &code(500), 130).unwrap();
        assert_eq!(
            code_count(&store),
            3,
            "a and b expired but are not swept yet"
        );
        let late = store
            .issue_credentials::<(), ()>(Some("b"), "952700000A5S348E", 130, || {
                Ok(((), cert("01")))
            })
            .unwrap();
        assert!(
            matches!(late, IssueOutcome::CodeRefused(CodeRefusal::Expired)),
            "an expired code is refused whether or not it was swept"
        );
        // A minute after the last sweep the next new code sweeps out a (b expired at 120).
        store
            .put_code("d", &code(500), 100 + CODE_SWEEP_INTERVAL_SECS)
            .unwrap();
        assert_eq!(code_count(&store), 2, "c and d are left");
    }

    #[test]
    fn code_is_single_use_and_bound_to_uid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let uid = "952700000A5S348E";
        store
            .put_code(
                "h1",
                &CodeRecord {
                    uid: uid.into(),
                    expires_at: 100,
                },
                40,
            )
            .unwrap();
        let other = store.issue_credentials::<(), ()>(Some("h1"), "AAAAAAAAAAAAAAAA", 50, || {
            Ok(((), cert("01")))
        });
        assert!(matches!(
            other.unwrap(),
            IssueOutcome::CodeRefused(CodeRefusal::OtherDevice)
        ));
        let failed = store
            .issue_credentials::<(), &str>(Some("h1"), uid, 50, || Err("bad csr"))
            .unwrap();
        assert!(matches!(failed, IssueOutcome::Failed("bad csr")));
        let ok = store
            .issue_credentials::<(), ()>(Some("h1"), uid, 50, || Ok(((), cert("01"))))
            .unwrap();
        assert!(matches!(ok, IssueOutcome::Issued { ref revoked, .. } if revoked.is_empty()));
        let again = store
            .issue_credentials::<(), ()>(Some("h1"), uid, 51, || Ok(((), cert("02"))))
            .unwrap();
        assert!(matches!(
            again,
            IssueOutcome::CodeRefused(CodeRefusal::Unknown)
        ));
        store
            .put_code(
                "h2",
                &CodeRecord {
                    uid: uid.into(),
                    expires_at: 100,
                },
                60,
            )
            .unwrap();
        let late = store
            .issue_credentials::<(), ()>(Some("h2"), uid, 101, || Ok(((), cert("02"))))
            .unwrap();
        assert!(matches!(
            late,
            IssueOutcome::CodeRefused(CodeRefusal::Expired)
        ));
    }

    #[test]
    fn new_credentials_revoke_older_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let uid = "952700000A5S348E";
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .issue_credentials::<(), ()>(None, uid, 1, || Ok(((), cert("0a"))))
                .unwrap();
            let second = store
                .issue_credentials::<(), ()>(None, uid, 2, || Ok(((), cert("0b"))))
                .unwrap();
            match second {
                IssueOutcome::Issued { revoked, .. } => assert_eq!(revoked, vec!["0a".to_string()]),
                other => panic!("{other:?}"),
            }
            store.mark_registered(uid, "key", 3).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.revoked_serials().unwrap(),
            vec![("0a".to_string(), 2)]
        );
        let device = store.device(uid).unwrap().unwrap();
        assert_eq!(device.certs.len(), 2);
        assert_eq!(device.registered_at, Some(3));
        let revoked = store.revoke_device(uid, 4).unwrap().unwrap();
        assert_eq!(revoked, vec!["0b".to_string()]);
        assert!(store.device(uid).unwrap().unwrap().revoked);
        assert_eq!(store.revoked_serials().unwrap().len(), 2);
        assert_eq!(store.revoke_device("ZZZZZZZZZZZZZZZZ", 5).unwrap(), None);
    }

    #[test]
    fn close_releases_the_file_while_references_remain() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        let still_held = store.clone();
        store.close();
        assert!(matches!(still_held.devices(), Err(StoreError::Closed)));
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn second_process_sees_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
    }
}
