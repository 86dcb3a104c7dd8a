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
