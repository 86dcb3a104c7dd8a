//! The stream hub: one per live stream (uid, channel, stream) on the shard that owns the device,
//! fanning one publisher's packets out to every viewer without copying them.
//!
//! Why it looks the way it does:
//! - **One queue for all viewers.** Packets go into one ring ([`ring`]), each once, as
//!   `Rc<RtpPacket>`; a viewer is a cursor into it. Pushing a packet costs the same with 1 or 1000
//!   viewers; writing costs O(1) per packet per viewer and allocates nothing ([`Batch`]). Pushing
//!   allocates nothing either once the stream is warm: the `Rc` of a packet the ring drops, when
//!   no viewer still holds it, is kept (at most as many as the ring has slots) and the next
//!   pushed packet is written into it in place (`PacketPool`).
//! - **The ring keeps exactly what someone may still be owed**: the current group of pictures
//!   (GOP, from the newest keyframe; at most [`HubConfig::gop_max_packets`] /
//!   [`HubConfig::gop_max_bytes`], beyond that the GOP is not cached) and, back from the newest
//!   packet, what the slowest viewer has not been written yet, within its queue bound (the last
//!   [`HubConfig::queue_max_packets`] / [`HubConfig::queue_max_bytes`] of packets). Both are
//!   suffixes of the stream, so the ring holds the longer of the two. With viewers that keep up
//!   that is the GOP alone, which is what a live stream costs in memory; whatever the viewers do,
//!   it is bounded. The ring grows to its high-water mark and then stays there.
//! - **A viewer that falls behind loses, nobody else does.** A viewer whose cursor points before
//!   the ring's start has overrun its queue bound: it skips to the newest keyframe (the GOP start,
//!   or the next keyframe if none is cached) and the skipped packets are counted as dropped. After
//!   more than [`HubConfig::max_skips`] overruns in a row without catching up, or when it has been
//!   behind for [`HubConfig::max_behind`], it is evicted. Overruns are found when the viewer asks
//!   for packets, by one viewer checked per pushed packet (round robin), and by [`StreamHub::sweep`].
//! - **A new viewer starts on a keyframe**: at the cached GOP start, so its first video frame
//!   decodes at once; without a cached GOP it waits for the next keyframe (audio before it is
//!   skipped). A stream described without video starts viewers at once.
//! - **Wake-ups**: a viewer that found nothing to write is parked; the next packet (or keyframe,
//!   for one waiting for a keyframe) raises its [`LocalNotify`]. Busy viewers are not touched.
//! - **Publisher lifecycle**: one publisher at a time. When it leaves, viewers keep their place for
//!   [`HubConfig::publisher_grace`]; a publisher that comes back continues the stream (the GOP
//!   cache is dropped, so new viewers start on its first keyframe). Packets are relayed with the
//!   RTP headers they were pushed with: an RTSP publisher's own headers (a returning publisher may
//!   use a new SSRC and sequence, which RTSP clients treat as a new source), or, for ROP device
//!   ingest, headers the packetizer builds and keeps continuous across reconnects
//!   ([`crate::ingest::Continuation`]). When the grace
//!   period ends, each viewer receives what it was owed and then a clean [`ViewerEnd::StreamEnded`].
//! - **No clocks, no runtime**: time comes in as `Instant` arguments, so tests drive it.
//!
//! Use from a shard: `Rc<RefCell<StreamHub>>`; never hold the borrow across an `.await` (write
//! with a non-blocking `sendmsg` while holding it, and wait for writability after releasing it).

mod notify;
mod packet;
mod ring;
mod viewer;

#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::time::{Duration, Instant};

pub use notify::{LocalNotify, Notified};
pub use packet::{
    PacketError, PacketMeta, PushedPacket, RtpPacket, MAX_PACKET_LEN, MAX_TRACKS,
    RTP_PREFIX_CAPACITY,
};
pub use viewer::{
    Batch, ChannelMap, TrackChannels, ViewerEnd, ViewerId, ViewerStats, INTERLEAVED_HEADER_LEN,
    MAX_IO_SLICES_PER_PACKET,
};

use crate::stream_key::StreamKey;
use packet::PacketPool;
use ring::Ring;
use viewer::{Phase, ViewerQueue};

/// Bounds and timings of a hub. Every field has a production default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// Most packets the GOP cache holds; a longer GOP is not cached.
    pub gop_max_packets: usize,
    /// Most bytes the GOP cache holds; a larger GOP is not cached.
    pub gop_max_bytes: usize,
    /// Most packets a viewer may be behind the newest before it skips to a keyframe.
    pub queue_max_packets: usize,
    /// Most bytes a viewer may be behind the newest before it skips to a keyframe.
    pub queue_max_bytes: usize,
    /// Overruns in a row (without catching up in between) a viewer survives; one more evicts it.
    pub max_skips: u32,
    /// Longest time a viewer may stay behind (from its first overrun, until it catches up).
    pub max_behind: Duration,
    /// How long viewers wait for a publisher that left to come back.
    pub publisher_grace: Duration,
    /// Most viewers of one stream.
    pub max_viewers: usize,
    /// Most packets in one [`Batch`]: sizes each viewer's header buffer
    /// ([`HubConfig::batch_max_packets`] × 32 bytes) and bounds the iovecs of one `sendmsg`.
    pub batch_max_packets: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            // About 8 s of a 4 Mbit/s main stream with 1400-byte packets.
            gop_max_packets: 4096,
            gop_max_bytes: 6 << 20,
            queue_max_packets: 2048,
            queue_max_bytes: 3 << 20,
            max_skips: 3,
            max_behind: Duration::from_secs(10),
            publisher_grace: Duration::from_secs(5),
            max_viewers: 4096,
            batch_max_packets: 64,
        }
    }
}

/// A [`HubConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubConfigError {
    /// The queue bound cannot hold two packets of the largest size, so a viewer could never be
    /// written a full-size packet.
    #[error("queue_max_bytes = {got} is below the minimum of {min} (two maximal packets)")]
    QueueTooSmall {
        /// The configured value.
        got: usize,
        /// The smallest accepted value.
        min: usize,
    },
    /// A count that must be at least 1 is 0 (or at least 2 for queue_max_packets).
    #[error("{field} = {got} is too small")]
    TooSmall {
        /// The field's name.
        field: &'static str,
        /// The configured value.
        got: usize,
    },
    /// `batch_max_packets` would need more iovecs than one `sendmsg` takes (IOV_MAX = 1024).
    #[error("batch_max_packets = {got} exceeds {max}")]
    BatchTooLarge {
        /// The configured value.
        got: usize,
        /// The largest accepted value.
        max: usize,
    },
}

impl HubConfig {
    /// Checks that the bounds are usable.
    pub fn validate(&self) -> Result<(), HubConfigError> {
        let min_queue_bytes = 2 * (MAX_PACKET_LEN + INTERLEAVED_HEADER_LEN);
        if self.queue_max_bytes < min_queue_bytes {
            return Err(HubConfigError::QueueTooSmall {
                got: self.queue_max_bytes,
                min: min_queue_bytes,
            });
        }
        let at_least = [
            ("gop_max_packets", self.gop_max_packets, 1),
            ("queue_max_packets", self.queue_max_packets, 2),
            ("max_viewers", self.max_viewers, 1),
            ("batch_max_packets", self.batch_max_packets, 1),
        ];
        for (field, got, min) in at_least {
            if got < min {
                return Err(HubConfigError::TooSmall { field, got });
            }
        }
        let max_batch = 1024 / MAX_IO_SLICES_PER_PACKET - 1;
        if self.batch_max_packets > max_batch {
            return Err(HubConfigError::BatchTooLarge {
                got: self.batch_max_packets,
                max: max_batch,
            });
        }
        Ok(())
    }
}

/// What the hub refuses, and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Publisher's fault: the stream already has a publisher.
    #[error("stream {stream} already has a publisher")]
    PublisherExists {
        /// The stream.
        stream: StreamKey,
    },
    /// Caller's bug or a race lost: this publisher is not (or no longer) the stream's publisher.
    #[error("stream {stream}: not the current publisher")]
    NotPublisher {
        /// The stream.
        stream: StreamKey,
    },
    /// Viewer refused: the stream has as many viewers as allowed.
    #[error("stream {stream} has the maximum of {max} viewers")]
    TooManyViewers {
        /// The stream.
        stream: StreamKey,
        /// The configured maximum.
        max: usize,
    },
    /// Viewer refused: the stream has ended.
    #[error("stream {stream} has ended")]
    StreamEnded {
        /// The stream.
        stream: StreamKey,
    },
    /// Client's fault: a track index beyond [`MAX_TRACKS`].
    #[error("track index {track} is out of range: a stream has at most {MAX_TRACKS} tracks")]
    TrackOutOfRange {
        /// The rejected index.
        track: u8,
    },
}

/// Identifies the publisher that attached; it must present it to push and to detach, so a
/// publisher that was replaced cannot disturb its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublisherId(u64);

/// The kind of media in a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackKind {
    /// Video: its keyframes gate where viewers start.
    Video,
    /// Audio.
    Audio,
    /// Anything else (metadata, ONVIF events).
    Application,
}

/// The stream's description as served by DESCRIBE, set by the publisher (ANNOUNCE SDP, or ROP
/// ingest once it has the parameter sets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDescription {
    /// The SDP session description.
    pub sdp: String,
    /// The kind of each track, in SDP media order (the packets' track indexes).
    pub tracks: Vec<TrackKind>,
}

impl StreamDescription {
    /// Whether viewers must start on a keyframe.
    pub fn has_video(&self) -> bool {
        self.tracks.contains(&TrackKind::Video)
    }
}

/// Whether the stream has a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherState {
    /// No publisher has attached yet (an on-demand device stream is being started).
    Idle,
    /// A publisher is attached.
    Live,
    /// The publisher left; the stream ends at `deadline` unless one attaches.
    Waiting {
        /// When the grace period ends.
        deadline: Instant,
    },
    /// The stream ended; viewers drain and then see [`ViewerEnd::StreamEnded`].
    Ended,
}

/// Hub counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Packets pushed.
    pub packets_in: u64,
    /// Packet bytes pushed.
    pub bytes_in: u64,
    /// Bytes written to all viewers, interleaved headers included.
    pub bytes_out: u64,
    /// Packets skipped by slow viewers, summed over viewers.
    pub packets_dropped: u64,
    /// Access units skipped by slow viewers, summed over viewers.
    pub frames_dropped: u64,
    /// Times a viewer skipped to a keyframe.
    pub skips: u64,
    /// Viewers evicted for being too slow.
    pub viewers_evicted: u64,
    /// GOPs too large to cache.
    pub gop_overflows: u64,
}

impl std::ops::AddAssign for HubStats {
    fn add_assign(&mut self, other: HubStats) {
        self.packets_in += other.packets_in;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.packets_dropped += other.packets_dropped;
        self.frames_dropped += other.frames_dropped;
        self.skips += other.skips;
        self.viewers_evicted += other.viewers_evicted;
        self.gop_overflows += other.gop_overflows;
    }
}

/// Size of the GOP cache right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GopCache {
    /// Packets from the newest keyframe (0 if none is cached).
    pub packets: usize,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// What [`StreamHub::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// The publisher's grace period ran out and the stream ended.
    pub stream_ended: bool,
    /// Viewers evicted by this sweep.
    pub evicted: usize,
}

struct ViewerSlot {
    generation: u32,
    queue: Option<ViewerQueue>,
}

/// The fan-out point of one live stream. See the module documentation.
pub struct StreamHub {
    key: StreamKey,
    config: HubConfig,
    ring: Ring,
    /// Allocations of packets the ring released, to share pushed packets in; at most as many as
    /// the ring has slots.
    pool: PacketPool,
    /// Sequence number of the cached GOP's keyframe.
    gop_start: Option<u64>,
    /// Sequence number of the newest keyframe pushed (cached or not).
    last_keyframe: Option<u64>,
    viewers: Vec<ViewerSlot>,
    free_slots: Vec<u32>,
    viewer_count: usize,
    /// Viewers that found nothing to write, woken by the next packet.
    parked_for_data: Vec<ViewerId>,
    /// Viewers waiting for a keyframe, woken by the next keyframe.
    parked_for_keyframe: Vec<ViewerId>,
    /// Evicted viewers not yet collected by [`StreamHub::take_evicted`].
    evicted: Vec<ViewerId>,
    /// Next viewer slot checked for an overrun by `push`.
    check_index: usize,
    /// No viewer is owed a packet before this sequence ([`StreamHub::oldest_owed`]); viewers
    /// only move forward, so it stays true until a viewer joins.
    owed_floor: u64,
    /// `ring.next_seq()` when `owed_floor` was last computed.
    owed_floor_at: u64,
    state: PublisherState,
    publisher: Option<PublisherId>,
    next_publisher: u64,
    description: Option<Rc<StreamDescription>>,
    description_version: u64,
    stats: HubStats,
}

impl StreamHub {
    /// A hub with no publisher and no viewers. `config` should have passed
    /// [`HubConfig::validate`]; bad values are raised to the smallest usable ones.
    pub fn new(key: StreamKey, config: HubConfig) -> Self {
        let config = HubConfig {
            gop_max_packets: config.gop_max_packets.max(1),
            queue_max_packets: config.queue_max_packets.max(2),
            queue_max_bytes: config
                .queue_max_bytes
                .max(2 * (MAX_PACKET_LEN + INTERLEAVED_HEADER_LEN)),
            max_viewers: config.max_viewers.max(1),
            batch_max_packets: config
                .batch_max_packets
                .clamp(1, 1024 / MAX_IO_SLICES_PER_PACKET - 1),
            ..config
        };
        StreamHub {
            key,
            config,
            ring: Ring::with_capacity(INITIAL_RING_CAPACITY),
            pool: PacketPool::default(),
            gop_start: None,
            last_keyframe: None,
            viewers: Vec::new(),
            free_slots: Vec::new(),
            viewer_count: 0,
            parked_for_data: Vec::new(),
            parked_for_keyframe: Vec::new(),
            evicted: Vec::new(),
            check_index: 0,
            owed_floor: 0,
            owed_floor_at: 0,
            state: PublisherState::Idle,
            publisher: None,
            next_publisher: 0,
            description: None,
            description_version: 0,
            stats: HubStats::default(),
        }
    }

    /// The stream this hub serves.
    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    /// The bounds in force.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    // ----- publisher -----

    /// Attaches the stream's publisher. Refused while another one is attached; accepted while
    /// waiting for one to return (the stream continues) and after the stream ended (it restarts
    /// for new viewers).
    pub fn attach_publisher(&mut self) -> Result<PublisherId, HubError> {
        if self.state == PublisherState::Live {
            return Err(HubError::PublisherExists {
                stream: self.key.clone(),
            });
        }
        if matches!(self.state, PublisherState::Waiting { .. }) {
            // The new publisher's packets do not continue the cached GOP's pictures.
            self.gop_start = None;
            self.last_keyframe = None;
        }
        self.next_publisher += 1;
        let id = PublisherId(self.next_publisher);
        self.publisher = Some(id);
        self.state = PublisherState::Live;
        Ok(id)
    }

    /// Detaches the publisher at `now`: viewers wait [`HubConfig::publisher_grace`] for another.
    pub fn detach_publisher(
        &mut self,
        publisher: PublisherId,
        now: Instant,
    ) -> Result<(), HubError> {
        self.check_publisher(publisher)?;
        self.publisher = None;
        self.state = PublisherState::Waiting {
            deadline: now + self.config.publisher_grace,
        };
        Ok(())
    }

    /// Ends the stream now (device revoked, shard shutting down): the publisher, if any, is
    /// detached; each viewer gets what it was owed, then [`ViewerEnd::StreamEnded`].
    pub fn end_stream(&mut self) {
        self.publisher = None;
        self.state = PublisherState::Ended;
        self.gop_start = None;
        self.last_keyframe = None;
        let end = self.ring.next_seq();
        for slot in &mut self.viewers {
            let Some(viewer) = &mut slot.queue else {
                continue;
            };
            match viewer.phase {
                Phase::Active => {
                    viewer.ends_at.get_or_insert(end);
                    viewer.notify.notify();
                }
                Phase::Awaiting { .. } => viewer.close(ViewerEnd::StreamEnded),
                Phase::Closed(_) => {}
            }
        }
    }

    /// The publisher's stream jumps to another position (a recording's replay seeks): the
    /// cached GOP and whatever viewers were still owed belong to the old position. The GOP
    /// cache is dropped and every viewer waits for the next keyframe, as a new viewer without
    /// a cached GOP does; what it skips is not counted as dropped (it is no slowness of its).
    pub fn restart_at_next_keyframe(&mut self) {
        self.gop_start = None;
        self.last_keyframe = None;
        let since = self.ring.next_seq();
        for slot in &mut self.viewers {
            let Some(viewer) = &mut slot.queue else {
                continue;
            };
            if !matches!(viewer.phase, Phase::Closed(_)) {
                viewer.phase = Phase::Awaiting {
                    since,
                    dropped_from: None,
                };
            }
        }
        self.trim();
    }

    /// The publisher state.
    pub fn publisher_state(&self) -> PublisherState {
        self.state
    }

    /// Sets the stream description served by DESCRIBE (a new version each call).
    pub fn set_description(&mut self, description: StreamDescription) {
        self.description = Some(Rc::new(description));
        self.description_version += 1;
    }

    /// The stream description, if a publisher has set one.
    pub fn description(&self) -> Option<&Rc<StreamDescription>> {
        self.description.as_ref()
    }

    /// Incremented by every [`StreamHub::set_description`], starting from 0 (none set).
    pub fn description_version(&self) -> u64 {
        self.description_version
    }

    fn check_publisher(&self, publisher: PublisherId) -> Result<(), HubError> {
        if self.publisher == Some(publisher) {
            Ok(())
        } else {
            Err(HubError::NotPublisher {
                stream: self.key.clone(),
            })
        }
    }

    fn keyframe_gated(&self) -> bool {
        self.description.as_ref().is_none_or(|d| d.has_video())
    }

    /// Queues a packet for every viewer. O(1) whatever the number of viewers, except that viewers
    /// parked for data (or, on a keyframe, for a keyframe) are woken. An owned [`RtpPacket`] is
    /// shared in the allocation of one the ring released if there is one, so a warm stream's
    /// pushes allocate nothing; an `Rc<RtpPacket>` is queued as it is.
    pub fn push(
        &mut self,
        publisher: PublisherId,
        packet: impl Into<PushedPacket>,
    ) -> Result<(), HubError> {
        self.check_publisher(publisher)?;
        let packet = self.pool.share(packet.into());
        let is_keyframe = packet.is_keyframe_start();
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        let seq = self.ring.push(packet);
        if is_keyframe {
            self.gop_start = Some(seq);
            self.last_keyframe = Some(seq);
        } else if let Some(start) = self.gop_start {
            let packets = self.ring.next_seq() - start;
            let bytes = self.ring.bytes_from(start).unwrap_or(u64::MAX);
            if packets > self.config.gop_max_packets as u64
                || bytes > self.config.gop_max_bytes as u64
            {
                self.gop_start = None;
                self.stats.gop_overflows += 1;
            }
        }
        self.trim();
        if is_keyframe {
            wake_parked(&mut self.viewers, &mut self.parked_for_keyframe);
        }
        wake_parked(&mut self.viewers, &mut self.parked_for_data);
        self.check_next_viewer();
        Ok(())
    }

    /// Drops from the ring every packet that is neither in the cached GOP nor owed to a viewer
    /// within its queue window.
    fn trim(&mut self) {
        let next_seq = self.ring.next_seq();
        let gop_floor = self.gop_start.unwrap_or(next_seq);
        if self.ring.first_seq() >= gop_floor {
            return;
        }
        if self.viewer_count == 0 {
            self.owed_floor = next_seq;
        } else if self.ring.first_seq() >= self.owed_floor
            && next_seq >= self.owed_floor_at + OWED_RESCAN_PACKETS
        {
            // The front reached what the slowest viewer was owed at the last look: look again
            // (at most once per OWED_RESCAN_PACKETS pushes, so a lagging viewer among many
            // costs O(1) per packet).
            self.owed_floor = self.oldest_owed();
            self.owed_floor_at = next_seq;
        }
        let total_bytes = self.ring.total_bytes();
        while let Some(front) = self.ring.front() {
            let seq = self.ring.first_seq();
            if seq >= gop_floor {
                break;
            }
            let in_window = next_seq - seq <= self.config.queue_max_packets as u64
                && total_bytes - front.bytes_before <= self.config.queue_max_bytes as u64;
            if in_window && seq >= self.owed_floor {
                break;
            }
            if let Some(packet) = self.ring.pop_front() {
                self.pool.release(packet, self.ring.capacity());
            }
        }
    }

    /// The oldest sequence a viewer may still be written: an active viewer's cursor, or the
    /// keyframe an awaiting one will start from. O(viewers).
    fn oldest_owed(&self) -> u64 {
        let next_seq = self.ring.next_seq();
        let first_seq = self.ring.first_seq();
        let gated = self.keyframe_gated();
        let mut oldest = next_seq;
        for viewer in self.viewers.iter().filter_map(|slot| slot.queue.as_ref()) {
            let owed = match viewer.phase {
                Phase::Active if viewer.ends_at.is_some_and(|end| viewer.cursor >= end) => continue,
                Phase::Active => viewer.cursor,
                Phase::Awaiting { since, .. } if !gated => since,
                Phase::Awaiting { since, .. } => match self.last_keyframe {
                    Some(keyframe) if keyframe >= since && keyframe >= first_seq => keyframe,
                    // It starts on a keyframe still to come.
                    _ => next_seq,
                },
                Phase::Closed(_) => continue,
            };
            oldest = oldest.min(owed);
        }
        oldest
    }

    fn check_next_viewer(&mut self) {
        if self.viewers.is_empty() {
            return;
        }
        self.check_index = (self.check_index + 1) % self.viewers.len();
        let index = self.check_index;
        if let Some(viewer) = &self.viewers[index].queue {
            if viewer.is_overrun(&self.ring) {
                let id = ViewerId {
                    index: index as u32,
                    generation: self.viewers[index].generation,
                };
                self.skip_to_keyframe(id);
            }
        }
    }

    // ----- viewers -----

    /// Adds a viewer receiving the tracks of `channels`; `notify` is raised whenever it should
    /// ask for packets again. It starts at the cached GOP, or at the next keyframe.
    pub fn add_viewer(
        &mut self,
        channels: ChannelMap,
        notify: LocalNotify,
    ) -> Result<ViewerId, HubError> {
        if self.state == PublisherState::Ended {
            return Err(HubError::StreamEnded {
                stream: self.key.clone(),
            });
        }
        if self.viewer_count >= self.config.max_viewers {
            return Err(HubError::TooManyViewers {
                stream: self.key.clone(),
                max: self.config.max_viewers,
            });
        }
        let since = if self.keyframe_gated() {
            self.gop_start.unwrap_or(self.ring.next_seq())
        } else {
            self.ring.next_seq()
        };
        let phase = Phase::Awaiting {
            since,
            dropped_from: None,
        };
        let queue = ViewerQueue::new(notify, channels, phase, self.config.batch_max_packets);
        // It may be owed packets from `since` on (the cached GOP), before the floor.
        self.owed_floor = self.owed_floor.min(since);
        let index = match self.free_slots.pop() {
            Some(index) => index,
            None => {
                self.viewers.push(ViewerSlot {
                    generation: 0,
                    queue: None,
                });
                // Reserve here, at join time, so that parking never allocates per packet.
                self.parked_for_data.reserve(self.viewers.len());
                self.parked_for_keyframe.reserve(self.viewers.len());
                self.evicted.reserve(self.viewers.len());
                // Bounded by max_viewers, itself a u32-sized number in any sane config.
                (self.viewers.len() - 1) as u32
            }
        };
        let slot = &mut self.viewers[index as usize];
        slot.queue = Some(queue);
        self.viewer_count += 1;
        Ok(ViewerId {
            index,
            generation: slot.generation,
        })
    }

    /// Removes a viewer (its connection closed) and returns its counters.
    pub fn remove_viewer(&mut self, id: ViewerId) -> Option<ViewerStats> {
        let slot = self.viewers.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let queue = slot.queue.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(id.index);
        self.viewer_count -= 1;
        if self.viewer_count == 0 {
            self.trim();
        }
        Some(queue.stats)
    }

    /// Number of viewers (evicted ones count until removed).
    pub fn viewer_count(&self) -> usize {
        self.viewer_count
    }

    /// A viewer's counters.
    pub fn viewer_stats(&self, id: ViewerId) -> Option<ViewerStats> {
        self.viewer(id).map(|viewer| viewer.stats)
    }

    /// Viewers evicted since the last call, for the shard to close their connections even if
    /// their tasks are stuck waiting for the socket.
    pub fn take_evicted(&mut self) -> impl Iterator<Item = ViewerId> + '_ {
        self.evicted.drain(..)
    }

    fn viewer(&self, id: ViewerId) -> Option<&ViewerQueue> {
        let slot = self.viewers.get(id.index as usize)?;
        (slot.generation == id.generation)
            .then_some(slot.queue.as_ref())
            .flatten()
    }

    fn viewer_mut(&mut self, id: ViewerId) -> Option<&mut ViewerQueue> {
        let slot = self.viewers.get_mut(id.index as usize)?;
        (slot.generation == id.generation)
            .then_some(slot.queue.as_mut())
            .flatten()
    }

    /// The next packets to write to a viewer: at most `max_packets` (and
    /// [`HubConfig::batch_max_packets`]), stopping before `max_bytes` unless the batch would be
    /// empty. An empty batch parks the viewer: its notify is raised when there is more. Write the
    /// batch and call [`Batch::consume`] before anything else touches the hub.
    pub fn next_batch(
        &mut self,
        id: ViewerId,
        max_packets: usize,
        max_bytes: usize,
    ) -> Result<Batch<'_>, ViewerEnd> {
        let Some(viewer) = self.viewer(id) else {
            return Err(ViewerEnd::UnknownViewer(id));
        };
        if viewer.is_overrun(&self.ring) {
            self.skip_to_keyframe(id);
        }
        self.try_start(id);
        let gated = self.keyframe_gated();
        let StreamHub {
            ring,
            viewers,
            stats,
            parked_for_data,
            parked_for_keyframe,
            ..
        } = self;
        let Some(viewer) = viewers
            .get_mut(id.index as usize)
            .and_then(|slot| slot.queue.as_mut())
        else {
            return Err(ViewerEnd::UnknownViewer(id));
        };
        if let Phase::Closed(reason) = &viewer.phase {
            if viewer.partial.is_none() {
                return Err(reason.clone());
            }
        }
        let mut batch = Batch::build(ring, viewer, stats, max_packets, max_bytes);
        if batch.is_empty() {
            let viewer = batch.viewer_mut();
            if viewer.is_active() && viewer.ends_at.is_some_and(|end| viewer.cursor >= end) {
                return Err(ViewerEnd::StreamEnded);
            }
            if !viewer.parked {
                viewer.parked = true;
                match viewer.phase {
                    Phase::Awaiting { .. } if gated => parked_for_keyframe.push(id),
                    _ => parked_for_data.push(id),
                }
            }
        }
        Ok(batch)
    }

    /// Starts an awaiting viewer on the newest keyframe it may start from, if there is one.
    fn try_start(&mut self, id: ViewerId) {
        let gated = self.keyframe_gated();
        let first_seq = self.ring.first_seq();
        let next_seq = self.ring.next_seq();
        let last_keyframe = self.last_keyframe;
        let Some(viewer) = self.viewer_mut(id) else {
            return;
        };
        let Phase::Awaiting {
            since,
            dropped_from,
        } = viewer.phase
        else {
            return;
        };
        let start = if gated {
            match last_keyframe {
                Some(keyframe) if keyframe >= since && keyframe >= first_seq => keyframe,
                _ => return,
            }
        } else {
            since.clamp(first_seq, next_seq)
        };
        let frames_at_start = self
            .ring
            .frames_before(start)
            .unwrap_or(self.ring.total_frames());
        let Some(viewer) = self.viewer_mut(id) else {
            return;
        };
        viewer.phase = Phase::Active;
        viewer.cursor = start;
        viewer.cursor_frames = frames_at_start;
        if let Some((from_seq, from_frames)) = dropped_from {
            let packets = start.saturating_sub(from_seq);
            let frames = frames_at_start.saturating_sub(from_frames);
            viewer.stats.packets_dropped += packets;
            viewer.stats.frames_dropped += frames;
            self.stats.packets_dropped += packets;
            self.stats.frames_dropped += frames;
        }
    }

    /// The viewer overran its queue: send it to the newest keyframe, or evict it.
    fn skip_to_keyframe(&mut self, id: ViewerId) {
        let since = if self.keyframe_gated() {
            self.gop_start.unwrap_or(self.ring.next_seq())
        } else {
            self.ring.next_seq()
        };
        let max_skips = self.config.max_skips;
        let Some(viewer) = self.viewer_mut(id) else {
            return;
        };
        viewer.consecutive_skips += 1;
        viewer.stats.skips += 1;
        let skips = viewer.consecutive_skips;
        viewer.phase = Phase::Awaiting {
            since,
            dropped_from: Some((viewer.cursor, viewer.cursor_frames)),
        };
        self.stats.skips += 1;
        if skips > max_skips {
            self.evict(id, ViewerEnd::TooSlow { skips });
        } else {
            // Its task may be waiting for the socket; it will find the new position when it asks.
            self.try_start(id);
        }
    }

    fn evict(&mut self, id: ViewerId, reason: ViewerEnd) {
        let Some(viewer) = self.viewer_mut(id) else {
            return;
        };
        viewer.close(reason);
        self.stats.viewers_evicted += 1;
        self.evicted.push(id);
    }

    /// Periodic upkeep, from the shard's sweeper: ends the stream when the publisher's grace
    /// period is over, skips viewers that overran their queue and evicts those behind for longer
    /// than [`HubConfig::max_behind`]. O(viewers).
    pub fn sweep(&mut self, now: Instant) -> SweepOutcome {
        let mut outcome = SweepOutcome::default();
        if let PublisherState::Waiting { deadline } = self.state {
            if now >= deadline {
                self.end_stream();
                outcome.stream_ended = true;
            }
        }
        let evicted_before = self.stats.viewers_evicted;
        for index in 0..self.viewers.len() {
            let slot = &self.viewers[index];
            let id = ViewerId {
                index: index as u32,
                generation: slot.generation,
            };
            let Some(viewer) = &slot.queue else { continue };
            if viewer.is_overrun(&self.ring) {
                self.skip_to_keyframe(id);
            }
            let max_behind = self.config.max_behind;
            let Some(viewer) = self.viewer_mut(id) else {
                continue;
            };
            if matches!(viewer.phase, Phase::Closed(_)) || viewer.consecutive_skips == 0 {
                continue;
            }
            let behind = now.saturating_duration_since(*viewer.behind_since.get_or_insert(now));
            if behind >= max_behind {
                self.evict(id, ViewerEnd::BehindTooLong { behind });
            }
        }
        outcome.evicted = (self.stats.viewers_evicted - evicted_before) as usize;
        outcome
    }

    // ----- observation -----

    /// Hub counters.
    pub fn stats(&self) -> HubStats {
        self.stats
    }

    /// The GOP cache's current size.
    pub fn gop_cache(&self) -> GopCache {
        match self.gop_start {
            Some(start) => GopCache {
                packets: (self.ring.next_seq() - start) as usize,
                bytes: self.ring.bytes_from(start).unwrap_or(0),
            },
            None => GopCache::default(),
        }
    }

    /// Packets the hub holds in its ring (not counting half-written ones viewers hold).
    pub fn retained_packets(&self) -> usize {
        self.ring.len()
    }

    /// Slots allocated for the ring (its high-water mark, rounded up).
    pub fn ring_capacity(&self) -> usize {
        self.ring.capacity()
    }
}

/// Slots a new hub's ring starts with; it grows (by doubling) to what the stream needs.
const INITIAL_RING_CAPACITY: usize = 256;

/// Pushes between two looks for the slowest viewer while one is behind the GOP.
const OWED_RESCAN_PACKETS: u64 = 16;

/// Wakes and unparks every viewer in `parked`, keeping the list's allocation.
fn wake_parked(viewers: &mut [ViewerSlot], parked: &mut Vec<ViewerId>) {
    for id in parked.drain(..) {
        let Some(slot) = viewers.get_mut(id.index as usize) else {
            continue;
        };
        if slot.generation != id.generation {
            continue;
        }
        if let Some(viewer) = &mut slot.queue {
            viewer.parked = false;
            viewer.notify.notify();
        }
    }
}
