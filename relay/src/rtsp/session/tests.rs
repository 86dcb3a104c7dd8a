//! The session state machine driven by the requests ffmpeg and GStreamer really send
//! (relay/testdata), with URLs rewritten to carry tokens, and by the misbehaviour the issue lists.

use std::rc::Rc;

use signal::tokens::{StreamGrant, TokenOp, TokenSigner};

use super::*;
use crate::hub::TrackKind;
use crate::proto::rtsp::{Parsed, RtspRequest};

const NOW: u64 = 1_700_000_000;
const FFMPEG_ANNOUNCE: &str = include_str!("../../../testdata/ffmpeg_announce_h264_aac.txt");
const GST_PLAY: &str = include_str!("../../../testdata/gstreamer_setup_tcp.txt");
const FFMPEG_PLAY: &str = include_str!("../../../testdata/ffmpeg_play_requests.txt");

fn signer() -> TokenSigner {
    TokenSigner::new([3; 32])
}

fn url(op: TokenOp, exp: u64) -> String {
    let grant = StreamGrant {
        uid: "952700000A5S348E".into(),
        channel: 0,
        stream_type: "mainStream".into(),
        op,
        exp,
        file: None,
    };
    signer().sign_url("rtsp", "127.0.0.1", 8554, &grant)
}

/// The requests of a recorded exchange, with the recorded URL replaced by `base`.
fn requests(recording: &str, recorded_base: &str, base: &str) -> Vec<RtspRequest> {
    let text = recording.replace(recorded_base, base);
    let mut bytes = text.as_bytes();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match RtspRequest::parse(bytes).unwrap() {
            Parsed::Complete { message, consumed } => {
                out.push(message);
                bytes = &bytes[consumed..];
            }
            Parsed::Incomplete => break,
        }
    }
    out
}

fn session() -> Session {
    Session::new(
        "abcdef0123456789".into(),
        SessionConfig::default(),
        signer(),
    )
}

fn reply(step: Step) -> Reply {
    match step {
        Step::Reply(reply) => reply,
        Step::Need(need) => panic!("unexpected need {need:?}"),
    }
}

fn with_session(mut request: RtspRequest, id: &str) -> RtspRequest {
    if request.headers.get("Session").is_some() {
        request.headers.set("Session", id);
    }
    request
}

fn description() -> Rc<StreamDescription> {
    Rc::new(StreamDescription {
        sdp: "v=0\r\n".into(),
        tracks: vec![TrackKind::Video, TrackKind::Audio],
    })
}

#[test]
fn ffmpeg_publishes() {
    let base = url(TokenOp::Publish, NOW + 60);
    let requests = requests(FFMPEG_ANNOUNCE, "rtsp://127.0.0.1:8554/live/x", &base);
    assert_eq!(requests.len(), 5);
    let mut s = session();
    let options = reply(s.on_request(&requests[0], NOW));
    assert_eq!(options.response.status, StatusCode::OK);
    assert!(options
        .response
        .headers
        .get("Public")
        .unwrap()
        .contains("RECORD"));
    let Step::Need(Need::Publish {
        stream,
        description,
    }) = s.on_request(&requests[1], NOW)
    else {
        panic!("ANNOUNCE must ask to publish");
    };
    assert_eq!(stream.to_string(), "952700000A5S348E/0/mainStream");
    assert_eq!(description.tracks, vec![TrackKind::Video, TrackKind::Audio]);
    assert!(description.sdp.contains("a=control:trackID=1"));
    assert!(!description.sdp.contains("streamid"));
    let announced = reply(s.resume(Answer::Publish(Ok(()))));
    assert_eq!(announced.response.status, StatusCode::OK);
    assert_eq!(s.state(), State::Announced);
    let setup = reply(s.on_request(&requests[2], NOW));
    assert_eq!(setup.response.status, StatusCode::OK);
    let id = SessionHeader::parse(setup.response.headers.get("Session").unwrap()).unwrap();
    assert_eq!(id.timeout, Some(60));
    let transport = setup.response.headers.get("Transport").unwrap();
    assert!(transport.contains("interleaved=0-1"), "{transport}");
    let setup = reply(s.on_request(&with_session(requests[3].clone(), &id.id), NOW));
    assert_eq!(setup.response.status, StatusCode::OK);
    // Data before RECORD is dropped, not relayed.
    assert_eq!(
        s.on_frame(0, &[0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x65]),
        FrameAction::Ignore
    );
    let record = reply(s.on_request(&with_session(requests[4].clone(), &id.id), NOW));
    assert_eq!(record.response.status, StatusCode::OK);
    assert_eq!(s.state(), State::Recording);
    let FrameAction::Push(meta) =
        s.on_frame(0, &[0x80, 0xe0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 0x65, 0])
    else {
        panic!("RTP on the video channel is relayed");
    };
    assert!(meta.keyframe_start && meta.end_of_access_unit && meta.track == 0);
    let FrameAction::Push(meta) = s.on_frame(3, b"rtcp") else {
        panic!("RTCP is relayed");
    };
    assert!(meta.is_rtcp && meta.track == 1);
    assert!(matches!(s.on_frame(2, &[1, 2]), FrameAction::Invalid(_)));
    assert_eq!(s.on_frame(9, &[1, 2]), FrameAction::Ignore);
    // rtspclientsink pauses at end of stream: accepted, media no longer relayed.
    let mut pause = requests[4].clone();
    pause.method = Method::Pause;
    let paused = reply(s.on_request(&with_session(pause, &id.id), NOW));
    assert_eq!(paused.response.status, StatusCode::OK);
    assert_eq!(s.state(), State::Announced);
    assert_eq!(
        s.on_frame(0, &[0x80, 96, 0, 2, 0, 0, 0, 9, 0, 0, 0, 1, 0x41]),
        FrameAction::Ignore
    );
    let mut teardown = requests[4].clone();
    teardown.method = Method::Teardown;
    let teardown = reply(s.on_request(&with_session(teardown, &id.id), NOW));
    assert_eq!(teardown.effect, Effect::StopPublisher);
    assert_eq!(s.state(), State::Init);
}

#[test]
fn gstreamer_plays() {
    let base = url(TokenOp::Play, NOW + 60);
    let requests = requests(GST_PLAY, "rtsp://127.0.0.1:8554/live/x", &base);
    assert_eq!(requests.len(), 5);
    let mut s = session();
    assert_eq!(
        reply(s.on_request(&requests[0], NOW)).response.status,
        StatusCode::OK
    );
    let Step::Need(Need::Description { stream }) = s.on_request(&requests[1], NOW) else {
        panic!("DESCRIBE must ask for the description");
    };
    assert_eq!(stream.uid(), "952700000A5S348E");
    let described = reply(s.resume(Answer::Description(Ok(description()))));
    assert_eq!(described.response.status, StatusCode::OK);
    assert_eq!(
        described.response.headers.get("Content-Base").unwrap(),
        format!("{base}/")
    );
    assert_eq!(&described.response.body[..], b"v=0\r\n");
    let setup = reply(s.on_request(&requests[2], NOW));
    assert_eq!(
        setup.response.status,
        StatusCode::OK,
        "{:?}",
        setup.response
    );
    let id = SessionHeader::parse(setup.response.headers.get("Session").unwrap()).unwrap();
    let setup = reply(s.on_request(&with_session(requests[3].clone(), &id.id), NOW));
    assert_eq!(setup.response.status, StatusCode::OK);
    assert_eq!(s.state(), State::Ready);
    let Step::Need(Need::Play { channels, .. }) =
        s.on_request(&with_session(requests[4].clone(), &id.id), NOW)
    else {
        panic!("PLAY must ask to play");
    };
    assert_eq!(channels.get(1), Some(TrackChannels { rtp: 2, rtcp: 3 }));
    let played = reply(s.resume(Answer::Play(Ok(()))));
    assert_eq!(played.response.status, StatusCode::OK);
    assert_eq!(played.response.headers.get("Range"), Some("npt=0.000-"));
    assert_eq!(s.state(), State::Playing);
    // A player's RTCP receiver report is dropped.
    assert_eq!(s.on_frame(1, b"rr"), FrameAction::Ignore);
    let mut pause = requests[4].clone();
    pause.method = Method::Pause;
    let paused = reply(s.on_request(&with_session(pause, &id.id), NOW));
    assert_eq!(paused.effect, Effect::StopViewer);
    assert_eq!(s.state(), State::Ready);
}

#[test]
fn ffmpeg_play_requests_parse_and_route() {
    let base = url(TokenOp::Play, NOW + 60);
    let first_url = FFMPEG_PLAY
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let requests = requests(FFMPEG_PLAY, &first_url, &base);
    assert!(!requests.is_empty());
    let s = session();
    let named = s.stream_named_by(&requests[0], NOW).unwrap();
    assert_eq!(named.uid(), "952700000A5S348E");
}

fn request(method: Method, uri: &str) -> RtspRequest {
    RtspRequest::builder(method, uri).cseq(7).build()
}

#[test]
fn token_refusals() {
    let mut s = session();
    let expired = url(TokenOp::Play, NOW - 1);
    assert_eq!(
        reply(s.on_request(&request(Method::Describe, &expired), NOW))
            .response
            .status,
        StatusCode::UNAUTHORIZED
    );
    let publish = url(TokenOp::Publish, NOW + 60);
    assert_eq!(
        reply(s.on_request(&request(Method::Describe, &publish), NOW))
            .response
            .status,
        StatusCode::FORBIDDEN
    );
    let forged = url(TokenOp::Play, NOW + 60).replace("live/e", "live/f");
    let status = reply(s.on_request(&request(Method::Describe, &forged), NOW))
        .response
        .status;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let missing = "rtsp://127.0.0.1:8554/v1.0/live/";
    assert_eq!(
        reply(s.on_request(&request(Method::Describe, missing), NOW))
            .response
            .status,
        StatusCode::UNAUTHORIZED
    );
    let elsewhere = "rtsp://127.0.0.1:8554/cam1";
    assert_eq!(
        reply(s.on_request(&request(Method::Describe, elsewhere), NOW))
            .response
            .status,
        StatusCode::NOT_FOUND
    );
    let play = url(TokenOp::Play, NOW + 60);
    let mut announce = request(Method::Announce, &play);
    announce.headers.set("Content-Type", "application/sdp");
    announce.body = bytes::Bytes::from_static(b"v=0\r\nm=video 0 RTP/AVP 96\r\n");
    assert_eq!(
        reply(s.on_request(&announce, NOW)).response.status,
        StatusCode::FORBIDDEN
    );
}

#[test]
fn state_and_protocol_errors() {
    let mut s = session();
    let play = url(TokenOp::Play, NOW + 60);
    // PLAY before SETUP.
    assert_eq!(
        reply(s.on_request(&request(Method::Play, &play), NOW))
            .response
            .status,
        StatusCode::METHOD_NOT_VALID_IN_THIS_STATE
    );
    // Unknown session.
    let mut keepalive = request(Method::GetParameter, &play);
    keepalive.headers.set("Session", "nope");
    assert_eq!(
        reply(s.on_request(&keepalive, NOW)).response.status,
        StatusCode::SESSION_NOT_FOUND
    );
    // Unknown method.
    let odd = request(Method::Other("FLY".into()), &play);
    assert_eq!(
        reply(s.on_request(&odd, NOW)).response.status,
        StatusCode::NOT_IMPLEMENTED
    );
    // No CSeq: 400 and close.
    let no_cseq = RtspRequest::builder(Method::Options, "*").build();
    let r = reply(s.on_request(&no_cseq, NOW));
    assert_eq!(r.response.status, StatusCode::BAD_REQUEST);
    assert!(r.close);
    // Interleaved data with no session.
    assert_eq!(s.on_frame(0, b"x"), FrameAction::Reject);
    // UDP only: 461 (after the description is known).
    let Step::Need(_) = s.on_request(&request(Method::Describe, &play), NOW) else {
        panic!()
    };
    reply(s.resume(Answer::Description(Ok(description()))));
    let mut udp = request(Method::Setup, &format!("{play}/trackID=0"));
    udp.headers
        .set("Transport", "RTP/AVP;unicast;client_port=5000-5001");
    assert_eq!(
        reply(s.on_request(&udp, NOW)).response.status,
        StatusCode::UNSUPPORTED_TRANSPORT
    );
    // Aggregate SETUP of a two-track stream.
    let mut aggregate = request(Method::Setup, &play);
    aggregate
        .headers
        .set("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1");
    assert_eq!(
        reply(s.on_request(&aggregate, NOW)).response.status,
        StatusCode::AGGREGATE_OPERATION_NOT_ALLOWED
    );
    // A track that does not exist.
    let mut far = request(Method::Setup, &format!("{play}/trackID=5"));
    far.headers
        .set("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1");
    assert_eq!(
        reply(s.on_request(&far, NOW)).response.status,
        StatusCode::NOT_FOUND
    );
    // Two tracks on the same channels.
    let mut first = request(Method::Setup, &format!("{play}/trackID=0"));
    first
        .headers
        .set("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1");
    assert_eq!(
        reply(s.on_request(&first, NOW)).response.status,
        StatusCode::OK
    );
    let mut clash = request(Method::Setup, &format!("{play}/trackID=1"));
    clash
        .headers
        .set("Transport", "RTP/AVP/TCP;unicast;interleaved=1-2");
    clash.headers.set("Session", "abcdef0123456789");
    assert_eq!(
        reply(s.on_request(&clash, NOW)).response.status,
        StatusCode::BAD_REQUEST
    );
    // RECORD on a play session.
    let mut record = request(Method::Record, &play);
    record.headers.set("Session", "abcdef0123456789");
    assert_eq!(
        reply(s.on_request(&record, NOW)).response.status,
        StatusCode::METHOD_NOT_VALID_IN_THIS_STATE
    );
    // Another stream inside this session.
    let mut other_grant_url = url(TokenOp::Play, NOW + 61);
    other_grant_url.push_str("/trackID=1");
    let mut other = request(Method::Setup, &other_grant_url);
    other
        .headers
        .set("Transport", "RTP/AVP/TCP;unicast;interleaved=2-3");
    other.headers.set("Session", "abcdef0123456789");
    // Same stream, other token: accepted.
    assert_eq!(
        reply(s.on_request(&other, NOW)).response.status,
        StatusCode::OK
    );
    // A valid token for another stream inside this session: 403, for SETUP and for PLAY.
    let sub = signer().sign_url(
        "rtsp",
        "127.0.0.1",
        8554,
        &StreamGrant {
            uid: "952700000A5S348E".into(),
            channel: 0,
            stream_type: "subStream".into(),
            op: TokenOp::Play,
            exp: NOW + 60,
            file: None,
        },
    );
    let mut setup_sub = request(Method::Setup, &format!("{sub}/trackID=1"));
    setup_sub
        .headers
        .set("Transport", "RTP/AVP/TCP;unicast;interleaved=4-5");
    setup_sub.headers.set("Session", "abcdef0123456789");
    let refused = reply(s.on_request(&setup_sub, NOW)).response;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.is_empty());
    let mut play_sub = request(Method::Play, &sub);
    play_sub.headers.set("Session", "abcdef0123456789");
    assert_eq!(
        reply(s.on_request(&play_sub, NOW)).response.status,
        StatusCode::FORBIDDEN
    );
}

#[test]
fn refused_publish_and_broken_sdp() {
    let publish = url(TokenOp::Publish, NOW + 60);
    let mut s = session();
    let mut announce = request(Method::Announce, &publish);
    announce.headers.set("Content-Type", "application/sdp");
    announce.body = bytes::Bytes::from_static(b"this is not sdp");
    assert_eq!(
        reply(s.on_request(&announce, NOW)).response.status,
        StatusCode::BAD_REQUEST
    );
    announce.headers.set("Content-Type", "text/plain");
    assert_eq!(
        reply(s.on_request(&announce, NOW)).response.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    announce.headers.set("Content-Type", "application/sdp");
    announce.body = bytes::Bytes::from_static(b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
    let Step::Need(Need::Publish { .. }) = s.on_request(&announce, NOW) else {
        panic!("a valid ANNOUNCE asks to publish");
    };
    let refused = reply(s.resume(Answer::Publish(Err(Refusal::PublisherExists))));
    assert_eq!(refused.response.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.state(), State::Init);
    // And the no-publisher DESCRIBE answer.
    let play = url(TokenOp::Play, NOW + 60);
    let Step::Need(_) = s.on_request(&request(Method::Describe, &play), NOW) else {
        panic!()
    };
    let r = reply(s.resume(Answer::Description(Err(Refusal::NoPublisher))));
    assert_eq!(r.response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.response.reason, "No Publisher");
}

/// A play URL for the replay of a recording.
fn replay_url() -> String {
    let grant = StreamGrant {
        uid: "952700000A5S348E".into(),
        channel: 0,
        stream_type: "replay".into(),
        op: TokenOp::Play,
        exp: NOW + 60,
        file: Some("/mnt/sda/Mp4Record/2022-01-10/RecS02_DST20220110_000107_000310_A.mp4".into()),
    };
    signer().sign_url("rtsp", "127.0.0.1", 8554, &grant)
}

/// A session of ffmpeg's recorded requests on `base` up to the first PLAY (exclusive), ready,
/// and the PLAY request with the session id.
fn ready_session(base: &str) -> (Session, RtspRequest) {
    let requests = requests(FFMPEG_PLAY, "rtsp://127.0.0.1:8554/live/x", base);
    let mut s = session();
    let Step::Need(Need::Description { .. }) = s.on_request(&requests[1], NOW) else {
        panic!("DESCRIBE must ask for the description");
    };
    reply(s.resume(Answer::Description(Ok(description()))));
    let setup = reply(s.on_request(&requests[2], NOW));
    let id = SessionHeader::parse(setup.response.headers.get("Session").unwrap()).unwrap();
    reply(s.on_request(&with_session(requests[3].clone(), &id.id), NOW));
    assert_eq!(s.state(), State::Ready);
    (s, with_session(requests[4].clone(), &id.id))
}

fn with_range(mut request: RtspRequest, range: &str) -> RtspRequest {
    request.headers.set("Range", range);
    request
}

#[test]
fn ffmpeg_seeking_a_replay_pauses_and_plays_with_a_range() {
    let (mut s, play) = ready_session(&replay_url());
    // ffmpeg's first PLAY says npt=0.000-: the replay is at its beginning, no seek.
    assert_eq!(play.headers.get("Range"), Some("npt=0.000-"));
    let Step::Need(Need::Play { .. }) = s.on_request(&play, NOW) else {
        panic!("the first PLAY from 0 plays without a seek");
    };
    let played = reply(s.resume(Answer::Play(Ok(()))));
    assert_eq!(played.response.headers.get("Range"), Some("npt=0.000-"));
    // `-ss 5`: PAUSE, then PLAY with the position.
    let mut pause = play.clone();
    pause.method = Method::Pause;
    assert_eq!(reply(s.on_request(&pause, NOW)).effect, Effect::StopViewer);
    let seek = with_range(play.clone(), "npt=5.000-");
    let Step::Need(Need::Seek { stream, start }) = s.on_request(&seek, NOW) else {
        panic!("PLAY with a Range on a replay seeks");
    };
    assert!(stream.file().is_some());
    assert_eq!(start, Duration::from_secs(5));
    let Step::Need(Need::Play { .. }) = s.resume(Answer::Seek(Ok(Duration::from_secs(5)))) else {
        panic!("after the seek the viewer is added");
    };
    let played = reply(s.resume(Answer::Play(Ok(()))));
    assert_eq!(played.response.status, StatusCode::OK);
    assert_eq!(played.response.headers.get("Range"), Some("npt=5.000-"));
    assert_eq!(s.state(), State::Playing);
    // A PLAY while playing seeks too, and answers with where the device continues (it seeks
    // in whole seconds); npt=0 is a seek now that the replay has moved on.
    for (range, asked, at, echo) in [
        ("npt=0:01:02.5-", 62_500, 62, "npt=62.000-"),
        ("npt=10-20", 10_000, 10, "npt=10.000-"),
        ("npt=0-", 0, 0, "npt=0.000-"),
    ] {
        let Step::Need(Need::Seek { start, .. }) =
            s.on_request(&with_range(play.clone(), range), NOW)
        else {
            panic!("{range} seeks");
        };
        assert_eq!(start, Duration::from_millis(asked), "{range}");
        let answer = reply(s.resume(Answer::Seek(Ok(Duration::from_secs(at)))));
        assert_eq!(answer.response.headers.get("Range"), Some(echo), "{range}");
        assert_eq!(answer.effect, Effect::None);
        assert_eq!(s.state(), State::Playing);
    }
    // `now` and an omitted start continue from where the replay is.
    for range in ["npt=now-", "npt=-20"] {
        let answer = reply(s.on_request(&with_range(play.clone(), range), NOW));
        assert_eq!(answer.response.status, StatusCode::OK, "{range}");
        assert_eq!(answer.response.headers.get("Range"), Some("npt=now-"));
    }
}

#[test]
fn bad_ranges_on_a_replay_are_refused_and_the_session_goes_on() {
    let (mut s, play) = ready_session(&replay_url());
    for bad in ["npt=abc-", "npt=20-10", "npt=0:61:00-", "npt=-"] {
        let answer = reply(s.on_request(&with_range(play.clone(), bad), NOW));
        assert_eq!(answer.response.status, StatusCode::INVALID_RANGE, "{bad}");
        assert!(!answer.close);
        assert_eq!(s.state(), State::Ready);
    }
    let clock = reply(s.on_request(&with_range(play.clone(), "clock=19961108T142300Z-"), NOW));
    assert_eq!(clock.response.status, StatusCode::HEADER_FIELD_NOT_VALID);
    assert_eq!(clock.response.headers.get("Accept-Ranges"), Some("npt"));
    // What the hub side refuses: beyond the end, not seekable, the device says no.
    for (refusal, status) in [
        (Refusal::RangeBeyondEnd, StatusCode::INVALID_RANGE),
        (Refusal::NotSeekable, StatusCode::HEADER_FIELD_NOT_VALID),
        (Refusal::DeviceRefusedSeek, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let Step::Need(Need::Seek { .. }) =
            s.on_request(&with_range(play.clone(), "npt=9000-"), NOW)
        else {
            panic!("a seek");
        };
        let answer = reply(s.resume(Answer::Seek(Err(refusal))));
        assert_eq!(answer.response.status, status, "{refusal:?}");
        assert_eq!(s.state(), State::Ready);
    }
    // Still playable.
    let Step::Need(Need::Play { .. }) = s.on_request(&play, NOW) else {
        panic!("PLAY after refusals");
    };
}

#[test]
fn a_live_stream_ignores_range_as_mediamtx_does() {
    let (mut s, play) = ready_session(&url(TokenOp::Play, NOW + 60));
    for range in ["npt=5.000-", "clock=19961108T142300Z-", "npt=garbage"] {
        let Step::Need(Need::Play { .. }) = s.on_request(&with_range(play.clone(), range), NOW)
        else {
            panic!("{range}: a live PLAY never seeks");
        };
        let played = reply(s.resume(Answer::Play(Ok(()))));
        assert_eq!(played.response.status, StatusCode::OK);
        assert_eq!(played.response.headers.get("Range"), Some("npt=0.000-"));
        let mut pause = play.clone();
        pause.method = Method::Pause;
        reply(s.on_request(&pause, NOW));
    }
    let Step::Need(Need::Play { .. }) = s.on_request(&play, NOW) else {
        panic!()
    };
    reply(s.resume(Answer::Play(Ok(()))));
    let again = reply(s.on_request(&with_range(play, "npt=30-"), NOW));
    assert_eq!(again.response.headers.get("Range"), Some("npt=0.000-"));
}
