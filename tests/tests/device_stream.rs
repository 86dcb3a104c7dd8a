//! Live video from a device to an RTSP viewer through a running server, over real sockets:
//! a simulated camera provisions, opens its signalling link, and answers the preview start that
//! a viewer's DESCRIBE triggers by opening a stream connection in the requested mode (61006
//! mutual TLS; 61007 encryptTCP with every frame encrypted, with only keyframes encrypted, or
//! plain TCP) and streaming a real clip with its audio (H.264 + AAC, and H.265 + AAC) twice,
//! then hanging up. An ffmpeg viewer records what the relay sends through the play URL; ffprobe
//! counts the recording's frames against what the camera sent and checks the codec parameters.
//! Once the viewer is gone for the linger time the server sends preview stop.
//!
//! Also over real sockets: the 503 reasons a viewer gets (device offline, preview refused, no
//! media in time), and a sleeping battery camera (keep-alive link only) woken with 460 before
//! its preview, with the time to its first keyframe shown in the device's presence.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use loadgen::device::clip::{AudioClip, ClipPlayer, VideoClip};
use loadgen::device::{preview_start_reply, EncryptPolicy, StreamDevice};
use loadgen::sei::FrameStamp;
use relay::proto::media::Codec;
use relay::proto::media::{FrameKind, MediaFrame};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{json, Value};
use signal::config::StreamEncryptMode;
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{
    BatteryState, BodyMessage, Capabilities, ChannelCapabilities, Handshake, Heartbeat,
    PreviewStart, PreviewStartReply, RecordFile, RecordingSpan, ReplaySeek, ReplayStart,
    StreamMode, VideoCodecId,
};
use signal::proto::core_packet::{cmd, CoreHeader, CorePacket};
use signal::session::sim::SimDevice;
use signal::tokens::TokenOp;
use tests::{run, TestServer};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const FPS: u32 = 25;

fn exchange(stream: &mut impl ReadWriteAll, method: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response head");
    assert!(head.contains(" 200 "), "{head}\n{body}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

trait ReadWriteAll: Read + Write {}
impl<T: Read + Write> ReadWriteAll for T {}

fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

#[derive(Clone)]
struct Device {
    uid: String,
    ca: String,
    cert: String,
    key: String,
    keys: AccessKeyPair,
}

impl Device {
    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        pki::client_config_for_device(&self.ca, &self.cert, &self.key).unwrap()
    }
}

fn provision(server: &TestServer, uid: &str) -> Device {
    let mut api = TcpStream::connect(server.server.addrs.api).unwrap();
    api.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let session = exchange(
        &mut api,
        "POST",
        "/v1.0/devices/initialization-session",
        &json!({ "uid": uid }),
    );
    let ca = server.server.pki.ca_pem().to_owned();
    let trusting = pki::client_config_trusting(&ca).unwrap();
    let credentials = exchange(
        &mut tls_connect(server.server.addrs.credentials, trusting),
        "POST",
        "/v1.0/devices/credetials",
        &json!({ "uid": uid, "code": session["code"] }),
    );
    let cert = credentials["cert"].as_str().unwrap().to_owned();
    let key = credentials["key"].as_str().unwrap().to_owned();
    let device_tls = pki::client_config_for_device(&ca, &cert, &key).unwrap();
    let registration = exchange(
        &mut tls_connect(server.server.addrs.registration, device_tls),
        "POST",
        "/v1.0/devices/registration",
        &json!({ "uid": uid }),
    );
    Device {
        uid: uid.to_owned(),
        ca,
        cert,
        key,
        keys: AccessKeyPair {
            access_key: registration["accesskey"].as_str().unwrap().to_owned(),
            secret: registration["secretAccesskey"].as_str().unwrap().to_owned(),
        },
    }
}

fn handshake(uid: &str) -> Handshake {
    Handshake {
        uid: uid.to_owned(),
        family: None,
        model: Some("RLC-810A".into()),
        firmware: Some("v3.1.0.956".into()),
        network_type: Some("wired".into()),
        carrier: None,
    }
}

fn battery_handshake(uid: &str) -> Handshake {
    Handshake {
        family: Some("battery".into()),
        model: Some("Argus 3".into()),
        ..handshake(uid)
    }
}

fn play_url(server: &TestServer, uid: &str) -> String {
    server.stream_url(uid, TokenOp::Play, false)
}

/// What a camera streams: a video fixture of the loadgen with the AAC fixture beside it.
#[derive(Debug, Clone, Copy)]
struct Fixture {
    codec: Codec,
    file: &'static str,
    /// The codec the camera names in its preview start reply.
    reply_codec: VideoCodecId,
    /// ffprobe's name of the codec.
    probe_name: &'static str,
}

const H264_AAC: Fixture = Fixture {
    codec: Codec::H264,
    file: "ropdev_h264_3s.264",
    reply_codec: VideoCodecId::H264,
    probe_name: "h264",
};

const H265_AAC: Fixture = Fixture {
    codec: Codec::H265,
    file: "ropdev_h265_3s.265",
    reply_codec: VideoCodecId::H265,
    probe_name: "hevc",
};

/// Times the camera plays its clip (3 s each) before it hangs up.
const PASSES: usize = 2;

fn testdata(file: &str) -> Bytes {
    let path = format!("{}/../loadgen/testdata/{file}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

impl Fixture {
    fn video(&self) -> Arc<VideoClip> {
        Arc::new(VideoClip::from_annex_b(self.codec, testdata(self.file)).unwrap())
    }

    fn audio(&self) -> Arc<AudioClip> {
        Arc::new(AudioClip::from_adts(testdata("ropdev_aac_16k_3s.aac")).unwrap())
    }
}

/// What the simulated camera saw and did.
#[derive(Debug)]
enum DeviceEvent {
    PreviewStart(PreviewStart),
    StreamHandshakeOk,
    /// The camera sent its clip `PASSES` times and hung up: frames sent.
    StreamSent {
        video: usize,
        audio: usize,
    },
    PreviewStop {
        stream_id: u32,
    },
    KeyframeRequest,
    WakeUp,
    ReplayStart(ReplayStart),
    ReplayStop(RecordFile),
    ReplaySeek(ReplaySeek),
}

/// A seek the camera accepted for one of its replays: (seek sequence, position in seconds
/// from the recording's start), taken by the replay's stream thread.
type SeekSlot = Arc<std::sync::Mutex<Option<(u32, u32)>>>;

/// How the simulated camera answers preview start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Accepts and streams in the asked mode.
    Streams,
    /// Answers preview start with 400.
    RefusesPreview,
    /// Accepts preview start but never connects a stream.
    NeverStreams,
    /// Streams, and announces sleep 233 on its signalling link right after its handshake (a
    /// battery camera with this keeps its signalling link up while asleep).
    AnnouncesSleep,
}

/// A simulated camera.
#[derive(Clone)]
struct Camera {
    device: Device,
    encrypted: EncryptPolicy,
    behaviour: Behaviour,
    /// Its handshakes say family `battery`.
    battery: bool,
    /// What it streams.
    fixture: Fixture,
    /// Its first preview plays the clip this many times and hangs up (the test counts what
    /// arrives); later ones, and all when None, stream until the server stops them.
    first_passes: Option<usize>,
    /// encryptTCP: damage three of its frames on the way ([`TAMPERED`]).
    tamper: bool,
}

/// Damages the bytes of one media frame on an encryptTCP link.
type Damage = fn(&[u8]) -> Vec<u8>;

/// Video frames damaged on the way when a camera tampers: a flipped ciphertext bit, a broken
/// HMAC trailer, a replayed frame. The first two are lost with the P-frames up to the next
/// keyframe (every 25th frame); the replay costs nothing.
const TAMPERED: [(usize, Damage); 3] = [
    (10, tests::tamper::flip_ciphertext_bit),
    (35, tests::tamper::break_hmac),
    (60, tests::tamper::replay_first_frame),
];

impl Camera {
    fn handshake(&self) -> Handshake {
        match self.battery {
            true => battery_handshake(&self.device.uid),
            false => handshake(&self.device.uid),
        }
    }
}

/// Writes the stream handshake and reads until the server's reply packet.
fn stream_handshake(link: &mut impl ReadWriteAll, device: &mut StreamDevice, uid: &str) {
    let bytes = device.handshake(&handshake(uid)).unwrap();
    link.write_all(&bytes).unwrap();
    link.flush().unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = link.read(&mut buf).expect("stream handshake reply");
        assert!(
            n > 0,
            "server closed the stream connection at the handshake"
        );
        let packets = device.receive(&buf[..n]).unwrap();
        if let Some(reply) = packets.first() {
            assert_eq!(reply.header.command, cmd::HANDSHAKE);
            assert_eq!(reply.header.response_code, 200);
            return;
        }
    }
}

/// A video frame of a replay with the loadgen's SEI stamp carrying its frame number in the
/// recording (position × FPS), so a viewer can tell which position it plays.
fn stamped(mut frame: MediaFrame, recording_frame: u32) -> MediaFrame {
    let stamp = FrameStamp {
        sent_unix_us: 0,
        frame: recording_frame,
    };
    let sei = [&[0, 0, 0, 1][..], &stamp.to_sei_nal()].concat();
    frame.payload.insert(0, Bytes::from(sei));
    frame
}

/// Streams the clip and its audio `passes` times (None: until stopped) at the frame rate (PTS
/// running on), unless `stop` or the server closes first; returns the (video, audio) frames
/// sent. A replay (`seeks`) stamps its video frames with their frame number in the recording
/// and, on a seek, sends one more keyframe of the old position (in flight, as a device's
/// buffers hold it), then continues at the new position: PTS and stamps from there, packets
/// carrying the seek's sequence.
fn stream_media(
    link: &mut impl ReadWriteAll,
    device: &mut StreamDevice,
    fixture: Fixture,
    (passes, tamper): (Option<usize>, bool),
    seeks: Option<&SeekSlot>,
    stop: &AtomicBool,
) -> (usize, usize) {
    let video = fixture.video();
    let video_frames = passes.map_or(usize::MAX, |n| video.access_units.len() * n);
    // A replay's PTS is its position in the recording; a live stream's starts at 1 s.
    let first_pts = if seeks.is_some() { 0 } else { 1_000_000 };
    let play_from = |position_secs: u32| {
        ClipPlayer::new(
            video.clone(),
            Some(fixture.audio()),
            FPS,
            first_pts + u64::from(position_secs) * 1_000_000,
        )
        .looping()
    };
    let mut player = play_from(0);
    // Frame number in the recording of the next video frame.
    let mut recording_frame = 0u32;
    let start = Instant::now();
    let (mut sent_video, mut sent_audio) = (0, 0);
    while let Some(mut frame) = player.next() {
        let is_video = frame.kind.is_video();
        if stop.load(Ordering::Relaxed) || (is_video && sent_video == video_frames) {
            break;
        }
        if let Some((seek_seq, position)) = seeks.and_then(|slot| slot.lock().unwrap().take()) {
            let stale = MediaFrame {
                kind: FrameKind::VideoI,
                codec: fixture.codec,
                pts_us: Some(u64::from(recording_frame) * 1_000_000 / u64::from(FPS)),
                payload: std::iter::once(video.access_units[0].annex_b.clone()).collect(),
            };
            let stale = device.media(&stamped(stale, recording_frame)).unwrap();
            if link.write_all(&stale).and_then(|()| link.flush()).is_err() {
                break;
            }
            device.seek(seek_seq);
            player = play_from(position);
            recording_frame = position * FPS;
            continue;
        }
        if is_video && seeks.is_some() && fixture.codec == Codec::H264 {
            frame = stamped(frame, recording_frame);
            recording_frame += 1;
        }
        let mut bytes = device.media(&frame).unwrap().to_vec();
        if let Some((_, damage)) = TAMPERED
            .iter()
            .find(|(at, _)| tamper && is_video && *at == sent_video)
        {
            bytes = damage(&bytes);
        }
        if link.write_all(&bytes).and_then(|()| link.flush()).is_err() {
            break;
        }
        if is_video {
            sent_video += 1;
            let due = start + Duration::from_secs(1) * sent_video as u32 / FPS;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        } else {
            sent_audio += 1;
        }
    }
    (sent_video, sent_audio)
}

/// A stream connection of the camera in `mode` to `port` for `stream_id` (a replay's when
/// it has a seek slot), streaming `fixture` (`passes` times, or until `stop` or the server
/// closes).
fn spawn_stream(
    (stream_tls, stream_tcp): (SocketAddr, SocketAddr),
    (device, encrypted, fixture): (Device, EncryptPolicy, Fixture),
    (mode, port, stream_id, seeks): (StreamMode, u16, u32, Option<SeekSlot>),
    (passes, tamper): (Option<usize>, bool),
    events: mpsc::Sender<DeviceEvent>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let replay = seeks.is_some();
    let kind = move |sd: StreamDevice| if replay { sd.replay() } else { sd };
    std::thread::spawn(move || {
        let (video, audio) = match mode {
            StreamMode::Tls => {
                let mut addr = stream_tls;
                addr.set_port(port);
                let mut stream = tls_connect(addr, device.tls_config());
                let mut sd = kind(StreamDevice::tls(stream_id));
                stream_handshake(&mut stream, &mut sd, &device.uid);
                let _ = events.send(DeviceEvent::StreamHandshakeOk);
                let sent = stream_media(
                    &mut stream,
                    &mut sd,
                    fixture,
                    (passes, tamper),
                    seeks.as_ref(),
                    &stop,
                );
                // A camera that hangs up ends its stream cleanly (close_notify): the server
                // does not ask for it again as it would after a broken connection.
                stream.conn.send_close_notify();
                let _ = stream.flush();
                sent
            }
            mode => {
                let mut addr = stream_tcp;
                addr.set_port(port);
                let policy = match mode {
                    StreamMode::Tcp => EncryptPolicy::None,
                    _ => encrypted,
                };
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let (sd, hello) =
                    StreamDevice::encrypt_tcp(&device.keys, rand_nonce(), stream_id, policy);
                let mut sd = kind(sd);
                stream.write_all(&hello).unwrap();
                let mut reply = [0u8; 100];
                stream.read_exact(&mut reply).unwrap();
                sd.receive(&reply).unwrap();
                assert_eq!(sd.hello_code(), Some(200));
                stream_handshake(&mut stream, &mut sd, &device.uid);
                let _ = events.send(DeviceEvent::StreamHandshakeOk);
                stream_media(
                    &mut stream,
                    &mut sd,
                    fixture,
                    (passes, tamper),
                    seeks.as_ref(),
                    &stop,
                )
            }
        };
        let _ = events.send(DeviceEvent::StreamSent { video, audio });
    })
}

/// The recording the simulated camera has on its card.
const RECORDING: &str =
    "/mnt/sda/Mp4Record/2022-01-10/RecS02_DST20220110_000107_000310_2B14808_3F6F88.mp4";

/// The camera: signalling link, then for each preview start a stream connection in the asked
/// mode (or what its behaviour says). Reports what it saw on `events`; ends when `stop` is set.
fn run_camera(
    server: (SocketAddr, SocketAddr, SocketAddr),
    camera: Camera,
    events: mpsc::Sender<DeviceEvent>,
    stop: Arc<AtomicBool>,
) {
    let (signalling_addr, stream_tls, stream_tcp) = server;
    let Camera {
        device,
        encrypted,
        behaviour,
        fixture,
        first_passes,
        tamper,
        ..
    } = camera.clone();
    let mut link = tls_connect(signalling_addr, device.tls_config());
    link.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sim = SimDevice::signalling();
    let hello = sim.handshake(&camera.handshake(), 1);
    link.write_all(&hello).unwrap();
    if behaviour == Behaviour::AnnouncesSleep {
        let sleep = sim.packet(CoreHeader::request(cmd::SLEEP, 2), b"");
        link.write_all(&sleep).unwrap();
    }
    link.flush().unwrap();
    let mut buf = [0u8; 16 * 1024];
    let mut streams = Vec::new();
    let mut seeks: std::collections::HashMap<u32, SeekSlot> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let packets: Vec<CorePacket> = match link.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sim.receive(&buf[..n]).unwrap(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        for packet in packets {
            let id = packet.header.request_id;
            match packet.header.command {
                cmd::CAPABILITIES => {
                    let capabilities = Capabilities {
                        channels: vec![ChannelCapabilities {
                            channel: 0,
                            stream_mask: 3,
                            ptz_type: 0,
                            ptz_control: 0,
                            wifi_mode: 0,
                        }],
                    };
                    let reply = sim.reply_ok(cmd::CAPABILITIES, id, &capabilities);
                    link.write_all(&reply).unwrap();
                }
                cmd::PREVIEW_START if behaviour == Behaviour::RefusesPreview => {
                    let start = PreviewStart::parse(&packet.body.to_contiguous()).unwrap();
                    let reply = sim.reply(cmd::PREVIEW_START, id, 400, b"");
                    link.write_all(&reply).unwrap();
                    let _ = events.send(DeviceEvent::PreviewStart(start));
                }
                cmd::KEYFRAME_REQUEST => {
                    let reply = sim.reply(cmd::KEYFRAME_REQUEST, id, 200, b"");
                    link.write_all(&reply).unwrap();
                    let _ = events.send(DeviceEvent::KeyframeRequest);
                }
                cmd::PREVIEW_START => {
                    let start = PreviewStart::parse(&packet.body.to_contiguous()).unwrap();
                    let reply = preview_start_reply(
                        &mut sim,
                        id,
                        &PreviewStartReply {
                            fps: FPS as u8,
                            codec: fixture.reply_codec,
                        },
                    );
                    link.write_all(&reply).unwrap();
                    link.flush().unwrap();
                    let passes = first_passes.filter(|_| streams.is_empty());
                    let _ = events.send(DeviceEvent::PreviewStart(start));
                    if behaviour == Behaviour::NeverStreams {
                        continue;
                    }
                    streams.push(spawn_stream(
                        (stream_tls, stream_tcp),
                        (device.clone(), encrypted, fixture),
                        (start.mode, start.port, start.stream_id, None),
                        (passes, tamper),
                        events.clone(),
                        stop.clone(),
                    ));
                }
                cmd::RECORD_INFO => {
                    let asked = RecordFile::parse(&packet.body.to_contiguous()).unwrap();
                    let reply = match asked.file == RECORDING {
                        true => sim.reply_ok(cmd::RECORD_INFO, id, &asked),
                        false => sim.reply(cmd::RECORD_INFO, id, 200, b""),
                    };
                    link.write_all(&reply).unwrap();
                }
                cmd::REPLAY_SEEK => {
                    // Continue the replay at `time`: its position from the recording's start
                    // (the recording's times are in its file name).
                    let seek = ReplaySeek::parse(&packet.body.to_contiguous()).unwrap();
                    let span = RecordingSpan::from_file_name(RECORDING).unwrap();
                    let position = RecordingSpan {
                        start: span.start,
                        end: seek.time,
                    }
                    .duration_secs();
                    let code = match seeks.get(&seek.stream_id) {
                        Some(slot) if seek.time >= span.start && seek.time < span.end => {
                            *slot.lock().unwrap() = Some((seek.seek_seq, position));
                            200
                        }
                        _ => 400,
                    };
                    let reply = sim.reply(cmd::REPLAY_SEEK, id, code, b"");
                    link.write_all(&reply).unwrap();
                    let _ = events.send(DeviceEvent::ReplaySeek(seek));
                }
                cmd::REPLAY_START => {
                    let start = ReplayStart::parse(&packet.body.to_contiguous()).unwrap();
                    let slot = SeekSlot::default();
                    seeks.insert(start.stream_id, slot.clone());
                    let answer = PreviewStartReply {
                        fps: FPS as u8,
                        codec: fixture.reply_codec,
                    };
                    let reply = sim.reply(cmd::REPLAY_START, id, 200, &answer.encode());
                    link.write_all(&reply).unwrap();
                    link.flush().unwrap();
                    streams.push(spawn_stream(
                        (stream_tls, stream_tcp),
                        (device.clone(), encrypted, fixture),
                        (start.mode, start.port, start.stream_id, Some(slot)),
                        (None, false),
                        events.clone(),
                        stop.clone(),
                    ));
                    let _ = events.send(DeviceEvent::ReplayStart(start));
                }
                cmd::REPLAY_STOP => {
                    let stopped = RecordFile::parse(&packet.body.to_contiguous()).unwrap();
                    let reply = sim.reply(cmd::REPLAY_STOP, id, 200, b"");
                    link.write_all(&reply).unwrap();
                    let _ = events.send(DeviceEvent::ReplayStop(stopped));
                }
                cmd::PREVIEW_STOP => {
                    let stream_id = packet.body.to_contiguous();
                    let text = String::from_utf8_lossy(&stream_id);
                    let id_text = text
                        .split("<attr002>")
                        .nth(1)
                        .and_then(|t| t.split('<').next())
                        .and_then(|t| t.trim().parse().ok())
                        .unwrap_or(0);
                    let reply = sim.reply(cmd::PREVIEW_STOP, id, 200, b"");
                    link.write_all(&reply).unwrap();
                    let _ = events.send(DeviceEvent::PreviewStop { stream_id: id_text });
                }
                _ => {}
            }
        }
        let _ = link.flush();
    }
    // Its streams go on until their own connections close (or the test stops them), whatever
    // became of the signalling link: a revoked device must be cut off by the server.
    for stream in streams {
        let _ = stream.join();
    }
}

/// A camera with its keep-alive link (61003, heartbeats every 5 s) and its signalling side
/// ([`run_camera`]): a battery camera starts the signalling side only when woken with 460 (it
/// sleeps until then), any other at once.
fn run_two_link_camera(
    keepalive: SocketAddr,
    server: (SocketAddr, SocketAddr, SocketAddr),
    camera: Camera,
    events: mpsc::Sender<DeviceEvent>,
    stop: Arc<AtomicBool>,
) {
    let mut link = TcpStream::connect(keepalive).unwrap();
    link.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (mut sim, hello) = SimDevice::keep_alive(&camera.device.keys, rand_nonce());
    link.write_all(&hello).unwrap();
    let mut reply = [0u8; 100];
    link.read_exact(&mut reply).unwrap();
    assert!(sim.receive(&reply).unwrap().is_empty());
    assert_eq!(sim.hello_code(), Some(200));
    link.write_all(&sim.handshake(&camera.handshake(), 1))
        .unwrap();
    let beat = Heartbeat {
        no_reply: false,
        battery: Some(BatteryState {
            percent: Some(80),
            charging: Some("0".into()),
        }),
    };
    link.write_all(&sim.heartbeat(&beat, 2)).unwrap();
    link.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let start_signalling = {
        let (camera, events, stop) = (camera.clone(), events.clone(), stop.clone());
        move || {
            let (camera, events, stop) = (camera.clone(), events.clone(), stop.clone());
            Some(std::thread::spawn(move || {
                run_camera(server, camera, events, stop)
            }))
        }
    };
    let mut signalling = match camera.battery && camera.behaviour != Behaviour::AnnouncesSleep {
        true => None,
        false => start_signalling(),
    };
    let mut last_beat = Instant::now();
    let mut next_id = 3;
    while !stop.load(Ordering::Relaxed) {
        if last_beat.elapsed() > Duration::from_secs(5) {
            link.write_all(&sim.heartbeat(&beat, next_id)).unwrap();
            next_id += 1;
            last_beat = Instant::now();
        }
        let packets = match link.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sim.receive(&buf[..n]).unwrap(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        for packet in packets {
            if packet.header.command != cmd::WAKE_UP {
                continue;
            }
            let _ = events.send(DeviceEvent::WakeUp);
            let reply = sim.reply(cmd::WAKE_UP, packet.header.request_id, 200, b"");
            link.write_all(&reply).unwrap();
            if signalling.is_none() {
                signalling = start_signalling();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(signalling) = signalling {
        let _ = signalling.join();
    }
}

fn rand_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(2654435761).wrapping_add(i as u32 * 40503) >> 8) as u8;
    }
    nonce
}

/// What ffprobe found in the viewer's recording.
#[derive(Debug)]
struct Recording {
    /// `codec,width,height` of the video stream.
    video: String,
    /// `codec,sample_rate,channels` of the audio stream.
    audio: String,
    video_frames: usize,
    audio_frames: usize,
}

/// Provisions a camera streaming `fixture`, has an ffmpeg viewer record its main stream on
/// demand (the DESCRIBE starts the preview) until the relay ends it after the camera hung up;
/// returns ffprobe's view of the recording, the events, and the camera's stop flag.
fn record_device_stream(
    mode: StreamEncryptMode,
    encrypted: EncryptPolicy,
    fixture: Fixture,
    tamper: bool,
    uid: &str,
) -> (
    TestServer,
    Recording,
    mpsc::Receiver<DeviceEvent>,
    Arc<AtomicBool>,
) {
    record_device_stream_with(mode, encrypted, fixture, tamper, uid, |_| {})
}

/// [`record_device_stream`] with more configuration.
fn record_device_stream_with(
    mode: StreamEncryptMode,
    encrypted: EncryptPolicy,
    fixture: Fixture,
    tamper: bool,
    uid: &str,
    configure: impl FnOnce(&mut signal::config::Config),
) -> (
    TestServer,
    Recording,
    mpsc::Receiver<DeviceEvent>,
    Arc<AtomicBool>,
) {
    let server = TestServer::start_with(|c| {
        c.stream_encrypt_mode = mode;
        c.shards = Some(2);
        configure(c);
    });
    let device = provision(&server, uid);
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = (
        server.server.addrs.signaling,
        server.server.addrs.stream_tls,
        server.server.addrs.stream_tcp,
    );
    {
        let stop = stop.clone();
        let camera = Camera {
            device,
            encrypted,
            behaviour: Behaviour::Streams,
            battery: false,
            fixture,
            first_passes: Some(PASSES),
            tamper,
        };
        std::thread::spawn(move || run_camera(addrs, camera, events_tx, stop));
    }
    // Wait until the signalling link is online (the camera handshakes at once).
    std::thread::sleep(Duration::from_millis(500));
    let url = play_url(&server, uid);
    let recording = server.data_dir().join("viewer.mkv");
    let recording = recording.to_str().unwrap();
    let out = run(
        "timeout",
        &[
            "60",
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            &url,
            "-map",
            "0",
            "-c",
            "copy",
            "-y",
            recording,
        ],
    );
    assert!(
        out.status.success(),
        "ffmpeg viewer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe = |stream: &str, entries: &str| -> (String, usize) {
        let out = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_packets",
                "-select_streams",
                stream,
                "-show_entries",
                &format!("stream={entries},nb_read_packets"),
                "-of",
                "csv=p=0",
                recording,
            ],
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (fields, count) = line
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("no {stream} stream recorded: {line:?}"));
        (fields.to_owned(), count.parse().unwrap())
    };
    let (video, video_frames) = probe("v", "codec_name,width,height");
    let (audio, audio_frames) = probe("a", "codec_name,sample_rate,channels");
    let recorded = Recording {
        video,
        audio,
        video_frames,
        audio_frames,
    };
    (server, recorded, events, stop)
}

/// ffprobe's `codec,width,height` line of the video of the stream at `url` (over RTSP/TCP).
fn ffprobe(url: &str) -> String {
    let out = run(
        "timeout",
        &[
            "30",
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
            url,
        ],
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    line
}

fn expect_preview(events: &mpsc::Receiver<DeviceEvent>, mode: StreamMode) -> u32 {
    match events.recv_timeout(Duration::from_secs(5)).unwrap() {
        DeviceEvent::PreviewStart(start) => {
            assert_eq!(start.mode, mode);
            assert_eq!(start.channel, 0);
            start.stream_id
        }
        other => panic!("expected preview start, got {other:?}"),
    }
}

/// The camera's report of what it sent, after the preview start and the handshake.
fn expect_sent(events: &mpsc::Receiver<DeviceEvent>) -> (usize, usize) {
    loop {
        match events.recv_timeout(Duration::from_secs(15)).unwrap() {
            DeviceEvent::StreamHandshakeOk => {}
            DeviceEvent::StreamSent { video, audio } => return (video, audio),
            other => panic!("expected the stream's end, got {other:?}"),
        }
    }
}

/// Everything the camera sent came out of the relay, frame for frame (a viewer may lose the
/// last audio frames that were still in flight when the camera hung up), with the clip's
/// codec parameters.
fn assert_relayed(recording: &Recording, fixture: Fixture, (video, audio): (usize, usize)) {
    eprintln!("sent {video} video and {audio} audio frames; recorded {recording:?}");
    assert_eq!(
        recording.video,
        format!("{},320,240", fixture.probe_name),
        "{recording:?}"
    );
    assert_eq!(recording.audio, "aac,16000,1", "{recording:?}");
    assert_eq!(
        video,
        75 * PASSES,
        "the camera sent its clip {PASSES} times"
    );
    assert!(audio >= 40 * PASSES, "the camera sent its audio: {audio}");
    assert!(
        recording.video_frames.abs_diff(video) <= 2,
        "video frames: {} recorded, {video} sent",
        recording.video_frames
    );
    assert!(
        recording.audio_frames.abs_diff(audio) <= 3,
        "audio frames: {} recorded, {audio} sent",
        recording.audio_frames
    );
}

#[test]
fn tls_stream_h264_aac_is_relayed_frame_for_frame_and_stops_after_the_linger() {
    let (server, recording, events, stop) = record_device_stream(
        StreamEncryptMode::Tls,
        EncryptPolicy::All,
        H264_AAC,
        false,
        "95270000STRMTLS1",
    );
    expect_preview(&events, StreamMode::Tls);
    assert_relayed(&recording, H264_AAC, expect_sent(&events));
    // A second viewer starts a preview the camera streams until told to stop; once that
    // viewer is gone, preview stop follows after the linger (10 s) and a sweep.
    let line = ffprobe(&play_url(&server, "95270000STRMTLS1"));
    assert_eq!(line, "h264,320,240");
    let stream_id = expect_preview(&events, StreamMode::Tls);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("preview stop") {
            DeviceEvent::StreamHandshakeOk => {}
            DeviceEvent::PreviewStop { stream_id: stopped } => {
                assert_eq!(stopped, stream_id);
                break;
            }
            other => panic!("expected preview stop, got {other:?}"),
        }
    }
    // A viewer right after the stop gets a new preview, not the stopped stream's hub waiting
    // the grace time (5 s) for a publisher that is not coming back.
    assert_eq!(
        ffprobe(&play_url(&server, "95270000STRMTLS1")),
        "h264,320,240"
    );
    loop {
        match events
            .recv_timeout(IO_TIMEOUT)
            .expect("a new preview start")
        {
            DeviceEvent::StreamHandshakeOk | DeviceEvent::StreamSent { .. } => {}
            DeviceEvent::PreviewStart(start) => {
                assert_ne!(start.stream_id, stream_id);
                break;
            }
            other => panic!("expected a new preview start, got {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(server);
}

/// Runs one mode and fixture end to end and checks the recording.
fn relays_frame_for_frame(
    mode: StreamEncryptMode,
    encrypted: EncryptPolicy,
    fixture: Fixture,
    uid: &str,
    expected_mode: StreamMode,
) {
    let (server, recording, events, stop) =
        record_device_stream(mode, encrypted, fixture, false, uid);
    expect_preview(&events, expected_mode);
    assert_relayed(&recording, fixture, expect_sent(&events));
    stop.store(true, Ordering::Relaxed);
    drop(server);
}

#[test]
fn encrypt_tcp_stream_with_every_frame_encrypted_is_relayed_frame_for_frame() {
    relays_frame_for_frame(
        StreamEncryptMode::EncryptTcp,
        EncryptPolicy::All,
        H264_AAC,
        "95270000STRMETCP",
        StreamMode::EncryptTcp,
    );
}

#[test]
fn plain_tcp_stream_is_relayed_frame_for_frame() {
    relays_frame_for_frame(
        StreamEncryptMode::Tcp,
        EncryptPolicy::None,
        H264_AAC,
        "95270000STRMPTCP",
        StreamMode::Tcp,
    );
}

#[test]
fn selective_encryption_keyframes_only_is_relayed_frame_for_frame() {
    // The platform's selective encryption: the device encrypts only its keyframes.
    relays_frame_for_frame(
        StreamEncryptMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        H264_AAC,
        "95270000STRMSEL1",
        StreamMode::EncryptTcp,
    );
}

#[test]
fn tls_stream_h265_aac_is_relayed_frame_for_frame() {
    relays_frame_for_frame(
        StreamEncryptMode::Tls,
        EncryptPolicy::All,
        H265_AAC,
        "95270000STRM265T",
        StreamMode::Tls,
    );
}

/// `[stream] rtp_max_payload` small: every H.265 picture goes out as many FU fragments, and
/// ffmpeg reassembles each of them.
#[test]
fn h265_with_a_small_rtp_payload_is_relayed_frame_for_frame() {
    let (server, recording, events, stop) = record_device_stream_with(
        StreamEncryptMode::Tls,
        EncryptPolicy::All,
        H265_AAC,
        false,
        "95270000STRMMTU1",
        |c| c.stream.rtp_max_payload = 200,
    );
    expect_preview(&events, StreamMode::Tls);
    assert_relayed(&recording, H265_AAC, expect_sent(&events));
    stop.store(true, Ordering::Relaxed);
    drop(server);
}

#[test]
fn selective_encryption_h265_aac_is_relayed_frame_for_frame() {
    relays_frame_for_frame(
        StreamEncryptMode::EncryptTcp,
        EncryptPolicy::Keyframes,
        H265_AAC,
        "95270000STRM265S",
        StreamMode::EncryptTcp,
    );
}

#[test]
fn encrypt_tcp_stream_h265_aac_with_every_frame_encrypted_is_relayed_frame_for_frame() {
    relays_frame_for_frame(
        StreamEncryptMode::EncryptTcp,
        EncryptPolicy::All,
        H265_AAC,
        "95270000STRM265E",
        StreamMode::EncryptTcp,
    );
}

#[test]
fn plain_tcp_stream_h265_aac_is_relayed_frame_for_frame() {
    relays_frame_for_frame(
        StreamEncryptMode::Tcp,
        EncryptPolicy::None,
        H265_AAC,
        "95270000STRM265P",
        StreamMode::Tcp,
    );
}

/// Frames damaged on the way to 61007 while a viewer records: each is dropped (the HMAC or
/// the sequence number says so) and counted on /metrics, the stream survives on its connection,
/// and the viewer gets everything else: the next keyframe restarts the video after a lost frame.
#[test]
fn tampered_frames_on_a_live_encrypt_tcp_stream_are_dropped_and_the_viewer_keeps_playing() {
    let (server, recording, events, stop) = record_device_stream(
        StreamEncryptMode::EncryptTcp,
        EncryptPolicy::All,
        H264_AAC,
        true,
        "95270000TAMPER01",
    );
    expect_preview(&events, StreamMode::EncryptTcp);
    // The server never closed the connection: the camera sent everything and hung up itself.
    let (video, audio) = expect_sent(&events);
    assert_eq!(video, 75 * PASSES);
    eprintln!("sent {video} video and {audio} audio frames; recorded {recording:?}");
    assert_eq!(recording.video, "h264,320,240");
    assert_eq!(recording.audio, "aac,16000,1");
    // Lost: frames 10-24 and 35-49 (to the next keyframe); the replayed frame costs nothing.
    let lost = 2 * 15;
    assert!(
        recording.video_frames.abs_diff(video - lost) <= 2,
        "video frames: {} recorded, {video} sent, {lost} expected lost",
        recording.video_frames
    );
    // Audio is in the same core-packet stream: a resync loses what was in the damaged frame
    // and up to the next keyframe, never the rest of the stream.
    assert!(
        recording.audio_frames > audio / 2 && recording.audio_frames <= audio,
        "audio frames: {} recorded, {audio} sent",
        recording.audio_frames
    );
    // Each damaged frame is counted by what gave it away.
    let samples = scrape(&server);
    let rejected = |reason| {
        tests::prom_value(
            &samples,
            "rop_ingest_rejections_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(rejected("bad_hmac"), 2.0);
    assert_eq!(rejected("bad_sequence"), 1.0);
    stop.store(true, Ordering::Relaxed);
    drop(server);
}

/// Revoking a device (`DELETE /v1.0/devices/{uid}`) closes its running stream connection at
/// once, and the CRL keeps it off 61006 afterwards.
#[test]
fn revoked_device_loses_its_running_stream_and_is_refused_on_61006() {
    let server = TestServer::start_with(|c| {
        c.stream_encrypt_mode = StreamEncryptMode::Tls;
        c.shards = Some(2);
    });
    let uid = "95270000REVOKED1";
    let device = provision(&server, uid);
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = (
        server.server.addrs.signaling,
        server.server.addrs.stream_tls,
        server.server.addrs.stream_tcp,
    );
    let camera = Camera {
        device: device.clone(),
        encrypted: EncryptPolicy::All,
        behaviour: Behaviour::Streams,
        battery: false,
        fixture: H264_AAC,
        first_passes: None,
        tamper: false,
    };
    {
        let stop = stop.clone();
        std::thread::spawn(move || run_camera(addrs, camera, events_tx, stop));
    }
    wait_online(&server, uid, |p| p["signalling"] == true);
    let mut viewer = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            &play_url(&server, uid),
            "-t",
            "30",
            "-f",
            "null",
            "-",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg");
    wait_online(&server, uid, |p| {
        p["streams"][0]["viewers"].as_u64() == Some(1)
    });
    expect_preview(&events, StreamMode::Tls);
    assert!(matches!(
        events.recv_timeout(IO_TIMEOUT).unwrap(),
        DeviceEvent::StreamHandshakeOk
    ));

    let revoked = tests::curl(&[
        "-X",
        "DELETE",
        &format!("{}/v1.0/devices/{uid}", server.api_url()),
    ]);
    assert_eq!(revoked.status, 200);
    // The camera's writes fail once the server closed its stream connection.
    match events.recv_timeout(IO_TIMEOUT) {
        Ok(DeviceEvent::StreamSent { .. }) => {}
        other => panic!("the revoked device's stream was not closed: {other:?}"),
    }
    let _ = viewer.kill();
    let _ = viewer.wait();

    // A new stream connection with the revoked certificate fails its handshake.
    let tcp = TcpStream::connect(server.server.addrs.stream_tls).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = ClientConnection::new(device.tls_config(), name).unwrap();
    let mut tcp = tcp;
    let mut handshake = Ok((0, 0));
    while tls.is_handshaking() && handshake.is_ok() {
        handshake = tls.complete_io(&mut tcp);
    }
    // TLS 1.3: the client finishes first; the server's refusal (an alert naming the revoked
    // certificate) comes with the first read.
    let refusal = match handshake {
        Err(e) => e,
        Ok(_) => {
            let mut stream = StreamOwned::new(tls, tcp);
            let _ = stream.write_all(b"x");
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Err(e) => e,
                Ok(n) => panic!("61006 accepted a revoked certificate (read {n})"),
            }
        }
    };
    eprintln!("refusal: {refusal}");
    assert!(
        refusal.to_string().contains("CertificateRevoked"),
        "not refused for revocation: {refusal}"
    );
    stop.store(true, Ordering::Relaxed);
}

/// The status line of the server's answer to an RTSP DESCRIBE of `url`.
fn describe_status(server: &TestServer, url: &str) -> String {
    let mut rtsp = TcpStream::connect(server.server.addrs.rtsp).unwrap();
    rtsp.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!("DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n");
    rtsp.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = rtsp.read(&mut chunk).expect("DESCRIBE answer");
        assert!(n > 0, "server closed without answering the DESCRIBE");
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_owned()
}

/// Starts a server (2 shards, `start_timeout_secs`), provisions `uid`, and runs a camera with
/// `behaviour` on its signalling link.
fn camera_with(
    uid: &str,
    behaviour: Behaviour,
    start_timeout_secs: u64,
) -> (TestServer, mpsc::Receiver<DeviceEvent>, Arc<AtomicBool>) {
    let server = TestServer::start_with(|c| {
        c.stream_encrypt_mode = StreamEncryptMode::EncryptTcp;
        c.shards = Some(2);
        c.device.stream_start_timeout_secs = start_timeout_secs;
    });
    let device = provision(&server, uid);
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = (
        server.server.addrs.signaling,
        server.server.addrs.stream_tls,
        server.server.addrs.stream_tcp,
    );
    let camera = Camera {
        device,
        encrypted: EncryptPolicy::All,
        behaviour,
        battery: false,
        fixture: H264_AAC,
        first_passes: None,
        tamper: false,
    };
    {
        let stop = stop.clone();
        std::thread::spawn(move || run_camera(addrs, camera, events_tx, stop));
    }
    wait_online(&server, uid, |p| p["signalling"] == true);
    (server, events, stop)
}

/// The device detail of `uid` (`GET /v1.0/devices/{uid}`).
fn device_detail(server: &TestServer, uid: &str) -> Value {
    let response = tests::curl(&[&format!("{}/v1.0/devices/{uid}", server.api_url())]);
    assert_eq!(response.status, 200);
    response.json()
}

/// Waits until the presence of `uid` passes `check`.
fn wait_online(server: &TestServer, uid: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let detail = device_detail(server, uid);
        if check(&detail["presence"]) {
            return detail;
        }
        assert!(Instant::now() < deadline, "presence of {uid}: {detail}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn offline_device_gets_503_device_offline() {
    // A provisioned device with no link: answered at once, not after waiting for an RTSP
    // publisher (which would end as "No Publisher").
    let server = TestServer::start();
    let uid = "95270000OFFLINE1";
    provision(&server, uid);
    let status = describe_status(&server, &play_url(&server, uid));
    assert_eq!(status, "RTSP/1.0 503 Device Offline");
}

#[test]
fn offline_device_waits_for_an_rtsp_publisher_when_configured() {
    let server = TestServer::start_with(|c| c.device.wait_for_rtsp_publisher = true);
    let uid = "95270000OFFLINE2";
    provision(&server, uid);
    let status = describe_status(&server, &play_url(&server, uid));
    assert_eq!(status, "RTSP/1.0 503 No Publisher");
}

#[test]
fn device_refusing_preview_gets_503_device_refused() {
    let uid = "95270000REFUSES1";
    let (server, events, stop) = camera_with(uid, Behaviour::RefusesPreview, 10);
    let status = describe_status(&server, &play_url(&server, uid));
    assert_eq!(status, "RTSP/1.0 503 Device Refused Preview");
    expect_preview(&events, StreamMode::EncryptTcp);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn device_that_never_streams_gets_503_no_media() {
    let uid = "95270000NOMEDIA1";
    let (server, events, stop) = camera_with(uid, Behaviour::NeverStreams, 2);
    let status = describe_status(&server, &play_url(&server, uid));
    assert_eq!(status, "RTSP/1.0 503 No Media From Device");
    expect_preview(&events, StreamMode::EncryptTcp);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn sleeping_battery_camera_is_woken_before_its_preview() {
    // Only its keep-alive link is up: woken with 460, it connects its signalling link.
    battery_camera_is_woken_and_plays("95270000BATTERY1", Behaviour::Streams);
}

#[test]
fn battery_camera_that_announced_sleep_is_woken_before_its_preview() {
    // Both links up, but it said 233: woken with 460 all the same, preview on the same link.
    battery_camera_is_woken_and_plays("95270000BATTERY2", Behaviour::AnnouncesSleep);
}

fn battery_camera_is_woken_and_plays(uid: &str, behaviour: Behaviour) {
    let server = TestServer::start_with(|c| {
        c.stream_encrypt_mode = StreamEncryptMode::Tls;
        c.shards = Some(2);
    });
    let device = provision(&server, uid);
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = (
        server.server.addrs.signaling,
        server.server.addrs.stream_tls,
        server.server.addrs.stream_tcp,
    );
    let camera = Camera {
        device,
        encrypted: EncryptPolicy::All,
        behaviour,
        battery: true,
        fixture: H264_AAC,
        first_passes: None,
        tamper: false,
    };
    let keepalive = server.server.addrs.keepalive;
    {
        let stop = stop.clone();
        std::thread::spawn(move || run_two_link_camera(keepalive, addrs, camera, events_tx, stop));
    }
    let signalling_while_asleep = behaviour == Behaviour::AnnouncesSleep;
    let asleep = wait_online(&server, uid, |p| {
        p["keepAlive"] == true && p["signalling"] == signalling_while_asleep && p["asleep"] == true
    });
    assert_eq!(asleep["presence"]["asleep"], true);
    assert_eq!(asleep["presence"]["family"], "battery");

    let line = ffprobe(&play_url(&server, uid));
    assert_eq!(line, "h264,320,240");
    assert!(matches!(
        events.recv_timeout(IO_TIMEOUT).unwrap(),
        DeviceEvent::WakeUp
    ));
    expect_preview(&events, StreamMode::Tls);

    // The preview is in the device's presence, with the time from the DESCRIBE to the first
    // keyframe, the wake-up included.
    let detail = device_detail(&server, uid);
    let presence = &detail["presence"];
    assert_eq!(presence["signalling"], true);
    assert_eq!(presence["asleep"], false);
    let streams = presence["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{presence}");
    let stream = &streams[0];
    assert_eq!(stream["channel"], 0);
    assert_eq!(stream["streamType"], "mainStream");
    assert_eq!(stream["mode"], "TLS");
    assert_eq!(stream["state"], "live");
    assert_eq!(stream["woken"], true);
    assert!(stream["firstKeyframeMs"].as_u64().is_some(), "{stream}");
    assert!(stream["bytes"].as_u64().unwrap() > 0, "{stream}");
    assert!(stream["since"].as_u64().unwrap() > 0, "{stream}");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn presence_lists_the_live_stream_and_its_viewer() {
    let uid = "95270000PRESENC1";
    let (server, events, stop) = camera_with(uid, Behaviour::Streams, 10);
    let url = play_url(&server, uid);
    // A viewer that stays: ffmpeg reading the stream for a while.
    let mut viewer = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            &url,
            "-t",
            "20",
            "-f",
            "null",
            "-",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let detail = wait_online(&server, uid, |p| {
        p["streams"][0]["viewers"].as_u64() == Some(1)
    });
    let stream = &detail["presence"]["streams"][0];
    assert_eq!(stream["state"], "live");
    assert_eq!(stream["mode"], "encryptTCP");
    assert_eq!(stream["woken"], false);
    expect_preview(&events, StreamMode::EncryptTcp);
    let _ = viewer.kill();
    let _ = viewer.wait();
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn camera_with_both_links_and_heartbeats_plays_on_demand() {
    // The whole path of a powered camera: provisioning, registration, keep-alive link with
    // heartbeats, signalling link, preview start when a viewer asks, ffprobe plays.
    let server = TestServer::start_with(|c| {
        c.stream_encrypt_mode = StreamEncryptMode::EncryptTcp;
        c.shards = Some(2);
    });
    let uid = "95270000BOTHLNK1";
    let device = provision(&server, uid);
    let (events_tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = (
        server.server.addrs.signaling,
        server.server.addrs.stream_tls,
        server.server.addrs.stream_tcp,
    );
    let camera = Camera {
        device,
        encrypted: EncryptPolicy::All,
        behaviour: Behaviour::Streams,
        battery: false,
        fixture: H264_AAC,
        first_passes: None,
        tamper: false,
    };
    let keepalive = server.server.addrs.keepalive;
    {
        let stop = stop.clone();
        std::thread::spawn(move || run_two_link_camera(keepalive, addrs, camera, events_tx, stop));
    }
    let online = wait_online(&server, uid, |p| {
        p["keepAlive"] == true && p["signalling"] == true && p["batteryPercent"] == 80
    });
    let presence = &online["presence"];
    assert!(presence["lastHeartbeat"].as_u64().is_some(), "{presence}");
    assert_eq!(presence["asleep"], false);
    assert_eq!(presence["streams"], json!([]));

    assert_eq!(ffprobe(&play_url(&server, uid)), "h264,320,240");
    expect_preview(&events, StreamMode::EncryptTcp);
    assert!(matches!(
        events.recv_timeout(IO_TIMEOUT).unwrap(),
        DeviceEvent::StreamHandshakeOk
    ));
    stop.store(true, Ordering::Relaxed);
}

/// `/metrics` parsed by the Prometheus parser.
fn scrape(server: &TestServer) -> Vec<tests::PromSample> {
    let response = tests::curl(&[&format!("{}/metrics", server.api_url())]);
    assert_eq!(response.status, 200);
    let text = String::from_utf8(response.body).expect("metrics are UTF-8");
    let (families, samples) = tests::parse_prometheus(&text);
    for (family, kind) in [
        ("rop_streams", "gauge"),
        ("rop_viewers", "gauge"),
        ("rop_stream_bytes_in", "counter"),
        ("rop_stream_bytes_out", "counter"),
        ("rop_viewer_frames_dropped", "counter"),
        ("rop_viewer_packets_dropped", "counter"),
        ("rop_ingest_rejections", "counter"),
        ("rop_previews", "counter"),
        ("rop_tls_handshake_failures", "counter"),
        ("rop_device_sessions", "gauge"),
    ] {
        assert!(
            families.iter().any(|(n, k)| n == family && k == kind),
            "family {family} ({kind}) missing from /metrics"
        );
    }
    samples
}

fn wait_for_metric(server: &TestServer, what: &str, check: impl Fn(&[tests::PromSample]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if check(&scrape(server)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within 15 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_count_a_device_stream_its_viewers_and_tls_failures() {
    use tests::prom_value;
    let (server, events, stop) = camera_with("95270000STRMMETR", Behaviour::Streams, 10);
    // A viewer that stays: ffmpeg reading the stream for up to 30 s.
    tests::require_tool("ffmpeg");
    let mut viewer = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-rtsp_transport", "tcp", "-i"])
        .arg(play_url(&server, "95270000STRMMETR"))
        .args(["-t", "30", "-c", "copy", "-f", "null", "-"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    expect_preview(&events, StreamMode::EncryptTcp);
    let bytes_in = |s: &[tests::PromSample], mode| {
        prom_value(s, "rop_stream_bytes_in_total", &[("mode", mode)])
    };
    // The counters grow as the stream flows: wait until the first 10 kB are in.
    wait_for_metric(&server, "one viewer and 10 kB in", |s| {
        prom_value(s, "rop_viewers", &[]) == 1.0
            && prom_value(s, "rop_stream_bytes_out_total", &[]) > 0.0
            && bytes_in(s, "encrypt_tcp") > 10_000.0
    });
    let samples = scrape(&server);
    assert_eq!(
        prom_value(&samples, "rop_streams", &[("state", "live")]),
        1.0
    );
    for other in ["tls", "tcp", "rtsp_publish"] {
        assert_eq!(bytes_in(&samples, other), 0.0, "bytes in as {other}");
    }
    assert_eq!(
        prom_value(&samples, "rop_previews_total", &[("event", "started")]),
        1.0
    );
    assert_eq!(
        prom_value(&samples, "rop_previews_total", &[("event", "refused")]),
        0.0
    );
    assert_eq!(
        prom_value(&samples, "rop_ingest_rejections_total", &[]),
        0.0
    );
    assert_eq!(prom_value(&samples, "rop_devices_online", &[]), 1.0);
    // The media keeps flowing: bytes in grow between scrapes.
    let first = bytes_in(&samples, "encrypt_tcp");
    wait_for_metric(&server, "more bytes in", |s| {
        bytes_in(s, "encrypt_tcp") > first
    });
    let _ = viewer.kill();
    let _ = viewer.wait();
    wait_for_metric(&server, "no viewer", |s| {
        prom_value(s, "rop_viewers", &[]) == 0.0
    });

    // Failed TLS handshakes, counted per port: plain HTTP to the HTTPS API and to 61006.
    let api_tls = server
        .server
        .addrs
        .api_tls
        .expect("HTTPS API enabled by default");
    for addr in [api_tls, server.server.addrs.stream_tls] {
        let mut plain = TcpStream::connect(addr).unwrap();
        plain.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut sink = Vec::new();
        let _ = plain.read_to_end(&mut sink);
    }
    wait_for_metric(&server, "TLS failures on 61010 and 61006", |s| {
        ["61010", "61006"].iter().all(|port| {
            prom_value(
                s,
                "rop_tls_handshake_failures_total",
                &[("port", port), ("reason", "invalid_message")],
            ) == 1.0
        })
    });
    stop.store(true, Ordering::Relaxed);
    drop(server);
}

/// `POST /v1.0/devices/{uid}/records/play-session` with `fileName`: status and body.
fn record_play_session(server: &TestServer, uid: &str, file: &str) -> tests::CurlResponse {
    let body = json!({ "channel": 0, "fileName": file }).to_string();
    tests::curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &format!(
            "{}/v1.0/devices/{uid}/records/play-session",
            server.api_url()
        ),
    ])
}

#[test]
fn recording_replays_through_its_play_session_and_stops_when_the_viewer_goes() {
    let uid = "95270000REPLAY01";
    let (server, events, stop) = camera_with(uid, Behaviour::Streams, 10);
    let missing = record_play_session(&server, uid, "/mnt/sda/none.mp4");
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json()["error"]["symbol"],
        "file_not_found",
        "{missing:?}"
    );

    let session = record_play_session(&server, uid, RECORDING);
    assert_eq!(session.status, 200, "{session:?}");
    let answer = session.json();
    let url = answer["playURL"].as_str().expect("playURL").to_owned();
    assert!(url.starts_with("rtsp://"), "{url}");
    assert_eq!(answer["expiredIn"], 30);
    // The session asked nothing of the device but record info: replay starts on DESCRIBE.
    assert!(events.try_recv().is_err());

    assert_eq!(ffprobe(&url), "h264,320,240");
    let stream_id = match events.recv_timeout(IO_TIMEOUT).unwrap() {
        DeviceEvent::ReplayStart(start) => {
            assert_eq!(start.file, RECORDING);
            assert_eq!(start.channel, 0);
            assert_eq!(start.mode, StreamMode::EncryptTcp);
            start.stream_id
        }
        other => panic!("expected replay start, got {other:?}"),
    };
    // ffprobe is gone: replay stop names the replay, sent at the next sweep (no linger).
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("replay stop") {
            DeviceEvent::ReplayStop(stopped) => {
                assert_eq!(stopped.stream_id, Some(stream_id));
                assert_eq!(stopped.file, RECORDING);
                assert_eq!(stopped.channel, 0);
                break;
            }
            DeviceEvent::StreamHandshakeOk
            | DeviceEvent::KeyframeRequest
            | DeviceEvent::StreamSent { .. } => {}
            other => panic!("expected replay stop, got {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
}

/// The camera's seeks and what else it reported, until the first seek (replay start, stream
/// handshake, keyframe requests pass).
fn expect_seek(events: &mpsc::Receiver<DeviceEvent>) -> ReplaySeek {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left).expect("replay seek 123") {
            DeviceEvent::ReplaySeek(seek) => return seek,
            DeviceEvent::ReplayStart(_)
            | DeviceEvent::StreamHandshakeOk
            | DeviceEvent::KeyframeRequest => {}
            other => panic!("expected replay seek, got {other:?}"),
        }
    }
}

/// The frame numbers of the loadgen stamps in an Annex-B H.264 file, in order.
fn stamped_frames(annex_b: &[u8]) -> Vec<u32> {
    let mut frames = Vec::new();
    let mut rest = annex_b;
    while let Some(at) = rest.windows(3).position(|w| w == [0, 0, 1]) {
        rest = &rest[at + 3..];
        let end = rest
            .windows(3)
            .position(|w| w == [0, 0, 1])
            .unwrap_or(rest.len());
        if let Some(stamp) = FrameStamp::from_nal(&rest[..end]) {
            frames.push(stamp.frame);
        }
    }
    frames
}

/// A replay play URL of the camera's recording, from the records play session.
fn replay_url(server: &TestServer, uid: &str) -> String {
    let session = record_play_session(server, uid, RECORDING);
    assert_eq!(session.status, 200, "{session:?}");
    session.json()["playURL"].as_str().unwrap().to_owned()
}

#[test]
fn ffmpeg_seek_into_a_recording_plays_from_the_new_position() {
    let uid = "95270000REPLAY02";
    let (server, events, stop) = camera_with(uid, Behaviour::Streams, 10);
    let url = replay_url(&server, uid);
    // `-ss 5` as an input option: ffmpeg PLAYs from 0 (npt=0.000-), reads the stream's
    // parameters, then PAUSEs and PLAYs with `Range: npt=5.000-`.
    let out = server.data_dir().join("seeked.h264");
    let out = out.to_str().unwrap();
    let played = run(
        "timeout",
        &[
            "60",
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-rtsp_transport",
            "tcp",
            "-ss",
            "5",
            "-i",
            &url,
            "-map",
            "0:v",
            "-c",
            "copy",
            "-frames:v",
            "50",
            "-f",
            "h264",
            "-y",
            out,
        ],
    );
    assert!(
        played.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&played.stderr)
    );
    // The device was asked for the recording's start + 5 s, with the platform's first seek
    // sequence.
    let seek = expect_seek(&events);
    let span = RecordingSpan::from_file_name(RECORDING).unwrap();
    assert_eq!(seek.time, span.start.plus_seconds(5), "{seek:?}");
    assert_eq!(seek.seek_seq, 1024);
    assert_eq!(seek.channel, 0);
    // What ffmpeg wrote is the recording from 5 s on (frame 125 at 25 fps), frame after frame:
    // nothing of the position before the seek, not even the keyframe the camera still had in
    // flight when it seeked.
    let frames = stamped_frames(&std::fs::read(out).unwrap());
    eprintln!("ffmpeg wrote recording frames {frames:?}");
    assert_eq!(frames.len(), 50, "{frames:?}");
    let first = 5 * FPS;
    assert_eq!(frames, (first..first + 50).collect::<Vec<_>>());
    stop.store(true, Ordering::Relaxed);
}

/// The RTP timestamp of a packet.
fn rtp_timestamp(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

#[test]
fn play_with_a_range_seeks_a_playing_replay_and_bad_ranges_are_refused() {
    use relay::proto::rtsp::{Method, StatusCode};
    let uid = "95270000REPLAY03";
    let (server, events, stop) = camera_with(uid, Behaviour::Streams, 10);
    let url = replay_url(&server, uid);
    let mut rtsp = tests::rtsp::RtspClient::connect(server.server.addrs.rtsp);
    let described = rtsp.request(Method::Describe, &url, &[("Accept", "application/sdp")]);
    assert_eq!(described.status, StatusCode::OK, "{described:?}");
    let base = described.headers.get("Content-Base").unwrap().to_owned();
    let setup = rtsp.request(
        Method::Setup,
        &format!("{base}trackID=0"),
        &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
    );
    assert_eq!(setup.status, StatusCode::OK, "{setup:?}");

    // Refused, and the session goes on: a malformed npt, a position beyond the recording's
    // 123 s (both 457 Invalid Range), another unit (456, with the unit we seek in).
    for (range, status) in [
        ("npt=abc-", StatusCode::INVALID_RANGE),
        ("npt=0:61:00-", StatusCode::INVALID_RANGE),
        ("npt=200-", StatusCode::INVALID_RANGE),
        (
            "clock=20220110T000200Z-",
            StatusCode::HEADER_FIELD_NOT_VALID,
        ),
    ] {
        let refused = rtsp.request(Method::Play, &base, &[("Range", range)]);
        assert_eq!(refused.status, status, "{range}: {refused:?}");
        if status == StatusCode::HEADER_FIELD_NOT_VALID {
            assert_eq!(refused.headers.get("Accept-Ranges"), Some("npt"));
        }
    }

    // From the beginning: no seek, the device's PTS start at 0.
    let played = rtsp.request(Method::Play, &base, &[("Range", "npt=0.000-")]);
    assert_eq!(played.status, StatusCode::OK, "{played:?}");
    assert_eq!(played.headers.get("Range"), Some("npt=0.000-"));
    let (_, first) = rtsp.frame().expect("video");
    assert!(
        rtp_timestamp(&first) < 2 * 90_000,
        "{}",
        rtp_timestamp(&first)
    );

    // While playing: to 1:02.5, which the device plays from 62 s (whole seconds).
    let sought = rtsp.request(Method::Play, &base, &[("Range", "npt=0:01:02.5-")]);
    assert_eq!(sought.status, StatusCode::OK, "{sought:?}");
    assert_eq!(sought.headers.get("Range"), Some("npt=62.000-"));
    let seek = expect_seek(&events);
    let span = RecordingSpan::from_file_name(RECORDING).unwrap();
    assert_eq!(seek.time, span.start.plus_seconds(62));
    assert_eq!(seek.seek_seq, 1024);
    // Everything after the answer is the new position: it starts on the device's keyframe at
    // 62 s (RTP timestamps are the device's PTS at 90 kHz) and runs on from there.
    let mut timestamps = Vec::new();
    while timestamps.len() < 25 {
        let (channel, packet) = rtsp.frame().expect("video after the seek");
        assert_eq!(channel, 0);
        let ts = rtp_timestamp(&packet);
        if timestamps.last() != Some(&ts) {
            timestamps.push(ts);
        }
    }
    assert_eq!(timestamps[0], 62 * 90_000, "{timestamps:?}");
    assert!(
        timestamps.windows(2).all(|w| w[1] == w[0] + 90_000 / FPS),
        "{timestamps:?}"
    );

    // A second seek moves the sequence on; `now` continues where it is.
    let sought = rtsp.request(Method::Play, &base, &[("Range", "npt=10-20")]);
    assert_eq!(sought.headers.get("Range"), Some("npt=10.000-"));
    let seek = expect_seek(&events);
    assert_eq!(seek.time, span.start.plus_seconds(10));
    assert_eq!(seek.seek_seq, 2048);
    let now = rtsp.request(Method::Play, &base, &[("Range", "npt=now-")]);
    assert_eq!(now.status, StatusCode::OK);
    assert_eq!(now.headers.get("Range"), Some("npt=now-"));
    let teardown = rtsp.request(Method::Teardown, &base, &[]);
    assert_eq!(teardown.status, StatusCode::OK);
    stop.store(true, Ordering::Relaxed);
}
