//! One shard of the data plane: a pinned executor that owns, without locks, the streams of the
//! devices hashed to it (`signal::session::shard_of_uid(uid, shards)`, the hash a keep-alive
//! hello names too) and every connection that publishes or plays them.
//!
//! Why it is built this way:
//! - **Fan-out never crosses cores.** A stream's hub, its publisher and all its viewers live on one
//!   shard, so a packet is shared by reference count with no atomic and no lock. A connection the
//!   kernel gave to another shard (SO_REUSEPORT balances by address hash, not by stream) is moved
//!   to the owner as soon as its first request names a stream: the fd and the bytes read so far
//!   travel over the [`rt::Mesh`]; nothing is proxied. Connections moving in the same burst go in
//!   one message per destination, since a cross-shard wake-up costs tens of microseconds.
//! - **One listening port for all shards.** Shard 0 binds the configured address first (port 0
//!   in tests picks an ephemeral port) and tells the others the port it got; they bind the same
//!   address with SO_REUSEPORT. Each shard then accepts on its own socket.
//! - **One sweeper per shard instead of a timer per connection**: every
//!   [`ShardSettings::sweep_interval`] it ends streams whose publisher's grace ran out, evicts
//!   viewers behind for too long, drops idle stream hubs, and closes connections whose request or
//!   session timed out.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rt::{MaybeTls, Mesh, MeshPort, ShardContext, Shutdown, TcpListener};
use signal::metrics::{MediaStats, TlsPort};
use signal::tokens::TokenSigner;
use tracing::{debug, info, warn};

use crate::hub::{
    ChannelMap, HubConfig, HubError, HubStats, LocalNotify, PublisherId, PublisherState,
    StreamDescription, StreamHub, ViewerId,
};
use crate::rtsp::conn::RtspHandoff;
use crate::rtsp::session::Refusal;
use crate::rtsp::RtspSettings;
use crate::stream_key::StreamKey;

/// Settings shared by every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSettings {
    /// The RTSP server's timings and bounds.
    pub rtsp: RtspSettings,
    /// Bounds of each stream hub.
    pub hub: HubConfig,
    /// How often the sweeper runs.
    pub sweep_interval: Duration,
}

impl Default for ShardSettings {
    fn default() -> Self {
        ShardSettings {
            rtsp: RtspSettings::default(),
            hub: HubConfig::default(),
            sweep_interval: Duration::from_millis(250),
        }
    }
}

/// A message between shards.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShardMsg {
    /// From shard 0: the RTSP and RTSPS addresses it bound; bind the same (SO_REUSEPORT) and
    /// accept.
    ListenRtsp(RtspAddrs),
    /// RTSP and RTSPS connections whose stream this shard owns, with the bytes already read.
    RtspConnections(Vec<RtspHandoff>),
    /// Device links (keep-alive, signalling): listen addresses and connections to serve.
    Device(crate::device::DeviceMsg),
    /// Device streams (61006, 61007): listen addresses and connections to serve.
    Stream(crate::stream_conn::StreamMsg),
}

/// The client ports of the RTSP server, as configured or as bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtspAddrs {
    /// Plain RTSP (61008).
    pub rtsp: SocketAddr,
    /// RTSPS (61004), when served.
    pub rtsps: Option<SocketAddr>,
}

/// The RTSP server's listeners of one shard: where, and the TLS configuration of RTSPS.
#[derive(Debug, Clone)]
pub struct RtspListen {
    /// Addresses to bind.
    pub addrs: RtspAddrs,
    /// Server certificate for RTSPS (required when `addrs.rtsps` is set).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// How long an RTSPS client has to finish its TLS handshake.
    pub tls_handshake_timeout: Duration,
}

/// Resolves when the device accepted a preview start (`Ok`) or refused it.
pub type PreviewStarted = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Refusal>>>>;

/// Resolves when the device seeked a replay (`Ok`: the position it continues from) or refused.
pub type SeekStarted =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, Refusal>>>>;

/// Starts streams when a viewer asks for one nobody publishes: device previews
/// ([`crate::stream_conn::StreamShard`]) and pull sources ([`crate::pull::PullShard`]).
pub trait OnDemand {
    /// Asks the device of `stream` to start sending it. `None`: not a device online on this
    /// shard (wait for an RTSP publisher as usual). The future resolves when the device
    /// accepted (`Ok`) or refused.
    fn start(self: Rc<Self>, stream: &StreamKey) -> Option<PreviewStarted>;
    /// How long a viewer waits for the device's first keyframe.
    fn start_timeout(&self) -> Duration;
    /// A viewer of `stream` arrived and the hub caches no GOP it could start from: the
    /// device of a live preview is asked for a keyframe.
    fn viewer_without_gop(&self, stream: &StreamKey);
    /// Moves the replay of `stream` (a recording) to `start`. `None`: not a replay this
    /// starter runs.
    fn seek(self: Rc<Self>, stream: &StreamKey, start: Duration) -> Option<SeekStarted> {
        let _ = (stream, start);
        None
    }
}

/// Why a connection is being closed by the sweeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request did not arrive whole in time (answered with 408).
    RequestTimeout,
    /// No request (or media, when recording) for the session timeout.
    SessionTimeout,
}

/// The sweeper's view of one connection: timestamps the connection updates, and the signal the
/// sweeper raises when one of them is too old.
#[derive(Debug)]
pub struct ConnWatch {
    /// Last request or media from the peer.
    pub last_activity: Cell<Instant>,
    /// Session timeout in force; `None` while playing.
    pub idle_limit: Cell<Option<Duration>>,
    /// When the request being received started.
    pub request_started: Cell<Option<Instant>>,
    /// Set by the sweeper with the reason, just before raising `expired_notify`.
    pub expired: Cell<Option<Expiry>>,
    /// Raised once when `expired` is set.
    pub expired_notify: LocalNotify,
}

struct StreamEntry {
    hub: Rc<RefCell<StreamHub>>,
    /// DESCRIBEs waiting for a publisher; an entry whose only holder is this list is stale.
    waiters: Vec<Rc<LocalNotify>>,
}

/// Counters of one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardStats {
    /// RTSP connections accepted by this shard's listener.
    pub accepted: u64,
    /// Connections handed to another shard.
    pub handed_off: u64,
    /// Connections received from another shard.
    pub received: u64,
}

/// The state one shard owns. Lives in an `Rc` on its shard.
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Number of shards.
    pub count: usize,
    /// Settings.
    pub settings: ShardSettings,
    /// Checks play and publish tokens.
    pub signer: TokenSigner,
    /// The pool's shutdown signal.
    pub shutdown: Shutdown,
    streams: RefCell<HashMap<StreamKey, StreamEntry>>,
    conns: RefCell<HashMap<u64, Rc<ConnWatch>>>,
    next_conn: Cell<u64>,
    /// Connections waiting to be sent to each shard, flushed together.
    outbox: RefCell<Vec<Vec<RtspHandoff>>>,
    outbox_notify: LocalNotify,
    stats: Cell<ShardStats>,
    /// Media counters of the connections on this shard (bytes in, rejections, previews, TLS).
    media: RefCell<MediaStats>,
    /// Counters of the hubs already dropped, so that totals survive their streams.
    retired_hubs: Cell<HubStats>,
    /// Who starts streams on demand, asked in order (device previews, pull sources).
    on_demand: RefCell<Vec<std::rc::Weak<dyn OnDemand>>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.id)
            .field("count", &self.count)
            .field("streams", &self.streams.borrow().len())
            .field("conns", &self.conns.borrow().len())
            .finish()
    }
}

impl Shard {
    /// A shard with no streams.
    pub fn new(
        id: usize,
        count: usize,
        settings: ShardSettings,
        signer: TokenSigner,
        shutdown: Shutdown,
    ) -> Shard {
        Shard {
            id,
            count,
            settings,
            signer,
            shutdown,
            streams: RefCell::new(HashMap::new()),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            outbox: RefCell::new((0..count).map(|_| Vec::new()).collect()),
            outbox_notify: LocalNotify::new(),
            stats: Cell::new(ShardStats::default()),
            media: RefCell::new(MediaStats::default()),
            retired_hubs: Cell::new(HubStats::default()),
            on_demand: RefCell::new(Vec::new()),
        }
    }

    /// Adds a starter of streams on demand (asked after those added before). The shard keeps
    /// only a weak reference: the starter holds the shard, and a cycle would keep both (and the
    /// store behind them) alive after shutdown.
    pub fn set_on_demand(&self, on_demand: &Rc<dyn OnDemand>) {
        self.on_demand.borrow_mut().push(Rc::downgrade(on_demand));
    }

    /// Viewers of `stream` plus DESCRIBEs waiting for it (0 when it has no hub).
    pub fn audience(&self, stream: &StreamKey) -> usize {
        self.streams.borrow().get(stream).map_or(0, |entry| {
            entry.hub.borrow().viewer_count()
                + entry
                    .waiters
                    .iter()
                    .filter(|w| Rc::strong_count(w) > 1)
                    .count()
        })
    }

    /// The publisher state of `stream`'s hub, if it has one.
    pub fn publisher_state(&self, stream: &StreamKey) -> Option<PublisherState> {
        self.streams
            .borrow()
            .get(stream)
            .map(|entry| entry.hub.borrow().publisher_state())
    }

    /// The shard's counters.
    pub fn stats(&self) -> ShardStats {
        self.stats.get()
    }

    fn count_stat(&self, update: impl FnOnce(&mut ShardStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Updates the shard's media counters (connections on this shard call it per read or per
    /// event, never across shards).
    pub fn count_media(&self, update: impl FnOnce(&mut MediaStats)) {
        update(&mut self.media.borrow_mut());
    }

    /// The shard's media counters now: the connections' counters, plus what every hub (live
    /// and dropped) wrote to viewers and dropped for slow ones, plus the live streams and
    /// viewers.
    pub fn media_stats(&self) -> MediaStats {
        let mut media = self.media.borrow().clone();
        let mut hubs = self.retired_hubs.get();
        for entry in self.streams.borrow().values() {
            let hub = entry.hub.borrow();
            hubs += hub.stats();
            media.viewers += hub.viewer_count() as u64;
            match hub.publisher_state() {
                PublisherState::Live => media.streams_live += 1,
                PublisherState::Waiting { .. } => media.streams_waiting += 1,
                PublisherState::Idle | PublisherState::Ended => {}
            }
        }
        media.bytes_out += hubs.bytes_out;
        media.packets_dropped += hubs.packets_dropped;
        media.frames_dropped += hubs.frames_dropped;
        media.viewers_evicted += hubs.viewers_evicted;
        let connections = self.stats.get();
        media.rtsp_accepted += connections.accepted;
        media.rtsp_handed_off += connections.handed_off;
        media.rtsp_received += connections.received;
        media
    }

    /// The shard that owns `stream`.
    pub fn owner_of(&self, stream: &StreamKey) -> usize {
        // The device sessions' hash: a keep-alive hello names its shard by the UID hash in its
        // access key, so every connection of a device must follow that hash.
        signal::session::shard_of_uid(stream.uid(), self.count)
    }

    // ----- streams -----

    /// Number of live stream hubs on this shard.
    pub fn stream_count(&self) -> usize {
        self.streams.borrow().len()
    }

    /// The hub of `stream`, created if needed.
    pub fn hub(&self, stream: &StreamKey) -> Rc<RefCell<StreamHub>> {
        let mut streams = self.streams.borrow_mut();
        if let Some(entry) = streams.get(stream) {
            return entry.hub.clone();
        }
        let hub = Rc::new(RefCell::new(StreamHub::new(
            stream.clone(),
            self.settings.hub,
        )));
        debug!(shard = self.id, %stream, "stream hub created");
        streams.insert(
            stream.clone(),
            StreamEntry {
                hub: hub.clone(),
                waiters: Vec::new(),
            },
        );
        hub
    }

    /// The stream's description once it has a publisher, waiting up to `wait` for one.
    pub async fn wait_description(
        &self,
        stream: &StreamKey,
        wait: Duration,
    ) -> Result<Rc<StreamDescription>, Refusal> {
        let hub = self.hub(stream);
        if let Some(description) = published_description(&hub.borrow()) {
            return Ok(description);
        }
        let waiter = Rc::new(LocalNotify::new());
        if let Some(entry) = self.streams.borrow_mut().get_mut(stream) {
            entry.waiters.push(waiter.clone());
        }
        let starters: Vec<Rc<dyn OnDemand>> = self
            .on_demand
            .borrow()
            .iter()
            .filter_map(std::rc::Weak::upgrade)
            .collect();
        let started = starters.into_iter().find_map(|d| {
            let timeout = d.start_timeout();
            d.start(stream).map(|started| (started, timeout))
        });
        match started {
            None => {
                let _ = rt::timer::timeout(wait, waiter.notified()).await;
            }
            Some((started, timeout)) => {
                let described = async {
                    started.await?;
                    waiter.notified().await;
                    Ok(())
                };
                match rt::timer::timeout(timeout, described).await {
                    Ok(Err(refusal)) => return Err(refusal),
                    Ok(Ok(())) => {}
                    Err(_) => {
                        let hub = self.hub(stream);
                        let described = published_description(&hub.borrow());
                        return described.ok_or(Refusal::NoMedia);
                    }
                }
            }
        }
        // The hub may have been replaced while waiting (ended and swept); ask the current one.
        let hub = self.hub(stream);
        let described = published_description(&hub.borrow());
        described.ok_or(Refusal::NoPublisher)
    }

    /// Moves the replay of `stream` to `start` (a PLAY with a Range): the device seeks, and
    /// the hub's viewers restart on its next keyframe. Refused with
    /// [`Refusal::NotSeekable`] when no starter runs such a replay.
    pub async fn seek(&self, stream: &StreamKey, start: Duration) -> Result<Duration, Refusal> {
        let starters: Vec<Rc<dyn OnDemand>> = self
            .on_demand
            .borrow()
            .iter()
            .filter_map(std::rc::Weak::upgrade)
            .collect();
        match starters.into_iter().find_map(|d| d.seek(stream, start)) {
            Some(sought) => sought.await,
            None => Err(Refusal::NotSeekable),
        }
    }

    /// Attaches a publisher to `stream` with its description, and wakes DESCRIBEs waiting for it.
    pub fn publish(
        &self,
        stream: &StreamKey,
        description: StreamDescription,
    ) -> Result<(Rc<RefCell<StreamHub>>, PublisherId), Refusal> {
        let hub = self.hub(stream);
        let publisher = {
            let mut hub = hub.borrow_mut();
            let publisher = hub.attach_publisher().map_err(|e| match e {
                HubError::PublisherExists { .. } => Refusal::PublisherExists,
                _ => Refusal::StreamEnded,
            })?;
            hub.set_description(description);
            publisher
        };
        if let Some(entry) = self.streams.borrow_mut().get_mut(stream) {
            for waiter in entry.waiters.drain(..) {
                waiter.notify();
            }
        }
        info!(shard = self.id, %stream, "publisher attached");
        Ok((hub, publisher))
    }

    /// Adds a viewer of `stream` receiving `channels`; `notify` is raised when it should write.
    pub fn add_viewer(
        &self,
        stream: &StreamKey,
        channels: ChannelMap,
        notify: LocalNotify,
    ) -> Result<(Rc<RefCell<StreamHub>>, ViewerId), Refusal> {
        let hub = self.hub(stream);
        let id = hub
            .borrow_mut()
            .add_viewer(channels, notify)
            .map_err(|e| match e {
                HubError::TooManyViewers { .. } => Refusal::TooManyViewers,
                _ => Refusal::StreamEnded,
            })?;
        if hub.borrow().gop_cache().packets == 0 {
            let starters: Vec<Rc<dyn OnDemand>> = self
                .on_demand
                .borrow()
                .iter()
                .filter_map(std::rc::Weak::upgrade)
                .collect();
            for on_demand in starters {
                on_demand.viewer_without_gop(stream);
            }
        }
        Ok((hub, id))
    }

    // ----- connections -----

    /// Registers a connection with the sweeper; returns its id and watch.
    pub fn register_conn(&self, now: Instant) -> (u64, Rc<ConnWatch>) {
        let id = self.next_conn.get() + 1;
        self.next_conn.set(id);
        let watch = Rc::new(ConnWatch {
            last_activity: Cell::new(now),
            idle_limit: Cell::new(Some(Duration::from_secs(u64::from(
                self.settings.rtsp.session.timeout_secs,
            )))),
            request_started: Cell::new(None),
            expired: Cell::new(None),
            expired_notify: LocalNotify::new(),
        });
        self.conns.borrow_mut().insert(id, watch.clone());
        (id, watch)
    }

    /// Forgets a connection.
    pub fn unregister_conn(&self, id: u64) {
        self.conns.borrow_mut().remove(&id);
    }

    /// Number of open connections on this shard.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Queues a connection for shard `to`; connections queued in the same burst travel together.
    pub fn hand_off(&self, to: usize, handoff: RtspHandoff) {
        if let Some(queue) = self.outbox.borrow_mut().get_mut(to) {
            queue.push(handoff);
            self.count_stat(|s| s.handed_off += 1);
        }
        self.outbox_notify.notify();
    }

    // ----- upkeep -----

    /// One sweep at `now`: stream grace periods, slow viewers, idle hubs, connection deadlines.
    pub fn sweep(&self, now: Instant) {
        let mut ended = Vec::new();
        self.streams.borrow_mut().retain(|key, entry| {
            entry.waiters.retain(|w| Rc::strong_count(w) > 1);
            let mut hub = entry.hub.borrow_mut();
            let outcome = hub.sweep(now);
            if outcome.stream_ended {
                ended.push(key.clone());
            }
            // Evicted viewers were told through their notify; their connections remove them.
            let evicted = hub.take_evicted().count();
            if evicted > 0 {
                debug!(shard = self.id, stream = %key, evicted, "slow viewers evicted");
            }
            let idle = hub.viewer_count() == 0
                && entry.waiters.is_empty()
                && matches!(
                    hub.publisher_state(),
                    PublisherState::Idle | PublisherState::Ended
                );
            if idle {
                debug!(shard = self.id, stream = %key, "stream hub dropped");
                let mut retired = self.retired_hubs.get();
                retired += hub.stats();
                self.retired_hubs.set(retired);
            }
            !idle
        });
        for key in ended {
            info!(shard = self.id, stream = %key, "stream ended: the publisher did not return");
        }
        let request_timeout = self.settings.rtsp.request_timeout;
        for watch in self.conns.borrow().values() {
            if watch.expired.get().is_some() {
                continue;
            }
            let expiry = if watch
                .request_started
                .get()
                .is_some_and(|started| now.saturating_duration_since(started) > request_timeout)
            {
                Some(Expiry::RequestTimeout)
            } else if watch.idle_limit.get().is_some_and(|limit| {
                now.saturating_duration_since(watch.last_activity.get()) > limit
            }) {
                Some(Expiry::SessionTimeout)
            } else {
                None
            };
            if let Some(expiry) = expiry {
                watch.expired.set(Some(expiry));
                watch.expired_notify.notify();
            }
        }
    }
}

fn published_description(hub: &StreamHub) -> Option<Rc<StreamDescription>> {
    match hub.publisher_state() {
        PublisherState::Live | PublisherState::Waiting { .. } => hub.description().cloned(),
        PublisherState::Idle | PublisherState::Ended => None,
    }
}

/// Reports of shards that started listening, for [`crate::server::start`].
pub type ReadySender = std::sync::mpsc::Sender<Result<RtspAddrs, String>>;

/// Binds the RTSP (and RTSPS) listeners at `addrs` and starts accepting on this shard.
fn listen_rtsp(
    shard: &Rc<Shard>,
    listen: &RtspListen,
    addrs: RtspAddrs,
    accept_loops: &mut Vec<rt::Task<()>>,
) -> Result<RtspAddrs, String> {
    let plain = TcpListener::bind(addrs.rtsp)
        .map_err(|e| format!("binding the RTSP listener on {}: {e}", addrs.rtsp))?;
    let tls = match (addrs.rtsps, listen.tls.clone()) {
        (Some(at), Some(config)) => {
            let listener = TcpListener::bind(at)
                .map_err(|e| format!("binding the RTSPS listener on {at}: {e}"))?;
            Some((listener, config))
        }
        (Some(_), None) => return Err("RTSPS needs a server certificate".into()),
        (None, _) => None,
    };
    let bound = RtspAddrs {
        rtsp: plain.local_addr().unwrap_or(addrs.rtsp),
        rtsps: tls
            .as_ref()
            .map(|(l, _)| l.local_addr().ok().or(addrs.rtsps))
            .unwrap_or(addrs.rtsps),
    };
    accept_loops.push(rt::spawn_local(accept_rtsp(shard.clone(), plain, None)));
    if let Some((listener, config)) = tls {
        let tls = Some((config, listen.tls_handshake_timeout));
        accept_loops.push(rt::spawn_local(accept_rtsp(shard.clone(), listener, tls)));
    }
    Ok(bound)
}

/// A shard's entry point: joins the mesh, binds the RTSP and RTSPS ports (shard 0 first, then
/// the others on the ports it got), accepts and serves until `ctx.shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    ctx: ShardContext,
    mesh: Mesh<ShardMsg>,
    settings: ShardSettings,
    signer: TokenSigner,
    listen: RtspListen,
    ready: ReadySender,
    devices: Option<crate::device::DeviceWiring>,
    streams: Option<crate::stream_conn::StreamWiring>,
    pulls: Option<crate::pull::PullWiring>,
) {
    let port = match ctx.join(&mesh).await {
        Ok(port) => Rc::new(port),
        Err(e) => {
            let _ = ready.send(Err(format!(
                "shard {} could not join the mesh: {e}",
                ctx.id
            )));
            return;
        }
    };
    let shard = Rc::new(Shard::new(
        ctx.id,
        ctx.count,
        settings,
        signer,
        ctx.shutdown.clone(),
    ));
    let _sweeper = {
        let shard = Rc::downgrade(&shard);
        rt::Sweeper::every(settings.sweep_interval, move |now| {
            if let Some(shard) = shard.upgrade() {
                shard.sweep(now);
            }
        })
    };
    let flusher = rt::spawn_local(flush_handoffs(shard.clone(), port.clone()));
    let devices = devices.map(|d| d.start(ctx.id, ctx.count, ctx.shutdown.clone(), port.clone()));
    if let Some(devices) = &devices {
        devices.set_data_plane(&shard);
    }
    let streams = streams.map(|wiring| {
        crate::stream_conn::StreamShard::start(
            &wiring,
            shard.clone(),
            devices.clone(),
            port.clone(),
        )
    });
    // After the device streams: a DESCRIBE asks device previews first, then pull sources.
    let _pulls = pulls.map(|wiring| crate::pull::PullShard::start(&wiring, shard.clone()));
    let mut accept_loops = Vec::new();
    if ctx.id == 0 {
        match listen_rtsp(&shard, &listen, listen.addrs, &mut accept_loops) {
            Ok(bound) => {
                for to in 1..ctx.count {
                    if let Err(e) = port.send_to(to, ShardMsg::ListenRtsp(bound)).await {
                        warn!("shard 0 could not tell shard {to} the RTSP ports: {e}");
                    }
                }
                info!(shard = 0, rtsp = %bound.rtsp, rtsps = ?bound.rtsps, "RTSP listening");
                let _ = ready.send(Ok(bound));
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                ctx.shutdown.trigger();
            }
        }
    }
    while let Some(Some((from, msg))) = ctx.shutdown.until(port.recv()).await {
        match msg {
            ShardMsg::ListenRtsp(addrs) => {
                match listen_rtsp(&shard, &listen, addrs, &mut accept_loops) {
                    Ok(bound) => {
                        debug!(shard = ctx.id, rtsp = %bound.rtsp, rtsps = ?bound.rtsps, "RTSP listening");
                        let _ = ready.send(Ok(bound));
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("shard {}: {e}", ctx.id)));
                    }
                }
            }
            ShardMsg::Device(msg) => {
                if let Some(devices) = &devices {
                    devices.on_message(from, msg);
                }
            }
            ShardMsg::Stream(msg) => {
                if let Some(streams) = &streams {
                    streams.on_message(msg);
                }
            }
            ShardMsg::RtspConnections(handoffs) => {
                for handoff in handoffs {
                    shard.count_stat(|s| s.received += 1);
                    let peer = handoff.handoff.peer;
                    match handoff.into_transport() {
                        Ok((transport, plaintext)) => {
                            // Admitted by the accepting shard; counted here from now on.
                            let permit = signal::limits::adopt(peer.ip());
                            let serve =
                                crate::rtsp::conn::serve(shard.clone(), transport, peer, plaintext);
                            rt::spawn_detached(async move {
                                let _permit = permit;
                                serve.await
                            });
                        }
                        Err(e) => {
                            warn!(shard = ctx.id, from, %peer, "handed-off RTSP connection lost: {e}")
                        }
                    }
                }
            }
        }
    }
    for task in accept_loops {
        task.await;
    }
    flusher.cancel().await;
    port.close();
}

/// Accepts RTSP (`tls` None) or RTSPS connections: RTSPS runs the TLS handshake on the
/// accepting shard (within the timeout; failures are counted), then serves the same RTSP.
async fn accept_rtsp(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<(std::sync::Arc<rustls::ServerConfig>, Duration)>,
) {
    let name = if tls.is_some() { "rtsps" } else { "rtsp" };
    while let Some(accepted) = listener.accept_until(&shard.shutdown).await {
        match accepted {
            Ok(stream) => {
                shard.count_stat(|s| s.accepted += 1);
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                // Refused: counted by the limits; dropping the stream closes it.
                let Ok(permit) = signal::limits::admit(name, peer.ip()) else {
                    continue;
                };
                let shard = shard.clone();
                let tls = tls.clone();
                rt::spawn_detached(async move {
                    let _permit = permit;
                    let transport = match tls {
                        None => MaybeTls::from(stream),
                        Some((config, timeout)) => {
                            let handshake = rt::tls::accept(stream, config, timeout);
                            match shard.shutdown.until(handshake).await {
                                None => return,
                                Some(Ok(tls)) => MaybeTls::from(tls),
                                Some(Err(e)) => {
                                    let reason = signal::metrics::tls_failure_reason(&e);
                                    shard.count_media(|m| {
                                        m.tls_failures.record(TlsPort::Rtsps, reason)
                                    });
                                    debug!(shard = shard.id, %peer, reason, "RTSPS handshake failed: {e}");
                                    return;
                                }
                            }
                        }
                    };
                    crate::rtsp::conn::serve(shard, transport, peer, Vec::new()).await
                });
            }
            Err(e) => {
                warn!(shard = shard.id, listener = name, "RTSP accept failed: {e}");
                rt::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends queued handoffs, one message per destination shard per burst.
async fn flush_handoffs(shard: Rc<Shard>, port: Rc<MeshPort<ShardMsg>>) {
    loop {
        shard.outbox_notify.notified().await;
        let batches: Vec<(usize, Vec<RtspHandoff>)> = shard
            .outbox
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(to, queue)| (to, std::mem::take(queue)))
            .collect();
        for (to, handoffs) in batches {
            if let Err(e) = port.send_to(to, ShardMsg::RtspConnections(handoffs)).await {
                warn!(shard = shard.id, to, "RTSP connections not handed off: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::TrackKind;
    use crate::stream_key::StreamKind;

    fn shard() -> Shard {
        Shard::new(
            0,
            1,
            ShardSettings::default(),
            TokenSigner::new([1; 32]),
            Shutdown::new(),
        )
    }

    fn description() -> StreamDescription {
        StreamDescription {
            sdp: "v=0\r\n".into(),
            tracks: vec![TrackKind::Video],
        }
    }

    #[test]
    fn sweeper_expires_slow_requests_and_idle_sessions_but_not_players() {
        let shard = shard();
        let start = Instant::now();
        let (_, slow) = shard.register_conn(start);
        slow.request_started.set(Some(start));
        let (_, idle) = shard.register_conn(start);
        let (_, playing) = shard.register_conn(start);
        playing.idle_limit.set(None);
        shard.sweep(start + Duration::from_secs(5));
        assert_eq!(slow.expired.get(), None);
        shard.sweep(start + Duration::from_secs(11));
        assert_eq!(slow.expired.get(), Some(Expiry::RequestTimeout));
        assert!(slow.expired_notify.take_notification());
        assert_eq!(idle.expired.get(), None);
        shard.sweep(start + Duration::from_secs(61));
        assert_eq!(idle.expired.get(), Some(Expiry::SessionTimeout));
        assert_eq!(playing.expired.get(), None);
        assert_eq!(shard.conn_count(), 3);
    }

    /// Records the streams whose viewers arrived with no GOP cached.
    struct KeyframeAsks(RefCell<Vec<StreamKey>>);

    impl OnDemand for KeyframeAsks {
        fn start(self: Rc<Self>, _: &StreamKey) -> Option<PreviewStarted> {
            None
        }
        fn start_timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn viewer_without_gop(&self, stream: &StreamKey) {
            self.0.borrow_mut().push(stream.clone());
        }
    }

    #[test]
    fn a_viewer_without_a_cached_gop_asks_for_a_keyframe() {
        let shard = shard();
        let asks = Rc::new(KeyframeAsks(RefCell::new(Vec::new())));
        let on_demand: Rc<dyn OnDemand> = asks.clone();
        shard.set_on_demand(&on_demand);
        let key = StreamKey::new("952700000A5S348E", 0, StreamKind::Main).unwrap();
        let (hub, publisher) = shard.publish(&key, description()).unwrap();
        let channels = || ChannelMap::new().with_track(0, 0, 1).unwrap();
        shard
            .add_viewer(&key, channels(), LocalNotify::new())
            .unwrap();
        assert_eq!(
            *asks.0.borrow(),
            vec![key.clone()],
            "no GOP yet: keyframe asked"
        );
        let meta = crate::hub::PacketMeta {
            track: 0,
            is_rtcp: false,
            keyframe_start: true,
            end_of_access_unit: true,
        };
        let header = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let keyframe = crate::hub::RtpPacket::new(
            meta,
            &header,
            bytes::Bytes::from_static(&[0x65; 8]),
            bytes::Bytes::new(),
        )
        .unwrap();
        hub.borrow_mut().push(publisher, keyframe).unwrap();
        shard
            .add_viewer(&key, channels(), LocalNotify::new())
            .unwrap();
        assert_eq!(asks.0.borrow().len(), 1, "GOP cached: no keyframe asked");
    }

    #[test]
    fn hubs_live_while_published_or_watched_and_go_after_the_grace() {
        let shard = shard();
        let key = StreamKey::new("952700000A5S348E", 0, StreamKind::Main).unwrap();
        let (hub, publisher) = shard.publish(&key, description()).unwrap();
        assert!(matches!(
            shard.publish(&key, description()),
            Err(Refusal::PublisherExists)
        ));
        let now = Instant::now();
        shard.sweep(now);
        assert_eq!(shard.stream_count(), 1);
        hub.borrow_mut().detach_publisher(publisher, now).unwrap();
        shard.sweep(now + Duration::from_secs(1));
        assert_eq!(shard.stream_count(), 1, "kept during the publisher's grace");
        shard.sweep(now + Duration::from_secs(6));
        assert_eq!(shard.stream_count(), 0, "dropped once ended and unwatched");
        // A viewer keeps a hub without a publisher alive.
        let (hub, viewer) = shard
            .add_viewer(&key, ChannelMap::new(), LocalNotify::new())
            .unwrap();
        shard.sweep(now + Duration::from_secs(7));
        assert_eq!(shard.stream_count(), 1);
        hub.borrow_mut().remove_viewer(viewer);
        shard.sweep(now + Duration::from_secs(8));
        assert_eq!(shard.stream_count(), 0);
    }
}
