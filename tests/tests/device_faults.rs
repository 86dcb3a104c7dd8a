//! A device that loses its network while viewers watch, over real sockets: the loadgen's
//! simulated camera reaches the server through a TCP relay on 127.0.0.2 (the same port numbers
//! as the server's device ports on 127.0.0.1), and the test plays the network: it cuts the
//! camera's stream connection, makes it silent (nothing forwarded, nothing closed), or cuts
//! every link and keeps the network down for a while. Two viewers watch throughout: ffmpeg
//! recording the stream, and the loadgen's RTSP viewer counting packets by RTP sequence number.
//! A cut resets the connections (RST both ways); a stream the device closes cleanly is its own
//! decision and is not resumed (`device_stream.rs` relies on that).
//!
//! - Stream connection cut, then silenced, while signalling stays up: the server asks for the
//!   stream again at once (or after the media timeout), the new connection continues it: the
//!   viewers keep their connection, no packet is missing from the sequence, the SSRC stays,
//!   and ffmpeg's recording runs on with timestamps that only grow.
//! - Every link cut, network back within the grace: the camera reconnects (its backoff), the
//!   server sends preview start on the new signalling link, the viewers go on.
//! - Every link cut, network down for longer than the grace: the viewers are closed.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loadgen::device::synthetic::{StreamShape, VideoSource};
use loadgen::device::EncryptPolicy;
use loadgen::fleet::provision::ProvisionTarget;
use loadgen::fleet::{device_uid, Fleet, FleetConfig};
use loadgen::report::{ViewerEnd, ViewerRecord};
use loadgen::rtsp_load::{self, LoadConfig, PlayTarget};
use signal::config::StreamEncryptMode;
use signal::tokens::TokenOp;
use tests::{require_tool, TestServer};

/// Where the camera sees the server: the network the test can cut.
const CAMERA_SIDE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Which of the camera's connections a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Keep-alive (61003) and signalling (61005).
    Control,
    /// Stream connections (61006, 61007).
    Stream,
}

/// One connection through the network: both sockets, whether it forwards, whether it is cut.
struct Pipe {
    link: Link,
    camera: TcpStream,
    server: TcpStream,
    state: Arc<PipeState>,
}

#[derive(Default)]
struct PipeState {
    frozen: AtomicBool,
    cut: AtomicBool,
}

/// The camera's network: a TCP relay per device port of the server.
struct Network {
    up: Arc<AtomicBool>,
    pipes: Arc<Mutex<Vec<Pipe>>>,
}

impl Network {
    /// Relays CAMERA_SIDE:port to the server's port for each device port of `server`.
    fn start(server: &TestServer) -> Network {
        let addrs = &server.server.addrs;
        let network = Network {
            up: Arc::new(AtomicBool::new(true)),
            pipes: Arc::new(Mutex::new(Vec::new())),
        };
        for (target, link) in [
            (addrs.keepalive, Link::Control),
            (addrs.signaling, Link::Control),
            (addrs.stream_tls, Link::Stream),
            (addrs.stream_tcp, Link::Stream),
        ] {
            let listener = TcpListener::bind((CAMERA_SIDE, target.port())).unwrap();
            let (up, pipes) = (network.up.clone(), network.pipes.clone());
            std::thread::spawn(move || {
                for camera in listener.incoming() {
                    let Ok(camera) = camera else { continue };
                    if !up.load(Ordering::SeqCst) {
                        // No route: the connection dies at once.
                        drop(camera);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let state = Arc::new(PipeState::default());
                    pump(
                        camera.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        &state,
                    );
                    pump(
                        server.try_clone().unwrap(),
                        camera.try_clone().unwrap(),
                        &state,
                    );
                    pipes.lock().unwrap().push(Pipe {
                        link,
                        camera,
                        server,
                        state,
                    });
                }
            });
        }
        network
    }

    /// Resets every connection of `links` at both ends (RST, as a router or NAT that lost the
    /// path answers): the sockets are closed with a zero linger once both pumps let go.
    fn cut(&self, links: &[Link]) {
        let mut pipes = self.pipes.lock().unwrap();
        pipes.retain(|pipe| {
            if !links.contains(&pipe.link) {
                return true;
            }
            for socket in [&pipe.camera, &pipe.server] {
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
            }
            pipe.state.cut.store(true, Ordering::SeqCst);
            false
        });
    }

    /// Stops forwarding on every connection of `link` without closing anything: the bytes
    /// stay in the socket buffers, as when a route disappears without a reset.
    fn freeze(&self, link: Link) {
        for pipe in self.pipes.lock().unwrap().iter() {
            if pipe.link == link {
                pipe.state.frozen.store(true, Ordering::SeqCst);
            }
        }
    }

    /// New connections are refused (closed at once) while down.
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends or the pipe is cut (then it drops its handles, and
/// the last one closes the socket); while frozen, reads nothing.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &Arc<PipeState>) {
    let state = state.clone();
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if state.cut.load(Ordering::SeqCst) {
                return;
            }
            if state.frozen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// One simulated camera (loadgen's) streaming synthetic H.264 at 25 fps, reaching the server's
/// device ports through `CAMERA_SIDE` and provisioning directly.
fn camera(server: &TestServer) -> Fleet {
    let config = FleetConfig {
        provision: ProvisionTarget {
            api: server.server.addrs.api,
            device_ip: server.server.addrs.api.ip(),
            api_token: None,
        },
        device_ip: IpAddr::V4(CAMERA_SIDE),
        first: 0,
        count: 1,
        ramp_per_sec: 100.0,
        heartbeat: Duration::from_secs(20),
        alarms_per_min: 0.0,
        encrypt: EncryptPolicy::Keyframes,
        source: VideoSource::Synthetic(StreamShape {
            bitrate_bps: 500_000,
            fps: 25,
            gop: 25,
            keyframe_ratio: 8,
        }),
        identities: None,
        shards: 1,
        sources: 1,
        keepalive_port: None,
        signaling_port: None,
        stamps: true,
        alarm_log: None,
    };
    let fleet = Fleet::start(config, None).unwrap();
    wait_until("the camera is online", Duration::from_secs(30), || {
        fleet.totals().online.load(Ordering::Relaxed) == 1
    });
    fleet
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Streams the camera has opened so far.
fn streams_started(fleet: &Fleet) -> u64 {
    fleet.totals().streams_started.load(Ordering::Relaxed)
}

/// The two viewers of one test: ffmpeg recording `seconds` of the stream into a Matroska
/// file, and a loadgen viewer playing it for as long.
struct Viewers {
    ffmpeg: Child,
    recording: tempfile::TempPath,
    loadgen: std::thread::JoinHandle<ViewerRecord>,
    started: Instant,
}

impl Viewers {
    fn start(server: &TestServer, seconds: u32) -> Viewers {
        require_tool("ffmpeg");
        let url = server.stream_url(&device_uid(0), TokenOp::Play, false);
        let recording = tempfile::Builder::new()
            .suffix(".mkv")
            .tempfile()
            .unwrap()
            .into_temp_path();
        let ffmpeg = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-y"])
            .args(["-rtsp_transport", "tcp", "-i", &url])
            .args(["-t", &seconds.to_string(), "-c", "copy", "-f", "matroska"])
            .arg(&recording)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ffmpeg starts");
        let target = PlayTarget::parse(&url).unwrap();
        let config = LoadConfig {
            targets: vec![target],
            viewers: 1,
            duration: Duration::from_secs(u64::from(seconds)),
            ramp_per_sec: 1.0,
            shards: 1,
            server_pid: None,
            progress: false,
            describe_retry: Duration::from_secs(10),
        };
        let loadgen = std::thread::spawn(move || {
            let mut outcome = rtsp_load::run(&config).unwrap();
            outcome.records.remove(0)
        });
        Viewers {
            ffmpeg,
            recording,
            loadgen,
            started: Instant::now(),
        }
    }

    /// Waits for both; ffmpeg's stderr and what ffprobe finds in its recording.
    fn finish(mut self) -> (ViewerRecord, String, Recording) {
        let record = self.loadgen.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ffmpeg.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.ffmpeg.kill();
                panic!("ffmpeg did not finish");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.ffmpeg.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let recording = probe(&self.recording);
        (record, stderr, recording)
    }
}

/// The video packets of a recording, as ffprobe reads them.
#[derive(Debug)]
struct Recording {
    /// Presentation times, seconds, in file order.
    pts: Vec<f64>,
}

impl Recording {
    fn span(&self) -> f64 {
        match (self.pts.first(), self.pts.last()) {
            (Some(first), Some(last)) => last - first,
            _ => 0.0,
        }
    }

    /// Every timestamp later than the one before: one source, no jump back. (ffmpeg writes its
    /// first packet without a timestamp of its own, as 0 like the second: it is skipped.)
    fn assert_increasing(&self) {
        let back: Vec<(usize, f64, f64)> = self
            .pts
            .windows(2)
            .skip(1)
            .enumerate()
            .filter(|(_, pair)| pair[1] <= pair[0])
            .map(|(i, pair)| (i, pair[0], pair[1]))
            .collect();
        assert!(
            back.is_empty(),
            "timestamps go back (index, before, after): {back:?}; first: {:?}",
            &self.pts[..self.pts.len().min(10)]
        );
    }
}

fn probe(file: &std::path::Path) -> Recording {
    let out = tests::run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.trim().trim_end_matches(',').parse().ok())
        .collect();
    Recording { pts }
}

/// `rop_previews_total{event}` on the server's /metrics.
fn previews(server: &TestServer, event: &str) -> f64 {
    let text = tests::curl(&[&format!("{}/metrics", server.api_url())]);
    let (_, samples) = tests::parse_prometheus(&String::from_utf8_lossy(&text.body));
    tests::prom_value(&samples, "rop_previews_total", &[("event", event)])
}

/// The viewers kept their connection and saw one source without a missing packet.
fn assert_kept_playing(record: &ViewerRecord, ffmpeg: &str, recording: &Recording, secs: f64) {
    eprintln!(
        "viewer: {} packets, {} lost, {} restarts, {:.1} s playing, {:?}\nffmpeg: {ffmpeg}\nrecording: {} packets over {:.1} s",
        record.packets,
        record.lost,
        record.restarts,
        record.playing_secs,
        record.end,
        recording.pts.len(),
        recording.span()
    );
    assert_eq!(record.end, ViewerEnd::RunEnded, "the viewer was cut off");
    assert!(record.ttfk_us.is_some(), "no keyframe");
    assert_eq!(record.restarts, 0, "the RTP source changed");
    assert_eq!(record.lost, 0, "packets missing from the RTP sequence");
    recording.assert_increasing();
    // The recording runs on through the outages: its video spans the whole run, not only the
    // time before the first fault (gaps included, since the timestamps follow the clock).
    assert!(
        recording.span() >= secs - 3.0,
        "recording spans {:.1} s of {secs} s",
        recording.span()
    );
    assert!(
        recording.pts.len() as f64 >= (secs - 6.0) * 25.0,
        "{} video packets in {secs} s",
        recording.pts.len()
    );
}

#[test]
fn stream_connection_cut_or_silent_resumes_for_the_same_viewers() {
    let server = TestServer::start_with(|c| {
        c.shards = Some(2);
        c.stream_encrypt_mode = StreamEncryptMode::Tls;
        c.device.stream_media_timeout_secs = 2;
    });
    let network = Network::start(&server);
    let fleet = camera(&server);
    let viewers = Viewers::start(&server, 16);
    wait_until("the stream is up", Duration::from_secs(20), || {
        streams_started(&fleet) == 1
    });

    // The stream connection breaks; the signalling link stays up.
    std::thread::sleep(Duration::from_secs(4));
    network.cut(&[Link::Stream]);
    wait_until("a second stream", Duration::from_secs(10), || {
        streams_started(&fleet) == 2
    });

    // Then the new one goes silent: nothing arrives, nothing is closed.
    std::thread::sleep(Duration::from_secs(3));
    network.freeze(Link::Stream);
    wait_until("a third stream", Duration::from_secs(10), || {
        streams_started(&fleet) == 3
    });

    let (record, ffmpeg, recording) = viewers.finish();
    assert_kept_playing(&record, &ffmpeg, &recording, 16.0);
    let outcome = fleet.stop().unwrap();
    assert_eq!(outcome.preview_starts, 3, "{outcome:?}");
    assert!(
        outcome.preview_stops >= 1,
        "the silent stream was stopped on the camera: {outcome:?}"
    );
    assert_eq!(previews(&server, "interrupted"), 2.0);
    assert_eq!(previews(&server, "resumed"), 2.0);
}

#[test]
fn network_lost_and_back_within_the_grace_resumes_for_the_same_viewers() {
    let server = TestServer::start_with(|c| {
        c.shards = Some(2);
        c.stream_encrypt_mode = StreamEncryptMode::EncryptTcp;
    });
    let network = Network::start(&server);
    let fleet = camera(&server);
    let viewers = Viewers::start(&server, 12);
    wait_until("the stream is up", Duration::from_secs(20), || {
        streams_started(&fleet) == 1
    });
    std::thread::sleep(Duration::from_secs(4));

    // Every link goes at once; the network is back a moment later, before the camera's first
    // reconnect attempt (half a second at the earliest).
    network.set_up(false);
    network.cut(&[Link::Control, Link::Stream]);
    std::thread::sleep(Duration::from_millis(300));
    network.set_up(true);
    wait_until("the stream is back", Duration::from_secs(10), || {
        streams_started(&fleet) == 2
    });

    let (record, ffmpeg, recording) = viewers.finish();
    assert_kept_playing(&record, &ffmpeg, &recording, 12.0);
    let outcome = fleet.stop().unwrap();
    assert_eq!(outcome.reconnects, 1, "{outcome:?}");
    // The second preview start may reach the camera on the dying link (it answers, then loses
    // its network before its stream connects): it is asked again on its new link.
    assert!((2..=3).contains(&outcome.preview_starts), "{outcome:?}");
    assert_eq!(previews(&server, "interrupted"), 1.0);
    assert_eq!(previews(&server, "resumed"), 1.0);
}

#[test]
fn network_down_for_longer_than_the_grace_closes_the_viewers() {
    let grace: u32 = 3;
    let server = TestServer::start_with(|c| {
        c.shards = Some(2);
        c.device.stream_grace_secs = u64::from(grace);
    });
    let network = Network::start(&server);
    let fleet = camera(&server);
    let viewers = Viewers::start(&server, 15);
    wait_until("the stream is up", Duration::from_secs(20), || {
        streams_started(&fleet) == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    network.set_up(false);
    network.cut(&[Link::Control, Link::Stream]);
    let cut_after = viewers.started.elapsed().as_secs_f64();

    let (record, ffmpeg, recording) = viewers.finish();
    eprintln!(
        "viewer: {:.1} s playing, {:?}\nffmpeg: {ffmpeg}\nrecording: {} packets over {:.1} s",
        record.playing_secs,
        record.end,
        recording.pts.len(),
        recording.span()
    );
    assert!(
        matches!(record.end, ViewerEnd::Disconnected(_)),
        "the server closed the viewer: {:?}",
        record.end
    );
    // Closed once the grace was over, not before.
    assert!(
        record.playing_secs >= cut_after + f64::from(grace) - 1.5,
        "closed {:.1} s after PLAY, the network went {cut_after:.1} s after the start",
        record.playing_secs
    );
    assert!(
        recording.span() < 12.0,
        "ffmpeg's recording ended with the stream"
    );
    recording.assert_increasing();
    assert_eq!(previews(&server, "interrupted"), 1.0);
    assert_eq!(previews(&server, "resumed"), 0.0);
    network.set_up(true);
    let outcome = fleet.stop().unwrap();
    // (A preview start may have crossed the cut on the dying signalling link.)
    assert_eq!(outcome.streams_started, 1, "{outcome:?}");
}
