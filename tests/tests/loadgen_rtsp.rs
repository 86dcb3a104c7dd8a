//! The loadgen's generic RTSP mode against the relay over real sockets, as `loadgen rtsp
//! --publisher loadgen --streams 2 --viewers-per-stream 2` runs it against any server: its own
//! publishers push synthetic H.264 with SEI send stamps to two signed publish URLs
//! (ANNOUNCE/SETUP/RECORD), and two viewers per stream play them with no loss, a keyframe each
//! and frame latency measured from the stamps.

use std::time::Duration;

use loadgen::device::synthetic::StreamShape;
use loadgen::report::{Summary, ViewerEnd};
use loadgen::rtsp_load::{self, LoadConfig, PlayTarget};
use loadgen::rtsp_publish::{PublishConfig, Publishers};
use signal::tokens::TokenOp;
use tests::TestServer;

#[test]
fn loadgen_publishes_two_streams_and_viewers_measure_latency() {
    let server = TestServer::start_with(|c| c.shards = Some(1));
    let uids = ["PEER0", "PEER1"];
    let targets = |op| -> Vec<PlayTarget> {
        uids.iter()
            .map(|uid| PlayTarget::parse(&server.stream_url(uid, op, false)).unwrap())
            .collect()
    };
    let publishers = Publishers::start(PublishConfig {
        targets: targets(TokenOp::Publish),
        shape: StreamShape {
            bitrate_bps: 500_000,
            fps: 25,
            gop: 25,
            keyframe_ratio: 8,
        },
        ramp_per_sec: 10.0,
        stamps: true,
    })
    .unwrap();
    let plays = targets(TokenOp::Play);
    for target in &plays {
        rtsp_load::wait_until_playable(target, Duration::from_secs(10)).unwrap();
    }
    let outcome = rtsp_load::run(&LoadConfig {
        targets: plays,
        viewers: 4,
        duration: Duration::from_secs(4),
        ramp_per_sec: 20.0,
        shards: 1,
        server_pid: None,
        progress: false,
        describe_retry: Duration::ZERO,
    })
    .unwrap();
    let records = publishers.stop().unwrap();

    for viewer in &outcome.records {
        assert_eq!(viewer.end, ViewerEnd::RunEnded, "{viewer:?}");
        assert!(viewer.ttfk_us.is_some(), "no keyframe: {viewer:?}");
        assert_eq!(viewer.lost, 0, "{viewer:?}");
        // Live frames sent after PLAY, stamped and measured.
        let frames = viewer.latency_us.as_ref().map_or(0, |h| h.len());
        assert!(
            frames >= 25,
            "viewer {} measured {frames} frames",
            viewer.id
        );
    }
    let summary = Summary::compute(4, &outcome.records, &outcome.samples, 0.0);
    assert_eq!(summary.viewers_with_keyframe, 4);
    assert!(summary.latency_ms.max > 0.0);
    assert_eq!(records.len(), 2);
    for publisher in &records {
        assert_eq!(
            (publisher.sessions, publisher.failures),
            (1, 0),
            "{publisher:?}"
        );
        assert!(publisher.frames >= 100, "{publisher:?}");
    }
}
