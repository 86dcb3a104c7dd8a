//! One pull attempt on the source's owner shard: the only file of the pull side that touches a
//! socket. It connects (TCP, or TLS with the source's CA bundle and client certificate), drives
//! the [`ClientSession`] handshake, then publishes into the stream hub exactly as an RTSP
//! publisher's connection does (same [`TrackIngest`], same `RtpPacket::passthrough`), sends
//! keepalives, and ends with TEARDOWN when told to stop.
//!
//! Every wait for the source has a deadline: connect and TLS handshake
//! ([`PullSettings::connect_timeout`]), each handshake response
//! ([`PullSettings::response_timeout`]), and media ([`PullSettings::media_timeout`] without a
//! byte ends the attempt).

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future::{or, poll_fn};
use futures_lite::AsyncWriteExt;
use rt::tls::MaybeTls;
use rustls::pki_types::ServerName;
use rustls::ClientConnection;
use signal::metrics::IngestMode;
use signal::sources::SourceSpec;
use tracing::{debug, info};

use super::client::{ClientError, ClientSession, ClientStep};
use super::PullSettings;
use crate::hub::{LocalNotify, PublisherId, RtpPacket, StreamHub};
use crate::proto::interleaved::{DemuxLimits, Demuxed, Demuxer};
use crate::proto::rtsp::{RtspMessage, RtspRequest, RtspUrl, Scheme};
use crate::rtsp::ingest::TrackIngest;
use crate::shard::Shard;
use crate::stream_key::StreamKey;

/// Receive buffer growth step (as for an RTSP publisher).
const READ_CHUNK: usize = 64 * 1024;

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
    let mut client = ClientSession::new(&spec.url, &spec.headers, cnonce)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
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
    let mut ingest: Vec<TrackIngest> = client
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
    info!(shard = shard.id, stream = %key, url = %spec.redacted_url(), "pull source playing");
    observer.playing();
    let keepalive_every = Duration::from_secs(u64::from(client.keepalive_interval_secs()));
    let mut next_keepalive = Instant::now() + keepalive_every;
    let mut last_media = Instant::now();
    let mut invalid: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= next_keepalive {
            if let Some(keepalive) = client.keepalive() {
                send(&mut stream, &keepalive).await?;
            }
            next_keepalive = now + keepalive_every;
        }
        if now.saturating_duration_since(last_media) > settings.media_timeout {
            return Err(PullError::Timeout {
                what: "media",
                after: settings.media_timeout,
            });
        }
        let wait = next_keepalive
            .saturating_duration_since(now)
            .min(settings.media_timeout);
        enum Event {
            Item(Result<Demuxed<bytes::Bytes>, PullError>),
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
            async {
                stop.notified().await;
                Event::Stop
            },
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
            Event::Item(Err(PullError::Timeout { .. })) => continue,
            Event::Item(Err(e)) => return Err(e),
            Event::Item(Ok(item)) => {
                last_media = Instant::now();
                match item {
                    Demuxed::Rtsp(RtspMessage::Response(response)) => {
                        client.on_response(&response)?;
                    }
                    Demuxed::Rtsp(RtspMessage::Request(_)) => {}
                    Demuxed::Interleaved { channel, payload } => {
                        let Some((track, is_rtcp)) = client.track_of_channel(channel) else {
                            continue;
                        };
                        let Some(track) = ingest.get_mut(track) else {
                            continue;
                        };
                        let meta = if is_rtcp {
                            Ok(track.rtcp_meta())
                        } else {
                            track.rtp_meta(&payload)
                        };
                        match meta {
                            Ok(meta) => {
                                if let Ok(packet) = RtpPacket::passthrough(meta, payload) {
                                    let _ = hub.borrow_mut().push(publisher, packet);
                                }
                            }
                            Err(e) => {
                                invalid += 1;
                                if invalid.is_power_of_two() {
                                    debug!(stream = %key, count = invalid, "pulled packet dropped: {e}");
                                }
                            }
                        }
                    }
                }
            }
        }
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
    buf: &mut BytesMut,
    demuxer: &mut Demuxer,
    wait: Duration,
    what: &'static str,
    bytes_in: &mut u64,
) -> Result<Demuxed<bytes::Bytes>, PullError> {
    loop {
        match demuxer.feed_bytes(buf) {
            Ok(Some(item)) => return Ok(item),
            Ok(None) => {}
            Err(source) => {
                return Err(PullError::Protocol {
                    offset: demuxer.position(),
                    source,
                })
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        // Straight into the spare capacity, as the RTSP server reads a publisher.
        let read = rt::timer::timeout(wait, poll_fn(|cx| stream.poll_read_spare(cx, buf))).await;
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
