//! Device sessions: the sans-IO state machines of a camera's two long-lived links, keep-alive
//! (61003, encryptTCP) and signalling (61005, mutual TLS), and the per-shard table of them.
//! The connection files (relay's shard listeners) do the I/O around them; nothing here
//! touches a socket, a clock or the runtime, so the tests drive sessions with scripted bytes
//! and a hand-moved clock.
//!
//! ```text
//!            keep-alive only                      both links
//! accept -> AwaitHello --hello ok--> AwaitHandshake --458 ok--> Online --heartbeats, alarms,
//!              |  (reply 200/400)        |                        |      replies, requests
//!              v                         v                        v
//!            Closed <------- refused, malformed, timeout, replaced, connection closed
//! ```
//!
//! - Hello (61003): the access key's index selects the device key; a hello whose signature
//!   does not match gets no reply; a key index that is not current is answered 400 and the
//!   link closes (the device registers again); otherwise 200 and the session keys.
//! - Handshake 458: the UID must be the certificate's CN (61005) or hash to the access key's
//!   UID hash (61003; the platform checks neither). Reply: empty 200 on TLS, `Param013.attr007`
//!   (heartbeat ms: 20000, or the carrier's interval for 4G devices) on encryptTCP. After the
//!   signalling handshake the session asks for capabilities (199).
//! - Heartbeat 0: answered with the server time unless `attr004` = 1; battery recorded.
//!   Offline after 40 s of silence (keep-alive: twice the announced interval).
//! - Alarm 33: handed to the caller, who persists it and then acks (the 200 reply).
//! - Requests: ids count up from a random start; replies are matched by id; deadlines are
//!   checked by the shard's sweeper ([`DeviceRegistry::sweep`]).
//! - Firmware upgrade 67 ([`DeviceSession::upgrade_start`], [`upgrade`]): start request, the
//!   file in 36 KiB slices with at most 30 unanswered (the caller reads the bytes the session
//!   asks for), then sleep 233; outcomes as [`SessionEvent::Upgrade`].
//!
//! # Wiring (one connection task per accepted connection, on the device's owner shard)
//! 1. Accept. 61005: finish TLS, take the UID from the certificate (`pki::peer_uid`), hand
//!    the connection to [`shard_of_uid`]'s shard. 61003: peek the 100-byte hello, hand it to
//!    [`shard_of_access_key`]'s shard (same shard as its UID). Then build the session
//!    ([`DeviceSession::signalling`] / [`DeviceSession::keep_alive`]) and
//!    [`DeviceRegistry::admit`] it.
//! 2. Read loop: for each read, [`DeviceRegistry::receive`]; if it returns `None` the session
//!    was evicted: close. If it returns an [`Evicted`] (older session replaced), handle that
//!    one's events and close its connection. Then drain [`DeviceSession::poll_event`], write
//!    [`DeviceSession::take_output`], and once [`DeviceSession::is_closed`],
//!    [`DeviceRegistry::remove`] and close.
//! 3. On EOF or error: [`DeviceRegistry::disconnect`], drain its events.
//! 4. Requests from elsewhere (client API, stream hub): [`DeviceRegistry::link_mut`] ->
//!    `request`/typed helper -> wake the connection's writer to write `take_output`.
//! 5. Once a second per shard: [`DeviceRegistry::sweep`]; close the connections of
//!    `closed`, fail the waiters of `expired`.

mod config;
mod device;
mod events;
mod presence;
mod registry;
mod requests;
pub mod sim;
mod transport;
pub mod upgrade;

pub use config::{cellular_heartbeat_interval, SessionConfig, SessionConfigError};
pub use device::{DeviceSession, Phase, RequestRejected, SessionStats};
pub use events::{Fault, OfflineReason, SessionEvent};
pub use presence::{Now, Presence};
pub use registry::{ConnId, DeviceLinks, DeviceRegistry, DeviceView, Evicted, Sweep};
pub use requests::{Reply, RequestError, RequestId, RequestOutcome};
pub use transport::SendError;
pub use upgrade::{
    UpgradeEvent, UpgradeFailure, UpgradePhase, UpgradeProgress, UpgradeRequest, UpgradeStatus,
};

use crate::proto::access_key::{split_access_key, uid_hash};

/// Which of a device's two long-lived links a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// 61003, encryptTCP: heartbeats and wake-up of battery devices.
    KeepAlive,
    /// 61005, mutual TLS: everything else.
    Signalling,
}

/// The owner shard of device `uid` among `shards`, computed from the first 16 hex digits of
/// SHA-256(uid), which is also the second half of the device's access key: a keep-alive
/// connection can be routed from its plaintext hello, before any session state exists.
pub fn shard_of_uid(uid: &str, shards: usize) -> usize {
    shard_of_uid_hash(&uid_hash(uid), shards).unwrap_or(0)
}

/// The owner shard named by the access key in a keep-alive hello (bytes 4..36); `None` when
/// the key is malformed (the session will refuse the hello; any shard can do that).
pub fn shard_of_access_key(access_key: &[u8], shards: usize) -> Option<usize> {
    let text = std::str::from_utf8(access_key).ok()?;
    let (_, hash) = split_access_key(text)?;
    shard_of_uid_hash(hash, shards)
}

fn shard_of_uid_hash(hash: &str, shards: usize) -> Option<usize> {
    let value = u64::from_str_radix(hash, 16).ok()?;
    let shards = u64::try_from(shards.max(1)).ok()?;
    usize::try_from(value % shards).ok()
}

#[cfg(test)]
mod tests;

/// Entry points of the fuzz target (`fuzz/fuzz_targets/device_session.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing;
