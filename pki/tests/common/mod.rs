//! Helpers shared by the pki integration tests: a fresh PKI in a temporary directory, an
//! in-memory TLS handshake (no sockets) and the openssl command line.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use pki::{InitOptions, Pki};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

pub const UID: &str = "95270000ABCDEFGH";

pub fn new_pki(hosts: &[&str]) -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let options = InitOptions {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..InitOptions::default()
    };
    let pki = Pki::init(dir.path(), &options).unwrap();
    (dir, pki)
}

/// Runs /usr/bin/openssl in `dir`. A missing openssl fails the test (never skips it).
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("/usr/bin/openssl is required by these tests")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Who stopped a handshake.
#[derive(Debug)]
pub enum HandshakeError {
    Client(rustls::Error),
    Server(rustls::Error),
    Stalled,
}

pub struct Established {
    pub client: ClientConnection,
    pub server: ServerConnection,
}

/// Moves TLS records between the two sides until neither has anything to send.
fn pump(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<bool, HandshakeError> {
    let mut moved = false;
    let mut buf = Vec::new();
    while client.wants_write() {
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        if buf.is_empty() {
            break;
        }
        moved = true;
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server
                .process_new_packets()
                .map_err(HandshakeError::Server)?;
        }
    }
    while server.wants_write() {
        buf.clear();
        server.write_tls(&mut buf).unwrap();
        if buf.is_empty() {
            break;
        }
        moved = true;
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client
                .process_new_packets()
                .map_err(HandshakeError::Client)?;
        }
    }
    Ok(moved)
}

/// A complete handshake in memory, then one application message each way, so that a server
/// rejecting the client certificate after a TLS 1.3 client has finished is seen too.
pub fn handshake(
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
) -> Result<Established, HandshakeError> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client_config, name).unwrap();
    let mut server = ServerConnection::new(server_config).unwrap();
    for _ in 0..32 {
        let moved = pump(&mut client, &mut server)?;
        if !moved && !client.is_handshaking() && !server.is_handshaking() {
            let mut est = Established { client, server };
            exchange(&mut est)?;
            return Ok(est);
        }
        if !moved {
            return Err(HandshakeError::Stalled);
        }
    }
    Err(HandshakeError::Stalled)
}

/// Sends "ping" client -> server and "pong" back over an established pair.
pub fn exchange(est: &mut Established) -> Result<(), HandshakeError> {
    est.client.writer().write_all(b"ping").unwrap();
    pump(&mut est.client, &mut est.server)?;
    let mut got = [0u8; 4];
    est.server
        .reader()
        .read_exact(&mut got)
        .map_err(|_| HandshakeError::Stalled)?;
    assert_eq!(&got, b"ping");
    est.server.writer().write_all(b"pong").unwrap();
    pump(&mut est.client, &mut est.server)?;
    est.client
        .reader()
        .read_exact(&mut got)
        .map_err(|_| HandshakeError::Stalled)?;
    assert_eq!(&got, b"pong");
    Ok(())
}

/// Serial (upper-case hex) of a DER certificate, via openssl-independent parsing.
pub fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut raw = cert.raw_serial();
    while raw.len() > 1 && raw[0] == 0 {
        raw = &raw[1..];
    }
    raw.iter().map(|b| format!("{b:02X}")).collect()
}
