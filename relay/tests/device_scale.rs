//! Measurement, not a timed test (ignored by default): memory per idle device and signalling
//! handshakes per second, against a `relay serve` process with one shard.
//!
//! ```sh
//! DEVICES=1000 cargo test -p relay --test device_scale -- --ignored --nocapture
//! ```
//!
//! It provisions `DEVICES` devices through the client API and the provisioning ports, reads
//! the server's RSS, opens every device's signalling link (mutual TLS + handshake 458) from 4
//! client threads, then every keep-alive link (encryptTCP hello + handshake + heartbeat), and
//! reads the RSS again once idle. Memory per device = RSS delta / devices (both links, TLS
//! state included); handshake rate = devices / wall time, and per server CPU second from
//! /proc/PID/stat.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{json, Value};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{Handshake, Heartbeat};
use signal::proto::core_packet::cmd;
use signal::session::sim::SimDevice;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn exchange(stream: &mut (impl Read + Write), method: &str, path: &str, body: &Value) -> Value {
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

fn tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

struct Ports {
    api: SocketAddr,
    credentials: SocketAddr,
    registration: SocketAddr,
    keepalive: SocketAddr,
    signaling: SocketAddr,
}

struct Device {
    uid: String,
    tls: Arc<rustls::ClientConfig>,
    keys: AccessKeyPair,
}

fn provision(ports: &Ports, ca: &str, uid: &str) -> Device {
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

fn handshake(uid: &str) -> Handshake {
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
fn wait_for(stream: &mut impl Read, sim: &mut SimDevice, command: u32) {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("device link read");
        assert!(n > 0, "link closed");
        if sim
            .receive(&buf[..n])
            .unwrap()
            .iter()
            .any(|p| p.header.command == command)
        {
            return;
        }
    }
}

fn open_signalling(ports: &Ports, device: &Device) -> StreamOwned<ClientConnection, TcpStream> {
    let mut stream = tls(ports.signaling, device.tls.clone());
    let mut sim = SimDevice::signalling();
    let bytes = sim.handshake(&handshake(&device.uid), 1);
    stream.write_all(&bytes).unwrap();
    wait_for(&mut stream, &mut sim, cmd::HANDSHAKE);
    stream
}

fn open_keepalive(ports: &Ports, device: &Device) -> TcpStream {
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// utime + stime of the process, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `work` over `items` on `threads` threads, keeping what each returns.
fn parallel<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(threads).max(1);
    let mut items = items;
    let mut groups = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(chunk.min(items.len()));
        groups.push(std::mem::replace(&mut items, rest));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| scope.spawn(|| group.into_iter().map(&work).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn idle_device_memory_and_handshake_rate() {
    rt::raise_fd_limit().unwrap();
    let devices: usize = std::env::var("DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
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
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, config).unwrap();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let started = Instant::now();
    while TcpStream::connect(ports.api).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let ca = std::fs::read_to_string(dir.path().join("data/pki/root-ca.pem")).unwrap();

    let uids: Vec<String> = (0..devices).map(|i| format!("9527{i:012}")).collect();
    let t = Instant::now();
    let provisioned = parallel(uids, 4, |uid| provision(&ports, &ca, &uid));
    println!("provisioned {devices} devices in {:?}", t.elapsed());

    std::thread::sleep(Duration::from_secs(1));
    let rss_before = rss_kib(pid);
    let cpu_before = cpu_secs(pid);
    let t = Instant::now();
    let signalling = parallel(provisioned.iter().collect(), 4, |d| {
        open_signalling(&ports, d)
    });
    let wall = t.elapsed();
    let cpu = cpu_secs(pid) - cpu_before;
    println!(
        "signalling: {devices} mTLS handshakes + 458 in {wall:?}: {:.0}/s wall (4 client threads, \
         1 server shard), {:.0} per server CPU second ({cpu:.2} s CPU)",
        devices as f64 / wall.as_secs_f64(),
        devices as f64 / cpu
    );
    let t = Instant::now();
    let keepalive = parallel(provisioned.iter().collect(), 4, |d| {
        open_keepalive(&ports, d)
    });
    println!(
        "keep-alive: {devices} hellos + 458 + heartbeat in {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(pid);
    let per_device = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / devices as f64;
    println!(
        "server RSS {rss_before} KiB -> {rss_after} KiB with {devices} idle devices (both links): \
         {per_device:.0} bytes per device"
    );
    let mut api = TcpStream::connect(ports.api).unwrap();
    let list = exchange(&mut api, "GET", "/v1.0/devices?limit=1", &Value::Null);
    assert_eq!(list["totalRows"], devices, "{list}");
    drop((signalling, keepalive));
}
