//! ROP media frames: the byte stream that the bodies of command-3 packets carry on a stream
//! connection (the same frame format as Reolink's older "Baichuan" protocol). The stream may
//! split anywhere, even inside a header, so [`MediaDemuxer`] is fed the bodies as `Bytes` chunks
//! and yields whole frames whose payload is a list of slices of those chunks (no copy; only a
//! header split across chunks is assembled, in a 24-byte buffer).
//!
//! Layout (little-endian):
//! - video, magic `00dc` (I-frame) or `01dc` (P-frame): magic(4), codec `H264`/`H265`(4),
//!   u32 payload length, u32 extra-header length, u64 PTS in microseconds (24 bytes), then the
//!   extra header (skipped), then the payload;
//! - AAC, magic `05wb`: magic(4), u16 payload length, the same u16 again (8 bytes), then the
//!   payload;
//! - every payload is followed by zero padding up to a multiple of 8 bytes.
//!
//! Resync policy: none. An unknown magic means the stream lost its framing (or carries a frame
//! type we do not know); the demuxer reports it with its stream offset and stays failed: the
//! caller drops the stream connection, and the device reconnects on the next preview start. We
//! recognise the first digit of the magic as a channel digit (`0`-`9`) like the Baichuan format
//! does; ROP devices send `0`.

use bytes::{BufMut, Bytes, BytesMut};
use signal::proto::core_packet::ByteChunks;
use smallvec::SmallVec;

/// Video header length.
pub const VIDEO_HEADER_LEN: usize = 24;
/// AAC header length.
pub const AAC_HEADER_LEN: usize = 8;
/// Payloads are padded to a multiple of this.
pub const PAYLOAD_ALIGN: usize = 8;

/// Kind of a media frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Video keyframe (Annex-B: parameter sets then the IDR slice).
    VideoI,
    /// Video inter frame.
    VideoP,
    /// AAC audio in ADTS frames.
    Aac,
}

impl FrameKind {
    /// True for video frames.
    pub fn is_video(self) -> bool {
        matches!(self, FrameKind::VideoI | FrameKind::VideoP)
    }
}

/// Codec of a media frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264, Annex-B.
    H264,
    /// H.265, Annex-B.
    H265,
    /// AAC, ADTS.
    Aac,
}

/// One media frame; the payload is a list of slices of the received chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// I-frame, P-frame or audio.
    pub kind: FrameKind,
    /// Codec.
    pub codec: Codec,
    /// Presentation time in microseconds (video only; audio frames carry none).
    pub pts_us: Option<u64>,
    /// The payload (without padding), in order.
    pub payload: SmallVec<[Bytes; 2]>,
}

impl MediaFrame {
    /// Payload length in bytes.
    pub fn payload_len(&self) -> usize {
        self.payload.iter().map(Bytes::len).sum()
    }

    /// The payload as one `Bytes` (copies only when it spans slices).
    pub fn payload_contiguous(&self) -> Bytes {
        match self.payload.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut out = BytesMut::with_capacity(self.payload_len());
                for part in parts {
                    out.extend_from_slice(part);
                }
                out.freeze()
            }
        }
    }

    /// Appends this frame in wire form (header, payload, padding; no extra header) to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), MediaError> {
        let len = self.payload_len();
        let header = encode_header(self.kind, self.codec, len, self.pts_us.unwrap_or(0))?;
        out.reserve(header.len() + len + PAYLOAD_ALIGN);
        out.put_slice(&header);
        for part in &self.payload {
            out.put_slice(part);
        }
        out.put_bytes(0, padding_after(len));
        Ok(())
    }
}

/// Zero bytes that follow a payload of `len` bytes.
pub fn padding_after(len: usize) -> usize {
    (PAYLOAD_ALIGN - len % PAYLOAD_ALIGN) % PAYLOAD_ALIGN
}

/// The header of a frame with a `payload_len`-byte payload: 24 bytes for video, 8 for AAC.
/// For vectored writers: header, payload slices, then [`padding_after`] zero bytes.
pub fn encode_header(
    kind: FrameKind,
    codec: Codec,
    payload_len: usize,
    pts_us: u64,
) -> Result<Vec<u8>, MediaError> {
    match (kind, codec) {
        (FrameKind::Aac, Codec::Aac) => {
            let len = u16::try_from(payload_len)
                .map_err(|_| MediaError::EncodeTooLong { payload_len })?;
            let mut h = Vec::with_capacity(AAC_HEADER_LEN);
            h.extend_from_slice(b"05wb");
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&len.to_le_bytes());
            Ok(h)
        }
        (FrameKind::VideoI | FrameKind::VideoP, Codec::H264 | Codec::H265) => {
            let len = u32::try_from(payload_len)
                .map_err(|_| MediaError::EncodeTooLong { payload_len })?;
            let mut h = Vec::with_capacity(VIDEO_HEADER_LEN);
            h.extend_from_slice(if kind == FrameKind::VideoI {
                b"00dc"
            } else {
                b"01dc"
            });
            h.extend_from_slice(if codec == Codec::H264 {
                b"H264"
            } else {
                b"H265"
            });
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&pts_us.to_le_bytes());
            Ok(h)
        }
        _ => Err(MediaError::KindCodecMismatch { kind, codec }),
    }
}

/// Limits of a [`MediaDemuxer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// Largest video payload (default 4 MiB).
    pub max_video_payload: u32,
    /// Largest AAC payload (default 8 KiB).
    pub max_audio_payload: u16,
    /// Largest extra header in a video frame (default 4 KiB).
    pub max_extra_header: u32,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            max_video_payload: 4 * 1024 * 1024,
            max_audio_payload: 8 * 1024,
            max_extra_header: 4096,
        }
    }
}

/// Errors of the media demuxer; all are the device's fault and end the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The bytes at a frame boundary are no known magic.
    #[error("device sent an unknown media frame magic {magic:02x?} at stream offset {offset}")]
    UnknownMagic {
        /// Stream offset of the frame.
        offset: u64,
        /// The four bytes found.
        magic: [u8; 4],
    },
    /// A video frame names a codec other than H264/H265.
    #[error("device sent a video frame with unknown codec {codec:02x?} at stream offset {offset}")]
    UnknownCodec {
        /// Stream offset of the frame.
        offset: u64,
        /// The four codec bytes.
        codec: [u8; 4],
    },
    /// A payload over the limit.
    #[error("device sent a {kind:?} frame at stream offset {offset} with a {length}-byte payload, over the limit of {limit}")]
    PayloadTooLong {
        /// Stream offset of the frame.
        offset: u64,
        /// Frame kind.
        kind: FrameKind,
        /// Announced length.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// An extra header over the limit.
    #[error("device sent a video frame at stream offset {offset} with a {length}-byte extra header, over the limit of {limit}")]
    ExtraHeaderTooLong {
        /// Stream offset of the frame.
        offset: u64,
        /// Announced length.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// The demuxer already failed.
    #[error("media stream already failed at offset {offset}")]
    AlreadyFailed {
        /// Offset of the first error.
        offset: u64,
    },
    /// Internal: the kind and codec of a frame to encode do not go together.
    #[error("internal: cannot encode a {kind:?} frame with codec {codec:?}")]
    KindCodecMismatch {
        /// Kind.
        kind: FrameKind,
        /// Codec.
        codec: Codec,
    },
    /// Internal: a payload too long for its length field.
    #[error("internal: media payload of {payload_len} bytes too long to encode")]
    EncodeTooLong {
        /// Payload length.
        payload_len: usize,
    },
}

#[derive(Debug)]
enum State {
    /// Filling the header buffer (`filled` bytes so far).
    Header {
        filled: usize,
    },
    /// Skipping the extra header.
    Extra {
        remaining: usize,
    },
    /// Collecting the payload.
    Payload {
        remaining: usize,
    },
    /// Skipping padding.
    Padding {
        remaining: usize,
    },
    Failed {
        offset: u64,
    },
}

/// Streaming demuxer of ROP media frames. For every chunk (a command-3 body, or a slice of one)
/// call [`MediaDemuxer::read`] until it returns `Ok(None)`, which means the chunk is consumed.
#[derive(Debug)]
pub struct MediaDemuxer {
    limits: MediaLimits,
    header: [u8; VIDEO_HEADER_LEN],
    state: State,
    kind: FrameKind,
    codec: Codec,
    pts_us: Option<u64>,
    payload_len: usize,
    payload: ByteChunks,
    offset: u64,
    frame_offset: u64,
    /// A slice list handed back with [`MediaDemuxer::recycle`], for the next payload.
    spare_parts: SmallVec<[Bytes; 2]>,
}

impl MediaDemuxer {
    /// A demuxer with the given limits.
    pub fn new(limits: MediaLimits) -> Self {
        Self {
            limits,
            header: [0; VIDEO_HEADER_LEN],
            state: State::Header { filled: 0 },
            kind: FrameKind::Aac,
            codec: Codec::Aac,
            pts_us: None,
            payload_len: 0,
            payload: ByteChunks::new(),
            offset: 0,
            frame_offset: 0,
            spare_parts: SmallVec::new(),
        }
    }

    /// Hands back a frame this demuxer returned, once the caller is done with it: the
    /// allocation of its slice list (a payload over more than two slices has one) serves the
    /// next frames instead of a new one per frame.
    pub fn recycle(&mut self, frame: MediaFrame) {
        let mut parts = frame.payload;
        if parts.spilled() && parts.capacity() > self.spare_parts.capacity() {
            parts.clear();
            self.spare_parts = parts;
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True between frames.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { filled: 0 })
    }

    /// Consumes bytes from the front of `chunk`; returns the next complete frame, or `Ok(None)`
    /// once `chunk` is empty. After an error every call fails.
    pub fn read(&mut self, chunk: &mut Bytes) -> Result<Option<MediaFrame>, MediaError> {
        loop {
            match self.state {
                State::Failed { offset } => return Err(MediaError::AlreadyFailed { offset }),
                State::Header { filled } => {
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    if filled == 0 {
                        self.frame_offset = self.offset;
                        // Errors quote the magic: no stale bytes from the previous header.
                        self.header = [0; VIDEO_HEADER_LEN];
                    }
                    // The header length is known once byte 1 (the frame type) is in.
                    let header_len = if filled >= 2 {
                        self.header_len()?
                    } else {
                        AAC_HEADER_LEN
                    };
                    let take = (header_len - filled).min(chunk.len());
                    self.header[filled..filled + take].copy_from_slice(&chunk[..take]);
                    self.consume(chunk, take);
                    let filled = filled + take;
                    if filled >= 2 && self.header_len()? > filled {
                        self.state = State::Header { filled };
                        continue;
                    }
                    if filled < header_len {
                        self.state = State::Header { filled };
                        continue;
                    }
                    if let Some(frame) = self.parse_header()? {
                        return Ok(Some(frame));
                    }
                }
                State::Extra { remaining } => {
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    let take = remaining.min(chunk.len());
                    self.consume(chunk, take);
                    if take == remaining {
                        if let Some(frame) = self.start_payload() {
                            return Ok(Some(frame));
                        }
                    } else {
                        self.state = State::Extra {
                            remaining: remaining - take,
                        };
                    }
                }
                State::Payload { remaining } => {
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    let take = remaining.min(chunk.len());
                    self.payload.push(chunk.split_to(take));
                    self.offset += take as u64;
                    if take == remaining {
                        return Ok(Some(self.finish_frame()));
                    }
                    self.state = State::Payload {
                        remaining: remaining - take,
                    };
                }
                State::Padding { remaining } => {
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    let take = remaining.min(chunk.len());
                    self.consume(chunk, take);
                    self.state = if take == remaining {
                        State::Header { filled: 0 }
                    } else {
                        State::Padding {
                            remaining: remaining - take,
                        }
                    };
                }
            }
        }
    }

    fn consume(&mut self, chunk: &mut Bytes, count: usize) {
        let _ = chunk.split_to(count);
        self.offset += count as u64;
    }

    fn fail(&mut self, error: MediaError) -> MediaError {
        self.state = State::Failed {
            offset: self.frame_offset,
        };
        error
    }

    /// Header length from the first bytes; checks the magic as far as it is known.
    fn header_len(&mut self) -> Result<usize, MediaError> {
        let magic = [
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ];
        match (magic[0], magic[1]) {
            (b'0'..=b'9', b'0' | b'1') => Ok(VIDEO_HEADER_LEN),
            (b'0', b'5') => Ok(AAC_HEADER_LEN),
            _ => Err(self.fail(MediaError::UnknownMagic {
                offset: self.frame_offset,
                magic,
            })),
        }
    }

    /// A whole header is in: check it and set up the frame. Returns a frame at once when it has
    /// an empty payload and no padding or extra header left to skip.
    fn parse_header(&mut self) -> Result<Option<MediaFrame>, MediaError> {
        let h = self.header;
        let magic = [h[0], h[1], h[2], h[3]];
        let offset = self.frame_offset;
        self.payload = ByteChunks::reusing(std::mem::take(&mut self.spare_parts));
        if &magic[2..] == b"wb" && magic[..2] == *b"05" {
            let length = u16::from_le_bytes([h[4], h[5]]);
            if length > self.limits.max_audio_payload {
                let limit = u32::from(self.limits.max_audio_payload);
                return Err(self.fail(MediaError::PayloadTooLong {
                    offset,
                    kind: FrameKind::Aac,
                    length: u32::from(length),
                    limit,
                }));
            }
            self.kind = FrameKind::Aac;
            self.codec = Codec::Aac;
            self.pts_us = None;
            self.payload_len = usize::from(length);
            return Ok(self.start_payload());
        }
        if &magic[2..] != b"dc" {
            return Err(self.fail(MediaError::UnknownMagic { offset, magic }));
        }
        self.kind = if magic[1] == b'0' {
            FrameKind::VideoI
        } else {
            FrameKind::VideoP
        };
        self.codec = match &h[4..8] {
            b"H264" => Codec::H264,
            b"H265" => Codec::H265,
            _ => {
                let codec = [h[4], h[5], h[6], h[7]];
                return Err(self.fail(MediaError::UnknownCodec { offset, codec }));
            }
        };
        let length = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if length > self.limits.max_video_payload {
            let (kind, limit) = (self.kind, self.limits.max_video_payload);
            return Err(self.fail(MediaError::PayloadTooLong {
                offset,
                kind,
                length,
                limit,
            }));
        }
        let extra = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if extra > self.limits.max_extra_header {
            let limit = self.limits.max_extra_header;
            return Err(self.fail(MediaError::ExtraHeaderTooLong {
                offset,
                length: extra,
                limit,
            }));
        }
        let mut pts = [0u8; 8];
        pts.copy_from_slice(&h[16..24]);
        self.pts_us = Some(u64::from_le_bytes(pts));
        self.payload_len = length as usize;
        if extra > 0 {
            self.state = State::Extra {
                remaining: extra as usize,
            };
            return Ok(None);
        }
        Ok(self.start_payload())
    }

    fn start_payload(&mut self) -> Option<MediaFrame> {
        if self.payload_len == 0 {
            return Some(self.finish_frame());
        }
        self.state = State::Payload {
            remaining: self.payload_len,
        };
        None
    }

    fn finish_frame(&mut self) -> MediaFrame {
        let padding = padding_after(self.payload_len);
        self.state = if padding > 0 {
            State::Padding { remaining: padding }
        } else {
            State::Header { filled: 0 }
        };
        MediaFrame {
            kind: self.kind,
            codec: self.codec,
            pts_us: self.pts_us,
            payload: std::mem::take(&mut self.payload).into_parts(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, codec: Codec, pts: Option<u64>, payload: &[u8]) -> MediaFrame {
        MediaFrame {
            kind,
            codec,
            pts_us: pts,
            payload: SmallVec::from_elem(Bytes::copy_from_slice(payload), 1),
        }
    }

    fn sample() -> Vec<MediaFrame> {
        let idr: Vec<u8> = [
            &[0, 0, 0, 1, 0x67, 0x42][..],
            &[0, 0, 0, 1, 0x68, 0xce],
            &[0, 0, 0, 1, 0x65, 0x88, 0x84],
        ]
        .concat();
        vec![
            frame(FrameKind::VideoI, Codec::H264, Some(1_000_000), &idr),
            frame(
                FrameKind::Aac,
                Codec::Aac,
                None,
                &[0xff, 0xf1, 0x60, 0x40, 0x01, 0x7f, 0xfc, 0x21, 0x00],
            ),
            frame(
                FrameKind::VideoP,
                Codec::H264,
                Some(1_066_666),
                &[0, 0, 0, 1, 0x41, 0x9a],
            ),
            frame(FrameKind::VideoP, Codec::H265, Some(1_133_333), &[0u8; 16]),
            frame(FrameKind::Aac, Codec::Aac, None, &[]),
        ]
    }

    fn encode_all(frames: &[MediaFrame]) -> Bytes {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode(&mut out).unwrap();
        }
        out.freeze()
    }

    fn demux(chunks: Vec<Bytes>) -> Result<Vec<MediaFrame>, MediaError> {
        let mut demuxer = MediaDemuxer::new(MediaLimits::default());
        let mut out = Vec::new();
        for mut chunk in chunks {
            while let Some(f) = demuxer.read(&mut chunk)? {
                out.push(f);
            }
            assert!(chunk.is_empty());
        }
        assert!(demuxer.is_idle());
        Ok(out)
    }

    fn same(got: &[MediaFrame], expected: &[MediaFrame]) {
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert_eq!((g.kind, g.codec, g.pts_us), (e.kind, e.codec, e.pts_us));
            assert_eq!(g.payload_contiguous(), e.payload_contiguous());
        }
    }

    #[test]
    fn wire_layout() {
        let mut out = BytesMut::new();
        frame(FrameKind::VideoI, Codec::H265, Some(0x0102), &[9; 3])
            .encode(&mut out)
            .unwrap();
        assert_eq!(
            &out[..],
            &[
                b'0', b'0', b'd', b'c', b'H', b'2', b'6', b'5', 3, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0,
                0, 0, 0, 0, 9, 9, 9, 0, 0, 0, 0, 0,
            ][..]
        );
        let mut out = BytesMut::new();
        frame(FrameKind::Aac, Codec::Aac, None, &[1; 8])
            .encode(&mut out)
            .unwrap();
        assert_eq!(
            &out[..],
            &[b'0', b'5', b'w', b'b', 8, 0, 8, 0, 1, 1, 1, 1, 1, 1, 1, 1][..]
        );
    }

    #[test]
    fn every_split_and_byte_by_byte() {
        let frames = sample();
        let wire = encode_all(&frames);
        for split in 0..=wire.len() {
            same(
                &demux(vec![wire.slice(..split), wire.slice(split..)]).unwrap(),
                &frames,
            );
        }
        same(
            &demux((0..wire.len()).map(|i| wire.slice(i..i + 1)).collect()).unwrap(),
            &frames,
        );
    }

    #[test]
    fn payload_is_zero_copy_and_extra_header_is_skipped() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(b"00dcH264");
        wire.extend_from_slice(&5u32.to_le_bytes());
        wire.extend_from_slice(&12u32.to_le_bytes());
        wire.extend_from_slice(&77u64.to_le_bytes());
        wire.extend_from_slice(&[0xee; 12]);
        wire.extend_from_slice(b"abcde\0\0\0");
        let wire = wire.freeze();
        let frames = demux(vec![wire.clone()]).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].pts_us, Some(77));
        assert_eq!(frames[0].payload.len(), 1);
        assert_eq!(&frames[0].payload[0][..], b"abcde");
        assert_eq!(frames[0].payload[0].as_ptr(), wire[36..].as_ptr());
        // Across two chunks the payload is two slices of them.
        let frames = demux(vec![wire.slice(..38), wire.slice(38..)]).unwrap();
        assert_eq!(frames[0].payload.len(), 2);
    }

    #[test]
    fn unknown_magic_and_limits() {
        let mut demuxer = MediaDemuxer::new(MediaLimits::default());
        let mut good = encode_all(&sample()[1..2]);
        let good_len = good.len() as u64;
        assert!(demuxer.read(&mut good).unwrap().is_some());
        assert_eq!(demuxer.read(&mut good), Ok(None));
        let mut bad = Bytes::from_static(b"1002xxxxxxxxxxxxxxxxxxxxxxxxx");
        assert_eq!(
            demuxer.read(&mut bad),
            Err(MediaError::UnknownMagic {
                offset: good_len,
                magic: *b"1002"
            })
        );
        assert_eq!(
            demuxer.read(&mut bad),
            Err(MediaError::AlreadyFailed { offset: good_len })
        );

        let mut demuxer = MediaDemuxer::new(MediaLimits::default());
        let mut huge = BytesMut::from(&b"01dcH264"[..]);
        huge.extend_from_slice(&(5u32 << 20).to_le_bytes());
        huge.extend_from_slice(&[0; 12]);
        assert!(matches!(
            demuxer.read(&mut huge.freeze()),
            Err(MediaError::PayloadTooLong {
                kind: FrameKind::VideoP,
                length: 5242880,
                ..
            })
        ));

        let mut demuxer = MediaDemuxer::new(MediaLimits::default());
        let mut codec = Bytes::from_static(b"00dcAV01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert!(matches!(
            demuxer.read(&mut codec),
            Err(MediaError::UnknownCodec { offset: 0, .. })
        ));

        let mut demuxer = MediaDemuxer::new(MediaLimits::default());
        let mut aac = Bytes::from_static(b"05wb\x01\x30\x01\x30");
        assert!(matches!(
            demuxer.read(&mut aac),
            Err(MediaError::PayloadTooLong {
                kind: FrameKind::Aac,
                ..
            })
        ));
    }

    #[test]
    fn encoder_rejects_nonsense() {
        let f = frame(FrameKind::Aac, Codec::H264, None, &[]);
        assert!(matches!(
            f.encode(&mut BytesMut::new()),
            Err(MediaError::KindCodecMismatch { .. })
        ));
        assert!(matches!(
            encode_header(FrameKind::Aac, Codec::Aac, 70_000, 0),
            Err(MediaError::EncodeTooLong {
                payload_len: 70_000
            })
        ));
    }

    /// Deterministic pseudo-random inputs for the fuzz entry points (no nightly needed).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn fuzz_entry_point_on_valid_and_mutated_input() {
        let wire = encode_all(&sample());
        for seed in 0..300u64 {
            let mut input = vec![seed as u8];
            input.extend_from_slice(&wire);
            fuzzing::frames(&input);
            let flip = noise(seed, 2);
            input[1 + usize::from(flip[0]) % wire.len()] ^= flip[1] | 1;
            fuzzing::frames(&input);
            fuzzing::frames(&noise(seed, 200));
        }
    }

    /// The whole device -> server path of an encryptTCP stream connection: hello, handshake,
    /// media in command-3 packets inside frames, only keyframe-carrying frames encrypted
    /// (selective encryption), the byte stream cut at awkward points. The server side decrypts
    /// in place, reads core packets without gathering bodies, and demuxes the media.
    #[test]
    fn encrypt_tcp_stream_pipeline() {
        use signal::proto::core_packet::{
            self as core, cmd, CoreHeader, CorePacketReader, ReaderConfig,
        };
        use signal::proto::encrypt_tcp::{
            self as etcp, Direction, FrameDecoder, FrameEncoder, FramePolicy, Hello, SessionKeys,
        };

        let secret = b"1oeVItyN4K9SxCfQC3OODZQpiZNgn37Q";
        let client_hello = Hello {
            code: 0,
            access_key: *b"testKeyIndex0001777da74e9a46f49c",
            nonce: [7; 32],
        }
        .encode(secret);
        // Server: parse, look the secret up by access key, verify, answer.
        let hello = Hello::parse(&client_hello).unwrap();
        Hello::verify(&client_hello, secret).unwrap();
        let server_hello = Hello {
            code: etcp::HELLO_OK,
            access_key: hello.access_key,
            nonce: [9; 32],
        }
        .encode(secret);
        let device_view = Hello::parse_verified(&server_hello, secret).unwrap();
        let keys = SessionKeys::derive(secret, &hello.nonce, &device_view.nonce);

        // Device: a core-packet stream (handshake, then media packets of uneven sizes).
        let media = sample();
        let mut media_wire = BytesMut::new();
        for f in media.iter().cycle().take(40) {
            f.encode(&mut media_wire).unwrap();
        }
        let media_wire = media_wire.freeze();
        let mut core_stream = BytesMut::new();
        core::encode_packet(
            CoreHeader::request(cmd::HANDSHAKE, 1),
            b"",
            b"<body/>",
            &mut core_stream,
        )
        .unwrap();
        for piece in media_wire.chunks(37) {
            core::encode_packet(
                CoreHeader::request(cmd::PREVIEW_START, 77),
                b"",
                piece,
                &mut core_stream,
            )
            .unwrap();
        }
        // Frames cut the core stream anywhere; every third frame encrypted.
        let mut encoder = FrameEncoder::new(secret, &keys, Direction::DeviceToServer);
        let mut wire = BytesMut::new();
        for (i, piece) in core_stream.chunks(50).enumerate() {
            encoder.encode(piece, i % 3 == 0, &mut wire).unwrap();
        }

        // Server: reads of 61 bytes into one receive buffer.
        let mut decoder = FrameDecoder::new(
            secret,
            &keys,
            FramePolicy {
                first_sequence: Some(0),
                ..FramePolicy::default()
            },
        );
        let mut reader = CorePacketReader::new(ReaderConfig::stream(core::DEFAULT_STREAM_MAX_LEN));
        let mut demuxer = MediaDemuxer::new(MediaLimits::default());
        let mut receive = BytesMut::with_capacity(4096);
        let (mut handshakes, mut frames) = (0, Vec::new());
        for read in wire.chunks(61) {
            receive.extend_from_slice(read);
            while let Some(frame) = decoder.decode(&mut receive).unwrap() {
                let mut body = frame.body;
                while let Some(packet) = reader.read(&mut body).unwrap() {
                    match packet.header.command {
                        cmd::HANDSHAKE => handshakes += 1,
                        cmd::PREVIEW_START => {
                            assert_eq!(packet.header.request_id, 77);
                            for part in packet.body.parts() {
                                let mut part = part.clone();
                                while let Some(f) = demuxer.read(&mut part).unwrap() {
                                    frames.push(f);
                                }
                            }
                        }
                        other => panic!("unexpected command {other}"),
                    }
                }
            }
        }
        assert_eq!(handshakes, 1);
        let expected: Vec<MediaFrame> = media.iter().cycle().take(40).cloned().collect();
        same(&frames, &expected);
        assert!(receive.is_empty() && reader.is_idle() && demuxer.is_idle());
    }
}

/// Entry point of the fuzz target (`fuzz/fuzz_targets/media_frames.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    fn demux(chunks: impl IntoIterator<Item = Bytes>) -> Vec<MediaFrame> {
        let mut demuxer = MediaDemuxer::new(MediaLimits {
            max_video_payload: 1 << 16,
            ..MediaLimits::default()
        });
        let mut frames = Vec::new();
        for mut chunk in chunks {
            loop {
                match demuxer.read(&mut chunk) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(_) => return frames,
                }
            }
        }
        frames
    }

    /// Arbitrary bytes in arbitrary chunks: never panics; chunking does not change the frames;
    /// the frames re-encoded and demuxed again are the same frames.
    pub fn frames(data: &[u8]) {
        let Some((&seed, rest)) = data.split_first() else {
            return;
        };
        let all = Bytes::copy_from_slice(rest);
        let step = usize::from(seed % 29) + 1;
        let chunked = demux(
            (0..all.len())
                .step_by(step)
                .map(|i| all.slice(i..(i + step).min(all.len()))),
        );
        let whole = demux([all.clone()]);
        assert_eq!(chunked.len(), whole.len());
        let mut wire = BytesMut::new();
        for (a, b) in chunked.iter().zip(&whole) {
            assert_eq!((a.kind, a.codec, a.pts_us), (b.kind, b.codec, b.pts_us));
            assert_eq!(a.payload_contiguous(), b.payload_contiguous());
            assert!(a.encode(&mut wire).is_ok());
        }
        let again = demux([wire.freeze()]);
        assert_eq!(again.len(), whole.len());
        for (a, b) in again.iter().zip(&whole) {
            assert_eq!(
                (a.kind, a.codec, a.pts_us, a.payload_contiguous()),
                (b.kind, b.codec, b.pts_us, b.payload_contiguous())
            );
        }
    }
}
