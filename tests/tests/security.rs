//! Who gets in, over real sockets against a running server: the device ports refuse a device
//! that presents its own certificate but claims another provisioned device's UID (signalling
//! 61005, streams 61006; registration 61002 is in `provisioning.rs`), and the encryptTCP ports
//! (keep-alive 61003, streams 61007) refuse unknown and forged access keys, a session replayed
//! byte for byte, and a frame whose HMAC was tampered with; the keep-alive refusals are counted
//! on `/metrics`. Missing, foreign, expired and revoked certificates are in `provisioning.rs`;
//! the sans-IO ingest checks (replayed frames, flipped bits) in `ingest_pipeline.rs`. Then the
//! connection limits (`[limits]`): a connection over the per-address limit is closed at once,
//! and an address that keeps presenting bad play tokens is refused for a while; both counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::device::{EncryptPolicy, StreamDevice};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{json, Value};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{BodyMessage, Handshake, Heartbeat};
use signal::proto::core_packet::{cmd, CoreHeader, CODE_OK};
use signal::proto::encrypt_tcp::Hello;
use signal::session::sim::SimDevice;
use tests::TestServer;

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const UID_A: &str = "95270000SECURA01";
const UID_B: &str = "95270000SECURB02";

// ----- HTTP(S) and provisioning -----

fn exchange(
    stream: &mut (impl Read + Write),
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, String) {
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
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

fn api(server: &TestServer, method: &str, path: &str, body: &Value) -> (u16, String) {
    let mut stream = TcpStream::connect(server.server.addrs.api).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    exchange(&mut stream, method, path, body)
}

fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

struct Device {
    ca: String,
    cert: String,
    key: String,
    keys: AccessKeyPair,
}

impl Device {
    fn tls(&self) -> Arc<rustls::ClientConfig> {
        pki::client_config_for_device(&self.ca, &self.cert, &self.key).unwrap()
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn provision(server: &TestServer, uid: &str) -> Device {
    let (status, session) = api(
        server,
        "POST",
        "/v1.0/devices/initialization-session",
        &json!({ "uid": uid }),
    );
    assert_eq!(status, 200, "{session}");
    let session = json(&session);
    let ca = server.server.pki.ca_pem().to_owned();
    let mut stream = tls_connect(
        server.server.addrs.credentials,
        pki::client_config_trusting(&ca).unwrap(),
    );
    let (status, credentials) = exchange(
        &mut stream,
        "POST",
        "/v1.0/devices/credetials",
        &json!({ "uid": uid, "code": session["code"] }),
    );
    assert_eq!(status, 200, "{credentials}");
    let credentials = json(&credentials);
    let cert = credentials["cert"].as_str().unwrap().to_owned();
    let key = credentials["key"].as_str().unwrap().to_owned();
    let tls = pki::client_config_for_device(&ca, &cert, &key).unwrap();
    let mut stream = tls_connect(server.server.addrs.registration, tls);
    let (status, registration) = exchange(
        &mut stream,
        "POST",
        "/v1.0/devices/registration",
        &json!({ "uid": uid }),
    );
    assert_eq!(status, 200, "{registration}");
    let registration = json(&registration);
    Device {
        ca,
        cert,
        key,
        keys: AccessKeyPair {
            access_key: registration["accesskey"].as_str().unwrap().to_owned(),
            secret: registration["secretAccesskey"].as_str().unwrap().to_owned(),
        },
    }
}

/// The value of one `/metrics` sample (0 when absent).
fn metric(server: &TestServer, sample: &str) -> u64 {
    let (status, text) = api(server, "GET", "/metrics", &Value::Null);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn online(server: &TestServer, uid: &str) -> bool {
    let (status, body) = api(server, "GET", &format!("/v1.0/devices/{uid}"), &Value::Null);
    status == 200 && json(&body)["online"] == true
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {IO_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn handshake(uid: &str) -> Handshake {
    Handshake {
        uid: uid.to_owned(),
        family: Some("battery".into()),
        model: Some("Argus 2".into()),
        firmware: Some("Argus_2_200104_751".into()),
        network_type: Some("wifi".into()),
        carrier: None,
    }
}

/// Everything the server sends until it closes the connection (or `within` passes); `true`
/// when it closed.
fn drain(stream: &mut impl Read, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (received, true),
        }
    }
    (received, false)
}

fn short_reads(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
}

// ----- mutual TLS: another device's certificate -----

#[test]
fn signalling_refuses_a_certificate_claiming_another_provisioned_device() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let a = provision(&server, UID_A);
    let b = provision(&server, UID_B);

    // B is online with its own certificate.
    let mut b_link = tls_connect(server.server.addrs.signaling, b.tls());
    let mut b_sim = SimDevice::signalling();
    b_link
        .write_all(&b_sim.handshake(&handshake(UID_B), 1))
        .unwrap();
    b_link.flush().unwrap();
    wait_until("B online", || online(&server, UID_B));

    // A's certificate, B's UID in the handshake: closed, counted, B undisturbed.
    let before = metric(
        &server,
        "rop_device_links_closed_total{reason=\"uid_mismatch\"}",
    );
    let mut impostor = tls_connect(server.server.addrs.signaling, a.tls());
    short_reads(&impostor.sock);
    let mut sim = SimDevice::signalling();
    impostor
        .write_all(&sim.handshake(&handshake(UID_B), 1))
        .unwrap();
    impostor.flush().unwrap();
    let (reply, closed) = drain(&mut impostor, Duration::from_secs(5));
    assert!(closed, "the impostor's link is closed");
    assert!(
        sim.receive(&reply).unwrap_or_default().is_empty(),
        "no handshake reply to the impostor"
    );
    assert_eq!(
        metric(
            &server,
            "rop_device_links_closed_total{reason=\"uid_mismatch\"}"
        ),
        before + 1
    );
    assert!(online(&server, UID_B), "the real B is still online");
    assert!(!online(&server, UID_A));
}

/// A stream connection on 61006 with `device`'s certificate and a handshake naming `uid`;
/// returns the handshake reply's code, `None` when the server closed without one.
fn stream_tls_handshake(server: &TestServer, device: &Device, uid: &str) -> Option<u32> {
    let mut link = tls_connect(server.server.addrs.stream_tls, device.tls());
    short_reads(&link.sock);
    let mut stream_device = StreamDevice::tls(77);
    let bytes = stream_device.handshake(&handshake(uid)).unwrap();
    link.write_all(&bytes).unwrap();
    link.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match link.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                let packets = stream_device.receive(&buf[..n]).ok()?;
                if let Some(reply) = packets.first() {
                    assert_eq!(reply.header.command, cmd::HANDSHAKE);
                    return Some(reply.header.response_code);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
    }
    panic!("neither a handshake reply nor a close within 5 s");
}

#[test]
fn stream_tls_refuses_a_certificate_claiming_another_provisioned_device() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let a = provision(&server, UID_A);
    provision(&server, UID_B);
    // The control: A's certificate and A's UID get the handshake reply.
    assert_eq!(stream_tls_handshake(&server, &a, UID_A), Some(CODE_OK));
    // A's certificate with B's UID: closed without a reply.
    assert_eq!(stream_tls_handshake(&server, &a, UID_B), None);
}

// ----- encryptTCP: access keys, replay, HMAC -----

/// A hello for `access_key` signed with `secret`.
fn hello(access_key: &str, secret: &str) -> [u8; 100] {
    let mut key = [0u8; 32];
    key.copy_from_slice(access_key.as_bytes());
    Hello {
        code: 0,
        access_key: key,
        nonce: [9; 32],
    }
    .encode(secret.as_bytes())
}

/// Sends `bytes` as the first thing on a new connection to `addr`; what comes back before the
/// server closes (or 3 s pass), and whether it closed.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    short_reads(&stream);
    stream.write_all(bytes).unwrap();
    drain(&mut stream, Duration::from_secs(3))
}

#[test]
fn keep_alive_refuses_unknown_and_forged_access_keys_and_counts_them() {
    let server = TestServer::start();
    let device = provision(&server, UID_A);
    let addr = server.server.addrs.keepalive;
    let unknown_before = metric(
        &server,
        "rop_device_links_closed_total{reason=\"unknown_key_index\"}",
    );
    let forged_before = metric(
        &server,
        "rop_device_links_closed_total{reason=\"bad_hello\"}",
    );

    // A key index the server never issued (the UID hash part is the device's).
    let unknown = format!("unknownKeyIdx001{}", &device.keys.access_key[16..]);
    let (reply, closed) = send_raw(addr, &hello(&unknown, &device.keys.secret));
    assert!(
        closed && reply.is_empty(),
        "unknown key: {} bytes",
        reply.len()
    );

    // The device's access key signed with a guessed secret.
    let (reply, closed) = send_raw(
        addr,
        &hello(&device.keys.access_key, "not the secret of this accesskey"),
    );
    assert!(closed && reply.is_empty(), "forged: {} bytes", reply.len());

    assert_eq!(
        metric(
            &server,
            "rop_auth_failures_total{listener=\"keepalive\",failure=\"access_key\"}"
        ),
        2,
        "both bad hellos counted as guesses"
    );
    wait_until("both refusals counted", || {
        metric(
            &server,
            "rop_device_links_closed_total{reason=\"unknown_key_index\"}",
        ) == unknown_before + 1
            && metric(
                &server,
                "rop_device_links_closed_total{reason=\"bad_hello\"}",
            ) == forged_before + 1
    });
    assert!(!online(&server, UID_A));
}

/// Closed-link counts of the reasons a tampered or replayed encryptTCP stream ends with.
fn tamper_refusals(server: &TestServer) -> u64 {
    ["bad_frame", "bad_packet", "bad_handshake"]
        .iter()
        .map(|reason| {
            metric(
                server,
                &format!("rop_device_links_closed_total{{reason=\"{reason}\"}}"),
            )
        })
        .sum()
}

#[test]
fn keep_alive_refuses_a_replayed_session() {
    let server = TestServer::start();
    let device = provision(&server, UID_A);
    let addr = server.server.addrs.keepalive;

    // A real session, recorded: hello, handshake, heartbeat.
    let (mut sim, hello) = SimDevice::keep_alive(&device.keys, [3; 32]);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(&hello).unwrap();
    let mut reply = [0u8; 100];
    stream.read_exact(&mut reply).unwrap();
    sim.receive(&reply).unwrap();
    assert_eq!(sim.hello_code(), Some(200));
    let mut recorded = hello.to_vec();
    for bytes in [
        sim.handshake(&handshake(UID_A), 1),
        sim.heartbeat(&Heartbeat::default(), 2),
    ] {
        stream.write_all(&bytes).unwrap();
        recorded.extend_from_slice(&bytes);
    }
    wait_until("the recorded session online", || online(&server, UID_A));
    drop(stream);
    wait_until("offline after the close", || !online(&server, UID_A));

    // The same bytes again: the hello is answered (with a new server nonce), the frames,
    // encrypted under the old session's key, are refused and the link closed.
    let before = tamper_refusals(&server);
    let (reply, closed) = send_raw(addr, &recorded);
    assert!(closed, "the replayed session is closed");
    assert_eq!(reply.len(), 100, "only the hello reply");
    assert!(!online(&server, UID_A));
    wait_until("the replay counted", || {
        tamper_refusals(&server) == before + 1
    });
}

#[test]
fn keep_alive_closes_a_link_on_a_frame_with_a_bad_hmac() {
    let server = TestServer::start();
    let device = provision(&server, UID_A);
    let (mut sim, hello) = SimDevice::keep_alive(&device.keys, [4; 32]);
    let mut stream = TcpStream::connect(server.server.addrs.keepalive).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(&hello).unwrap();
    let mut reply = [0u8; 100];
    stream.read_exact(&mut reply).unwrap();
    sim.receive(&reply).unwrap();
    stream
        .write_all(&sim.handshake(&handshake(UID_A), 1))
        .unwrap();
    wait_until("online", || online(&server, UID_A));

    let before = metric(
        &server,
        "rop_device_links_closed_total{reason=\"bad_frame\"}",
    );
    let mut heartbeat = sim
        .packet(
            CoreHeader::request(cmd::HEARTBEAT, 2),
            Heartbeat::default().encode().as_bytes(),
        )
        .to_vec();
    *heartbeat.last_mut().unwrap() ^= 0x01;
    stream.write_all(&heartbeat).unwrap();
    short_reads(&stream);
    let (_, closed) = drain(&mut stream, Duration::from_secs(5));
    assert!(closed, "the link is closed on the bad HMAC");
    wait_until("counted", || {
        metric(
            &server,
            "rop_device_links_closed_total{reason=\"bad_frame\"}",
        ) == before + 1
    });
    wait_until("offline", || !online(&server, UID_A));
}

#[test]
fn stream_tcp_refuses_unknown_and_forged_access_keys_and_replays() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let device = provision(&server, UID_A);
    let addr = server.server.addrs.stream_tcp;

    let unknown = format!("unknownKeyIdx001{}", &device.keys.access_key[16..]);
    let (reply, closed) = send_raw(addr, &hello(&unknown, &device.keys.secret));
    assert!(
        closed && reply.is_empty(),
        "unknown key: {} bytes",
        reply.len()
    );
    let (reply, closed) = send_raw(
        addr,
        &hello(&device.keys.access_key, "not the secret of this accesskey"),
    );
    assert!(closed && reply.is_empty(), "forged: {} bytes", reply.len());
    assert_eq!(
        metric(
            &server,
            "rop_auth_failures_total{listener=\"stream_tcp\",failure=\"access_key\"}"
        ),
        2,
        "both bad hellos counted as guesses"
    );

    // A real stream connection up to the handshake reply, recorded.
    let (mut stream_device, hello) =
        StreamDevice::encrypt_tcp(&device.keys, [5; 32], 77, EncryptPolicy::All);
    let mut stream = TcpStream::connect(addr).unwrap();
    short_reads(&stream);
    stream.write_all(&hello).unwrap();
    let mut recorded = hello.to_vec();
    let mut reply = [0u8; 100];
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.read_exact(&mut reply).unwrap();
    short_reads(&stream);
    assert!(stream_device.receive(&reply).unwrap().is_empty());
    assert_eq!(stream_device.hello_code(), Some(200));
    let handshake_bytes = stream_device.handshake(&handshake(UID_A)).unwrap();
    stream.write_all(&handshake_bytes).unwrap();
    recorded.extend_from_slice(&handshake_bytes);
    let (reply, _) = drain(&mut stream, Duration::from_millis(600));
    let packets = stream_device.receive(&reply).unwrap();
    assert_eq!(packets.len(), 1, "the handshake reply to the real device");
    assert_eq!(packets[0].header.response_code, CODE_OK);
    drop(stream);

    // Replayed: the hello is answered, the handshake (under the old key) is not.
    let mut replay = TcpStream::connect(addr).unwrap();
    short_reads(&replay);
    replay.write_all(&recorded).unwrap();
    let (reply, _) = drain(&mut replay, Duration::from_secs(2));
    assert_eq!(reply.len(), 100, "only the hello reply to the replay");
}

// ----- connection limits and guessing -----

/// `/metrics`, or `None` while the server refuses this address.
fn try_metrics(server: &TestServer) -> Option<String> {
    let mut stream = TcpStream::connect(server.server.addrs.api).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// True when the server closes a fresh connection to `addr` without a word.
fn closed_at_once(addr: SocketAddr) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    short_reads(&stream);
    let (received, closed) = drain(&mut stream, Duration::from_secs(3));
    closed && received.is_empty()
}

#[test]
fn connection_over_the_per_address_limit_is_closed_at_once_and_counted() {
    let server = TestServer::start_with(|c| {
        c.shards = Some(2);
        c.limits.exempt_loopback = false;
        c.limits.max_connections_per_ip = 3;
    });
    let rtsp = server.server.addrs.rtsp;
    // Three connections are held, each known to be admitted (it was answered)...
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(rtsp).unwrap();
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream
                .write_all(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"RTSP/1.0 200"), "admitted");
            stream
        })
        .collect();
    let mut probe = TcpStream::connect(rtsp).unwrap();
    short_reads(&probe);
    // ...the fourth is closed without a byte, whatever the port.
    let (received, closed) = drain(&mut probe, Duration::from_secs(3));
    assert!(
        closed && received.is_empty(),
        "the fourth connection is refused"
    );
    assert!(closed_at_once(server.server.addrs.keepalive));
    drop(held);
    let mut metrics = String::new();
    wait_until("metrics once the held connections closed", || {
        try_metrics(&server).is_some_and(|text| {
            metrics = text;
            true
        })
    });
    assert_eq!(
        sample(
            &metrics,
            "rop_connections_refused_total{listener=\"rtsp\",reason=\"per_ip_limit\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "rop_connections_refused_total{listener=\"keepalive\",reason=\"per_ip_limit\"}"
        ),
        1
    );
}

#[test]
fn an_address_guessing_play_tokens_is_refused_for_a_while() {
    let server = TestServer::start_with(|c| {
        c.limits.exempt_loopback = false;
        c.limits.max_failures_per_ip = 3;
        c.limits.block_secs = 2;
    });
    let rtsp = server.server.addrs.rtsp;
    let mut stream = TcpStream::connect(rtsp).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for cseq in 1..=3 {
        let request = format!(
            "DESCRIBE rtsp://{rtsp}/v1.0/live/guess{cseq:04}AAAAAAAAAAAAAAAAAAAAAAAA RTSP/1.0\r\n\
             CSeq: {cseq}\r\nAccept: application/sdp\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("RTSP/1.0 401"), "{head}");
    }
    // Boxed: the connection that guessed is closed after its answer...
    short_reads(&stream);
    let (_, closed) = drain(&mut stream, Duration::from_secs(5));
    assert!(closed, "the guessing connection is closed");
    // ...and every port refuses this address at accept.
    assert!(closed_at_once(rtsp), "refused after the third bad token");
    assert!(closed_at_once(server.server.addrs.api));
    // Released after the block time; the refusals were counted.
    let mut metrics = String::new();
    wait_until("the address released", || {
        try_metrics(&server).is_some_and(|text| {
            metrics = text;
            true
        })
    });
    assert_eq!(sample(&metrics, "rop_auth_blocks_total"), 1, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "rop_auth_failures_total{listener=\"rtsp\",failure=\"play_token\"}"
        ),
        3
    );
    assert!(
        sample(
            &metrics,
            "rop_connections_refused_total{listener=\"rtsp\",reason=\"auth_failures\"}"
        ) >= 1
    );
}

/// Sends `bytes` one at a time, 200 ms apart, until the server closes the connection; true
/// when it closed before everything was sent (or within `IO_TIMEOUT` after).
fn closes_a_slow_sender(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1024];
    for byte in bytes {
        if stream.write_all(&[*byte]).is_err() {
            return true;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    drain(&mut stream, IO_TIMEOUT).1
}

/// A client that trickles its ClientHello into the RTSPS port is closed after the TLS
/// handshake timeout (10 s) and counted.
#[test]
fn a_slow_tls_handshake_on_rtsps_is_closed_and_counted() {
    let server = TestServer::start();
    let client_hello: Vec<u8> = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]
    .into_iter()
    .chain(std::iter::repeat_n(0u8, 89))
    .collect();
    let sample =
        "rop_tls_handshake_failures_total{port=\"61004\",listener=\"rtsps\",reason=\"timeout\"}";
    assert_eq!(metric(&server, sample), 0);
    assert!(closes_a_slow_sender(
        server.server.addrs.rtsps,
        &client_hello
    ));
    assert_eq!(metric(&server, sample), 1);
}

#[test]
fn slow_senders_on_the_device_ports_are_closed_after_the_handshake_timeout() {
    let server = TestServer::start_with(|c| c.device.handshake_timeout_secs = 1);
    let addrs = &server.server.addrs;
    // 100 bytes at 5 per second would take 20 s; the hello must be whole within 1 s.
    let hello = [0x64u8; 100];
    // A TLS ClientHello record header announcing 512 bytes, then a trickle of them.
    let client_hello: Vec<u8> = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]
    .into_iter()
    .chain(std::iter::repeat_n(0u8, 89))
    .collect();
    let before = metric(&server, "rop_device_hello_incomplete_total");
    assert!(closes_a_slow_sender(addrs.keepalive, &hello), "keep-alive");
    assert!(closes_a_slow_sender(addrs.stream_tcp, &hello), "stream TCP");
    assert!(
        closes_a_slow_sender(addrs.signaling, &client_hello),
        "signalling"
    );
    assert!(
        closes_a_slow_sender(addrs.stream_tls, &client_hello),
        "stream TLS"
    );
    assert_eq!(
        metric(&server, "rop_device_hello_incomplete_total"),
        before + 1
    );
    for (port, listener) in [("61005", "signalling"), ("61006", "stream_tls")] {
        assert_eq!(
            metric(
                &server,
                &format!("rop_tls_handshake_failures_total{{port=\"{port}\",listener=\"{listener}\",reason=\"timeout\"}}")
            ),
            1,
            "{listener}"
        );
    }
}
