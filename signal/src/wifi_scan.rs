//! Wi-Fi scan sessions of the client API (`POST …/wifi/scan-task`, `GET …/wifi/scan/{id}`).
//! A scan takes the device up to half a minute, so the platform answers at once with a
//! session id and runs the scan (116 with `Param019.attr008 = 0`) in the background; the
//! client polls the session. One scan per device runs at a time: a second request while one
//! runs gets the running session. Sessions live 10 minutes (the platform's `wifiSessionTTL`)
//! and are bounded in number.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::distributions::{Alphanumeric, DistString};
use serde::Serialize;
use serde_json::Value;

use crate::devices::{DeviceDirectory, DeviceError};
use crate::proto::body::{XmlBody, XmlElement};
use crate::proto::core_packet::cmd;

/// Lifetime of a scan session, ms.
pub const SCAN_SESSION_TTL_MS: u64 = 600_000;
/// Most sessions kept; the oldest go first.
pub const MAX_SCAN_SESSIONS: usize = 4096;

/// The answer to starting a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanTask {
    /// 32 letters and digits.
    pub session_id: String,
    /// Unix ms after which the session is gone.
    pub expiring_at: u64,
}

/// The answer to polling a scan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanResult {
    /// `scanning`, `success`, `error` or `timeout`.
    pub status: &'static str,
    /// `{ssid, signal, encryptMode}` of each network found.
    pub wifi_list: Vec<Value>,
}

#[derive(Debug)]
struct Session {
    uid: String,
    expiring_at: u64,
    result: ScanResult,
}

/// The scan sessions of the control plane. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct WifiScans {
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

impl WifiScans {
    /// Starts a scan of `uid` on the current executor, or returns the one running.
    pub fn start(&self, directory: DeviceDirectory, uid: &str) -> ScanTask {
        let now = crate::alarms::unix_now_ms();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expiring_at > now);
        let running = sessions
            .iter()
            .find(|(_, s)| s.uid == uid && s.result.status == "scanning");
        if let Some((id, session)) = running {
            return ScanTask {
                session_id: id.clone(),
                expiring_at: session.expiring_at,
            };
        }
        while sessions.len() >= MAX_SCAN_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expiring_at)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => sessions.remove(&id),
                None => break,
            };
        }
        let session_id = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
        let expiring_at = now + SCAN_SESSION_TTL_MS;
        sessions.insert(
            session_id.clone(),
            Session {
                uid: uid.to_owned(),
                expiring_at,
                result: ScanResult {
                    status: "scanning",
                    wifi_list: Vec::new(),
                },
            },
        );
        drop(sessions);
        let scans = self.clone();
        let id = session_id.clone();
        let uid = uid.to_owned();
        rt::spawn_detached(async move {
            let body = XmlBody::new().with(XmlElement::new("Param019").with_leaf("attr008", 0));
            let timeout = Some(crate::device_control_api::WIFI_DEVICE_TIMEOUT);
            let outcome = directory
                .command(&uid, cmd::WIFI_GET, Some(body), timeout)
                .await;
            let result = match outcome {
                Ok(reply) => ScanResult {
                    status: "success",
                    wifi_list: crate::device_control_api::scanned_networks(&reply),
                },
                Err(DeviceError::Timeout) => ScanResult {
                    status: "timeout",
                    wifi_list: Vec::new(),
                },
                Err(_) => ScanResult {
                    status: "error",
                    wifi_list: Vec::new(),
                },
            };
            if let Some(session) = scans.lock().get_mut(&id) {
                session.result = result;
            }
        });
        ScanTask {
            session_id,
            expiring_at,
        }
    }

    /// The session `id` of `uid`, while it lives.
    pub fn result(&self, uid: &str, id: &str) -> Option<ScanResult> {
        let now = crate::alarms::unix_now_ms();
        self.lock()
            .get(id)
            .filter(|s| s.uid == uid && s.expiring_at > now)
            .map(|s| s.result.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves the map consistent (single inserts/removes).
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}
