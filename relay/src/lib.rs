//! The data plane: shards, listeners, device stream ingest, the RTSP server and the stream hub.
//! Codecs live under [`proto`] and touch no sockets.

pub mod hub;
pub mod proto;
pub mod server;
pub mod stream_key;
