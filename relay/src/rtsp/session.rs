//! The RTSP session of one connection as a state machine without I/O: a request goes in, a
//! response and what the connection must do come out. Answers that need the stream hub (its
//! description, attaching a publisher, adding a viewer) are asked for with a [`Need`]; the
//! connection performs it, possibly waiting, and hands the result back with
//! [`Session::resume`]. The machine owns no socket, clock or hub, so tests and the fuzz target
//! drive it with scripted requests.
//!
//! ```text
//!            DESCRIBE (play token)             SETUP (TCP interleaved)        PLAY
//!   Init ─────────────────────────▶ Init ──────────────────────────▶ Ready ────────▶ Playing
//!     │                                                                ▲   PAUSE       │
//!     │                                                                └───────────────┘
//!     │  ANNOUNCE (publish token, SDP)        SETUP mode=record      RECORD
//!     └──────────────────────────────▶ Announced ───────▶ Announced ───────▶ Recording
//!                                                                  ▲     PAUSE         │
//!                                                                  └───────────────────┘
//!   TEARDOWN from any state: back to Init (viewer removed / publisher detached).
//! ```
//!
//! Statuses: 400 malformed request or transport, a stream other than the session's, or a second
//! publisher (as MediaMTX answers an ANNOUNCE to a path that already has a publisher); 401/403
//! from the token; 404 a path that is not a live stream or a track that does not exist; 415
//! an ANNOUNCE body that is not SDP; 454 a Session header naming no session of this
//! connection; 455 a method the state does not allow; 456 a `Range` in a unit other than npt
//! on a recording (with `Accept-Ranges: npt`), or a recording that cannot seek; 457 a
//! malformed `Range`, or one starting beyond the recording's end; 459 an aggregate SETUP of a
//! stream with several tracks; 461 any transport but RTP/AVP/TCP interleaved; 501 unknown
//! methods; 503 no publisher within the wait, a stream that refuses more viewers, or a device
//! that refused a seek.
//!
//! `Range` on PLAY: a recording's replay (a play token naming a file) seeks to the range's
//! start ([`Need::Seek`]) and the response gives the position the device continues from; the
//! first PLAY after DESCRIBE with `npt=0` (what players send by default) is not a seek, since
//! the replay starts at the beginning. `now` or no start means "from where it is". The end of a
//! range is checked but not enforced: the device plays to the end of the recording. A live
//! stream ignores `Range` altogether, as MediaMTX does, and answers `Range: npt=0.000-`.
#![forbid(unsafe_code)]

use std::rc::Rc;
use std::time::Duration;

use signal::tokens::{TokenError, TokenOp, TokenSigner, LIVE_PATH_PREFIX};

use super::ingest::{IngestError, TrackIngest};
use crate::hub::{ChannelMap, PacketMeta, StreamDescription, TrackChannels, MAX_TRACKS};
use crate::proto::range::{NptRange, NptTime, Range};
use crate::proto::rtsp::{
    LowerTransport, Method, RtspRequest, RtspResponse, RtspUrl, SessionHeader, StatusCode,
    Transport, TransportMode,
};
use crate::proto::sdp::SessionDescription;
use crate::stream_key::StreamKey;

/// The methods answered, in the `Public` header of OPTIONS.
pub const PUBLIC_METHODS: [Method; 10] = [
    Method::Options,
    Method::Describe,
    Method::Announce,
    Method::Setup,
    Method::Play,
    Method::Pause,
    Method::Record,
    Method::Teardown,
    Method::GetParameter,
    Method::SetParameter,
];

/// Value of the `Server` header.
pub const SERVER_NAME: &str = concat!("relay/", env!("CARGO_PKG_VERSION"));

/// Where the session is (RFC 2326 appendix A, server side, plus the publish states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No track set up.
    Init,
    /// Tracks set up for playing, not playing.
    Ready,
    /// Media flows to the client.
    Playing,
    /// This connection is the stream's publisher (ANNOUNCE accepted); tracks may be set up.
    Announced,
    /// Media flows from the client into the hub.
    Recording,
}

/// What the connection does after writing a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing.
    None,
    /// Remove the viewer from the hub (PAUSE, TEARDOWN of a playing session).
    StopViewer,
    /// Detach the publisher from the hub (TEARDOWN of a publishing session).
    StopPublisher,
}

/// A response and what follows it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The response to write.
    pub response: RtspResponse,
    /// The hub operation to perform once the response is queued.
    pub effect: Effect,
    /// Close the connection once the response is written (the peer broke the protocol).
    pub close: bool,
}

/// A hub operation the connection performs before the session can answer.
#[derive(Debug, Clone)]
pub enum Need {
    /// The stream's description, waiting for a publisher for a while if there is none yet.
    Description {
        /// The stream.
        stream: StreamKey,
    },
    /// Attach this connection as the stream's publisher and set its description.
    Publish {
        /// The stream.
        stream: StreamKey,
        /// The announced description, controls rewritten to `trackID=N`.
        description: StreamDescription,
    },
    /// Add this connection as a viewer receiving `channels`.
    Play {
        /// The stream.
        stream: StreamKey,
        /// The interleaved channels of each track set up.
        channels: ChannelMap,
    },
    /// Move the replay of a recording to `start` (from the recording's beginning): the device
    /// is asked to seek, and the stream's viewers restart on its next keyframe.
    Seek {
        /// The replay's stream.
        stream: StreamKey,
        /// The position asked for.
        start: Duration,
    },
}

/// The result of a [`Need`], for [`Session::resume`].
#[derive(Debug, Clone)]
pub enum Answer {
    /// For [`Need::Description`].
    Description(Result<Rc<StreamDescription>, Refusal>),
    /// For [`Need::Publish`].
    Publish(Result<(), Refusal>),
    /// For [`Need::Play`].
    Play(Result<(), Refusal>),
    /// For [`Need::Seek`]: the position the replay continues from (the device seeks in whole
    /// seconds).
    Seek(Result<Duration, Refusal>),
}

/// Why the hub could not do what a [`Need`] asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No publisher came within the wait (503).
    NoPublisher,
    /// The stream already has a publisher (400, as MediaMTX).
    PublisherExists,
    /// The stream has as many viewers as allowed (503).
    TooManyViewers,
    /// The stream ended while the request was handled (503).
    StreamEnded,
    /// The device's signalling link could not carry preview start (503).
    DeviceOffline,
    /// The device refused preview start or did not answer it (503).
    DeviceRefused,
    /// The device accepted preview start but sent no keyframe in time (503).
    NoMedia,
    /// A pull source could not be reached or refused the relay's handshake (503).
    SourceUnavailable,
    /// A seek to a position at or beyond the end of the recording (457).
    RangeBeyondEnd,
    /// The stream cannot seek: not a recording's replay, or a recording whose start time is
    /// unknown (456).
    NotSeekable,
    /// The device refused the seek or did not answer it (503).
    DeviceRefusedSeek,
}

impl Refusal {
    fn status_and_reason(self) -> (StatusCode, &'static str) {
        match self {
            Refusal::NoPublisher => (StatusCode::SERVICE_UNAVAILABLE, "No Publisher"),
            Refusal::PublisherExists => (StatusCode::BAD_REQUEST, "Stream Already Published"),
            Refusal::TooManyViewers => (StatusCode::SERVICE_UNAVAILABLE, "Too Many Viewers"),
            Refusal::StreamEnded => (StatusCode::SERVICE_UNAVAILABLE, "Stream Ended"),
            Refusal::DeviceOffline => (StatusCode::SERVICE_UNAVAILABLE, "Device Offline"),
            Refusal::DeviceRefused => (StatusCode::SERVICE_UNAVAILABLE, "Device Refused Preview"),
            Refusal::NoMedia => (StatusCode::SERVICE_UNAVAILABLE, "No Media From Device"),
            Refusal::SourceUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "Source Unavailable"),
            Refusal::RangeBeyondEnd => (StatusCode::INVALID_RANGE, "Invalid Range"),
            Refusal::NotSeekable => (StatusCode::HEADER_FIELD_NOT_VALID, "Recording Not Seekable"),
            Refusal::DeviceRefusedSeek => (StatusCode::SERVICE_UNAVAILABLE, "Device Refused Seek"),
        }
    }
}

/// The outcome of a request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer now.
    Reply(Reply),
    /// Perform this, then call [`Session::resume`].
    Need(Need),
}

/// What to do with an interleaved `$` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameAction {
    /// A publisher's packet: relay it with this metadata.
    Push(PacketMeta),
    /// Drop it (a player's RTCP receiver reports, data before RECORD on a set-up channel).
    Ignore,
    /// Drop it and count it: the publisher sent something that is not RTP on an RTP channel.
    Invalid(IngestError),
    /// The peer's fault: data on a connection without a set-up session. Answer 400 and close.
    Reject,
}

/// Settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Seconds without a request (or, while recording, media) before the session ends; announced
    /// as `Session: id;timeout=N`.
    pub timeout_secs: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { timeout_secs: 60 }
    }
}

/// One interleaved channel of a publisher: which track, RTP or RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChannelRoute {
    track: u8,
    rtcp: bool,
}

/// What a pending [`Need`] was for.
#[derive(Debug, Clone)]
enum Pending {
    Describe(RtspRequest),
    Setup(RtspRequest),
    Announce(RtspRequest, SessionDescription),
    /// A PLAY, with the `Range` its response carries.
    Play(RtspRequest, Option<String>),
    /// A PLAY with a seek, then (from Ready) the viewer.
    Seek(RtspRequest),
}

/// Where a PLAY on a recording's replay starts.
enum Position {
    /// Seek to this position.
    Seek(Duration),
    /// Continue from where the replay is; the response carries this `Range`, if any.
    Keep(Option<String>),
}

/// The RTSP session of one connection. See the module documentation.
#[derive(Debug)]
pub struct Session {
    id: String,
    config: SessionConfig,
    signer: TokenSigner,
    state: State,
    /// The stream this connection is about, and the request path that named it.
    bound: Option<(StreamKey, String)>,
    /// Play side: the description DESCRIBE (or SETUP) got, and the channels set up.
    description: Option<Rc<StreamDescription>>,
    play_channels: ChannelMap,
    /// Publish side: one ingest per announced track, and the channel routes set up.
    ingest: Vec<TrackIngest>,
    /// The publisher's SDP as announced (controls rewritten), to fill in what it left out.
    announced: Option<SessionDescription>,
    /// The announced SDP with parameter sets filled in from the packets, for the hub.
    updated_description: Option<String>,
    routes: Box<[Option<ChannelRoute>; 256]>,
    /// Whether a SETUP created the session id (the client must then present it).
    established: bool,
    /// The session has played since its DESCRIBE (a recording's replay then no longer stands
    /// at its beginning).
    played: bool,
    pending: Option<Pending>,
}

impl Session {
    /// A session whose id (when SETUP creates it) is `id`; tokens are checked with `signer`.
    pub fn new(id: String, config: SessionConfig, signer: TokenSigner) -> Self {
        Session {
            id,
            config,
            signer,
            state: State::Init,
            bound: None,
            description: None,
            play_channels: ChannelMap::new(),
            ingest: Vec::new(),
            announced: None,
            updated_description: None,
            routes: Box::new([None; 256]),
            established: false,
            played: false,
            pending: None,
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The stream this connection is bound to, if any.
    pub fn stream(&self) -> Option<&StreamKey> {
        self.bound.as_ref().map(|(key, _)| key)
    }

    /// The session timeout announced to the client.
    pub fn timeout_secs(&self) -> u32 {
        self.config.timeout_secs
    }

    /// The stream a request names, if its URL carries a token this server signed for it (any
    /// operation). For routing a connection to the shard that owns the stream before anything
    /// else happens; refusals are left to [`Session::on_request`].
    pub fn stream_named_by(&self, request: &RtspRequest, now_unix: u64) -> Option<StreamKey> {
        let url = request.url().ok()??;
        let (path, _) = url.presentation_and_track();
        let op = match request.method {
            Method::Announce | Method::Record => TokenOp::Publish,
            _ => TokenOp::Play,
        };
        let grant = match self.signer.verify_path(&path, op, now_unix) {
            Ok(grant) => grant,
            Err(TokenError::WrongOperation { .. }) => return None,
            Err(_) => return None,
        };
        StreamKey::from_grant(&grant).ok()
    }

    /// Handles one request at `now_unix` (seconds, for token expiry).
    pub fn on_request(&mut self, request: &RtspRequest, now_unix: u64) -> Step {
        if self.pending.is_some() {
            // The connection handles one request at a time; this is its bug.
            return self.reply(request, StatusCode::INTERNAL_SERVER_ERROR);
        }
        match request.headers.cseq() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                let mut reply = self.reply_with(
                    request,
                    StatusCode::BAD_REQUEST,
                    Some("Missing Or Invalid CSeq"),
                );
                reply.close = true;
                return Step::Reply(reply);
            }
        }
        match &request.method {
            Method::Options => self.options(request),
            Method::Describe => self.describe(request, now_unix),
            Method::Announce => self.announce(request, now_unix),
            Method::Setup => self.setup(request, now_unix, None),
            Method::Play => self.play(request, now_unix),
            Method::Pause => self.pause(request, now_unix),
            Method::Record => self.record(request, now_unix),
            Method::Teardown => self.teardown(request, now_unix),
            Method::GetParameter | Method::SetParameter => self.keepalive(request),
            // A client speaking methods we do not know is not one this server can help: answer,
            // then close (what follows may not be RTSP we can frame).
            Method::Redirect | Method::Other(_) => {
                self.reply_and_close(request, StatusCode::NOT_IMPLEMENTED, None)
            }
        }
    }

    /// Continues the request that asked for a [`Need`]: its reply, or the next need (a PLAY
    /// that seeks, then adds the viewer).
    pub fn resume(&mut self, answer: Answer) -> Step {
        let Some(pending) = self.pending.take() else {
            return Step::Reply(self.internal_error());
        };
        if let (Pending::Seek(request), Answer::Seek(result)) = (&pending, &answer) {
            return match result {
                Err(refusal) => Step::Reply(self.refused(request, *refusal)),
                Ok(start) => self.sought(request.clone(), *start),
            };
        }
        Step::Reply(self.resume_reply(pending, answer))
    }

    fn resume_reply(&mut self, pending: Pending, answer: Answer) -> Reply {
        match (pending, answer) {
            (Pending::Describe(request), Answer::Description(result)) => match result {
                Ok(description) => self.described(&request, description),
                Err(refusal) => self.refused(&request, refusal),
            },
            (Pending::Setup(request), Answer::Description(result)) => match result {
                Ok(description) => {
                    self.description = Some(description.clone());
                    match self.setup(&request, 0, Some(description)) {
                        Step::Reply(reply) => reply,
                        Step::Need(_) => self.internal_error(),
                    }
                }
                Err(refusal) => self.refused(&request, refusal),
            },
            (Pending::Announce(request, sdp), Answer::Publish(result)) => match result {
                Ok(()) => {
                    self.ingest = sdp
                        .media
                        .iter()
                        .enumerate()
                        // At most MAX_TRACKS sections: checked before the Need.
                        .map(|(index, media)| TrackIngest::new(index as u8, media))
                        .collect();
                    self.announced = Some(sdp);
                    self.state = State::Announced;
                    self.reply_with(&request, StatusCode::OK, None)
                }
                Err(refusal) => {
                    self.bound = None;
                    self.refused(&request, refusal)
                }
            },
            (Pending::Play(request, range), Answer::Play(result)) => match result {
                Ok(()) => {
                    self.state = State::Playing;
                    self.played = true;
                    let mut reply = self.reply_with(&request, StatusCode::OK, None);
                    if let Some(range) = range {
                        reply.response.headers.set("Range", range);
                    }
                    reply
                }
                Err(refusal) => self.refused(&request, refusal),
            },
            _ => self.internal_error(),
        }
    }

    /// Routes an interleaved frame that arrived on `channel`.
    pub fn on_frame(&mut self, channel: u8, payload: &[u8]) -> FrameAction {
        match self.state {
            State::Init => FrameAction::Reject,
            State::Ready | State::Playing | State::Announced => FrameAction::Ignore,
            State::Recording => {
                let Some(route) = self.routes[usize::from(channel)] else {
                    return FrameAction::Ignore;
                };
                let Some(track) = self.ingest.get_mut(usize::from(route.track)) else {
                    return FrameAction::Ignore;
                };
                if route.rtcp {
                    return FrameAction::Push(track.rtcp_meta());
                }
                let meta = match track.rtp_meta(payload) {
                    Ok(meta) => meta,
                    Err(e) => return FrameAction::Invalid(e),
                };
                if let Some(params) = track.observe_parameter_sets(payload) {
                    if let Some(sdp) = self.announced.as_mut() {
                        if let Some(media) = sdp.media.get_mut(usize::from(route.track)) {
                            media.set_format_parameters(&params);
                            self.updated_description = Some(sdp.encode());
                        }
                    }
                }
                FrameAction::Push(meta)
            }
        }
    }

    /// The stream's SDP with parameter sets the publisher left out of its ANNOUNCE, once its
    /// packets carried them all (once); the connection hands it to the hub for DESCRIBE.
    pub fn take_updated_description(&mut self) -> Option<String> {
        self.updated_description.take()
    }

    /// The connection's viewer or publisher is gone (stream ended, evicted): back to Init.
    pub fn reset(&mut self) {
        self.state = State::Init;
        self.bound = None;
        self.description = None;
        self.play_channels = ChannelMap::new();
        self.ingest.clear();
        self.announced = None;
        self.updated_description = None;
        self.routes.fill(None);
        self.established = false;
        self.played = false;
        self.pending = None;
    }

    // ----- methods -----

    fn options(&mut self, request: &RtspRequest) -> Step {
        let mut reply = self.reply_with(request, StatusCode::OK, None);
        let list: Vec<&str> = PUBLIC_METHODS.iter().map(Method::as_str).collect();
        reply.response.headers.set("Public", list.join(", "));
        Step::Reply(reply)
    }

    fn describe(&mut self, request: &RtspRequest, now_unix: u64) -> Step {
        if matches!(self.state, State::Announced | State::Recording) {
            return self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        let stream = match self.bind(request, TokenOp::Play, now_unix) {
            Ok((stream, _)) => stream,
            Err(reply) => return Step::Reply(reply),
        };
        self.pending = Some(Pending::Describe(request.clone()));
        Step::Need(Need::Description { stream })
    }

    fn described(&mut self, request: &RtspRequest, description: Rc<StreamDescription>) -> Reply {
        let base = content_base(request);
        let body = description.sdp.clone();
        self.description = Some(description);
        let mut reply = self.reply_with(request, StatusCode::OK, None);
        reply.response.headers.set("Content-Base", base);
        reply
            .response
            .headers
            .set("Content-Type", "application/sdp");
        reply.response.body = body.into_bytes().into();
        reply
    }

    fn announce(&mut self, request: &RtspRequest, now_unix: u64) -> Step {
        if self.state != State::Init {
            return self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        if let Some(content_type) = request.headers.content_type() {
            let mime = content_type.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/sdp") {
                return self.reply(request, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            }
        }
        let mut sdp = match SessionDescription::parse(&request.body) {
            Ok(sdp) => sdp,
            // Broken SDP: the publisher cannot go on; answer, then close.
            Err(_) => {
                return self.reply_and_close(request, StatusCode::BAD_REQUEST, Some("Invalid SDP"))
            }
        };
        if sdp.media.is_empty() || sdp.media.len() > MAX_TRACKS {
            return self.reply_and_close(
                request,
                StatusCode::BAD_REQUEST,
                Some("SDP Needs 1 To 8 Media Sections"),
            );
        }
        let stream = match self.bind(request, TokenOp::Publish, now_unix) {
            Ok((stream, _)) => stream,
            Err(reply) => return Step::Reply(reply),
        };
        sdp.rewrite_controls();
        let description = StreamDescription {
            sdp: sdp.encode(),
            tracks: sdp.media.iter().map(super::ingest::track_kind).collect(),
        };
        self.pending = Some(Pending::Announce(request.clone(), sdp));
        Step::Need(Need::Publish {
            stream,
            description,
        })
    }

    fn setup(
        &mut self,
        request: &RtspRequest,
        now_unix: u64,
        resumed: Option<Rc<StreamDescription>>,
    ) -> Step {
        let recording = match self.state {
            State::Init | State::Ready => false,
            State::Announced => true,
            State::Playing | State::Recording => {
                return self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE)
            }
        };
        if let Err(reply) = self.check_session(request, false) {
            return Step::Reply(reply);
        }
        let op = if recording {
            TokenOp::Publish
        } else {
            TokenOp::Play
        };
        let track = if resumed.is_some() {
            // The URL was checked before the Need.
            match self.track_of(request) {
                Ok(track) => track,
                Err(reply) => return Step::Reply(reply),
            }
        } else {
            match self.bind(request, op, now_unix) {
                Ok((_, track)) => track,
                Err(reply) => return Step::Reply(reply),
            }
        };
        let transports = match request.headers.transports() {
            Ok(transports) if !transports.is_empty() => transports,
            _ => return self.reply_reason(request, StatusCode::BAD_REQUEST, "Invalid Transport"),
        };
        let Some(transport) = transports
            .iter()
            .find(|t| t.lower == LowerTransport::Tcp && t.profile.eq_ignore_ascii_case("RTP/AVP"))
        else {
            return self.reply(request, StatusCode::UNSUPPORTED_TRANSPORT);
        };
        if recording {
            if matches!(transport.mode, Some(TransportMode::Play)) {
                return self.reply(request, StatusCode::UNSUPPORTED_TRANSPORT);
            }
            let tracks = self.ingest.len();
            let Some(track) = resolve_track(track, tracks) else {
                return self.reply_track_error(request, track, tracks);
            };
            let channels = match self.pick_channels(request, transport, track, true) {
                Ok(channels) => channels,
                Err(reply) => return Step::Reply(reply),
            };
            self.routes[usize::from(channels.rtp)] = Some(ChannelRoute { track, rtcp: false });
            self.routes[usize::from(channels.rtcp)] = Some(ChannelRoute { track, rtcp: true });
            self.established = true;
            return Step::Reply(self.setup_reply(request, channels, true));
        }
        if matches!(transport.mode, Some(TransportMode::Record)) {
            return self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        let description = match resumed.or_else(|| self.description.clone()) {
            Some(description) => description,
            None => {
                // SETUP without DESCRIBE: the client knows the tracks from elsewhere.
                let Some((stream, _)) = self.bound.clone() else {
                    return Step::Reply(self.internal_error());
                };
                self.pending = Some(Pending::Setup(request.clone()));
                return Step::Need(Need::Description { stream });
            }
        };
        let tracks = description.tracks.len();
        let Some(track) = resolve_track(track, tracks) else {
            return self.reply_track_error(request, track, tracks);
        };
        let channels = match self.pick_channels(request, transport, track, false) {
            Ok(channels) => channels,
            Err(reply) => return Step::Reply(reply),
        };
        if self.play_channels.set(track, channels).is_err() {
            return self.reply(request, StatusCode::NOT_FOUND);
        }
        self.state = State::Ready;
        self.established = true;
        Step::Reply(self.setup_reply(request, channels, false))
    }

    fn setup_reply(&self, request: &RtspRequest, channels: TrackChannels, record: bool) -> Reply {
        let mut transport = Transport::tcp_interleaved(channels.rtp);
        if let Some(pair) = &mut transport.interleaved {
            pair.rtcp = Some(channels.rtcp);
        }
        if record {
            transport.mode = Some(TransportMode::Record);
        }
        let mut reply = self.reply_with(request, StatusCode::OK, None);
        reply
            .response
            .headers
            .set("Transport", transport.to_string());
        reply
    }

    /// The channels a SETUP asks for (or the next free pair), refusing ones already in use.
    fn pick_channels(
        &self,
        request: &RtspRequest,
        transport: &Transport,
        track: u8,
        record: bool,
    ) -> Result<TrackChannels, Reply> {
        let in_use = |channel: u8| -> bool {
            if record {
                self.routes[usize::from(channel)].is_some_and(|route| route.track != track)
            } else {
                (0..MAX_TRACKS as u8)
                    .filter(|&other| other != track)
                    .filter_map(|other| self.play_channels.get(other))
                    .any(|c| c.rtp == channel || c.rtcp == channel)
            }
        };
        let channels = match transport.interleaved {
            Some(pair) => {
                let rtcp = match pair.rtcp.or(pair.rtp.checked_add(1)) {
                    Some(rtcp) if rtcp != pair.rtp => rtcp,
                    _ => {
                        return Err(self.reply_with(
                            request,
                            StatusCode::BAD_REQUEST,
                            Some("Invalid Interleaved Channels"),
                        ))
                    }
                };
                TrackChannels {
                    rtp: pair.rtp,
                    rtcp,
                }
            }
            None => TrackChannels {
                rtp: track * 2,
                rtcp: track * 2 + 1,
            },
        };
        if in_use(channels.rtp) || in_use(channels.rtcp) {
            return Err(self.reply_with(
                request,
                StatusCode::BAD_REQUEST,
                Some("Interleaved Channels In Use"),
            ));
        }
        Ok(channels)
    }

    fn play(&mut self, request: &RtspRequest, now_unix: u64) -> Step {
        if let Err(reply) = self.check_session(request, true) {
            return Step::Reply(reply);
        }
        if !matches!(self.state, State::Ready | State::Playing) {
            return self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE);
        }
        if let Err(reply) = self.check_same_stream(request, TokenOp::Play, now_unix) {
            return Step::Reply(reply);
        }
        let Some((stream, _)) = self.bound.clone() else {
            return Step::Reply(self.internal_error());
        };
        let range = if stream.file().is_some() {
            match self.replay_position(request) {
                Ok(Position::Seek(start)) => {
                    self.pending = Some(Pending::Seek(request.clone()));
                    return Step::Need(Need::Seek { stream, start });
                }
                Ok(Position::Keep(range)) => range,
                Err(reply) => return Step::Reply(reply),
            }
        } else {
            // A live stream has no position to seek to: Range is ignored (as MediaMTX does).
            Some(NptRange::from(Duration::ZERO).to_string())
        };
        if self.state == State::Playing {
            let mut reply = self.reply_with(request, StatusCode::OK, None);
            if let Some(range) = range {
                reply.response.headers.set("Range", range);
            }
            return Step::Reply(reply);
        }
        self.pending = Some(Pending::Play(request.clone(), range));
        Step::Need(Need::Play {
            stream,
            channels: self.play_channels,
        })
    }

    /// Where a PLAY on a recording's replay starts, from its `Range`.
    fn replay_position(&self, request: &RtspRequest) -> Result<Position, Reply> {
        let at_beginning = (!self.played).then(|| NptRange::from(Duration::ZERO).to_string());
        let range = match request.headers.range() {
            Ok(None) => return Ok(Position::Keep(at_beginning)),
            Ok(Some(range)) => range,
            Err(error) => {
                return Err(self.reply_with(request, error.status(), Some("Invalid Range")));
            }
        };
        let npt = match range {
            Range::Npt(npt) => npt,
            Range::Other { .. } => {
                // Recordings seek in normal play time only (456, as RTSP 2.0, RFC 7826, rules).
                let mut reply = self.reply_with(request, StatusCode::HEADER_FIELD_NOT_VALID, None);
                reply.response.headers.set("Accept-Ranges", "npt");
                return Err(reply);
            }
        };
        match npt.start {
            Some(NptTime::At(start)) if start.is_zero() && !self.played => {
                Ok(Position::Keep(at_beginning))
            }
            Some(NptTime::At(start)) => Ok(Position::Seek(start)),
            // From where the replay is.
            Some(NptTime::Now) | None => Ok(Position::Keep(Some(
                NptRange {
                    start: Some(NptTime::Now),
                    end: None,
                }
                .to_string(),
            ))),
        }
    }

    /// The device seeked to `start`: answer a playing session, or add the viewer of a ready one.
    fn sought(&mut self, request: RtspRequest, start: Duration) -> Step {
        let range = NptRange::from(start).to_string();
        if self.state == State::Playing {
            let mut reply = self.reply_with(&request, StatusCode::OK, None);
            reply.response.headers.set("Range", range);
            return Step::Reply(reply);
        }
        let Some((stream, _)) = self.bound.clone() else {
            return Step::Reply(self.internal_error());
        };
        self.pending = Some(Pending::Play(request, Some(range)));
        Step::Need(Need::Play {
            stream,
            channels: self.play_channels,
        })
    }

    fn pause(&mut self, request: &RtspRequest, _now_unix: u64) -> Step {
        if let Err(reply) = self.check_session(request, true) {
            return Step::Reply(reply);
        }
        match self.state {
            State::Ready => self.reply(request, StatusCode::OK),
            State::Playing => {
                self.state = State::Ready;
                let mut reply = self.reply_with(request, StatusCode::OK, None);
                reply.effect = Effect::StopViewer;
                Step::Reply(reply)
            }
            // GStreamer's rtspclientsink pauses at end of stream before TEARDOWN; the publisher
            // stays attached and may RECORD again (MediaMTX does the same).
            State::Announced => self.reply(request, StatusCode::OK),
            State::Recording => {
                self.state = State::Announced;
                self.reply(request, StatusCode::OK)
            }
            State::Init => self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE),
        }
    }

    fn record(&mut self, request: &RtspRequest, now_unix: u64) -> Step {
        if let Err(reply) = self.check_session(request, true) {
            return Step::Reply(reply);
        }
        match self.state {
            State::Recording => self.reply(request, StatusCode::OK),
            State::Announced if self.routes.iter().any(Option::is_some) => {
                if let Err(reply) = self.check_same_stream(request, TokenOp::Publish, now_unix) {
                    return Step::Reply(reply);
                }
                self.state = State::Recording;
                self.reply(request, StatusCode::OK)
            }
            _ => self.reply(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE),
        }
    }

    fn teardown(&mut self, request: &RtspRequest, _now_unix: u64) -> Step {
        if let Err(reply) = self.check_session(request, false) {
            return Step::Reply(reply);
        }
        let effect = match self.state {
            State::Playing => Effect::StopViewer,
            State::Announced | State::Recording => Effect::StopPublisher,
            State::Init | State::Ready => Effect::None,
        };
        let mut reply = self.reply_with(request, StatusCode::OK, None);
        reply.effect = effect;
        self.reset();
        Step::Reply(reply)
    }

    fn keepalive(&mut self, request: &RtspRequest) -> Step {
        if let Err(reply) = self.check_session(request, false) {
            return Step::Reply(reply);
        }
        if request.method == Method::SetParameter && !request.body.is_empty() {
            return self.reply(request, StatusCode::PARAMETER_NOT_UNDERSTOOD);
        }
        self.reply(request, StatusCode::OK)
    }

    // ----- helpers -----

    /// Checks the request's token and binds the session to its stream (or checks that it names
    /// the stream already bound). Returns the stream and the track control suffix.
    fn bind(
        &mut self,
        request: &RtspRequest,
        op: TokenOp,
        now_unix: u64,
    ) -> Result<(StreamKey, Option<u8>), Reply> {
        let url = match request.url() {
            Ok(Some(url)) => url,
            Ok(None) => return Err(self.reply_with(request, StatusCode::NOT_FOUND, None)),
            Err(_) => {
                return Err(self.reply_with(request, StatusCode::BAD_REQUEST, Some("Invalid URL")))
            }
        };
        let (path, _) = url.presentation_and_track();
        let track = self.track_of(request)?;
        if let Some((stream, bound_path)) = &self.bound {
            if *bound_path == path {
                return Ok((stream.clone(), track));
            }
        }
        let stream = self.verify(request, &path, op, now_unix)?;
        if let Some((bound, _)) = &self.bound {
            if *bound != stream {
                if self.state != State::Init {
                    // A valid token, but for another stream than this session's: the token
                    // does not grant this session anything (403, like a play token used to
                    // publish).
                    return Err(self.reply_with(request, StatusCode::FORBIDDEN, None));
                }
                // A fresh session about another stream: forget the other one's description.
                self.description = None;
            }
        }
        self.bound = Some((stream.clone(), path));
        Ok((stream, track))
    }

    /// The track control suffix of the request URL, if any.
    fn track_of(&self, request: &RtspRequest) -> Result<Option<u8>, Reply> {
        let Ok(Some(url)) = request.url() else {
            return Ok(None);
        };
        match url.presentation_and_track().1 {
            None => Ok(None),
            Some(control) => u8::try_from(control.track)
                .map(Some)
                .map_err(|_| self.reply_with(request, StatusCode::NOT_FOUND, None)),
        }
    }

    /// For requests inside a session: the URL (if any) names the bound stream.
    fn check_same_stream(
        &mut self,
        request: &RtspRequest,
        op: TokenOp,
        now_unix: u64,
    ) -> Result<(), Reply> {
        let Some((stream, bound_path)) = self.bound.clone() else {
            return Err(self.internal_error());
        };
        let url: RtspUrl = match request.url() {
            Ok(Some(url)) => url,
            Ok(None) => return Ok(()),
            Err(_) => {
                return Err(self.reply_with(request, StatusCode::BAD_REQUEST, Some("Invalid URL")))
            }
        };
        let (path, _) = url.presentation_and_track();
        if path == bound_path {
            return Ok(());
        }
        let named = self.verify(request, &path, op, now_unix)?;
        if named != stream {
            // As in `bind`: a token for another stream grants nothing here.
            return Err(self.reply_with(request, StatusCode::FORBIDDEN, None));
        }
        Ok(())
    }

    fn verify(
        &self,
        request: &RtspRequest,
        path: &str,
        op: TokenOp,
        now_unix: u64,
    ) -> Result<StreamKey, Reply> {
        if !path.starts_with(LIVE_PATH_PREFIX.trim_end_matches('/')) {
            return Err(self.reply_with(request, StatusCode::NOT_FOUND, None));
        }
        let grant = self
            .signer
            .verify_path(path, op, now_unix)
            .map_err(|e| self.reply_with(request, StatusCode(e.status()), None))?;
        StreamKey::from_grant(&grant)
            .map_err(|_| self.reply_with(request, StatusCode::NOT_FOUND, None))
    }

    /// A Session header must name this session; `required` when the method needs one.
    fn check_session(&self, request: &RtspRequest, required: bool) -> Result<(), Reply> {
        match request.headers.session() {
            Ok(Some(header)) => {
                if self.established && header.id == self.id {
                    Ok(())
                } else {
                    Err(self.reply_with(request, StatusCode::SESSION_NOT_FOUND, None))
                }
            }
            Ok(None) if required && !self.established => {
                Err(self.reply_with(request, StatusCode::METHOD_NOT_VALID_IN_THIS_STATE, None))
            }
            Ok(None) => Ok(()),
            Err(_) => Err(self.reply_with(
                request,
                StatusCode::BAD_REQUEST,
                Some("Invalid Session Header"),
            )),
        }
    }

    fn reply_track_error(&self, request: &RtspRequest, track: Option<u8>, tracks: usize) -> Step {
        if track.is_none() && tracks > 1 {
            self.reply(request, StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED)
        } else {
            self.reply(request, StatusCode::NOT_FOUND)
        }
    }

    fn refused(&self, request: &RtspRequest, refusal: Refusal) -> Reply {
        let (status, reason) = refusal.status_and_reason();
        self.reply_with(request, status, Some(reason))
    }

    fn reply(&self, request: &RtspRequest, status: StatusCode) -> Step {
        Step::Reply(self.reply_with(request, status, None))
    }

    /// A refusal after which the connection is closed (the peer broke the protocol).
    fn reply_and_close(
        &self,
        request: &RtspRequest,
        status: StatusCode,
        reason: Option<&str>,
    ) -> Step {
        let mut reply = self.reply_with(request, status, reason);
        reply.close = true;
        Step::Reply(reply)
    }

    fn reply_reason(&self, request: &RtspRequest, status: StatusCode, reason: &str) -> Step {
        Step::Reply(self.reply_with(request, status, Some(reason)))
    }

    fn reply_with(&self, request: &RtspRequest, status: StatusCode, reason: Option<&str>) -> Reply {
        let mut response = RtspResponse::reply_to(request, status)
            .header("Server", SERVER_NAME)
            .build();
        if let Some(reason) = reason {
            response.reason = reason.to_owned();
        }
        if self.established {
            let session = SessionHeader {
                id: self.id.clone(),
                timeout: Some(self.config.timeout_secs),
            };
            response.headers.set("Session", session.to_string());
        }
        Reply {
            response,
            effect: Effect::None,
            close: false,
        }
    }

    fn internal_error(&self) -> Reply {
        Reply {
            response: RtspResponse::builder(StatusCode::INTERNAL_SERVER_ERROR)
                .header("Server", SERVER_NAME)
                .build(),
            effect: Effect::None,
            close: true,
        }
    }
}

/// The track a SETUP means: its control suffix, or track 0 of a single-track stream.
fn resolve_track(track: Option<u8>, tracks: usize) -> Option<u8> {
    match track {
        Some(track) if usize::from(track) < tracks => Some(track),
        Some(_) => None,
        None if tracks == 1 => Some(0),
        None => None,
    }
}

/// The Content-Base of a DESCRIBE answer: the request URL with a trailing slash, so that the
/// relative `trackID=N` controls resolve below it.
fn content_base(request: &RtspRequest) -> String {
    let mut base = request.uri.clone();
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

#[cfg(test)]
mod tests;
