//! TCP listeners and streams on the current shard, and moving a connection to another shard.
//!
//! Every shard binds the same port (SO_REUSEPORT) and the kernel spreads connections by address
//! hash; a connection that turns out to belong to a device owned elsewhere is turned into a
//! [`Handoff`] (a duplicated fd, the bytes already read, the TLS session if any) and rebuilt on
//! the owner shard with [`Handoff::into_tcp`] or `tls::TlsStream::from_handoff`.
//!
//! Writes that gather several buffers go through [`TcpStream::send_vectored`]: one `sendmsg(2)`
//! with every iovec (glommio 0.9's `write_vectored` sends only the first slice). When the socket
//! buffer is full, [`TcpStream::send_all_vectored`] parks on glommio's io_uring write-readiness
//! poll: on `EAGAIN` it hands the first unsent slice to glommio's `poll_write`, which retries a
//! plain `send` and, if that still would block, arms an io_uring `POLL_ADD` for `POLLOUT` and
//! wakes the task when the kernel has room. No payload byte is ever copied in user space, and no
//! timer or spin loop is involved.
//!
//! A [`TcpStream`] may be used through `&TcpStream` by one reading and one writing task at the
//! same time (e.g. `futures_lite::future::or(read_requests(&s), write_media(&s))`): the glommio
//! stream sits in a `RefCell` that is borrowed only inside a single poll, never across an await,
//! except by [`TcpStream::peek`], which must not run while another task reads or writes the same
//! stream (such a read or write fails with [`io::ErrorKind::ResourceBusy`]).

use std::cell::{RefCell, RefMut};
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::io::{AsyncRead, AsyncWrite};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::shard::Shutdown as ShutdownSignal;

/// Listen backlog used by [`TcpListener::bind`]; the kernel caps it at `net.core.somaxconn`.
/// Large so that a reconnect storm of thousands of cameras does not overflow the SYN queue.
pub const DEFAULT_BACKLOG: i32 = 4096;

/// Upper bound on iovecs per `sendmsg` (Linux `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// Counters of the vectored send path on the current shard (thread), for benchmarks and
/// metrics. Cheap: plain thread-local cells.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// `sendmsg` calls made.
    pub sendmsg_calls: u64,
    /// Bytes the kernel accepted through `sendmsg`.
    pub sendmsg_bytes: u64,
    /// `sendmsg` calls that found the socket buffer full (EAGAIN).
    pub would_block: u64,
    /// Times a task parked on write readiness (io_uring POLLOUT) after EAGAIN.
    pub readiness_waits: u64,
}

thread_local! {
    static SEND_STATS: std::cell::Cell<SendStats> = const {
        std::cell::Cell::new(SendStats {
            sendmsg_calls: 0,
            sendmsg_bytes: 0,
            would_block: 0,
            readiness_waits: 0,
        })
    };
}

fn count_send(update: impl FnOnce(&mut SendStats)) {
    SEND_STATS.with(|cell| {
        let mut stats = cell.get();
        update(&mut stats);
        cell.set(stats);
    });
}

/// This shard's [`SendStats`] so far.
pub fn send_stats() -> SendStats {
    SEND_STATS.with(|cell| cell.get())
}

/// A listening TCP socket on the current shard.
///
/// Binding sets SO_REUSEPORT (and SO_REUSEADDR), so every shard binds the same address and the
/// kernel balances new connections between them by address hash.
#[derive(Debug)]
pub struct TcpListener {
    inner: glommio::net::TcpListener,
    fd: RawFd,
}

impl TcpListener {
    /// Binds `addr` with SO_REUSEPORT and [`DEFAULT_BACKLOG`]. Must be called on a shard.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_with_backlog(addr, DEFAULT_BACKLOG)
    }

    /// Binds `addr` with SO_REUSEPORT and the given listen backlog. Must be called on a shard.
    pub fn bind_with_backlog(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        let fd = socket.into_raw_fd();
        // SAFETY: the fd is a freshly created, bound and listening TCP socket that nothing else
        // owns; `into_raw_fd` gave up our ownership and glommio's listener takes it over.
        let inner = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
        Ok(TcpListener { inner, fd })
    }

    /// The address actually bound (with the ephemeral port filled in).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }

    /// Waits for the next connection. Errors such as `EMFILE` are returned as they are: the
    /// caller should log, back off briefly and keep accepting.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        let stream = self.inner.accept().await.map_err(io::Error::from)?;
        Ok(TcpStream::from_glommio(stream))
    }

    /// Like [`accept`](Self::accept), but returns `None` once `shutdown` has been triggered, so
    /// an accept loop ends by itself: `while let Some(conn) = l.accept_until(&sd).await { .. }`.
    pub async fn accept_until(&self, shutdown: &ShutdownSignal) -> Option<io::Result<TcpStream>> {
        shutdown.until(self.accept()).await
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the listener owns this fd and keeps it open for as long as `self` lives, which
        // bounds the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

/// Per-stream state that needs mutable access from poll functions.
#[derive(Debug)]
struct StreamState {
    inner: glommio::net::TcpStream,
    /// Bytes that were read from the socket before this stream was (re)built, served before
    /// anything new from the socket. Empty except right after a handoff or [`TcpStream::unread`].
    replay: Vec<u8>,
    replay_pos: usize,
}

impl StreamState {
    fn replay_pending(&self) -> &[u8] {
        self.replay.get(self.replay_pos..).unwrap_or_default()
    }
}

/// A connected TCP stream on the current shard.
///
/// Implements `futures_lite::AsyncRead + AsyncWrite` for `TcpStream` and for `&TcpStream`.
#[derive(Debug)]
pub struct TcpStream {
    state: RefCell<StreamState>,
    fd: RawFd,
}

fn busy() -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        "stream is borrowed by a concurrent peek on the same shard",
    )
}

impl TcpStream {
    fn from_glommio(inner: glommio::net::TcpStream) -> TcpStream {
        let fd = inner.as_raw_fd();
        TcpStream {
            state: RefCell::new(StreamState {
                inner,
                replay: Vec::new(),
                replay_pos: 0,
            }),
            fd,
        }
    }

    fn state_mut(&self) -> io::Result<RefMut<'_, StreamState>> {
        self.state.try_borrow_mut().map_err(|_| busy())
    }

    /// Connects to `remote` (io_uring connect). Must be called on a shard.
    pub async fn connect(remote: SocketAddr) -> io::Result<TcpStream> {
        let inner = glommio::net::TcpStream::connect(remote)
            .await
            .map_err(io::Error::from)?;
        Ok(Self::from_glommio(inner))
    }

    /// Connects to `remote`, failing with [`io::ErrorKind::TimedOut`] after `timeout`.
    pub async fn connect_timeout(remote: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        match crate::timer::timeout(timeout, Self::connect(remote)).await {
            Ok(result) => result,
            Err(elapsed) => Err(io::Error::new(io::ErrorKind::TimedOut, elapsed)),
        }
    }

    /// Connects to `remote` from the given local address (bound first, with SO_REUSEADDR), so a
    /// load generator can spread connections over many source addresses (e.g. 127.0.0.2..) and
    /// get past the 64k ephemeral ports of one address. Port 0 picks an ephemeral port.
    pub async fn connect_from(local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
        let socket = Socket::new(
            Domain::for_address(remote),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if local.port() == 0 {
            // Defer the port choice to connect() so the kernel may reuse a port across
            // different remote addresses (IP_BIND_ADDRESS_NO_PORT).
            let _ = set_bind_address_no_port(&socket);
        }
        socket.bind(&local.into())?;
        socket.set_nonblocking(true)?;
        match socket.connect(&remote.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        // SAFETY: the fd is a freshly created TCP socket that nothing else owns; glommio's stream
        // takes over ownership.
        let inner = unsafe { glommio::net::TcpStream::from_raw_fd(socket.into_raw_fd()) };
        let mut stream = Self::from_glommio(inner);
        // A zero-length send on a socket that is still connecting fails with EAGAIN; glommio
        // then parks on POLLOUT, which fires when the handshake completes or fails. After that
        // the same zero-length send returns 0 (connected) or the connection error.
        poll_fn(|cx| Pin::new(&mut stream.state.get_mut().inner).poll_write(cx, &[])).await?;
        let sock = SockRef::from(&stream);
        if let Some(err) = sock.take_error()? {
            return Err(err);
        }
        // glommio expects blocking-mode sockets (its io_uring operations would otherwise
        // complete with EAGAIN instead of waiting); its synchronous attempts use MSG_DONTWAIT.
        sock.set_nonblocking(false)?;
        Ok(stream)
    }

    /// Rebuilds a stream from a connected TCP socket fd, e.g. one received from another shard.
    /// Must be called on the shard that will own the stream.
    pub fn from_owned_fd(fd: OwnedFd) -> io::Result<TcpStream> {
        let sock = SockRef::from(&fd);
        if sock.r#type()? != Type::STREAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is not a stream socket",
            ));
        }
        sock.set_nonblocking(false)?;
        // SAFETY: `into_raw_fd` releases our unique ownership of the open socket fd and glommio's
        // stream takes it over; nothing else closes it.
        let inner = unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
        Ok(Self::from_glommio(inner))
    }

    /// Gives up this shard's hold on the connection and returns an fd that can be sent to
    /// another shard. glommio 0.9 has no `IntoRawFd`, so the fd is duplicated and the glommio
    /// stream (and its pending readiness polls) dropped. Bytes queued by [`unread`](Self::unread)
    /// that were not read yet are lost: use [`into_handoff`](Self::into_handoff) to keep them.
    pub fn into_owned_fd(self) -> io::Result<OwnedFd> {
        let fd = self.as_fd().try_clone_to_owned()?;
        drop(self);
        Ok(fd)
    }

    /// Packs the connection for another shard: the fd, the peer address, and every byte read
    /// but not yet consumed (`read_ahead`, appended after anything still queued by
    /// [`unread`](Self::unread)).
    pub fn into_handoff(self, read_ahead: Vec<u8>) -> io::Result<Handoff> {
        let peer = self.peer_addr()?;
        let mut state = self.state.borrow_mut();
        let pending = state.replay_pending();
        let read_ahead = if pending.is_empty() {
            read_ahead
        } else {
            let mut all = Vec::with_capacity(pending.len() + read_ahead.len());
            all.extend_from_slice(pending);
            all.extend_from_slice(&read_ahead);
            all
        };
        state.replay = Vec::new();
        state.replay_pos = 0;
        drop(state);
        Ok(Handoff {
            fd: self.into_owned_fd()?,
            peer,
            read_ahead,
            tls: None,
        })
    }

    /// Queues `bytes` to be returned by the next reads before anything new from the socket
    /// (for bytes read while deciding what a connection is, or carried over in a handoff).
    pub fn unread(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut state = self.state_mut()?;
        let pending = state.replay_pending();
        let mut replay = Vec::with_capacity(pending.len() + bytes.len());
        replay.extend_from_slice(bytes);
        replay.extend_from_slice(pending);
        state.replay = replay;
        state.replay_pos = 0;
        Ok(())
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(self).peer_addr()?)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(self).local_addr()?)
    }

    /// Sets TCP_NODELAY (disable Nagle): wanted for request/response and for media.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        SockRef::from(self).set_nodelay(nodelay)
    }

    /// Whether TCP_NODELAY is set.
    pub fn nodelay(&self) -> io::Result<bool> {
        SockRef::from(self).nodelay()
    }

    /// Sets SO_SNDBUF (the kernel doubles the value and clamps it to `wmem_max`).
    pub fn set_send_buffer_size(&self, bytes: usize) -> io::Result<()> {
        SockRef::from(self).set_send_buffer_size(bytes)
    }

    /// Sets SO_RCVBUF (the kernel doubles the value and clamps it to `rmem_max`).
    pub fn set_recv_buffer_size(&self, bytes: usize) -> io::Result<()> {
        SockRef::from(self).set_recv_buffer_size(bytes)
    }

    /// Number of bytes written but not yet acknowledged by the peer (SIOCOUTQ): how far behind
    /// a viewer is, as the kernel sees it.
    pub fn unsent_bytes(&self) -> io::Result<usize> {
        let mut pending: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (== SIOCOUTQ) writes one c_int through the pointer, which points to a
        // live, properly aligned c_int; `self.fd` is an open socket for the lifetime of `self`.
        let rc = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut pending as *mut libc::c_int) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(pending).unwrap_or(0))
    }

    /// Shuts down the read, write or both halves of the connection.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        SockRef::from(self).shutdown(how)
    }

    /// Returns the bytes at the head of the stream without consuming them (replayed bytes
    /// first, then MSG_PEEK on the socket), waiting until at least one byte is there. Returns 0
    /// at end of stream. Must not run concurrently with a read or write of the same stream.
    // glommio's peek (an io_uring recv with MSG_PEEK) borrows its stream for the whole wait; a
    // read or write polled meanwhile gets ResourceBusy instead of a RefCell panic.
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        {
            let state = self.state.try_borrow().map_err(|_| busy())?;
            let pending = state.replay_pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.len());
                buf[..n].copy_from_slice(&pending[..n]);
                return Ok(n);
            }
        }
        if let Some(result) = self.try_peek_socket(buf) {
            return result;
        }
        let state = self.state.try_borrow().map_err(|_| busy())?;
        state.inner.peek(buf).await.map_err(io::Error::from)
    }

    /// Non-blocking peek: `Ok(0)` means end of stream, `WouldBlock` means nothing there yet.
    pub fn try_peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        {
            let state = self.state.try_borrow().map_err(|_| busy())?;
            let pending = state.replay_pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.len());
                buf[..n].copy_from_slice(&pending[..n]);
                return Ok(n);
            }
        }
        self.try_peek_socket(buf)
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }

    fn try_peek_socket(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the duration of the
        // call and `self.fd` is an open socket owned by `self`.
        let rc = unsafe {
            libc::recv(
                self.fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if rc >= 0 {
            return Some(Ok(rc as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => None,
            io::ErrorKind::Interrupted => None,
            _ => Some(Err(err)),
        }
    }

    /// One `sendmsg(2)` with all of `bufs` (at most 1024 iovecs), MSG_DONTWAIT | MSG_NOSIGNAL.
    /// Returns how many bytes the kernel took (possibly fewer than offered) or
    /// [`io::ErrorKind::WouldBlock`] when the socket buffer is full.
    pub fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
        loop {
            let result = SockRef::from(self)
                .send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
            count_send(|stats| {
                stats.sendmsg_calls += 1;
                match &result {
                    Ok(n) => stats.sendmsg_bytes += *n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => stats.would_block += 1,
                    Err(_) => {}
                }
            });
            match result {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Poll form of a vectored send: sends what the kernel takes now, or parks the task on
    /// io_uring write readiness. A `Ready(Ok(n))` may be any `n >= 1` for non-empty input.
    pub fn poll_send_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        match self.send_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return Poll::Ready(other),
        }
        // The socket buffer is full. glommio's poll_write retries a plain send of the first
        // unsent slice (the kernel copy, nothing else) and, if that still would block, arms an
        // io_uring POLLOUT poll that wakes this task.
        let mut state = match self.state_mut() {
            Ok(state) => state,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let polled = Pin::new(&mut state.inner).poll_write(cx, first);
        if polled.is_pending() {
            count_send(|stats| stats.readiness_waits += 1);
        }
        polled
    }

    /// Sends every byte of `bufs` in order, one `sendmsg` per attempt, advancing over partial
    /// writes and waiting for write readiness on EAGAIN. `bufs` is consumed (advanced) in place;
    /// on error, what is left in it was not sent.
    pub async fn send_all_vectored(&self, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let sent = poll_fn(|cx| self.poll_send_vectored(cx, bufs)).await?;
            if sent == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, sent);
        }
        Ok(())
    }

    fn poll_read_impl(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut state = match self.state_mut() {
            Ok(state) => state,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let pending = state.replay_pending();
        if !pending.is_empty() {
            let n = pending.len().min(buf.len());
            buf[..n].copy_from_slice(&pending[..n]);
            state.replay_pos += n;
            if state.replay_pos >= state.replay.len() {
                state.replay = Vec::new();
                state.replay_pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut state.inner).poll_read(cx, buf)
    }

    fn poll_write_impl(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_send_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_close_impl(&self) -> Poll<io::Result<()>> {
        match self.shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

fn socket_addr(addr: socket2::SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "socket address is not an IP address",
        )
    })
}

fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: IP_BIND_ADDRESS_NO_PORT takes an int option value; the pointer and length describe
    // `on`, which outlives the call; the fd is an open socket owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the glommio stream inside `self` owns this fd and keeps it open for as long as
        // `self` lives, which bounds the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_read_impl(cx, buf)
    }
}

impl AsyncRead for &TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_read_impl(cx, buf)
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_impl(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_close_impl()
    }
}

impl AsyncWrite for &TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_impl(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_send_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_close_impl()
    }
}

/// A connection on its way to another shard: everything the owner needs to continue exactly
/// where the accepting shard stopped. `Send`, so it travels over a [`crate::mesh::Mesh`].
#[derive(Debug)]
pub struct Handoff {
    /// The connected socket.
    pub fd: OwnedFd,
    /// The remote address, as seen when the connection was accepted.
    pub peer: SocketAddr,
    /// Bytes already read from the socket and not yet consumed: plaintext for a plain stream,
    /// ciphertext not yet fed to the TLS session for a TLS stream.
    pub read_ahead: Vec<u8>,
    /// The TLS session, when the connection is TLS (handshake done or in progress).
    pub tls: Option<rustls::ServerConnection>,
}

impl Handoff {
    /// Rebuilds a plain stream on the current shard; the read-ahead bytes are returned by its
    /// first reads. Fails with `InvalidInput` if the handoff carries a TLS session (use
    /// `tls::TlsStream::from_handoff`).
    pub fn into_tcp(self) -> io::Result<TcpStream> {
        if self.tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "handoff carries a TLS session; rebuild it with tls::TlsStream::from_handoff",
            ));
        }
        let stream = TcpStream::from_owned_fd(self.fd)?;
        stream.unread(&self.read_ahead)?;
        Ok(stream)
    }
}
