//! The webhook sender: one task on the control-plane executor that reads the queue in arrival
//! order and posts the alarms to the partner, up to [`DeliverySettings::max_in_flight`] at once
//! (each of a different device), over a small pool of keep-alive connections (HTTP or HTTPS).
//! The alarms a window of requests delivered are removed from the queue in one transaction.
//!
//! Policy (documented for partners in `docs/alarms.md`):
//! - 2xx: delivered, removed from the queue.
//! - No connection, a timeout, a broken response, 408, 429 or 5xx: the partner cannot take
//!   alarms now. Every device waits: the sender backs off (exponential from
//!   [`DeliverySettings::initial_backoff`], doubled per failure up to
//!   [`DeliverySettings::max_backoff`], with jitter; a `Retry-After` in seconds is honoured up to
//!   the cap) and then retries the same alarm. Nothing is dropped; the queue grows up to its
//!   bound.
//! - Any other status (3xx, other 4xx): the partner refuses this particular alarm. Only its
//!   device waits (same backoff, per device); the other devices' alarms go on. After
//!   [`DeliverySettings::max_rejections`] refusals the alarm goes to the dead-letter table
//!   (counted), so that one malformed alarm cannot hold its device's later alarms forever.
//! - A device's next alarm is never sent before the previous one is acknowledged or
//!   dead-lettered: per-device order holds (a window holds at most one alarm per device and
//!   ends before a device's second). Alarms of different devices may overtake a refused one,
//!   and travel side by side.
//! - At least once: an alarm whose response was lost is sent again with the same event id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rand::Rng;
use rt::tls::MaybeTls;
use rt::TcpStream;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::webhook::{
    classify_response, encode_webhook_request, InvalidWebhookUrl, ResponseVerdict, WebhookSigner,
    WebhookTarget,
};
use super::{AlarmQueue, QueuedAlarm};
use crate::proto::http::{response_closes, HttpError, Limits, ParsedResponse, ResponseParser};

/// Timeouts, backoff and limits of the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// TCP connect, per address. Default 5 s.
    pub connect_timeout: Duration,
    /// TLS handshake. Default 5 s.
    pub handshake_timeout: Duration,
    /// Writing one request. Default 10 s.
    pub write_timeout: Duration,
    /// From the request written to the whole response read. Default 10 s.
    pub response_timeout: Duration,
    /// An idle keep-alive connection older than this is not reused (Node.js closes idle
    /// connections after 5 s, nginx after 75 s). Default 4 s.
    pub keepalive_idle: Duration,
    /// First retry delay; doubled per consecutive failure. Default 500 ms.
    pub initial_backoff: Duration,
    /// Longest retry delay (also the cap on `Retry-After`). Default 60 s.
    pub max_backoff: Duration,
    /// Refusals (3xx, 4xx other than 408/429) of one alarm before it is dead-lettered.
    /// Default 10 (about 4 minutes with the default backoff).
    pub max_rejections: u32,
    /// Largest response (head and body) read from the webhook. Default 64 KiB.
    pub max_response_bytes: usize,
    /// When nothing is to be done, look at the queue again after this long anyway. Default 5 s.
    pub idle_poll: Duration,
    /// Most requests in flight at once, each for a different device, over as many keep-alive
    /// connections (`alarm_webhook_max_in_flight`). Default 8.
    pub max_in_flight: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(4),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_rejections: 10,
            max_response_bytes: 64 * 1024,
            idle_poll: Duration::from_secs(5),
            max_in_flight: 8,
        }
    }
}

/// The sender could not be set up (configuration).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The webhook URL is unusable.
    #[error(transparent)]
    Url(#[from] InvalidWebhookUrl),
    /// The configured CA file could not be read.
    #[error("alarm webhook CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The configured CA file holds no usable certificate.
    #[error("alarm webhook CA file {path}: {reason}")]
    CaPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An https webhook is configured but the system has no CA certificates
    /// (install ca-certificates, or set `alarm_webhook_ca`).
    #[error("no system CA certificates found for the https alarm webhook ({0}); install ca-certificates or set alarm_webhook_ca")]
    NoSystemRoots(String),
    /// rustls refused the configuration.
    #[error("alarm webhook TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The webhook sender. Build it with [`AlarmDelivery::new`], spawn [`AlarmDelivery::run`].
#[derive(Debug)]
pub struct AlarmDelivery {
    queue: AlarmQueue,
    target: Option<WebhookTarget>,
    signer: WebhookSigner,
    tls: Option<Arc<ClientConfig>>,
    settings: DeliverySettings,
}

impl AlarmDelivery {
    /// A sender for `queue` posting to `webhook_url` (none: the sender only waits for shutdown;
    /// the queue counts and drops). HTTPS targets are verified with the CA certificates in
    /// `ca_file` (PEM) when given, else with the system's (`/etc/ssl/certs`, or `SSL_CERT_FILE`
    /// / `SSL_CERT_DIR`). `key` signs the bodies (`Secrets::alarm_webhook_key`).
    pub fn new(
        queue: AlarmQueue,
        webhook_url: Option<&str>,
        ca_file: Option<&Path>,
        key: [u8; 32],
        settings: DeliverySettings,
    ) -> Result<Self, DeliveryError> {
        let target = webhook_url.map(WebhookTarget::parse).transpose()?;
        let tls = match &target {
            Some(t) if t.is_https() => Some(client_config(ca_file)?),
            _ => None,
        };
        Ok(AlarmDelivery {
            queue,
            target,
            signer: WebhookSigner::new(key),
            tls,
            settings,
        })
    }

    /// [`AlarmDelivery::new`] with the webhook and CA of `config` and the key of `secrets`.
    pub fn from_config(
        queue: AlarmQueue,
        config: &crate::config::Config,
        secrets: &crate::secrets::Secrets,
        settings: DeliverySettings,
    ) -> Result<Self, DeliveryError> {
        AlarmDelivery::new(
            queue,
            config.alarm_webhook.as_deref(),
            config.alarm_webhook_ca.as_deref(),
            secrets.alarm_webhook_key,
            settings,
        )
    }

    /// The same sender with this TLS client configuration (tests, or a caller that builds its
    /// own trust).
    pub fn with_tls_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// The queue this sender drains.
    pub fn queue(&self) -> &AlarmQueue {
        &self.queue
    }

    /// Delivers until `shutdown` is triggered. An alarm in flight at shutdown stays in the queue
    /// and is sent again after the restart.
    pub async fn run(self, shutdown: rt::Shutdown) {
        let Some(target) = self.target.clone() else {
            if let Ok(depth) = self.queue.depth() {
                if depth > 0 {
                    tracing::warn!(
                        depth,
                        "alarms are waiting in the queue but no alarm webhook is configured; they stay until one is"
                    );
                }
            }
            shutdown.wait().await;
            return;
        };
        tracing::info!(webhook = %target.redacted(), "alarm delivery started");
        let mut sender = Sender {
            delivery: &self,
            target,
            idle: Vec::new(),
            blocked: HashMap::new(),
            failures: 0,
        };
        while !shutdown.is_triggered() {
            let Some(outcome) = shutdown.until(sender.pass()).await else {
                break;
            };
            let wait = match outcome {
                Pass::Done { attempted: true } => continue,
                Pass::Done { attempted: false } => {
                    let now = Instant::now();
                    let next_unblock = sender
                        .blocked
                        .values()
                        .map(|b| b.until.saturating_duration_since(now))
                        .min();
                    let wait = next_unblock
                        .map_or(self.settings.idle_poll, |d| d.min(self.settings.idle_poll));
                    // An enqueue ends the wait early.
                    let _ = shutdown
                        .until(rt::timer::timeout(wait, self.queue.enqueued()))
                        .await;
                    continue;
                }
                Pass::Backoff(delay) => delay,
                Pass::StoreFailed => Duration::from_secs(1),
            };
            shutdown.until(rt::timer::sleep(wait)).await;
        }
        tracing::info!("alarm delivery stopped");
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let base = self
            .settings
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.settings.max_backoff);
        // "Equal jitter": between half and all of the delay, so that many servers retrying one
        // partner spread out, and the delay still grows.
        let half = base / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms))
    }
}

/// Loads the trust anchors for an https webhook.
fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, DeliveryError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| DeliveryError::CaFile {
                path: path.to_owned(),
                source,
            })?;
            let certs: Vec<CertificateDer<'static>> =
                certs_from_pem(&pem).map_err(|reason| DeliveryError::CaPem {
                    path: path.to_owned(),
                    reason,
                })?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(DeliveryError::CaPem {
                    path: path.to_owned(),
                    reason: "no usable CA certificate in the file".into(),
                });
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), |e| e.to_string());
                return Err(DeliveryError::NoSystemRoots(why));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(pki::PROTOCOL_VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Every `CERTIFICATE` block of a PEM file.
fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))
}

/// What one pass over the queue ended with.
enum Pass {
    /// Reached the end of the queue; `attempted`: at least one alarm was sent.
    Done { attempted: bool },
    /// The webhook cannot take alarms now: wait this long, then start again.
    Backoff(Duration),
    /// The store failed (logged): wait a moment.
    StoreFailed,
}

/// A device whose head alarm was refused, waiting for its retry.
#[derive(Debug)]
struct Blocked {
    until: Instant,
    rejections: u32,
}

struct Sender<'a> {
    delivery: &'a AlarmDelivery,
    target: WebhookTarget,
    /// Keep-alive connections not in use, the most recently used last.
    idle: Vec<Connection>,
    /// Devices waiting after a refusal, by UID.
    blocked: HashMap<String, Blocked>,
    /// Consecutive failures of the webhook as a whole (transport, 408/429/5xx), one per window.
    failures: u32,
}

/// Alarms read from the store per page of a pass.
const PAGE: usize = 256;

/// What one request of a window came back with.
type Attempt = Result<(ResponseVerdict, http::StatusCode), AttemptError>;

impl Sender<'_> {
    /// Sends every alarm whose device is not waiting, in arrival order, a window of up to
    /// `max_in_flight` at a time, until the end of the queue or a failure of the webhook as a
    /// whole.
    async fn pass(&mut self) -> Pass {
        let queue = &self.delivery.queue;
        let settings = &self.delivery.settings;
        // Devices passed over in this pass: their later alarms must wait too.
        let mut skipped: HashSet<String> = HashSet::new();
        let mut page: VecDeque<QueuedAlarm> = VecDeque::new();
        let mut after = None;
        let mut exhausted = false;
        let mut attempted = false;
        loop {
            // The window: queue order, one alarm per device; it ends before a device's second
            // alarm, which waits for the verdict on its first.
            let mut window: Vec<QueuedAlarm> = Vec::new();
            while window.len() < settings.max_in_flight.max(1) {
                if page.is_empty() && !exhausted {
                    match queue.peek(after, PAGE) {
                        Ok(items) => {
                            exhausted = items.is_empty();
                            page.extend(items);
                        }
                        Err(error) => {
                            tracing::error!(%error, "alarm queue: cannot read");
                            return Pass::StoreFailed;
                        }
                    }
                }
                let Some(item) = page.front() else { break };
                let uid = &item.event.uid;
                if window.iter().any(|w| w.event.uid == *uid) {
                    break;
                }
                if skipped.contains(uid) {
                    after = page.pop_front().map(|item| item.seq);
                    continue;
                }
                if self
                    .blocked
                    .get(uid)
                    .is_some_and(|b| b.until > Instant::now())
                {
                    skipped.insert(uid.clone());
                    after = page.pop_front().map(|item| item.seq);
                    continue;
                }
                if let Some(item) = page.pop_front() {
                    after = Some(item.seq);
                    window.push(item);
                }
            }
            if window.is_empty() {
                // Forget waiting devices that have no alarm left (dropped for backlog).
                self.blocked.retain(|uid, _| skipped.contains(uid));
                return Pass::Done { attempted };
            }
            attempted = true;
            let attempts = self.post_window(&window).await;
            let mut delivered = Vec::new();
            let mut backoff: Option<Duration> = None;
            let mut webhook_failed = false;
            for (item, attempt) in window.iter().zip(attempts) {
                let uid = &item.event.uid;
                match attempt {
                    Err(error) => {
                        webhook_failed = true;
                        queue.metrics().add_retried();
                        let delay = self.delivery.backoff(self.failures + 1);
                        backoff = backoff.max(Some(delay));
                        tracing::warn!(
                            webhook = %self.target.redacted(),
                            event_id = %item.event.event_id,
                            %error,
                            retry_in = ?delay,
                            "alarm webhook unreachable"
                        );
                    }
                    Ok((ResponseVerdict::Delivered, _)) => {
                        self.blocked.remove(uid);
                        queue.metrics().add_delivered();
                        delivered.push(item.seq);
                    }
                    Ok((ResponseVerdict::RetryLater { retry_after }, status)) => {
                        webhook_failed = true;
                        queue.metrics().add_retried();
                        let delay = retry_after.map_or_else(
                            || self.delivery.backoff(self.failures + 1),
                            |d| d.min(settings.max_backoff),
                        );
                        backoff = backoff.max(Some(delay));
                        tracing::warn!(
                            webhook = %self.target.redacted(),
                            event_id = %item.event.event_id,
                            %status,
                            retry_in = ?delay,
                            "alarm webhook busy or failing"
                        );
                    }
                    Ok((ResponseVerdict::Rejected, status)) => {
                        let rejections = self.blocked.get(uid).map_or(0, |b| b.rejections) + 1;
                        if rejections >= settings.max_rejections {
                            self.blocked.remove(uid);
                            let reason = format!("webhook answered {status} {rejections} times");
                            tracing::error!(
                                event_id = %item.event.event_id,
                                uid = %uid,
                                %status,
                                "alarm refused by the webhook; moved to dead letters"
                            );
                            match queue.dead_letter(item.seq, &reason, super::unix_now_ms()) {
                                Ok(_) => queue.metrics().add_dead_lettered(),
                                Err(error) => {
                                    tracing::error!(%error, "alarm queue: cannot dead-letter");
                                    return Pass::StoreFailed;
                                }
                            }
                        } else {
                            queue.metrics().add_retried();
                            let delay = self.delivery.backoff(rejections);
                            tracing::warn!(
                                event_id = %item.event.event_id,
                                uid = %uid,
                                %status,
                                rejections,
                                retry_in = ?delay,
                                "alarm refused by the webhook; the device's alarms wait"
                            );
                            self.blocked.insert(
                                uid.clone(),
                                Blocked {
                                    until: Instant::now() + delay,
                                    rejections,
                                },
                            );
                            skipped.insert(uid.clone());
                        }
                    }
                }
            }
            if !delivered.is_empty() {
                if let Err(error) = queue.ack_batch(&delivered) {
                    // They will be delivered again: at least once.
                    tracing::error!(%error, "alarm queue: cannot remove delivered alarms");
                    return Pass::StoreFailed;
                }
            }
            if webhook_failed {
                self.failures += 1;
                return Pass::Backoff(backoff.unwrap_or(settings.initial_backoff));
            }
            self.failures = 0;
            rt::yield_if_needed().await;
        }
    }

    /// Posts every alarm of `window` at once, each over a connection of its own from the idle
    /// pool (or a new one); the answers in window order. Connections that may carry another
    /// request go back to the pool.
    async fn post_window(&mut self, window: &[QueuedAlarm]) -> Vec<Attempt> {
        let settings = &self.delivery.settings;
        self.idle
            .retain(|c| c.idle_since.elapsed() < settings.keepalive_idle);
        let requests: Vec<_> = window
            .iter()
            .map(|item| {
                let conn = self.idle.pop();
                post(self.delivery, &self.target, conn, item)
            })
            .collect();
        let mut attempts = Vec::with_capacity(window.len());
        for (attempt, conn) in join_all(requests).await {
            if let Some(conn) = conn {
                self.idle.push(conn);
            }
            attempts.push(attempt);
        }
        attempts
    }
}

/// Runs every future at once; their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Posts one alarm over `conn` (a keep-alive connection from the pool) or a new connection, and
/// retries once on a new connection when a reused one turns out to be closed. Returns the
/// answer and the connection when it can carry another request.
async fn post(
    delivery: &AlarmDelivery,
    target: &WebhookTarget,
    mut conn: Option<Connection>,
    item: &QueuedAlarm,
) -> (Attempt, Option<Connection>) {
    let settings = &delivery.settings;
    let mut request = Vec::with_capacity(1024);
    encode_webhook_request(
        target,
        &delivery.signer,
        &item.event,
        crate::clock::unix_now(),
        &mut request,
    );
    loop {
        let reused = conn.is_some();
        let mut current = match conn.take() {
            Some(current) => current,
            None => match connect(delivery, target).await {
                Ok(current) => current,
                Err(error) => return (Err(error), None),
            },
        };
        match current.exchange(&request, settings).await {
            Ok((response, keep_alive)) => {
                let status = response.status();
                let verdict = classify_response(status, response.headers());
                let kept = keep_alive.then(|| {
                    current.idle_since = Instant::now();
                    current
                });
                return (Ok((verdict, status)), kept);
            }
            // The server closed the idle connection as we reused it: nothing was
            // processed, try a fresh connection at once.
            Err(AttemptError::ClosedBeforeResponse) if reused => continue,
            Err(error) => return (Err(error), None),
        }
    }
}

async fn connect(
    delivery: &AlarmDelivery,
    target: &WebhookTarget,
) -> Result<Connection, AttemptError> {
    let settings = &delivery.settings;
    let host = target.host().to_owned();
    let port = target.port();
    // getaddrinfo blocks; the control plane tolerates it (it also waits on fsync), and
    // resolving per connection follows DNS changes.
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(AttemptError::Resolve)?
        .collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, settings.connect_timeout).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => last_error = error,
        }
    }
    let tcp = tcp.ok_or(AttemptError::Connect(last_error))?;
    let _ = tcp.set_nodelay(true);
    let stream = match &delivery.tls {
        Some(config) if target.is_https() => {
            let name = ServerName::try_from(host)
                .map_err(|_| AttemptError::Tls("the host is not a valid TLS name".into()))?;
            let tls = rt::tls::connect(tcp, config.clone(), name, settings.handshake_timeout)
                .await
                .map_err(|e| AttemptError::Tls(e.to_string()))?;
            MaybeTls::Tls(Box::new(tls))
        }
        _ => MaybeTls::Plain(tcp),
    };
    Ok(Connection {
        stream,
        buf: Vec::new(),
        idle_since: Instant::now(),
    })
}

/// Why one attempt failed before a response (the webhook as a whole is failing).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("cannot resolve the host: {0}")]
    Resolve(#[source] io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("sending the request: {0}")]
    Write(#[source] io::Error),
    #[error("the request was not taken within {0:?}")]
    WriteTimeout(Duration),
    #[error("no whole response within {0:?}")]
    ResponseTimeout(Duration),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("the webhook closed the connection without answering")]
    ClosedBeforeResponse,
    #[error("malformed response: {0}")]
    Malformed(#[source] HttpError),
}

/// One HTTP/1.1 connection to the webhook.
struct Connection {
    stream: MaybeTls<ClientConnection>,
    /// Response bytes read but not yet parsed.
    buf: Vec<u8>,
    idle_since: Instant,
}

impl Connection {
    /// Writes `request` and reads its final response; the bool says whether the connection can
    /// carry another request.
    async fn exchange(
        &mut self,
        request: &[u8],
        settings: &DeliverySettings,
    ) -> Result<(crate::proto::http::Response, bool), AttemptError> {
        let written = rt::timer::timeout(settings.write_timeout, async {
            self.stream.write_all(request).await?;
            self.stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) if is_closed(&error) => return Err(AttemptError::ClosedBeforeResponse),
            Ok(Err(error)) => return Err(AttemptError::Write(error)),
            Err(_) => return Err(AttemptError::WriteTimeout(settings.write_timeout)),
        }
        self.buf.clear();
        rt::timer::timeout(settings.response_timeout, self.read_response(settings))
            .await
            .map_err(|_| AttemptError::ResponseTimeout(settings.response_timeout))?
    }

    async fn read_response(
        &mut self,
        settings: &DeliverySettings,
    ) -> Result<(crate::proto::http::Response, bool), AttemptError> {
        let parser = ResponseParser::new(Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body: settings.max_response_bytes,
        });
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match parser.parse(&self.buf).map_err(AttemptError::Malformed)? {
                ParsedResponse::Complete { response, consumed } => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    if response.status().is_informational() {
                        continue;
                    }
                    let keep_alive = response.version() == http::Version::HTTP_11
                        && !response_closes(&response)
                        // Bytes beyond the response: the peer does not speak HTTP as we do.
                        && self.buf.is_empty();
                    return Ok((response, keep_alive));
                }
                ParsedResponse::Partial => {}
            }
            if self.buf.len() > settings.max_response_bytes + 16 * 1024 {
                return Err(AttemptError::Malformed(HttpError::BodyTooLarge {
                    length: self.buf.len() as u64,
                    limit: settings.max_response_bytes,
                }));
            }
            let n = match self.stream.read(&mut chunk).await {
                Ok(n) => n,
                Err(error) if is_closed(&error) && self.buf.is_empty() => {
                    return Err(AttemptError::ClosedBeforeResponse)
                }
                Err(error) => return Err(AttemptError::Read(error)),
            };
            if n == 0 {
                if self.buf.is_empty() {
                    return Err(AttemptError::ClosedBeforeResponse);
                }
                return match parser
                    .parse_at_eof(&self.buf)
                    .map_err(AttemptError::Malformed)?
                {
                    ParsedResponse::Complete { response, .. } => Ok((response, false)),
                    ParsedResponse::Partial => Err(AttemptError::ClosedBeforeResponse),
                };
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

fn is_closed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}
