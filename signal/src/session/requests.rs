//! Requests from the server to a device, correlated by request id, each with a deadline.
//! Replies are turned into typed values where the command's reply is known (preview start's
//! binary reply, capabilities, alarm switch, snapshot chunks) and into an [`XmlBody`] otherwise.
//!
//! Snapshots follow the platform: the device first answers the 109 request with a 200 reply
//! (an acknowledgement whose body is not part of the picture), then sends the JPEG in further
//! 109 packets, the last with response code 201. The chunks are accumulated up to a limit.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::proto::body::{
    AlarmSwitch, BodyError, BodyMessage, Capabilities, PreviewStartReply, XmlBody,
};
use crate::proto::core_packet::{cmd, CorePacket, CODE_LAST_CHUNK, CODE_OK};

/// A request id: unique per link while the request is outstanding; replies echo it. For
/// preview start it is also the stream id that the device's media packets carry.
pub type RequestId = u32;

/// What a completed request gave.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// 200 with no body.
    Empty,
    /// 200 with an XML body (every command without a typed reply).
    Xml(XmlBody),
    /// Preview start 3: the device's binary reply.
    PreviewStarted(PreviewStartReply),
    /// Capabilities 199.
    Capabilities(Capabilities),
    /// Alarm switch get 461.
    AlarmSwitch(AlarmSwitch),
    /// Snapshot 109: the JPEG, all chunks joined.
    Snapshot(Bytes),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The device did not answer in time.
    #[error("device did not answer command {command} within {after:?}")]
    TimedOut {
        /// The command.
        command: u32,
        /// The timeout.
        after: Duration,
    },
    /// The device answered with a response code other than 200.
    #[error("device refused command {command} with response code {code}")]
    Refused {
        /// The command.
        command: u32,
        /// The response code (400 in practice).
        code: u32,
    },
    /// The reply could not be read.
    #[error("device's reply to command {command} is malformed: {source}")]
    MalformedReply {
        /// The command.
        command: u32,
        /// What is wrong.
        source: BodyError,
    },
    /// The snapshot's chunks exceeded the limit.
    #[error("device's snapshot exceeds the limit of {limit} bytes")]
    SnapshotTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The link closed before the reply.
    #[error("the device's link closed before it answered command {command}")]
    LinkClosed {
        /// The command.
        command: u32,
    },
}

/// A request that completed, successfully or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOutcome {
    /// The request's id.
    pub request_id: RequestId,
    /// Its command.
    pub command: u32,
    /// The reply or the failure.
    pub result: Result<Reply, RequestError>,
}

/// How a reply is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Xml,
    PreviewStart,
    /// `internal`: sent by the session itself after the handshake; no `RequestDone` event.
    Capabilities {
        internal: bool,
    },
    AlarmSwitch,
    Snapshot,
    /// Sleep 233: the device may close the link instead of answering; a close completes it.
    Sleep,
    /// Firmware upgrade start 67 (`Param012`); its reply goes to the transfer, not an event.
    UpgradeStart,
    /// One firmware slice (67 with a binary body).
    UpgradeSlice,
    /// The sleep 233 that ends a transfer: a close completes it, like [`ReplyKind::Sleep`].
    UpgradeSleep,
}

impl ReplyKind {
    /// Requests of a firmware transfer: bounded by the transfer's own window, not by the
    /// link's request limit, and answered to the transfer.
    pub(crate) fn is_upgrade(self) -> bool {
        matches!(
            self,
            ReplyKind::UpgradeStart | ReplyKind::UpgradeSlice | ReplyKind::UpgradeSleep
        )
    }
}

#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: RequestId,
    pub(crate) command: u32,
    pub(crate) kind: ReplyKind,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
    /// Snapshot chunks once the device acknowledged the request.
    pub(crate) chunks: Option<BytesMut>,
}

/// What to do with a reply packet.
pub(crate) enum ReplyStep {
    /// The request completed.
    Done(Pending, Result<Reply, RequestError>),
    /// More is coming (a snapshot chunk or its acknowledgement).
    Continue,
}

/// The outstanding requests of one link. A plain vector: a link has a handful at most.
#[derive(Debug, Default)]
pub(crate) struct PendingRequests {
    list: Vec<Pending>,
}

impl PendingRequests {
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// Outstanding requests other than a firmware transfer's.
    pub(crate) fn regular_len(&self) -> usize {
        self.list.iter().filter(|p| !p.kind.is_upgrade()).count()
    }

    /// Removes the requests of a firmware transfer (it stopped: late replies are unmatched).
    pub(crate) fn drop_upgrade(&mut self) {
        self.list.retain(|p| !p.kind.is_upgrade());
    }

    pub(crate) fn contains(&self, id: RequestId) -> bool {
        self.list.iter().any(|p| p.id == id)
    }

    pub(crate) fn has_snapshot(&self) -> bool {
        self.list.iter().any(|p| p.kind == ReplyKind::Snapshot)
    }

    pub(crate) fn push(&mut self, pending: Pending) {
        self.list.push(pending);
    }

    pub(crate) fn earliest_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|p| p.deadline).min()
    }

    /// Finds the request a reply packet answers: by request id; a snapshot chunk whose id
    /// matches nothing goes to the one snapshot being received (the platform routes chunks by
    /// command, one snapshot per device at a time).
    fn position(&self, packet: &CorePacket) -> Option<usize> {
        let id = packet.header.request_id;
        self.list.iter().position(|p| p.id == id).or_else(|| {
            (packet.header.command == cmd::SNAPSHOT)
                .then(|| {
                    self.list
                        .iter()
                        .position(|p| p.kind == ReplyKind::Snapshot && p.chunks.is_some())
                })
                .flatten()
        })
    }

    /// Matches a reply; `None` when no request is waiting for it.
    pub(crate) fn on_reply(
        &mut self,
        packet: &CorePacket,
        max_snapshot_bytes: usize,
    ) -> Option<ReplyStep> {
        let index = self.position(packet)?;
        let pending = &mut self.list[index];
        let code = packet.header.response_code;
        let command = pending.command;
        if pending.kind == ReplyKind::Snapshot {
            let acknowledged = pending.chunks.is_some();
            if code == CODE_OK && !acknowledged {
                pending.chunks = Some(BytesMut::new());
                return Some(ReplyStep::Continue);
            }
            if code == CODE_LAST_CHUNK || code == CODE_OK {
                let chunks = pending.chunks.get_or_insert_with(BytesMut::new);
                if chunks.len() + packet.body.len() > max_snapshot_bytes {
                    let done = self.list.swap_remove(index);
                    let limit = max_snapshot_bytes;
                    return Some(ReplyStep::Done(
                        done,
                        Err(RequestError::SnapshotTooLarge { limit }),
                    ));
                }
                for part in packet.body.parts() {
                    chunks.extend_from_slice(part);
                }
                if code == CODE_OK {
                    return Some(ReplyStep::Continue);
                }
                let picture = std::mem::take(chunks).freeze();
                let done = self.list.swap_remove(index);
                return Some(ReplyStep::Done(done, Ok(Reply::Snapshot(picture))));
            }
        }
        let done = self.list.swap_remove(index);
        if code != CODE_OK {
            return Some(ReplyStep::Done(
                done,
                Err(RequestError::Refused { command, code }),
            ));
        }
        let body = packet.body.to_contiguous();
        let malformed = |source| RequestError::MalformedReply { command, source };
        let result = match done.kind {
            ReplyKind::PreviewStart => PreviewStartReply::parse(&body)
                .map(Reply::PreviewStarted)
                .map_err(malformed),
            ReplyKind::Capabilities { .. } => Capabilities::parse(&body)
                .map(Reply::Capabilities)
                .map_err(malformed),
            ReplyKind::AlarmSwitch => AlarmSwitch::parse(&body)
                .map(Reply::AlarmSwitch)
                .map_err(malformed),
            ReplyKind::Xml | ReplyKind::Sleep | ReplyKind::Snapshot => xml_reply(&body, command),
            // A transfer needs the response code only; what a device puts in the body is not
            // read.
            ReplyKind::UpgradeStart | ReplyKind::UpgradeSlice | ReplyKind::UpgradeSleep => {
                Ok(Reply::Empty)
            }
        };
        Some(ReplyStep::Done(done, result))
    }

    /// Removes and returns the requests whose deadline passed.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<Pending> {
        if !self.list.iter().any(|p| p.deadline <= now) {
            return Vec::new();
        }
        let (expired, kept) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.list = kept;
        expired
    }

    /// Removes every request (the link closed).
    pub(crate) fn take_all(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.list)
    }
}

/// A generic reply: empty, or an XML body. Trailing NULs count as empty (some firmware pads).
fn xml_reply(body: &[u8], command: u32) -> Result<Reply, RequestError> {
    if body.iter().all(|&b| b == 0 || b.is_ascii_whitespace()) {
        return Ok(Reply::Empty);
    }
    XmlBody::parse(body)
        .map(Reply::Xml)
        .map_err(|source| RequestError::MalformedReply { command, source })
}
