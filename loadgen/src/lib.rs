//! The loadgen's building blocks: simulated ROP devices and RTSP viewers. Protocol work is
//! sans-IO (bytes in, bytes out), reusing the codecs of `signal` and `relay`, so the same device
//! drives the relay's ingest in tests and real sockets in the `loadgen` binary.

pub mod device;
pub mod fleet;
pub mod peers;
pub mod plan;
pub mod procstat;
pub mod report;
pub mod rtsp_load;
pub mod rtsp_publish;
pub mod sei;
pub mod svg;
pub mod url_template;
