//! Sans-IO codecs of the control plane: bytes in, a typed value or a precise error out.
//! No sockets, no clocks, no runtime: the loadgen's simulated device and the fuzz targets reuse them.

pub mod access_key;
pub mod body;
pub mod core_packet;
pub mod encrypt_tcp;
pub mod http;
