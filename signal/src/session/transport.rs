//! The byte layer under a device session: plain core packets on the signalling link (the TLS
//! record layer is the caller's), and on the keep-alive link the encryptTCP hello followed by
//! frames whose bodies form one continuous core-packet stream (device -> server) or carry one
//! padded, encrypted core packet each (server -> device).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::proto::access_key::{secret_for, split_access_key, KEY_INDEX_LEN};
use crate::proto::core_packet::{
    encode_packet, CoreHeader, CorePacket, CorePacketError, CorePacketReader, ReaderConfig,
};
use crate::proto::encrypt_tcp::{
    Direction, EncryptTcpError, FrameDecoder, FrameEncoder, FramePolicy, Hello, SessionKeys,
    HELLO_LEN, HELLO_OK, HELLO_STALE_KEY, NONCE_LEN,
};
use crate::secrets::DeviceKeys;

use super::events::OfflineReason;

/// Length of the UID hash in an access key.
pub(crate) const UID_HASH_LEN: usize = 16;

pub(crate) struct Transport {
    /// Core packets from the device: TLS plaintext on signalling, frame bodies on keep-alive.
    reader: CorePacketReader,
    /// Keep-alive only. Boxed: the cipher and HMAC states are larger than everything else in
    /// a session, and the signalling link does not need them.
    encrypt_tcp: Option<Box<EncryptTcp>>,
}

// Lives in a box and changes variant once (hello -> framed): the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum EncryptTcp {
    AwaitHello {
        keys: Arc<DeviceKeys>,
        server_nonce: [u8; NONCE_LEN],
        hello: [u8; HELLO_LEN],
        filled: usize,
    },
    Framed {
        decoder: FrameDecoder,
        encoder: FrameEncoder,
        /// Received bytes of an incomplete frame; released whenever empty.
        rx: BytesMut,
        /// The access key's UID hash, bound to the handshake's UID.
        uid_hash: [u8; UID_HASH_LEN],
    },
    Failed,
}

/// The hello was accepted: keys derived, reply written.
pub(crate) struct HelloAccepted;

impl Transport {
    pub(crate) fn tls(max_packet_length: u32) -> Self {
        Transport {
            reader: CorePacketReader::new(reader_config(max_packet_length)),
            encrypt_tcp: None,
        }
    }

    pub(crate) fn encrypt_tcp(
        max_packet_length: u32,
        keys: Arc<DeviceKeys>,
        server_nonce: [u8; NONCE_LEN],
    ) -> Self {
        Transport {
            reader: CorePacketReader::new(reader_config(max_packet_length)),
            encrypt_tcp: Some(Box::new(EncryptTcp::AwaitHello {
                keys,
                server_nonce,
                hello: [0; HELLO_LEN],
                filled: 0,
            })),
        }
    }

    /// The access key's UID hash, once the hello was accepted (keep-alive only).
    pub(crate) fn uid_hash(&self) -> Option<&[u8; UID_HASH_LEN]> {
        match self.encrypt_tcp.as_deref() {
            Some(EncryptTcp::Framed { uid_hash, .. }) => Some(uid_hash),
            _ => None,
        }
    }

    /// Consumes `input`: writes the hello reply to `out` when the hello completes, and
    /// appends every complete core packet to `packets`. On a fatal error the packets decoded
    /// before it are still in `packets`; the caller handles them, then closes.
    pub(crate) fn receive(
        &mut self,
        input: &[u8],
        limits: &TransportLimits,
        out: &mut BytesMut,
        packets: &mut Vec<CorePacket>,
    ) -> Result<Option<HelloAccepted>, OfflineReason> {
        match self.encrypt_tcp.as_deref_mut() {
            None => {
                if !input.is_empty() {
                    let mut chunk = Bytes::copy_from_slice(input);
                    read_packets(&mut self.reader, &mut chunk, packets)?;
                }
                Ok(None)
            }
            Some(link) => link.receive(input, limits, &mut self.reader, out, packets),
        }
    }

    /// Appends one packet to `out`, framed for the link.
    pub(crate) fn send(
        &mut self,
        header: CoreHeader,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SendError> {
        self.send_with_extension(header, &[], body, out)
    }

    /// Appends one packet with an extension block (a firmware slice's) to `out`.
    pub(crate) fn send_with_extension(
        &mut self,
        header: CoreHeader,
        extension: &[u8],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SendError> {
        match self.encrypt_tcp.as_deref_mut() {
            None => encode_packet(header, extension, body, out).map_err(SendError::Packet),
            Some(EncryptTcp::Framed { encoder, .. }) => {
                let mut packet = BytesMut::new();
                encode_packet(header, extension, body, &mut packet).map_err(SendError::Packet)?;
                encoder.encode(&packet, true, out).map_err(SendError::Frame)
            }
            Some(_) => Err(SendError::NoKeys),
        }
    }

    /// Heap bytes held: the encryptTCP state and any incomplete frame.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self.encrypt_tcp.as_deref() {
            None => 0,
            Some(EncryptTcp::Framed { rx, .. }) => {
                std::mem::size_of::<EncryptTcp>() + rx.capacity()
            }
            Some(_) => std::mem::size_of::<EncryptTcp>(),
        }
    }
}

/// Why a packet could not be written (all internal: our own bodies are small).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The core packet could not be encoded.
    #[error("internal: {0}")]
    Packet(CorePacketError),
    /// The encryptTCP frame could not be encoded.
    #[error("internal: {0}")]
    Frame(EncryptTcpError),
    /// The keep-alive hello has not completed: no session keys yet.
    #[error("internal: no encryptTCP session keys before the hello")]
    NoKeys,
}

/// The parts of the session config the byte layer needs.
pub(crate) struct TransportLimits {
    pub(crate) frame_policy: FramePolicy,
}

fn reader_config(max_packet_length: u32) -> ReaderConfig {
    ReaderConfig {
        max_packet_length,
        ..ReaderConfig::signalling()
    }
}

fn read_packets(
    reader: &mut CorePacketReader,
    chunk: &mut Bytes,
    packets: &mut Vec<CorePacket>,
) -> Result<(), OfflineReason> {
    while let Some(packet) = reader.read(chunk).map_err(OfflineReason::BadPacket)? {
        packets.push(packet);
    }
    Ok(())
}

impl EncryptTcp {
    fn receive(
        &mut self,
        mut input: &[u8],
        limits: &TransportLimits,
        reader: &mut CorePacketReader,
        out: &mut BytesMut,
        packets: &mut Vec<CorePacket>,
    ) -> Result<Option<HelloAccepted>, OfflineReason> {
        let mut accepted = None;
        if let EncryptTcp::AwaitHello { hello, filled, .. } = self {
            let take = (HELLO_LEN - *filled).min(input.len());
            hello[*filled..*filled + take].copy_from_slice(&input[..take]);
            *filled += take;
            input = &input[take..];
            if *filled < HELLO_LEN {
                return Ok(None);
            }
            let previous = std::mem::replace(self, EncryptTcp::Failed);
            *self = accept_hello(previous, limits, out)?;
            accepted = Some(HelloAccepted);
        }
        match self {
            EncryptTcp::Framed { decoder, rx, .. } => {
                rx.extend_from_slice(input);
                let result = loop {
                    match decoder.decode(rx) {
                        Ok(Some(frame)) => {
                            let mut body = frame.body;
                            if let Err(reason) = read_packets(reader, &mut body, packets) {
                                break Err(reason);
                            }
                        }
                        Ok(None) => break Ok(accepted),
                        // Device -> server frames carry one continuous packet stream: a dropped
                        // frame loses the packet framing, so every frame error ends the link.
                        Err(error) => break Err(OfflineReason::BadFrame(error)),
                    }
                };
                if rx.is_empty() {
                    *rx = BytesMut::new();
                }
                if result.is_err() {
                    *self = EncryptTcp::Failed;
                }
                result
            }
            EncryptTcp::AwaitHello { .. } | EncryptTcp::Failed => Ok(accepted),
        }
    }
}

/// Checks the device's hello and answers it the way the platform does: the reply echoes the
/// length and access key, carries code 200 (or 400 for a key index that is not current) and
/// the server nonce, signed with the access key's secret. A hello that cannot be verified
/// gets no reply.
fn accept_hello(
    state: EncryptTcp,
    limits: &TransportLimits,
    out: &mut BytesMut,
) -> Result<EncryptTcp, OfflineReason> {
    let EncryptTcp::AwaitHello {
        keys,
        server_nonce,
        hello: raw,
        ..
    } = state
    else {
        return Ok(state);
    };
    let hello = Hello::parse(&raw).map_err(OfflineReason::BadHello)?;
    let malformed = || {
        OfflineReason::BadHello(EncryptTcpError::MalformedHello {
            reason: "access key is not 32 ASCII characters",
        })
    };
    let access_key = hello.access_key_str().ok_or_else(malformed)?;
    let (index, uid_hash) = split_access_key(access_key).ok_or_else(malformed)?;
    let Some(device_key) = keys.key(index) else {
        return Err(OfflineReason::UnknownKeyIndex {
            index: index.to_owned(),
        });
    };
    let secret = secret_for(device_key.as_bytes(), uid_hash);
    Hello::verify(&raw, secret.as_bytes()).map_err(OfflineReason::BadHello)?;
    let current = index == keys.current_index;
    let reply = Hello {
        code: if current { HELLO_OK } else { HELLO_STALE_KEY },
        access_key: hello.access_key,
        nonce: server_nonce,
    };
    out.extend_from_slice(&reply.encode(secret.as_bytes()));
    if !current {
        return Err(OfflineReason::StaleKeyIndex {
            index: index.to_owned(),
        });
    }
    debug_assert_eq!(index.len(), KEY_INDEX_LEN);
    let mut bound_hash = [0u8; UID_HASH_LEN];
    bound_hash.copy_from_slice(uid_hash.as_bytes());
    let session_keys = SessionKeys::derive(secret.as_bytes(), &hello.nonce, &server_nonce);
    Ok(EncryptTcp::Framed {
        decoder: FrameDecoder::new(secret.as_bytes(), &session_keys, limits.frame_policy),
        encoder: FrameEncoder::new(secret.as_bytes(), &session_keys, Direction::ServerToDevice),
        rx: BytesMut::new(),
        uid_hash: bound_hash,
    })
}
