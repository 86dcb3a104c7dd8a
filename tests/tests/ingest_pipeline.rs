//! Device stream ingest end to end, sans-IO: the loadgen's simulated camera streams real clips
//! (H.264 and H.265 with AAC) in each mode (TLS plaintext, encryptTCP with every frame
//! encrypted, with keyframes only, and "TCP" with none); its bytes are cut at random places and
//! read into the relay's ingest; the RTP packets are depacketized again and must give back the
//! clip's NAL units and AAC frames, with timestamps from the PTS and an SDP from the real
//! parameter sets. Tampered frames are dropped and counted and the stream goes on. Payloads must
//! reference the receive buffers: copies are measured by pointer.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use loadgen::device::clip::ClipPlayer;
use loadgen::device::{EncryptPolicy, StreamDevice};
use relay::hub::{RtpPacket, StreamDescription, TrackKind};
use relay::ingest::{DeviceStreamIngest, IngestError, IngestEvent};
use relay::proto::media::{Codec, MediaFrame};
use relay::proto::rtp::RtpHeader;
use relay::proto::sdp::SessionDescription;
use signal::proto::body::{Handshake, StreamMode};
use signal::proto::encrypt_tcp::HELLO_STALE_KEY;
use tests::ingest::{
    audio_clip, config, connect, frames, keys, video_clip, Server, FPS, KEY_INDEX, OLD_KEY_INDEX,
    START_PTS, STREAM_ID, UID, VIDEO_OFFSET,
};

/// Depacketized video: per RTP timestamp, the NAL units in order.
fn depacketize_video(codec: Codec, packets: &[RtpPacket]) -> Vec<(u32, Vec<Vec<u8>>)> {
    let mut units: Vec<(u32, Vec<Vec<u8>>)> = Vec::new();
    let mut fragment: Option<Vec<u8>> = None;
    let mut last_sequence: Option<u16> = None;
    for packet in packets.iter().filter(|p| p.track() == 0) {
        let mut wire = Vec::new();
        packet.copy_to(&mut wire);
        let (header, range) = RtpHeader::parse(&wire).unwrap();
        if let Some(previous) = last_sequence {
            if header.sequence != previous.wrapping_add(1) {
                // Lost packets (a dropped frame): an unfinished fragment is garbage.
                fragment = None;
            }
        }
        last_sequence = Some(header.sequence);
        let payload = &wire[range];
        if units.last().map(|u| u.0) != Some(header.timestamp) {
            units.push((header.timestamp, Vec::new()));
        }
        let nals = &mut units.last_mut().unwrap().1;
        let (is_fragment, start, end, nal_header, data): (bool, bool, bool, Vec<u8>, &[u8]) =
            match codec {
                Codec::H265 if (payload[0] >> 1) & 0x3f == 49 => {
                    let fu = payload[2];
                    let h0 = (payload[0] & 0x81) | ((fu & 0x3f) << 1);
                    (
                        true,
                        fu & 0x80 != 0,
                        fu & 0x40 != 0,
                        vec![h0, payload[1]],
                        &payload[3..],
                    )
                }
                Codec::H264 if payload[0] & 0x1f == 28 => {
                    let fu = payload[1];
                    let h = (payload[0] & 0xe0) | (fu & 0x1f);
                    (true, fu & 0x80 != 0, fu & 0x40 != 0, vec![h], &payload[2..])
                }
                _ => (false, true, true, Vec::new(), payload),
            };
        assert_eq!(header.marker, packet.is_end_of_access_unit());
        if !is_fragment {
            nals.push(data.to_vec());
            continue;
        }
        if start {
            fragment = Some(nal_header);
        }
        if let Some(f) = fragment.as_mut() {
            f.extend_from_slice(data);
        }
        if end {
            if let Some(f) = fragment.take() {
                nals.push(f);
            }
        }
    }
    units
}

/// Depacketized audio: (timestamp, AAC access unit).
fn depacketize_audio(packets: &[RtpPacket]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut partial: Option<(u32, usize, Vec<u8>)> = None;
    for packet in packets.iter().filter(|p| p.track() == 1) {
        let mut wire = Vec::new();
        packet.copy_to(&mut wire);
        let (header, range) = RtpHeader::parse(&wire).unwrap();
        let payload = &wire[range];
        assert_eq!(&payload[..2], &[0, 16], "one 16-bit AU header");
        let size = usize::from(u16::from_be_bytes([payload[2], payload[3]]) >> 3);
        let data = &payload[4..];
        let entry = partial.get_or_insert_with(|| (header.timestamp, size, Vec::new()));
        entry.2.extend_from_slice(data);
        if header.marker {
            let (ts, size, au) = partial.take().unwrap();
            assert_eq!(au.len(), size);
            out.push((ts, au));
        }
    }
    out
}

fn expected_video(codec: Codec) -> Vec<Vec<Vec<u8>>> {
    video_clip(codec)
        .access_units
        .iter()
        .map(|au| au.nal_units.iter().map(|n| n.to_vec()).collect())
        .collect()
}

fn expected_audio() -> Vec<Vec<u8>> {
    audio_clip()
        .frames
        .iter()
        .map(|f| {
            let header = if f[1] & 1 == 1 { 7 } else { 9 };
            f[header..].to_vec()
        })
        .collect()
}

fn check_sdp(codec: Codec, description: &StreamDescription) {
    assert_eq!(description.tracks, vec![TrackKind::Video, TrackKind::Audio]);
    let sdp = SessionDescription::parse(description.sdp.as_bytes()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = &video_clip(codec).access_units[0].nal_units;
    let fmtp = sdp.media[0].fmtp();
    match codec {
        Codec::H264 => {
            assert_eq!(
                fmtp.get("sprop-parameter-sets"),
                Some(format!("{},{}", b64.encode(&key[0]), b64.encode(&key[1])).as_str())
            );
            let sps = &key[0];
            assert_eq!(
                fmtp.get("profile-level-id"),
                Some(format!("{:02X}{:02X}{:02X}", sps[1], sps[2], sps[3]).as_str())
            );
            assert_eq!(fmtp.get("packetization-mode"), Some("1"));
            assert!(description.sdp.contains("a=rtpmap:96 H264/90000"));
        }
        _ => {
            assert_eq!(fmtp.get("sprop-vps"), Some(b64.encode(&key[0]).as_str()));
            assert_eq!(fmtp.get("sprop-sps"), Some(b64.encode(&key[1]).as_str()));
            assert_eq!(fmtp.get("sprop-pps"), Some(b64.encode(&key[2]).as_str()));
            assert!(description.sdp.contains("a=rtpmap:96 H265/90000"));
        }
    }
    assert!(description
        .sdp
        .contains("a=rtpmap:97 MPEG4-GENERIC/16000/1"));
    assert_eq!(sdp.media[1].fmtp().get("config"), Some("1408"));
    assert_eq!(sdp.media[0].control(), Some("trackID=0"));
    assert_eq!(sdp.media[1].control(), Some("trackID=1"));
}

fn stream_everything(device: &mut StreamDevice, server: &mut Server, frames: &[MediaFrame]) {
    for frame in frames {
        let bytes = device.media(frame).unwrap();
        assert!(server.read(&bytes).is_empty());
    }
}

fn run_mode(mode: StreamMode, policy: EncryptPolicy, codec: Codec, seed: u64) {
    let (mut device, mut server) = connect(mode, policy, config(mode), seed, 700);
    let frames = frames(codec);
    stream_everything(&mut device, &mut server, &frames);
    let context = format!("{mode:?} {policy:?} {codec:?}");
    assert!(server.ingest.failure().is_none(), "{context}");

    // One description, from the first keyframe and the first AAC frame.
    assert_eq!(server.descriptions.len(), 1, "{context}");
    check_sdp(codec, &server.descriptions[0]);

    let video = depacketize_video(codec, &server.packets);
    let expected = expected_video(codec);
    assert_eq!(video.len(), expected.len(), "{context}");
    for (i, ((ts, nals), want)) in video.iter().zip(&expected).enumerate() {
        assert_eq!(nals, want, "{context}: access unit {i}");
        let pts = START_PTS + i as u64 * 1_000_000 / u64::from(FPS);
        assert_eq!(
            *ts,
            (pts * 9 / 100) as u32 + VIDEO_OFFSET,
            "{context}: timestamp {i}"
        );
    }
    let keyframe_starts: Vec<usize> = server
        .packets
        .iter()
        .filter(|p| p.is_keyframe_start())
        .map(|p| p.track().into())
        .collect();
    assert_eq!(
        keyframe_starts,
        vec![0, 0, 0],
        "{context}: one start per IDR"
    );

    let audio = depacketize_audio(&server.packets);
    let want = expected_audio();
    assert_eq!(audio.len(), want.len(), "{context}");
    for (i, ((ts, au), want)) in audio.iter().zip(&want).enumerate() {
        assert_eq!(au, want, "{context}: AAC frame {i}");
        // 1024 samples per frame from the first video PTS, at 16 kHz.
        assert_eq!(
            *ts,
            (START_PTS * 16 / 1000) as u32 + 1024 * i as u32,
            "{context}"
        );
    }

    let stats = server.stats();
    let video_frames = expected.len() as u64;
    assert_eq!(stats.video_frames, video_frames, "{context}");
    assert_eq!(stats.audio_frames, want.len() as u64, "{context}");
    assert_eq!(
        stats.rejections().iter().map(|r| r.1).sum::<u64>(),
        0,
        "{context}"
    );
    match (mode, policy) {
        (StreamMode::Tls, _) => assert_eq!(stats.frames, 0),
        (_, EncryptPolicy::All) => assert_eq!(stats.encrypted_frames, stats.frames),
        (_, EncryptPolicy::None) => assert_eq!(stats.encrypted_frames, 0),
        (_, EncryptPolicy::Keyframes) => {
            assert!(stats.encrypted_frames > 3 && stats.encrypted_frames < stats.frames / 4)
        }
    }
    let (copied, total) = server.copied_payload_bytes();
    assert_eq!(total, stats.payload_bytes);
    println!(
        "{context}: {} RTP packets, {total} payload bytes, {copied} copied in user space ({:.4} per payload byte)",
        stats.rtp_packets,
        copied as f64 / total as f64
    );
    // Only the partial frame at the end of a full 256 KiB receive buffer moves.
    assert!(
        copied * 50 < total,
        "{context}: {copied} of {total} payload bytes copied"
    );
}

#[test]
fn h264_and_aac_in_every_mode() {
    run_mode(StreamMode::Tls, EncryptPolicy::None, Codec::H264, 1);
    run_mode(StreamMode::EncryptTcp, EncryptPolicy::All, Codec::H264, 2);
    run_mode(
        StreamMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        Codec::H264,
        3,
    );
    run_mode(StreamMode::Tcp, EncryptPolicy::None, Codec::H264, 4);
}

#[test]
fn h265_and_aac_in_every_mode() {
    run_mode(StreamMode::Tls, EncryptPolicy::None, Codec::H265, 5);
    run_mode(StreamMode::EncryptTcp, EncryptPolicy::All, Codec::H265, 6);
    run_mode(
        StreamMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        Codec::H265,
        7,
    );
    run_mode(StreamMode::Tcp, EncryptPolicy::None, Codec::H265, 8);
}

#[test]
fn byte_by_byte_and_small_mtu() {
    let mut config = config(StreamMode::EncryptTcp);
    config.max_rtp_payload = 200;
    let (mut device, mut server) = connect(
        StreamMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        config,
        9,
        1,
    );
    let frames = frames(Codec::H264);
    stream_everything(&mut device, &mut server, &frames[..40]);
    let video = depacketize_video(Codec::H264, &server.packets);
    let expected = expected_video(Codec::H264);
    assert!(video.len() >= 20);
    for ((_, nals), want) in video.iter().zip(&expected) {
        assert_eq!(nals, want);
    }
    assert!(server.packets.iter().all(|p| p.len() <= 212));
}

/// Streams the H.264 clip with `tamper` applied to the bytes of video frame 10 (a P-frame of the
/// first GOP); returns the server.
fn tampered_run(tamper: impl Fn(&mut StreamDevice, Bytes) -> Vec<u8>) -> Server {
    let (mut device, mut server) = connect(
        StreamMode::EncryptTcp,
        EncryptPolicy::All,
        config(StreamMode::EncryptTcp),
        11,
        900,
    );
    let mut video_index = 0;
    for frame in frames(Codec::H264) {
        let bytes = device.media(&frame).unwrap();
        let bytes = if frame.kind.is_video() && video_index == 10 {
            tamper(&mut device, bytes)
        } else {
            bytes.to_vec()
        };
        video_index += usize::from(frame.kind.is_video());
        server.read(&bytes);
    }
    assert!(server.ingest.failure().is_none());
    server
}

/// The access units received: all of the clip but a run of P-frames after the tampered one, up
/// to the next keyframe.
fn check_gap(server: &Server, expect_gap: bool) {
    let video = depacketize_video(Codec::H264, &server.packets);
    let expected = expected_video(Codec::H264);
    let pts_index = |ts: u32| ((ts - VIDEO_OFFSET) as u64 * 100 / 9 - START_PTS) / 40_000;
    let indexes: Vec<u64> = video.iter().map(|(ts, _)| pts_index(*ts)).collect();
    for ((_, nals), &i) in video.iter().zip(&indexes) {
        assert_eq!(nals, &expected[i as usize], "access unit {i}");
    }
    let missing: Vec<u64> = (0..75).filter(|i| !indexes.contains(i)).collect();
    if expect_gap {
        assert!(!missing.is_empty());
        assert!(
            missing.iter().all(|&i| (10..25).contains(&i)),
            "{missing:?}"
        );
        assert!(indexes.contains(&25) && indexes.contains(&74));
        // Viewers start again on the next keyframe: its packets carry the keyframe mark.
        let starts = server
            .packets
            .iter()
            .filter(|p| p.is_keyframe_start())
            .count();
        assert_eq!(starts, 3);
    } else {
        assert!(missing.is_empty(), "{missing:?}");
    }
}

#[test]
fn flipped_ciphertext_bit_is_dropped_counted_and_the_stream_recovers() {
    let server = tampered_run(|_, bytes| tests::tamper::flip_ciphertext_bit(&bytes));
    let stats = server.stats();
    assert_eq!(stats.bad_hmac, 1);
    assert!(stats.resyncs >= 1);
    assert!(stats.bytes_skipped > 0);
    check_gap(&server, true);
}

#[test]
fn bad_hmac_trailer_is_dropped_counted_and_the_stream_recovers() {
    let server = tampered_run(|_, bytes| tests::tamper::break_hmac(&bytes));
    assert_eq!(server.stats().bad_hmac, 1);
    check_gap(&server, true);
}

#[test]
fn replayed_frame_is_dropped_counted_and_nothing_is_lost() {
    let server = tampered_run(|_, bytes| tests::tamper::replay_first_frame(&bytes));
    let stats = server.stats();
    assert_eq!(stats.bad_sequence, 1);
    assert_eq!(stats.resyncs, 0);
    check_gap(&server, false);
}

#[test]
fn packets_of_another_stream_are_dropped_and_counted() {
    let (mut device, mut server) = connect(
        StreamMode::Tls,
        EncryptPolicy::None,
        config(StreamMode::Tls),
        12,
        5000,
    );
    let frames = frames(Codec::H264);
    for (i, frame) in frames.iter().enumerate() {
        server.read(&device.media(frame).unwrap());
        if i == 5 {
            let mut other = bytes::BytesMut::new();
            signal::proto::core_packet::encode_packet(
                signal::proto::core_packet::CoreHeader::request(3, STREAM_ID + 1),
                &[],
                b"01dcH264 garbage of another stream",
                &mut other,
            )
            .unwrap();
            server.read(&device.raw(&other, false).unwrap());
        }
    }
    let stats = server.stats();
    assert_eq!(stats.wrong_stream_id, 1);
    assert_eq!(stats.resyncs, 0);
    check_gap(&server, false);
}

#[test]
fn garbage_in_the_core_stream_resyncs_on_the_next_keyframe() {
    let (mut device, mut server) = connect(
        StreamMode::Tls,
        EncryptPolicy::None,
        config(StreamMode::Tls),
        13,
        300,
    );
    let mut video_index = 0;
    for frame in frames(Codec::H264) {
        if frame.kind.is_video() && video_index == 10 {
            // A core header announcing 2 GiB: refused, then the stream resynchronises.
            let mut garbage = vec![0u8; 24];
            garbage[4] = 3;
            garbage[8..12].copy_from_slice(&0x8000_0000u32.to_le_bytes());
            garbage.extend_from_slice(&[0xee; 500]);
            server.read(&device.raw(&garbage, false).unwrap());
        }
        video_index += usize::from(frame.kind.is_video());
        server.read(&device.media(&frame).unwrap());
    }
    let stats = server.stats();
    assert_eq!(stats.oversized, 1);
    assert!(server.ingest.failure().is_none());
    check_gap(&server, true);
}

#[test]
fn hello_stale_unknown_and_forged_keys() {
    // Stale key index: answered 400, signed, then closed.
    let mut server = Server::new(config(StreamMode::EncryptTcp), 1, 50);
    let (mut device, hello) = StreamDevice::encrypt_tcp(
        &keys(OLD_KEY_INDEX, UID),
        [1; 32],
        STREAM_ID,
        EncryptPolicy::All,
    );
    let reply = server.read(&hello);
    assert!(device.receive(&reply).is_err());
    assert_eq!(device.hello_code(), Some(HELLO_STALE_KEY));
    assert!(matches!(
        server.ingest.failure(),
        Some(IngestError::StaleAccessKey { .. })
    ));
    assert_eq!(server.stats().stale_access_keys, 1);

    // Unknown key index: no reply.
    let mut server = Server::new(config(StreamMode::EncryptTcp), 2, 50);
    let (_, hello) = StreamDevice::encrypt_tcp(
        &keys("unknownKeyIndex1", UID),
        [1; 32],
        STREAM_ID,
        EncryptPolicy::All,
    );
    assert!(server.read(&hello).is_empty());
    assert_eq!(server.stats().unknown_access_keys, 1);

    // Forged: right access key, wrong secret.
    let mut forged = keys(KEY_INDEX, UID);
    forged.secret = "not the secret of this access key".into();
    let mut server = Server::new(config(StreamMode::Tcp), 3, 50);
    let (_, hello) = StreamDevice::encrypt_tcp(&forged, [1; 32], STREAM_ID, EncryptPolicy::None);
    assert!(server.read(&hello).is_empty());
    assert!(matches!(
        server.ingest.failure(),
        Some(IngestError::BadHello(_))
    ));
    assert_eq!(server.stats().bad_hellos, 1);
}

#[test]
fn handshake_uid_must_match_certificate_and_access_key() {
    // TLS: the certificate says another UID.
    let mut tls = config(StreamMode::Tls);
    tls.expected_uid = Some("95270000ZZZZZZZZ".into());
    let mut server = Server::new(tls, 1, 100);
    let mut device = StreamDevice::tls(STREAM_ID);
    let handshake = device
        .handshake(&Handshake {
            uid: UID.into(),
            ..Handshake::default()
        })
        .unwrap();
    assert!(server.read(&handshake).is_empty());
    assert!(matches!(
        server.ingest.failure(),
        Some(IngestError::UidMismatch { .. })
    ));
    assert_eq!(server.stats().uid_mismatch, 1);

    // encryptTCP: the access key belongs to another UID.
    let run = |bind: bool| {
        let mut config = config(StreamMode::EncryptTcp);
        config.policy.bind_access_key_to_uid = bind;
        let mut server = Server::new(config, 2, 100);
        let (mut device, hello) = StreamDevice::encrypt_tcp(
            &keys(KEY_INDEX, "95270000OTHERUID"),
            [1; 32],
            STREAM_ID,
            EncryptPolicy::All,
        );
        let reply = server.read(&hello);
        device.receive(&reply).unwrap();
        let handshake = device
            .handshake(&Handshake {
                uid: UID.into(),
                ..Handshake::default()
            })
            .unwrap();
        let reply = server.read(&handshake);
        (server, reply)
    };
    let (server, reply) = run(true);
    assert!(reply.is_empty());
    assert!(matches!(
        server.ingest.failure(),
        Some(IngestError::AccessKeyUidMismatch { .. })
    ));
    assert_eq!(server.stats().uid_mismatch, 1);
    // The platform's behaviour, for broken devices: accepted.
    let (server, reply) = run(false);
    assert!(!reply.is_empty());
    assert!(server.ingest.failure().is_none());
}

#[test]
fn stream_id_is_adopted_after_the_handshake_when_not_configured() {
    let mut config = config(StreamMode::Tls);
    config.stream_id = None;
    let mut server = Server::new(config, 1, 64);
    let mut device = StreamDevice::tls(STREAM_ID);
    let mut bytes = device
        .handshake(&Handshake {
            uid: UID.into(),
            ..Handshake::default()
        })
        .unwrap()
        .to_vec();
    let frames = frames(Codec::H264);
    // The keyframe, then the first audio frame (the first description waits for audio).
    assert!(frames[1].kind == relay::proto::media::FrameKind::Aac);
    for frame in &frames[..2] {
        bytes.extend_from_slice(&device.media(frame).unwrap());
    }
    // All at once: the ingest stops at the handshake, so the caller can bind the stream first.
    server.ingest.receive(&bytes);
    match server.ingest.poll() {
        Some(IngestEvent::Handshake(h)) => assert_eq!(h.uid, UID),
        other => panic!("expected the handshake, got {other:?}"),
    }
    assert_eq!(server.ingest.stats().media_packets, 0);
    assert!(server.ingest.take_output().is_some());
    match server.ingest.poll() {
        Some(IngestEvent::StreamBound { stream_id }) => assert_eq!(stream_id, STREAM_ID),
        other => panic!("expected the stream id, got {other:?}"),
    }
    assert!(matches!(
        server.ingest.poll(),
        Some(IngestEvent::Description(_))
    ));
    let mut counts: HashMap<bool, usize> = HashMap::new();
    while let Some(event) = server.ingest.poll() {
        *counts
            .entry(matches!(event, IngestEvent::Packet(_)))
            .or_default() += 1;
    }
    assert!(counts[&true] >= 2);
}

#[test]
fn ingest_is_send() {
    fn send<T: Send>() {}
    send::<DeviceStreamIngest>();
    send::<StreamDevice>();
}

#[test]
fn copies_stay_at_buffer_turnovers_on_a_long_stream() {
    let mut config = config(StreamMode::EncryptTcp);
    config.receive_buffer_size = 64 * 1024;
    let (mut device, mut server) = connect(
        StreamMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        config,
        21,
        4000,
    );
    let player = ClipPlayer::new(video_clip(Codec::H264), Some(audio_clip()), FPS, START_PTS)
        .looping()
        .take(20 * 75 * 2);
    // The socket delivers the stream cut anywhere, not frame by frame.
    let mut wire = Vec::new();
    for frame in player {
        wire.extend_from_slice(&device.media(&frame).unwrap());
    }
    server.read(&wire);
    let stats = server.stats();
    assert_eq!(stats.video_frames, 20 * 75 * 2 - stats.audio_frames);
    assert!(stats.bytes_received > 10 * 64 * 1024);
    println!("{} receive buffer turnovers", server.turnovers);
    let (copied, total) = server.copied_payload_bytes();
    println!(
        "long stream, 64 KiB receive buffers: {total} payload bytes, {copied} copied ({:.4} per payload byte)",
        copied as f64 / total as f64
    );
    println!(
        "received {} bytes, {} moved at buffer turnovers ({:.4} per byte)",
        stats.bytes_received,
        stats.bytes_copied,
        stats.bytes_copied as f64 / stats.bytes_received as f64
    );
    assert!(
        stats.bytes_copied > 0,
        "buffer turnovers move a partial frame"
    );
    assert!(stats.bytes_copied * 40 < stats.bytes_received);
    assert!(copied * 40 < total);
}
