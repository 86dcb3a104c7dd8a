//! The HTTP/1.1 connection driver over real sockets on 127.0.0.1, driven by curl (the client
//! partners and operators use) and by a raw socket where curl cannot misbehave on purpose
//! (pipelining, slowloris, limits).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use signal::http_server::{serve_connection_until, ConnInfo, Handler, Request, ServerConfig};
use signal::proto::http::{
    json_error, json_response, Limits, ParsedResponse, RequestHead, Response, ResponseParser,
};

/// Routes of the test server.
struct TestApi;

impl Handler for TestApi {
    async fn handle(&self, request: Request, conn: &ConnInfo) -> Response {
        let method = request.method().clone();
        match (method, request.path()) {
            (Method::GET | Method::HEAD, "/healthz") => {
                json_response(StatusCode::OK, &json!({"status": "ok"}))
            }
            (Method::GET, "/conn") => json_response(
                StatusCode::OK,
                &json!({"peer": conn.peer.to_string(), "query": request.query(), "tls": conn.tls}),
            ),
            (Method::POST | Method::PUT, "/echo") => match request.json::<Value>() {
                Ok(value) => json_response(StatusCode::OK, &json!({"received": value})),
                Err(response) => response,
            },
            (Method::POST, "/upload") => {
                json_response(StatusCode::OK, &json!({"bytes": request.body.len()}))
            }
            (Method::GET, "/slow") => {
                rt::timer::sleep(Duration::from_millis(300)).await;
                json_response(StatusCode::OK, &json!({"slow": true}))
            }
            (_, path) => json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            ),
        }
    }

    fn body_limit(&self, head: &RequestHead, _conn: &ConnInfo) -> Option<usize> {
        (head.path == "/upload").then_some(256 * 1024)
    }
}

/// The driver on one shard, accepting on an ephemeral port until dropped.
struct TestServer {
    addr: SocketAddr,
    shutdown: rt::Shutdown,
    errors: Arc<Mutex<Vec<String>>>,
    shards: Option<rt::shard::RunningShards<()>>,
}

impl TestServer {
    fn start(cfg: ServerConfig) -> TestServer {
        TestServer::start_with(cfg, None)
    }

    /// `tls`: serve HTTPS with this rustls configuration.
    fn start_with(cfg: ServerConfig, tls: Option<Arc<rustls::ServerConfig>>) -> TestServer {
        cfg.validate().expect("valid test config");
        let (addr_tx, addr_rx) = mpsc::channel();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let shutdown = rt::Shutdown::new();
        let entry = {
            let errors = errors.clone();
            let shutdown = shutdown.clone();
            move |_ctx: rt::ShardContext| {
                let (addr_tx, errors, shutdown, cfg, tls) = (
                    addr_tx.clone(),
                    errors.clone(),
                    shutdown.clone(),
                    cfg.clone(),
                    tls.clone(),
                );
                async move {
                    let listener = rt::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    let cfg = Rc::new(cfg);
                    let api = Rc::new(TestApi);
                    while let Some(accepted) = listener.accept_until(&shutdown).await {
                        let stream = accepted.expect("accept");
                        let info = ConnInfo {
                            peer: stream.peer_addr().unwrap(),
                            local: stream.local_addr().unwrap(),
                            tls: tls.is_some(),
                            client_uid: None,
                        };
                        let (cfg, api, errors, shutdown, tls) = (
                            cfg.clone(),
                            api.clone(),
                            errors.clone(),
                            shutdown.clone(),
                            tls.clone(),
                        );
                        rt::spawn_detached(async move {
                            let served = match tls {
                                None => {
                                    let sd = shutdown.wait();
                                    serve_connection_until(stream, &*api, info, &cfg, sd).await
                                }
                                Some(tls) => {
                                    let handshake = Duration::from_secs(5);
                                    let Ok(stream) = rt::tls::accept(stream, tls, handshake).await
                                    else {
                                        errors.lock().unwrap().push("TLS handshake".into());
                                        return;
                                    };
                                    let sd = shutdown.wait();
                                    serve_connection_until(stream, &*api, info, &cfg, sd).await
                                }
                            };
                            if let Err(error) = served {
                                errors.lock().unwrap().push(error.to_string());
                            }
                        });
                    }
                }
            }
        };
        let shards = rt::ShardPool::new(1)
            .pin(false)
            .name("http-test")
            .with_shutdown(shutdown.clone())
            .start(entry)
            .expect("start shard");
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server address");
        TestServer {
            addr,
            shutdown,
            errors,
            shards: Some(shards),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until a connection has ended with an error containing `needle` (a connection task
    /// reports after its lingering close, a moment after the client saw the end).
    fn wait_for_error(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.errors().iter().any(|e| e.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no error {needle:?} in {:?}",
                self.errors()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> RawClient {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(shards) = self.shards.take() {
            let _ = shards.join();
        }
    }
}

fn fast_config() -> ServerConfig {
    ServerConfig {
        idle_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        linger_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    }
}

/// A client on a plain socket that reads responses with the codec's client parser.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next response, or `None` once the server has closed the connection.
    fn response(&mut self, parser: ResponseParser) -> Option<Response> {
        loop {
            match parser.parse(&self.buf).expect("valid response") {
                ParsedResponse::Complete { response, consumed } => {
                    self.buf.drain(..consumed);
                    return Some(response);
                }
                ParsedResponse::Partial => {}
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(self.buf.is_empty(), "truncated response: {:?}", self.buf);
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    fn next(&mut self) -> Response {
        self.response(ResponseParser::default())
            .expect("a response")
    }

    fn assert_closed(&mut self) {
        assert!(
            self.response(ResponseParser::default()).is_none(),
            "connection still open"
        );
    }
}

fn json_body(response: &Response) -> Value {
    serde_json::from_slice(response.body()).expect("JSON body")
}

fn error_symbol(response: &Response) -> String {
    json_body(response)["error"]["symbol"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

struct CurlOutput {
    stdout: String,
    stderr: String,
}

/// Runs curl; curl is part of the test environment, so its absence fails the test.
fn curl(args: &[&str]) -> CurlOutput {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (/usr/bin/curl) for these tests");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "curl {args:?} failed: {stderr}");
    CurlOutput { stdout, stderr }
}

/// Splits curl's `-w '\n%{http_code}'` suffix off its output.
fn body_and_status(output: &CurlOutput) -> (Value, u16) {
    let (body, code) = output.stdout.rsplit_once('\n').expect("status line");
    (
        serde_json::from_str(body).expect("JSON body"),
        code.trim().parse().expect("status"),
    )
}

const STATUS: &str = "\n%{http_code}";

#[test]
fn curl_get_json() {
    let server = TestServer::start(fast_config());
    let output = curl(&["-i", &server.url("/healthz")]);
    let text = output.stdout.replace("\r\n", "\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\n"), "{text}");
    assert!(
        text.contains("\ncontent-type: application/json; charset=utf-8\n"),
        "{text}"
    );
    assert!(text.contains("\ncontent-length: 15\n"), "{text}");
    assert!(text.ends_with("\n\n{\"status\":\"ok\"}"), "{text}");
}

#[test]
fn curl_post_json() {
    let server = TestServer::start(fast_config());
    let output = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"uid":"95270000YGAKNWKJ","channelId":0}"#,
        "-w",
        STATUS,
        &server.url("/echo"),
    ]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"received": {"uid": "95270000YGAKNWKJ", "channelId": 0}})
    );

    let output = curl(&["-d", "{not json", "-w", STATUS, &server.url("/echo")]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["symbol"], "invalid_parameter");
}

#[test]
fn curl_reuses_the_connection() {
    let server = TestServer::start(fast_config());
    let output = curl(&["-v", &server.url("/conn?n=1"), &server.url("/conn?n=2")]);
    assert!(
        output.stderr.contains("Re-using existing connection"),
        "{}",
        output.stderr
    );
    let bodies: Vec<Value> = serde_json::Deserializer::from_str(&output.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[0]["peer"], bodies[1]["peer"],
        "both requests on one connection"
    );
    assert_eq!(
        (bodies[0]["query"].as_str(), bodies[1]["query"].as_str()),
        (Some("n=1"), Some("n=2"))
    );
}

#[test]
fn curl_unknown_route_is_json_404() {
    let server = TestServer::start(fast_config());
    let output = curl(&["-w", STATUS, &server.url("/v1.0/nothing")]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": {"symbol": "not_found", "message": "no route for /v1.0/nothing"}})
    );
}

#[test]
fn curl_large_body_is_413_unless_the_route_allows_it() {
    let server = TestServer::start(fast_config());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(
        &file,
        format!("{{\"blob\":\"{}\"}}", "a".repeat(100 * 1024)),
    )
    .unwrap();
    let data = format!("@{}", file.display());

    // Without Expect: the whole body is on its way when the 413 goes out.
    let output = curl(&[
        "-H",
        "Expect:",
        "--data-binary",
        &data,
        "-w",
        STATUS,
        &server.url("/echo"),
    ]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 413);
    assert_eq!(body["error"]["symbol"], "payload_too_large");

    // With Expect: refused before the body is sent.
    let output = curl(&[
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        "-w",
        STATUS,
        &server.url("/echo"),
    ]);
    assert_eq!(body_and_status(&output).1, 413);

    // The handler's body_limit hook raises the limit for one route.
    let output = curl(&["--data-binary", &data, "-w", STATUS, &server.url("/upload")]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 200);
    assert_eq!(body["bytes"], 100 * 1024 + 11);
}

#[test]
fn curl_expect_continue_is_answered_at_once() {
    let server = TestServer::start(fast_config());
    let started = Instant::now();
    let output = curl(&[
        "-X",
        "PUT",
        "-H",
        "Expect: 100-continue",
        "-d",
        r#"{"name":"front door"}"#,
        "-w",
        STATUS,
        &server.url("/echo"),
    ]);
    // curl waits 1 s for a 100 Continue that never comes.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let (body, status) = body_and_status(&output);
    assert_eq!(
        (status, body["received"]["name"].as_str()),
        (200, Some("front door"))
    );
}

#[test]
fn curl_huge_header_is_431() {
    let server = TestServer::start(fast_config());
    let header = format!("X-Big: {}", "a".repeat(9000));
    let output = curl(&["-H", &header, "-w", STATUS, &server.url("/healthz")]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 431);
    assert_eq!(body["error"]["symbol"], "header_fields_too_large");
}

#[test]
fn curl_chunked_upload_is_411() {
    let server = TestServer::start(fast_config());
    let output = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        "{}",
        "-w",
        STATUS,
        &server.url("/echo"),
    ]);
    let (body, status) = body_and_status(&output);
    assert_eq!(status, 411);
    assert_eq!(body["error"]["symbol"], "length_required");
}

#[test]
fn curl_head_has_length_but_no_body() {
    let server = TestServer::start(fast_config());
    let output = curl(&["-I", &server.url("/healthz")]);
    let text = output.stdout.replace("\r\n", "\n");
    assert!(text.starts_with("HTTP/1.1 200 OK\n"), "{text}");
    assert!(text.contains("\ncontent-length: 15\n"), "{text}");
    assert!(text.ends_with("\n\n"), "{text}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start(fast_config());
    let mut client = server.connect();
    client.send(
        b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n\
          GET /conn?last HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(json_body(&client.next()), json!({"slow": true}));
    let head = client
        .response(ResponseParser::default().for_head_request())
        .unwrap();
    assert_eq!(head.headers()["content-length"], "15");
    assert_eq!(json_body(&client.next()), json!({"received": {"a": 1}}));
    let last = client.next();
    assert_eq!(json_body(&last)["query"], "last");
    assert_eq!(last.headers()["connection"], "keep-alive");
    // Split across writes at odd places, on the same connection.
    for piece in [&b"GET /con"[..], b"n HTTP/1.1\r\nHo", b"st: t\r\n", b"\r\n"] {
        client.send(piece);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.next().status(), StatusCode::OK);
}

#[test]
fn http10_keep_alive_and_close() {
    let server = TestServer::start(fast_config());
    let mut client = server.connect();
    client.send(b"GET /conn HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.next().headers()["connection"], "keep-alive");
    client.send(b"GET /conn HTTP/1.0\r\n\r\n");
    assert_eq!(client.next().headers()["connection"], "close");
    client.assert_closed();

    let mut client = server.connect();
    client.send(b"GET /conn HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(client.next().headers()["connection"], "close");
    client.assert_closed();
}

#[test]
fn max_requests_per_connection() {
    let server = TestServer::start(ServerConfig {
        max_requests_per_connection: 2,
        ..fast_config()
    });
    let mut client = server.connect();
    client.send(&b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3));
    assert_eq!(client.next().headers()["connection"], "keep-alive");
    assert_eq!(client.next().headers()["connection"], "close");
    client.assert_closed();
}

#[test]
fn bad_syntax_is_400_with_the_offset_then_close() {
    let server = TestServer::start(fast_config());
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.1\r\nHo st: t\r\n\r\n");
    let response = client.next();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(
        json_body(&response)["error"]["message"],
        "malformed header name at byte 25"
    );
    client.assert_closed();
    drop(client);
    server.wait_for_error("client sent a bad request: malformed header name at byte 25");
}

#[test]
fn too_many_headers_is_431() {
    let server = TestServer::start(ServerConfig {
        limits: Limits {
            max_headers: 8,
            ..Limits::default()
        },
        ..fast_config()
    });
    let mut client = server.connect();
    let mut request = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..8 {
        request.push_str(&format!("X-{i}: {i}\r\n"));
    }
    client.send(format!("{request}\r\n").as_bytes());
    let response = client.next();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(error_symbol(&response), "header_fields_too_large");
    client.assert_closed();
}

#[test]
fn slowloris_gets_408_within_the_request_timeout() {
    let server = TestServer::start(fast_config());
    let mut client = server.connect();
    let mut trickle = client.stream.try_clone().unwrap();
    let started = Instant::now();
    let writer = thread::spawn(move || {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n" {
            if trickle.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    let response = client.next();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(error_symbol(&response), "request_timeout");
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3500),
        "408 after {elapsed:?}, request timeout is 2 s"
    );
    client.assert_closed();
    let _ = client.stream.shutdown(Shutdown::Both);
    writer.join().unwrap();
    server.wait_for_error("client did not send its whole request within 2s");
}

#[test]
fn idle_connection_is_closed_quietly() {
    let server = TestServer::start(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..fast_config()
    });
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.next().status(), StatusCode::OK);
    let started = Instant::now();
    client.assert_closed();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(server.errors().is_empty(), "{:?}", server.errors());
}

#[test]
fn truncated_request_is_reported() {
    let server = TestServer::start(fast_config());
    let mut client = server.connect();
    client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{\"a\"");
    client.stream.shutdown(Shutdown::Write).unwrap();
    client.assert_closed();
    server.wait_for_error("client closed the connection after 56 bytes of a request");
}

#[test]
fn shutdown_closes_idle_connections() {
    let server = TestServer::start(fast_config());
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.next().status(), StatusCode::OK);
    server.shutdown.trigger();
    let started = Instant::now();
    client.assert_closed();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn curl_over_https_keeps_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, _) = pki::Pki::open_or_init(dir.path(), &["localhost".to_owned()]).unwrap();
    let server = TestServer::start_with(fast_config(), Some(pki.server_config()));
    let port = server.addr.port();
    let ca = pki.paths().root_cert.display().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/conn");
    let output = curl(&["-v", "--cacert", &ca, "--resolve", &resolve, &url, &url]);
    assert!(
        output.stderr.contains("Re-using existing connection"),
        "{}",
        output.stderr
    );
    let bodies: Vec<Value> = serde_json::Deserializer::from_str(&output.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["tls"], true);
    assert_eq!(bodies[0]["peer"], bodies[1]["peer"]);

    let url = format!("https://localhost:{port}/echo");
    let output = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-d",
        r#"{"uid":"95270000YGAKNWKJ"}"#,
        "-w",
        STATUS,
        &url,
    ]);
    let (body, status) = body_and_status(&output);
    assert_eq!(
        (status, body["received"]["uid"].as_str()),
        (200, Some("95270000YGAKNWKJ"))
    );
}
