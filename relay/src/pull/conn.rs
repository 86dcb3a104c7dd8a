//! One pull attempt on the source's owner shard: the only file of the pull side that touches a
//! socket. It connects (TCP, or TLS with the source's CA bundle and client certificate), drives
//! the [`ClientSession`] handshake, then publishes into the stream hub exactly as an RTSP
//! publisher's connection does (same [`TrackIngest`], same `RtpPacket::passthrough`), sends
//! keepalives, and ends with TEARDOWN when told to stop.
//!
//! Media arrives interleaved on the RTSP connection (`transport = "tcp"`) or, with
//! `transport = "udp"`, on one RTP/RTCP socket pair per track bound on this shard at the address
//! the RTSP connection uses. Each socket has one receive loop for the attempt's life (a cancelled
//! receive could lose a datagram); each datagram is checked by [`UdpTrackFilter`] (the source's
//! address only, sizes, sequence gaps counted as lost) and then takes the same path into the hub
//! as an interleaved packet. The RTSP connection stays open for keepalives and TEARDOWN.
//!
//! Every wait for the source has a deadline: connect and TLS handshake
//! ([`PullSettings::connect_timeout`]), each handshake response
//! ([`PullSettings::response_timeout`]), and media ([`PullSettings::media_timeout`] without a
//! byte of media ends the attempt; over UDP only accepted datagrams count, so a source that
//! answers keepalives but stopped sending is reconnected).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::{or, poll_fn};
use futures_lite::AsyncWriteExt;
use rt::tls::MaybeTls;
use rt::ReadBuf;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use signal::metrics::IngestMode;
use signal::sources::{PullTransport, SourceSpec};
use tracing::{debug, info};

use super::client::{ClientError, ClientSession, ClientStep};
use super::udp::{UdpTrackFilter, Verdict};
use super::PullSettings;
use crate::hub::{LocalNotify, PublisherId, RtpPacket, StreamHub};
use crate::proto::interleaved::{DemuxLimits, Demuxed, Demuxer};
use crate::proto::rtsp::{RtspMessage, RtspRequest, RtspUrl, Scheme};
use crate::rtsp::ingest::TrackIngest;
use crate::shard::Shard;
use crate::stream_key::StreamKey;

/// Receive buffer growth step (as for an RTSP publisher).
const READ_CHUNK: usize = 64 * 1024;
/// Kernel receive buffer asked for each UDP socket (capped by `net.core.rmem_max`): a keyframe
/// of a high-resolution camera is hundreds of datagrams arriving at once.
const UDP_RECV_BUFFER: usize = 2 * 1024 * 1024;

/// Why an attempt ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The URL's host does not resolve.
    #[error("resolving {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// TCP connect failed or timed out.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration (CA, certificate, key files) could not be loaded.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The TLS handshake failed.
    #[error("{0}")]
    Tls(#[from] rt::tls::TlsError),
    /// The RTSP handshake failed.
    #[error("{0}")]
    Rtsp(#[from] ClientError),
    /// Bytes that are not RTSP.
    #[error("bad data from the source at byte {offset}: {source}")]
    Protocol {
        offset: u64,
        #[source]
        source: crate::proto::rtsp::RtspError,
    },
    /// The source sent nothing within the deadline.
    #[error("no {what} from the source within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// Reading or writing failed, or the source closed the connection.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The stream already has another publisher.
    #[error("the stream has another publisher")]
    Refused,
    /// No UDP port pair could be bound for the source's tracks.
    #[error("binding UDP ports on {ip}: {source}")]
    UdpBind {
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    /// Receiving on a UDP port failed.
    #[error("receiving RTP over UDP on port {port}: {source}")]
    UdpReceive {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// How an attempt ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullEnd {
    /// Told to stop (nobody watching, source removed, shutdown): TEARDOWN sent.
    Stopped,
}

/// What the attempt tells its supervisor.
pub trait PullObserver {
    /// The handshake reached PLAY and media flows into the hub.
    fn playing(&self);
}

type Stream = MaybeTls<ClientConnection>;

/// Connects to the source and relays it into `key`'s hub until `stop` is raised or it fails.
pub async fn pull_once(
    shard: &Rc<Shard>,
    spec: &SourceSpec,
    key: &StreamKey,
    settings: &PullSettings,
    stop: &LocalNotify,
    observer: &dyn PullObserver,
) -> Result<PullEnd, PullError> {
    let url = RtspUrl::parse(&spec.url).map_err(|e| PullError::Rtsp(ClientError::Url(e)))?;
    let host = url.host.clone();
    let port = url.port_or_default();
    let addr = resolve(&host, port).await?;
    let tcp = rt::TcpStream::connect_timeout(addr, settings.connect_timeout)
        .await
        .map_err(|source| PullError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    // UDP ports go on the interface the source is reached through.
    let local_ip = tcp.local_addr()?.ip();
    let mut stream: Stream = match url.scheme {
        Scheme::Rtsp => MaybeTls::Plain(tcp),
        Scheme::Rtsps => {
            let config = signal::sources::tls_client_config(spec).map_err(PullError::TlsConfig)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| PullError::TlsConfig(format!("server name {host:?}: {e}")))?;
            let tls = rt::tls::connect(tcp, config, name, settings.connect_timeout).await?;
            MaybeTls::Tls(Box::new(tls))
        }
    };
    let cnonce = format!("{:016x}", rand::random::<u64>());
    let mut client =
        ClientSession::new(&spec.url, &spec.headers, cnonce)?.with_transport(spec.transport);
    let mut udp_pairs: Vec<(rt::UdpSocket, rt::UdpSocket)> = Vec::new();
    let mut buf = ReadBuf::new();
    let mut demuxer = Demuxer::new(DemuxLimits::default());

    // Handshake mode: one request, one response, each within the response timeout.
    let mut handshake_bytes = 0u64;
    let mut request = client.start();
    let description = loop {
        send(&mut stream, &request).await?;
        let response = loop {
            match next_item(
                &mut stream,
                &mut buf,
                &mut demuxer,
                settings.response_timeout,
                "response",
                &mut handshake_bytes,
            )
            .await?
            {
                Demuxed::Rtsp(RtspMessage::Response(response)) => break response,
                // Requests from the source (rare) and early media are ignored.
                _ => continue,
            }
        };
        match client.on_response(&response)? {
            ClientStep::Send(next) => request = next,
            ClientStep::BindUdp { tracks } => {
                udp_pairs = bind_udp(local_ip, tracks)?;
                let mut ports = Vec::with_capacity(tracks);
                for (rtp, _) in &udp_pairs {
                    ports.push(rtp.local_addr()?.port());
                }
                request = client.udp_ports_bound(&ports)?;
            }
            ClientStep::Playing(description) => break description,
            ClientStep::Nothing => {
                return Err(PullError::Rtsp(ClientError::BadResponse {
                    method: request.method.to_string(),
                    what: "handshake stalled".into(),
                }))
            }
        }
    };

    // Media mode: publish like an RTSP publisher.
    let ingest: Vec<TrackIngest> = client
        .sdp()
        .map(|sdp| {
            sdp.media
                .iter()
                .enumerate()
                .map(|(i, m)| TrackIngest::new(i as u8, m))
                .collect()
        })
        .unwrap_or_default();
    let (hub, publisher) = shard
        .publish(key, description)
        .map_err(|_| PullError::Refused)?;
    let _publisher = Attached {
        hub: hub.clone(),
        publisher,
    };
    let relay = Relay {
        hub: &hub,
        publisher,
        ingest: RefCell::new(ingest),
        invalid: Cell::new(0),
        key,
    };
    let udp = spec.transport == PullTransport::Udp;
    let udp_tracks: Vec<UdpTrack> = udp_pairs
        .into_iter()
        .enumerate()
        .map(|(index, (rtp, rtcp))| {
            let peer = client.udp_peer(index);
            let source = peer.and_then(|p| p.source).unwrap_or(addr.ip());
            UdpTrack {
                index,
                rtp,
                rtcp,
                filter: RefCell::new(UdpTrackFilter::new(
                    source,
                    peer.and_then(|p| p.server_ports),
                )),
            }
        })
        .collect();
    info!(shard = shard.id, stream = %key, url = %spec.redacted_url(), transport = ?spec.transport, "pull source playing");
    observer.playing();
    let keepalive_every = Duration::from_secs(u64::from(client.keepalive_interval_secs()));
    let mut next_keepalive = Instant::now() + keepalive_every;
    let last_media = Cell::new(Instant::now());
    let mut udp_media = pin!(receive_udp(shard, &udp_tracks, &relay, &last_media));
    loop {
        let now = Instant::now();
        if now >= next_keepalive {
            if let Some(keepalive) = client.keepalive() {
                send(&mut stream, &keepalive).await?;
            }
            next_keepalive = now + keepalive_every;
        }
        let media_deadline = last_media.get() + settings.media_timeout;
        if now >= media_deadline {
            return Err(PullError::Timeout {
                what: "media",
                after: settings.media_timeout,
            });
        }
        let wait = next_keepalive
            .min(media_deadline)
            .saturating_duration_since(now);
        enum Event {
            Item(Result<Demuxed<bytes::Bytes>, PullError>),
            Udp(PullError),
            Stop,
        }
        let event = or(
            async {
                let mut bytes_in = 0;
                let item = next_item(
                    &mut stream,
                    &mut buf,
                    &mut demuxer,
                    wait,
                    "media",
                    &mut bytes_in,
                )
                .await;
                if bytes_in > 0 {
                    shard.count_media(|m| m.add_bytes_in(IngestMode::Pull, bytes_in));
                }
                Event::Item(item)
            },
            or(async { Event::Udp(udp_media.as_mut().await) }, async {
                stop.notified().await;
                Event::Stop
            }),
        )
        .await;
        match event {
            Event::Stop => {
                if let Some(teardown) = client.teardown() {
                    let _ =
                        rt::timer::timeout(settings.response_timeout, send(&mut stream, &teardown))
                            .await;
                }
                let _ = stream.close().await;
                return Ok(PullEnd::Stopped);
            }
            Event::Udp(e) => return Err(e),
            Event::Item(Err(PullError::Timeout { .. })) => continue,
            Event::Item(Err(e)) => return Err(e),
            Event::Item(Ok(item)) => {
                if !udp {
                    last_media.set(Instant::now());
                }
                match item {
                    Demuxed::Rtsp(RtspMessage::Response(response)) => {
                        client.on_response(&response)?;
                    }
                    Demuxed::Rtsp(RtspMessage::Request(_)) => {}
                    Demuxed::Interleaved { channel, payload } => {
                        if let Some((track, is_rtcp)) = client.track_of_channel(channel) {
                            relay.packet(track, is_rtcp, payload);
                        }
                    }
                }
            }
        }
    }
}

/// Where an attempt's packets go: the track's ingest (keyframe and access-unit marks), then the
/// hub as passthrough packets. One path for interleaved and UDP packets.
struct Relay<'a> {
    hub: &'a RefCell<StreamHub>,
    publisher: PublisherId,
    ingest: RefCell<Vec<TrackIngest>>,
    /// Packets dropped as not RTP (logged at powers of two).
    invalid: Cell<u64>,
    key: &'a StreamKey,
}

impl Relay<'_> {
    fn packet(&self, track: usize, is_rtcp: bool, payload: Bytes) {
        let mut ingest = self.ingest.borrow_mut();
        let Some(track) = ingest.get_mut(track) else {
            return;
        };
        let meta = if is_rtcp {
            Ok(track.rtcp_meta())
        } else {
            track.rtp_meta(&payload)
        };
        match meta {
            Ok(meta) => {
                if let Ok(packet) = RtpPacket::passthrough(meta, payload) {
                    let _ = self.hub.borrow_mut().push(self.publisher, packet);
                }
            }
            Err(e) => {
                let invalid = self.invalid.get() + 1;
                self.invalid.set(invalid);
                if invalid.is_power_of_two() {
                    debug!(stream = %self.key, count = invalid, "pulled packet dropped: {e}");
                }
            }
        }
    }
}

/// One track's UDP sockets and what they accept.
struct UdpTrack {
    index: usize,
    rtp: rt::UdpSocket,
    rtcp: rt::UdpSocket,
    filter: RefCell<UdpTrackFilter>,
}

/// One RTP/RTCP port pair per track on `ip`.
fn bind_udp(ip: IpAddr, tracks: usize) -> Result<Vec<(rt::UdpSocket, rt::UdpSocket)>, PullError> {
    (0..tracks)
        .map(|_| {
            let (rtp, rtcp) =
                rt::UdpSocket::bind_pair(ip).map_err(|source| PullError::UdpBind { ip, source })?;
            // Best effort: the kernel caps it, and a smaller buffer still works.
            let _ = rtp.set_recv_buffer_size(UDP_RECV_BUFFER);
            let _ = rtcp.set_recv_buffer_size(UDP_RECV_BUFFER / 8);
            Ok((rtp, rtcp))
        })
        .collect()
}

/// Receives on every UDP socket until one fails (never returns without tracks: TCP transport).
async fn receive_udp(
    shard: &Shard,
    tracks: &[UdpTrack],
    relay: &Relay<'_>,
    last_media: &Cell<Instant>,
) -> PullError {
    let mut receivers: Vec<Pin<Box<dyn Future<Output = PullError> + '_>>> = Vec::new();
    for track in tracks {
        for is_rtcp in [false, true] {
            receivers.push(Box::pin(receive_socket(
                shard, track, is_rtcp, relay, last_media,
            )));
        }
    }
    poll_fn(|cx| {
        for receiver in &mut receivers {
            if let Poll::Ready(error) = receiver.as_mut().poll(cx) {
                return Poll::Ready(error);
            }
        }
        Poll::Pending
    })
    .await
}

/// The receive loop of one socket: checks each datagram and relays or counts it.
async fn receive_socket(
    shard: &Shard,
    track: &UdpTrack,
    is_rtcp: bool,
    relay: &Relay<'_>,
    last_media: &Cell<Instant>,
) -> PullError {
    let socket = if is_rtcp { &track.rtcp } else { &track.rtp };
    let mut buf = vec![0u8; rt::udp::MAX_DATAGRAM];
    let mut dropped: u64 = 0;
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(source) => {
                let port = socket.local_addr().map_or(0, |a| a.port());
                return PullError::UdpReceive { port, source };
            }
        };
        let datagram = &buf[..len];
        let verdict = track.filter.borrow_mut().check(from, is_rtcp, datagram);
        match verdict {
            Verdict::Relay { lost } => {
                last_media.set(Instant::now());
                shard.count_media(|m| {
                    m.add_bytes_in(IngestMode::Pull, len as u64);
                    m.pull_udp_lost += lost;
                });
                relay.packet(track.index, is_rtcp, Bytes::copy_from_slice(datagram));
            }
            Verdict::Stray | Verdict::BadSize => {
                shard.count_media(|m| match verdict {
                    Verdict::Stray => m.pull_udp_stray += 1,
                    _ => m.pull_udp_bad_size += 1,
                });
                dropped += 1;
                if dropped.is_power_of_two() {
                    debug!(stream = %relay.key, track = track.index, %from, len, count = dropped, "datagram dropped: {verdict:?}");
                }
            }
        }
        // A flood of queued datagrams is received without waiting; let other tasks run.
        rt::yield_if_needed().await;
    }
}

/// Detaches the publisher when the attempt ends, however it ends: viewers wait the hub's grace
/// for the next attempt.
struct Attached {
    hub: Rc<RefCell<StreamHub>>,
    publisher: PublisherId,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            let _ = hub.detach_publisher(self.publisher, Instant::now());
        }
    }
}

/// Resolves the source's host off the shard (getaddrinfo blocks).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, PullError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let name = host.to_owned();
    let resolved = rt::blocking::unblock(move || {
        (name.as_str(), port)
            .to_socket_addrs()
            .map(|mut addrs| addrs.next())
    })
    .await;
    match resolved {
        Ok(Some(addr)) => Ok(addr),
        Ok(None) => Err(PullError::Resolve {
            host: host.to_owned(),
            reason: "no address".into(),
        }),
        Err(e) => Err(PullError::Resolve {
            host: host.to_owned(),
            reason: e.to_string(),
        }),
    }
}

async fn send(stream: &mut Stream, request: &RtspRequest) -> Result<(), PullError> {
    let bytes = request.to_bytes();
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// The next response or `$` frame, reading more within `wait`.
async fn next_item(
    stream: &mut Stream,
    buf: &mut ReadBuf,
    demuxer: &mut Demuxer,
    wait: Duration,
    what: &'static str,
    bytes_in: &mut u64,
) -> Result<Demuxed<bytes::Bytes>, PullError> {
    loop {
        match demuxer.feed_bytes(buf.filled_mut()) {
            Ok(Some(item)) => return Ok(item),
            Ok(None) => {}
            Err(source) => {
                return Err(PullError::Protocol {
                    offset: demuxer.position(),
                    source,
                })
            }
        }
        buf.reserve(READ_CHUNK / 4, READ_CHUNK);
        // Straight into the room after the pending bytes, as the RTSP server reads a publisher.
        let read = rt::timer::timeout(
            wait,
            poll_fn(|cx| stream.poll_read_buf(cx, buf, usize::MAX)),
        )
        .await;
        match read {
            Err(_) => return Err(PullError::Timeout { what, after: wait }),
            Ok(Ok(0)) => {
                return Err(PullError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(Ok(n)) => *bytes_in += n as u64,
            Ok(Err(e)) => return Err(PullError::Io(e)),
        }
    }
}
