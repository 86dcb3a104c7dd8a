//! One RTSP connection on its shard: the only place the RTSP server touches a socket.
//!
//! The transport is plain TCP (61008) or TLS (RTSPS, 61004), held in a `RefCell` and borrowed
//! only inside one poll, never across an `.await`. Over TLS a write is taken by rustls (which
//! gathers the batch's slices into full records) and leaves when the socket takes it; the
//! writer flushes queued records before it parks, and a closing connection sends close_notify.
//!
//! Two halves run concurrently on the same transport:
//! - the **reader** parses requests and `$` frames from a receive buffer (limits from the
//!   demuxer: 8 KiB of headers, 64 KiB bodies and frames), feeds requests to the
//!   [`Session`] and performs what it asks on the shard (describe, publish, play), pushes a
//!   publisher's frames into the hub as slices of the receive buffer (no copy), and queues
//!   responses;
//! - the **writer** owns every write: queued responses, and for a player the hub's batches,
//!   each written with one `sendmsg` (the viewer's interleaved headers beside the shared packets).
//!   A response is only written between two packets, never inside one, so the byte stream stays
//!   valid whatever the socket accepts. When the socket is full the writer waits for io_uring
//!   write readiness; meanwhile the hub counts the viewer as behind, skips it to a keyframe and
//!   finally evicts it, which wakes the writer through the viewer's notify and ends the
//!   connection.
//!
//! Timeouts are not timers here: the shard's sweeper watches the connection's timestamps
//! ([`crate::shard::ConnWatch`]) and raises its expiry signal. Errors are logged with the
//! connection id, peer, stream and stream offset; the peer gets a precise status, then the
//! connection closes.

use std::cell::RefCell;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Buf;
use futures_lite::future::{or, poll_fn};
use futures_lite::io::AsyncWrite;
use rt::{Handoff, MaybeTls, ReadBuf};
use tracing::{debug, info};

use super::session::{Answer, Effect, FrameAction, Need, Reply, Session, State, Step};
use crate::hub::{
    LocalNotify, PublisherId, RtpPacket, StreamHub, ViewerEnd, ViewerId, MAX_IO_SLICES_PER_PACKET,
};
use crate::proto::interleaved::{DemuxLimits, Demuxed, Demuxer};
use crate::proto::rtsp::{Parsed, RtspError, RtspMessage, RtspResponse, StatusCode};
use crate::shard::{ConnWatch, Expiry, Shard};

/// Most packets per `sendmsg` to a viewer.
const BATCH_PACKETS: usize = 64;
/// Most bytes per `sendmsg` to a viewer.
const BATCH_BYTES: usize = 256 * 1024;
/// `IoSlice`s a batch needs at most (the rest of a half-sent packet, then the packets).
const BATCH_SLICES: usize = (BATCH_PACKETS + 1) * MAX_IO_SLICES_PER_PACKET;
/// Batches a writer sends before yielding to other tasks of the shard.
const BATCHES_PER_POLL: usize = 16;
/// Receive buffer growth step of a publisher; the demuxer bounds what the buffer holds to one
/// message or frame.
const READ_CHUNK: usize = 64 * 1024;
/// Receive buffer growth step of everyone else: players send small requests and RTCP, and a
/// shard holds thousands of them.
const SMALL_READ_CHUNK: usize = 4 * 1024;

/// A player's place in a hub.
struct ViewerHandle {
    hub: Rc<RefCell<StreamHub>>,
    id: ViewerId,
    notify: LocalNotify,
}

/// Everything the writer writes, shared with the reader.
struct Outbox {
    /// Response bytes not yet written, from `sent`.
    control: Vec<u8>,
    sent: usize,
    viewer: Option<ViewerHandle>,
    /// The reader asked to remove the viewer (PAUSE, TEARDOWN); done between two packets.
    stop_viewer: bool,
    /// The last write ended on a packet boundary (nothing of a packet is half sent).
    at_boundary: bool,
    /// Finish the responses, then end.
    closing: bool,
}

impl Outbox {
    fn has_control(&self) -> bool {
        self.sent < self.control.len()
    }
}

/// An RTSP connection on its way to the shard that owns its stream.
#[derive(Debug)]
pub struct RtspHandoff {
    /// Socket and TLS session; for plain TCP its read-ahead holds the unconsumed request bytes.
    pub handoff: Handoff,
    /// TLS only: plaintext already taken out of the session and not yet consumed (the request
    /// that named the stream); the owner starts parsing with it.
    pub plaintext: Vec<u8>,
}

impl RtspHandoff {
    /// Rebuilds the transport on the current shard; returns it with the plaintext to parse first.
    pub fn into_transport(self) -> Result<(MaybeTls, Vec<u8>), rt::TlsError> {
        let peer = self.handoff.peer;
        let transport = if self.handoff.tls.is_some() {
            MaybeTls::from(rt::TlsStream::from_handoff(self.handoff)?)
        } else {
            let tcp = self
                .handoff
                .into_tcp()
                .map_err(|source| rt::TlsError::Io { peer, source })?;
            MaybeTls::from(tcp)
        };
        Ok((transport, self.plaintext))
    }
}

/// The connection's transport, shared by the reader and the writer (borrowed within one poll).
type Transport = RefCell<MaybeTls>;

/// State of one connection shared by its reader, writer and clean-up.
struct Conn {
    id: u64,
    peer: SocketAddr,
    shard: Rc<Shard>,
    watch: Rc<ConnWatch>,
    out: RefCell<Outbox>,
    /// Raised by the reader when the writer has something new to do.
    wake_writer: LocalNotify,
    /// Raised by the writer when its queued responses are written and stops done.
    drained: LocalNotify,
    publisher: RefCell<Option<(Rc<RefCell<StreamHub>>, PublisherId)>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(viewer) = self.out.get_mut().viewer.take() {
            if let Ok(mut hub) = viewer.hub.try_borrow_mut() {
                hub.remove_viewer(viewer.id);
            }
        }
        if let Some((hub, publisher)) = self.publisher.get_mut().take() {
            if let Ok(mut hub) = hub.try_borrow_mut() {
                let _ = hub.detach_publisher(publisher, Instant::now());
                info!(conn = self.id, peer = %self.peer, stream = %hub.key(), "publisher left");
            }
        }
        self.shard.unregister_conn(self.id);
    }
}

/// How the reader stopped.
enum ReaderEnd {
    /// The peer closed or the socket failed: close at once.
    Gone,
    /// Flush the queued responses, then close.
    Close,
    /// The stream belongs to shard `to`: move the connection there with these unconsumed bytes.
    HandOff { to: usize, read_ahead: Vec<u8> },
}

/// How the writer stopped.
enum WriterEnd {
    /// Queued responses written and the connection is closing.
    Flushed,
    /// The viewer's stream ended or the viewer was evicted.
    Viewer(ViewerEnd),
    /// The socket failed.
    Failed(std::io::Error),
}

enum End {
    Reader(ReaderEnd),
    Writer(WriterEnd),
    Expired(Expiry),
    Shutdown,
}

/// Serves one RTSP connection until it closes or moves to another shard. `initial` holds
/// plaintext already read (a handed-off TLS connection's pending request).
pub async fn serve(shard: Rc<Shard>, transport: MaybeTls, peer: SocketAddr, initial: Vec<u8>) {
    let _ = transport.tcp().set_nodelay(true);
    let stream: Transport = RefCell::new(transport);
    let (id, watch) = shard.register_conn(Instant::now());
    let conn = Rc::new(Conn {
        id,
        peer,
        shard: shard.clone(),
        watch,
        out: RefCell::new(Outbox {
            control: Vec::new(),
            sent: 0,
            viewer: None,
            stop_viewer: false,
            at_boundary: true,
            closing: false,
        }),
        wake_writer: LocalNotify::new(),
        drained: LocalNotify::new(),
        publisher: RefCell::new(None),
    });
    let session_id = format!("{:016x}", rand::random::<u64>());
    let mut session = Session::new(
        session_id,
        shard.settings.rtsp.session,
        shard.signer.clone(),
    );
    debug!(conn = id, shard = shard.id, %peer, "RTSP connection");

    let end = {
        let reader = async { End::Reader(read_loop(&conn, &stream, &mut session, initial).await) };
        let writer = async { End::Writer(poll_fn(|cx| poll_writer(&conn, &stream, cx)).await) };
        let expired = async {
            conn.watch.expired_notify.notified().await;
            End::Expired(conn.watch.expired.get().unwrap_or(Expiry::SessionTimeout))
        };
        let shutdown = async {
            shard.shutdown.wait().await;
            End::Shutdown
        };
        or(or(reader, writer), or(expired, shutdown)).await
    };
    let stream_name = session
        .stream()
        .map(ToString::to_string)
        .unwrap_or_default();
    match end {
        End::Reader(ReaderEnd::Gone) | End::Shutdown => {}
        End::Reader(ReaderEnd::Close) => flush_and_close(&conn, &stream).await,
        End::Reader(ReaderEnd::HandOff { to, read_ahead }) => {
            drop(session);
            // Nothing of the connection stays here: the Conn's drop only unregisters it.
            drop(conn);
            let handoff = match stream.into_inner() {
                MaybeTls::Plain(tcp) => tcp.into_handoff(read_ahead).map(|handoff| RtspHandoff {
                    handoff,
                    plaintext: Vec::new(),
                }),
                MaybeTls::Tls(tls) => (*tls).into_handoff().map(|handoff| RtspHandoff {
                    handoff,
                    plaintext: read_ahead,
                }),
            };
            match handoff {
                Ok(handoff) => {
                    debug!(conn = id, from = shard.id, to, %peer, "RTSP connection handed off");
                    shard.hand_off(to, handoff);
                }
                Err(e) => debug!(conn = id, %peer, "RTSP handoff failed: {e}"),
            }
            return;
        }
        End::Writer(WriterEnd::Flushed) => {}
        End::Writer(WriterEnd::Viewer(reason)) => {
            info!(conn = id, %peer, stream = %stream_name, "player closed: {reason}");
        }
        End::Writer(WriterEnd::Failed(e)) => {
            debug!(conn = id, %peer, stream = %stream_name, "write failed: {e}");
        }
        End::Expired(Expiry::RequestTimeout) => {
            debug!(conn = id, %peer, "request not complete in time (slowloris?)");
            let response = RtspResponse::builder(StatusCode::REQUEST_TIMEOUT).build();
            queue_response(&conn, &response);
            flush_and_close(&conn, &stream).await;
        }
        End::Expired(expiry) => {
            debug!(conn = id, %peer, stream = %stream_name, ?expiry, "connection timed out");
        }
    }
    close(&conn, &stream).await;
}

/// Ends the connection: close_notify first over TLS (for at most the close linger), then the
/// socket.
async fn close(conn: &Conn, stream: &Transport) {
    if stream.borrow().is_tls() {
        let close_notify = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_close(cx));
        let _ = rt::timer::timeout(conn.shard.settings.rtsp.close_linger, close_notify).await;
    }
    let _ = stream.borrow().tcp().shutdown(std::net::Shutdown::Both);
}

/// Writes what is queued (for at most the close linger: the peer may not read), then returns.
async fn flush_and_close(conn: &Conn, stream: &Transport) {
    conn.out.borrow_mut().closing = true;
    let writer = poll_fn(|cx| poll_writer(conn, stream, cx));
    let _ = rt::timer::timeout(conn.shard.settings.rtsp.close_linger, writer).await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn queue_response(conn: &Conn, response: &RtspResponse) {
    let mut out = conn.out.borrow_mut();
    if !out.has_control() {
        out.control.clear();
        out.sent = 0;
    }
    response.encode(&mut out.control);
    drop(out);
    conn.wake_writer.notify();
}

/// Waits until the writer has written every queued response and done any pending stop.
async fn drained(conn: &Conn) {
    loop {
        {
            let out = conn.out.borrow();
            if !out.has_control() && !out.stop_viewer {
                return;
            }
        }
        conn.drained.notified().await;
    }
}

async fn read_loop(
    conn: &Conn,
    stream: &Transport,
    session: &mut Session,
    initial: Vec<u8>,
) -> ReaderEnd {
    let mut rx = ReadBuf::new();
    rx.extend_from_slice(&initial, SMALL_READ_CHUNK);
    drop(initial);
    let mut demuxer = Demuxer::new(DemuxLimits::default());
    let mut invalid_packets: u64 = 0;
    loop {
        // Everything complete in the buffer first.
        loop {
            let buf = rx.filled_mut();
            let parsed = match demuxer.feed(buf) {
                Ok(parsed) => parsed,
                Err(e) => return protocol_error(conn, session, &demuxer, &e),
            };
            let Parsed::Complete { message, consumed } = parsed else {
                break;
            };
            match message {
                Demuxed::Rtsp(RtspMessage::Request(request)) => {
                    if session.stream().is_none() && conn.shard.count > 1 {
                        if let Some(stream_key) = session.stream_named_by(&request, unix_now()) {
                            let owner = conn.shard.owner_of(&stream_key);
                            if owner != conn.shard.id {
                                drained(conn).await;
                                return ReaderEnd::HandOff {
                                    to: owner,
                                    read_ahead: buf.to_vec(),
                                };
                            }
                        }
                    }
                    buf.advance(consumed);
                    if handle_request(conn, session, &request).await {
                        return ReaderEnd::Close;
                    }
                }
                Demuxed::Rtsp(RtspMessage::Response(_)) => {
                    // The server sends no requests, so a response is noise: ignore it.
                    buf.advance(consumed);
                }
                Demuxed::Interleaved { channel, payload } => {
                    let frame = buf.split_to(consumed).freeze().slice(payload);
                    match session.on_frame(channel, &frame) {
                        FrameAction::Push(meta) => {
                            push_frame(conn, meta, frame);
                            if let Some(sdp) = session.take_updated_description() {
                                update_description(conn, sdp);
                            }
                        }
                        FrameAction::Ignore => {}
                        FrameAction::Invalid(e) => {
                            invalid_packets += 1;
                            if invalid_packets.is_power_of_two() {
                                debug!(conn = conn.id, peer = %conn.peer, offset = demuxer.position(), count = invalid_packets, "publisher packet dropped: {e}");
                            }
                        }
                        FrameAction::Reject => {
                            debug!(conn = conn.id, peer = %conn.peer, channel, offset = demuxer.position(), "interleaved data before SETUP");
                            let response = RtspResponse::builder(StatusCode::BAD_REQUEST).build();
                            queue_response(conn, &response);
                            return ReaderEnd::Close;
                        }
                    }
                }
            }
        }
        // Then more bytes.
        let now = Instant::now();
        conn.watch.request_started.set(
            if rx.filled().is_empty() || session.state() == State::Recording {
                None
            } else {
                Some(conn.watch.request_started.get().unwrap_or(now))
            },
        );
        if conn.out.borrow().control.len() > conn.shard.settings.rtsp.max_queued_responses {
            debug!(conn = conn.id, peer = %conn.peer, "client does not read its responses");
            return ReaderEnd::Gone;
        }
        let chunk = if session.state() == State::Recording {
            READ_CHUNK
        } else {
            SMALL_READ_CHUNK
        };
        rx.reserve(chunk / 4, chunk);
        // Straight into the room after the pending bytes, zeroed once per allocation.
        let read = poll_fn(|cx| stream.borrow_mut().poll_read_buf(cx, &mut rx, usize::MAX)).await;
        match read {
            Ok(0) => {
                debug!(conn = conn.id, peer = %conn.peer, "peer closed the connection");
                return ReaderEnd::Gone;
            }
            Err(e) => {
                debug!(conn = conn.id, peer = %conn.peer, "read failed: {e}");
                return ReaderEnd::Gone;
            }
            Ok(n) => {
                conn.watch.last_activity.set(Instant::now());
                if session.state() == State::Recording {
                    conn.shard.count_media(|m| {
                        m.add_bytes_in(signal::metrics::IngestMode::RtspPublish, n as u64)
                    });
                }
            }
        }
    }
}

/// A peer's protocol error: the precise status, then close.
fn protocol_error(
    conn: &Conn,
    session: &Session,
    demuxer: &Demuxer,
    error: &RtspError,
) -> ReaderEnd {
    debug!(
        conn = conn.id,
        peer = %conn.peer,
        stream = ?session.stream().map(ToString::to_string),
        offset = demuxer.position(),
        "bad input from client: {error}"
    );
    let response = RtspResponse::builder(error.status()).build();
    queue_response(conn, &response);
    ReaderEnd::Close
}

/// Handles one request; returns true when the connection must close after the response.
async fn handle_request(
    conn: &Conn,
    session: &mut Session,
    request: &crate::proto::rtsp::RtspRequest,
) -> bool {
    let mut step = session.on_request(request, unix_now());
    let reply = loop {
        match step {
            Step::Reply(reply) => break reply,
            Step::Need(need) => {
                let answer = perform(conn, need).await;
                step = session.resume(answer);
            }
        }
    };
    let Reply {
        response,
        effect,
        close,
    } = reply;
    debug!(conn = conn.id, method = %request.method, status = response.status.0, "RTSP request");
    // 401/403: a play or publish token that does not verify (guessing is counted per address;
    // an address boxed for it loses this connection too, after the answer).
    let boxed = matches!(response.status.0, 401 | 403)
        && signal::limits::record_failure(
            "rtsp",
            signal::limits::Failure::PlayToken,
            conn.peer.ip(),
        );
    queue_response(conn, &response);
    match effect {
        Effect::None => {}
        Effect::StopViewer => {
            conn.out.borrow_mut().stop_viewer = true;
            conn.wake_writer.notify();
        }
        Effect::StopPublisher => {
            if let Some((hub, publisher)) = conn.publisher.borrow_mut().take() {
                let _ = hub.borrow_mut().detach_publisher(publisher, Instant::now());
                info!(conn = conn.id, peer = %conn.peer, stream = %hub.borrow().key(), "publisher tore down");
            }
        }
    }
    let limit = match session.state() {
        // A playing TCP client may send nothing for as long as it plays.
        State::Playing => None,
        _ => Some(std::time::Duration::from_secs(u64::from(
            session.timeout_secs(),
        ))),
    };
    conn.watch.idle_limit.set(limit);
    close || boxed
}

async fn perform(conn: &Conn, need: Need) -> Answer {
    let shard = &conn.shard;
    match need {
        Need::Description { stream } => Answer::Description(
            shard
                .wait_description(&stream, shard.settings.rtsp.publisher_wait)
                .await,
        ),
        Need::Publish {
            stream,
            description,
        } => Answer::Publish(shard.publish(&stream, description).map(|attached| {
            info!(conn = conn.id, peer = %conn.peer, %stream, "publishing");
            *conn.publisher.borrow_mut() = Some(attached);
        })),
        Need::Play { stream, channels } => {
            // A PAUSE just before must have removed the previous viewer first.
            drained(conn).await;
            let notify = LocalNotify::new();
            Answer::Play(
                shard
                    .add_viewer(&stream, channels, notify.clone())
                    .map(|(hub, id)| {
                        debug!(conn = conn.id, peer = %conn.peer, %stream, "playing");
                        conn.out.borrow_mut().viewer = Some(ViewerHandle { hub, id, notify });
                    }),
            )
        }
        Need::Seek { stream, start } => {
            let sought = shard.seek(&stream, start).await;
            match &sought {
                Ok(at) => {
                    info!(conn = conn.id, peer = %conn.peer, %stream, requested = ?start, at = ?at, "replay seek")
                }
                Err(refusal) => {
                    debug!(conn = conn.id, peer = %conn.peer, %stream, requested = ?start, "replay seek refused: {refusal:?}")
                }
            }
            Answer::Seek(sought)
        }
    }
}

fn push_frame(conn: &Conn, meta: crate::hub::PacketMeta, frame: bytes::Bytes) {
    let publisher = conn.publisher.borrow();
    let Some((hub, publisher)) = publisher.as_ref() else {
        return;
    };
    // Empty frames are refused by the packet type; nothing to relay then.
    if let Ok(packet) = RtpPacket::passthrough(meta, frame) {
        let _ = hub.borrow_mut().push(*publisher, packet);
    }
}

/// Serves `sdp` (the publisher's, completed with in-band parameter sets) to later DESCRIBEs.
fn update_description(conn: &Conn, sdp: String) {
    let publisher = conn.publisher.borrow();
    let Some((hub, _)) = publisher.as_ref() else {
        return;
    };
    let mut hub = hub.borrow_mut();
    let tracks = hub
        .description()
        .map(|d| d.tracks.clone())
        .unwrap_or_default();
    debug!(conn = conn.id, peer = %conn.peer, "stream description completed with in-band parameter sets");
    hub.set_description(crate::hub::StreamDescription { sdp, tracks });
}

/// Polls a notify once, registering the task's waker.
fn poll_notify(notify: &LocalNotify, cx: &mut Context<'_>) -> Poll<()> {
    let mut notified = notify.notified();
    Pin::new(&mut notified).poll(cx)
}

/// The writer: responses between packets, then the viewer's batches, one `sendmsg` each.
/// One vectored write: a single `sendmsg` on plain TCP; over TLS, into rustls's records (then
/// out as far as the socket takes them).
fn poll_send(
    stream: &Transport,
    cx: &mut Context<'_>,
    slices: &[IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    match &mut *stream.borrow_mut() {
        MaybeTls::Plain(tcp) => tcp.poll_send_vectored(cx, slices),
        MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, slices),
    }
}

/// Before the writer parks: TLS records rustls still holds must leave (a no-op on plain TCP).
/// Pending when the socket is full (the task then waits for write readiness too).
fn poll_flush_records(stream: &Transport, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    match &mut *stream.borrow_mut() {
        MaybeTls::Plain(_) => Poll::Ready(Ok(())),
        MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
    }
}

fn poll_writer(conn: &Conn, stream: &Transport, cx: &mut Context<'_>) -> Poll<WriterEnd> {
    let mut batches = 0;
    loop {
        let mut out = conn.out.borrow_mut();
        if out.at_boundary {
            if out.stop_viewer {
                if let Some(viewer) = out.viewer.take() {
                    viewer.hub.borrow_mut().remove_viewer(viewer.id);
                }
                out.stop_viewer = false;
                if !out.has_control() {
                    conn.drained.notify();
                }
            }
            if out.has_control() {
                let sent = {
                    let pending = [IoSlice::new(&out.control[out.sent..])];
                    poll_send(stream, cx, &pending)
                };
                match sent {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(WriterEnd::Failed(std::io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        out.sent += n;
                        if !out.has_control() {
                            out.control.clear();
                            out.sent = 0;
                            conn.drained.notify();
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(WriterEnd::Failed(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if out.closing {
                return match poll_flush_records(stream, cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(WriterEnd::Flushed),
                    Poll::Ready(Err(e)) => Poll::Ready(WriterEnd::Failed(e)),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
        let Some(viewer) = &out.viewer else {
            drop(out);
            if let Poll::Ready(Err(e)) = poll_flush_records(stream, cx) {
                return Poll::Ready(WriterEnd::Failed(e));
            }
            if poll_notify(&conn.wake_writer, cx).is_ready() {
                continue;
            }
            return Poll::Pending;
        };
        if batches == BATCHES_PER_POLL {
            // Let the shard's other tasks (other viewers, the publisher) run.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        batches += 1;
        let hub = viewer.hub.clone();
        let id = viewer.id;
        let notify = viewer.notify.clone();
        let mut hub = hub.borrow_mut();
        let batch = match hub.next_batch(id, BATCH_PACKETS, BATCH_BYTES) {
            Ok(batch) => batch,
            Err(end) => return Poll::Ready(WriterEnd::Viewer(end)),
        };
        if batch.is_empty() {
            out.at_boundary = true;
            let stop_or_control = out.stop_viewer || out.has_control() || out.closing;
            drop(hub);
            drop(out);
            if stop_or_control {
                continue;
            }
            // Parked in the hub: its notify says when there is more; ours, when the reader
            // queued a response. What rustls holds leaves first.
            if let Poll::Ready(Err(e)) = poll_flush_records(stream, cx) {
                return Poll::Ready(WriterEnd::Failed(e));
            }
            let more_media = poll_notify(&notify, cx).is_ready();
            let more_control = poll_notify(&conn.wake_writer, cx).is_ready();
            if more_media || more_control {
                continue;
            }
            return Poll::Pending;
        }
        let mut slices = [IoSlice::new(&[]); BATCH_SLICES];
        let filled = batch.fill_io_slices(&mut slices);
        let wire_len = batch.wire_len();
        match poll_send(stream, cx, &slices[..filled]) {
            Poll::Ready(Ok(sent)) => {
                batch.consume(sent);
                out.at_boundary = sent == wire_len;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(WriterEnd::Failed(e)),
            Poll::Pending => {
                drop(hub);
                drop(out);
                // The socket is full. Eviction (or the stream's end) raises the viewer's notify.
                if poll_notify(&notify, cx).is_ready() {
                    continue;
                }
                return Poll::Pending;
            }
        }
    }
}
