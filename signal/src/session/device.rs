//! [`DeviceSession`]: the state machine of one device link, keep-alive or signalling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::proto::access_key::uid_hash;
use crate::proto::body::{
    Alarm, AlarmSwitch, BodyMessage, Handshake, HandshakeReply, Heartbeat, HeartbeatReply,
    KeyframeRequest, LocalTime, PacketExtension, PreviewStart, PreviewStop, RecordFile, ReplaySeek,
    ReplayStart, SnapshotRequest, StreamMode, StreamType, UpgradeStart, XmlBody,
};
use crate::proto::core_packet::{cmd, CoreHeader, CorePacket, CODE_ERROR, CODE_OK};
use crate::proto::encrypt_tcp::NONCE_LEN;
use crate::secrets::DeviceKeys;

use super::config::{cellular_heartbeat_interval, SessionConfig};
use super::events::{OfflineReason, SessionEvent};
use super::presence::{Now, Presence};
use super::requests::{
    Pending, PendingRequests, Reply, ReplyKind, ReplyStep, RequestError, RequestId, RequestOutcome,
};
use super::transport::{SendError, Transport, TransportLimits};
use super::upgrade::{
    UpgradeEvent, UpgradeFailure, UpgradePhase, UpgradeProgress, UpgradeRequest, UpgradeTransfer,
    SLICE_LEN,
};
use super::LinkKind;

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Keep-alive only: waiting for the device's 100-byte hello.
    AwaitHello,
    /// Waiting for handshake 458.
    AwaitHandshake,
    /// Handshake accepted.
    Online,
    /// Ended; [`SessionEvent::Offline`] was emitted.
    Closed,
}

/// Why a request could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestRejected {
    /// The link is not online (handshake pending, or closed).
    #[error("device link is not online ({phase:?})")]
    NotOnline {
        /// The session's phase.
        phase: Phase,
    },
    /// Too many requests are outstanding on this link.
    #[error("{limit} requests already outstanding on this device link")]
    TooManyPending {
        /// The limit.
        limit: usize,
    },
    /// A snapshot is already being taken on this link (the platform allows one at a time).
    #[error("a snapshot is already in progress on this device link")]
    SnapshotInProgress,
    /// The command belongs on the other link (wake-up 460 goes on keep-alive).
    #[error("command {command} is not sent on the {link:?} link")]
    WrongLink {
        /// The command.
        command: u32,
        /// This session's link.
        link: LinkKind,
    },
    /// A firmware upgrade is already running on this link (one per device, as the platform).
    #[error("a firmware upgrade is already running on this device link")]
    UpgradeInProgress,
    /// [`DeviceSession::upgrade_data`] without a transfer asking for those bytes.
    #[error("internal: no firmware transfer asked for {len} bytes at offset {offset}")]
    UnexpectedUpgradeData {
        /// Offset given.
        offset: u64,
        /// Length given.
        len: usize,
    },
    /// Internal encoding failure.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Counters of one session, for metrics (the caller adds them up when the session ends, or
/// samples them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Core packets received.
    pub packets: u64,
    /// Heartbeats received.
    pub heartbeats: u32,
    /// Alarms received (and handed to the caller).
    pub alarms: u32,
    /// Alarms answered 400 because too many were unacknowledged, or malformed.
    pub alarms_refused: u32,
    /// Bodies that could not be parsed but did not end the session (heartbeat, report).
    pub bad_bodies: u32,
    /// Replies matching no outstanding request (late replies after a timeout, unknown pushes).
    pub unmatched_replies: u32,
    /// Packets other than handshake and heartbeat received before the handshake.
    pub ignored_before_handshake: u32,
}

/// One device link, sans-IO. Fed bytes (TLS plaintext on signalling, raw socket bytes on
/// keep-alive) with [`DeviceSession::receive`]; tells the caller what happened through
/// [`DeviceSession::poll_event`] and what to write through [`DeviceSession::take_output`].
/// Never reads a clock: every call that needs time takes it.
///
/// `Send`, so that a session can move to its device's owner shard with its connection.
pub struct DeviceSession {
    config: Arc<SessionConfig>,
    link: LinkKind,
    phase: Phase,
    transport: Transport,
    /// Signalling: the certificate's CN, which the handshake must name.
    authenticated_uid: Option<Box<str>>,
    presence: Presence,
    requests: PendingRequests,
    next_request_id: RequestId,
    unacked_alarms: Vec<u32>,
    /// The firmware transfer running on this link, if any.
    upgrade: Option<Box<UpgradeTransfer>>,
    events: VecDeque<SessionEvent>,
    out: BytesMut,
    accepted_at: Instant,
    heartbeat_timeout: Duration,
    stats: SessionStats,
}

impl std::fmt::Debug for DeviceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSession")
            .field("link", &self.link)
            .field("phase", &self.phase)
            .field("uid", &self.uid())
            .field("pending_requests", &self.requests.len())
            .field("output", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl DeviceSession {
    /// A signalling session (61005) on a mutual-TLS connection whose client certificate names
    /// `authenticated_uid` (`pki::peer_uid`). `first_request_id` should be random (the
    /// platform starts at a random id below 100000 and counts up).
    pub fn signalling(
        config: Arc<SessionConfig>,
        authenticated_uid: &str,
        first_request_id: RequestId,
        now: Instant,
    ) -> Self {
        let transport = Transport::tls(config.max_packet_length);
        let mut session = Self::new(
            config,
            LinkKind::Signalling,
            transport,
            first_request_id,
            now,
        );
        session.authenticated_uid = Some(authenticated_uid.into());
        session.phase = Phase::AwaitHandshake;
        session
    }

    /// A keep-alive session (61003, encryptTCP). `device_keys` resolve the hello's access key;
    /// `server_nonce` must be random (32 bytes from the OS generator).
    pub fn keep_alive(
        config: Arc<SessionConfig>,
        device_keys: Arc<DeviceKeys>,
        server_nonce: [u8; NONCE_LEN],
        first_request_id: RequestId,
        now: Instant,
    ) -> Self {
        let transport = Transport::encrypt_tcp(config.max_packet_length, device_keys, server_nonce);
        Self::new(
            config,
            LinkKind::KeepAlive,
            transport,
            first_request_id,
            now,
        )
    }

    fn new(
        config: Arc<SessionConfig>,
        link: LinkKind,
        transport: Transport,
        first_request_id: RequestId,
        now: Instant,
    ) -> Self {
        let heartbeat_timeout = config.heartbeat_timeout;
        Self {
            config,
            link,
            phase: Phase::AwaitHello,
            transport,
            authenticated_uid: None,
            presence: Presence::default(),
            requests: PendingRequests::default(),
            next_request_id: first_request_id,
            unacked_alarms: Vec::new(),
            upgrade: None,
            events: VecDeque::new(),
            out: BytesMut::new(),
            accepted_at: now,
            heartbeat_timeout,
            stats: SessionStats::default(),
        }
    }

    /// Which link this is.
    pub fn link(&self) -> LinkKind {
        self.link
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once the handshake was accepted, until the session ends.
    pub fn is_online(&self) -> bool {
        self.phase == Phase::Online
    }

    /// True once the session ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The device's UID, once its handshake was accepted.
    pub fn uid(&self) -> Option<&str> {
        self.presence.info.as_ref().map(|h| h.uid.as_str())
    }

    /// What this link knows about the device.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Requests waiting for a reply.
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Silence after which the session goes offline (fixed at the handshake: twice the
    /// announced interval for 4G keep-alive devices).
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 {
            // Events are rare (heartbeats make none): an idle session keeps no queue.
            self.events = VecDeque::new();
        }
        event
    }

    /// True when events wait to be polled (the sweep's timeouts of a firmware transfer make
    /// some outside [`DeviceSession::receive`]).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// True when bytes wait to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Everything to write to the connection, in order (after a close too: a refused hello is
    /// answered before the connection closes). Leaves no buffer allocated behind.
    pub fn take_output(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| std::mem::take(&mut self.out).freeze())
    }

    /// Heap bytes this session holds beyond its `size_of` (buffers, strings, cipher state),
    /// for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.transport.heap_bytes()
            + self.out.capacity()
            + self.presence.heap_bytes()
            + self.authenticated_uid.as_ref().map_or(0, |u| u.len())
            + self.unacked_alarms.capacity() * std::mem::size_of::<u32>()
            + self
                .upgrade
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<UpgradeTransfer>())
            + self.requests.len() * std::mem::size_of::<Pending>()
            + self.events.capacity() * std::mem::size_of::<SessionEvent>()
    }

    /// Feeds bytes received from the device: raw socket bytes on keep-alive (hello, then
    /// encryptTCP frames), TLS plaintext on signalling. Split anywhere. After the call, drain
    /// [`DeviceSession::poll_event`], write [`DeviceSession::take_output`], and close the
    /// connection once [`DeviceSession::is_closed`].
    pub fn receive(&mut self, input: &[u8], now: Now) {
        if self.phase == Phase::Closed {
            return;
        }
        let limits = TransportLimits {
            frame_policy: self.config.frame_policy,
        };
        let mut packets = Vec::new();
        let received = self
            .transport
            .receive(input, &limits, &mut self.out, &mut packets);
        if let Ok(Some(_)) = received {
            self.phase = Phase::AwaitHandshake;
        }
        for packet in packets {
            if self.phase == Phase::Closed {
                break;
            }
            self.stats.packets += 1;
            self.on_packet(packet, now);
        }
        if let Err(reason) = received {
            self.close(reason);
        }
    }

    fn on_packet(&mut self, packet: CorePacket, now: Now) {
        match packet.header.command {
            cmd::HANDSHAKE => self.on_handshake(&packet, now),
            cmd::HEARTBEAT => self.on_heartbeat(&packet, now),
            _ if self.phase != Phase::Online => self.stats.ignored_before_handshake += 1,
            cmd::ALARM => self.on_alarm(&packet),
            cmd::NETWORK_INFO_REPORT => self.on_network_info(&packet),
            cmd::SLEEP if !self.requests.contains(packet.header.request_id) => {
                self.on_sleep_announced(&packet)
            }
            _ => self.on_reply(&packet, now.instant),
        }
    }

    fn on_handshake(&mut self, packet: &CorePacket, now: Now) {
        let handshake = match Handshake::parse(&packet.body.to_contiguous()) {
            Ok(handshake) => handshake,
            Err(error) => return self.close(OfflineReason::BadHandshake(error)),
        };
        if pki::validate_uid(&handshake.uid).is_err() {
            let uid = handshake.uid.chars().take(64).collect();
            return self.close(OfflineReason::InvalidUid { uid });
        }
        if let Some(authenticated) = &self.authenticated_uid {
            if **authenticated != *handshake.uid {
                let authenticated = authenticated.to_string();
                return self.close(OfflineReason::UidMismatch {
                    claimed: handshake.uid,
                    authenticated,
                });
            }
        }
        if let Some(bound) = self.transport.uid_hash() {
            if self.config.bind_access_key_to_uid && uid_hash(&handshake.uid).as_bytes() != bound {
                return self.close(OfflineReason::AccessKeyMismatch {
                    claimed: handshake.uid,
                });
            }
        }
        if let Some(current) = self.uid() {
            // A repeated handshake must name the same device; it is answered again.
            if current != handshake.uid {
                return self.close(OfflineReason::UidMismatch {
                    claimed: handshake.uid,
                    authenticated: current.to_owned(),
                });
            }
        }
        let cellular = handshake.network_type.as_deref() == Some("4G");
        let interval = match self.link {
            LinkKind::KeepAlive if cellular => {
                cellular_heartbeat_interval(handshake.carrier.as_deref())
            }
            _ => self.config.heartbeat_interval,
        };
        let reply_header = CoreHeader::response(cmd::HANDSHAKE, packet.header.request_id, CODE_OK);
        let reply_body = match self.link {
            LinkKind::Signalling => String::new(),
            LinkKind::KeepAlive => HandshakeReply {
                heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            }
            .encode(),
        };
        if self.send(reply_header, reply_body.as_bytes()).is_err() {
            return;
        }
        let first = self.phase != Phase::Online;
        self.heartbeat_timeout = match self.link {
            LinkKind::KeepAlive if cellular => interval * 2,
            _ => self.config.heartbeat_timeout,
        };
        self.presence.heartbeat_interval = Some(interval);
        self.presence.last_heartbeat = Some(now.instant);
        self.presence.last_heartbeat_unix_millis = Some(now.unix_millis);
        if first {
            self.presence.online_since_unix_millis = Some(now.unix_millis);
        }
        self.presence.info = Some(handshake.clone());
        self.phase = Phase::Online;
        if !first {
            return;
        }
        self.events.push_back(SessionEvent::Online {
            uid: handshake.uid.clone(),
            link: self.link,
            info: handshake,
        });
        if self.link == LinkKind::Signalling && self.config.request_capabilities {
            let timeout = self.config.request_timeout;
            let kind = ReplyKind::Capabilities { internal: true };
            // Cannot fail: online, nothing outstanding, a 24-byte packet.
            let _ = self.start(cmd::CAPABILITIES, None, kind, timeout, now.instant);
        }
    }

    fn on_heartbeat(&mut self, packet: &CorePacket, now: Now) {
        self.stats.heartbeats += 1;
        let body = packet.body.to_contiguous();
        let heartbeat = if body.iter().all(|&b| b == 0) {
            Heartbeat::default()
        } else {
            Heartbeat::parse(&body).unwrap_or_else(|_| {
                self.stats.bad_bodies += 1;
                Heartbeat::default()
            })
        };
        self.presence.last_heartbeat = Some(now.instant);
        self.presence.last_heartbeat_unix_millis = Some(now.unix_millis);
        if let Some(battery) = heartbeat.battery {
            self.presence.battery = Some(battery);
        }
        if !heartbeat.no_reply {
            let reply = HeartbeatReply::from_unix_millis(now.unix_millis).encode();
            let header = CoreHeader::response(cmd::HEARTBEAT, packet.header.request_id, CODE_OK);
            let _ = self.send(header, reply.as_bytes());
        }
    }

    fn on_alarm(&mut self, packet: &CorePacket) {
        let request_id = packet.header.request_id;
        let alarm = match Alarm::parse(&packet.body.to_contiguous()) {
            Ok(alarm) => alarm,
            Err(_) => {
                self.stats.bad_bodies += 1;
                self.stats.alarms_refused += 1;
                return self.answer_alarm(request_id, CODE_ERROR);
            }
        };
        if self.unacked_alarms.len() >= self.config.max_unacked_alarms {
            self.stats.alarms_refused += 1;
            return self.answer_alarm(request_id, CODE_ERROR);
        }
        self.stats.alarms += 1;
        self.unacked_alarms.push(request_id);
        self.events
            .push_back(SessionEvent::AlarmReceived { request_id, alarm });
    }

    fn on_network_info(&mut self, packet: &CorePacket) {
        match XmlBody::parse(&packet.body.to_contiguous()) {
            Ok(body) => {
                if let Some(kind) = body.text_at(&["Param020", "attr001"]) {
                    self.presence.network_link = Some(kind.chars().take(32).collect());
                }
            }
            Err(_) => self.stats.bad_bodies += 1,
        }
    }

    /// A battery device says it goes to sleep (233 from the device, not a reply to ours): it
    /// must be woken with 460 on its keep-alive link before the next preview. Answered 200.
    fn on_sleep_announced(&mut self, packet: &CorePacket) {
        self.presence.asleep = true;
        let header = CoreHeader::response(cmd::SLEEP, packet.header.request_id, CODE_OK);
        let _ = self.send(header, &[]);
    }

    /// The device was woken (its wake-up 460 was answered): clears the sleep it announced.
    pub fn mark_awake(&mut self) {
        self.presence.asleep = false;
    }

    fn on_reply(&mut self, packet: &CorePacket, now: Instant) {
        let step = self
            .requests
            .on_reply(packet, self.config.max_snapshot_bytes);
        match step {
            None => self.stats.unmatched_replies += 1,
            Some(ReplyStep::Continue) => {}
            Some(ReplyStep::Done(pending, _)) if pending.kind.is_upgrade() => {
                let result = match packet.header.response_code {
                    CODE_OK => Ok(()),
                    code => Err(RequestError::Refused {
                        command: pending.command,
                        code,
                    }),
                };
                self.on_upgrade_reply(pending.kind, result, now);
            }
            Some(ReplyStep::Done(pending, result)) => self.complete(pending, result),
        }
    }

    fn complete(&mut self, pending: Pending, result: Result<Reply, RequestError>) {
        if let Ok(Reply::Capabilities(capabilities)) = &result {
            self.presence.capabilities = Some(capabilities.clone());
            self.events
                .push_back(SessionEvent::Capabilities(capabilities.clone()));
        }
        if pending.kind == ReplyKind::Sleep && result.is_ok() {
            self.presence.asleep = true;
        }
        if pending.kind == (ReplyKind::Capabilities { internal: true }) {
            return;
        }
        self.events
            .push_back(SessionEvent::RequestDone(RequestOutcome {
                request_id: pending.id,
                command: pending.command,
                result,
            }));
    }

    /// Acknowledges alarm `request_id` (after it was persisted): queues the 200 reply. False
    /// when no such alarm waits (already answered, or the session closed).
    pub fn ack_alarm(&mut self, request_id: u32) -> bool {
        self.finish_alarm(request_id, CODE_OK)
    }

    /// Answers alarm `request_id` with 400 (it could not be stored; the device may retry).
    pub fn reject_alarm(&mut self, request_id: u32) -> bool {
        self.finish_alarm(request_id, CODE_ERROR)
    }

    fn finish_alarm(&mut self, request_id: u32, code: u32) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        let Some(index) = self.unacked_alarms.iter().position(|&id| id == request_id) else {
            return false;
        };
        self.unacked_alarms.swap_remove(index);
        self.answer_alarm(request_id, code);
        true
    }

    fn answer_alarm(&mut self, request_id: u32, code: u32) {
        let _ = self.send(CoreHeader::response(cmd::ALARM, request_id, code), &[]);
    }

    fn send(&mut self, header: CoreHeader, body: &[u8]) -> Result<(), SendError> {
        self.transport.send(header, body, &mut self.out)
    }

    /// Sends request `command` with an XML body (or none) and the default timeout; the reply
    /// arrives as [`SessionEvent::RequestDone`] with [`Reply::Xml`] or [`Reply::Empty`].
    /// For PTZ 18, general config 104/105, Wi-Fi 116/117/200, PIR 212/213, upgrade 67, records
    /// 13/142/459, replay 5/7/123 and anything else without a typed helper.
    pub fn request(
        &mut self,
        command: u32,
        body: Option<&XmlBody>,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let timeout = self.config.request_timeout;
        self.request_with_timeout(command, body, timeout, now)
    }

    /// [`DeviceSession::request`] with its own timeout (firmware upgrades take longer).
    pub fn request_with_timeout(
        &mut self,
        command: u32,
        body: Option<&XmlBody>,
        timeout: Duration,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = body.map(XmlBody::encode);
        self.start(command, body.as_deref(), ReplyKind::Xml, timeout, now)
    }

    /// Preview start 3. The stream id is the request id, returned; the device's media packets
    /// on 61006/61007 carry it. Reply: [`Reply::PreviewStarted`] (fps, codec).
    pub fn preview_start(
        &mut self,
        channel: u32,
        stream_type: StreamType,
        mode: StreamMode,
        port: u16,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let stream_id = self.peek_request_id();
        let body = PreviewStart {
            channel,
            stream_id,
            stream_type,
            mode,
            port,
        }
        .encode();
        let timeout = self.config.request_timeout;
        self.start(
            cmd::PREVIEW_START,
            Some(&body),
            ReplyKind::PreviewStart,
            timeout,
            now,
        )
    }

    /// Preview stop 4 of the preview whose stream id is `stream_id`.
    pub fn preview_stop(
        &mut self,
        channel: u32,
        stream_id: u32,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = PreviewStop { channel, stream_id }.encode();
        self.typed(cmd::PREVIEW_STOP, Some(&body), ReplyKind::Xml, now)
    }

    /// Replay start 5 of the recording `file`. The stream id is the request id, returned; the
    /// device's media packets on 61006/61007 carry it. Reply: [`Reply::PreviewStarted`].
    pub fn replay_start(
        &mut self,
        channel: u32,
        file: &str,
        mode: StreamMode,
        port: u16,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let stream_id = self.peek_request_id();
        let body = ReplayStart {
            channel,
            file: file.to_owned(),
            stream_id,
            mode,
            port,
        }
        .encode();
        let timeout = self.config.request_timeout;
        self.start(
            cmd::REPLAY_START,
            Some(&body),
            ReplyKind::PreviewStart,
            timeout,
            now,
        )
    }

    /// Replay stop 7 of the replay of `file` whose stream id is `stream_id`.
    pub fn replay_stop(
        &mut self,
        channel: u32,
        file: &str,
        stream_id: u32,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = RecordFile {
            channel,
            file: file.to_owned(),
            stream_id: Some(stream_id),
        }
        .encode();
        self.typed(cmd::REPLAY_STOP, Some(&body), ReplyKind::Xml, now)
    }

    /// Replay seek 123: the replay whose stream id is `stream_id` continues at the device-local
    /// `time`, its media packets carrying `seek_seq` from then on (the caller keeps the
    /// sequence: 0 at replay start, then 1024 more per seek, as the platform does).
    pub fn replay_seek(
        &mut self,
        channel: u32,
        stream_id: u32,
        seek_seq: u32,
        time: LocalTime,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = ReplaySeek {
            channel,
            stream_id,
            seek_seq,
            time,
        }
        .encode();
        self.typed(cmd::REPLAY_SEEK, Some(&body), ReplyKind::Xml, now)
    }

    /// Keyframe request 189.
    pub fn request_keyframe(
        &mut self,
        channel: u32,
        stream_type: StreamType,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = KeyframeRequest {
            channel,
            stream_type,
        }
        .encode();
        self.typed(cmd::KEYFRAME_REQUEST, Some(&body), ReplyKind::Xml, now)
    }

    /// Alarm switch get 461. Reply: [`Reply::AlarmSwitch`].
    pub fn alarm_switch_get(&mut self, now: Instant) -> Result<RequestId, RequestRejected> {
        self.typed(cmd::ALARM_SWITCH_GET, None, ReplyKind::AlarmSwitch, now)
    }

    /// Alarm switch set 462.
    pub fn alarm_switch_set(
        &mut self,
        enabled: bool,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = AlarmSwitch { enabled }.encode();
        self.typed(cmd::ALARM_SWITCH_SET, Some(&body), ReplyKind::Xml, now)
    }

    /// Snapshot 109. Reply: [`Reply::Snapshot`] once the chunk with code 201 arrived.
    pub fn snapshot(
        &mut self,
        channel: u32,
        stream_type: StreamType,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        if self.requests.has_snapshot() {
            return Err(RequestRejected::SnapshotInProgress);
        }
        let body = SnapshotRequest {
            channel,
            stream_type,
        }
        .encode();
        self.typed(cmd::SNAPSHOT, Some(&body), ReplyKind::Snapshot, now)
    }

    /// Capabilities 199 (sent by the session itself after the signalling handshake; this asks
    /// again). Reply: [`Reply::Capabilities`]; the presence is updated too.
    pub fn capabilities(&mut self, now: Instant) -> Result<RequestId, RequestRejected> {
        let kind = ReplyKind::Capabilities { internal: false };
        self.typed(cmd::CAPABILITIES, None, kind, now)
    }

    /// Sleep 233 for a battery device (the platform sends it on the signalling link when the
    /// device has been idle). The device may close the link instead of answering: a close
    /// completes this request with [`Reply::Empty`].
    pub fn sleep(&mut self, now: Instant) -> Result<RequestId, RequestRejected> {
        self.typed(cmd::SLEEP, None, ReplyKind::Sleep, now)
    }

    /// Wake-up 460, keep-alive link only: the device then connects its signalling link.
    pub fn wake_up(&mut self, now: Instant) -> Result<RequestId, RequestRejected> {
        if self.link != LinkKind::KeepAlive {
            return Err(RequestRejected::WrongLink {
                command: cmd::WAKE_UP,
                link: self.link,
            });
        }
        self.typed(cmd::WAKE_UP, None, ReplyKind::Xml, now)
    }

    fn typed(
        &mut self,
        command: u32,
        body: Option<&str>,
        kind: ReplyKind,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let timeout = self.config.request_timeout;
        self.start(command, body, kind, timeout, now)
    }

    /// The id the next request will get (ids in use are skipped).
    fn peek_request_id(&self) -> RequestId {
        let mut id = self.next_request_id;
        while self.requests.contains(id) {
            id = id.wrapping_add(1);
        }
        id
    }

    fn start(
        &mut self,
        command: u32,
        body: Option<&str>,
        kind: ReplyKind,
        timeout: Duration,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        let body = body.unwrap_or_default().as_bytes();
        self.start_packet(command, &[], body, kind, timeout, now)
    }

    /// Sends a request packet (with an extension block for firmware slices) and records it.
    /// A firmware transfer's requests are bounded by its window, not the link's limit.
    fn start_packet(
        &mut self,
        command: u32,
        extension: &[u8],
        body: &[u8],
        kind: ReplyKind,
        timeout: Duration,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        if self.phase != Phase::Online {
            return Err(RequestRejected::NotOnline { phase: self.phase });
        }
        let limit = self.config.max_pending_requests;
        if !kind.is_upgrade() && self.requests.regular_len() >= limit {
            return Err(RequestRejected::TooManyPending { limit });
        }
        let id = self.peek_request_id();
        // The platform's requests carry response code 200.
        let header = CoreHeader {
            response_code: CODE_OK,
            ..CoreHeader::request(command, id)
        };
        self.transport
            .send_with_extension(header, extension, body, &mut self.out)?;
        self.next_request_id = id.wrapping_add(1);
        self.requests.push(Pending {
            id,
            command,
            kind,
            deadline: now + timeout,
            timeout,
            chunks: None,
        });
        Ok(id)
    }

    /// Starts a firmware upgrade 67 on this signalling link: the start request (`Param012`)
    /// goes now; once the device answers it 200, the session asks for the file's bytes with
    /// [`UpgradeEvent::Read`] events, sends them as slices, then sleep 233. The outcome is an
    /// [`UpgradeEvent::Sent`] or [`UpgradeEvent::Failed`] event. One transfer per link.
    pub fn upgrade_start(
        &mut self,
        request: &UpgradeRequest,
        now: Instant,
    ) -> Result<RequestId, RequestRejected> {
        if self.link != LinkKind::Signalling {
            return Err(RequestRejected::WrongLink {
                command: cmd::UPGRADE,
                link: self.link,
            });
        }
        if self.upgrade.is_some() {
            return Err(RequestRejected::UpgradeInProgress);
        }
        let body = UpgradeStart {
            file_name: request.file_name.clone(),
            file_size: request.file_size,
            factory_reset: request.factory_reset,
        }
        .encode();
        let timeout = self.config.request_timeout;
        let id = self.start_packet(
            cmd::UPGRADE,
            &[],
            body.as_bytes(),
            ReplyKind::UpgradeStart,
            timeout,
            now,
        )?;
        let slice_timeout = self.config.upgrade_slice_timeout;
        self.upgrade = Some(Box::new(UpgradeTransfer::new(
            request.file_size,
            slice_timeout,
        )));
        Ok(id)
    }

    /// The file's bytes asked for by the last [`UpgradeEvent::Read`] (same offset and
    /// length): sent as slices of 36 KiB, each a command-67 request with the binary-data
    /// extension and its own timeout.
    pub fn upgrade_data(
        &mut self,
        offset: u64,
        data: &[u8],
        now: Instant,
    ) -> Result<(), RequestRejected> {
        let expected = self.upgrade.as_ref().and_then(|t| t.reading);
        if expected != Some((offset, data.len())) {
            return Err(RequestRejected::UnexpectedUpgradeData {
                offset,
                len: data.len(),
            });
        }
        let extension = PacketExtension::BINARY_DATA.encode();
        let mut slice_timeout = Duration::ZERO;
        if let Some(transfer) = self.upgrade.as_mut() {
            transfer.reading = None;
            slice_timeout = transfer.slice_timeout;
        }
        for slice in data.chunks(SLICE_LEN) {
            let sent = self.start_packet(
                cmd::UPGRADE,
                extension.as_bytes(),
                slice,
                ReplyKind::UpgradeSlice,
                slice_timeout,
                now,
            );
            if let Err(error) = sent {
                self.fail_upgrade(UpgradeFailure::Cancelled(error.to_string()));
                return Err(error);
            }
            if let Some(transfer) = self.upgrade.as_mut() {
                transfer.in_flight += 1;
            }
        }
        self.upgrade_pump(now);
        Ok(())
    }

    /// Stops the firmware transfer from our side (the file could not be read): an
    /// [`UpgradeEvent::Failed`] event follows. False when no transfer runs.
    pub fn upgrade_cancel(&mut self, reason: &str) -> bool {
        if self.upgrade.is_none() {
            return false;
        }
        self.fail_upgrade(UpgradeFailure::Cancelled(reason.to_owned()));
        true
    }

    /// Where the firmware transfer of this link is, if one runs.
    pub fn upgrade_progress(&self) -> Option<UpgradeProgress> {
        self.upgrade.as_ref().map(|t| t.progress())
    }

    /// A reply (or a timeout) of a transfer's request.
    fn on_upgrade_reply(
        &mut self,
        kind: ReplyKind,
        result: Result<(), RequestError>,
        now: Instant,
    ) {
        let Some(transfer) = self.upgrade.as_mut() else {
            // The transfer already stopped; its other requests were dropped with it.
            return;
        };
        let what = match kind {
            ReplyKind::UpgradeStart => "the upgrade start",
            ReplyKind::UpgradeSlice => "a firmware slice",
            _ => "the sleep request",
        };
        if let Err(error) = result {
            let failure = match error {
                RequestError::Refused { code, .. } => UpgradeFailure::Refused { what, code },
                RequestError::TimedOut { after, .. } => UpgradeFailure::TimedOut { what, after },
                RequestError::LinkClosed { .. } => UpgradeFailure::LinkClosed,
                other => UpgradeFailure::Cancelled(other.to_string()),
            };
            return self.fail_upgrade(failure);
        }
        match kind {
            ReplyKind::UpgradeStart => transfer.phase = UpgradePhase::Sending,
            ReplyKind::UpgradeSlice => {
                transfer.in_flight = transfer.in_flight.saturating_sub(1);
                transfer.acknowledged_slices += 1;
            }
            _ => {
                self.upgrade = None;
                self.requests.drop_upgrade();
                self.events
                    .push_back(SessionEvent::Upgrade(UpgradeEvent::Sent));
                return;
            }
        }
        self.upgrade_pump(now);
    }

    /// Asks for the next bytes when the window has room, or sends the sleep request once the
    /// whole file was answered.
    fn upgrade_pump(&mut self, now: Instant) {
        let Some(transfer) = self.upgrade.as_mut() else {
            return;
        };
        if let Some((offset, len)) = transfer.next_read() {
            self.events
                .push_back(SessionEvent::Upgrade(UpgradeEvent::Read { offset, len }));
            return;
        }
        if !transfer.all_answered() {
            return;
        }
        transfer.phase = UpgradePhase::Sleeping;
        let timeout = self.config.request_timeout;
        let sent = self.start_packet(cmd::SLEEP, &[], &[], ReplyKind::UpgradeSleep, timeout, now);
        if let Err(error) = sent {
            self.fail_upgrade(UpgradeFailure::Cancelled(error.to_string()));
        }
    }

    fn fail_upgrade(&mut self, failure: UpgradeFailure) {
        self.upgrade = None;
        self.requests.drop_upgrade();
        self.events
            .push_back(SessionEvent::Upgrade(UpgradeEvent::Failed(failure)));
    }

    /// Removes and returns the requests whose deadline passed (as failures with
    /// [`RequestError::TimedOut`]). The per-shard sweeper calls it.
    ///
    /// A firmware transfer's request that timed out fails the transfer instead
    /// ([`SessionEvent::Upgrade`] with [`UpgradeEvent::Failed`]: poll the events after a
    /// sweep when [`DeviceSession::has_events`]).
    pub fn expire(&mut self, now: Instant) -> Vec<RequestOutcome> {
        let mut outcomes = Vec::new();
        for pending in self.requests.take_expired(now) {
            let error = RequestError::TimedOut {
                command: pending.command,
                after: pending.timeout,
            };
            match pending.kind {
                ReplyKind::Capabilities { internal: true } => {}
                kind if kind.is_upgrade() => self.on_upgrade_reply(kind, Err(error), now),
                _ => outcomes.push(RequestOutcome {
                    request_id: pending.id,
                    command: pending.command,
                    result: Err(error),
                }),
            }
        }
        outcomes
    }

    /// Closes the session if the device has been silent too long (no handshake within the
    /// handshake timeout; no heartbeat within the heartbeat timeout). True when it closed now.
    pub fn check_liveness(&mut self, now: Instant) -> bool {
        let reason = match self.phase {
            Phase::Closed => return false,
            Phase::AwaitHello | Phase::AwaitHandshake => {
                let waited = now.saturating_duration_since(self.accepted_at);
                if waited <= self.config.handshake_timeout {
                    return false;
                }
                OfflineReason::HandshakeTimeout(self.config.handshake_timeout)
            }
            Phase::Online => {
                let last = self.presence.last_heartbeat.unwrap_or(self.accepted_at);
                let silence = now.saturating_duration_since(last);
                if silence <= self.heartbeat_timeout {
                    return false;
                }
                OfflineReason::HeartbeatTimeout(silence)
            }
        };
        self.close(reason);
        true
    }

    /// The next instant at which [`DeviceSession::check_liveness`] or
    /// [`DeviceSession::expire`] may have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let liveness = match self.phase {
            Phase::Closed => return None,
            Phase::AwaitHello | Phase::AwaitHandshake => {
                self.accepted_at + self.config.handshake_timeout
            }
            Phase::Online => {
                self.presence.last_heartbeat.unwrap_or(self.accepted_at) + self.heartbeat_timeout
            }
        };
        Some(match self.requests.earliest_deadline() {
            Some(request) => request.min(liveness),
            None => liveness,
        })
    }

    /// The connection closed or failed: ends the session ([`OfflineReason::ConnectionClosed`]).
    pub fn on_connection_closed(&mut self) {
        self.close(OfflineReason::ConnectionClosed);
    }

    /// Ends the session: outstanding requests complete (sleep with success, others with
    /// [`RequestError::LinkClosed`]), then [`SessionEvent::Offline`]. Idempotent.
    pub fn close(&mut self, reason: OfflineReason) {
        if self.phase == Phase::Closed {
            return;
        }
        let was_online = self.phase == Phase::Online;
        self.phase = Phase::Closed;
        if let Some(transfer) = self.upgrade.take() {
            self.requests.drop_upgrade();
            // The platform counts a link that closes after the sleep request as the device
            // going to install: the sleep is done.
            let event = match transfer.phase {
                UpgradePhase::Sleeping => UpgradeEvent::Sent,
                _ => UpgradeEvent::Failed(UpgradeFailure::LinkClosed),
            };
            self.events.push_back(SessionEvent::Upgrade(event));
        }
        for pending in self.requests.take_all() {
            let result = match pending.kind {
                ReplyKind::Sleep => Ok(Reply::Empty),
                _ => Err(RequestError::LinkClosed {
                    command: pending.command,
                }),
            };
            self.complete(pending, result);
        }
        self.unacked_alarms = Vec::new();
        self.events
            .push_back(SessionEvent::Offline { reason, was_online });
    }
}
