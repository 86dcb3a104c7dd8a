//! Device stream connections on the shards: 61006 (mutual TLS) and 61007 (encryptTCP hello,
//! then frames, encrypted or not), fed to [`crate::ingest::DeviceStreamIngest`] on the device's
//! owner shard and published into the stream hub of the preview they answer; and the on-demand
//! side: a DESCRIBE of a device stream without a publisher sends *preview start* to the device,
//! and the last viewer gone for the linger time sends *preview stop*.
//!
//! ```text
//!  RTSP DESCRIBE (owner shard) --Shard::wait_description--> StreamShard::start (OnDemand)
//!     device with no link: 503 Device Offline at once; not a device: wait for an RTSP publisher
//!     battery device asleep: wake-up 460 on the keep-alive link, wait for its signalling link
//!     preview start 3 (stream id = request id, mode, port) on the signalling link
//!     pending preview: stream id -> (StreamKey, mode)
//!  device connects 61006/61007 (any shard) --route by cert CN / access key--> owner shard
//!     ingest: hello, 458 handshake, first media packet names the stream id -> pending preview
//!     first keyframe: StreamDescription -> Shard::publish (DESCRIBE completes), RTP -> hub;
//!     the time from the DESCRIBE to it is logged and shown in the device's presence
//!  a viewer arrives and the hub caches no GOP: keyframe request 189 (live previews)
//!  PLAY with a Range on a replay --Shard::seek--> StreamShard::seek (OnDemand)
//!     position = recording start (from its file name) + npt, whole seconds
//!     seek sequence += 1024; the ingest drops packets below it; hub GOP dropped, viewers wait
//!     replay seek 123 on the signalling link; the PLAY answers once the device agreed
//!  sweeper (1 s): previews unwatched for the linger time -> preview stop 4, connection closed;
//!     replays without a viewer for REPLAY_PAUSE_GRACE -> replay stop 7;
//!     previews the device never connected -> forgotten; connections silent for the media
//!     timeout -> closed (the device lost its network without a reset)
//!  a watched stream's connection breaks (reset, truncated TLS, silent; not a clean close):
//!     viewers keep their place for the grace; preview start again at once if the signalling
//!     link is up, else when it is back; the new connection continues the stream (same hub,
//!     SSRCs, next sequence numbers, timestamps on by the time in between)
//! ```
//!
//! The preview table lives on the owner shard, where the signalling session, the stream
//! connection and every viewer of the stream are, so it needs no lock.

mod conn;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rt::{MeshPort, Shutdown};
use signal::proto::body::{StreamMode, StreamType};
use tracing::{debug, info, warn};

use crate::device::{DeviceShard, DeviceStreams, PreviewRoute};
use crate::hub::{LocalNotify, StreamHub};
use crate::ingest::IngestPolicy;
use crate::rtsp::session::Refusal;
use crate::shard::{OnDemand, PreviewStarted, SeekStarted, Shard, ShardMsg};
use crate::stream_key::{StreamKey, StreamKind};

pub use conn::StreamHandoff;

/// How long a replay may go without a viewer before replay stop: a player seeks with PAUSE
/// then PLAY (its viewer is away in between), and a device cannot hold a replay paused.
pub const REPLAY_PAUSE_GRACE: Duration = Duration::from_secs(2);

/// The platform's step of the replay seek sequence (its first replay runs with 0).
const SEEK_SEQ_STEP: u32 = 1024;

/// Settings of the stream ports, shared by every shard.
#[derive(Clone)]
pub struct StreamSettings {
    /// 61006 listen address (mutual TLS).
    pub tls: SocketAddr,
    /// 61007 listen address (encryptTCP / TCP).
    pub tcp: SocketAddr,
    /// Mutual-TLS configuration of 61006 (CRL-checking verifier).
    pub mtls: Arc<rustls::ServerConfig>,
    /// Device keys that resolve the access key of a 61007 hello.
    pub device_keys: signal::secrets::DeviceKeyRing,
    /// Checks the platform's server does not make (HMAC, sequence, access key bound to UID).
    pub policy: IngestPolicy,
    /// Largest RTP payload of the streams (`[stream] rtp_max_payload`).
    pub rtp_max_payload: usize,
    /// The mode devices are asked for (the deployment's `stream_encrypt_mode`).
    pub mode: StreamMode,
    /// How long a DESCRIBE waits for the device's first keyframe after preview start.
    pub start_timeout: Duration,
    /// How long a stream nobody watches keeps flowing before preview stop.
    pub linger: Duration,
    /// A viewer of a known device with no link waits for an RTSP publisher instead of 503.
    pub wait_for_rtsp_publisher: bool,
    /// A device has this long to send its hello / finish TLS and its handshake.
    pub handshake_timeout: Duration,
    /// A stream connection delivering nothing for this long is closed as silent.
    pub media_timeout: Duration,
    /// How long viewers wait for a lost device stream to come back (the hubs' publisher
    /// grace); the device is asked for it again meanwhile.
    pub grace: Duration,
}

impl std::fmt::Debug for StreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSettings")
            .field("tls", &self.tls)
            .field("tcp", &self.tcp)
            .field("mode", &self.mode)
            .field("start_timeout", &self.start_timeout)
            .field("linger", &self.linger)
            .field("media_timeout", &self.media_timeout)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// The stream mode of the deployment's `stream_encrypt_mode`.
pub fn stream_mode(mode: signal::config::StreamEncryptMode) -> StreamMode {
    match mode {
        signal::config::StreamEncryptMode::Tls => StreamMode::Tls,
        signal::config::StreamEncryptMode::EncryptTcp => StreamMode::EncryptTcp,
        signal::config::StreamEncryptMode::Tcp => StreamMode::Tcp,
    }
}

/// Where each shard reports its bound (TLS, TCP) stream addresses, or why it could not bind.
pub type ReadySender = std::sync::mpsc::Sender<Result<(SocketAddr, SocketAddr), String>>;

/// What `server::start` hands every shard for its stream ports.
#[derive(Clone, Debug)]
pub struct StreamWiring {
    /// Settings shared by every shard.
    pub settings: StreamSettings,
    /// Where shards report that they listen.
    pub ready: ReadySender,
}

/// What a shard receives from other shards about stream connections.
#[derive(Debug)]
#[non_exhaustive]
pub enum StreamMsg {
    /// From shard 0: the addresses it bound; bind the same (SO_REUSEPORT) and accept.
    Listen {
        /// 61006.
        tls: SocketAddr,
        /// 61007.
        tcp: SocketAddr,
    },
    /// Stream connections of devices this shard owns.
    Connections(Vec<StreamHandoff>),
}

/// A preview asked of a device, by stream id (the request id of its preview start).
struct Preview {
    key: StreamKey,
    mode: StreamMode,
    /// When preview start was sent.
    started: Instant,
    /// When the viewer's DESCRIBE asked for the stream (before any wake-up).
    requested: Instant,
    /// The same, Unix ms, for the presence.
    requested_unix_ms: u64,
    /// The device was asleep and woken for this preview.
    woken: bool,
    /// Time from `requested` to the device's first keyframe.
    first_keyframe: Option<Duration>,
    /// The hub once the device's stream connection published.
    hub: Option<Rc<RefCell<StreamHub>>>,
    /// Last time the stream had a viewer (or was started).
    last_watched: Instant,
    /// Raised to close the stream connection (preview stopped).
    close: LocalNotify,
    /// The stream connection is attached.
    connected: bool,
    /// It has had a viewer.
    watched: bool,
    /// A replay's seek sequence: 0 from replay start, [`SEEK_SEQ_STEP`] more per seek.
    seek_seq: u32,
    /// The seek sequence the stream connection's ingest accepts from (shared with it).
    seek_floor: Rc<Cell<u32>>,
    /// When the stream connection last delivered bytes (set by the connection, read by the
    /// sweeper).
    last_media: Rc<Cell<Instant>>,
    /// The sweeper closed the connection because it went silent.
    silent: bool,
    /// This preview resumes a stream whose connection was lost.
    resume: Option<Resume>,
}

/// Where a device stream whose connection was lost left off, handed to the preview that resumes
/// it.
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// The RTP state the next connection continues.
    continuation: Option<crate::ingest::Continuation>,
    /// When the lost connection last delivered bytes.
    last_media: Instant,
    /// When it ended.
    lost: Instant,
}

/// What a stream connection gets from its preview ([`StreamShard::attach`]).
struct Attachment {
    key: StreamKey,
    mode: StreamMode,
    close: LocalNotify,
    seek_floor: Rc<Cell<u32>>,
    /// Where the connection records when bytes arrive.
    last_media: Rc<Cell<Instant>>,
    /// The stream it continues, if it resumes one.
    resume: Option<Resume>,
}

/// Counters of one shard's stream connections (media, previews and TLS failures are counted
/// in the shard's [`signal::metrics::MediaStats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Connections accepted on 61006.
    pub accepted_tls: u64,
    /// Connections accepted on 61007.
    pub accepted_tcp: u64,
    /// Connections handed to their owner shard.
    pub handed_off: u64,
    /// Connections closed because no hello arrived in time.
    pub hello_incomplete: u64,
    /// Connections whose stream id names no preview of their device.
    pub unknown_previews: u64,
    /// Connections the ingest closed (rejections are in the ingest counters, logged).
    pub ingest_failures: u64,
    /// Connections closed for delivering nothing for the media timeout.
    pub silent: u64,
}

/// The stream side of one shard. Lives in an `Rc` on its shard.
pub struct StreamShard {
    /// This shard's index.
    pub id: usize,
    /// Number of shards.
    pub count: usize,
    settings: StreamSettings,
    shutdown: Shutdown,
    shard: Rc<Shard>,
    devices: Option<Rc<DeviceShard>>,
    previews: RefCell<HashMap<u32, Preview>>,
    /// Streams whose sleeping device is being woken (a second DESCRIBE waits for the first).
    waking: RefCell<HashSet<StreamKey>>,
    /// Bound (TLS, TCP) ports, the ones preview start names.
    ports: Cell<Option<(u16, u16)>>,
    outbox: RefCell<Vec<Vec<StreamHandoff>>>,
    outbox_notify: LocalNotify,
    stats: Cell<StreamStats>,
    ready: RefCell<Option<ReadySender>>,
}

impl std::fmt::Debug for StreamShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamShard")
            .field("id", &self.id)
            .field("previews", &self.previews.borrow().len())
            .finish_non_exhaustive()
    }
}

fn stream_type(kind: StreamKind) -> StreamType {
    match kind {
        StreamKind::Main => StreamType::Main,
        StreamKind::Sub => StreamType::Sub,
        StreamKind::Extern => StreamType::Extern,
        // Recordings are of the main stream.
        StreamKind::Replay => StreamType::Main,
    }
}

impl StreamShard {
    /// Starts the stream side of a shard: the sweeper, the handoff flusher, (on shard 0) the
    /// listeners, and registers itself as the shard's on-demand starter.
    pub fn start(
        wiring: &StreamWiring,
        shard: Rc<Shard>,
        devices: Option<Rc<DeviceShard>>,
        port: Rc<MeshPort<ShardMsg>>,
    ) -> Rc<StreamShard> {
        let this = Rc::new(StreamShard {
            id: shard.id,
            count: shard.count,
            settings: wiring.settings.clone(),
            shutdown: shard.shutdown.clone(),
            devices,
            previews: RefCell::new(HashMap::new()),
            waking: RefCell::new(HashSet::new()),
            ports: Cell::new(None),
            outbox: RefCell::new((0..shard.count).map(|_| Vec::new()).collect()),
            outbox_notify: LocalNotify::new(),
            stats: Cell::new(StreamStats::default()),
            ready: RefCell::new(None),
            shard: shard.clone(),
        });
        let on_demand: Rc<dyn crate::shard::OnDemand> = this.clone();
        shard.set_on_demand(&on_demand);
        if let Some(devices) = &this.devices {
            let streams: Rc<dyn DeviceStreams> = this.clone();
            devices.set_streams(&streams);
        }
        let sweeper = {
            let weak = Rc::downgrade(&this);
            rt::Sweeper::every(Duration::from_secs(1), move |now| {
                if let Some(this) = weak.upgrade() {
                    this.sweep(now);
                }
            })
        };
        let shutdown = this.shutdown.clone();
        rt::spawn_detached(async move {
            shutdown.wait().await;
            sweeper.stop();
        });
        rt::spawn_detached(conn::flush_handoffs(this.clone(), port.clone()));
        if this.id == 0 {
            let ready = wiring.ready.clone();
            let this = this.clone();
            rt::spawn_detached(async move {
                let (tls, tcp) = (this.settings.tls, this.settings.tcp);
                match conn::spawn_listeners(&this, tls, tcp) {
                    Ok((tls, tcp)) => {
                        for to in 1..this.count {
                            let msg = ShardMsg::Stream(StreamMsg::Listen { tls, tcp });
                            if let Err(e) = port.send_to(to, msg).await {
                                warn!("shard 0 could not tell shard {to} the stream ports: {e}");
                            }
                        }
                        info!(%tls, %tcp, "device stream ports listening");
                        let _ = ready.send(Ok((tls, tcp)));
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        this.shutdown.trigger();
                    }
                }
            });
        } else {
            *this.ready.borrow_mut() = Some(wiring.ready.clone());
        }
        this
    }

    /// Handles a message from another shard.
    pub fn on_message(self: &Rc<Self>, msg: StreamMsg) {
        match msg {
            StreamMsg::Listen { tls, tcp } => {
                let result = conn::spawn_listeners(self, tls, tcp);
                if let Some(ready) = self.ready.borrow_mut().take() {
                    let _ = ready.send(result.map_err(|e| format!("shard {}: {e}", self.id)));
                }
            }
            StreamMsg::Connections(handoffs) => {
                for handoff in handoffs {
                    conn::serve_handoff(self.clone(), handoff);
                }
            }
        }
    }

    /// The shard's counters.
    pub fn stats(&self) -> StreamStats {
        self.stats.get()
    }

    fn count(&self, update: impl FnOnce(&mut StreamStats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Registers a preview the device was asked for (also what tests use to start one without
    /// signalling). A preview for the same stream already pending or live is replaced.
    pub fn add_pending_preview(&self, stream_id: u32, key: StreamKey, mode: StreamMode) {
        self.insert_preview(stream_id, key, mode, Instant::now(), false, None);
    }

    fn insert_preview(
        &self,
        stream_id: u32,
        key: StreamKey,
        mode: StreamMode,
        requested: Instant,
        woken: bool,
        resume: Option<Resume>,
    ) {
        let now = Instant::now();
        let ago = now.saturating_duration_since(requested);
        let requested_unix_ms = std::time::SystemTime::now()
            .checked_sub(ago)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.previews.borrow_mut().insert(
            stream_id,
            Preview {
                key,
                mode,
                started: now,
                requested,
                requested_unix_ms,
                woken,
                first_keyframe: None,
                hub: None,
                last_watched: now,
                close: LocalNotify::new(),
                connected: false,
                watched: false,
                seek_seq: 0,
                seek_floor: Rc::new(Cell::new(0)),
                last_media: Rc::new(Cell::new(now)),
                silent: false,
                resume,
            },
        );
    }

    /// A stream connection of `uid` names `stream_id`: the preview's stream, the mode the
    /// device was asked for, the notify that closes the connection the replay's seek floor,
    /// and the stream it resumes, if any;
    /// `None` when no such preview of that device exists.
    fn attach(&self, stream_id: u32, uid: &str) -> Option<Attachment> {
        let mut previews = self.previews.borrow_mut();
        let preview = previews.get_mut(&stream_id)?;
        if preview.key.uid() != uid || preview.connected {
            return None;
        }
        preview.connected = true;
        preview.last_media.set(Instant::now());
        debug!(shard = self.id, stream_id, stream = %preview.key, mode = ?preview.mode, resumes = preview.resume.is_some(), "stream connection attached");
        Some(Attachment {
            key: preview.key.clone(),
            mode: preview.mode,
            close: preview.close.clone(),
            seek_floor: preview.seek_floor.clone(),
            last_media: preview.last_media.clone(),
            resume: preview.resume,
        })
    }

    /// Whether the sweeper closed the connection of `stream_id` for silence.
    fn is_silent(&self, stream_id: u32) -> bool {
        self.previews
            .borrow()
            .get(&stream_id)
            .is_some_and(|p| p.silent)
    }

    /// The stream connection of `stream_id` published into `hub`: its first keyframe arrived.
    fn published(&self, stream_id: u32, hub: Rc<RefCell<StreamHub>>) {
        let now = Instant::now();
        if let Some(preview) = self.previews.borrow_mut().get_mut(&stream_id) {
            preview.hub = Some(hub);
            preview.last_watched = now;
            let waited = now.saturating_duration_since(preview.requested);
            preview.first_keyframe = Some(waited);
            match &preview.resume {
                Some(resume) => {
                    self.shard.count_media(|m| m.previews_resumed += 1);
                    info!(
                        shard = self.id,
                        stream = %preview.key,
                        stream_id,
                        media_gap_ms = now.saturating_duration_since(resume.last_media).as_millis() as u64,
                        "device stream resumed for its viewers"
                    );
                }
                None => info!(
                    shard = self.id,
                    stream = %preview.key,
                    stream_id,
                    woken = preview.woken,
                    first_keyframe_ms = waited.as_millis() as u64,
                    "first keyframe from the device"
                ),
            }
        }
    }

    /// The stream connection of `stream_id` ended. A preview still in the table ended without
    /// preview stop: the connection broke (reset, truncated TLS, refused by the ingest), went
    /// silent, or the device closed it cleanly (`ended_by_device`: TLS close_notify, or EOF on
    /// 61007). If it was published and someone watches, it is resumed for them
    /// ([`StreamShard::resume`]); a clean close while the device's signalling link is up is the
    /// device's decision, and is resumed only if the device comes back with a new signalling
    /// link within the grace (it restarted its session). Otherwise the preview is over: its
    /// viewers are closed after the grace, and a new DESCRIBE starts another.
    fn detached(
        self: &Rc<Self>,
        stream_id: u32,
        continuation: Option<crate::ingest::Continuation>,
        ended_by_device: bool,
    ) {
        let Some(preview) = self.previews.borrow_mut().remove(&stream_id) else {
            return;
        };
        // Never published: the DESCRIBE waiting for it times out. A replay would start over
        // from its beginning: its viewer asks again.
        if preview.hub.is_none() || preview.key.file().is_some() {
            return;
        }
        if self.shard.audience(&preview.key) == 0 {
            return;
        }
        let device_decided = ended_by_device
            && !preview.silent
            && self
                .devices
                .as_ref()
                .is_some_and(|d| d.is_signalling_online(preview.key.uid()));
        if device_decided {
            debug!(shard = self.id, stream = %preview.key, stream_id, "the device ended its stream: resumed only after a new signalling link");
        }
        if preview.silent {
            // The device may still think it is streaming: end the old preview on its side.
            self.stop_preview(stream_id, &preview.key);
        }
        let resume = Resume {
            continuation,
            last_media: preview.last_media.get(),
            lost: Instant::now(),
        };
        rt::spawn_detached(self.clone().resume(preview.key, resume, device_decided));
    }

    /// The port preview start names for `mode`.
    fn port_for(&self, mode: StreamMode) -> Option<u16> {
        let (tls, tcp) = self.ports.get()?;
        Some(match mode {
            StreamMode::Tls => tls,
            _ => tcp,
        })
    }

    /// Sends preview stop (replay stop for a recording) for a preview that ends (best effort:
    /// the device may be gone).
    fn stop_preview(&self, stream_id: u32, key: &StreamKey) {
        if let Some(devices) = &self.devices {
            let channel = u32::from(key.channel());
            let sent = match key.file() {
                Some(file) => devices.replay_stop(key.uid(), channel, file, stream_id),
                None => devices.preview_stop(key.uid(), channel, stream_id),
            };
            if let Err(e) = sent {
                debug!(shard = self.id, stream = %key, "preview stop not sent: {e}");
            }
        }
    }

    /// Stops previews nobody watched for the linger time; forgets previews the device never
    /// connected for.
    fn sweep(&self, now: Instant) {
        let linger = self.settings.linger;
        let abandon = self.settings.start_timeout + self.settings.handshake_timeout;
        let media_timeout = self.settings.media_timeout;
        let mut ended = Vec::new();
        self.previews.borrow_mut().retain(|&stream_id, preview| {
            let quiet = now.saturating_duration_since(preview.last_media.get());
            if preview.connected && !preview.silent && quiet >= media_timeout {
                warn!(shard = self.id, stream = %preview.key, stream_id, quiet_ms = quiet.as_millis() as u64, "device stream silent: connection closed");
                preview.silent = true;
                self.count(|s| s.silent += 1);
                preview.close.notify();
                return true;
            }
            match &preview.hub {
                Some(hub) => {
                    if hub.borrow().viewer_count() > 0 {
                        preview.last_watched = now;
                        preview.watched = true;
                        return true;
                    }
                    // A replay is one viewer's: it stops once its viewers are gone (beyond the
                    // PAUSE of a seek).
                    let replay_done = preview.watched
                        && preview.key.file().is_some()
                        && now.saturating_duration_since(preview.last_watched)
                            >= REPLAY_PAUSE_GRACE;
                    if !replay_done && now.saturating_duration_since(preview.last_watched) < linger
                    {
                        return true;
                    }
                    info!(shard = self.id, stream = %preview.key, stream_id, "no viewer for the linger time: preview stop");
                    // Ended now, not when the device's connection closes: that would leave the
                    // hub waiting the grace time for a publisher that is not coming back, and
                    // a viewer arriving meanwhile would get its description, no preview start
                    // and, at the grace time's end, a closed connection.
                    hub.borrow_mut().end_stream();
                    preview.close.notify();
                    ended.push((stream_id, preview.key.clone(), true));
                    false
                }
                None if !preview.connected
                    && now.saturating_duration_since(preview.started) > abandon =>
                {
                    debug!(shard = self.id, stream = %preview.key, stream_id, "device never connected its stream");
                    ended.push((stream_id, preview.key.clone(), false));
                    false
                }
                None => true,
            }
        });
        for (stream_id, key, stopped) in ended {
            self.shard.count_media(|m| {
                if stopped {
                    m.previews_stopped += 1
                } else {
                    m.previews_abandoned += 1
                }
            });
            self.stop_preview(stream_id, &key);
        }
    }
}

/// Removes a stream from [`StreamShard::waking`] when its wake-up ends, however it ends.
struct Waking {
    shard: Rc<StreamShard>,
    key: StreamKey,
}

impl Drop for Waking {
    fn drop(&mut self) {
        self.shard.waking.borrow_mut().remove(&self.key);
    }
}

impl StreamShard {
    /// Sends preview start for `stream` and registers the pending preview; the future resolves
    /// when the device accepted or refused.
    fn send_preview_start(
        self: Rc<Self>,
        stream: StreamKey,
        requested: Instant,
        woken: bool,
        resume: Option<Resume>,
    ) -> PreviewStarted {
        let ready = |result| -> PreviewStarted { Box::pin(std::future::ready(result)) };
        let Some(devices) = self.devices.clone() else {
            return ready(Err(Refusal::DeviceOffline));
        };
        let mode = self.settings.mode;
        let Some(port) = self.port_for(mode) else {
            return ready(Err(Refusal::DeviceRefused));
        };
        let channel = u32::from(stream.channel());
        let sent = match stream.file() {
            Some(file) => devices.replay_start(stream.uid(), channel, file, mode, port),
            None => devices.preview_start(
                stream.uid(),
                channel,
                stream_type(stream.stream()),
                mode,
                port,
            ),
        };
        let (stream_id, reply) = match sent {
            Ok(sent) => sent,
            Err(e) => {
                warn!(shard = self.id, %stream, "preview start not sent: {e}");
                self.shard.count_media(|m| m.previews_refused += 1);
                return ready(Err(Refusal::DeviceOffline));
            }
        };
        self.shard.count_media(|m| m.previews_started += 1);
        let what = if stream.file().is_some() {
            "replay start"
        } else {
            "preview start"
        };
        info!(shard = self.id, %stream, stream_id, mode = mode.as_str(), port, woken, resumes = resume.is_some(), "{what}");
        self.insert_preview(stream_id, stream.clone(), mode, requested, woken, resume);
        Box::pin(async move {
            let refused = match reply.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_owned(),
            };
            warn!(shard = self.id, %stream, stream_id, "device refused preview start: {refused}");
            self.shard.count_media(|m| m.previews_refused += 1);
            self.previews.borrow_mut().remove(&stream_id);
            Err(Refusal::DeviceRefused)
        })
    }

    /// Gets a watched stream whose connection was lost going again for its viewers, within the
    /// hubs' publisher grace: preview start at once while the device's signalling link is up
    /// (a new stream connection), otherwise as soon as a signalling link of the device is back
    /// online; with `after_new_link` (the device closed the stream itself) only once a new
    /// signalling link comes online. Gives up when the grace is over (the hub ends the stream
    /// and closes the viewers), when nobody watches any more, or when the stream is live again
    /// (a new DESCRIBE got there first). A device that refuses is asked again only on its next
    /// signalling link.
    async fn resume(self: Rc<Self>, key: StreamKey, resume: Resume, after_new_link: bool) {
        let Some(devices) = self.devices.clone() else {
            return;
        };
        let uid = key.uid().to_owned();
        let deadline = resume.lost + self.settings.grace;
        let online = devices.awake_notify(&uid);
        let mut wait_for_link = after_new_link;
        let mut counted = false;
        let mut attempt = 0u32;
        loop {
            let waiting = matches!(
                self.shard.publisher_state(&key),
                Some(crate::hub::PublisherState::Waiting { .. })
            );
            if !waiting || self.shard.audience(&key) == 0 {
                debug!(shard = self.id, stream = %key, "stream resumption not needed any more");
                return;
            }
            if self.previews.borrow().values().any(|p| p.key == key) {
                // A preview (resumed or asked by a new viewer) is already on its way.
                return;
            }
            // A clean close waits for a new link before it counts as an interruption.
            if !wait_for_link && !counted {
                counted = true;
                self.shard.count_media(|m| m.previews_interrupted += 1);
            }
            let ready = devices.preview_route(&uid) == PreviewRoute::Ready;
            if !wait_for_link && ready {
                attempt += 1;
                info!(shard = self.id, stream = %key, attempt, "device stream lost while watched: preview start again");
                // Only a signalling link that comes online from here on counts as new.
                online.take_notification();
                let started = self.clone().send_preview_start(
                    key.clone(),
                    Instant::now(),
                    false,
                    Some(resume),
                );
                if started.await.is_ok() {
                    // The device agreed, but may lose its network before its stream connects
                    // and forget the preview with the link it came on. A new signalling link
                    // while the preview still waits for its stream means asking again there.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if rt::timer::timeout(left, online.notified()).await.is_err()
                        || !self.forget_unconnected_preview(&key)
                    {
                        return;
                    }
                    info!(shard = self.id, stream = %key, "device back on a new signalling link before its stream connected");
                    continue;
                }
            } else if !wait_for_link && attempt == 0 {
                info!(shard = self.id, stream = %key, grace_ms = self.settings.grace.as_millis() as u64, "device stream lost while watched, device offline: waiting for its signalling link");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || rt::timer::timeout(left, online.notified()).await.is_err() {
                info!(shard = self.id, stream = %key, "device did not come back within the grace: viewers will be closed");
                return;
            }
            wait_for_link = false;
        }
    }

    /// Drops the preview of `key` that is still waiting for its stream connection; false when
    /// there is none (it connected, failed or timed out).
    fn forget_unconnected_preview(&self, key: &StreamKey) -> bool {
        let mut previews = self.previews.borrow_mut();
        let before = previews.len();
        previews.retain(|_, p| p.key != *key || p.connected);
        previews.len() != before
    }

    /// Wakes the sleeping battery device of `stream` with 460 on its keep-alive link and
    /// waits until its signalling link is online and awake (bounded by the caller's start
    /// timeout).
    async fn wake(&self, stream: &StreamKey) -> Result<(), Refusal> {
        let Some(devices) = self.devices.clone() else {
            return Err(Refusal::DeviceOffline);
        };
        let uid = stream.uid().to_owned();
        let awake = devices.awake_notify(&uid);
        let reply = devices.wake_up(&uid).map_err(|e| {
            warn!(shard = self.id, %stream, "wake-up not sent: {e}");
            Refusal::DeviceOffline
        })?;
        info!(shard = self.id, %stream, "battery device asleep: wake-up 460 on its keep-alive link");
        // The 460 reply and the new signalling link may come in either order.
        let refused = Rc::new(Cell::new(false));
        {
            let (devices, awake, refused, uid) =
                (devices.clone(), awake.clone(), refused.clone(), uid.clone());
            rt::spawn_detached(async move {
                match reply.await {
                    Ok(Ok(_)) => devices.mark_awake(&uid),
                    Ok(Err(e)) => {
                        warn!(uid, "device refused the wake-up: {e}");
                        refused.set(true);
                        awake.notify();
                    }
                    Err(_) => {}
                }
            });
        }
        loop {
            if devices.preview_route(&uid) == PreviewRoute::Ready {
                return Ok(());
            }
            if refused.get() {
                return Err(Refusal::DeviceRefused);
            }
            awake.notified().await;
        }
    }
}

impl DeviceStreams for StreamShard {
    fn streams_of(&self, uid: &str) -> Vec<signal::devices::StreamPresence> {
        let previews = self.previews.borrow();
        let mut streams: Vec<_> = previews
            .values()
            .filter(|p| p.key.uid() == uid)
            .map(|p| {
                let (viewers, bytes) = p.hub.as_ref().map_or((0, 0), |hub| {
                    let hub = hub.borrow();
                    (hub.viewer_count(), hub.stats().bytes_in)
                });
                signal::devices::StreamPresence {
                    channel: u32::from(p.key.channel()),
                    stream_type: match p.key.file() {
                        Some(_) => StreamKind::Replay.as_str(),
                        None => stream_type(p.key.stream()).as_str(),
                    },
                    mode: p.mode.as_str(),
                    state: if p.hub.is_some() { "live" } else { "starting" },
                    since: p.requested_unix_ms,
                    viewers,
                    bytes,
                    first_keyframe_ms: p
                        .first_keyframe
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    woken: p.woken,
                }
            })
            .collect();
        streams.sort_by(|a, b| (a.channel, a.stream_type).cmp(&(b.channel, b.stream_type)));
        streams
    }

    fn close_streams_of(&self, uid: &str) -> usize {
        let mut closed = 0;
        self.previews.borrow_mut().retain(|&stream_id, preview| {
            if preview.key.uid() != uid {
                return true;
            }
            info!(shard = self.id, stream = %preview.key, stream_id, "device closed by the server: stream connection closed");
            preview.close.notify();
            closed += 1;
            false
        });
        closed
    }
}

impl OnDemand for StreamShard {
    fn start(self: Rc<Self>, stream: &StreamKey) -> Option<PreviewStarted> {
        let devices = self.devices.as_ref()?;
        let route = devices.preview_route(stream.uid());
        match route {
            PreviewRoute::NotADevice => return None,
            PreviewRoute::Offline if self.settings.wait_for_rtsp_publisher => return None,
            PreviewRoute::Offline => {
                info!(shard = self.id, %stream, "device offline: viewer refused");
                self.shard.count_media(|m| m.previews_refused += 1);
                return Some(Box::pin(std::future::ready(Err(Refusal::DeviceOffline))));
            }
            PreviewRoute::Ready | PreviewRoute::Asleep => {}
        }
        let already = self.waking.borrow().contains(stream)
            || self.previews.borrow().values().any(|p| &p.key == stream);
        if already {
            // Another DESCRIBE started it: wait for the same description.
            return Some(Box::pin(std::future::ready(Ok(()))));
        }
        let requested = Instant::now();
        if route == PreviewRoute::Ready {
            return Some(self.send_preview_start(stream.clone(), requested, false, None));
        }
        self.waking.borrow_mut().insert(stream.clone());
        let waking = Waking {
            shard: self.clone(),
            key: stream.clone(),
        };
        Some(Box::pin(async move {
            let shard = waking.shard.clone();
            shard.wake(&waking.key).await?;
            let started = shard.send_preview_start(waking.key.clone(), requested, true, None);
            drop(waking);
            started.await
        }))
    }

    fn start_timeout(&self) -> Duration {
        self.settings.start_timeout
    }

    fn seek(self: Rc<Self>, stream: &StreamKey, start: Duration) -> Option<SeekStarted> {
        let file = stream.file()?;
        let ready = |result| -> Option<SeekStarted> { Some(Box::pin(std::future::ready(result))) };
        let devices = self.devices.clone()?;
        let mut previews = self.previews.borrow_mut();
        let Some((&stream_id, preview)) = previews
            .iter_mut()
            .find(|(_, p)| &p.key == stream && p.hub.is_some())
        else {
            // The replay is over (stopped, or its device hung up): nothing to move.
            return ready(Err(Refusal::StreamEnded));
        };
        let Some(span) = signal::proto::body::RecordingSpan::from_file_name(file) else {
            warn!(shard = self.id, %stream, "recording's start unknown (file name without the camera's time stamps): not seekable");
            return ready(Err(Refusal::NotSeekable));
        };
        // The device seeks to whole seconds of its clock.
        let offset = u32::try_from(start.as_secs()).unwrap_or(u32::MAX);
        if offset >= span.duration_secs() {
            debug!(shard = self.id, %stream, ?start, duration_secs = span.duration_secs(), "seek beyond the recording's end");
            return ready(Err(Refusal::RangeBeyondEnd));
        }
        let time = span.start.plus_seconds(offset);
        let previous_floor = preview.seek_floor.get();
        let seek_seq = preview.seek_seq.wrapping_add(SEEK_SEQ_STEP);
        let sent = devices.replay_seek(
            stream.uid(),
            u32::from(stream.channel()),
            stream_id,
            seek_seq,
            time,
        );
        let reply = match sent {
            Ok(reply) => reply,
            Err(e) => {
                warn!(shard = self.id, %stream, "replay seek not sent: {e}");
                return ready(Err(Refusal::DeviceOffline));
            }
        };
        // From here the old position is stale: the ingest drops what is still in flight of it,
        // and the hub's viewers (and the GOP cache) wait for the new position's keyframe.
        preview.seek_seq = seek_seq;
        preview.seek_floor.set(seek_seq);
        preview.last_watched = Instant::now();
        if let Some(hub) = &preview.hub {
            hub.borrow_mut().restart_at_next_keyframe();
        }
        let seek_floor = preview.seek_floor.clone();
        drop(previews);
        info!(shard = self.id, %stream, stream_id, seek_seq, ?start, at = %time.format(), "replay seek");
        let (shard, stream) = (self.clone(), stream.clone());
        Some(Box::pin(async move {
            let refused = match reply.await {
                Ok(Ok(_)) => return Ok(Duration::from_secs(u64::from(offset))),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_owned(),
            };
            warn!(shard = shard.id, %stream, stream_id, "device refused the replay seek: {refused}");
            // It goes on where it was; its packets carry the old sequence.
            if seek_floor.get() == seek_seq {
                seek_floor.set(previous_floor);
            }
            Err(Refusal::DeviceRefusedSeek)
        }))
    }

    fn viewer_without_gop(&self, stream: &StreamKey) {
        // A recording's replay has no live keyframe to ask for: its next one comes with the
        // replay (or the seek) itself.
        let live = stream.file().is_none()
            && self
                .previews
                .borrow()
                .values()
                .any(|p| &p.key == stream && p.hub.is_some());
        let Some(devices) = self.devices.as_ref().filter(|_| live) else {
            return;
        };
        let (channel, kind) = (u32::from(stream.channel()), stream_type(stream.stream()));
        match devices.request_keyframe(stream.uid(), channel, kind) {
            Ok(()) => {
                debug!(shard = self.id, %stream, "new viewer, no GOP cached: keyframe request")
            }
            Err(e) => debug!(shard = self.id, %stream, "keyframe request not sent: {e}"),
        }
    }
}
