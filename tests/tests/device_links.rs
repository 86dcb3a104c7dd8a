//! A device's two long-lived links against a running server, over real sockets: provisioning
//! through the client API and the credentials and registration ports, then the signalling
//! link (mutual TLS, 61005) and the keep-alive link (encryptTCP, 61003) driven by the
//! simulated device of `signal::session::sim`. Presence, the online list, the alarm switch
//! round trip, revocation, replacement, silence and a certificate/UID mismatch.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{json, Value};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{
    Alarm, AlarmSwitch, BatteryState, BodyMessage, Capabilities, ChannelCapabilities, Handshake,
    HandshakeReply, Heartbeat, HeartbeatReply,
};
use signal::proto::core_packet::{cmd, CorePacket, CODE_OK};
use signal::session::sim::SimDevice;
use tests::TestServer;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ----- HTTP and HTTPS, just enough for the API and the provisioning ports -----

fn exchange(
    stream: &mut impl ReadWrite,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
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
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A TLS peer that closes without close_notify: what arrived is the answer.
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    (status, body)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn api(server: &TestServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.server.addrs.api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
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

fn https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let mut stream = tls_connect(addr, config);
    exchange(&mut stream, "POST", path, Some(body))
}

// ----- a provisioned device -----

struct Device {
    uid: String,
    ca: String,
    cert: String,
    key: String,
    keys: AccessKeyPair,
}

fn provision(server: &TestServer, uid: &str) -> Device {
    let (status, session) = api(
        server,
        "POST",
        "/v1.0/devices/initialization-session",
        Some(&json!({ "uid": uid })),
    );
    assert_eq!(status, 200, "{session}");
    let ca = server.server.pki.ca_pem().to_owned();
    let trusting = pki::client_config_trusting(&ca).unwrap();
    let (status, credentials) = https(
        server.server.addrs.credentials,
        trusting,
        "/v1.0/devices/credetials",
        &json!({ "uid": uid, "code": session["code"] }),
    );
    assert_eq!(status, 200, "{credentials}");
    let cert = credentials["cert"].as_str().unwrap().to_owned();
    let key = credentials["key"].as_str().unwrap().to_owned();
    let keys = register(server, uid, &ca, &cert, &key);
    Device {
        uid: uid.to_owned(),
        ca,
        cert,
        key,
        keys,
    }
}

/// Registration on 61002 with the device's certificate: its access key pair.
fn register(server: &TestServer, uid: &str, ca: &str, cert: &str, key: &str) -> AccessKeyPair {
    let device_tls = pki::client_config_for_device(ca, cert, key).unwrap();
    let (status, registration) = https(
        server.server.addrs.registration,
        device_tls,
        "/v1.0/devices/registration",
        &json!({ "uid": uid }),
    );
    assert_eq!(status, 200, "{registration}");
    AccessKeyPair {
        access_key: registration["accesskey"].as_str().unwrap().to_owned(),
        secret: registration["secretAccesskey"].as_str().unwrap().to_owned(),
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

// ----- a device link -----

struct Link<S: Read + Write> {
    stream: S,
    sim: SimDevice,
    pending: std::collections::VecDeque<CorePacket>,
    next_id: u32,
}

impl<S: Read + Write> Link<S> {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Reads until a packet arrives; `None` when the server closed the link.
    fn next_packet(&mut self) -> Option<CorePacket> {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buf = [0u8; 16 * 1024];
        while self.pending.is_empty() {
            assert!(Instant::now() < deadline, "no packet from the server");
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend(self.sim.receive(&buf[..n]).unwrap()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no packet from the server within {IO_TIMEOUT:?}")
                }
                Err(_) => return None,
            }
        }
        self.pending.pop_front()
    }

    /// The next packet of `command`, answering the server's capabilities request on the way.
    fn expect(&mut self, command: u32) -> CorePacket {
        loop {
            let packet = self.next_packet().expect("link closed");
            if packet.header.command == command {
                return packet;
            }
            if packet.header.command == cmd::CAPABILITIES {
                let capabilities = Capabilities {
                    channels: vec![ChannelCapabilities {
                        channel: 0,
                        stream_mask: 3,
                        ptz_type: 0,
                        ptz_control: 0,
                        wifi_mode: 1,
                    }],
                };
                let reply =
                    self.sim
                        .reply_ok(cmd::CAPABILITIES, packet.header.request_id, &capabilities);
                self.send(&reply);
            }
        }
    }

    fn handshake(&mut self, uid: &str) -> CorePacket {
        let id = self.id();
        let bytes = self.sim.handshake(&handshake(uid), id);
        self.send(&bytes);
        let reply = self.expect(cmd::HANDSHAKE);
        assert_eq!(reply.header.request_id, id);
        reply
    }

    fn heartbeat(&mut self, percent: u8) -> HeartbeatReply {
        let id = self.id();
        let beat = Heartbeat {
            no_reply: false,
            battery: Some(BatteryState {
                percent: Some(percent),
                charging: Some("0".into()),
            }),
        };
        let bytes = self.sim.heartbeat(&beat, id);
        self.send(&bytes);
        let reply = self.expect(cmd::HEARTBEAT);
        assert_eq!(reply.header.request_id, id);
        HeartbeatReply::parse(&reply.body.to_contiguous()).unwrap()
    }

    /// True when the server closes the link within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let _ = self.sim.receive(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

type TlsLink = Link<StreamOwned<ClientConnection, TcpStream>>;

fn signalling(server: &TestServer, device: &Device) -> TlsLink {
    let config = pki::client_config_for_device(&device.ca, &device.cert, &device.key).unwrap();
    let stream = tls_connect(server.server.addrs.signaling, config);
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    Link {
        stream,
        sim: SimDevice::signalling(),
        pending: Default::default(),
        next_id: 100,
    }
}

fn keep_alive(server: &TestServer, device: &Device) -> Link<TcpStream> {
    let (link, code) = keep_alive_hello(server, &device.keys);
    assert_eq!(code, 200);
    link
}

/// The hello exchange on 61003; the server's answer must be signed with `keys`' secret (the
/// simulated device checks it) and its code is returned.
fn keep_alive_hello(server: &TestServer, keys: &AccessKeyPair) -> (Link<TcpStream>, u16) {
    let stream = TcpStream::connect(server.server.addrs.keepalive).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (sim, hello) = SimDevice::keep_alive(keys, rand_nonce());
    let mut link = Link {
        stream,
        sim,
        pending: Default::default(),
        next_id: 500,
    };
    link.send(&hello);
    let mut buf = [0u8; 100];
    link.stream.read_exact(&mut buf).unwrap();
    assert!(link.sim.receive(&buf).unwrap().is_empty());
    let code = link
        .sim
        .hello_code()
        .expect("the server's hello authenticates");
    (link, code)
}

fn rand_nonce() -> [u8; 32] {
    let mut nonce = [0u8; 32];
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = (seed >> ((i % 16) * 8)) as u8 ^ i as u8;
    }
    nonce
}

fn presence(server: &TestServer, uid: &str) -> Value {
    let (status, body) = api(server, "GET", &format!("/v1.0/devices/{uid}"), None);
    assert_eq!(status, 200, "{body}");
    body
}

fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ----- tests -----

#[test]
fn both_links_online_presence_list_alarm_switch_and_revocation() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let device = provision(&server, "952700000A5S348E");
    let before = presence(&server, &device.uid);
    assert_eq!(before["online"], false);

    let mut sig = signalling(&server, &device);
    let reply = sig.handshake(&device.uid);
    assert_eq!(reply.header.response_code, CODE_OK);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time = sig.heartbeat(81);
    assert!(
        time.unix_secs.abs_diff(now) <= 2,
        "server time {} vs {now}",
        time.unix_secs
    );

    let mut ka = keep_alive(&server, &device);
    let reply = ka.handshake(&device.uid);
    let announced = HandshakeReply::parse(&reply.body.to_contiguous()).unwrap();
    assert_eq!(announced.heartbeat_interval_ms, 20_000);
    ka.heartbeat(80);

    let body = presence(&server, &device.uid);
    assert_eq!(body["online"], true, "{body}");
    let p = &body["presence"];
    assert_eq!(p["signalling"], true);
    assert_eq!(p["keepAlive"], true);
    assert_eq!(p["batteryPercent"], 80, "latest heartbeat wins: {p}");
    assert_eq!(p["family"], "battery");
    assert_eq!(p["model"], "Argus 2");
    assert_eq!(p["firmware"], "Argus_2_200104_751");
    assert!(p["lastHeartbeat"].as_u64().unwrap() / 1000 >= now - 1);

    let (status, list) = api(&server, "GET", "/v1.0/devices", None);
    assert_eq!(status, 200);
    assert_eq!(
        list,
        json!({"totalRows": 1, "items": [{"uid": device.uid, "family": "battery",
            "model": "Argus 2", "firmware": "Argus_2_200104_751"}]})
    );

    // Alarm switch: the client API asks, the device answers on its signalling link.
    for (method, body, command, enabled) in [
        ("GET", None, cmd::ALARM_SWITCH_GET, true),
        (
            "PUT",
            Some(json!({"enabled": false})),
            cmd::ALARM_SWITCH_SET,
            false,
        ),
    ] {
        let api_addr = server.server.addrs.api;
        let path = format!("/v1.0/devices/{}/settings/alarm", device.uid);
        let client = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(api_addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            exchange(&mut stream, method, &path, body.as_ref())
        });
        let request = sig.expect(command);
        if command == cmd::ALARM_SWITCH_SET {
            let asked = AlarmSwitch::parse(&request.body.to_contiguous()).unwrap();
            assert_eq!(asked.enabled, enabled);
            let reply = sig
                .sim
                .reply(command, request.header.request_id, CODE_OK, &[]);
            sig.send(&reply);
        } else {
            let reply =
                sig.sim
                    .reply_ok(command, request.header.request_id, &AlarmSwitch { enabled });
            sig.send(&reply);
        }
        let (status, answer) = client.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        if method == "GET" {
            assert_eq!(answer, json!({"enabled": true}));
        } else {
            assert_eq!(answer, json!({"message": "ok"}));
        }
    }

    // An alarm is answered 200 once it is stored (counted only: no webhook here).
    let id = sig.id();
    let alarm = Alarm {
        channel: 0,
        status: "MD".into(),
        ai_type: "people".into(),
    };
    let bytes = sig.sim.alarm(&alarm, id);
    sig.send(&bytes);
    let ack = sig.expect(cmd::ALARM);
    assert_eq!(
        (ack.header.request_id, ack.header.response_code),
        (id, CODE_OK)
    );

    // Revocation closes both links at once.
    let started = Instant::now();
    let (status, body) = api(
        &server,
        "DELETE",
        &format!("/v1.0/devices/{}", device.uid),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        sig.closed_within(Duration::from_secs(3)),
        "signalling closed"
    );
    assert!(
        ka.closed_within(Duration::from_secs(3)),
        "keep-alive closed"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let after = presence(&server, &device.uid);
    assert_eq!(after["online"], false);
    let (status, body) = api(
        &server,
        "GET",
        &format!("/v1.0/devices/{}/settings/alarm", device.uid),
        None,
    );
    assert_eq!(status, 404);
    assert_eq!(body["error"]["symbol"], "device_offline");
}

/// `POST /v1.0/device-keys/rotation` (what `relay pki rotate-device-key` calls while the server
/// runs): registrations get the new key index at once; a device registered before still
/// authenticates with its old access key, is told 400 in a hello signed with its old secret
/// (the platform's answer to a stale index), registers again and is back online.
#[test]
fn rotated_device_key_serves_new_registrations_and_old_keys_still_authenticate() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let before = provision(&server, "952700000A5S348E");
    let old_index = before.keys.access_key[..16].to_owned();
    let mut ka = keep_alive(&server, &before);
    ka.handshake(&before.uid);
    ka.heartbeat(50);

    let (status, rotated) = api(&server, "POST", "/v1.0/device-keys/rotation", None);
    assert_eq!(status, 200, "{rotated}");
    let new_index = rotated["currentKeyIndex"].as_str().unwrap().to_owned();
    assert_eq!(new_index.len(), 16);
    assert_ne!(new_index, old_index);
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(server.data_dir().join("secrets/device-keys.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk["currentKeyIndex"], new_index.as_str());
    assert!(on_disk["deviceKeys"][&old_index].is_string(), "{on_disk}");

    // The link opened before the rotation is not cut.
    ka.heartbeat(49);
    assert_eq!(presence(&server, &before.uid)["online"], true);

    // A new link with the old access key: authenticated, answered 400 (register again).
    let (_stale, code) = keep_alive_hello(&server, &before.keys);
    assert_eq!(code, 400);
    let renewed = register(&server, &before.uid, &before.ca, &before.cert, &before.key);
    assert_eq!(&renewed.access_key[..16], new_index);
    assert_eq!(renewed.access_key[16..], before.keys.access_key[16..]);
    let (mut again, code) = keep_alive_hello(&server, &renewed);
    assert_eq!(code, 200);
    again.handshake(&before.uid);
    again.heartbeat(48);

    let after = provision(&server, "952700000A5S349F");
    assert_eq!(&after.keys.access_key[..16], new_index);
    let mut ka = keep_alive(&server, &after);
    ka.handshake(&after.uid);
    ka.heartbeat(90);
    assert_eq!(presence(&server, &after.uid)["online"], true);
}

#[test]
fn newer_session_replaces_older_and_silence_goes_offline() {
    let server = TestServer::start_with(|c| {
        c.shards = Some(2);
        c.device.heartbeat_timeout_secs = 2;
        // Nothing listens there: the alarm waits in the queue.
        c.alarm_webhook = Some("http://127.0.0.1:9/rop-alarm".into());
    });
    let device = provision(&server, "95270002VQQP12X5");
    let mut first = signalling(&server, &device);
    first.handshake(&device.uid);
    let mut second = signalling(&server, &device);
    second.handshake(&device.uid);
    assert!(
        first.closed_within(Duration::from_secs(3)),
        "older session closed"
    );
    second.heartbeat(50);
    // With a webhook configured the alarm is committed to the durable queue before the 200.
    let id = second.id();
    let alarm = Alarm {
        channel: 1,
        status: "MD".into(),
        ai_type: "vehicle".into(),
    };
    let bytes = second.sim.alarm(&alarm, id);
    second.send(&bytes);
    let ack = second.expect(cmd::ALARM);
    assert_eq!(
        (ack.header.request_id, ack.header.response_code),
        (id, CODE_OK)
    );
    assert_eq!(presence(&server, &device.uid)["online"], true);

    let mut ka = keep_alive(&server, &device);
    let reply = ka.handshake(&device.uid);
    let announced = HandshakeReply::parse(&reply.body.to_contiguous()).unwrap();
    assert_eq!(
        announced.heartbeat_interval_ms, 1000,
        "half the short test timeout"
    );

    // Silence: both links go offline after the (test) heartbeat timeout of 2 s.
    let silent_since = Instant::now();
    assert!(
        second.closed_within(Duration::from_secs(6)),
        "silent signalling closed"
    );
    assert!(
        ka.closed_within(Duration::from_secs(6)),
        "silent keep-alive closed"
    );
    assert!(silent_since.elapsed() >= Duration::from_millis(1900));
    wait_until("offline", Duration::from_secs(3), || {
        presence(&server, &device.uid)["online"] == false
    });
    let (_, list) = api(&server, "GET", "/v1.0/devices", None);
    assert_eq!(list["totalRows"], 0);
}

#[test]
fn certificate_of_another_uid_is_refused() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let device = provision(&server, "ABCDEF0123456789");
    let mut link = signalling(&server, &device);
    let id = link.id();
    let bytes = link.sim.handshake(&handshake("ABCDEF0123456780"), id);
    link.send(&bytes);
    assert!(
        link.closed_within(Duration::from_secs(3)),
        "impostor closed"
    );
    let (status, _) = api(&server, "GET", "/v1.0/devices/ABCDEF0123456780", None);
    assert_eq!(status, 404, "the claimed UID is unknown and offline");
    assert_eq!(presence(&server, &device.uid)["online"], false);
    let (_, metrics) = api_text(&server, "/metrics");
    assert!(
        metrics.contains("rop_device_links_closed_total{reason=\"uid_mismatch\"} 1"),
        "{metrics}"
    );
}

#[test]
fn list_pages_with_a_cursor() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let uids = ["A000000000000001", "B000000000000002", "C000000000000003"];
    let mut links = Vec::new();
    for uid in uids {
        let device = provision(&server, uid);
        let mut link = signalling(&server, &device);
        link.handshake(uid);
        links.push(link);
    }
    let (status, page) = api(&server, "GET", "/v1.0/devices?limit=2", None);
    assert_eq!(status, 200);
    assert_eq!(page["totalRows"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["nextToken"], uids[1]);
    let (_, rest) = api(
        &server,
        "GET",
        &format!("/v1.0/devices?limit=2&next_token={}", uids[1]),
        None,
    );
    assert_eq!(rest["items"][0]["uid"], uids[2]);
    assert!(rest.get("nextToken").is_none());
}

fn api_text(server: &TestServer, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(server.server.addrs.api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// Reads one HTTP request (head and Content-Length body) from `stream`.
fn read_http_request(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "webhook request truncated"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (head, body)
}

#[test]
fn alarm_reaches_the_webhook_signed() {
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let webhook = format!("http://{}/rop-alarm", receiver.local_addr().unwrap());
    let server = TestServer::start_with(|c| c.alarm_webhook = Some(webhook));
    let device = provision(&server, "95270003ALRM0001");
    let mut link = signalling(&server, &device);
    link.handshake(&device.uid);
    let id = link.id();
    let alarm = Alarm {
        channel: 0,
        status: "MD".into(),
        ai_type: "people".into(),
    };
    let bytes = link.sim.alarm(&alarm, id);
    link.send(&bytes);
    let ack = link.expect(cmd::ALARM);
    assert_eq!(ack.header.response_code, CODE_OK);

    receiver.set_nonblocking(false).unwrap();
    let (mut conn, _) = receiver.accept().unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let (head, body) = read_http_request(&mut conn);
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert!(head.starts_with("POST /rop-alarm HTTP/1.1"), "{head}");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["uid"], device.uid.as_str());
    assert_eq!(json["status"], "MD");
    assert_eq!(json["AItype"], "people");
    assert!(json["eventId"].is_string());

    // The signature a partner checks, computed with openssl and the key in the data directory.
    let key = std::fs::read_to_string(server.data_dir().join("secrets/alarm-webhook.key")).unwrap();
    let body_file = server.data_dir().join("alarm-body.json");
    std::fs::write(&body_file, &body).unwrap();
    let out = tests::run(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{}", key.trim()),
            body_file.to_str().unwrap(),
        ],
    );
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.trim().rsplit(' ').next().unwrap().to_owned();
    let signature = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-rop-signature:")
                .map(|v| v.trim().to_owned())
        })
        .expect("signature header");
    assert_eq!(signature, format!("sha256={hex}"));
}
