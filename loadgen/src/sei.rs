//! The send timestamp a simulated camera puts in every video frame, so a viewer on the same host
//! can measure end-to-end latency (camera socket -> relay -> RTSP viewer) per frame without
//! trusting any server clock: an H.264 SEI NAL unit (type 6) with one user_data_unregistered
//! message (payload type 5), our 16-byte UUID, then the send time (Unix microseconds, u64 BE) and
//! the frame number (u32 BE). Emulation prevention is applied, so the NAL is valid Annex-B and
//! decoders skip it; any relay that forwards NAL units forwards it.

use bytes::{BufMut, Bytes, BytesMut};
use relay::proto::nal::nal_to_rbsp;

/// Identifies our messages among other user_data_unregistered SEI (random, fixed).
pub const STAMP_UUID: [u8; 16] = [
    0x6c, 0x6f, 0x61, 0x64, 0x67, 0x65, 0x6e, 0x2d, 0x9a, 0x51, 0x3e, 0x07, 0xc2, 0x4b, 0x88, 0x1d,
];

/// NAL unit type of H.264 SEI.
pub const NAL_SEI: u8 = 6;
const PAYLOAD_TYPE_USER_DATA_UNREGISTERED: u8 = 5;
/// UUID + send time + frame number.
const PAYLOAD_LEN: usize = 16 + 8 + 4;
/// Longest SEI NAL we look into (ours is 33 bytes before emulation prevention).
const MAX_SEI_LEN: usize = 256;

/// What a frame carries: when it left the camera, and its number in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStamp {
    /// Unix time in microseconds when the camera wrote the frame to its socket.
    pub sent_unix_us: u64,
    /// Frame number since the stream started.
    pub frame: u32,
}

impl FrameStamp {
    /// The SEI NAL unit (without start code) carrying this stamp.
    pub fn to_sei_nal(self) -> Bytes {
        let mut rbsp = Vec::with_capacity(PAYLOAD_LEN + 4);
        rbsp.push(PAYLOAD_TYPE_USER_DATA_UNREGISTERED);
        rbsp.push(PAYLOAD_LEN as u8);
        rbsp.extend_from_slice(&STAMP_UUID);
        rbsp.extend_from_slice(&self.sent_unix_us.to_be_bytes());
        rbsp.extend_from_slice(&self.frame.to_be_bytes());
        // rbsp_trailing_bits
        rbsp.push(0x80);
        let mut nal = BytesMut::with_capacity(rbsp.len() + 8);
        nal.put_u8(NAL_SEI);
        add_emulation_prevention(&rbsp, &mut nal);
        nal.freeze()
    }

    /// Reads a stamp from an H.264 NAL unit (without start code), if it is one of ours.
    pub fn from_nal(nal: &[u8]) -> Option<FrameStamp> {
        if nal.first()? & 0x1f != NAL_SEI || nal.len() > MAX_SEI_LEN {
            return None;
        }
        let rbsp = nal_to_rbsp(&nal[1..], MAX_SEI_LEN);
        // One or more sei_message()s: payload type and size are 0xFF-extended.
        let mut at = 0;
        while at < rbsp.len() && rbsp[at] != 0x80 {
            let (kind, next) = extended_value(&rbsp, at)?;
            let (size, next) = extended_value(&rbsp, next)?;
            let payload = rbsp.get(next..next.checked_add(size)?)?;
            if kind == usize::from(PAYLOAD_TYPE_USER_DATA_UNREGISTERED)
                && size == PAYLOAD_LEN
                && payload[..16] == STAMP_UUID
            {
                let sent_unix_us = u64::from_be_bytes(payload[16..24].try_into().ok()?);
                let frame = u32::from_be_bytes(payload[24..28].try_into().ok()?);
                return Some(FrameStamp {
                    sent_unix_us,
                    frame,
                });
            }
            at = next + size;
        }
        None
    }
}

fn extended_value(rbsp: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    loop {
        let byte = *rbsp.get(at)?;
        at += 1;
        value = value.checked_add(usize::from(byte))?;
        if byte != 0xff {
            return Some((value, at));
        }
    }
}

/// Writes `rbsp` with an emulation-prevention byte after every `00 00` followed by 0..=3.
pub fn add_emulation_prevention(rbsp: &[u8], out: &mut BytesMut) {
    let mut zeros = 0;
    for &byte in rbsp {
        if zeros >= 2 && byte <= 3 {
            out.put_u8(3);
            zeros = 0;
        }
        out.put_u8(byte);
        zeros = if byte == 0 { zeros + 1 } else { 0 };
    }
}

/// Finds our stamp in an H.264 RTP payload: a single NAL unit packet, or any NAL of a STAP-A
/// aggregate (RFC 6184). Fragments (FU-A) are not looked into: our SEI is far below any MTU.
pub fn stamp_in_rtp_payload(payload: &[u8]) -> Option<FrameStamp> {
    match payload.first()? & 0x1f {
        NAL_SEI => FrameStamp::from_nal(payload),
        24 => {
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + len)?;
                if let Some(stamp) = FrameStamp::from_nal(nal) {
                    return Some(stamp);
                }
                rest = &rest[2 + len..];
            }
            None
        }
        _ => None,
    }
}

/// Now, as Unix microseconds.
pub fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_even_with_zero_bytes() {
        for stamp in [
            FrameStamp {
                sent_unix_us: 1_764_000_000_123_456,
                frame: 7,
            },
            // Zeros everywhere: emulation prevention must kick in and be undone.
            FrameStamp {
                sent_unix_us: 0x0000_0001_0000_0000,
                frame: 0,
            },
        ] {
            let nal = stamp.to_sei_nal();
            assert_eq!(nal[0], NAL_SEI);
            // No start code can appear inside the NAL.
            assert!(!nal.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 1));
            assert_eq!(FrameStamp::from_nal(&nal), Some(stamp));
        }
    }

    #[test]
    fn other_sei_and_other_nals_are_not_stamps() {
        // A recovery point SEI (type 6), as x264 writes them.
        assert_eq!(FrameStamp::from_nal(&[6, 6, 1, 0xc4, 0x80]), None);
        // Another user_data_unregistered with a different UUID.
        let mut other = vec![6, 5, 28];
        other.extend_from_slice(&[0x11; 28]);
        other.push(0x80);
        assert_eq!(FrameStamp::from_nal(&other), None);
        // A slice.
        assert_eq!(FrameStamp::from_nal(&[0x65, 0x88, 0x84]), None);
        // Truncated ours.
        let nal = FrameStamp {
            sent_unix_us: 5,
            frame: 5,
        }
        .to_sei_nal();
        assert_eq!(FrameStamp::from_nal(&nal[..20]), None);
    }

    #[test]
    fn found_in_single_and_aggregated_rtp_payloads() {
        let stamp = FrameStamp {
            sent_unix_us: 42,
            frame: 3,
        };
        let nal = stamp.to_sei_nal();
        assert_eq!(stamp_in_rtp_payload(&nal), Some(stamp));
        let mut stap = vec![24];
        for n in [&[0x67u8, 1, 2][..], &nal[..]] {
            stap.extend_from_slice(&(n.len() as u16).to_be_bytes());
            stap.extend_from_slice(n);
        }
        assert_eq!(stamp_in_rtp_payload(&stap), Some(stamp));
        // A STAP-A whose length runs past the end.
        assert_eq!(stamp_in_rtp_payload(&[24, 0, 200, 6]), None);
    }
}
