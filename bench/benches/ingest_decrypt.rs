//! Device stream ingest cost, without sockets: in-place encryptTCP decryption with HMAC
//! verification, and the whole ingest (frames, core packets, media demux, H.264 + AAC
//! packetization into hub packets) in each stream mode, as MB/s of received bytes and as ratios
//! against plain (the TLS mode's plaintext, i.e. the ingest without encryptTCP; the TLS record
//! layer itself is not in this figure). The stream is a 2 Mbit/s-like H.264 stream (60 KB
//! keyframes every 25 frames, 8 KB P-frames, with the real SPS/PPS of the loadgen's clip) plus
//! 16 kHz AAC, produced by the loadgen's simulated camera and read in 64 KiB socket reads.
//!
//! `cargo bench -p bench --bench ingest_decrypt` runs the full measurement; `cargo test -p bench
//! --benches` runs a quick smoke pass (no `--bench` argument).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use loadgen::device::clip::{AudioClip, ClipPlayer, VideoClip};
use loadgen::device::{Chunking, EncryptPolicy, StreamDevice};
use relay::ingest::{DeviceStreamIngest, IngestConfig, IngestEvent, KeyLookup};
use relay::proto::media::{Codec, FrameKind, MediaFrame};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{Handshake, StreamMode};
use signal::proto::encrypt_tcp::{Direction, FrameDecoder, FrameEncoder, FramePolicy, SessionKeys};

const UID: &str = "95270000ABCDEFGH";
const STREAM_ID: u32 = 7;
const READ: usize = 64 * 1024;
/// A TCP segment's payload on Ethernet.
const SEGMENT: usize = 1448;

fn fixture(name: &str) -> Bytes {
    let path = format!("{}/../loadgen/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// Bytes without start-code emulation (never two zeros in a row).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// `seconds` of a 25 fps stream: keyframe = the clip's SPS + PPS + a 60 KB IDR slice, then
/// 8 KB P slices; AAC frames from the clip interleaved by time.
fn synthetic_frames(seconds: u64) -> Vec<MediaFrame> {
    let clip = VideoClip::from_annex_b(Codec::H264, fixture("ropdev_h264_3s.264")).unwrap();
    let sets = &clip.access_units[0].nal_units[..2];
    let audio = Arc::new(AudioClip::from_adts(fixture("ropdev_aac_16k_3s.aac")).unwrap());
    let nal = |header: u8, len: usize, seed: u64| {
        let mut out = vec![0, 0, 0, 1, header, 0x88];
        out.extend_from_slice(&noise(len, seed));
        out
    };
    let mut video = Vec::new();
    for i in 0..seconds * 25 {
        let annex_b = if i % 25 == 0 {
            let mut au = Vec::new();
            for set in sets {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(set);
            }
            au.extend_from_slice(&nal(0x65, 60_000, i));
            au
        } else {
            nal(0x41, 8_000, i)
        };
        video.push((i % 25 == 0, Bytes::from(annex_b)));
    }
    // Interleave audio with the player's timing, swapping its video for ours.
    let player = ClipPlayer::new(Arc::new(clip), Some(audio), 25, 0).looping();
    let mut frames = Vec::new();
    let mut next_video = video.into_iter();
    for frame in player {
        if frame.kind.is_video() {
            let Some((keyframe, payload)) = next_video.next() else {
                break;
            };
            frames.push(MediaFrame {
                kind: if keyframe {
                    FrameKind::VideoI
                } else {
                    FrameKind::VideoP
                },
                payload: std::iter::once(payload).collect(),
                ..frame
            });
        } else {
            frames.push(frame);
        }
    }
    frames
}

fn keys() -> AccessKeyPair {
    AccessKeyPair::derive("benchKeyIndex001", b"0123456789abcdef0123456789abcdef", UID)
}

/// The device's bytes for one connection, and the ingest that will read them (hello done).
fn prepare(
    mode: StreamMode,
    policy: EncryptPolicy,
    frames: &[MediaFrame],
) -> (Vec<u8>, IngestConfig) {
    let mut config = IngestConfig::new(mode, [3; 32]);
    config.stream_id = Some(STREAM_ID);
    let mut wire = Vec::new();
    let mut device = match mode {
        StreamMode::Tls => StreamDevice::tls(STREAM_ID),
        _ => {
            let (mut device, hello) =
                StreamDevice::encrypt_tcp(&keys(), [1; 32], STREAM_ID, policy);
            let mut ingest = new_ingest(config.clone());
            ingest.receive(&hello);
            while ingest.poll().is_some() {}
            device.receive(&ingest.take_output().unwrap()).unwrap();
            wire.extend_from_slice(&hello);
            device
        }
    }
    .with_chunking(Chunking {
        max_packet_body: 32 * 1024,
        max_frame_body: 16 * 1024,
    });
    wire.extend_from_slice(
        &device
            .handshake(&Handshake {
                uid: UID.into(),
                ..Handshake::default()
            })
            .unwrap(),
    );
    for frame in frames {
        wire.extend_from_slice(&device.media(frame).unwrap());
    }
    (wire, config)
}

fn new_ingest(config: IngestConfig) -> DeviceStreamIngest {
    let secret = keys().secret;
    DeviceStreamIngest::new(
        config,
        Box::new(move |_| KeyLookup::Current(secret.clone())),
    )
    .unwrap()
}

/// Reads `wire` into a fresh ingest in reads of at most `read` bytes (the memcpy stands for the
/// kernel's copy); returns the RTP packets produced.
fn ingest_once(wire: &[u8], config: &IngestConfig, read: usize) -> usize {
    let mut ingest = new_ingest(config.clone());
    let mut packets = 0;
    let mut rest = wire;
    while !rest.is_empty() {
        let buffer = ingest.receive_buffer();
        let n = buffer.len().min(read).min(rest.len());
        buffer[..n].copy_from_slice(&rest[..n]);
        ingest.commit(n);
        rest = &rest[n..];
        while let Some(event) = ingest.poll() {
            if let IngestEvent::Packet(packet) = event {
                packets += 1;
                black_box(packet);
            }
        }
        let _ = ingest.take_output();
    }
    assert!(ingest.failure().is_none(), "{:?}", ingest.failure());
    packets
}

/// Runs `work` until `budget` has passed; returns MB/s of `bytes` per run.
fn throughput(bytes: usize, budget: Duration, mut work: impl FnMut()) -> f64 {
    work(); // warm up
    let start = Instant::now();
    let mut runs = 0u32;
    while start.elapsed() < budget || runs == 0 {
        work();
        runs += 1;
    }
    bytes as f64 * f64::from(runs) / start.elapsed().as_secs_f64() / 1e6
}

fn decrypt_benchmark(budget: Duration) {
    let secret = b"0123456789abcdef0123456789abcdef";
    let keys = SessionKeys::derive(secret, &[1; 32], &[2; 32]);
    let body = noise(16 * 1024, 9);
    let frames = 64;
    let mut wire = BytesMut::new();
    let mut encoder = FrameEncoder::new(secret, &keys, Direction::DeviceToServer);
    for _ in 0..frames {
        encoder.encode(&body, true, &mut wire).unwrap();
    }
    let policy = FramePolicy {
        verify_sequence: false,
        ..FramePolicy::default()
    };
    let copy_only = throughput(wire.len(), budget, || {
        let buf = BytesMut::from(&wire[..]);
        black_box(buf);
    });
    let mut rates = Vec::new();
    for (name, verify_hmac) in [("decrypt + HMAC", true), ("decrypt only", false)] {
        let rate = throughput(wire.len(), budget, || {
            let mut decoder = FrameDecoder::new(
                secret,
                &keys,
                FramePolicy {
                    verify_hmac,
                    ..policy
                },
            );
            let mut buf = BytesMut::from(&wire[..]);
            let mut n = 0;
            while let Ok(Some(frame)) = decoder.decode(&mut buf) {
                n += frame.body.len();
            }
            assert_eq!(n, body.len() * frames);
        });
        rates.push((name, rate));
    }
    println!("in-place encryptTCP decode, 16 KiB frames (the buffer refill memcpy included):");
    println!(
        "  {:<28} {copy_only:>9.0} MB/s",
        "buffer refill (memcpy) only"
    );
    for (name, rate) in rates {
        println!("  {name:<28} {rate:>9.0} MB/s");
    }
}

fn ingest_benchmark(budget: Duration, seconds: u64) {
    let frames = synthetic_frames(seconds);
    let modes = [
        (
            "plain (TLS plaintext)",
            StreamMode::Tls,
            EncryptPolicy::None,
        ),
        (
            "TCP (framed, none encrypted)",
            StreamMode::Tcp,
            EncryptPolicy::None,
        ),
        (
            "encryptTCP keyframes only",
            StreamMode::EncryptTcp,
            EncryptPolicy::Keyframes,
        ),
        (
            "encryptTCP all frames",
            StreamMode::EncryptTcp,
            EncryptPolicy::All,
        ),
        (
            "keyframes only, HMAC not checked",
            StreamMode::EncryptTcp,
            EncryptPolicy::Keyframes,
        ),
    ];
    println!("ingest of {seconds} s of H.264 (60 KB I / 8 KB P at 25 fps) + AAC, 64 KiB reads:");
    let mut plain = None;
    for (name, mode, policy) in modes {
        let (wire, mut config) = prepare(mode, policy, &frames);
        config.policy.verify_hmac = !name.contains("HMAC not checked");
        let packets = ingest_once(&wire, &config, READ);
        let rate = throughput(wire.len(), budget, || {
            black_box(ingest_once(&wire, &config, READ));
        });
        let base = *plain.get_or_insert(rate);
        println!(
            "  {name:<32} {rate:>8.0} MB/s  {:>5.2}x plain's time  ({} bytes, {packets} RTP packets)",
            base / rate,
            wire.len()
        );
    }
}

/// The ingest with socket-sized reads: a loopback or LAN socket often delivers one TCP segment
/// per read, far less than the read window offered, so what the ingest does per read (zeroing
/// the window, once) shows here and not with full 64 KiB reads.
fn short_read_benchmark(budget: Duration, seconds: u64) {
    let frames = synthetic_frames(seconds);
    println!("the same, {SEGMENT}-byte reads (one TCP segment each):");
    for (name, mode, policy) in [
        (
            "plain (TLS plaintext)",
            StreamMode::Tls,
            EncryptPolicy::None,
        ),
        (
            "encryptTCP all frames",
            StreamMode::EncryptTcp,
            EncryptPolicy::All,
        ),
    ] {
        let (wire, config) = prepare(mode, policy, &frames);
        let rate = throughput(wire.len(), budget, || {
            black_box(ingest_once(&wire, &config, SEGMENT));
        });
        println!("  {name:<32} {rate:>8.0} MB/s");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a quick smoke pass.
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(1)
    };
    decrypt_benchmark(budget);
    let seconds = if full { 8 } else { 2 };
    ingest_benchmark(budget, seconds);
    short_read_benchmark(budget, seconds);
}
