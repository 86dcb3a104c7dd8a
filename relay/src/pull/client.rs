//! The RTSP client of a pull source, without I/O: the connection feeds it the source's responses
//! and sends the requests it returns. It shares the codecs of the server side (`proto::rtsp`,
//! `proto::sdp`), so a quirk parsed for one direction is parsed for both.
//!
//! ```text
//!  start ─▶ Options ─▶ Describe ─▶ Setup(0) ─▶ … ─▶ Setup(n-1) ─▶ Play ─▶ Playing ─▶ TearingDown
//!              │  401 with credentials: the same request again with Authorization  │
//!              └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - **Handshake mode** (OPTIONS through PLAY): the source's header rules apply. A fixed rule
//!   sets its header; a counter rule sends its initial number first and then, on every request,
//!   the number of the same header in the source's previous response plus one (Arlo's `Nonce`).
//! - **Media mode** (after PLAY's 200): requests are keepalives (`GET_PARAMETER` when the source
//!   lists it in `Public`, else `OPTIONS`) and the final `TEARDOWN`, without header rules; their
//!   responses are matched by CSeq and otherwise ignored, and interleaved media is not this
//!   module's business (the connection demuxes it and asks [`ClientSession::track_of_channel`]).
//! - Authentication: the first 401 picks Digest (MD5, SHA-256; `qop=auth` when offered) or Basic
//!   from the challenges, and every later request carries it. A second 401 is an error unless the
//!   Digest challenge says `stale=true`.
//! - Transport: `RTP/AVP/TCP` interleaved (channels `2n`, `2n+1` asked for track `n`; the ones the
//!   source answers are used), or `RTP/AVP` unicast over UDP. For UDP, after DESCRIBE the session
//!   asks the connection to bind one port pair per track ([`ClientStep::BindUdp`]), sends each
//!   SETUP with `client_port=` of its pair, and records the `server_port` and `source` the source
//!   answers ([`ClientSession::udp_peer`]) so the connection can drop datagrams from anyone else.
//!   A 461 answer to SETUP is [`ClientError::TransportRefused`], naming the other transport.
//! - Every failure is a [`ClientError`] naming the request and what the source answered.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use crate::hub::{StreamDescription, MAX_TRACKS};
use crate::proto::rtsp::{
    LowerTransport, Method, RtspError, RtspRequest, RtspResponse, RtspUrl, SessionHeader,
    StatusCode, Transport,
};
use crate::proto::sdp::{SdpError, SessionDescription};
use signal::sources::{HeaderRule, PullTransport};

use super::auth::{AuthError, Credentials};

/// What the client sends as `User-Agent` unless a header rule says otherwise.
pub const USER_AGENT: &str = concat!("rop-relay/", env!("CARGO_PKG_VERSION"));
/// Session timeout assumed when the source announces none (RFC 2326).
const DEFAULT_SESSION_TIMEOUT_SECS: u32 = 60;
/// Most 401 answers accepted in one handshake (stale nonces included).
const MAX_AUTH_RETRIES: u32 = 3;

/// Where the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Nothing sent yet.
    Start,
    /// OPTIONS sent.
    Options,
    /// DESCRIBE sent.
    Describe,
    /// DESCRIBE answered, UDP transport: waiting for the connection's port pairs
    /// ([`ClientSession::udp_ports_bound`]).
    BindPorts,
    /// SETUP of track `n` sent.
    Setup(usize),
    /// PLAY sent.
    Play,
    /// Media flows; keepalives may be outstanding.
    Playing,
    /// TEARDOWN sent or the session failed.
    Closed,
}

/// Why the pull session failed. The source's fault, or a mismatch of what it offers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A request was answered with an error status.
    #[error("{method} answered {status} {reason}")]
    Status {
        method: String,
        status: u16,
        reason: String,
    },
    /// 401 and the URL has no user and password.
    #[error("{method} needs authentication and the source URL has no user:password")]
    NoCredentials { method: String },
    /// 401 again after authenticating.
    #[error("{method}: the source refused the user and password")]
    AuthRejected { method: String },
    /// The challenge cannot be answered.
    #[error("{method}: {source}")]
    Auth {
        method: String,
        #[source]
        source: AuthError,
    },
    /// A response whose CSeq names no request of ours.
    #[error("response with CSeq {got:?} while waiting for {expected}")]
    UnexpectedCSeq { got: Option<u32>, expected: u32 },
    /// A response that breaks the protocol (missing Session, Transport...).
    #[error("{method} response: {what}")]
    BadResponse { method: String, what: String },
    /// The SDP of DESCRIBE does not parse.
    #[error("DESCRIBE returned an invalid SDP: {0}")]
    Sdp(#[from] SdpError),
    /// A header of the response does not follow its grammar.
    #[error("{method} response: {source}")]
    Header {
        method: String,
        #[source]
        source: RtspError,
    },
    /// The source's URL cannot be used.
    #[error("source URL: {0}")]
    Url(RtspError),
    /// SETUP answered 461 Unsupported Transport: the source does not serve the configured
    /// transport.
    #[error(
        "SETUP answered {status} {reason}: the source does not serve RTP over {}; set transport = \"{}\"",
        transport_name(*.asked),
        other_transport(*.asked)
    )]
    TransportRefused {
        asked: PullTransport,
        status: u16,
        reason: String,
    },
    /// The connection called the session out of turn (a bug of the relay, not the source's).
    #[error("pull client misuse: {0}")]
    Misuse(&'static str),
}

fn transport_name(transport: PullTransport) -> &'static str {
    match transport {
        PullTransport::Tcp => "TCP interleaved (RTP/AVP/TCP)",
        PullTransport::Udp => "UDP (RTP/AVP unicast)",
    }
}

fn other_transport(transport: PullTransport) -> &'static str {
    match transport {
        PullTransport::Tcp => "udp",
        PullTransport::Udp => "tcp",
    }
}

/// What the connection does after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this request.
    Send(RtspRequest),
    /// UDP transport: bind this many RTP/RTCP port pairs (one per track), then call
    /// [`ClientSession::udp_ports_bound`] for the first SETUP.
    BindUdp { tracks: usize },
    /// PLAY succeeded: publish this description, media follows on the set-up channels (or the
    /// bound UDP ports).
    Playing(StreamDescription),
    /// Nothing to do (a keepalive's answer).
    Nothing,
}

/// Where a counter rule stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    name: String,
    fixed: Option<String>,
    /// Next value of a counter rule.
    counter: Option<u64>,
}

/// One media section being set up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrackSetup {
    control_url: String,
    /// Interleaved channels the source agreed to.
    channels: Option<(u8, u8)>,
    /// UDP: our RTP port (RTCP is the next one).
    client_port: Option<u16>,
    /// UDP: where the source said it sends from.
    udp: Option<UdpPeer>,
}

/// Where a track's datagrams come from, as the source answered SETUP over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPeer {
    /// `server_port=` (RTP, RTCP), when the source said.
    pub server_ports: Option<(u16, Option<u16>)>,
    /// `source=` as an IP address, when the source named one (else: the RTSP peer's address).
    pub source: Option<IpAddr>,
}

/// The sans-IO client of one pull attempt.
#[derive(Debug, Clone)]
pub struct ClientSession {
    /// The URL without user info, as sent in requests.
    url: String,
    user: Option<(String, String)>,
    cnonce: String,
    rules: Vec<Rule>,
    state: ClientState,
    cseq: u32,
    /// The request waiting for its response (resent with Authorization on 401).
    outstanding: Option<RtspRequest>,
    auth: Option<Credentials>,
    auth_retries: u32,
    session: Option<SessionHeader>,
    sdp: Option<SessionDescription>,
    base_url: String,
    tracks: Vec<TrackSetup>,
    keepalive_method: Method,
    transport: PullTransport,
}

/// Percent-decodes URL user info (`%40` -> `@`); invalid escapes stay as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Joins a media control attribute to the base URL (RFC 2326 C.1.1).
fn resolve_control(base: &str, control: Option<&str>) -> String {
    match control {
        None | Some("*") | Some("") => base.to_owned(),
        // `get`, not indexing: the attribute is the upstream's text and may hold a multi-byte
        // character where the scheme would end.
        Some(control)
            if ["rtsp://", "rtsps://"].iter().any(|scheme| {
                control.len() > scheme.len()
                    && control
                        .get(..scheme.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
            }) =>
        {
            control.to_owned()
        }
        Some(control) => {
            if base.ends_with('/') {
                format!("{base}{control}")
            } else {
                format!("{base}/{control}")
            }
        }
    }
}

impl ClientSession {
    /// A client for `url` (user and password taken from it) with the source's header rules.
    /// `cnonce` is the Digest client nonce (random per attempt).
    pub fn new(url: &str, rules: &[HeaderRule], cnonce: String) -> Result<Self, ClientError> {
        let mut parsed = RtspUrl::parse(url).map_err(ClientError::Url)?;
        let user = parsed.userinfo.take().map(|info| {
            let (user, password) = info.split_once(':').unwrap_or((&info, ""));
            (percent_decode(user), percent_decode(password))
        });
        let url = parsed.to_string();
        Ok(ClientSession {
            base_url: url.clone(),
            url,
            user,
            cnonce,
            rules: rules
                .iter()
                .map(|r| Rule {
                    name: r.name.clone(),
                    fixed: r.value.clone(),
                    counter: r.counter,
                })
                .collect(),
            state: ClientState::Start,
            cseq: 0,
            outstanding: None,
            auth: None,
            auth_retries: 0,
            session: None,
            sdp: None,
            tracks: Vec::new(),
            keepalive_method: Method::Options,
            transport: PullTransport::Tcp,
        })
    }

    /// The same client with media over `transport` (default: TCP interleaved).
    pub fn with_transport(mut self, transport: PullTransport) -> Self {
        self.transport = transport;
        self
    }

    /// The media transport.
    pub fn transport(&self) -> PullTransport {
        self.transport
    }

    /// After [`ClientStep::BindUdp`]: the RTP port of each track's pair (RTCP on the next port);
    /// returns the first SETUP.
    pub fn udp_ports_bound(&mut self, rtp_ports: &[u16]) -> Result<RtspRequest, ClientError> {
        if self.state != ClientState::BindPorts {
            return Err(ClientError::Misuse("UDP ports given outside BindUdp"));
        }
        if rtp_ports.len() != self.tracks.len() {
            return Err(ClientError::Misuse("one UDP port pair per track"));
        }
        for (track, &port) in self.tracks.iter_mut().zip(rtp_ports) {
            track.client_port = Some(port);
        }
        Ok(self.setup_request(0))
    }

    /// UDP: where track `index`'s datagrams come from (after its SETUP was answered).
    pub fn udp_peer(&self, index: usize) -> Option<UdpPeer> {
        self.tracks.get(index)?.udp
    }

    /// The handshake's state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The URL requests go to (without user info).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Seconds between keepalives: half the session timeout the source announced, at least 5.
    pub fn keepalive_interval_secs(&self) -> u32 {
        let timeout = self
            .session
            .as_ref()
            .and_then(|s| s.timeout)
            .unwrap_or(DEFAULT_SESSION_TIMEOUT_SECS);
        (timeout / 2).max(5)
    }

    /// The first request (OPTIONS).
    pub fn start(&mut self) -> RtspRequest {
        self.state = ClientState::Options;
        let url = self.url.clone();
        self.request(Method::Options, &url, |b| b)
    }

    /// The track index and whether it is RTCP, for an interleaved channel set up by SETUP.
    pub fn track_of_channel(&self, channel: u8) -> Option<(usize, bool)> {
        self.tracks.iter().enumerate().find_map(|(i, t)| {
            let (rtp, rtcp) = t.channels?;
            if channel == rtp {
                Some((i, false))
            } else if channel == rtcp {
                Some((i, true))
            } else {
                None
            }
        })
    }

    /// The description being published (after DESCRIBE).
    pub fn sdp(&self) -> Option<&SessionDescription> {
        self.sdp.as_ref()
    }

    /// A keepalive for media mode; `None` before PLAY succeeded or while one is outstanding.
    pub fn keepalive(&mut self) -> Option<RtspRequest> {
        if self.state != ClientState::Playing || self.outstanding.is_some() {
            return None;
        }
        let method = self.keepalive_method.clone();
        let url = self.url.clone();
        Some(self.request(method, &url, |b| b))
    }

    /// TEARDOWN for a session that was set up (`None` otherwise); the session is closed after.
    pub fn teardown(&mut self) -> Option<RtspRequest> {
        let had_session = self.session.is_some();
        let was = self.state;
        self.state = ClientState::Closed;
        if !had_session || was == ClientState::Closed {
            return None;
        }
        let url = self.url.clone();
        Some(self.request(Method::Teardown, &url, |b| b))
    }

    fn in_handshake(&self) -> bool {
        matches!(
            self.state,
            ClientState::Options
                | ClientState::Describe
                | ClientState::BindPorts
                | ClientState::Setup(_)
                | ClientState::Play
        )
    }

    /// Builds a request with CSeq, session, authorization and (in handshake mode) header rules,
    /// and remembers it as outstanding.
    fn request(
        &mut self,
        method: Method,
        uri: &str,
        extra: impl FnOnce(crate::proto::rtsp::RequestBuilder) -> crate::proto::rtsp::RequestBuilder,
    ) -> RtspRequest {
        self.cseq = self.cseq.wrapping_add(1);
        let mut builder = RtspRequest::builder(method.clone(), uri)
            .cseq(self.cseq)
            .header("User-Agent", USER_AGENT);
        if let Some(session) = &self.session {
            builder = builder.session(&session.id);
        }
        builder = extra(builder);
        let mut request = builder.build();
        self.finish_request(&mut request);
        self.outstanding = Some(request.clone());
        request
    }

    /// Authorization and header rules for `request` (new, or resent after a 401).
    fn finish_request(&mut self, request: &mut RtspRequest) {
        if let Some(auth) = &mut self.auth {
            let value = auth.authorization(request.method.as_str(), &request.uri);
            request.headers.set("Authorization", value);
        }
        if self.in_handshake() {
            for rule in &self.rules {
                if let Some(value) = &rule.fixed {
                    request.headers.set(rule.name.clone(), value.clone());
                } else if let Some(counter) = rule.counter {
                    request.headers.set(rule.name.clone(), counter.to_string());
                }
            }
        }
    }

    /// Counter rules take the source's value (or ours) plus one for the next request.
    fn advance_counters(&mut self, response: &RtspResponse) {
        for rule in &mut self.rules {
            let Some(sent) = rule.counter else {
                continue;
            };
            let answered = response
                .headers
                .get(&rule.name)
                .and_then(|v| v.trim().parse::<u64>().ok());
            rule.counter = Some(answered.unwrap_or(sent).wrapping_add(1));
        }
    }

    /// Feeds one response of the source.
    pub fn on_response(&mut self, response: &RtspResponse) -> Result<ClientStep, ClientError> {
        let Some(outstanding) = self.outstanding.clone() else {
            // Nothing asked (a late answer to a keepalive after TEARDOWN, noise): ignore.
            return Ok(ClientStep::Nothing);
        };
        let method = outstanding.method.to_string();
        let cseq = response
            .headers
            .cseq()
            .map_err(|source| ClientError::Header {
                method: method.clone(),
                source,
            })?;
        // Some cameras omit CSeq; one request is outstanding at a time, so accept that.
        if cseq.is_some_and(|c| c != self.cseq) {
            return Err(ClientError::UnexpectedCSeq {
                got: cseq,
                expected: self.cseq,
            });
        }
        self.outstanding = None;
        if self.in_handshake() {
            self.advance_counters(response);
        }
        if self.state == ClientState::Playing || self.state == ClientState::Closed {
            // A keepalive's answer; sources that do not know GET_PARAMETER say so here.
            if response.status == StatusCode::NOT_IMPLEMENTED
                || response.status == StatusCode::METHOD_NOT_ALLOWED
            {
                self.keepalive_method = Method::Options;
            }
            return Ok(ClientStep::Nothing);
        }
        if response.status == StatusCode::UNAUTHORIZED {
            return self
                .retry_with_auth(outstanding, response)
                .map(ClientStep::Send);
        }
        if response.status == StatusCode::UNSUPPORTED_TRANSPORT
            && matches!(self.state, ClientState::Setup(_))
        {
            return Err(ClientError::TransportRefused {
                asked: self.transport,
                status: response.status.0,
                reason: response.reason.clone(),
            });
        }
        if !response.status.is_success() {
            return Err(ClientError::Status {
                method,
                status: response.status.0,
                reason: response.reason.clone(),
            });
        }
        self.auth_retries = 0;
        match self.state {
            ClientState::Options => {
                if response
                    .headers
                    .public()
                    .is_some_and(|methods| methods.contains(&Method::GetParameter))
                {
                    self.keepalive_method = Method::GetParameter;
                }
                self.state = ClientState::Describe;
                let url = self.url.clone();
                Ok(ClientStep::Send(self.request(
                    Method::Describe,
                    &url,
                    |b| b.header("Accept", "application/sdp"),
                )))
            }
            ClientState::Describe => self.described(response),
            ClientState::Setup(index) => self.set_up(index, response, &method),
            ClientState::Play => {
                self.state = ClientState::Playing;
                self.description().map(ClientStep::Playing)
            }
            ClientState::Start
            | ClientState::BindPorts
            | ClientState::Playing
            | ClientState::Closed => Ok(ClientStep::Nothing),
        }
    }

    fn retry_with_auth(
        &mut self,
        outstanding: RtspRequest,
        response: &RtspResponse,
    ) -> Result<RtspRequest, ClientError> {
        let method = outstanding.method.to_string();
        let Some((user, password)) = self.user.clone() else {
            return Err(ClientError::NoCredentials { method });
        };
        let challenges = response.headers.challenges();
        let stale = Credentials::is_stale(&challenges);
        self.auth_retries += 1;
        if (self.auth.is_some() && !stale) || self.auth_retries > MAX_AUTH_RETRIES {
            return Err(ClientError::AuthRejected { method });
        }
        let credentials = Credentials::answer(&user, &password, &challenges, self.cnonce.clone())
            .map_err(|source| ClientError::Auth {
            method: method.clone(),
            source,
        })?;
        self.auth = Some(credentials);
        // The same request again, with a new CSeq, Authorization and the rules' next values.
        let mut request = outstanding;
        self.cseq = self.cseq.wrapping_add(1);
        request.headers.set("CSeq", self.cseq.to_string());
        self.finish_request(&mut request);
        self.outstanding = Some(request.clone());
        Ok(request)
    }

    fn described(&mut self, response: &RtspResponse) -> Result<ClientStep, ClientError> {
        let bad = |what: &str| ClientError::BadResponse {
            method: "DESCRIBE".into(),
            what: what.into(),
        };
        if let Some(content_type) = response.headers.content_type() {
            let mime = content_type.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/sdp") {
                return Err(bad("not application/sdp"));
            }
        }
        let sdp = SessionDescription::parse(&response.body)?;
        if sdp.media.is_empty() || sdp.media.len() > MAX_TRACKS {
            return Err(bad("the SDP needs 1 to 8 media sections"));
        }
        let base = response
            .headers
            .content_base()
            .or_else(|| response.headers.get("Content-Location"))
            .map(str::trim)
            .filter(|b| RtspUrl::parse(b).is_ok())
            .map(str::to_owned)
            .unwrap_or_else(|| self.url.clone());
        self.tracks = sdp
            .media
            .iter()
            .map(|m| TrackSetup {
                control_url: resolve_control(&base, m.control()),
                channels: None,
                client_port: None,
                udp: None,
            })
            .collect();
        // Session-level control: PLAY goes there (the base URL unless absolute).
        self.base_url = resolve_control(&base, sdp.attribute("control"));
        self.sdp = Some(sdp);
        match self.transport {
            PullTransport::Tcp => Ok(ClientStep::Send(self.setup_request(0))),
            PullTransport::Udp => {
                self.state = ClientState::BindPorts;
                Ok(ClientStep::BindUdp {
                    tracks: self.tracks.len(),
                })
            }
        }
    }

    fn setup_request(&mut self, index: usize) -> RtspRequest {
        self.state = ClientState::Setup(index);
        let transport = match (self.transport, self.tracks[index].client_port) {
            (PullTransport::Udp, Some(port)) => Transport::udp_unicast(port),
            _ => Transport::tcp_interleaved((index * 2) as u8),
        };
        let url = self.tracks[index].control_url.clone();
        self.request(Method::Setup, &url, |b| b.transport(&transport))
    }

    /// The UDP answer to track `index`'s SETUP: the source must agree to unicast UDP to our
    /// ports; its `server_port` and `source` say where datagrams come from.
    fn udp_answer(&self, index: usize, answer: Option<&Transport>) -> Result<UdpPeer, String> {
        let Some(t) = answer else {
            // Some cameras omit Transport in the answer: they use what was asked.
            return Ok(UdpPeer {
                server_ports: None,
                source: None,
            });
        };
        if t.lower != LowerTransport::Udp {
            return Err("the source chose RTP/AVP/TCP where RTP/AVP over UDP was asked".into());
        }
        if t.unicast == Some(false) || t.destination.is_some() {
            return Err(
                "the source answered multicast or another destination, not unicast to the relay"
                    .into(),
            );
        }
        let asked = self.tracks[index].client_port;
        if let Some(ports) = t.client_port {
            if Some(ports.rtp) != asked {
                return Err(format!(
                    "the source answered client_port={ports}, not the port {} asked",
                    asked.unwrap_or(0)
                ));
            }
        }
        Ok(UdpPeer {
            server_ports: t.server_port.map(|p| (p.rtp, p.rtcp)),
            source: t.source.as_deref().and_then(|s| s.parse().ok()),
        })
    }

    fn set_up(
        &mut self,
        index: usize,
        response: &RtspResponse,
        method: &str,
    ) -> Result<ClientStep, ClientError> {
        let bad = |what: &str| ClientError::BadResponse {
            method: method.to_owned(),
            what: what.to_owned(),
        };
        let header = |source| ClientError::Header {
            method: method.to_owned(),
            source,
        };
        let session = response
            .headers
            .session()
            .map_err(header)?
            .ok_or_else(|| bad("no Session header"))?;
        match &self.session {
            Some(known) if known.id != session.id => {
                return Err(bad("a different Session id than the first SETUP"))
            }
            Some(_) => {}
            None => self.session = Some(session),
        }
        let transports = response.headers.transports().map_err(header)?;
        if self.transport == PullTransport::Udp {
            let peer = self
                .udp_answer(index, transports.first())
                .map_err(|what| bad(&what))?;
            self.tracks[index].udp = Some(peer);
            return self.after_setup(index);
        }
        let asked = (index * 2) as u8;
        let channels = match transports.first() {
            Some(t) => {
                if t.lower != crate::proto::rtsp::LowerTransport::Tcp {
                    return Err(bad("the source chose a transport other than RTP/AVP/TCP"));
                }
                match t.interleaved {
                    Some(pair) => (pair.rtp, pair.rtcp.unwrap_or(pair.rtp.wrapping_add(1))),
                    None => (asked, asked + 1),
                }
            }
            // Some cameras omit Transport in the answer: they use what was asked.
            None => (asked, asked + 1),
        };
        let clash = self.tracks[..index].iter().any(|t| {
            t.channels
                .is_some_and(|(r, c)| [r, c].contains(&channels.0) || [r, c].contains(&channels.1))
        });
        if clash {
            return Err(bad("interleaved channels already used by another track"));
        }
        self.tracks[index].channels = Some(channels);
        self.after_setup(index)
    }

    /// The next SETUP, or PLAY after the last one.
    fn after_setup(&mut self, index: usize) -> Result<ClientStep, ClientError> {
        if index + 1 < self.tracks.len() {
            return Ok(ClientStep::Send(self.setup_request(index + 1)));
        }
        self.state = ClientState::Play;
        let url = self.base_url.clone();
        Ok(ClientStep::Send(self.request(Method::Play, &url, |b| {
            b.header("Range", "npt=0.000-")
        })))
    }

    /// The relay's description of the stream: the source's SDP with the relay's controls.
    fn description(&self) -> Result<StreamDescription, ClientError> {
        let mut sdp = self.sdp.clone().ok_or(ClientError::BadResponse {
            method: "PLAY".into(),
            what: "no DESCRIBE before".into(),
        })?;
        sdp.rewrite_controls();
        Ok(StreamDescription {
            sdp: sdp.encode(),
            tracks: sdp
                .media
                .iter()
                .map(crate::rtsp::ingest::track_kind)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the pull_client fuzzer: a control attribute with a multi-byte character across
    /// byte 7 panicked when sliced as a scheme.
    #[test]
    fn control_with_a_multibyte_character_is_joined_not_sliced() {
        assert_eq!(
            resolve_control("rtsp://cam/s", Some("stre\u{fcb23}q8")),
            "rtsp://cam/s/stre\u{fcb23}q8"
        );
        assert_eq!(
            resolve_control("rtsp://cam/s", Some("RTSPS://other/t")),
            "RTSPS://other/t"
        );
        assert_eq!(
            resolve_control("rtsp://cam/s/", Some("rtsp://")),
            "rtsp://cam/s/rtsp://"
        );
    }
    use crate::hub::TrackKind;
    use crate::proto::rtsp::RtspResponse;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\na=control:*\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:stream=0\r\n\
        m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/44100/2\r\na=control:stream=1\r\n";

    fn reply(request: &RtspRequest, status: StatusCode) -> crate::proto::rtsp::ResponseBuilder {
        RtspResponse::reply_to(request, status)
    }

    fn nonce_rule() -> Vec<HeaderRule> {
        vec![
            HeaderRule {
                name: "Nonce".into(),
                value: None,
                counter: Some(0),
            },
            HeaderRule {
                name: "User-Agent".into(),
                value: Some("Arlo".into()),
                counter: None,
            },
        ]
    }

    /// Drives a whole handshake against a scripted source; returns the requests seen.
    fn handshake(
        client: &mut ClientSession,
        digest: bool,
    ) -> (Vec<RtspRequest>, StreamDescription) {
        let mut seen = Vec::new();
        let mut request = client.start();
        let mut server_nonce = 1000u64;
        loop {
            seen.push(request.clone());
            let authorized = request.headers.get("Authorization").is_some();
            let mut builder = if digest && !authorized {
                reply(&request, StatusCode::UNAUTHORIZED)
                    .header("WWW-Authenticate", r#"Digest realm="cam", nonce="n0""#)
            } else {
                match request.method {
                    Method::Options => reply(&request, StatusCode::OK).public(&[
                        Method::Describe,
                        Method::Setup,
                        Method::Play,
                        Method::GetParameter,
                    ]),
                    Method::Describe => reply(&request, StatusCode::OK)
                        .header("Content-Base", "rtsp://cam/live/")
                        .body("application/sdp", SDP.as_bytes().to_vec()),
                    Method::Setup => {
                        let asked = request.headers.transports().unwrap()[0]
                            .interleaved
                            .unwrap();
                        reply(&request, StatusCode::OK)
                            .header("Session", "abc;timeout=30")
                            .transport(&Transport::tcp_interleaved(asked.rtp + 10))
                    }
                    Method::Play => reply(&request, StatusCode::OK).header("Session", "abc"),
                    _ => unreachable!(),
                }
            };
            server_nonce += 7;
            builder = builder.header("Nonce", server_nonce.to_string());
            match client.on_response(&builder.build()).unwrap() {
                ClientStep::Send(next) => request = next,
                ClientStep::Playing(description) => return (seen, description),
                ClientStep::Nothing | ClientStep::BindUdp { .. } => panic!("handshake stalled"),
            }
        }
    }

    #[test]
    fn full_handshake_with_nonce_counter_and_channels_from_the_source() {
        let mut client = ClientSession::new("rtsp://cam/live", &nonce_rule(), "c".into()).unwrap();
        let (seen, description) = handshake(&mut client, false);
        let methods: Vec<_> = seen.iter().map(|r| r.method.clone()).collect();
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
        let nonces: Vec<_> = seen
            .iter()
            .map(|r| r.headers.get("Nonce").unwrap())
            .collect();
        assert_eq!(nonces, ["0", "1008", "1015", "1022", "1029"]);
        assert!(seen
            .iter()
            .all(|r| r.headers.get("User-Agent") == Some("Arlo")));
        assert_eq!(seen[2].uri, "rtsp://cam/live/stream=0");
        assert_eq!(seen[3].uri, "rtsp://cam/live/stream=1");
        assert_eq!(seen[3].headers.get("Session"), Some("abc"));
        assert_eq!(seen[4].uri, "rtsp://cam/live/");
        assert_eq!(description.tracks, [TrackKind::Video, TrackKind::Audio]);
        assert!(description.sdp.contains("a=control:trackID=1"));
        assert_eq!(client.track_of_channel(10), Some((0, false)));
        assert_eq!(client.track_of_channel(11), Some((0, true)));
        assert_eq!(client.track_of_channel(12), Some((1, false)));
        assert_eq!(client.track_of_channel(0), None);
        assert_eq!(client.keepalive_interval_secs(), 15);
        // Media mode: keepalives and TEARDOWN carry no rules.
        let keepalive = client.keepalive().unwrap();
        assert_eq!(keepalive.method, Method::GetParameter);
        assert_eq!(keepalive.headers.get("Nonce"), None);
        assert_eq!(keepalive.headers.get("User-Agent"), Some(USER_AGENT));
        assert!(client.keepalive().is_none(), "one outstanding at a time");
        let answer = reply(&keepalive, StatusCode::OK)
            .header("Nonce", "5")
            .build();
        assert_eq!(client.on_response(&answer).unwrap(), ClientStep::Nothing);
        let teardown = client.teardown().unwrap();
        assert_eq!(teardown.method, Method::Teardown);
        assert_eq!(teardown.headers.get("Nonce"), None);
    }

    #[test]
    fn digest_challenge_is_answered_once_and_kept() {
        let mut client =
            ClientSession::new("rtsp://user:p%40ss@cam/live", &[], "c".into()).unwrap();
        assert_eq!(client.url(), "rtsp://cam/live");
        let (seen, _) = handshake(&mut client, true);
        assert_eq!(seen[0].headers.get("Authorization"), None);
        assert_eq!(seen[1].method, Method::Options);
        let auth = seen[1].headers.get("Authorization").unwrap();
        assert!(auth.starts_with("Digest username=\"user\""), "{auth}");
        assert!(seen[2..]
            .iter()
            .all(|r| r.headers.get("Authorization").is_some()));
        assert_ne!(seen[0].headers.get("CSeq"), seen[1].headers.get("CSeq"));
    }

    #[test]
    fn refusals_are_precise() {
        let mut client = ClientSession::new("rtsp://cam/live", &[], "c".into()).unwrap();
        let options = client.start();
        let challenge = reply(&options, StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", r#"Basic realm="x""#)
            .build();
        assert!(matches!(
            client.on_response(&challenge),
            Err(ClientError::NoCredentials { .. })
        ));

        let mut client = ClientSession::new("rtsp://u:p@cam/live", &[], "c".into()).unwrap();
        let options = client.start();
        let challenge = reply(&options, StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", r#"Basic realm="x""#)
            .build();
        let ClientStep::Send(again) = client.on_response(&challenge).unwrap() else {
            panic!()
        };
        assert_eq!(again.headers.get("Authorization"), Some("Basic dTpw"));
        let refused = reply(&again, StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", r#"Basic realm="x""#)
            .build();
        assert!(matches!(
            client.on_response(&refused),
            Err(ClientError::AuthRejected { .. })
        ));

        let mut client = ClientSession::new("rtsp://cam/live", &[], "c".into()).unwrap();
        let options = client.start();
        let wrong = RtspResponse::builder(StatusCode::OK).cseq(99).build();
        assert!(matches!(
            client.on_response(&wrong),
            Err(ClientError::UnexpectedCSeq {
                got: Some(99),
                expected: 1
            })
        ));
        let mut client = ClientSession::new("rtsp://cam/live", &[], "c".into()).unwrap();
        let options2 = client.start();
        let not_found = reply(&options2, StatusCode::NOT_FOUND).build();
        assert_eq!(
            client.on_response(&not_found).unwrap_err().to_string(),
            "OPTIONS answered 404 Not Found"
        );
        let _ = options;
    }

    /// A UDP handshake against a scripted source answering each SETUP with `answer(asked)`.
    fn udp_handshake(
        answer: impl Fn(&Transport) -> Result<Transport, StatusCode>,
    ) -> (ClientSession, Result<ClientStep, ClientError>) {
        let mut client = ClientSession::new("rtsp://cam/live", &[], "c".into())
            .unwrap()
            .with_transport(PullTransport::Udp);
        let options = client.start();
        let ClientStep::Send(describe) = client
            .on_response(&reply(&options, StatusCode::OK).build())
            .unwrap()
        else {
            panic!("DESCRIBE expected")
        };
        let step = client
            .on_response(
                &reply(&describe, StatusCode::OK)
                    .header("Content-Base", "rtsp://cam/live/")
                    .body("application/sdp", SDP.as_bytes().to_vec())
                    .build(),
            )
            .unwrap();
        assert_eq!(step, ClientStep::BindUdp { tracks: 2 });
        assert_eq!(client.state(), ClientState::BindPorts);
        assert!(matches!(
            client.udp_ports_bound(&[5000]),
            Err(ClientError::Misuse(_))
        ));
        let mut request = client.udp_ports_bound(&[5000, 5002]).unwrap();
        loop {
            let builder = match request.method {
                Method::Setup => {
                    let asked = request.headers.transports().unwrap().remove(0);
                    match answer(&asked) {
                        Ok(t) => reply(&request, StatusCode::OK)
                            .header("Session", "abc")
                            .transport(&t),
                        Err(status) => reply(&request, status),
                    }
                }
                Method::Play => reply(&request, StatusCode::OK).header("Session", "abc"),
                other => panic!("unexpected {other}"),
            };
            match client.on_response(&builder.build()) {
                Ok(ClientStep::Send(next)) => request = next,
                other => return (client, other),
            }
        }
    }

    #[test]
    fn udp_setup_asks_client_ports_and_records_where_media_comes_from() {
        let (client, end) = udp_handshake(|asked| {
            assert_eq!(asked.lower, LowerTransport::Udp);
            assert_eq!(asked.unicast, Some(true));
            let ports = asked.client_port.unwrap();
            assert_eq!(ports.rtcp, Some(ports.rtp + 1));
            let mut t = asked.clone();
            t.server_port = Some(crate::proto::rtsp::Pair {
                rtp: 7000 + ports.rtp - 5000,
                rtcp: Some(7001 + ports.rtp - 5000),
            });
            if ports.rtp == 5002 {
                t.source = Some("10.1.2.3".into());
            }
            Ok(t)
        });
        assert!(matches!(end, Ok(ClientStep::Playing(_))), "{end:?}");
        assert_eq!(
            client.udp_peer(0),
            Some(UdpPeer {
                server_ports: Some((7000, Some(7001))),
                source: None
            })
        );
        assert_eq!(
            client.udp_peer(1),
            Some(UdpPeer {
                server_ports: Some((7002, Some(7003))),
                source: Some("10.1.2.3".parse().unwrap())
            })
        );
        assert_eq!(client.track_of_channel(0), None, "no interleaved channels");
    }

    #[test]
    fn udp_refusals_name_the_transport() {
        let (_, end) = udp_handshake(|_| Err(StatusCode::UNSUPPORTED_TRANSPORT));
        let error = end.unwrap_err();
        assert!(matches!(
            error,
            ClientError::TransportRefused {
                asked: PullTransport::Udp,
                status: 461,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "SETUP answered 461 Unsupported transport: the source does not serve RTP over \
             UDP (RTP/AVP unicast); set transport = \"tcp\""
        );
        let (_, end) = udp_handshake(|_| Ok(Transport::tcp_interleaved(0)));
        assert!(
            end.unwrap_err().to_string().contains("chose RTP/AVP/TCP"),
            "interleaved answer to a UDP SETUP"
        );
        let (_, end) = udp_handshake(|asked| {
            let mut t = asked.clone();
            t.client_port = Some(crate::proto::rtsp::Pair {
                rtp: 9000,
                rtcp: Some(9001),
            });
            Ok(t)
        });
        assert!(end
            .unwrap_err()
            .to_string()
            .contains("client_port=9000-9001"));
    }

    #[test]
    fn control_urls_resolve_like_rfc2326() {
        assert_eq!(
            resolve_control("rtsp://h/a", Some("trackID=1")),
            "rtsp://h/a/trackID=1"
        );
        assert_eq!(resolve_control("rtsp://h/a/", Some("t1")), "rtsp://h/a/t1");
        assert_eq!(resolve_control("rtsp://h/a", Some("*")), "rtsp://h/a");
        assert_eq!(
            resolve_control("rtsp://h/a", Some("rtsp://o/x")),
            "rtsp://o/x"
        );
        assert_eq!(percent_decode("a%40b%zz%4"), "a@b%zz%4");
    }
}
