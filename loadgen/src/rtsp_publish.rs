//! The loadgen's own RTSP publisher (`loadgen rtsp --publisher loadgen`): pushes the synthetic
//! H.264 stream of the simulated cameras ([`crate::device::synthetic`]: realistic frame sizes,
//! a keyframe every GOP, an SEI send stamp in every frame) into any RTSP server with
//! ANNOUNCE, SETUP `mode=record` and RECORD over TCP interleaved, as ffmpeg and GStreamer do.
//! Because the frames carry stamps, viewers of any relay measure end-to-end frame latency
//! through it, which an ffmpeg publisher cannot give.
//!
//! The SDP, RTP packetization ([`relay::proto::h264::H264Packetizer`]) and `$` framing are the
//! relay's sans-IO codecs; [`RtpPublisher`] turns a frame into bytes without a socket and is unit
//! tested. [`Publishers`] runs one publisher per stream on its own thread, each reconnecting
//! after a failure, until stopped.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use relay::proto::h264::H264Packetizer;
use relay::proto::interleaved::InterleavedFrame;
use relay::proto::media::MediaFrame;
use relay::proto::rtp::{rtp_timestamp, PacketizerConfig, RtpPacket};
use relay::proto::rtsp::{Method, RtspRequest};
use relay::proto::sdp::{MediaDescription, SessionDescription};
use serde::Serialize;

use crate::device::synthetic::{Filler, StreamShape, VideoSource, VideoStream, PPS, SPS};
use crate::rtsp_load::{resolve_control, wait_for_ramp_slot, PlayTarget, RtspClient, ViewerError};

/// Dynamic payload type of the H.264 track.
pub const PAYLOAD_TYPE: u8 = 96;
/// The track's control attribute, appended to the publish URL for SETUP.
pub const TRACK_CONTROL: &str = "trackID=0";
/// H.264's RTP clock.
const CLOCK_RATE: u32 = 90_000;

/// The SDP of an ANNOUNCE: one H.264 track with the synthetic stream's SPS and PPS.
pub fn announce_sdp() -> String {
    SessionDescription::new(
        "loadgen",
        "127.0.0.1",
        vec![MediaDescription::h264(PAYLOAD_TYPE, SPS, PPS, 0)],
    )
    .encode()
}

/// Packetizes frames into `$`-framed RTP for one interleaved channel.
#[derive(Debug, Clone)]
pub struct RtpPublisher {
    packetizer: H264Packetizer,
    channel: u8,
    timestamp_offset: u32,
    packets: Vec<RtpPacket>,
}

impl RtpPublisher {
    /// `ssrc`, first sequence number and timestamp offset: random per stream (RFC 3550).
    pub fn new(channel: u8, ssrc: u32, initial_sequence: u16, timestamp_offset: u32) -> Self {
        let config = PacketizerConfig::new(PAYLOAD_TYPE, ssrc, initial_sequence);
        RtpPublisher {
            packetizer: H264Packetizer::new(config).expect("the default configuration is valid"),
            channel,
            timestamp_offset,
            packets: Vec::new(),
        }
    }

    /// Appends the frame's RTP packets, each behind its `$` header, to `out`; returns how many.
    pub fn write_frame(&mut self, frame: &MediaFrame, out: &mut Vec<u8>) -> usize {
        let timestamp = rtp_timestamp(frame.pts_us.unwrap_or(0), CLOCK_RATE, self.timestamp_offset);
        self.packets.clear();
        self.packetizer
            .packetize(&frame.payload, timestamp, &mut self.packets);
        for packet in &self.packets {
            // Packets are at most the 1400-byte payload plus headers: always fit a `$` frame.
            if let Some(header) = InterleavedFrame::header(self.channel, packet.len()) {
                out.extend_from_slice(&header);
                for piece in packet.pieces() {
                    out.extend_from_slice(piece);
                }
            }
        }
        self.packets.len()
    }
}

// ----- publishing over sockets -----

/// What [`Publishers::start`] runs.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Where to publish: stream `n` goes to `targets[n]`.
    pub targets: Vec<PlayTarget>,
    pub shape: StreamShape,
    /// Publishers started per second.
    pub ramp_per_sec: f64,
    /// SEI send stamps in every frame (off only for servers that refuse SEI).
    pub stamps: bool,
}

/// One publisher's account of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PublisherRecord {
    pub stream: usize,
    /// Sessions that reached RECORD.
    pub sessions: u32,
    /// Sessions that failed or were cut off (each one is retried after a pause).
    pub failures: u32,
    pub frames: u64,
    /// Bytes written (RTSP and interleaved RTP).
    pub bytes: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Live totals over all publishers.
#[derive(Debug, Default)]
pub struct PublishTotals {
    pub recording: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub failures: AtomicU64,
    /// The latest failure of any publisher (stream index and error).
    last_error: std::sync::Mutex<Option<String>>,
}

/// Publishers running on their own thread until [`Publishers::stop`].
pub struct Publishers {
    running: rt::shard::RunningShards<Vec<PublisherRecord>>,
    totals: Arc<PublishTotals>,
}

/// Pause before a failed publisher tries again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Publishers {
    pub fn start(config: PublishConfig) -> Result<Publishers, rt::ShardError> {
        let totals = Arc::new(PublishTotals::default());
        let shard_totals = totals.clone();
        let pool = rt::ShardPool::new(1)
            .pin(false)
            .name("publishers")
            .io_memory(1 << 20);
        let running = pool.start(move |ctx| {
            let (config, totals) = (config.clone(), shard_totals.clone());
            async move { run_publishers(ctx.shutdown, config, totals).await }
        })?;
        Ok(Publishers { running, totals })
    }

    pub fn totals(&self) -> &PublishTotals {
        &self.totals
    }

    /// The latest failure of any publisher, e.g. `stream 3: ANNOUNCE answered 401 Unauthorized`.
    pub fn last_error(&self) -> Option<String> {
        self.totals.last_error.lock().ok()?.clone()
    }

    /// Stops every publisher (closing its connection) and returns their records, by stream.
    pub fn stop(self) -> Result<Vec<PublisherRecord>, rt::ShardError> {
        self.running.shutdown().trigger();
        let mut records: Vec<PublisherRecord> =
            self.running.join()?.into_iter().flatten().collect();
        records.sort_by_key(|r| r.stream);
        Ok(records)
    }
}

async fn run_publishers(
    shutdown: rt::Shutdown,
    config: PublishConfig,
    totals: Arc<PublishTotals>,
) -> Vec<PublisherRecord> {
    let started = Instant::now();
    let source = VideoSource::Synthetic(config.shape);
    let filler = Filler::for_source(&source);
    let records = Rc::new(RefCell::new(Vec::new()));
    let mut tasks = Vec::new();
    for (stream, target) in config.targets.iter().cloned().enumerate() {
        if !wait_for_ramp_slot(&shutdown, started, stream, config.ramp_per_sec).await {
            break;
        }
        let mut video = VideoStream::new(source.clone(), filler.clone());
        if !config.stamps {
            video = video.without_stamps();
        }
        let (shutdown, totals, records) = (shutdown.clone(), totals.clone(), records.clone());
        tasks.push(rt::spawn_local(async move {
            let mut record = PublisherRecord {
                stream,
                sessions: 0,
                failures: 0,
                frames: 0,
                bytes: 0,
                last_error: None,
            };
            shutdown
                .until(publish_until_stopped(
                    &target,
                    &mut video,
                    &totals,
                    &mut record,
                ))
                .await;
            records.borrow_mut().push(record);
        }));
    }
    for task in tasks {
        task.await;
    }
    let records = std::mem::take(&mut *records.borrow_mut());
    records
}

/// Publishes, and after a failure publishes again on a new connection (the stream continues
/// where it was, with a new SSRC), until the caller drops the future.
async fn publish_until_stopped(
    target: &PlayTarget,
    video: &mut VideoStream,
    totals: &PublishTotals,
    record: &mut PublisherRecord,
) {
    loop {
        let error = publish(target, video, totals, record).await;
        record.failures += 1;
        record.last_error = Some(error.to_string());
        totals.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = totals.last_error.lock() {
            *last = Some(format!("stream {}: {error}", record.stream));
        }
        rt::timer::sleep(RETRY_PAUSE).await;
    }
}

/// ANNOUNCE, SETUP, RECORD, then frames at the stream's rate until the connection fails.
async fn publish(
    target: &PlayTarget,
    video: &mut VideoStream,
    totals: &PublishTotals,
    record: &mut PublisherRecord,
) -> ViewerError {
    let stream =
        match rt::TcpStream::connect_timeout(target.addr, crate::rtsp_load::SETUP_TIMEOUT).await {
            Ok(stream) => stream,
            Err(e) => return ViewerError::Connect(e),
        };
    let _ = stream.set_nodelay(true);
    let mut client = RtspClient::new(stream, target.authorization.clone());
    let handshake = async {
        client
            .request(
                "ANNOUNCE",
                RtspRequest::builder(Method::Announce, target.url.clone())
                    .body("application/sdp", announce_sdp()),
            )
            .await?;
        client
            .request(
                "SETUP",
                RtspRequest::builder(
                    Method::Setup,
                    resolve_control(&target.url, Some(TRACK_CONTROL)),
                )
                .header(
                    "Transport",
                    "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
                ),
            )
            .await?;
        client
            .request(
                "RECORD",
                RtspRequest::builder(Method::Record, target.url.clone())
                    .header("Range", "npt=0.000-"),
            )
            .await
    };
    match rt::timer::timeout(crate::rtsp_load::SETUP_TIMEOUT, handshake).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return e,
        Err(_) => return ViewerError::Timeout("RECORD"),
    }
    record.sessions += 1;
    totals.recording.fetch_add(1, Ordering::Relaxed);
    let error = send_frames(&mut client, target, video, totals, record).await;
    totals.recording.fetch_sub(1, Ordering::Relaxed);
    error
}

async fn send_frames(
    client: &mut RtspClient,
    target: &PlayTarget,
    video: &mut VideoStream,
    totals: &PublishTotals,
    record: &mut PublisherRecord,
) -> ViewerError {
    let mut rtp = RtpPublisher::new(0, rand::random(), rand::random(), rand::random());
    let fps = video_fps(video);
    let period = Duration::from_secs(1) / fps;
    let keepalive_every =
        crate::rtsp_load::keepalive_interval(client.session.as_ref().and_then(|s| s.timeout));
    let started = Instant::now();
    let first_frame = video.frames();
    let mut next_keepalive = started + keepalive_every;
    let mut out = Vec::with_capacity(64 * 1024);
    let mut discard = vec![0u8; 16 * 1024];
    loop {
        out.clear();
        let frame = video.next_frame(crate::sei::unix_now_us());
        rtp.write_frame(&frame, &mut out);
        let now = Instant::now();
        if now >= next_keepalive {
            next_keepalive = now + keepalive_every;
            out.extend_from_slice(
                &client.prepare(RtspRequest::builder(Method::Options, target.url.clone())),
            );
        }
        let mut writer = &client.stream;
        if let Err(e) = writer.write_all(&out).await {
            return e.into();
        }
        record.frames += 1;
        record.bytes += out.len() as u64;
        totals.frames.fetch_add(1, Ordering::Relaxed);
        totals.bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        // Until the next frame is due, read (and drop) what the server sends: RTCP receiver
        // reports, keep-alive answers. A server that closes the connection ends the session.
        let sent = u32::try_from(video.frames() - first_frame).unwrap_or(u32::MAX);
        let due = started + period * sent;
        loop {
            let timer = async {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    rt::timer::sleep(wait).await;
                }
                None
            };
            let read = async {
                let mut reader = &client.stream;
                Some(reader.read(&mut discard).await)
            };
            match future::or(timer, read).await {
                None => break,
                Some(Ok(0)) => return ViewerError::Closed,
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.into(),
            }
        }
    }
}

fn video_fps(video: &VideoStream) -> u32 {
    video.fps().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::proto::interleaved::{DemuxLimits, Demuxed, Demuxer};
    use relay::proto::rtp::RtpHeader;
    use relay::proto::rtsp::Parsed;
    use relay::proto::sdp::Codec;

    #[test]
    fn announce_describes_one_h264_track_with_parameter_sets() {
        let sdp = SessionDescription::parse(announce_sdp().as_bytes()).unwrap();
        assert_eq!(sdp.media.len(), 1);
        let video = &sdp.media[0];
        assert_eq!(video.codec(), Codec::H264);
        assert_eq!(video.payload_type(), Some(PAYLOAD_TYPE));
        assert_eq!(video.control(), Some(TRACK_CONTROL));
        let sets = video.fmtp().base64_list("sprop-parameter-sets");
        assert_eq!(sets, [SPS, PPS]);
    }

    #[test]
    fn frames_become_interleaved_rtp_with_stamps_and_90khz_timestamps() {
        let shape = StreamShape::default();
        let source = VideoSource::Synthetic(shape);
        let mut video = VideoStream::new(source.clone(), Filler::for_source(&source));
        let mut rtp = RtpPublisher::new(0, 0x1234, 65_530, 1000);
        let mut wire = Vec::new();
        let mut packets = 0;
        for n in 0..3u64 {
            packets += rtp.write_frame(&video.next_frame(500 + n), &mut wire);
        }
        // Demux what a server reads: RTP on channel 0, sequence numbers in order across the
        // wrap, one timestamp per frame 3600 ticks apart, the marker on each frame's last packet.
        let mut demuxer = Demuxer::new(DemuxLimits::default());
        let mut at = 0;
        let mut seen = Vec::new();
        while at < wire.len() {
            let Parsed::Complete { message, consumed } = demuxer.feed(&wire[at..]).unwrap() else {
                panic!("incomplete frame at {at}");
            };
            let Demuxed::Interleaved { channel, payload } = message else {
                panic!("not interleaved");
            };
            assert_eq!(channel, 0);
            let packet = &wire[at..][payload];
            let (header, body) = RtpHeader::parse(packet).unwrap();
            let stamp = crate::sei::stamp_in_rtp_payload(&packet[body]);
            seen.push((header.sequence, header.timestamp, header.marker, stamp));
            at += consumed;
        }
        assert_eq!(seen.len(), packets);
        // The keyframe's IDR alone is larger than the 1400-byte payload: fragmented.
        assert!(packets > shape.frame_sizes().1 / 1400, "{packets}");
        for (i, pair) in seen.windows(2).enumerate() {
            assert_eq!(pair[1].0, pair[0].0.wrapping_add(1), "packet {i}");
        }
        let timestamps: Vec<u32> = seen.iter().filter(|s| s.2).map(|s| s.1).collect();
        assert_eq!(timestamps, [1000, 1000 + 3600, 1000 + 7200]);
        let stamps: Vec<u64> = seen
            .iter()
            .filter_map(|s| s.3.map(|stamp| stamp.sent_unix_us))
            .collect();
        assert_eq!(stamps, [500, 501, 502]);
    }
}
