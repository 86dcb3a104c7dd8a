//! One viewer's view of the hub: a cursor into the shared ring, the RTSP interleaved channels it
//! chose in SETUP, a reusable buffer for its interleaved headers, and the packet a short write left
//! half sent. [`Batch`] is what its connection task writes: for each packet, the viewer's 4-byte
//! interleaved header and the stream's RTP header side by side in the viewer's buffer, then the
//! shared payload slices, ready for one vectored `sendmsg`. Nothing is allocated or copied per
//! packet except those few header bytes.

use std::io::IoSlice;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::notify::LocalNotify;
use super::packet::{PacketMeta, RtpPacket, MAX_TRACKS, RTP_PREFIX_CAPACITY};
use super::ring::{Ring, Slot};
use super::HubStats;

/// Length of the RTSP interleaved frame header: `$`, channel, 16-bit big-endian length.
pub const INTERLEAVED_HEADER_LEN: usize = 4;

/// Most `IoSlice`s one packet takes in a batch: headers, payload, payload tail.
pub const MAX_IO_SLICES_PER_PACKET: usize = 3;

/// Bytes reserved per packet in a viewer's header buffer.
pub(crate) const HEADER_STRIDE: usize = INTERLEAVED_HEADER_LEN + RTP_PREFIX_CAPACITY;

/// Identifies a viewer within its hub. A removed viewer's id is never reused for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewerId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// The interleaved channels a viewer chose for one track in SETUP (`interleaved=rtp-rtcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackChannels {
    /// Channel of the track's RTP packets.
    pub rtp: u8,
    /// Channel of the track's RTCP packets.
    pub rtcp: u8,
}

/// Which interleaved channels a viewer receives each track on; tracks it did not SETUP are not
/// sent to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelMap {
    tracks: [Option<TrackChannels>; MAX_TRACKS],
}

impl ChannelMap {
    /// A map with no track set up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the channels of `track`; refuses a track index beyond [`MAX_TRACKS`].
    pub fn set(&mut self, track: u8, channels: TrackChannels) -> Result<(), super::HubError> {
        let slot = self
            .tracks
            .get_mut(usize::from(track))
            .ok_or(super::HubError::TrackOutOfRange { track })?;
        *slot = Some(channels);
        Ok(())
    }

    /// The builder form of [`ChannelMap::set`].
    pub fn with_track(mut self, track: u8, rtp: u8, rtcp: u8) -> Result<Self, super::HubError> {
        self.set(track, TrackChannels { rtp, rtcp })?;
        Ok(self)
    }

    /// The channels of `track`, if it was set up.
    pub fn get(&self, track: u8) -> Option<TrackChannels> {
        self.tracks.get(usize::from(track)).copied().flatten()
    }

    /// Whether no track is set up.
    pub fn is_empty(&self) -> bool {
        self.tracks.iter().all(Option::is_none)
    }

    pub(crate) fn channel_for(&self, meta: PacketMeta) -> Option<u8> {
        let channels = self.get(meta.track)?;
        Some(if meta.is_rtcp {
            channels.rtcp
        } else {
            channels.rtp
        })
    }
}

/// Why a viewer gets no more packets. Its connection should close after reading this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewerEnd {
    /// Clean end: the publisher left and did not return within the grace period (or the stream
    /// was ended on purpose), and the viewer has received everything sent before that.
    #[error("stream ended: the publisher is gone")]
    StreamEnded,
    /// Viewer's fault: it fell behind its queue bound more times in a row than allowed.
    #[error("viewer too slow: overran its queue {skips} times in a row")]
    TooSlow {
        /// Consecutive overruns at eviction.
        skips: u32,
    },
    /// Viewer's fault: it stayed behind for longer than allowed.
    #[error("viewer too slow: behind for {behind:?}")]
    BehindTooLong {
        /// How long it had been behind at eviction.
        behind: Duration,
    },
    /// Caller's bug: no such viewer in this hub (removed, or from another hub).
    #[error("unknown viewer {0:?}")]
    UnknownViewer(ViewerId),
}

/// Per-viewer counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewerStats {
    /// Packets completely written.
    pub packets_out: u64,
    /// Bytes written, interleaved headers included.
    pub bytes_out: u64,
    /// Packets skipped because the viewer fell behind.
    pub packets_dropped: u64,
    /// Access units (of any track) among those packets.
    pub frames_dropped: u64,
    /// Times the viewer fell behind and skipped to a keyframe.
    pub skips: u64,
}

pub(crate) enum Phase {
    /// Waiting to start on the first keyframe at or after `since`. When the viewer got here by
    /// falling behind, `dropped_from` holds the (sequence, frames before) it was at, to count what
    /// it skipped once it starts again.
    Awaiting {
        since: u64,
        dropped_from: Option<(u64, u64)>,
    },
    /// Reading from `cursor`.
    Active,
    /// No more packets (a half-written packet is still finished when the end is clean).
    Closed(ViewerEnd),
}

/// The rest of a packet a short write left half sent. It keeps its own reference to the packet
/// and its own copy of the headers, so the ring may drop the packet meanwhile.
pub(crate) struct Partial {
    packet: Rc<RtpPacket>,
    headers: [u8; HEADER_STRIDE],
    headers_len: u8,
    written: usize,
}

impl Partial {
    fn wire_len(&self) -> usize {
        usize::from(self.headers_len)
            + self.packet.payload().len()
            + self.packet.payload_tail().len()
    }

    fn remaining(&self) -> usize {
        self.wire_len() - self.written
    }

    fn remaining_pieces(&self) -> [&[u8]; 3] {
        let mut pieces: [&[u8]; 3] = [
            &self.headers[..usize::from(self.headers_len)],
            self.packet.payload(),
            self.packet.payload_tail(),
        ];
        let mut skip = self.written;
        for piece in &mut pieces {
            let cut = skip.min(piece.len());
            *piece = &piece[cut..];
            skip -= cut;
        }
        pieces
    }
}

pub(crate) struct ViewerQueue {
    pub(crate) notify: LocalNotify,
    pub(crate) channels: ChannelMap,
    pub(crate) phase: Phase,
    /// Sequence number of the next packet to start writing (meaningful when `Active`).
    pub(crate) cursor: u64,
    /// Frames ended before `cursor`, kept here because the ring may drop `cursor`'s slot.
    pub(crate) cursor_frames: u64,
    pub(crate) partial: Option<Partial>,
    /// `HEADER_STRIDE` bytes per packet of the current batch; allocated once.
    headers: Box<[u8]>,
    /// Registered in one of the hub's wake-up lists.
    pub(crate) parked: bool,
    /// Sequence number at which the stream ended for this viewer.
    pub(crate) ends_at: Option<u64>,
    pub(crate) consecutive_skips: u32,
    pub(crate) behind_since: Option<Instant>,
    pub(crate) stats: ViewerStats,
}

impl ViewerQueue {
    pub(crate) fn new(
        notify: LocalNotify,
        channels: ChannelMap,
        phase: Phase,
        batch_max_packets: usize,
    ) -> Self {
        ViewerQueue {
            notify,
            channels,
            phase,
            cursor: 0,
            cursor_frames: 0,
            partial: None,
            headers: vec![0; batch_max_packets.max(1) * HEADER_STRIDE].into_boxed_slice(),
            parked: false,
            ends_at: None,
            consecutive_skips: 0,
            behind_since: None,
            stats: ViewerStats::default(),
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active)
    }

    /// Whether the viewer needs packets the ring no longer has.
    pub(crate) fn is_overrun(&self, ring: &Ring) -> bool {
        self.is_active() && self.cursor < ring.first_seq()
    }

    pub(crate) fn close(&mut self, reason: ViewerEnd) {
        if reason != ViewerEnd::StreamEnded {
            self.partial = None;
        }
        self.phase = Phase::Closed(reason);
        self.notify.notify();
    }

    fn batch_capacity(&self) -> usize {
        self.headers.len() / HEADER_STRIDE
    }
}

/// Packets ready to be written to one viewer, borrowed from the hub until [`Batch::consume`].
///
/// The wire bytes are the rest of any half-written packet, then for each packet the viewer's
/// interleaved header and the packet. Get them as `IoSlice`s ([`Batch::fill_io_slices`],
/// [`Batch::io_slices`]), write what the socket takes, and report it with [`Batch::consume`].
pub struct Batch<'a> {
    ring: &'a Ring,
    viewer: &'a mut ViewerQueue,
    hub_stats: &'a mut HubStats,
    /// First sequence number after the batch.
    end_seq: u64,
    packets: usize,
    wire_len: usize,
}

impl<'a> Batch<'a> {
    /// Builds the next batch: at most `max_packets` whole packets (and the viewer's buffer
    /// capacity), stopping before `max_bytes` unless that would leave the batch empty.
    pub(crate) fn build(
        ring: &'a Ring,
        viewer: &'a mut ViewerQueue,
        hub_stats: &'a mut HubStats,
        max_packets: usize,
        max_bytes: usize,
    ) -> Self {
        let max_packets = max_packets.clamp(1, viewer.batch_capacity());
        // Tracks the viewer did not set up still cost a look each; bound the looking too.
        let max_scanned = max_packets.saturating_mul(4);
        let mut wire_len = viewer.partial.as_ref().map_or(0, Partial::remaining);
        let readable = viewer.is_active() && viewer.cursor >= ring.first_seq();
        let limit_seq = if readable {
            ring.next_seq().min(viewer.ends_at.unwrap_or(u64::MAX))
        } else {
            viewer.cursor
        };
        let mut seq = viewer.cursor;
        let mut packets = 0;
        let mut scanned = 0;
        let mut slots = ring.iter_from(viewer.cursor);
        while seq < limit_seq && packets < max_packets && scanned < max_scanned {
            let Some(slot) = slots.next() else { break };
            let packet = &slot.packet;
            let Some(channel) = viewer.channels.channel_for(packet.meta()) else {
                seq += 1;
                if packets == 0 && viewer.partial.is_none() {
                    // Nothing to write before it: step over it for good (so an empty batch
                    // always means the viewer has caught up).
                    viewer.cursor = seq;
                } else {
                    scanned += 1;
                }
                continue;
            };
            let wire = INTERLEAVED_HEADER_LEN + packet.len();
            if wire_len > 0 && wire_len + wire > max_bytes {
                break;
            }
            let entry = &mut viewer.headers[packets * HEADER_STRIDE..][..HEADER_STRIDE];
            entry[0] = b'$';
            entry[1] = channel;
            // Cannot truncate: RtpPacket::new bounds the length by MAX_PACKET_LEN.
            entry[2..4].copy_from_slice(&(packet.len() as u16).to_be_bytes());
            let prefix = packet.prefix();
            // Relayed (passthrough) packets have no prefix: skip the call, it runs per packet
            // per viewer.
            if !prefix.is_empty() {
                entry[INTERLEAVED_HEADER_LEN..][..prefix.len()].copy_from_slice(prefix);
            }
            wire_len += wire;
            packets += 1;
            seq += 1;
            scanned += 1;
        }
        if packets == 0 && viewer.partial.is_none() && readable {
            if let Some(frames) = ring.frames_before(viewer.cursor) {
                viewer.cursor_frames = frames;
            }
        }
        Batch {
            ring,
            viewer,
            hub_stats,
            end_seq: seq,
            packets,
            wire_len,
        }
    }

    pub(crate) fn viewer_mut(&mut self) -> &mut ViewerQueue {
        self.viewer
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.wire_len == 0
    }

    /// Bytes to write, interleaved headers included.
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// Whole packets in the batch, not counting the rest of a half-written one.
    pub fn packet_count(&self) -> usize {
        self.packets
    }

    /// Upper bound of the number of `IoSlice`s the batch needs.
    pub fn max_io_slices(&self) -> usize {
        (self.packets + 1) * MAX_IO_SLICES_PER_PACKET
    }

    fn slots(&self) -> impl Iterator<Item = (u8, &Slot)> + '_ {
        let channels = &self.viewer.channels;
        self.ring
            .iter_from(self.viewer.cursor)
            .take(self.end_seq.saturating_sub(self.viewer.cursor) as usize)
            .filter_map(move |slot| Some((channels.channel_for(slot.packet.meta())?, slot)))
    }

    /// The batch's whole packets with the interleaved channel each goes on (for datagram
    /// transports; the rest of a half-written packet is not included).
    pub fn packets(&self) -> impl Iterator<Item = (u8, &RtpPacket)> + '_ {
        self.slots().map(|(channel, slot)| (channel, &*slot.packet))
    }

    /// The wire bytes as non-empty `IoSlice`s, in order.
    pub fn io_slices(&self) -> impl Iterator<Item = IoSlice<'_>> + '_ {
        let partial = self
            .viewer
            .partial
            .as_ref()
            .map(Partial::remaining_pieces)
            .into_iter()
            .flatten();
        let whole = self
            .slots()
            .zip(self.viewer.headers.chunks_exact(HEADER_STRIDE))
            .flat_map(|((_, slot), headers)| {
                let packet = &slot.packet;
                let headers: &[u8] = &headers[..INTERLEAVED_HEADER_LEN + packet.prefix().len()];
                [headers, packet.payload(), packet.payload_tail()]
            });
        partial
            .chain(whole)
            .filter(|piece| !piece.is_empty())
            .map(IoSlice::new)
    }

    /// Fills `out` with the first wire bytes as `IoSlice`s and returns how many it filled. If
    /// `out` is shorter than [`Batch::max_io_slices`], the slices filled are a prefix of the batch,
    /// which is fine: [`Batch::consume`] counts bytes.
    pub fn fill_io_slices<'s>(&'s self, out: &mut [IoSlice<'s>]) -> usize {
        // The hot path of every viewer: a plain loop, not the iterator chain of `io_slices`.
        let mut filled = 0;
        if let Some(partial) = &self.viewer.partial {
            for piece in partial.remaining_pieces() {
                if !put_slice(out, &mut filled, piece) {
                    return filled;
                }
            }
        }
        let headers = self.viewer.headers.chunks_exact(HEADER_STRIDE);
        for ((_, slot), headers) in self.slots().zip(headers) {
            let packet = &slot.packet;
            let headers = &headers[..INTERLEAVED_HEADER_LEN + packet.prefix().len()];
            if !(put_slice(out, &mut filled, headers)
                && put_slice(out, &mut filled, packet.payload())
                && put_slice(out, &mut filled, packet.payload_tail()))
            {
                break;
            }
        }
        filled
    }

    /// Appends the wire bytes to `out`: a copy, for TLS writers and tests.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        for slice in self.io_slices() {
            out.extend_from_slice(&slice);
        }
    }

    /// Records that the first `written` bytes of the batch reached the socket. A packet cut short
    /// is finished first by the next batch. Bytes beyond the batch are a caller bug and ignored.
    pub fn consume(self, written: usize) {
        debug_assert!(
            written <= self.wire_len,
            "consumed {written} of {} bytes",
            self.wire_len
        );
        let mut left = written.min(self.wire_len);
        let viewer = self.viewer;
        viewer.stats.bytes_out += left as u64;
        self.hub_stats.bytes_out += left as u64;

        if let Some(partial) = &mut viewer.partial {
            let remaining = partial.remaining();
            if left < remaining {
                partial.written += left;
                return;
            }
            left -= remaining;
            viewer.partial = None;
            viewer.stats.packets_out += 1;
        }

        let mut index = 0;
        let mut slots = self.ring.iter_from(viewer.cursor);
        while viewer.cursor < self.end_seq {
            let Some(slot) = slots.next() else { break };
            if viewer.channels.channel_for(slot.packet.meta()).is_none() {
                viewer.cursor += 1;
                continue;
            }
            let wire = INTERLEAVED_HEADER_LEN + slot.packet.len();
            if left >= wire {
                left -= wire;
                viewer.cursor += 1;
                viewer.stats.packets_out += 1;
                index += 1;
            } else {
                if left > 0 {
                    let mut headers = [0; HEADER_STRIDE];
                    headers
                        .copy_from_slice(&viewer.headers[index * HEADER_STRIDE..][..HEADER_STRIDE]);
                    viewer.partial = Some(Partial {
                        packet: Rc::clone(&slot.packet),
                        headers,
                        // Cannot truncate: at most HEADER_STRIDE.
                        headers_len: (INTERLEAVED_HEADER_LEN + slot.packet.prefix().len()) as u8,
                        written: left,
                    });
                    viewer.cursor += 1;
                }
                break;
            }
        }
        if let Some(frames) = self.ring.frames_before(viewer.cursor) {
            viewer.cursor_frames = frames;
        }
        if viewer.partial.is_none() && viewer.cursor == self.ring.next_seq() {
            // Caught up: whatever made it fall behind is over.
            viewer.consecutive_skips = 0;
            viewer.behind_since = None;
        }
    }
}

/// Stores `piece` (if not empty) at `out[*filled]`; false when `out` is full.
fn put_slice<'s>(out: &mut [IoSlice<'s>], filled: &mut usize, piece: &'s [u8]) -> bool {
    if piece.is_empty() {
        return true;
    }
    match out.get_mut(*filled) {
        Some(slot) => {
            *slot = IoSlice::new(piece);
            *filled += 1;
            true
        }
        None => false,
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("cursor", &self.viewer.cursor)
            .field("end_seq", &self.end_seq)
            .field("packets", &self.packets)
            .field("wire_len", &self.wire_len)
            .field("partial", &self.viewer.partial.is_some())
            .finish()
    }
}
