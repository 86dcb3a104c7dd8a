//! The HTTP/1.1 connection driver behind the client API (61009 plain, 61010 HTTPS) and the
//! provisioning ports (61000-61002): it reads requests with the sans-IO codec in
//! [`crate::proto::http`], hands each to a [`Handler`] and writes the responses back, in order.
//!
//! It is generic over the stream, so plain TCP and TLS (`rt::tls`) connections are served by the
//! same code; the caller accepts, does the TLS handshake and fills in [`ConnInfo`].
//!
//! Per connection (nginx's defaults, scaled to an API that takes small JSON bodies):
//! - keep-alive and pipelining: requests are answered in order; responses to pipelined requests
//!   are written together when the buffer holds no further complete request;
//! - an idle connection is closed quietly after [`ServerConfig::idle_timeout`];
//! - once the first byte of a request has arrived, the whole head and body must arrive within
//!   [`ServerConfig::request_timeout`] or the client gets 408 and the connection is closed (a
//!   client trickling one byte per second cannot hold a connection: slowloris defense);
//! - writing out the buffered responses must finish within [`ServerConfig::write_timeout`];
//! - errors in the client's request are answered with the platform's JSON error body and
//!   `Connection: close`, then the connection is closed after a short lingering read, so the
//!   client sees the response rather than a reset;
//! - `Expect: 100-continue` is answered before the body is read; the response to `HEAD` has the
//!   handler's headers and `Content-Length` but no body.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use http::{HeaderMap, Method, StatusCode};

use crate::proto::http::{
    checked_body_len, encode_response, encode_response_head, json_error, response_closes,
    HttpError, Limits, ParsedHead, RequestHead, RequestParser, Response, CONTINUE_RESPONSE,
};

/// A request as handlers see it: the parsed head and the whole body.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, path, query, version and header fields.
    pub head: RequestHead,
    /// The body (empty without `Content-Length`); a slice of the connection's read buffer.
    pub body: Bytes,
}

impl Request {
    /// The request method. `HEAD` is passed through as is: route it like `GET`, the driver
    /// drops the body.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The path, not percent-decoded.
    pub fn path(&self) -> &str {
        &self.head.path
    }

    /// The query string without `?`, not decoded.
    pub fn query(&self) -> Option<&str> {
        self.head.query.as_deref()
    }

    /// All header fields.
    pub fn headers(&self) -> &HeaderMap {
        &self.head.headers
    }

    /// The body parsed as JSON, or the platform's 400 `invalid_parameter` response to return.
    #[allow(clippy::result_large_err)] // the error is the response itself, returned at once
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.body).map_err(|error| {
            json_error(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                &format!("invalid JSON body: {error}"),
            )
        })
    }
}

/// What the driver knows about a connection, for handlers (authorization, logging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address the client connected to (tells the ports apart).
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The device UID from an authenticated client certificate (mutual TLS on 61002), filled in
    /// by the caller after the handshake; `None` on other ports.
    pub client_uid: Option<String>,
}

/// Answers requests. Handlers run on the connection's shard and need not be `Send`.
pub trait Handler {
    /// Answers one request. Errors are responses too (see [`json_error`]).
    fn handle(&self, request: Request, conn: &ConnInfo) -> impl Future<Output = Response>;

    /// The largest body this handler accepts for a request with this head; `None` means the
    /// server's [`Limits::max_body`]. A route that takes large uploads raises it here (and
    /// streams the body, see [`Handler::streams_body`]).
    fn body_limit(&self, head: &RequestHead, conn: &ConnInfo) -> Option<usize> {
        let _ = (head, conn);
        None
    }

    /// Whether this request's body goes to [`Handler::handle_streamed`] chunk by chunk instead
    /// of being buffered whole (uploads larger than a connection should hold in memory).
    fn streams_body(&self, head: &RequestHead, conn: &ConnInfo) -> bool {
        let _ = (head, conn);
        false
    }

    /// Answers a request whose body [`Handler::streams_body`] asked to stream; `body` yields it
    /// as it arrives. A body not read to its end closes the connection after the response.
    fn handle_streamed<B: BodyChunks>(
        &self,
        head: RequestHead,
        body: &mut B,
        conn: &ConnInfo,
    ) -> impl Future<Output = Response> {
        let _ = (head, body, conn);
        async {
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_internal_error",
                "this route does not take a streamed body",
            )
        }
    }
}

/// The body of a streamed request, read from the connection as the handler asks for it.
pub trait BodyChunks {
    /// The next chunk (at most one socket read); `Ok(None)` once the whole body was read. An
    /// error means the client stalled past [`ServerConfig::request_timeout`] between two reads
    /// (it got 408) or closed the connection; the driver closes the connection either way.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, BodyError>>;

    /// Body bytes not yet returned.
    fn remaining(&self) -> usize;
}

/// Why a streamed body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body ended {remaining} bytes early: {reason}")]
pub struct BodyError {
    /// Bytes that did not arrive.
    pub remaining: usize,
    /// `timeout` or `closed`.
    pub reason: &'static str,
}

/// [`BodyChunks`] over a connection of the driver.
struct BodyStream<'c, 'a, S> {
    conn: &'c mut Connection<'a, S>,
    remaining: usize,
    failure: Option<ConnErrorKind>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> BodyChunks for BodyStream<'_, '_, S> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        if let Some(failure) = &self.failure {
            return Err(BodyError {
                remaining: self.remaining,
                reason: body_failure_reason(failure),
            });
        }
        if self.remaining == 0 {
            return Ok(None);
        }
        if self.conn.buf.is_empty() {
            // Each read must come within the request timeout: a large upload may take longer
            // than it in all, a stalled one may not hold the connection.
            let deadline = Instant::now() + self.conn.cfg.request_timeout;
            if let Err(failure) = self.conn.read_request_bytes(deadline).await {
                let error = BodyError {
                    remaining: self.remaining,
                    reason: body_failure_reason(&failure),
                };
                self.failure = Some(failure);
                return Err(error);
            }
        }
        let take = self.conn.buf.len().min(self.remaining);
        self.remaining -= take;
        Ok(Some(self.conn.buf.split_to(take).freeze()))
    }

    fn remaining(&self) -> usize {
        self.remaining
    }
}

fn body_failure_reason(failure: &ConnErrorKind) -> &'static str {
    match failure {
        ConnErrorKind::RequestTimeout(_) => "timeout",
        _ => "closed",
    }
}

/// Settings of the connection driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Size limits on requests (head 8 KiB, 64 fields, body 64 KiB by default).
    pub limits: Limits,
    /// How long a connection may wait for the first byte of its next request before it is
    /// closed without a response. Default 60 s.
    pub idle_timeout: Duration,
    /// How long a client has, from the first byte of a request, to send its whole head and body;
    /// beyond it the client gets 408 and the connection is closed. Default 15 s.
    pub request_timeout: Duration,
    /// How long writing out the buffered responses may take before the connection is dropped
    /// (a client that does not read). Default 15 s.
    pub write_timeout: Duration,
    /// Requests served on one connection; the last response says `Connection: close`.
    /// Default 1000.
    pub max_requests_per_connection: u32,
    /// After a response that closes the connection, how long unread client bytes are read and
    /// discarded so that the close does not turn into a reset that destroys the response.
    /// Default 2 s.
    pub linger_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(15),
            max_requests_per_connection: 1000,
            linger_timeout: Duration::from_secs(2),
        }
    }
}

/// A [`ServerConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HTTP server setting {field}: {reason}")]
pub struct InvalidServerConfig {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ServerConfig {
    /// Checks that every limit and timeout can work.
    pub fn validate(&self) -> Result<(), InvalidServerConfig> {
        let invalid = |field, reason| Err(InvalidServerConfig { field, reason });
        if self.limits.max_header_bytes < 256 {
            return invalid("limits.max_header_bytes", "must be at least 256 bytes");
        }
        if self.limits.max_headers == 0 {
            return invalid("limits.max_headers", "must be at least 1");
        }
        if self.max_requests_per_connection == 0 {
            return invalid("max_requests_per_connection", "must be at least 1");
        }
        for (field, value) in [
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                return invalid(field, "must be longer than zero");
            }
        }
        Ok(())
    }
}

/// Why a connection ended abnormally. A clean end (the client closed between requests, the idle
/// timeout, `Connection: close`, the request cap, shutdown) is `Ok(())` instead.
#[derive(Debug, thiserror::Error)]
#[error("HTTP connection from {peer}: {kind}")]
pub struct ConnError {
    /// The client.
    pub peer: SocketAddr,
    /// What went wrong.
    pub kind: ConnErrorKind,
}

/// What ended a connection abnormally, and whose fault it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnErrorKind {
    /// The client sent a request we refused (answered with the error's status, then closed).
    #[error("client sent a bad request: {0}")]
    BadRequest(#[source] HttpError),
    /// The client did not finish its request in time (answered 408, then closed).
    #[error("client did not send its whole request within {0:?}")]
    RequestTimeout(Duration),
    /// The client closed the connection in the middle of a request.
    #[error("client closed the connection after {received} bytes of a request")]
    TruncatedRequest {
        /// Bytes of the unfinished request.
        received: usize,
    },
    /// The client did not take our response in time.
    #[error("client did not read for {0:?}")]
    WriteTimeout(Duration),
    /// The socket or TLS layer failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

/// Serves requests on `stream` until the client closes it, an error, or a limit ends it.
pub async fn serve_connection<S, H>(
    stream: S,
    handler: &H,
    info: ConnInfo,
    cfg: &ServerConfig,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    serve_connection_until(stream, handler, info, cfg, std::future::pending()).await
}

/// Like [`serve_connection`], and ends gracefully once `shutdown` resolves (for example
/// `rt::Shutdown::wait()`): an idle connection is closed at once, a request in progress is
/// finished and answered with `Connection: close`.
pub async fn serve_connection_until<S, H, F>(
    stream: S,
    handler: &H,
    info: ConnInfo,
    cfg: &ServerConfig,
    shutdown: F,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
    F: Future<Output = ()>,
{
    let peer = info.peer;
    let mut conn = Connection {
        stream,
        cfg,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
    };
    serve(&mut conn, handler, &info, shutdown)
        .await
        .map_err(|kind| ConnError { peer, kind })
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Buffered response bytes that are written out even while more pipelined requests wait.
const WRITE_THRESHOLD: usize = 64 * 1024;
/// Most bytes read and discarded during a lingering close.
const LINGER_MAX_BYTES: usize = 1 << 20;

struct Connection<'a, S> {
    stream: S,
    cfg: &'a ServerConfig,
    /// Bytes received and not yet consumed: the current request, then any pipelined ones.
    buf: BytesMut,
    /// Encoded responses not yet written.
    out: Vec<u8>,
}

/// The outcome of one read.
enum Read {
    Data,
    Eof,
    TimedOut,
}

/// How waiting for the next request ended.
enum Next {
    Request,
    Closed,
    Shutdown,
}

async fn serve<S, H, F>(
    conn: &mut Connection<'_, S>,
    handler: &H,
    info: &ConnInfo,
    shutdown: F,
) -> Result<(), ConnErrorKind>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
    F: Future<Output = ()>,
{
    let cfg = conn.cfg;
    let parser = RequestParser::new(cfg.limits);
    let mut shutdown = pin!(shutdown);
    let mut shutting_down = false;
    let mut served: u32 = 0;
    loop {
        if conn.buf.is_empty() {
            conn.write_out().await?;
            let next = futures_lite::future::or(
                async {
                    match conn.read(cfg.idle_timeout).await? {
                        Read::Data => Ok(Next::Request),
                        Read::Eof | Read::TimedOut => Ok(Next::Closed),
                    }
                },
                async {
                    shutdown.as_mut().await;
                    Ok::<_, ConnErrorKind>(Next::Shutdown)
                },
            )
            .await?;
            match next {
                Next::Request => {}
                Next::Closed => return Ok(()),
                Next::Shutdown => {
                    conn.close().await;
                    return Ok(());
                }
            }
        }
        let deadline = Instant::now() + cfg.request_timeout;

        let ParsedHead { head, head_len } = loop {
            match parser.parse_head(&conn.buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => conn.read_request_bytes(deadline).await?,
                Err(error) => return conn.refuse(error).await,
            }
        };
        let limit = handler
            .body_limit(&head, info)
            .unwrap_or(cfg.limits.max_body);
        let body_len = match checked_body_len(head.content_length, limit) {
            Ok(len) => len,
            Err(error) => return conn.refuse(error).await,
        };
        let message_len = head_len + body_len;
        if head.expects_continue && conn.buf.len() < message_len {
            conn.out.extend_from_slice(CONTINUE_RESPONSE);
            conn.write_out().await?;
        }
        if handler.streams_body(&head, info) {
            let _ = conn.buf.split_to(head_len);
            served += 1;
            let head_only = head.method == Method::HEAD;
            let keep_alive = head.keep_alive && served < cfg.max_requests_per_connection;
            let mut body = BodyStream {
                conn: &mut *conn,
                remaining: body_len,
                failure: None,
            };
            let response = handler.handle_streamed(head, &mut body, info).await;
            let (unread, failure) = (body.remaining, body.failure.take());
            if let Some(failure) = failure {
                // 408 was sent (a timeout), or the client is gone.
                return Err(failure);
            }
            // A body the handler did not read to its end cannot be skipped reliably: close.
            let keep_alive = keep_alive && unread == 0 && !response_closes(&response);
            if head_only {
                encode_response_head(&response, keep_alive, &mut conn.out);
            } else {
                encode_response(&response, keep_alive, &mut conn.out);
            }
            if !keep_alive {
                conn.write_out().await?;
                conn.close_lingering().await;
                return Ok(());
            }
            continue;
        }
        while conn.buf.len() < message_len {
            conn.read_request_bytes(deadline).await?;
        }
        let mut message = conn.buf.split_to(message_len).freeze();
        let body = message.split_off(head_len);
        served += 1;

        let head_only = head.method == Method::HEAD;
        let mut keep_alive = head.keep_alive && served < cfg.max_requests_per_connection;
        let response = handler.handle(Request { head, body }, info).await;
        if !shutting_down
            && futures_lite::future::poll_once(shutdown.as_mut())
                .await
                .is_some()
        {
            shutting_down = true;
        }
        keep_alive &= !shutting_down && !response_closes(&response);
        if head_only {
            encode_response_head(&response, keep_alive, &mut conn.out);
        } else {
            encode_response(&response, keep_alive, &mut conn.out);
        }
        if !keep_alive {
            conn.write_out().await?;
            conn.close_lingering().await;
            return Ok(());
        }
        if conn.out.len() >= WRITE_THRESHOLD {
            conn.write_out().await?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// Reads once, appending to `buf`, waiting at most `limit`.
    async fn read(&mut self, limit: Duration) -> Result<Read, ConnErrorKind> {
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let target = self.buf.get_mut(start..).unwrap_or_default();
        let result = rt::timer::timeout(limit, self.stream.read(target)).await;
        let received = match &result {
            Ok(Ok(n)) => *n,
            _ => 0,
        };
        self.buf.truncate(start + received);
        match result {
            Ok(Ok(0)) => Ok(Read::Eof),
            Ok(Ok(_)) => Ok(Read::Data),
            Ok(Err(error)) => Err(ConnErrorKind::Io(error)),
            Err(_) => Ok(Read::TimedOut),
        }
    }

    /// Reads more of a request that must be complete by `deadline`; answers 408 when it is not.
    async fn read_request_bytes(&mut self, deadline: Instant) -> Result<(), ConnErrorKind> {
        // Responses to earlier pipelined requests go out before we wait on the client.
        self.write_out().await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let read = if left.is_zero() {
            Read::TimedOut
        } else {
            self.read(left).await?
        };
        match read {
            Read::Data => Ok(()),
            Read::Eof => Err(ConnErrorKind::TruncatedRequest {
                received: self.buf.len(),
            }),
            Read::TimedOut => {
                let timeout = self.cfg.request_timeout;
                let response = json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    &format!(
                        "the request was not complete within {} s",
                        timeout.as_secs_f32()
                    ),
                );
                encode_response(&response, false, &mut self.out);
                // The client is likely still sending: no lingering, it would only wait longer.
                if self.write_out().await.is_ok() {
                    self.close().await;
                }
                Err(ConnErrorKind::RequestTimeout(timeout))
            }
        }
    }

    /// Answers a request error and closes the connection.
    async fn refuse(&mut self, error: HttpError) -> Result<(), ConnErrorKind> {
        let response = error.to_response();
        encode_response(&response, false, &mut self.out);
        self.write_out().await?;
        self.close_lingering().await;
        Err(ConnErrorKind::BadRequest(error))
    }

    /// Writes every buffered response.
    async fn write_out(&mut self) -> Result<(), ConnErrorKind> {
        if self.out.is_empty() {
            return Ok(());
        }
        let limit = self.cfg.write_timeout;
        let written = rt::timer::timeout(limit, async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        })
        .await;
        self.out.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnErrorKind::Io(error)),
            Err(_) => Err(ConnErrorKind::WriteTimeout(limit)),
        }
    }

    /// Ends our side of the connection (TLS close_notify, then FIN).
    async fn close(&mut self) {
        let _ = rt::timer::timeout(self.cfg.write_timeout, self.stream.close()).await;
    }

    /// Closes our side, then reads and discards what the client still sends for a short while:
    /// closing a socket with unread input makes the kernel send a reset, which can destroy the
    /// response before the client has read it.
    async fn close_lingering(&mut self) {
        self.close().await;
        let deadline = Instant::now() + self.cfg.linger_timeout;
        let mut discarded = 0usize;
        let mut scratch = [0u8; 4096];
        while discarded < LINGER_MAX_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rt::timer::timeout(left, self.stream.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_values_are_named() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
        let zero_requests = ServerConfig {
            max_requests_per_connection: 0,
            ..Default::default()
        };
        assert_eq!(
            zero_requests.validate().unwrap_err().field,
            "max_requests_per_connection"
        );
        let no_timeout = ServerConfig {
            request_timeout: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(no_timeout.validate().unwrap_err().field, "request_timeout");
        let tiny_head = ServerConfig {
            limits: Limits {
                max_header_bytes: 16,
                ..Limits::default()
            },
            ..Default::default()
        };
        assert_eq!(
            tiny_head.validate().unwrap_err().field,
            "limits.max_header_bytes"
        );
    }
}
