//! The data plane: shards, listeners, device stream ingest, the RTSP server and the stream hub.
//! Codecs live under [`proto`] and touch no sockets.

pub mod device;
pub mod hub;
pub mod ingest;
pub mod proto;
pub mod pull;
pub mod rtsp;
pub mod server;
pub mod shard;
pub mod stream_conn;
pub mod stream_key;
