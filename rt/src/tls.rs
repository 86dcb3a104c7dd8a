//! TLS over [`TcpStream`] with a session that can move between shards.
//!
//! futures-rustls cannot give its session back, but on the mutual-TLS device ports the owning
//! shard is known only after the handshake (the UID is the certificate's CN). This adapter
//! drives a sans-IO rustls connection itself, so the socket fd, the `rustls` session (which is
//! `Send`) and any ciphertext already read but not yet processed can be packed into a
//! [`Handoff`] and continued on another shard exactly where they stopped.
//!
//! Reads receive up to 32 KiB per `recv` into a per-shard scratch buffer, feed it to rustls,
//! and hand out plaintext; a per-connection buffer is used only for ciphertext rustls cannot
//! take yet (its plaintext buffer is full because the application reads slowly). Writes encrypt
//! into rustls's buffer (vectored writes gather their slices into full records) and leave with
//! one `sendmsg` over all queued records.
//!
//! `poll_write` only queues records when the socket is full; call `flush` (as `write_all` +
//! `flush` do) to push everything out.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};

use crate::net::{Handoff, TcpStream};
use crate::read_buf::ReadBuf;

/// Bytes received from the socket per `recv` on the read path.
const SCRATCH_SIZE: usize = 32 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What one attempt to feed ciphertext to rustls achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// rustls took new bytes.
    Progress,
    /// rustls takes nothing more for now (plaintext buffer full, or close_notify received).
    Stuck,
    /// The socket reached end of stream.
    Eof,
}

/// A TLS handshake or session could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The peer sent something TLS forbids or offered nothing we accept (peer's fault or a
    /// configuration mismatch): bad certificate, no common cipher suite, wrong protocol...
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The remote address.
        peer: SocketAddr,
        /// What rustls rejected.
        #[source]
        source: rustls::Error,
    },
    /// The peer closed the connection before the handshake completed.
    #[error("{peer} closed the connection during the TLS handshake")]
    ClosedDuringHandshake {
        /// The remote address.
        peer: SocketAddr,
    },
    /// The handshake did not complete in time (slow or silent peer).
    #[error("TLS handshake with {peer} did not complete within {timeout:?}")]
    Timeout {
        /// The remote address.
        peer: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// A socket error (local or network).
    #[error("TLS connection with {peer}: {source}")]
    Io {
        /// The remote address.
        peer: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The session could not be created from the configuration (our fault: bad config).
    #[error("cannot start a TLS session: {0}")]
    Config(#[source] rustls::Error),
    /// A handoff without a TLS session was given to [`TlsStream::from_handoff`] (caller bug).
    #[error("the handoff carries no TLS session")]
    NotTls,
}

/// A TLS connection over a [`TcpStream`]; `C` is `rustls::ServerConnection` or
/// `rustls::ClientConnection`. Implements `futures_lite::AsyncRead + AsyncWrite`.
#[derive(Debug)]
pub struct TlsStream<C> {
    tcp: TcpStream,
    session: C,
    /// Ciphertext read (or carried over) but not yet taken by rustls.
    pending: Vec<u8>,
    pending_pos: usize,
    /// The socket reported end of stream and rustls was told.
    eof_fed: bool,
    /// close_notify has been queued.
    close_sent: bool,
}

/// Everything that makes up a TLS connection, for moving it between shards.
#[derive(Debug)]
pub struct TlsParts<C> {
    /// The connected socket.
    pub fd: OwnedFd,
    /// The remote address.
    pub peer: SocketAddr,
    /// Ciphertext read from the socket but not yet fed to the session.
    pub read_ahead: Vec<u8>,
    /// The session (keys, sequence numbers, buffered plaintext and records).
    pub session: C,
}

/// Accepts a TLS connection: runs the server handshake on `stream` within `handshake_timeout`.
/// `read_ahead` holds bytes already read from the socket (e.g. while sniffing the protocol);
/// they are fed to rustls before anything new from the socket.
pub async fn accept(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> Result<TlsStream<ServerConnection>, TlsError> {
    accept_with_read_ahead(stream, config, Vec::new(), handshake_timeout).await
}

/// [`accept`] with bytes already read from the socket.
pub async fn accept_with_read_ahead(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    read_ahead: Vec<u8>,
    handshake_timeout: Duration,
) -> Result<TlsStream<ServerConnection>, TlsError> {
    let session = ServerConnection::new(config).map_err(TlsError::Config)?;
    TlsStream::from_parts_unchecked(stream, session, read_ahead)
        .handshake(handshake_timeout)
        .await
}

/// Connects TLS as a client over `stream` to `server_name`, within `handshake_timeout`.
pub async fn connect(
    stream: TcpStream,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
) -> Result<TlsStream<ClientConnection>, TlsError> {
    let session = ClientConnection::new(config, server_name).map_err(TlsError::Config)?;
    TlsStream::from_parts_unchecked(stream, session, Vec::new())
        .handshake(handshake_timeout)
        .await
}

impl<C, D> TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    fn from_parts_unchecked(tcp: TcpStream, session: C, read_ahead: Vec<u8>) -> Self {
        TlsStream {
            tcp,
            session,
            pending: read_ahead,
            pending_pos: 0,
            eof_fed: false,
            close_sent: false,
        }
    }

    /// Wraps an established (or in-progress) session over `tcp`, e.g. after moving it. The
    /// handshake, if unfinished, continues on the first read or write, or via
    /// [`handshake`](Self::handshake).
    pub fn from_session(tcp: TcpStream, session: C, read_ahead: Vec<u8>) -> Self {
        Self::from_parts_unchecked(tcp, session, read_ahead)
    }

    /// Rebuilds a connection from its parts on the current shard.
    pub fn from_parts(parts: TlsParts<C>) -> io::Result<Self> {
        let tcp = TcpStream::from_owned_fd(parts.fd)?;
        Ok(Self::from_parts_unchecked(
            tcp,
            parts.session,
            parts.read_ahead,
        ))
    }

    /// Takes the connection apart for another shard (see [`TlsParts`]). Queued TLS records stay
    /// in the session and are sent by the next shard's first write or flush.
    pub fn into_parts(self) -> io::Result<TlsParts<C>> {
        let peer = self.tcp.peer_addr()?;
        let read_ahead = if self.pending_pos == 0 {
            self.pending
        } else {
            self.pending
                .get(self.pending_pos..)
                .unwrap_or_default()
                .to_vec()
        };
        Ok(TlsParts {
            fd: self.tcp.into_owned_fd()?,
            peer,
            read_ahead,
            session: self.session,
        })
    }

    /// Completes the handshake (a no-op if done) within `timeout`, flushing what it produced.
    pub async fn handshake(mut self, timeout: Duration) -> Result<Self, TlsError> {
        let peer = self.tcp.peer_addr().map_err(|source| TlsError::Io {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let result = crate::timer::timeout(timeout, poll_fn(|cx| self.poll_handshake(cx))).await;
        match result {
            Ok(Ok(())) => Ok(self),
            Ok(Err(err)) => Err(classify(err, peer)),
            Err(_) => Err(TlsError::Timeout { peer, timeout }),
        }
    }

    /// The rustls session: peer certificates, ALPN protocol, SNI, negotiated version.
    pub fn session(&self) -> &C {
        &self.session
    }

    /// The rustls session, mutably (e.g. to export keying material).
    pub fn session_mut(&mut self) -> &mut C {
        &mut self.session
    }

    /// The certificate chain the peer presented, leaf first, if any.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.session.peer_certificates()
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.session.alpn_protocol()
    }

    /// Bytes of ciphertext received but not yet taken by rustls (they travel in a handoff).
    pub fn buffered_ciphertext(&self) -> usize {
        self.pending.len() - self.pending_pos
    }

    /// The underlying TCP stream (addresses, socket options). Do not read or write it directly.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let write_pending = match self.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => true,
            };
            if !self.session.is_handshaking() {
                return if write_pending {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                };
            }
            if !self.session.wants_read() {
                // Nothing to read until our flight is out.
                return if write_pending {
                    Poll::Pending
                } else {
                    Poll::Ready(Err(io::Error::other(
                        "TLS handshake stalled: session neither reads nor writes",
                    )))
                };
            }
            match self.poll_fill(cx, true) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(Fill::Progress)) => continue,
                Poll::Ready(Ok(Fill::Stuck)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "peer closed the TLS session during the handshake",
                    )))
                }
                Poll::Ready(Ok(Fill::Eof)) => {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                }
            }
        }
    }

    /// Feeds ciphertext to rustls: first what is pending, else one `recv` from the socket.
    /// `register_writes` says whether flushing handshake replies may park this task on write
    /// readiness (only when no other task writes this stream concurrently, i.e. never from
    /// `poll_read`).
    fn poll_fill(&mut self, cx: &mut Context<'_>, register_writes: bool) -> Poll<io::Result<Fill>> {
        if self.pending_pos < self.pending.len() {
            let fed = {
                let mut rest = self.pending.get(self.pending_pos..).unwrap_or_default();
                let before = rest.len();
                feed(&mut self.session, &mut rest).map(|()| before - rest.len())
            };
            let taken = match fed {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            };
            self.pending_pos += taken;
            if self.pending_pos >= self.pending.len() {
                self.pending = Vec::new();
                self.pending_pos = 0;
            }
            self.after_feed(cx, register_writes);
            return Poll::Ready(Ok(if taken > 0 {
                Fill::Progress
            } else {
                Fill::Stuck
            }));
        }
        if self.eof_fed {
            return Poll::Ready(Ok(Fill::Eof));
        }
        let received = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < SCRATCH_SIZE {
                scratch.resize(SCRATCH_SIZE, 0);
            }
            let n = match Pin::new(&mut &self.tcp).poll_read(cx, &mut scratch[..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => n,
            };
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            let mut rest = &scratch[..n];
            if let Err(e) = feed(&mut self.session, &mut rest) {
                return Poll::Ready(Err(e));
            }
            if !rest.is_empty() {
                self.pending.extend_from_slice(rest);
            }
            Poll::Ready(Ok(n))
        });
        match received {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.fail(e))),
            Poll::Ready(Ok(0)) => {
                // Tell rustls the transport ended, so a missing close_notify is reported as
                // UnexpectedEof by the reader.
                let _ = self.session.read_tls(&mut io::empty());
                self.eof_fed = true;
                Poll::Ready(Ok(Fill::Eof))
            }
            Poll::Ready(Ok(_)) => {
                self.after_feed(cx, register_writes);
                Poll::Ready(Ok(Fill::Progress))
            }
        }
    }

    /// After new packets were processed rustls may have replies queued (handshake flights, key
    /// updates); push them out now.
    fn after_feed(&mut self, cx: &mut Context<'_>, register_writes: bool) {
        if !self.session.wants_write() {
            return;
        }
        if register_writes {
            let _ = self.poll_flush_tls(cx);
        } else {
            let _ = self.try_flush_tls();
        }
    }

    /// On a protocol error rustls queues an alert; try to send it before reporting.
    fn fail(&mut self, err: io::Error) -> io::Error {
        let _ = self.try_flush_tls();
        err
    }

    /// Writes queued TLS records, parking on write readiness when the socket is full.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.session.wants_write() {
            let mut out = SocketWriter {
                tcp: &self.tcp,
                cx: Some(cx),
            };
            match self.session.write_tls(&mut out) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes queued TLS records as far as the socket takes them now, without registering for
    /// write readiness (so a concurrent writer's wake-up is not displaced).
    fn try_flush_tls(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            let mut out = SocketWriter {
                tcp: &self.tcp,
                cx: None,
            };
            match self.session.write_tls(&mut out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn poll_read_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            match self.poll_fill(cx, false) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(Fill::Progress)) => {
                    // A handshake still in progress (e.g. a moved session) may need our reply
                    // before the peer sends application data.
                    if self.session.is_handshaking() && self.session.wants_write() {
                        if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                // rustls takes no more ciphertext: it holds plaintext or saw close_notify, and
                // the reader reports either; anything else would spin, so report it.
                Poll::Ready(Ok(fill @ (Fill::Stuck | Fill::Eof))) => {
                    return Poll::Ready(match self.session.reader().read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            Err(if fill == Fill::Eof {
                                io::ErrorKind::UnexpectedEof.into()
                            } else {
                                io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "TLS session refuses input but has nothing to read",
                                )
                            })
                        }
                        other => other,
                    });
                }
            }
        }
    }

    fn poll_write_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_plaintext_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Queues plaintext in rustls and pushes out what the socket takes; the records that do not
    /// fit wait in rustls until the next write or flush. Over several slices rustls gathers
    /// them into full records (a 4-byte interleaved header and the packet after it go in the
    /// same record, not one record each).
    fn poll_write_plaintext_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS stream already closed for writing",
            )));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            let queued = self.session.writer().write_vectored(bufs)?;
            if queued > 0 {
                if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(queued));
            }
            match self.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_close_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_sent {
            self.session.send_close_notify();
            self.close_sent = true;
        }
        match self.poll_flush_tls(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match self.tcp.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl TlsStream<ServerConnection> {
    /// Packs this server connection into a [`Handoff`] for the owner shard.
    pub fn into_handoff(self) -> io::Result<Handoff> {
        let parts = self.into_parts()?;
        Ok(Handoff {
            fd: parts.fd,
            peer: parts.peer,
            read_ahead: parts.read_ahead,
            tls: Some(parts.session),
        })
    }

    /// Rebuilds a server connection from a [`Handoff`] on the current shard.
    pub fn from_handoff(handoff: Handoff) -> Result<Self, TlsError> {
        let peer = handoff.peer;
        let session = handoff.tls.ok_or(TlsError::NotTls)?;
        Self::from_parts(TlsParts {
            fd: handoff.fd,
            peer,
            read_ahead: handoff.read_ahead,
            session,
        })
        .map_err(|source| TlsError::Io { peer, source })
    }

    /// The SNI name the client asked for.
    pub fn server_name(&self) -> Option<&str> {
        self.session.server_name()
    }
}

/// Feeds `input` to rustls as far as it takes it, processing records as they complete.
fn feed<D: SideData>(session: &mut ConnectionCommon<D>, input: &mut &[u8]) -> io::Result<()> {
    while !input.is_empty() {
        match session.read_tls(input) {
            // After close_notify rustls takes nothing more; what follows is ignored.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(full) => {
                // Reading from a slice cannot fail, so this is rustls refusing more input: its
                // plaintext buffer is full (fine: the reader drains it) or its record buffer is
                // (a record rustls cannot complete, which it reports in process_new_packets).
                if session.wants_read() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, full));
                }
                return Ok(());
            }
        }
        session
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

fn classify(err: io::Error, peer: SocketAddr) -> TlsError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return TlsError::ClosedDuringHandshake { peer };
    }
    if !err
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
    {
        return TlsError::Io { peer, source: err };
    }
    let kind = err.kind();
    match err
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(source)) => TlsError::Handshake {
            peer,
            source: *source,
        },
        Some(Err(inner)) => TlsError::Io {
            peer,
            source: io::Error::new(kind, inner),
        },
        None => TlsError::Io {
            peer,
            source: kind.into(),
        },
    }
}

impl From<TlsError> for io::Error {
    fn from(err: TlsError) -> io::Error {
        let kind = match &err {
            TlsError::Handshake { .. } => io::ErrorKind::InvalidData,
            TlsError::ClosedDuringHandshake { .. } => io::ErrorKind::UnexpectedEof,
            TlsError::Timeout { .. } => io::ErrorKind::TimedOut,
            TlsError::Io { source, .. } => source.kind(),
            TlsError::Config(_) => io::ErrorKind::InvalidInput,
            TlsError::NotTls => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

/// `io::Write` over the socket for `write_tls`: one `sendmsg` for all queued records; a full
/// socket is `WouldBlock` (with the task registered for write readiness when `cx` is given).
struct SocketWriter<'a, 'b, 'c> {
    tcp: &'a TcpStream,
    cx: Option<&'b mut Context<'c>>,
}

impl Write for SocketWriter<'_, '_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.cx.as_deref_mut() {
            Some(cx) => match self.tcp.poll_send_vectored(cx, bufs) {
                Poll::Ready(result) => result,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            },
            None => self.tcp.send_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<C, D> AsyncRead for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
    D: SideData + 'static,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_plaintext(cx, buf)
    }
}

impl<C, D> AsyncWrite for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
    D: SideData + 'static,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plaintext(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_plaintext_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close_tls(cx)
    }
}

/// A server-side connection that is either plain TCP or TLS, so one protocol implementation
/// (HTTP, RTSP) serves both the plain and the TLS port.
#[derive(Debug)]
pub enum MaybeTls<C = ServerConnection> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<C>>),
}

impl<C, D> MaybeTls<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData + 'static,
{
    /// The underlying TCP stream (addresses, socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(tcp) => tcp,
            MaybeTls::Tls(tls) => tls.get_ref(),
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }
}

impl<C, D> MaybeTls<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
    D: SideData + 'static,
{
    /// Reads up to `max` bytes into the room of `buf` and appends what was read; the room is
    /// initialised memory zeroed at most once per allocation ([`ReadBuf`]), so a publisher's
    /// socket read in 64 KiB chunks is not preceded by a 64 KiB memset each time. The caller
    /// reserves the room ([`ReadBuf::reserve`]). Returns the bytes appended; 0 at end of stream
    /// (or when `buf` has no room).
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let window = buf.window(max);
        let read = match self {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_read(cx, window),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, window),
        };
        if let Poll::Ready(Ok(n)) = read {
            buf.commit(n);
        }
        read
    }
}

impl<C> From<TcpStream> for MaybeTls<C> {
    fn from(tcp: TcpStream) -> Self {
        MaybeTls::Plain(tcp)
    }
}

impl<C> From<TlsStream<C>> for MaybeTls<C> {
    fn from(tls: TlsStream<C>) -> Self {
        MaybeTls::Tls(Box::new(tls))
    }
}

impl<C, D> AsyncRead for MaybeTls<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
    D: SideData + 'static,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<C, D> AsyncWrite for MaybeTls<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Unpin,
    D: SideData + 'static,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_close(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_close(cx),
        }
    }
}
