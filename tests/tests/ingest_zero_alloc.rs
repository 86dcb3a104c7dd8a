//! The ingest promise, measured: once a device stream is warm (hello and handshake done, the
//! first GOPs through, the SDP built, viewers joined, every list at its steady size), reading
//! its bytes, checking and decrypting its encryptTCP frames in place, splitting core packets and
//! media frames and packetizing them into RTP allocates nothing per frame, in every mode (TLS
//! plaintext, encryptTCP with every frame or only keyframes encrypted, TCP) and codec, with HMAC
//! and sequence verification on. A counting global allocator (this test binary only) counts the
//! allocations made on the test's thread.
//!
//! What does allocate, and the bound asserted for it:
//! - the ingest: two allocations per receive buffer turnover and nothing else. When the
//!   receive buffer (256 KiB) has no room left for the next read, a new one is allocated (the
//!   partial frame at its end moves over), and the first frame split off it turns it into a
//!   shared allocation (`bytes`' `Shared` header), so that packets can reference it by count.
//! - the hub: nothing. Each RTP packet is shared with the viewers in an `Rc`, but a warm hub
//!   writes it into the allocation of a packet its ring released (`StreamHub::push`), and fanning
//!   it out to the viewers allocates nothing (see `hub_zero_alloc`).
//!
//! `INGEST_ALLOC_TRACE=1` prints a backtrace of every allocation the ingest makes while
//! measured, to find what allocates. `cargo test -p tests --test ingest_zero_alloc --
//! --nocapture` prints the numbers.

use std::cell::Cell;

use loadgen::device::clip::ClipPlayer;
use loadgen::device::EncryptPolicy;
use relay::hub::{ChannelMap, HubConfig, LocalNotify, StreamHub, ViewerId};
use relay::ingest::IngestEvent;
use relay::proto::media::Codec;
use relay::stream_key::{StreamKey, StreamKind};
use signal::proto::body::StreamMode;
use tests::alloc_count::{allocations, assert_counting, trace_allocations, CountingAllocator};
use tests::ingest::{audio_clip, config, connect, video_clip, FPS, START_PTS, UID};
use tests::viewer::write_once;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Plays of the 3-second clip (3 GOPs each) before measuring.
const WARM_UP_PLAYS: usize = 2;
/// Plays measured.
const MEASURED_PLAYS: usize = 20;
const VIEWERS: usize = 3;

fn run(mode: StreamMode, policy: EncryptPolicy, codec: Codec, seed: u64) {
    let context = format!("{mode:?} {policy:?} {codec:?}");
    let config = config(mode);
    assert!(config.policy.verify_hmac && config.policy.verify_sequence);
    let (mut device, mut server) = connect(mode, policy, config, seed, 4000);

    let key = StreamKey::new(UID, 0, StreamKind::Main).unwrap();
    let mut hub = StreamHub::new(key, HubConfig::default());
    let publisher = hub.attach_publisher().unwrap();
    let channels = ChannelMap::new()
        .with_track(0, 0, 1)
        .unwrap()
        .with_track(1, 2, 3)
        .unwrap();
    let viewers: Vec<ViewerId> = (0..VIEWERS)
        .map(|_| hub.add_viewer(channels, LocalNotify::new()).unwrap())
        .collect();

    // The camera's bytes, made before counting: the device side allocates as it likes.
    let frames_per_play =
        ClipPlayer::new(video_clip(codec), Some(audio_clip()), FPS, START_PTS).count();
    let mut player =
        ClipPlayer::new(video_clip(codec), Some(audio_clip()), FPS, START_PTS).looping();
    let mut wire = |plays: usize| {
        let mut bytes = Vec::new();
        for frame in player.by_ref().take(plays * frames_per_play) {
            bytes.extend_from_slice(&device.media(&frame).unwrap());
        }
        bytes
    };
    let warm_up = wire(WARM_UP_PLAYS);
    let measured = wire(MEASURED_PLAYS);

    // Allocations made while the hub takes a packet and the viewers write it.
    let hub_allocations = Cell::new(0u64);
    let packets = Cell::new(0u64);
    let mut on_event = |event: IngestEvent| {
        let before = allocations();
        match event {
            IngestEvent::Description(description) => hub.set_description(description),
            IngestEvent::Packet(packet) => {
                hub.push(publisher, packet).unwrap();
                packets.set(packets.get() + 1);
                for (v, id) in viewers.iter().enumerate() {
                    // One viewer writes in short writes that split packets.
                    let max_write = if v == 0 { 1000 } else { usize::MAX };
                    while write_once(&mut hub, *id, max_write) > 0 {}
                }
            }
            _ => {}
        }
        hub_allocations.set(hub_allocations.get() + allocations() - before);
    };
    let mut reply = Vec::new();
    server.feed(&warm_up, |_| {}, &mut on_event, &mut reply);
    assert!(
        reply.is_empty() && server.ingest.is_described(),
        "{context}"
    );

    assert_counting();
    let stats_before = server.stats();
    let (turnovers_before, reads_before) = (server.turnovers, server.reads);
    hub_allocations.set(0);
    packets.set(0);
    trace_allocations(std::env::var_os("INGEST_ALLOC_TRACE").is_some());
    let before = allocations();
    server.feed(&measured, |_| {}, &mut on_event, &mut reply);
    let total = allocations() - before;
    trace_allocations(false);

    let stats = server.stats();
    assert!(server.ingest.failure().is_none(), "{context}");
    assert!(reply.is_empty(), "{context}");
    let frames = stats.video_frames + stats.audio_frames
        - (stats_before.video_frames + stats_before.audio_frames);
    assert_eq!(
        frames,
        (MEASURED_PLAYS * frames_per_play) as u64,
        "{context}"
    );
    let rtp_packets = stats.rtp_packets - stats_before.rtp_packets;
    assert_eq!(packets.get(), rtp_packets, "{context}");
    let turnovers = server.turnovers - turnovers_before;
    let reads = server.reads - reads_before;
    let hub = hub_allocations.get();
    let ingest = total - hub;
    println!(
        "{context}: {frames} frames ({} GOPs), {rtp_packets} RTP packets, {reads} reads, \
         {turnovers} receive buffer turnovers: {ingest} allocations in the ingest, {hub} in the \
         hub",
        MEASURED_PLAYS * 3
    );
    assert!(
        turnovers > 0,
        "{context}: the stream outgrows a receive buffer"
    );
    assert!(
        ingest <= 2 * turnovers,
        "{context}: {ingest} allocations in the ingest over {frames} frames and {turnovers} \
         buffer turnovers (INGEST_ALLOC_TRACE=1 shows where)"
    );
    assert!(rtp_packets > 0, "{context}");
    assert_eq!(
        hub, 0,
        "{context}: {hub} allocations in the hub over {rtp_packets} RTP packets"
    );
}

#[test]
fn h264_ingest_allocates_nothing_per_frame_in_every_mode() {
    run(StreamMode::Tls, EncryptPolicy::None, Codec::H264, 1);
    run(StreamMode::EncryptTcp, EncryptPolicy::All, Codec::H264, 2);
    run(
        StreamMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        Codec::H264,
        3,
    );
    run(StreamMode::Tcp, EncryptPolicy::None, Codec::H264, 4);
}

#[test]
fn h265_ingest_allocates_nothing_per_frame_in_every_mode() {
    run(StreamMode::Tls, EncryptPolicy::None, Codec::H265, 5);
    run(StreamMode::EncryptTcp, EncryptPolicy::All, Codec::H265, 6);
    run(
        StreamMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        Codec::H265,
        7,
    );
    run(StreamMode::Tcp, EncryptPolicy::None, Codec::H265, 8);
}
