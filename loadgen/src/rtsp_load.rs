//! Generic RTSP load: N viewers play one URL over TCP interleaved (DESCRIBE, SETUP of every
//! track, PLAY) against any RTSP server, and each measures what a viewer cares about: time to
//! the first keyframe, sequence gaps (loss), bytes and bitrate, and whether it was cut off.
//!
//! Viewers are tasks on `rt` shards (glommio), so a thousand of them fit on a core beside the
//! server under test. The RTSP and RTP bytes are parsed with the relay's own sans-IO codecs
//! ([`relay::proto::interleaved::Demuxer`], [`relay::proto::rtp::RtpHeader`]); the measuring
//! logic ([`SequenceTracker`], [`ViewerMeter`]) touches no socket and is unit tested.
//! [`run`] ramps the viewers up, samples the whole load and the server's /proc once a second,
//! and returns the records a [`crate::report::Report`] is made of.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use relay::proto::h264;
use relay::proto::h265;
use relay::proto::interleaved::{DemuxLimits, Demuxed, Demuxer};
use relay::proto::rtp::RtpHeader;
use relay::proto::rtsp::{
    Method, Parsed, RequestBuilder, RtspError, RtspMessage, RtspResponse, RtspUrl, SessionHeader,
};
use relay::proto::sdp::{Codec, SessionDescription};

use crate::procstat::ProcSampler;
use crate::report::{Sample, ViewerEnd, ViewerRecord};

// ----- measuring, sans-IO -----

/// What one RTP packet's SSRC and sequence number tell about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceEvent {
    First,
    InOrder,
    /// This many packets before this one never arrived.
    Gap(u16),
    /// Slightly older than the newest seen (reordered or duplicated); not counted as received.
    Late,
    /// A new source (SSRC changed: the publisher came back) or a jump too large to be loss
    /// (RFC 3550 A.1: more than 3000 ahead or 100 behind): counting starts again here.
    Restart,
}

/// A forward jump larger than this is a restarted source, not loss (RFC 3550 `MAX_DROPOUT`).
const MAX_DROPOUT: u16 = 3000;
/// A packet further behind than this is a restarted source, not reordering (`MAX_MISORDER`).
const MAX_MISORDER: u16 = 100;

/// Follows one track's SSRC and 16-bit RTP sequence numbers across wrap-around.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    newest: Option<(u32, u16)>,
}

impl SequenceTracker {
    pub fn observe(&mut self, ssrc: u32, sequence: u16) -> SequenceEvent {
        let Some((current_ssrc, newest)) = self.newest else {
            self.newest = Some((ssrc, sequence));
            return SequenceEvent::First;
        };
        if ssrc != current_ssrc {
            self.newest = Some((ssrc, sequence));
            return SequenceEvent::Restart;
        }
        let ahead = sequence.wrapping_sub(newest);
        let behind = newest.wrapping_sub(sequence);
        let event = match ahead {
            1 => SequenceEvent::InOrder,
            2..=MAX_DROPOUT => SequenceEvent::Gap(ahead - 1),
            _ if behind <= MAX_MISORDER => return SequenceEvent::Late,
            _ => SequenceEvent::Restart,
        };
        self.newest = Some((ssrc, sequence));
        event
    }
}

/// How a track's payloads mark the start of a picture a decoder can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeRule {
    H264,
    H265,
    /// Video of another codec: the first packet counts.
    AnyPacket,
    /// Audio and other media: never a keyframe (unless the stream has no video at all).
    Never,
}

impl KeyframeRule {
    pub fn for_codec(media: &str, codec: &Codec) -> KeyframeRule {
        match codec {
            Codec::H264 => KeyframeRule::H264,
            Codec::H265 => KeyframeRule::H265,
            _ if media.eq_ignore_ascii_case("video") => KeyframeRule::AnyPacket,
            _ => KeyframeRule::Never,
        }
    }

    fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            KeyframeRule::H264 => h264::payload_starts_keyframe(payload),
            KeyframeRule::H265 => h265_payload_starts_keyframe(payload),
            KeyframeRule::AnyPacket => true,
            KeyframeRule::Never => false,
        }
    }
}

/// An IRAP picture or parameter set as a single NAL unit, or the first fragment of an IRAP
/// picture (RFC 7798 FU, type 49). Aggregation packets (48) are checked by their first unit.
fn h265_payload_starts_keyframe(payload: &[u8]) -> bool {
    const VPS: u8 = 32;
    const AP: u8 = 48;
    const FU: u8 = 49;
    let Some(&first) = payload.first() else {
        return false;
    };
    match h265::nal_type(first) {
        AP => payload
            .get(4)
            .is_some_and(|&b| matches!(h265::nal_type(b), t if h265::is_irap(t) || t == VPS)),
        FU => payload
            .get(2)
            .is_some_and(|&fu| fu & 0x80 != 0 && h265::is_irap(fu & 0x3f)),
        t => h265::is_irap(t) || t == VPS,
    }
}

/// One set-up track: its interleaved RTP channel and keyframe rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackPlan {
    pub rtp_channel: u8,
    pub keyframe: KeyframeRule,
}

/// The counters of one viewer, fed with every interleaved frame it receives.
#[derive(Debug, Clone)]
pub struct ViewerMeter {
    tracks: Vec<(TrackPlan, SequenceTracker)>,
    /// No video track: the first RTP packet of any track stands for the first keyframe.
    audio_only: bool,
    pub packets: u64,
    pub lost: u64,
    pub late: u64,
    /// Times a track's numbering started again (publisher restarted, SSRC changed).
    pub restarts: u64,
    /// Frames on channels no track was set up on, or RTP that does not parse.
    pub unexpected: u64,
    pub rtcp: u64,
    pub seen_keyframe: bool,
    /// Frames stamped before this (Unix µs) are not counted in the latency: see
    /// [`ViewerMeter::live_from`].
    live_from_unix_us: u64,
}

impl ViewerMeter {
    pub fn new(tracks: &[TrackPlan]) -> ViewerMeter {
        ViewerMeter {
            audio_only: tracks.iter().all(|t| t.keyframe == KeyframeRule::Never),
            tracks: tracks
                .iter()
                .map(|t| (*t, SequenceTracker::default()))
                .collect(),
            packets: 0,
            lost: 0,
            late: 0,
            restarts: 0,
            unexpected: 0,
            rtcp: 0,
            seen_keyframe: false,
            live_from_unix_us: 0,
        }
    }

    /// Counts latency only for frames sent at or after `unix_us` (the viewer's PLAY answer):
    /// the earlier ones a relay replays from its GOP cache are old by design (up to a GOP), and
    /// would hide the latency the relay adds to live frames.
    pub fn live_from(&mut self, unix_us: u64) {
        self.live_from_unix_us = unix_us;
    }

    /// Takes one interleaved frame; returns true when it is the viewer's first keyframe.
    pub fn on_frame(&mut self, channel: u8, payload: &[u8]) -> bool {
        let Some((plan, sequence)) = self
            .tracks
            .iter_mut()
            .find(|(plan, _)| plan.rtp_channel == channel)
        else {
            if self
                .tracks
                .iter()
                .any(|(p, _)| p.rtp_channel.wrapping_add(1) == channel)
            {
                self.rtcp += 1;
            } else {
                self.unexpected += 1;
            }
            return false;
        };
        let Ok((header, body)) = RtpHeader::parse(payload) else {
            self.unexpected += 1;
            return false;
        };
        match sequence.observe(header.ssrc, header.sequence) {
            SequenceEvent::Late => {
                self.late += 1;
                return false;
            }
            SequenceEvent::Gap(n) => self.lost += u64::from(n),
            SequenceEvent::Restart => self.restarts += 1,
            SequenceEvent::First | SequenceEvent::InOrder => {}
        }
        self.packets += 1;
        if self.seen_keyframe {
            return false;
        }
        let keyframe = self.audio_only
            || payload
                .get(body)
                .is_some_and(|body| plan.keyframe.starts_keyframe(body));
        self.seen_keyframe = keyframe;
        keyframe
    }
}

impl ViewerMeter {
    /// The end-to-end latency of the frame this packet belongs to, when it is an H.264 packet
    /// carrying a loadgen SEI send stamp (devices, `--publisher loadgen`) of a live frame:
    /// `now_unix_us` minus the send time.
    pub fn frame_latency_us(&self, channel: u8, packet: &[u8], now_unix_us: u64) -> Option<u64> {
        let (plan, _) = self.tracks.iter().find(|(p, _)| p.rtp_channel == channel)?;
        if plan.keyframe != KeyframeRule::H264 {
            return None;
        }
        let (_, body) = RtpHeader::parse(packet).ok()?;
        let stamp = crate::sei::stamp_in_rtp_payload(packet.get(body)?)?;
        (stamp.sent_unix_us >= self.live_from_unix_us)
            .then(|| now_unix_us.saturating_sub(stamp.sent_unix_us))
    }
}

/// The URL to SETUP a track with: the control attribute resolved against the base URL.
pub fn resolve_control(base: &str, control: Option<&str>) -> String {
    match control.map(str::trim) {
        None | Some("") | Some("*") => base.to_owned(),
        Some(c) if c.len() > 7 && c[..7].eq_ignore_ascii_case("rtsp://") => c.to_owned(),
        Some(c) if c.len() > 8 && c[..8].eq_ignore_ascii_case("rtsps://") => c.to_owned(),
        Some(c) if base.ends_with('/') => format!("{base}{c}"),
        Some(c) => format!("{base}/{c}"),
    }
}

// ----- one viewer over a socket -----

/// Why a viewer could not play, or stopped playing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewerError {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that are not RTSP (the server's fault).
    #[error("server sent invalid RTSP: {0}")]
    Protocol(#[from] RtspError),
    #[error("{method} answered {status} {reason}")]
    Status {
        method: &'static str,
        status: u16,
        reason: String,
    },
    #[error("DESCRIBE returned an SDP that does not parse: {0}")]
    Sdp(String),
    #[error("the SDP has no media to play")]
    NoMedia,
    #[error("closed by the server")]
    Closed,
    #[error("no {0} response in time")]
    Timeout(&'static str),
}

/// Where viewers connect, and how they authenticate (Basic, from the URL's userinfo).
#[derive(Debug, Clone)]
pub struct PlayTarget {
    /// The URL without userinfo, as sent in requests.
    pub url: String,
    pub addr: SocketAddr,
    pub authorization: Option<String>,
}

impl PlayTarget {
    pub fn parse(url: &str) -> Result<PlayTarget, String> {
        let parsed = RtspUrl::parse(url).map_err(|e| e.to_string())?;
        if parsed.scheme != relay::proto::rtsp::Scheme::Rtsp {
            return Err(format!("{url}: only rtsp:// URLs are supported"));
        }
        let addr = (parsed.host.as_str(), parsed.port_or_default())
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", parsed.host))?
            .next()
            .ok_or_else(|| format!("{}: no address", parsed.host))?;
        let authorization = parsed.userinfo.as_ref().map(|userinfo| {
            let decoded = percent_decode(userinfo);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        let mut clean = parsed.clone();
        clean.userinfo = None;
        Ok(PlayTarget {
            url: clean.to_string(),
            addr,
            authorization,
        })
    }
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'%'), Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (Some(&b), _, _) => {
                out.push(b);
                i += 1;
            }
            _ => break,
        }
    }
    out
}

/// Receive buffer: starts at 64 KiB, grows to hold the largest interleaved frame, compacts only
/// when the write position reaches its end.
struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

const RECV_INITIAL: usize = 64 * 1024;
const RECV_MAX: usize = 256 * 1024;

impl RecvBuf {
    fn new() -> RecvBuf {
        RecvBuf {
            data: vec![0; RECV_INITIAL],
            start: 0,
            end: 0,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once; 0 means end of stream.
    async fn fill(&mut self, stream: &rt::TcpStream) -> io::Result<usize> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < RECV_MAX {
                let grown = (self.data.len() * 2).min(RECV_MAX);
                self.data.resize(grown, 0);
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message longer than the receive buffer",
                ));
            }
        }
        let mut reader = stream;
        let n = reader.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

/// An RTSP client connection: requests out, responses in, interleaved frames in between.
pub(crate) struct RtspClient {
    pub(crate) stream: rt::TcpStream,
    buf: RecvBuf,
    demuxer: Demuxer,
    cseq: u32,
    pub(crate) session: Option<SessionHeader>,
    authorization: Option<String>,
}

impl RtspClient {
    pub(crate) fn new(stream: rt::TcpStream, authorization: Option<String>) -> RtspClient {
        RtspClient {
            stream,
            buf: RecvBuf::new(),
            demuxer: Demuxer::new(DemuxLimits::default()),
            cseq: 0,
            session: None,
            authorization,
        }
    }

    pub(crate) fn prepare(&mut self, builder: RequestBuilder) -> Vec<u8> {
        self.cseq += 1;
        let mut builder = builder.cseq(self.cseq).header("User-Agent", "loadgen");
        if let Some(session) = &self.session {
            builder = builder.session(&session.id);
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header("Authorization", authorization.clone());
        }
        builder.build().to_bytes()
    }

    /// Sends a request and waits for the response with its CSeq; frames before it are skipped.
    pub(crate) async fn request(
        &mut self,
        method: &'static str,
        builder: RequestBuilder,
    ) -> Result<RtspResponse, ViewerError> {
        let bytes = self.prepare(builder);
        let mut writer = &self.stream;
        writer.write_all(&bytes).await?;
        let cseq = self.cseq;
        loop {
            match self.demuxer.feed(self.buf.unread())? {
                Parsed::Complete { message, consumed } => {
                    self.buf.consume(consumed);
                    if let Demuxed::Rtsp(RtspMessage::Response(response)) = message {
                        if response.headers.cseq().ok().flatten() == Some(cseq) {
                            if !response.status.is_success() {
                                return Err(ViewerError::Status {
                                    method,
                                    status: response.status.0,
                                    reason: response.reason.clone(),
                                });
                            }
                            if let Some(session) = response.headers.session()? {
                                self.session = Some(session);
                            }
                            return Ok(response);
                        }
                    }
                }
                Parsed::Incomplete => {
                    if self.buf.fill(&self.stream).await? == 0 {
                        return Err(ViewerError::Closed);
                    }
                }
            }
        }
    }
}

/// Live totals over all viewers of all shards, read by the sampler once a second.
#[derive(Debug, Default)]
pub struct Totals {
    pub bytes: AtomicU64,
    pub packets: AtomicU64,
    pub lost: AtomicU64,
    pub playing: AtomicU64,
    pub with_keyframe: AtomicU64,
    pub disconnects: AtomicU64,
    pub failed: AtomicU64,
}

/// DESCRIBE, SETUP of every track (interleaved channels 2i, 2i+1), PLAY.
async fn start_playing(
    client: &mut RtspClient,
    target: &PlayTarget,
) -> Result<Vec<TrackPlan>, ViewerError> {
    let described = client
        .request(
            "DESCRIBE",
            relay::proto::rtsp::RtspRequest::builder(Method::Describe, target.url.clone())
                .header("Accept", "application/sdp"),
        )
        .await?;
    let sdp =
        SessionDescription::parse(&described.body).map_err(|e| ViewerError::Sdp(e.to_string()))?;
    let base = described
        .headers
        .content_base()
        .or_else(|| described.headers.get("Content-Location"))
        .unwrap_or(&target.url)
        .to_owned();
    let session_control = sdp.attribute("control").map(str::to_owned);
    let base = match session_control.as_deref() {
        Some(c) if c != "*" && !c.is_empty() => resolve_control(&base, Some(c)),
        _ => base,
    };
    if sdp.media.is_empty() {
        return Err(ViewerError::NoMedia);
    }
    let mut plans = Vec::with_capacity(sdp.media.len());
    for (index, media) in sdp.media.iter().enumerate().take(32) {
        let channel = (2 * index) as u8;
        let transport = format!(
            "RTP/AVP/TCP;unicast;interleaved={}-{}",
            channel,
            channel + 1
        );
        client
            .request(
                "SETUP",
                relay::proto::rtsp::RtspRequest::builder(
                    Method::Setup,
                    resolve_control(&base, media.control()),
                )
                .header("Transport", transport),
            )
            .await?;
        plans.push(TrackPlan {
            rtp_channel: channel,
            keyframe: KeyframeRule::for_codec(&media.media, &media.codec()),
        });
    }
    client
        .request(
            "PLAY",
            relay::proto::rtsp::RtspRequest::builder(Method::Play, base)
                .header("Range", "npt=0.000-"),
        )
        .await?;
    Ok(plans)
}

/// Pause between DESCRIBE attempts while a stream is not up yet.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// How long the DESCRIBE..PLAY exchange may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// One viewer from connect to the end of the run (the caller drops this future at the end);
/// the record is filled in as it goes, so it is complete whenever the future stops.
async fn play(
    target: &PlayTarget,
    totals: &Totals,
    record: &mut ViewerRecord,
    describe_retry: Duration,
) -> ViewerEnd {
    let started = Instant::now();
    let (mut client, plans) = loop {
        let stream = match rt::TcpStream::connect_timeout(target.addr, SETUP_TIMEOUT).await {
            Ok(stream) => stream,
            Err(e) => return ViewerEnd::Failed(ViewerError::Connect(e).to_string()),
        };
        let _ = stream.set_nodelay(true);
        let mut client = RtspClient::new(stream, target.authorization.clone());
        match rt::timer::timeout(SETUP_TIMEOUT, start_playing(&mut client, target)).await {
            Ok(Ok(plans)) => break (client, plans),
            // The stream is not up yet (a server that starts the camera on DESCRIBE may say so
            // before it is): try again on a new connection, as a player retrying would.
            Ok(Err(ViewerError::Status {
                method: "DESCRIBE",
                status: 404 | 454 | 503,
                ..
            })) if started.elapsed() + RETRY_PAUSE < describe_retry => {
                drop(client);
                rt::timer::sleep(RETRY_PAUSE).await;
            }
            Ok(Err(e)) => return ViewerEnd::Failed(e.to_string()),
            Err(_) => return ViewerEnd::Failed(ViewerError::Timeout("PLAY").to_string()),
        }
    };
    let playing_since = Instant::now();
    record.setup_us = Some(duration_us(playing_since - started));
    totals.playing.fetch_add(1, Ordering::Relaxed);
    let end = receive(&mut client, &plans, started, playing_since, totals, record).await;
    totals.playing.fetch_sub(1, Ordering::Relaxed);
    totals.disconnects.fetch_add(1, Ordering::Relaxed);
    ViewerEnd::Disconnected(end.to_string())
}

/// Reads frames until the connection ends; returns why it ended.
async fn receive(
    client: &mut RtspClient,
    plans: &[TrackPlan],
    started: Instant,
    playing_since: Instant,
    totals: &Totals,
    record: &mut ViewerRecord,
) -> ViewerError {
    let mut meter = ViewerMeter::new(plans);
    meter.live_from(crate::sei::unix_now_us());
    let keepalive_every = keepalive_interval(client.session.as_ref().and_then(|s| s.timeout));
    let mut next_keepalive = playing_since + keepalive_every;
    let (mut reported_packets, mut reported_lost) = (0u64, 0u64);
    loop {
        loop {
            match client.demuxer.feed(client.buf.unread()) {
                Ok(Parsed::Complete { message, consumed }) => {
                    if let Demuxed::Interleaved { channel, payload } = message {
                        let packet = client.buf.unread().get(payload);
                        let first_keyframe = packet.is_some_and(|p| meter.on_frame(channel, p));
                        if let Some(us) = packet.and_then(|p| {
                            meter.frame_latency_us(channel, p, crate::sei::unix_now_us())
                        }) {
                            record
                                .latency_us
                                .get_or_insert_with(crate::report::micros_histogram)
                                .saturating_record(us.max(1));
                        }
                        if first_keyframe {
                            record.ttfk_us = Some(duration_us(started.elapsed()));
                            totals.with_keyframe.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    client.buf.consume(consumed);
                }
                Ok(Parsed::Incomplete) => break,
                Err(e) => return e.into(),
            }
        }
        totals
            .packets
            .fetch_add(meter.packets - reported_packets, Ordering::Relaxed);
        totals
            .lost
            .fetch_add(meter.lost - reported_lost, Ordering::Relaxed);
        (reported_packets, reported_lost) = (meter.packets, meter.lost);
        record.packets = meter.packets;
        record.lost = meter.lost;
        record.late = meter.late;
        record.restarts = meter.restarts;
        let filled = client.buf.fill(&client.stream).await;
        // Until the last read, the one that found the connection closed included.
        record.playing_secs = playing_since.elapsed().as_secs_f64();
        let n = match filled {
            Ok(0) => return ViewerError::Closed,
            Ok(n) => n,
            Err(e) => return e.into(),
        };
        record.bytes += n as u64;
        totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        if now >= next_keepalive {
            next_keepalive = now + keepalive_every;
            let url = client.stream.peer_addr().map(|a| format!("rtsp://{a}/"));
            let bytes = client.prepare(relay::proto::rtsp::RtspRequest::builder(
                Method::GetParameter,
                url.unwrap_or_else(|_| "*".into()),
            ));
            let mut writer = &client.stream;
            if let Err(e) = writer.write_all(&bytes).await {
                return e.into();
            }
        }
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ----- the run -----

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// What the viewers play: viewer `i` plays `targets[i % len]`.
    pub targets: Vec<PlayTarget>,
    pub viewers: usize,
    pub duration: Duration,
    /// Viewers started per second.
    pub ramp_per_sec: f64,
    /// Executor threads for the viewers (not pinned, so they float beside the server's shards).
    pub shards: usize,
    /// The server's PID, for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// For how long after its start a viewer tries DESCRIBE again when it is answered 404, 454
    /// or 503 (the stream is not up yet); zero: never.
    pub describe_retry: Duration,
}

/// What a run produced, for [`crate::report::Summary::compute`].
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub records: Vec<ViewerRecord>,
    pub samples: Vec<Sample>,
    /// When the last viewer was due to start, seconds from the start.
    pub ramp_end_secs: f64,
}

/// Seconds after the run's start at which viewer `index` starts.
pub fn start_offset(index: usize, ramp_per_sec: f64) -> Duration {
    if ramp_per_sec <= 0.0 || !ramp_per_sec.is_finite() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(index as f64 / ramp_per_sec)
}

/// Sleeps until the start time of `index` on a ramp of `ramp_per_sec` from `started`; false when
/// the shard shuts down first.
pub async fn wait_for_ramp_slot(
    shutdown: &rt::Shutdown,
    started: Instant,
    index: usize,
    ramp_per_sec: f64,
) -> bool {
    let due = started + start_offset(index, ramp_per_sec);
    let now = Instant::now();
    due <= now || shutdown.until(rt::timer::sleep(due - now)).await.is_some()
}

/// Waits until `target` answers DESCRIBE with 200 (e.g. until a publisher is up), for at most
/// `limit`. Returns the last error when it never does.
pub fn wait_until_playable(target: &PlayTarget, limit: Duration) -> Result<(), String> {
    let target = target.clone();
    rt::block_on_shard(move || async move {
        let deadline = Instant::now() + limit;
        loop {
            let attempt = async {
                let stream = rt::TcpStream::connect_timeout(target.addr, Duration::from_secs(2))
                    .await
                    .map_err(ViewerError::Connect)?;
                let mut client = RtspClient::new(stream, target.authorization.clone());
                client
                    .request(
                        "DESCRIBE",
                        relay::proto::rtsp::RtspRequest::builder(
                            Method::Describe,
                            target.url.clone(),
                        )
                        .header("Accept", "application/sdp"),
                    )
                    .await
                    .map(|_| ())
            };
            let error = match rt::timer::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no DESCRIBE response".to_owned(),
            };
            if Instant::now() >= deadline {
                return Err(error);
            }
            rt::timer::sleep(Duration::from_millis(250)).await;
        }
    })
    .map_err(|e| e.to_string())?
}

/// Runs the viewers for the configured duration and samples the load once a second.
pub fn run(config: &LoadConfig) -> Result<RunOutcome, rt::ShardError> {
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let shards = config.shards.max(1);
    let pool = rt::ShardPool::new(shards)
        .pin(false)
        .name("viewers")
        .io_memory(1 << 20);
    let shutdown = pool.shutdown();
    let viewer_config = config.clone();
    let viewer_totals = totals.clone();
    let running = pool.start(move |ctx| {
        let config = viewer_config.clone();
        let totals = viewer_totals.clone();
        async move { shard_viewers(ctx, config, totals, started).await }
    })?;

    let ramp_end_secs =
        start_offset(config.viewers.saturating_sub(1), config.ramp_per_sec).as_secs_f64();
    let mut server = config.server_pid.map(|pid| ProcSampler::new(Some(pid)));
    let mut own = ProcSampler::new(None);
    if let Some(server) = server.as_mut() {
        server.sample();
    }
    own.sample();
    let mut samples = Vec::new();
    let (mut last_bytes, mut last_packets, mut last_at) = (0u64, 0u64, started);
    let end = started + config.duration;
    let mut tick = 1u32;
    loop {
        let due = started + Duration::from_secs(u64::from(tick));
        let now = Instant::now();
        if due > end {
            if end > now {
                std::thread::sleep(end - now);
            }
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        tick += 1;
        let now = Instant::now();
        let seconds = now.duration_since(last_at).as_secs_f64().max(1e-6);
        let bytes = totals.bytes.load(Ordering::Relaxed);
        let packets = totals.packets.load(Ordering::Relaxed);
        let sample = Sample {
            t_secs: now.duration_since(started).as_secs_f64(),
            viewers_playing: totals.playing.load(Ordering::Relaxed),
            viewers_with_keyframe: totals.with_keyframe.load(Ordering::Relaxed),
            rx_bits_per_sec: (bytes - last_bytes) as f64 * 8.0 / seconds,
            rx_packets_per_sec: (packets - last_packets) as f64 / seconds,
            lost_total: totals.lost.load(Ordering::Relaxed),
            disconnects_total: totals.disconnects.load(Ordering::Relaxed),
            server: server.as_mut().and_then(|s| s.sample()),
            loadgen_cpu_pct: own.sample().map(|s| s.cpu_pct),
        };
        (last_bytes, last_packets, last_at) = (bytes, packets, now);
        if config.progress {
            eprintln!("{}", progress_line(&sample, config.viewers, &totals));
        }
        samples.push(sample);
    }
    shutdown.trigger();
    let records = running.join()?.into_iter().flatten().collect();
    Ok(RunOutcome {
        records,
        samples,
        ramp_end_secs,
    })
}

fn progress_line(sample: &Sample, viewers: usize, totals: &Totals) -> String {
    let mut line = format!(
        "t={:>4.0}s playing {}/{} keyframe {} failed {} rx {:.3} Gbit/s {:.0} pkt/s lost {} disc {}",
        sample.t_secs,
        sample.viewers_playing,
        viewers,
        sample.viewers_with_keyframe,
        totals.failed.load(Ordering::Relaxed),
        sample.rx_bits_per_sec / 1e9,
        sample.rx_packets_per_sec,
        sample.lost_total,
        sample.disconnects_total
    );
    if let Some(server) = &sample.server {
        line.push_str(&format!(
            " | server CPU {:.0}% RSS {:.1} MB",
            server.cpu_pct,
            server.rss_bytes as f64 / 1048576.0
        ));
    }
    if let Some(cpu) = sample.loadgen_cpu_pct {
        line.push_str(&format!(" | loadgen CPU {cpu:.0}%"));
    }
    line
}

/// This shard's share of the viewers (every `count`-th one), each started at its ramp time.
async fn shard_viewers(
    ctx: rt::ShardContext,
    config: LoadConfig,
    totals: Arc<Totals>,
    started: Instant,
) -> Vec<ViewerRecord> {
    let records = Rc::new(RefCell::new(Vec::new()));
    let targets: Rc<Vec<PlayTarget>> = Rc::new(config.targets.clone());
    let mut tasks = Vec::new();
    for id in (ctx.id..config.viewers).step_by(ctx.count.max(1)) {
        if !wait_for_ramp_slot(&ctx.shutdown, started, id, config.ramp_per_sec).await {
            break;
        }
        let Some(target) = targets.get(id % targets.len().max(1)).cloned() else {
            break;
        };
        let (records, totals, shutdown) = (records.clone(), totals.clone(), ctx.shutdown.clone());
        let describe_retry = config.describe_retry;
        tasks.push(rt::spawn_local(async move {
            let mut record = ViewerRecord {
                id,
                setup_us: None,
                ttfk_us: None,
                bytes: 0,
                packets: 0,
                lost: 0,
                late: 0,
                restarts: 0,
                playing_secs: 0.0,
                end: ViewerEnd::RunEnded,
                latency_us: None,
            };
            let ended = shutdown
                .until(play(&target, &totals, &mut record, describe_retry))
                .await;
            if let Some(end) = ended {
                if matches!(end, ViewerEnd::Failed(_)) {
                    totals.failed.fetch_add(1, Ordering::Relaxed);
                }
                record.end = end;
            }
            records.borrow_mut().push(record);
        }));
    }
    for task in tasks {
        task.await;
    }
    let records = std::mem::take(&mut *records.borrow_mut());
    records
}

/// How often a client keeps its RTSP session alive, as players do: every half of the timeout the
/// server announced (60 s when it announced none), at least every second.
pub(crate) fn keepalive_interval(announced_timeout_secs: Option<u32>) -> Duration {
    Duration::from_secs(u64::from(announced_timeout_secs.unwrap_or(60)).max(2) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(sequence: u16, payload: &[u8]) -> Vec<u8> {
        let mut packet = RtpHeader::new(96, sequence, 0, 1, false).write().to_vec();
        packet.extend_from_slice(payload);
        packet
    }

    #[test]
    fn sequence_gaps_wrap_around() {
        let mut tracker = SequenceTracker::default();
        assert_eq!(tracker.observe(7, 65534), SequenceEvent::First);
        assert_eq!(tracker.observe(7, 65535), SequenceEvent::InOrder);
        assert_eq!(tracker.observe(7, 0), SequenceEvent::InOrder);
        assert_eq!(tracker.observe(7, 3), SequenceEvent::Gap(2));
        assert_eq!(tracker.observe(7, 2), SequenceEvent::Late);
        assert_eq!(tracker.observe(7, 3), SequenceEvent::Late);
        assert_eq!(tracker.observe(7, 4), SequenceEvent::InOrder);
        assert_eq!(tracker.observe(7, 4 + 3000), SequenceEvent::Gap(2999));
    }

    #[test]
    fn restarted_sources_are_not_loss() {
        let mut tracker = SequenceTracker::default();
        assert_eq!(tracker.observe(7, 100), SequenceEvent::First);
        // A new SSRC (the publisher came back) starts over, wherever its numbers are.
        assert_eq!(tracker.observe(9, 50), SequenceEvent::Restart);
        assert_eq!(tracker.observe(9, 51), SequenceEvent::InOrder);
        // Same SSRC, far behind or far ahead: a restart, not 65,000 late or lost packets.
        assert_eq!(
            tracker.observe(9, 51u16.wrapping_sub(101)),
            SequenceEvent::Restart
        );
        assert_eq!(
            tracker.observe(9, 51u16.wrapping_sub(100)),
            SequenceEvent::InOrder
        );
        assert_eq!(tracker.observe(9, 20_000), SequenceEvent::Restart);
        assert_eq!(tracker.observe(9, 19_950), SequenceEvent::Late);
    }

    #[test]
    fn meter_counts_loss_and_finds_the_first_h264_keyframe() {
        let plans = [
            TrackPlan {
                rtp_channel: 0,
                keyframe: KeyframeRule::H264,
            },
            TrackPlan {
                rtp_channel: 2,
                keyframe: KeyframeRule::Never,
            },
        ];
        let mut meter = ViewerMeter::new(&plans);
        // Audio first, then a non-IDR slice, then an IDR as FU-A start, then a gap of two.
        assert!(!meter.on_frame(2, &rtp(100, &[0x21, 0x10])));
        assert!(!meter.on_frame(0, &rtp(10, &[0x41, 0x9a])));
        assert!(meter.on_frame(0, &rtp(11, &[0x7c, 0x85, 0x88])));
        assert!(
            !meter.on_frame(0, &rtp(12, &[0x65, 0x88])),
            "only the first"
        );
        assert!(!meter.on_frame(0, &rtp(15, &[0x41, 0x9a])));
        assert!(!meter.on_frame(1, &[0x80, 0xc8, 0, 6]));
        assert!(!meter.on_frame(7, &rtp(1, &[])));
        assert!(!meter.on_frame(0, &[0x00, 0x01]));
        // The publisher comes back with a new SSRC and other numbers: no loss.
        let mut restarted = RtpHeader::new(96, 40_000, 0, 2, false).write().to_vec();
        restarted.extend_from_slice(&[0x41, 0x9a]);
        assert!(!meter.on_frame(0, &restarted));
        assert_eq!(meter.restarts, 1);
        assert_eq!(meter.packets, 6);
        assert_eq!(meter.lost, 2);
        assert_eq!(meter.rtcp, 1);
        assert_eq!(meter.unexpected, 2);
        assert!(meter.seen_keyframe);
    }

    #[test]
    fn latency_counts_live_frames_only() {
        let mut meter = ViewerMeter::new(&[TrackPlan {
            rtp_channel: 0,
            keyframe: KeyframeRule::H264,
        }]);
        let stamped = |sent_unix_us| {
            let sei = crate::sei::FrameStamp {
                sent_unix_us,
                frame: 0,
            }
            .to_sei_nal();
            rtp(1, &sei)
        };
        meter.live_from(10_000);
        // From the GOP cache (sent before PLAY): not counted; live: now minus the send time.
        assert_eq!(meter.frame_latency_us(0, &stamped(9_000), 12_000), None);
        assert_eq!(
            meter.frame_latency_us(0, &stamped(10_500), 12_000),
            Some(1_500)
        );
        assert_eq!(meter.frame_latency_us(2, &stamped(10_500), 12_000), None);
        assert_eq!(
            meter.frame_latency_us(0, &rtp(2, &[0x41, 0x9a]), 12_000),
            None
        );
    }

    #[test]
    fn audio_only_streams_start_on_the_first_packet() {
        let mut meter = ViewerMeter::new(&[TrackPlan {
            rtp_channel: 0,
            keyframe: KeyframeRule::Never,
        }]);
        assert!(meter.on_frame(0, &rtp(1, &[0x21])));
    }

    #[test]
    fn h265_keyframes() {
        // IDR_W_RADL (19) single NAL: header byte 19 << 1.
        assert!(h265_payload_starts_keyframe(&[19 << 1, 1, 0xaa]));
        // TRAIL_R (1): not a keyframe.
        assert!(!h265_payload_starts_keyframe(&[1 << 1, 1, 0xaa]));
        // FU (49) start of an IDR (19), then a continuation.
        assert!(h265_payload_starts_keyframe(&[49 << 1, 1, 0x80 | 19]));
        assert!(!h265_payload_starts_keyframe(&[49 << 1, 1, 19]));
        // AP (48) whose first unit is a VPS (32).
        assert!(h265_payload_starts_keyframe(&[
            48 << 1,
            1,
            0,
            20,
            32 << 1,
            1
        ]));
        assert!(!h265_payload_starts_keyframe(&[]));
    }

    #[test]
    fn controls_resolve_against_the_base() {
        let base = "rtsp://127.0.0.1:61008/live/tok/";
        assert_eq!(
            resolve_control(base, Some("trackID=1")),
            "rtsp://127.0.0.1:61008/live/tok/trackID=1"
        );
        assert_eq!(
            resolve_control("rtsp://h/stream", Some("trackID=0")),
            "rtsp://h/stream/trackID=0"
        );
        assert_eq!(resolve_control(base, Some("*")), base);
        assert_eq!(resolve_control(base, None), base);
        assert_eq!(
            resolve_control(base, Some("rtsp://other/x/streamid=0")),
            "rtsp://other/x/streamid=0"
        );
    }

    #[test]
    fn targets_take_basic_auth_from_the_url() {
        let target = PlayTarget::parse("rtsp://user:p%40ss@127.0.0.1:8554/cam").unwrap();
        assert_eq!(target.url, "rtsp://127.0.0.1:8554/cam");
        assert_eq!(target.addr, "127.0.0.1:8554".parse().unwrap());
        assert_eq!(target.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        assert!(PlayTarget::parse("http://127.0.0.1/").is_err());
    }

    #[test]
    fn ramp_offsets() {
        assert_eq!(start_offset(0, 100.0), Duration::ZERO);
        assert_eq!(start_offset(250, 100.0), Duration::from_millis(2500));
        assert_eq!(start_offset(250, 0.0), Duration::ZERO);
    }
}
