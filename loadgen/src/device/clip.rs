//! Media a simulated camera sends: a real Annex-B H.264/H.265 clip cut into access units the way
//! ROP cameras send them (an I-frame is VPS/SPS/PPS then the IDR slice, 4-byte start codes, no
//! AUD or SEI), an ADTS AAC clip cut into frames, and a player that interleaves both by time as
//! ROP media frames with PTS in microseconds.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use relay::proto::aac::{AdtsHeader, SAMPLES_PER_FRAME};
use relay::proto::media::{Codec, FrameKind, MediaFrame};
use relay::proto::nal::NalUnits;

/// A clip cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// The video clip holds no picture.
    #[error("video clip has no pictures")]
    NoPictures,
    /// The first picture is not a keyframe with its parameter sets.
    #[error("video clip does not start with a keyframe and its parameter sets")]
    NoKeyframe,
    /// The audio clip is not ADTS.
    #[error("audio clip is not ADTS at byte {offset}: {reason}")]
    NotAdts {
        /// Byte offset of the bad frame.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The codec is not a video codec.
    #[error("{0:?} is not a video codec")]
    NotVideo(Codec),
}

/// One picture as the camera sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// An IDR (H.265: IRAP) picture, preceded by its parameter sets.
    pub keyframe: bool,
    /// Annex-B, 4-byte start codes: the media frame's payload.
    pub annex_b: Bytes,
    /// The NAL units (without start codes), slices of `annex_b`.
    pub nal_units: Vec<Bytes>,
}

/// A video clip cut into access units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoClip {
    /// H.264 or H.265.
    pub codec: Codec,
    /// The pictures in decoding order.
    pub access_units: Vec<AccessUnit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NalRole {
    /// VPS/SPS/PPS: kept, and repeated before keyframes that lack them.
    ParameterSet(usize),
    /// A slice; `first` when it starts a new picture.
    Slice { first: bool, keyframe: bool },
    /// AUD, SEI, filler: cameras do not send them.
    Dropped,
    /// Anything else: kept in the picture.
    Other,
}

fn role(codec: Codec, nal: &[u8]) -> NalRole {
    let Some(&h0) = nal.first() else {
        return NalRole::Dropped;
    };
    match codec {
        Codec::H265 => {
            let kind = (h0 >> 1) & 0x3f;
            match kind {
                0..=31 => NalRole::Slice {
                    first: nal.get(2).is_some_and(|b| b & 0x80 != 0),
                    keyframe: (16..=23).contains(&kind),
                },
                32..=34 => NalRole::ParameterSet(usize::from(kind - 32)),
                35 | 38 | 39 | 40 => NalRole::Dropped,
                _ => NalRole::Other,
            }
        }
        _ => match h0 & 0x1f {
            // first_mb_in_slice is ue(v): 0 is the single bit 1.
            kind @ 1..=5 => NalRole::Slice {
                first: nal.get(1).is_some_and(|b| b & 0x80 != 0),
                keyframe: kind == 5,
            },
            7 => NalRole::ParameterSet(0),
            8 => NalRole::ParameterSet(1),
            6 | 9 | 12 => NalRole::Dropped,
            _ => NalRole::Other,
        },
    }
}

impl VideoClip {
    /// Cuts an Annex-B elementary stream into access units.
    pub fn from_annex_b(codec: Codec, data: Bytes) -> Result<Self, ClipError> {
        if codec == Codec::Aac {
            return Err(ClipError::NotVideo(codec));
        }
        let set_count = if codec == Codec::H265 { 3 } else { 2 };
        let mut latest_sets: Vec<Option<Bytes>> = vec![None; set_count];
        let mut pictures: Vec<(bool, Vec<Bytes>)> = Vec::new();
        // NAL units seen since the last slice (parameter sets, other), for the next picture.
        let mut prefix: Vec<Bytes> = Vec::new();
        let mut in_picture = false;
        for nal in NalUnits::new(data) {
            match role(codec, &nal) {
                NalRole::Dropped => {}
                NalRole::ParameterSet(index) => {
                    latest_sets[index] = Some(nal.clone());
                    in_picture = false;
                    prefix.push(nal);
                }
                NalRole::Other => prefix.push(nal),
                NalRole::Slice { first, keyframe } => {
                    if first || !in_picture || pictures.is_empty() {
                        let mut nals = std::mem::take(&mut prefix);
                        if keyframe {
                            // Cameras send the parameter sets with every keyframe.
                            let missing: Vec<Bytes> = latest_sets
                                .iter()
                                .flatten()
                                .filter(|set| !nals.contains(set))
                                .cloned()
                                .collect();
                            nals.splice(0..0, missing);
                        }
                        pictures.push((keyframe, nals));
                    } else {
                        let picture = pictures.len() - 1;
                        pictures[picture].1.append(&mut prefix);
                    }
                    let picture = pictures.len() - 1;
                    pictures[picture].0 |= keyframe;
                    pictures[picture].1.push(nal);
                    in_picture = true;
                }
            }
        }
        if pictures.is_empty() {
            return Err(ClipError::NoPictures);
        }
        if !pictures[0].0 || latest_sets.iter().any(Option::is_none) {
            return Err(ClipError::NoKeyframe);
        }
        let access_units = pictures
            .into_iter()
            .map(|(keyframe, nals)| {
                let mut annex_b = BytesMut::new();
                let mut ranges = Vec::with_capacity(nals.len());
                for nal in &nals {
                    annex_b.put_slice(&[0, 0, 0, 1]);
                    ranges.push(annex_b.len()..annex_b.len() + nal.len());
                    annex_b.put_slice(nal);
                }
                let annex_b = annex_b.freeze();
                let nal_units = ranges.into_iter().map(|r| annex_b.slice(r)).collect();
                AccessUnit {
                    keyframe,
                    annex_b,
                    nal_units,
                }
            })
            .collect();
        Ok(VideoClip {
            codec,
            access_units,
        })
    }
}

/// An ADTS clip cut into frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioClip {
    /// Sample rate of the first frame.
    pub sample_rate: u32,
    /// The ADTS frames (header included), slices of the clip.
    pub frames: Vec<Bytes>,
}

impl AudioClip {
    /// Cuts an ADTS stream into frames.
    pub fn from_adts(data: Bytes) -> Result<Self, ClipError> {
        let mut frames = Vec::new();
        let mut sample_rate = 0;
        let mut pos = 0;
        while pos < data.len() {
            let header = AdtsHeader::parse(&data[pos..], pos).map_err(|e| ClipError::NotAdts {
                offset: pos,
                reason: e.to_string(),
            })?;
            let end = pos + header.frame_length;
            if end > data.len() {
                return Err(ClipError::NotAdts {
                    offset: pos,
                    reason: "truncated frame".to_owned(),
                });
            }
            if frames.is_empty() {
                sample_rate = header.sample_rate();
            }
            frames.push(data.slice(pos..end));
            pos = end;
        }
        if frames.is_empty() || sample_rate == 0 {
            return Err(ClipError::NotAdts {
                offset: 0,
                reason: "no frames".to_owned(),
            });
        }
        Ok(AudioClip {
            sample_rate,
            frames,
        })
    }
}

/// Plays a video clip (and optionally an audio clip) as ROP media frames in time order, once
/// or looping with PTS running on.
#[derive(Debug, Clone)]
pub struct ClipPlayer {
    video: Arc<VideoClip>,
    audio: Option<Arc<AudioClip>>,
    fps: u32,
    start_pts_us: u64,
    looping: bool,
    video_index: u64,
    audio_index: u64,
}

impl ClipPlayer {
    /// A player at `fps` frames per second whose first PTS is `start_pts_us`.
    pub fn new(
        video: Arc<VideoClip>,
        audio: Option<Arc<AudioClip>>,
        fps: u32,
        start_pts_us: u64,
    ) -> Self {
        ClipPlayer {
            video,
            audio,
            fps: fps.max(1),
            start_pts_us,
            looping: false,
            video_index: 0,
            audio_index: 0,
        }
    }

    /// Plays the clip again and again (each pass starts on its first keyframe).
    pub fn looping(mut self) -> Self {
        self.looping = true;
        self
    }

    fn video_pts(&self) -> u64 {
        self.start_pts_us + self.video_index * 1_000_000 / u64::from(self.fps)
    }

    fn audio_pts(&self, audio: &AudioClip) -> u64 {
        self.start_pts_us
            + self.audio_index * u64::from(SAMPLES_PER_FRAME) * 1_000_000
                / u64::from(audio.sample_rate)
    }

    fn has_video(&self) -> bool {
        self.looping || self.video_index < self.video.access_units.len() as u64
    }

    fn has_audio(&self, audio: &AudioClip) -> bool {
        self.looping || self.audio_index < audio.frames.len() as u64
    }
}

impl Iterator for ClipPlayer {
    type Item = MediaFrame;

    fn next(&mut self) -> Option<MediaFrame> {
        let audio = self.audio.clone().filter(|a| self.has_audio(a));
        let video_first = match (&audio, self.has_video()) {
            (None, false) => return None,
            (None, true) => true,
            (Some(_), false) => false,
            (Some(audio), true) => self.video_pts() <= self.audio_pts(audio),
        };
        if video_first {
            let units = &self.video.access_units;
            let unit = &units[(self.video_index % units.len() as u64) as usize];
            let frame = MediaFrame {
                kind: if unit.keyframe {
                    FrameKind::VideoI
                } else {
                    FrameKind::VideoP
                },
                codec: self.video.codec,
                pts_us: Some(self.video_pts()),
                payload: std::iter::once(unit.annex_b.clone()).collect(),
            };
            self.video_index += 1;
            return Some(frame);
        }
        let audio = audio?;
        let frame = &audio.frames[(self.audio_index % audio.frames.len() as u64) as usize];
        self.audio_index += 1;
        Some(MediaFrame {
            kind: FrameKind::Aac,
            codec: Codec::Aac,
            pts_us: None,
            payload: std::iter::once(frame.clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> Bytes {
        Bytes::from(std::fs::read(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap())
    }

    #[test]
    fn h264_clip_is_cut_into_camera_pictures() {
        let clip =
            VideoClip::from_annex_b(Codec::H264, read("testdata/ropdev_h264_3s.264")).unwrap();
        assert_eq!(clip.access_units.len(), 75);
        let keyframes: Vec<usize> = (0..75).filter(|&i| clip.access_units[i].keyframe).collect();
        assert_eq!(keyframes, vec![0, 25, 50]);
        for &k in &keyframes {
            let types: Vec<u8> = clip.access_units[k]
                .nal_units
                .iter()
                .map(|n| n[0] & 0x1f)
                .collect();
            assert_eq!(types, vec![7, 8, 5]);
            assert!(clip.access_units[k]
                .annex_b
                .starts_with(&[0, 0, 0, 1, 0x67]));
        }
        assert!(clip.access_units[1]
            .nal_units
            .iter()
            .all(|n| n[0] & 0x1f == 1));
    }

    #[test]
    fn relay_fixtures_get_parameter_sets_and_lose_aud_and_sei() {
        // ffmpeg's default output: AUD and SEI, parameter sets only once.
        let data = read("../relay/testdata/clip_h264.264");
        let clip = VideoClip::from_annex_b(Codec::H264, data).unwrap();
        assert_eq!(clip.access_units.len(), 25);
        let types: Vec<u8> = clip.access_units[0]
            .nal_units
            .iter()
            .map(|n| n[0] & 0x1f)
            .collect();
        assert_eq!(types, vec![7, 8, 5]);
        let clip =
            VideoClip::from_annex_b(Codec::H265, read("testdata/ropdev_h265_3s.265")).unwrap();
        assert_eq!(clip.access_units.len(), 75);
        let types: Vec<u8> = clip.access_units[25]
            .nal_units
            .iter()
            .map(|n| (n[0] >> 1) & 0x3f)
            .collect();
        assert_eq!(&types[..3], &[32, 33, 34]);
        assert!(clip.access_units[25].keyframe);
    }

    #[test]
    fn player_interleaves_by_time_and_loops() {
        let video = Arc::new(
            VideoClip::from_annex_b(Codec::H264, read("testdata/ropdev_h264_3s.264")).unwrap(),
        );
        let audio = Arc::new(AudioClip::from_adts(read("testdata/ropdev_aac_16k_3s.aac")).unwrap());
        assert_eq!(audio.sample_rate, 16_000);
        let frames: Vec<MediaFrame> =
            ClipPlayer::new(video.clone(), Some(audio.clone()), 25, 1_000).collect();
        let video_frames = frames.iter().filter(|f| f.kind.is_video()).count();
        assert_eq!(video_frames, 75);
        assert_eq!(frames.len() - video_frames, audio.frames.len());
        assert_eq!(frames[0].kind, FrameKind::VideoI);
        assert_eq!(frames[0].pts_us, Some(1_000));
        let looped: Vec<MediaFrame> = ClipPlayer::new(video, None, 25, 0)
            .looping()
            .take(150)
            .collect();
        assert_eq!(looped[75].kind, FrameKind::VideoI);
        assert_eq!(looped[149].pts_us, Some(149 * 40_000));
    }
}
