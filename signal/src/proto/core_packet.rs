//! The ROP core packet: the 24-byte little-endian header, optional extension XML and body that
//! every device connection speaks after provisioning (signalling, keep-alive, stream). Shared by
//! the server, the loadgen's simulated device and the fuzz targets.
//!
//! [`CorePacketReader`] is a streaming, sans-IO reader: it is fed `Bytes` chunks as they come off
//! a socket (or out of encryptTCP frames) and yields whole packets. A body that lies in one chunk
//! is a slice of that chunk; a body that spans chunks is a list of slices ([`ByteChunks`]) unless
//! the reader is configured to gather it (signalling, where bodies are small XML). Media bodies
//! (command 3 on stream connections) are never gathered. The platform's server trusts a 32-bit
//! length (and then reads 16 bits of it); this reader enforces a configured limit instead.

use bytes::{Bytes, BytesMut};
use nom::number::complete::le_u32;
use smallvec::SmallVec;

/// Length of the core header.
pub const HEADER_LEN: usize = 24;
/// Default packet length limit (extension + body) for signalling and keep-alive links: the
/// platform's server reads only the low 16 bits of the length, so real devices stay below it.
pub const DEFAULT_SIGNALLING_MAX_LEN: u32 = 64 * 1024;
/// Default packet length limit on stream connections, where command-3 packets carry media.
pub const DEFAULT_STREAM_MAX_LEN: u32 = 1024 * 1024;

/// Value of the header's first field in a request.
pub const MAGIC_REQUEST: u32 = 0;
/// Value of the header's first field in a response.
pub const MAGIC_RESPONSE: u32 = 1;

/// Response code: success.
pub const CODE_OK: u32 = 200;
/// Response code: a snapshot chunk that is the last one.
pub const CODE_LAST_CHUNK: u32 = 201;
/// Response code: failure.
pub const CODE_ERROR: u32 = 400;

/// Command ids (header offset 4), as the platform names them in `rop-protocol.md`.
pub mod cmd {
    /// Heartbeat (device -> server), answered with the server time.
    pub const HEARTBEAT: u32 = 0;
    /// Preview start (server -> device); also the command of every media packet.
    pub const PREVIEW_START: u32 = 3;
    /// Preview stop.
    pub const PREVIEW_STOP: u32 = 4;
    /// Replay start.
    pub const REPLAY_START: u32 = 5;
    /// Replay stop.
    pub const REPLAY_STOP: u32 = 7;
    /// Recording file information.
    pub const RECORD_INFO: u32 = 13;
    /// PTZ control.
    pub const PTZ: u32 = 18;
    /// Alarm (device -> server).
    pub const ALARM: u32 = 33;
    /// Firmware upgrade.
    pub const UPGRADE: u32 = 67;
    /// General configuration, get.
    pub const GENERAL_CONFIG_GET: u32 = 104;
    /// General configuration, set.
    pub const GENERAL_CONFIG_SET: u32 = 105;
    /// Snapshot (chunked reply, response code 201 on the last chunk).
    pub const SNAPSHOT: u32 = 109;
    /// Wi-Fi information, get.
    pub const WIFI_GET: u32 = 116;
    /// Wi-Fi information, set.
    pub const WIFI_SET: u32 = 117;
    /// Replay seek.
    pub const REPLAY_SEEK: u32 = 123;
    /// Recording calendar.
    pub const RECORD_CALENDAR: u32 = 142;
    /// Request a keyframe.
    pub const KEYFRAME_REQUEST: u32 = 189;
    /// Capabilities.
    pub const CAPABILITIES: u32 = 199;
    /// Wi-Fi test.
    pub const WIFI_TEST: u32 = 200;
    /// PIR configuration, get.
    pub const PIR_CONFIG_GET: u32 = 212;
    /// PIR configuration, set.
    pub const PIR_CONFIG_SET: u32 = 213;
    /// Put a battery device to sleep (no body).
    pub const SLEEP: u32 = 233;
    /// Handshake, the first packet of every link.
    pub const HANDSHAKE: u32 = 458;
    /// Recording search.
    pub const RECORD_SEARCH: u32 = 459;
    /// Wake a battery device (keep-alive link, no body).
    pub const WAKE_UP: u32 = 460;
    /// Alarm push switch, get.
    pub const ALARM_SWITCH_GET: u32 = 461;
    /// Alarm push switch, set.
    pub const ALARM_SWITCH_SET: u32 = 462;
    /// Network information report (device -> server).
    pub const NETWORK_INFO_REPORT: u32 = 464;

    /// A short name for logs and metrics; `None` for ids this project does not know.
    pub fn name(command: u32) -> Option<&'static str> {
        Some(match command {
            HEARTBEAT => "heartbeat",
            PREVIEW_START => "preview_start",
            PREVIEW_STOP => "preview_stop",
            REPLAY_START => "replay_start",
            REPLAY_STOP => "replay_stop",
            RECORD_INFO => "record_info",
            PTZ => "ptz",
            ALARM => "alarm",
            UPGRADE => "upgrade",
            GENERAL_CONFIG_GET => "general_config_get",
            GENERAL_CONFIG_SET => "general_config_set",
            SNAPSHOT => "snapshot",
            WIFI_GET => "wifi_get",
            WIFI_SET => "wifi_set",
            REPLAY_SEEK => "replay_seek",
            RECORD_CALENDAR => "record_calendar",
            KEYFRAME_REQUEST => "keyframe_request",
            CAPABILITIES => "capabilities",
            WIFI_TEST => "wifi_test",
            PIR_CONFIG_GET => "pir_config_get",
            PIR_CONFIG_SET => "pir_config_set",
            SLEEP => "sleep",
            HANDSHAKE => "handshake",
            RECORD_SEARCH => "record_search",
            WAKE_UP => "wake_up",
            ALARM_SWITCH_GET => "alarm_switch_get",
            ALARM_SWITCH_SET => "alarm_switch_set",
            NETWORK_INFO_REPORT => "network_info_report",
            _ => return None,
        })
    }
}

/// The 24-byte core header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoreHeader {
    /// 0 request, 1 response. Devices are not consistent; nothing relies on it on receive.
    pub magic: u32,
    /// Command id, see [`cmd`].
    pub command: u32,
    /// Length of extension + body.
    pub length: u32,
    /// Request id; replies echo it.
    pub request_id: u32,
    /// 200 ok, 400 error, 201 last snapshot chunk; on media packets the replay seek sequence.
    pub response_code: u32,
    /// Length of the extension XML that precedes the body.
    pub extension_length: u32,
}

impl CoreHeader {
    /// A request header; lengths are filled in when the packet is encoded.
    pub fn request(command: u32, request_id: u32) -> Self {
        Self {
            magic: MAGIC_REQUEST,
            command,
            request_id,
            ..Self::default()
        }
    }

    /// A response header echoing `request_id`.
    pub fn response(command: u32, request_id: u32, response_code: u32) -> Self {
        Self {
            magic: MAGIC_RESPONSE,
            command,
            request_id,
            response_code,
            ..Self::default()
        }
    }

    /// Parses the fixed header (no validation of lengths: see [`CoreHeader::validate`]).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        fn fields(i: &[u8]) -> nom::IResult<&[u8], CoreHeader> {
            let (i, magic) = le_u32(i)?;
            let (i, command) = le_u32(i)?;
            let (i, length) = le_u32(i)?;
            let (i, request_id) = le_u32(i)?;
            let (i, response_code) = le_u32(i)?;
            let (i, extension_length) = le_u32(i)?;
            Ok((
                i,
                CoreHeader {
                    magic,
                    command,
                    length,
                    request_id,
                    response_code,
                    extension_length,
                },
            ))
        }
        match fields(bytes) {
            Ok((_, header)) => header,
            // 24 bytes always hold six u32s.
            Err(_) => unreachable!("a 24-byte array holds the whole header"),
        }
    }

    /// Checks the lengths against `max_length`; `offset` is the header's stream offset.
    pub fn validate(&self, max_length: u32, offset: u64) -> Result<(), CorePacketError> {
        if self.length > max_length {
            return Err(CorePacketError::TooLong {
                offset,
                command: self.command,
                length: self.length,
                limit: max_length,
            });
        }
        if self.extension_length > self.length {
            return Err(CorePacketError::ExtensionTooLong {
                offset,
                command: self.command,
                length: self.length,
                extension_length: self.extension_length,
            });
        }
        Ok(())
    }

    /// Length of the body (after the extension). Only meaningful once validated.
    pub fn body_length(&self) -> u32 {
        self.length.saturating_sub(self.extension_length)
    }

    /// The header bytes, as they are written.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields = [
            self.magic,
            self.command,
            self.length,
            self.request_id,
            self.response_code,
            self.extension_length,
        ];
        for (slot, value) in out.chunks_exact_mut(4).zip(fields) {
            slot.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// This header with its lengths set for an extension and a body of the given sizes.
    pub fn with_lengths(
        mut self,
        extension_length: usize,
        body_length: usize,
    ) -> Result<Self, CorePacketError> {
        let total = extension_length.checked_add(body_length);
        match total.and_then(|t| u32::try_from(t).ok()) {
            Some(total) => {
                self.length = total;
                self.extension_length = extension_length as u32;
                Ok(self)
            }
            None => Err(CorePacketError::EncodeTooLong {
                extension_length,
                body_length,
            }),
        }
    }
}

/// Errors of the core packet codec. Every decode error is the peer's fault and loses the framing
/// of the stream: the caller closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorePacketError {
    /// The header announces more than the configured limit.
    #[error("peer sent core packet (command {command}) at stream offset {offset} announcing {length} bytes, over the limit of {limit}")]
    TooLong {
        /// Stream offset of the header.
        offset: u64,
        /// Command id from the header.
        command: u32,
        /// Announced length.
        length: u32,
        /// The configured limit.
        limit: u32,
    },
    /// The extension is longer than the packet.
    #[error("peer sent core packet (command {command}) at stream offset {offset} with extension length {extension_length} over its packet length {length}")]
    ExtensionTooLong {
        /// Stream offset of the header.
        offset: u64,
        /// Command id.
        command: u32,
        /// Announced packet length.
        length: u32,
        /// Announced extension length.
        extension_length: u32,
    },
    /// A single packet was expected but the input ended early.
    #[error("peer sent a truncated core packet: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the header announces (header included).
        needed: u64,
        /// Bytes present.
        available: usize,
    },
    /// The reader already failed; the stream has no framing left.
    #[error("core packet stream already failed at offset {offset}; the connection must be closed")]
    AlreadyFailed {
        /// Offset of the first error.
        offset: u64,
    },
    /// Our side tried to encode a packet whose length does not fit in 32 bits.
    #[error("internal: core packet too long to encode (extension {extension_length}, body {body_length})")]
    EncodeTooLong {
        /// Extension length.
        extension_length: usize,
        /// Body length.
        body_length: usize,
    },
}

/// Past this many slices, small slices are copied into one buffer so that a peer feeding one
/// byte at a time cannot grow the slice list without bound. Normal traffic stays zero-copy.
const ZERO_COPY_PARTS: usize = 8;
/// Slices shorter than this are the ones coalesced once a list has [`ZERO_COPY_PARTS`] slices.
const SMALL_PART: usize = 1024;

/// An ordered list of `Bytes` slices that together make one logical byte string (a body or a
/// media payload), referencing the received buffers without copying them. Holds two slices
/// inline; past `ZERO_COPY_PARTS` (8) slices, small slices are coalesced (copied) so the list
/// stays proportional to the data, whatever the chunking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ByteChunks {
    parts: SmallVec<[Bytes; 2]>,
    small_tail: Option<BytesMut>,
    len: usize,
}

impl ByteChunks {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list that reuses the slice list of a finished one (emptied here), so that a
    /// byte string over more slices than fit inline costs one allocation per reader, not one
    /// per packet or frame.
    pub fn reusing(mut parts: SmallVec<[Bytes; 2]>) -> Self {
        parts.clear();
        ByteChunks {
            parts,
            small_tail: None,
            len: 0,
        }
    }

    /// Appends a slice (empty slices are ignored).
    pub fn push(&mut self, part: Bytes) {
        if part.is_empty() {
            return;
        }
        self.len += part.len();
        if self.parts.len() < ZERO_COPY_PARTS && self.small_tail.is_none() {
            self.parts.push(part);
            return;
        }
        if part.len() < SMALL_PART {
            self.small_tail
                .get_or_insert_with(|| BytesMut::with_capacity(SMALL_PART * 2))
                .extend_from_slice(&part);
            if self
                .small_tail
                .as_ref()
                .is_some_and(|t| t.len() >= SMALL_PART)
            {
                self.flush_small_tail();
            }
            return;
        }
        self.flush_small_tail();
        self.parts.push(part);
    }

    fn flush_small_tail(&mut self) {
        if let Some(tail) = self.small_tail.take() {
            if !tail.is_empty() {
                self.parts.push(tail.freeze());
            }
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no byte is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finishes the list and returns its slices in order.
    pub fn into_parts(mut self) -> SmallVec<[Bytes; 2]> {
        self.flush_small_tail();
        self.parts
    }

    /// The slices in order (the coalesced small tail, if any, is flushed first).
    pub fn parts(&mut self) -> &[Bytes] {
        self.flush_small_tail();
        &self.parts
    }

    /// One contiguous `Bytes`: no copy when the list holds at most one slice, else one copy.
    pub fn gather(mut self) -> Bytes {
        self.flush_small_tail();
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::with_capacity(self.len);
                for part in &self.parts {
                    out.extend_from_slice(part);
                }
                out.freeze()
            }
        }
    }
}

/// The body of a core packet: one slice when it lay in one chunk (or was gathered), else the
/// list of slices it arrived in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketBody {
    /// Contiguous body (a slice of the received chunk, or gathered).
    Contiguous(Bytes),
    /// Body spanning chunks, kept as slices of them (media on stream connections).
    Chunks(SmallVec<[Bytes; 2]>),
}

impl PacketBody {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            PacketBody::Contiguous(b) => b.len(),
            PacketBody::Chunks(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slices in order.
    pub fn parts(&self) -> &[Bytes] {
        match self {
            PacketBody::Contiguous(b) => std::slice::from_ref(b),
            PacketBody::Chunks(parts) => parts,
        }
    }

    /// The body as one `Bytes` (copies only when it spans chunks).
    pub fn to_contiguous(&self) -> Bytes {
        match self {
            PacketBody::Contiguous(b) => b.clone(),
            PacketBody::Chunks(parts) if parts.len() == 1 => parts[0].clone(),
            PacketBody::Chunks(parts) => {
                let mut out = BytesMut::with_capacity(self.len());
                for part in parts {
                    out.extend_from_slice(part);
                }
                out.freeze()
            }
        }
    }
}

/// A complete core packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorePacket {
    /// The header as received.
    pub header: CoreHeader,
    /// The extension XML (empty when the header says 0).
    pub extension: Bytes,
    /// The body.
    pub body: PacketBody,
}

impl CorePacket {
    /// Parses exactly one packet at the start of `input`; returns it and the number of bytes it
    /// used. Server -> device encryptTCP frames carry one packet each, padded with junk: the
    /// bytes after the packet are the padding.
    pub fn parse_one(
        input: &Bytes,
        max_length: u32,
    ) -> Result<(CorePacket, usize), CorePacketError> {
        let Some(header_bytes) = input.get(..HEADER_LEN) else {
            return Err(CorePacketError::Truncated {
                needed: HEADER_LEN as u64,
                available: input.len(),
            });
        };
        let mut fixed = [0u8; HEADER_LEN];
        fixed.copy_from_slice(header_bytes);
        let header = CoreHeader::parse(&fixed);
        header.validate(max_length, 0)?;
        let total = HEADER_LEN + header.length as usize;
        if input.len() < total {
            return Err(CorePacketError::Truncated {
                needed: total as u64,
                available: input.len(),
            });
        }
        let extension_end = HEADER_LEN + header.extension_length as usize;
        let packet = CorePacket {
            header,
            extension: input.slice(HEADER_LEN..extension_end),
            body: PacketBody::Contiguous(input.slice(extension_end..total)),
        };
        Ok((packet, total))
    }

    /// Encodes this packet as received (its header lengths are written as they are).
    pub fn encode_as_is(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.extension);
        for part in self.body.parts() {
            out.extend_from_slice(part);
        }
    }
}

/// Appends one packet (header with lengths computed, extension, body) to `out`.
pub fn encode_packet(
    header: CoreHeader,
    extension: &[u8],
    body: &[u8],
    out: &mut BytesMut,
) -> Result<(), CorePacketError> {
    let header = header.with_lengths(extension.len(), body.len())?;
    out.reserve(HEADER_LEN + extension.len() + body.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(extension);
    out.extend_from_slice(body);
    Ok(())
}

/// Limits and policies of a [`CorePacketReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    /// Largest accepted extension + body length.
    pub max_packet_length: u32,
    /// Copy a body that spans chunks into one `Bytes` (signalling), or keep it as slices
    /// (stream connections: media must stay zero-copy).
    pub gather_split_bodies: bool,
}

impl ReaderConfig {
    /// Signalling and keep-alive: 64 KiB, bodies gathered.
    pub fn signalling() -> Self {
        Self {
            max_packet_length: DEFAULT_SIGNALLING_MAX_LEN,
            gather_split_bodies: true,
        }
    }

    /// Stream connections: `max_packet_length` bytes, bodies kept as slices.
    pub fn stream(max_packet_length: u32) -> Self {
        Self {
            max_packet_length,
            gather_split_bodies: false,
        }
    }
}

impl Default for ReaderConfig {
    fn default() -> Self {
        Self::signalling()
    }
}

#[derive(Debug)]
enum ReadState {
    Header {
        filled: usize,
    },
    Extension {
        header: CoreHeader,
        extension: BytesMut,
    },
    Body {
        header: CoreHeader,
        extension: Bytes,
        body: ByteChunks,
        remaining: usize,
    },
    Failed {
        offset: u64,
    },
}

/// Streaming reader of core packets over a byte stream split anywhere.
///
/// Usage: for every received chunk, call [`CorePacketReader::read`] until it returns `Ok(None)`;
/// it then has consumed the whole chunk (keeping a partial packet inside).
#[derive(Debug)]
pub struct CorePacketReader {
    config: ReaderConfig,
    header_bytes: [u8; HEADER_LEN],
    state: ReadState,
    /// Stream offset of the next byte to consume.
    offset: u64,
    /// Stream offset of the current packet's header.
    packet_offset: u64,
    /// A slice list handed back with [`CorePacketReader::recycle`], for the next body.
    spare_parts: SmallVec<[Bytes; 2]>,
}

impl CorePacketReader {
    /// A reader with the given limits.
    pub fn new(config: ReaderConfig) -> Self {
        Self {
            config,
            header_bytes: [0; HEADER_LEN],
            state: ReadState::Header { filled: 0 },
            offset: 0,
            packet_offset: 0,
            spare_parts: SmallVec::new(),
        }
    }

    /// Hands back the body of a packet this reader returned, once the caller is done with it:
    /// the allocation of its slice list (a body over more than two slices has one) serves the
    /// next packets instead of a new one per packet.
    pub fn recycle(&mut self, body: PacketBody) {
        if let PacketBody::Chunks(mut parts) = body {
            if parts.spilled() && parts.capacity() > self.spare_parts.capacity() {
                parts.clear();
                self.spare_parts = parts;
            }
        }
    }

    /// Stream offset of the next byte to be consumed (bytes consumed so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True when no partial packet is held (a clean point to stop the stream).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, ReadState::Header { filled: 0 })
    }

    /// Consumes bytes from the front of `chunk` and returns the next complete packet, or
    /// `Ok(None)` once `chunk` is empty. After an error the stream has no framing left and
    /// every later call fails.
    pub fn read(&mut self, chunk: &mut Bytes) -> Result<Option<CorePacket>, CorePacketError> {
        loop {
            match &mut self.state {
                ReadState::Failed { offset } => {
                    return Err(CorePacketError::AlreadyFailed { offset: *offset })
                }
                ReadState::Header { filled } => {
                    let filled_now = *filled;
                    if filled_now == 0 {
                        self.packet_offset = self.offset;
                        // Fast path: the whole header is in this chunk.
                        if chunk.len() >= HEADER_LEN {
                            self.header_bytes.copy_from_slice(&chunk[..HEADER_LEN]);
                            self.consume(chunk, HEADER_LEN);
                            if let Some(packet) = self.start_packet(chunk)? {
                                return Ok(Some(packet));
                            }
                            continue;
                        }
                    }
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    let take = (HEADER_LEN - filled_now).min(chunk.len());
                    self.header_bytes[filled_now..filled_now + take]
                        .copy_from_slice(&chunk[..take]);
                    self.consume(chunk, take);
                    if filled_now + take < HEADER_LEN {
                        self.state = ReadState::Header {
                            filled: filled_now + take,
                        };
                        return Ok(None);
                    }
                    if let Some(packet) = self.start_packet(chunk)? {
                        return Ok(Some(packet));
                    }
                }
                ReadState::Extension { header, extension } => {
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    let want = header.extension_length as usize - extension.len();
                    let take = want.min(chunk.len());
                    extension.extend_from_slice(&chunk[..take]);
                    let header = *header;
                    let complete = take == want;
                    if complete {
                        let extension = std::mem::take(extension).freeze();
                        self.consume(chunk, take);
                        let remaining = header.body_length() as usize;
                        self.state = ReadState::Body {
                            header,
                            extension,
                            body: ByteChunks::reusing(std::mem::take(&mut self.spare_parts)),
                            remaining,
                        };
                        if remaining == 0 {
                            return Ok(Some(self.finish_packet()));
                        }
                    } else {
                        self.consume(chunk, take);
                        return Ok(None);
                    }
                }
                ReadState::Body {
                    body, remaining, ..
                } => {
                    if chunk.is_empty() {
                        return Ok(None);
                    }
                    let take = (*remaining).min(chunk.len());
                    body.push(chunk.split_to(take));
                    *remaining -= take;
                    let done = *remaining == 0;
                    self.offset += take as u64;
                    if done {
                        return Ok(Some(self.finish_packet()));
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn consume(&mut self, chunk: &mut Bytes, count: usize) {
        let _ = chunk.split_to(count);
        self.offset += count as u64;
    }

    /// Header complete: validate it and take what the current chunk holds of the packet.
    fn start_packet(&mut self, chunk: &mut Bytes) -> Result<Option<CorePacket>, CorePacketError> {
        let header = CoreHeader::parse(&self.header_bytes);
        if let Err(error) = header.validate(self.config.max_packet_length, self.packet_offset) {
            self.state = ReadState::Failed {
                offset: self.packet_offset,
            };
            return Err(error);
        }
        let extension_length = header.extension_length as usize;
        let body_length = header.body_length() as usize;
        // Fast path: the whole packet is in this chunk: slices, no copy.
        if chunk.len() >= extension_length + body_length {
            let extension = chunk.split_to(extension_length);
            let body = chunk.split_to(body_length);
            self.offset += (extension_length + body_length) as u64;
            self.state = ReadState::Header { filled: 0 };
            return Ok(Some(CorePacket {
                header,
                extension,
                body: PacketBody::Contiguous(body),
            }));
        }
        if extension_length > 0 {
            self.state = ReadState::Extension {
                header,
                extension: BytesMut::with_capacity(extension_length),
            };
        } else {
            self.state = ReadState::Body {
                header,
                extension: Bytes::new(),
                body: ByteChunks::reusing(std::mem::take(&mut self.spare_parts)),
                remaining: body_length,
            };
        }
        Ok(None)
    }

    fn finish_packet(&mut self) -> CorePacket {
        let state = std::mem::replace(&mut self.state, ReadState::Header { filled: 0 });
        let ReadState::Body {
            header,
            extension,
            body,
            ..
        } = state
        else {
            unreachable!("finish_packet is called in the body state");
        };
        let body = if self.config.gather_split_bodies {
            PacketBody::Contiguous(body.gather())
        } else {
            let mut parts = body.into_parts();
            if parts.len() == 1 {
                PacketBody::Contiguous(parts.pop().unwrap_or_default())
            } else {
                PacketBody::Chunks(parts)
            }
        };
        CorePacket {
            header,
            extension,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_packets() -> Vec<(CoreHeader, Vec<u8>, Vec<u8>)> {
        vec![
            (
                CoreHeader::request(cmd::HANDSHAKE, 7),
                b"".to_vec(),
                b"<?xml version=\"1.0\"?><body/>".to_vec(),
            ),
            (
                CoreHeader::response(cmd::HEARTBEAT, 8, CODE_OK),
                vec![],
                vec![],
            ),
            (
                CoreHeader::response(cmd::PREVIEW_START, 9, 0),
                b"<extension/>".to_vec(),
                (0..200u8).collect(),
            ),
            (CoreHeader::request(cmd::ALARM, 10), b"ext".to_vec(), vec![]),
        ]
    }

    fn encode_all(packets: &[(CoreHeader, Vec<u8>, Vec<u8>)]) -> Bytes {
        let mut out = BytesMut::new();
        for (h, e, b) in packets {
            encode_packet(*h, e, b, &mut out).unwrap();
        }
        out.freeze()
    }

    fn read_all(reader: &mut CorePacketReader, chunks: Vec<Bytes>) -> Vec<CorePacket> {
        let mut out = Vec::new();
        for mut chunk in chunks {
            while let Some(p) = reader.read(&mut chunk).unwrap() {
                out.push(p);
            }
            assert!(chunk.is_empty());
        }
        out
    }

    fn check(packets: &[CorePacket], expected: &[(CoreHeader, Vec<u8>, Vec<u8>)]) {
        assert_eq!(packets.len(), expected.len());
        for (p, (h, e, b)) in packets.iter().zip(expected) {
            assert_eq!(p.header.command, h.command);
            assert_eq!(p.header.request_id, h.request_id);
            assert_eq!(p.header.response_code, h.response_code);
            assert_eq!(p.header.magic, h.magic);
            assert_eq!(&p.extension[..], &e[..]);
            assert_eq!(&p.body.to_contiguous()[..], &b[..]);
        }
    }

    #[test]
    fn header_layout_is_little_endian_at_documented_offsets() {
        let h = CoreHeader::response(cmd::HANDSHAKE, 0x01020304, CODE_OK)
            .with_lengths(3, 5)
            .unwrap();
        let bytes = h.to_bytes();
        assert_eq!(
            bytes,
            [1, 0, 0, 0, 0xca, 1, 0, 0, 8, 0, 0, 0, 4, 3, 2, 1, 200, 0, 0, 0, 3, 0, 0, 0]
        );
        assert_eq!(CoreHeader::parse(&bytes), h);
    }

    #[test]
    fn one_chunk_is_zero_copy() {
        let expected = sample_packets();
        let wire = encode_all(&expected);
        let mut reader = CorePacketReader::new(ReaderConfig::stream(DEFAULT_STREAM_MAX_LEN));
        let packets = read_all(&mut reader, vec![wire.clone()]);
        check(&packets, &expected);
        let body = &packets[2].body;
        let PacketBody::Contiguous(b) = body else {
            panic!("not contiguous")
        };
        // The body points into the received chunk.
        let start = wire.as_ptr() as usize;
        assert!((b.as_ptr() as usize) >= start && (b.as_ptr() as usize) < start + wire.len());
        assert!(reader.is_idle());
        assert_eq!(reader.offset(), wire.len() as u64);
    }

    #[test]
    fn every_two_chunk_split_and_byte_by_byte() {
        let expected = sample_packets();
        let wire = encode_all(&expected);
        for gather in [false, true] {
            let config = ReaderConfig {
                max_packet_length: 1024,
                gather_split_bodies: gather,
            };
            for split in 0..=wire.len() {
                let mut reader = CorePacketReader::new(config);
                let packets = read_all(&mut reader, vec![wire.slice(..split), wire.slice(split..)]);
                check(&packets, &expected);
            }
            let mut reader = CorePacketReader::new(config);
            let chunks = (0..wire.len()).map(|i| wire.slice(i..i + 1)).collect();
            let packets = read_all(&mut reader, chunks);
            check(&packets, &expected);
            if gather {
                assert!(packets
                    .iter()
                    .all(|p| matches!(p.body, PacketBody::Contiguous(_))));
            }
        }
    }

    #[test]
    fn split_media_body_stays_sliced_and_bounded() {
        let body: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let expected = vec![(CoreHeader::request(cmd::PREVIEW_START, 1), vec![], body)];
        let wire = encode_all(&expected);
        let mut reader = CorePacketReader::new(ReaderConfig::stream(DEFAULT_STREAM_MAX_LEN));
        let chunks = wire.chunks(7).map(Bytes::copy_from_slice).collect();
        let packets = read_all(&mut reader, chunks);
        check(&packets, &expected);
        // One-byte-ish chunks get coalesced: the slice count stays proportional to the data.
        assert!(packets[0].body.parts().len() <= 8 + 50_000 / SMALL_PART + 1);
    }

    #[test]
    fn limits_are_enforced_with_offsets() {
        let mut wire = BytesMut::new();
        encode_packet(
            CoreHeader::request(cmd::HEARTBEAT, 1),
            b"",
            b"abc",
            &mut wire,
        )
        .unwrap();
        let mut bad = CoreHeader::request(cmd::ALARM, 2).to_bytes();
        bad[8..12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        wire.extend_from_slice(&bad);
        let mut chunk = wire.freeze();
        let mut reader = CorePacketReader::new(ReaderConfig::signalling());
        assert!(reader.read(&mut chunk).unwrap().is_some());
        let err = reader.read(&mut chunk).unwrap_err();
        assert_eq!(
            err,
            CorePacketError::TooLong {
                offset: 27,
                command: cmd::ALARM,
                length: 0xffff_fff0,
                limit: 65536
            }
        );
        assert_eq!(
            reader.read(&mut chunk).unwrap_err(),
            CorePacketError::AlreadyFailed { offset: 27 }
        );

        let mut ext = CoreHeader::request(cmd::ALARM, 2)
            .with_lengths(0, 4)
            .unwrap();
        ext.extension_length = 5;
        let mut chunk = Bytes::copy_from_slice(&ext.to_bytes());
        let mut reader = CorePacketReader::new(ReaderConfig::signalling());
        assert!(matches!(
            reader.read(&mut chunk),
            Err(CorePacketError::ExtensionTooLong { offset: 0, .. })
        ));
    }

    #[test]
    fn parse_one_ignores_padding() {
        let mut wire = BytesMut::new();
        encode_packet(
            CoreHeader::response(cmd::HANDSHAKE, 5, CODE_OK),
            b"",
            b"<body/>",
            &mut wire,
        )
        .unwrap();
        wire.extend_from_slice(&[0xaa; 9]);
        let wire = wire.freeze();
        let (packet, used) = CorePacket::parse_one(&wire, DEFAULT_SIGNALLING_MAX_LEN).unwrap();
        assert_eq!(used, 31);
        assert_eq!(packet.body.to_contiguous(), Bytes::from_static(b"<body/>"));
        assert!(matches!(
            CorePacket::parse_one(&wire.slice(..30), 1024),
            Err(CorePacketError::Truncated {
                needed: 31,
                available: 30
            })
        ));
    }

    #[test]
    fn firmware_slice_with_binary_extension_round_trips() {
        let extension = crate::proto::body::PacketExtension::BINARY_DATA.encode();
        let slice: Vec<u8> = (0..36 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let header = CoreHeader {
            response_code: CODE_OK,
            ..CoreHeader::request(cmd::UPGRADE, 77)
        };
        let mut wire = BytesMut::new();
        encode_packet(header, extension.as_bytes(), &slice, &mut wire).unwrap();
        assert_eq!(wire.len(), HEADER_LEN + extension.len() + slice.len());
        let mut fixed = [0u8; HEADER_LEN];
        fixed.copy_from_slice(&wire[..HEADER_LEN]);
        let sent = CoreHeader::parse(&fixed);
        assert_eq!(sent.extension_length as usize, extension.len());
        assert_eq!(sent.length as usize, extension.len() + slice.len());
        // The platform's devices read 16 bits of the length: a slice must stay below 64 KiB.
        assert!(sent.length < 1 << 16);
        let wire = wire.freeze();
        let mut reader = CorePacketReader::new(ReaderConfig::signalling());
        let chunks = wire.chunks(1000).map(Bytes::copy_from_slice).collect();
        let packets = read_all(&mut reader, chunks);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].header, sent);
        assert_eq!(
            crate::proto::body::PacketExtension::parse(&packets[0].extension),
            Ok(crate::proto::body::PacketExtension::BINARY_DATA)
        );
        assert_eq!(&packets[0].body.to_contiguous()[..], &slice[..]);
    }

    #[test]
    fn command_names() {
        assert_eq!(cmd::name(458), Some("handshake"));
        assert_eq!(cmd::name(3), Some("preview_start"));
        assert_eq!(cmd::name(9999), None);
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
    fn fuzz_entry_points_on_valid_and_mutated_input() {
        let wire = encode_all(&sample_packets());
        for seed in 0..300u64 {
            let mut input = vec![seed as u8];
            input.extend_from_slice(&wire);
            fuzzing::read_chunked(&input);
            fuzzing::round_trip(&input);
            let flip = noise(seed, 2);
            let at = 1 + usize::from(flip[0]) % wire.len();
            input[at] ^= flip[1] | 1;
            fuzzing::read_chunked(&input);
            fuzzing::round_trip(&input);
            let random = noise(seed, 200);
            fuzzing::read_chunked(&random);
            fuzzing::round_trip(&random);
        }
    }
}

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/core_packet*.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Splits `data` into chunks whose sizes come from the data itself.
    fn chunks(data: &[u8]) -> Vec<Bytes> {
        let Some((&seed, rest)) = data.split_first() else {
            return Vec::new();
        };
        let all = Bytes::copy_from_slice(rest);
        let step = usize::from(seed % 31) + 1;
        (0..all.len())
            .step_by(step)
            .map(|i| all.slice(i..(i + step).min(all.len())))
            .collect()
    }

    fn read(config: ReaderConfig, chunks: Vec<Bytes>) -> (Vec<CorePacket>, u64) {
        let mut reader = CorePacketReader::new(config);
        let mut packets = Vec::new();
        for mut chunk in chunks {
            loop {
                match reader.read(&mut chunk) {
                    Ok(Some(packet)) => packets.push(packet),
                    Ok(None) => break,
                    Err(_) => return (packets, reader.offset()),
                }
            }
        }
        (packets, reader.offset())
    }

    /// Arbitrary bytes in arbitrary chunks: never panics; gathering or not, one chunk or many,
    /// the same packets come out.
    pub fn read_chunked(data: &[u8]) {
        let config = ReaderConfig {
            max_packet_length: 4096,
            gather_split_bodies: false,
        };
        let (sliced, _) = read(config, chunks(data));
        let whole = data
            .get(1..)
            .map(Bytes::copy_from_slice)
            .into_iter()
            .collect();
        let (contiguous, _) = read(
            ReaderConfig {
                gather_split_bodies: true,
                ..config
            },
            whole,
        );
        assert_eq!(sliced.len(), contiguous.len());
        for (a, b) in sliced.iter().zip(&contiguous) {
            assert_eq!(a.header, b.header);
            assert_eq!(a.extension, b.extension);
            assert_eq!(a.body.to_contiguous(), b.body.to_contiguous());
        }
    }

    /// Decode then encode gives back the bytes decoded, and encoding through
    /// [`encode_packet`] gives the same header.
    pub fn round_trip(data: &[u8]) {
        let (packets, consumed) = read(ReaderConfig::stream(4096), chunks(data));
        let mut out = BytesMut::new();
        for packet in &packets {
            packet.encode_as_is(&mut out);
            let mut again = BytesMut::new();
            let body = packet.body.to_contiguous();
            assert!(encode_packet(packet.header, &packet.extension, &body, &mut again).is_ok());
            assert_eq!(&again[..HEADER_LEN], &packet.header.to_bytes()[..]);
        }
        let input = data.get(1..).unwrap_or_default();
        assert!(out.len() as u64 <= consumed);
        assert_eq!(&out[..], &input[..out.len()]);
    }
}
