//! The thin runtime layer between the workspace and glommio 0.9.
//!
//! Everything that touches the async runtime's types (executors, sockets, timers, channel
//! meshes) goes through this crate, so that moving to a glommio fork or to monoio stays a
//! contained change. Codecs and session logic never import glommio directly.
//!
//! - [`shard`]: one pinned executor per core ([`run_shards`], [`ShardPool`]), tasks, shutdown.
//! - [`mesh`]: typed cross-shard messages and the [`owner_shard`] routing hash.
//! - [`net`]: listeners (SO_REUSEPORT), streams with one-`sendmsg` vectored writes, handoff of a
//!   connection to another shard.
//! - [`udp`]: UDP sockets (RTP and RTCP of pull sources over UDP), bound without SO_REUSEPORT.
//! - [`tls`]: rustls sessions over our streams that can move between shards.
//! - [`read_buf`]: receive buffers read into without zeroing or unsafe code per read.
//! - [`sweeper`]: one periodic sweep per shard over last-seen timestamps.
//! - [`timer`]: sleep and deadlines.
//! - [`blocking`]: blocking work (fsync) on the executor's blocking thread pool.
//! - [`xchan`]: channels to and from threads outside the mesh (the control plane).

pub mod blocking;
pub mod mesh;
pub mod net;
pub mod read_buf;
pub mod shard;
pub mod sweeper;
pub mod timer;
pub mod tls;
pub mod udp;
pub mod xchan;

pub use mesh::{owner_shard, Mesh, MeshPort};
pub use net::{Handoff, TcpListener, TcpStream};
pub use read_buf::ReadBuf;
pub use shard::{
    block_on_shard, run_shards, shard_count, shard_id, spawn_detached, spawn_local,
    yield_if_needed, ShardContext, ShardError, ShardPool, Shutdown, Task,
};
pub use sweeper::{IdleTable, Sweeper};
pub use tls::{MaybeTls, TlsError, TlsStream};
pub use udp::UdpSocket;

/// Raises this process's open-file soft limit (RLIMIT_NOFILE) to its hard limit, so a shard can
/// hold tens of thousands of sockets. If the hard limit is unlimited (which the kernel refuses
/// as a soft limit for files), the soft limit goes to `fs.nr_open` instead. Returns the new
/// `(soft, hard)` pair.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which points to a live value.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let mut wanted = limit.rlim_max;
        if wanted == libc::RLIM_INFINITY {
            wanted = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1 << 20);
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the rlimit behind the pointer, which is live.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}
