//! Helpers of the tests that run the `relay serve` binary: ports, a config file, the process
//! (killed on drop), and a device that provisions and opens its links over real sockets.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{json, Value};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{Handshake, Heartbeat};
use signal::proto::core_packet::{cmd, CorePacket};
use signal::session::sim::SimDevice;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn exchange(stream: &mut (impl Read + Write), method: &str, path: &str, body: &Value) -> Value {
    let body = body.to_string();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

pub fn tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

pub struct Ports {
    pub api: SocketAddr,
    pub credentials: SocketAddr,
    pub registration: SocketAddr,
    pub keepalive: SocketAddr,
    pub signaling: SocketAddr,
}

pub struct Device {
    pub uid: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub keys: AccessKeyPair,
}

pub fn provision(ports: &Ports, ca: &str, uid: &str) -> Device {
    let mut api = TcpStream::connect(ports.api).unwrap();
    let session = exchange(
        &mut api,
        "POST",
        "/v1.0/devices/initialization-session",
        &json!({ "uid": uid }),
    );
    let trusting = pki::client_config_trusting(ca).unwrap();
    let credentials = exchange(
        &mut tls(ports.credentials, trusting),
        "POST",
        "/v1.0/devices/credetials",
        &json!({ "uid": uid, "code": session["code"] }),
    );
    let device_tls = pki::client_config_for_device(
        ca,
        credentials["cert"].as_str().unwrap(),
        credentials["key"].as_str().unwrap(),
    )
    .unwrap();
    let registration = exchange(
        &mut tls(ports.registration, device_tls.clone()),
        "POST",
        "/v1.0/devices/registration",
        &json!({ "uid": uid }),
    );
    Device {
        uid: uid.to_owned(),
        tls: device_tls,
        keys: AccessKeyPair {
            access_key: registration["accesskey"].as_str().unwrap().to_owned(),
            secret: registration["secretAccesskey"].as_str().unwrap().to_owned(),
        },
    }
}

pub fn handshake(uid: &str) -> Handshake {
    Handshake {
        uid: uid.to_owned(),
        family: Some("powered".into()),
        model: Some("RLC-810A".into()),
        firmware: Some("v3.1.0.956".into()),
        network_type: Some("wire".into()),
        carrier: None,
    }
}

/// Reads until a packet of `command` arrives.
pub fn wait_for(stream: &mut impl Read, sim: &mut SimDevice, command: u32) {
    next_of(stream, sim, command);
}

pub fn open_signalling(ports: &Ports, device: &Device) -> StreamOwned<ClientConnection, TcpStream> {
    open_signalling_link(ports, device).0
}

/// The signalling link past its handshake, with the device's side of the session.
pub fn open_signalling_link(
    ports: &Ports,
    device: &Device,
) -> (StreamOwned<ClientConnection, TcpStream>, SimDevice) {
    let mut stream = tls(ports.signaling, device.tls.clone());
    let mut sim = SimDevice::signalling();
    let bytes = sim.handshake(&handshake(&device.uid), 1);
    stream.write_all(&bytes).unwrap();
    wait_for(&mut stream, &mut sim, cmd::HANDSHAKE);
    (stream, sim)
}

pub fn open_keepalive(ports: &Ports, device: &Device) -> TcpStream {
    let mut stream = TcpStream::connect(ports.keepalive).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut sim, hello) = SimDevice::keep_alive(&device.keys, rand::random());
    stream.write_all(&hello).unwrap();
    let mut reply = [0u8; 100];
    stream.read_exact(&mut reply).unwrap();
    sim.receive(&reply).unwrap();
    assert_eq!(sim.hello_code(), Some(200));
    let bytes = sim.handshake(&handshake(&device.uid), 1);
    stream.write_all(&bytes).unwrap();
    wait_for(&mut stream, &mut sim, cmd::HANDSHAKE);
    let bytes = sim.heartbeat(&Heartbeat::default(), 2);
    stream.write_all(&bytes).unwrap();
    wait_for(&mut stream, &mut sim, cmd::HEARTBEAT);
    stream
}

/// A `relay serve` process, killed (SIGKILL) on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ports of every listener of a server, all free on 127.0.0.1.
pub struct AllPorts {
    /// The ports the tests talk to.
    pub ports: Ports,
    /// The configuration file's `[listen]` table, with `shards = 1` and plain-HTTP API.
    pub config: String,
}

impl AllPorts {
    pub fn new() -> AllPorts {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let ports = Ports {
            api: at(free_port()),
            credentials: at(free_port()),
            registration: at(free_port()),
            keepalive: at(free_port()),
            signaling: at(free_port()),
        };
        let config = format!(
            "shards = 1\n[api]\nhttps = false\n[listen]\nca = \"{}\"\ncredentials = \"{}\"\n\
             registration = \"{}\"\nkeepalive = \"{}\"\nsignaling = \"{}\"\nrtsp = \"{}\"\n\
             stream_tls = \"{}\"\nstream_tcp = \"{}\"\nrtsps = \"{}\"\napi = \"{}\"\napi_tls = \"{}\"\n",
            at(free_port()),
            ports.credentials,
            ports.registration,
            ports.keepalive,
            ports.signaling,
            at(free_port()),
            at(free_port()),
            at(free_port()),
            at(free_port()),
            ports.api,
            at(free_port()),
        );
        AllPorts { ports, config }
    }
}

/// Starts `relay serve --config CONFIG --data DATA` and waits until its client API accepts.
pub fn serve(config: &Path, data: &Path, api: SocketAddr) -> Server {
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while TcpStream::connect(api).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    server
}

/// Reads until a packet of `command` arrives and returns it.
pub fn next_of(stream: &mut impl Read, sim: &mut SimDevice, command: u32) -> CorePacket {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("device link read");
        assert!(n > 0, "link closed");
        let packets = sim.receive(&buf[..n]).unwrap();
        if let Some(packet) = packets.into_iter().find(|p| p.header.command == command) {
            return packet;
        }
    }
}
