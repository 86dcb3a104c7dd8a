//! The control plane: the client HTTP API, device provisioning and registration, device sessions,
//! alarms, play tokens and the embedded store. Protocol codecs live under [`proto`] and touch no
//! sockets; the connection files around them do the I/O on the shard runtime (`rt`).
#![forbid(unsafe_code)]

pub mod alarms;
pub mod api;
pub mod clock;
pub mod config;
mod device_api;
mod device_control_api;
pub mod devices;
pub mod firmware;
pub mod http_server;
pub mod limits;
pub mod metrics;
pub mod proto;
pub mod provisioning;
pub mod secrets;
pub mod session;
pub mod sources;
mod sources_api;
pub mod store;
pub mod tokens;
pub mod upgrade;
mod upgrade_api;
pub mod wifi_scan;
