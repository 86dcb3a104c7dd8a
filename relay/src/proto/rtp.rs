//! RTP (RFC 3550) fixed header: parsing packets that publishers push (to find the payload and
//! marker bit) and writing the headers of packets the relay builds from device media. A packet the
//! relay builds is an [`RtpPacket`]: a small inline prefix (12-byte header plus codec
//! fragmentation bytes) and at most two payload slices of the received buffer, so a payload is
//! never copied between the device socket and the viewer sockets.

use std::ops::Range;

use bytes::Bytes;

use super::nal::PayloadSlices;

pub const RTP_VERSION: u8 = 2;
pub const RTP_HEADER_LEN: usize = 12;
/// Longest prefix a packetizer writes: 12-byte header + 4 bytes of payload headers (AAC's
/// AU-headers-length and AU-header; H.265 FU needs 3, H.264 FU-A 2).
pub const MAX_PREFIX_LEN: usize = 16;

/// A packet a publisher sent is not valid RTP. Always the publisher's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("RTP packet of {len} bytes is shorter than the {needed} its header needs")]
    TooShort { len: usize, needed: usize },
    #[error("RTP version {version}, expected 2")]
    BadVersion { version: u8 },
    #[error("RTP padding of {padding} bytes leaves no room in a {len}-byte packet")]
    BadPadding { padding: usize, len: usize },
}

/// The header extension of a parsed packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpExtension {
    pub profile: u16,
    /// The extension data, as offsets into the packet.
    pub data: Range<usize>,
}

/// RTP fixed header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Whether the packet had the padding bit (the padding is excluded from the payload range).
    pub padding: bool,
    pub csrc_count: u8,
    pub extension: Option<RtpExtension>,
}

impl RtpHeader {
    /// A header without CSRCs or extension, as the relay writes.
    pub fn new(payload_type: u8, sequence: u16, timestamp: u32, ssrc: u32, marker: bool) -> Self {
        RtpHeader {
            marker,
            payload_type: payload_type & 0x7f,
            sequence,
            timestamp,
            ssrc,
            padding: false,
            csrc_count: 0,
            extension: None,
        }
    }

    /// Parses the header and returns it with the payload's range in `packet`.
    pub fn parse(packet: &[u8]) -> Result<(RtpHeader, Range<usize>), RtpError> {
        let too_short = |needed| RtpError::TooShort {
            len: packet.len(),
            needed,
        };
        let Some(fixed) = packet.get(..RTP_HEADER_LEN) else {
            return Err(too_short(RTP_HEADER_LEN));
        };
        let version = fixed[0] >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion { version });
        }
        let padding = fixed[0] & 0x20 != 0;
        let has_extension = fixed[0] & 0x10 != 0;
        let csrc_count = fixed[0] & 0x0f;
        let mut offset = RTP_HEADER_LEN + 4 * usize::from(csrc_count);
        if packet.len() < offset {
            return Err(too_short(offset));
        }
        let mut extension = None;
        if has_extension {
            let Some(ext) = packet.get(offset..offset + 4) else {
                return Err(too_short(offset + 4));
            };
            let profile = u16::from_be_bytes([ext[0], ext[1]]);
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            let data = offset + 4..offset + 4 + 4 * words;
            if packet.len() < data.end {
                return Err(too_short(data.end));
            }
            offset = data.end;
            extension = Some(RtpExtension { profile, data });
        }
        let mut end = packet.len();
        if padding {
            let pad = usize::from(packet[packet.len() - 1]);
            if pad == 0 || end - offset < pad {
                return Err(RtpError::BadPadding {
                    padding: pad,
                    len: packet.len(),
                });
            }
            end -= pad;
        }
        Ok((
            RtpHeader {
                marker: fixed[1] & 0x80 != 0,
                payload_type: fixed[1] & 0x7f,
                sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
                timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
                ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
                padding,
                csrc_count,
                extension,
            },
            offset..end,
        ))
    }

    /// The 12 fixed bytes. CSRCs, extension and padding are not written (the relay never
    /// originates them); the X, P and CC bits are therefore always zero.
    pub fn write(&self) -> [u8; RTP_HEADER_LEN] {
        let mut out = [0u8; RTP_HEADER_LEN];
        out[0] = RTP_VERSION << 6;
        out[1] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out
    }
}

/// Converts a presentation time in microseconds to an RTP timestamp at `clock_rate` Hz, plus a
/// (random, per stream) `offset`. Wraps modulo 2^32 as RTP timestamps do.
pub fn rtp_timestamp(pts_us: u64, clock_rate: u32, offset: u32) -> u32 {
    let ticks = u128::from(pts_us) * u128::from(clock_rate) / 1_000_000;
    (ticks as u32).wrapping_add(offset)
}

/// One RTP packet built by a packetizer: inline prefix plus shared payload slices. Written to a
/// socket as up to three iovecs (after a viewer's own `$` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    prefix: [u8; MAX_PREFIX_LEN],
    prefix_len: u8,
    pub payload: PayloadSlices,
}

impl RtpPacket {
    /// `extra` (codec payload headers) follows the RTP header in the prefix; at most 4 bytes.
    pub(crate) fn new(header: &RtpHeader, extra: &[u8], payload: PayloadSlices) -> RtpPacket {
        let mut prefix = [0u8; MAX_PREFIX_LEN];
        prefix[..RTP_HEADER_LEN].copy_from_slice(&header.write());
        let extra = &extra[..extra.len().min(MAX_PREFIX_LEN - RTP_HEADER_LEN)];
        prefix[RTP_HEADER_LEN..RTP_HEADER_LEN + extra.len()].copy_from_slice(extra);
        RtpPacket {
            prefix,
            prefix_len: (RTP_HEADER_LEN + extra.len()) as u8,
            payload,
        }
    }

    /// RTP header and codec payload headers.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len)]
    }

    /// The pieces of the packet in wire order (prefix, then non-empty payload slices).
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.prefix()).chain(self.payload.iter().map(|b| &b[..]))
    }

    pub fn len(&self) -> usize {
        usize::from(self.prefix_len) + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn marker(&self) -> bool {
        self.prefix[1] & 0x80 != 0
    }

    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.prefix[2], self.prefix[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([
            self.prefix[4],
            self.prefix[5],
            self.prefix[6],
            self.prefix[7],
        ])
    }

    /// The whole packet in one buffer (tests, loadgen; the relay sends the pieces).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        Bytes::from(out)
    }
}

/// Settings shared by the packetizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketizerConfig {
    pub payload_type: u8,
    pub ssrc: u32,
    /// Sequence number of the first packet (random per stream, RFC 3550 section 5.1).
    pub initial_sequence: u16,
    /// Largest RTP payload (after the 12-byte header), default 1400.
    pub max_payload_len: usize,
}

/// The smallest accepted `max_payload_len`; anything below cannot hold fragment headers usefully.
pub const MIN_PAYLOAD_LEN: usize = 64;

/// A packetizer configuration that cannot work. The caller's (configuration's) fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketizerConfigError {
    #[error("max RTP payload of {got} bytes is outside {min}..=65000")]
    PayloadLen { got: usize, min: usize },
    #[error("payload type {0} is outside 0..=127")]
    PayloadType(u8),
}

impl PacketizerConfig {
    pub fn new(payload_type: u8, ssrc: u32, initial_sequence: u16) -> Self {
        PacketizerConfig {
            payload_type,
            ssrc,
            initial_sequence,
            max_payload_len: 1400,
        }
    }

    pub fn validate(&self) -> Result<(), PacketizerConfigError> {
        if !(MIN_PAYLOAD_LEN..=65_000).contains(&self.max_payload_len) {
            return Err(PacketizerConfigError::PayloadLen {
                got: self.max_payload_len,
                min: MIN_PAYLOAD_LEN,
            });
        }
        if self.payload_type > 127 {
            return Err(PacketizerConfigError::PayloadType(self.payload_type));
        }
        Ok(())
    }
}

/// Sequence numbering and header writing shared by the packetizers.
#[derive(Debug, Clone)]
pub(crate) struct PacketWriter {
    pub(crate) config: PacketizerConfig,
    next_sequence: u16,
}

impl PacketWriter {
    pub(crate) fn new(config: PacketizerConfig) -> Result<Self, PacketizerConfigError> {
        config.validate()?;
        Ok(PacketWriter {
            config,
            next_sequence: config.initial_sequence,
        })
    }

    pub(crate) fn next_sequence(&self) -> u16 {
        self.next_sequence
    }

    pub(crate) fn packet(
        &mut self,
        timestamp: u32,
        marker: bool,
        extra: &[u8],
        payload: PayloadSlices,
    ) -> RtpPacket {
        let header = RtpHeader::new(
            self.config.payload_type,
            self.next_sequence,
            timestamp,
            self.config.ssrc,
            marker,
        );
        self.next_sequence = self.next_sequence.wrapping_add(1);
        RtpPacket::new(&header, extra, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let header = RtpHeader::new(96, 65535, 0xDEADBEEF, 0x01020304, true);
        let bytes = header.write();
        let mut packet = bytes.to_vec();
        packet.extend_from_slice(b"xyz");
        let (parsed, payload) = RtpHeader::parse(&packet).unwrap();
        assert_eq!(parsed, header);
        assert_eq!(payload, 12..15);
    }

    #[test]
    fn csrc_extension_padding() {
        let mut p = vec![0xB1, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        p.extend_from_slice(&[9, 9, 9, 9]); // CSRC
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // one-word extension
        p.extend_from_slice(b"pay");
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let (h, range) = RtpHeader::parse(&p).unwrap();
        assert_eq!(h.csrc_count, 1);
        assert_eq!(h.extension.as_ref().unwrap().profile, 0xBEDE);
        assert_eq!(&p[h.extension.unwrap().data], &[1, 2, 3, 4]);
        assert_eq!(&p[range], b"pay");
    }

    #[test]
    fn rejects() {
        assert_eq!(
            RtpHeader::parse(&[0x80; 5]),
            Err(RtpError::TooShort { len: 5, needed: 12 })
        );
        assert_eq!(
            RtpHeader::parse(&[0x40; 12]),
            Err(RtpError::BadVersion { version: 1 })
        );
        let mut pad = [0u8; 13];
        pad[0] = 0xA0;
        pad[12] = 5;
        assert!(matches!(
            RtpHeader::parse(&pad),
            Err(RtpError::BadPadding { .. })
        ));
        let mut ext = [0u8; 16];
        ext[0] = 0x90;
        ext[15] = 1;
        assert!(matches!(
            RtpHeader::parse(&ext),
            Err(RtpError::TooShort { .. })
        ));
    }

    #[test]
    fn recorded_ffmpeg_rtp_parses() {
        let data = include_bytes!("../../testdata/ffmpeg_record_h264_aac_interleaved.bin");
        let mut pos = 0;
        let mut video_seq = None;
        while pos + 4 <= data.len() {
            let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
            let packet = &data[pos + 4..pos + 4 + len];
            if data[pos + 1] == 0 {
                let (h, range) = RtpHeader::parse(packet).unwrap();
                assert_eq!(h.payload_type, 96);
                assert!(range.start == 12 && range.end == len);
                if let Some(prev) = video_seq {
                    assert_eq!(h.sequence, u16::wrapping_add(prev, 1));
                }
                video_seq = Some(h.sequence);
            }
            pos += 4 + len;
        }
        assert_eq!(pos, data.len());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rtp_timestamp(1_000_000, 90_000, 0), 90_000);
        assert_eq!(rtp_timestamp(40_000, 90_000, 10), 3_610);
        assert_eq!(rtp_timestamp(64_000, 16_000, 0), 1024);
        // 2^32 / 90000 s later the timestamp wraps.
        let wrap_us = (1u64 << 32) * 1_000_000 / 90_000 + 1;
        assert!(rtp_timestamp(wrap_us, 90_000, 0) < 2);
        assert_eq!(rtp_timestamp(0, 90_000, u32::MAX), u32::MAX);
    }

    #[test]
    fn config_validation() {
        let mut config = PacketizerConfig::new(96, 1, 0);
        assert!(config.validate().is_ok());
        config.max_payload_len = 10;
        assert!(config.validate().is_err());
        config.max_payload_len = 1400;
        config.payload_type = 200;
        assert!(config.validate().is_err());
    }
}
