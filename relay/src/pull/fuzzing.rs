//! Entry point of the fuzz target `pull_client` (fuzz/fuzz_targets/pull_client.rs); not an API.
//! Arbitrary bytes are demuxed as what a pull source sends back and fed to a [`ClientSession`]
//! the way the pull connection feeds it: each response to `on_response`, each `$` frame to
//! `track_of_channel`, a keepalive after PLAY. Each input is driven twice: with TCP interleaved
//! transport and with UDP (port pairs given when the session asks, [`ClientStep::BindUdp`]).
//! Properties beyond "no panic": a request returned is always one the session may send in its
//! state, CSeq grows by one per request, a SETUP asks for the configured transport (UDP: the
//! ports given), and media mode requests never carry the header rules.
#![forbid(unsafe_code)]

use bytes::BytesMut;
use signal::sources::{HeaderRule, PullTransport};

use super::client::{ClientSession, ClientState, ClientStep};
use crate::proto::interleaved::{Demuxed, Demuxer};
use crate::proto::rtsp::{LowerTransport, Method, RtspMessage, RtspRequest};

/// The RTP port given to track `n` when UDP ports are asked for.
fn udp_port(track: usize) -> u16 {
    5000 + 2 * track as u16
}

fn check(request: &RtspRequest, state: ClientState, transport: PullTransport, last_cseq: &mut u32) {
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
    if let ClientState::Setup(track) = state {
        let asked = request
            .headers
            .transports()
            .expect("our own Transport parses");
        assert_eq!(asked.len(), 1);
        match transport {
            PullTransport::Tcp => assert_eq!(asked[0].lower, LowerTransport::Tcp),
            PullTransport::Udp => {
                assert_eq!(asked[0].lower, LowerTransport::Udp);
                assert_eq!(asked[0].client_port.map(|p| p.rtp), Some(udp_port(track)));
            }
        }
    }
}

pub fn pull_client(data: &[u8]) {
    drive(data, PullTransport::Tcp);
    drive(data, PullTransport::Udp);
}

/// Drives the session over `data`; returns the state it ended in.
fn drive(data: &[u8], transport: PullTransport) -> ClientState {
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
        .expect("a valid URL")
        .with_transport(transport);
    let mut last_cseq = 0;
    let first = client.start();
    check(&first, ClientState::Options, transport, &mut last_cseq);
    let mut demuxer = Demuxer::default();
    let mut buf = BytesMut::from(data);
    loop {
        let item = match demuxer.feed_bytes(&mut buf) {
            Ok(Some(item)) => item,
            Ok(None) | Err(_) => return client.state(),
        };
        match item {
            Demuxed::Rtsp(RtspMessage::Response(response)) => match client.on_response(&response) {
                Ok(ClientStep::Send(request)) => {
                    check(&request, client.state(), transport, &mut last_cseq)
                }
                Ok(ClientStep::BindUdp { tracks }) => {
                    assert_eq!(transport, PullTransport::Udp);
                    assert_eq!(client.state(), ClientState::BindPorts);
                    assert!((1..=crate::hub::MAX_TRACKS).contains(&tracks));
                    let ports: Vec<u16> = (0..tracks).map(udp_port).collect();
                    let setup = client.udp_ports_bound(&ports).expect("ports in turn");
                    check(&setup, client.state(), transport, &mut last_cseq);
                }
                Ok(ClientStep::Playing(description)) => {
                    assert_eq!(client.state(), ClientState::Playing);
                    assert!(!description.tracks.is_empty());
                    if transport == PullTransport::Udp {
                        for track in 0..description.tracks.len() {
                            assert!(client.udp_peer(track).is_some(), "every track set up");
                        }
                    }
                    if let Some(keepalive) = client.keepalive() {
                        check(&keepalive, ClientState::Playing, transport, &mut last_cseq);
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

    use super::{ClientState, PullTransport};

    const SEED: &[u8] = include_bytes!("../../../fuzz/seeds/pull_client/handshake_digest.bin");
    const UDP_SEED: &[u8] = include_bytes!("../../../fuzz/seeds/pull_client/handshake_udp.bin");

    #[test]
    fn seed_and_mutations_hold_the_properties() {
        assert_eq!(super::drive(SEED, PullTransport::Tcp), ClientState::Playing);
        assert_eq!(
            super::drive(UDP_SEED, PullTransport::Udp),
            ClientState::Playing
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for i in 0..3000 {
            let mut data = if i % 2 == 0 { SEED } else { UDP_SEED }.to_vec();
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
