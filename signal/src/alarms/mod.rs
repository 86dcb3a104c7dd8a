//! Durable alarm delivery: every alarm 33 a device sends is committed to the store before the
//! device gets its 200 reply, then posted to the partner's webhook (`ROP_ALARM_WEBHOOK`) until
//! the partner acknowledges it with a 2xx: at least once, in order per device, across restarts.
//!
//! ```text
//! device session ──enqueue()──▶ AlarmQueue (redb: alarm_queue, alarm_dead, alarm_meta)
//!                                   │ peek / ack / dead_letter
//!                                   ▼
//!                    AlarmDelivery::run ──POST, signed──▶ partner webhook (HTTP or HTTPS)
//! ```
//!
//! - [`AlarmEvent`] is one alarm with its event id (a ULID: unique, sortable by time), which the
//!   partner uses as idempotency key, since a retry after a lost response delivers it again.
//! - [`AlarmQueue`] is the durable queue; [`AlarmDelivery`] the sender future that runs on the
//!   control-plane executor; [`AlarmMetrics`] the counters for `/metrics`.
//! - [`webhook`] holds the sans-IO parts: target URL, body, signature, response classification.
//!
//! The wire format, the signature scheme and the retry policy are documented for partners in
//! `docs/alarms.md`.

mod delivery;
mod metrics;
mod queue;
pub mod webhook;

use serde::{Deserialize, Serialize};

pub use delivery::{AlarmDelivery, DeliveryError, DeliverySettings};
pub use metrics::{AlarmMetrics, MetricsSnapshot};
pub use queue::{AlarmQueue, DeadLetter, QueueSettings, QueuedAlarm};
pub use webhook::{WebhookSigner, WebhookTarget};

use crate::proto::body::Alarm;

/// One alarm as received from a device, with the identity it keeps until delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// Unique id of this alarm (a 26-character ULID), the partner's idempotency key.
    pub event_id: String,
    /// The device's UID.
    pub uid: String,
    /// The channel the alarm is about.
    pub channel_id: u32,
    /// Alarm status as the device said it (`MD`, `videoLoss`, `IOAlarm`, …; empty = `none`).
    pub status: String,
    /// Smart-alarm types as the device said them (`people,vehicle`, …; empty = `none`).
    pub ai_type: String,
    /// When the server received it, Unix milliseconds.
    pub received_at_ms: u64,
}

impl AlarmEvent {
    /// An event for alarm `alarm` of device `uid`, received at `received_at_ms`, with a fresh id.
    pub fn new(uid: &str, alarm: &Alarm, received_at_ms: u64) -> Self {
        AlarmEvent {
            event_id: new_event_id(received_at_ms),
            uid: uid.to_owned(),
            channel_id: alarm.channel,
            status: alarm.status.clone(),
            ai_type: alarm.ai_type.clone(),
            received_at_ms,
        }
    }
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A ULID (<https://github.com/ulid/spec>): 48 bits of Unix milliseconds and 80 random bits, in
/// Crockford base32, 26 characters. Ids sort by creation time, which makes logs and dead letters
/// easy to read.
pub fn new_event_id(unix_ms: u64) -> String {
    use rand::RngCore;
    let mut random = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut random);
    encode_ulid(unix_ms, random)
}

fn encode_ulid(unix_ms: u64, random: [u8; 10]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut value: u128 = u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80;
    for (i, byte) in random.iter().enumerate() {
        value |= u128::from(*byte) << (8 * (9 - i));
    }
    (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            char::from(ALPHABET[((value >> shift) & 31) as usize])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_layout() {
        // The spec's example time 1469918176385 encodes as 01ARYZ6S41.
        let id = encode_ulid(1_469_918_176_385, [0; 10]);
        assert_eq!(id, "01ARYZ6S410000000000000000");
        assert_eq!(encode_ulid(0, [0xFF; 10]), "0000000000ZZZZZZZZZZZZZZZZ");
        let a = new_event_id(1_700_000_000_000);
        let b = new_event_id(1_700_000_000_001);
        assert_eq!(a.len(), 26);
        assert!(a < b, "ids sort by time");
        assert_ne!(new_event_id(5), new_event_id(5));
    }

    #[test]
    fn event_from_alarm() {
        let alarm = Alarm {
            channel: 1,
            status: "MD".into(),
            ai_type: "people".into(),
        };
        let event = AlarmEvent::new("952700000A5S348E", &alarm, 1_700_000_000_123);
        assert_eq!(event.channel_id, 1);
        assert_eq!(event.status, "MD");
        assert_eq!(event.received_at_ms, 1_700_000_000_123);
        assert!(event.event_id.starts_with("01HF7"));
    }
}
