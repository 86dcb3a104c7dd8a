//! Limits and timeouts of device sessions, with the platform's defaults, and the platform's
//! heartbeat intervals for 4G devices (a carrier table: some carriers drop idle NAT mappings
//! early, others let a battery device sleep for 19 minutes).

use std::time::Duration;

use crate::proto::core_packet::DEFAULT_SIGNALLING_MAX_LEN;
use crate::proto::encrypt_tcp::FramePolicy;

/// Limits and timeouts of one kind of device session. Shared by every session of a shard
/// (`Arc`), so that a session carries a pointer, not a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Heartbeat interval announced to keep-alive devices (`Param013.attr007` of the handshake
    /// reply) whose network is not 4G. The platform's: 20 s.
    pub heartbeat_interval: Duration,
    /// Silence (time since the last heartbeat or the handshake) after which a signalling link
    /// is offline. A keep-alive link is offline after twice the interval it announced, which
    /// is this value unless the device is on 4G. The platform's: 40 s.
    pub heartbeat_timeout: Duration,
    /// Time from accept to an accepted handshake (and, on 61003, hello). The platform has none.
    pub handshake_timeout: Duration,
    /// Default time a device has to answer a request. The platform's: 10 s.
    pub request_timeout: Duration,
    /// Time a device has to answer one firmware slice of an upgrade 67 (the platform's
    /// `timeout.upgradeSignaling`: 60 s). The start request and the sleep that follows the
    /// file have [`SessionConfig::request_timeout`].
    pub upgrade_slice_timeout: Duration,
    /// Most requests outstanding on one link; more are refused locally. A firmware transfer's
    /// slices are not counted: its own window bounds them.
    pub max_pending_requests: usize,
    /// Most alarms received but not yet acknowledged (the caller persists each first); past
    /// it, alarms are answered 400 at once so that a flooding device cannot grow memory.
    pub max_unacked_alarms: usize,
    /// Largest snapshot (all chunks together).
    pub max_snapshot_bytes: usize,
    /// Checks on the keep-alive link's frames (HMAC, sequence, size).
    pub frame_policy: FramePolicy,
    /// Refuse a keep-alive handshake whose UID does not hash to the access key's UID hash.
    /// The platform's server does not check; turn off only for devices that share keys.
    pub bind_access_key_to_uid: bool,
    /// Ask for capabilities (199) right after the signalling handshake.
    pub request_capabilities: bool,
    /// Largest core packet (extension + body) accepted from a device.
    pub max_packet_length: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(40),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            upgrade_slice_timeout: Duration::from_secs(60),
            max_pending_requests: 32,
            max_unacked_alarms: 16,
            max_snapshot_bytes: 4 * 1024 * 1024,
            frame_policy: FramePolicy::default(),
            bind_access_key_to_uid: true,
            request_capabilities: true,
            max_packet_length: DEFAULT_SIGNALLING_MAX_LEN,
        }
    }
}

/// A [`SessionConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionConfigError {
    /// A field is out of range.
    #[error("session config: {field} {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl SessionConfig {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), SessionConfigError> {
        let invalid = |field, reason| Err(SessionConfigError::Invalid { field, reason });
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_interval.as_millis() > u32::MAX as u128
        {
            return invalid("heartbeat_interval", "must be between 1 ms and u32::MAX ms");
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return invalid(
                "heartbeat_timeout",
                "must be longer than heartbeat_interval",
            );
        }
        if self.handshake_timeout.is_zero()
            || self.request_timeout.is_zero()
            || self.upgrade_slice_timeout.is_zero()
        {
            return invalid(
                "handshake_timeout/request_timeout/upgrade_slice_timeout",
                "must not be zero",
            );
        }
        if self.max_pending_requests == 0 {
            return invalid("max_pending_requests", "must be at least 1");
        }
        if self.max_packet_length < 1024 {
            return invalid("max_packet_length", "must be at least 1024 bytes");
        }
        Ok(())
    }
}

/// The platform's heartbeat interval for a 4G device on `carrier` (MCC+MNC, handshake
/// `attr006`): a table of carriers, else 240 s.
pub fn cellular_heartbeat_interval(carrier: Option<&str>) -> Duration {
    let millis = match carrier.unwrap_or_default() {
        "46000" | "46011" => 1_140_000,
        "46001" => 540_000,
        "53024" | "54201" | "344920" | "348170" => 60_000,
        "22201" | "27205" | "27202" | "21910" | "34002" | "338050" | "51502" | "52503"
        | "36439" | "338180" => 120_000,
        _ => 240_000,
    };
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_platforms_and_valid() {
        let config = SessionConfig::default();
        config.validate().unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(20));
        assert_eq!(config.heartbeat_timeout, Duration::from_secs(40));
        assert_eq!(config.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn rejects_impossible_values() {
        let mut config = SessionConfig {
            heartbeat_timeout: Duration::from_secs(20),
            ..SessionConfig::default()
        };
        assert!(config.validate().is_err());
        config.heartbeat_timeout = Duration::from_secs(40);
        config.max_pending_requests = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn carrier_table() {
        assert_eq!(
            cellular_heartbeat_interval(Some("46000")),
            Duration::from_secs(1140)
        );
        assert_eq!(
            cellular_heartbeat_interval(Some("54201")),
            Duration::from_secs(60)
        );
        assert_eq!(
            cellular_heartbeat_interval(Some("22201")),
            Duration::from_secs(120)
        );
        assert_eq!(
            cellular_heartbeat_interval(Some("99999")),
            Duration::from_secs(240)
        );
        assert_eq!(cellular_heartbeat_interval(None), Duration::from_secs(240));
    }
}
