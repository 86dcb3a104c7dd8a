//! encryptTCP: the platform's framing for the keep-alive port (61003) and the "encryptTCP" and
//! "TCP" stream modes (61007). A 100-byte hello each way authenticates the access key and
//! exchanges nonces; then every frame carries a 12-byte header, a body that the sender chose to
//! encrypt or not (the platform's "selective encryption"), and an HMAC-SHA256 trailer.
//!
//! Facts checked against the platform's server (read, not copied):
//! - HMAC keys are the ASCII bytes of the 32-character `secretAccesskey`.
//! - Session key K = HMAC-SHA256(secret, clientNonce || serverNonce); AES-128 key K[0..16], IV
//!   K[16..32]; AES-128-CFB128, one continuous stream per direction, advanced only over the
//!   bodies of encrypted frames.
//! - Frame HMAC covers the 12-byte header and the body as sent (ciphertext when encrypted).
//! - The server's sequence numbers start at 0 and grow by one per frame. Its frames to the
//!   device are always encrypted and padded (with junk) to a multiple of 16, one core packet per
//!   frame; the device's frames form one continuous core-packet stream, no padding.
//! - The platform's server checks neither the frame HMAC nor the sequence, and reads only the low
//!   16 bits of the frame length. We check both (policy knobs for broken devices) and enforce a
//!   length limit.
//!
//! [`FrameDecoder`] works in place on the caller's `BytesMut` receive buffer: it verifies the
//! HMAC over the bytes as sent, decrypts the body where it lies, and splits it off as `Bytes`
//! with no copy and no allocation per frame. [`FrameEncoder`] writes the other direction.

use aes::Aes128;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cfb_mode::cipher::KeyIvInit;
use cfb_mode::{BufDecryptor, BufEncryptor};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of a hello, each way.
pub const HELLO_LEN: usize = 100;
/// Length of the access key in a hello.
pub const ACCESS_KEY_LEN: usize = 32;
/// Length of a nonce.
pub const NONCE_LEN: usize = 32;
/// Length of the HMAC-SHA256 trailer / signature.
pub const MAC_LEN: usize = 32;
/// Length of a frame header.
pub const FRAME_HEADER_LEN: usize = 12;
/// Hello code: accepted.
pub const HELLO_OK: u16 = 200;
/// Hello code: the access key's index is not current (stale key, device must re-register).
pub const HELLO_STALE_KEY: u16 = 400;
/// Default largest frame body: the platform's server reads the length as 16 bits, so devices
/// that work with it send frames with length (body + 32) below 64 KiB.
pub const DEFAULT_MAX_FRAME_BODY: usize = 64 * 1024;

/// Errors of the encryptTCP layer. Each rejection has its own variant so the caller can count
/// it; [`EncryptTcpError::is_fatal`] tells those that lose the framing from single bad frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptTcpError {
    /// The hello is not 100 bytes long or says another length.
    #[error("peer sent a malformed hello: {reason}")]
    MalformedHello {
        /// What is wrong.
        reason: &'static str,
    },
    /// The hello's signature does not match the secret of its access key.
    #[error("peer's hello signature does not match its access key")]
    HelloSignature,
    /// A frame header whose header-length field is not 12.
    #[error("peer sent an encryptTCP frame at stream offset {offset} with header length {header_length} (expected 12)")]
    BadHeaderLength {
        /// Stream offset of the frame.
        offset: u64,
        /// The announced header length.
        header_length: u16,
    },
    /// A frame whose length cannot even hold the HMAC trailer.
    #[error("peer sent an encryptTCP frame at stream offset {offset} with length {length}, shorter than its 32-byte HMAC")]
    LengthTooShort {
        /// Stream offset of the frame.
        offset: u64,
        /// The announced length (body + 32).
        length: u32,
    },
    /// A frame longer than the configured limit.
    #[error("peer sent an encryptTCP frame at stream offset {offset} with a {body_length}-byte body, over the limit of {limit}")]
    FrameTooLong {
        /// Stream offset of the frame.
        offset: u64,
        /// The announced body length.
        body_length: u64,
        /// The configured limit.
        limit: usize,
    },
    /// The frame's HMAC does not match (tampered or forged frame); the frame was dropped.
    #[error("peer sent an encryptTCP frame at stream offset {offset} (sequence {sequence}) whose HMAC does not match; dropped")]
    HmacMismatch {
        /// Stream offset of the frame.
        offset: u64,
        /// Sequence number in its header.
        sequence: u32,
    },
    /// The frame's sequence is not the previous one plus one (replayed or reordered); dropped.
    #[error("peer sent an encryptTCP frame at stream offset {offset} with sequence {got}, expected {expected}; dropped")]
    SequenceMismatch {
        /// Stream offset of the frame.
        offset: u64,
        /// The sequence expected.
        expected: u32,
        /// The sequence received.
        got: u32,
    },
    /// The decoder already hit a fatal error.
    #[error("encryptTCP stream already failed at offset {offset}; the connection must be closed")]
    AlreadyFailed {
        /// Offset of the first fatal error.
        offset: u64,
    },
    /// Our side asked to encode a body too long for the 32-bit length field.
    #[error("internal: encryptTCP body of {body_length} bytes is too long to encode")]
    EncodeTooLong {
        /// Requested body length.
        body_length: usize,
    },
}

impl EncryptTcpError {
    /// True when the stream has lost its framing (close the connection); false for a single
    /// dropped frame after which decoding goes on.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            EncryptTcpError::HmacMismatch { .. } | EncryptTcpError::SequenceMismatch { .. }
        )
    }
}

fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// HMAC-SHA256 of `parts` under `secret`.
fn mac_of(secret: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut mac = keyed_mac(secret);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// One side's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// 0 from the device; [`HELLO_OK`] or [`HELLO_STALE_KEY`] from the server.
    pub code: u16,
    /// The device's access key (32 ASCII characters: key index + UID hash); the server echoes it.
    pub access_key: [u8; ACCESS_KEY_LEN],
    /// This side's nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    /// Parses a hello without checking its signature (the signature key depends on the access
    /// key inside it: look the secret up, then call [`Hello::verify`]). Takes the first 100
    /// bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Hello, EncryptTcpError> {
        let Some(hello) = bytes.get(..HELLO_LEN) else {
            return Err(EncryptTcpError::MalformedHello {
                reason: "shorter than 100 bytes",
            });
        };
        let length = u16::from_le_bytes([hello[0], hello[1]]);
        if usize::from(length) != HELLO_LEN {
            return Err(EncryptTcpError::MalformedHello {
                reason: "length field is not 100",
            });
        }
        let mut access_key = [0u8; ACCESS_KEY_LEN];
        access_key.copy_from_slice(&hello[4..36]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&hello[36..68]);
        Ok(Hello {
            code: u16::from_le_bytes([hello[2], hello[3]]),
            access_key,
            nonce,
        })
    }

    /// Checks the signature (bytes 68..100) of the raw hello `bytes` against `secret`, in
    /// constant time.
    pub fn verify(bytes: &[u8], secret: &[u8]) -> Result<(), EncryptTcpError> {
        let Some(hello) = bytes.get(..HELLO_LEN) else {
            return Err(EncryptTcpError::MalformedHello {
                reason: "shorter than 100 bytes",
            });
        };
        let mut mac = keyed_mac(secret);
        mac.update(&hello[..68]);
        mac.verify_slice(&hello[68..])
            .map_err(|_| EncryptTcpError::HelloSignature)
    }

    /// Parses and verifies in one step, for a side that already knows the secret (the device).
    pub fn parse_verified(bytes: &[u8], secret: &[u8]) -> Result<Hello, EncryptTcpError> {
        let hello = Hello::parse(bytes)?;
        Hello::verify(bytes, secret)?;
        Ok(hello)
    }

    /// The access key as text, when it is ASCII.
    pub fn access_key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.access_key)
            .ok()
            .filter(|s| s.is_ascii())
    }

    /// The 100 bytes of this hello, signed with `secret`.
    pub fn encode(&self, secret: &[u8]) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[0..2].copy_from_slice(&(HELLO_LEN as u16).to_le_bytes());
        out[2..4].copy_from_slice(&self.code.to_le_bytes());
        out[4..36].copy_from_slice(&self.access_key);
        out[36..68].copy_from_slice(&self.nonce);
        let signature = mac_of(secret, &[&out[..68]]);
        out[68..].copy_from_slice(&signature);
        out
    }
}

/// The AES-128 key and CFB IV of a session.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// AES-128 key: K[0..16].
    pub aes_key: [u8; 16],
    /// Initial CFB register: K[16..32].
    pub iv: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// K = HMAC-SHA256(secret, clientNonce || serverNonce).
    pub fn derive(
        secret: &[u8],
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
    ) -> Self {
        let k = mac_of(secret, &[client_nonce, server_nonce]);
        let mut aes_key = [0u8; 16];
        let mut iv = [0u8; 16];
        aes_key.copy_from_slice(&k[..16]);
        iv.copy_from_slice(&k[16..]);
        SessionKeys { aes_key, iv }
    }
}

/// Policy of a [`FrameDecoder`]. Checking is the default; the knobs exist for broken devices
/// (the platform's server checks nothing, so some devices may never have been tested against
/// a checking server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePolicy {
    /// Reject frames whose HMAC trailer does not match.
    pub verify_hmac: bool,
    /// Reject frames whose sequence is not the previous one plus one. The first frame sets the
    /// base unless [`FramePolicy::first_sequence`] is given.
    pub verify_sequence: bool,
    /// The sequence the first frame must carry, when known (the platform's server starts at 0).
    pub first_sequence: Option<u32>,
    /// Largest accepted frame body.
    pub max_body: usize,
}

impl Default for FramePolicy {
    fn default() -> Self {
        Self {
            verify_hmac: true,
            verify_sequence: true,
            first_sequence: None,
            max_body: DEFAULT_MAX_FRAME_BODY,
        }
    }
}

/// A decoded frame: its body in clear, split off the receive buffer without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number from the header.
    pub sequence: u32,
    /// Whether the sender had encrypted the body.
    pub encrypted: bool,
    /// The body in clear (for server -> device frames, one core packet followed by padding).
    pub body: Bytes,
}

/// The fields of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Header length field (12).
    pub header_length: u16,
    /// Encrypted flag (any non-zero value means encrypted, as the platform reads it).
    pub encrypted_flag: u16,
    /// Body length + 32.
    pub length: u32,
    /// Sequence number.
    pub sequence: u32,
}

impl FrameHeader {
    /// Parses the 12 header bytes.
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHeader {
            header_length: u16::from_le_bytes([bytes[0], bytes[1]]),
            encrypted_flag: u16::from_le_bytes([bytes[2], bytes[3]]),
            length: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            sequence: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        }
    }

    /// The 12 header bytes.
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..2].copy_from_slice(&self.header_length.to_le_bytes());
        out[2..4].copy_from_slice(&self.encrypted_flag.to_le_bytes());
        out[4..8].copy_from_slice(&self.length.to_le_bytes());
        out[8..12].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }
}

/// Decoder of one direction's frames, in place in the caller's receive buffer.
pub struct FrameDecoder {
    mac: HmacSha256,
    cipher: BufDecryptor<Aes128>,
    policy: FramePolicy,
    expected_sequence: Option<u32>,
    /// Stream offset (after the hello) of the first byte in the caller's buffer.
    offset: u64,
    failed_at: Option<u64>,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("policy", &self.policy)
            .field("expected_sequence", &self.expected_sequence)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl FrameDecoder {
    /// A decoder for frames signed with `secret` and encrypted under `keys`.
    pub fn new(secret: &[u8], keys: &SessionKeys, policy: FramePolicy) -> Self {
        FrameDecoder {
            mac: keyed_mac(secret),
            cipher: BufDecryptor::<Aes128>::new(&keys.aes_key.into(), &keys.iv.into()),
            policy,
            expected_sequence: policy.first_sequence,
            offset: 0,
            failed_at: None,
        }
    }

    /// Bytes consumed so far (frames decoded or dropped).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many bytes `buf` must hold for the next frame to be complete: 12 while the header is
    /// incomplete (the caller should read more), then the whole frame's length.
    pub fn needed(buf: &[u8]) -> usize {
        match buf.get(..FRAME_HEADER_LEN) {
            Some(h) => FRAME_HEADER_LEN + u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize,
            None => FRAME_HEADER_LEN,
        }
    }

    /// Decodes the next complete frame at the front of `buf`, or returns `Ok(None)` when `buf`
    /// does not hold one yet. On success the frame's bytes are removed from `buf` and its body
    /// is returned as a frozen slice of the same memory.
    ///
    /// A frame rejected for its HMAC or its sequence is removed from `buf` too and reported;
    /// decoding can go on. Rules that keep the cipher stream in step with the sender: a frame
    /// with a bad HMAC whose sequence is the expected one is taken as a tampered genuine frame
    /// (the cipher and the sequence advance over it); a frame with a wrong sequence is taken as
    /// replayed or injected (nothing advances).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, EncryptTcpError> {
        if let Some(offset) = self.failed_at {
            return Err(EncryptTcpError::AlreadyFailed { offset });
        }
        let Some(header_bytes) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let mut fixed = [0u8; FRAME_HEADER_LEN];
        fixed.copy_from_slice(header_bytes);
        let header = FrameHeader::parse(&fixed);
        if usize::from(header.header_length) != FRAME_HEADER_LEN {
            return Err(self.fail(EncryptTcpError::BadHeaderLength {
                offset: self.offset,
                header_length: header.header_length,
            }));
        }
        let Some(body_length) = (header.length as usize).checked_sub(MAC_LEN) else {
            return Err(self.fail(EncryptTcpError::LengthTooShort {
                offset: self.offset,
                length: header.length,
            }));
        };
        if body_length > self.policy.max_body {
            return Err(self.fail(EncryptTcpError::FrameTooLong {
                offset: self.offset,
                body_length: body_length as u64,
                limit: self.policy.max_body,
            }));
        }
        let frame_length = FRAME_HEADER_LEN + body_length + MAC_LEN;
        if buf.len() < frame_length {
            return Ok(None);
        }
        let frame_offset = self.offset;
        self.offset += frame_length as u64;
        let encrypted = header.encrypted_flag != 0;
        let body_end = FRAME_HEADER_LEN + body_length;

        let mac_ok = if self.policy.verify_hmac {
            let mut mac = self.mac.clone();
            mac.update(&buf[..body_end]);
            mac.verify_slice(&buf[body_end..frame_length]).is_ok()
        } else {
            true
        };
        let sequence_ok = match self.expected_sequence {
            Some(expected) if self.policy.verify_sequence => header.sequence == expected,
            _ => true,
        };

        if !sequence_ok {
            buf.advance(frame_length);
            let expected = self.expected_sequence.unwrap_or_default();
            return Err(EncryptTcpError::SequenceMismatch {
                offset: frame_offset,
                expected,
                got: header.sequence,
            });
        }
        self.expected_sequence = Some(header.sequence.wrapping_add(1));
        if encrypted {
            self.cipher.decrypt(&mut buf[FRAME_HEADER_LEN..body_end]);
        }
        if !mac_ok {
            buf.advance(frame_length);
            return Err(EncryptTcpError::HmacMismatch {
                offset: frame_offset,
                sequence: header.sequence,
            });
        }
        let mut frame = buf.split_to(frame_length);
        frame.advance(FRAME_HEADER_LEN);
        frame.truncate(body_length);
        Ok(Some(Frame {
            sequence: header.sequence,
            encrypted,
            body: frame.freeze(),
        }))
    }

    fn fail(&mut self, error: EncryptTcpError) -> EncryptTcpError {
        self.failed_at = Some(self.offset);
        error
    }
}

/// Which way an encoder writes: it decides the padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Server -> device: one core packet per frame; encrypted frames padded to a multiple of 16.
    ServerToDevice,
    /// Device -> server: a continuous core-packet stream across frames, no padding.
    DeviceToServer,
}

/// Encoder of one direction's frames.
pub struct FrameEncoder {
    mac: HmacSha256,
    cipher: BufEncryptor<Aes128>,
    direction: Direction,
    next_sequence: u32,
}

impl std::fmt::Debug for FrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameEncoder")
            .field("direction", &self.direction)
            .field("next_sequence", &self.next_sequence)
            .finish_non_exhaustive()
    }
}

impl FrameEncoder {
    /// An encoder whose first frame has sequence 0 (as the platform's server does).
    pub fn new(secret: &[u8], keys: &SessionKeys, direction: Direction) -> Self {
        FrameEncoder {
            mac: keyed_mac(secret),
            cipher: BufEncryptor::<Aes128>::new(&keys.aes_key.into(), &keys.iv.into()),
            direction,
            next_sequence: 0,
        }
    }

    /// Starts the sequence at `sequence` instead of 0.
    pub fn with_first_sequence(mut self, sequence: u32) -> Self {
        self.next_sequence = sequence;
        self
    }

    /// The sequence number the next frame will carry.
    pub fn next_sequence(&self) -> u32 {
        self.next_sequence
    }

    /// Appends one frame carrying `body` to `out`, encrypted or not (the caller's choice:
    /// selective encryption). Server -> device frames that are encrypted are padded with zeros
    /// to a multiple of 16 (the device parses one core packet per frame and ignores the rest).
    pub fn encode(
        &mut self,
        body: &[u8],
        encrypt: bool,
        out: &mut BytesMut,
    ) -> Result<(), EncryptTcpError> {
        let padding = match self.direction {
            Direction::ServerToDevice if encrypt => (16 - body.len() % 16) % 16,
            _ => 0,
        };
        let padded = body.len() + padding;
        let length = padded
            .checked_add(MAC_LEN)
            .and_then(|l| u32::try_from(l).ok())
            .ok_or(EncryptTcpError::EncodeTooLong {
                body_length: body.len(),
            })?;
        let header = FrameHeader {
            header_length: FRAME_HEADER_LEN as u16,
            encrypted_flag: u16::from(encrypt),
            length,
            sequence: self.next_sequence,
        };
        self.next_sequence = self.next_sequence.wrapping_add(1);
        out.reserve(FRAME_HEADER_LEN + padded + MAC_LEN);
        let start = out.len();
        out.put_slice(&header.to_bytes());
        out.put_slice(body);
        out.put_bytes(0, padding);
        if encrypt {
            self.cipher.encrypt(&mut out[start + FRAME_HEADER_LEN..]);
        }
        let mut mac = self.mac.clone();
        mac.update(&out[start..]);
        out.put_slice(&mac.finalize().into_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed with Node's crypto module (the platform's runtime) from the facts
    // in the module comment: device key "0123456789abcdef0123456789abcdef" under index
    // "testKeyIndex0001", uid "95270000ABCDEFGH".
    const SECRET: &[u8] = b"1oeVItyN4K9SxCfQC3OODZQpiZNgn37Q";
    const ACCESS_KEY: &[u8; 32] = b"testKeyIndex0001777da74e9a46f49c";
    const HELLO_HEX: &str = "64000000746573744b6579496e646578303030313737376461373465396134366634396363636363636363636363636363636363636363636363636363636363636363639b7ed7b673f9ea4d75c7f5da75ad253ef538bb1e5492178cf91d9f5cc308380c";
    const K_HEX: &str = "23361e7fca30dce914a4de3bbc28d52182102d33b973b3b782419e5fba88fc28";
    const FRAME0_HEX: &str = "0c0001004300000000000000864fd03f4387f08ce345e498676599195fb37a9ce4072c5cc0c25a0cc517092584715b8da707e46b453569f047e35a6fa353ddb5292f04a1a0741c53da5d9f63fd73a4";
    const FRAME1_HEX: &str = "0c00010026000000010000006b52e9f90efc38d850ba9e90cf7f580e7e893b7b8e8359e63c95510dd375d6a301b91154f7e1";
    const BODY0: &[u8] = b"hello encrypted world, 35 bytes!!!!";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn keys() -> SessionKeys {
        SessionKeys::derive(SECRET, &[b'c'; 32], &[b's'; 32])
    }

    #[test]
    fn hello_known_answer() {
        let hello = Hello {
            code: 0,
            access_key: *ACCESS_KEY,
            nonce: [b'c'; 32],
        };
        let wire = hello.encode(SECRET);
        assert_eq!(wire.to_vec(), hex(HELLO_HEX));
        assert_eq!(Hello::parse_verified(&wire, SECRET).unwrap(), hello);
        assert_eq!(
            hello.access_key_str(),
            Some("testKeyIndex0001777da74e9a46f49c")
        );
        let mut tampered = wire;
        tampered[40] ^= 1;
        assert_eq!(
            Hello::verify(&tampered, SECRET),
            Err(EncryptTcpError::HelloSignature)
        );
        assert_eq!(
            Hello::verify(&wire, b"another secret"),
            Err(EncryptTcpError::HelloSignature)
        );
        let mut bad_len = wire;
        bad_len[0] = 99;
        assert!(matches!(
            Hello::parse(&bad_len),
            Err(EncryptTcpError::MalformedHello { .. })
        ));
        assert!(matches!(
            Hello::parse(&wire[..99]),
            Err(EncryptTcpError::MalformedHello { .. })
        ));
    }

    #[test]
    fn session_key_known_answer() {
        let k = hex(K_HEX);
        let keys = keys();
        assert_eq!(&keys.aes_key[..], &k[..16]);
        assert_eq!(&keys.iv[..], &k[16..]);
    }

    #[test]
    fn frame_layout_known_answer_both_ways() {
        let mut encoder = FrameEncoder::new(SECRET, &keys(), Direction::DeviceToServer);
        let mut out = BytesMut::new();
        encoder.encode(BODY0, true, &mut out).unwrap();
        assert_eq!(out.to_vec(), hex(FRAME0_HEX));
        out.clear();
        encoder.encode(b"second", true, &mut out).unwrap();
        assert_eq!(out.to_vec(), hex(FRAME1_HEX));

        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys(),
            FramePolicy {
                first_sequence: Some(0),
                ..Default::default()
            },
        );
        let mut buf = BytesMut::from(&hex(FRAME0_HEX)[..]);
        buf.extend_from_slice(&hex(FRAME1_HEX));
        let f0 = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!((f0.sequence, f0.encrypted, &f0.body[..]), (0, true, BODY0));
        let f1 = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!((f1.sequence, &f1.body[..]), (1, &b"second"[..]));
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn decode_is_in_place_and_waits_for_whole_frames() {
        let mut encoder = FrameEncoder::new(SECRET, &keys(), Direction::DeviceToServer);
        let mut wire = BytesMut::new();
        for i in 0..5u8 {
            encoder
                .encode(&vec![i; 100 + usize::from(i)], i % 2 == 0, &mut wire)
                .unwrap();
        }
        let wire = wire.freeze();
        // Feed byte by byte into one receive buffer.
        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let mut buf = BytesMut::with_capacity(wire.len());
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            let base = buf.as_ptr() as usize;
            if let Some(frame) = decoder.decode(&mut buf).unwrap() {
                // The body is a view of the receive buffer, past the 12-byte header.
                assert_eq!(frame.body.as_ptr() as usize, base + FRAME_HEADER_LEN);
                got.push(frame);
            }
        }
        assert_eq!(got.len(), 5);
        for (i, frame) in got.iter().enumerate() {
            assert_eq!(frame.body.to_vec(), vec![i as u8; 100 + i]);
            assert_eq!(frame.encrypted, i % 2 == 0);
        }
    }

    #[test]
    fn server_frames_are_padded_to_16() {
        let mut encoder = FrameEncoder::new(SECRET, &keys(), Direction::ServerToDevice);
        let mut out = BytesMut::new();
        encoder.encode(&[7u8; 30], true, &mut out).unwrap();
        assert_eq!(out.len(), 12 + 32 + 32);
        assert_eq!(u32::from_le_bytes(out[4..8].try_into().unwrap()), 32 + 32);
        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let frame = decoder.decode(&mut out).unwrap().unwrap();
        assert_eq!(&frame.body[..30], &[7u8; 30]);
        assert_eq!(&frame.body[30..], &[0u8; 2]);
        // Plain server frames are not padded.
        let mut out = BytesMut::new();
        encoder.encode(&[7u8; 30], false, &mut out).unwrap();
        assert_eq!(out.len(), 12 + 30 + 32);
    }

    fn stream(frames: &[(&[u8], bool)]) -> Vec<Bytes> {
        let mut encoder = FrameEncoder::new(SECRET, &keys(), Direction::DeviceToServer);
        frames
            .iter()
            .map(|(body, enc)| {
                let mut out = BytesMut::new();
                encoder.encode(body, *enc, &mut out).unwrap();
                out.freeze()
            })
            .collect()
    }

    fn decode_all(
        decoder: &mut FrameDecoder,
        frames: &[Bytes],
    ) -> Vec<Result<Frame, EncryptTcpError>> {
        let mut buf = BytesMut::new();
        for f in frames {
            buf.extend_from_slice(f);
        }
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    #[test]
    fn flipped_ciphertext_bit_is_an_hmac_error_and_the_stream_survives() {
        let long = [0x55u8; 64];
        let mut frames = stream(&[(&long, true), (&long, true), (&long, true)]);
        let mut tampered = frames[1].to_vec();
        tampered[FRAME_HEADER_LEN + 3] ^= 0x10;
        frames[1] = tampered.into();
        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let results = decode_all(&mut decoder, &frames);
        assert_eq!(results.len(), 3);
        assert_eq!(&results[0].as_ref().unwrap().body[..], &long);
        assert_eq!(
            results[1],
            Err(EncryptTcpError::HmacMismatch {
                offset: 108,
                sequence: 1
            })
        );
        assert!(!results[1].as_ref().unwrap_err().is_fatal());
        assert_eq!(&results[2].as_ref().unwrap().body[..], &long);

        // With the check off the tampered frame passes (with one flipped bit and one garbled block).
        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys(),
            FramePolicy {
                verify_hmac: false,
                ..Default::default()
            },
        );
        let results = decode_all(&mut decoder, &frames);
        let body = &results[1].as_ref().unwrap().body;
        assert_eq!(body[3], 0x55 ^ 0x10);
        assert_eq!(&body[32..], &long[32..]);
        assert_eq!(&results[2].as_ref().unwrap().body[..], &long);
    }

    #[test]
    fn replayed_sequence_is_rejected_and_the_stream_survives() {
        let frames = stream(&[
            (b"zero", true),
            (b"one", true),
            (b"two", false),
            (b"three", true),
        ]);
        let replayed = vec![
            frames[0].clone(),
            frames[1].clone(),
            frames[1].clone(),
            frames[2].clone(),
            frames[3].clone(),
        ];
        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let results = decode_all(&mut decoder, &replayed);
        let bodies: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().map(|f| f.body.clone()))
            .collect();
        assert_eq!(bodies[0], Ok(Bytes::from_static(b"zero")));
        assert_eq!(bodies[1], Ok(Bytes::from_static(b"one")));
        assert!(matches!(
            results[2],
            Err(EncryptTcpError::SequenceMismatch {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert_eq!(bodies[3], Ok(Bytes::from_static(b"two")));
        assert_eq!(bodies[4], Ok(Bytes::from_static(b"three")));

        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys(),
            FramePolicy {
                verify_sequence: false,
                ..Default::default()
            },
        );
        let results = decode_all(&mut decoder, &replayed);
        assert!(results.iter().all(Result::is_ok));
        // A wrong first sequence when the first is known.
        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys(),
            FramePolicy {
                first_sequence: Some(5),
                ..Default::default()
            },
        );
        assert!(matches!(
            decode_all(&mut decoder, &frames[..1])[0],
            Err(EncryptTcpError::SequenceMismatch {
                expected: 5,
                got: 0,
                offset: 0
            })
        ));
    }

    #[test]
    fn selective_encryption_keeps_the_cipher_stream_in_step() {
        let bodies: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + usize::from(i) * 7]).collect();
        let frames: Vec<(&[u8], bool)> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (&b[..], i % 3 != 1))
            .collect();
        let wire = stream(&frames);
        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let results = decode_all(&mut decoder, &wire);
        for (i, r) in results.iter().enumerate() {
            let frame = r.as_ref().unwrap();
            assert_eq!(frame.body.to_vec(), bodies[i]);
            assert_eq!(frame.encrypted, i % 3 != 1);
            assert_eq!(frame.sequence, i as u32);
        }
    }

    #[test]
    fn framing_errors_are_fatal() {
        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys(),
            FramePolicy {
                max_body: 100,
                ..Default::default()
            },
        );
        let mut buf = BytesMut::from(
            &FrameHeader {
                header_length: 12,
                encrypted_flag: 0,
                length: 200,
                sequence: 0,
            }
            .to_bytes()[..],
        );
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            EncryptTcpError::FrameTooLong {
                offset: 0,
                body_length: 168,
                limit: 100
            }
        );
        assert!(err.is_fatal());
        assert_eq!(
            decoder.decode(&mut buf),
            Err(EncryptTcpError::AlreadyFailed { offset: 0 })
        );

        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let mut buf = BytesMut::from(
            &FrameHeader {
                header_length: 12,
                encrypted_flag: 0,
                length: 31,
                sequence: 0,
            }
            .to_bytes()[..],
        );
        assert_eq!(
            decoder.decode(&mut buf),
            Err(EncryptTcpError::LengthTooShort {
                offset: 0,
                length: 31
            })
        );
        let mut decoder = FrameDecoder::new(SECRET, &keys(), FramePolicy::default());
        let mut buf = BytesMut::from(
            &FrameHeader {
                header_length: 16,
                encrypted_flag: 0,
                length: 32,
                sequence: 0,
            }
            .to_bytes()[..],
        );
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(EncryptTcpError::BadHeaderLength {
                header_length: 16,
                ..
            })
        ));
    }

    /// Deterministic pseudo-random inputs for the fuzz entry points (no nightly needed).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn fuzz_entry_point_on_noise() {
        for seed in 0..200u64 {
            fuzzing::frames(&noise(seed, 300));
        }
        fuzzing::frames(&hex(FRAME0_HEX));
    }
}

/// Entry point of the fuzz target (`fuzz/fuzz_targets/encrypt_tcp_frames.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    const SECRET: &[u8] = b"fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz";

    /// Arbitrary bytes as a received stream (never panics, every error is reported, the buffer
    /// shrinks on every frame), then the same bytes as bodies of frames we encode, which must
    /// all decode back, encrypted or not, in chunks of any size.
    pub fn frames(data: &[u8]) {
        let keys = SessionKeys::derive(SECRET, &[1; 32], &[2; 32]);
        let _ = Hello::parse(data);
        let _ = Hello::verify(data, SECRET);
        let policy = FramePolicy {
            max_body: 4096,
            ..FramePolicy::default()
        };
        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys,
            FramePolicy {
                verify_hmac: false,
                ..policy
            },
        );
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before),
                Ok(None) => break,
                Err(e) if e.is_fatal() => break,
                Err(_) => assert!(buf.len() < before),
            }
        }

        let Some((&seed, rest)) = data.split_first() else {
            return;
        };
        let direction = if seed & 1 == 0 {
            Direction::DeviceToServer
        } else {
            Direction::ServerToDevice
        };
        let mut encoder = FrameEncoder::new(SECRET, &keys, direction);
        let mut wire = BytesMut::new();
        let bodies: Vec<&[u8]> = rest.chunks(usize::from(seed % 61) + 1).collect();
        for (i, body) in bodies.iter().enumerate() {
            assert!(encoder
                .encode(body, (seed >> (i % 8)) & 1 == 1, &mut wire)
                .is_ok());
        }
        let mut decoder = FrameDecoder::new(
            SECRET,
            &keys,
            FramePolicy {
                first_sequence: Some(0),
                ..policy
            },
        );
        let mut received = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(usize::from(seed % 13) + 1) {
            received.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut received).ok().flatten() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded.len(), bodies.len());
        for (frame, body) in decoded.iter().zip(&bodies) {
            assert_eq!(&frame.body[..body.len()], *body);
        }
    }
}
