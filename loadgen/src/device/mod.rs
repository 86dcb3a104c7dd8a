//! The simulated ROP camera's stream connection, sans-IO: it produces the bytes a camera sends on
//! 61006 (TLS plaintext: the caller runs TLS) or 61007 (the encryptTCP hello, then frames
//! encrypted per a [`EncryptPolicy`]: the platform's selective encryption) and reads the
//! server's replies. Tests push its bytes into the relay's ingest; the loadgen writes them to
//! sockets. Media comes from [`clip`]: real Annex-B and ADTS clips played as ROP media frames.
//!
//! The signalling and keep-alive sides of a simulated device are `signal::session::sim::SimDevice`
//! (hello, handshake, heartbeats, alarms, replies); [`preview_start_reply`] adds the binary reply
//! to a preview start that the loadgen sends on the signalling link before connecting a stream.

pub mod clip;
pub mod synthetic;

use bytes::{Bytes, BytesMut};
use relay::proto::media::{FrameKind, MediaError, MediaFrame};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{BodyMessage, Handshake, PreviewStartReply};
use signal::proto::core_packet::{
    cmd, encode_packet, CoreHeader, CorePacket, CorePacketError, CorePacketReader, ReaderConfig,
    CODE_OK,
};
use signal::proto::encrypt_tcp::{
    Direction, EncryptTcpError, FrameDecoder, FrameEncoder, FramePolicy, Hello, SessionKeys,
    HELLO_LEN, HELLO_OK, NONCE_LEN,
};
use signal::session::sim::SimDevice;

/// Which encryptTCP frames the device encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptPolicy {
    /// Every frame ("encryptTCP" with full encryption).
    All,
    /// Frames carrying keyframes (and the handshake) only: the platform's selective encryption.
    Keyframes,
    /// None: the platform's "TCP" mode.
    None,
}

impl EncryptPolicy {
    fn encrypts(self, keyframe: bool) -> bool {
        match self {
            EncryptPolicy::All => true,
            EncryptPolicy::Keyframes => keyframe,
            EncryptPolicy::None => false,
        }
    }
}

/// What the simulated device could not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The server's hello or frames were refused.
    #[error("server's encryptTCP bytes refused: {0}")]
    EncryptTcp(#[from] EncryptTcpError),
    /// A core packet from the server was malformed, or ours could not be encoded.
    #[error("core packet: {0}")]
    Packet(#[from] CorePacketError),
    /// A media frame could not be encoded.
    #[error("media frame: {0}")]
    Media(#[from] MediaError),
    /// The server answered the hello with another code than 200.
    #[error("server refused the hello with code {code}")]
    Refused {
        /// The code.
        code: u16,
    },
    /// Frames were asked for before the server's hello arrived.
    #[error("the server's hello has not arrived yet")]
    AwaitingHello,
}

// Changes variant once; the size difference does not matter for one connection.
#[allow(clippy::large_enum_variant)]
enum Link {
    /// TLS plaintext (the caller runs TLS).
    Plain(CorePacketReader),
    AwaitHello {
        secret: Vec<u8>,
        client_nonce: [u8; NONCE_LEN],
        reply: Vec<u8>,
    },
    Framed {
        encoder: FrameEncoder,
        decoder: FrameDecoder,
        rx: BytesMut,
    },
    Refused(u16),
}

/// Sizes the device cuts its stream into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Largest command-3 packet body (media bytes per core packet). The platform's server reads
    /// 16 bits of the length, so cameras stay below 64 KiB.
    pub max_packet_body: usize,
    /// Largest encryptTCP frame body. Frames cut the core-packet stream anywhere.
    pub max_frame_body: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking {
            max_packet_body: 16 * 1024,
            max_frame_body: 10_000,
        }
    }
}

/// One simulated stream connection of a camera.
pub struct StreamDevice {
    link: Link,
    stream_id: u32,
    policy: EncryptPolicy,
    chunking: Chunking,
    next_request_id: u32,
    hello_code: Option<u16>,
    /// Command of the media packets: 3 for a preview, 5 for a recording's replay.
    media_command: u32,
    /// Response code of the media packets: a replay's seek sequence (0 until a seek).
    seek_seq: u32,
}

impl std::fmt::Debug for StreamDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDevice")
            .field("stream_id", &self.stream_id)
            .field("policy", &self.policy)
            .field("hello_code", &self.hello_code)
            .finish_non_exhaustive()
    }
}

impl StreamDevice {
    /// A stream on 61006 (the caller wraps the bytes in TLS with the device certificate).
    pub fn tls(stream_id: u32) -> Self {
        StreamDevice {
            link: Link::Plain(CorePacketReader::new(ReaderConfig::signalling())),
            stream_id,
            policy: EncryptPolicy::None,
            chunking: Chunking::default(),
            next_request_id: 1,
            hello_code: None,
            media_command: cmd::PREVIEW_START,
            seek_seq: 0,
        }
    }

    /// A stream on 61007 with the access key pair the device registered with; returns it and
    /// the 100-byte hello to send first.
    pub fn encrypt_tcp(
        keys: &AccessKeyPair,
        client_nonce: [u8; NONCE_LEN],
        stream_id: u32,
        policy: EncryptPolicy,
    ) -> (Self, Bytes) {
        let mut access_key = [0u8; 32];
        let key = keys.access_key.as_bytes();
        let n = key.len().min(access_key.len());
        access_key[..n].copy_from_slice(&key[..n]);
        let hello = Hello {
            code: 0,
            access_key,
            nonce: client_nonce,
        }
        .encode(keys.secret.as_bytes());
        let device = StreamDevice {
            link: Link::AwaitHello {
                secret: keys.secret.as_bytes().to_vec(),
                client_nonce,
                reply: Vec::with_capacity(HELLO_LEN),
            },
            stream_id,
            policy,
            chunking: Chunking::default(),
            next_request_id: 1,
            hello_code: None,
            media_command: cmd::PREVIEW_START,
            seek_seq: 0,
        };
        (device, Bytes::copy_from_slice(&hello))
    }

    /// Sends a recording's replay: media packets carry command 5 (replay start) instead of 3.
    pub fn replay(mut self) -> Self {
        self.media_command = cmd::REPLAY_START;
        self
    }

    /// A replay seek 123 was accepted: media packets carry `seek_seq` (in the header's response
    /// code) from the next frame on, as a camera marks the media of the new position.
    pub fn seek(&mut self, seek_seq: u32) {
        self.seek_seq = seek_seq;
    }

    /// Changes how the stream is cut into packets and frames.
    pub fn with_chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = Chunking {
            max_packet_body: chunking.max_packet_body.max(1),
            max_frame_body: chunking.max_frame_body.max(1),
        };
        self
    }

    /// Changes the encryption policy from the next frame on.
    pub fn set_policy(&mut self, policy: EncryptPolicy) {
        self.policy = policy;
    }

    /// The stream id media packets carry.
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// The server hello's code, once received.
    pub fn hello_code(&self) -> Option<u16> {
        self.hello_code
    }

    /// The sequence number of the next encryptTCP frame (tests build tampered frames with it).
    pub fn next_frame_sequence(&self) -> Option<u32> {
        match &self.link {
            Link::Framed { encoder, .. } => Some(encoder.next_sequence()),
            _ => None,
        }
    }

    /// Reads the server's bytes (split anywhere): its hello, then its replies.
    pub fn receive(&mut self, mut input: &[u8]) -> Result<Vec<CorePacket>, DeviceError> {
        let mut packets = Vec::new();
        if let Link::AwaitHello {
            secret,
            client_nonce,
            reply,
        } = &mut self.link
        {
            let take = (HELLO_LEN - reply.len()).min(input.len());
            reply.extend_from_slice(&input[..take]);
            input = &input[take..];
            if reply.len() < HELLO_LEN {
                return Ok(packets);
            }
            let hello = Hello::parse_verified(reply, secret)?;
            self.hello_code = Some(hello.code);
            if hello.code != HELLO_OK {
                self.link = Link::Refused(hello.code);
                return Err(DeviceError::Refused { code: hello.code });
            }
            let keys = SessionKeys::derive(secret, client_nonce, &hello.nonce);
            let policy = FramePolicy {
                first_sequence: Some(0),
                ..FramePolicy::default()
            };
            self.link = Link::Framed {
                encoder: FrameEncoder::new(secret, &keys, Direction::DeviceToServer),
                decoder: FrameDecoder::new(secret, &keys, policy),
                rx: BytesMut::new(),
            };
        }
        match &mut self.link {
            Link::Plain(reader) => {
                let mut chunk = Bytes::copy_from_slice(input);
                while let Some(packet) = reader.read(&mut chunk)? {
                    packets.push(packet);
                }
            }
            Link::Framed { decoder, rx, .. } => {
                rx.extend_from_slice(input);
                while let Some(frame) = decoder.decode(rx)? {
                    // Server -> device: one core packet per frame, then padding.
                    let (packet, _) = CorePacket::parse_one(&frame.body, u32::MAX)?;
                    packets.push(packet);
                }
            }
            Link::Refused(code) => return Err(DeviceError::Refused { code: *code }),
            Link::AwaitHello { .. } => {}
        }
        Ok(packets)
    }

    /// The 458 handshake (encrypted unless the policy is [`EncryptPolicy::None`]).
    pub fn handshake(&mut self, handshake: &Handshake) -> Result<Bytes, DeviceError> {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let body = handshake.encode();
        let mut packet = BytesMut::new();
        encode_packet(
            CoreHeader::request(cmd::HANDSHAKE, request_id),
            &[],
            body.as_bytes(),
            &mut packet,
        )?;
        self.frames(&packet, self.policy != EncryptPolicy::None)
    }

    /// One media frame as command-3 packets (5 for a replay) carrying the stream id, framed per
    /// the policy.
    pub fn media(&mut self, frame: &MediaFrame) -> Result<Bytes, DeviceError> {
        let mut media = BytesMut::with_capacity(frame.payload_len() + 32);
        frame.encode(&mut media)?;
        let mut core = BytesMut::with_capacity(media.len() + 24 * (media.len() / 1024 + 1));
        let mut header = CoreHeader::request(self.media_command, self.stream_id);
        header.response_code = self.seek_seq;
        for piece in media.chunks(self.chunking.max_packet_body) {
            encode_packet(header, &[], piece, &mut core)?;
        }
        let encrypt = self.policy.encrypts(frame.kind == FrameKind::VideoI);
        self.frames(&core, encrypt)
    }

    /// Raw core-stream bytes (any packet, even malformed ones), framed per `encrypt`.
    pub fn raw(&mut self, core_stream: &[u8], encrypt: bool) -> Result<Bytes, DeviceError> {
        self.frames(core_stream, encrypt)
    }

    fn frames(&mut self, core_stream: &[u8], encrypt: bool) -> Result<Bytes, DeviceError> {
        match &mut self.link {
            Link::Plain(_) => Ok(Bytes::copy_from_slice(core_stream)),
            Link::Framed { encoder, .. } => {
                let max = self.chunking.max_frame_body;
                let frames = core_stream.len() / max + 1;
                let mut out = BytesMut::with_capacity(core_stream.len() + frames * 44);
                for body in core_stream.chunks(max) {
                    encoder.encode(body, encrypt, &mut out)?;
                }
                Ok(out.freeze())
            }
            Link::AwaitHello { .. } => Err(DeviceError::AwaitingHello),
            Link::Refused(code) => Err(DeviceError::Refused { code: *code }),
        }
    }
}

/// The binary reply to a preview start (command 3) on the signalling link: frame rate and codec.
pub fn preview_start_reply(
    signalling: &mut SimDevice,
    request_id: u32,
    reply: &PreviewStartReply,
) -> Bytes {
    signalling.reply(cmd::PREVIEW_START, request_id, CODE_OK, &reply.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use signal::proto::body::VideoCodecId;

    #[test]
    fn hello_and_frames_follow_the_protocol() {
        let keys = AccessKeyPair::derive(
            "testKeyIndex0001",
            b"0123456789abcdef0123456789abcdef",
            "95270000ABCDEFGH",
        );
        let (mut device, hello) =
            StreamDevice::encrypt_tcp(&keys, [b'c'; 32], 77, EncryptPolicy::Keyframes);
        // The hello is the one signal's known-answer test checks.
        assert_eq!(
            Hello::parse_verified(&hello, keys.secret.as_bytes())
                .unwrap()
                .access_key_str(),
            Some(keys.access_key.as_str())
        );
        assert_eq!(
            device.handshake(&Handshake::default()),
            Err(DeviceError::AwaitingHello)
        );
        let server = Hello {
            code: HELLO_OK,
            access_key: Hello::parse(&hello).unwrap().access_key,
            nonce: [b's'; 32],
        }
        .encode(keys.secret.as_bytes());
        assert!(device.receive(&server).unwrap().is_empty());
        assert_eq!(device.hello_code(), Some(HELLO_OK));
        let handshake = device
            .handshake(&Handshake {
                uid: "95270000ABCDEFGH".into(),
                ..Handshake::default()
            })
            .unwrap();
        assert_eq!(u16::from_le_bytes([handshake[2], handshake[3]]), 1);
        let p_frame = MediaFrame {
            kind: FrameKind::VideoP,
            codec: relay::proto::media::Codec::H264,
            pts_us: Some(40_000),
            payload: std::iter::once(Bytes::from_static(&[0, 0, 0, 1, 0x41, 1, 2])).collect(),
        };
        let wire = device.media(&p_frame).unwrap();
        // Header: length 12, not encrypted (selective policy, P-frame), sequence 1.
        assert_eq!(&wire[..4], &[12, 0, 0, 0]);
        assert_eq!(&wire[8..12], &1u32.to_le_bytes());
        // Core header in the clear: command 3, stream id 77.
        assert_eq!(&wire[12 + 4..12 + 8], &3u32.to_le_bytes());
        assert_eq!(&wire[12 + 12..12 + 16], &77u32.to_le_bytes());
        assert_eq!(&wire[12 + 24..12 + 28], b"01dc");
    }

    #[test]
    fn preview_start_reply_carries_fps_and_codec() {
        let mut signalling = SimDevice::signalling();
        let bytes = preview_start_reply(
            &mut signalling,
            9,
            &PreviewStartReply {
                fps: 25,
                codec: VideoCodecId::H265,
            },
        );
        let (packet, _) = CorePacket::parse_one(&bytes, u32::MAX).unwrap();
        assert_eq!(packet.header.request_id, 9);
        let reply = PreviewStartReply::parse(&packet.body.to_contiguous()).unwrap();
        assert_eq!((reply.fps, reply.codec), (25, VideoCodecId::H265));
    }
}
