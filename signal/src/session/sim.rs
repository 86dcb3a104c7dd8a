//! The device's side of both links, sans-IO: what a camera sends (hello, handshake,
//! heartbeats, alarms, replies) and how it reads the server's bytes. The tests script devices
//! with it; the loadgen's simulated devices can drive real connections with it.

use bytes::{Bytes, BytesMut};

use crate::proto::access_key::AccessKeyPair;
use crate::proto::body::{Alarm, BodyMessage, Handshake, Heartbeat};
use crate::proto::core_packet::{
    cmd, encode_packet, CoreHeader, CorePacket, CorePacketError, CorePacketReader, ReaderConfig,
    CODE_OK,
};
use crate::proto::encrypt_tcp::{
    Direction, EncryptTcpError, FrameDecoder, FrameEncoder, FramePolicy, Hello, SessionKeys,
    HELLO_LEN, HELLO_OK, NONCE_LEN,
};

/// Why the simulated device could not read the server's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The server's hello or a frame was refused.
    #[error("server's encryptTCP bytes refused: {0}")]
    EncryptTcp(#[from] EncryptTcpError),
    /// A core packet from the server was malformed.
    #[error("server's core packet refused: {0}")]
    Packet(#[from] CorePacketError),
}

// One per simulated connection; the size difference between states does not matter.
#[allow(clippy::large_enum_variant)]
enum Crypto {
    /// Signalling: TLS is the caller's; core packets go as they are.
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
    /// The server answered the hello with a code other than 200.
    Refused,
}

/// A simulated device on one link.
pub struct SimDevice {
    crypto: Crypto,
    hello_code: Option<u16>,
    /// Encrypt the frames this device sends (keep-alive); off = the platform's "TCP" mode.
    pub encrypt_frames: bool,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("hello_code", &self.hello_code)
            .finish_non_exhaustive()
    }
}

impl SimDevice {
    /// A device on the signalling link (the caller runs TLS around it).
    pub fn signalling() -> Self {
        SimDevice {
            crypto: Crypto::Plain(CorePacketReader::new(ReaderConfig::signalling())),
            hello_code: None,
            encrypt_frames: false,
        }
    }

    /// A device on the keep-alive link with the access key pair it registered with; returns
    /// it and the 100-byte hello to send first.
    pub fn keep_alive(keys: &AccessKeyPair, client_nonce: [u8; NONCE_LEN]) -> (Self, Bytes) {
        let mut access_key = [0u8; 32];
        let key = keys.access_key.as_bytes();
        let n = key.len().min(32);
        access_key[..n].copy_from_slice(&key[..n]);
        let hello = Hello {
            code: 0,
            access_key,
            nonce: client_nonce,
        }
        .encode(keys.secret.as_bytes());
        let device = SimDevice {
            crypto: Crypto::AwaitHello {
                secret: keys.secret.as_bytes().to_vec(),
                client_nonce,
                reply: Vec::with_capacity(HELLO_LEN),
            },
            hello_code: None,
            encrypt_frames: true,
        };
        (device, Bytes::copy_from_slice(&hello))
    }

    /// The code of the server's hello, once received (keep-alive).
    pub fn hello_code(&self) -> Option<u16> {
        self.hello_code
    }

    /// Reads the server's bytes (split anywhere) and returns the core packets completed.
    pub fn receive(&mut self, mut input: &[u8]) -> Result<Vec<CorePacket>, SimError> {
        let mut packets = Vec::new();
        if let Crypto::AwaitHello {
            secret,
            client_nonce,
            reply,
        } = &mut self.crypto
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
                self.crypto = Crypto::Refused;
                return Ok(packets);
            }
            let keys = SessionKeys::derive(secret, client_nonce, &hello.nonce);
            let policy = FramePolicy {
                first_sequence: Some(0),
                ..FramePolicy::default()
            };
            self.crypto = Crypto::Framed {
                encoder: FrameEncoder::new(secret, &keys, Direction::DeviceToServer),
                decoder: FrameDecoder::new(secret, &keys, policy),
                rx: BytesMut::new(),
            };
        }
        match &mut self.crypto {
            Crypto::Plain(reader) => {
                let mut chunk = Bytes::copy_from_slice(input);
                while let Some(packet) = reader.read(&mut chunk)? {
                    packets.push(packet);
                }
            }
            Crypto::Framed { decoder, rx, .. } => {
                rx.extend_from_slice(input);
                while let Some(frame) = decoder.decode(rx)? {
                    // Server -> device: one core packet per frame, then padding.
                    let (packet, _) = CorePacket::parse_one(&frame.body, u32::MAX)?;
                    packets.push(packet);
                }
            }
            Crypto::AwaitHello { .. } | Crypto::Refused => {}
        }
        Ok(packets)
    }

    /// The wire bytes of one packet from this device (framed on keep-alive).
    pub fn packet(&mut self, header: CoreHeader, body: &[u8]) -> Bytes {
        let mut packet = BytesMut::new();
        // Our own small packets always fit the 32-bit lengths.
        let _ = encode_packet(header, &[], body, &mut packet);
        match &mut self.crypto {
            Crypto::Framed { encoder, .. } => {
                let mut out = BytesMut::new();
                let _ = encoder.encode(&packet, self.encrypt_frames, &mut out);
                out.freeze()
            }
            _ => packet.freeze(),
        }
    }

    /// Raw bytes wrapped as one frame from this device (keep-alive; as is on signalling).
    pub fn frame(&mut self, bytes: &[u8]) -> Bytes {
        match &mut self.crypto {
            Crypto::Framed { encoder, .. } => {
                let mut out = BytesMut::new();
                let _ = encoder.encode(bytes, self.encrypt_frames, &mut out);
                out.freeze()
            }
            _ => Bytes::copy_from_slice(bytes),
        }
    }

    /// Handshake 458.
    pub fn handshake(&mut self, handshake: &Handshake, request_id: u32) -> Bytes {
        let body = handshake.encode();
        self.packet(
            CoreHeader::request(cmd::HANDSHAKE, request_id),
            body.as_bytes(),
        )
    }

    /// Heartbeat 0.
    pub fn heartbeat(&mut self, heartbeat: &Heartbeat, request_id: u32) -> Bytes {
        let body = heartbeat.encode();
        self.packet(
            CoreHeader::request(cmd::HEARTBEAT, request_id),
            body.as_bytes(),
        )
    }

    /// Alarm 33.
    pub fn alarm(&mut self, alarm: &Alarm, request_id: u32) -> Bytes {
        let body = alarm.encode();
        self.packet(CoreHeader::request(cmd::ALARM, request_id), body.as_bytes())
    }

    /// A reply to the server's request `request_id`.
    pub fn reply(&mut self, command: u32, request_id: u32, code: u32, body: &[u8]) -> Bytes {
        self.packet(CoreHeader::response(command, request_id, code), body)
    }

    /// A 200 reply with an XML body.
    pub fn reply_ok(&mut self, command: u32, request_id: u32, body: &impl BodyMessage) -> Bytes {
        let body = body.encode();
        self.reply(command, request_id, CODE_OK, body.as_bytes())
    }
}
