//! Renewing the server certificate while clients are connected: open connections keep working,
//! new handshakes see the new certificate (the platform's server needs a restart for this).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tests::TestServer;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(server: &TestServer) -> Tls {
    let config: Arc<rustls::ClientConfig> =
        server.server.pki.client_config_trusting_root().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let addr = server
        .server
        .addrs
        .api_tls
        .expect("HTTPS API enabled by default");
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// One keep-alive GET; returns the status line.
fn get(tls: &mut Tls, path: &str) -> String {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).unwrap(), 1, "connection closed");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    tls.read_exact(&mut body).unwrap();
    head.lines().next().unwrap().to_owned()
}

fn peer_serial(tls: &Tls) -> Vec<u8> {
    let cert = &tls.conn.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    parsed.raw_serial().to_vec()
}

#[test]
fn renewal_keeps_open_connections_and_serves_the_new_certificate() {
    let server = TestServer::start();
    let mut before = connect(&server);
    assert_eq!(get(&mut before, "/healthz"), "HTTP/1.1 200 OK");
    let old_serial = peer_serial(&before);

    let renewed = server.server.pki.renew_server().unwrap();
    assert!(renewed.days_left >= 89, "{renewed:?}");

    // The connection opened before the renewal still works.
    assert_eq!(get(&mut before, "/healthz"), "HTTP/1.1 200 OK");
    // A new one sees the new certificate.
    let mut after = connect(&server);
    assert_eq!(get(&mut after, "/healthz"), "HTTP/1.1 200 OK");
    let new_serial = peer_serial(&after);
    assert_ne!(old_serial, new_serial);
}
