//! An alarm the server acknowledged survives a crash: a device's alarm 33 gets its 200 while
//! the partner's HTTPS webhook is down, the `relay serve` process is killed with SIGKILL before
//! it could deliver, and after a restart on the same data directory the alarm reaches the
//! webhook, over HTTPS (a private CA configured as `alarm_webhook_ca`) with a signature that
//! verifies against the deployment's webhook key.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{free_port, next_of, open_signalling_link, provision, serve, AllPorts};
use signal::alarms::WebhookSigner;
use signal::proto::body::Alarm;
use signal::proto::core_packet::cmd;

/// One request the webhook received: its head (request line and headers) and body.
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Reads one HTTP/1.1 request; `None` at the end of the connection.
fn read_request(stream: &mut impl Read) -> Option<Received> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut received = Received {
        head,
        body: data[head_end + 4..].to_vec(),
    };
    let length: usize = received
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while received.body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(received)
}

/// The partner's HTTPS webhook on `addr`, answering 200 to every request and reporting it.
fn webhook(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) -> mpsc::Receiver<Received> {
    let listener = TcpListener::bind(addr).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let (tls, tx) = (tls.clone(), tx.clone());
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let conn = rustls::ServerConnection::new(tls).unwrap();
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                while let Some(request) = read_request(&mut stream) {
                    let _ = tx.send(request);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if stream
                        .write_all(answer)
                        .and_then(|()| stream.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    rx
}

#[test]
fn alarm_acknowledged_before_a_kill_9_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The partner's certificate, from a CA of its own that the server is told to trust.
    let partner = pki::Pki::init(&dir.path().join("partner"), &pki::InitOptions::default())
        .expect("partner PKI");
    let hook = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let AllPorts { ports, config } = AllPorts::new();
    let config = format!(
        "alarm_webhook = \"https://localhost:{}/rop/alarm\"\nalarm_webhook_ca = \"{}\"\n{config}",
        hook.port(),
        partner.paths().root_cert.display()
    );
    let config_path = dir.path().join("relay.toml");
    std::fs::write(&config_path, config).unwrap();
    let data = dir.path().join("data");

    let server = serve(&config_path, &data, ports.api);
    let ca = std::fs::read_to_string(data.join("pki/root-ca.pem")).unwrap();
    let uid = "95270000ALARMK91";
    let device = provision(&ports, &ca, uid);
    let (mut link, mut sim) = open_signalling_link(&ports, &device);
    let alarm = Alarm {
        channel: 1,
        status: "MD".into(),
        ai_type: "people".into(),
    };
    link.write_all(&sim.alarm(&alarm, 4242)).unwrap();
    link.flush().unwrap();
    let ack = next_of(&mut link, &mut sim, cmd::ALARM);
    assert_eq!(ack.header.request_id, 4242);
    assert_eq!(ack.header.response_code, 200, "the alarm was acknowledged");

    // The webhook is down: nothing could be delivered. SIGKILL, no shutdown of any kind.
    drop(link);
    drop(server);

    let received = webhook(hook, partner.server_config());
    let _server = serve(&config_path, &data, ports.api);
    let request = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the alarm is delivered after the restart");
    assert!(
        request.head.starts_with("POST /rop/alarm HTTP/1.1"),
        "{}",
        request.head
    );
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(json["uid"], uid);
    assert_eq!(json["channelId"], "1");
    assert_eq!(json["status"], "MD");
    assert_eq!(json["AItype"], "people");
    let signature = request.header("x-rop-signature").expect("signature header");
    let secrets = signal::secrets::Secrets::open_or_create(&data).unwrap();
    assert!(
        WebhookSigner::new(secrets.alarm_webhook_key).verify(&request.body, signature),
        "signature {signature} does not verify"
    );
    assert!(!WebhookSigner::new([0; 32]).verify(&request.body, signature));
    let event_id = request.header("x-rop-event-id").expect("event id");
    assert_eq!(json["eventId"], event_id);
    assert_eq!(request.header("idempotency-key"), Some(event_id));
}
