//! Firmware upgrade sessions of the client API (`POST /v1.0/devices/{uid}/upgrade-session`,
//! `GET …/upgrade-session/{id}`), as the platform's server runs them: the client names a
//! firmware uploaded before (`POST /v1.0/firmware/{fileName}`, kept in `DATA/firmware/`), the
//! server answers at once with a session id (32 letters and digits) and its lifetime, and runs
//! the upgrade in the background; the client polls the session's `status`.
//!
//! The upgrade itself runs on the device's owner shard ([`crate::devices::DeviceCommand::Upgrade`]):
//! start request 67, the file in 36 KiB slices (at most 30 unanswered), sleep 233 (the sans-IO
//! part is [`crate::session::upgrade`]); then the shard waits for the device to come back
//! online with another firmware than before (5 minutes by default, else `unknown_error`).
//!
//! Sessions are committed to the store (`upgrade_sessions` table) before the client gets the
//! id, and again when they end, so a session id once handed out answers until it expires, also
//! across restarts. A session still `upgrading` when the server starts was cut short by the
//! previous process (its transfer cannot be resumed: the device was told a size and got part
//! of it): it becomes `unknown_error`.
//!
//! Our additions to the platform's `{status}` answer: `phase` (`starting`, `uploading`,
//! `installing` once the device acknowledged the whole file and the sleep, `done`), the bytes
//! the device acknowledged, the file, the firmware before and after, and why it failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};

use crate::devices::{DeviceDirectory, DeviceError};
use crate::session::{UpgradeFailure, UpgradeStatus};
use crate::store::{Store, StoreError};

/// Length of a session id (the platform's `randomString(32)`).
pub const SESSION_ID_LEN: usize = 32;

/// How far an upgrade got, as the shard running it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeStage {
    /// Start request 67 sent, not answered yet.
    Starting,
    /// Slices being sent.
    Uploading,
    /// The device acknowledged the file and the sleep 233: it installs and reboots; the shard
    /// waits for it to come back with another firmware.
    Installing,
    /// Over (the session's status says how).
    Done,
}

impl UpgradeStage {
    /// The name the API shows (`phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStage::Starting => "starting",
            UpgradeStage::Uploading => "uploading",
            UpgradeStage::Installing => "installing",
            UpgradeStage::Done => "done",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => UpgradeStage::Starting,
            1 => UpgradeStage::Uploading,
            2 => UpgradeStage::Installing,
            _ => UpgradeStage::Done,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            UpgradeStage::Starting => 0,
            UpgradeStage::Uploading => 1,
            UpgradeStage::Installing => 2,
            UpgradeStage::Done => 3,
        }
    }
}

/// Progress of one running upgrade, written by the owner shard, read by the client API
/// (atomics: the two sides run on different threads and neither waits for the other).
#[derive(Debug, Default)]
pub struct UpgradeTracker {
    stage: AtomicU8,
    acknowledged: AtomicU64,
    file_size: AtomicU64,
}

impl UpgradeTracker {
    /// Where the upgrade is.
    pub fn stage(&self) -> UpgradeStage {
        UpgradeStage::from_u8(self.stage.load(Ordering::Relaxed))
    }

    /// Moves the upgrade to `stage`.
    pub fn set_stage(&self, stage: UpgradeStage) {
        self.stage.store(stage.to_u8(), Ordering::Relaxed);
    }

    /// File bytes the device acknowledged, and the file's size (0 until the file was opened).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.acknowledged.load(Ordering::Relaxed),
            self.file_size.load(Ordering::Relaxed),
        )
    }

    /// Records the bytes acknowledged out of `file_size`.
    pub fn set_bytes(&self, acknowledged: u64, file_size: u64) {
        self.file_size.store(file_size, Ordering::Relaxed);
        self.acknowledged.store(acknowledged, Ordering::Relaxed);
    }
}

/// What the owner shard is asked to do.
#[derive(Debug, Clone)]
pub struct UpgradeJob {
    /// The session, for logs.
    pub session_id: String,
    /// The firmware file (`DATA/firmware/{file_name}`); the shard opens it, and sends the size
    /// of what it opened, so a file replaced meanwhile is sent whole, old or new.
    pub path: PathBuf,
    /// The name the device is told.
    pub file_name: String,
    /// Restore factory settings after the upgrade.
    pub factory_reset: bool,
    /// Longest wait, once the device acknowledged the file and the sleep, for it to come back
    /// online with another firmware.
    pub reboot_timeout: Duration,
    /// Where the shard reports progress.
    pub tracker: Arc<UpgradeTracker>,
}

/// Why an upgrade did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The device had no signalling link when the shard started.
    #[error("the device is offline")]
    Offline,
    /// The device's link refused another transfer (one runs) or its shard is overloaded.
    #[error("the device's link is busy: {0}")]
    Busy(String),
    /// The firmware file could not be opened or read (our side).
    #[error("firmware file: {0}")]
    File(String),
    /// The device refused, did not answer, or its link closed during the transfer.
    #[error(transparent)]
    Transfer(#[from] UpgradeFailure),
    /// The device did not come back online with another firmware in time.
    #[error("the device did not come back online with another firmware within {after:?}")]
    NotBack {
        /// The limit.
        after: Duration,
    },
    /// The shard stopped (the server is shutting down) before the upgrade ended.
    #[error("the server stopped during the upgrade")]
    Stopped,
}

impl UpgradeError {
    /// The platform's session status for this error: the device's code mapped, else
    /// `unknown_error`.
    pub fn status(&self) -> UpgradeStatus {
        match self {
            UpgradeError::Transfer(failure) => failure.status(),
            _ => UpgradeStatus::UnknownError,
        }
    }
}

/// The shard's answer: the firmware the device came back with, or why not.
pub type UpgradeOutcome = Result<Option<String>, UpgradeError>;

/// One session as stored (JSON in the `upgrade_sessions` table, by session id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// The session id.
    pub session_id: String,
    /// The device.
    pub uid: String,
    /// The firmware file name.
    pub file_name: String,
    /// Restore factory settings after the upgrade.
    pub factory_reset: bool,
    /// The platform's status name (`upgrading`, `upgrade_success`, `same_version`, …).
    pub status: String,
    /// Why it failed, in words.
    pub error: Option<String>,
    /// The firmware the device reported before.
    pub firmware_before: Option<String>,
    /// The firmware it came back with.
    pub firmware_after: Option<String>,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms after which the session is gone (404 `session_not_found`).
    pub expires_at: u64,
    /// Unix ms when it ended.
    pub finished_at: Option<u64>,
    /// File bytes the device acknowledged when it ended.
    pub bytes_sent: u64,
    /// The file's size, once the shard opened it.
    pub file_size: u64,
}

/// A session as the API shows it (`GET …/upgrade-session/{id}`, and under `upgrade` in the
/// device detail while it runs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeView {
    /// The platform's status.
    pub status: &'static str,
    /// Our progress phase.
    pub phase: &'static str,
    /// The session id.
    pub session_id: String,
    /// The firmware file.
    pub file_name: String,
    /// Its size (0 until the shard opened it).
    pub file_size: u64,
    /// File bytes the device acknowledged.
    pub bytes_sent: u64,
    /// Factory reset asked for.
    pub factory_reset: bool,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Firmware before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_before: Option<String>,
    /// Firmware after a success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_after: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Limits of upgrade sessions (`[upgrade]` of the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeSettings {
    /// Session lifetime (`expiredIn`).
    pub session_ttl: Duration,
    /// Longest wait for the device to come back with another firmware.
    pub reboot_timeout: Duration,
    /// Most upgrades running at once.
    pub max_running: usize,
}

impl UpgradeSettings {
    /// From the server's configuration.
    pub fn from_config(config: &crate::config::UpgradeConfig) -> Self {
        Self {
            session_ttl: Duration::from_secs(config.session_ttl_secs),
            reboot_timeout: Duration::from_secs(config.reboot_timeout_secs),
            max_running: config.max_sessions,
        }
    }
}

/// Why a session was not created: the platform's symbol, status and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeRefusal {
    /// The file name does not end in `.pak` or `.paks` (`invalid_filename`, 400).
    #[error("the firmware file name must end in .pak or .paks")]
    InvalidFileName,
    /// Too many upgrades run (`up_to_upgrade_session_limit`, 400).
    #[error("{0} firmware upgrades are running already, the most this server runs at once")]
    TooMany(usize),
    /// An upgrade of this device runs (`duplicate_upgrade`, 400).
    #[error("the device is upgrading now (session {0}); do not upgrade it again")]
    Duplicate(String),
    /// No such firmware in `DATA/firmware/` (`file_not_found`, 404).
    #[error("firmware {0:?} has not been uploaded (POST /v1.0/firmware/{{fileName}})")]
    FileNotFound(String),
    /// The device is not online (`device_offline`, 404), or its shard did not answer.
    #[error(transparent)]
    Device(DeviceError),
    /// The store failed (`server_internal_error`, 500).
    #[error("storing the upgrade session: {0}")]
    Store(String),
}

impl UpgradeRefusal {
    /// The platform's error symbol and HTTP status.
    pub fn symbol_and_status(&self) -> (&'static str, u16) {
        match self {
            UpgradeRefusal::InvalidFileName => ("invalid_filename", 400),
            UpgradeRefusal::TooMany(_) => ("up_to_upgrade_session_limit", 400),
            UpgradeRefusal::Duplicate(_) => ("duplicate_upgrade", 400),
            UpgradeRefusal::FileNotFound(_) => ("file_not_found", 404),
            UpgradeRefusal::Device(e) => e.symbol_and_status(),
            UpgradeRefusal::Store(_) => ("server_internal_error", 500),
        }
    }
}

/// The answer to creating a session (the platform's `{sessionId, expiredIn}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedSession {
    /// 32 letters and digits.
    pub session_id: String,
    /// Session lifetime in seconds.
    pub expired_in: u64,
}

#[derive(Debug)]
struct Running {
    uid: String,
    tracker: Arc<UpgradeTracker>,
}

/// The upgrade sessions of the control plane. Shared (`Arc`) with the tasks that wait for the
/// shards' outcomes.
#[derive(Debug)]
pub struct UpgradeSessions {
    store: Arc<Store>,
    settings: UpgradeSettings,
    /// Sessions whose upgrade runs in this process, by session id.
    running: Mutex<HashMap<String, Running>>,
}

impl UpgradeSessions {
    /// The sessions of `store`: sessions left `upgrading` by a previous process become
    /// `unknown_error`, expired ones are removed.
    pub fn open(
        store: Arc<Store>,
        settings: UpgradeSettings,
        now_ms: u64,
    ) -> Result<Self, StoreError> {
        let mut cut_short = Vec::new();
        let mut expired = Vec::new();
        for mut record in store.upgrade_sessions()? {
            if record.expires_at <= now_ms {
                expired.push(record.session_id);
            } else if record.status == UpgradeStatus::Upgrading.as_str() {
                record.status = UpgradeStatus::UnknownError.as_str().to_owned();
                record.error = Some("the server restarted during the upgrade".to_owned());
                record.finished_at = Some(now_ms);
                cut_short.push(record);
            }
        }
        for record in &cut_short {
            tracing::warn!(
                session = record.session_id,
                uid = record.uid,
                "firmware upgrade cut short by a restart: unknown_error"
            );
            store.put_upgrade_session(record)?;
        }
        store.delete_upgrade_sessions(&expired)?;
        Ok(Self {
            store,
            settings,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> UpgradeSettings {
        self.settings
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        // Every change under the lock is a single insert or remove: a panic leaves it whole.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a session for `uid` and starts the upgrade on its owner shard (on the current
    /// executor); the session is in the store before this returns. The checks come in the
    /// platform's order: file name, running limit, duplicate, file, device online.
    pub async fn create(
        self: &Arc<Self>,
        directory: &DeviceDirectory,
        firmware: &crate::firmware::FirmwareStore,
        uid: &str,
        file_name: &str,
        factory_reset: bool,
    ) -> Result<CreatedSession, UpgradeRefusal> {
        if !(file_name.ends_with(".pak") || file_name.ends_with(".paks")) {
            return Err(UpgradeRefusal::InvalidFileName);
        }
        let presence = directory.presence(uid).await;
        let now = crate::alarms::unix_now_ms();
        let mut running = self.running();
        if running.len() >= self.settings.max_running {
            return Err(UpgradeRefusal::TooMany(running.len()));
        }
        if let Some((id, _)) = running.iter().find(|(_, r)| r.uid == uid) {
            return Err(UpgradeRefusal::Duplicate(id.clone()));
        }
        let Some(path) = firmware.path_of(file_name) else {
            return Err(UpgradeRefusal::FileNotFound(file_name.to_owned()));
        };
        let presence = match presence {
            Ok(Some(presence)) if presence.signalling => presence,
            Ok(_) => return Err(UpgradeRefusal::Device(DeviceError::Offline)),
            Err(e) => return Err(UpgradeRefusal::Device(e)),
        };
        let session_id = Alphanumeric.sample_string(&mut rand::rngs::OsRng, SESSION_ID_LEN);
        let ttl_ms = u64::try_from(self.settings.session_ttl.as_millis()).unwrap_or(u64::MAX);
        let record = UpgradeRecord {
            session_id: session_id.clone(),
            uid: uid.to_owned(),
            file_name: file_name.to_owned(),
            factory_reset,
            status: UpgradeStatus::Upgrading.as_str().to_owned(),
            error: None,
            firmware_before: presence.firmware.clone(),
            firmware_after: None,
            created_at: now,
            expires_at: now.saturating_add(ttl_ms),
            finished_at: None,
            bytes_sent: 0,
            file_size: 0,
        };
        // Expired sessions go on the way; the new one is durable before it is acknowledged.
        let expired: Vec<String> = self
            .store
            .upgrade_sessions()
            .map(|all| {
                all.into_iter()
                    .filter(|r| r.expires_at <= now)
                    .map(|r| r.session_id)
                    .collect()
            })
            .unwrap_or_default();
        let stored = self
            .store
            .delete_upgrade_sessions(&expired)
            .and_then(|()| self.store.put_upgrade_session(&record));
        if let Err(e) = stored {
            return Err(UpgradeRefusal::Store(e.to_string()));
        }
        let tracker = Arc::new(UpgradeTracker::default());
        running.insert(
            session_id.clone(),
            Running {
                uid: uid.to_owned(),
                tracker: tracker.clone(),
            },
        );
        drop(running);
        tracing::info!(
            session = session_id,
            uid,
            file = file_name,
            factory_reset,
            "firmware upgrade session created"
        );
        let job = UpgradeJob {
            session_id: session_id.clone(),
            path,
            file_name: file_name.to_owned(),
            factory_reset,
            reboot_timeout: self.settings.reboot_timeout,
            tracker,
        };
        let sessions = self.clone();
        let directory = directory.clone();
        let uid = uid.to_owned();
        rt::spawn_detached(async move {
            let id = job.session_id.clone();
            let outcome = match directory.upgrade(&uid, job) {
                Ok(answer) => answer.await.unwrap_or(Err(UpgradeError::Stopped)),
                Err(DeviceError::Offline) => Err(UpgradeError::Offline),
                Err(DeviceError::Busy) => {
                    Err(UpgradeError::Busy("its shard's queue is full".into()))
                }
                Err(_) => Err(UpgradeError::Stopped),
            };
            sessions.finish(&id, outcome);
        });
        Ok(CreatedSession {
            session_id,
            expired_in: self.settings.session_ttl.as_secs(),
        })
    }

    /// Records the outcome of session `id` and forgets its progress.
    fn finish(&self, id: &str, outcome: UpgradeOutcome) {
        let running = self.running().remove(id);
        let (bytes_sent, file_size) = running.as_ref().map_or((0, 0), |r| r.tracker.bytes());
        let record = match self.store.upgrade_session(id) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(session = id, "firmware upgrade outcome not stored: {e}");
                return;
            }
        };
        let (status, error, firmware_after) = match &outcome {
            Ok(firmware) => (UpgradeStatus::UpgradeSuccess, None, firmware.clone()),
            Err(e) => (e.status(), Some(e.to_string()), None),
        };
        let record = UpgradeRecord {
            status: status.as_str().to_owned(),
            error,
            firmware_after,
            finished_at: Some(crate::alarms::unix_now_ms()),
            bytes_sent,
            file_size,
            ..record
        };
        match &outcome {
            Ok(_) => tracing::info!(
                session = id,
                uid = record.uid,
                firmware = ?record.firmware_after,
                "firmware upgrade succeeded"
            ),
            Err(e) => tracing::warn!(
                session = id,
                uid = record.uid,
                status = status.as_str(),
                "firmware upgrade failed: {e}"
            ),
        }
        if let Err(e) = self.store.put_upgrade_session(&record) {
            tracing::warn!(session = id, "firmware upgrade outcome not stored: {e}");
        }
    }

    /// Session `id` of `uid` while it lives; `None` for an unknown, expired or other device's
    /// session (the platform's 404 `session_not_found`).
    pub fn get(&self, uid: &str, id: &str) -> Result<Option<UpgradeView>, StoreError> {
        if id.len() != SESSION_ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let now = crate::alarms::unix_now_ms();
        let Some(record) = self.store.upgrade_session(id)? else {
            return Ok(None);
        };
        if record.uid != uid || record.expires_at <= now {
            return Ok(None);
        }
        Ok(Some(self.view(record)))
    }

    /// The running upgrade of `uid`, for the device detail.
    pub fn running_for(&self, uid: &str) -> Option<UpgradeView> {
        let id = self
            .running()
            .iter()
            .find(|(_, r)| r.uid == uid)
            .map(|(id, _)| id.clone())?;
        let record = self.store.upgrade_session(&id).ok().flatten()?;
        Some(self.view(record))
    }

    fn view(&self, record: UpgradeRecord) -> UpgradeView {
        let tracker = self
            .running()
            .get(&record.session_id)
            .map(|r| r.tracker.clone());
        let upgrading = record.status == UpgradeStatus::Upgrading.as_str();
        let (phase, bytes_sent, file_size) = match tracker.filter(|_| upgrading) {
            Some(tracker) => {
                let (sent, size) = tracker.bytes();
                (tracker.stage(), sent, size)
            }
            None => (UpgradeStage::Done, record.bytes_sent, record.file_size),
        };
        let status =
            UpgradeStatus::from_name(&record.status).unwrap_or(UpgradeStatus::UnknownError);
        UpgradeView {
            status: status.as_str(),
            phase: phase.as_str(),
            session_id: record.session_id,
            file_name: record.file_name,
            file_size,
            bytes_sent,
            factory_reset: record.factory_reset,
            created_at: record.created_at,
            finished_at: record.finished_at,
            firmware_before: record.firmware_before,
            firmware_after: record.firmware_after,
            error: record.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> UpgradeSettings {
        UpgradeSettings {
            session_ttl: Duration::from_secs(3600),
            reboot_timeout: Duration::from_secs(300),
            max_running: 100,
        }
    }

    fn record(id: &str, status: &str, expires_at: u64) -> UpgradeRecord {
        UpgradeRecord {
            session_id: id.to_owned(),
            uid: "95270000ABCDEFGH".to_owned(),
            file_name: "fw.pak".to_owned(),
            factory_reset: false,
            status: status.to_owned(),
            error: None,
            firmware_before: Some("v1".into()),
            firmware_after: None,
            created_at: 1,
            expires_at,
            finished_at: None,
            bytes_sent: 0,
            file_size: 0,
        }
    }

    #[test]
    fn a_restart_ends_running_sessions_and_drops_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let running = "a".repeat(32);
        let done = "b".repeat(32);
        let old = "c".repeat(32);
        store
            .put_upgrade_session(&record(&running, "upgrading", u64::MAX))
            .unwrap();
        store
            .put_upgrade_session(&record(&done, "same_version", u64::MAX))
            .unwrap();
        store
            .put_upgrade_session(&record(&old, "upgrading", 500))
            .unwrap();
        let sessions = UpgradeSessions::open(store.clone(), settings(), 1000).unwrap();
        let uid = "95270000ABCDEFGH";
        let view = sessions.get(uid, &running).unwrap().unwrap();
        assert_eq!(view.status, "unknown_error");
        assert_eq!(view.phase, "done");
        assert!(view.error.unwrap().contains("restarted"));
        assert_eq!(store.upgrade_session(&old).unwrap(), None);
        assert_eq!(
            sessions.get(uid, &done).unwrap().unwrap().status,
            "same_version"
        );
        // Another device's session, a malformed id: not found.
        assert_eq!(sessions.get("95270000ZZZZZZZZ", &done).unwrap(), None);
        assert_eq!(sessions.get(uid, "../x").unwrap(), None);
    }

    #[test]
    fn errors_map_to_statuses_and_symbols() {
        let refused = UpgradeError::Transfer(UpgradeFailure::Refused {
            what: "the upgrade start",
            code: 408,
        });
        assert_eq!(refused.status(), UpgradeStatus::LowBattery);
        assert_eq!(
            UpgradeError::NotBack {
                after: Duration::from_secs(300)
            }
            .status(),
            UpgradeStatus::UnknownError
        );
        assert_eq!(
            UpgradeRefusal::Duplicate("x".into()).symbol_and_status(),
            ("duplicate_upgrade", 400)
        );
        assert_eq!(
            UpgradeRefusal::Device(DeviceError::Offline).symbol_and_status(),
            ("device_offline", 404)
        );
        let tracker = UpgradeTracker::default();
        assert_eq!(tracker.stage(), UpgradeStage::Starting);
        tracker.set_stage(UpgradeStage::Installing);
        tracker.set_bytes(10, 20);
        assert_eq!(
            (tracker.stage(), tracker.bytes()),
            (UpgradeStage::Installing, (10, 20))
        );
    }
}
