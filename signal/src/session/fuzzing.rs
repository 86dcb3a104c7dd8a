//! Arbitrary bytes into a device session, in each link mode, split at fuzzer-chosen points,
//! interleaved with requests, alarm acks, sweeps and clock steps. Checks: no panic; a closed
//! session stays closed and silent; `Offline` is the last event and comes once; requests stay
//! within their limit.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::proto::access_key::AccessKeyPair;
use crate::proto::body::{Handshake, StreamMode, StreamType};
use crate::proto::core_packet::cmd;
use crate::secrets::DeviceKeys;

use super::sim::SimDevice;
use super::upgrade::{UpgradeEvent, MAX_UNANSWERED_SLICES, SLICE_LEN};
use super::{DeviceSession, Now, SessionConfig, SessionEvent, UpgradeRequest};

const UID: &str = "95270000ABCDEFGH";
const KEY_INDEX: &str = "fuzzKeyIndex0001";
const DEVICE_KEY: &str = "0123456789abcdef0123456789abcdef";

fn device_keys() -> Arc<DeviceKeys> {
    Arc::new(DeviceKeys {
        current_index: KEY_INDEX.to_owned(),
        keys: [(KEY_INDEX.to_owned(), DEVICE_KEY.to_owned())].into(),
    })
}

/// The first byte picks the mode: 0 signalling, raw; 1 signalling after a valid handshake;
/// 2 keep-alive, raw (the hello included); 3 keep-alive after a valid hello and handshake,
/// the rest wrapped in valid frames so that the core-packet layer inside is reached.
pub fn session(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = Arc::new(SessionConfig {
        max_snapshot_bytes: 4096,
        ..SessionConfig::default()
    });
    let mut now = Now::new(
        Instant::now(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
    );
    let handshake = Handshake {
        uid: UID.to_owned(),
        ..Handshake::default()
    };
    let (mut session, prefix, body) = match mode % 4 {
        0 | 1 => {
            let session = DeviceSession::signalling(config.clone(), UID, 7, now.instant);
            let mut device = SimDevice::signalling();
            let prefix = if mode % 4 == 1 {
                device.handshake(&handshake, 1).to_vec()
            } else {
                Vec::new()
            };
            (session, prefix, rest.to_vec())
        }
        _ => {
            let session = DeviceSession::keep_alive(
                config.clone(),
                device_keys(),
                [b's'; 32],
                7,
                now.instant,
            );
            if mode % 4 == 2 {
                (session, Vec::new(), rest.to_vec())
            } else {
                let pair = AccessKeyPair::derive(KEY_INDEX, DEVICE_KEY.as_bytes(), UID);
                let (mut device, hello) = SimDevice::keep_alive(&pair, [b'c'; 32]);
                let mut session = session;
                session.receive(&hello, now);
                let reply = session.take_output().unwrap_or_default();
                let _ = device.receive(&reply);
                let mut prefix = device.handshake(&handshake, 1).to_vec();
                // The rest, in frames of fuzzer-chosen sizes.
                let mut framed = Vec::new();
                for piece in rest.chunks(61) {
                    framed.extend_from_slice(&device.frame(piece));
                }
                prefix.extend_from_slice(&framed);
                (session, prefix, Vec::new())
            }
        }
    };
    let mut input = prefix;
    input.extend_from_slice(&body);

    let mut offline_seen = false;
    let mut offset = 0;
    let mut step = 0usize;
    while offset < input.len() {
        let size = 1 + usize::from(input[offset] % 64);
        let end = (offset + size).min(input.len());
        session.receive(&input[offset..end], now);
        offset = end;
        step += 1;
        match step % 7 {
            1 => {
                let _ =
                    session.preview_start(0, StreamType::Main, StreamMode::Tls, 61006, now.instant);
            }
            2 => {
                let _ = session.snapshot(0, StreamType::Sub, now.instant);
            }
            3 => {
                let _ = session.request(cmd::PTZ, None, now.instant);
            }
            4 => now = now.advanced(Duration::from_secs(3)),
            5 => {
                let _ = session.expire(now.instant);
            }
            6 => {
                let _ = session.check_liveness(now.instant);
            }
            _ => {
                // A firmware upgrade of two and a half slices; the input answers it or not.
                let request = UpgradeRequest {
                    file_name: "f.pak".into(),
                    file_size: SLICE_LEN as u64 * 5 / 2,
                    factory_reset: step.is_multiple_of(2),
                };
                let _ = session.upgrade_start(&request, now.instant);
            }
        }
        // A transfer's slices and its sleep are bounded by its own window.
        assert!(
            session.pending_requests() <= config.max_pending_requests + MAX_UNANSWERED_SLICES + 1
        );
        while let Some(event) = session.poll_event() {
            assert!(!offline_seen, "an event after Offline: {event:?}");
            match event {
                SessionEvent::AlarmReceived { request_id, .. } => {
                    session.ack_alarm(request_id);
                }
                SessionEvent::Upgrade(UpgradeEvent::Read { offset, len }) => {
                    let data = vec![offset as u8; len];
                    let _ = session.upgrade_data(offset, &data, now.instant);
                }
                SessionEvent::Offline { .. } => offline_seen = true,
                _ => {}
            }
        }
        let _ = session.take_output();
        if session.is_closed() {
            assert!(offline_seen);
            session.receive(&input[offset..], now);
            assert!(session.poll_event().is_none());
            assert!(!session.has_output());
            return;
        }
    }
}
