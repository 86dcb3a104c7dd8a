//! What a session tells its caller: events (online, alarm, replies, offline) and why a session
//! ended, with the party at fault so that metrics and logs can tell device bugs from ours.

use std::time::Duration;

use crate::proto::body::{Alarm, BodyError, Capabilities, Handshake};
use crate::proto::core_packet::CorePacketError;
use crate::proto::encrypt_tcp::EncryptTcpError;

use super::requests::RequestOutcome;
use super::upgrade::UpgradeEvent;
use super::LinkKind;

/// Something the caller must act on, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The handshake was accepted: the device is online on this link. A registry indexes the
    /// session by UID at this point (replacing an older session of the same UID and link).
    Online {
        /// The device.
        uid: String,
        /// Which link.
        link: LinkKind,
        /// What the handshake said (model, firmware, family, network, carrier).
        info: Handshake,
    },
    /// The device's capabilities are known (or changed): the reply to the 199 request the
    /// session sends after the signalling handshake, or to [`super::DeviceSession::capabilities`].
    Capabilities(Capabilities),
    /// An alarm 33. Persist it, then call [`super::DeviceSession::ack_alarm`] with
    /// `request_id` (the 200 reply tells the device it may forget the alarm), or
    /// [`super::DeviceSession::reject_alarm`] when it could not be stored.
    AlarmReceived {
        /// Request id of the alarm packet; the reply echoes it.
        request_id: u32,
        /// The alarm.
        alarm: Alarm,
    },
    /// A request to the device completed (reply, refusal, or the link closed under it).
    /// Timeouts are not events: [`super::DeviceSession::expire`] returns them.
    RequestDone(RequestOutcome),
    /// The firmware transfer of this link wants bytes, finished or failed
    /// ([`super::DeviceSession::upgrade_start`]).
    Upgrade(UpgradeEvent),
    /// The session ended; emitted exactly once, last. Write any pending output, then close
    /// the connection.
    Offline {
        /// Why.
        reason: OfflineReason,
        /// Whether the handshake had been accepted (the device was online on this link).
        was_online: bool,
    },
}

/// Who caused a session to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The device broke the protocol or failed authentication.
    Device,
    /// The device went away (connection closed, silence).
    Network,
    /// The server decided (replaced, revoked, shutting down).
    Server,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineReason {
    /// The connection closed or failed (the caller said so).
    #[error("connection closed")]
    ConnectionClosed,
    /// The keep-alive hello was malformed or its signature did not match its access key.
    #[error("device's encryptTCP hello refused: {0}")]
    BadHello(EncryptTcpError),
    /// The access key names a key index this server never issued.
    #[error("device's access key names unknown key index {index:?}")]
    UnknownKeyIndex {
        /// The key index (16 characters).
        index: String,
    },
    /// The access key names a key index that is no longer current: the hello was answered 400
    /// (the device must register again).
    #[error("device's access key has stale key index {index:?}; answered 400")]
    StaleKeyIndex {
        /// The key index.
        index: String,
    },
    /// An encryptTCP frame was refused (bad HMAC, sequence, length): the core-packet stream
    /// inside has lost its framing.
    #[error("device's encryptTCP frame refused: {0}")]
    BadFrame(EncryptTcpError),
    /// The core-packet stream was malformed.
    #[error("device's core packet refused: {0}")]
    BadPacket(CorePacketError),
    /// The handshake body was malformed or its UID is not a UID.
    #[error("device's handshake refused: {0}")]
    BadHandshake(BodyError),
    /// The handshake's UID is not of the UID form.
    #[error("device's handshake names {uid:?}, not a valid UID")]
    InvalidUid {
        /// The UID claimed (cut to 64 characters).
        uid: String,
    },
    /// Signalling: the handshake's UID differs from the certificate's CN.
    #[error("device with certificate for {authenticated} claimed UID {claimed} in its handshake")]
    UidMismatch {
        /// UID in the handshake.
        claimed: String,
        /// UID of the client certificate.
        authenticated: String,
    },
    /// Keep-alive: the handshake's UID does not hash to the access key's UID hash.
    #[error("device claimed UID {claimed} with an access key issued for another UID")]
    AccessKeyMismatch {
        /// UID in the handshake.
        claimed: String,
    },
    /// No accepted handshake within the handshake timeout.
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// No heartbeat within the heartbeat timeout.
    #[error("no heartbeat for {0:?}")]
    HeartbeatTimeout(Duration),
    /// A newer session of the same device on the same link replaced this one.
    #[error("replaced by a newer connection of the same device")]
    Replaced,
    /// The server closed the session (shutdown, revocation, operator).
    #[error("closed by the server: {0}")]
    ServerClosed(&'static str),
}

impl OfflineReason {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            OfflineReason::ConnectionClosed
            | OfflineReason::HandshakeTimeout(_)
            | OfflineReason::HeartbeatTimeout(_) => Fault::Network,
            OfflineReason::Replaced | OfflineReason::ServerClosed(_) => Fault::Server,
            _ => Fault::Device,
        }
    }

    /// A short, stable name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            OfflineReason::ConnectionClosed => "connection_closed",
            OfflineReason::BadHello(_) => "bad_hello",
            OfflineReason::UnknownKeyIndex { .. } => "unknown_key_index",
            OfflineReason::StaleKeyIndex { .. } => "stale_key_index",
            OfflineReason::BadFrame(_) => "bad_frame",
            OfflineReason::BadPacket(_) => "bad_packet",
            OfflineReason::BadHandshake(_) => "bad_handshake",
            OfflineReason::InvalidUid { .. } => "invalid_uid",
            OfflineReason::UidMismatch { .. } => "uid_mismatch",
            OfflineReason::AccessKeyMismatch { .. } => "access_key_mismatch",
            OfflineReason::HandshakeTimeout(_) => "handshake_timeout",
            OfflineReason::HeartbeatTimeout(_) => "heartbeat_timeout",
            OfflineReason::Replaced => "replaced",
            OfflineReason::ServerClosed(_) => "server_closed",
        }
    }
}
