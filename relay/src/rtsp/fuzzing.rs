//! Entry point of the fuzz target `rtsp_session` (fuzz/fuzz_targets/rtsp_session.rs); not an API.
//! Arbitrary bytes are demuxed as a client's connection stream and driven through a [`Session`]
//! the way the connection drives it, with hub answers taken from the input. Tokens cannot be
//! guessed by a fuzzer, so the placeholders `PLAYURL`, `REPLAYURL` (a recording's replay, which
//! seeks on PLAY with a Range) and `PUBURL` in the input become valid play and publish URLs,
//! which lets it reach every state. Properties beyond "no panic": every request
//! gets exactly one response carrying its CSeq (when it sent a valid one), a final status, and
//! the states only change as the state machine documents.
#![forbid(unsafe_code)]

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use signal::tokens::{StreamGrant, TokenOp, TokenSigner};

use super::session::{Answer, FrameAction, Need, Refusal, Session, SessionConfig, State, Step};
use crate::hub::{StreamDescription, TrackKind};
use crate::proto::interleaved::{Demuxed, Demuxer};
use crate::proto::rtsp::{Method, RtspMessage};

const NOW: u64 = 1_700_000_000;
/// The recording `REPLAYURL` names.
const RECORDING: &str =
    "/mnt/sda/Mp4Record/2022-01-10/RecS02_DST20220110_000107_000310_2B14808_3F6F88.mp4";

fn url(signer: &TokenSigner, op: TokenOp, file: Option<&str>) -> String {
    let grant = StreamGrant {
        uid: "952700000A5S348E".into(),
        channel: 0,
        stream_type: if file.is_some() {
            "replay"
        } else {
            "mainStream"
        }
        .into(),
        op,
        exp: NOW + 60,
        file: file.map(str::to_owned),
    };
    signer.sign_url("rtsp", "127.0.0.1", 8554, &grant)
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// See the module documentation. The first byte chooses the hub's answers.
pub fn rtsp_session(data: &[u8]) {
    drive(data);
}

/// Runs the input and returns the states the session went through.
fn drive(data: &[u8]) -> Vec<State> {
    let mut visited = Vec::new();
    let Some((&choices, stream)) = data.split_first() else {
        return visited;
    };
    let signer = TokenSigner::new([5; 32]);
    // REPLAYURL first: it contains PLAYURL.
    let replay = url(&signer, TokenOp::Play, Some(RECORDING));
    let stream = replace(stream, b"REPLAYURL", replay.as_bytes());
    let stream = replace(
        &stream,
        b"PLAYURL",
        url(&signer, TokenOp::Play, None).as_bytes(),
    );
    let stream = replace(
        &stream,
        b"PUBURL",
        url(&signer, TokenOp::Publish, None).as_bytes(),
    );
    let mut session = Session::new("fuzz0123".into(), SessionConfig::default(), signer);
    let mut demuxer = Demuxer::default();
    let mut buf = BytesMut::from(&stream[..]);
    let description = Rc::new(StreamDescription {
        sdp: "v=0\r\n".into(),
        tracks: vec![TrackKind::Video, TrackKind::Audio],
    });
    let mut turn = 0u32;
    loop {
        let item = match demuxer.feed_bytes(&mut buf) {
            Ok(Some(item)) => item,
            Ok(None) | Err(_) => return visited,
        };
        turn += 1;
        let refuse = choices & (1 << (turn % 8)) != 0;
        match item {
            Demuxed::Rtsp(RtspMessage::Request(request)) => {
                let before = session.state();
                let mut step = session.on_request(&request, NOW);
                let mut needs = 0;
                let reply = loop {
                    let need = match step {
                        Step::Reply(reply) => break reply,
                        Step::Need(need) => need,
                    };
                    needs += 1;
                    assert!(needs <= 2, "a request needs at most a seek and a viewer");
                    {
                        let answer = match need {
                            Need::Description { .. } => Answer::Description(if refuse {
                                Err(Refusal::NoPublisher)
                            } else {
                                Ok(description.clone())
                            }),
                            Need::Publish { description, .. } => {
                                assert!(!description.tracks.is_empty());
                                Answer::Publish(if refuse {
                                    Err(Refusal::PublisherExists)
                                } else {
                                    Ok(())
                                })
                            }
                            Need::Play { channels, .. } => {
                                assert!(!channels.is_empty(), "PLAY without a set-up track");
                                Answer::Play(if refuse {
                                    Err(Refusal::TooManyViewers)
                                } else {
                                    Ok(())
                                })
                            }
                            Need::Seek { stream, start } => {
                                assert!(stream.file().is_some(), "seek of a live stream");
                                Answer::Seek(if refuse {
                                    Err(Refusal::DeviceRefusedSeek)
                                } else {
                                    Ok(Duration::from_secs(start.as_secs()))
                                })
                            }
                        };
                        step = session.resume(answer);
                    }
                };
                let status = reply.response.status.0;
                assert!((200..600).contains(&status), "status {status}");
                // The response echoes the request's CSeq as sent ("0123" stays "0123"), so
                // compare the numbers.
                if let Ok(Some(cseq)) = request.headers.cseq() {
                    assert_eq!(reply.response.headers.cseq(), Ok(Some(cseq)));
                }
                let after = session.state();
                if visited.last() != Some(&after) {
                    visited.push(after);
                }
                if status != 200 {
                    assert!(
                        after == before || after == State::Init,
                        "{before:?} -> {after:?} on {status}"
                    );
                }
                if request.method == Method::Teardown && status == 200 {
                    assert_eq!(after, State::Init);
                }
                if after == State::Recording {
                    assert!(matches!(before, State::Announced | State::Recording));
                }
                if after == State::Announced {
                    assert!(matches!(
                        before,
                        State::Init | State::Announced | State::Recording
                    ));
                }
                if after == State::Playing {
                    assert!(matches!(before, State::Ready | State::Playing));
                }
            }
            Demuxed::Rtsp(RtspMessage::Response(_)) => {}
            Demuxed::Interleaved { channel, payload } => {
                let action = session.on_frame(channel, &payload);
                match (session.state(), action) {
                    (State::Init, action) => assert_eq!(action, FrameAction::Reject),
                    (State::Recording, _) => {}
                    (_, action) => assert_eq!(action, FrameAction::Ignore),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG_RECORD: &str = include_str!("../../testdata/ffmpeg_announce_h264_aac.txt");
    const FFMPEG_RECORD_DATA: &[u8] =
        include_bytes!("../../testdata/ffmpeg_record_h264_aac_interleaved.bin");
    const GST_PLAY: &str = include_str!("../../testdata/gstreamer_setup_tcp.txt");
    const FFMPEG_PLAY: &str = include_str!("../../testdata/ffmpeg_play_requests.txt");

    fn seeds() -> Vec<Vec<u8>> {
        let publish = FFMPEG_RECORD.replace("rtsp://127.0.0.1:8554/live/x", "PUBURL");
        let publish = publish.replace("Session: 12345678", "Session: fuzz0123");
        let mut publish = publish.into_bytes();
        publish.extend_from_slice(FFMPEG_RECORD_DATA);
        publish
            .extend_from_slice(b"TEARDOWN PUBURL RTSP/1.0\r\nCSeq: 9\r\nSession: fuzz0123\r\n\r\n");
        let play = GST_PLAY
            .replace("rtsp://127.0.0.1:8554/live/x", "PLAYURL")
            .replace("Session: 12345678", "Session: fuzz0123");
        let mut play = play.into_bytes();
        play.extend_from_slice(
            b"$\x01\x00\x02rrPAUSE PLAYURL RTSP/1.0\r\nCSeq: 9\r\nSession: fuzz0123\r\n\r\n",
        );
        // ffmpeg's `-ss 5` on a recording: PLAY from the beginning, PAUSE, PLAY with the seek.
        let replay = FFMPEG_PLAY
            .replace("rtsp://127.0.0.1:8554/live/x", "REPLAYURL")
            .replace("Session: 12345678", "Session: fuzz0123");
        let mut replay = replay.into_bytes();
        replay.extend_from_slice(
            b"PAUSE REPLAYURL/ RTSP/1.0\r\nCSeq: 6\r\nSession: fuzz0123\r\n\r\n\
              PLAY REPLAYURL/ RTSP/1.0\r\nRange: npt=5.000-\r\nCSeq: 7\r\nSession: fuzz0123\r\n\r\n",
        );
        vec![publish, play, replay]
    }

    #[test]
    fn entry_point_on_recorded_exchanges_and_mutations() {
        for seed in seeds() {
            for choices in [0u8, 0xff, 0x55] {
                let mut input = vec![choices];
                input.extend_from_slice(&seed);
                rtsp_session(&input);
                for cut in (1..input.len()).step_by(37) {
                    rtsp_session(&input[..cut]);
                    let mut flipped = input.clone();
                    flipped[cut] ^= 0x20;
                    rtsp_session(&flipped);
                }
            }
        }
    }

    #[test]
    fn recorded_publish_reaches_recording() {
        // The seed is only useful if it drives the machine through every publish state.
        let [publish, play, replay] = &seeds()[..] else {
            panic!("three seeds");
        };
        let run = |seed: &[u8]| drive(&[0].iter().chain(seed).copied().collect::<Vec<_>>());
        assert_eq!(
            run(publish),
            vec![State::Init, State::Announced, State::Recording, State::Init]
        );
        assert_eq!(
            run(play),
            vec![State::Init, State::Ready, State::Playing, State::Ready]
        );
        assert_eq!(
            run(replay),
            vec![
                State::Init,
                State::Ready,
                State::Playing,
                State::Ready,
                State::Playing
            ]
        );
    }
}
