//! Hub behaviour, driven without sockets or clocks: a scripted publisher, viewers that write a
//! chosen number of bytes per "sendmsg", and `Instant`s made up by the test.

use std::io::IoSlice;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::stream_key::{StreamKey, StreamKind};

const VIDEO: u8 = 0;
const AUDIO: u8 = 1;

fn key() -> StreamKey {
    StreamKey::new("95270000ABCDEFGH", 0, StreamKind::Main).unwrap()
}

fn av_description() -> StreamDescription {
    StreamDescription {
        sdp: "v=0\r\n".into(),
        tracks: vec![TrackKind::Video, TrackKind::Audio],
    }
}

fn both_tracks() -> ChannelMap {
    ChannelMap::new()
        .with_track(VIDEO, 0, 1)
        .unwrap()
        .with_track(AUDIO, 2, 3)
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Keyframe,
    Video,
    VideoFrameEnd,
    Audio,
    Rtcp,
}

/// Makes packets whose SSRC field carries a serial number, so receivers can check order and
/// completeness; every fifth packet has its payload split over two slices.
struct Source {
    serial: u32,
    payload_len: usize,
}

impl Source {
    fn new(payload_len: usize) -> Self {
        Source {
            serial: 0,
            payload_len,
        }
    }

    fn packet(&mut self, kind: Kind) -> RtpPacket {
        self.serial += 1;
        let serial = self.serial;
        let (track, is_rtcp) = match kind {
            Kind::Audio => (AUDIO, false),
            Kind::Rtcp => (VIDEO, true),
            _ => (VIDEO, false),
        };
        let meta = PacketMeta {
            track,
            is_rtcp,
            keyframe_start: kind == Kind::Keyframe,
            end_of_access_unit: matches!(kind, Kind::VideoFrameEnd | Kind::Audio),
        };
        let mut header = [0u8; 12];
        header[0] = 0x80;
        header[1] = if track == VIDEO { 96 } else { 97 };
        header[2..4].copy_from_slice(&(serial as u16).to_be_bytes());
        header[8..12].copy_from_slice(&serial.to_be_bytes());
        let body: Vec<u8> = (0..self.payload_len)
            .map(|i| (i as u32 ^ serial) as u8)
            .collect();
        let body = Bytes::from(body);
        let (payload, tail) = if matches!(serial % 5, 0) && body.len() > 1 {
            (body.slice(..body.len() / 2), body.slice(body.len() / 2..))
        } else {
            (body, Bytes::new())
        };
        RtpPacket::new(meta, &header, payload, tail).unwrap()
    }

    /// One GOP: a keyframe, then video packets (a frame ends every third) with audio every fourth.
    fn gop(&mut self, len: usize) -> Vec<RtpPacket> {
        (0..len)
            .map(|i| {
                let kind = match i {
                    0 => Kind::Keyframe,
                    i if i % 4 == 3 => Kind::Audio,
                    i if i % 3 == 2 => Kind::VideoFrameEnd,
                    _ => Kind::Video,
                };
                self.packet(kind)
            })
            .collect()
    }
}

/// A received interleaved frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    channel: u8,
    serial: u32,
    bytes: Vec<u8>,
}

fn parse_frames(wire: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        assert_eq!(rest[0], b'$', "stream out of frame sync");
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let bytes = rest[4..4 + len].to_vec();
        frames.push(Frame {
            channel: rest[1],
            serial: u32::from_be_bytes(bytes[8..12].try_into().unwrap()),
            bytes,
        });
        rest = &rest[4 + len..];
    }
    frames
}

/// What a "sendmsg" of at most `max_write` bytes over the batch's iovecs would put on the wire.
fn write_batch(batch: &Batch<'_>, max_write: usize, out: &mut Vec<u8>) -> usize {
    let mut iov = [IoSlice::new(&[]); 3 * 64 + 3];
    let count = batch.fill_io_slices(&mut iov);
    assert!(count <= batch.max_io_slices());
    let mut written = 0;
    for slice in &iov[..count] {
        let take = slice.len().min(max_write - written);
        out.extend_from_slice(&slice[..take]);
        written += take;
        if written == max_write {
            break;
        }
    }
    written
}

/// Writes to a viewer until it has nothing more, at most `max_write` bytes per call.
fn drain(
    hub: &mut StreamHub,
    id: ViewerId,
    max_write: usize,
    out: &mut Vec<u8>,
) -> Result<(), ViewerEnd> {
    loop {
        let batch = hub.next_batch(id, 16, 64 * 1024)?;
        if batch.is_empty() {
            return Ok(());
        }
        let written = write_batch(&batch, max_write, out);
        batch.consume(written);
    }
}

fn serials(frames: &[Frame]) -> Vec<u32> {
    frames.iter().map(|frame| frame.serial).collect()
}

fn expected_wire(packets: &[Rc<RtpPacket>], channels: &ChannelMap) -> Vec<u8> {
    let mut wire = Vec::new();
    for packet in packets {
        let Some(track) = channels.get(packet.track()) else {
            continue;
        };
        let channel = if packet.is_rtcp() {
            track.rtcp
        } else {
            track.rtp
        };
        wire.push(b'$');
        wire.push(channel);
        wire.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        packet.copy_to(&mut wire);
    }
    wire
}

fn live_hub(config: HubConfig) -> (StreamHub, PublisherId) {
    let mut hub = StreamHub::new(key(), config);
    hub.set_description(av_description());
    let publisher = hub.attach_publisher().unwrap();
    (hub, publisher)
}

#[test]
fn fifty_viewers_receive_every_packet_in_order() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(1200);
    let viewers: Vec<(ViewerId, LocalNotify)> = (0..50)
        .map(|_| {
            let notify = LocalNotify::new();
            (
                hub.add_viewer(both_tracks(), notify.clone()).unwrap(),
                notify,
            )
        })
        .collect();
    let mut outputs = vec![Vec::new(); viewers.len()];
    let mut sent = Vec::new();
    // Audio before the first keyframe: nobody can start on it.
    hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    for _ in 0..6 {
        for packet in source.gop(45) {
            let packet = Rc::new(packet);
            sent.push(Rc::clone(&packet));
            hub.push(publisher, packet).unwrap();
            // Viewers drain at different paces and write sizes, some mid-packet.
            for (n, ((id, _), out)) in viewers.iter().zip(&mut outputs).enumerate() {
                if sent.len() % (n % 7 + 1) == 0 {
                    drain(&mut hub, *id, 1 + n * 997, out).unwrap();
                }
            }
        }
        let rtcp = Rc::new(source.packet(Kind::Rtcp));
        sent.push(Rc::clone(&rtcp));
        hub.push(publisher, rtcp).unwrap();
    }
    // The audio packet before the first keyframe is nobody's.
    let expected = expected_wire(&sent, &both_tracks());
    for ((id, _), out) in viewers.iter().zip(&mut outputs) {
        drain(&mut hub, *id, usize::MAX, out).unwrap();
        assert_eq!(*out, expected);
        let stats = hub.viewer_stats(*id).unwrap();
        assert_eq!(stats.packets_dropped, 0);
        assert_eq!(stats.bytes_out, out.len() as u64);
    }
    assert_eq!(hub.stats().skips, 0);
}

#[test]
fn new_viewer_starts_on_cached_keyframe() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(300);
    for _ in 0..3 {
        hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    }
    let gop = source.gop(40);
    let keyframe_serial = 4;
    for packet in gop.into_iter().take(25) {
        hub.push(publisher, packet).unwrap();
    }
    assert_eq!(hub.gop_cache().packets, 25);

    let id = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let mut out = Vec::new();
    drain(&mut hub, id, usize::MAX, &mut out).unwrap();
    let frames = parse_frames(&out);
    assert_eq!(frames.len(), 25, "the whole cached GOP, at once");
    assert_eq!(frames[0].serial, keyframe_serial);
    assert_eq!(frames[0].channel, 0);
    assert!(
        frames.iter().all(|f| f.serial >= keyframe_serial),
        "no audio from before the keyframe"
    );
}

#[test]
fn viewer_without_cached_gop_waits_for_next_keyframe() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(300);
    let notify = LocalNotify::new();
    let id = hub.add_viewer(both_tracks(), notify.clone()).unwrap();
    for _ in 0..5 {
        hub.push(publisher, source.packet(Kind::Audio)).unwrap();
        hub.push(publisher, source.packet(Kind::Video)).unwrap();
    }
    let mut out = Vec::new();
    drain(&mut hub, id, usize::MAX, &mut out).unwrap();
    assert!(out.is_empty(), "nothing before the first keyframe");
    assert!(!notify.take_notification());

    hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    assert!(
        !notify.take_notification(),
        "audio does not wake a viewer waiting for a keyframe"
    );
    hub.push(publisher, source.packet(Kind::Keyframe)).unwrap();
    assert!(notify.take_notification(), "the keyframe does");
    hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    drain(&mut hub, id, usize::MAX, &mut out).unwrap();
    assert_eq!(serials(&parse_frames(&out)), vec![12, 13]);
}

#[test]
fn audio_only_stream_starts_viewers_at_once() {
    let mut hub = StreamHub::new(key(), HubConfig::default());
    hub.set_description(StreamDescription {
        sdp: "v=0\r\n".into(),
        tracks: vec![TrackKind::Audio],
    });
    let publisher = hub.attach_publisher().unwrap();
    let mut source = Source::new(100);
    hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    let id = hub
        .add_viewer(
            ChannelMap::new().with_track(AUDIO, 0, 1).unwrap(),
            LocalNotify::new(),
        )
        .unwrap();
    hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    let mut out = Vec::new();
    drain(&mut hub, id, usize::MAX, &mut out).unwrap();
    assert_eq!(serials(&parse_frames(&out)), vec![2]);
}

#[test]
fn tracks_go_to_the_channels_chosen_in_setup() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(50);
    let audio_only = ChannelMap::new().with_track(AUDIO, 6, 7).unwrap();
    let audio_viewer = hub.add_viewer(audio_only, LocalNotify::new()).unwrap();
    let both = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let mut sent = Vec::new();
    for packet in source
        .gop(300)
        .into_iter()
        .chain([source.packet(Kind::Rtcp)])
    {
        let packet = Rc::new(packet);
        sent.push(Rc::clone(&packet));
        hub.push(publisher, packet).unwrap();
    }
    for (id, channels) in [(audio_viewer, audio_only), (both, both_tracks())] {
        let mut out = Vec::new();
        drain(&mut hub, id, usize::MAX, &mut out).unwrap();
        assert_eq!(out, expected_wire(&sent, &channels));
    }
    let mut out = Vec::new();
    drain(&mut hub, both, usize::MAX, &mut out).unwrap();
    assert!(out.is_empty());
    assert!(ChannelMap::new()
        .with_track(MAX_TRACKS as u8, 0, 1)
        .is_err());
}

#[test]
fn partial_writes_resume_mid_packet() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(700);
    let reference = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let trickle: Vec<ViewerId> = (0..6)
        .map(|_| hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap())
        .collect();
    let mut reference_out = Vec::new();
    let mut outs = vec![Vec::new(); trickle.len()];
    for (step, packet) in source.gop(120).into_iter().enumerate() {
        hub.push(publisher, packet).unwrap();
        drain(&mut hub, reference, usize::MAX, &mut reference_out).unwrap();
        for (n, (id, out)) in trickle.iter().zip(&mut outs).enumerate() {
            // One short write per step, of sizes that land on every part of a packet.
            let size = [1, 2, 3, 5, 17, 719][n] + step % 3;
            let batch = hub.next_batch(*id, 4, 10_000).unwrap();
            let written = write_batch(&batch, size, out);
            batch.consume(written);
        }
    }
    for (id, out) in trickle.iter().zip(&mut outs) {
        drain(&mut hub, *id, 13, out).unwrap();
        assert_eq!(*out, reference_out);
    }
    // Zero-byte writes (EAGAIN) change nothing.
    hub.push(publisher, source.packet(Kind::Video)).unwrap();
    let batch = hub.next_batch(reference, 8, 1 << 20).unwrap();
    let len = batch.wire_len();
    batch.consume(0);
    assert_eq!(
        hub.next_batch(reference, 8, 1 << 20).unwrap().wire_len(),
        len
    );
}

#[test]
fn batches_respect_limits() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(1000);
    let id = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    for packet in source.gop(100) {
        hub.push(publisher, packet).unwrap();
    }
    let batch = hub.next_batch(id, 10, usize::MAX).unwrap();
    assert_eq!(batch.packet_count(), 10);
    assert_eq!(batch.packets().count(), 10);
    let batch = hub.next_batch(id, 100, 3000).unwrap();
    assert_eq!(batch.packet_count(), 2, "stops before exceeding max_bytes");
    let batch = hub.next_batch(id, 100, 1).unwrap();
    assert_eq!(
        batch.packet_count(),
        1,
        "but never returns nothing when there is something"
    );
    let batch_max = hub.config().batch_max_packets;
    let batch = hub.next_batch(id, 10_000, usize::MAX).unwrap();
    assert_eq!(batch.packet_count(), batch_max);
}

fn stall_config() -> HubConfig {
    HubConfig {
        gop_max_packets: 100,
        queue_max_packets: 50,
        max_skips: 2,
        ..HubConfig::default()
    }
}

#[test]
fn stalled_viewer_skips_to_keyframes_then_is_evicted() {
    let (mut hub, publisher) = live_hub(stall_config());
    let mut source = Source::new(200);
    let fast: Vec<ViewerId> = (0..10)
        .map(|_| hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap())
        .collect();
    let stalled_notify = LocalNotify::new();
    let stalled = hub
        .add_viewer(both_tracks(), stalled_notify.clone())
        .unwrap();
    let mut sent = Vec::new();
    let mut outs = vec![Vec::new(); fast.len()];
    let mut stalled_out = Vec::new();
    let mut evicted_after = None;
    for gop in 0..12 {
        for packet in source.gop(40) {
            let packet = Rc::new(packet);
            sent.push(Rc::clone(&packet));
            hub.push(publisher, packet).unwrap();
            if sent.len() == 3 {
                // The stalled viewer gets one batch into its socket, half of it, then no more.
                let batch = hub.next_batch(stalled, 16, 1 << 20).unwrap();
                let written = write_batch(&batch, 300, &mut stalled_out);
                batch.consume(written);
            }
            for (id, out) in fast.iter().zip(&mut outs) {
                drain(&mut hub, *id, usize::MAX, out).unwrap();
            }
            assert!(hub.retained_packets() <= 100);
        }
        if evicted_after.is_none() && hub.take_evicted().any(|id| id == stalled) {
            evicted_after = Some(gop);
        }
    }
    let expected = expected_wire(&sent, &both_tracks());
    for out in &outs {
        assert_eq!(*out, expected, "fast viewers keep everything");
    }
    let evicted_after = evicted_after.expect("the stalled viewer was evicted");
    assert!(
        evicted_after >= 2,
        "skipped before being evicted (after gop {evicted_after})"
    );
    let stats = hub.viewer_stats(stalled).unwrap();
    assert_eq!(stats.skips, 3);
    assert!(
        stats.packets_dropped > 0 && stats.frames_dropped > 0,
        "{stats:?}"
    );
    assert!(stalled_notify.take_notification());
    assert_eq!(
        hub.next_batch(stalled, 16, 1 << 20).unwrap_err(),
        ViewerEnd::TooSlow { skips: 3 }
    );
    assert_eq!(hub.stats().viewers_evicted, 1);
    assert!(hub.remove_viewer(stalled).is_some());
    assert!(hub.viewer_stats(stalled).is_none());
}

#[test]
fn slow_viewer_resumes_on_keyframe_after_skip() {
    let (mut hub, publisher) = live_hub(stall_config());
    let mut source = Source::new(200);
    let slow = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let mut out = Vec::new();
    for packet in source.gop(40) {
        hub.push(publisher, packet).unwrap();
    }
    drain(&mut hub, slow, usize::MAX, &mut out).unwrap();
    // Falls behind by more than the queue bound (50 packets), then reads again.
    for packet in source.gop(40).into_iter().chain(source.gop(40)) {
        hub.push(publisher, packet).unwrap();
    }
    out.clear();
    drain(&mut hub, slow, usize::MAX, &mut out).unwrap();
    let frames = parse_frames(&out);
    assert_eq!(frames[0].serial, 81, "restarted on the newest keyframe");
    assert_eq!(frames.len(), 40);
    let stats = hub.viewer_stats(slow).unwrap();
    assert_eq!(stats.skips, 1);
    assert_eq!(stats.packets_dropped, 40);
    // Caught up again: the next overrun starts a new count.
    for packet in source.gop(40).into_iter().chain(source.gop(40)) {
        hub.push(publisher, packet).unwrap();
    }
    drain(&mut hub, slow, usize::MAX, &mut out).unwrap();
    for packet in source.gop(40).into_iter().chain(source.gop(40)) {
        hub.push(publisher, packet).unwrap();
    }
    drain(&mut hub, slow, usize::MAX, &mut out).unwrap();
    let stats = hub.viewer_stats(slow).unwrap();
    assert_eq!(stats.skips, 3, "each overrun skipped");
    assert_eq!(
        hub.stats().viewers_evicted,
        0,
        "never more than max_skips in a row"
    );
}

#[test]
fn viewer_behind_too_long_is_evicted_by_sweep() {
    let config = HubConfig {
        gop_max_packets: 100,
        queue_max_packets: 50,
        max_skips: 100,
        max_behind: Duration::from_secs(4),
        ..HubConfig::default()
    };
    let (mut hub, publisher) = live_hub(config);
    let mut source = Source::new(200);
    let slow = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    for packet in source.gop(40) {
        hub.push(publisher, packet).unwrap();
    }
    hub.next_batch(slow, 4, 1 << 20).unwrap().consume(10);
    let t0 = Instant::now();
    for second in 0..6 {
        for packet in source.gop(40) {
            hub.push(publisher, packet).unwrap();
        }
        let outcome = hub.sweep(t0 + Duration::from_secs(second));
        if second < 4 {
            assert_eq!(outcome.evicted, 0, "second {second}");
        } else if second == 4 {
            assert_eq!(outcome.evicted, 1);
        }
    }
    assert!(matches!(
        hub.next_batch(slow, 4, 1 << 20).unwrap_err(),
        ViewerEnd::BehindTooLong { .. }
    ));
}

#[test]
fn memory_stays_bounded() {
    let config = HubConfig {
        gop_max_packets: 80,
        gop_max_bytes: 1 << 20,
        queue_max_packets: 60,
        queue_max_bytes: 200 << 10,
        max_skips: 1_000_000,
        ..HubConfig::default()
    };
    let (mut hub, publisher) = live_hub(config);
    let capacity = hub.ring_capacity();
    let mut source = Source::new(1000);
    let viewers: Vec<ViewerId> = (0..8)
        .map(|_| hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap())
        .collect();
    let mut live: Vec<Weak<RtpPacket>> = Vec::new();
    let mut sink = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // GOPs both shorter and longer than the cache bound, viewers at random paces.
    for gop_len in [30, 200, 50, 10, 120, 79, 81, 400, 20, 60] {
        for packet in source.gop(gop_len) {
            let packet = Rc::new(packet);
            live.push(Rc::downgrade(&packet));
            hub.push(publisher, packet).unwrap();
            for (n, id) in viewers.iter().enumerate() {
                if next_random() % (n as u64 + 1) * 8 == 0 {
                    let batch = hub.next_batch(*id, 16, 1 << 20).unwrap();
                    let write = (next_random() % 40_000) as usize;
                    sink.clear();
                    let written = write_batch(&batch, write, &mut sink);
                    batch.consume(written);
                }
            }
            live.retain(|packet| packet.strong_count() > 0);
            assert!(
                hub.retained_packets() <= 80,
                "ring holds the longer of GOP and window"
            );
            assert!(live.len() <= 80 + 60, "{} packets alive", live.len());
            assert!(hub.gop_cache().packets <= 80);
            assert_eq!(hub.ring_capacity(), capacity, "ring never reallocates");
        }
    }
    assert!(hub.stats().gop_overflows >= 2);
}

#[test]
fn oversized_gop_is_not_cached() {
    let config = HubConfig {
        gop_max_packets: 50,
        ..HubConfig::default()
    };
    let (mut hub, publisher) = live_hub(config);
    let mut source = Source::new(100);
    for packet in source.gop(60) {
        hub.push(publisher, packet).unwrap();
    }
    assert_eq!(hub.gop_cache(), GopCache::default());
    assert_eq!(
        hub.retained_packets(),
        0,
        "no viewers, no cache: nothing retained"
    );
    let id = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    hub.push(publisher, source.packet(Kind::Video)).unwrap();
    let mut out = Vec::new();
    drain(&mut hub, id, usize::MAX, &mut out).unwrap();
    assert!(out.is_empty(), "waits for the next keyframe");
    hub.push(publisher, source.packet(Kind::Keyframe)).unwrap();
    drain(&mut hub, id, usize::MAX, &mut out).unwrap();
    assert_eq!(serials(&parse_frames(&out)), vec![62]);
}

#[test]
fn parked_viewers_are_woken_busy_ones_are_not() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(100);
    hub.push(publisher, source.packet(Kind::Keyframe)).unwrap();
    let idle_notify = LocalNotify::new();
    let busy_notify = LocalNotify::new();
    let idle = hub.add_viewer(both_tracks(), idle_notify.clone()).unwrap();
    let busy = hub.add_viewer(both_tracks(), busy_notify.clone()).unwrap();
    let mut out = Vec::new();
    drain(&mut hub, idle, usize::MAX, &mut out).unwrap();
    // The busy viewer has a batch in flight and asks again only when its socket is writable.
    hub.next_batch(busy, 16, 1 << 20).unwrap().consume(3);
    hub.push(publisher, source.packet(Kind::Video)).unwrap();
    assert!(idle_notify.take_notification());
    assert!(!busy_notify.take_notification());
    hub.push(publisher, source.packet(Kind::Video)).unwrap();
    assert!(
        !idle_notify.take_notification(),
        "woken once until it parks again"
    );
}

#[test]
fn second_publisher_is_refused() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    assert_eq!(
        hub.attach_publisher().unwrap_err(),
        HubError::PublisherExists { stream: key() }
    );
    let mut source = Source::new(10);
    hub.push(publisher, source.packet(Kind::Keyframe)).unwrap();
    let now = Instant::now();
    hub.detach_publisher(publisher, now).unwrap();
    let successor = hub.attach_publisher().unwrap();
    assert!(
        matches!(
            hub.push(publisher, source.packet(Kind::Video)),
            Err(HubError::NotPublisher { .. })
        ),
        "the replaced publisher cannot push"
    );
    assert!(hub.detach_publisher(publisher, now).is_err());
    hub.push(successor, source.packet(Kind::Video)).unwrap();
}

#[test]
fn publisher_returns_within_grace() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(100);
    let notify = LocalNotify::new();
    let viewer = hub.add_viewer(both_tracks(), notify.clone()).unwrap();
    for packet in source.gop(10) {
        hub.push(publisher, packet).unwrap();
    }
    let t0 = Instant::now();
    hub.detach_publisher(publisher, t0).unwrap();
    assert_eq!(
        hub.publisher_state(),
        PublisherState::Waiting {
            deadline: t0 + Duration::from_secs(5)
        }
    );
    let mut out = Vec::new();
    drain(&mut hub, viewer, usize::MAX, &mut out).unwrap();
    assert_eq!(parse_frames(&out).len(), 10);
    assert_eq!(
        hub.sweep(t0 + Duration::from_millis(4900)),
        SweepOutcome::default()
    );

    let publisher = hub.attach_publisher().unwrap();
    assert_eq!(hub.publisher_state(), PublisherState::Live);
    assert_eq!(
        hub.gop_cache(),
        GopCache::default(),
        "the old GOP is not served to new viewers"
    );
    let late = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    for packet in [source.packet(Kind::Video)]
        .into_iter()
        .chain(source.gop(5))
    {
        hub.push(publisher, packet).unwrap();
    }
    assert!(notify.take_notification());
    drain(&mut hub, viewer, usize::MAX, &mut out).unwrap();
    assert_eq!(
        serials(&parse_frames(&out)),
        (1..=16).collect::<Vec<_>>(),
        "the stream continues"
    );
    let mut late_out = Vec::new();
    drain(&mut hub, late, usize::MAX, &mut late_out).unwrap();
    assert_eq!(
        serials(&parse_frames(&late_out)),
        (12..=16).collect::<Vec<_>>()
    );
    assert_eq!(
        hub.sweep(t0 + Duration::from_secs(60)),
        SweepOutcome::default()
    );
}

#[test]
fn stream_ends_cleanly_after_grace() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(500);
    let notify = LocalNotify::new();
    let viewer = hub.add_viewer(both_tracks(), notify.clone()).unwrap();
    let waiting = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let gop = source.gop(10);
    let mut expected = Vec::new();
    for packet in gop {
        packet.copy_to(&mut expected);
        hub.push(publisher, packet).unwrap();
    }
    // A short write leaves a packet half sent when the publisher goes.
    let batch = hub.next_batch(viewer, 16, 1 << 20).unwrap();
    let mut out = Vec::new();
    let written = write_batch(&batch, 1000, &mut out);
    batch.consume(written);
    let t0 = Instant::now();
    hub.detach_publisher(publisher, t0).unwrap();
    let outcome = hub.sweep(t0 + Duration::from_secs(5));
    assert!(outcome.stream_ended);
    assert_eq!(hub.publisher_state(), PublisherState::Ended);
    assert!(notify.take_notification());

    let end = loop {
        match hub.next_batch(viewer, 3, 1 << 20) {
            Ok(batch) => {
                assert!(
                    !batch.is_empty(),
                    "an ended stream never parks a viewer with data left"
                );
                let written = write_batch(&batch, 777, &mut out);
                batch.consume(written);
            }
            Err(end) => break end,
        }
    };
    assert_eq!(end, ViewerEnd::StreamEnded);
    let received: Vec<u8> = parse_frames(&out)
        .into_iter()
        .flat_map(|f| f.bytes)
        .collect();
    assert_eq!(
        received, expected,
        "everything sent before the end, then EOF"
    );
    assert_eq!(
        hub.next_batch(waiting, 3, 1 << 20).unwrap_err(),
        ViewerEnd::StreamEnded
    );
    assert_eq!(
        hub.add_viewer(both_tracks(), LocalNotify::new())
            .unwrap_err(),
        HubError::StreamEnded { stream: key() }
    );
}

#[test]
fn unknown_and_removed_viewers() {
    let (mut hub, _publisher) = live_hub(HubConfig::default());
    let id = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    assert_eq!(hub.viewer_count(), 1);
    hub.remove_viewer(id).unwrap();
    assert_eq!(hub.viewer_count(), 0);
    assert!(hub.remove_viewer(id).is_none());
    assert_eq!(
        hub.next_batch(id, 1, 1).unwrap_err(),
        ViewerEnd::UnknownViewer(id)
    );
    let reused = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    assert_ne!(reused, id, "a slot's new viewer has a new id");
    assert!(hub.next_batch(id, 1, 1).is_err());
    assert!(hub.next_batch(reused, 1, 1).is_ok());
}

#[test]
fn viewer_limit() {
    let config = HubConfig {
        max_viewers: 2,
        ..HubConfig::default()
    };
    let (mut hub, _publisher) = live_hub(config);
    hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let second = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    assert!(matches!(
        hub.add_viewer(both_tracks(), LocalNotify::new()),
        Err(HubError::TooManyViewers { max: 2, .. })
    ));
    hub.remove_viewer(second);
    hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
}

#[test]
fn description_is_versioned() {
    let mut hub = StreamHub::new(key(), HubConfig::default());
    assert!(hub.description().is_none());
    assert_eq!(hub.description_version(), 0);
    hub.set_description(av_description());
    hub.set_description(av_description());
    assert_eq!(hub.description_version(), 2);
    assert!(hub.description().unwrap().has_video());
}

#[test]
fn config_validation() {
    assert_eq!(HubConfig::default().validate(), Ok(()));
    let tiny_queue = HubConfig {
        queue_max_bytes: 1000,
        ..HubConfig::default()
    };
    assert!(matches!(
        tiny_queue.validate(),
        Err(HubConfigError::QueueTooSmall { .. })
    ));
    let no_batch = HubConfig {
        batch_max_packets: 0,
        ..HubConfig::default()
    };
    assert!(matches!(
        no_batch.validate(),
        Err(HubConfigError::TooSmall { .. })
    ));
    let huge_batch = HubConfig {
        batch_max_packets: 1000,
        ..HubConfig::default()
    };
    assert!(matches!(
        huge_batch.validate(),
        Err(HubConfigError::BatchTooLarge { .. })
    ));
}

#[test]
fn short_iovec_array_gives_a_prefix_of_the_batch() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(100);
    let id = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    for packet in source.gop(12) {
        hub.push(publisher, packet).unwrap();
    }
    // Leave a packet half written so the batch starts with its rest.
    let batch = hub.next_batch(id, 1, 1 << 20).unwrap();
    batch.consume(50);
    let batch = hub.next_batch(id, 64, 1 << 20).unwrap();
    let mut whole = Vec::new();
    batch.copy_to(&mut whole);
    assert_eq!(whole.len(), batch.wire_len());
    let from_iter: Vec<u8> = batch.io_slices().flat_map(|s| s.to_vec()).collect();
    assert_eq!(from_iter, whole);
    for room in 0..8 {
        let mut iov = [IoSlice::new(&[]); 8];
        let filled = batch.fill_io_slices(&mut iov[..room]);
        assert_eq!(filled, room);
        let prefix: Vec<u8> = iov[..filled].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(prefix, whole[..prefix.len()]);
    }
}

#[test]
fn a_seek_drops_the_old_position_and_viewers_restart_on_the_next_keyframe() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(300);
    let behind = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let notify = LocalNotify::new();
    let current = hub.add_viewer(both_tracks(), notify.clone()).unwrap();
    for packet in source.gop(20) {
        hub.push(publisher, packet).unwrap();
    }
    // One viewer is up to date, one has a half-written packet and 19 more to come.
    let (mut current_out, mut behind_out) = (Vec::new(), Vec::new());
    drain(&mut hub, current, usize::MAX, &mut current_out).unwrap();
    let batch = hub.next_batch(behind, 4, 1 << 20).unwrap();
    let written = write_batch(&batch, 100, &mut behind_out);
    batch.consume(written);

    hub.restart_at_next_keyframe();
    assert_eq!(hub.gop_cache().packets, 0, "the old position's GOP is gone");
    // What the old position still sends (in flight before the device seeked) is not served.
    hub.push(publisher, source.packet(Kind::Video)).unwrap();
    hub.push(publisher, source.packet(Kind::Audio)).unwrap();
    let late = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    for id in [current, late] {
        let mut out = Vec::new();
        drain(&mut hub, id, usize::MAX, &mut out).unwrap();
        assert!(out.is_empty(), "nothing before the new position's keyframe");
    }
    notify.take_notification();
    let new_position = source.gop(6);
    let keyframe_serial = source.serial - 5;
    for packet in new_position {
        hub.push(publisher, packet).unwrap();
    }
    assert!(notify.take_notification(), "the keyframe wakes the viewer");
    let mut after = Vec::new();
    drain(&mut hub, current, usize::MAX, &mut after).unwrap();
    let serials_after = serials(&parse_frames(&after));
    assert_eq!(serials_after.first(), Some(&keyframe_serial));
    assert_eq!(serials_after.len(), 6);
    let mut late_out = Vec::new();
    drain(&mut hub, late, usize::MAX, &mut late_out).unwrap();
    assert_eq!(serials(&parse_frames(&late_out)), serials_after);
    // The half-written packet is finished (the byte stream stays valid), then the new keyframe.
    drain(&mut hub, behind, usize::MAX, &mut behind_out).unwrap();
    let frames = parse_frames(&behind_out);
    assert_eq!(frames[0].serial, 1);
    assert_eq!(frames[1].serial, keyframe_serial);
    assert_eq!(
        hub.stats().frames_dropped,
        0,
        "a seek is no slow viewer's loss"
    );
}

#[test]
fn viewers_that_keep_up_leave_only_the_gop_in_memory() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(1200);
    let fast = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let late = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let (mut fast_out, mut late_out) = (Vec::new(), Vec::new());
    let mut sent = Vec::new();
    for gop in 0..6 {
        for (n, packet) in source.gop(100).into_iter().enumerate() {
            let packet = Rc::new(packet);
            sent.push(Rc::clone(&packet));
            hub.push(publisher, packet).unwrap();
            drain(&mut hub, fast, usize::MAX, &mut fast_out).unwrap();
            // The late viewer reads once per GOP, 60 packets into it.
            if n == 60 {
                drain(&mut hub, late, usize::MAX, &mut late_out).unwrap();
            }
            let gop_packets = hub.gop_cache().packets;
            // What the late viewer is still owed (at most a GOP and a bit), never the
            // 2048-packet queue window.
            assert!(
                hub.retained_packets() <= gop_packets.max(n + 1) + 100 + 16,
                "gop {gop} packet {n}: {} retained, GOP {gop_packets}",
                hub.retained_packets()
            );
        }
    }
    drain(&mut hub, late, usize::MAX, &mut late_out).unwrap();
    let expected = expected_wire(&sent, &both_tracks());
    assert_eq!(fast_out, expected, "the fast viewer got everything");
    assert_eq!(late_out, expected, "the late viewer got everything too");
    assert_eq!(hub.viewer_stats(late).unwrap().skips, 0);
    // Once both have read everything, the ring is the current GOP (within the rescan slack).
    hub.push(publisher, source.packet(Kind::Video)).unwrap();
    for _ in 0..20 {
        hub.push(publisher, source.packet(Kind::Video)).unwrap();
        drain(&mut hub, fast, usize::MAX, &mut fast_out).unwrap();
        drain(&mut hub, late, usize::MAX, &mut late_out).unwrap();
    }
    assert_eq!(hub.retained_packets(), hub.gop_cache().packets);
}

#[test]
fn pushed_packets_reuse_the_allocations_of_released_ones() {
    let (mut hub, publisher) = live_hub(HubConfig::default());
    let mut source = Source::new(900);
    let reference = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let holder = hub.add_viewer(both_tracks(), LocalNotify::new()).unwrap();
    let (mut reference_out, mut holder_out) = (Vec::new(), Vec::new());
    let mut sent = Vec::new();
    let mut push = |hub: &mut StreamHub, packet: RtpPacket| {
        sent.push(Rc::new(packet.clone()));
        hub.push(publisher, packet).unwrap();
        drain(hub, reference, usize::MAX, &mut reference_out).unwrap();
    };
    let mut gop = source.gop(40);
    let last = gop.pop().unwrap();
    for packet in gop {
        push(&mut hub, packet);
    }
    drain(&mut hub, holder, usize::MAX, &mut holder_out).unwrap();
    // The holder stops 500 bytes short of the GOP's last packet: it keeps that packet when the
    // ring drops it, so that packet must not be reused.
    push(&mut hub, last);
    let batch = hub.next_batch(holder, 16, 1 << 20).unwrap();
    let short = batch.wire_len() - 500;
    let written = write_batch(&batch, short, &mut holder_out);
    batch.consume(written);
    assert_eq!(hub.pool.spares(), 0, "nothing released yet");

    let mut gop = source.gop(40).into_iter();
    push(&mut hub, gop.next().unwrap());
    let spares = hub.pool.spares();
    assert!(
        (1..40).contains(&spares),
        "the previous GOP, but for the held packet, is kept for reuse: {spares} spares"
    );
    assert!(spares <= hub.ring_capacity());
    for (n, packet) in gop.enumerate() {
        push(&mut hub, packet);
        assert_eq!(
            hub.pool.spares(),
            spares.saturating_sub(n + 1),
            "each pushed packet takes a spare"
        );
    }
    // A shared packet is queued as it is.
    let before = hub.pool.spares();
    let shared = Rc::new(source.packet(Kind::Audio));
    sent.push(Rc::clone(&shared));
    hub.push(publisher, shared).unwrap();
    drain(&mut hub, reference, usize::MAX, &mut reference_out).unwrap();
    assert_eq!(hub.pool.spares(), before);

    drain(&mut hub, holder, usize::MAX, &mut holder_out).unwrap();
    let expected = expected_wire(&sent, &both_tracks());
    assert_eq!(reference_out, expected);
    assert_eq!(holder_out, expected, "the held packet was not overwritten");
}
