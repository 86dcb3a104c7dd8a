//! The media unit of the hub: one RTP or RTCP packet, built once per stream and shared by
//! reference count with every viewer. Its payload is one or two slices of the buffer the media
//! was received in and is never copied; only a small prefix (the RTP header, plus any
//! payload-format bytes a packetizer adds such as an H.264 FU-A indicator and header) is stored
//! inline, so that a viewer can write it beside its own interleaved header.
//!
//! Sharing a packet needs an `Rc` allocation; [`PacketPool`] keeps the allocations of packets
//! the hub has released and reuses them, so that a warm stream pushes packets without allocating.

use std::rc::Rc;

use bytes::Bytes;

/// Tracks (SDP media sections) a stream may have; track indexes run from 0 to `MAX_TRACKS - 1`.
pub const MAX_TRACKS: usize = 8;

/// Largest inline prefix: a 12-byte RTP header, up to 4 CSRCs, or an extension with a few words,
/// plus a 3-byte H.265 fragmentation-unit header. A passthrough packet with a bigger header is
/// stored whole as payload instead.
pub const RTP_PREFIX_CAPACITY: usize = 28;

/// Largest packet an RTSP interleaved frame can carry (its length field is 16 bits).
pub const MAX_PACKET_LEN: usize = u16::MAX as usize;

/// What the hub needs to know about a packet besides its bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// Index of the track in the stream description (SDP media order).
    pub track: u8,
    /// RTCP rather than RTP: sent on the viewer's RTCP channel of the track.
    pub is_rtcp: bool,
    /// First packet of an access unit that a decoder can start from (an H.264 IDR or H.265 IRAP
    /// picture, counting the parameter sets sent in-band just before it). Starts a new GOP.
    pub keyframe_start: bool,
    /// Last packet of an access unit (the RTP marker bit for video). Counts frames.
    pub end_of_access_unit: bool,
}

/// A packet the packetizer or the publisher gave us cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Internal: a packetizer built a prefix longer than the inline capacity.
    #[error("internal: RTP prefix of {len} bytes exceeds the inline capacity of {RTP_PREFIX_CAPACITY} bytes")]
    PrefixTooLong {
        /// Length of the rejected prefix.
        len: usize,
    },
    /// The packet does not fit one RTSP interleaved frame.
    #[error(
        "packet of {len} bytes exceeds the {MAX_PACKET_LEN}-byte limit of an interleaved frame"
    )]
    TooLarge {
        /// Total length of the packet.
        len: usize,
    },
    /// The packet has no bytes at all.
    #[error("empty packet")]
    Empty,
    /// The track index is beyond [`MAX_TRACKS`].
    #[error("track index {track} is out of range: a stream has at most {MAX_TRACKS} tracks")]
    TrackOutOfRange {
        /// The rejected track index.
        track: u8,
    },
}

/// One shared, immutable RTP or RTCP packet: `prefix ++ payload ++ payload_tail` on the wire.
#[derive(Clone)]
pub struct RtpPacket {
    prefix: [u8; RTP_PREFIX_CAPACITY],
    prefix_len: u8,
    meta: PacketMeta,
    payload: Bytes,
    payload_tail: Bytes,
}

impl RtpPacket {
    /// A packet made of an inline `prefix` and one or two payload slices (`payload_tail` may be
    /// empty; it exists for a fragment that straddles two receive buffers).
    pub fn new(
        meta: PacketMeta,
        prefix: &[u8],
        payload: Bytes,
        payload_tail: Bytes,
    ) -> Result<Self, PacketError> {
        if usize::from(meta.track) >= MAX_TRACKS {
            return Err(PacketError::TrackOutOfRange { track: meta.track });
        }
        if prefix.len() > RTP_PREFIX_CAPACITY {
            return Err(PacketError::PrefixTooLong { len: prefix.len() });
        }
        let len = prefix.len() + payload.len() + payload_tail.len();
        if len > MAX_PACKET_LEN {
            return Err(PacketError::TooLarge { len });
        }
        if len == 0 {
            return Err(PacketError::Empty);
        }
        let mut inline = [0u8; RTP_PREFIX_CAPACITY];
        inline[..prefix.len()].copy_from_slice(prefix);
        Ok(RtpPacket {
            prefix: inline,
            // Cannot truncate: checked against RTP_PREFIX_CAPACITY above.
            prefix_len: prefix.len() as u8,
            meta,
            payload,
            payload_tail,
        })
    }

    /// A packet relayed exactly as received (RTSP publish): the whole packet is one payload slice
    /// and the publisher's RTP header is kept as sent.
    pub fn passthrough(meta: PacketMeta, packet: Bytes) -> Result<Self, PacketError> {
        RtpPacket::new(meta, &[], packet, Bytes::new())
    }

    /// The inline bytes written before the payload (the RTP header, for packetized media).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..usize::from(self.prefix_len)]
    }

    /// The first payload slice.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The second payload slice; usually empty.
    pub fn payload_tail(&self) -> &Bytes {
        &self.payload_tail
    }

    /// Length on the wire, without the 4-byte interleaved header. At most [`MAX_PACKET_LEN`].
    pub fn len(&self) -> usize {
        usize::from(self.prefix_len) + self.payload.len() + self.payload_tail.len()
    }

    /// Always false: empty packets are refused at construction.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet's metadata.
    pub fn meta(&self) -> PacketMeta {
        self.meta
    }

    /// Track index (SDP media order).
    pub fn track(&self) -> u8 {
        self.meta.track
    }

    /// RTCP rather than RTP.
    pub fn is_rtcp(&self) -> bool {
        self.meta.is_rtcp
    }

    /// Whether a decoder can start here (see [`PacketMeta::keyframe_start`]).
    pub fn is_keyframe_start(&self) -> bool {
        self.meta.keyframe_start && !self.meta.is_rtcp
    }

    /// Whether this packet ends an access unit.
    pub fn is_end_of_access_unit(&self) -> bool {
        self.meta.end_of_access_unit && !self.meta.is_rtcp
    }

    /// Appends the packet's wire bytes (without interleaved header) to `out`. A copy: for tests,
    /// datagram transports and TLS writers, never for the TCP fan-out path.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix());
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(&self.payload_tail);
    }
}

/// A packet a publisher pushes to the hub: owned (the hub shares it, in a reused allocation when
/// it has one) or already shared (kept as it is).
#[derive(Debug)]
pub enum PushedPacket {
    /// A packet the hub puts in an `Rc` of its own.
    Owned(RtpPacket),
    /// A packet the caller already shares.
    Shared(Rc<RtpPacket>),
}

impl From<RtpPacket> for PushedPacket {
    fn from(packet: RtpPacket) -> Self {
        PushedPacket::Owned(packet)
    }
}

impl From<Rc<RtpPacket>> for PushedPacket {
    fn from(packet: Rc<RtpPacket>) -> Self {
        PushedPacket::Shared(packet)
    }
}

/// The `Rc` allocations of packets the hub has released (nobody else held them any more), kept
/// to share the next packets in: a packet is written over a spare in place instead of being
/// given a new allocation. A spare holds no payload (its slices are released when it is put
/// back), so a spare costs the size of one `Rc<RtpPacket>` and pins no receive buffer.
#[derive(Default)]
pub(crate) struct PacketPool {
    spares: Vec<Rc<RtpPacket>>,
}

impl PacketPool {
    /// `packet`, shared: in a spare allocation if there is one, in a new one otherwise.
    pub(crate) fn share(&mut self, packet: PushedPacket) -> Rc<RtpPacket> {
        let packet = match packet {
            PushedPacket::Shared(shared) => return shared,
            PushedPacket::Owned(packet) => packet,
        };
        if let Some(mut spare) = self.spares.pop() {
            // Always unique: only spares nobody else holds are kept.
            if let Some(slot) = Rc::get_mut(&mut spare) {
                *slot = packet;
                return spare;
            }
        }
        Rc::new(packet)
    }

    /// Takes back a packet the hub no longer holds: kept as a spare if nobody else holds it and
    /// fewer than `max_spares` are kept, dropped otherwise.
    pub(crate) fn release(&mut self, mut packet: Rc<RtpPacket>, max_spares: usize) {
        if self.spares.len() >= max_spares {
            return;
        }
        if let Some(slot) = Rc::get_mut(&mut packet) {
            slot.payload = Bytes::new();
            slot.payload_tail = Bytes::new();
            self.spares.push(packet);
        }
    }

    /// Spares kept.
    #[cfg(test)]
    pub(crate) fn spares(&self) -> usize {
        self.spares.len()
    }
}

impl std::fmt::Debug for RtpPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpPacket")
            .field("meta", &self.meta)
            .field("prefix_len", &self.prefix_len)
            .field("payload_len", &self.payload.len())
            .field("payload_tail_len", &self.payload_tail.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_measures() {
        let header = [0x80, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        let packet = RtpPacket::new(
            PacketMeta {
                track: 1,
                ..PacketMeta::default()
            },
            &header,
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
        )
        .unwrap();
        assert_eq!(packet.len(), 17);
        assert_eq!(packet.prefix(), &header);
        let mut wire = Vec::new();
        packet.copy_to(&mut wire);
        assert_eq!(&wire[12..], b"abcde");
    }

    #[test]
    fn refuses_bad_packets() {
        let meta = PacketMeta::default();
        assert_eq!(
            RtpPacket::new(meta, &[0; 29], Bytes::new(), Bytes::new()).unwrap_err(),
            PacketError::PrefixTooLong { len: 29 }
        );
        assert_eq!(
            RtpPacket::passthrough(meta, Bytes::from(vec![0; 65_536])).unwrap_err(),
            PacketError::TooLarge { len: 65_536 }
        );
        assert!(RtpPacket::passthrough(meta, Bytes::from(vec![0; 65_535])).is_ok());
        assert_eq!(
            RtpPacket::passthrough(meta, Bytes::new()).unwrap_err(),
            PacketError::Empty
        );
        let far_track = PacketMeta {
            track: MAX_TRACKS as u8,
            ..meta
        };
        assert!(matches!(
            RtpPacket::passthrough(far_track, Bytes::from_static(b"x")),
            Err(PacketError::TrackOutOfRange { .. })
        ));
    }

    #[test]
    fn rtcp_is_never_a_keyframe() {
        let meta = PacketMeta {
            is_rtcp: true,
            keyframe_start: true,
            end_of_access_unit: true,
            track: 0,
        };
        let packet = RtpPacket::passthrough(meta, Bytes::from_static(b"rtcp")).unwrap();
        assert!(!packet.is_keyframe_start());
        assert!(!packet.is_end_of_access_unit());
    }
}
