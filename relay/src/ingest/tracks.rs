//! From demuxed ROP media frames to the hub's RTP packets and the stream's description: one
//! packetizer per track (video 0, audio 1), RTP timestamps from the device's PTS, and the SDP
//! rebuilt from the parameter sets and AAC configuration actually received.

use crate::hub::{PacketMeta, RtpPacket, StreamDescription, TrackKind};
use crate::proto::aac::{AacPacketizer, AdtsHeader, AudioSpecificConfig};
use crate::proto::h264::H264Packetizer;
use crate::proto::h265::H265Packetizer;
use crate::proto::media::{Codec, FrameKind, MediaFrame};
use crate::proto::rtp::{self, rtp_timestamp, PacketizerConfig, PacketizerConfigError};
use crate::proto::sdp::{MediaDescription, SessionDescription};

use super::{IngestConfig, IngestStats};

/// Track index of the video in the description and the packets.
pub const VIDEO_TRACK: u8 = 0;
/// Track index of the audio, when the device sends audio.
pub const AUDIO_TRACK: u8 = 1;
/// RTP clock of video (RFC 6184, 7798).
pub const VIDEO_CLOCK: u32 = 90_000;
/// Samples in one AAC-LC frame.
const AAC_FRAME_SAMPLES: u64 = 1024;

#[derive(Debug)]
enum VideoPacketizer {
    H264(H264Packetizer),
    H265(H265Packetizer),
}

impl VideoPacketizer {
    fn codec(&self) -> Codec {
        match self {
            VideoPacketizer::H264(_) => Codec::H264,
            VideoPacketizer::H265(_) => Codec::H265,
        }
    }

    fn next_sequence(&self) -> u16 {
        match self {
            VideoPacketizer::H264(p) => p.next_sequence(),
            VideoPacketizer::H265(p) => p.next_sequence(),
        }
    }

    /// The video section once every parameter set is known.
    fn media_description(&self, payload_type: u8) -> Option<MediaDescription> {
        let track = u32::from(VIDEO_TRACK);
        match self {
            VideoPacketizer::H264(p) => {
                let sets = p.parameter_sets();
                Some(MediaDescription::h264(
                    payload_type,
                    sets.sps.as_deref()?,
                    sets.pps.as_deref()?,
                    track,
                ))
            }
            VideoPacketizer::H265(p) => {
                let sets = p.parameter_sets();
                Some(MediaDescription::h265(
                    payload_type,
                    sets.vps.as_deref()?,
                    sets.sps.as_deref()?,
                    sets.pps.as_deref()?,
                    track,
                ))
            }
        }
    }
}

/// What one media frame produced, in the order the caller must act on it.
#[derive(Debug, Default)]
pub struct FrameOutput {
    /// A new or changed description, to set before pushing the packets.
    pub description: Option<StreamDescription>,
    /// The frame's packets.
    pub packets: Vec<RtpPacket>,
}

/// Packetizers and description state of one stream connection.
#[derive(Debug)]
pub struct Tracks {
    video_config: PacketizerConfig,
    audio_config: PacketizerConfig,
    video_timestamp_offset: u32,
    audio_timestamp_offset: u32,
    session_name: String,
    sdp_origin: String,
    video: Option<VideoPacketizer>,
    audio: AacPacketizer,
    aac_config: Option<AudioSpecificConfig>,
    /// The last description handed out (its SDP), to report only changes.
    described: Option<String>,
    seen_keyframe: bool,
    /// The first keyframe's packets, waiting for the first description.
    held: Option<Vec<RtpPacket>>,
    last_video_pts: Option<u64>,
    /// A continued stream: the PTS its first relayed video frame is moved to.
    resume_pts: Option<u64>,
    /// Added to every video PTS (non-zero for a continued stream, fixed by its first frame).
    pts_shift: i128,
    /// Audio clock ticks of the next AAC frame (before the offset).
    audio_next: Option<u64>,
    scratch: Vec<rtp::RtpPacket>,
}

impl Tracks {
    pub fn new(config: &IngestConfig) -> Result<Self, PacketizerConfigError> {
        let packetizer = |track: &super::RtpTrackConfig| PacketizerConfig {
            max_payload_len: config.max_rtp_payload,
            ..PacketizerConfig::new(track.payload_type, track.ssrc, track.initial_sequence)
        };
        let video_config = packetizer(&config.video);
        let audio_config = packetizer(&config.audio);
        video_config.validate()?;
        Ok(Tracks {
            video_config,
            audio_config,
            video_timestamp_offset: config.video.timestamp_offset,
            audio_timestamp_offset: config.audio.timestamp_offset,
            session_name: config.session_name.clone(),
            sdp_origin: config.sdp_origin.clone(),
            video: None,
            audio: AacPacketizer::new(audio_config)?,
            aac_config: None,
            described: None,
            seen_keyframe: false,
            held: None,
            last_video_pts: None,
            resume_pts: None,
            pts_shift: 0,
            audio_next: None,
            scratch: Vec::new(),
        })
    }

    /// Moves the stream's timeline so that its first relayed video frame has PTS `pts_us`
    /// (`None`: the device's PTS as they are).
    pub fn resume_at(&mut self, pts_us: Option<u64>) {
        self.resume_pts = pts_us;
    }

    /// Whether any media frame was processed.
    pub fn has_media(&self) -> bool {
        self.video.is_some() || self.aac_config.is_some()
    }

    /// PTS of the last video frame relayed (shifted as relayed), or where a continued stream
    /// was to resume if it relayed nothing yet.
    pub fn last_pts_us(&self) -> Option<u64> {
        self.last_video_pts.or(self.resume_pts)
    }

    /// Whether a description has been handed out.
    pub fn is_described(&self) -> bool {
        self.described.is_some()
    }

    /// After lost bytes: video restarts at the next keyframe (P-frames would reference pictures
    /// the viewers never got).
    pub fn lost_sync(&mut self) {
        self.seen_keyframe = false;
        self.held = None;
    }

    /// Sequence numbers the next video and audio packets will carry (to continue the RTP
    /// sequence on a reconnect).
    pub fn next_sequences(&self) -> (u16, u16) {
        let video = self.video.as_ref().map_or(
            self.video_config.initial_sequence,
            VideoPacketizer::next_sequence,
        );
        (video, self.audio.next_sequence())
    }

    pub fn frame(&mut self, frame: &MediaFrame, stats: &mut IngestStats, out: &mut FrameOutput) {
        if frame.kind.is_video() {
            self.video_frame(frame, stats, out);
        } else {
            self.audio_frame(frame, stats, out);
        }
    }

    fn video_frame(&mut self, frame: &MediaFrame, stats: &mut IngestStats, out: &mut FrameOutput) {
        stats.video_frames += 1;
        if self.video.as_ref().map(VideoPacketizer::codec) != Some(frame.codec) {
            let initial_sequence = self.video.as_ref().map_or(
                self.video_config.initial_sequence,
                VideoPacketizer::next_sequence,
            );
            let config = PacketizerConfig {
                initial_sequence,
                ..self.video_config
            };
            // The configuration was validated in `new`.
            let packetizer = match frame.codec {
                Codec::H265 => H265Packetizer::new(config).map(VideoPacketizer::H265),
                _ => H264Packetizer::new(config).map(VideoPacketizer::H264),
            };
            let Ok(packetizer) = packetizer else {
                return;
            };
            self.video = Some(packetizer);
            self.seen_keyframe = false;
        }
        if !self.seen_keyframe && frame.kind != FrameKind::VideoI {
            stats.video_frames_before_keyframe += 1;
            return;
        }
        let mut pts = frame.pts_us.unwrap_or(0);
        if let Some(resume) = self.resume_pts.take() {
            self.pts_shift = i128::from(resume) - i128::from(pts);
        }
        if self.pts_shift != 0 {
            pts = u64::try_from((i128::from(pts) + self.pts_shift).max(0)).unwrap_or(u64::MAX);
        }
        self.last_video_pts = Some(pts);
        let timestamp = rtp_timestamp(pts, VIDEO_CLOCK, self.video_timestamp_offset);
        self.scratch.clear();
        let summary = match self.video.as_mut() {
            Some(VideoPacketizer::H264(p)) => {
                p.packetize(&frame.payload, timestamp, &mut self.scratch)
            }
            Some(VideoPacketizer::H265(p)) => {
                p.packetize(&frame.payload, timestamp, &mut self.scratch)
            }
            None => return,
        };
        self.seen_keyframe |= summary.keyframe;
        if !self.seen_keyframe {
            stats.video_frames_before_keyframe += 1;
            return;
        }
        // Straight into the caller's reused list: no list of its own per frame.
        let start = out.packets.len();
        let mut first = summary.keyframe;
        for packet in self.scratch.drain(..) {
            let meta = PacketMeta {
                track: VIDEO_TRACK,
                is_rtcp: false,
                keyframe_start: std::mem::take(&mut first),
                end_of_access_unit: packet.marker(),
            };
            push(meta, packet, stats, &mut out.packets);
        }
        if !self.is_described() {
            // The first description waits for the first audio frame, which follows the first
            // keyframe closely, so that viewers get both tracks; a device without audio costs
            // one frame of delay. The keyframe's packets wait with it.
            let complete = self.video.as_ref().is_some_and(|v| {
                v.media_description(self.video_config.payload_type)
                    .is_some()
            });
            if !complete {
                out.packets.truncate(start);
                stats.video_frames_before_keyframe += 1;
                return;
            }
            if self.aac_config.is_none() && self.held.is_none() {
                self.held = Some(out.packets.split_off(start));
                return;
            }
            out.description = self.describe();
            // The held keyframe's packets go before this frame's.
            if let Some(held) = self.held.take() {
                out.packets.splice(start..start, held);
            }
        } else if summary.parameter_sets_changed {
            out.description = self.describe();
        }
    }

    fn audio_frame(&mut self, frame: &MediaFrame, stats: &mut IngestStats, out: &mut FrameOutput) {
        stats.audio_frames += 1;
        let mut head = [0u8; 9];
        let mut filled = 0;
        for part in &frame.payload {
            let take = (head.len() - filled).min(part.len());
            head[filled..filled + take].copy_from_slice(&part[..take]);
            filled += take;
        }
        let header = match AdtsHeader::parse(&head[..filled], 0) {
            Ok(header) => header,
            Err(_) => {
                stats.bad_audio_frames += 1;
                return;
            }
        };
        let config = header.audio_specific_config();
        let rate = u64::from(header.sample_rate());
        if rate == 0 {
            stats.bad_audio_frames += 1;
            return;
        }
        if self.aac_config != Some(config) {
            self.aac_config = Some(config);
            if self.is_described() || self.held.is_some() {
                out.description = self.describe();
                out.packets.extend(self.held.take().into_iter().flatten());
            }
        }
        if !self.is_described() || !self.seen_keyframe {
            stats.audio_frames_before_keyframe += 1;
            return;
        }
        // The device sends no audio timestamps: audio follows the latest video PTS and then
        // counts samples, re-anchoring when the two drift apart by more than half a second.
        let anchor = self
            .last_video_pts
            .map(|pts| pts.saturating_mul(rate) / 1_000_000);
        let ticks = match (self.audio_next, anchor) {
            (Some(next), Some(anchor)) if next.abs_diff(anchor) <= rate / 2 => next,
            (_, Some(anchor)) => anchor,
            (Some(next), None) => next,
            (None, None) => 0,
        };
        let timestamp = (ticks as u32).wrapping_add(self.audio_timestamp_offset);
        self.scratch.clear();
        let frames = match self
            .audio
            .packetize(&frame.payload, timestamp, &mut self.scratch)
        {
            Ok(summary) => summary.frames,
            Err(_) => {
                stats.bad_audio_frames += 1;
                self.scratch.len()
            }
        };
        self.audio_next = Some(ticks + AAC_FRAME_SAMPLES * frames as u64);
        for packet in self.scratch.drain(..) {
            let meta = PacketMeta {
                track: AUDIO_TRACK,
                is_rtcp: false,
                keyframe_start: false,
                end_of_access_unit: packet.marker(),
            };
            push(meta, packet, stats, &mut out.packets);
        }
    }

    /// The description from what is known now, if it differs from the last one handed out.
    fn describe(&mut self) -> Option<StreamDescription> {
        let video = self
            .video
            .as_ref()?
            .media_description(self.video_config.payload_type)?;
        let mut media = vec![video];
        let mut tracks = vec![TrackKind::Video];
        if let Some(config) = self.aac_config {
            media.push(MediaDescription::aac(
                self.audio_config.payload_type,
                config,
                u32::from(AUDIO_TRACK),
            ));
            tracks.push(TrackKind::Audio);
        }
        let sdp = SessionDescription::new(&self.session_name, &self.sdp_origin, media).encode();
        if self.described.as_deref() == Some(sdp.as_str()) {
            return None;
        }
        self.described = Some(sdp.clone());
        Some(StreamDescription { sdp, tracks })
    }
}

/// Converts a packetizer's packet into the hub's (same bytes: prefix and two payload slices).
fn push(
    meta: PacketMeta,
    mut packet: rtp::RtpPacket,
    stats: &mut IngestStats,
    out: &mut Vec<RtpPacket>,
) {
    let [payload, tail] = std::mem::take(&mut packet.payload).pieces;
    stats.payload_bytes += (payload.len() + tail.len()) as u64;
    match RtpPacket::new(meta, packet.prefix(), payload, tail) {
        Ok(packet) => {
            stats.rtp_packets += 1;
            out.push(packet);
        }
        // Cannot happen with a validated MTU (prefix <= 16 bytes, payload <= 65000).
        Err(_) => stats.internal_errors += 1,
    }
}
