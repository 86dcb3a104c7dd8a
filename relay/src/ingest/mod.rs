//! Device stream ingest: what arrives on one stream connection (61006 TLS, 61007 encryptTCP or
//! plain "TCP") turned into RTP packets and a stream description for the [`crate::hub`], sans-IO.
//!
//! The connection task reads socket bytes (or, on 61006, TLS plaintext) straight into the
//! ingest's receive buffer ([`DeviceStreamIngest::receive_buffer`] /
//! [`DeviceStreamIngest::commit`]), then drains [`DeviceStreamIngest::poll`] for events and
//! [`DeviceStreamIngest::take_output`] for bytes to send, and closes the connection when
//! [`DeviceStreamIngest::failure`] says so. Nothing here touches a socket, a clock or glommio,
//! and the whole state is `Send`, so it can move to the device's owner shard with the fd.
//!
//! ```text
//!  receive buffer ──hello──▶ server hello (200 / 400) ─▶ output
//!        │ encryptTCP frames: HMAC + sequence checked, body decrypted in place, split off
//!        ▼ (TLS: plaintext split off as is)
//!  CorePacketReader ──458──▶ handshake: UID checks, 200 reply ─▶ output, Handshake event
//!        │ command 3 bodies, as slices of the receive buffer
//!        ▼
//!  MediaDemuxer ─▶ H.264/H.265/AAC packetizers ─▶ Description + Packet events (payloads are
//!                                                   slices of the receive buffer)
//! ```
//!
//! No payload byte is copied in user space on the way: frames are decrypted where they lie, core
//! bodies and media payloads are `Bytes` slices of the receive buffer, and RTP packets reference
//! them (a fragment straddling two core packets has two slices). The exceptions are small and
//! bounded: the partial frame at the end of a full receive buffer moves to the next buffer, a
//! header split across chunks is assembled in a fixed array, and a payload range over three or
//! more core packets (devices do not send packets that small) is gathered.
//!
//! Nor is anything allocated per frame once a stream is warm: packet lists and slice lists are
//! reused, so what allocates is a new receive buffer when one is full (tested in
//! `tests/tests/ingest_zero_alloc.rs`).
//!
//! Processing is lazy: `poll` does only the work needed for the next event, so after the
//! handshake event the caller can bind the stream id (or hand the connection to another shard)
//! before any media is processed.
//!
//! ## Lost bytes: the resync policy
//! A device's core packets run continuously across encryptTCP frames and its media frames across
//! core packets. A frame with a wrong sequence (replayed or injected) is dropped and counted and
//! loses nothing: it was never part of the stream. A frame dropped for a bad HMAC (tampered in
//! flight: the cipher and the sequence advance over it), or a core or media header
//! refused for its length or magic, therefore leaves the readers mid-packet. The ingest counts
//! the rejection and resynchronises instead of closing: it scans for the next core header that
//! names the stream (command 3, the stream id, sane lengths), then for the next video keyframe
//! header, and restarts there; video resumes on that keyframe (viewers keep their place in the
//! hub and see a gap). More than [`IngestConfig::max_resyncs`] resyncs without a keyframe getting
//! through in between close the connection. Failures of the encryptTCP framing itself (bad header
//! length, frame over the limit) cannot be resynchronised and close the connection.

mod resync;
mod tracks;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rt::ReadBuf;
use signal::proto::access_key::{split_access_key, uid_hash};
use signal::proto::body::{BodyError, BodyMessage, Handshake, StreamMode};
use signal::proto::core_packet::{
    cmd, encode_packet, CoreHeader, CorePacket, CorePacketError, CorePacketReader, ReaderConfig,
    CODE_OK, DEFAULT_STREAM_MAX_LEN, HEADER_LEN,
};
use signal::proto::encrypt_tcp::{
    Direction, EncryptTcpError, FrameDecoder, FrameEncoder, FramePolicy, Hello, SessionKeys,
    DEFAULT_MAX_FRAME_BODY, HELLO_LEN, HELLO_OK, HELLO_STALE_KEY, NONCE_LEN,
};

use crate::hub::{RtpPacket, StreamDescription};
use crate::proto::media::{MediaDemuxer, MediaError, MediaLimits, VIDEO_HEADER_LEN};
use crate::proto::rtp::PacketizerConfigError;

use resync::{Scanner, WINDOW};
use tracks::{FrameOutput, Tracks};

pub use tracks::{AUDIO_TRACK, VIDEO_CLOCK, VIDEO_TRACK};

/// What the caller's key store says about the access key of a hello.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// The key index is current; the access key's secret.
    Current(String),
    /// The key index is known but not current: the hello is answered with 400 (signed with
    /// this secret) and the device must register again.
    Stale(String),
    /// No such key index.
    Unknown,
}

impl std::fmt::Debug for KeyLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyLookup::Current(_) => "Current(..)",
            KeyLookup::Stale(_) => "Stale(..)",
            KeyLookup::Unknown => "Unknown",
        })
    }
}

/// Looks up the secret of an access key (32 ASCII characters: key index + UID hash), e.g. with
/// [`signal::proto::access_key::secret_for`] over the deployment's device keys.
pub type SecretLookup = Box<dyn FnMut(&str) -> KeyLookup + Send>;

/// RTP settings of one track. Random per stream (RFC 3550 section 5.1); a reconnecting device's
/// stream may continue the previous sequence ([`DeviceStreamIngest::next_sequences`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpTrackConfig {
    /// Payload type in the SDP and the packets.
    pub payload_type: u8,
    /// SSRC of the track.
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub initial_sequence: u16,
    /// Added to every RTP timestamp.
    pub timestamp_offset: u32,
}

/// Where the stream a connection carried stands, so that the next connection of the same stream
/// (the device came back after losing its stream connection) continues it for the viewers:
/// the same SSRCs and payload types, the next sequence numbers, and RTP timestamps that go on
/// from the last ones by the time that passed in between. Players then see one source with a
/// gap in time rather than a new source whose timestamps jump back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// Video track settings, `initial_sequence` being the next sequence number to send.
    pub video: RtpTrackConfig,
    /// Audio track settings, likewise.
    pub audio: RtpTrackConfig,
    /// PTS of the last video frame relayed, µs, in the timeline viewers saw (after any shift
    /// an earlier continuation made); `None` when no frame was relayed.
    pub last_pts_us: Option<u64>,
}

/// Checks the platform's server does not make. On by default; a deployment with devices that
/// fail them can turn them off (each rejection is counted either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestPolicy {
    /// Drop encryptTCP frames whose HMAC-SHA256 trailer does not match.
    pub verify_hmac: bool,
    /// Drop encryptTCP frames whose sequence is not the previous plus one (replays).
    pub verify_sequence: bool,
    /// Close the connection when the handshake's UID is not the one the hello's access key was
    /// derived for.
    pub bind_access_key_to_uid: bool,
}

impl Default for IngestPolicy {
    fn default() -> Self {
        IngestPolicy {
            verify_hmac: true,
            verify_sequence: true,
            bind_access_key_to_uid: true,
        }
    }
}

/// Configuration of one stream connection's ingest.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// TLS (61006: the bytes fed are TLS plaintext) or encryptTCP / TCP (61007: hello and frames;
    /// the two differ only in which frames the device encrypts).
    pub mode: StreamMode,
    /// The preview's stream id (the request id of the preview start), when known; otherwise
    /// the first media packet's id is adopted and reported ([`IngestEvent::StreamBound`]).
    pub stream_id: Option<u32>,
    /// The UID the handshake must carry, when known (the certificate's CN on 61006, or the
    /// device the preview was started for).
    pub expected_uid: Option<String>,
    /// Verification policies.
    pub policy: IngestPolicy,
    /// Our hello nonce (random per connection).
    pub server_nonce: [u8; NONCE_LEN],
    /// Largest core packet (extension + body); the platform's server reads 16 bits of the
    /// length, so real devices stay below 64 KiB.
    pub max_packet_length: u32,
    /// Largest encryptTCP frame body.
    pub max_frame_body: usize,
    /// Limits of media frames.
    pub media_limits: MediaLimits,
    /// Largest RTP payload (FU-A / FU fragment size follows from it).
    pub max_rtp_payload: usize,
    /// Video track RTP settings.
    pub video: RtpTrackConfig,
    /// Audio track RTP settings.
    pub audio: RtpTrackConfig,
    /// `s=` of the SDP.
    pub session_name: String,
    /// Address in the SDP's `o=` line.
    pub sdp_origin: String,
    /// Resyncs tolerated without a keyframe getting through in between.
    pub max_resyncs: u32,
    /// Size of each receive buffer allocation; frames are sliced out of it, so it is freed
    /// when the last packet referencing it leaves the hub.
    pub receive_buffer_size: usize,
}

impl IngestConfig {
    /// Defaults for `mode`, with the caller's random hello nonce, SSRCs and sequence starts.
    pub fn new(mode: StreamMode, server_nonce: [u8; NONCE_LEN]) -> Self {
        IngestConfig {
            mode,
            stream_id: None,
            expected_uid: None,
            policy: IngestPolicy::default(),
            server_nonce,
            max_packet_length: DEFAULT_STREAM_MAX_LEN,
            max_frame_body: DEFAULT_MAX_FRAME_BODY * 16,
            media_limits: MediaLimits::default(),
            max_rtp_payload: 1400,
            video: RtpTrackConfig {
                payload_type: 96,
                ssrc: u32::from_le_bytes([
                    server_nonce[0],
                    server_nonce[1],
                    server_nonce[2],
                    server_nonce[3],
                ]),
                initial_sequence: u16::from_le_bytes([server_nonce[4], server_nonce[5]]),
                timestamp_offset: 0,
            },
            audio: RtpTrackConfig {
                payload_type: 97,
                ssrc: u32::from_le_bytes([
                    server_nonce[8],
                    server_nonce[9],
                    server_nonce[10],
                    server_nonce[11],
                ]),
                initial_sequence: u16::from_le_bytes([server_nonce[12], server_nonce[13]]),
                timestamp_offset: 0,
            },
            session_name: "ROP device stream".to_owned(),
            sdp_origin: "0.0.0.0".to_owned(),
            max_resyncs: 16,
            receive_buffer_size: 256 * 1024,
        }
    }
}

/// The configuration cannot work (the operator's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestConfigError {
    /// The RTP settings are invalid.
    #[error("invalid RTP settings: {0}")]
    Rtp(#[from] PacketizerConfigError),
    /// A limit is zero.
    #[error("{field} must not be zero")]
    Zero {
        /// The field.
        field: &'static str,
    },
}

/// Why the connection must be closed. All but `Internal` are the device's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The hello is malformed or its signature does not match its access key's secret.
    #[error("device's encryptTCP hello refused: {0}")]
    BadHello(EncryptTcpError),
    /// The hello's access key names a key index we do not have.
    #[error("device's hello names unknown access key {access_key:?}")]
    UnknownAccessKey {
        /// The access key.
        access_key: String,
    },
    /// The hello's key index is not current; answered with 400.
    #[error("device's access key {access_key:?} has a stale key index; answered 400")]
    StaleAccessKey {
        /// The access key.
        access_key: String,
    },
    /// The encryptTCP framing is lost (bad header length, frame over the limit).
    #[error("device's encryptTCP framing failed: {0}")]
    Frame(EncryptTcpError),
    /// The handshake body is not a valid handshake.
    #[error("device's stream handshake is malformed: {0}")]
    BadHandshake(BodyError),
    /// The handshake's UID is not the expected one (certificate CN or preview's device).
    #[error("device's handshake says UID {got:?}, expected {expected:?}")]
    UidMismatch {
        /// The expected UID.
        expected: String,
        /// The handshake's UID.
        got: String,
    },
    /// The handshake's UID is not the one the hello's access key belongs to.
    #[error("device's handshake UID {uid:?} does not match its access key (UID hash {access_key_hash:?})")]
    AccessKeyUidMismatch {
        /// The handshake's UID.
        uid: String,
        /// The access key's UID hash.
        access_key_hash: String,
    },
    /// Media arrived before the handshake.
    #[error("device sent media before its handshake (core stream offset {offset})")]
    MediaBeforeHandshake {
        /// Core stream offset.
        offset: u64,
    },
    /// Too many resyncs without a keyframe getting through.
    #[error("device's stream lost sync {resyncs} times without a keyframe in between")]
    TooManyResyncs {
        /// Resyncs counted.
        resyncs: u32,
    },
}

/// What the ingest reports, in the order the caller must act on it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum IngestEvent {
    /// The encryptTCP hello was accepted (the reply is in the output).
    HelloAccepted {
        /// The device's access key.
        access_key: String,
    },
    /// The device's handshake (the 200 reply is in the output). Media processing waits until
    /// the next `poll`, so the caller can [`DeviceStreamIngest::set_stream_id`] or hand the
    /// connection over first.
    Handshake(Handshake),
    /// No stream id was configured: the first media packet's id was adopted.
    StreamBound {
        /// The stream id.
        stream_id: u32,
    },
    /// A new or changed description (set it on the hub before pushing the packets after it).
    Description(StreamDescription),
    /// One RTP packet for the hub.
    Packet(RtpPacket),
    /// The replay's first media packet after a seek ([`DeviceStreamIngest::set_seek_floor`]):
    /// what was half read of the old position is dropped and video restarts on a keyframe.
    Sought {
        /// The seek sequence the packets carry from now on.
        seek_seq: u32,
    },
}

/// Counters of one connection, for export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Bytes received (socket bytes on 61007, TLS plaintext on 61006).
    pub bytes_received: u64,
    /// Received bytes copied in user space: the partial frame moved when a receive buffer is
    /// full, and bytes handed in with [`DeviceStreamIngest::receive`].
    pub bytes_copied: u64,
    /// encryptTCP frames accepted.
    pub frames: u64,
    /// Of those, frames the device had encrypted.
    pub encrypted_frames: u64,
    /// Core packets read.
    pub core_packets: u64,
    /// Media (command 3) packets accepted.
    pub media_packets: u64,
    /// Video frames demuxed.
    pub video_frames: u64,
    /// Audio frames demuxed.
    pub audio_frames: u64,
    /// RTP packets produced.
    pub rtp_packets: u64,
    /// RTP payload bytes produced (referenced, not copied).
    pub payload_bytes: u64,
    /// Descriptions produced.
    pub descriptions: u64,
    /// Rejected: malformed or forged hellos.
    pub bad_hellos: u64,
    /// Rejected: hellos with an unknown key index.
    pub unknown_access_keys: u64,
    /// Rejected: hellos with a stale key index (answered 400).
    pub stale_access_keys: u64,
    /// Rejected: frames with a bad HMAC.
    pub bad_hmac: u64,
    /// Rejected: frames with a wrong sequence (replayed, reordered, injected).
    pub bad_sequence: u64,
    /// Rejected: handshakes whose UID is not the expected one or not the access key's.
    pub uid_mismatch: u64,
    /// Rejected: malformed handshakes.
    pub bad_handshakes: u64,
    /// Rejected: media packets of another stream id.
    pub wrong_stream_id: u64,
    /// Rejected: frames, core packets or media frames over their limit.
    pub oversized: u64,
    /// Rejected: media frames with an unknown magic or codec.
    pub unknown_magic: u64,
    /// Rejected: core packets whose extension is longer than the packet.
    pub malformed_packets: u64,
    /// Ignored: core packets other than handshake and media.
    pub unexpected_commands: u64,
    /// Rejected: media before the handshake.
    pub media_before_handshake: u64,
    /// Dropped: AAC frames that are not valid ADTS.
    pub bad_audio_frames: u64,
    /// Resynchronisations after lost bytes.
    pub resyncs: u64,
    /// Bytes skipped while resynchronising.
    pub bytes_skipped: u64,
    /// Video frames dropped while waiting for a keyframe (stream start, after a resync).
    pub video_frames_before_keyframe: u64,
    /// Audio frames dropped while waiting for the first keyframe.
    pub audio_frames_before_keyframe: u64,
    /// Dropped: replay media packets of the position before a seek (still in flight when the
    /// seek was asked; not a rejection).
    pub stale_seek_packets: u64,
    /// Internal: packets the hub type refused (never expected).
    pub internal_errors: u64,
}

impl IngestStats {
    /// Every rejection counter with its metric-friendly name.
    pub fn rejections(&self) -> [(&'static str, u64); 14] {
        [
            ("bad_hello", self.bad_hellos),
            ("unknown_access_key", self.unknown_access_keys),
            ("stale_access_key", self.stale_access_keys),
            ("bad_hmac", self.bad_hmac),
            ("bad_sequence", self.bad_sequence),
            ("uid_mismatch", self.uid_mismatch),
            ("bad_handshake", self.bad_handshakes),
            ("wrong_stream_id", self.wrong_stream_id),
            ("oversized", self.oversized),
            ("unknown_magic", self.unknown_magic),
            ("malformed_packet", self.malformed_packets),
            ("unexpected_command", self.unexpected_commands),
            ("media_before_handshake", self.media_before_handshake),
            ("bad_audio_frame", self.bad_audio_frames),
        ]
    }
}

impl IngestStats {
    /// Adds what changed since `reported` (bytes received in `mode`, rejections, resyncs) to
    /// the shard's media counters, and remembers these counters as reported.
    pub fn report(
        &self,
        reported: &mut IngestStats,
        mode: signal::metrics::IngestMode,
        media: &mut signal::metrics::MediaStats,
    ) {
        media.add_bytes_in(mode, self.bytes_received - reported.bytes_received);
        for ((reason, now), (_, before)) in self.rejections().into_iter().zip(reported.rejections())
        {
            media.add_rejections(reason, now - before);
        }
        media.ingest_resyncs += self.resyncs - reported.resyncs;
        *reported = *self;
    }
}

// Changes variant once (hello -> framed); boxed so the TLS link does not carry cipher state.
enum Link {
    /// TLS plaintext: core packets as they come.
    Plain,
    /// Waiting for the 100-byte hello.
    AwaitHello,
    /// encryptTCP frames.
    Framed(Box<Framed>),
    /// Failed or refused: nothing more is read.
    Closed,
}

struct Framed {
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    /// The access key's UID hash, bound to the handshake's UID.
    uid_hash: String,
}

/// Receive reads start at this size and adapt to what the socket delivers.
const MIN_READ: usize = 4 * 1024;
/// Largest slice handed out for one read.
const MAX_READ: usize = 64 * 1024;

/// The ingest of one device stream connection. See the module documentation.
pub struct DeviceStreamIngest {
    config: IngestConfig,
    secrets: Option<SecretLookup>,
    link: Link,
    /// Received bytes not yet split off (a partial frame, or TLS plaintext not yet read).
    rx: ReadBuf,
    read_size: usize,
    /// Plaintext not yet read by the core reader (a frame body or a TLS chunk).
    chunk: Bytes,
    reader: CorePacketReader,
    core_resync: Option<Scanner>,
    /// Body slices of the current media packet not yet demuxed.
    media_parts: VecDeque<Bytes>,
    demuxer: MediaDemuxer,
    media_resync: Option<Scanner>,
    resyncs_since_keyframe: u32,
    /// Replay media packets below this seek sequence are from before the latest seek.
    seek_floor: u32,
    /// A packet at or above `seek_floor` has arrived since it was set.
    seek_reached: bool,
    handshake: Option<Handshake>,
    stream_id: Option<u32>,
    tracks: Tracks,
    frame_output: FrameOutput,
    events: VecDeque<IngestEvent>,
    output: BytesMut,
    stats: IngestStats,
    failure: Option<IngestError>,
}

impl std::fmt::Debug for DeviceStreamIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStreamIngest")
            .field("mode", &self.config.mode)
            .field("uid", &self.uid())
            .field("stream_id", &self.stream_id)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl DeviceStreamIngest {
    /// An ingest for one connection. `secrets` is asked once, for the hello's access key
    /// (encryptTCP / TCP modes; unused on TLS).
    pub fn new(config: IngestConfig, secrets: SecretLookup) -> Result<Self, IngestConfigError> {
        for (field, value) in [
            ("max_packet_length", config.max_packet_length as usize),
            ("max_frame_body", config.max_frame_body),
            ("receive_buffer_size", config.receive_buffer_size),
        ] {
            if value == 0 {
                return Err(IngestConfigError::Zero { field });
            }
        }
        let tracks = Tracks::new(&config)?;
        let link = match config.mode {
            StreamMode::Tls => Link::Plain,
            StreamMode::EncryptTcp | StreamMode::Tcp => Link::AwaitHello,
        };
        Ok(DeviceStreamIngest {
            reader: CorePacketReader::new(ReaderConfig::stream(config.max_packet_length)),
            demuxer: MediaDemuxer::new(config.media_limits),
            stream_id: config.stream_id,
            rx: ReadBuf::new(),
            read_size: MIN_READ,
            chunk: Bytes::new(),
            core_resync: None,
            media_parts: VecDeque::new(),
            media_resync: None,
            resyncs_since_keyframe: 0,
            seek_floor: 0,
            seek_reached: true,
            handshake: None,
            tracks,
            frame_output: FrameOutput::default(),
            events: VecDeque::new(),
            output: BytesMut::new(),
            stats: IngestStats::default(),
            failure: None,
            secrets: Some(secrets),
            link,
            config,
        })
    }

    /// A writable slice to read received bytes into (initialised, at least 1 byte); call
    /// [`DeviceStreamIngest::commit`] with the count read. Reading here is what keeps the path
    /// zero-copy: frames are decrypted and sliced in this very buffer. The slice is room after
    /// the pending bytes that was zeroed once when first handed out ([`rt::ReadBuf`]), not
    /// before every read.
    pub fn receive_buffer(&mut self) -> &mut [u8] {
        let moved = self.rx.reserve(
            self.read_size,
            self.config.receive_buffer_size.max(self.read_size),
        );
        // A new allocation: the partial frame moved into it.
        self.stats.bytes_copied += moved as u64;
        self.rx.window(self.read_size)
    }

    /// `count` bytes were read into the last [`DeviceStreamIngest::receive_buffer`].
    pub fn commit(&mut self, count: usize) {
        let count = self.rx.commit(count);
        if count == 0 {
            return;
        }
        self.stats.bytes_received += count as u64;
        // Next read: room for twice what this one delivered, within bounds.
        self.read_size = (count * 2).clamp(MIN_READ, MAX_READ);
    }

    /// Received bytes from elsewhere (read-ahead carried by a handoff, tests): copied.
    pub fn receive(&mut self, bytes: &[u8]) {
        let moved = self
            .rx
            .extend_from_slice(bytes, self.config.receive_buffer_size);
        self.stats.bytes_received += bytes.len() as u64;
        self.stats.bytes_copied += (bytes.len() + moved) as u64;
    }

    /// Received bytes in a buffer of the caller's: no copy when `bytes` directly follows the
    /// previous one in the same allocation (or nothing is pending), else appended.
    pub fn receive_owned(&mut self, bytes: BytesMut) {
        self.stats.bytes_received += bytes.len() as u64;
        self.rx.append(bytes);
    }

    /// The next event, doing just the work needed to find it; `None` once everything received
    /// is processed (or the connection failed: see [`DeviceStreamIngest::failure`]).
    pub fn poll(&mut self) -> Option<IngestEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            if self.failure.is_some() || !self.step() {
                return None;
            }
        }
    }

    /// Bytes to send to the device (hello reply, handshake reply), if any.
    pub fn take_output(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// Why the connection must be closed (after sending [`DeviceStreamIngest::take_output`]).
    pub fn failure(&self) -> Option<&IngestError> {
        self.failure.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> IngestStats {
        let mut stats = self.stats;
        for scanner in [&self.core_resync, &self.media_resync]
            .into_iter()
            .flatten()
        {
            stats.bytes_skipped += scanner.skipped;
        }
        stats
    }

    /// The stream mode.
    pub fn mode(&self) -> StreamMode {
        self.config.mode
    }

    /// The handshake's UID, once received.
    pub fn uid(&self) -> Option<&str> {
        self.handshake.as_ref().map(|h| h.uid.as_str())
    }

    /// The handshake, once received.
    pub fn handshake(&self) -> Option<&Handshake> {
        self.handshake.as_ref()
    }

    /// The stream id media is accepted for.
    pub fn stream_id(&self) -> Option<u32> {
        self.stream_id
    }

    /// Binds the stream id (after the handshake named the device and its pending preview).
    pub fn set_stream_id(&mut self, stream_id: u32) {
        self.stream_id = Some(stream_id);
    }

    /// A replay was asked to seek: its media packets carry `seek_seq` (the header's response
    /// code) from the new position on. Packets with a lower one are dropped as the old
    /// position's; the first at or above it starts the media over (video on a keyframe).
    pub fn set_seek_floor(&mut self, seek_seq: u32) {
        if seek_seq != self.seek_floor {
            self.seek_floor = seek_seq;
            self.seek_reached = false;
        }
    }

    /// Sequence numbers the next video and audio packets will carry.
    pub fn next_sequences(&self) -> (u16, u16) {
        self.tracks.next_sequences()
    }

    /// Where this connection's stream stands, for a later connection to continue it
    /// ([`DeviceStreamIngest::continue_stream`]).
    pub fn continuation(&self) -> Continuation {
        let (video, audio) = self.tracks.next_sequences();
        Continuation {
            video: RtpTrackConfig {
                initial_sequence: video,
                ..self.config.video
            },
            audio: RtpTrackConfig {
                initial_sequence: audio,
                ..self.config.audio
            },
            last_pts_us: self.tracks.last_pts_us(),
        }
    }

    /// Continues the stream a previous connection carried ([`Continuation`]), `gap` after its
    /// last media: this connection's first video frame is relayed `gap` after the previous
    /// connection's last one. Only before any media was processed (call it at
    /// [`IngestEvent::StreamBound`]); returns false, changing nothing, once it was.
    pub fn continue_stream(
        &mut self,
        continuation: &Continuation,
        gap: std::time::Duration,
    ) -> bool {
        if self.tracks.has_media() {
            return false;
        }
        let mut config = self.config.clone();
        config.video = continuation.video;
        config.audio = continuation.audio;
        let Ok(mut tracks) = Tracks::new(&config) else {
            return false;
        };
        let gap_us = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
        tracks.resume_at(
            continuation
                .last_pts_us
                .map(|pts| pts.saturating_add(gap_us)),
        );
        self.config = config;
        self.tracks = tracks;
        true
    }

    /// Whether the stream description is known.
    pub fn is_described(&self) -> bool {
        self.tracks.is_described()
    }

    /// Bytes held in buffers (pending partial frame and its allocation).
    pub fn buffered_bytes(&self) -> usize {
        self.rx.filled().len()
            + self.rx.room()
            + self.chunk.len()
            + self.media_parts.iter().map(Bytes::len).sum::<usize>()
    }

    /// One unit of work; false when the input is exhausted.
    fn step(&mut self) -> bool {
        if let Some(part) = self.media_parts.pop_front() {
            self.demux(part);
            return true;
        }
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            self.read_core(chunk);
            return true;
        }
        self.next_chunk()
    }

    /// Takes the next plaintext chunk off the receive buffer.
    fn next_chunk(&mut self) -> bool {
        match &mut self.link {
            Link::Closed => false,
            Link::Plain => {
                // Whole core packets when the reader is between packets, so that a body is one
                // slice (TLS records are small; a body over several would be gathered).
                if self.core_resync.is_none() && self.reader.is_idle() {
                    let Some(length) = self.rx.filled().get(8..12) else {
                        return false;
                    };
                    let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]);
                    let total = HEADER_LEN + length as usize;
                    if length <= self.config.max_packet_length {
                        if self.rx.filled().len() < total {
                            return false;
                        }
                        self.chunk = self.rx.filled_mut().split_to(total).freeze();
                        return true;
                    }
                }
                if self.rx.filled().is_empty() {
                    return false;
                }
                self.chunk = self.rx.filled_mut().split().freeze();
                true
            }
            Link::AwaitHello => {
                if self.rx.filled().len() < HELLO_LEN {
                    return false;
                }
                let raw = self.rx.filled_mut().split_to(HELLO_LEN);
                self.on_hello(&raw);
                true
            }
            Link::Framed(framed) => match framed.decoder.decode(self.rx.filled_mut()) {
                Ok(Some(frame)) => {
                    self.stats.frames += 1;
                    self.stats.encrypted_frames += u64::from(frame.encrypted);
                    self.chunk = frame.body;
                    true
                }
                Ok(None) => false,
                Err(EncryptTcpError::HmacMismatch { .. }) => {
                    self.stats.bad_hmac += 1;
                    self.lose_core_sync();
                    true
                }
                // A replayed or injected frame was never part of the stream: nothing was lost.
                Err(EncryptTcpError::SequenceMismatch { .. }) => {
                    self.stats.bad_sequence += 1;
                    true
                }
                Err(error) => {
                    if matches!(error, EncryptTcpError::FrameTooLong { .. }) {
                        self.stats.oversized += 1;
                    }
                    self.fail(IngestError::Frame(error));
                    false
                }
            },
        }
    }

    fn on_hello(&mut self, raw: &[u8]) {
        let hello = match Hello::parse(raw) {
            Ok(hello) => hello,
            Err(error) => {
                self.stats.bad_hellos += 1;
                return self.fail(IngestError::BadHello(error));
            }
        };
        let Some((access_key, uid_hash)) = hello.access_key_str().and_then(|key| {
            split_access_key(key).map(|(_, hash)| (key.to_owned(), hash.to_owned()))
        }) else {
            self.stats.bad_hellos += 1;
            return self.fail(IngestError::BadHello(EncryptTcpError::MalformedHello {
                reason: "access key is not 32 ASCII characters",
            }));
        };
        let lookup = match self.secrets.take() {
            Some(mut lookup) => lookup(&access_key),
            None => KeyLookup::Unknown,
        };
        let (secret, current) = match lookup {
            KeyLookup::Current(secret) => (secret, true),
            KeyLookup::Stale(secret) => (secret, false),
            KeyLookup::Unknown => {
                self.stats.unknown_access_keys += 1;
                return self.fail(IngestError::UnknownAccessKey { access_key });
            }
        };
        if let Err(error) = Hello::verify(raw, secret.as_bytes()) {
            self.stats.bad_hellos += 1;
            return self.fail(IngestError::BadHello(error));
        }
        let reply = Hello {
            code: if current { HELLO_OK } else { HELLO_STALE_KEY },
            access_key: hello.access_key,
            nonce: self.config.server_nonce,
        };
        self.output
            .extend_from_slice(&reply.encode(secret.as_bytes()));
        if !current {
            self.stats.stale_access_keys += 1;
            return self.fail(IngestError::StaleAccessKey { access_key });
        }
        let keys = SessionKeys::derive(secret.as_bytes(), &hello.nonce, &self.config.server_nonce);
        let policy = FramePolicy {
            verify_hmac: self.config.policy.verify_hmac,
            verify_sequence: self.config.policy.verify_sequence,
            first_sequence: None,
            max_body: self.config.max_frame_body,
        };
        self.link = Link::Framed(Box::new(Framed {
            decoder: FrameDecoder::new(secret.as_bytes(), &keys, policy),
            encoder: FrameEncoder::new(secret.as_bytes(), &keys, Direction::ServerToDevice),
            uid_hash,
        }));
        self.events
            .push_back(IngestEvent::HelloAccepted { access_key });
    }

    fn read_core(&mut self, mut chunk: Bytes) {
        if let Some(scanner) = self.core_resync.as_mut() {
            let stream_id = self.stream_id;
            let max = self.config.max_packet_length;
            let Some(found) = scanner.scan(&chunk, |w| plausible_media_packet(w, stream_id, max))
            else {
                return;
            };
            self.stats.bytes_skipped += scanner.skipped;
            self.core_resync = None;
            self.reader = CorePacketReader::new(ReaderConfig::stream(max));
            let mut carried = found.carried;
            // Fewer bytes than a header: the reader keeps them and returns nothing.
            while let Ok(Some(packet)) = self.reader.read(&mut carried) {
                self.on_packet(packet);
            }
            chunk = found.rest;
        }
        match self.reader.read(&mut chunk) {
            Ok(Some(packet)) => self.on_packet(packet),
            Ok(None) => {}
            Err(error) => {
                match error {
                    CorePacketError::TooLong { .. } => self.stats.oversized += 1,
                    _ => self.stats.malformed_packets += 1,
                }
                self.lose_core_sync();
            }
        }
        // A packet may have failed the connection (wrong UID, media before handshake).
        if !chunk.is_empty() && self.failure.is_none() {
            self.chunk = chunk;
        }
    }

    fn on_packet(&mut self, packet: CorePacket) {
        self.stats.core_packets += 1;
        match packet.header.command {
            // Live media carries preview start's id, a recording's replay start's.
            cmd::PREVIEW_START | cmd::REPLAY_START => self.on_media_packet(packet),
            cmd::HANDSHAKE => self.on_handshake(&packet),
            _ => self.stats.unexpected_commands += 1,
        }
    }

    fn on_handshake(&mut self, packet: &CorePacket) {
        if self.handshake.is_some() {
            self.stats.unexpected_commands += 1;
            return;
        }
        let handshake = match Handshake::parse(&packet.body.to_contiguous()) {
            Ok(handshake) => handshake,
            Err(error) => {
                self.stats.bad_handshakes += 1;
                return self.fail(IngestError::BadHandshake(error));
            }
        };
        if let Some(expected) = &self.config.expected_uid {
            if *expected != handshake.uid {
                self.stats.uid_mismatch += 1;
                let error = IngestError::UidMismatch {
                    expected: expected.clone(),
                    got: handshake.uid,
                };
                return self.fail(error);
            }
        }
        if let Link::Framed(framed) = &self.link {
            if self.config.policy.bind_access_key_to_uid
                && uid_hash(&handshake.uid) != framed.uid_hash
            {
                self.stats.uid_mismatch += 1;
                let error = IngestError::AccessKeyUidMismatch {
                    uid: handshake.uid,
                    access_key_hash: framed.uid_hash.clone(),
                };
                return self.fail(error);
            }
        }
        let header = CoreHeader::response(cmd::HANDSHAKE, packet.header.request_id, CODE_OK);
        self.send(header, &[]);
        self.handshake = Some(handshake.clone());
        self.events.push_back(IngestEvent::Handshake(handshake));
    }

    fn on_media_packet(&mut self, packet: CorePacket) {
        if self.handshake.is_none() {
            self.stats.media_before_handshake += 1;
            let offset = self.reader.offset();
            return self.fail(IngestError::MediaBeforeHandshake { offset });
        }
        let id = packet.header.request_id;
        match self.stream_id {
            Some(expected) if expected != id => {
                self.stats.wrong_stream_id += 1;
                return;
            }
            Some(_) => {}
            None => {
                self.stream_id = Some(id);
                self.events
                    .push_back(IngestEvent::StreamBound { stream_id: id });
            }
        }
        if packet.header.command == cmd::REPLAY_START {
            let seek_seq = packet.header.response_code;
            if seek_seq < self.seek_floor {
                self.stats.stale_seek_packets += 1;
                return;
            }
            if !self.seek_reached {
                // The new position starts here: nothing half read of the old one continues it.
                self.seek_reached = true;
                self.media_parts.clear();
                self.media_resync = None;
                self.demuxer = MediaDemuxer::new(self.config.media_limits);
                self.tracks.lost_sync();
                self.events.push_back(IngestEvent::Sought { seek_seq });
            }
        }
        self.stats.media_packets += 1;
        self.media_parts.extend(packet.body.parts().iter().cloned());
        self.reader.recycle(packet.body);
    }

    fn demux(&mut self, mut part: Bytes) {
        if let Some(scanner) = self.media_resync.as_mut() {
            let limits = self.config.media_limits;
            let Some(found) = scanner.scan(&part, |w| plausible_keyframe(w, &limits)) else {
                return;
            };
            self.stats.bytes_skipped += scanner.skipped;
            self.media_resync = None;
            self.demuxer = MediaDemuxer::new(limits);
            if !found.rest.is_empty() {
                self.media_parts.push_front(found.rest);
            }
            if !found.carried.is_empty() {
                self.media_parts.push_front(found.carried);
            }
            return;
        }
        match self.demuxer.read(&mut part) {
            Ok(Some(frame)) => {
                let mut output = std::mem::take(&mut self.frame_output);
                self.tracks.frame(&frame, &mut self.stats, &mut output);
                if let Some(description) = output.description.take() {
                    self.stats.descriptions += 1;
                    self.events.push_back(IngestEvent::Description(description));
                }
                if output
                    .packets
                    .first()
                    .is_some_and(RtpPacket::is_keyframe_start)
                {
                    self.resyncs_since_keyframe = 0;
                }
                self.events
                    .extend(output.packets.drain(..).map(IngestEvent::Packet));
                self.frame_output = output;
                self.demuxer.recycle(frame);
            }
            Ok(None) => {}
            Err(error) => {
                match error {
                    MediaError::PayloadTooLong { .. } | MediaError::ExtraHeaderTooLong { .. } => {
                        self.stats.oversized += 1
                    }
                    _ => self.stats.unknown_magic += 1,
                }
                self.lose_media_sync();
            }
        }
        // After a failure (too many resyncs) nothing more is read: keep no leftover.
        if !part.is_empty() && self.failure.is_none() {
            self.media_parts.push_front(part);
        }
    }

    /// The core stream lost bytes: find the next media packet header, then the next keyframe.
    fn lose_core_sync(&mut self) {
        self.chunk = Bytes::new();
        self.media_parts.clear();
        if let Some(scanner) = self.core_resync.take() {
            self.stats.bytes_skipped += scanner.skipped;
        }
        self.core_resync = Some(Scanner::default());
        self.reader = CorePacketReader::new(ReaderConfig::stream(self.config.max_packet_length));
        self.lose_media_sync();
    }

    /// The media stream lost its framing: find the next keyframe header.
    fn lose_media_sync(&mut self) {
        if let Some(scanner) = self.media_resync.take() {
            self.stats.bytes_skipped += scanner.skipped;
        }
        self.media_resync = Some(Scanner::default());
        self.tracks.lost_sync();
        self.stats.resyncs += 1;
        self.resyncs_since_keyframe += 1;
        if self.resyncs_since_keyframe > self.config.max_resyncs {
            let resyncs = self.resyncs_since_keyframe;
            self.fail(IngestError::TooManyResyncs { resyncs });
        }
    }

    /// Appends one packet to the output (a frame of its own on encryptTCP, encrypted as the
    /// platform's server does).
    fn send(&mut self, header: CoreHeader, body: &[u8]) {
        let mut packet = BytesMut::with_capacity(HEADER_LEN + body.len());
        if encode_packet(header, &[], body, &mut packet).is_err() {
            return;
        }
        match &mut self.link {
            Link::Framed(framed) => {
                let _ = framed.encoder.encode(&packet, true, &mut self.output);
            }
            _ => self.output.extend_from_slice(&packet),
        }
    }

    fn fail(&mut self, error: IngestError) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.link = Link::Closed;
        self.chunk = Bytes::new();
        self.media_parts.clear();
    }
}

/// A core header that can start a media packet of this stream.
fn plausible_media_packet(window: &[u8; WINDOW], stream_id: Option<u32>, max_length: u32) -> bool {
    let mut fixed = [0u8; HEADER_LEN];
    fixed.copy_from_slice(&window[..HEADER_LEN]);
    let header = CoreHeader::parse(&fixed);
    header.magic <= 1
        && matches!(header.command, cmd::PREVIEW_START | cmd::REPLAY_START)
        && stream_id.is_none_or(|id| header.request_id == id)
        && header.length > 0
        && header.length <= max_length
        && header.extension_length <= header.length
}

/// A video keyframe header within the limits.
fn plausible_keyframe(window: &[u8; WINDOW], limits: &MediaLimits) -> bool {
    let h = &window[..VIDEO_HEADER_LEN];
    let field = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    h[0].is_ascii_digit()
        && h[1] == b'0'
        && &h[2..4] == b"dc"
        && (&h[4..8] == b"H264" || &h[4..8] == b"H265")
        && field(8) > 0
        && field(8) <= limits.max_video_payload
        && field(12) <= limits.max_extra_header
}

/// Entry point of the fuzz target (`fuzz/fuzz_targets/device_ingest.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The secret every fuzzed access key maps to.
    pub const SECRET: &str = "fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzz";

    /// Arbitrary bytes into an ingest in each mode (the first byte picks the mode and how the
    /// bytes are cut): never panics, buffers stay bounded, events are well-formed.
    pub fn ingest(data: &[u8]) {
        let Some((&seed, rest)) = data.split_first() else {
            return;
        };
        let mode = match seed % 3 {
            0 => StreamMode::Tls,
            1 => StreamMode::EncryptTcp,
            _ => StreamMode::Tcp,
        };
        let mut config = IngestConfig::new(mode, [seed; NONCE_LEN]);
        config.max_packet_length = 4096;
        config.max_frame_body = 4096;
        config.max_rtp_payload = 100;
        config.media_limits = MediaLimits {
            max_video_payload: 1 << 16,
            ..MediaLimits::default()
        };
        config.policy.verify_hmac = seed & 0x80 == 0;
        let lookup: SecretLookup = Box::new(|_| KeyLookup::Current(SECRET.to_owned()));
        let Ok(mut ingest) = DeviceStreamIngest::new(config, lookup) else {
            return;
        };
        let step = usize::from(seed >> 3) % 61 + 1;
        for piece in rest.chunks(step) {
            let buffer = ingest.receive_buffer();
            let n = piece.len().min(buffer.len());
            buffer[..n].copy_from_slice(&piece[..n]);
            ingest.commit(n);
            if n < piece.len() {
                ingest.receive(&piece[n..]);
            }
            while let Some(event) = ingest.poll() {
                if let IngestEvent::Packet(packet) = event {
                    assert!(packet.len() <= 100 + 16);
                }
            }
            assert!(ingest.media_parts.is_empty() && ingest.chunk.is_empty());
        }
        let _ = ingest.take_output();
        let _ = ingest.stats();
    }
}
