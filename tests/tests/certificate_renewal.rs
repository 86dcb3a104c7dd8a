//! Renewing the server certificate while clients are connected: open connections keep working,
//! new handshakes see the new certificate (the platform's server needs a restart for this).
//! The server renews on its own: at start-up when its certificate is due or expired, and as
//! soon as an operator puts a due one in place; both driven here through the running server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::ServerName;
use tests::TestServer;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(server: &TestServer) -> Tls {
    connect_at(server, Duration::from_secs(10))
}

/// [`connect`], with the read timeout given.
fn connect_at(server: &TestServer, read_timeout: Duration) -> Tls {
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
    tcp.set_read_timeout(Some(read_timeout)).unwrap();
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

/// Seconds from now until the served certificate's notAfter.
fn peer_seconds_left(tls: &Tls) -> i64 {
    let cert = &tls.conn.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    parsed.validity().not_after.timestamp() - now
}

const DAY: i64 = 86_400;

fn openssl(args: &[&str]) {
    let out = tests::run("openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a server certificate valid for `days` more days (signed by the intermediate with
/// openssl, as an operator would) over the PKI's server.pem/server.key; returns the serial.
fn put_short_server_certificate(data: &Path, days: &str) -> Vec<u8> {
    let pki = data.join("pki");
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("server.key");
    let csr = work.path().join("server.csr");
    let cert = work.path().join("server.crt");
    let ext = work.path().join("ext.cnf");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &p(&key),
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        &p(&key),
        "-subj",
        "/CN=localhost",
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&pki.join("intermediate-ca.pem")),
        "-CAkey",
        &p(&pki.join("intermediate-ca.key")),
        "-set_serial",
        "0x7E57ED",
        "-days",
        days,
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    let mut chain = std::fs::read_to_string(&cert).unwrap();
    chain.push_str(&std::fs::read_to_string(pki.join("intermediate-ca.pem")).unwrap());
    // Key first, as `relay` itself writes them.
    std::fs::copy(&key, pki.join("server.key")).unwrap();
    std::fs::write(pki.join("server.pem"), chain).unwrap();
    vec![0x7E, 0x57, 0xED]
}

/// A server restarted with a server certificate 5 days from expiry renews it before it
/// serves anything: the first handshake already gets a fresh one.
#[test]
fn due_server_certificate_is_renewed_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    pki::Pki::init(
        data.path(),
        &pki::InitOptions {
            hosts: pki::default_hosts(),
            force: false,
            root_key_out: None,
        },
    )
    .unwrap();
    let short = put_short_server_certificate(data.path(), "5");
    let server = TestServer::start_in(data);
    let mut tls = connect(&server);
    assert_eq!(get(&mut tls, "/healthz"), "HTTP/1.1 200 OK");
    assert_ne!(
        peer_serial(&tls),
        short,
        "the due certificate is still served"
    );
    assert!(
        peer_seconds_left(&tls) > 60 * DAY,
        "{}",
        peer_seconds_left(&tls)
    );
    // Written back too: the next start finds the renewed one.
    let on_disk = std::fs::read_to_string(server.data_dir().join("pki/server.pem")).unwrap();
    let on_disk = first_serial_in_pem(&on_disk);
    assert_eq!(on_disk, peer_serial(&tls));
}

/// The first certificate of a PEM chain's serial.
fn first_serial_in_pem(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.raw_serial().to_vec()
}

/// An operator drops a certificate that is already due into a running server: the server
/// loads it, sees it is due and renews it by itself; a connection opened before all this
/// keeps working throughout.
#[test]
fn running_server_renews_a_due_certificate_without_dropping_connections() {
    let server = TestServer::start();
    let mut before = connect(&server);
    assert_eq!(get(&mut before, "/healthz"), "HTTP/1.1 200 OK");
    let original = peer_serial(&before);
    let short = put_short_server_certificate(server.data_dir(), "3");

    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let mut probe = connect(&server);
        assert_eq!(get(&mut probe, "/healthz"), "HTTP/1.1 200 OK");
        let serial = peer_serial(&probe);
        if serial != original && serial != short {
            break probe;
        }
        assert!(
            Instant::now() < deadline,
            "the due certificate was not renewed"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(peer_seconds_left(&renewed) > 60 * DAY);
    assert_eq!(get(&mut before, "/healthz"), "HTTP/1.1 200 OK");
    assert_eq!(peer_serial(&before), original);
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
