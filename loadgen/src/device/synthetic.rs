//! What a simulated camera streams when the load is about bitrate, not pictures: H.264 access
//! units with realistic sizes (a keyframe every GOP, keyframes several times the size of a
//! P-frame, the GOP's bytes matching the bitrate), or a real clip looped; either way every frame
//! carries a [`FrameStamp`] SEI with its send time, placed before the first slice.
//!
//! The synthetic slices are filler bytes behind real slice NAL headers and the clip's SPS/PPS:
//! a relay parses, caches and forwards them like camera video; a decoder would show garbage.
//! The bytes come from one shared buffer, so a thousand streams cost no copies.

use std::sync::Arc;

use bytes::Bytes;
use relay::proto::media::{Codec, FrameKind, MediaFrame};
use smallvec::SmallVec;

use super::clip::VideoClip;
use crate::sei::FrameStamp;

/// Annex-B start code, as cameras write it.
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// SPS of the 320x240 Main-profile test clip (loadgen/testdata/ropdev_h264_3s.264).
pub const SPS: &[u8] = &[
    0x67, 0x4d, 0x40, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
    0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0xa4, 0x80,
];
/// Its PPS.
pub const PPS: &[u8] = &[0x68, 0xeb, 0xc1, 0x12, 0xc8];
/// IDR slice NAL header (nal_ref_idc 3, type 5) and the first bytes of a slice header.
const IDR_HEADER: &[u8] = &[0x65, 0x88, 0x84];
/// Non-IDR slice (nal_ref_idc 2, type 1).
const P_HEADER: &[u8] = &[0x41, 0x9a, 0x22];

/// Shape of a synthetic stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamShape {
    /// Video bits per second (payload, before ROP framing).
    pub bitrate_bps: u64,
    pub fps: u32,
    /// Frames from one keyframe to the next.
    pub gop: u32,
    /// Keyframe size over P-frame size (cameras: 5..15 for static scenes).
    pub keyframe_ratio: u32,
}

impl Default for StreamShape {
    fn default() -> Self {
        StreamShape {
            bitrate_bps: 2_000_000,
            fps: 25,
            gop: 50,
            keyframe_ratio: 8,
        }
    }
}

impl StreamShape {
    /// Bytes of a P-frame and of a keyframe, so that one GOP carries `bitrate * gop / fps` bits.
    pub fn frame_sizes(&self) -> (usize, usize) {
        let (fps, gop, ratio) = (
            u64::from(self.fps.max(1)),
            u64::from(self.gop.max(1)),
            u64::from(self.keyframe_ratio.max(1)),
        );
        let gop_bytes = self.bitrate_bps / 8 * gop / fps;
        let p = (gop_bytes / (ratio + gop - 1)).max(16);
        let i = if gop == 1 {
            gop_bytes.max(16)
        } else {
            p * ratio
        };
        (p as usize, i as usize)
    }
}

/// Where a stream's pictures come from.
#[derive(Debug, Clone)]
pub enum VideoSource {
    /// Generated frames of the given shape (H.264).
    Synthetic(StreamShape),
    /// A real clip, looped at `fps`.
    Clip { clip: Arc<VideoClip>, fps: u32 },
}

impl VideoSource {
    pub fn fps(&self) -> u32 {
        match self {
            VideoSource::Synthetic(shape) => shape.fps.max(1),
            VideoSource::Clip { fps, .. } => (*fps).max(1),
        }
    }

    pub fn codec(&self) -> Codec {
        match self {
            VideoSource::Synthetic(_) => Codec::H264,
            VideoSource::Clip { clip, .. } => clip.codec,
        }
    }
}

/// Filler shared by all synthetic streams of a process: non-zero bytes (so no start code or
/// emulation-prevention pattern can appear), long enough for the largest keyframe.
#[derive(Debug, Clone)]
pub struct Filler(Bytes);

impl Filler {
    pub fn new(len: usize) -> Filler {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state as u8) | 1
            })
            .collect::<Vec<u8>>();
        Filler(Bytes::from(bytes))
    }

    /// Filler for streams of `source`.
    pub fn for_source(source: &VideoSource) -> Filler {
        match source {
            VideoSource::Synthetic(shape) => Filler::new(shape.frame_sizes().1),
            VideoSource::Clip { .. } => Filler::new(0),
        }
    }
}

/// One camera's video: frames in order, with PTS, stamped when taken.
#[derive(Debug, Clone)]
pub struct VideoStream {
    source: VideoSource,
    filler: Filler,
    /// Frames produced so far.
    frame: u64,
    /// Frame number of the last keyframe.
    last_keyframe: Option<u64>,
    /// Clip position (clips restart on their first keyframe).
    clip_index: usize,
    keyframe_wanted: bool,
    stamps: bool,
}

impl VideoStream {
    pub fn new(source: VideoSource, filler: Filler) -> VideoStream {
        VideoStream {
            source,
            filler,
            frame: 0,
            last_keyframe: None,
            clip_index: 0,
            keyframe_wanted: false,
            stamps: true,
        }
    }

    /// No SEI stamps (for servers whose packetizer refuses SEI, like the platform's own).
    pub fn without_stamps(mut self) -> Self {
        self.stamps = false;
        self
    }

    /// The next frame is a keyframe (a server's keyframe request); clips go back to their start.
    pub fn request_keyframe(&mut self) {
        self.keyframe_wanted = true;
    }

    pub fn fps(&self) -> u32 {
        self.source.fps()
    }

    /// Frames produced so far.
    pub fn frames(&self) -> u64 {
        self.frame
    }

    /// The next frame, stamped with `sent_unix_us`.
    pub fn next_frame(&mut self, sent_unix_us: u64) -> MediaFrame {
        let stamp = FrameStamp {
            sent_unix_us,
            frame: self.frame as u32,
        };
        let fps = u64::from(self.source.fps());
        let pts_us = Some(self.frame * 1_000_000 / fps);
        let (keyframe, payload) = match &self.source {
            VideoSource::Synthetic(shape) => {
                let since = self.last_keyframe.map(|k| self.frame - k);
                let keyframe = self.keyframe_wanted
                    || since.is_none_or(|since| since >= u64::from(shape.gop.max(1)));
                let (p_size, i_size) = shape.frame_sizes();
                let mut head = Vec::with_capacity(96);
                if keyframe {
                    for nal in [SPS, PPS] {
                        head.extend_from_slice(&START_CODE);
                        head.extend_from_slice(nal);
                    }
                }
                if self.stamps {
                    head.extend_from_slice(&START_CODE);
                    head.extend_from_slice(&stamp.to_sei_nal());
                }
                head.extend_from_slice(&START_CODE);
                let (header, size) = if keyframe {
                    (IDR_HEADER, i_size)
                } else {
                    (P_HEADER, p_size)
                };
                head.extend_from_slice(header);
                let body = size.saturating_sub(head.len()).min(self.filler.0.len());
                let mut payload: SmallVec<[Bytes; 2]> = SmallVec::new();
                payload.push(Bytes::from(head));
                payload.push(self.filler.0.slice(..body));
                (keyframe, payload)
            }
            VideoSource::Clip { clip, .. } => {
                if self.keyframe_wanted || self.clip_index >= clip.access_units.len() {
                    self.clip_index = 0;
                }
                let unit = &clip.access_units[self.clip_index];
                self.clip_index += 1;
                let mut payload: SmallVec<[Bytes; 2]> = SmallVec::new();
                let mut stamped = clip.codec != Codec::H264 || !self.stamps;
                let mut head = Vec::new();
                for nal in &unit.nal_units {
                    let kind = nal.first().map_or(0, |b| b & 0x1f);
                    if !stamped && (1..=5).contains(&kind) {
                        head.extend_from_slice(&START_CODE);
                        head.extend_from_slice(&stamp.to_sei_nal());
                        stamped = true;
                    }
                    head.extend_from_slice(&START_CODE);
                    payload.push(Bytes::from(std::mem::take(&mut head)));
                    payload.push(nal.clone());
                }
                (unit.keyframe, payload)
            }
        };
        if keyframe {
            self.last_keyframe = Some(self.frame);
            self.keyframe_wanted = false;
        }
        self.frame += 1;
        MediaFrame {
            kind: if keyframe {
                FrameKind::VideoI
            } else {
                FrameKind::VideoP
            },
            codec: self.source.codec(),
            pts_us,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::proto::nal::Chunks;

    fn nal_types(frame: &MediaFrame) -> Vec<u8> {
        let payload = frame.payload_contiguous();
        let chunks = [payload];
        let units = Chunks::new(&chunks);
        units
            .nal_ranges()
            .map(|r| units.byte_at(r.start).unwrap() & 0x1f)
            .collect()
    }

    #[test]
    fn frame_sizes_add_up_to_the_bitrate() {
        let shape = StreamShape::default();
        let (p, i) = shape.frame_sizes();
        assert_eq!(i, 8 * p);
        let gop_bytes = i + 49 * p;
        // 2 Mbit/s * 2 s = 500,000 bytes per GOP, less rounding.
        assert!((499_000..=500_000).contains(&gop_bytes), "{gop_bytes}");
    }

    #[test]
    fn keyframe_every_gop_with_parameter_sets_and_a_stamp() {
        let shape = StreamShape {
            bitrate_bps: 1_000_000,
            fps: 10,
            gop: 5,
            keyframe_ratio: 4,
        };
        let source = VideoSource::Synthetic(shape);
        let mut stream = VideoStream::new(source.clone(), Filler::for_source(&source));
        let (p_size, i_size) = shape.frame_sizes();
        let mut bytes = 0;
        for n in 0..20u64 {
            let frame = stream.next_frame(1000 + n);
            bytes += frame.payload_len();
            assert_eq!(frame.pts_us, Some(n * 100_000));
            let keyframe = n % 5 == 0;
            assert_eq!(frame.kind == FrameKind::VideoI, keyframe, "frame {n}");
            assert_eq!(
                frame.payload_len(),
                if keyframe { i_size } else { p_size },
                "frame {n}"
            );
            let types = nal_types(&frame);
            if keyframe {
                assert_eq!(types, [7, 8, 6, 5]);
            } else {
                assert_eq!(types, [6, 1]);
            }
            let payload = frame.payload_contiguous();
            let sei_at = payload
                .windows(5)
                .position(|w| w[..4] == START_CODE && w[4] == 6)
                .unwrap();
            let sei = &payload[sei_at + 4..];
            let sei_len = sei.windows(4).position(|w| w == START_CODE).unwrap();
            let stamp = FrameStamp::from_nal(&sei[..sei_len]).unwrap();
            assert_eq!(
                stamp,
                FrameStamp {
                    sent_unix_us: 1000 + n,
                    frame: n as u32
                }
            );
        }
        // Two seconds of 1 Mbit/s.
        assert!((249_000..=250_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn keyframe_requests_restart_the_gop() {
        let source = VideoSource::Synthetic(StreamShape::default());
        let mut stream = VideoStream::new(source.clone(), Filler::for_source(&source));
        assert_eq!(stream.next_frame(0).kind, FrameKind::VideoI);
        assert_eq!(stream.next_frame(0).kind, FrameKind::VideoP);
        stream.request_keyframe();
        assert_eq!(stream.next_frame(0).kind, FrameKind::VideoI);
        for _ in 0..49 {
            assert_eq!(stream.next_frame(0).kind, FrameKind::VideoP);
        }
        assert_eq!(stream.next_frame(0).kind, FrameKind::VideoI);
        assert_eq!(stream.frames(), 53);
    }

    #[test]
    fn streams_without_stamps_have_no_sei() {
        let source = VideoSource::Synthetic(StreamShape::default());
        let mut stream =
            VideoStream::new(source.clone(), Filler::for_source(&source)).without_stamps();
        let (p_size, i_size) = StreamShape::default().frame_sizes();
        let keyframe = stream.next_frame(0);
        assert_eq!(nal_types(&keyframe), [7, 8, 5]);
        assert_eq!(keyframe.payload_len(), i_size);
        let p = stream.next_frame(0);
        assert_eq!(nal_types(&p), [1]);
        assert_eq!(p.payload_len(), p_size);
    }

    #[test]
    fn clip_frames_get_a_stamp_before_the_first_slice() {
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/ropdev_h264_3s.264"
        ))
        .unwrap();
        let clip = Arc::new(VideoClip::from_annex_b(Codec::H264, Bytes::from(data)).unwrap());
        let units = clip.access_units.len();
        let source = VideoSource::Clip { clip, fps: 25 };
        let mut stream = VideoStream::new(source.clone(), Filler::for_source(&source));
        let first = stream.next_frame(9);
        assert_eq!(first.kind, FrameKind::VideoI);
        assert_eq!(nal_types(&first), [7, 8, 6, 5]);
        for _ in 1..units {
            let frame = stream.next_frame(9);
            assert_eq!(nal_types(&frame).iter().filter(|t| **t == 6).count(), 1);
        }
        // Looped: the clip starts again on its keyframe.
        assert_eq!(stream.next_frame(9).kind, FrameKind::VideoI);
    }
}
