//! One simulated camera over real sockets: its keep-alive link (61003, encryptTCP) and signalling
//! link (61005, mutual TLS), heartbeats on both, replies to capabilities (199), preview start (3,
//! then a stream connection in the mode the server asked), preview stop (4) and keyframe
//! requests (189), and alarms (33) at the configured rate. The bytes come from the sans-IO
//! devices ([`SimDevice`], [`StreamDevice`]); this module only moves them and keeps time.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use signal::proto::body::{
    Alarm, BodyMessage, Capabilities, ChannelCapabilities, Handshake, Heartbeat, PreviewStart,
    PreviewStartReply, PreviewStop, StreamMode, VideoCodecId,
};
use signal::proto::core_packet::{cmd, CorePacket, CODE_OK};
use signal::session::sim::SimDevice;

use super::provision::Identity;
use super::{FleetShared, Totals};
use crate::device::synthetic::VideoStream;
use crate::device::{preview_start_reply, EncryptPolicy, StreamDevice};
use crate::sei::unix_now_us;

/// How long a peer may stay silent before a link counts as dead (heartbeats are answered).
const SILENCE_LIMIT: Duration = Duration::from_secs(65);
/// Connect, TLS and handshake-reply timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a device's session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{link}: connect: {source}")]
    Connect {
        link: &'static str,
        source: std::io::Error,
    },
    #[error("{link}: TLS: {source}")]
    Tls {
        link: &'static str,
        source: rt::TlsError,
    },
    #[error("{link}: {source}")]
    Io {
        link: &'static str,
        source: std::io::Error,
    },
    #[error("{link}: server closed the link")]
    Closed { link: &'static str },
    #[error("{link}: no reply within {0:?}", HANDSHAKE_TIMEOUT)]
    Timeout { link: &'static str },
    #[error("{link}: server silent for {0:?}", SILENCE_LIMIT)]
    Silent { link: &'static str },
    #[error("{link}: hello refused with code {code}")]
    Refused { link: &'static str, code: u16 },
    #[error("{link}: handshake answered with code {code}")]
    HandshakeRefused { link: &'static str, code: u32 },
    #[error("{link}: {reason}")]
    Protocol { link: &'static str, reason: String },
    #[error("run ended")]
    Shutdown,
}

impl SessionError {
    /// A short label for the report's error counts.
    pub fn kind(&self) -> String {
        match self {
            SessionError::Connect { link, source } => format!("{link}: connect {}", source.kind()),
            SessionError::Io { link, source } => format!("{link}: {}", source.kind()),
            SessionError::Tls { link, .. } => format!("{link}: TLS"),
            SessionError::Closed { link } => format!("{link}: closed"),
            SessionError::Timeout { link } => format!("{link}: timeout"),
            SessionError::Silent { link } => format!("{link}: silent"),
            SessionError::Refused { link, code } => format!("{link}: hello {code}"),
            SessionError::HandshakeRefused { link, code } => format!("{link}: handshake {code}"),
            SessionError::Protocol { link, .. } => format!("{link}: protocol"),
            SessionError::Shutdown => "shutdown".into(),
        }
    }

    /// The server does not accept this identity (re-provisioning may help).
    pub fn identity_refused(&self) -> bool {
        matches!(
            self,
            SessionError::Tls { .. }
                | SessionError::Refused { .. }
                | SessionError::HandshakeRefused { .. }
        )
    }
}

fn handshake_body(uid: &str) -> Handshake {
    Handshake {
        uid: uid.to_owned(),
        family: None,
        model: Some("RLC-810A".into()),
        firmware: Some("v3.1.0.956".into()),
        network_type: Some("wired".into()),
        carrier: None,
    }
}

/// A link's bytes: the socket and the sans-IO device reading them.
struct Link<S> {
    name: &'static str,
    stream: S,
    sim: SimDevice,
    buf: Vec<u8>,
    next_request_id: u32,
    last_rx: Instant,
    /// Packets that arrived with the handshake reply (a server may send a request right
    /// behind it, as the relay does with preview start for a stream it resumes).
    pending: Vec<CorePacket>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    fn new(name: &'static str, stream: S, sim: SimDevice) -> Self {
        Link {
            name,
            stream,
            sim,
            buf: vec![0; 8 * 1024],
            next_request_id: 1,
            last_rx: Instant::now(),
            pending: Vec::new(),
        }
    }

    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    async fn send(&mut self, bytes: &[u8], totals: &Totals) -> Result<(), SessionError> {
        let link = self.name;
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| SessionError::Io { link, source })?;
        self.stream
            .flush()
            .await
            .map_err(|source| SessionError::Io { link, source })?;
        totals
            .control_bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads once; the packets completed (possibly none). Packets kept from the handshake
    /// come first, without a read.
    async fn receive(&mut self) -> Result<Vec<CorePacket>, SessionError> {
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let link = self.name;
        let n = self
            .stream
            .read(&mut self.buf)
            .await
            .map_err(|source| SessionError::Io { link, source })?;
        if n == 0 {
            return Err(SessionError::Closed { link });
        }
        self.last_rx = Instant::now();
        self.sim
            .receive(&self.buf[..n])
            .map_err(|e| SessionError::Protocol {
                link,
                reason: e.to_string(),
            })
    }

    /// Waits for the server's encryptTCP hello (keep-alive) and checks its code.
    async fn await_hello(&mut self) -> Result<(), SessionError> {
        let link = self.name;
        let wait = async {
            loop {
                match self.sim.hello_code() {
                    Some(200) => return Ok(()),
                    Some(code) => return Err(SessionError::Refused { link, code }),
                    None => {
                        self.receive().await?;
                    }
                }
            }
        };
        rt::timer::timeout(HANDSHAKE_TIMEOUT, wait)
            .await
            .map_err(|_| SessionError::Timeout { link })?
    }

    /// Sends the handshake and waits for its reply.
    async fn handshake(&mut self, uid: &str, totals: &Totals) -> Result<(), SessionError> {
        let id = self.request_id();
        let bytes = self.sim.handshake(&handshake_body(uid), id);
        self.send(&bytes, totals).await?;
        let link = self.name;
        let wait = async {
            loop {
                if let Some(code) = self.sim.hello_code().filter(|c| *c != 200) {
                    return Err(SessionError::Refused { link, code });
                }
                let mut packets = self.receive().await?.into_iter();
                while let Some(packet) = packets.next() {
                    if packet.header.command == cmd::HANDSHAKE {
                        self.pending.extend(packets);
                        return match packet.header.response_code {
                            CODE_OK => Ok(()),
                            code => Err(SessionError::HandshakeRefused { link, code }),
                        };
                    }
                }
            }
        };
        rt::timer::timeout(HANDSHAKE_TIMEOUT, wait)
            .await
            .map_err(|_| SessionError::Timeout { link })?
    }
}

async fn connect(
    link: &'static str,
    source: Option<SocketAddr>,
    remote: SocketAddr,
) -> Result<rt::TcpStream, SessionError> {
    let connecting = async {
        match source {
            Some(local) => rt::TcpStream::connect_from(local, remote).await,
            None => rt::TcpStream::connect(remote).await,
        }
    };
    let stream = rt::timer::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| SessionError::Timeout { link })?
        .map_err(|source| SessionError::Connect { link, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn tls(
    link: &'static str,
    tcp: rt::TcpStream,
    identity: &Identity,
    config: Arc<rustls::ClientConfig>,
) -> Result<rt::TlsStream<rustls::ClientConnection>, SessionError> {
    let name = identity.server_name().map_err(|e| SessionError::Protocol {
        link,
        reason: e.to_string(),
    })?;
    rt::tls::connect(tcp, config, name, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|source| SessionError::Tls { link, source })
}

/// A stream the server asked for, and what the signalling link tells it.
#[derive(Debug, Default)]
struct StreamControl {
    stop: Cell<bool>,
    keyframe: Cell<bool>,
}

/// The streams a device is sending, by stream id.
type Streams = Rc<RefCell<Vec<(u32, Rc<StreamControl>)>>>;

/// The camera online: both links open, handshaken and served until one fails. `on_online`
/// runs once both links are up.
pub async fn run_session(
    shared: &FleetShared,
    index: usize,
    identity: &Identity,
    tls_config: Arc<rustls::ClientConfig>,
    on_online: impl FnOnce(),
) -> Result<std::convert::Infallible, SessionError> {
    let totals = &shared.totals;
    let source = shared.config.source_address(index);
    let ip = shared.config.device_ip;
    let uid = identity.uid.as_str();

    let tcp = connect(
        "signalling",
        source,
        SocketAddr::new(
            ip,
            shared
                .config
                .signaling_port
                .unwrap_or(identity.signaling_port),
        ),
    )
    .await?;
    let stream = tls("signalling", tcp, identity, tls_config.clone()).await?;
    let mut signalling = Link::new("signalling", stream, SimDevice::signalling());
    signalling.handshake(uid, totals).await?;
    totals.handshakes.fetch_add(1, Ordering::Relaxed);

    let tcp = connect(
        "keep-alive",
        source,
        SocketAddr::new(
            ip,
            shared
                .config
                .keepalive_port
                .unwrap_or(identity.keepalive_port),
        ),
    )
    .await?;
    let (sim, hello) = SimDevice::keep_alive(&identity.access_keys(), rand::random());
    let mut keepalive = Link::new("keep-alive", tcp, sim);
    keepalive.send(&hello, totals).await?;
    keepalive.await_hello().await?;
    keepalive.handshake(uid, totals).await?;
    totals.handshakes.fetch_add(1, Ordering::Relaxed);
    on_online();

    let streams: Streams = Rc::default();
    let keepalive_loop = serve_keepalive(&mut keepalive, shared);
    let signalling_loop = serve_signalling(
        &mut signalling,
        shared,
        index,
        identity,
        tls_config,
        &streams,
    );
    let ended = future::or(keepalive_loop, signalling_loop).await;
    for (_, control) in streams.borrow().iter() {
        control.stop.set(true);
    }
    ended
}

/// The heartbeat period, with each device's phase spread over it so 10,000 devices do not
/// beat in the same millisecond.
fn first_beat(shared: &FleetShared, index: usize) -> Instant {
    let every = shared.config.heartbeat;
    let phase = (index as u64 * 7919) % every.as_millis().max(1) as u64;
    Instant::now() + Duration::from_millis(phase)
}

async fn serve_keepalive(
    link: &mut Link<rt::TcpStream>,
    shared: &FleetShared,
) -> Result<std::convert::Infallible, SessionError> {
    let totals = &shared.totals;
    let mut next_beat = first_beat(shared, link.next_request_id as usize);
    loop {
        let wake = next_beat.min(link.last_rx + SILENCE_LIMIT);
        let read = async { Some(link.receive().await) };
        let timer = async {
            sleep_until(wake).await;
            None
        };
        match future::or(read, timer).await {
            Some(packets) => {
                // Heartbeat replies; nothing else comes on keep-alive.
                packets?;
            }
            None => {
                if Instant::now() >= link.last_rx + SILENCE_LIMIT {
                    return Err(SessionError::Silent { link: link.name });
                }
                let id = link.request_id();
                let bytes = link.sim.heartbeat(&Heartbeat::default(), id);
                link.send(&bytes, totals).await?;
                totals.heartbeats.fetch_add(1, Ordering::Relaxed);
                next_beat = Instant::now() + shared.config.heartbeat;
            }
        }
    }
}

async fn sleep_until(when: Instant) {
    if let Some(wait) = when.checked_duration_since(Instant::now()) {
        rt::timer::sleep(wait).await;
    }
}

async fn serve_signalling(
    link: &mut Link<rt::TlsStream<rustls::ClientConnection>>,
    shared: &FleetShared,
    index: usize,
    identity: &Identity,
    tls_config: Arc<rustls::ClientConfig>,
    streams: &Streams,
) -> Result<std::convert::Infallible, SessionError> {
    let totals = &shared.totals;
    let mut next_beat = first_beat(shared, index);
    let alarm_every = shared.config.alarm_interval();
    let mut next_alarm = alarm_every.map(|every| {
        Instant::now() + every.mul_f64(((index * 2_654_435_761) % 1000) as f64 / 1000.0)
    });
    // Alarms sent and not answered yet: request id -> AI type (its tag).
    let mut alarms_waiting: Vec<(u32, String)> = Vec::new();
    loop {
        let mut wake = next_beat.min(link.last_rx + SILENCE_LIMIT);
        if let Some(alarm) = next_alarm {
            wake = wake.min(alarm);
        }
        let read = async { Some(link.receive().await) };
        let timer = async {
            sleep_until(wake).await;
            None
        };
        let Some(packets) = future::or(read, timer).await else {
            let now = Instant::now();
            if now >= link.last_rx + SILENCE_LIMIT {
                return Err(SessionError::Silent { link: link.name });
            }
            if now >= next_beat {
                let id = link.request_id();
                let bytes = link.sim.heartbeat(&Heartbeat::default(), id);
                link.send(&bytes, totals).await?;
                totals.heartbeats.fetch_add(1, Ordering::Relaxed);
                next_beat = now + shared.config.heartbeat;
            }
            if let (Some(at), Some(every)) = (next_alarm, alarm_every) {
                if now >= at {
                    let n = totals.alarms.fetch_add(1, Ordering::Relaxed);
                    let alarm = Alarm {
                        channel: 0,
                        status: "MD".into(),
                        ai_type: match shared.alarm_log {
                            Some(_) => format!("people,t{n}"),
                            None => "people".into(),
                        },
                    };
                    let id = link.request_id();
                    let bytes = link.sim.alarm(&alarm, id);
                    alarms_waiting.push((id, alarm.ai_type));
                    link.send(&bytes, totals).await?;
                    next_alarm = Some(now + every);
                }
            }
            continue;
        };
        for packet in packets? {
            if packet.header.command == cmd::ALARM {
                let id = packet.header.request_id;
                if let Some(at) = alarms_waiting
                    .iter()
                    .position(|(waiting, _)| *waiting == id)
                {
                    let (_, ai_type) = alarms_waiting.swap_remove(at);
                    let code = packet.header.response_code;
                    match code {
                        CODE_OK => totals.alarms_acked.fetch_add(1, Ordering::Relaxed),
                        _ => totals.alarms_refused.fetch_add(1, Ordering::Relaxed),
                    };
                    if let Some(log) = &shared.alarm_log {
                        log.record(&identity.uid, &ai_type, code);
                    }
                }
                continue;
            }
            // Replies to our heartbeats and alarms (whatever their magic says), and any reply.
            if matches!(
                packet.header.command,
                cmd::HEARTBEAT | cmd::ALARM | cmd::HANDSHAKE
            ) || packet.header.magic == signal::proto::core_packet::MAGIC_RESPONSE
            {
                continue;
            }
            let id = packet.header.request_id;
            let body = packet.body.to_contiguous();
            let reply = match packet.header.command {
                cmd::CAPABILITIES => {
                    let capabilities = Capabilities {
                        channels: vec![ChannelCapabilities {
                            channel: 0,
                            stream_mask: 3,
                            ptz_type: 0,
                            ptz_control: 0,
                            wifi_mode: 0,
                        }],
                    };
                    link.sim.reply_ok(cmd::CAPABILITIES, id, &capabilities)
                }
                cmd::PREVIEW_START => match PreviewStart::parse(&body) {
                    Ok(start) => {
                        totals.preview_starts.fetch_add(1, Ordering::Relaxed);
                        let reply = preview_start_reply(
                            &mut link.sim,
                            id,
                            &PreviewStartReply {
                                fps: shared.source.fps().min(255) as u8,
                                codec: match shared.source.codec() {
                                    relay::proto::media::Codec::H265 => VideoCodecId::H265,
                                    _ => VideoCodecId::H264,
                                },
                            },
                        );
                        link.send(&reply, totals).await?;
                        let control = Rc::new(StreamControl::default());
                        streams
                            .borrow_mut()
                            .push((start.stream_id, control.clone()));
                        let (shared, identity, config) =
                            (shared.clone(), identity.clone(), tls_config.clone());
                        let streams = streams.clone();
                        rt::spawn_local(async move {
                            let result =
                                stream(&shared, index, &identity, config, start, &control).await;
                            streams
                                .borrow_mut()
                                .retain(|(id, _)| *id != start.stream_id);
                            if let Err(e) = result {
                                if !control.stop.get() {
                                    shared.error(&e.kind());
                                }
                            }
                        })
                        .detach();
                        continue;
                    }
                    Err(_) => link.sim.reply(cmd::PREVIEW_START, id, 400, b""),
                },
                cmd::PREVIEW_STOP => {
                    if let Ok(stop) = PreviewStop::parse(&body) {
                        for (stream_id, control) in streams.borrow().iter() {
                            if *stream_id == stop.stream_id {
                                control.stop.set(true);
                            }
                        }
                    }
                    totals.preview_stops.fetch_add(1, Ordering::Relaxed);
                    link.sim.reply(cmd::PREVIEW_STOP, id, CODE_OK, b"")
                }
                cmd::KEYFRAME_REQUEST => {
                    totals.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    for (_, control) in streams.borrow().iter() {
                        control.keyframe.set(true);
                    }
                    link.sim.reply(cmd::KEYFRAME_REQUEST, id, CODE_OK, b"")
                }
                // Anything else a camera does not support here.
                command => link.sim.reply(command, id, 400, b""),
            };
            link.send(&reply, totals).await?;
        }
    }
}

/// One stream connection: in the mode the server asked, handshake, then frames at the source's
/// frame rate until preview stop, the server closes, or the session ends.
async fn stream(
    shared: &FleetShared,
    index: usize,
    identity: &Identity,
    tls_config: Arc<rustls::ClientConfig>,
    start: PreviewStart,
    control: &StreamControl,
) -> Result<(), SessionError> {
    let link = "stream";
    let totals = &shared.totals;
    let remote = SocketAddr::new(shared.config.device_ip, start.port);
    let tcp = connect(link, shared.config.source_address(index), remote).await?;
    let result = match start.mode {
        StreamMode::Tls => {
            let mut stream = tls(link, tcp, identity, tls_config).await?;
            let device = StreamDevice::tls(start.stream_id);
            send_stream(&mut stream, device, shared, identity, control).await
        }
        mode => {
            let policy = match mode {
                StreamMode::Tcp => EncryptPolicy::None,
                _ => shared.config.encrypt,
            };
            let mut tcp = tcp;
            let (mut device, hello) = StreamDevice::encrypt_tcp(
                &identity.access_keys(),
                rand::random(),
                start.stream_id,
                policy,
            );
            write(&mut tcp, &hello).await?;
            let mut reply = [0u8; signal::proto::encrypt_tcp::HELLO_LEN];
            rt::timer::timeout(HANDSHAKE_TIMEOUT, tcp.read_exact(&mut reply))
                .await
                .map_err(|_| SessionError::Timeout { link })?
                .map_err(|source| SessionError::Io { link, source })?;
            device.receive(&reply).map_err(|e| match e {
                crate::device::DeviceError::Refused { code } => {
                    SessionError::Refused { link, code }
                }
                e => SessionError::Protocol {
                    link,
                    reason: e.to_string(),
                },
            })?;
            send_stream(&mut tcp, device, shared, identity, control).await
        }
    };
    totals.streams_ended.fetch_add(1, Ordering::Relaxed);
    result
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), SessionError> {
    let link = "stream";
    stream
        .write_all(bytes)
        .await
        .map_err(|source| SessionError::Io { link, source })?;
    stream
        .flush()
        .await
        .map_err(|source| SessionError::Io { link, source })
}

async fn send_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut device: StreamDevice,
    shared: &FleetShared,
    identity: &Identity,
    control: &StreamControl,
) -> Result<(), SessionError> {
    let link = "stream";
    let totals = &shared.totals;
    let protocol = |e: crate::device::DeviceError| SessionError::Protocol {
        link,
        reason: e.to_string(),
    };
    let bytes = device
        .handshake(&handshake_body(&identity.uid))
        .map_err(protocol)?;
    write(stream, &bytes).await?;
    let mut buf = vec![0u8; 4096];
    let reply = async {
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|source| SessionError::Io { link, source })?;
            if n == 0 {
                return Err(SessionError::Closed { link });
            }
            if let Some(packet) = device.receive(&buf[..n]).map_err(protocol)?.first() {
                return match packet.header.response_code {
                    CODE_OK => Ok(()),
                    code => Err(SessionError::HandshakeRefused { link, code }),
                };
            }
        }
    };
    rt::timer::timeout(HANDSHAKE_TIMEOUT, reply)
        .await
        .map_err(|_| SessionError::Timeout { link })??;
    totals.streams_started.fetch_add(1, Ordering::Relaxed);
    let mut video = VideoStream::new(shared.source.clone(), shared.filler.clone());
    if !shared.config.stamps {
        video = video.without_stamps();
    }
    let period = Duration::from_secs(1) / video_fps(shared);
    let started = Instant::now();
    while !control.stop.get() {
        if control.keyframe.replace(false) {
            video.request_keyframe();
        }
        let frame = video.next_frame(unix_now_us());
        let bytes = device.media(&frame).map_err(protocol)?;
        write(stream, &bytes).await?;
        totals.frames_sent.fetch_add(1, Ordering::Relaxed);
        totals
            .media_bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        sleep_until(started + period * video.frames() as u32).await;
    }
    Ok(())
}

fn video_fps(shared: &FleetShared) -> u32 {
    shared.source.fps().max(1)
}
