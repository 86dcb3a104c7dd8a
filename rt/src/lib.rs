//! The thin runtime layer between the workspace and glommio 0.9.
//!
//! Everything that touches the async runtime's types (executors, sockets, timers, channel
//! meshes) goes through this crate, so that moving to a glommio fork or to monoio stays a
//! contained change. Codecs and session logic never import glommio directly.

pub mod timer;
