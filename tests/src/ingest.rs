//! A simulated camera connected to the relay's device stream ingest, sans-IO: the deployment's
//! key store, the ingest's configuration, and the server side of one connection that reads the
//! camera's bytes cut at random places the way a socket delivers them. Shared by the ingest's
//! pipeline test (what comes out) and its allocation count (what it costs).

use std::sync::Arc;

use bytes::Bytes;
use loadgen::device::clip::{AudioClip, ClipPlayer, VideoClip};
use loadgen::device::{Chunking, EncryptPolicy, StreamDevice};
use relay::hub::{RtpPacket, StreamDescription};
use relay::ingest::SecretLookup;
use relay::ingest::{DeviceStreamIngest, IngestConfig, IngestEvent, IngestStats, KeyLookup};
use relay::proto::media::{Codec, MediaFrame};
use signal::proto::access_key::{secret_for, split_access_key, AccessKeyPair};
use signal::proto::body::{Handshake, StreamMode};
use signal::proto::encrypt_tcp::HELLO_OK;

/// The simulated camera's UID.
pub const UID: &str = "95270000ABCDEFGH";
/// The deployment's current key index.
pub const KEY_INDEX: &str = "currentKeyIndex1";
/// A key index the deployment has replaced (hellos with it are answered 400).
pub const OLD_KEY_INDEX: &str = "oldKeyIndex00001";
/// The deployment's device key, from which access key secrets derive.
pub const DEVICE_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The preview's stream id.
pub const STREAM_ID: u32 = 4242;
/// Frame rate of the clips.
pub const FPS: u32 = 25;
/// PTS of the first frame, µs.
pub const START_PTS: u64 = 5_000_000;
/// The video track's RTP timestamp offset in [`config`].
pub const VIDEO_OFFSET: u32 = 1000;

/// A file of `loadgen/testdata`.
pub fn fixture(path: &str) -> Bytes {
    let path = format!("{}/../loadgen/testdata/{path}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// The 3-second video clip (75 frames, a keyframe every 25) of `codec`.
pub fn video_clip(codec: Codec) -> Arc<VideoClip> {
    let file = match codec {
        Codec::H265 => "ropdev_h265_3s.265",
        _ => "ropdev_h264_3s.264",
    };
    Arc::new(VideoClip::from_annex_b(codec, fixture(file)).unwrap())
}

/// The 3-second AAC clip (16 kHz mono).
pub fn audio_clip() -> Arc<AudioClip> {
    Arc::new(AudioClip::from_adts(fixture("ropdev_aac_16k_3s.aac")).unwrap())
}

/// The media frames of one play of the clips of `codec`, as the camera sends them.
pub fn frames(codec: Codec) -> Vec<MediaFrame> {
    ClipPlayer::new(video_clip(codec), Some(audio_clip()), FPS, START_PTS).collect()
}

/// The access key pair of `uid` under `key_index`.
pub fn keys(key_index: &str, uid: &str) -> AccessKeyPair {
    AccessKeyPair::derive(key_index, DEVICE_KEY, uid)
}

/// The deployment's key store: one current and one stale key index.
pub fn lookup() -> SecretLookup {
    Box::new(|access_key: &str| {
        let Some((index, hash)) = split_access_key(access_key) else {
            return KeyLookup::Unknown;
        };
        match index {
            KEY_INDEX => KeyLookup::Current(secret_for(DEVICE_KEY, hash)),
            OLD_KEY_INDEX => KeyLookup::Stale(secret_for(DEVICE_KEY, hash)),
            _ => KeyLookup::Unknown,
        }
    })
}

/// The ingest's configuration for `mode`: default policies (HMAC and sequence verified), the
/// preview's stream id, a video timestamp offset.
pub fn config(mode: StreamMode) -> IngestConfig {
    let mut config = IngestConfig::new(mode, [0x5a; 32]);
    config.stream_id = Some(STREAM_ID);
    config.video.timestamp_offset = VIDEO_OFFSET;
    config
}

/// Deterministic xorshift for cut points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The server side of one connection: the ingest, what it produced, and the address ranges of
/// the receive buffers the "socket" wrote into.
pub struct Server {
    /// The ingest under test.
    pub ingest: DeviceStreamIngest,
    rng: Rng,
    max_cut: usize,
    /// Descriptions [`Server::read`] received.
    pub descriptions: Vec<StreamDescription>,
    /// Packets [`Server::read`] received.
    pub packets: Vec<RtpPacket>,
    /// Handshakes [`Server::read`] received.
    pub handshakes: Vec<Handshake>,
    /// Address ranges (start, length) the reads of [`Server::read`] wrote into.
    pub regions: Vec<(usize, usize)>,
    /// Reads that did not start where the previous one ended: a new receive buffer.
    pub turnovers: u64,
    /// Reads made.
    pub reads: u64,
    next_read_at: Option<usize>,
}

impl Server {
    /// An ingest with [`lookup`] as its key store; reads are cut at 1..=`max_cut` bytes.
    pub fn new(config: IngestConfig, seed: u64, max_cut: usize) -> Self {
        Server {
            ingest: DeviceStreamIngest::new(config, lookup()).unwrap(),
            rng: Rng(seed | 1),
            max_cut,
            descriptions: Vec::new(),
            packets: Vec::new(),
            handshakes: Vec::new(),
            regions: Vec::new(),
            turnovers: 0,
            reads: 0,
            next_read_at: None,
        }
    }

    /// Reads `bytes` as a socket would deliver them (random cuts), processes everything,
    /// keeps the events and the read regions, and returns what the server sends back.
    pub fn read(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        let mut events = Vec::new();
        let mut regions = std::mem::take(&mut self.regions);
        self.feed(
            bytes,
            |region| {
                // Memory of a freed receive buffer may come back: forget what it held.
                regions.retain(|&(start, len)| {
                    start + len <= region.0 || start >= region.0 + region.1
                });
                regions.push(region);
            },
            |event| events.push(event),
            &mut reply,
        );
        self.regions = regions;
        for event in events {
            match event {
                IngestEvent::Description(d) => self.descriptions.push(d),
                IngestEvent::Packet(p) => self.packets.push(p),
                IngestEvent::Handshake(h) => self.handshakes.push(h),
                _ => {}
            }
        }
        reply
    }

    /// Reads `bytes` as a socket would deliver them (random cuts) and hands every event to
    /// `on_event` as the connection task would, keeping nothing: reads into the ingest's
    /// receive buffer, commits, polls. `on_read` sees each read's region (start, length);
    /// what the server sends back is appended to `reply`.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_read: impl FnMut((usize, usize)),
        mut on_event: impl FnMut(IngestEvent),
        reply: &mut Vec<u8>,
    ) {
        while !bytes.is_empty() {
            let cut = 1 + self.rng.below(self.max_cut);
            let buffer = self.ingest.receive_buffer();
            let n = cut.min(buffer.len()).min(bytes.len());
            buffer[..n].copy_from_slice(&bytes[..n]);
            let region = (buffer.as_ptr() as usize, n);
            self.reads += 1;
            if self.next_read_at.is_some_and(|at| at != region.0) {
                self.turnovers += 1;
            }
            self.next_read_at = Some(region.0 + n);
            on_read(region);
            self.ingest.commit(n);
            bytes = &bytes[n..];
            while let Some(event) = self.ingest.poll() {
                on_event(event);
            }
            while let Some(out) = self.ingest.take_output() {
                reply.extend_from_slice(&out);
            }
        }
    }

    /// The ingest's counters.
    pub fn stats(&self) -> IngestStats {
        self.ingest.stats()
    }

    /// (payload bytes of the packets not in memory the socket wrote into, all payload bytes).
    pub fn copied_payload_bytes(&self) -> (u64, u64) {
        let mut regions = self.regions.clone();
        regions.sort_unstable();
        // The end of the read region holding `ptr`, if any.
        let region_end = |ptr: usize| {
            let i = regions.partition_point(|&(start, _)| start <= ptr);
            let (start, len) = *regions.get(i.checked_sub(1)?)?;
            (ptr < start + len).then_some(start + len)
        };
        let (mut total, mut copied) = (0u64, 0u64);
        for packet in &self.packets {
            for slice in [packet.payload(), packet.payload_tail()] {
                total += slice.len() as u64;
                // A slice may run over several reads: walk it read by read.
                let mut ptr = slice.as_ptr() as usize;
                let end = ptr + slice.len();
                while ptr < end {
                    match region_end(ptr) {
                        Some(region_end) => ptr = region_end.min(end),
                        None => {
                            copied += 1;
                            ptr += 1;
                        }
                    }
                }
            }
        }
        (copied, total)
    }
}

/// A camera and the server, connected; the hello and handshake done. The camera cuts core
/// packets at 3000 body bytes and encryptTCP frames at 1100.
pub fn connect(
    mode: StreamMode,
    policy: EncryptPolicy,
    config: IngestConfig,
    seed: u64,
    max_cut: usize,
) -> (StreamDevice, Server) {
    let mut server = Server::new(config, seed, max_cut);
    let mut device = match mode {
        StreamMode::Tls => StreamDevice::tls(STREAM_ID),
        _ => {
            let (mut device, hello) =
                StreamDevice::encrypt_tcp(&keys(KEY_INDEX, UID), [7; 32], STREAM_ID, policy);
            let reply = server.read(&hello);
            assert_eq!(reply.len(), 100);
            assert!(device.receive(&reply).unwrap().is_empty());
            assert_eq!(device.hello_code(), Some(HELLO_OK));
            device
        }
    };
    device = device.with_chunking(Chunking {
        max_packet_body: 3000,
        max_frame_body: 1100,
    });
    let handshake = device
        .handshake(&Handshake {
            uid: UID.into(),
            model: Some("E1 Outdoor".into()),
            ..Handshake::default()
        })
        .unwrap();
    let reply = server.read(&handshake);
    let replies = device.receive(&reply).unwrap();
    assert_eq!(replies.len(), 1, "one handshake reply");
    assert_eq!(replies[0].header.command, 458);
    assert_eq!(replies[0].header.response_code, 200);
    assert_eq!(server.handshakes.len(), 1);
    assert_eq!(server.ingest.uid(), Some(UID));
    (device, server)
}
