//! The connection files of device links: accept on every shard, find the owner shard, move
//! the connection there, and run one task per connection on the owner.
//!
//! - Signalling (61005): the mutual-TLS handshake runs where the kernel put the connection;
//!   the UID is the client certificate's CN; the socket, the rustls session and any ciphertext
//!   read ahead move to the owner ([`rt::TlsStream::into_handoff`]).
//! - Keep-alive (61003): the 100-byte hello is read where the connection landed; its access
//!   key ends with the UID hash that names the owner; the hello travels as read-ahead bytes.
//! - The connection task is the socket's only reader and writer. It waits for whichever comes
//!   first: bytes from the device, or a wake-up from its shard (output queued by a request from
//!   elsewhere, or the session's eviction). Reads land in one per-shard scratch buffer and are
//!   fed to the session at once, so an idle link holds no read buffer of its own.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use rt::{Handoff, MaybeTls, MeshPort, TcpListener, TcpStream, TlsStream};
use signal::metrics::TlsPort;
use signal::proto::encrypt_tcp::HELLO_LEN;
use signal::session::{shard_of_access_key, shard_of_uid, ConnId, DeviceSession, LinkKind};
use tracing::{debug, warn};

use super::{ConnSignal, DeviceMsg, DeviceShard};
use crate::shard::ShardMsg;

/// Bytes received per read; a device's packets are small (heartbeats, replies), snapshots
/// arrive in several reads.
const READ_CHUNK: usize = 16 * 1024;
/// Longest time one write to a device may take before the link is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for close_notify to leave when a link closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A device connection on its way to its owner shard.
#[derive(Debug)]
pub struct DeviceHandoff {
    /// Which link.
    pub link: LinkKind,
    /// Socket, read-ahead bytes (the hello on keep-alive) and TLS session (signalling).
    pub handoff: Handoff,
    /// Signalling: the certificate's UID.
    pub uid: Option<String>,
    /// When the connection was accepted (the handshake deadline counts from here).
    pub accepted_at: Instant,
}

/// Binds both device ports on this shard and starts accepting; returns the bound addresses.
pub fn spawn_listeners(
    shard: &Rc<DeviceShard>,
    keepalive: SocketAddr,
    signalling: SocketAddr,
) -> Result<(SocketAddr, SocketAddr), String> {
    let bind = |what: &str, addr: SocketAddr| {
        TcpListener::bind(addr).map_err(|e| format!("binding the {what} listener on {addr}: {e}"))
    };
    let keepalive_listener = bind("keep-alive", keepalive)?;
    let signalling_listener = bind("signalling", signalling)?;
    let bound = (
        keepalive_listener.local_addr().unwrap_or(keepalive),
        signalling_listener.local_addr().unwrap_or(signalling),
    );
    rt::spawn_detached(accept_loop(
        shard.clone(),
        keepalive_listener,
        LinkKind::KeepAlive,
    ));
    rt::spawn_detached(accept_loop(
        shard.clone(),
        signalling_listener,
        LinkKind::Signalling,
    ));
    debug!(shard = shard.id, keepalive = %bound.0, signalling = %bound.1, "device ports listening");
    Ok(bound)
}

async fn accept_loop(shard: Rc<DeviceShard>, listener: TcpListener, link: LinkKind) {
    while let Some(accepted) = listener.accept_until(&shard.shutdown).await {
        match accepted {
            Ok(stream) => {
                let listener = match link {
                    LinkKind::KeepAlive => "keepalive",
                    LinkKind::Signalling => "signalling",
                };
                let Ok(permit) = admit_peer(listener, &stream) else {
                    continue;
                };
                match link {
                    LinkKind::KeepAlive => shard.count(|s| s.accepted_keepalive += 1),
                    LinkKind::Signalling => shard.count(|s| s.accepted_signalling += 1),
                }
                let _ = stream.set_nodelay(true);
                let shard = shard.clone();
                rt::spawn_detached(async move {
                    // Held while the connection is on this shard; the owner adopts it.
                    let _permit = permit;
                    match link {
                        LinkKind::KeepAlive => route_keepalive(shard, stream).await,
                        LinkKind::Signalling => route_signalling(shard, stream).await,
                    }
                });
            }
            Err(e) => {
                warn!(shard = shard.id, ?link, "device accept failed: {e}");
                rt::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Admits a new connection under the server's connection limits; refused connections are
/// counted there and closed by the caller dropping the stream.
fn admit_peer(
    listener: &'static str,
    stream: &TcpStream,
) -> Result<Option<signal::limits::ConnectionPermit>, signal::limits::Refusal> {
    match stream.peer_addr() {
        Ok(peer) => signal::limits::admit(listener, peer.ip()),
        Err(_) => Ok(None),
    }
}

async fn route_signalling(shard: Rc<DeviceShard>, stream: TcpStream) {
    let accepted_at = Instant::now();
    let timeout = shard.settings.session.handshake_timeout;
    let tls = match rt::tls::accept(stream, shard.settings.mtls.clone(), timeout).await {
        Ok(tls) => tls,
        Err(e) => {
            let label = signal::metrics::tls_failure_reason(&e);
            shard.count(|s| s.tls_failures.record(TlsPort::Signalling, label));
            debug!(
                shard = shard.id,
                reason = label,
                "signalling TLS handshake failed: {e}"
            );
            return;
        }
    };
    let Some(uid) = tls.peer_certificates().and_then(pki::peer_uid) else {
        shard.count(|s| s.tls_failures.record(TlsPort::Signalling, "no_device_uid"));
        return;
    };
    let owner = shard_of_uid(&uid, shard.count);
    if owner == shard.id {
        serve(
            shard,
            MaybeTls::from(tls),
            LinkKind::Signalling,
            Some(uid),
            accepted_at,
        )
        .await;
        return;
    }
    match tls.into_handoff() {
        Ok(handoff) => shard.hand_off(
            owner,
            DeviceHandoff {
                link: LinkKind::Signalling,
                handoff,
                uid: Some(uid),
                accepted_at,
            },
        ),
        Err(e) => warn!(
            shard = shard.id,
            uid, "signalling connection not handed off: {e}"
        ),
    }
}

async fn route_keepalive(shard: Rc<DeviceShard>, mut stream: TcpStream) {
    let accepted_at = Instant::now();
    let timeout = shard.settings.session.handshake_timeout;
    let mut hello = [0u8; HELLO_LEN];
    match rt::timer::timeout(timeout, stream.read_exact(&mut hello)).await {
        Ok(Ok(())) => {}
        _ => {
            shard.count(|s| s.hello_incomplete += 1);
            return;
        }
    }
    if !signal::limits::hello_is_authentic(&hello, &shard.settings.device_keys.snapshot()) {
        if let Ok(peer) = stream.peer_addr() {
            signal::limits::record_failure(
                "keepalive",
                signal::limits::Failure::AccessKey,
                peer.ip(),
            );
        }
    }
    // A malformed key names no shard: any shard can refuse the hello, this one does.
    let owner = hello
        .get(4..36)
        .and_then(|key| shard_of_access_key(key, shard.count))
        .unwrap_or(shard.id);
    if owner == shard.id {
        if stream.unread(&hello).is_ok() {
            serve(
                shard,
                MaybeTls::from(stream),
                LinkKind::KeepAlive,
                None,
                accepted_at,
            )
            .await;
        }
        return;
    }
    match stream.into_handoff(hello.to_vec()) {
        Ok(handoff) => shard.hand_off(
            owner,
            DeviceHandoff {
                link: LinkKind::KeepAlive,
                handoff,
                uid: None,
                accepted_at,
            },
        ),
        Err(e) => warn!(
            shard = shard.id,
            "keep-alive connection not handed off: {e}"
        ),
    }
}

/// Serves a connection handed over by another shard.
pub(super) fn serve_handoff(shard: Rc<DeviceShard>, handoff: DeviceHandoff) {
    rt::spawn_detached(async move {
        let peer = handoff.handoff.peer;
        let _permit = signal::limits::adopt(peer.ip());
        let stream = match handoff.link {
            LinkKind::Signalling => TlsStream::from_handoff(handoff.handoff)
                .map(MaybeTls::from)
                .map_err(io::Error::from),
            LinkKind::KeepAlive => handoff.handoff.into_tcp().map(MaybeTls::from),
        };
        match stream {
            Ok(stream) => {
                serve(
                    shard,
                    stream,
                    handoff.link,
                    handoff.uid,
                    handoff.accepted_at,
                )
                .await;
            }
            Err(e) => warn!(%peer, "handed-off device connection lost: {e}"),
        }
    });
}

/// Runs the session of one device link on its owner shard until it ends.
async fn serve(
    shard: Rc<DeviceShard>,
    mut stream: MaybeTls,
    link: LinkKind,
    uid: Option<String>,
    accepted_at: Instant,
) {
    let config = shard.settings.session.clone();
    let first_id = shard.first_request_id();
    let session = match (link, uid) {
        (LinkKind::Signalling, Some(uid)) => {
            DeviceSession::signalling(config, &uid, first_id, accepted_at)
        }
        (LinkKind::Signalling, None) => return,
        (LinkKind::KeepAlive, _) => DeviceSession::keep_alive(
            config,
            shard.settings.device_keys.snapshot(),
            rand::random(),
            first_id,
            accepted_at,
        ),
    };
    let (conn, signal) = shard.admit(session);
    let ended = run(&shard, &mut stream, conn, &signal).await;
    shard.finish(conn);
    if let Err(e) = ended {
        debug!(shard = shard.id, ?conn, "device connection ended: {e}");
    }
    let _ = rt::timer::timeout(CLOSE_TIMEOUT, stream.close()).await;
}

enum Step {
    Wake,
    Read(io::Result<usize>),
}

/// The read/write loop: write what the session queued, close when it ended, else wait for
/// bytes or a wake-up.
async fn run(
    shard: &DeviceShard,
    stream: &mut MaybeTls,
    conn: ConnId,
    signal: &ConnSignal,
) -> io::Result<()> {
    loop {
        let (output, closed) = shard.next_output(conn, signal);
        if let Some(bytes) = output {
            let write = async {
                stream.write_all(&bytes).await?;
                stream.flush().await
            };
            match rt::timer::timeout(WRITE_TIMEOUT, write).await {
                Ok(result) => result?,
                Err(elapsed) => return Err(io::Error::new(io::ErrorKind::TimedOut, elapsed)),
            }
        }
        if closed {
            return Ok(());
        }
        let mut notified = pin!(signal.notify.notified());
        let step = std::future::poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Wake);
            }
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                if scratch.len() < READ_CHUNK {
                    scratch.resize(READ_CHUNK, 0);
                }
                std::pin::Pin::new(&mut *stream)
                    .poll_read(cx, &mut scratch[..])
                    .map(Step::Read)
            })
        })
        .await;
        match step {
            Step::Wake => {}
            Step::Read(Ok(0)) => return Ok(()),
            Step::Read(Ok(n)) => SCRATCH.with(|scratch| {
                let scratch = scratch.borrow();
                shard.receive(conn, scratch.get(..n).unwrap_or_default());
            }),
            Step::Read(Err(e)) => return Err(e),
        }
    }
}

/// Sends queued handoffs, one message per destination shard per burst.
pub(super) async fn flush_handoffs(shard: Rc<DeviceShard>, port: Rc<MeshPort<ShardMsg>>) {
    while shard
        .shutdown
        .until(shard.outbox_notify.notified())
        .await
        .is_some()
    {
        let batches: Vec<(usize, Vec<DeviceHandoff>)> = shard
            .outbox
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(to, queue)| (to, std::mem::take(queue)))
            .collect();
        for (to, handoffs) in batches {
            let msg = ShardMsg::Device(DeviceMsg::Connections(handoffs));
            if let Err(e) = port.send_to(to, msg).await {
                warn!(
                    shard = shard.id,
                    to, "device connections not handed off: {e}"
                );
            }
        }
    }
}
