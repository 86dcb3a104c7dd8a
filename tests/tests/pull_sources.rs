//! Pull sources end to end: the relay pulls from GStreamer's RTSP server (Digest authentication,
//! over TCP interleaved and over UDP; a server that refuses UDP), from its own RTSPS port, from a strict in-test upstream that refuses any handshake whose
//! `Nonce` header does not follow the counter rule (also over mutual TLS, with a client
//! certificate), and keeps viewers through an upstream that dies. ffprobe and an in-test RTSP player read what the relay serves; the client API shows the
//! sources' state.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use relay::proto::interleaved::{Demuxed, Demuxer};
use relay::proto::rtsp::{
    Method, Parsed, RtspMessage, RtspRequest, RtspResponse, SessionHeader, StatusCode, Transport,
};
use signal::sources::{HeaderRule, PullTransport, SourceSpec};
use signal::tokens::TokenOp;
use tests::{curl, require_tool, run, TestServer};

fn source(uid: &str, url: &str) -> SourceSpec {
    SourceSpec {
        uid: uid.into(),
        url: url.into(),
        transport: PullTransport::Tcp,
        client_cert: None,
        client_key: None,
        ca: None,
        on_demand: true,
        headers: Vec::new(),
    }
}

fn nonce_rule() -> HeaderRule {
    HeaderRule {
        name: "Nonce".into(),
        value: None,
        counter: Some(0),
    }
}

/// A play URL of the test server, as `relay url play` prints it.
fn play_url(server: &TestServer, uid: &str, scheme: &str) -> String {
    server.stream_url(uid, TokenOp::Play, scheme == "rtsps")
}

/// `GET /v1.0/sources/{uid}`.
fn source_status(server: &TestServer, uid: &str) -> serde_json::Value {
    let response = curl(&[&format!("{}/v1.0/sources/{uid}", server.api_url())]);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

/// Polls the source's status until `done` holds (panics after `limit` with the last status).
fn wait_status(
    server: &TestServer,
    uid: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = source_status(server, uid);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "source {uid} never got there: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ffprobe_codecs(url: &str) -> String {
    require_tool("ffprobe");
    let out = run(
        "timeout",
        &[
            "30",
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "default=nw=1",
            url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

// ----- a GStreamer RTSP server -----

struct Gst {
    child: Child,
    port: u16,
}

impl Drop for Gst {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gst_server(user: &str, password: &str) -> Gst {
    gst_server_with(user, password, &[])
}

/// `extra`: `["tcp-only"]` refuses UDP SETUPs with 461.
fn gst_server_with(user: &str, password: &str, extra: &[&str]) -> Gst {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/gst_rtsp_server.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .args([user, password])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs (scripts/test installs python3-gi and gir1.2-gst-rtsp-server-1.0)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("PORT ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the GStreamer RTSP server did not start: {line:?}"));
    Gst { child, port }
}

#[test]
fn pulls_from_gstreamer_with_digest_auth_on_demand() {
    let gst = gst_server("viewer", "s3cret");
    let good = source(
        "GSTCAM1",
        &format!("rtsp://viewer:s3cret@127.0.0.1:{}/test", gst.port),
    );
    let bad = source(
        "GSTCAM2",
        &format!("rtsp://viewer:wrong@127.0.0.1:{}/test", gst.port),
    );
    let server = TestServer::start_with(|c| c.sources = vec![good, bad]);
    let status = source_status(&server, "GSTCAM1");
    assert_eq!(
        status["status"]["state"], "idle",
        "on demand: idle until a viewer"
    );
    assert_eq!(
        status["url"],
        format!("rtsp://viewer:***@127.0.0.1:{}/test", gst.port)
    );

    let probed = ffprobe_codecs(&play_url(&server, "GSTCAM1", "rtsp"));
    assert!(probed.contains("codec_name=h264"), "{probed}");
    assert!(
        probed.contains("width=320") && probed.contains("height=240"),
        "{probed}"
    );
    let status = source_status(&server, "GSTCAM1");
    assert!(
        status["status"]["sessions"].as_u64().unwrap() >= 1,
        "{status}"
    );

    // A wrong password: the viewer's DESCRIBE gets 503 once the attempt failed; the source's
    // state says why.
    let url = play_url(&server, "GSTCAM2", "rtsp");
    let out = run(
        "timeout",
        &[
            "20",
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            &url,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("503") || stderr.contains("5XX"),
        "expected 503 Source Unavailable: {stderr}"
    );
    let status = wait_status(&server, "GSTCAM2", Duration::from_secs(20), |s| {
        s["status"]["state"] == "backoff"
    });
    let error = status["status"]["last_error"].as_str().unwrap();
    assert!(error.contains("refused the user and password"), "{error}");
}

/// The video frames ffprobe decodes from `url` in `seconds` of stream: (key frame, pts) in order.
fn ffprobe_frames(url: &str, seconds: u32) -> Vec<(bool, f64)> {
    require_tool("ffprobe");
    let out = run(
        "timeout",
        &[
            "40",
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-select_streams",
            "v:0",
            "-read_intervals",
            &format!("%+{seconds}"),
            "-show_entries",
            "frame=key_frame,pts_time",
            "-of",
            "csv=p=0",
            url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',');
            let key = fields.next()? == "1";
            // The first frame may have no time yet (before the first RTCP sender report).
            let pts = fields.next()?.parse().ok()?;
            Some((key, pts))
        })
        .collect()
}

#[test]
fn pulls_from_gstreamer_over_udp_frame_for_frame() {
    let gst = gst_server("viewer", "s3cret");
    let mut spec = source(
        "GSTUDP1",
        &format!("rtsp://viewer:s3cret@127.0.0.1:{}/test", gst.port),
    );
    spec.transport = PullTransport::Udp;
    let server = TestServer::start_with(|c| c.sources = vec![spec]);
    assert_eq!(source_status(&server, "GSTUDP1")["transport"], "udp");

    // GStreamer's clip is 25 frames/s with a key frame every 25 frames: every frame of 4 s must
    // come through, in order, 40 ms apart, key frames exactly one second apart.
    let frames = ffprobe_frames(&play_url(&server, "GSTUDP1", "rtsp"), 4);
    assert!(frames.len() >= 75, "{} frames: {frames:?}", frames.len());
    for pair in frames.windows(2) {
        let step = pair[1].1 - pair[0].1;
        assert!(
            (step - 0.040).abs() < 0.002,
            "a frame missing or out of order between {pair:?}: {frames:?}"
        );
    }
    let keys: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, (key, _))| *key)
        .map(|(i, _)| i)
        .collect();
    assert!(keys.len() >= 2, "{frames:?}");
    assert!(keys.windows(2).all(|k| k[1] - k[0] == 25), "{keys:?}");

    let metrics = curl(&[&format!("{}/metrics", server.api_url())]);
    let (families, samples) = tests::parse_prometheus(&String::from_utf8_lossy(&metrics.body));
    for family in [
        "rop_pull_udp_packets_lost",
        "rop_pull_udp_datagrams_dropped",
    ] {
        assert!(
            families.iter().any(|(f, k)| f == family && k == "counter"),
            "{family} declared as a counter"
        );
    }
    let value = |name, labels: &[(&str, &str)]| tests::prom_value(&samples, name, labels);
    assert!(value("rop_stream_bytes_in_total", &[("mode", "pull")]) > 0.0);
    assert_eq!(
        value(
            "rop_pull_udp_datagrams_dropped_total",
            &[("reason", "stray_source")]
        ),
        0.0
    );
    let status = source_status(&server, "GSTUDP1");
    assert_eq!(status["status"]["state"], "playing", "{status}");
}

#[test]
fn udp_source_refused_by_the_server_says_so() {
    let gst = gst_server_with("viewer", "s3cret", &["tcp-only"]);
    let mut spec = source(
        "GSTNOUDP",
        &format!("rtsp://viewer:s3cret@127.0.0.1:{}/test", gst.port),
    );
    spec.transport = PullTransport::Udp;
    spec.on_demand = false;
    let server = TestServer::start_with(|c| c.sources = vec![spec]);
    let status = wait_status(&server, "GSTNOUDP", Duration::from_secs(20), |s| {
        s["status"]["state"] == "backoff"
    });
    let error = status["status"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("SETUP answered 461")
            && error.contains("does not serve RTP over UDP")
            && error.contains(r#"set transport = "tcp""#),
        "{status}"
    );
    assert_eq!(status["status"]["sessions"], 0, "{status}");
}

// ----- an in-test upstream with the Nonce rule -----

/// What the strict upstream saw.
#[derive(Default)]
struct UpstreamStats {
    /// Handshakes that reached PLAY.
    played: AtomicUsize,
    /// Handshakes refused for a wrong Nonce.
    refused: AtomicUsize,
    /// Connections accepted.
    connections: AtomicUsize,
    /// TEARDOWNs received.
    teardowns: AtomicUsize,
    /// SETUPs that asked for UDP.
    udp_setups: AtomicUsize,
}

const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x47, 0xfe, 0xc8];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

fn upstream_sdp() -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=strict\r\nt=0 0\r\na=control:*\r\n\
         m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
         a=fmtp:96 packetization-mode=1;sprop-parameter-sets={},{}\r\na=control:track1\r\n",
        b64.encode(SPS),
        b64.encode(PPS)
    )
}

/// Either side of the upstream's connection: plain TCP or rustls over TCP.
trait Wire: Read + Write + Send {}
impl<T: Read + Write + Send> Wire for T {}

/// One upstream connection, shared by the request reader and the media writer. Reads poll with
/// a short socket timeout so the lock is never held long.
type Shared = Arc<std::sync::Mutex<Box<dyn Wire>>>;

/// Listens on port 0 (TLS with `tls`); each connection must send `Nonce: 0` first and then the
/// previous answer's Nonce plus one, or it gets 400 and is closed. After PLAY it sends one IDR
/// packet every 20 ms; the first connection is cut after `cut_first_after` packets when set.
///
/// A SETUP asking for UDP gets it: the packets go from the announced `server_port` to the
/// client's RTP port, with two faults a real network has: every tenth sequence number is
/// skipped (lost), and after every tenth packet a datagram of the [`STRAY`] marker comes from
/// another socket (someone else sending to the port). "Cut" then means the packets stop while
/// the RTSP connection keeps answering.
fn strict_upstream_with(
    cut_first_after: Option<usize>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<UpstreamStats>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(UpstreamStats::default());
    let shared = stats.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let n = shared.connections.fetch_add(1, Ordering::SeqCst);
            let cut = if n == 0 { cut_first_after } else { None };
            let stats = shared.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                let tcp = stream.try_clone().unwrap();
                let wire: Box<dyn Wire> = match tls {
                    Some(config) => {
                        let session = rustls::ServerConnection::new(config).unwrap();
                        Box::new(rustls::StreamOwned::new(session, stream))
                    }
                    None => Box::new(stream),
                };
                serve_strict(Arc::new(std::sync::Mutex::new(wire)), &tcp, cut, &stats);
            });
        }
    });
    (addr, stats)
}

fn strict_upstream(cut_first_after: Option<usize>) -> (SocketAddr, Arc<UpstreamStats>) {
    strict_upstream_with(cut_first_after, None)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The payload of the foreign datagrams sent to a UDP client (RTP version 2, payload type 111).
const STRAY: &[u8] = &[
    0x80, 111, 0xde, 0xad, 0, 0, 0, 0, 0x57, 0x7a, 0x44, 0x00, 0xff,
];

/// Where the upstream sends RTP over UDP: its server socket and the client's RTP address.
type UdpTarget = (std::net::UdpSocket, SocketAddr);

fn serve_strict(wire: Shared, tcp: &TcpStream, cut_after: Option<usize>, stats: &UpstreamStats) {
    let write = |bytes: &[u8]| {
        let mut w = wire.lock().unwrap();
        w.write_all(bytes).and_then(|_| w.flush())
    };
    let mut buf = Vec::new();
    let mut expected_nonce: u64 = 0;
    let mut playing = false;
    let mut channel = 0u8;
    let mut udp: Option<UdpTarget> = None;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_exit = StopOnDrop(stop.clone());
    let idle_limit = Duration::from_secs(30);
    loop {
        let mut idle_since = Instant::now();
        let request = loop {
            match RtspRequest::parse(&buf) {
                Ok(Parsed::Complete { message, consumed }) => {
                    buf.drain(..consumed);
                    break message;
                }
                Ok(Parsed::Incomplete) => {}
                Err(_) => return,
            }
            let mut chunk = [0u8; 4096];
            let read = wire.lock().unwrap().read(&mut chunk);
            match read {
                Ok(0) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    idle_since = Instant::now();
                }
                Err(e) if is_timeout(&e) => {
                    if idle_since.elapsed() > idle_limit {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return,
            }
        };
        if !playing {
            let sent = request
                .headers
                .get("Nonce")
                .and_then(|v| v.parse::<u64>().ok());
            if sent != Some(expected_nonce) {
                stats.refused.fetch_add(1, Ordering::SeqCst);
                let refusal = RtspResponse::reply_to(&request, StatusCode::BAD_REQUEST).build();
                let _ = write(&refusal.to_bytes());
                return;
            }
        }
        let answer_nonce: u64 = rand::random::<u32>().into();
        expected_nonce = answer_nonce + 1;
        let mut reply = RtspResponse::reply_to(&request, StatusCode::OK);
        if !playing {
            reply = reply.header("Nonce", answer_nonce.to_string());
        }
        let session = SessionHeader {
            id: "5ec7e7".into(),
            timeout: Some(60),
        };
        let reply = match request.method {
            Method::Options => reply.public(&[
                Method::Options,
                Method::Describe,
                Method::Setup,
                Method::Play,
                Method::Teardown,
            ]),
            Method::Describe => reply.body("application/sdp", upstream_sdp().into_bytes()),
            Method::Setup => {
                let asked = request.headers.transports().unwrap_or_default();
                match asked.first().and_then(|t| t.client_port) {
                    Some(client) => {
                        stats.udp_setups.fetch_add(1, Ordering::SeqCst);
                        let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                        let server_port = rtp.local_addr().unwrap().port();
                        let mut answer = Transport::udp_unicast(client.rtp);
                        answer.server_port = Some(relay::proto::rtsp::Pair {
                            rtp: server_port,
                            rtcp: Some(server_port + 1),
                        });
                        udp = Some((rtp, SocketAddr::from(([127, 0, 0, 1], client.rtp))));
                        reply.session(&session).transport(&answer)
                    }
                    None => {
                        channel = asked
                            .first()
                            .and_then(|t| t.interleaved)
                            .map_or(0, |p| p.rtp);
                        reply
                            .session(&session)
                            .transport(&Transport::tcp_interleaved(channel))
                    }
                }
            }
            Method::Play => reply.session(&session),
            Method::Teardown => {
                stats.teardowns.fetch_add(1, Ordering::SeqCst);
                let _ = write(&reply.build().to_bytes());
                return;
            }
            _ => reply,
        };
        if write(&reply.build().to_bytes()).is_err() {
            return;
        }
        if request.method == Method::Play && !playing {
            playing = true;
            stats.played.fetch_add(1, Ordering::SeqCst);
            let wire = wire.clone();
            let tcp = tcp.try_clone().unwrap();
            let stop = stop.clone();
            let udp = udp.take();
            std::thread::spawn(move || {
                let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                for seq in 0u16.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if cut_after.is_some_and(|cut| usize::from(seq) >= cut) {
                        if udp.is_none() {
                            let _ = tcp.shutdown(std::net::Shutdown::Both);
                        }
                        return;
                    }
                    let ts = u32::from(seq) * 3600;
                    let mut rtp = vec![0x80, 0x80 | 96];
                    rtp.extend_from_slice(&seq.to_be_bytes());
                    rtp.extend_from_slice(&ts.to_be_bytes());
                    rtp.extend_from_slice(&[0, 0, 0, 7]);
                    rtp.extend_from_slice(&[0x65, 0x88, 0x84, 0x00, 0x33]);
                    if let Some((socket, client)) = &udp {
                        if seq % 10 != 5 {
                            let _ = socket.send_to(&rtp, client);
                        }
                        if seq % 10 == 9 {
                            let _ = stranger.send_to(STRAY, client);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let mut frame = vec![b'$', channel];
                    frame.extend_from_slice(&(rtp.len() as u16).to_be_bytes());
                    frame.extend_from_slice(&rtp);
                    let sent = {
                        let mut w = wire.lock().unwrap();
                        w.write_all(&frame).and_then(|_| w.flush())
                    };
                    if sent.is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
    }
}

/// Stops the media thread when the request reader ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A minimal RTSP player of the relay: DESCRIBE, SETUP (interleaved 0-1), PLAY.
fn play(url: &str, addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cseq = 0;
    let mut session: Option<String> = None;
    for (method, uri) in [
        (Method::Describe, url.to_owned()),
        (Method::Setup, format!("{url}/trackID=0")),
        (Method::Play, url.to_owned()),
    ] {
        cseq += 1;
        let mut builder = RtspRequest::builder(method.clone(), uri).cseq(cseq);
        if method == Method::Setup {
            builder = builder.transport(&Transport::tcp_interleaved(0));
        }
        if let Some(id) = &session {
            builder = builder.session(id);
        }
        stream.write_all(&builder.build().to_bytes()).unwrap();
        let response = read_response(&mut stream);
        assert_eq!(response.status, StatusCode::OK, "{method}: {response:?}");
        if let Ok(Some(s)) = response.headers.session() {
            session = Some(s.id);
        }
    }
    stream
}

fn read_response(stream: &mut TcpStream) -> RtspResponse {
    let mut buf = Vec::new();
    loop {
        if let Ok(Parsed::Complete {
            message: RtspMessage::Response(r),
            ..
        }) = RtspMessage::parse(&buf)
        {
            return r;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("response in time");
        assert!(n > 0, "connection closed before the response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads media from a playing connection until `want` RTP packets arrived; returns their count
/// (fewer only if the connection ended or stalled for the read timeout).
fn read_packets(stream: &mut TcpStream, want: usize) -> usize {
    let mut demuxer = Demuxer::default();
    let mut buf = BytesMut::new();
    let mut packets = 0;
    while packets < want {
        match demuxer.feed_bytes(&mut buf) {
            Ok(Some(Demuxed::Interleaved {
                channel: 0,
                payload,
            })) => {
                assert_ne!(&payload[..], STRAY, "a foreign datagram reached the viewer");
                packets += 1
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                let mut chunk = [0u8; 16384];
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return packets,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            Err(e) => panic!("bad media from the relay: {e}"),
        }
    }
    packets
}

#[test]
fn counter_header_rule_satisfies_a_strict_upstream() {
    let (upstream, stats) = strict_upstream(None);
    let mut with_rule = source("ARLOCAM", &format!("rtsp://{upstream}/cam/tcp/avc"));
    with_rule.on_demand = false;
    with_rule.headers = vec![nonce_rule()];
    let mut without = source("PLAINCAM", &format!("rtsp://{upstream}/cam/tcp/avc"));
    without.on_demand = false;
    let server = TestServer::start_with(|c| c.sources = vec![with_rule, without]);

    wait_status(&server, "ARLOCAM", Duration::from_secs(20), |s| {
        s["status"]["state"] == "playing"
    });
    let refused = wait_status(&server, "PLAINCAM", Duration::from_secs(20), |s| {
        s["status"]["state"] == "backoff"
    });
    let error = refused["status"]["last_error"].as_str().unwrap();
    assert!(error.contains("OPTIONS answered 400"), "{error}");
    assert!(stats.played.load(Ordering::SeqCst) >= 1);
    assert!(
        stats.refused.load(Ordering::SeqCst) >= 1,
        "the rule-less source was refused"
    );

    // Viewers get the pulled media through the hub.
    let mut player = play(
        &play_url(&server, "ARLOCAM", "rtsp"),
        server.server.addrs.rtsp,
    );
    assert_eq!(read_packets(&mut player, 20), 20);
    // /metrics, read with the Prometheus parser.
    let metrics = curl(&[&format!("{}/metrics", server.api_url())]);
    let (families, samples) = tests::parse_prometheus(&String::from_utf8_lossy(&metrics.body));
    for (family, kind) in [
        ("rop_pull_sources", "gauge"),
        ("rop_pull_attempts", "counter"),
        ("rop_pull_sessions", "counter"),
    ] {
        assert!(
            families.iter().any(|(f, k)| f == family && k == kind),
            "{family} declared as a {kind}"
        );
    }
    let value = |name, labels: &[(&str, &str)]| tests::prom_value(&samples, name, labels);
    assert_eq!(value("rop_pull_sources", &[("state", "playing")]), 1.0);
    assert_eq!(value("rop_pull_sources", &[("state", "backoff")]), 1.0);
    assert!(value("rop_pull_attempts_total", &[]) >= 2.0);
    assert!(value("rop_stream_bytes_in_total", &[("mode", "pull")]) > 0.0);
}

#[test]
fn upstream_dies_viewer_waits_and_the_stream_resumes() {
    // The first connection is cut after 60 packets (1.2 s); the relay must reconnect.
    let (upstream, stats) = strict_upstream(Some(60));
    let mut spec = source("FLAKYCAM", &format!("rtsp://{upstream}/cam"));
    spec.headers = vec![nonce_rule()];
    let server = TestServer::start_with(|c| {
        c.sources = vec![spec];
        // Reconnect at once rather than after the default 0.5 s.
        c.pull.backoff_min_ms = 50;
    });

    // On demand: the viewer's DESCRIBE starts the pull.
    let mut player = play(
        &play_url(&server, "FLAKYCAM", "rtsp"),
        server.server.addrs.rtsp,
    );
    let received = read_packets(&mut player, 150);
    assert_eq!(
        received, 150,
        "the viewer kept receiving across the upstream's death"
    );
    assert!(stats.connections.load(Ordering::SeqCst) >= 2);
    let status = source_status(&server, "FLAKYCAM");
    assert!(
        status["status"]["sessions"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        status["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("connection lost"),
        "{status}"
    );
}

#[test]
fn udp_pull_drops_strays_counts_gaps_and_reconnects_a_silent_source() {
    // The first connection's packets stop after 60 (1.2 s) while its RTSP side stays up: only
    // the media timeout can notice.
    let (upstream, stats) = strict_upstream(Some(60));
    let mut spec = source("UDPCAM", &format!("rtsp://{upstream}/cam"));
    spec.headers = vec![nonce_rule()];
    spec.transport = PullTransport::Udp;
    let server = TestServer::start_with(|c| {
        c.sources = vec![spec];
        c.pull.media_timeout_secs = 1;
        c.pull.backoff_min_ms = 50;
    });
    let mut player = play(
        &play_url(&server, "UDPCAM", "rtsp"),
        server.server.addrs.rtsp,
    );
    // 150 packets: past the first connection's 54 (60 minus the skipped ones), so across the
    // reconnect. No stray datagram among them (read_packets checks).
    assert_eq!(read_packets(&mut player, 150), 150);
    assert!(stats.udp_setups.load(Ordering::SeqCst) >= 2);
    let status = source_status(&server, "UDPCAM");
    assert!(
        status["status"]["sessions"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        status["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("no media from the source within 1s"),
        "{status}"
    );
    let metrics = curl(&[&format!("{}/metrics", server.api_url())]);
    let (_, samples) = tests::parse_prometheus(&String::from_utf8_lossy(&metrics.body));
    let value = |name, labels: &[(&str, &str)]| tests::prom_value(&samples, name, labels);
    // At least the first connection's six gaps and five strays (seq 9, 19, .. 49).
    assert!(value("rop_pull_udp_packets_lost_total", &[]) >= 6.0);
    assert!(
        value(
            "rop_pull_udp_datagrams_dropped_total",
            &[("reason", "stray_source")]
        ) >= 5.0
    );
    assert_eq!(
        value(
            "rop_pull_udp_datagrams_dropped_total",
            &[("reason", "bad_size")]
        ),
        0.0
    );
}

#[test]
fn on_demand_source_is_torn_down_after_the_linger() {
    let (upstream, stats) = strict_upstream(None);
    let mut spec = source("LINGERCAM", &format!("rtsp://{upstream}/cam"));
    spec.headers = vec![nonce_rule()];
    let server = TestServer::start_with(|c| {
        c.sources = vec![spec];
        c.pull.linger_secs = Some(1);
    });
    let mut player = play(
        &play_url(&server, "LINGERCAM", "rtsp"),
        server.server.addrs.rtsp,
    );
    assert_eq!(read_packets(&mut player, 20), 20);
    assert_eq!(
        source_status(&server, "LINGERCAM")["status"]["state"],
        "playing"
    );
    drop(player);
    // The last viewer left: after the one-second linger the source gets TEARDOWN and goes idle.
    wait_status(&server, "LINGERCAM", Duration::from_secs(20), |s| {
        s["status"]["state"] == "idle"
    });
    // The upstream reads the TEARDOWN on its own thread, maybe just after the state changed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.teardowns.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the upstream never got TEARDOWN");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stats.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn sources_through_the_api_are_stored_and_pulled() {
    let (upstream, stats) = strict_upstream(None);
    let dir = tempfile::tempdir().unwrap();
    let body = serde_json::json!({
        "uid": "APICAM",
        "url": format!("rtsp://u:pw@{upstream}/cam"),
        "on_demand": false,
        "headers": [{"name": "Nonce", "counter": 0}, {"name": "User-Agent", "value": "Arlo"}],
    })
    .to_string();
    {
        let server = relay_in(dir.path());
        let api = format!("http://{}", server.addrs.api);
        let created = curl(&["-X", "POST", "-d", &body, &format!("{api}/v1.0/sources")]);
        assert_eq!(
            created.status,
            201,
            "{}",
            String::from_utf8_lossy(&created.body)
        );
        let created = created.json();
        assert_eq!(created["url"], format!("rtsp://u:***@{upstream}/cam"));
        // The 201 carries the owner shard's answer: the always-on source's first attempt is
        // under way already, not picked up at some later sweep.
        assert_eq!(created["status"]["state"], "connecting", "{created}");
        assert_eq!(created["status"]["attempts"], 1, "{created}");
        let bad = curl(&[
            "-X",
            "POST",
            "-d",
            r#"{"uid":"X-1","url":"http://h"}"#,
            &format!("{api}/v1.0/sources"),
        ]);
        assert_eq!(bad.status, 400);
        let listed = curl(&[&format!("{api}/v1.0/sources")]).json();
        assert_eq!(listed["items"].as_array().unwrap().len(), 1);
        server.stop();
    }
    // Survives a restart (it was in the store before the 201) and is pulled always-on.
    let server = relay_in(dir.path());
    let api = format!("http://{}", server.addrs.api);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = curl(&[&format!("{api}/v1.0/sources/APICAM")]).json();
        if status["status"]["state"] == "playing" {
            break;
        }
        assert!(Instant::now() < deadline, "never played: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stats.played.load(Ordering::SeqCst) >= 1);
    let deleted = curl(&["-X", "DELETE", &format!("{api}/v1.0/sources/APICAM")]);
    assert_eq!(deleted.status, 200);
    let gone = curl(&[&format!("{api}/v1.0/sources/APICAM")]);
    assert_eq!(gone.status, 404);
    server.stop();
}

fn relay_in(dir: &std::path::Path) -> relay::server::RunningServer {
    let config = signal::config::Config {
        listen: signal::config::ListenConfig::ephemeral(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )),
        ..Default::default()
    };
    relay::server::start(config, dir).expect("server starts")
}

#[test]
fn pulls_its_own_rtsps_port() {
    require_tool("ffmpeg");
    let clip = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/clip_h264_aac.mp4");
    // The source URL needs the server's port and CA, known once it runs: add it over the API.
    let server = TestServer::start();
    let publish = server.stream_url("ORIGIN1", TokenOp::Publish, false);
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-stream_loop", "-1", "-i"])
        .arg(&clip)
        .args([
            "-c",
            "copy",
            "-f",
            "rtsp",
            "-rtsp_transport",
            "tcp",
            &publish,
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let origin = play_url(&server, "ORIGIN1", "rtsps").replace("127.0.0.1", "localhost");
    let body = serde_json::json!({
        "uid": "RELAYED1",
        "url": origin,
        "ca": server.ca_file(),
    })
    .to_string();
    let created = curl(&[
        "-X",
        "POST",
        "-d",
        &body,
        &format!("{}/v1.0/sources", server.api_url()),
    ]);
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    // On demand: idle on its shard when the 201 leaves, and playable at once.
    assert_eq!(created.json()["status"]["state"], "idle");
    let probed = ffprobe_codecs(&play_url(&server, "RELAYED1", "rtsp"));
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    assert!(probed.contains("codec_name=h264"), "{probed}");
    assert!(probed.contains("codec_name=aac"), "{probed}");
}

#[test]
fn pulls_rtsps_with_a_client_certificate() {
    // The upstream asks for a client certificate chained to the server's CA (its mutual-TLS
    // configuration, as on the device ports); the pull presents one issued by that CA.
    let server = TestServer::start();
    let pki = &server.server.pki;
    let (upstream, stats) = strict_upstream_with(None, Some(pki.mtls_config()));
    let issued = pki
        .issue_device(
            "95270000PULLCL01",
            pki::DeviceKey::Generate,
            Duration::from_secs(3600),
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, &issued.cert_chain_pem).unwrap();
    std::fs::write(&key, issued.key_pem.unwrap()).unwrap();
    let url = format!("rtsps://localhost:{}/cam", upstream.port());
    let post = |uid: &str, with_cert: bool| {
        let mut body = serde_json::json!({
            "uid": uid,
            "url": url,
            "ca": server.ca_file(),
            "on_demand": false,
            "headers": [{"name": "Nonce", "counter": 0}],
        });
        if with_cert {
            body["client_cert"] = serde_json::json!(cert);
            body["client_key"] = serde_json::json!(key);
        }
        let created = curl(&[
            "-X",
            "POST",
            "-d",
            &body.to_string(),
            &format!("{}/v1.0/sources", server.api_url()),
        ]);
        assert_eq!(
            created.status,
            201,
            "{}",
            String::from_utf8_lossy(&created.body)
        );
    };
    post("MTLSCAM", true);
    post("NOCERTCAM", false);
    wait_status(&server, "MTLSCAM", Duration::from_secs(20), |s| {
        s["status"]["state"] == "playing"
    });
    let refused = wait_status(&server, "NOCERTCAM", Duration::from_secs(20), |s| {
        s["status"]["state"] == "backoff"
    });
    assert!(stats.played.load(Ordering::SeqCst) >= 1);
    let error = refused["status"]["last_error"].as_str().unwrap();
    // TLS 1.3: the client learns of the refusal from the alert on its first read.
    assert!(error.contains("CertificateRequired"), "{refused}");
    let mut player = play(
        &play_url(&server, "MTLSCAM", "rtsp"),
        server.server.addrs.rtsp,
    );
    assert_eq!(read_packets(&mut player, 20), 20);
}
