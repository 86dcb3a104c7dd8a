//! The `relay` command line as an operator uses it: `pki init|status|revoke` and `url`, with
//! openssl checking what it made.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};

const UID: &str = "952700000A5S348E";

fn relay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .output()
        .expect("relay runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required (scripts/test installs it): {e}"))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn pki_init_status_and_offline_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path());
    let offline = dir.path().join("offline-root.key");
    let out = ok(&relay(&[
        "pki",
        "init",
        "--data",
        data,
        "--host",
        "cams.example.net",
        "--host",
        "10.1.2.3",
        "--root-key-out",
        path(&offline),
    ]));
    assert!(out.contains("root CA SHA-256 fingerprint"), "{out}");
    assert!(offline.exists());
    assert!(
        !dir.path().join("pki/root-ca.key").exists(),
        "the root key must not stay in the data directory"
    );

    let pki = dir.path().join("pki");
    let san = tool(
        "openssl",
        &[
            "x509",
            "-in",
            path(&pki.join("server.pem")),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    let san = String::from_utf8_lossy(&san.stdout);
    assert!(
        san.contains("DNS:cams.example.net") && san.contains("IP Address:10.1.2.3"),
        "{san}"
    );
    let verify = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            path(&pki.join("root-ca.pem")),
            "-untrusted",
            path(&pki.join("intermediate-ca.pem")),
            path(&pki.join("server.pem")),
        ],
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Never overwritten without --force.
    let again = relay(&["pki", "init", "--data", data]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    ok(&relay(&["pki", "init", "--data", data, "--force"]));

    let status = ok(&relay(&["pki", "status", "--data", data]));
    for name in ["root CA", "intermediate CA", "server"] {
        assert!(status.contains(name), "{status}");
    }
    assert!(status.contains("DAYS LEFT"));
}

#[test]
fn url_prints_signed_play_and_publish_urls() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path());
    let play = ok(&relay(&[
        "url", "play", "--data", data, "--uid", UID, "--ttl", "10m",
    ]));
    assert!(
        play.trim().starts_with("rtsp://localhost:61008/v1.0/live/"),
        "{play}"
    );
    let publish = ok(&relay(&[
        "url", "publish", "--data", data, "--uid", UID, "--port", "7554", "--host", "10.0.0.2",
    ]));
    assert!(
        publish
            .trim()
            .starts_with("rtsp://10.0.0.2:7554/v1.0/live/"),
        "{publish}"
    );
    // The key survives: a second run signs with the same key, so both verify.
    let secrets = signal::secrets::Secrets::open_or_create(dir.path()).unwrap();
    let signer = signal::tokens::TokenSigner::new(secrets.token_key);
    let path_of = |url: &str| {
        url.trim()
            .split_once("/v1.0/")
            .map(|(_, p)| format!("/v1.0/{p}"))
            .unwrap()
    };
    let now = signal::clock::unix_now();
    let grant = signer
        .verify_path(&path_of(&play), signal::tokens::TokenOp::Play, now)
        .unwrap();
    assert_eq!(grant.uid, UID);
    assert!(signer
        .verify_path(&path_of(&publish), signal::tokens::TokenOp::Publish, now)
        .is_ok());
    assert!(signer
        .verify_path(&path_of(&publish), signal::tokens::TokenOp::Play, now)
        .is_err());
    // A template over UIDs: one URL per line, for `loadgen rtsp --streams 3 --publish-url @FILE`.
    let many = ok(&relay(&[
        "url", "publish", "--data", data, "--uid", "CAM{n}", "--count", "3",
    ]));
    let uids: Vec<String> = many
        .lines()
        .map(|url| {
            signer
                .verify_path(&path_of(url), signal::tokens::TokenOp::Publish, now)
                .unwrap()
                .uid
        })
        .collect();
    assert_eq!(uids, ["CAM0", "CAM1", "CAM2"]);
    let refused = relay(&["url", "play", "--data", data, "--uid", UID, "--count", "2"]);
    assert!(!refused.status.success());
}

#[test]
fn revoke_works_offline_and_while_the_server_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path());
    let config = signal::config::Config {
        listen: signal::config::ListenConfig::ephemeral(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ..Default::default()
    };
    let server = relay::server::start(config.clone(), dir.path()).unwrap();
    let api = format!("http://{}", server.addrs.api);
    let credentials = format!(
        "https://localhost:{}/v1.0/devices/credetials",
        server.addrs.credentials.port()
    );
    let ca = server.pki.paths().root_cert.clone();
    let provision = || {
        let session = tool(
            "curl",
            &[
                "-s",
                "-X",
                "POST",
                "-d",
                &format!("{{\"uid\":\"{UID}\"}}"),
                &format!("{api}/v1.0/devices/initialization-session"),
            ],
        );
        let session: serde_json::Value = serde_json::from_slice(&session.stdout).unwrap();
        let body = format!(
            "{{\"uid\":\"{UID}\",\"code\":\"{}\"}}",
            session["code"].as_str().unwrap()
        );
        let creds = tool(
            "curl",
            &[
                "-s",
                "--cacert",
                path(&ca),
                "-X",
                "POST",
                "-d",
                &body,
                &credentials,
            ],
        );
        assert!(creds.status.success());
    };
    provision();

    // The server holds the store: the CLI asks it through the client API.
    let out = ok(&relay(&[
        "pki", "revoke", UID, "--data", data, "--api", &api,
    ]));
    assert!(out.contains("through the running server"), "{out}");
    let metrics = tool("curl", &["-s", &format!("{api}/metrics")]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("rop_devices_provisioned{state=\"revoked\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rop_certificate_days_left{certificate=\"server\""),
        "{metrics}"
    );
    provision();
    server.stop();

    // Offline: the CLI revokes in the store and rewrites the CRL itself.
    let out = ok(&relay(&["pki", "revoke", UID, "--data", data]));
    assert!(out.contains("1 certificate(s)"), "{out}");
    let crl = tool(
        "openssl",
        &[
            "crl",
            "-in",
            path(&dir.path().join("pki/crl.pem")),
            "-noout",
            "-text",
        ],
    );
    let crl = String::from_utf8_lossy(&crl.stdout);
    assert_eq!(crl.matches("Serial Number:").count(), 2, "{crl}");
    let unknown = relay(&["pki", "revoke", "ZZZZZZZZZZZZZZZZ", "--data", data]);
    assert!(!unknown.status.success());
}

/// `relay serve` spawned as an operator runs it, in its own working directory, logging to a
/// pipe; stopped with SIGKILL when dropped.
struct Served {
    child: std::process::Child,
    /// Every log line so far (without colour codes).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Every listener on a free loopback port (the default ports may be in use on a test host),
/// token authentication on the client API, short-lived device certificates. Nothing names a
/// data directory: `serve` must use ./relay-data.
const FREE_PORTS_CONFIG: &str = r#"
shards = 1
[listen]
ca = "127.0.0.1:0"
credentials = "127.0.0.1:0"
registration = "127.0.0.1:0"
keepalive = "127.0.0.1:0"
rtsps = "127.0.0.1:0"
signaling = "127.0.0.1:0"
stream_tls = "127.0.0.1:0"
stream_tcp = "127.0.0.1:0"
rtsp = "127.0.0.1:0"
api = "127.0.0.1:0"
api_tls = "127.0.0.1:0"
[api]
auth = "token"
[provisioning]
device_cert_days = 10
"#;

/// The log line `relay serve` writes once every listener is bound.
const LISTENING: &str = "INFO listening rtsp=";

impl Served {
    /// Starts `relay serve --config relay.toml` in `cwd` and waits until it listens.
    fn start(cwd: &Path) -> Self {
        use std::io::BufRead as _;
        std::fs::write(cwd.join("relay.toml"), FREE_PORTS_CONFIG).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["serve", "--config", "relay.toml"])
            .current_dir(cwd)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("relay serve starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(strip_ansi(&line));
                }
            });
        }
        let served = Served { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while served.line_with(LISTENING).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "relay serve did not start listening:\n{}",
                served.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        served
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn line_with(&self, text: &str) -> Option<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(text))
            .cloned()
    }

    /// The value of `field=` in the log line containing `text`.
    fn field(&self, text: &str, field: &str) -> String {
        let line = self
            .line_with(text)
            .unwrap_or_else(|| panic!("no log line with {text:?}:\n{}", self.log()));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{field}=")))
            .unwrap_or_else(|| panic!("no {field}= in {line}"))
            .to_owned()
    }

    fn port(&self, listener: &str) -> u16 {
        let addr: std::net::SocketAddr = self.field(LISTENING, listener).parse().unwrap();
        addr.port()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// curl with the bearer token of `data`; returns (status, body).
fn api_call(data: &Path, method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let token = std::fs::read_to_string(data.join("secrets/api-token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let mut args = vec!["-s", "-w", "\n%{http_code}", "-X", method, "-H", &auth, url];
    if let Some(body) = body {
        args.extend_from_slice(&["-d", body]);
    }
    let out = tool("curl", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// Provisions UID on a spawned server as a camera does (server-made key) and registers it
/// over mutual TLS; returns the certificate and key files.
fn provision_and_register(served: &Served, cwd: &Path, data: &Path) -> (String, String) {
    let api = format!("http://127.0.0.1:{}", served.port("api"));
    let (status, session) = api_call(
        data,
        "POST",
        &format!("{api}/v1.0/devices/initialization-session"),
        Some(&format!("{{\"uid\":\"{UID}\"}}")),
    );
    assert_eq!(status, 200, "{session}");
    let session: serde_json::Value = serde_json::from_str(&session).unwrap();
    let ca = data.join("pki/root-ca.pem");
    let creds = tool(
        "curl",
        &[
            "-s",
            "--cacert",
            path(&ca),
            "-X",
            "POST",
            "-d",
            &format!(
                "{{\"uid\":\"{UID}\",\"code\":\"{}\"}}",
                session["code"].as_str().unwrap()
            ),
            &format!(
                "https://localhost:{}/v1.0/devices/credetials",
                served.port("credentials")
            ),
        ],
    );
    let creds: serde_json::Value = serde_json::from_slice(&creds.stdout).unwrap();
    let cert = cwd.join("device.pem");
    let key = cwd.join("device.key");
    std::fs::write(&cert, creds["cert"].as_str().unwrap()).unwrap();
    std::fs::write(&key, creds["key"].as_str().unwrap()).unwrap();
    let (cert, key) = (path(&cert).to_owned(), path(&key).to_owned());
    assert_eq!(register(served, data, &cert, &key).0, 200);
    (cert, key)
}

/// POST /v1.0/devices/registration over mutual TLS; returns (status, body), status 0 when the
/// handshake was refused.
fn register(served: &Served, data: &Path, cert: &str, key: &str) -> (u16, String) {
    let out = tool(
        "curl",
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "--cacert",
            path(&data.join("pki/root-ca.pem")),
            "--cert",
            cert,
            "--key",
            key,
            "-X",
            "POST",
            "-d",
            &format!("{{\"uid\":\"{UID}\"}}"),
            &format!(
                "https://localhost:{}/v1.0/devices/registration",
                served.port("registration")
            ),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// A fresh machine: `relay serve` with no data directory argument creates ./relay-data with the
/// PKI, the secrets and the store and says so, with the root CA's path and fingerprint. Then,
/// with the server running and `[api] auth = "token"`, `relay pki status` lists the device
/// certificate, the server warns about it (10-day certificates are within 30 days of expiry) in
/// its log and on /metrics, and `relay pki revoke` goes through the running server.
#[test]
fn serve_on_a_fresh_machine_then_status_and_revoke_while_it_runs() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("relay-data");
    let served = Served::start(cwd.path());
    for file in [
        "pki/root-ca.pem",
        "pki/intermediate-ca.pem",
        "pki/server.pem",
        "pki/crl.pem",
        "secrets/token.key",
        "secrets/api-token",
        "secrets/device-keys.json",
        "store.redb",
    ] {
        assert!(data.join(file).exists(), "{file} missing");
    }
    assert!(
        served.line_with("created PKI").is_some(),
        "{}",
        served.log()
    );
    assert!(
        served.line_with("secrets created").is_some(),
        "{}",
        served.log()
    );
    assert!(
        served.line_with("store created").is_some(),
        "{}",
        served.log()
    );
    let root = data.join("pki/root-ca.pem").canonicalize().unwrap();
    let logged_root = served.field("root CA", "root_ca");
    assert_eq!(Path::new(&logged_root), root, "logged as an absolute path");
    let fingerprint = tool(
        "openssl",
        &[
            "x509",
            "-in",
            path(&root),
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let fingerprint = String::from_utf8_lossy(&fingerprint.stdout);
    let hex = |s: &str| s.replace(':', "").to_ascii_lowercase();
    let from_openssl = hex(fingerprint.trim().rsplit('=').next().unwrap());
    assert_eq!(hex(&served.field("root CA", "sha256")), from_openssl);

    provision_and_register(&served, cwd.path(), &data);
    let api = format!("http://127.0.0.1:{}", served.port("api"));

    // The store is held by the server: status asks it (with the token from relay-data).
    let status = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["pki", "status", "--api", &api])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let status = ok(&status);
    let device_row = status
        .lines()
        .find(|l| l.starts_with(&format!("device {UID}")))
        .unwrap_or_else(|| panic!("no device row:\n{status}"));
    let days_left: i64 = device_row
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&days_left), "{status}");
    for name in ["root CA", "intermediate CA", "server"] {
        assert!(status.contains(name), "{status}");
    }

    let (code, metrics) = api_call(&data, "GET", &format!("{api}/metrics"), None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("rop_device_certificates_expiring 1"),
        "{metrics}"
    );
    assert!(metrics.contains("rop_certificate_expiring 1"), "{metrics}");
    assert!(
        metrics.contains(&format!("rop_device_certificate_min_days_left {days_left}"))
            || metrics.contains(&format!(
                "rop_device_certificate_min_days_left {}",
                days_left - 1
            )),
        "{metrics}"
    );
    // Without the token the API refuses: the CLI must have sent it.
    let anonymous = tool(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{api}/v1.0/certificates"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&anonymous.stdout), "401");

    let revoke = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["pki", "revoke", UID, "--api", &api])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let out = ok(&revoke);
    assert!(out.contains("through the running server"), "{out}");
    let (_, device) = api_call(&data, "GET", &format!("{api}/v1.0/devices/{UID}"), None);
    let device: serde_json::Value = serde_json::from_str(&device).unwrap();
    assert_eq!(device["revoked"], true, "{device}");
    let (_, metrics) = api_call(&data, "GET", &format!("{api}/metrics"), None);
    assert!(
        metrics.contains("rop_device_certificates_expiring 0"),
        "{metrics}"
    );
    served.kill();

    // A restart warns about the device certificate at once (none now: it is revoked) and
    // says it loaded, not created, the secrets and the store.
    let again = Served::start(cwd.path());
    assert!(
        again.line_with("secrets loaded").is_some(),
        "{}",
        again.log()
    );
    assert!(again.line_with("store opened").is_some(), "{}", again.log());
    assert!(again.line_with("created PKI").is_none(), "{}", again.log());
}

/// State acknowledged to a device survives kill -9: after SIGKILL and a restart the device is
/// still registered, its certificate still opens the mutual-TLS port, and the server warns at
/// start-up that it expires within 30 days.
#[test]
fn provisioned_device_survives_kill_9() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("relay-data");
    let served = Served::start(cwd.path());
    let (cert, key) = provision_and_register(&served, cwd.path(), &data);
    served.kill();

    // No server: `relay pki status` reads the store itself and lists the device certificate.
    let status = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["pki", "status"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let status = ok(&status);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&format!("device {UID}"))),
        "{status}"
    );

    let served = Served::start(cwd.path());
    let api = format!("http://127.0.0.1:{}", served.port("api"));
    let (status, device) = api_call(&data, "GET", &format!("{api}/v1.0/devices/{UID}"), None);
    assert_eq!(status, 200, "{device}");
    let device: serde_json::Value = serde_json::from_str(&device).unwrap();
    assert!(device["registeredAt"].as_u64().is_some(), "{device}");
    assert_eq!(device["revoked"], false, "{device}");
    assert_eq!(
        device["certificates"].as_array().map(Vec::len),
        Some(1),
        "{device}"
    );
    let (status, body) = register(&served, &data, &cert, &key);
    assert_eq!(status, 200, "{body}");
    let warning = served
        .line_with("device certificate expires soon")
        .unwrap_or_else(|| panic!("no expiry warning:\n{}", served.log()));
    assert!(warning.contains(UID), "{warning}");
    let days_left: i64 = served
        .field("device certificate expires soon", "days_left")
        .parse()
        .unwrap();
    // Issued for 10 days: 10 within the second of issue, 9 after.
    assert!((9..=10).contains(&days_left), "{warning}");
}

fn current_key_index(data: &Path) -> String {
    let keys: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("secrets/device-keys.json")).unwrap(),
    )
    .unwrap();
    keys["currentKeyIndex"].as_str().unwrap().to_owned()
}

/// The access key index a registration hands out (the first 16 characters of `accesskey`).
fn registered_index(served: &Served, data: &Path, cert: &str, key: &str) -> String {
    let (status, body) = register(served, data, cert, key);
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    body["accesskey"].as_str().unwrap()[..16].to_owned()
}

/// `relay pki rotate-device-key`: through the running server (API token, `[api] auth =
/// "token"`) the next registration gets the new index without a restart; offline it rewrites
/// `device-keys.json`, keeping every older key, and the restarted server hands out the newest.
#[test]
fn rotate_device_key_while_the_server_runs_and_offline() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("relay-data");
    let served = Served::start(cwd.path());
    let (cert, key) = provision_and_register(&served, cwd.path(), &data);
    let first = current_key_index(&data);
    assert_eq!(registered_index(&served, &data, &cert, &key), first);

    let api = format!("http://127.0.0.1:{}", served.port("api"));
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["pki", "rotate-device-key", "--api", &api])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let out = ok(&out);
    assert!(out.contains("through the running server"), "{out}");
    let second = current_key_index(&data);
    assert_ne!(second, first);
    assert!(out.contains(&second), "{out}");
    assert_eq!(registered_index(&served, &data, &cert, &key), second);
    assert!(
        served.line_with("device key rotated").is_some(),
        "{}",
        served.log()
    );
    // Without the API token the endpoint is refused.
    let refused = tool(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &format!("{api}/v1.0/device-keys/rotation"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "401");
    assert_eq!(current_key_index(&data), second);
    served.kill();

    let out = ok(&relay(&["pki", "rotate-device-key", "--data", path(&data)]));
    let third = current_key_index(&data);
    assert!(out.contains(&third), "{out}");
    let keys: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("secrets/device-keys.json")).unwrap(),
    )
    .unwrap();
    for index in [&first, &second, &third] {
        assert!(keys["deviceKeys"][index.as_str()].is_string(), "{keys}");
    }
    let served = Served::start(cwd.path());
    assert_eq!(registered_index(&served, &data, &cert, &key), third);
    served.kill();
}

/// Re-signs `data`'s intermediate CA with the root (same subject and key, so everything it
/// issued stays valid) for `days` days, as an operator replacing it with openssl would.
fn put_short_intermediate(data: &Path, days: &str) {
    let pki = data.join("pki");
    let work = tempfile::tempdir().unwrap();
    let ext = work.path().join("ca.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    )
    .unwrap();
    let csr = work.path().join("intermediate-ca.csr");
    let short = work.path().join("intermediate-ca.pem");
    let openssl = |args: &[&str]| {
        let out = tool("openssl", args);
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A request with the intermediate's subject and key, signed again by the root.
    openssl(&[
        "x509",
        "-x509toreq",
        "-in",
        path(&pki.join("intermediate-ca.pem")),
        "-signkey",
        path(&pki.join("intermediate-ca.key")),
        "-out",
        path(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr),
        "-CA",
        path(&pki.join("root-ca.pem")),
        "-CAkey",
        path(&pki.join("root-ca.key")),
        "-set_serial",
        "0x5407",
        "-days",
        days,
        "-extfile",
        path(&ext),
        "-out",
        path(&short),
    ]);
    std::fs::copy(&short, pki.join("intermediate-ca.pem")).unwrap();
}

/// A hierarchy certificate within 30 days of expiry (an intermediate CA valid 10 more days)
/// next to a 10-day device certificate: `relay pki status` shows the intermediate's days left,
/// the server warns about it at start-up (`certificate expires soon`, with its name and days
/// left), and /metrics counts both on `rop_certificate_expiring`, the device one alone on
/// `rop_device_certificates_expiring`, with the intermediate's days on
/// `rop_certificate_days_left`.
#[test]
fn expiring_intermediate_and_device_certificates_are_warned_about_and_counted() {
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("relay-data");
    ok(&relay(&["pki", "init", "--data", path(&data)]));
    put_short_intermediate(&data, "10");
    let status = ok(&relay(&["pki", "status", "--data", path(&data)]));
    let row = status
        .lines()
        .find(|l| l.starts_with("intermediate CA"))
        .unwrap_or_else(|| panic!("no intermediate CA row:\n{status}"));
    let days_left: i64 = row.split_whitespace().last().unwrap().parse().unwrap();
    // Valid 10 days from the second it was signed: 9 whole days left (10 within that second).
    assert!((9..=10).contains(&days_left), "{status}");

    let served = Served::start(cwd.path());
    let warning = served
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("certificate expires soon") && l.contains("intermediate CA"))
        .cloned()
        .unwrap_or_else(|| panic!("no intermediate CA expiry warning:\n{}", served.log()));
    assert!(warning.contains("WARN"), "{warning}");
    let logged_days: i64 = warning
        .split_whitespace()
        .find_map(|w| w.strip_prefix("days_left="))
        .unwrap_or_else(|| panic!("no days_left= in {warning}"))
        .parse()
        .unwrap();
    assert!((9..=10).contains(&logged_days), "{warning}");
    assert!(
        served
            .log
            .lock()
            .unwrap()
            .iter()
            .all(|l| !l.contains("certificate expires soon") || l.contains("intermediate CA")),
        "only the intermediate is due before a device exists:\n{}",
        served.log()
    );

    let api = format!("http://127.0.0.1:{}", served.port("api"));
    let (code, metrics) = api_call(&data, "GET", &format!("{api}/metrics"), None);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("rop_certificate_expiring 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rop_device_certificates_expiring 0\n"),
        "{metrics}"
    );
    let intermediate_days = metrics
        .lines()
        .find(|l| l.starts_with("rop_certificate_days_left{certificate=\"intermediate CA\""))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no intermediate CA days left:\n{metrics}"));
    let intermediate_days: i64 = intermediate_days.parse().unwrap();
    assert!((9..=10).contains(&intermediate_days), "{metrics}");

    // A device certificate issued for 10 days by the short intermediate joins the count.
    provision_and_register(&served, cwd.path(), &data);
    let (_, metrics) = api_call(&data, "GET", &format!("{api}/metrics"), None);
    assert!(
        metrics.contains("rop_certificate_expiring 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rop_device_certificates_expiring 1\n"),
        "{metrics}"
    );
    served.kill();
}
