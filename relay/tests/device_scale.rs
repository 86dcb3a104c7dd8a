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

mod common;

use std::time::{Duration, Instant};

use common::{open_keepalive, open_signalling, provision, serve, AllPorts};
use serde_json::Value;

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
    let AllPorts { ports, config } = AllPorts::new();
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, config).unwrap();
    let server = serve(&config_path, &dir.path().join("data"), ports.api);
    let pid = server.0.id();
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
    let mut api = std::net::TcpStream::connect(ports.api).unwrap();
    let list = common::exchange(&mut api, "GET", "/v1.0/devices?limit=1", &Value::Null);
    assert_eq!(list["totalRows"], devices, "{list}");
    drop((signalling, keepalive));
}
