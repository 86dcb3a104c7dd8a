//! Device links on the shards: keep-alive (61003, encryptTCP) and signalling (61005, mutual
//! TLS). Every shard accepts on both ports (SO_REUSEPORT); a connection is served by its
//! device's owner shard ([`signal::session::shard_of_uid`]), where the device's sessions, its
//! streams and their viewers live, so a request from the stream hub or the client API never
//! crosses a core once it reached the owner.
//!
//! ```text
//!  any shard                                 owner shard
//!  accept 61005 -> TLS handshake -> CN --handoff (fd + TLS session)--> admit -> read loop
//!  accept 61003 -> read 100-byte hello -> access key's UID hash --handoff (fd + hello)--^
//!                                                                          |  ^ wake
//!  control plane --xchan DeviceCommand--> command task: presence, list, close, calls
//!  sweeper (1 s): handshake and heartbeat deadlines, request timeouts
//! ```
//!
//! The sessions are the sans-IO state machines of [`signal::session`]; this module only moves
//! bytes, time and requests to them:
//! - [`DeviceShard`] holds the shard's [`DeviceRegistry`], a wake-up handle per connection, and
//!   the control plane's requests waiting for a device's reply.
//! - [`conn`] accepts, routes and runs one task per connection: it is the only writer of its
//!   socket, and anything else that queued output for the device (a request from the client
//!   API, an eviction) wakes it.
//! - [`control`] answers the control plane's [`DeviceCommand`]s.

mod conn;
mod control;
mod upgrade;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rt::xchan::{OneshotSender, Receiver};
use rt::{MeshPort, Shutdown};
use signal::devices::{DeviceCommand, DeviceError, LinkStats};
use signal::session::{
    ConnId, DeviceRegistry, DeviceSession, Evicted, LinkKind, Now, OfflineReason, Reply, RequestId,
    SessionConfig, SessionEvent,
};
use tracing::{debug, info, warn};

use crate::hub::LocalNotify;
use crate::shard::ShardMsg;

pub use conn::{spawn_listeners, DeviceHandoff};

/// Tells whether a device may hold links (not revoked, still known). Called on the owner shard
/// when a keep-alive link comes online (signalling links are checked by the CRL in TLS).
pub type RevocationCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Tells whether a UID is a device of this deployment (provisioned in the store), for a viewer
/// of a device with no link online: 503 "Device Offline" at once instead of waiting for an RTSP
/// publisher.
pub type KnownCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What the stream side reports of a device's streams, for its presence (set by
/// [`crate::stream_conn::StreamShard`] on the same shard).
pub trait DeviceStreams {
    /// The previews of `uid` on this shard.
    fn streams_of(&self, uid: &str) -> Vec<signal::devices::StreamPresence>;
    /// Ends every preview of `uid` and closes its stream connections (revocation); returns
    /// how many there were.
    fn close_streams_of(&self, uid: &str) -> usize;
}

/// How a preview of a device can start now ([`DeviceShard::preview_route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewRoute {
    /// The signalling link is up and the device awake: preview start can go now.
    Ready,
    /// A battery device asleep (keep-alive link only, or it announced sleep 233): wake it with
    /// 460 on the keep-alive link first.
    Asleep,
    /// A device of this deployment with no link that can carry a preview.
    Offline,
    /// Not a device known here (an RTSP publisher may feed the stream).
    NotADevice,
}

/// Everything the shards need to serve device links; cloned into every shard.
#[derive(Clone)]
pub struct DeviceSettings {
    /// Keep-alive listen address (61003).
    pub keepalive: SocketAddr,
    /// Signalling listen address (61005).
    pub signalling: SocketAddr,
    /// Limits and timeouts of sessions.
    pub session: Arc<SessionConfig>,
    /// Device keys that resolve access keys in keep-alive hellos.
    pub device_keys: signal::secrets::DeviceKeyRing,
    /// Mutual-TLS configuration of the signalling port (CRL-checking verifier).
    pub mtls: Arc<rustls::ServerConfig>,
    /// True when the device is revoked or unknown: its keep-alive link is closed at once.
    pub is_revoked: Option<RevocationCheck>,
    /// True when the UID is a provisioned device. `None`: only devices with a link online are
    /// known to be devices.
    pub is_known: Option<KnownCheck>,
    /// How often the sweeper runs (deadlines are checked at this granularity).
    pub sweep_interval: Duration,
    /// The durable alarm queue: every alarm is committed there before the device gets its
    /// 200. `None`: alarms are counted and acknowledged at once.
    pub alarms: Option<signal::alarms::AlarmQueue>,
}

impl std::fmt::Debug for DeviceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSettings")
            .field("keepalive", &self.keepalive)
            .field("signalling", &self.signalling)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl DeviceSettings {
    /// Session limits from the server's configuration: the heartbeat timeout, handshake and
    /// request timeouts of `[device]`, the heartbeat interval of `[provisioning]` (halved
    /// into the timeout when the timeout is shorter, so that short test timeouts stay valid).
    pub fn session_config(config: &signal::config::Config) -> SessionConfig {
        let timeout = Duration::from_secs(config.device.heartbeat_timeout_secs);
        let mut interval =
            Duration::from_secs(u64::from(config.provisioning.heartbeat_interval_secs));
        if interval >= timeout {
            interval = timeout / 2;
        }
        SessionConfig {
            heartbeat_interval: interval,
            heartbeat_timeout: timeout,
            handshake_timeout: Duration::from_secs(config.device.handshake_timeout_secs),
            request_timeout: Duration::from_secs(config.device.request_timeout_secs),
            upgrade_slice_timeout: Duration::from_secs(config.upgrade.slice_timeout_secs),
            ..SessionConfig::default()
        }
    }
}

/// What a shard receives from other shards about device links.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceMsg {
    /// From shard 0: the addresses it bound; bind the same (SO_REUSEPORT) and accept.
    Listen {
        /// Keep-alive port.
        keepalive: SocketAddr,
        /// Signalling port.
        signalling: SocketAddr,
    },
    /// Connections of devices this shard owns.
    Connections(Vec<DeviceHandoff>),
}

/// Where the control plane's request waits for the device's reply.
type ReplySender = OneshotSender<Result<Reply, DeviceError>>;
/// Where the reply to a request sent to a device arrives.
pub type ReplyReceiver = rt::xchan::OneshotReceiver<Result<Reply, DeviceError>>;

/// Where a shard reports its bound (keep-alive, signalling) addresses, or why it could not bind.
pub type ReadySender = std::sync::mpsc::Sender<Result<(SocketAddr, SocketAddr), String>>;

/// The wake-up handle of one connection task.
#[derive(Default)]
struct ConnSignal {
    /// Raised when the task should write output or close.
    notify: LocalNotify,
    /// The session left the registry (replaced, revoked, timed out): its last output, written
    /// before the connection closes.
    evicted: RefCell<Option<Option<bytes::Bytes>>>,
}

/// The device links of one shard. Lives in an `Rc` on its shard.
pub struct DeviceShard {
    /// This shard's index.
    pub id: usize,
    /// Number of shards.
    pub count: usize,
    settings: DeviceSettings,
    shutdown: Shutdown,
    registry: RefCell<DeviceRegistry>,
    conns: RefCell<HashMap<ConnId, Rc<ConnSignal>>>,
    /// Control-plane requests waiting for the device's reply.
    waiters: RefCell<HashMap<(ConnId, RequestId), ReplySender>>,
    /// Connections waiting to be sent to each shard, flushed together.
    outbox: RefCell<Vec<Vec<DeviceHandoff>>>,
    outbox_notify: LocalNotify,
    stats: RefCell<LinkStats>,
    next_request_seed: Cell<u32>,
    /// Alarms waiting for the next group commit: connection, alarm request id, event.
    alarm_batch: RefCell<Vec<(ConnId, u32, signal::alarms::AlarmEvent)>>,
    alarm_notify: LocalNotify,
    /// Where a shard other than 0 reports its listeners once shard 0 told it the ports.
    ready: RefCell<Option<ReadySender>>,
    /// Previews waiting for a woken device's signalling link, by UID; an entry whose only
    /// holder is this map is stale (its viewer gave up).
    awake_waiters: RefCell<HashMap<String, Vec<Rc<LocalNotify>>>>,
    /// The stream side of the shard, for the streams in a device's presence.
    streams: RefCell<Option<std::rc::Weak<dyn DeviceStreams>>>,
    /// The shard's streams, whose counters travel with the link counters to `/metrics`
    /// (weak: the stream side holds this shard).
    data_plane: RefCell<std::rc::Weak<crate::shard::Shard>>,
    /// Firmware transfers running, by signalling connection.
    transfers: RefCell<HashMap<ConnId, upgrade::Transfer>>,
    /// Upgrades whose device took the file, by UID: waiting for it to come back.
    reboot_watches: RefCell<HashMap<String, upgrade::RebootWatch>>,
}

impl std::fmt::Debug for DeviceShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceShard")
            .field("id", &self.id)
            .field("sessions", &self.registry.borrow().len())
            .finish_non_exhaustive()
    }
}

/// Both clocks now.
fn now() -> Now {
    Now::new(Instant::now(), SystemTime::now())
}

impl DeviceShard {
    /// The device links of shard `id` of `count`.
    pub fn new(id: usize, count: usize, settings: DeviceSettings, shutdown: Shutdown) -> Self {
        DeviceShard {
            id,
            count,
            settings,
            shutdown,
            registry: RefCell::new(DeviceRegistry::new()),
            conns: RefCell::new(HashMap::new()),
            waiters: RefCell::new(HashMap::new()),
            outbox: RefCell::new((0..count).map(|_| Vec::new()).collect()),
            outbox_notify: LocalNotify::new(),
            stats: RefCell::new(LinkStats::default()),
            next_request_seed: Cell::new(rand::random::<u32>() % 100_000),
            ready: RefCell::new(None),
            alarm_batch: RefCell::new(Vec::new()),
            alarm_notify: LocalNotify::new(),
            awake_waiters: RefCell::new(HashMap::new()),
            streams: RefCell::new(None),
            data_plane: RefCell::new(std::rc::Weak::new()),
            transfers: RefCell::new(HashMap::new()),
            reboot_watches: RefCell::new(HashMap::new()),
        }
    }

    /// Sets who reports the device streams of this shard (weak: the stream side holds this).
    pub fn set_streams(&self, streams: &Rc<dyn DeviceStreams>) {
        *self.streams.borrow_mut() = Some(Rc::downgrade(streams));
    }

    /// The previews of `uid` on this shard.
    fn streams_of(&self, uid: &str) -> Vec<signal::devices::StreamPresence> {
        let streams = self
            .streams
            .borrow()
            .as_ref()
            .and_then(std::rc::Weak::upgrade);
        streams.map(|s| s.streams_of(uid)).unwrap_or_default()
    }

    /// Sets the shard whose media counters the answer to [`DeviceCommand::Stats`] carries.
    pub fn set_data_plane(&self, shard: &Rc<crate::shard::Shard>) {
        *self.data_plane.borrow_mut() = Rc::downgrade(shard);
    }

    /// Closes the stream connections of `uid` on this shard; returns how many.
    fn close_streams_of(&self, uid: &str) -> usize {
        let streams = self
            .streams
            .borrow()
            .as_ref()
            .and_then(std::rc::Weak::upgrade);
        streams.map_or(0, |s| s.close_streams_of(uid))
    }

    /// Starts the shard's device side: the sweeper, the handoff flusher, the control plane's
    /// command task, and (on shard 0) the listeners, whose addresses go to the other shards
    /// and to `ready`. Returns the shard's state; the tasks stop with the shard's shutdown.
    pub fn start(
        self: &Rc<Self>,
        port: Rc<MeshPort<ShardMsg>>,
        commands: Option<Receiver<DeviceCommand>>,
        ready: ReadySender,
    ) {
        let sweeper = {
            let shard = Rc::downgrade(self);
            rt::Sweeper::every(self.settings.sweep_interval, move |now| {
                if let Some(shard) = shard.upgrade() {
                    shard.sweep(now);
                }
            })
        };
        let shutdown = self.shutdown.clone();
        rt::spawn_detached(async move {
            shutdown.wait().await;
            sweeper.stop();
        });
        rt::spawn_detached(conn::flush_handoffs(self.clone(), port.clone()));
        if let Some(queue) = self.settings.alarms.clone() {
            rt::spawn_detached(persist_alarms(self.clone(), queue));
        }
        if let Some(commands) = commands {
            rt::spawn_detached(control::serve_commands(self.clone(), commands));
        }
        if self.id == 0 {
            let shard = self.clone();
            rt::spawn_detached(async move {
                let (keepalive, signalling) = (shard.settings.keepalive, shard.settings.signalling);
                match conn::spawn_listeners(&shard, keepalive, signalling) {
                    Ok((keepalive, signalling)) => {
                        for to in 1..shard.count {
                            let msg = ShardMsg::Device(DeviceMsg::Listen {
                                keepalive,
                                signalling,
                            });
                            if let Err(e) = port.send_to(to, msg).await {
                                warn!("shard 0 could not tell shard {to} the device ports: {e}");
                            }
                        }
                        info!(%keepalive, %signalling, "device links listening");
                        let _ = ready.send(Ok((keepalive, signalling)));
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        shard.shutdown.trigger();
                    }
                }
            });
        } else {
            *self.ready.borrow_mut() = Some(ready);
        }
    }

    /// Handles a message from another shard.
    pub fn on_message(self: &Rc<Self>, from: usize, msg: DeviceMsg) {
        match msg {
            DeviceMsg::Listen {
                keepalive,
                signalling,
            } => {
                let result = conn::spawn_listeners(self, keepalive, signalling);
                if let Some(ready) = self.ready.borrow_mut().take() {
                    let _ = ready.send(result.map_err(|e| format!("shard {}: {e}", self.id)));
                }
            }
            DeviceMsg::Connections(handoffs) => {
                for handoff in handoffs {
                    self.count(|s| s.received += 1);
                    debug!(shard = self.id, from, peer = %handoff.handoff.peer, "device connection received");
                    conn::serve_handoff(self.clone(), handoff);
                }
            }
        }
    }

    /// The shard's counters.
    pub fn stats(&self) -> LinkStats {
        let mut stats = self.stats.borrow().clone();
        let registry = self.registry.borrow();
        stats.sessions = registry.len() as u64;
        stats.online_devices = registry.online_devices() as u64;
        if let Some(shard) = self.data_plane.borrow().upgrade() {
            stats.media = shard.media_stats();
        }
        stats
    }

    /// Number of sessions on this shard (every phase) and of devices online.
    pub fn session_counts(&self) -> (usize, usize) {
        let registry = self.registry.borrow();
        (registry.len(), registry.online_devices())
    }

    fn count(&self, update: impl FnOnce(&mut LinkStats)) {
        update(&mut self.stats.borrow_mut());
    }

    fn count_offline(&self, reason: &OfflineReason) {
        *self
            .stats
            .borrow_mut()
            .closed
            .entry(reason.label())
            .or_default() += 1;
    }

    fn first_request_id(&self) -> RequestId {
        // The platform starts at a random id below 100000; spread our sessions over that range.
        let seed = self.next_request_seed.get();
        self.next_request_seed.set((seed + 7919) % 100_000);
        seed
    }

    /// Queues a connection for its owner shard; connections in the same burst travel together.
    fn hand_off(&self, to: usize, handoff: DeviceHandoff) {
        if let Some(queue) = self.outbox.borrow_mut().get_mut(to) {
            queue.push(handoff);
            self.count(|s| s.handed_off += 1);
        }
        self.outbox_notify.notify();
    }

    // ----- device streams -----

    /// Whether `uid` has a signalling link online on this shard.
    pub fn is_signalling_online(&self, uid: &str) -> bool {
        self.registry
            .borrow()
            .links(uid)
            .is_some_and(|links| links.signalling.is_some())
    }

    /// How a preview of `uid` can start now.
    pub fn preview_route(&self, uid: &str) -> PreviewRoute {
        let registry = self.registry.borrow();
        let Some(view) = registry.device(uid) else {
            let known = self
                .settings
                .is_known
                .as_ref()
                .is_some_and(|check| check(uid));
            return if known {
                PreviewRoute::Offline
            } else {
                PreviewRoute::NotADevice
            };
        };
        if view.signalling.is_some_and(|s| !s.presence().asleep) {
            return PreviewRoute::Ready;
        }
        let battery = [view.keep_alive, view.signalling]
            .into_iter()
            .flatten()
            .any(|s| s.presence().is_battery_device());
        if battery && view.keep_alive.is_some() {
            PreviewRoute::Asleep
        } else {
            PreviewRoute::Offline
        }
    }

    /// Sends wake-up 460 on `uid`'s keep-alive link; returns where the device's reply arrives.
    /// The device then connects its signalling link (see [`DeviceShard::awake_notify`]).
    pub fn wake_up(&self, uid: &str) -> Result<ReplyReceiver, DeviceError> {
        let (conn, id) = self.queue_request(uid, LinkKind::KeepAlive, |session, now| {
            session.wake_up(now)
        })?;
        Ok(self.wait_reply(conn, id))
    }

    /// Raised when a signalling link of `uid` comes online or the device is marked awake;
    /// check [`DeviceShard::preview_route`] after each raise.
    pub fn awake_notify(&self, uid: &str) -> Rc<LocalNotify> {
        let notify = Rc::new(LocalNotify::new());
        self.awake_waiters
            .borrow_mut()
            .entry(uid.to_owned())
            .or_default()
            .push(notify.clone());
        notify
    }

    /// Raises the awake notifies of `uid`; they stay registered while their preview waits (a
    /// 460 reply may come before the signalling link), the sweep drops abandoned ones.
    fn wake_waiters(&self, uid: &str) {
        if let Some(waiters) = self.awake_waiters.borrow().get(uid) {
            for waiter in waiters {
                waiter.notify();
            }
        }
    }

    /// The device answered its wake-up: a sleep it announced on its signalling link is over.
    pub fn mark_awake(&self, uid: &str) {
        if let Some((_, session)) = self
            .registry
            .borrow_mut()
            .link_mut(uid, LinkKind::Signalling)
        {
            session.mark_awake();
        }
        self.wake_waiters(uid);
    }

    /// Sends keyframe request 189 on `uid`'s signalling link (its reply is not waited for).
    pub fn request_keyframe(
        &self,
        uid: &str,
        channel: u32,
        stream_type: signal::proto::body::StreamType,
    ) -> Result<(), DeviceError> {
        let (conn, _) = self.queue_request(uid, LinkKind::Signalling, |session, now| {
            session.request_keyframe(channel, stream_type, now)
        })?;
        self.wake_writer(conn);
        Ok(())
    }

    /// Queues a request on `uid`'s `link` with `queue` (one of the session's request methods)
    /// and returns the link's connection with what `queue` returned. The caller then wakes the
    /// connection's writer, directly or through [`DeviceShard::wait_reply`].
    fn queue_request<T, E: std::fmt::Display>(
        &self,
        uid: &str,
        link: LinkKind,
        queue: impl FnOnce(&mut DeviceSession, Instant) -> Result<T, E>,
    ) -> Result<(ConnId, T), DeviceError> {
        let mut registry = self.registry.borrow_mut();
        let (conn, session) = registry.link_mut(uid, link).ok_or(DeviceError::Offline)?;
        let queued =
            queue(session, Instant::now()).map_err(|e| DeviceError::BadReply(e.to_string()))?;
        Ok((conn, queued))
    }

    /// Wakes the task of connection `conn` to write what was queued on it.
    fn wake_writer(&self, conn: ConnId) {
        if let Some(signal) = self.conns.borrow().get(&conn) {
            signal.notify.notify();
        }
    }

    /// Registers where the reply to request `id` on `conn` goes and wakes the connection task
    /// to write the request.
    fn wait_reply(&self, conn: ConnId, id: RequestId) -> ReplyReceiver {
        let (reply, receiver) = rt::xchan::oneshot();
        self.waiters.borrow_mut().insert((conn, id), reply);
        self.wake_writer(conn);
        receiver
    }

    /// Sends preview start 3 on `uid`'s signalling link; returns the stream id (the request
    /// id) and where the device's reply arrives.
    pub fn preview_start(
        &self,
        uid: &str,
        channel: u32,
        stream_type: signal::proto::body::StreamType,
        mode: signal::proto::body::StreamMode,
        port: u16,
    ) -> Result<(RequestId, ReplyReceiver), DeviceError> {
        let (conn, id) = self.queue_request(uid, LinkKind::Signalling, |session, now| {
            session.preview_start(channel, stream_type, mode, port, now)
        })?;
        Ok((id, self.wait_reply(conn, id)))
    }

    /// Sends replay start 5 of recording `file` on `uid`'s signalling link; returns the stream
    /// id (the request id) and where the device's reply arrives.
    pub fn replay_start(
        &self,
        uid: &str,
        channel: u32,
        file: &str,
        mode: signal::proto::body::StreamMode,
        port: u16,
    ) -> Result<(RequestId, ReplyReceiver), DeviceError> {
        let (conn, id) = self.queue_request(uid, LinkKind::Signalling, |session, now| {
            session.replay_start(channel, file, mode, port, now)
        })?;
        Ok((id, self.wait_reply(conn, id)))
    }

    /// Sends replay stop 7 on `uid`'s signalling link (its reply is not waited for).
    pub fn replay_stop(
        &self,
        uid: &str,
        channel: u32,
        file: &str,
        stream_id: u32,
    ) -> Result<(), DeviceError> {
        let (conn, _) = self.queue_request(uid, LinkKind::Signalling, |session, now| {
            session.replay_stop(channel, file, stream_id, now)
        })?;
        self.wake_writer(conn);
        Ok(())
    }

    /// Sends replay seek 123 on `uid`'s signalling link: the replay whose stream id is
    /// `stream_id` continues at the device-local `time`, its media packets carrying `seek_seq`;
    /// returns where the device's reply arrives.
    pub fn replay_seek(
        &self,
        uid: &str,
        channel: u32,
        stream_id: u32,
        seek_seq: u32,
        time: signal::proto::body::LocalTime,
    ) -> Result<ReplyReceiver, DeviceError> {
        let (conn, id) = self.queue_request(uid, LinkKind::Signalling, |session, now| {
            session.replay_seek(channel, stream_id, seek_seq, time, now)
        })?;
        Ok(self.wait_reply(conn, id))
    }

    /// Sends preview stop 4 on `uid`'s signalling link (its reply is not waited for).
    pub fn preview_stop(&self, uid: &str, channel: u32, stream_id: u32) -> Result<(), DeviceError> {
        let (conn, _) = self.queue_request(uid, LinkKind::Signalling, |session, now| {
            session.preview_stop(channel, stream_id, now)
        })?;
        self.wake_writer(conn);
        Ok(())
    }

    // ----- sessions -----

    /// Admits the session of a connection served here; returns its id and wake-up handle.
    fn admit(&self, session: DeviceSession) -> (ConnId, Rc<ConnSignal>) {
        let conn = self.registry.borrow_mut().admit(session);
        let signal = Rc::new(ConnSignal::default());
        self.conns.borrow_mut().insert(conn, signal.clone());
        (conn, signal)
    }

    /// Feeds bytes read from `conn` to its session and acts on what happened.
    fn receive(&self, conn: ConnId, input: &[u8]) {
        let replaced = self.registry.borrow_mut().receive(conn, input, now());
        if let Some(Some(evicted)) = replaced {
            self.evict(evicted);
        }
        self.drain(conn);
    }

    /// Handles the events of the session of `conn` (still in the registry).
    fn drain(&self, conn: ConnId) {
        loop {
            let event = {
                let mut registry = self.registry.borrow_mut();
                let Some(session) = registry.session_mut(conn) else {
                    return;
                };
                match session.poll_event() {
                    Some(event) => event,
                    None => return,
                }
            };
            self.on_event(conn, event, None);
        }
    }

    /// Acts on one event of `conn`'s session; `evicted` is the session when it already left
    /// the registry.
    fn on_event(&self, conn: ConnId, event: SessionEvent, evicted: Option<&mut DeviceSession>) {
        match event {
            SessionEvent::Online { uid, link, info } => {
                match link {
                    LinkKind::KeepAlive => self.count(|s| s.online_keepalive += 1),
                    LinkKind::Signalling => self.count(|s| s.online_signalling += 1),
                }
                info!(shard = self.id, uid, ?link, model = ?info.model, firmware = ?info.firmware, "device online");
                self.on_device_back(&uid, info.firmware.as_deref());
                if link == LinkKind::Signalling {
                    self.wake_waiters(&uid);
                }
                let revoked = link == LinkKind::KeepAlive
                    && self
                        .settings
                        .is_revoked
                        .as_ref()
                        .is_some_and(|check| check(&uid));
                if revoked {
                    warn!(
                        shard = self.id,
                        uid, "keep-alive link of a revoked or unknown device closed"
                    );
                    self.with_session(conn, evicted, |session| {
                        session.close(OfflineReason::ServerClosed("device revoked"))
                    });
                }
            }
            SessionEvent::Capabilities(capabilities) => {
                debug!(
                    shard = self.id,
                    ?conn,
                    channels = capabilities.channels.len(),
                    "device capabilities"
                );
            }
            SessionEvent::AlarmReceived { request_id, alarm } => {
                self.count(|s| s.alarms += 1);
                debug!(shard = self.id, ?conn, channel = alarm.channel, status = %alarm.status, ai = %alarm.ai_type, "device alarm");
                let uid = match &evicted {
                    // A closing session cannot answer: the device sends the alarm again.
                    Some(_) => None,
                    None => self
                        .registry
                        .borrow()
                        .session(conn)
                        .and_then(|s| s.uid().map(str::to_owned)),
                };
                match (uid, &self.settings.alarms) {
                    (Some(uid), Some(_)) => {
                        let event = signal::alarms::AlarmEvent::new(
                            &uid,
                            &alarm,
                            signal::alarms::unix_now_ms(),
                        );
                        self.alarm_batch
                            .borrow_mut()
                            .push((conn, request_id, event));
                        self.alarm_notify.notify();
                    }
                    _ => self.with_session(conn, evicted, |session| {
                        session.ack_alarm(request_id);
                    }),
                }
            }
            SessionEvent::Upgrade(event) => match &evicted {
                Some(session) => self.on_upgrade_event(conn, event, Some(session)),
                None => {
                    let registry = self.registry.borrow();
                    self.on_upgrade_event(conn, event, registry.session(conn));
                }
            },
            SessionEvent::RequestDone(outcome) => {
                let waiter = self
                    .waiters
                    .borrow_mut()
                    .remove(&(conn, outcome.request_id));
                if let Some(waiter) = waiter {
                    waiter.send(outcome.result.map_err(DeviceError::from));
                }
            }
            SessionEvent::Offline { reason, was_online } => {
                self.count_offline(&reason);
                if was_online {
                    info!(shard = self.id, ?conn, %reason, "device link offline");
                } else {
                    debug!(shard = self.id, ?conn, %reason, "device link refused");
                }
            }
            _ => {}
        }
        if let Some(signal) = self.conns.borrow().get(&conn) {
            signal.notify.notify();
        }
    }

    fn with_session(
        &self,
        conn: ConnId,
        evicted: Option<&mut DeviceSession>,
        act: impl FnOnce(&mut DeviceSession),
    ) {
        match evicted {
            Some(session) => act(session),
            None => {
                if let Some(session) = self.registry.borrow_mut().session_mut(conn) {
                    act(session);
                }
            }
        }
    }

    /// A session left the registry (replaced, closed by the server, silent): handles its last
    /// events and gives its connection task the final output to write before closing.
    fn evict(&self, evicted: Evicted) {
        let Evicted { conn, mut session } = evicted;
        while let Some(event) = session.poll_event() {
            self.on_event(conn, event, Some(&mut session));
        }
        let output = session.take_output();
        if let Some(signal) = self.conns.borrow().get(&conn) {
            *signal.evicted.borrow_mut() = Some(output);
            signal.notify.notify();
        }
    }

    /// What the connection task of `conn` must do next: write these bytes, then close if true.
    fn next_output(&self, conn: ConnId, signal: &ConnSignal) -> (Option<bytes::Bytes>, bool) {
        if let Some(output) = signal.evicted.borrow_mut().take() {
            return (output, true);
        }
        let mut registry = self.registry.borrow_mut();
        let Some(session) = registry.session_mut(conn) else {
            return (None, true);
        };
        let output = session.take_output();
        let closed = session.is_closed();
        if closed {
            registry.remove(conn);
        }
        (output, closed)
    }

    /// The connection task of `conn` ends (socket closed, failed, or session closed).
    fn finish(&self, conn: ConnId) {
        self.conns.borrow_mut().remove(&conn);
        let session = self.registry.borrow_mut().disconnect(conn);
        if let Some(mut session) = session {
            while let Some(event) = session.poll_event() {
                self.on_event(conn, event, Some(&mut session));
            }
        }
        // Any waiter left (a request written just before the close) fails now.
        self.waiters
            .borrow_mut()
            .retain(|&(waiting_conn, _), _| waiting_conn != conn);
        // A transfer whose session left without saying how it ended.
        let failure = signal::session::UpgradeFailure::LinkClosed;
        self.on_upgrade_event(conn, signal::session::UpgradeEvent::Failed(failure), None);
    }

    /// The periodic sweep: silent sessions close, requests past their deadline fail.
    fn sweep(&self, now: Instant) {
        self.awake_waiters.borrow_mut().retain(|_, waiters| {
            waiters.retain(|w| Rc::strong_count(w) > 1);
            !waiters.is_empty()
        });
        let sweep = self.registry.borrow_mut().sweep(now);
        for evicted in sweep.closed {
            self.evict(evicted);
        }
        // Timeouts of firmware transfers are events.
        for conn in sweep.events {
            self.drain(conn);
        }
        self.sweep_reboot_watches(now);
        for (conn, outcome) in sweep.expired {
            let waiter = self
                .waiters
                .borrow_mut()
                .remove(&(conn, outcome.request_id));
            if let Some(waiter) = waiter {
                waiter.send(outcome.result.map_err(DeviceError::from));
            }
        }
    }
}

/// What `server::start` hands every shard for its device links: the settings, the control
/// plane's command queue of each shard (each shard takes its own), and where shards report
/// that they listen.
#[derive(Clone)]
pub struct DeviceWiring {
    /// Settings shared by every shard.
    pub settings: DeviceSettings,
    /// One command receiver per shard, taken by that shard at start.
    pub commands: Arc<std::sync::Mutex<Vec<Option<Receiver<DeviceCommand>>>>>,
    /// Each shard reports its bound (keep-alive, signalling) addresses or why it could not bind.
    pub ready: ReadySender,
}

impl std::fmt::Debug for DeviceWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceWiring")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl DeviceWiring {
    /// Settings and one command queue per shard: returns the wiring for the shards, the
    /// control plane's [`signal::devices::DeviceDirectory`] over those queues, and the
    /// receiver of the shards' ready reports.
    #[allow(clippy::type_complexity)]
    pub fn new(
        settings: DeviceSettings,
        shards: usize,
    ) -> (
        DeviceWiring,
        signal::devices::DeviceDirectory,
        std::sync::mpsc::Receiver<Result<(SocketAddr, SocketAddr), String>>,
    ) {
        /// Commands waiting per shard before the control plane is told the shard is busy.
        const COMMAND_QUEUE: usize = 4096;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| rt::xchan::channel(COMMAND_QUEUE))
            .map(|(tx, rx)| (tx, Some(rx)))
            .unzip();
        let (ready, ready_rx) = std::sync::mpsc::channel();
        (
            DeviceWiring {
                settings,
                commands: Arc::new(std::sync::Mutex::new(receivers)),
                ready,
            },
            signal::devices::DeviceDirectory::new(senders),
            ready_rx,
        )
    }

    /// Starts the device side of shard `id` (see [`DeviceShard::start`]).
    pub fn start(
        &self,
        id: usize,
        count: usize,
        shutdown: Shutdown,
        port: Rc<MeshPort<ShardMsg>>,
    ) -> Rc<DeviceShard> {
        let commands = self
            .commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(id)
            .and_then(Option::take);
        let shard = Rc::new(DeviceShard::new(id, count, self.settings.clone(), shutdown));
        shard.start(port, commands, self.ready.clone());
        shard
    }
}

/// Group commit of the shard's alarms: everything that arrived since the last commit goes to
/// the durable queue in one transaction on the blocking pool (the shard keeps serving), then
/// each alarm is answered: 200 once stored, 400 when the store failed (the device retries).
async fn persist_alarms(shard: Rc<DeviceShard>, queue: signal::alarms::AlarmQueue) {
    while shard
        .shutdown
        .until(shard.alarm_notify.notified())
        .await
        .is_some()
    {
        let batch = std::mem::take(&mut *shard.alarm_batch.borrow_mut());
        if batch.is_empty() {
            continue;
        }
        let (answers, events): (Vec<(ConnId, u32)>, Vec<signal::alarms::AlarmEvent>) = batch
            .into_iter()
            .map(|(conn, id, event)| ((conn, id), event))
            .unzip();
        let queue = queue.clone();
        let stored = rt::blocking::unblock(move || queue.enqueue_batch(&events)).await;
        if let Err(e) = &stored {
            warn!(
                shard = shard.id,
                alarms = answers.len(),
                "alarms not stored, devices answered 400: {e}"
            );
        }
        for (conn, request_id) in answers {
            let answered = {
                let mut registry = shard.registry.borrow_mut();
                registry.session_mut(conn).map(|session| match stored {
                    Ok(()) => session.ack_alarm(request_id),
                    Err(_) => session.reject_alarm(request_id),
                })
            };
            if answered.is_some() {
                if let Some(signal) = shard.conns.borrow().get(&conn) {
                    signal.notify.notify();
                }
            }
        }
    }
}
