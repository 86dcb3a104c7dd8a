//! The README's "Provisioning a device by hand (curl and openssl only)" run as written: its
//! shell blocks are read from README.md when the test runs (so the test fails when the README
//! drifts from the server) and run with bash against an in-process server. The only thing the
//! test changes is where the server listens: the block reads the addresses from the variables
//! it sets at its top (`API=${API:-127.0.0.1:61009}`, `CA_PORT`, …), and the test sets those
//! variables to the test server's ephemeral ports in the environment.

use std::path::Path;
use std::process::Command;

use tests::{require_tool, run, TestServer};

const SECTION: &str = "## Provisioning a device by hand (curl and openssl only)";

/// The variables the README block takes the server's addresses from.
const ADDRESS_VARIABLES: [&str; 5] = [
    "API",
    "HOST",
    "CA_PORT",
    "CREDENTIALS_PORT",
    "REGISTRATION_PORT",
];

/// The `sh` code blocks of the README section, joined, verbatim.
fn readme_section_script() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme).expect("README.md");
    let start = readme
        .find(SECTION)
        .unwrap_or_else(|| panic!("README.md has no section {SECTION:?}"));
    let body = &readme[start + SECTION.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut script = String::new();
    let mut in_block = false;
    for line in body.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, _) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_block, "unterminated code block in the README section");
    assert!(!script.is_empty(), "no sh block in the README section");
    script
}

#[test]
fn readme_provisioning_by_hand_works_as_written() {
    for tool in ["bash", "curl", "openssl", "sed"] {
        require_tool(tool);
    }
    let script = readme_section_script();
    // Every address comes from the variables: a port or host written anywhere else would talk
    // to whatever listens on the default ports instead of the server under test.
    for variable in ADDRESS_VARIABLES {
        let default = format!("{variable}=${{{variable}:-");
        assert!(
            script.lines().any(|l| l.starts_with(&default)),
            "the README block no longer sets {variable} with a default ({default}…):\n{script}"
        );
    }
    for line in script.lines().filter(|l| {
        !ADDRESS_VARIABLES
            .iter()
            .any(|v| l.starts_with(&format!("{v}=")))
    }) {
        let code = line.split(" # ").next().unwrap();
        for literal in ["127.0.0.1", "localhost", ":610"] {
            assert!(
                !code.contains(literal),
                "the README block names {literal:?} outside the address variables: {line}"
            );
        }
    }
    let uid = script
        .lines()
        .find_map(|l| l.strip_prefix("UID_="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the README block sets UID_")
        .to_owned();

    let server = TestServer::start();
    let addrs = &server.server.addrs;
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env("API", addrs.api.to_string())
        .env("HOST", "localhost")
        .env("CA_PORT", addrs.ca.port().to_string())
        .env("CREDENTIALS_PORT", addrs.credentials.port().to_string())
        .env("REGISTRATION_PORT", addrs.registration.port().to_string())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "the README block failed: {shown}");

    // What the user reads on the terminal.
    assert!(stdout.contains("CA verified"), "{shown}");
    assert!(
        stdout.to_ascii_lowercase().contains("rop-long-term-code:"),
        "{shown}"
    );
    assert!(stdout.contains("device.pem: OK"), "{shown}");
    assert!(
        stdout
            .replace(' ', "")
            .contains(&format!("subject=CN={uid}")),
        "the certificate's CN is the UID: {shown}"
    );

    // The files it left: the CA it downloaded is the server's, and the device certificate
    // verifies against the server's own CA file, not only the downloaded copy.
    let file = |name: &str| work.path().join(name).to_str().unwrap().to_owned();
    assert_eq!(
        std::fs::read_to_string(file("ca.pem")).unwrap(),
        std::fs::read_to_string(server.ca_file()).unwrap()
    );
    let verify = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            server.ca_file().to_str().unwrap(),
            "-untrusted",
            &file("device.pem"),
            &file("device.pem"),
        ],
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let registration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file("registration.json")).unwrap())
            .unwrap_or_else(|e| panic!("registration.json is not JSON ({e}): {shown}"));
    assert_eq!(
        registration["accesskey"].as_str().map(str::len),
        Some(32),
        "{registration}"
    );
    assert_eq!(
        registration["secretAccesskey"].as_str().map(str::len),
        Some(32),
        "{registration}"
    );
    assert_eq!(
        registration["keepAliveTCPPort"],
        addrs.keepalive.port(),
        "{registration}"
    );
    assert_eq!(
        registration["signalingTLSPort"],
        addrs.signaling.port(),
        "{registration}"
    );
    assert_eq!(registration["heartBeatInterval"], 20, "{registration}");
}
