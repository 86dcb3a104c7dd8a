//! UDP sockets on the current shard, for RTP and RTCP received over UDP (pull sources that serve
//! `RTP/AVP` unicast).
//!
//! A thin wrapper over glommio's `UdpSocket` that differs in one way: the socket is bound
//! *without* SO_REUSEPORT (glommio's `bind` sets it), because a client port handed to a camera
//! in `Transport: client_port=` must be ours alone; with SO_REUSEPORT another socket of the same
//! user could bind the same port and take half of the datagrams.
//!
//! Receiving goes through io_uring (or a direct `recvmsg` while datagrams are queued). A receive
//! that is cancelled after the kernel completed it loses that datagram, so a receiver should keep
//! one receive future alive for the socket's life rather than racing fresh ones against timers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Largest datagram [`UdpSocket::recv_from`] can return whole: the IPv4 and IPv6 UDP payload
/// limit is 65 507 and 65 527 bytes, so a buffer of this size never truncates.
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// Attempts of [`UdpSocket::bind_pair`] to find an even port whose successor is free.
const PAIR_ATTEMPTS: usize = 32;

/// A UDP socket on the current shard.
#[derive(Debug)]
pub struct UdpSocket {
    inner: glommio::net::UdpSocket,
}

impl UdpSocket {
    /// Binds `addr` (port 0: an ephemeral port) without SO_REUSEPORT. Must be called on a shard.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&addr.into())?;
        Ok(Self::from_socket(socket))
    }

    fn from_socket(socket: Socket) -> UdpSocket {
        // SAFETY: the fd is a freshly created, bound UDP socket that nothing else owns; glommio's
        // socket takes over ownership and closes it.
        let mut inner = unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) };
        // glommio's blocking receive path allocates a buffer of this size per receive; a datagram
        // longer than it would be cut short.
        inner.set_buffer_size(MAX_DATAGRAM);
        UdpSocket { inner }
    }

    /// Two sockets on `ip` with consecutive ports, the first even (RFC 3550 section 11: RTP on
    /// an even port, RTCP on the next one).
    pub fn bind_pair(ip: IpAddr) -> io::Result<(UdpSocket, UdpSocket)> {
        let mut last_error = None;
        for _ in 0..PAIR_ATTEMPTS {
            let first = UdpSocket::bind(SocketAddr::new(ip, 0))?;
            let port = first.local_addr()?.port();
            if port % 2 != 0 || port == u16::MAX {
                continue;
            }
            match UdpSocket::bind(SocketAddr::new(ip, port + 1)) {
                Ok(second) => return Ok((first, second)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no even UDP port with a free successor on {ip} in {PAIR_ATTEMPTS} tries"),
            )
        }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }

    /// Asks the kernel for a receive buffer of `bytes` (capped at `net.core.rmem_max`), so a
    /// burst (a keyframe split into many datagrams) waits in the kernel rather than being lost.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        SockRef::from(self).set_recv_buffer_size(bytes)
    }

    /// One datagram and its sender. `buf` should hold [`MAX_DATAGRAM`] bytes; a longer datagram
    /// than `buf` is cut to its length.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner.recv_from(buf).await.map_err(io::Error::from)
    }

    /// Sends one datagram to `addr`.
    pub async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.inner.send_to(buf, addr).await.map_err(io::Error::from)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl std::os::fd::AsFd for UdpSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the fd is open for as long as `self` lives (glommio's socket owns it).
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.inner.as_raw_fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn pair_is_even_then_odd_and_datagrams_carry_their_sender() {
        crate::block_on_shard(|| async {
            let (rtp, rtcp) = UdpSocket::bind_pair(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
            let rtp_port = rtp.local_addr().unwrap().port();
            assert_eq!(rtp_port % 2, 0);
            assert_eq!(rtcp.local_addr().unwrap().port(), rtp_port + 1);
            rtp.set_recv_buffer_size(1 << 20).unwrap();
            // Without SO_REUSEPORT, the port is ours alone.
            assert!(UdpSocket::bind(rtp.local_addr().unwrap()).is_err());

            let sender = UdpSocket::bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)).unwrap();
            let big = vec![7u8; 60_000];
            sender
                .send_to(&big, rtp.local_addr().unwrap())
                .await
                .unwrap();
            sender
                .send_to(b"rtcp", rtcp.local_addr().unwrap())
                .await
                .unwrap();
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let (n, from) = rtp.recv_from(&mut buf).await.unwrap();
            assert_eq!((n, from), (big.len(), sender.local_addr().unwrap()));
            assert!(buf[..n].iter().all(|&b| b == 7));
            let (n, _) = rtcp.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"rtcp");
        })
        .unwrap();
    }
}
