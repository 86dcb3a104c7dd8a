//! The loadgen's device and viewer modes against a running server, over real sockets: 20
//! simulated cameras provision through the client API and the provisioning ports, come online on
//! both links, and one of them streams (synthetic H.264 with SEI send stamps) when a viewer plays
//! the URL the client API handed out; the viewer sees a keyframe, no loss, and frame latency
//! measured from the stamps. A second run with the same identity directory provisions nothing.

use std::time::{Duration, Instant};

use loadgen::device::synthetic::{StreamShape, VideoSource};
use loadgen::device::EncryptPolicy;
use loadgen::fleet::provision::ProvisionTarget;
use loadgen::fleet::{device_uid, play_targets, Fleet, FleetConfig};
use loadgen::report::{Summary, ViewerEnd};
use loadgen::rtsp_load::{self, LoadConfig};
use tests::TestServer;

const DEVICES: usize = 20;

fn fleet_config(server: &TestServer, identities: &std::path::Path) -> FleetConfig {
    let ip = server.server.addrs.api.ip();
    FleetConfig {
        provision: ProvisionTarget {
            api: server.server.addrs.api,
            device_ip: ip,
            api_token: None,
        },
        device_ip: ip,
        first: 0,
        count: DEVICES,
        ramp_per_sec: 200.0,
        heartbeat: Duration::from_secs(20),
        alarms_per_min: 0.0,
        encrypt: EncryptPolicy::Keyframes,
        source: VideoSource::Synthetic(StreamShape {
            bitrate_bps: 500_000,
            fps: 25,
            gop: 25,
            keyframe_ratio: 8,
        }),
        identities: Some(identities.to_owned()),
        shards: 1,
        sources: 2,
        // Registration names the ports the test server bound (it listens on port 0).
        keepalive_port: None,
        signaling_port: None,
        stamps: true,
        alarm_log: None,
    }
}

fn wait_online(fleet: Fleet, devices: u64) -> Fleet {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet
        .totals()
        .online
        .load(std::sync::atomic::Ordering::Relaxed)
        < devices
    {
        if Instant::now() > deadline {
            let outcome = fleet.stop().unwrap();
            panic!("only some of {devices} devices came online: {outcome:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet
}

#[test]
fn twenty_devices_come_online_and_one_stream_is_viewed_with_latency() {
    let server = TestServer::start_with(|c| c.shards = Some(1));
    let identities = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(fleet_config(&server, identities.path()), None).unwrap();
    let fleet = wait_online(fleet, DEVICES as u64);

    let api = fleet_config(&server, identities.path()).provision;
    let targets = play_targets(
        &api,
        &[device_uid(3)],
        "mainStream",
        Duration::from_secs(20),
    )
    .unwrap();
    let outcome = rtsp_load::run(&LoadConfig {
        targets,
        viewers: 1,
        duration: Duration::from_secs(4),
        ramp_per_sec: 1.0,
        shards: 1,
        server_pid: None,
        progress: false,
        describe_retry: Duration::from_secs(10),
    })
    .unwrap();
    let viewer = &outcome.records[0];
    assert_eq!(viewer.end, ViewerEnd::RunEnded, "{viewer:?}");
    assert!(viewer.ttfk_us.is_some(), "no keyframe: {viewer:?}");
    assert_eq!(viewer.lost, 0);
    let summary = Summary::compute(1, &outcome.records, &outcome.samples, 0.0);
    // About 3 s of 25 fps after the first keyframe, each frame stamped.
    assert!(summary.latency_ms.count >= 25, "{:?}", summary.latency_ms);
    assert!(summary.latency_ms.max > 0.0);

    let result = fleet.stop().unwrap();
    assert_eq!(result.came_online, DEVICES);
    assert!(result.all_online_secs.is_some());
    assert_eq!(result.provisioned, DEVICES as u64);
    assert_eq!(result.from_cache, 0);
    assert_eq!(result.reconnects, 0, "{:?}", result.error_kinds);
    assert_eq!(result.preview_starts, 1);
    assert_eq!(result.streams_started, 1);
    assert!(result.frames_sent >= 25);

    // The same identities again: nobody provisions, everybody comes online.
    let fleet = Fleet::start(fleet_config(&server, identities.path()), None).unwrap();
    let fleet = wait_online(fleet, DEVICES as u64);
    let again = fleet.stop().unwrap();
    assert_eq!(again.provisioned, 0);
    assert_eq!(again.from_cache, DEVICES as u64);
    assert_eq!(again.came_online, DEVICES);
}
