//! What the hub needs to know about a packet an RTSP publisher pushes: which track it belongs to,
//! whether it is RTCP, whether a decoder can start on it (keyframe) and whether it ends an access
//! unit. The publisher's RTP header is relayed untouched; this only looks at it.
//!
//! Keyframes are found in the RTP payload with the codec helpers (H.264 IDR or SPS, H.265 IRAP
//! or VPS, as single NAL units, aggregates or first fragments). A keyframe whose parameter sets
//! arrive as separate packets just before the picture is marked once, on its first packet (same
//! RTP timestamp), so a viewer starting there receives the in-band parameter sets too.
//!
//! A publisher whose SDP lacks the parameter sets (`sprop-parameter-sets`, `sprop-vps/sps/pps`)
//! sends them in band only; they are collected from its packets here, so that viewers'
//! DESCRIBE gets them in the SDP (some players need them before the first keyframe).
#![forbid(unsafe_code)]

use crate::hub::{PacketMeta, TrackKind};
use crate::proto::rtp::RtpHeader;
use crate::proto::sdp::{Codec, MediaDescription};
use crate::proto::{h264, h265};

/// How keyframes are recognised on one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyframeRule {
    H264,
    H265,
    /// Video in a codec the relay does not look into: every access unit is a possible start.
    OpaqueVideo,
    /// Audio and data: never gates a viewer's start.
    NotVideo,
}

/// Per-track state of a publisher's ingest.
#[derive(Debug, Clone)]
pub struct TrackIngest {
    track: u8,
    kind: TrackKind,
    rule: KeyframeRule,
    /// RTP timestamp of the last access unit marked as a keyframe start.
    keyframe_timestamp: Option<u32>,
    /// The previous RTP packet ended an access unit (or none came yet).
    at_access_unit_start: bool,
    /// Parameter sets the SDP lacks, collected from the packets until complete.
    missing: Option<MissingParameterSets>,
}

/// The parameter sets of a video track whose SDP left them out, as seen in band so far.
#[derive(Debug, Clone)]
enum MissingParameterSets {
    H264(h264::H264ParameterSets),
    H265(h265::H265ParameterSets),
}

/// Why a publisher's RTP packet is not relayed. The publisher's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The packet on an RTP channel is not RTP version 2 or is truncated.
    #[error("track {track}: not an RTP packet: {source}")]
    NotRtp {
        /// The track whose RTP channel carried it.
        track: u8,
        /// What is wrong with it.
        #[source]
        source: crate::proto::rtp::RtpError,
    },
}

impl TrackIngest {
    /// The ingest state of the `track`-th media section of an announced SDP.
    pub fn new(track: u8, media: &MediaDescription) -> Self {
        let kind = track_kind(media);
        let rule = match (kind, media.codec()) {
            (TrackKind::Video, Codec::H264) => KeyframeRule::H264,
            (TrackKind::Video, Codec::H265) => KeyframeRule::H265,
            (TrackKind::Video, _) => KeyframeRule::OpaqueVideo,
            _ => KeyframeRule::NotVideo,
        };
        let fmtp = media.fmtp();
        let missing = match rule {
            KeyframeRule::H264 if fmtp.base64_list("sprop-parameter-sets").len() < 2 => {
                Some(MissingParameterSets::H264(Default::default()))
            }
            KeyframeRule::H265
                if ["sprop-vps", "sprop-sps", "sprop-pps"]
                    .iter()
                    .any(|name| fmtp.base64_list(name).is_empty()) =>
            {
                Some(MissingParameterSets::H265(Default::default()))
            }
            _ => None,
        };
        TrackIngest {
            track,
            kind,
            rule,
            keyframe_timestamp: None,
            at_access_unit_start: true,
            missing,
        }
    }

    /// For a track whose SDP lacked its parameter sets: looks for them in `packet` (RTP), and
    /// once every one has been seen returns the format parameters to add to the track's SDP
    /// (once; `None` before and after).
    pub fn observe_parameter_sets(&mut self, packet: &[u8]) -> Option<Vec<(&'static str, String)>> {
        use base64::Engine as _;
        let missing = self.missing.as_mut()?;
        let (_, payload) = RtpHeader::parse(packet).ok()?;
        let payload = packet.get(payload)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let params = match missing {
            MissingParameterSets::H264(sets) => {
                if !sets.observe_rtp_payload(payload) || !sets.is_complete() {
                    return None;
                }
                let (sps, pps) = (sets.sps.as_deref()?, sets.pps.as_deref()?);
                let mut params = vec![(
                    "sprop-parameter-sets",
                    format!("{},{}", b64.encode(sps), b64.encode(pps)),
                )];
                if let Some(profile) = sps.get(1..4) {
                    params.push((
                        "profile-level-id",
                        format!("{:02X}{:02X}{:02X}", profile[0], profile[1], profile[2]),
                    ));
                }
                params
            }
            MissingParameterSets::H265(sets) => {
                if !sets.observe_rtp_payload(payload) || !sets.is_complete() {
                    return None;
                }
                vec![
                    ("sprop-vps", b64.encode(sets.vps.as_deref()?)),
                    ("sprop-sps", b64.encode(sets.sps.as_deref()?)),
                    ("sprop-pps", b64.encode(sets.pps.as_deref()?)),
                ]
            }
        };
        self.missing = None;
        Some(params)
    }

    /// The track's media kind.
    pub fn kind(&self) -> TrackKind {
        self.kind
    }

    /// Metadata of an RTCP packet on this track's RTCP channel (relayed as is).
    pub fn rtcp_meta(&self) -> PacketMeta {
        PacketMeta {
            track: self.track,
            is_rtcp: true,
            keyframe_start: false,
            end_of_access_unit: false,
        }
    }

    /// Metadata of an RTP packet on this track's RTP channel.
    pub fn rtp_meta(&mut self, packet: &[u8]) -> Result<PacketMeta, IngestError> {
        let (header, payload) = RtpHeader::parse(packet).map_err(|source| IngestError::NotRtp {
            track: self.track,
            source,
        })?;
        let payload = packet.get(payload).unwrap_or_default();
        let starts_keyframe = match self.rule {
            KeyframeRule::H264 => h264::payload_starts_keyframe(payload),
            KeyframeRule::H265 => h265::payload_starts_keyframe(payload),
            KeyframeRule::OpaqueVideo => self.at_access_unit_start,
            KeyframeRule::NotVideo => false,
        };
        let keyframe_start = starts_keyframe && self.keyframe_timestamp != Some(header.timestamp);
        if keyframe_start {
            self.keyframe_timestamp = Some(header.timestamp);
        }
        // Video access units end on the marker bit (RFC 6184, 7798); an audio packet carries
        // whole frames.
        let end_of_access_unit = match self.kind {
            TrackKind::Video => header.marker,
            _ => true,
        };
        self.at_access_unit_start = end_of_access_unit;
        Ok(PacketMeta {
            track: self.track,
            is_rtcp: false,
            keyframe_start,
            end_of_access_unit,
        })
    }
}

/// The kind of a media section (`m=video`, `m=audio`, anything else).
pub fn track_kind(media: &MediaDescription) -> TrackKind {
    if media.media.eq_ignore_ascii_case("video") {
        TrackKind::Video
    } else if media.media.eq_ignore_ascii_case("audio") {
        TrackKind::Audio
    } else {
        TrackKind::Application
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::interleaved::{Demuxed, Demuxer};
    use crate::proto::sdp::SessionDescription;
    use bytes::BytesMut;

    const ANNOUNCE: &str = include_str!("../../testdata/ffmpeg_announce_h264_aac.txt");
    const RECORD: &[u8] = include_bytes!("../../testdata/ffmpeg_record_h264_aac_interleaved.bin");

    fn sdp_of(announce: &str) -> SessionDescription {
        let body = &announce[announce.find("v=0").unwrap()..];
        let end = body.find("SETUP").unwrap_or(body.len());
        SessionDescription::parse(&body.as_bytes()[..end]).unwrap()
    }

    #[test]
    fn recorded_ffmpeg_publish_has_one_keyframe_start_per_idr() {
        let sdp = sdp_of(ANNOUNCE);
        let mut tracks: Vec<TrackIngest> = sdp
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| TrackIngest::new(i as u8, m))
            .collect();
        assert_eq!(tracks[0].kind(), TrackKind::Video);
        assert_eq!(tracks[1].kind(), TrackKind::Audio);
        let mut demuxer = Demuxer::default();
        let mut buf = BytesMut::from(RECORD);
        let (mut keyframes, mut video_frames, mut audio) = (0, 0, 0);
        while let Some(item) = demuxer.feed_bytes(&mut buf).unwrap() {
            let Demuxed::Interleaved { channel, payload } = item else {
                continue;
            };
            if channel % 2 == 1 {
                continue;
            }
            let track = &mut tracks[usize::from(channel / 2)];
            let meta = track.rtp_meta(&payload).unwrap();
            keyframes += usize::from(meta.keyframe_start);
            if meta.track == 0 {
                video_frames += usize::from(meta.end_of_access_unit);
                assert!(!meta.keyframe_start || video_frames == 0 || keyframes > 0);
            } else {
                audio += 1;
                assert!(!meta.keyframe_start);
            }
        }
        assert!(keyframes >= 1, "the recording starts with an IDR picture");
        assert!(video_frames > keyframes);
        assert!(audio > 0);
    }

    #[test]
    fn refuses_non_rtp() {
        let sdp = sdp_of(ANNOUNCE);
        let mut track = TrackIngest::new(0, &sdp.media[0]);
        assert!(matches!(
            track.rtp_meta(&[0x40, 0, 0]),
            Err(IngestError::NotRtp { track: 0, .. })
        ));
    }

    #[test]
    fn parameter_sets_then_idr_mark_one_start() {
        let sdp = sdp_of(ANNOUNCE);
        let mut track = TrackIngest::new(0, &sdp.media[0]);
        let packet = |nal: u8, ts: u32, marker: bool| {
            let mut p = vec![0x80, if marker { 0x80 | 96 } else { 96 }, 0, 1];
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 1, nal, 0xaa]);
            p
        };
        let sps = track.rtp_meta(&packet(0x67, 9000, false)).unwrap();
        let pps = track.rtp_meta(&packet(0x68, 9000, false)).unwrap();
        let idr = track.rtp_meta(&packet(0x65, 9000, true)).unwrap();
        let next_idr = track.rtp_meta(&packet(0x65, 12600, true)).unwrap();
        assert!(sps.keyframe_start);
        assert!(!pps.keyframe_start && !idr.keyframe_start);
        assert!(idr.end_of_access_unit);
        assert!(next_idr.keyframe_start);
    }

    /// An RTP packet carrying `payload` (one NAL unit or an aggregate).
    fn rtp(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0x23, 0x28, 0, 0, 0, 1];
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn h265_parameter_sets_missing_from_the_sdp_are_collected_once() {
        let body = b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n\
a=rtpmap:96 H265/90000\r\na=control:streamid=0\r\n";
        let sdp = SessionDescription::parse(body).unwrap();
        let mut track = TrackIngest::new(0, &sdp.media[0]);
        // VPS (type 32), SPS (33), PPS (34): two-byte NAL headers.
        let (vps, sps, pps) = (
            [0x40, 0x01, 0x0c, 0x01],
            [0x42, 0x01, 0x01, 0x01],
            [0x44, 0x01, 0xc1, 0x72],
        );
        assert_eq!(track.observe_parameter_sets(&rtp(&vps)), None);
        assert_eq!(track.observe_parameter_sets(&rtp(&sps)), None);
        let params = track.observe_parameter_sets(&rtp(&pps)).unwrap();
        assert_eq!(
            params,
            vec![
                ("sprop-vps", "QAEMAQ==".to_owned()),
                ("sprop-sps", "QgEBAQ==".to_owned()),
                ("sprop-pps", "RAHBcg==".to_owned()),
            ]
        );
        // Once only.
        assert_eq!(track.observe_parameter_sets(&rtp(&pps)), None);
    }

    #[test]
    fn parameter_sets_in_the_sdp_are_not_collected() {
        let sdp = sdp_of(ANNOUNCE);
        let mut track = TrackIngest::new(0, &sdp.media[0]);
        // A STAP-A with an SPS and a PPS: the SDP has both already.
        let stap = [0x18, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert_eq!(track.observe_parameter_sets(&rtp(&stap)), None);
    }
}
