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

/// Pseudo-random bytes (a firmware stand-in that compresses nowhere), the same for a length.
pub fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Uploads `file` as firmware `name` with curl (`POST /v1.0/firmware/{name}`, the body
/// streamed from the file).
pub fn upload_firmware(server: &TestServer, name: &str, file: &Path) -> CurlResponse {
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/v1.0/firmware/{name}", server.api_url()),
    ])
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

pub mod alloc_count;
pub mod ingest;
pub mod viewer;

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

/// A raw RTSP client for tests that check what the server sends byte by byte.
pub mod rtsp {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use relay::proto::rtsp::{
        Method, Parsed, RtspRequest, RtspResponse, SessionHeader, StatusCode,
    };

    /// A byte stream the client reads and writes: TCP, or TLS over it.
    pub trait Io: Read + Write + Send {}
    impl<T: Read + Write + Send> Io for T {}

    /// A scripted RTSP client over TCP interleaved: requests with CSeq and Session, responses
    /// read past the interleaved frames before them, and the frames themselves.
    pub struct RtspClient {
        stream: Box<dyn Io>,
        /// The socket under `stream` (timeouts, shutdown).
        pub tcp: TcpStream,
        /// Received bytes; the unread ones are `buf[pos..]`.
        buf: Vec<u8>,
        pos: usize,
        cseq: u32,
        /// The session id the server gave (sent with every request once known).
        pub session: Option<String>,
    }

    impl RtspClient {
        pub fn connect(addr: SocketAddr) -> RtspClient {
            Self::from_stream(TcpStream::connect(addr).unwrap())
        }

        /// A client whose kernel receive buffer is small (64 KiB, fixed: no autotuning), so that a
        /// client that stops reading backs up into the server quickly.
        pub fn connect_small_buffer(addr: SocketAddr) -> RtspClient {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            socket.set_recv_buffer_size(64 * 1024).unwrap();
            socket.connect(&addr.into()).unwrap();
            Self::from_stream(socket.into())
        }

        /// An RTSPS client that checks the server certificate against the relay's CA.
        pub fn connect_tls(addr: SocketAddr, ca_pem: &str) -> RtspClient {
            let tcp = TcpStream::connect(addr).unwrap();
            let config = pki::client_config_trusting(ca_pem).unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let session = rustls::ClientConnection::new(config, name).unwrap();
            let mut client = Self::from_stream(tcp.try_clone().unwrap());
            client.stream = Box::new(rustls::StreamOwned::new(session, tcp));
            client
        }

        pub fn from_stream(stream: TcpStream) -> RtspClient {
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            RtspClient {
                tcp: stream.try_clone().unwrap(),
                stream: Box::new(stream),
                buf: Vec::new(),
                pos: 0,
                cseq: 0,
                session: None,
            }
        }

        fn unread(&self) -> &[u8] {
            &self.buf[self.pos..]
        }

        /// Reads more bytes; false at end of stream.
        fn fill(&mut self) -> bool {
            if self.pos > 0 && self.pos * 2 >= self.buf.len() {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut chunk) {
                    Ok(0) => return false,
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        return true;
                    }
                    // A signal (e.g. SIGCHLD of another test's ffmpeg) is not the end of stream.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        eprintln!("RTSP test client: read failed: {e}");
                        return false;
                    }
                }
            }
        }

        /// Reads the connection to its end, past what is buffered (a clean close is `Ok`).
        pub fn read_to_end(&mut self, out: &mut Vec<u8>) -> std::io::Result<usize> {
            self.stream.read_to_end(out)
        }

        pub fn send_raw(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).unwrap();
        }

        /// Reads the next response, skipping interleaved frames before it.
        pub fn response(&mut self) -> Option<RtspResponse> {
            loop {
                while self.unread().first() == Some(&b'$') && self.unread().len() >= 4 {
                    let head = self.unread();
                    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                    if head.len() < 4 + len {
                        break;
                    }
                    self.pos += 4 + len;
                }
                if self.unread().first() != Some(&b'$') && !self.unread().is_empty() {
                    match RtspResponse::parse(self.unread()).unwrap() {
                        Parsed::Complete { message, consumed } => {
                            self.pos += consumed;
                            return Some(message);
                        }
                        Parsed::Incomplete => {}
                    }
                }
                if !self.fill() {
                    return None;
                }
            }
        }

        pub fn request(
            &mut self,
            method: Method,
            url: &str,
            headers: &[(&str, &str)],
        ) -> RtspResponse {
            self.request_with_body(method, url, headers, None)
        }

        pub fn request_with_body(
            &mut self,
            method: Method,
            url: &str,
            headers: &[(&str, &str)],
            body: Option<&str>,
        ) -> RtspResponse {
            self.cseq += 1;
            let mut builder = RtspRequest::builder(method, url).cseq(self.cseq);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if let Some(session) = &self.session {
                builder = builder.session(session);
            }
            if let Some(body) = body {
                builder = builder.body("application/sdp", body.as_bytes().to_vec());
            }
            self.send_raw(&builder.build().to_bytes());
            let response = self.response().expect("a response");
            assert_eq!(
                response.headers.get("CSeq"),
                Some(self.cseq.to_string().as_str())
            );
            if let Some(session) = response.headers.get("Session") {
                self.session = Some(SessionHeader::parse(session).unwrap().id);
            }
            response
        }

        /// DESCRIBE, SETUP of every track on channels 2i-(2i+1), PLAY. Returns the SDP.
        pub fn play(&mut self, url: &str, tracks: usize) -> String {
            let described = self.request(Method::Describe, url, &[("Accept", "application/sdp")]);
            assert_eq!(described.status, StatusCode::OK, "{described:?}");
            let sdp = String::from_utf8(described.body.to_vec()).unwrap();
            let base = described.headers.get("Content-Base").unwrap().to_owned();
            for track in 0..tracks {
                let transport = format!(
                    "RTP/AVP/TCP;unicast;interleaved={}-{}",
                    2 * track,
                    2 * track + 1
                );
                let setup = self.request(
                    Method::Setup,
                    &format!("{base}trackID={track}"),
                    &[("Transport", &transport)],
                );
                assert_eq!(setup.status, StatusCode::OK, "{setup:?}");
            }
            let played = self.request(Method::Play, &base, &[("Range", "npt=0.000-")]);
            assert_eq!(played.status, StatusCode::OK, "{played:?}");
            sdp
        }

        /// The next interleaved frame, or `None` at end of stream.
        pub fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
            loop {
                let head = self.unread();
                if head.len() >= 4 {
                    assert_eq!(head[0], b'$', "only frames after PLAY");
                    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
                    if head.len() >= 4 + len {
                        let channel = head[1];
                        let payload = head[4..4 + len].to_vec();
                        self.pos += 4 + len;
                        return Some((channel, payload));
                    }
                }
                if !self.fill() {
                    return None;
                }
            }
        }
    }
}
