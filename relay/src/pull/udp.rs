//! What a pull source's UDP track accepts, without I/O: the connection hands each datagram with
//! its sender to [`UdpTrackFilter::check`] and relays, or drops and counts, as it answers.
//!
//! - Only the source sends: a datagram from another IP address, or from a port other than the
//!   `server_port` the source announced in SETUP (when it announced one), is stray and dropped.
//!   UDP has no connection, so anyone who can reach the port could otherwise inject media.
//! - Sizes: an RTP packet has at least its 12-byte header, an RTCP packet at least a header and
//!   an SSRC (8 bytes); nothing is longer than an interleaved frame can carry
//!   ([`MAX_PACKET_LEN`]), so every accepted packet relays to TCP viewers unchanged.
//! - Order and loss: packets are relayed as they arrive, never held back to be reordered (the
//!   viewers' players have jitter buffers; holding packets would add latency for everyone).
//!   Gaps in the RTP sequence numbers are counted as lost, the way RFC 3550 A.1 counts them:
//!   a late or duplicate packet (behind the highest number seen) counts nothing, and a jump of
//!   more than [`MAX_DROPOUT`] is a restart of the sender's numbering, not a loss.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};

use crate::hub::MAX_PACKET_LEN;

/// Smallest RTP packet: the fixed header (RFC 3550 section 5.1).
pub const MIN_RTP_LEN: usize = 12;
/// Smallest RTCP packet: header and sender SSRC (RFC 3550 section 6.4).
pub const MIN_RTCP_LEN: usize = 8;
/// A forward jump in sequence numbers beyond which the numbering restarted (RFC 3550 A.1).
pub const MAX_DROPOUT: u16 = 3000;

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it; `lost` RTP packets were skipped before it (0 for RTCP, late or in-order ones).
    Relay { lost: u64 },
    /// From an address other than the source's: drop.
    Stray,
    /// Too short or too long for RTP or RTCP: drop.
    BadSize,
}

/// One track's UDP expectations: where the source sends from, and the highest RTP sequence
/// number seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpTrackFilter {
    source: IpAddr,
    rtp_port: Option<u16>,
    rtcp_port: Option<u16>,
    highest_seq: Option<u16>,
}

impl UdpTrackFilter {
    /// Datagrams must come from `source`; from `server_ports` (RTP, RTCP) when the source
    /// announced them, from any port of `source` otherwise.
    pub fn new(source: IpAddr, server_ports: Option<(u16, Option<u16>)>) -> Self {
        UdpTrackFilter {
            source,
            rtp_port: server_ports.map(|(rtp, _)| rtp),
            rtcp_port: server_ports.map(|(rtp, rtcp)| rtcp.unwrap_or(rtp.wrapping_add(1))),
            highest_seq: None,
        }
    }

    /// The verdict on `datagram` from `from`, received on the RTCP socket when `is_rtcp`.
    pub fn check(&mut self, from: SocketAddr, is_rtcp: bool, datagram: &[u8]) -> Verdict {
        let port = if is_rtcp {
            self.rtcp_port
        } else {
            self.rtp_port
        };
        if from.ip().to_canonical() != self.source.to_canonical()
            || port.is_some_and(|p| p != from.port())
        {
            return Verdict::Stray;
        }
        let min = if is_rtcp { MIN_RTCP_LEN } else { MIN_RTP_LEN };
        if datagram.len() < min || datagram.len() > MAX_PACKET_LEN {
            return Verdict::BadSize;
        }
        if is_rtcp {
            return Verdict::Relay { lost: 0 };
        }
        let seq = u16::from_be_bytes([datagram[2], datagram[3]]);
        let lost = match self.highest_seq {
            None => 0,
            Some(highest) => {
                let ahead = seq.wrapping_sub(highest);
                if ahead == 0 || ahead >= 0x8000 {
                    // A duplicate, or late (reordered): relayed, nothing counted.
                    return Verdict::Relay { lost: 0 };
                }
                if ahead > MAX_DROPOUT {
                    0
                } else {
                    u64::from(ahead - 1)
                }
            }
        };
        self.highest_seq = Some(seq);
        Verdict::Relay { lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        let mut packet = vec![0x80, 96];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&[0; 8]);
        packet.push(0x65);
        packet
    }

    const SERVER: &str = "10.0.0.2:6970";
    const SERVER_RTCP: &str = "10.0.0.2:6971";

    fn filter() -> UdpTrackFilter {
        UdpTrackFilter::new("10.0.0.2".parse().unwrap(), Some((6970, Some(6971))))
    }

    #[test]
    fn gaps_are_counted_and_late_packets_relayed_uncounted() {
        let mut f = filter();
        let from = SERVER.parse().unwrap();
        let verdicts: Vec<_> = [65534u16, 65535, 2, 1, 1, 3, 9000, 9001]
            .iter()
            .map(|&seq| f.check(from, false, &rtp(seq)))
            .collect();
        let lost = |lost| Verdict::Relay { lost };
        assert_eq!(
            verdicts,
            [
                lost(0),
                lost(0),
                lost(2), // 0 and 1 missing across the wrap...
                lost(0), // ...then 1 arrives late
                lost(0), // duplicate
                lost(0),
                lost(0), // a jump past MAX_DROPOUT: the numbering restarted
                lost(0),
            ]
        );
    }

    #[test]
    fn only_the_source_address_and_ports_are_accepted() {
        let mut f = filter();
        let packet = rtp(1);
        assert_eq!(
            f.check("10.0.0.3:6970".parse().unwrap(), false, &packet),
            Verdict::Stray
        );
        assert_eq!(
            f.check(SERVER_RTCP.parse().unwrap(), false, &packet),
            Verdict::Stray,
            "RTP from the RTCP port"
        );
        assert_eq!(
            f.check(
                SERVER_RTCP.parse().unwrap(),
                true,
                &[0x80, 200, 0, 1, 0, 0, 0, 1]
            ),
            Verdict::Relay { lost: 0 }
        );
        // IPv4-mapped IPv6 is the same host.
        assert_eq!(
            f.check("[::ffff:10.0.0.2]:6970".parse().unwrap(), false, &packet),
            Verdict::Relay { lost: 0 }
        );
        // No server_port announced: any port of the source's address.
        let mut any_port = UdpTrackFilter::new("10.0.0.2".parse().unwrap(), None);
        assert_eq!(
            any_port.check("10.0.0.2:1234".parse().unwrap(), false, &packet),
            Verdict::Relay { lost: 0 }
        );
        assert_eq!(
            any_port.check("10.0.0.9:1234".parse().unwrap(), true, &packet),
            Verdict::Stray
        );
    }

    #[test]
    fn sizes_are_bounded() {
        let mut f = filter();
        let from = SERVER.parse().unwrap();
        assert_eq!(f.check(from, false, &[0x80; 11]), Verdict::BadSize);
        assert_eq!(
            f.check(SERVER_RTCP.parse().unwrap(), true, &[0x80; 7]),
            Verdict::BadSize
        );
        assert_eq!(
            f.check(from, false, &vec![0x80; MAX_PACKET_LEN + 1]),
            Verdict::BadSize
        );
        assert_eq!(
            f.check(from, false, &vec![0x80; MAX_PACKET_LEN]),
            Verdict::Relay { lost: 0 }
        );
    }
}
