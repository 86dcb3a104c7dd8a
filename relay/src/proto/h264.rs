//! H.264 over RTP (RFC 6184). The packetizer turns a device's Annex-B access unit into single
//! NAL unit packets and FU-A fragments whose payloads are slices of the received buffers, and
//! remembers the SPS/PPS it saw for the SDP. The depacketizer-side helpers look at RTP payloads a
//! publisher pushes (single NAL, STAP-A, FU-A) to find keyframes for the GOP cache and in-band
//! parameter sets. [`Sps::parse`] reads the picture size and profile for the SDP and logs.

use bytes::Bytes;

use super::nal::{nal_to_rbsp, BitReader, BitstreamError, Chunks};
use super::rtp::{PacketWriter, PacketizerConfig, PacketizerConfigError, RtpPacket};

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;
pub const STAP_A: u8 = 24;
pub const FU_A: u8 = 28;

/// Largest SPS/PPS kept for the SDP; larger ones are ignored as bogus.
pub const MAX_PARAMETER_SET_LEN: usize = 1024;

pub fn nal_type(header: u8) -> u8 {
    header & 0x1f
}

/// The latest SPS and PPS of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H264ParameterSets {
    pub sps: Option<Bytes>,
    pub pps: Option<Bytes>,
}

impl H264ParameterSets {
    /// Records `nal` if it is an SPS or PPS; returns whether anything changed.
    pub fn observe(&mut self, nal: &[u8]) -> bool {
        let slot = match nal.first().map(|&h| nal_type(h)) {
            Some(NAL_SPS) => &mut self.sps,
            Some(NAL_PPS) => &mut self.pps,
            _ => return false,
        };
        if nal.len() > MAX_PARAMETER_SET_LEN || slot.as_deref() == Some(nal) {
            return false;
        }
        *slot = Some(Bytes::copy_from_slice(nal));
        true
    }

    /// Records every complete SPS/PPS carried in an RTP payload (single NAL or STAP-A).
    pub fn observe_rtp_payload(&mut self, payload: &[u8]) -> bool {
        let mut changed = false;
        for nal in RtpPayloadNals::new(payload) {
            changed |= self.observe(nal);
        }
        changed
    }

    pub fn is_complete(&self) -> bool {
        self.sps.is_some() && self.pps.is_some()
    }
}

/// What [`H264Packetizer::packetize`] produced for one access unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessUnitSummary {
    pub packets: usize,
    pub nal_units: usize,
    /// The access unit holds an IDR slice (H.265: an IRAP picture).
    pub keyframe: bool,
    /// An SPS/PPS (H.265: VPS/SPS/PPS) differed from the previous one.
    pub parameter_sets_changed: bool,
}

/// Packetizes H.264 access units without copying payload bytes.
#[derive(Debug, Clone)]
pub struct H264Packetizer {
    writer: PacketWriter,
    parameter_sets: H264ParameterSets,
}

impl H264Packetizer {
    pub fn new(config: PacketizerConfig) -> Result<Self, PacketizerConfigError> {
        Ok(H264Packetizer {
            writer: PacketWriter::new(config)?,
            parameter_sets: H264ParameterSets::default(),
        })
    }

    pub fn parameter_sets(&self) -> &H264ParameterSets {
        &self.parameter_sets
    }

    /// Sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.writer.next_sequence()
    }

    /// Appends the packets of one Annex-B access unit (possibly spread over several buffers)
    /// to `out`. A NAL unit that fits in the MTU is sent whole; a larger one as FU-A fragments.
    /// The marker bit is set on the last packet. An access unit without NAL units produces
    /// nothing.
    pub fn packetize(
        &mut self,
        access_unit: &[Bytes],
        rtp_timestamp: u32,
        out: &mut Vec<RtpPacket>,
    ) -> AccessUnitSummary {
        let chunks = Chunks::new(access_unit);
        let max = self.writer.config.max_payload_len;
        let mut summary = AccessUnitSummary::default();
        let mut nals = chunks.nal_ranges().peekable();
        while let Some(range) = nals.next() {
            let last_nal = nals.peek().is_none();
            summary.nal_units += 1;
            // Ranges are never empty.
            let header = chunks.byte_at(range.start).unwrap_or(0);
            match nal_type(header) {
                NAL_IDR => summary.keyframe = true,
                NAL_SPS | NAL_PPS if range.len() <= MAX_PARAMETER_SET_LEN => {
                    let nal = chunks.contiguous(range.clone());
                    summary.parameter_sets_changed |= self.parameter_sets.observe(&nal);
                }
                _ => {}
            }
            if range.len() <= max {
                out.push(
                    self.writer
                        .packet(rtp_timestamp, last_nal, &[], chunks.gather(range)),
                );
                summary.packets += 1;
                continue;
            }
            let fu_indicator = (header & 0xe0) | FU_A;
            let mut start = range.start + 1;
            let fragment_len = max - 2;
            while start < range.end {
                let end = (start + fragment_len).min(range.end);
                let mut fu_header = nal_type(header);
                if start == range.start + 1 {
                    fu_header |= 0x80;
                }
                if end == range.end {
                    fu_header |= 0x40;
                }
                out.push(self.writer.packet(
                    rtp_timestamp,
                    last_nal && end == range.end,
                    &[fu_indicator, fu_header],
                    chunks.gather(start..end),
                ));
                summary.packets += 1;
                start = end;
            }
        }
        summary
    }
}

/// The complete NAL units inside one RTP payload: the payload itself for a single NAL unit
/// packet, each unit of a STAP-A; nothing for fragments or malformed aggregates (a truncated
/// STAP-A unit ends the iteration).
#[derive(Debug, Clone)]
pub struct RtpPayloadNals<'a> {
    rest: &'a [u8],
    aggregate: bool,
}

impl<'a> RtpPayloadNals<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        match payload.first().map(|&h| nal_type(h)) {
            Some(1..=23) => RtpPayloadNals {
                rest: payload,
                aggregate: false,
            },
            Some(STAP_A) => RtpPayloadNals {
                rest: &payload[1..],
                aggregate: true,
            },
            _ => RtpPayloadNals {
                rest: &[],
                aggregate: false,
            },
        }
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
            (Some(nal), Some(after)) if len > 0 => {
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

/// Whether an RTP payload starts a keyframe: an IDR slice or SPS as a single NAL unit, inside a
/// STAP-A, or as the first FU-A fragment. The GOP cache starts a new group here.
pub fn payload_starts_keyframe(payload: &[u8]) -> bool {
    match payload {
        [h, ..] if matches!(nal_type(*h), NAL_IDR | NAL_SPS) => true,
        [h, ..] if nal_type(*h) == STAP_A => RtpPayloadNals::new(payload)
            .any(|nal| matches!(nal.first().map(|&h| nal_type(h)), Some(NAL_IDR | NAL_SPS))),
        [h, fu, ..] if nal_type(*h) == FU_A => fu & 0x80 != 0 && nal_type(*fu) == NAL_IDR,
        _ => false,
    }
}

/// The fields of a sequence parameter set the relay uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub seq_parameter_set_id: u32,
    pub chroma_format_idc: u32,
    pub width: u32,
    pub height: u32,
}

/// An SPS that cannot be parsed. Comes from the device or publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpsError {
    #[error("not an SPS NAL unit (type {0})")]
    NotSps(u8),
    #[error("SPS truncated or malformed: {0}")]
    Bitstream(#[from] BitstreamError),
    #[error("SPS field {field} out of range: {value}")]
    OutOfRange { field: &'static str, value: u32 },
}

impl Sps {
    /// Parses an SPS NAL unit (header byte included).
    pub fn parse(nal: &[u8]) -> Result<Sps, SpsError> {
        let header = *nal.first().ok_or(BitstreamError { bit: 0 })?;
        if nal_type(header) != NAL_SPS {
            return Err(SpsError::NotSps(nal_type(header)));
        }
        let rbsp = nal_to_rbsp(&nal[1..], MAX_PARAMETER_SET_LEN);
        let mut r = BitReader::new(&rbsp);
        let profile_idc = r.read_bits(8)? as u8;
        let constraint_flags = r.read_bits(8)? as u8;
        let level_idc = r.read_bits(8)? as u8;
        let seq_parameter_set_id = bounded(r.read_ue()?, 31, "seq_parameter_set_id")?;
        let mut chroma_format_idc = 1;
        let mut separate_colour_plane = false;
        if matches!(
            profile_idc,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        ) {
            chroma_format_idc = bounded(r.read_ue()?, 3, "chroma_format_idc")?;
            if chroma_format_idc == 3 {
                separate_colour_plane = r.read_bit()?;
            }
            bounded(r.read_ue()?, 6, "bit_depth_luma_minus8")?;
            bounded(r.read_ue()?, 6, "bit_depth_chroma_minus8")?;
            r.read_bit()?; // qpprime_y_zero_transform_bypass_flag
            if r.read_bit()? {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.read_bit()? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        bounded(r.read_ue()?, 12, "log2_max_frame_num_minus4")?;
        let pic_order_cnt_type = bounded(r.read_ue()?, 2, "pic_order_cnt_type")?;
        if pic_order_cnt_type == 0 {
            bounded(r.read_ue()?, 12, "log2_max_pic_order_cnt_lsb_minus4")?;
        } else if pic_order_cnt_type == 1 {
            r.read_bit()?;
            r.read_se()?;
            r.read_se()?;
            let cycle = bounded(r.read_ue()?, 255, "num_ref_frames_in_pic_order_cnt_cycle")?;
            for _ in 0..cycle {
                r.read_se()?;
            }
        }
        r.read_ue()?; // max_num_ref_frames
        r.read_bit()?; // gaps_in_frame_num_value_allowed_flag
        let width_mbs = bounded(r.read_ue()?, 1023, "pic_width_in_mbs_minus1")? + 1;
        let height_map_units = bounded(r.read_ue()?, 1023, "pic_height_in_map_units_minus1")? + 1;
        let frame_mbs_only = r.read_bit()?;
        if !frame_mbs_only {
            r.read_bit()?; // mb_adaptive_frame_field_flag
        }
        r.read_bit()?; // direct_8x8_inference_flag
        let frame_height_mbs = if frame_mbs_only { 1 } else { 2 } * height_map_units;
        let mut width = width_mbs * 16;
        let mut height = frame_height_mbs * 16;
        if r.read_bit()? {
            let left = r.read_ue()?;
            let right = r.read_ue()?;
            let top = r.read_ue()?;
            let bottom = r.read_ue()?;
            let chroma_array_type = if separate_colour_plane {
                0
            } else {
                chroma_format_idc
            };
            let (crop_x, crop_y) = match chroma_array_type {
                1 => (2, 2),
                2 => (2, 1),
                3 => (1, 1),
                _ => (1, 1),
            };
            let crop_y = crop_y * if frame_mbs_only { 1 } else { 2 };
            let crop_w = (u64::from(left) + u64::from(right)) * crop_x;
            let crop_h = (u64::from(top) + u64::from(bottom)) * crop_y;
            if crop_w >= u64::from(width) || crop_h >= u64::from(height) {
                return Err(SpsError::OutOfRange {
                    field: "frame_crop",
                    value: left.max(right).max(top).max(bottom),
                });
            }
            width -= crop_w as u32;
            height -= crop_h as u32;
        }
        Ok(Sps {
            profile_idc,
            constraint_flags,
            level_idc,
            seq_parameter_set_id,
            chroma_format_idc,
            width,
            height,
        })
    }

    /// The SDP `profile-level-id`: six hex digits of profile, constraints and level.
    pub fn profile_level_id(&self) -> String {
        format!(
            "{:02X}{:02X}{:02X}",
            self.profile_idc, self.constraint_flags, self.level_idc
        )
    }
}

fn bounded(value: u32, max: u32, field: &'static str) -> Result<u32, SpsError> {
    if value > max {
        Err(SpsError::OutOfRange { field, value })
    } else {
        Ok(value)
    }
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), SpsError> {
    let mut last = 8i64;
    let mut next = 8i64;
    for _ in 0..size {
        if next != 0 {
            let delta = i64::from(r.read_se()?);
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::nal::NalUnits;
    use crate::proto::rtp::RtpHeader;

    pub(crate) fn clip() -> Bytes {
        Bytes::from(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/clip_h264.264"
            ))
            .unwrap(),
        )
    }

    /// Access units of the clip: split before each AUD (the clip is encoded with aud=1).
    pub(crate) fn access_units(data: &Bytes) -> Vec<Vec<Bytes>> {
        let mut aus: Vec<Vec<Bytes>> = Vec::new();
        for nal in NalUnits::new(data.clone()) {
            if nal_type(nal[0]) == NAL_AUD || aus.is_empty() {
                aus.push(Vec::new());
            }
            aus.last_mut().unwrap().push(nal);
        }
        aus
    }

    /// Minimal RFC 6184 reassembly, for checking the packetizer.
    fn depacketize(packets: &[Bytes]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for packet in packets {
            let (_, range) = RtpHeader::parse(packet).unwrap();
            let payload = &packet[range];
            match nal_type(payload[0]) {
                FU_A => {
                    let fu_header = payload[1];
                    if fu_header & 0x80 != 0 {
                        fu = Some(vec![(payload[0] & 0xe0) | (fu_header & 0x1f)]);
                    }
                    let buf = fu.as_mut().unwrap();
                    buf.extend_from_slice(&payload[2..]);
                    if fu_header & 0x40 != 0 {
                        nals.push(fu.take().unwrap());
                    }
                }
                STAP_A => nals.extend(RtpPayloadNals::new(payload).map(<[u8]>::to_vec)),
                _ => nals.push(payload.to_vec()),
            }
        }
        nals
    }

    fn annex_b(nals: &[Bytes]) -> Bytes {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
        Bytes::from(out)
    }

    #[test]
    fn real_idr_fragments_and_reassembles() {
        let clip = clip();
        let aus = access_units(&clip);
        assert_eq!(aus.len(), 25);
        let config = PacketizerConfig::new(96, 0x1234, 65530);
        let mut packetizer = H264Packetizer::new(config).unwrap();
        let mut total = 0;
        for (i, au) in aus.iter().enumerate() {
            let bytes = annex_b(au);
            // Split the access unit across three buffers at awkward places.
            let cut1 = bytes.len() / 3;
            let cut2 = cut1 + 1500;
            let chunks = [
                bytes.slice(..cut1),
                bytes.slice(cut1..cut2.min(bytes.len())),
                bytes.slice(cut2.min(bytes.len())..),
            ];
            let mut packets = Vec::new();
            let summary = packetizer.packetize(&chunks, i as u32 * 3600, &mut packets);
            assert_eq!(summary.keyframe, i == 0, "access unit {i}");
            assert_eq!(summary.packets, packets.len());
            assert!(packets.iter().all(|p| p.len() <= 12 + 1400));
            assert!(packets.iter().all(|p| p.timestamp() == i as u32 * 3600));
            let markers: Vec<bool> = packets.iter().map(RtpPacket::marker).collect();
            assert!(markers[..markers.len() - 1].iter().all(|m| !m));
            assert!(markers[markers.len() - 1]);
            // Payload slices point into the received buffers (no copy).
            for p in &packets {
                for piece in p.payload.iter() {
                    let inside = bytes.as_ptr_range();
                    assert!(inside.contains(&piece.as_ptr()));
                }
            }
            if i == 0 {
                assert!(packets.len() > 3, "the IDR must be fragmented");
                assert!(packets
                    .iter()
                    .any(|p| payload_starts_keyframe(&p.to_bytes()[12..])));
            }
            let wire: Vec<Bytes> = packets.iter().map(RtpPacket::to_bytes).collect();
            let got = depacketize(&wire);
            let want: Vec<Vec<u8>> = au.iter().map(|n| n.to_vec()).collect();
            assert_eq!(got, want, "access unit {i}");
            total += packets.len();
        }
        assert_eq!(
            packetizer.next_sequence(),
            65530u16.wrapping_add(total as u16)
        );
        let sets = packetizer.parameter_sets();
        let sps = Sps::parse(sets.sps.as_ref().unwrap()).unwrap();
        assert_eq!((sps.width, sps.height), (320, 240));
        assert!(sets.pps.is_some());
    }

    #[test]
    fn sps_fields() {
        // From the recorded ffmpeg ANNOUNCE: Z2QADayyAoP2AiAAAAMAIAAABkHihUk= (High, 320x240).
        let sps = [
            0x67, 0x64, 0x00, 0x0d, 0xac, 0xb2, 0x02, 0x83, 0xf6, 0x02, 0x20, 0x00, 0x00, 0x03,
            0x00, 0x20, 0x00, 0x00, 0x06, 0x41, 0xe2, 0x85, 0x49,
        ];
        let parsed = Sps::parse(&sps).unwrap();
        assert_eq!(parsed.profile_idc, 100);
        assert_eq!(parsed.profile_level_id(), "64000D");
        assert_eq!((parsed.width, parsed.height), (320, 240));
        assert!(matches!(Sps::parse(&[0x68, 1]), Err(SpsError::NotSps(8))));
        for len in 0..sps.len() {
            let parsed = Sps::parse(&sps[..len]);
            assert!(len >= 8 || parsed.is_err(), "truncated at {len}");
        }
    }

    #[test]
    fn keyframe_detection_on_recorded_rtp() {
        for (name, data, expect_in_band_sps) in [
            (
                "ffmpeg",
                &include_bytes!("../../testdata/ffmpeg_record_h264_aac_interleaved.bin")[..],
                false,
            ),
            (
                "gstreamer",
                &include_bytes!("../../testdata/gstreamer_record_h264_interleaved.bin")[..],
                true,
            ),
        ] {
            let mut pos = 0;
            let mut starts = Vec::new();
            let mut sets = H264ParameterSets::default();
            let mut index = 0;
            while pos + 4 <= data.len() {
                let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
                let packet = &data[pos + 4..pos + 4 + len];
                if data[pos + 1] == 0 {
                    let (_, range) = RtpHeader::parse(packet).unwrap();
                    if payload_starts_keyframe(&packet[range.clone()]) {
                        starts.push(index);
                    }
                    sets.observe_rtp_payload(&packet[range]);
                    index += 1;
                }
                pos += 4 + len;
            }
            // ffmpeg: SEI, then the IDR's first FU-A. GStreamer: AUD, SPS, PPS, IDR FU-A.
            let expected = if expect_in_band_sps {
                vec![1, 3]
            } else {
                vec![1]
            };
            assert_eq!(starts, expected, "{name}");
            assert_eq!(sets.is_complete(), expect_in_band_sps, "{name}");
            if expect_in_band_sps {
                let sps = Sps::parse(sets.sps.as_ref().unwrap()).unwrap();
                assert_eq!((sps.width, sps.height), (320, 240));
            }
        }
    }

    #[test]
    fn stap_a_and_malformed_payloads() {
        let stap = [STAP_A, 0, 2, 0x67, 0xAA, 0, 2, 0x68, 0xBB];
        let nals: Vec<&[u8]> = RtpPayloadNals::new(&stap).collect();
        assert_eq!(nals, vec![&[0x67, 0xAA][..], &[0x68, 0xBB][..]]);
        assert!(payload_starts_keyframe(&stap));
        let truncated = [STAP_A, 0, 9, 0x67];
        assert_eq!(RtpPayloadNals::new(&truncated).count(), 0);
        assert!(!payload_starts_keyframe(&truncated));
        assert!(!payload_starts_keyframe(&[]));
        assert!(!payload_starts_keyframe(&[FU_A]));
        assert!(payload_starts_keyframe(&[FU_A | 0x60, 0x85]));
        assert!(!payload_starts_keyframe(&[FU_A | 0x60, 0x05]));
    }

    #[test]
    fn small_access_unit_is_single_nal_packets() {
        let mut p = H264Packetizer::new(PacketizerConfig::new(96, 1, 0)).unwrap();
        let mut out = Vec::new();
        let au = Bytes::from_static(&[0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x41, 1, 2, 3]);
        let s = p.packetize(&[au], 0, &mut out);
        assert_eq!(s.packets, 2);
        assert_eq!(&out[1].to_bytes()[12..], &[0x41, 1, 2, 3]);
        assert!(!out[0].marker() && out[1].marker());
        assert_eq!(
            p.packetize(&[Bytes::from_static(b"junk")], 0, &mut out)
                .packets,
            0
        );
    }
}
