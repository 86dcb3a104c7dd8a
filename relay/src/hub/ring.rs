//! The hub's one shared queue: every retained packet, in arrival order, numbered by a sequence
//! that never wraps. Viewers read it through their own cursors, so a packet is queued once
//! however many viewers there are. Each slot also carries running totals (bytes and frames pushed
//! before it) so that lag and loss between any two positions cost O(1).

use std::collections::VecDeque;
use std::rc::Rc;

use super::packet::RtpPacket;

pub(crate) struct Slot {
    pub(crate) packet: Rc<RtpPacket>,
    /// Packet bytes pushed before this one, over the hub's life.
    pub(crate) bytes_before: u64,
    /// Access units ended before this packet, over the hub's life.
    pub(crate) frames_before: u64,
}

pub(crate) struct Ring {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    total_bytes: u64,
    total_frames: u64,
}

impl Ring {
    /// A ring that never reallocates while it holds at most `capacity` packets.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Ring {
            slots: VecDeque::with_capacity(capacity),
            first_seq: 0,
            total_bytes: 0,
            total_frames: 0,
        }
    }

    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next pushed packet gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.first_seq + self.slots.len() as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Returns the sequence number given to the packet.
    pub(crate) fn push(&mut self, packet: Rc<RtpPacket>) -> u64 {
        let seq = self.next_seq();
        let len = packet.len() as u64;
        let ends_frame = packet.is_end_of_access_unit();
        self.slots.push_back(Slot {
            packet,
            bytes_before: self.total_bytes,
            frames_before: self.total_frames,
        });
        self.total_bytes += len;
        self.total_frames += u64::from(ends_frame);
        seq
    }

    pub(crate) fn front(&self) -> Option<&Slot> {
        self.slots.front()
    }

    /// Drops the oldest slot, handing back its packet.
    pub(crate) fn pop_front(&mut self) -> Option<Rc<RtpPacket>> {
        let slot = self.slots.pop_front()?;
        self.first_seq += 1;
        Some(slot.packet)
    }

    pub(crate) fn get(&self, seq: u64) -> Option<&Slot> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.slots.get(index)
    }

    /// Slots from `seq` (clamped to the ring) to the newest.
    pub(crate) fn iter_from(&self, seq: u64) -> std::collections::vec_deque::Iter<'_, Slot> {
        let start = seq
            .saturating_sub(self.first_seq)
            .min(self.slots.len() as u64) as usize;
        self.slots.range(start..)
    }

    /// Bytes from `seq` to the newest packet; `None` if `seq` is no longer retained.
    pub(crate) fn bytes_from(&self, seq: u64) -> Option<u64> {
        if seq == self.next_seq() {
            return Some(0);
        }
        self.get(seq)
            .map(|slot| self.total_bytes - slot.bytes_before)
    }

    /// Frames ended before `seq`; `None` if `seq` is no longer retained.
    pub(crate) fn frames_before(&self, seq: u64) -> Option<u64> {
        if seq == self.next_seq() {
            return Some(self.total_frames);
        }
        self.get(seq).map(|slot| slot.frames_before)
    }

    pub(crate) fn total_frames(&self) -> u64 {
        self.total_frames
    }
}
