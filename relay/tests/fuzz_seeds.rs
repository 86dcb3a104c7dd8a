//! Writes the seed inputs of the binary device-protocol fuzz targets (core packets, XML bodies,
//! encryptTCP, device sessions, stream ingest, media frames) with the codecs' own encoders and
//! the recorded clips in `relay/testdata`, so that the fuzzers start from inputs that reach deep
//! into each parser instead of rediscovering magic numbers and signatures.
//!
//! Run by `scripts/fuzz-seeds` (`FUZZ_SEEDS_DIR=… cargo test -p relay --test fuzz_seeds --
//! --ignored`); each seed's layout (the leading byte that picks a mode or a chunking) follows the
//! target's harness in the owning crate's `fuzzing` module.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use relay::proto::media::{Codec, FrameKind, MediaFrame};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{
    Alarm, AlarmSwitch, BatteryState, BodyMessage, Capabilities, ChannelCapabilities, Handshake,
    Heartbeat, HeartbeatReply, KeyframeRequest, PacketExtension, PirConfig, PreviewStart,
    PreviewStartReply, PreviewStop, SnapshotRequest, StreamMode, StreamType, UpgradeStart,
    VideoCodecId,
};
use signal::proto::core_packet::{cmd, encode_packet, CoreHeader, CODE_OK};
use signal::proto::encrypt_tcp::{Direction, FrameEncoder, Hello, SessionKeys};
use signal::secrets::DeviceKeys;
use signal::session::sim::SimDevice;
use signal::session::{DeviceSession, Now, SessionConfig};

const UID: &str = "95270000ABCDEFGH";
/// The device key of `signal::session::fuzzing` (its keep-alive mode derives the pair from it).
const KEY_INDEX: &str = "fuzzKeyIndex0001";
const DEVICE_KEY: &str = "0123456789abcdef0123456789abcdef";
/// The secret the encryptTCP and ingest harnesses use.
const FUZZ_SECRET: &[u8] = b"fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz";
const STREAM_ID: u32 = 7;

struct Seeds {
    dir: PathBuf,
    written: usize,
}

impl Seeds {
    fn put(&mut self, target: &str, name: &str, data: &[u8]) {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
        self.written += data.len();
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
}

/// The Annex-B access units of a clip, in order: each ends with its first VCL NAL unit (an
/// access unit's parameter sets and SEI travel with its slice, as in a device's media frame).
fn access_units(clip: &[u8], is_vcl: impl Fn(u8) -> bool) -> Vec<(bool, Vec<u8>)> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= clip.len() {
        if clip[i..i + 3] == [0, 0, 1] {
            let start = if i > 0 && clip[i - 1] == 0 { i - 1 } else { i };
            starts.push((start, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::new();
    let mut unit_start = 0;
    for (n, &(start, header)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(clip.len(), |next| next.0);
        let Some(&first) = clip.get(header) else {
            break;
        };
        if is_vcl(first) {
            let keyframe = unit_start < start;
            units.push((keyframe, clip[unit_start..end].to_vec()));
            unit_start = end;
        }
    }
    units
}

fn h264_units() -> Vec<(bool, Vec<u8>)> {
    access_units(&fixture("clip_h264.264"), |b| matches!(b & 0x1f, 1 | 5))
}

fn h265_units() -> Vec<(bool, Vec<u8>)> {
    access_units(&fixture("clip_h265.265"), |b| (b >> 1) & 0x3f < 32)
}

/// The first ADTS frames of the AAC clip.
fn aac_frames(count: usize) -> Vec<Vec<u8>> {
    let clip = fixture("clip_aac_16k_mono.aac");
    let mut frames = Vec::new();
    let mut at = 0;
    while frames.len() < count && at + 7 <= clip.len() {
        let length = usize::from(u16::from_be_bytes([clip[at + 3] & 3, clip[at + 4]])) << 3
            | usize::from(clip[at + 5] >> 5);
        if length < 7 || at + length > clip.len() {
            break;
        }
        frames.push(clip[at..at + length].to_vec());
        at += length;
    }
    frames
}

fn media_frame(kind: FrameKind, codec: Codec, pts_us: Option<u64>, payload: &[u8]) -> MediaFrame {
    MediaFrame {
        kind,
        codec,
        pts_us,
        payload: std::iter::once(Bytes::copy_from_slice(payload)).collect(),
    }
}

/// A short H.264 (or H.265) + AAC media stream: a keyframe, `inter` inter frames, audio between.
fn media_stream(codec: Codec, inter: usize) -> Vec<u8> {
    let units = match codec {
        Codec::H265 => h265_units(),
        _ => h264_units(),
    };
    let audio = aac_frames(inter + 1);
    let mut out = BytesMut::new();
    for (n, (keyframe, unit)) in units.iter().take(inter + 1).enumerate() {
        let kind = if *keyframe {
            FrameKind::VideoI
        } else {
            FrameKind::VideoP
        };
        let pts = 1_000_000 + 40_000 * n as u64;
        media_frame(kind, codec, Some(pts), unit)
            .encode(&mut out)
            .unwrap();
        if let Some(aac) = audio.get(n) {
            media_frame(FrameKind::Aac, Codec::Aac, None, aac)
                .encode(&mut out)
                .unwrap();
        }
    }
    out.to_vec()
}

fn packet(out: &mut BytesMut, header: CoreHeader, body: &[u8]) {
    encode_packet(header, &[], body, out).unwrap();
}

fn handshake() -> Handshake {
    Handshake {
        uid: UID.to_owned(),
        family: Some("battery".into()),
        model: Some("Argus 3 Pro".into()),
        firmware: Some("v3.0.0.1889_23031700".into()),
        network_type: Some("wifi".into()),
        carrier: None,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        no_reply: false,
        battery: Some(BatteryState {
            percent: Some(87),
            charging: Some("none".into()),
        }),
    }
}

fn alarm() -> Alarm {
    Alarm {
        channel: 0,
        status: "MD".into(),
        ai_type: "people".into(),
    }
}

fn preview_start() -> PreviewStart {
    PreviewStart {
        channel: 0,
        stream_id: STREAM_ID,
        stream_type: StreamType::Main,
        mode: StreamMode::EncryptTcp,
        port: 61007,
    }
}

/// A signalling link's traffic from the device: handshake, heartbeats, an alarm, replies.
fn device_signalling() -> BytesMut {
    let mut out = BytesMut::new();
    packet(
        &mut out,
        CoreHeader::request(cmd::HANDSHAKE, 1),
        handshake().encode().as_bytes(),
    );
    packet(
        &mut out,
        CoreHeader::request(cmd::HEARTBEAT, 2),
        heartbeat().encode().as_bytes(),
    );
    packet(
        &mut out,
        CoreHeader::request(cmd::ALARM, 3),
        alarm().encode().as_bytes(),
    );
    let reply = PreviewStartReply {
        fps: 15,
        codec: VideoCodecId::H264,
    };
    packet(
        &mut out,
        CoreHeader::response(cmd::PREVIEW_START, STREAM_ID, CODE_OK),
        &reply.encode(),
    );
    let capabilities = Capabilities {
        channels: vec![ChannelCapabilities {
            channel: 0,
            stream_mask: 3,
            ptz_type: 0,
            ptz_control: 0,
            wifi_mode: 1,
        }],
    };
    packet(
        &mut out,
        CoreHeader::response(cmd::CAPABILITIES, 4, CODE_OK),
        capabilities.encode().as_bytes(),
    );
    out
}

/// The server's side: handshake reply, heartbeat reply, requests.
fn server_signalling() -> BytesMut {
    let mut out = BytesMut::new();
    packet(
        &mut out,
        CoreHeader::response(cmd::HANDSHAKE, 1, CODE_OK),
        b"",
    );
    packet(
        &mut out,
        CoreHeader::response(cmd::HEARTBEAT, 2, CODE_OK),
        HeartbeatReply::from_unix_millis(1_700_000_000_123)
            .encode()
            .as_bytes(),
    );
    packet(
        &mut out,
        CoreHeader::request(cmd::PREVIEW_START, STREAM_ID),
        preview_start().encode().as_bytes(),
    );
    packet(
        &mut out,
        CoreHeader::request(cmd::KEYFRAME_REQUEST, 9),
        KeyframeRequest {
            channel: 0,
            stream_type: StreamType::Sub,
        }
        .encode()
        .as_bytes(),
    );
    out
}

fn core_packet_seeds(seeds: &mut Seeds) {
    let device = device_signalling();
    let server = server_signalling();
    for target in ["core_packet", "core_packet_roundtrip"] {
        // First byte: chunk size (seed % 31 + 1).
        seeds.put(
            target,
            "device_signalling",
            &[&[30u8][..], &device].concat(),
        );
        seeds.put(target, "server_signalling", &[&[6u8][..], &server].concat());
        let mut stream = BytesMut::new();
        let units = h264_units();
        packet(
            &mut stream,
            CoreHeader::request(cmd::PREVIEW_START, STREAM_ID),
            &units[0].1[..units[0].1.len().min(1500)],
        );
        seeds.put(target, "stream_packet", &[&[12u8][..], &stream].concat());
        seeds.put(
            target,
            "server_upgrade",
            &[&[17u8][..], &server_upgrade()].concat(),
        );
    }
}

/// A firmware upgrade from the server: start 67 (`Param012`), then the file in command-67
/// requests whose extension says the body is binary (short slices: the fuzz reader's limit is
/// 4 KiB), and the device's replies.
fn server_upgrade() -> BytesMut {
    let firmware = &fixture("clip_h264.264")[..3000];
    let mut out = BytesMut::new();
    let start = UpgradeStart {
        file_name: "IPC_523B188MP.1569_230106789.RLC-812A.IMX415.8MP.REOLINK.pak".into(),
        file_size: firmware.len() as u64,
        factory_reset: false,
    };
    packet(
        &mut out,
        CoreHeader {
            response_code: CODE_OK,
            ..CoreHeader::request(cmd::UPGRADE, 40)
        },
        start.encode().as_bytes(),
    );
    let extension = PacketExtension::BINARY_DATA.encode();
    for (n, slice) in firmware.chunks(1200).enumerate() {
        let header = CoreHeader {
            response_code: CODE_OK,
            ..CoreHeader::request(cmd::UPGRADE, 41 + n as u32)
        };
        encode_packet(header, extension.as_bytes(), slice, &mut out).unwrap();
        packet(
            &mut out,
            CoreHeader::response(cmd::UPGRADE, 41 + n as u32, CODE_OK),
            b"",
        );
    }
    packet(&mut out, CoreHeader::request(cmd::SLEEP, 44), b"");
    out
}

fn body_seeds(seeds: &mut Seeds) {
    let bodies: Vec<(&str, String)> = vec![
        ("handshake", handshake().encode()),
        ("heartbeat", heartbeat().encode()),
        (
            "heartbeat_reply",
            HeartbeatReply::from_unix_millis(1_700_000_000_123).encode(),
        ),
        ("alarm", alarm().encode()),
        ("preview_start", preview_start().encode()),
        (
            "preview_stop",
            PreviewStop {
                channel: 0,
                stream_id: STREAM_ID,
            }
            .encode(),
        ),
        (
            "snapshot",
            SnapshotRequest {
                channel: 0,
                stream_type: StreamType::Sub,
            }
            .encode(),
        ),
        ("alarm_switch", AlarmSwitch { enabled: true }.encode()),
        (
            "upgrade_start",
            UpgradeStart {
                file_name: "Reolink-Duo-2.2143_23042822.BIPC_529MIX32M35B17B6MP.paks".into(),
                file_size: 25_165_824,
                factory_reset: true,
            }
            .encode(),
        ),
        ("binary_extension", PacketExtension::BINARY_DATA.encode()),
        (
            "pir",
            PirConfig {
                enabled: true,
                sensitivity: 50,
                reduce_false_alarm: false,
            }
            .encode(),
        ),
        (
            "capabilities",
            Capabilities {
                channels: vec![
                    ChannelCapabilities {
                        channel: 0,
                        stream_mask: 7,
                        ptz_type: 2,
                        ptz_control: 1,
                        wifi_mode: 1,
                    },
                    ChannelCapabilities {
                        channel: 1,
                        stream_mask: 2,
                        ..ChannelCapabilities::default()
                    },
                ],
            }
            .encode(),
        ),
    ];
    for (name, body) in bodies {
        seeds.put("rop_body", name, body.as_bytes());
    }
    let reply = PreviewStartReply {
        fps: 25,
        codec: VideoCodecId::H265,
    };
    seeds.put("rop_body", "preview_start_reply", &reply.encode());
}

fn encrypt_tcp_seeds(seeds: &mut Seeds) {
    // Same keys as `signal::proto::encrypt_tcp::fuzzing::frames`.
    let keys = SessionKeys::derive(FUZZ_SECRET, &[1; 32], &[2; 32]);
    let pair = AccessKeyPair::derive(KEY_INDEX, DEVICE_KEY.as_bytes(), UID);
    let mut access_key = [0u8; 32];
    access_key.copy_from_slice(pair.access_key.as_bytes());
    let hello = Hello {
        code: 0,
        access_key,
        nonce: [1; 32],
    }
    .encode(FUZZ_SECRET);
    seeds.put("encrypt_tcp_frames", "hello", &hello);
    let device = device_signalling();
    for (name, encrypt, direction) in [
        ("frames_encrypted", true, Direction::DeviceToServer),
        ("frames_plain", false, Direction::DeviceToServer),
        ("frames_server", true, Direction::ServerToDevice),
    ] {
        let mut encoder = FrameEncoder::new(FUZZ_SECRET, &keys, direction);
        let mut wire = BytesMut::new();
        for piece in device.chunks(200) {
            encoder.encode(piece, encrypt, &mut wire).unwrap();
        }
        seeds.put("encrypt_tcp_frames", name, &wire);
    }
}

fn device_session_seeds(seeds: &mut Seeds) {
    let device = device_signalling();
    // Mode 0: signalling, raw (handshake included).
    seeds.put(
        "device_session",
        "signalling_raw",
        &[&[0u8][..], &device].concat(),
    );
    // Mode 1 and 3: the harness sends a valid handshake first; the rest follows it.
    let after_handshake = {
        let mut out = BytesMut::new();
        packet(
            &mut out,
            CoreHeader::request(cmd::HEARTBEAT, 2),
            heartbeat().encode().as_bytes(),
        );
        packet(
            &mut out,
            CoreHeader::request(cmd::ALARM, 3),
            alarm().encode().as_bytes(),
        );
        packet(
            &mut out,
            CoreHeader::response(cmd::PREVIEW_START, 1, CODE_OK),
            &PreviewStartReply {
                fps: 15,
                codec: VideoCodecId::H264,
            }
            .encode(),
        );
        packet(
            &mut out,
            CoreHeader::response(cmd::SNAPSHOT, 2, 201),
            &fixture("clip_h264.264")[..512],
        );
        out
    };
    seeds.put(
        "device_session",
        "signalling_after_handshake",
        &[&[1u8][..], &after_handshake].concat(),
    );
    seeds.put(
        "device_session",
        "keep_alive_framed",
        &[&[3u8][..], &after_handshake].concat(),
    );
    // Mode 2: keep-alive, raw: a hello the session accepts, then frames under the keys it
    // agreed (the harness's server nonce is 32 × 's').
    let pair = AccessKeyPair::derive(KEY_INDEX, DEVICE_KEY.as_bytes(), UID);
    let keys = Arc::new(DeviceKeys {
        current_index: KEY_INDEX.to_owned(),
        keys: [(KEY_INDEX.to_owned(), DEVICE_KEY.to_owned())].into(),
    });
    let now = Now::new(
        Instant::now(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30),
    );
    let mut session = DeviceSession::keep_alive(
        Arc::new(SessionConfig::default()),
        keys,
        [b's'; 32],
        7,
        now.instant,
    );
    let (mut sim, hello) = SimDevice::keep_alive(&pair, [b'c'; 32]);
    session.receive(&hello, now);
    let reply = session.take_output().expect("the server's hello");
    sim.receive(&reply).unwrap();
    assert_eq!(sim.hello_code(), Some(200));
    let mut wire = hello.to_vec();
    wire.extend_from_slice(&sim.handshake(&handshake(), 1));
    wire.extend_from_slice(&sim.heartbeat(&heartbeat(), 2));
    wire.extend_from_slice(&sim.alarm(&alarm(), 3));
    seeds.put(
        "device_session",
        "keep_alive_raw",
        &[&[2u8][..], &wire].concat(),
    );
}

/// The core packets of a device stream connection: handshake, then media in command-3 packets.
fn stream_core_packets(codec: Codec) -> BytesMut {
    let mut out = BytesMut::new();
    packet(
        &mut out,
        CoreHeader::request(cmd::HANDSHAKE, 1),
        Handshake {
            uid: UID.to_owned(),
            ..Handshake::default()
        }
        .encode()
        .as_bytes(),
    );
    let media = media_stream(codec, 2);
    for piece in media.chunks(1400) {
        packet(
            &mut out,
            CoreHeader::request(cmd::PREVIEW_START, STREAM_ID),
            piece,
        );
    }
    out
}

fn ingest_seeds(seeds: &mut Seeds) {
    // First byte: mode = seed % 3 (TLS, encryptTCP, TCP), chunk = (seed >> 3) % 61 + 1, HMAC
    // checked unless bit 7; the server nonce is 32 × seed.
    let tls_seed = 0x78; // mode 0, chunks of 16
    seeds.put(
        "device_ingest",
        "tls_h264",
        &[&[tls_seed][..], &stream_core_packets(Codec::H264)].concat(),
    );
    seeds.put(
        "device_ingest",
        "tls_h265",
        &[&[tls_seed][..], &stream_core_packets(Codec::H265)].concat(),
    );
    let pair = AccessKeyPair::derive(KEY_INDEX, DEVICE_KEY.as_bytes(), UID);
    let mut access_key = [0u8; 32];
    access_key.copy_from_slice(pair.access_key.as_bytes());
    for (name, seed, encrypt) in [
        ("encrypt_tcp_h264", 0x79u8, true),
        ("tcp_h264", 0x7a, false),
    ] {
        let client_nonce = [b'c'; 32];
        let hello = Hello {
            code: 0,
            access_key,
            nonce: client_nonce,
        }
        .encode(FUZZ_SECRET);
        let keys = SessionKeys::derive(FUZZ_SECRET, &client_nonce, &[seed; 32]);
        let mut encoder = FrameEncoder::new(FUZZ_SECRET, &keys, Direction::DeviceToServer);
        let mut wire = BytesMut::from(&hello[..]);
        for piece in stream_core_packets(Codec::H264).chunks(1024) {
            encoder.encode(piece, encrypt, &mut wire).unwrap();
        }
        seeds.put("device_ingest", name, &[&[seed][..], &wire].concat());
    }
}

fn media_seeds(seeds: &mut Seeds) {
    // First byte: chunk size (seed % 29 + 1).
    seeds.put(
        "media_frames",
        "h264_aac",
        &[&[28u8][..], &media_stream(Codec::H264, 2)].concat(),
    );
    seeds.put(
        "media_frames",
        "h265_aac",
        &[&[10u8][..], &media_stream(Codec::H265, 1)].concat(),
    );
}

#[test]
#[ignore = "writes fuzz seeds; run by scripts/fuzz-seeds"]
fn write_fuzz_seeds() {
    let dir = std::env::var_os("FUZZ_SEEDS_DIR").expect("FUZZ_SEEDS_DIR names the seed directory");
    let mut seeds = Seeds {
        dir: PathBuf::from(dir),
        written: 0,
    };
    core_packet_seeds(&mut seeds);
    body_seeds(&mut seeds);
    encrypt_tcp_seeds(&mut seeds);
    device_session_seeds(&mut seeds);
    ingest_seeds(&mut seeds);
    media_seeds(&mut seeds);
    assert!(
        seeds.written < 200_000,
        "seeds too large: {}",
        seeds.written
    );
}
