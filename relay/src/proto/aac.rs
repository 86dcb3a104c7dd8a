//! AAC from devices: ADTS headers (ISO 14496-3 section 1.A.2) give the stream's
//! AudioSpecificConfig for the SDP `config=`, and the packetizer sends each raw AAC frame, ADTS
//! header stripped, as RFC 3640 `mpeg4-generic` AAC-hbr: a 16-bit AU-headers-length and one
//! AU-header (13-bit size, 3-bit index) in the inline prefix, the frame as slices of the received
//! buffer.

use std::fmt;

use bytes::Bytes;

use super::nal::Chunks;
use super::rtp::{PacketWriter, PacketizerConfig, PacketizerConfigError, RtpPacket};

/// Sampling frequencies by index (ISO 14496-3 table 1.16).
pub const SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// PCM samples per AAC frame (AAC-LC), the RTP timestamp step between frames.
pub const SAMPLES_PER_FRAME: u32 = 1024;

/// Bad ADTS data from a device or file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AacError {
    #[error("no ADTS sync word at byte {offset}")]
    NoSync { offset: usize },
    #[error("ADTS frame at byte {offset} needs {needed} bytes, {available} available")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("ADTS frame at byte {offset}: layer {layer}, expected 0")]
    Layer { offset: usize, layer: u8 },
    #[error("ADTS frame at byte {offset}: sampling frequency index {index} is reserved")]
    SampleRateIndex { offset: usize, index: u8 },
    #[error("ADTS frame at byte {offset}: frame length {length} shorter than its header")]
    FrameLength { offset: usize, length: usize },
    #[error("ADTS frame at byte {offset} holds {blocks} raw data blocks; only one is supported")]
    MultipleRawBlocks { offset: usize, blocks: u8 },
    #[error("AudioSpecificConfig {0:02x?} is too short or uses an escape value")]
    Config(Vec<u8>),
}

/// The two-byte AudioSpecificConfig of plain AAC (no extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// Audio object type: 2 = AAC-LC.
    pub object_type: u8,
    pub sampling_frequency_index: u8,
    pub channel_configuration: u8,
}

impl AudioSpecificConfig {
    pub fn to_bytes(self) -> [u8; 2] {
        let bits = (u16::from(self.object_type & 0x1f) << 11)
            | (u16::from(self.sampling_frequency_index & 0x0f) << 7)
            | (u16::from(self.channel_configuration & 0x0f) << 3);
        bits.to_be_bytes()
    }

    /// Reads the leading fields of an AudioSpecificConfig (e.g. from an SDP `config=`). Escape
    /// values (object type 31, frequency index 15) are refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, AacError> {
        let invalid = || AacError::Config(bytes.iter().take(16).copied().collect());
        let [a, b, ..] = *bytes else {
            return Err(invalid());
        };
        let bits = u16::from_be_bytes([a, b]);
        let config = AudioSpecificConfig {
            object_type: (bits >> 11) as u8,
            sampling_frequency_index: ((bits >> 7) & 0x0f) as u8,
            channel_configuration: ((bits >> 3) & 0x0f) as u8,
        };
        if config.object_type == 31 || config.sample_rate().is_none() {
            return Err(invalid());
        }
        Ok(config)
    }

    pub fn sample_rate(self) -> Option<u32> {
        SAMPLE_RATES
            .get(usize::from(self.sampling_frequency_index))
            .copied()
    }

    /// Channel count for configurations 1-7 (7 means 7.1, eight channels).
    pub fn channels(self) -> u8 {
        match self.channel_configuration {
            7 => 8,
            c => c,
        }
    }
}

impl fmt::Display for AudioSpecificConfig {
    /// Upper-case hex, as SDP `config=` wants it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = self.to_bytes();
        write!(f, "{a:02X}{b:02X}")
    }
}

/// One ADTS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsHeader {
    /// MPEG-4 (false) or MPEG-2 (true) ID bit.
    pub mpeg2: bool,
    /// The 2-bit profile; audio object type = profile + 1.
    pub profile: u8,
    pub sampling_frequency_index: u8,
    pub channel_configuration: u8,
    /// Whole frame, header included.
    pub frame_length: usize,
    /// 7, or 9 with CRC.
    pub header_length: usize,
}

impl AdtsHeader {
    /// Parses the header at the start of `data`; `offset` is only for error messages.
    pub fn parse(data: &[u8], offset: usize) -> Result<AdtsHeader, AacError> {
        let Some(h) = data.get(..7) else {
            return Err(AacError::Truncated {
                offset,
                needed: 7,
                available: data.len(),
            });
        };
        if h[0] != 0xff || h[1] & 0xf0 != 0xf0 {
            return Err(AacError::NoSync { offset });
        }
        let layer = (h[1] >> 1) & 0x03;
        if layer != 0 {
            return Err(AacError::Layer { offset, layer });
        }
        let protection_absent = h[1] & 0x01 == 1;
        let sampling_frequency_index = (h[2] >> 2) & 0x0f;
        if usize::from(sampling_frequency_index) >= SAMPLE_RATES.len() {
            return Err(AacError::SampleRateIndex {
                offset,
                index: sampling_frequency_index,
            });
        }
        let frame_length =
            (usize::from(h[3] & 0x03) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        let header_length = if protection_absent { 7 } else { 9 };
        if frame_length < header_length {
            return Err(AacError::FrameLength {
                offset,
                length: frame_length,
            });
        }
        let blocks = (h[6] & 0x03) + 1;
        if blocks > 1 {
            return Err(AacError::MultipleRawBlocks { offset, blocks });
        }
        Ok(AdtsHeader {
            mpeg2: h[1] & 0x08 != 0,
            profile: h[2] >> 6,
            sampling_frequency_index,
            channel_configuration: ((h[2] & 0x01) << 2) | (h[3] >> 6),
            frame_length,
            header_length,
        })
    }

    pub fn audio_specific_config(&self) -> AudioSpecificConfig {
        AudioSpecificConfig {
            object_type: self.profile + 1,
            sampling_frequency_index: self.sampling_frequency_index,
            channel_configuration: self.channel_configuration,
        }
    }

    pub fn sample_rate(&self) -> u32 {
        SAMPLE_RATES
            .get(usize::from(self.sampling_frequency_index))
            .copied()
            .unwrap_or(0)
    }
}

/// Packetizes ADTS audio as RFC 3640 AAC-hbr, one access unit per packet (fragmented over
/// several packets, marker on the last, when an AU exceeds the MTU).
#[derive(Debug, Clone)]
pub struct AacPacketizer {
    writer: PacketWriter,
    config: Option<AudioSpecificConfig>,
}

/// What [`AacPacketizer::packetize`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdtsSummary {
    pub frames: usize,
    pub packets: usize,
    /// The AudioSpecificConfig differs from the previous frame's (or is the first).
    pub config_changed: bool,
}

impl AacPacketizer {
    pub fn new(config: PacketizerConfig) -> Result<Self, PacketizerConfigError> {
        Ok(AacPacketizer {
            writer: PacketWriter::new(config)?,
            config: None,
        })
    }

    /// The AudioSpecificConfig of the last frame packetized.
    pub fn audio_specific_config(&self) -> Option<AudioSpecificConfig> {
        self.config
    }

    pub fn next_sequence(&self) -> u16 {
        self.writer.next_sequence()
    }

    /// Appends packets for every ADTS frame in `data` (one device audio frame, possibly over
    /// several buffers). Frame `i` gets timestamp `rtp_timestamp + 1024 * i`. On an error, the
    /// packets of frames before the bad one are already in `out`.
    pub fn packetize(
        &mut self,
        data: &[Bytes],
        rtp_timestamp: u32,
        out: &mut Vec<RtpPacket>,
    ) -> Result<AdtsSummary, AacError> {
        let chunks = Chunks::new(data);
        let max = self.writer.config.max_payload_len - 4;
        let mut summary = AdtsSummary::default();
        let mut pos = 0;
        while pos < chunks.len() {
            let mut header_bytes = [0u8; 9];
            let available = (chunks.len() - pos).min(9);
            for (i, b) in header_bytes.iter_mut().enumerate().take(available) {
                *b = chunks.byte_at(pos + i).unwrap_or(0);
            }
            let header = AdtsHeader::parse(&header_bytes[..available], pos)?;
            let end = pos + header.frame_length;
            if end > chunks.len() {
                return Err(AacError::Truncated {
                    offset: pos,
                    needed: header.frame_length,
                    available: chunks.len() - pos,
                });
            }
            let config = header.audio_specific_config();
            if self.config != Some(config) {
                self.config = Some(config);
                summary.config_changed = true;
            }
            let timestamp =
                rtp_timestamp.wrapping_add(SAMPLES_PER_FRAME.wrapping_mul(summary.frames as u32));
            let au_start = pos + header.header_length;
            // frame_length is 13 bits, so the AU size fits the 13-bit AU-size field.
            let au_size = (end - au_start) as u16;
            let au_header = [
                0x00,
                0x10,
                (au_size >> 5) as u8,
                ((au_size & 0x1f) << 3) as u8,
            ];
            let mut start = au_start;
            loop {
                let fragment_end = (start + max).min(end);
                out.push(self.writer.packet(
                    timestamp,
                    fragment_end == end,
                    &au_header,
                    chunks.gather(start..fragment_end),
                ));
                summary.packets += 1;
                start = fragment_end;
                if start >= end {
                    break;
                }
            }
            summary.frames += 1;
            pos = end;
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtp::RtpHeader;

    fn clip() -> Bytes {
        Bytes::from(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/clip_aac_16k_mono.aac"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn ffmpeg_adts_clip() {
        let clip = clip();
        let header = AdtsHeader::parse(&clip, 0).unwrap();
        assert_eq!(header.sample_rate(), 16000);
        assert_eq!(header.channel_configuration, 1);
        let config = header.audio_specific_config();
        // ffmpeg's ANNOUNCE for the same encoder says config=1408 (plus an SBR-less extension).
        assert_eq!(config.to_string(), "1408");
        assert_eq!(
            AudioSpecificConfig::parse(&[0x14, 0x08, 0x56, 0xe5]).unwrap(),
            config
        );

        let mut packetizer = AacPacketizer::new(PacketizerConfig::new(97, 9, 0)).unwrap();
        let mut packets = Vec::new();
        // Feed the whole clip as two buffers cut mid-frame.
        let chunks = [clip.slice(..1000), clip.slice(1000..)];
        let summary = packetizer.packetize(&chunks, 5000, &mut packets).unwrap();
        assert!(summary.frames > 10);
        assert_eq!(summary.packets, summary.frames);
        assert!(summary.config_changed);

        let mut pos = 0;
        for (i, packet) in packets.iter().enumerate() {
            let bytes = packet.to_bytes();
            let (h, range) = RtpHeader::parse(&bytes).unwrap();
            assert!(h.marker);
            assert_eq!(h.timestamp, 5000 + 1024 * i as u32);
            let payload = &bytes[range];
            assert_eq!(&payload[..2], &[0x00, 0x10]);
            let size = usize::from(u16::from_be_bytes([payload[2], payload[3]]) >> 3);
            assert_eq!(size, payload.len() - 4);
            let adts = AdtsHeader::parse(&clip[pos..], pos).unwrap();
            assert_eq!(
                &payload[4..],
                &clip[pos + adts.header_length..pos + adts.frame_length]
            );
            pos += adts.frame_length;
        }
        assert_eq!(pos, clip.len());
    }

    #[test]
    fn large_access_unit_is_fragmented() {
        let mut frame = vec![0xff, 0xf1, 0x50, 0x80, 0, 0, 0xfc];
        let length = 7 + 3000usize;
        frame[3] |= (length >> 11) as u8;
        frame[4] = (length >> 3) as u8;
        frame[5] = ((length & 7) << 5) as u8 | 0x1f;
        frame.extend((0..3000).map(|i| i as u8));
        let mut packetizer = AacPacketizer::new(PacketizerConfig::new(97, 9, 0)).unwrap();
        let mut packets = Vec::new();
        let s = packetizer
            .packetize(&[Bytes::from(frame)], 0, &mut packets)
            .unwrap();
        assert_eq!(s.packets, 3);
        let markers: Vec<bool> = packets.iter().map(RtpPacket::marker).collect();
        assert_eq!(markers, [false, false, true]);
        for p in &packets {
            let b = p.to_bytes();
            assert_eq!(u16::from_be_bytes([b[14], b[15]]) >> 3, 3000);
        }
    }

    #[test]
    fn rejects_bad_adts() {
        assert_eq!(
            AdtsHeader::parse(&[0xff, 0xf1, 0x50], 4),
            Err(AacError::Truncated {
                offset: 4,
                needed: 7,
                available: 3
            })
        );
        assert_eq!(
            AdtsHeader::parse(&[0, 0, 0, 0, 0, 0, 0], 0),
            Err(AacError::NoSync { offset: 0 })
        );
        assert!(matches!(
            AdtsHeader::parse(&[0xff, 0xf1, 0x3c, 0x80, 0, 0x1f, 0xfc], 0),
            Err(AacError::SampleRateIndex { index: 15, .. })
        ));
        assert!(matches!(
            AdtsHeader::parse(&[0xff, 0xf1, 0x50, 0x80, 0, 0x1f, 0xfc], 0),
            Err(AacError::FrameLength { length: 0, .. })
        ));
        let mut p = AacPacketizer::new(PacketizerConfig::new(97, 9, 0)).unwrap();
        let truncated = Bytes::from_static(&[0xff, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc, 1, 2]);
        assert!(matches!(
            p.packetize(&[truncated], 0, &mut Vec::new()),
            Err(AacError::Truncated { offset: 0, .. })
        ));
        assert!(AudioSpecificConfig::parse(&[0x14]).is_err());
    }
}
