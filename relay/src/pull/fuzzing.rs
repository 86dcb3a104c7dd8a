//! Entry point of the fuzz target `pull_client` (fuzz/fuzz_targets/pull_client.rs); not an API.
//! Arbitrary bytes are demuxed as what a pull source sends back and fed to a [`ClientSession`]
//! the way the pull connection feeds it: each response to `on_response`, each `$` frame to
//! `track_of_channel`, a keepalive after PLAY. Properties beyond "no panic": a request returned is
//! always one the session may send in its state, CSeq grows by one per request, and media mode
//! requests never carry the header rules.
#![forbid(unsafe_code)]

use bytes::BytesMut;
use signal::sources::HeaderRule;

use super::client::{ClientSession, ClientState, ClientStep};
use crate::proto::interleaved::{Demuxed, Demuxer};
use crate::proto::rtsp::{Method, RtspMessage, RtspRequest};

fn check(request: &RtspRequest, state: ClientState, last_cseq: &mut u32) {
    let cseq: u32 = request.headers.get("CSeq").unwrap().parse().unwrap();
    assert_eq!(cseq, *last_cseq + 1, "CSeq grows by one per request");
    *last_cseq = cseq;
    let expected = match state {
        ClientState::Options => Method::Options,
        ClientState::Describe => Method::Describe,
        ClientState::Setup(_) => Method::Setup,
        ClientState::Play => Method::Play,
        ClientState::Playing => {
            assert_eq!(
                request.headers.get("X-Rule"),
                None,
                "no rules in media mode"
            );
            return;
        }
        other => panic!("request sent in state {other:?}"),
    };
    assert_eq!(request.method, expected);
    assert_eq!(request.headers.get("X-Rule"), Some("on"));
}

pub fn pull_client(data: &[u8]) {
    drive(data);
}

/// Drives the session over `data`; returns the state it ended in.
fn drive(data: &[u8]) -> ClientState {
    let rules = [
        HeaderRule {
            name: "Nonce".into(),
            value: None,
            counter: Some(0),
        },
        HeaderRule {
            name: "X-Rule".into(),
            value: Some("on".into()),
            counter: None,
        },
    ];
    let mut client = ClientSession::new("rtsp://user:pass@cam:554/live", &rules, "cn".into())
        .expect("a valid URL");
    let mut last_cseq = 0;
    let first = client.start();
    check(&first, ClientState::Options, &mut last_cseq);
    let mut demuxer = Demuxer::default();
    let mut buf = BytesMut::from(data);
    loop {
        let item = match demuxer.feed_bytes(&mut buf) {
            Ok(Some(item)) => item,
            Ok(None) | Err(_) => return client.state(),
        };
        match item {
            Demuxed::Rtsp(RtspMessage::Response(response)) => match client.on_response(&response) {
                Ok(ClientStep::Send(request)) => check(&request, client.state(), &mut last_cseq),
                Ok(ClientStep::Playing(description)) => {
                    assert_eq!(client.state(), ClientState::Playing);
                    assert!(!description.tracks.is_empty());
                    if let Some(keepalive) = client.keepalive() {
                        check(&keepalive, ClientState::Playing, &mut last_cseq);
                    }
                }
                Ok(ClientStep::Nothing) => {}
                Err(_) => return client.state(),
            },
            Demuxed::Rtsp(RtspMessage::Request(_)) => {}
            Demuxed::Interleaved { channel, .. } => {
                let _ = client.track_of_channel(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    const SEED: &[u8] = include_bytes!("../../../fuzz/seeds/pull_client/handshake_digest.bin");

    #[test]
    fn seed_and_mutations_hold_the_properties() {
        assert_eq!(super::drive(SEED), super::ClientState::Playing);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for _ in 0..3000 {
            let mut data = SEED.to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..data.len());
                match rng.gen_range(0..3) {
                    0 => data[at] = rng.gen(),
                    1 => {
                        data.remove(at);
                    }
                    _ => data.insert(at, rng.gen()),
                }
            }
            super::pull_client(&data);
        }
    }
}
