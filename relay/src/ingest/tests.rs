//! Unit tests of the ingest on the relay's own fixtures; the end-to-end tests with the loadgen's
//! simulated camera (every mode, tampering, copy measurement) are in
//! `tests/tests/ingest_pipeline.rs`.

use bytes::{Bytes, BytesMut};
use signal::proto::body::{BodyMessage, Handshake, StreamMode};
use signal::proto::core_packet::{cmd, encode_packet, CoreHeader};

use super::*;
use crate::proto::media::{Codec, FrameKind, MediaFrame};

const STREAM_ID: u32 = 99;

fn fixture(name: &str) -> Bytes {
    Bytes::from(std::fs::read(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap())
}

/// A TLS-mode device stream: handshake, the whole H.264 fixture as one I-frame, two AAC frames.
fn tls_stream() -> Vec<u8> {
    let mut core = BytesMut::new();
    let handshake = Handshake {
        uid: "95270000ABCDEFGH".into(),
        ..Handshake::default()
    };
    encode_packet(
        CoreHeader::request(cmd::HANDSHAKE, 1),
        &[],
        handshake.encode().as_bytes(),
        &mut core,
    )
    .unwrap();
    let aac = fixture("clip_aac_16k_mono.aac");
    let first_aac =
        usize::from(u16::from_be_bytes([aac[3] & 3, aac[4]])) << 3 | usize::from(aac[5] >> 5);
    let frames = [
        MediaFrame {
            kind: FrameKind::VideoI,
            codec: Codec::H264,
            pts_us: Some(1_000_000),
            payload: std::iter::once(fixture("clip_h264.264")).collect(),
        },
        MediaFrame {
            kind: FrameKind::Aac,
            codec: Codec::Aac,
            pts_us: None,
            payload: std::iter::once(aac.slice(..first_aac)).collect(),
        },
    ];
    let mut media = BytesMut::new();
    for frame in &frames {
        frame.encode(&mut media).unwrap();
    }
    for piece in media.chunks(4000) {
        encode_packet(
            CoreHeader::request(cmd::PREVIEW_START, STREAM_ID),
            &[],
            piece,
            &mut core,
        )
        .unwrap();
    }
    core.to_vec()
}

fn tls_ingest() -> DeviceStreamIngest {
    let mut config = IngestConfig::new(StreamMode::Tls, [1; 32]);
    config.stream_id = Some(STREAM_ID);
    config.expected_uid = Some("95270000ABCDEFGH".into());
    DeviceStreamIngest::new(config, Box::new(|_| KeyLookup::Unknown)).unwrap()
}

#[test]
fn tls_stream_gives_description_and_zero_copy_packets() {
    let wire = tls_stream();
    let mut ingest = tls_ingest();
    let buffer = ingest.receive_buffer();
    assert!(buffer.len() >= 4096);
    let mut received = 0;
    let mut events = Vec::new();
    let mut regions = Vec::new();
    while received < wire.len() {
        let buffer = ingest.receive_buffer();
        let n = buffer.len().min(wire.len() - received);
        buffer[..n].copy_from_slice(&wire[received..received + n]);
        regions.push(buffer.as_ptr() as usize..buffer.as_ptr() as usize + n);
        ingest.commit(n);
        received += n;
        while let Some(event) = ingest.poll() {
            events.push(event);
        }
    }
    assert!(ingest.failure().is_none());
    // The empty 200 reply to the handshake.
    let reply = ingest.take_output().unwrap();
    assert_eq!(reply.len(), 24);
    assert_eq!(&reply[16..20], &200u32.to_le_bytes());
    assert!(matches!(events[0], IngestEvent::Handshake(_)));
    let IngestEvent::Description(description) = &events[1] else {
        panic!("expected the description, got {:?}", events[1]);
    };
    assert!(
        description.sdp.contains("profile-level-id=64000D"),
        "{}",
        description.sdp
    );
    assert!(description.sdp.contains("config=1408"));
    let packets: Vec<&RtpPacket> = events
        .iter()
        .filter_map(|e| match e {
            IngestEvent::Packet(p) => Some(p),
            _ => None,
        })
        .collect();
    assert!(packets[0].is_keyframe_start());
    assert_eq!(
        packets.iter().filter(|p| p.track() == AUDIO_TRACK).count(),
        1
    );
    for packet in packets {
        let ptr = packet.payload().as_ptr() as usize;
        assert!(
            regions.iter().any(|r| r.contains(&ptr)),
            "payload not in a receive buffer"
        );
    }
    let stats = ingest.stats();
    assert_eq!((stats.video_frames, stats.audio_frames), (1, 1));
    assert_eq!(stats.bytes_copied, 0);
}

#[test]
fn media_before_handshake_closes() {
    let wire = tls_stream();
    let handshake_len = 24 + u32::from_le_bytes(wire[8..12].try_into().unwrap()) as usize;
    let mut ingest = tls_ingest();
    ingest.receive(&wire[handshake_len..]);
    while ingest.poll().is_some() {}
    assert!(matches!(
        ingest.failure(),
        Some(IngestError::MediaBeforeHandshake { .. })
    ));
    assert_eq!(ingest.stats().media_before_handshake, 1);
}

#[test]
fn config_is_validated() {
    let mut config = IngestConfig::new(StreamMode::Tcp, [0; 32]);
    config.max_rtp_payload = 10;
    assert!(matches!(
        DeviceStreamIngest::new(config, Box::new(|_| KeyLookup::Unknown)),
        Err(IngestConfigError::Rtp(_))
    ));
}

#[test]
fn fuzz_entry_point_on_valid_and_mutated_streams() {
    let wire = tls_stream();
    let mut data = vec![0u8];
    data.extend_from_slice(&wire);
    fuzzing::ingest(&data);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..300u32 {
        let mut mutated = data.clone();
        mutated[0] = round as u8;
        for _ in 0..(round % 7 + 1) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = 1 + (x as usize) % (mutated.len() - 1);
            mutated[at] ^= (x >> 32) as u8 | 1;
        }
        fuzzing::ingest(&mutated);
        fuzzing::ingest(&mutated[..(x as usize) % mutated.len()]);
    }
}

/// Replay media packets (command 5) of `frame`, cut into 4000-byte bodies, with `seek_seq` in
/// the response code; `cut` keeps only the first packet (a frame in flight when seeking).
fn replay_packets(frame: &MediaFrame, seek_seq: u32, cut: bool) -> Vec<u8> {
    let mut media = BytesMut::new();
    frame.encode(&mut media).unwrap();
    let mut core = BytesMut::new();
    for piece in media.chunks(4000).take(if cut { 1 } else { usize::MAX }) {
        let mut header = CoreHeader::request(cmd::REPLAY_START, STREAM_ID);
        header.response_code = seek_seq;
        encode_packet(header, &[], piece, &mut core).unwrap();
    }
    core.to_vec()
}

fn keyframe_at(pts_us: u64) -> MediaFrame {
    MediaFrame {
        kind: FrameKind::VideoI,
        codec: Codec::H264,
        pts_us: Some(pts_us),
        payload: std::iter::once(fixture("clip_h264.264")).collect(),
    }
}

/// RTP timestamps of the video packets among `events`, and whether a seek was reported.
fn video_timestamps(events: Vec<IngestEvent>) -> (Vec<u32>, bool) {
    let mut timestamps = Vec::new();
    let mut sought = false;
    for event in events {
        match event {
            IngestEvent::Packet(packet) if packet.track() == VIDEO_TRACK => {
                let h = packet.prefix();
                let ts = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if timestamps.last() != Some(&ts) {
                    timestamps.push(ts);
                }
            }
            IngestEvent::Sought { seek_seq } => {
                assert_eq!(seek_seq, 1024);
                sought = true;
            }
            _ => {}
        }
    }
    (timestamps, sought)
}

fn feed(ingest: &mut DeviceStreamIngest, bytes: &[u8]) -> Vec<IngestEvent> {
    ingest.receive(bytes);
    std::iter::from_fn(|| ingest.poll()).collect()
}

#[test]
fn a_replay_seek_drops_the_old_position_and_restarts_on_the_new_keyframe() {
    let mut ingest = tls_ingest();
    let handshake = Handshake {
        uid: "95270000ABCDEFGH".into(),
        ..Handshake::default()
    };
    let mut core = BytesMut::new();
    encode_packet(
        CoreHeader::request(cmd::HANDSHAKE, 1),
        &[],
        handshake.encode().as_bytes(),
        &mut core,
    )
    .unwrap();
    // Without audio the first description (and the keyframe) wait for a second frame.
    core.extend_from_slice(&replay_packets(&keyframe_at(1_000_000), 0, false));
    core.extend_from_slice(&replay_packets(&keyframe_at(1_040_000), 0, false));
    let (before, sought) = video_timestamps(feed(&mut ingest, &core));
    assert_eq!((before, sought), (vec![90_000, 93_600], false));

    // Seek asked (sequence 1024): a whole frame and half a frame of the old position are still
    // on the way, then the device continues at 5 s.
    ingest.set_seek_floor(1024);
    let mut wire = replay_packets(&keyframe_at(2_000_000), 0, false);
    wire.extend_from_slice(&replay_packets(&keyframe_at(3_000_000), 0, true));
    wire.extend_from_slice(&replay_packets(&keyframe_at(5_000_000), 1024, false));
    wire.extend_from_slice(&replay_packets(&keyframe_at(5_040_000), 1024, false));
    let (after, sought) = video_timestamps(feed(&mut ingest, &wire));
    assert!(sought, "the new position is reported");
    assert_eq!(after, vec![450_000, 453_600]);
    let stats = ingest.stats();
    assert!(stats.stale_seek_packets >= 2, "{stats:?}");
    assert!(ingest.failure().is_none());
    // A stale packet arriving late changes nothing.
    let late = replay_packets(&keyframe_at(3_000_000), 0, false);
    assert_eq!(
        video_timestamps(feed(&mut ingest, &late)).0,
        Vec::<u32>::new()
    );
}

/// (track, ssrc, sequence, timestamp) of every RTP packet `wire` gives `ingest`.
fn rtp_headers(ingest: &mut DeviceStreamIngest, wire: &[u8]) -> Vec<(u8, u32, u16, u32)> {
    ingest.receive(wire);
    let mut headers = Vec::new();
    while let Some(event) = ingest.poll() {
        if let IngestEvent::Packet(packet) = event {
            let h = packet.prefix();
            headers.push((
                packet.track(),
                u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
                u16::from_be_bytes([h[2], h[3]]),
                u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ));
        }
    }
    assert!(ingest.failure().is_none(), "{:?}", ingest.failure());
    headers
}

#[test]
fn a_later_connection_continues_the_stream_of_a_lost_one() {
    let wire = tls_stream();
    let mut first = tls_ingest();
    let before = rtp_headers(&mut first, &wire);
    let continuation = first.continuation();
    assert_eq!(continuation.last_pts_us, Some(1_000_000));

    // The device comes back 2 s later on a new connection (another nonce: other SSRCs and
    // sequence starts) and starts its PTS from where it started before.
    let mut config = IngestConfig::new(StreamMode::Tls, [2; 32]);
    config.stream_id = Some(STREAM_ID);
    let mut second = DeviceStreamIngest::new(config, Box::new(|_| KeyLookup::Unknown)).unwrap();
    assert!(second.continue_stream(&continuation, std::time::Duration::from_secs(2)));
    let after = rtp_headers(&mut second, &wire);
    assert!(
        !second.continue_stream(&continuation, std::time::Duration::ZERO),
        "too late once media was processed"
    );

    for track in [VIDEO_TRACK, AUDIO_TRACK] {
        let old: Vec<_> = before.iter().filter(|h| h.0 == track).collect();
        let new: Vec<_> = after.iter().filter(|h| h.0 == track).collect();
        let (last, next) = (old.last().unwrap(), new.first().unwrap());
        assert_eq!(next.1, last.1, "track {track}: same SSRC");
        assert_eq!(
            next.2,
            last.2.wrapping_add(1),
            "track {track}: next sequence"
        );
    }
    let video_ts =
        |headers: &[(u8, u32, u16, u32)]| headers.iter().find(|h| h.0 == VIDEO_TRACK).unwrap().3;
    // 1 s of PTS before, 1 s + 2 s of gap after, on the 90 kHz clock.
    assert_eq!(video_ts(&before), 90_000);
    assert_eq!(video_ts(&after), 270_000);
    let audio_ts =
        |headers: &[(u8, u32, u16, u32)]| headers.iter().find(|h| h.0 == AUDIO_TRACK).unwrap().3;
    // Audio follows the video PTS on its own 16 kHz clock.
    assert_eq!(audio_ts(&after) - audio_ts(&before), 2 * 16_000);
    assert_eq!(second.continuation().last_pts_us, Some(3_000_000));
}
