//! The connection files of device streams: accept 61006/61007 on every shard, find the owner
//! shard (TLS: the certificate's UID; encryptTCP: the UID hash in the hello's access key), move
//! the connection there with its TLS session or hello, and run the ingest on the owner: socket
//! bytes (TLS plaintext on 61006) are read straight into the ingest's receive buffer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use rt::{Handoff, MaybeTls, MeshPort, TcpListener, TcpStream, TlsStream};
use signal::metrics::{IngestMode, TlsPort};
use signal::proto::access_key::split_access_key;
use signal::proto::body::StreamMode;
use signal::proto::encrypt_tcp::HELLO_LEN;
use signal::session::{shard_of_access_key, shard_of_uid};
use tracing::{debug, info, warn};

use super::{StreamMsg, StreamShard};
use crate::ingest::{
    DeviceStreamIngest, IngestConfig, IngestEvent, IngestStats, KeyLookup, SecretLookup,
};
use crate::shard::ShardMsg;

/// Longest time one write to a device may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for close_notify to leave when a stream closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream connection on its way to its owner shard.
#[derive(Debug)]
pub struct StreamHandoff {
    /// TLS (61006) or encryptTCP/TCP (61007: the ingest tells the two apart per frame).
    pub tls: bool,
    /// Socket, read-ahead (the hello on 61007) and TLS session (61006).
    pub handoff: Handoff,
    /// 61006: the certificate's UID.
    pub uid: Option<String>,
}

/// Binds both stream ports on this shard and starts accepting; returns the bound addresses.
pub fn spawn_listeners(
    shard: &Rc<StreamShard>,
    tls: SocketAddr,
    tcp: SocketAddr,
) -> Result<(SocketAddr, SocketAddr), String> {
    let bind = |what: &str, addr: SocketAddr| {
        TcpListener::bind(addr).map_err(|e| format!("binding the {what} listener on {addr}: {e}"))
    };
    let tls_listener = bind("stream (TLS)", tls)?;
    let tcp_listener = bind("stream (encryptTCP)", tcp)?;
    let bound = (
        tls_listener.local_addr().unwrap_or(tls),
        tcp_listener.local_addr().unwrap_or(tcp),
    );
    shard.ports.set(Some((bound.0.port(), bound.1.port())));
    rt::spawn_detached(accept_loop(shard.clone(), tls_listener, true));
    rt::spawn_detached(accept_loop(shard.clone(), tcp_listener, false));
    debug!(shard = shard.id, tls = %bound.0, tcp = %bound.1, "stream ports listening");
    Ok(bound)
}

async fn accept_loop(shard: Rc<StreamShard>, listener: TcpListener, tls: bool) {
    while let Some(accepted) = listener.accept_until(&shard.shutdown).await {
        match accepted {
            Ok(stream) => {
                let listener = if tls { "stream_tls" } else { "stream_tcp" };
                let admitted = match stream.peer_addr() {
                    Ok(peer) => signal::limits::admit(listener, peer.ip()),
                    Err(_) => Ok(None),
                };
                // Refused: counted by the limits; dropping the stream closes it.
                let Ok(permit) = admitted else {
                    continue;
                };
                shard.count(|s| {
                    if tls {
                        s.accepted_tls += 1
                    } else {
                        s.accepted_tcp += 1
                    }
                });
                let _ = stream.set_nodelay(true);
                let shard = shard.clone();
                rt::spawn_detached(async move {
                    // Held while the connection is on this shard; the owner adopts it.
                    let _permit = permit;
                    if tls {
                        route_tls(shard, stream).await
                    } else {
                        route_tcp(shard, stream).await
                    }
                });
            }
            Err(e) => {
                warn!(shard = shard.id, tls, "stream accept failed: {e}");
                rt::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn route_tls(shard: Rc<StreamShard>, stream: TcpStream) {
    let timeout = shard.settings.handshake_timeout;
    let tls = match rt::tls::accept(stream, shard.settings.mtls.clone(), timeout).await {
        Ok(tls) => tls,
        Err(e) => {
            shard
                .shard
                .count_media(|m| m.tls_failures.record_error(TlsPort::StreamTls, &e));
            debug!(shard = shard.id, "stream TLS handshake failed: {e}");
            return;
        }
    };
    let Some(uid) = tls.peer_certificates().and_then(pki::peer_uid) else {
        shard
            .shard
            .count_media(|m| m.tls_failures.record(TlsPort::StreamTls, "no_device_uid"));
        return;
    };
    let owner = shard_of_uid(&uid, shard.count);
    if owner == shard.id {
        serve(shard, MaybeTls::from(tls), StreamMode::Tls, Some(uid)).await;
        return;
    }
    match tls.into_handoff() {
        Ok(handoff) => shard.hand_off(
            owner,
            StreamHandoff {
                tls: true,
                handoff,
                uid: Some(uid),
            },
        ),
        Err(e) => warn!(
            shard = shard.id,
            uid, "stream connection not handed off: {e}"
        ),
    }
}

async fn route_tcp(shard: Rc<StreamShard>, mut stream: TcpStream) {
    let timeout = shard.settings.handshake_timeout;
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
                "stream_tcp",
                signal::limits::Failure::AccessKey,
                peer.ip(),
            );
        }
    }
    // A malformed key names no shard: the ingest here refuses the hello.
    let owner = hello
        .get(4..36)
        .and_then(|key| shard_of_access_key(key, shard.count))
        .unwrap_or(shard.id);
    if owner == shard.id {
        if stream.unread(&hello).is_ok() {
            serve(shard, MaybeTls::from(stream), StreamMode::EncryptTcp, None).await;
        }
        return;
    }
    match stream.into_handoff(hello.to_vec()) {
        Ok(handoff) => shard.hand_off(
            owner,
            StreamHandoff {
                tls: false,
                handoff,
                uid: None,
            },
        ),
        Err(e) => warn!(shard = shard.id, "stream connection not handed off: {e}"),
    }
}

impl StreamShard {
    fn hand_off(&self, to: usize, handoff: StreamHandoff) {
        if let Some(queue) = self.outbox.borrow_mut().get_mut(to) {
            queue.push(handoff);
            self.count(|s| s.handed_off += 1);
        }
        self.outbox_notify.notify();
    }
}

/// Serves a connection handed over by another shard.
pub(super) fn serve_handoff(shard: Rc<StreamShard>, handoff: StreamHandoff) {
    rt::spawn_detached(async move {
        let peer = handoff.handoff.peer;
        let _permit = signal::limits::adopt(peer.ip());
        let (stream, mode) = if handoff.tls {
            (
                TlsStream::from_handoff(handoff.handoff)
                    .map(MaybeTls::from)
                    .map_err(io::Error::from),
                StreamMode::Tls,
            )
        } else {
            (
                handoff.handoff.into_tcp().map(MaybeTls::from),
                StreamMode::EncryptTcp,
            )
        };
        match stream {
            Ok(stream) => serve(shard, stream, mode, handoff.uid).await,
            Err(e) => warn!(%peer, "handed-off stream connection lost: {e}"),
        }
    });
}

/// The deployment's key store as the ingest asks it: a known index that is not the current
/// one is stale (the device must register again), as on the keep-alive link.
fn secret_lookup(keys: std::sync::Arc<signal::secrets::DeviceKeys>) -> SecretLookup {
    Box::new(move |access_key: &str| {
        let Some((index, hash)) = split_access_key(access_key) else {
            return KeyLookup::Unknown;
        };
        match keys.key(index) {
            None => KeyLookup::Unknown,
            Some(key) => {
                let secret = signal::proto::access_key::secret_for(key.as_bytes(), hash);
                if index == keys.current_index {
                    KeyLookup::Current(secret)
                } else {
                    KeyLookup::Stale(secret)
                }
            }
        }
    })
}

/// What the connection is attached to once its first media packet named the preview.
struct Attached {
    stream_id: u32,
    key: crate::stream_key::StreamKey,
    /// The mode the device was asked for (61007 carries encryptTCP and TCP alike).
    mode: IngestMode,
    close: crate::hub::LocalNotify,
    /// A replay's seek sequence the ingest accepts from (the preview moves it on a seek).
    seek_floor: Rc<std::cell::Cell<u32>>,
    /// Where bytes arriving are recorded for the sweeper's silence check.
    last_media: Rc<std::cell::Cell<Instant>>,
    publisher: Option<(
        Rc<std::cell::RefCell<crate::hub::StreamHub>>,
        crate::hub::PublisherId,
    )>,
}

enum Step {
    Close,
    Read(io::Result<usize>),
}

/// Runs the ingest of one stream connection on its owner shard until it ends.
async fn serve(
    shard: Rc<StreamShard>,
    mut stream: MaybeTls,
    mode: StreamMode,
    uid: Option<String>,
) {
    let peer = stream.peer_addr().ok();
    let mut config = IngestConfig::new(mode, rand::random());
    config.expected_uid = uid;
    config.policy = shard.settings.policy;
    config.max_rtp_payload = shard.settings.rtp_max_payload;
    let mut ingest =
        match DeviceStreamIngest::new(config, secret_lookup(shard.settings.device_keys.snapshot()))
        {
            Ok(ingest) => ingest,
            Err(e) => {
                warn!(shard = shard.id, "stream ingest not configured: {e}");
                return;
            }
        };
    let mut attached: Option<Attached> = None;
    // What of the ingest's counters the shard has been told.
    let mut reported = IngestStats::default();
    let handshake_deadline = Instant::now() + shard.settings.handshake_timeout;
    // Until the first media packet names the preview, this task keeps its own deadline: the
    // handshake, then the first media within the media timeout. Once attached the shard's
    // sweeper watches for silence.
    let first_media_deadline = handshake_deadline + shard.settings.media_timeout;
    let never = crate::hub::LocalNotify::new();
    let result: io::Result<&'static str> = async {
        loop {
            // A seek asked since the last read: what follows of the old position is stale.
            if let Some(attached) = &attached {
                ingest.set_seek_floor(attached.seek_floor.get());
            }
            // Events first: the hello/handshake replies and media already received.
            while let Some(event) = ingest.poll() {
                match event {
                    IngestEvent::Handshake(handshake) => {
                        debug!(shard = shard.id, uid = handshake.uid, ?peer, "stream handshake");
                    }
                    IngestEvent::StreamBound { stream_id } => {
                        let uid = ingest.uid().unwrap_or_default().to_owned();
                        match shard.attach(stream_id, &uid) {
                            Some(attachment) => {
                                if let Some(resume) = &attachment.resume {
                                    if let Some(continuation) = &resume.continuation {
                                        let gap = Instant::now()
                                            .saturating_duration_since(resume.last_media);
                                        ingest.continue_stream(continuation, gap);
                                    }
                                }
                                attached = Some(Attached {
                                    stream_id,
                                    key: attachment.key,
                                    mode: ingest_mode(attachment.mode),
                                    close: attachment.close,
                                    seek_floor: attachment.seek_floor,
                                    last_media: attachment.last_media,
                                    publisher: None,
                                })
                            }
                            None => {
                                shard.count(|s| s.unknown_previews += 1);
                                warn!(shard = shard.id, uid, stream_id, "stream connection names no preview of its device");
                                return Ok("no such preview");
                            }
                        }
                    }
                    IngestEvent::Description(description) => {
                        let Some(attached) = attached.as_mut() else {
                            continue;
                        };
                        match &attached.publisher {
                            Some((hub, _)) => hub.borrow_mut().set_description(description),
                            None => match shard.shard.publish(&attached.key, description) {
                                Ok((hub, publisher)) => {
                                    info!(shard = shard.id, stream = %attached.key, stream_id = attached.stream_id, mode = mode.as_str(), "device stream live");
                                    shard.published(attached.stream_id, hub.clone());
                                    attached.publisher = Some((hub, publisher));
                                }
                                Err(refusal) => {
                                    warn!(shard = shard.id, stream = %attached.key, "device stream not published: {refusal:?}");
                                    return Ok("stream already published");
                                }
                            },
                        }
                    }
                    IngestEvent::Sought { seek_seq } => {
                        if let Some(attached) = &attached {
                            debug!(shard = shard.id, stream = %attached.key, seek_seq, "replay continues at its new position");
                        }
                    }
                    IngestEvent::Packet(packet) => {
                        if let Some((hub, publisher)) =
                            attached.as_ref().and_then(|a| a.publisher.as_ref())
                        {
                            let _ = hub.borrow_mut().push(*publisher, packet);
                        }
                    }
                    _ => {}
                }
            }
            while let Some(output) = ingest.take_output() {
                let write = async {
                    stream.write_all(&output).await?;
                    stream.flush().await
                };
                match rt::timer::timeout(WRITE_TIMEOUT, write).await {
                    Ok(result) => result?,
                    Err(elapsed) => return Err(io::Error::new(io::ErrorKind::TimedOut, elapsed)),
                }
            }
            if let Some(failure) = ingest.failure() {
                shard.count(|s| s.ingest_failures += 1);
                debug!(shard = shard.id, ?peer, "stream connection refused: {failure}");
                return Ok("refused by the ingest");
            }
            let deadline = match ingest.handshake() {
                None => handshake_deadline,
                Some(_) => first_media_deadline,
            };
            if attached.is_none() && Instant::now() > deadline {
                return Ok(match ingest.handshake() {
                    None => "no handshake in time",
                    Some(_) => "no media after the handshake",
                });
            }
            let close = attached.as_ref().map(|a| a.close.clone());
            let mut closed = pin!(async {
                match &close {
                    Some(close) => close.notified().await,
                    None => {
                        let _ = rt::timer::timeout(
                            deadline.saturating_duration_since(Instant::now())
                                + Duration::from_millis(10),
                            never.notified(),
                        )
                        .await;
                    }
                }
            });
            let step = std::future::poll_fn(|cx| {
                if closed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::Close);
                }
                std::pin::Pin::new(&mut stream)
                    .poll_read(cx, ingest.receive_buffer())
                    .map(Step::Read)
            })
            .await;
            match step {
                // Without a preview the wake-up is the handshake deadline check.
                Step::Close if close.is_none() => {}
                Step::Close => {
                    return Ok(match attached.as_ref() {
                        Some(a) if shard.is_silent(a.stream_id) => "device silent",
                        _ => "preview stopped",
                    })
                }
                Step::Read(Ok(0)) => return Ok("device closed"),
                Step::Read(Ok(n)) => {
                    ingest.commit(n);
                    // Counted per read once the stream is known (its mode is the preview's).
                    if let Some(attached) = &attached {
                        attached.last_media.set(Instant::now());
                        let mode = attached.mode;
                        let stats = ingest.stats();
                        shard.shard.count_media(|m| stats.report(&mut reported, mode, m));
                    }
                }
                Step::Read(Err(e)) => return Err(e),
            }
        }
    }
    .await;
    let stats = ingest.stats();
    let mode = attached
        .as_ref()
        .map_or(ingest_mode(mode), |attached| attached.mode);
    shard
        .shard
        .count_media(|m| stats.report(&mut reported, mode, m));
    if let Some(attached) = attached {
        let continuation = attached.publisher.map(|(hub, publisher)| {
            let _ = hub.borrow_mut().detach_publisher(publisher, Instant::now());
            ingest.continuation()
        });
        // TLS close_notify then EOF on 61006, EOF on 61007: the device ended the stream itself.
        let ended_by_device = matches!(result, Ok("device closed"));
        shard.detached(attached.stream_id, continuation, ended_by_device);
        info!(shard = shard.id, stream = %attached.key, stream_id = attached.stream_id, ?result, frames = stats.video_frames, bad_hmac = stats.bad_hmac, bad_sequence = stats.bad_sequence, stale_seek = stats.stale_seek_packets, "device stream ended");
    } else {
        debug!(shard = shard.id, ?peer, ?result, "stream connection ended");
    }
    let _ = rt::timer::timeout(CLOSE_TIMEOUT, stream.close()).await;
}

/// The metrics label of a stream mode.
fn ingest_mode(mode: StreamMode) -> IngestMode {
    match mode {
        StreamMode::Tls => IngestMode::Tls,
        StreamMode::EncryptTcp => IngestMode::EncryptTcp,
        StreamMode::Tcp => IngestMode::Tcp,
    }
}

/// Sends queued handoffs, one message per destination shard per burst.
pub(super) async fn flush_handoffs(shard: Rc<StreamShard>, port: Rc<MeshPort<ShardMsg>>) {
    while shard
        .shutdown
        .until(shard.outbox_notify.notified())
        .await
        .is_some()
    {
        let batches: Vec<(usize, Vec<StreamHandoff>)> = shard
            .outbox
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(to, queue)| (to, std::mem::take(queue)))
            .collect();
        for (to, handoffs) in batches {
            let msg = ShardMsg::Stream(StreamMsg::Connections(handoffs));
            if let Err(e) = port.send_to(to, msg).await {
                warn!(
                    shard = shard.id,
                    to, "stream connections not handed off: {e}"
                );
            }
        }
    }
}
