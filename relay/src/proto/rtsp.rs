//! RTSP 1.0 (RFC 2326) messages in both directions: the server parses requests from players and
//! publishers, the pull-source client and the loadgen parse responses. The parser is streaming and
//! sans-IO: the caller owns the buffer, [`RtspMessage::parse`] says "complete, N bytes consumed",
//! "need more" or exactly where and why the bytes are wrong. Typed views of the headers the relay
//! acts on (CSeq, Session, Transport, Range, Authorization, Public...) and builders for requests and
//! responses live here too, as does the `rtsp://` URL with its per-track control suffix.
//!
//! Limits (see [`Limits`]): a header section over 8 KiB is answered with 400 Bad Request (RTSP/1.0
//! has no 431, and its 413 names the entity body, not the headers); a body over 64 KiB with 413
//! Request Entity Too Large.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;

/// Size limits the parser enforces on peer input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line plus headers plus the blank line, in bytes.
    pub max_head_len: usize,
    /// Largest accepted `Content-Length`.
    pub max_body_len: usize,
    /// Largest number of header lines.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_len: 8 * 1024,
            max_body_len: 64 * 1024,
            max_headers: 64,
        }
    }
}

/// A peer sent bytes that are not an acceptable RTSP message. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtspError {
    /// The message breaks the grammar at `offset` (from the start of the message).
    #[error("malformed RTSP message at byte {offset}: expected {rule}")]
    Malformed { offset: usize, rule: &'static str },
    /// No end of the header section within the limit.
    #[error("RTSP header section longer than {limit} bytes")]
    HeadTooLarge { limit: usize },
    /// More header lines than the limit.
    #[error("more than {limit} RTSP header lines")]
    TooManyHeaders { limit: usize },
    /// `Content-Length` above the limit.
    #[error("RTSP body of {length} bytes exceeds the {limit}-byte limit")]
    BodyTooLarge { length: u64, limit: usize },
    /// A version other than RTSP/1.x.
    #[error("unsupported protocol version {version:?}")]
    UnsupportedVersion { version: String },
    /// An interleaved `$` frame longer than the limit.
    #[error(
        "interleaved frame of {length} bytes on channel {channel} exceeds the {limit}-byte limit"
    )]
    FrameTooLarge {
        channel: u8,
        length: usize,
        limit: usize,
    },
    /// The stream holds a byte that starts neither an RTSP message nor a `$` frame.
    #[error(
        "byte {byte:#04x} at stream offset {offset} starts neither an RTSP message nor a `$` frame"
    )]
    NotRtsp { offset: usize, byte: u8 },
    /// A header is present but its value does not follow its grammar.
    #[error("invalid {name} header {value:?}: expected {rule}")]
    InvalidHeader {
        name: &'static str,
        value: String,
        rule: &'static str,
    },
    /// A request was expected and a response arrived, or the other way round.
    #[error("expected an RTSP {expected}, got the other kind of message")]
    UnexpectedKind { expected: &'static str },
    /// An `rtsp://` URL that cannot be parsed.
    #[error("invalid RTSP URL {url:?}: {rule}")]
    InvalidUrl { url: String, rule: &'static str },
}

impl RtspError {
    /// The status a server answers with before closing the connection.
    pub fn status(&self) -> StatusCode {
        match self {
            RtspError::BodyTooLarge { .. } => StatusCode::REQUEST_ENTITY_TOO_LARGE,
            RtspError::UnsupportedVersion { .. } => StatusCode::RTSP_VERSION_NOT_SUPPORTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Result of feeding bytes to a streaming parser.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<T> {
    /// A whole message, which used the first `consumed` bytes of the input.
    Complete { message: T, consumed: usize },
    /// The input is a valid prefix; read more and feed the whole buffer again.
    Incomplete,
}

/// An RTSP method. Unknown tokens are kept so the server can answer 501 Not Implemented.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Options,
    Describe,
    Announce,
    Setup,
    Play,
    Pause,
    Record,
    Teardown,
    GetParameter,
    SetParameter,
    Redirect,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Options => "OPTIONS",
            Method::Describe => "DESCRIBE",
            Method::Announce => "ANNOUNCE",
            Method::Setup => "SETUP",
            Method::Play => "PLAY",
            Method::Pause => "PAUSE",
            Method::Record => "RECORD",
            Method::Teardown => "TEARDOWN",
            Method::GetParameter => "GET_PARAMETER",
            Method::SetParameter => "SET_PARAMETER",
            Method::Redirect => "REDIRECT",
            Method::Other(token) => token,
        }
    }

    /// Methods are case-sensitive (RFC 2326 section 6.1).
    pub fn from_token(token: &str) -> Method {
        match token {
            "OPTIONS" => Method::Options,
            "DESCRIBE" => Method::Describe,
            "ANNOUNCE" => Method::Announce,
            "SETUP" => Method::Setup,
            "PLAY" => Method::Play,
            "PAUSE" => Method::Pause,
            "RECORD" => Method::Record,
            "TEARDOWN" => Method::Teardown,
            "GET_PARAMETER" => Method::GetParameter,
            "SET_PARAMETER" => Method::SetParameter,
            "REDIRECT" => Method::Redirect,
            other => Method::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An RTSP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(pub u16);

impl StatusCode {
    pub const OK: StatusCode = StatusCode(200);
    pub const MOVED_PERMANENTLY: StatusCode = StatusCode(301);
    pub const FOUND: StatusCode = StatusCode(302);
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    pub const UNAUTHORIZED: StatusCode = StatusCode(401);
    pub const FORBIDDEN: StatusCode = StatusCode(403);
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    pub const NOT_ACCEPTABLE: StatusCode = StatusCode(406);
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    pub const REQUEST_ENTITY_TOO_LARGE: StatusCode = StatusCode(413);
    pub const REQUEST_URI_TOO_LARGE: StatusCode = StatusCode(414);
    pub const UNSUPPORTED_MEDIA_TYPE: StatusCode = StatusCode(415);
    pub const PARAMETER_NOT_UNDERSTOOD: StatusCode = StatusCode(451);
    pub const NOT_ENOUGH_BANDWIDTH: StatusCode = StatusCode(453);
    pub const SESSION_NOT_FOUND: StatusCode = StatusCode(454);
    pub const METHOD_NOT_VALID_IN_THIS_STATE: StatusCode = StatusCode(455);
    pub const HEADER_FIELD_NOT_VALID: StatusCode = StatusCode(456);
    pub const INVALID_RANGE: StatusCode = StatusCode(457);
    pub const AGGREGATE_OPERATION_NOT_ALLOWED: StatusCode = StatusCode(459);
    pub const ONLY_AGGREGATE_OPERATION_ALLOWED: StatusCode = StatusCode(460);
    pub const UNSUPPORTED_TRANSPORT: StatusCode = StatusCode(461);
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500);
    pub const NOT_IMPLEMENTED: StatusCode = StatusCode(501);
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    pub const RTSP_VERSION_NOT_SUPPORTED: StatusCode = StatusCode(505);
    pub const OPTION_NOT_SUPPORTED: StatusCode = StatusCode(551);

    /// The reason phrase of RFC 2326 section 7.1.1.
    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            250 => "Low on Storage Space",
            300 => "Multiple Choices",
            301 => "Moved Permanently",
            302 => "Moved Temporarily",
            303 => "See Other",
            304 => "Not Modified",
            305 => "Use Proxy",
            400 => "Bad Request",
            401 => "Unauthorized",
            402 => "Payment Required",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            407 => "Proxy Authentication Required",
            408 => "Request Time-out",
            410 => "Gone",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Request Entity Too Large",
            414 => "Request-URI Too Large",
            415 => "Unsupported Media Type",
            451 => "Parameter Not Understood",
            452 => "Conference Not Found",
            453 => "Not Enough Bandwidth",
            454 => "Session Not Found",
            455 => "Method Not Valid in This State",
            456 => "Header Field Not Valid for Resource",
            457 => "Invalid Range",
            458 => "Parameter Is Read-Only",
            459 => "Aggregate operation not allowed",
            460 => "Only aggregate operation allowed",
            461 => "Unsupported transport",
            462 => "Destination unreachable",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Time-out",
            505 => "RTSP Version not supported",
            551 => "Option not supported",
            _ => "Unknown",
        }
    }

    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

/// Header lines in arrival order. Names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Adds a line, keeping existing ones of the same name.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Replaces every line of `name` with one line.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.remove(&name);
        self.0.push((name, value.into()));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `CSeq`, required on every request and response.
    pub fn cseq(&self) -> Result<Option<u32>, RtspError> {
        self.get("CSeq")
            .map(|v| {
                v.trim().parse().map_err(|_| RtspError::InvalidHeader {
                    name: "CSeq",
                    value: v.to_owned(),
                    rule: "a decimal sequence number",
                })
            })
            .transpose()
    }

    pub fn session(&self) -> Result<Option<SessionHeader>, RtspError> {
        self.get("Session").map(SessionHeader::parse).transpose()
    }

    /// Every transport the peer offered, in its order of preference.
    pub fn transports(&self) -> Result<Vec<Transport>, RtspError> {
        let mut all = Vec::new();
        for value in self.get_all("Transport") {
            all.extend(Transport::parse_list(value)?);
        }
        Ok(all)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.get("Content-Type")
            .map(|v| v.split(';').next().unwrap_or("").trim())
    }

    pub fn content_base(&self) -> Option<&str> {
        self.get("Content-Base").map(str::trim)
    }

    pub fn content_length(&self) -> Result<Option<u64>, RtspError> {
        let mut found: Option<u64> = None;
        for v in self.get_all("Content-Length") {
            let length: u64 = v.trim().parse().map_err(|_| RtspError::InvalidHeader {
                name: "Content-Length",
                value: v.to_owned(),
                rule: "a decimal length",
            })?;
            if found.is_some_and(|f| f != length) {
                return Err(RtspError::InvalidHeader {
                    name: "Content-Length",
                    value: v.to_owned(),
                    rule: "one length (conflicting Content-Length lines)",
                });
            }
            found = Some(length);
        }
        Ok(found)
    }

    /// The `Range` header ([`super::range`]); its errors are answered with 457 Invalid Range.
    pub fn range(&self) -> Result<Option<super::range::Range>, super::range::RangeError> {
        self.get("Range")
            .map(super::range::Range::parse)
            .transpose()
    }

    pub fn authorization(&self) -> Result<Option<Authorization>, RtspError> {
        self.get("Authorization")
            .map(Authorization::parse)
            .transpose()
    }

    /// The methods of a `Public` (OPTIONS response) header.
    /// Every well-formed `WWW-Authenticate` challenge, in order (malformed ones are skipped).
    pub fn challenges(&self) -> Vec<Challenge> {
        self.get_all("WWW-Authenticate")
            .filter_map(|v| Challenge::parse(v).ok())
            .collect()
    }

    pub fn public(&self) -> Option<Vec<Method>> {
        self.get("Public").map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(Method::from_token)
                .collect()
        })
    }
}

/// An RTSP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspRequest {
    pub method: Method,
    /// The Request-URI as sent: an absolute `rtsp://` URL or `*`.
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// An RTSP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspResponse {
    pub status: StatusCode,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// Either kind of message; which one arrives depends on the peer's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtspMessage {
    Request(RtspRequest),
    Response(RtspResponse),
}

impl RtspMessage {
    /// Parses one message from the start of `buf` with the default [`Limits`].
    /// Leading empty lines (some clients end a body with an extra CRLF) are consumed with it.
    pub fn parse(buf: &[u8]) -> Result<Parsed<RtspMessage>, RtspError> {
        Self::parse_with_limits(buf, &Limits::default())
    }

    pub fn parse_with_limits(
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Parsed<RtspMessage>, RtspError> {
        parse_message(buf, limits)
    }

    pub fn headers(&self) -> &Headers {
        match self {
            RtspMessage::Request(r) => &r.headers,
            RtspMessage::Response(r) => &r.headers,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            RtspMessage::Request(r) => r.encode(out),
            RtspMessage::Response(r) => r.encode(out),
        }
    }
}

impl RtspRequest {
    /// Parses a request (server side); a response here is [`RtspError::UnexpectedKind`].
    pub fn parse(buf: &[u8]) -> Result<Parsed<RtspRequest>, RtspError> {
        match parse_message(buf, &Limits::default())? {
            Parsed::Incomplete => Ok(Parsed::Incomplete),
            Parsed::Complete {
                message: RtspMessage::Request(message),
                consumed,
            } => Ok(Parsed::Complete { message, consumed }),
            Parsed::Complete { .. } => Err(RtspError::UnexpectedKind {
                expected: "request",
            }),
        }
    }

    /// Starts a request (client side, loadgen).
    pub fn builder(method: Method, uri: impl Into<String>) -> RequestBuilder {
        RequestBuilder(RtspRequest {
            method,
            uri: uri.into(),
            headers: Headers::new(),
            body: Bytes::new(),
        })
    }

    /// The Request-URI as a URL, or `None` for `*`.
    pub fn url(&self) -> Result<Option<RtspUrl>, RtspError> {
        if self.uri == "*" {
            return Ok(None);
        }
        RtspUrl::parse(&self.uri).map(Some)
    }

    /// Writes the request; see [`write_headers`] for how header values are sanitised.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        push_sanitized(out, self.uri.as_bytes(), true);
        out.extend_from_slice(b" RTSP/1.0\r\n");
        write_headers(out, &self.headers, &self.body);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        self.encode(&mut out);
        out
    }
}

impl RtspResponse {
    /// Parses a response (client side); a request here is [`RtspError::UnexpectedKind`].
    pub fn parse(buf: &[u8]) -> Result<Parsed<RtspResponse>, RtspError> {
        match parse_message(buf, &Limits::default())? {
            Parsed::Incomplete => Ok(Parsed::Incomplete),
            Parsed::Complete {
                message: RtspMessage::Response(message),
                consumed,
            } => Ok(Parsed::Complete { message, consumed }),
            Parsed::Complete { .. } => Err(RtspError::UnexpectedKind {
                expected: "response",
            }),
        }
    }

    pub fn builder(status: StatusCode) -> ResponseBuilder {
        ResponseBuilder(RtspResponse {
            status,
            reason: status.reason().to_owned(),
            headers: Headers::new(),
            body: Bytes::new(),
        })
    }

    /// A response to `request` carrying its CSeq (and nothing else yet).
    pub fn reply_to(request: &RtspRequest, status: StatusCode) -> ResponseBuilder {
        let mut builder = Self::builder(status);
        if let Some(cseq) = request.headers.get("CSeq") {
            builder.0.headers.set("CSeq", cseq.trim());
        }
        builder
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"RTSP/1.0 ");
        out.extend_from_slice(self.status.0.to_string().as_bytes());
        out.push(b' ');
        push_sanitized(out, self.reason.as_bytes(), false);
        out.extend_from_slice(b"\r\n");
        write_headers(out, &self.headers, &self.body);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        self.encode(&mut out);
        out
    }
}

/// Builds an [`RtspRequest`].
#[derive(Debug, Clone)]
pub struct RequestBuilder(RtspRequest);

impl RequestBuilder {
    pub fn cseq(mut self, cseq: u32) -> Self {
        self.0.headers.set("CSeq", cseq.to_string());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.headers.append(name, value);
        self
    }

    pub fn session(self, id: &str) -> Self {
        self.header("Session", id)
    }

    pub fn transport(self, transport: &Transport) -> Self {
        self.header("Transport", transport.to_string())
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.0.headers.set("Content-Type", content_type);
        self.0.body = body.into();
        self
    }

    pub fn build(self) -> RtspRequest {
        self.0
    }
}

/// Builds an [`RtspResponse`].
#[derive(Debug, Clone)]
pub struct ResponseBuilder(RtspResponse);

impl ResponseBuilder {
    pub fn cseq(mut self, cseq: u32) -> Self {
        self.0.headers.set("CSeq", cseq.to_string());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.headers.append(name, value);
        self
    }

    pub fn session(self, session: &SessionHeader) -> Self {
        self.header("Session", session.to_string())
    }

    pub fn transport(self, transport: &Transport) -> Self {
        self.header("Transport", transport.to_string())
    }

    pub fn public(self, methods: &[Method]) -> Self {
        let list: Vec<&str> = methods.iter().map(Method::as_str).collect();
        self.header("Public", list.join(", "))
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.0.headers.set("Content-Type", content_type);
        self.0.body = body.into();
        self
    }

    pub fn build(self) -> RtspResponse {
        self.0
    }
}

/// Writes header lines, a `Content-Length` matching the body (replacing any set by hand), the
/// blank line and the body. CR, LF and NUL in names and values become spaces, so a value echoed
/// from a peer cannot inject a header.
fn write_headers(out: &mut Vec<u8>, headers: &Headers, body: &Bytes) {
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        push_sanitized(out, name.as_bytes(), true);
        out.extend_from_slice(b": ");
        push_sanitized(out, value.as_bytes(), false);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn push_sanitized(out: &mut Vec<u8>, text: &[u8], no_spaces: bool) {
    out.extend(text.iter().map(|&b| match b {
        b'\r' | b'\n' | 0 => b' ',
        b' ' if no_spaces => b'_',
        _ => b,
    }));
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses one message. Offsets in errors count from the start of `buf`.
fn parse_message(buf: &[u8], limits: &Limits) -> Result<Parsed<RtspMessage>, RtspError> {
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if skip > limits.max_head_len {
        return Err(RtspError::HeadTooLarge {
            limit: limits.max_head_len,
        });
    }
    let rest = &buf[skip..];
    let Some(&first) = rest.first() else {
        return Ok(Parsed::Incomplete);
    };
    if !first.is_ascii_alphabetic() {
        return Err(RtspError::NotRtsp {
            offset: skip,
            byte: first,
        });
    }
    let Some(head_len) = find_head_end(rest, limits.max_head_len) else {
        if rest.len() >= limits.max_head_len {
            return Err(RtspError::HeadTooLarge {
                limit: limits.max_head_len,
            });
        }
        check_partial_start_line(rest, skip)?;
        return Ok(Parsed::Incomplete);
    };
    // The same check first on a whole head, so that how the bytes arrived never changes the error.
    check_partial_start_line(&rest[..head_len], skip)?;
    let head = std::str::from_utf8(&rest[..head_len]).map_err(|e| RtspError::Malformed {
        offset: skip + e.valid_up_to(),
        rule: "UTF-8 text in the header section",
    })?;

    let mut lines = LineIter { text: head, pos: 0 };
    let (start_line, start_offset) = lines.next().unwrap_or(("", 0));
    let start = parse_start_line(start_line, skip + start_offset)?;

    let mut headers = Headers::new();
    for (line, offset) in lines {
        if line.is_empty() {
            break;
        }
        let offset = skip + offset;
        if line.starts_with([' ', '\t']) {
            // Obsolete line folding (RFC 2326 section 4.2 allows LWS continuation).
            let Some(last) = headers.0.last_mut() else {
                return Err(RtspError::Malformed {
                    offset,
                    rule: "a header line, not a continuation",
                });
            };
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let Some(colon) = line.find(':') else {
            return Err(RtspError::Malformed {
                offset,
                rule: "`name: value` header line",
            });
        };
        let name = &line[..colon];
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            let bad = name.bytes().position(|b| !is_token_byte(b)).unwrap_or(0);
            return Err(RtspError::Malformed {
                offset: offset + bad,
                rule: "a header name token",
            });
        }
        if headers.len() >= limits.max_headers {
            return Err(RtspError::TooManyHeaders {
                limit: limits.max_headers,
            });
        }
        headers.append(name, line[colon + 1..].trim());
    }

    let body_len = headers.content_length()?.unwrap_or(0);
    if body_len > limits.max_body_len as u64 {
        return Err(RtspError::BodyTooLarge {
            length: body_len,
            limit: limits.max_body_len,
        });
    }
    // Bounded by max_body_len above, so the cast and the addition cannot overflow.
    let total = skip + head_len + body_len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let body = Bytes::copy_from_slice(&buf[skip + head_len..total]);
    let message = match start {
        StartLine::Request { method, uri } => RtspMessage::Request(RtspRequest {
            method,
            uri,
            headers,
            body,
        }),
        StartLine::Response { status, reason } => RtspMessage::Response(RtspResponse {
            status,
            reason,
            headers,
            body,
        }),
    };
    Ok(Parsed::Complete {
        message,
        consumed: total,
    })
}

/// Length of the header section including its blank line (CRLF CRLF, or bare LFs).
fn find_head_end(buf: &[u8], limit: usize) -> Option<usize> {
    let window = &buf[..buf.len().min(limit)];
    let mut pos = 0;
    while let Some(lf) = window[pos..].iter().position(|&b| b == b'\n') {
        let after = pos + lf + 1;
        match window.get(after..) {
            Some([b'\n', ..]) => return Some(after + 1),
            Some([b'\r', b'\n', ..]) => return Some(after + 2),
            _ => pos = after,
        }
    }
    None
}

/// Rejects garbage early instead of waiting for 8 KiB of it: the part of the first line received
/// so far must be printable ASCII.
fn check_partial_start_line(rest: &[u8], skip: usize) -> Result<(), RtspError> {
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    for (i, &b) in rest[..line_end].iter().enumerate() {
        if !(b == b' ' || b == b'\r' || b.is_ascii_graphic()) {
            return Err(RtspError::Malformed {
                offset: skip + i,
                rule: "printable ASCII in the start line",
            });
        }
    }
    Ok(())
}

struct LineIter<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for LineIter<'a> {
    /// A line without its terminator, and its offset.
    type Item = (&'a str, usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let offset = self.pos;
        let (line, advance) = match rest.find('\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.pos += advance;
        Some((line.strip_suffix('\r').unwrap_or(line), offset))
    }
}

enum StartLine {
    Request { method: Method, uri: String },
    Response { status: StatusCode, reason: String },
}

fn parse_start_line(line: &str, offset: usize) -> Result<StartLine, RtspError> {
    if let Some(rest) = line.strip_prefix("RTSP/") {
        // Status-Line = RTSP-Version SP Status-Code SP Reason-Phrase
        let (version, rest) = rest.split_once(' ').ok_or(RtspError::Malformed {
            offset,
            rule: "`RTSP/1.0 SP status SP reason`",
        })?;
        check_version(version)?;
        let code_offset = offset + 5 + version.len() + 1;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let status = match code.parse::<u16>() {
            Ok(c) if code.len() == 3 && (100..600).contains(&c) => StatusCode(c),
            _ => {
                return Err(RtspError::Malformed {
                    offset: code_offset,
                    rule: "a three-digit status code",
                })
            }
        };
        return Ok(StartLine::Response {
            status,
            reason: reason.trim().to_owned(),
        });
    }
    // Request-Line = Method SP Request-URI SP RTSP-Version
    let mut parts = line.splitn(3, ' ');
    let method = parts.next().unwrap_or("");
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        let bad = method.bytes().position(|b| !is_token_byte(b)).unwrap_or(0);
        return Err(RtspError::Malformed {
            offset: offset + bad,
            rule: "a method token",
        });
    }
    let uri_offset = offset + method.len() + 1;
    let uri = parts.next().unwrap_or("");
    if uri.is_empty() || !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RtspError::Malformed {
            offset: uri_offset,
            rule: "a Request-URI without spaces or control bytes",
        });
    }
    let version_offset = uri_offset + uri.len() + 1;
    let version = parts.next().unwrap_or("");
    let Some(version) = version.strip_prefix("RTSP/") else {
        return Err(RtspError::Malformed {
            offset: version_offset,
            rule: "`RTSP/1.0` at the end of the request line",
        });
    };
    check_version(version)?;
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri: uri.to_owned(),
    })
}

fn check_version(version: &str) -> Result<(), RtspError> {
    match version.split_once('.') {
        Some(("1", minor)) if !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(())
        }
        _ => Err(RtspError::UnsupportedVersion {
            version: format!("RTSP/{version}"),
        }),
    }
}

/// The `Session` header: an id and the timeout the server announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader {
    pub id: String,
    /// Seconds; RFC 2326 defaults to 60 when absent.
    pub timeout: Option<u32>,
}

impl SessionHeader {
    pub fn parse(value: &str) -> Result<SessionHeader, RtspError> {
        let invalid = |rule| RtspError::InvalidHeader {
            name: "Session",
            value: value.to_owned(),
            rule,
        };
        let mut parts = value.split(';');
        let id = parts.next().unwrap_or("").trim();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("a session id"));
        }
        let mut timeout = None;
        for param in parts {
            if let Some((key, val)) = param.split_once('=') {
                if key.trim().eq_ignore_ascii_case("timeout") {
                    timeout = Some(
                        val.trim()
                            .parse()
                            .map_err(|_| invalid("timeout=<seconds>"))?,
                    );
                }
            }
        }
        Ok(SessionHeader {
            id: id.to_owned(),
            timeout,
        })
    }
}

impl fmt::Display for SessionHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)?;
        if let Some(timeout) = self.timeout {
            write!(f, ";timeout={timeout}")?;
        }
        Ok(())
    }
}

/// The lower transport of `RTP/AVP[/TCP]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerTransport {
    Udp,
    Tcp,
}

/// `mode=` of a transport spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportMode {
    Play,
    Record,
    Other(String),
}

/// An RTP/RTCP pair of channels or ports: `0-1`, or a single value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<T> {
    pub rtp: T,
    pub rtcp: Option<T>,
}

impl<T: fmt::Display> fmt::Display for Pair<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rtp)?;
        if let Some(rtcp) = &self.rtcp {
            write!(f, "-{rtcp}")?;
        }
        Ok(())
    }
}

impl<T: std::str::FromStr> Pair<T> {
    fn parse(value: &str) -> Option<Pair<T>> {
        match value.split_once('-') {
            Some((a, b)) => Some(Pair {
                rtp: a.trim().parse().ok()?,
                rtcp: Some(b.trim().parse().ok()?),
            }),
            None => Some(Pair {
                rtp: value.trim().parse().ok()?,
                rtcp: None,
            }),
        }
    }
}

/// One transport spec of a `Transport` header (RFC 2326 section 12.39).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// `RTP/AVP`, `RTP/SAVP`, ... without the lower transport.
    pub profile: String,
    pub lower: LowerTransport,
    /// `unicast` (true), `multicast` (false), or unsaid.
    pub unicast: Option<bool>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub interleaved: Option<Pair<u8>>,
    pub client_port: Option<Pair<u16>>,
    pub server_port: Option<Pair<u16>>,
    pub port: Option<Pair<u16>>,
    pub ttl: Option<u8>,
    pub ssrc: Option<u32>,
    pub mode: Option<TransportMode>,
    pub append: bool,
    /// Parameters not understood here, kept verbatim in order.
    pub other: Vec<String>,
}

impl Transport {
    /// `RTP/AVP/TCP;unicast;interleaved=<rtp>-<rtp+1>`.
    pub fn tcp_interleaved(rtp_channel: u8) -> Transport {
        Transport {
            interleaved: Some(Pair {
                rtp: rtp_channel,
                rtcp: rtp_channel.checked_add(1),
            }),
            ..Transport::new(LowerTransport::Tcp)
        }
    }

    /// `RTP/AVP;unicast;client_port=<rtp>-<rtp+1>`.
    pub fn udp_unicast(client_rtp_port: u16) -> Transport {
        Transport {
            client_port: Some(Pair {
                rtp: client_rtp_port,
                rtcp: client_rtp_port.checked_add(1),
            }),
            ..Transport::new(LowerTransport::Udp)
        }
    }

    fn new(lower: LowerTransport) -> Transport {
        Transport {
            profile: "RTP/AVP".to_owned(),
            lower,
            unicast: Some(true),
            destination: None,
            source: None,
            interleaved: None,
            client_port: None,
            server_port: None,
            port: None,
            ttl: None,
            ssrc: None,
            mode: None,
            append: false,
            other: Vec::new(),
        }
    }

    /// Parses a comma-separated list of transport specs.
    pub fn parse_list(value: &str) -> Result<Vec<Transport>, RtspError> {
        value
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Transport::parse)
            .collect()
    }

    /// Parses one transport spec.
    pub fn parse(spec: &str) -> Result<Transport, RtspError> {
        let invalid = |rule| RtspError::InvalidHeader {
            name: "Transport",
            value: spec.to_owned(),
            rule,
        };
        let mut params = spec.split(';');
        let protocol = params.next().unwrap_or("").trim();
        let mut parts = protocol.split('/');
        let (Some(proto), Some(profile)) = (parts.next(), parts.next()) else {
            return Err(invalid("`RTP/AVP[/TCP|/UDP]` first"));
        };
        if proto.is_empty() || profile.is_empty() {
            return Err(invalid("`RTP/AVP[/TCP|/UDP]` first"));
        }
        let lower = match parts.next() {
            None => LowerTransport::Udp,
            Some(l) if l.eq_ignore_ascii_case("UDP") => LowerTransport::Udp,
            Some(l) if l.eq_ignore_ascii_case("TCP") => LowerTransport::Tcp,
            Some(_) => return Err(invalid("lower transport TCP or UDP")),
        };
        if parts.next().is_some() {
            return Err(invalid("`RTP/AVP[/TCP|/UDP]` first"));
        }
        let mut t = Transport::new(lower);
        t.profile = format!("{proto}/{profile}");
        t.unicast = None;
        for param in params {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            let key_lc = key.to_ascii_lowercase();
            match (key_lc.as_str(), value) {
                ("unicast", None) => t.unicast = Some(true),
                ("multicast", None) => t.unicast = Some(false),
                ("append", None) => t.append = true,
                ("destination", Some(v)) => t.destination = Some(v.to_owned()),
                ("source", Some(v)) => t.source = Some(v.to_owned()),
                ("interleaved", Some(v)) => {
                    t.interleaved =
                        Some(Pair::parse(v).ok_or(invalid("interleaved=<0-255>[-<0-255>]"))?)
                }
                ("client_port", Some(v)) => {
                    t.client_port =
                        Some(Pair::parse(v).ok_or(invalid("client_port=<port>[-<port>]"))?)
                }
                ("server_port", Some(v)) => {
                    t.server_port =
                        Some(Pair::parse(v).ok_or(invalid("server_port=<port>[-<port>]"))?)
                }
                ("port", Some(v)) => {
                    t.port = Some(Pair::parse(v).ok_or(invalid("port=<port>[-<port>]"))?)
                }
                ("ttl", Some(v)) => t.ttl = Some(v.parse().map_err(|_| invalid("ttl=<0-255>"))?),
                ("ssrc", Some(v)) => {
                    t.ssrc = Some(
                        u32::from_str_radix(v, 16).map_err(|_| invalid("ssrc=<8 hex digits>"))?,
                    )
                }
                ("mode", Some(v)) => {
                    t.mode = Some(if v.eq_ignore_ascii_case("play") {
                        TransportMode::Play
                    } else if v.eq_ignore_ascii_case("record") || v.eq_ignore_ascii_case("receive")
                    {
                        TransportMode::Record
                    } else {
                        TransportMode::Other(v.to_owned())
                    })
                }
                _ => t.other.push(param.to_owned()),
            }
        }
        Ok(t)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.profile)?;
        if self.lower == LowerTransport::Tcp {
            f.write_str("/TCP")?;
        }
        match self.unicast {
            Some(true) => f.write_str(";unicast")?,
            Some(false) => f.write_str(";multicast")?,
            None => {}
        }
        if let Some(v) = &self.destination {
            write!(f, ";destination={v}")?;
        }
        if let Some(v) = &self.source {
            write!(f, ";source={v}")?;
        }
        if let Some(v) = &self.interleaved {
            write!(f, ";interleaved={v}")?;
        }
        if let Some(v) = &self.client_port {
            write!(f, ";client_port={v}")?;
        }
        if let Some(v) = &self.server_port {
            write!(f, ";server_port={v}")?;
        }
        if let Some(v) = &self.port {
            write!(f, ";port={v}")?;
        }
        if let Some(v) = self.ttl {
            write!(f, ";ttl={v}")?;
        }
        if let Some(v) = self.ssrc {
            write!(f, ";ssrc={v:08X}")?;
        }
        match &self.mode {
            Some(TransportMode::Play) => f.write_str(";mode=play")?,
            Some(TransportMode::Record) => f.write_str(";mode=record")?,
            Some(TransportMode::Other(m)) => write!(f, ";mode={m}")?,
            None => {}
        }
        if self.append {
            f.write_str(";append")?;
        }
        for other in &self.other {
            write!(f, ";{other}")?;
        }
        Ok(())
    }
}

/// The `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Basic {
        username: String,
        password: String,
    },
    /// Digest parameters, names lowercased, quotes removed.
    Digest(Vec<(String, String)>),
    Bearer(String),
    Other {
        scheme: String,
        credentials: String,
    },
}

impl Authorization {
    pub fn parse(value: &str) -> Result<Authorization, RtspError> {
        let invalid = |rule| RtspError::InvalidHeader {
            name: "Authorization",
            value: value.to_owned(),
            rule,
        };
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("Basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| invalid("Basic <base64 of user:password>"))?;
            let text = String::from_utf8(decoded).map_err(|_| invalid("UTF-8 user:password"))?;
            let (username, password) = text.split_once(':').ok_or(invalid("user:password"))?;
            Ok(Authorization::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            })
        } else if scheme.eq_ignore_ascii_case("Digest") {
            Ok(Authorization::Digest(
                parse_auth_params(rest).ok_or(invalid("Digest name=\"value\", ..."))?,
            ))
        } else if scheme.eq_ignore_ascii_case("Bearer") {
            Ok(Authorization::Bearer(rest.to_owned()))
        } else {
            Ok(Authorization::Other {
                scheme: scheme.to_owned(),
                credentials: rest.to_owned(),
            })
        }
    }

    /// A Digest parameter by name.
    pub fn digest_param(&self, name: &str) -> Option<&str> {
        match self {
            Authorization::Digest(params) => params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// One `WWW-Authenticate` challenge of a response (RFC 2617 / 7616): the scheme and its
/// parameters, names lowercased, quotes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn parse(value: &str) -> Result<Challenge, RtspError> {
        let invalid = |rule| RtspError::InvalidHeader {
            name: "WWW-Authenticate",
            value: value.chars().take(256).collect(),
            rule,
        };
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.is_empty() {
            return Err(invalid("scheme name=\"value\", ..."));
        }
        Ok(Challenge {
            scheme: scheme.to_owned(),
            params: parse_auth_params(rest.trim()).ok_or(invalid("scheme name=\"value\", ..."))?,
        })
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }
}

/// `name="quoted, value", name=token, ...`
fn parse_auth_params(mut text: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',', '\t']);
        if text.is_empty() {
            return Some(params);
        }
        let eq = text.find('=')?;
        let name = text[..eq].trim().to_ascii_lowercase();
        text = text[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = text.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            text = &quoted[end?..];
            value = out;
        } else {
            let end = text.find(',').unwrap_or(text.len());
            value = text[..end].trim().to_owned();
            text = &text[end..];
        }
        params.push((name, value));
    }
}

/// `rtsp` or `rtsps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Rtsp,
    Rtsps,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Rtsp => 554,
            Scheme::Rtsps => 322,
        }
    }
}

/// An `rtsp://` or `rtsps://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtspUrl {
    pub scheme: Scheme,
    /// `user:password` before `@`, still percent-encoded.
    pub userinfo: Option<String>,
    /// Host name or address; IPv6 without brackets.
    pub host: String,
    /// The explicit port, if any; see [`RtspUrl::port_or_default`].
    pub port: Option<u16>,
    /// The path, starting with `/` (just `/` when the URL has none).
    pub path: String,
    /// The query without `?`.
    pub query: Option<String>,
}

/// A per-track control suffix a client appended to the presentation URL on SETUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackControl {
    pub track: u32,
}

const MAX_URL_LEN: usize = 4096;

impl RtspUrl {
    pub fn parse(url: &str) -> Result<RtspUrl, RtspError> {
        let invalid = |rule| RtspError::InvalidUrl {
            url: url.chars().take(256).collect(),
            rule,
        };
        if url.len() > MAX_URL_LEN {
            return Err(invalid("at most 4096 bytes"));
        }
        if !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("printable ASCII without spaces"));
        }
        let (scheme, rest) = url.split_once("://").ok_or(invalid("scheme://"))?;
        let scheme = if scheme.eq_ignore_ascii_case("rtsp") {
            Scheme::Rtsp
        } else if scheme.eq_ignore_ascii_case("rtsps") {
            Scheme::Rtsps
        } else {
            return Err(invalid("scheme rtsp or rtsps"));
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let after = &rest[authority_end..];
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let (host, port_text) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, tail) = v6
                .split_once(']')
                .ok_or(invalid("`]` closing an IPv6 host"))?;
            match tail {
                "" => (host, None),
                _ => (
                    host,
                    Some(tail.strip_prefix(':').ok_or(invalid("`:port` after `]`"))?),
                ),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("a host"));
        }
        let port = match port_text {
            None | Some("") => None,
            Some(p) => Some(p.parse().map_err(|_| invalid("a port number 0-65535"))?),
        };
        let (path, query) = match after.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (after, None),
        };
        Ok(RtspUrl {
            scheme,
            userinfo,
            host: host.to_owned(),
            port,
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            },
            query,
        })
    }

    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }

    /// The presentation path and the track a SETUP names: the last path segment `trackID=N`,
    /// `streamid=N` or `stream=N` (any case; ffmpeg, live555 and GStreamer use these) is split
    /// off, and trailing slashes are dropped. Some clients append the suffix after the query
    /// string (`?token=x/trackID=1`); that form is recognised as well.
    pub fn presentation_and_track(&self) -> (String, Option<TrackControl>) {
        if let Some(query) = &self.query {
            if let Some((_, track)) = split_track_suffix(query) {
                return (trim_slashes(&self.path).to_owned(), Some(track));
            }
        }
        let path = trim_slashes(&self.path);
        match split_track_suffix(path) {
            Some((base, track)) => (trim_slashes(base).to_owned(), Some(track)),
            None => (path.to_owned(), None),
        }
    }

    /// The query string with a trailing track suffix removed.
    pub fn query_without_track(&self) -> Option<&str> {
        let query = self.query.as_deref()?;
        Some(match split_track_suffix(query) {
            Some((base, _)) => base.trim_end_matches('/'),
            None => query,
        })
    }
}

impl fmt::Display for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Rtsp => "rtsp",
            Scheme::Rtsps => "rtsps",
        };
        write!(f, "{scheme}://")?;
        if let Some(u) = &self.userinfo {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)?;
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        Ok(())
    }
}

fn trim_slashes(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && path.starts_with('/') {
        "/"
    } else {
        trimmed
    }
}

fn split_track_suffix(text: &str) -> Option<(&str, TrackControl)> {
    let text = text.trim_end_matches('/');
    let slash = text.rfind('/')?;
    let (key, number) = text[slash + 1..].split_once('=')?;
    let known = ["trackid", "streamid", "stream", "track"];
    if !known.iter().any(|k| key.eq_ignore_ascii_case(k)) {
        return None;
    }
    if number.is_empty() || number.len() > 9 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        &text[..slash],
        TrackControl {
            track: number.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG_ANNOUNCE: &[u8] = include_bytes!("../../testdata/ffmpeg_announce_h264_aac.txt");
    const FFMPEG_ANNOUNCE_H265: &[u8] =
        include_bytes!("../../testdata/ffmpeg_announce_h265_aac.txt");
    const FFMPEG_PLAY: &[u8] = include_bytes!("../../testdata/ffmpeg_play_requests.txt");
    const GST_ANNOUNCE: &[u8] = include_bytes!("../../testdata/gstreamer_announce_h264.txt");
    const GST_SETUP_TCP: &[u8] = include_bytes!("../../testdata/gstreamer_setup_tcp.txt");

    fn parse_all(mut buf: &[u8]) -> Vec<RtspRequest> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            match RtspRequest::parse(buf).unwrap() {
                Parsed::Complete { message, consumed } => {
                    out.push(message);
                    buf = &buf[consumed..];
                }
                Parsed::Incomplete => panic!("fixture ends inside a message"),
            }
        }
        out
    }

    #[test]
    fn ffmpeg_publish_sequence() {
        let requests = parse_all(FFMPEG_ANNOUNCE);
        let methods: Vec<_> = requests.iter().map(|r| r.method.clone()).collect();
        assert_eq!(
            methods,
            [
                Method::Options,
                Method::Announce,
                Method::Setup,
                Method::Setup,
                Method::Record
            ]
        );
        let announce = &requests[1];
        assert_eq!(announce.headers.cseq().unwrap(), Some(2));
        assert_eq!(announce.headers.content_type(), Some("application/sdp"));
        assert_eq!(announce.body.len(), 495);
        assert!(announce.body.starts_with(b"v=0\r\n"));

        let setup = &requests[2];
        let url = setup.url().unwrap().unwrap();
        assert_eq!(url.port, Some(8554));
        assert_eq!(
            url.presentation_and_track(),
            ("/live/x".to_owned(), Some(TrackControl { track: 0 }))
        );
        let transports = setup.headers.transports().unwrap();
        assert_eq!(transports.len(), 1);
        let t = &transports[0];
        assert_eq!(t.lower, LowerTransport::Tcp);
        assert_eq!(t.unicast, Some(true));
        assert_eq!(
            t.interleaved,
            Some(Pair {
                rtp: 0,
                rtcp: Some(1)
            })
        );
        assert_eq!(t.mode, Some(TransportMode::Record));
        assert_eq!(
            t.to_string(),
            "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record"
        );

        let second = requests[3].headers.transports().unwrap();
        assert_eq!(
            second[0].interleaved,
            Some(Pair {
                rtp: 2,
                rtcp: Some(3)
            })
        );
        assert_eq!(
            requests[3].headers.session().unwrap(),
            Some(SessionHeader {
                id: "12345678".into(),
                timeout: None
            })
        );
        assert_eq!(
            requests[4].headers.range().unwrap(),
            Some(crate::proto::range::Range::Npt(
                crate::proto::range::NptRange::from(std::time::Duration::ZERO)
            ))
        );
    }

    #[test]
    fn ffmpeg_h265_announce_parses() {
        let requests = parse_all(FFMPEG_ANNOUNCE_H265);
        assert_eq!(requests[1].method, Method::Announce);
        assert!(std::str::from_utf8(&requests[1].body)
            .unwrap()
            .contains("H265/90000"));
    }

    #[test]
    fn gstreamer_publish_uses_stream_control_and_upper_case_mode() {
        let requests = parse_all(GST_ANNOUNCE);
        let setup = requests.iter().find(|r| r.method == Method::Setup).unwrap();
        let t = &setup.headers.transports().unwrap()[0];
        assert_eq!(t.mode, Some(TransportMode::Record));
        let (path, track) = setup.url().unwrap().unwrap().presentation_and_track();
        assert_eq!(path, "/live/x");
        assert_eq!(track, Some(TrackControl { track: 0 }));
    }

    #[test]
    fn players_setup_tracks_and_play_aggregate() {
        for fixture in [FFMPEG_PLAY, GST_SETUP_TCP] {
            let requests = parse_all(fixture);
            let methods: Vec<_> = requests.iter().map(|r| r.method.clone()).collect();
            assert_eq!(
                methods,
                [
                    Method::Options,
                    Method::Describe,
                    Method::Setup,
                    Method::Setup,
                    Method::Play
                ]
            );
            let tracks: Vec<_> = requests[2..4]
                .iter()
                .map(|r| r.url().unwrap().unwrap().presentation_and_track())
                .collect();
            assert_eq!(
                tracks[0],
                ("/live/x".into(), Some(TrackControl { track: 0 }))
            );
            assert_eq!(
                tracks[1],
                ("/live/x".into(), Some(TrackControl { track: 1 }))
            );
            // PLAY on the aggregate URL with a trailing slash.
            assert_eq!(
                requests[4].url().unwrap().unwrap().presentation_and_track(),
                ("/live/x".into(), None)
            );
            assert_eq!(
                requests[3].headers.transports().unwrap()[0],
                Transport::tcp_interleaved(2)
            );
        }
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let whole = parse_all(FFMPEG_ANNOUNCE);
        let first_len = match RtspRequest::parse(FFMPEG_ANNOUNCE).unwrap() {
            Parsed::Complete { consumed, .. } => consumed,
            Parsed::Incomplete => unreachable!(),
        };
        let second = &FFMPEG_ANNOUNCE[first_len..];
        for cut in 0..second.len() {
            // A prefix is either incomplete or (past the ANNOUNCE) a whole message.
            match RtspRequest::parse(&second[..cut]).unwrap() {
                Parsed::Incomplete => {}
                Parsed::Complete { message, consumed } => {
                    assert_eq!(message, whole[1]);
                    assert!(consumed <= cut);
                }
            }
        }
    }

    #[test]
    fn response_round_trip() {
        let session = SessionHeader {
            id: "A1B2C3".into(),
            timeout: Some(60),
        };
        let response = RtspResponse::builder(StatusCode::OK)
            .cseq(7)
            .session(&session)
            .transport(&Transport {
                ssrc: Some(0x1234abcd),
                ..Transport::tcp_interleaved(0)
            })
            .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
            .build();
        let bytes = response.to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("RTSP/1.0 200 OK\r\nCSeq: 7\r\n"));
        assert!(text.contains("Transport: RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=1234ABCD\r\n"));
        assert!(text.contains("Content-Length: 5\r\n\r\nv=0\r\n"));
        match RtspResponse::parse(&bytes).unwrap() {
            Parsed::Complete { message, consumed } => {
                assert_eq!(consumed, bytes.len());
                assert_eq!(message.status, StatusCode::OK);
                assert_eq!(message.headers.session().unwrap(), Some(session));
                assert_eq!(message.body, Bytes::from_static(b"v=0\r\n"));
                assert_eq!(
                    message.headers.transports().unwrap()[0].ssrc,
                    Some(0x1234abcd)
                );
            }
            Parsed::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn request_round_trip_and_reply() {
        let request = RtspRequest::builder(Method::Setup, "rtsp://h:61008/t/trackID=1")
            .cseq(3)
            .transport(&Transport::udp_unicast(5000))
            .build();
        let bytes = request.to_bytes();
        let parsed = match RtspRequest::parse(&bytes).unwrap() {
            Parsed::Complete { message, .. } => message,
            Parsed::Incomplete => panic!(),
        };
        assert_eq!(parsed, request);
        assert_eq!(
            parsed.headers.transports().unwrap()[0].client_port,
            Some(Pair {
                rtp: 5000,
                rtcp: Some(5001)
            })
        );
        let reply = RtspResponse::reply_to(&parsed, StatusCode::UNSUPPORTED_TRANSPORT)
            .public(&[Method::Options, Method::Describe])
            .build();
        assert_eq!(reply.headers.cseq().unwrap(), Some(3));
        assert_eq!(
            reply.headers.public(),
            Some(vec![Method::Options, Method::Describe])
        );
        assert!(reply
            .to_bytes()
            .starts_with(b"RTSP/1.0 461 Unsupported transport\r\n"));
    }

    #[test]
    fn header_injection_is_neutralised() {
        let response = RtspResponse::builder(StatusCode::OK)
            .header("X-Echo", "a\r\nSession: evil")
            .build();
        let bytes = response.to_bytes();
        let parsed = match RtspResponse::parse(&bytes).unwrap() {
            Parsed::Complete { message, .. } => message,
            Parsed::Incomplete => panic!(),
        };
        assert_eq!(parsed.headers.get("Session"), None);
    }

    #[test]
    fn limits() {
        let mut big = b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: ".to_vec();
        big.resize(9000, b'a');
        assert_eq!(
            RtspRequest::parse(&big),
            Err(RtspError::HeadTooLarge { limit: 8192 })
        );
        assert_eq!(
            RtspError::HeadTooLarge { limit: 8192 }.status(),
            StatusCode::BAD_REQUEST
        );
        let body = b"ANNOUNCE rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 65537\r\n\r\n";
        let err = RtspRequest::parse(body).unwrap_err();
        assert_eq!(
            err,
            RtspError::BodyTooLarge {
                length: 65537,
                limit: 65536
            }
        );
        assert_eq!(err.status(), StatusCode::REQUEST_ENTITY_TOO_LARGE);
        let mut many = b"OPTIONS * RTSP/1.0\r\n".to_vec();
        for i in 0..65 {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            RtspRequest::parse(&many),
            Err(RtspError::TooManyHeaders { limit: 64 })
        );
    }

    #[test]
    fn precise_errors() {
        assert_eq!(
            RtspMessage::parse(b"\x16\x03\x01"),
            Err(RtspError::NotRtsp {
                offset: 0,
                byte: 0x16
            })
        );
        assert_eq!(
            RtspMessage::parse(b"OPTIONS * RTSP/1.0\r\nCSeq 1\r\n\r\n"),
            Err(RtspError::Malformed {
                offset: 20,
                rule: "`name: value` header line"
            })
        );
        assert_eq!(
            RtspMessage::parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(RtspError::Malformed {
                offset: 6,
                rule: "`RTSP/1.0` at the end of the request line"
            })
        );
        assert!(matches!(
            RtspMessage::parse(b"OPTIONS * RTSP/2.0\r\n\r\n"),
            Err(RtspError::UnsupportedVersion { .. })
        ));
        // Garbage after a plausible first letter is refused before 8 KiB arrive.
        assert_eq!(
            RtspMessage::parse(b"OPT\x00"),
            Err(RtspError::Malformed {
                offset: 3,
                rule: "printable ASCII in the start line"
            })
        );
        assert!(matches!(
            RtspMessage::parse(b"OPTIONS * RTSP/1.0\r\nCSeq: x\r\n\r\n").map(|p| match p {
                Parsed::Complete { message, .. } => message.headers().cseq(),
                Parsed::Incomplete => Ok(None),
            }),
            Ok(Err(RtspError::InvalidHeader { name: "CSeq", .. }))
        ));
    }

    #[test]
    fn leading_blank_lines_and_bare_lf() {
        let msg = b"\r\nOPTIONS * RTSP/1.0\nCSeq: 2\n\n";
        match RtspRequest::parse(msg).unwrap() {
            Parsed::Complete { message, consumed } => {
                assert_eq!(consumed, msg.len());
                assert_eq!(message.uri, "*");
                assert_eq!(message.headers.cseq().unwrap(), Some(2));
            }
            Parsed::Incomplete => panic!(),
        }
        assert_eq!(RtspRequest::parse(b"\r\n").unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn authorization() {
        assert_eq!(
            Authorization::parse("Basic dXNlcjpwYXNzOndvcmQ=").unwrap(),
            Authorization::Basic {
                username: "user".into(),
                password: "pass:word".into()
            }
        );
        let digest = Authorization::parse(
            r#"Digest username="admin", realm="IP Camera", nonce="abc,def", uri="rtsp://h/x", response="0123""#,
        )
        .unwrap();
        assert_eq!(digest.digest_param("realm"), Some("IP Camera"));
        assert_eq!(digest.digest_param("nonce"), Some("abc,def"));
        assert_eq!(digest.digest_param("response"), Some("0123"));
        assert!(Authorization::parse("Basic !!!").is_err());
    }

    #[test]
    fn urls() {
        let url = RtspUrl::parse("rtsp://user:pw@[::1]:61008/play/TOKEN?x=1/trackID=3").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, Some(61008));
        assert_eq!(url.userinfo.as_deref(), Some("user:pw"));
        assert_eq!(
            url.presentation_and_track(),
            ("/play/TOKEN".into(), Some(TrackControl { track: 3 }))
        );
        assert_eq!(url.query_without_track(), Some("x=1"));
        assert_eq!(
            url.to_string(),
            "rtsp://user:pw@[::1]:61008/play/TOKEN?x=1/trackID=3"
        );
        let bare = RtspUrl::parse("rtsps://camera.local").unwrap();
        assert_eq!(bare.path, "/");
        assert_eq!(bare.port_or_default(), 322);
        assert_eq!(bare.presentation_and_track(), ("/".into(), None));
        assert!(RtspUrl::parse("http://h/x").is_err());
        assert!(RtspUrl::parse("rtsp://h:99999/x").is_err());
        assert!(RtspUrl::parse("rtsp:///x").is_err());
        let no_track = RtspUrl::parse("rtsp://h/a/trackID=x").unwrap();
        assert_eq!(
            no_track.presentation_and_track(),
            ("/a/trackID=x".into(), None)
        );
    }

    #[test]
    fn transport_lists_and_unknown_params() {
        let list = Transport::parse_list(
            "RTP/AVP;multicast;ttl=16;port=5000-5001, RTP/AVP/UDP;unicast;client_port=6000-6001;x-foo=1",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].unicast, Some(false));
        assert_eq!(list[0].ttl, Some(16));
        assert_eq!(list[1].lower, LowerTransport::Udp);
        assert_eq!(list[1].other, vec!["x-foo=1".to_owned()]);
        assert_eq!(
            list[1].to_string(),
            "RTP/AVP;unicast;client_port=6000-6001;x-foo=1"
        );
        assert!(Transport::parse("RTP").is_err());
        assert!(Transport::parse("RTP/AVP/SCTP").is_err());
        assert!(Transport::parse("RTP/AVP/TCP;interleaved=0-300").is_err());
    }
}
