//! Pull sources: the relay connects to a camera that serves RTSP or RTSPS itself and publishes
//! what it receives into the stream hub, exactly as an RTSP publisher would, so viewers of the
//! source's UID get the same fan-out, GOP cache, play tokens and metrics as for any stream.
//!
//! - [`client`]: the RTSP client session without I/O (handshake, authentication, header rules,
//!   keepalives, TEARDOWN).
//! - [`auth`]: Basic and Digest answers to a source's 401.

pub mod auth;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
