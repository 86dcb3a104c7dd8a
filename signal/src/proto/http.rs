//! HTTP/1.1 message codec for the client API (61009/61010) and the provisioning ports
//! (61000-61002), plus the small client side the alarm webhook sender and the tests use.
//!
//! Sans-IO: the caller owns the buffer and feeds everything received so far; the parsers answer
//! "complete, the message is the first N bytes", "partial, read more" or a precise [`HttpError`]
//! that knows the status code and the JSON error body (the platform's `{"error":{"symbol",
//! "message"}}` format) to answer with. Parsing is done by `httparse`; this module adds the
//! message framing rules of RFC 9112 and the limits that keep a hostile peer from growing memory.
//!
//! Request framing policy (what the platform's clients send: JSON bodies with `Content-Length`):
//! - a body is delimited by exactly one valid `Content-Length`; a duplicate, conflicting or
//!   malformed one is a 400 (request smuggling defense);
//! - `Transfer-Encoding: chunked` request bodies are refused with 411 Length Required (the client
//!   can retry with `Content-Length`); any other transfer coding is a 400 (RFC 9112 §6.1);
//! - the head is at most [`Limits::max_header_bytes`] with at most [`Limits::max_headers`] fields
//!   (431 beyond), the body at most [`Limits::max_body`] (413 beyond).
//!
//! Large bodies (firmware upload): [`RequestParser::parse_head`] returns the head and the declared
//! body length without looking at the body, so a caller can apply a larger limit to chosen routes
//! and stream the body in pieces instead of buffering it.

use std::io::Write as _;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use serde::Serialize;

/// A response as handlers build it; the codec adds the framing headers.
pub type Response = http::Response<Vec<u8>>;

/// The most header fields any [`Limits`] can allow (the parse scratch space lives on the stack).
pub const HARD_MAX_HEADERS: usize = 128;

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Size limits on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line (or status line) plus header fields, in bytes. Beyond: 431.
    pub max_header_bytes: usize,
    /// Number of header fields; at most [`HARD_MAX_HEADERS`], larger values are clamped. Beyond: 431.
    pub max_headers: usize,
    /// Body bytes a parser accepts to buffer. Beyond: 413.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            max_body: 64 * 1024,
        }
    }
}

impl Limits {
    fn header_slots(&self) -> usize {
        self.max_headers.clamp(1, HARD_MAX_HEADERS)
    }
}

/// Why a message could not be parsed. Every variant is the peer's fault; [`HttpError::status`]
/// says what to answer a client with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The head does not follow the HTTP/1.x grammar; `offset` is the first offending byte.
    #[error("malformed {part} at byte {offset}")]
    Syntax {
        /// Which part of the head was being parsed.
        part: &'static str,
        /// Offset of the offending byte from the start of the message.
        offset: usize,
    },
    /// The head is longer than the limit.
    #[error("message head longer than {limit} bytes")]
    HeadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More header fields than the limit.
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// The request target is neither origin-form (`/path?query`), absolute-form nor `*`.
    #[error("unsupported request target {target:?}")]
    InvalidTarget {
        /// The target as received (bounded by the head limit).
        target: String,
    },
    /// A header field name or value that `http` refuses.
    #[error("invalid header field {name:?}")]
    InvalidHeader {
        /// The field name as received.
        name: String,
    },
    /// An HTTP/1.1 request without exactly one `Host` header (RFC 9112 §3.2).
    #[error("HTTP/1.1 request needs exactly one Host header, got {count}")]
    HostHeaderCount {
        /// How many `Host` fields the request had.
        count: usize,
    },
    /// More than one `Content-Length` field.
    #[error("duplicate Content-Length headers")]
    DuplicateContentLength,
    /// A `Content-Length` that is not a decimal number of bytes.
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength {
        /// The value as received, lossily decoded.
        value: String,
    },
    /// A request body sent with `Transfer-Encoding: chunked`; we require `Content-Length`.
    #[error("chunked request bodies are not accepted, send Content-Length")]
    ChunkedRequestBody,
    /// A transfer coding this codec cannot frame (not ending in `chunked`).
    #[error("unsupported Transfer-Encoding {value:?}")]
    UnsupportedTransferEncoding {
        /// The value as received, lossily decoded.
        value: String,
    },
    /// An `Expect` other than `100-continue`.
    #[error("unsupported expectation {value:?}")]
    UnsupportedExpectation {
        /// The value as received, lossily decoded.
        value: String,
    },
    /// The body is larger than the limit.
    #[error("body of {length} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// Declared (or, for chunked responses, accumulated) body length.
        length: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A malformed chunk in a chunked response body.
    #[error("malformed chunk at byte {offset}")]
    InvalidChunk {
        /// Offset of the bad chunk-size line or missing CRLF from the start of the message.
        offset: usize,
    },
    /// The connection ended before the message was complete.
    #[error("connection closed after {received} bytes, before the message was complete")]
    Truncated {
        /// Bytes of the message received.
        received: usize,
    },
}

impl HttpError {
    /// The status code a server answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HttpError::ChunkedRequestBody => StatusCode::LENGTH_REQUIRED,
            HttpError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::UnsupportedExpectation { .. } => StatusCode::EXPECTATION_FAILED,
            HttpError::Syntax { .. }
            | HttpError::InvalidTarget { .. }
            | HttpError::InvalidHeader { .. }
            | HttpError::HostHeaderCount { .. }
            | HttpError::DuplicateContentLength
            | HttpError::InvalidContentLength { .. }
            | HttpError::UnsupportedTransferEncoding { .. }
            | HttpError::InvalidChunk { .. }
            | HttpError::Truncated { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The error symbol of the JSON body: the platform's `invalid_parameter` for 400, otherwise
    /// the status's reason in the platform's style (lowercase words joined by underscores).
    pub fn symbol(&self) -> &'static str {
        symbol_for_status(self.status())
    }

    /// The JSON error response for this error.
    pub fn to_response(&self) -> Response {
        json_error(self.status(), self.symbol(), &self.to_string())
    }
}

/// The error symbol used for a status when nothing more specific applies.
pub fn symbol_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_parameter",
        StatusCode::FORBIDDEN => "auth_failed",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::LENGTH_REQUIRED => "length_required",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::EXPECTATION_FAILED => "expectation_failed",
        StatusCode::TOO_MANY_REQUESTS => "frequent_request",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "header_fields_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        _ => "server_internal_error",
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInfo<'a>,
}

#[derive(Serialize)]
struct ErrorInfo<'a> {
    symbol: &'a str,
    message: &'a str,
}

/// The platform's message limit, in bytes.
const MAX_ERROR_MESSAGE: usize = 256;

/// A response in the platform's error format: `{"error":{"symbol":…,"message":…}}`.
/// `message` is cut to the platform's 256-byte limit.
pub fn json_error(status: StatusCode, symbol: &str, message: &str) -> Response {
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = message.get(..end).unwrap_or_default();
    json_response(
        status,
        &ErrorBody {
            error: ErrorInfo { symbol, message },
        },
    )
}

/// A JSON response. A value that cannot be serialized (a map with non-string keys, a failing
/// `Serialize` impl) gives a 500 in the error format instead.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_json_content_type(status, body),
        Err(_) => with_json_content_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":{"symbol":"server_internal_error","message":"response could not be serialized"}}"#.to_vec(),
        ),
    }
}

fn with_json_content_type(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The head of a request, with the framing facts the parser derived from it.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The path, as sent (not percent-decoded); `*` for `OPTIONS *`. For an absolute-form target
    /// (`http://host/path`) this is the path part.
    pub path: String,
    /// The query without the `?`, as sent (not decoded); `None` when there is no `?`.
    pub query: Option<String>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// All header fields, in order.
    pub headers: HeaderMap,
    /// Body length from `Content-Length`; 0 without one.
    pub content_length: u64,
    /// Whether the client allows the connection to stay open after this request.
    pub keep_alive: bool,
    /// An HTTP/1.1 `Expect: 100-continue`: the client waits for `100 Continue` before the body.
    pub expects_continue: bool,
}

/// A parsed request head and its length in bytes.
#[derive(Debug, Clone)]
pub struct ParsedHead {
    /// The head.
    pub head: RequestHead,
    /// Bytes of the head, including the empty line that ends it; the body starts there.
    pub head_len: usize,
}

/// Result of [`RequestParser::parse`].
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A whole request is in the buffer: the head is `buf[..head_len]`, the body the
    /// `body_len` bytes after it; a pipelined next request starts at `head_len + body_len`.
    Complete {
        /// The head.
        head: RequestHead,
        /// Length of the head in bytes.
        head_len: usize,
        /// Length of the body in bytes.
        body_len: usize,
    },
    /// More bytes are needed.
    Partial,
}

/// Parses HTTP/1.x requests from the start of a caller-owned buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestParser {
    limits: Limits,
}

impl RequestParser {
    /// A parser that enforces `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestParser { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Parses a whole request (head and `Content-Length` body) from the start of `buf`.
    pub fn parse(&self, buf: &[u8]) -> Result<Parsed, HttpError> {
        let Some(ParsedHead { head, head_len }) = self.parse_head(buf)? else {
            return Ok(Parsed::Partial);
        };
        let body_len = checked_body_len(head.content_length, self.limits.max_body)?;
        if buf.len().saturating_sub(head_len) < body_len {
            return Ok(Parsed::Partial);
        }
        Ok(Parsed::Complete {
            head,
            head_len,
            body_len,
        })
    }

    /// Parses the head only, and checks its framing; does not apply [`Limits::max_body`].
    /// `Ok(None)` means more bytes are needed.
    pub fn parse_head(&self, buf: &[u8]) -> Result<Option<ParsedHead>, HttpError> {
        let max_head = self.limits.max_header_bytes;
        let window = buf.get(..buf.len().min(max_head)).unwrap_or(buf);
        let mut slots = [httparse::EMPTY_HEADER; HARD_MAX_HEADERS];
        let slots = slots
            .get_mut(..self.limits.header_slots())
            .unwrap_or_default();
        let mut request = httparse::Request::new(slots);
        let head_len = match request.parse(window) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if window.len() >= max_head => {
                return Err(HttpError::HeadTooLarge { limit: max_head });
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::TooManyHeaders {
                    limit: self.limits.header_slots(),
                });
            }
            Err(error) => {
                return Err(HttpError::Syntax {
                    part: syntax_part(error),
                    offset: request_error_offset(window, self.limits.header_slots()),
                });
            }
        };
        let method =
            Method::from_bytes(request.method.unwrap_or_default().as_bytes()).map_err(|_| {
                HttpError::Syntax {
                    part: "method",
                    offset: 0,
                }
            })?;
        let version = match request.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let (path, query) = split_target(request.path.unwrap_or_default(), &method)?;
        let headers = header_map(request.headers)?;
        let head = RequestHead {
            content_length: request_content_length(&headers)?,
            keep_alive: wants_keep_alive(version, &headers),
            expects_continue: expects_continue(version, &headers)?,
            method,
            path,
            query,
            version,
            headers,
        };
        if version == Version::HTTP_11 {
            let count = head.headers.get_all(header::HOST).iter().count();
            if count != 1 {
                return Err(HttpError::HostHeaderCount { count });
            }
        }
        Ok(Some(ParsedHead { head, head_len }))
    }
}

/// `length` as a buffer size, or 413 when it is above `limit`.
pub fn checked_body_len(length: u64, limit: usize) -> Result<usize, HttpError> {
    match usize::try_from(length) {
        Ok(len) if len <= limit => Ok(len),
        _ => Err(HttpError::BodyTooLarge { length, limit }),
    }
}

fn syntax_part(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status code",
        httparse::Error::Token => "method or request target",
        httparse::Error::Version => "HTTP version",
        httparse::Error::TooManyHeaders => "header count",
    }
}

/// The offset of the byte that makes `httparse` fail: the shortest failing prefix ends with it.
/// httparse is incremental (a valid prefix is `Partial`), so failure is monotonic in the prefix
/// length and a binary search finds it in a dozen parses; this runs only on the error path.
fn first_failing_byte(window: &[u8], fails: impl Fn(&[u8]) -> bool) -> usize {
    let (mut passing, mut failing) = (0usize, window.len());
    while failing - passing > 1 {
        let mid = passing + (failing - passing) / 2;
        if fails(window.get(..mid).unwrap_or(window)) {
            failing = mid;
        } else {
            passing = mid;
        }
    }
    failing.saturating_sub(1)
}

fn request_error_offset(window: &[u8], slots: usize) -> usize {
    first_failing_byte(window, |prefix| {
        let mut headers = [httparse::EMPTY_HEADER; HARD_MAX_HEADERS];
        let headers = headers.get_mut(..slots).unwrap_or_default();
        httparse::Request::new(headers).parse(prefix).is_err()
    })
}

fn response_error_offset(window: &[u8], slots: usize) -> usize {
    first_failing_byte(window, |prefix| {
        let mut headers = [httparse::EMPTY_HEADER; HARD_MAX_HEADERS];
        let headers = headers.get_mut(..slots).unwrap_or_default();
        httparse::Response::new(headers).parse(prefix).is_err()
    })
}

/// Splits the request target into path and query (RFC 9112 §3.2).
fn split_target(target: &str, method: &Method) -> Result<(String, Option<String>), HttpError> {
    let invalid = || HttpError::InvalidTarget {
        target: target.to_owned(),
    };
    let path_and_query = if target.starts_with('/') {
        target
    } else if target == "*" && method == Method::OPTIONS {
        return Ok(("*".to_owned(), None));
    } else if let Some(rest) = strip_http_scheme(target) {
        // Absolute form, as sent to proxies; origin servers must accept it too.
        match rest.find(['/', '?']) {
            Some(start) => rest.get(start..).ok_or_else(invalid)?,
            None => "/",
        }
    } else {
        return Err(invalid());
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (path_and_query, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_owned(), query))
}

/// The part after `http://` or `https://` (any case), if `target` starts with one.
fn strip_http_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].into_iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix
            .eq_ignore_ascii_case(scheme)
            .then(|| target.get(scheme.len()..))
            .flatten()
    })
}

fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, HttpError> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let invalid = || HttpError::InvalidHeader {
            name: field.name.to_owned(),
        };
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// Comma-separated tokens of every `name` field, trimmed.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, wanted: &str) -> bool {
    tokens(headers, name).any(|token| token.eq_ignore_ascii_case(wanted.as_bytes()))
}

fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    if has_token(headers, &header::CONNECTION, "close") {
        return false;
    }
    version == Version::HTTP_11 || has_token(headers, &header::CONNECTION, "keep-alive")
}

fn expects_continue(version: Version, headers: &HeaderMap) -> Result<bool, HttpError> {
    let Some(value) = headers.get(header::EXPECT) else {
        return Ok(false);
    };
    if !value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"100-continue")
    {
        return Err(HttpError::UnsupportedExpectation {
            value: lossy(value),
        });
    }
    // RFC 9110 §10.1.1: an HTTP/1.0 client cannot understand 100 Continue; ignore it.
    Ok(version == Version::HTTP_11)
}

/// The single `Content-Length` of a request, or `None` without one.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HttpError::DuplicateContentLength);
    }
    parse_content_length(value).map(Some)
}

fn parse_content_length(value: &HeaderValue) -> Result<u64, HttpError> {
    let digits = value.as_bytes();
    let invalid = || HttpError::InvalidContentLength {
        value: lossy(value),
    };
    // u64 holds every 19-digit number; `parse` alone would also accept a leading '+'.
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)
}

/// `Ok(true)` when the final transfer coding is chunked; an error for any other coding.
fn transfer_encoding_is_chunked(headers: &HeaderMap) -> Result<bool, HttpError> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(false);
    }
    match tokens(headers, &header::TRANSFER_ENCODING).last() {
        Some(last) if last.eq_ignore_ascii_case(b"chunked") => Ok(true),
        _ => Err(HttpError::UnsupportedTransferEncoding {
            value: headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .map(lossy)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn request_content_length(headers: &HeaderMap) -> Result<u64, HttpError> {
    if transfer_encoding_is_chunked(headers)? {
        return Err(HttpError::ChunkedRequestBody);
    }
    Ok(content_length(headers)?.unwrap_or(0))
}

/// Whether `status` forbids a body and a `Content-Length` (RFC 9110 §8.6).
fn status_has_no_body(status: StatusCode) -> bool {
    status.is_informational() || status == StatusCode::NO_CONTENT
}

/// Encodes `response` (head and body) after what is already in `out`. The codec writes
/// `Content-Length` and `Connection` itself and drops any the handler set; `keep_alive: false`
/// writes `Connection: close`. Always answers as HTTP/1.1, which HTTP/1.0 clients accept.
pub fn encode_response(response: &Response, keep_alive: bool, out: &mut Vec<u8>) {
    encode_response_head(response, keep_alive, out);
    if !status_has_no_body(response.status()) {
        out.extend_from_slice(response.body());
    }
}

/// Encodes only the head of `response`, with the `Content-Length` of its body: the answer to a
/// `HEAD` request.
pub fn encode_response_head(response: &Response, keep_alive: bool, out: &mut Vec<u8>) {
    let status = response.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !status_has_no_body(status) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", response.body().len());
    }
    let connection: &[u8] = if keep_alive { b"keep-alive" } else { b"close" };
    write_field(out, b"connection", connection);
    out.extend_from_slice(b"\r\n");
}

/// Whether a handler's response asks for the connection to be closed after it.
pub fn response_closes(response: &Response) -> bool {
    has_token(response.headers(), &header::CONNECTION, "close")
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Encodes a client request. The target is the URI's path and query; `Host` comes from the URI's
/// authority unless the request has one; `Content-Length` is written for any non-empty body and
/// for POST, PUT and PATCH, and replaces any the caller set.
pub fn encode_request<B: AsRef<[u8]>>(request: &http::Request<B>, out: &mut Vec<u8>) {
    let body = request.body().as_ref();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(if request.version() == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    if !request.headers().contains_key(header::HOST) {
        let authority = request.uri().authority().map_or("", |a| a.as_str());
        // userinfo never goes into Host
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        write_field(out, b"host", host.as_bytes());
    }
    for (name, value) in request.headers() {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            write_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let method = request.method();
    if !body.is_empty()
        || method == Method::POST
        || method == Method::PUT
        || method == Method::PATCH
    {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Result of [`ResponseParser::parse`].
#[derive(Debug)]
pub enum ParsedResponse {
    /// A whole response; it took the first `consumed` bytes of the buffer. A `1xx` interim
    /// response comes back on its own (empty body): skip it and parse again after `consumed`.
    Complete {
        /// The response, with the body de-chunked.
        response: Response,
        /// Bytes of the buffer this response took.
        consumed: usize,
    },
    /// More bytes are needed.
    Partial,
}

/// Parses HTTP/1.x responses, for the webhook sender and the tests. Bodies may be framed by
/// `Content-Length`, by chunked coding (trailers are discarded) or by the end of the connection
/// ([`ResponseParser::parse_at_eof`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseParser {
    limits: Limits,
    head_request: bool,
}

/// How the body of a response is delimited (RFC 9112 §6.3).
enum ResponseFraming {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

impl ResponseParser {
    /// A parser that enforces `limits`.
    pub fn new(limits: Limits) -> Self {
        ResponseParser {
            limits,
            head_request: false,
        }
    }

    /// A parser for the response to a `HEAD` request, which never has a body.
    pub fn for_head_request(mut self) -> Self {
        self.head_request = true;
        self
    }

    /// Parses a response from the start of `buf`, while the connection is still open.
    pub fn parse(&self, buf: &[u8]) -> Result<ParsedResponse, HttpError> {
        self.parse_inner(buf, false)
    }

    /// Parses a response from the start of `buf` after the peer closed the connection: a body
    /// without length ends here, and anything still partial is [`HttpError::Truncated`].
    pub fn parse_at_eof(&self, buf: &[u8]) -> Result<ParsedResponse, HttpError> {
        match self.parse_inner(buf, true)? {
            ParsedResponse::Partial => Err(HttpError::Truncated {
                received: buf.len(),
            }),
            complete => Ok(complete),
        }
    }

    fn parse_inner(&self, buf: &[u8], eof: bool) -> Result<ParsedResponse, HttpError> {
        let max_head = self.limits.max_header_bytes;
        let window = buf.get(..buf.len().min(max_head)).unwrap_or(buf);
        let mut slots = [httparse::EMPTY_HEADER; HARD_MAX_HEADERS];
        let slots = slots
            .get_mut(..self.limits.header_slots())
            .unwrap_or_default();
        let mut parsed = httparse::Response::new(slots);
        let head_len = match parsed.parse(window) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if window.len() >= max_head => {
                return Err(HttpError::HeadTooLarge { limit: max_head });
            }
            Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::TooManyHeaders {
                    limit: self.limits.header_slots(),
                });
            }
            Err(error) => {
                return Err(HttpError::Syntax {
                    part: syntax_part(error),
                    offset: response_error_offset(window, self.limits.header_slots()),
                });
            }
        };
        let status = parsed
            .code
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or(HttpError::Syntax {
                part: "status code",
                offset: 9,
            })?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let headers = header_map(parsed.headers)?;

        let framing = if self.head_request
            || status_has_no_body(status)
            || status == StatusCode::NOT_MODIFIED
        {
            ResponseFraming::Empty
        } else if headers.contains_key(header::TRANSFER_ENCODING) {
            match transfer_encoding_is_chunked(&headers) {
                Ok(true) => ResponseFraming::Chunked,
                // RFC 9112 §6.3: a response whose final coding is not chunked runs until close.
                _ => ResponseFraming::UntilClose,
            }
        } else {
            match response_content_length(&headers)? {
                Some(length) => {
                    ResponseFraming::Length(checked_body_len(length, self.limits.max_body)?)
                }
                None => ResponseFraming::UntilClose,
            }
        };
        let rest = buf.get(head_len..).unwrap_or_default();
        let (body, body_consumed) = match framing {
            ResponseFraming::Empty => (Vec::new(), 0),
            ResponseFraming::Length(len) => match rest.get(..len) {
                Some(body) => (body.to_vec(), len),
                None => return Ok(ParsedResponse::Partial),
            },
            ResponseFraming::Chunked => match decode_chunked(rest, head_len, &self.limits)? {
                Some(decoded) => decoded,
                None => return Ok(ParsedResponse::Partial),
            },
            ResponseFraming::UntilClose if !eof => {
                // Enforce the limit while the body is still arriving.
                checked_body_len(rest.len() as u64, self.limits.max_body)?;
                return Ok(ParsedResponse::Partial);
            }
            ResponseFraming::UntilClose => {
                checked_body_len(rest.len() as u64, self.limits.max_body)?;
                (rest.to_vec(), rest.len())
            }
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(ParsedResponse::Complete {
            response,
            consumed: head_len + body_consumed,
        })
    }
}

/// A response's `Content-Length`; identical duplicates are tolerated (RFC 9112 §6.3 allows a
/// recipient to), different ones are not.
fn response_content_length(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|other| other != first) {
        return Err(HttpError::DuplicateContentLength);
    }
    parse_content_length(first).map(Some)
}

/// Decodes a chunked body at the start of `buf`: `Ok(None)` until its last chunk and trailers
/// have arrived, then the body and the bytes it took. `base` is `buf`'s offset in the message.
fn decode_chunked(
    buf: &[u8],
    base: usize,
    limits: &Limits,
) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        let chunk_start = pos;
        let invalid = || HttpError::InvalidChunk {
            offset: base + chunk_start,
        };
        let rest = buf.get(pos..).unwrap_or_default();
        let (size_line_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::InvalidChunkSize) => return Err(invalid()),
        };
        pos += size_line_len;
        if size == 0 {
            break;
        }
        let total = (body.len() as u64).saturating_add(size);
        let size = checked_body_len(total, limits.max_body)? - body.len();
        let Some(data) = pos.checked_add(size).and_then(|end| buf.get(pos..end)) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        pos += size;
        match buf.get(pos..pos.saturating_add(2)) {
            Some(b"\r\n") => pos += 2,
            Some(_) => return Err(HttpError::InvalidChunk { offset: base + pos }),
            None => return Ok(None),
        }
    }
    // Trailer section: header fields, then an empty line.
    let trailers_start = pos;
    let rest = buf.get(pos..).unwrap_or_default();
    let window = rest
        .get(..rest.len().min(limits.max_header_bytes))
        .unwrap_or(rest);
    let mut slots = [httparse::EMPTY_HEADER; HARD_MAX_HEADERS];
    let slots = slots.get_mut(..limits.header_slots()).unwrap_or_default();
    match httparse::parse_headers(window, slots) {
        Ok(httparse::Status::Complete((len, _))) => Ok(Some((body, trailers_start + len))),
        Ok(httparse::Status::Partial) if window.len() >= limits.max_header_bytes => {
            Err(HttpError::HeadTooLarge {
                limit: limits.max_header_bytes,
            })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders {
            limit: limits.header_slots(),
        }),
        Err(_) => Err(HttpError::InvalidChunk {
            offset: base + trailers_start,
        }),
    }
}

/// Entry points of the fuzz targets (`fuzz/fuzz_targets/http_*.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Limits small enough that fuzz inputs reach them.
    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_body: 4096,
    };

    /// Arbitrary bytes as pipelined requests: never panics; a complete request lies inside the
    /// buffer and every shorter prefix of it is partial; every error answers with a 4xx JSON body.
    pub fn parse_requests(data: &[u8]) {
        let parser = RequestParser::new(LIMITS);
        let mut rest = data;
        loop {
            match parser.parse(rest) {
                Ok(Parsed::Complete {
                    head_len, body_len, ..
                }) => {
                    let len = head_len + body_len;
                    assert!(len > 0 && len <= rest.len(), "request of {len} bytes");
                    assert!(matches!(
                        parser.parse(&rest[..len - 1]),
                        Ok(Parsed::Partial)
                    ));
                    rest = &rest[len..];
                }
                Ok(Parsed::Partial) => return,
                Err(error) => {
                    assert!(error.status().is_client_error(), "{error:?}");
                    let response = error.to_response();
                    let body: serde_json::Value =
                        serde_json::from_slice(response.body()).expect("JSON error body");
                    assert_eq!(body["error"]["symbol"], error.symbol());
                    let mut out = Vec::new();
                    encode_response(&response, false, &mut out);
                    return;
                }
            }
        }
    }

    /// Arbitrary bytes as a response stream: never panics; a complete response lies inside the
    /// buffer.
    pub fn parse_responses(data: &[u8]) {
        let parser = ResponseParser::new(LIMITS);
        let mut rest = data;
        while let Ok(ParsedResponse::Complete { consumed, .. }) = parser.parse(rest) {
            assert!(consumed > 0 && consumed <= rest.len());
            rest = &rest[consumed..];
        }
        if let Ok(ParsedResponse::Complete { consumed, .. }) = parser.parse_at_eof(rest) {
            assert!(consumed <= rest.len());
        }
        let _ = parser.for_head_request().parse(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded from curl 7.88.1 by `testdata/record_curl.py`.
    const CURL_GET: &[u8] = include_bytes!("../../testdata/curl_get_devices.txt");
    const CURL_POST_JSON: &[u8] = include_bytes!("../../testdata/curl_post_json.txt");
    const CURL_TWO_GETS: &[u8] = include_bytes!("../../testdata/curl_two_gets_keepalive.txt");
    const CURL_CHUNKED: &[u8] = include_bytes!("../../testdata/curl_post_chunked.txt");
    const CURL_EXPECT: &[u8] = include_bytes!("../../testdata/curl_post_expect_continue.txt");
    const CURL_HEAD_10: &[u8] = include_bytes!("../../testdata/curl_head_http10.txt");

    fn complete(buf: &[u8]) -> (RequestHead, usize, usize) {
        match RequestParser::default().parse(buf) {
            Ok(Parsed::Complete {
                head,
                head_len,
                body_len,
            }) => (head, head_len, body_len),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn parse_error(buf: &[u8]) -> HttpError {
        match RequestParser::default().parse(buf) {
            Err(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn curl_get_with_query() {
        let (head, head_len, body_len) = complete(CURL_GET);
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.path, "/v1.0/devices");
        assert_eq!(head.query.as_deref(), Some("page=1&size=20"));
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["accept"], "application/json");
        assert_eq!(head.headers["user-agent"], "curl/7.88.1");
        assert!(head.keep_alive);
        assert!(!head.expects_continue);
        assert_eq!((head_len, body_len), (CURL_GET.len(), 0));
    }

    #[test]
    fn curl_post_json_body() {
        let (head, head_len, body_len) = complete(CURL_POST_JSON);
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.path, "/v1.0/initialization-session");
        assert_eq!(head.query, None);
        assert_eq!(head.content_length, 40);
        assert_eq!(head_len + body_len, CURL_POST_JSON.len());
        assert_eq!(
            &CURL_POST_JSON[head_len..],
            br#"{"uid":"95270000YGAKNWKJ","channelId":0}"#
        );
    }

    #[test]
    fn every_split_point_is_partial_until_the_last_byte() {
        for fixture in [CURL_GET, CURL_POST_JSON, CURL_EXPECT, CURL_HEAD_10] {
            for cut in 0..fixture.len() {
                match RequestParser::default().parse(&fixture[..cut]) {
                    Ok(Parsed::Partial) => {}
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
            complete(fixture);
        }
    }

    #[test]
    fn pipelined_requests_parse_in_order() {
        let mut stream = CURL_TWO_GETS.to_vec();
        stream.extend_from_slice(CURL_POST_JSON);
        stream.extend_from_slice(CURL_GET);
        let mut paths = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let (head, head_len, body_len) = complete(rest);
            paths.push(head.path);
            rest = &rest[head_len + body_len..];
        }
        assert_eq!(
            paths,
            [
                "/healthz",
                "/v1.0/devices/95270000YGAKNWKJ",
                "/v1.0/initialization-session",
                "/v1.0/devices"
            ]
        );
    }

    #[test]
    fn expect_continue_head_is_available_before_the_body() {
        let head_end = CURL_EXPECT
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        let parser = RequestParser::default();
        let parsed = parser
            .parse_head(&CURL_EXPECT[..head_end])
            .unwrap()
            .unwrap();
        assert_eq!(parsed.head_len, head_end);
        assert!(parsed.head.expects_continue);
        assert_eq!(parsed.head.method, Method::PUT);
        assert_eq!(
            parsed.head.content_length as usize,
            CURL_EXPECT.len() - head_end
        );
        assert!(matches!(
            parser.parse(&CURL_EXPECT[..head_end]),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn http10_head_closes_by_default() {
        let (head, _, _) = complete(CURL_HEAD_10);
        assert_eq!(head.method, Method::HEAD);
        assert_eq!(head.version, Version::HTTP_10);
        assert!(!head.keep_alive);
        let (head, _, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(head.keep_alive);
        let (head, _, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: TE, close\r\n\r\n");
        assert!(!head.keep_alive);
        // HTTP/1.0 cannot take a 100 Continue: the expectation is ignored.
        let (head, _, _) =
            complete(b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx");
        assert!(!head.expects_continue);
    }

    #[test]
    fn curl_chunked_body_is_length_required() {
        let error = parse_error(CURL_CHUNKED);
        assert_eq!(error, HttpError::ChunkedRequestBody);
        assert_eq!(error.status(), StatusCode::LENGTH_REQUIRED);
        // Known as soon as the head is complete, before any chunk.
        let head_end = CURL_CHUNKED
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap()
            + 4;
        assert!(RequestParser::default()
            .parse_head(&CURL_CHUNKED[..head_end])
            .is_err());
        let error = parse_error(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn content_length_must_be_single_and_decimal() {
        for bad in ["+5", "5, 5", "abc", "-1", "", " 5x", "99999999999999999999"] {
            let request = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {bad}\r\n\r\n");
            let error = parse_error(request.as_bytes());
            assert!(
                matches!(error, HttpError::InvalidContentLength { .. }),
                "{bad:?}: {error:?}"
            );
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        let duplicate =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(parse_error(duplicate), HttpError::DuplicateContentLength);
        let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_error(smuggle).status(), StatusCode::LENGTH_REQUIRED);
    }

    #[test]
    fn limits_map_to_their_status_codes() {
        let big_header = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        let error = parse_error(big_header.as_bytes());
        assert_eq!(error, HttpError::HeadTooLarge { limit: 8192 });
        assert_eq!(error.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Rejected without waiting for the end of the head.
        assert!(RequestParser::default()
            .parse(&big_header.as_bytes()[..8192])
            .is_err());

        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..64 {
            many.push_str(&format!("X-{i}: {i}\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            parse_error(many.as_bytes()),
            HttpError::TooManyHeaders { limit: 64 }
        );

        let large_body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n";
        let error = parse_error(large_body);
        assert_eq!(
            error,
            HttpError::BodyTooLarge {
                length: 65537,
                limit: 65536
            }
        );
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let parser = RequestParser::new(Limits {
            max_body: 1 << 20,
            ..Limits::default()
        });
        assert!(matches!(parser.parse(large_body), Ok(Parsed::Partial)));
    }

    #[test]
    fn syntax_errors_carry_the_offset_of_the_bad_byte() {
        let error = parse_error(b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n");
        assert_eq!(
            error,
            HttpError::Syntax {
                part: "header name",
                offset: 18
            }
        );
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let error = parse_error(b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n");
        assert_eq!(
            error,
            HttpError::Syntax {
                part: "header value",
                offset: 23
            }
        );
        let error = parse_error(b"GET / HTTX/1.1\r\n\r\n");
        assert!(
            matches!(error, HttpError::Syntax { offset: 9, .. }),
            "{error:?}"
        );
        // Not HTTP at all: a TLS ClientHello on the plain port.
        let error = parse_error(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
        assert!(
            matches!(error, HttpError::Syntax { offset: 0, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn host_and_expect_rules() {
        assert_eq!(
            parse_error(b"GET / HTTP/1.1\r\n\r\n"),
            HttpError::HostHeaderCount { count: 0 }
        );
        assert_eq!(
            parse_error(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            HttpError::HostHeaderCount { count: 2 }
        );
        complete(b"GET / HTTP/1.0\r\n\r\n");
        let error = parse_error(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n");
        assert_eq!(error.status(), StatusCode::EXPECTATION_FAILED);
    }

    #[test]
    fn request_targets() {
        let (head, _, _) =
            complete(b"GET http://Example.com:61009/v1.0/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/v1.0/x", Some("y=1"))
        );
        let (head, _, _) = complete(b"GET HTTPS://example.com HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.path, "/");
        let (head, _, _) = complete(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(head.path, "*");
        let (head, _, _) = complete(b"GET /a?b?c= HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            (head.path.as_str(), head.query.as_deref()),
            ("/a", Some("b?c="))
        );
        let error = parse_error(b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(error, HttpError::InvalidTarget { .. }));
        let error = parse_error(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(error, HttpError::InvalidTarget { .. }));
    }

    #[test]
    fn error_bodies_use_the_platform_format() {
        let response = parse_error(b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n").to_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()["content-type"],
            "application/json; charset=utf-8"
        );
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["symbol"], "invalid_parameter");
        assert_eq!(body["error"]["message"], "malformed header name at byte 18");

        let long = "é".repeat(200);
        let response = json_error(StatusCode::NOT_FOUND, "device_offline", &long);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"]["message"].as_str().unwrap().len(), 256);
    }

    #[test]
    fn encodes_responses_with_framing_headers() {
        let mut response = json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let mut out = Vec::new();
        encode_response(&response, true, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n\
              content-length: 15\r\nconnection: keep-alive\r\n\r\n{\"status\":\"ok\"}"
        );
        out.clear();
        encode_response_head(&response, false, &mut out);
        assert!(out.ends_with(b"content-length: 15\r\nconnection: close\r\n\r\n"));

        let mut no_content = Response::new(b"ignored".to_vec());
        *no_content.status_mut() = StatusCode::NO_CONTENT;
        out.clear();
        encode_response(&no_content, true, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nconnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn client_request_round_trips_through_the_server_parser() {
        let request = http::Request::post("http://user@127.0.0.1:8080/hook?x=1")
            .header("content-type", "application/json")
            .header("x-rop-signature", "sha256=00")
            .body(br#"{"uid":"95270000YGAKNWKJ"}"#.to_vec())
            .unwrap();
        let mut out = Vec::new();
        encode_request(&request, &mut out);
        assert_eq!(
            out,
            b"POST /hook?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\n\
              x-rop-signature: sha256=00\r\ncontent-length: 26\r\n\r\n{\"uid\":\"95270000YGAKNWKJ\"}"
        );
        let (head, head_len, body_len) = complete(&out);
        assert_eq!((head.method, head.path.as_str()), (Method::POST, "/hook"));
        assert_eq!(
            &out[head_len..head_len + body_len],
            request.body().as_slice()
        );
    }

    fn response_complete(parser: ResponseParser, buf: &[u8]) -> (Response, usize) {
        match parser.parse(buf) {
            Ok(ParsedResponse::Complete { response, consumed }) => (response, consumed),
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn parses_our_own_responses() {
        let response = json_error(
            StatusCode::NOT_FOUND,
            "device_offline",
            "The device is offline",
        );
        let mut out = Vec::new();
        encode_response(&response, true, &mut out);
        for cut in 0..out.len() {
            assert!(matches!(
                ResponseParser::default().parse(&out[..cut]),
                Ok(ParsedResponse::Partial)
            ));
        }
        let (parsed, consumed) = response_complete(ResponseParser::default(), &out);
        assert_eq!(consumed, out.len());
        assert_eq!(parsed.status(), StatusCode::NOT_FOUND);
        assert_eq!(parsed.body(), response.body());
    }

    #[test]
    fn parses_chunked_responses_at_every_split() {
        let wire: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nHTTP/1.1 204";
        let end = wire.len() - b"HTTP/1.1 204".len();
        for cut in 0..end {
            assert!(
                matches!(
                    ResponseParser::default().parse(&wire[..cut]),
                    Ok(ParsedResponse::Partial)
                ),
                "cut at {cut}"
            );
        }
        let (response, consumed) = response_complete(ResponseParser::default(), wire);
        assert_eq!(response.body(), b"hello, world");
        assert_eq!(consumed, end);

        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n";
        assert_eq!(
            ResponseParser::default().parse(bad).unwrap_err(),
            HttpError::InvalidChunk { offset: 55 }
        );
        let small = ResponseParser::new(Limits {
            max_body: 8,
            ..Limits::default()
        });
        assert!(matches!(
            small.parse(wire),
            Err(HttpError::BodyTooLarge { limit: 8, .. })
        ));
    }

    #[test]
    fn interim_head_and_close_delimited_responses() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (interim, consumed) = response_complete(ResponseParser::default(), wire);
        assert_eq!((interim.status(), consumed), (StatusCode::CONTINUE, 25));
        let (fin, _) = response_complete(ResponseParser::default(), &wire[consumed..]);
        assert_eq!(fin.body(), b"ok");

        let head_answer = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n";
        let (response, consumed) =
            response_complete(ResponseParser::default().for_head_request(), head_answer);
        assert_eq!((response.body().len(), consumed), (0, head_answer.len()));

        let until_close = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbye";
        assert!(matches!(
            ResponseParser::default().parse(until_close),
            Ok(ParsedResponse::Partial)
        ));
        match ResponseParser::default().parse_at_eof(until_close) {
            Ok(ParsedResponse::Complete { response, .. }) => assert_eq!(response.body(), b"bye"),
            other => panic!("{other:?}"),
        }
        let truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(
            ResponseParser::default()
                .parse_at_eof(truncated)
                .unwrap_err(),
            HttpError::Truncated {
                received: truncated.len()
            }
        );
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(
            ResponseParser::default().parse(conflicting).unwrap_err(),
            HttpError::DuplicateContentLength
        );
    }

    #[test]
    fn fuzz_entry_points_accept_the_fixtures() {
        for fixture in [
            CURL_GET,
            CURL_POST_JSON,
            CURL_TWO_GETS,
            CURL_CHUNKED,
            CURL_EXPECT,
        ] {
            fuzzing::parse_requests(fixture);
            fuzzing::parse_responses(fixture);
        }
        let mut response = Vec::new();
        encode_response(&json_response(StatusCode::OK, &"x"), true, &mut response);
        fuzzing::parse_responses(&response.repeat(3));
        fuzzing::parse_requests(&CURL_TWO_GETS.repeat(2));
    }
}
