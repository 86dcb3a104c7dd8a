//! Shared utilities of the integration and interop tests: an in-process server on ephemeral
//! ports in a temporary data directory, and wrappers around the real clients (curl, openssl)
//! that fail loudly when the tool is missing: the README's test command installs them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// With `RUST_LOG` set (`RUST_LOG=relay=debug cargo test …`), the in-process server's log goes
/// to the test's captured output, shown when a test fails.
fn log_to_test_output() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A server running in this process, with its data directory.
pub struct TestServer {
    /// The running server (addresses, PKI).
    pub server: relay::server::RunningServer,
    /// Keeps the data directory alive.
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with every port ephemeral.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Like [`TestServer::start`], with a chance to change the configuration first.
    pub fn start_with(change: impl FnOnce(&mut signal::config::Config)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in_with(dir, change)
    }

    /// Like [`TestServer::start`], on a data directory the test prepared (an existing PKI).
    pub fn start_in(dir: tempfile::TempDir) -> Self {
        Self::start_in_with(dir, |_| {})
    }

    /// [`TestServer::start_in`] with a chance to change the configuration first.
    pub fn start_in_with(
        dir: tempfile::TempDir,
        change: impl FnOnce(&mut signal::config::Config),
    ) -> Self {
        let mut config = signal::config::Config {
            listen: signal::config::ListenConfig::ephemeral(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ..Default::default()
        };
        change(&mut config);
        log_to_test_output();
        let server = relay::server::start(config, dir.path()).expect("server starts");
        Self { server, dir }
    }

    /// A signed URL of `uid`'s main stream on this server (`relay url play|publish`), valid for
    /// an hour: RTSP on 61008's stand-in, or RTSPS when `tls`.
    pub fn stream_url(&self, uid: &str, op: signal::tokens::TokenOp, tls: bool) -> String {
        let secrets = signal::secrets::Secrets::open_or_create(self.data_dir()).unwrap();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let grant = signal::tokens::StreamGrant {
            uid: uid.into(),
            channel: 0,
            stream_type: "mainStream".into(),
            op,
            exp,
            file: None,
        };
        let addrs = &self.server.addrs;
        let (scheme, addr) = if tls {
            ("rtsps", addrs.rtsps)
        } else {
            ("rtsp", addrs.rtsp)
        };
        signal::tokens::TokenSigner::new(secrets.token_key).sign_url(
            scheme,
            "127.0.0.1",
            addr.port(),
            &grant,
        )
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the root CA to a file in the data directory and returns its path.
    pub fn ca_file(&self) -> PathBuf {
        self.server.pki.paths().root_cert.clone()
    }

    /// `http://127.0.0.1:PORT` of the client API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.server.addrs.api)
    }
}

/// Panics with a clear message unless `tool` is on the PATH.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required by this test; run scripts/test, which installs it"
    );
}

/// Runs a command and returns its output; panics if it cannot be started.
pub fn run(program: &str, args: &[&str]) -> Output {
    require_tool(program);
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A curl call's HTTP status and body (curl's own exit code must be 0).
#[derive(Debug)]
pub struct CurlResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response body.
    pub body: Vec<u8>,
}

impl CurlResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Runs `curl -s ARGS` and returns status and body; panics when curl itself fails (connection
/// refused, TLS failure: use [`curl_exit_code`] to test those).
pub fn curl(args: &[&str]) -> CurlResponse {
    let mut full = vec!["-s", "-S", "-w", "\n%{http_code}"];
    full.extend_from_slice(args);
    let out = run("curl", &full);
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let status = std::str::from_utf8(&body[split + 1..])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    body.truncate(split);
    CurlResponse { status, body }
}

/// curl's exit code for `curl -s ARGS` (0 on success; 35, 56, … for TLS failures).
pub fn curl_exit_code(args: &[&str]) -> i32 {
    let mut full = vec!["-s", "-o", "/dev/null"];
    full.extend_from_slice(args);
    run("curl", &full).status.code().unwrap_or(-1)
}

/// One sample of a Prometheus text exposition, as the reference parser read it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    /// Sample name (`_total` included for counters).
    pub name: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// The families (name, type) and samples of a Prometheus text exposition, parsed by the
/// Prometheus project's own Python client (`prometheus_client.parser`, installed by
/// scripts/test): a page it refuses fails the test with the parser's message.
pub fn parse_prometheus(text: &str) -> (Vec<(String, String)>, Vec<PromSample>) {
    use std::io::Write as _;
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families, samples = [], []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append([family.name, family.type])
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"families": families, "samples": samples}, sys.stdout)
"#;
    require_tool("python3");
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("metrics written to the parser");
    let out = child.wait_with_output().expect("parser finishes");
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics (scripts/test installs prometheus_client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser JSON");
    let families = parsed["families"]
        .as_array()
        .expect("families")
        .iter()
        .map(|f| {
            (
                f[0].as_str().unwrap().to_owned(),
                f[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let samples = parsed["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| PromSample {
            name: s[0].as_str().unwrap().to_owned(),
            labels: s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            value: s[2].as_f64().unwrap(),
        })
        .collect();
    (families, samples)
}

/// The value of the sample `name` whose labels include every `(label, value)` of `labels`,
/// summed over the samples that match (0 when none does).
pub fn prom_value(samples: &[PromSample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Ways to damage what a device's [`loadgen::device::StreamDevice::media`] wrote on an
/// encryptTCP link (frames of a 12-byte header, the body, a 32-byte HMAC-SHA256 trailer), as an
/// attacker on the path would: shared by the sans-IO and the socket tests.
pub mod tamper {
    /// Length of an encryptTCP frame's header.
    const HEADER: usize = 12;

    /// One bit of the first frame's ciphertext flipped (its HMAC no longer verifies).
    pub fn flip_ciphertext_bit(bytes: &[u8]) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        bytes[HEADER + 40] ^= 0x04;
        bytes
    }

    /// One bit of the last frame's HMAC trailer flipped.
    pub fn break_hmac(bytes: &[u8]) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        bytes
    }

    /// The first frame sent twice: the copy repeats its sequence number.
    pub fn replay_first_frame(bytes: &[u8]) -> Vec<u8> {
        // The length field counts the body and its HMAC.
        let length = u32::from_le_bytes(bytes[4..8].try_into().expect("a frame header"));
        let first = HEADER + length as usize;
        let mut twice = bytes[..first].to_vec();
        twice.extend_from_slice(&bytes[..first]);
        twice.extend_from_slice(&bytes[first..]);
        twice
    }
}
