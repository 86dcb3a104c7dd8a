//! H.265 over RTP (RFC 7798), the same jobs as the H.264 module: a zero-copy packetizer for
//! device access units (single NAL unit packets and FU fragments; no aggregation, no DONL since
//! the relay never reorders), remembered VPS/SPS/PPS for the SDP, and helpers that find keyframes
//! and parameter sets in RTP payloads a publisher pushes (single NAL, AP, FU).

use bytes::Bytes;

use super::h264::{AccessUnitSummary, MAX_PARAMETER_SET_LEN};
use super::nal::Chunks;
use super::rtp::{PacketWriter, PacketizerConfig, PacketizerConfigError, RtpPacket};

pub const NAL_IRAP_FIRST: u8 = 16; // BLA_W_LP
pub const NAL_IRAP_LAST: u8 = 21; // CRA_NUT
pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;
pub const NAL_AUD: u8 = 35;
pub const AGGREGATION_PACKET: u8 = 48;
pub const FRAGMENTATION_UNIT: u8 = 49;

/// The NAL unit type from the first byte of the two-byte NAL header.
pub fn nal_type(first_header_byte: u8) -> u8 {
    (first_header_byte >> 1) & 0x3f
}

pub fn is_irap(nal_type: u8) -> bool {
    (NAL_IRAP_FIRST..=NAL_IRAP_LAST).contains(&nal_type)
}

/// The latest VPS, SPS and PPS of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H265ParameterSets {
    pub vps: Option<Bytes>,
    pub sps: Option<Bytes>,
    pub pps: Option<Bytes>,
}

impl H265ParameterSets {
    /// Records `nal` if it is a VPS, SPS or PPS; returns whether anything changed.
    pub fn observe(&mut self, nal: &[u8]) -> bool {
        let slot = match nal.first().map(|&h| nal_type(h)) {
            Some(NAL_VPS) => &mut self.vps,
            Some(NAL_SPS) => &mut self.sps,
            Some(NAL_PPS) => &mut self.pps,
            _ => return false,
        };
        if nal.len() < 3 || nal.len() > MAX_PARAMETER_SET_LEN || slot.as_deref() == Some(nal) {
            return false;
        }
        *slot = Some(Bytes::copy_from_slice(nal));
        true
    }

    /// Records every complete parameter set carried in an RTP payload (single NAL or AP).
    pub fn observe_rtp_payload(&mut self, payload: &[u8]) -> bool {
        let mut changed = false;
        for nal in RtpPayloadNals::new(payload) {
            changed |= self.observe(nal);
        }
        changed
    }

    pub fn is_complete(&self) -> bool {
        self.vps.is_some() && self.sps.is_some() && self.pps.is_some()
    }
}

/// Packetizes H.265 access units without copying payload bytes.
#[derive(Debug, Clone)]
pub struct H265Packetizer {
    writer: PacketWriter,
    parameter_sets: H265ParameterSets,
}

impl H265Packetizer {
    pub fn new(config: PacketizerConfig) -> Result<Self, PacketizerConfigError> {
        Ok(H265Packetizer {
            writer: PacketWriter::new(config)?,
            parameter_sets: H265ParameterSets::default(),
        })
    }

    pub fn parameter_sets(&self) -> &H265ParameterSets {
        &self.parameter_sets
    }

    pub fn next_sequence(&self) -> u16 {
        self.writer.next_sequence()
    }

    /// Appends the packets of one Annex-B access unit to `out`; see
    /// [`super::h264::H264Packetizer::packetize`]. NAL units shorter than their 2-byte header are
    /// dropped.
    pub fn packetize(
        &mut self,
        access_unit: &[Bytes],
        rtp_timestamp: u32,
        out: &mut Vec<RtpPacket>,
    ) -> AccessUnitSummary {
        let chunks = Chunks::new(access_unit);
        let max = self.writer.config.max_payload_len;
        let mut summary = AccessUnitSummary::default();
        let mut nals = chunks.nal_ranges().filter(|r| r.len() >= 2).peekable();
        while let Some(range) = nals.next() {
            let last_nal = nals.peek().is_none();
            summary.nal_units += 1;
            let h0 = chunks.byte_at(range.start).unwrap_or(0);
            let h1 = chunks.byte_at(range.start + 1).unwrap_or(0);
            let kind = nal_type(h0);
            if is_irap(kind) {
                summary.keyframe = true;
            } else if matches!(kind, NAL_VPS | NAL_SPS | NAL_PPS)
                && range.len() <= MAX_PARAMETER_SET_LEN
            {
                let nal = chunks.contiguous(range.clone());
                summary.parameter_sets_changed |= self.parameter_sets.observe(&nal);
            }
            if range.len() <= max {
                out.push(self.writer.packet(
                    rtp_timestamp,
                    last_nal,
                    &[],
                    chunks.gather(range.clone()),
                ));
                summary.packets += 1;
                continue;
            }
            // PayloadHdr keeps F, LayerId and TID; its type becomes 49.
            let payload_header = [(h0 & 0x81) | (FRAGMENTATION_UNIT << 1), h1];
            let fragment_len = max - 3;
            let mut start = range.start + 2;
            while start < range.end {
                let end = (start + fragment_len).min(range.end);
                let mut fu_header = kind;
                if start == range.start + 2 {
                    fu_header |= 0x80;
                }
                if end == range.end {
                    fu_header |= 0x40;
                }
                out.push(self.writer.packet(
                    rtp_timestamp,
                    last_nal && end == range.end,
                    &[payload_header[0], payload_header[1], fu_header],
                    chunks.gather(start..end),
                ));
                summary.packets += 1;
                start = end;
            }
        }
        summary
    }
}

/// The complete NAL units inside one RTP payload (single NAL unit packet or AP without DONL);
/// nothing for FUs, PACI or malformed payloads.
#[derive(Debug, Clone)]
pub struct RtpPayloadNals<'a> {
    rest: &'a [u8],
    aggregate: bool,
}

impl<'a> RtpPayloadNals<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        let (rest, aggregate) = match payload {
            [h0, _, ..] if nal_type(*h0) < AGGREGATION_PACKET => (payload, false),
            [h0, _, rest @ ..] if nal_type(*h0) == AGGREGATION_PACKET => (rest, true),
            _ => (&[][..], false),
        };
        RtpPayloadNals { rest, aggregate }
    }
}

impl<'a> Iterator for RtpPayloadNals<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if !self.aggregate {
            let nal = std::mem::take(&mut self.rest);
            return (!nal.is_empty()).then_some(nal);
        }
        let [hi, lo, rest @ ..] = self.rest else {
            self.rest = &[];
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        match (rest.get(..len), rest.get(len..)) {
            (Some(nal), Some(after)) if len >= 2 => {
                self.rest = after;
                Some(nal)
            }
            _ => {
                self.rest = &[];
                None
            }
        }
    }
}

/// Whether an RTP payload starts a keyframe: an IRAP picture (types 16-21) or a VPS, as a single
/// NAL unit, inside an AP, or as the first fragment of an FU.
pub fn payload_starts_keyframe(payload: &[u8]) -> bool {
    let starts = |kind: u8| is_irap(kind) || kind == NAL_VPS;
    match payload {
        [h0, _, ..] if nal_type(*h0) == AGGREGATION_PACKET => {
            RtpPayloadNals::new(payload).any(|nal| starts(nal_type(nal[0])))
        }
        [h0, _, fu, ..] if nal_type(*h0) == FRAGMENTATION_UNIT => {
            fu & 0x80 != 0 && starts(fu & 0x3f)
        }
        [h0, _, ..] => starts(nal_type(*h0)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::nal::NalUnits;
    use crate::proto::rtp::RtpHeader;

    fn depacketize(packets: &[Bytes]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for packet in packets {
            let (_, range) = RtpHeader::parse(packet).unwrap();
            let p = &packet[range];
            if nal_type(p[0]) == FRAGMENTATION_UNIT {
                if p[2] & 0x80 != 0 {
                    fu = Some(vec![(p[0] & 0x81) | ((p[2] & 0x3f) << 1), p[1]]);
                }
                fu.as_mut().unwrap().extend_from_slice(&p[3..]);
                if p[2] & 0x40 != 0 {
                    nals.push(fu.take().unwrap());
                }
            } else {
                nals.extend(RtpPayloadNals::new(p).map(<[u8]>::to_vec));
            }
        }
        nals
    }

    #[test]
    fn real_irap_fragments_and_reassembles() {
        let clip = Bytes::from(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/clip_h265.265"
            ))
            .unwrap(),
        );
        // Access units: a new one starts at each VPS or slice with first_slice_segment_in_pic.
        let mut aus: Vec<Vec<Bytes>> = Vec::new();
        let mut seen_slice = false;
        for nal in NalUnits::new(clip) {
            let kind = nal_type(nal[0]);
            let first_slice = kind < 32 && nal[2] & 0x80 != 0;
            if aus.is_empty() || kind == NAL_VPS || (first_slice && seen_slice) {
                aus.push(Vec::new());
                seen_slice = false;
            }
            seen_slice |= kind < 32;
            aus.last_mut().unwrap().push(nal);
        }
        assert_eq!(aus.len(), 25);
        let mut packetizer = H265Packetizer::new(PacketizerConfig::new(96, 7, 100)).unwrap();
        for (i, au) in aus.iter().enumerate() {
            let mut annex_b = Vec::new();
            for nal in au {
                annex_b.extend_from_slice(&[0, 0, 1]);
                annex_b.extend_from_slice(nal);
            }
            let annex_b = Bytes::from(annex_b);
            let half = annex_b.len() / 2;
            let chunks = [annex_b.slice(..half), annex_b.slice(half..)];
            let mut packets = Vec::new();
            let summary = packetizer.packetize(&chunks, 0, &mut packets);
            assert_eq!(summary.keyframe, i == 0);
            assert!(packets.iter().all(|p| p.len() <= 1412));
            assert!(packets.last().unwrap().marker());
            if i == 0 {
                assert!(summary.parameter_sets_changed);
                assert!(packets.len() > 3);
            }
            let wire: Vec<Bytes> = packets.iter().map(RtpPacket::to_bytes).collect();
            let want: Vec<Vec<u8>> = au.iter().map(|n| n.to_vec()).collect();
            assert_eq!(depacketize(&wire), want, "access unit {i}");
        }
        assert!(packetizer.parameter_sets().is_complete());
    }

    #[test]
    fn keyframe_detection_on_recorded_rtp() {
        let data = include_bytes!("../../testdata/ffmpeg_record_h265_aac_interleaved.bin");
        let mut pos = 0;
        let mut starts = Vec::new();
        let mut index = 0;
        while pos + 4 <= data.len() {
            let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
            let packet = &data[pos + 4..pos + 4 + len];
            if data[pos + 1] == 0 {
                let (_, range) = RtpHeader::parse(packet).unwrap();
                if payload_starts_keyframe(&packet[range]) {
                    starts.push(index);
                }
                index += 1;
            }
            pos += 4 + len;
        }
        // The first video packet is the first FU of the IDR_N_LP picture.
        assert_eq!(starts, vec![0]);
    }

    #[test]
    fn aggregation_packets() {
        let vps = [0x40, 0x01, 0x0c];
        let sps = [0x42, 0x01, 0x01];
        let mut ap = vec![0x60, 0x01, 0, 3];
        ap.extend_from_slice(&vps);
        ap.extend_from_slice(&[0, 3]);
        ap.extend_from_slice(&sps);
        assert!(payload_starts_keyframe(&ap));
        let mut sets = H265ParameterSets::default();
        assert!(sets.observe_rtp_payload(&ap));
        assert!(!sets.observe_rtp_payload(&ap));
        assert_eq!(sets.vps.as_deref(), Some(&vps[..]));
        assert!(!payload_starts_keyframe(&[0x60, 0x01, 0, 9, 0x40]));
        assert!(!payload_starts_keyframe(&[0x62]));
        assert!(!payload_starts_keyframe(&[0x62, 0x01, 0x13]));
    }
}
