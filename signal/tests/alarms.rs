//! Alarm delivery end to end over real sockets on 127.0.0.1: the durable queue, the sender on
//! its own executor, and a partner's webhook played by `signal::http_server` over HTTPS with a
//! certificate from our PKI (trusted through `alarm_webhook_ca`).
//!
//! - a signed alarm arrives, with the platform's body, event id and a verifiable signature,
//!   over one reused keep-alive connection;
//! - receiver down: alarms wait, then all arrive in order once it is up;
//! - 500 then 200: the same event is retried;
//! - slow: answers within the response timeout only delay delivery; one past it is retried with
//!   the same event id (the partner sees it twice), the backlog visible meanwhile; alarms of
//!   different devices travel side by side over several connections, each device's in order;
//! - refused (400) alarms: only their device waits, then they are dead-lettered;
//! - kill -9 after enqueue (a child process aborts without closing anything): delivered after
//!   the "restart".

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use signal::alarms::{
    AlarmDelivery, AlarmEvent, AlarmMetrics, AlarmQueue, DeliverySettings, QueueSettings,
    WebhookSigner,
};
use signal::http_server::{serve_connection_until, ConnInfo, Handler, Request, ServerConfig};
use signal::proto::body::Alarm;
use signal::proto::http::Response;
use signal::store::Store;

const KEY: [u8; 32] = [0x5a; 32];
const UID_A: &str = "952700000A5S348E";
const UID_B: &str = "952700000B7T111Q";

/// One request the webhook received.
#[derive(Debug, Clone)]
struct Received {
    body: Vec<u8>,
    json: Value,
    signature: String,
    event_id: String,
    idempotency_key: String,
    timestamp: String,
    peer: SocketAddr,
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Statuses to answer, in order; 200 once empty.
    script: VecDeque<u16>,
    /// Alarms of this UID are always answered 400.
    refuse_uid: Option<String>,
    /// Delays before answering, in order; none once empty.
    delays: VecDeque<Duration>,
}

struct Webhook {
    state: Arc<Mutex<ReceiverState>>,
}

impl Handler for Webhook {
    async fn handle(&self, request: Request, conn: &ConnInfo) -> Response {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let json: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        assert_eq!(request.path(), "/hook");
        assert_eq!(request.query(), Some("authcode=s3cret"));
        let (status, delay) = {
            let mut state = self.state.lock().unwrap();
            let delay = state.delays.pop_front();
            let status = if state.refuse_uid.as_deref() == json["uid"].as_str() {
                400
            } else {
                state.script.pop_front().unwrap_or(200)
            };
            state.received.push(Received {
                body: request.body.to_vec(),
                json,
                signature: header("x-rop-signature"),
                event_id: header("x-rop-event-id"),
                idempotency_key: header("idempotency-key"),
                timestamp: header("x-rop-timestamp"),
                peer: conn.peer,
            });
            (status, delay)
        };
        // Recorded on arrival, answered after the delay.
        if let Some(delay) = delay {
            rt::timer::sleep(delay).await;
        }
        http::Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(b"{\"message\":\"ok\"}".to_vec())
            .unwrap()
    }
}

/// The partner's HTTPS webhook on one shard of its own.
struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    shutdown: rt::Shutdown,
    shards: Option<rt::shard::RunningShards<()>>,
}

impl Receiver {
    fn start(addr: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::start_with(addr, tls, Arc::default())
    }

    fn start_with(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        state: Arc<Mutex<ReceiverState>>,
    ) -> Receiver {
        Receiver::start_full(addr, Some(tls), state, ServerConfig::default())
    }

    /// `tls: None` serves plain HTTP.
    fn start_full(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        state: Arc<Mutex<ReceiverState>>,
        server_config: ServerConfig,
    ) -> Receiver {
        let shutdown = rt::Shutdown::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        let entry = {
            let (state, shutdown) = (state.clone(), shutdown.clone());
            move |_ctx: rt::ShardContext| {
                let (state, shutdown, tls, ready_tx, server_config) = (
                    state.clone(),
                    shutdown.clone(),
                    tls.clone(),
                    ready_tx.clone(),
                    server_config.clone(),
                );
                async move {
                    let listener = rt::TcpListener::bind(addr).unwrap();
                    ready_tx.send(()).unwrap();
                    let webhook = Rc::new(Webhook { state });
                    let cfg = Rc::new(server_config);
                    while let Some(accepted) = listener.accept_until(&shutdown).await {
                        let Ok(stream) = accepted else { continue };
                        let info = ConnInfo {
                            peer: stream.peer_addr().unwrap(),
                            local: stream.local_addr().unwrap(),
                            tls: tls.is_some(),
                            client_uid: None,
                        };
                        let (webhook, cfg, tls, shutdown) =
                            (webhook.clone(), cfg.clone(), tls.clone(), shutdown.clone());
                        rt::spawn_detached(async move {
                            let stream: rt::MaybeTls = match tls {
                                Some(tls) => {
                                    let handshake = Duration::from_secs(5);
                                    match rt::tls::accept(stream, tls, handshake).await {
                                        Ok(stream) => stream.into(),
                                        Err(_) => return,
                                    }
                                }
                                None => stream.into(),
                            };
                            let _ = serve_connection_until(
                                stream,
                                &*webhook,
                                info,
                                &cfg,
                                shutdown.wait(),
                            )
                            .await;
                        });
                    }
                }
            }
        };
        let shards = rt::ShardPool::new(1)
            .pin(false)
            .name("webhook")
            .with_shutdown(shutdown.clone())
            .start(entry)
            .unwrap();
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Receiver {
            state,
            shutdown,
            shards: Some(shards),
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` requests arrived.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        wait_until(Duration::from_secs(20), || self.received().len() >= n);
        self.received()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(shards) = self.shards.take() {
            let _ = shards.join();
        }
    }
}

/// The sender on an executor thread of its own, as on the control plane.
struct Sender {
    shutdown: rt::Shutdown,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sender {
    fn start(delivery: AlarmDelivery) -> Sender {
        let shutdown = rt::Shutdown::new();
        let sd = shutdown.clone();
        let thread = thread::spawn(move || {
            rt::block_on_shard(move || delivery.run(sd)).unwrap();
        });
        Sender {
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A PKI in `dir`: the webhook's TLS configuration and the CA file the sender trusts.
fn pki(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let pki = pki::Pki::init(dir, &pki::InitOptions::default()).unwrap();
    (pki.server_config(), pki.paths().root_cert.clone())
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn fast_settings() -> DeliverySettings {
    DeliverySettings {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        idle_poll: Duration::from_millis(200),
        max_rejections: 2,
        ..DeliverySettings::default()
    }
}

fn open_queue(dir: &Path) -> AlarmQueue {
    let store = Arc::new(Store::open(dir).unwrap());
    AlarmQueue::open(
        store,
        QueueSettings::default(),
        Arc::new(AlarmMetrics::default()),
    )
    .unwrap()
}

fn delivery(queue: &AlarmQueue, addr: SocketAddr, ca: &Path) -> AlarmDelivery {
    let url = format!("https://{addr}/hook?authcode=s3cret");
    AlarmDelivery::new(queue.clone(), Some(&url), Some(ca), KEY, fast_settings()).unwrap()
}

fn alarm(uid: &str, channel: u32) -> AlarmEvent {
    let alarm = Alarm {
        channel,
        status: "MD".into(),
        ai_type: "people".into(),
    };
    AlarmEvent::new(uid, &alarm, signal::alarms::unix_now_ms())
}

fn channels_of(received: &[Received], uid: &str) -> Vec<u64> {
    received
        .iter()
        .filter(|r| r.json["uid"] == uid)
        .map(|r| r.json["channelId"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn signed_alarm_reaches_https_webhook_over_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let addr = free_addr();
    let receiver = Receiver::start(addr, tls);
    let queue = open_queue(dir.path());
    let _sender = Sender::start(delivery(&queue, addr, &ca));

    let first = alarm(UID_A, 0);
    queue.enqueue(&first).unwrap();
    let got = receiver.wait_for(1);
    let r = &got[0];
    assert!(
        WebhookSigner::new(KEY).verify(&r.body, &r.signature),
        "{r:?}"
    );
    assert!(!WebhookSigner::new([0; 32]).verify(&r.body, &r.signature));
    assert_eq!(
        openssl_signature(&r.body),
        r.signature,
        "docs/alarms.md's openssl check"
    );
    assert_eq!(r.json["uid"], UID_A);
    assert_eq!(r.json["channelId"], "0");
    assert_eq!(r.json["status"], "MD");
    assert_eq!(r.json["AItype"], "people");
    assert_eq!(r.json["eventId"], first.event_id.as_str());
    assert_eq!(r.event_id, first.event_id);
    assert_eq!(r.idempotency_key, first.event_id);
    assert!(r.json["receivedAt"].as_str().unwrap().ends_with('Z'));
    let sent_at: u64 = r.timestamp.parse().unwrap();
    assert!(sent_at.abs_diff(signal::clock::unix_now()) < 60);

    // The next alarm goes over the same keep-alive connection.
    queue.enqueue(&alarm(UID_A, 1)).unwrap();
    let got = receiver.wait_for(2);
    assert_eq!(got[1].peer, got[0].peer, "connection reused");
    wait_until(Duration::from_secs(5), || queue.depth().unwrap() == 0);
    let m = queue.metrics().snapshot();
    assert_eq!((m.received, m.queued, m.delivered, m.depth), (2, 2, 2, 0));
    assert_eq!(m.oldest_received_at_ms, 0);
}

#[test]
fn receiver_down_alarms_wait_then_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let addr = free_addr();
    let queue = open_queue(dir.path());
    let _sender = Sender::start(delivery(&queue, addr, &ca));
    for channel in 0..4 {
        queue.enqueue(&alarm(UID_A, channel)).unwrap();
        queue.enqueue(&alarm(UID_B, channel)).unwrap();
    }
    // Nobody listens: the sender retries with backoff and keeps everything.
    wait_until(Duration::from_secs(10), || {
        queue.metrics().snapshot().retried >= 3
    });
    assert_eq!(queue.depth().unwrap(), 8);
    assert!(queue.metrics().snapshot().oldest_received_at_ms > 0);

    let receiver = Receiver::start(addr, tls);
    let got = receiver.wait_for(8);
    wait_until(Duration::from_secs(5), || queue.depth().unwrap() == 0);
    assert_eq!(got.len(), 8, "each alarm once: {got:?}");
    assert_eq!(channels_of(&got, UID_A), vec![0, 1, 2, 3]);
    assert_eq!(channels_of(&got, UID_B), vec![0, 1, 2, 3]);
    let m = queue.metrics().snapshot();
    assert_eq!((m.delivered, m.dropped()), (8, 0));
}

#[test]
fn server_error_is_retried_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let addr = free_addr();
    let state = Arc::new(Mutex::new(ReceiverState {
        script: VecDeque::from([500, 503, 200]),
        ..ReceiverState::default()
    }));
    let receiver = Receiver::start_with(addr, tls, state);
    let queue = open_queue(dir.path());
    let _sender = Sender::start(delivery(&queue, addr, &ca));
    let event = alarm(UID_A, 3);
    queue.enqueue(&event).unwrap();
    let got = receiver.wait_for(3);
    wait_until(Duration::from_secs(5), || queue.depth().unwrap() == 0);
    // At least once, same event id every time.
    assert!(got.iter().all(|r| r.event_id == event.event_id));
    let m = queue.metrics().snapshot();
    assert_eq!((m.delivered, m.retried), (1, 2));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.received().len(), 3, "nothing sent after the 2xx");
}

#[test]
fn slow_webhook_delays_delivery_and_one_past_the_timeout_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let addr = free_addr();
    // The first answer comes after the sender's 2 s response timeout; the next ones after
    // 300 ms each, within it.
    let state = Arc::new(Mutex::new(ReceiverState {
        delays: VecDeque::from([
            Duration::from_secs(3),
            Duration::from_millis(300),
            Duration::from_millis(300),
            Duration::from_millis(300),
        ]),
        ..ReceiverState::default()
    }));
    let receiver = Receiver::start_with(addr, tls, state);
    let queue = open_queue(dir.path());
    let _sender = Sender::start(delivery(&queue, addr, &ca));
    let first = alarm(UID_A, 0);
    queue.enqueue(&first).unwrap();
    for channel in 1..3 {
        queue.enqueue(&alarm(UID_A, channel)).unwrap();
    }
    // While the first waits for its answer, the backlog shows on the gauges.
    receiver.wait_for(1);
    let m = queue.metrics().snapshot();
    assert_eq!(m.depth, 3);
    assert_eq!(m.oldest_received_at_ms, first.received_at_ms);

    wait_until(Duration::from_secs(20), || queue.depth().unwrap() == 0);
    let got = receiver.received();
    // The timed-out attempt reached the partner, and so did its retry: at least once, with the
    // same event id to deduplicate on.
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].event_id, first.event_id);
    assert_eq!(got[1].event_id, first.event_id);
    assert_eq!(channels_of(&got, UID_A), vec![0, 0, 1, 2], "in order");
    let m = queue.metrics().snapshot();
    assert_eq!((m.delivered, m.retried, m.dropped()), (3, 1, 0));
    assert_eq!(m.oldest_received_at_ms, 0);
}

#[test]
fn alarms_of_different_devices_are_in_flight_together_each_device_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let addr = free_addr();
    // Every answer takes 500 ms.
    let state = Arc::new(Mutex::new(ReceiverState {
        delays: std::iter::repeat_n(Duration::from_millis(500), 64).collect(),
        ..ReceiverState::default()
    }));
    let receiver = Receiver::start_with(addr, tls, state);
    let queue = open_queue(dir.path());
    let uids: Vec<String> = (0..4).map(|i| format!("95270000000000A{i}")).collect();
    for channel in 0..3 {
        for uid in &uids {
            queue.enqueue(&alarm(uid, channel)).unwrap();
        }
    }
    let _sender = Sender::start(delivery(&queue, addr, &ca));
    // The four devices' first alarms are all in flight before any is answered.
    let first = receiver.wait_for(4);
    let peers: std::collections::HashSet<_> = first[..4].iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        4,
        "one connection per request in flight: {first:?}"
    );
    let devices: std::collections::HashSet<_> =
        first[..4].iter().map(|r| r.json["uid"].clone()).collect();
    assert_eq!(devices.len(), 4, "one alarm per device in flight");

    wait_until(Duration::from_secs(20), || queue.depth().unwrap() == 0);
    let got = receiver.received();
    assert_eq!(got.len(), 12, "each alarm once");
    for uid in &uids {
        assert_eq!(channels_of(&got, uid), vec![0, 1, 2], "{uid} in order");
    }
    // The connections are kept and reused: no more than were in flight at once.
    let peers: std::collections::HashSet<_> = got.iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 4);
    let m = queue.metrics().snapshot();
    assert_eq!((m.delivered, m.retried), (12, 0));
}

#[test]
fn refused_alarms_hold_only_their_device_then_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let addr = free_addr();
    let state = Arc::new(Mutex::new(ReceiverState {
        refuse_uid: Some(UID_A.into()),
        ..ReceiverState::default()
    }));
    let receiver = Receiver::start_with(addr, tls, state);
    let queue = open_queue(dir.path());
    let _sender = Sender::start(delivery(&queue, addr, &ca));
    queue
        .enqueue_batch(&[
            alarm(UID_A, 0),
            alarm(UID_B, 0),
            alarm(UID_A, 1),
            alarm(UID_B, 1),
        ])
        .unwrap();
    wait_until(Duration::from_secs(10), || queue.depth().unwrap() == 0);
    let got = receiver.received();
    // B went on while A waited; A's second alarm was sent only after its first was given up.
    assert_eq!(channels_of(&got, UID_B), vec![0, 1]);
    assert_eq!(channels_of(&got, UID_A), vec![0, 0, 1, 1]);
    let dead = queue.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    let m = queue.metrics().snapshot();
    assert_eq!((m.delivered, m.dead_lettered), (2, 2));
}

/// Set in the child process of [`alarms_survive_kill_9`]: the data directory to enqueue into.
const CHILD_ENV: &str = "ALARMS_TEST_KILLED_CHILD_DIR";

/// Runs only as the child of [`alarms_survive_kill_9`]: enqueues three alarms, reports, and
/// dies at once (abort: no destructor runs, the store is not closed).
#[test]
fn killed_child_helper() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let queue = open_queue(Path::new(&dir));
    for channel in 0..3 {
        queue.enqueue(&alarm(UID_A, channel)).unwrap();
    }
    println!("ENQUEUED");
    std::process::abort();
}

#[test]
fn alarms_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = pki(dir.path());
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_child_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ENQUEUED"), "{stdout}");
    assert!(!output.status.success(), "the child must die, not exit");

    // "Restart": a new store and queue over the same file, a new sender.
    let queue = open_queue(dir.path());
    assert_eq!(queue.metrics().snapshot().depth, 3);
    let addr = free_addr();
    let receiver = Receiver::start(addr, tls);
    let _sender = Sender::start(delivery(&queue, addr, &ca));
    let got = receiver.wait_for(3);
    assert_eq!(channels_of(&got, UID_A), vec![0, 1, 2]);
    wait_until(Duration::from_secs(5), || queue.depth().unwrap() == 0);
}

#[test]
fn without_webhook_the_sender_idles_and_alarms_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let config = signal::config::Config::default();
    let queue =
        AlarmQueue::open(store, QueueSettings::from_config(&config), Arc::default()).unwrap();
    let secrets = signal::secrets::Secrets::open_or_create(dir.path()).unwrap();
    let delivery =
        AlarmDelivery::from_config(queue.clone(), &config, &secrets, fast_settings()).unwrap();
    let sender = Sender::start(delivery);
    queue.enqueue(&alarm(UID_A, 0)).unwrap();
    assert_eq!(queue.depth().unwrap(), 0);
    let m = queue.metrics().snapshot();
    assert_eq!((m.received, m.dropped_no_webhook), (1, 1));
    drop(sender); // stops promptly on shutdown
}

/// The signature as docs/alarms.md tells partners to compute it with openssl.
fn openssl_signature(body: &[u8]) -> String {
    use std::io::Write;
    let hex_key: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-mac", "HMAC", "-macopt"])
        .arg(format!("hexkey:{hex_key}"))
        .arg("-r")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl (Debian package openssl)");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    format!("sha256={}", text.split(' ').next().unwrap())
}

#[test]
fn plain_http_and_a_keepalive_connection_closed_by_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    // The webhook closes idle connections after 200 ms; the sender would reuse one for 10 s.
    let server_config = ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let receiver = Receiver::start_full(addr, None, Arc::default(), server_config);
    let queue = open_queue(dir.path());
    let settings = DeliverySettings {
        keepalive_idle: Duration::from_secs(10),
        ..fast_settings()
    };
    let url = format!("http://{addr}/hook?authcode=s3cret");
    let delivery = AlarmDelivery::new(queue.clone(), Some(&url), None, KEY, settings).unwrap();
    let _sender = Sender::start(delivery);
    queue.enqueue(&alarm(UID_A, 0)).unwrap();
    receiver.wait_for(1);
    thread::sleep(Duration::from_millis(500));
    queue.enqueue(&alarm(UID_A, 1)).unwrap();
    let got = receiver.wait_for(2);
    assert_ne!(
        got[0].peer, got[1].peer,
        "a new connection after the webhook closed the old one"
    );
    assert!(WebhookSigner::new(KEY).verify(&got[1].body, &got[1].signature));
    wait_until(Duration::from_secs(5), || queue.depth().unwrap() == 0);
    let m = queue.metrics().snapshot();
    // The closed connection was noticed and replaced at once, not counted as a failure.
    assert_eq!((m.delivered, m.retried), (2, 0));
}

#[test]
fn trust_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open_queue(dir.path());
    let url = Some("https://partner.example.net/alarm");
    let settings = DeliverySettings::default;
    // The system's roots (this machine has ca-certificates in /etc/ssl/certs).
    AlarmDelivery::new(queue.clone(), url, None, KEY, settings()).unwrap();
    let missing = dir.path().join("missing.pem");
    let err = AlarmDelivery::new(queue.clone(), url, Some(&missing), KEY, settings()).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let err = AlarmDelivery::new(queue.clone(), url, Some(&not_pem), KEY, settings()).unwrap_err();
    assert!(err.to_string().contains("no usable CA"), "{err}");
    let err = AlarmDelivery::new(queue, Some("ftp://x/"), None, KEY, settings()).unwrap_err();
    assert!(err.to_string().contains("scheme"), "{err}");
}
