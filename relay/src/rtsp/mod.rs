//! The RTSP server (port 61008): play with a play token, publish (ANNOUNCE/RECORD) with a publish
//! token, RTP over TCP interleaved.
//!
//! - [`session`]: the per-connection state machine, without I/O (request in, response and hub
//!   operations out).
//! - [`ingest`]: what a publisher's packets mean to the hub (track, RTCP, keyframe, end of
//!   access unit), read from their RTP headers and payloads without copying them.
//! - [`conn`]: the only file here that touches sockets: reads requests and `$` frames with
//!   limits, performs the session's hub operations on the shard, and writes media to a player
//!   with one `sendmsg` per batch straight from the hub's shared packets.
//!
//! Behaviour worth knowing as an operator or client author:
//! - Only `RTP/AVP/TCP` interleaved is offered (461 for UDP): it crosses NAT and firewalls, and it
//!   is what ffmpeg, GStreamer and VLC use with `-rtsp_transport tcp` / `protocols=tcp`.
//! - A DESCRIBE of a stream without a publisher waits up to [`RtspSettings::publisher_wait`] for
//!   one, then answers 503 "No Publisher".
//! - A second ANNOUNCE of a stream that has a publisher gets 400 "Stream Already Published" (the
//!   status MediaMTX answers with); the first publisher is not disturbed.
//! - When the publisher leaves (TEARDOWN or lost connection), players keep their connection for
//!   the hub's publisher grace (`[device] stream_grace_secs`, 5 s); a publisher that returns
//!   continues the stream. Otherwise each
//!   player receives what it was owed and its connection is closed (no server-sent TEARDOWN:
//!   RTSP 1.0 clients do not expect requests from the server).
//! - A request must arrive whole within [`RtspSettings::request_timeout`] of its first byte
//!   (slowloris), answered with 408 otherwise; a session without requests (or, when recording,
//!   media) for its announced timeout is closed. A playing TCP session needs no keepalive: many
//!   players send none while media flows.

pub mod conn;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingest;
pub mod session;

use std::time::Duration;

pub use session::SessionConfig;

/// Timings and bounds of the RTSP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtspSettings {
    /// Session timeout, announced in the `Session` header.
    pub session: SessionConfig,
    /// Longest time from the first byte of a request to its last.
    pub request_timeout: Duration,
    /// How long a DESCRIBE waits for a publisher.
    pub publisher_wait: Duration,
    /// How long a connection being closed may take to receive its last response.
    pub close_linger: Duration,
    /// Largest amount of response bytes queued for a client that does not read them.
    pub max_queued_responses: usize,
}

impl Default for RtspSettings {
    fn default() -> Self {
        RtspSettings {
            session: SessionConfig::default(),
            request_timeout: Duration::from_secs(10),
            publisher_wait: Duration::from_secs(5),
            close_linger: Duration::from_secs(2),
            max_queued_responses: 64 * 1024,
        }
    }
}
