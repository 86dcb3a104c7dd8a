//! TLS handshakes, echo, and a session moved to another shard mid-connection, with certificates
//! made by rcgen at test time.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rt::mesh::Mesh;
use rt::net::{Handoff, TcpListener, TcpStream};
use rt::shard::{block_on_shard, ShardPool};
use rt::tls::{self, TlsError, TlsStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

const HANDSHAKE: Duration = Duration::from_secs(5);

struct Pki {
    ca: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
    device_chain: Vec<CertificateDer<'static>>,
    device_key: PrivatePkcs8KeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "rt test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();

    let device_key = KeyPair::generate().unwrap();
    let mut device_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    device_params.distinguished_name = DistinguishedName::new();
    device_params
        .distinguished_name
        .push(DnType::CommonName, "95270000TESTUID1");
    device_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let device = device_params.signed_by(&device_key, &ca, &ca_key).unwrap();

    Pki {
        ca: ca.der().clone(),
        server_chain: vec![server.der().clone()],
        server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        device_chain: vec![device.der().clone()],
        device_key: PrivatePkcs8KeyDer::from(device_key.serialize_der()),
    }
}

fn roots(pki: &Pki) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    Arc::new(roots)
}

fn server_config(pki: &Pki, mutual: bool) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder();
    let builder = if mutual {
        builder
            .with_client_cert_verifier(WebPkiClientVerifier::builder(roots(pki)).build().unwrap())
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(
            pki.server_chain.clone(),
            PrivateKeyDer::Pkcs8(pki.server_key.clone_key()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"rop".to_vec()];
    Arc::new(config)
}

fn client_config(pki: &Pki, with_cert: bool) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder().with_root_certificates(roots(pki));
    let mut config = if with_cert {
        builder
            .with_client_auth_cert(
                pki.device_chain.clone(),
                PrivateKeyDer::Pkcs8(pki.device_key.clone_key()),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"rop".to_vec()];
    Arc::new(config)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

#[test]
fn handshake_and_echo() {
    let pki = pki();
    let server_config = server_config(&pki, false);
    let client_config = client_config(&pki, false);
    block_on_shard(move || async move {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn_local(async move {
            let tcp = listener.accept().await.unwrap();
            let mut tls = tls::accept(tcp, server_config, HANDSHAKE).await.unwrap();
            assert_eq!(tls.alpn_protocol(), Some(&b"rop"[..]));
            assert_eq!(tls.server_name(), Some("localhost"));
            let mut buf = vec![0u8; 64 * 1024];
            let mut echoed = 0usize;
            loop {
                let n = tls.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                tls.write_all(&buf[..n]).await.unwrap();
                tls.flush().await.unwrap();
                echoed += n;
            }
            tls.close().await.unwrap();
            echoed
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls::connect(tcp, client_config, server_name(), HANDSHAKE)
            .await
            .unwrap();
        assert_eq!(tls.alpn_protocol(), Some(&b"rop"[..]));
        // Larger than one TLS record and than the read scratch buffer.
        let message: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        // Send in pieces, read the echo of each piece back.
        let mut echoed = Vec::with_capacity(message.len());
        for chunk in message.chunks(20_000) {
            tls.write_all(chunk).await.unwrap();
            tls.flush().await.unwrap();
            let mut back = vec![0u8; chunk.len()];
            tls.read_exact(&mut back).await.unwrap();
            echoed.extend_from_slice(&back);
        }
        assert_eq!(echoed, message);
        tls.close().await.unwrap();
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(server.await, message.len());
    })
    .unwrap();
}

#[test]
fn handshake_failure_is_reported_as_the_peers_fault() {
    let pki = pki();
    let server_config = server_config(&pki, true);
    // The client trusts the CA but presents no certificate on a mutual-TLS port.
    let client_config = client_config(&pki, false);
    block_on_shard(move || async move {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn_local(async move {
            let tcp = listener.accept().await.unwrap();
            tls::accept(tcp, server_config, HANDSHAKE).await.map(|_| ())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = tls::connect(tcp, client_config, server_name(), HANDSHAKE).await;
        let server = server.await;
        match server {
            Err(TlsError::Handshake { source, .. }) => {
                assert!(
                    matches!(source, rustls::Error::NoCertificatesPresented),
                    "{source:?}"
                );
            }
            other => panic!("expected a handshake error, got {other:?}"),
        }
        // TLS 1.3 clients finish before the server checks the certificate; the failure shows
        // on their first read.
        if let Ok(mut client) = client {
            let mut buf = [0u8; 1];
            assert!(client.read(&mut buf).await.is_err());
        }
    })
    .unwrap();
}

#[test]
fn silent_client_times_out() {
    let pki = pki();
    let server_config = server_config(&pki, false);
    block_on_shard(move || async move {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let tcp = listener.accept().await.unwrap();
        let err = tls::accept(tcp, server_config, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, TlsError::Timeout { .. }), "{err:?}");
    })
    .unwrap();
}

#[test]
fn sniffed_bytes_are_fed_as_read_ahead() {
    let pki = pki();
    let server_config = server_config(&pki, false);
    let client_config = client_config(&pki, false);
    block_on_shard(move || async move {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn_local(async move {
            let mut tcp = listener.accept().await.unwrap();
            // Read (not peek) the TLS record header to decide the protocol, then pass it on.
            let mut head = [0u8; 5];
            tcp.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], 0x16, "a TLS handshake record");
            let mut tls = tls::accept_with_read_ahead(tcp, server_config, head.to_vec(), HANDSHAKE)
                .await
                .unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.flush().await.unwrap();
            buf
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls::connect(tcp, client_config, server_name(), HANDSHAKE)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(&server.await, b"ping");
    })
    .unwrap();
}

/// The accepting shard completes a mutual-TLS handshake, learns the device UID from the client
/// certificate, serves one request, then moves fd + session + unread bytes to the owner shard,
/// which continues the same TLS conversation.
#[test]
fn session_moves_to_another_shard_mid_connection() {
    let pki = pki();
    let server_config = server_config(&pki, true);
    let client_config = client_config(&pki, true);
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let addr_tx = Arc::new(Mutex::new(addr_tx));
    let mesh: Mesh<Handoff> = Mesh::new(2, 4);
    let running = ShardPool::new(2)
        .name("tls-move")
        .start(move |ctx| {
            let mesh = mesh.clone();
            let addr_tx = addr_tx.clone();
            let server_config = server_config.clone();
            async move {
                let port = ctx.join(&mesh).await.unwrap();
                if ctx.id == 0 {
                    let listener = TcpListener::bind(localhost()).unwrap();
                    addr_tx
                        .lock()
                        .unwrap()
                        .send(listener.local_addr().unwrap())
                        .unwrap();
                    let tcp = listener.accept().await.unwrap();
                    let mut tls = tls::accept(tcp, server_config, HANDSHAKE).await.unwrap();
                    let cert = tls.peer_certificates().unwrap()[0].clone();
                    assert!(cert.len() > 100);
                    // First request on the accepting shard.
                    let mut req = [0u8; 5];
                    tls.read_exact(&mut req).await.unwrap();
                    assert_eq!(&req, b"first");
                    tls.write_all(b"0:first").await.unwrap();
                    tls.flush().await.unwrap();
                    // The client pipelines "second" right away; whatever of it has arrived
                    // (plaintext inside the session, or ciphertext not yet processed) moves too.
                    rt::timer::sleep(Duration::from_millis(50)).await;
                    let owner = rt::owner_shard("95270000TESTUID1", 2).max(1);
                    port.send_to(owner, tls.into_handoff().unwrap())
                        .await
                        .unwrap();
                } else {
                    let (from, handoff) = port.recv().await.unwrap();
                    assert_eq!(from, 0);
                    let mut tls = TlsStream::from_handoff(handoff).unwrap();
                    assert_eq!(tls.alpn_protocol(), Some(&b"rop"[..]));
                    let mut buf = [0u8; 6];
                    for _ in 0..2 {
                        tls.read_exact(&mut buf).await.unwrap();
                        let reply = format!("{}:{}", ctx.id, String::from_utf8_lossy(&buf));
                        tls.write_all(reply.as_bytes()).await.unwrap();
                        tls.flush().await.unwrap();
                    }
                    tls.close().await.unwrap();
                }
            }
        })
        .unwrap();
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    block_on_shard(move || async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls::connect(tcp, client_config, server_name(), HANDSHAKE)
            .await
            .unwrap();
        tls.write_all(b"first").await.unwrap();
        tls.write_all(b"second").await.unwrap();
        tls.flush().await.unwrap();
        let mut reply = [0u8; 7];
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"0:first");
        let mut reply = [0u8; 8];
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"1:second");
        rt::timer::sleep(Duration::from_millis(20)).await;
        tls.write_all(b"third!").await.unwrap();
        tls.flush().await.unwrap();
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"1:third!");
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    })
    .unwrap();
    running.join().unwrap();
}

/// A burst larger than rustls's plaintext buffer leaves ciphertext the session cannot take yet;
/// it must travel in the handoff's read-ahead and be fed first on the owner shard.
#[test]
fn unprocessed_ciphertext_travels_with_the_session() {
    const BURST: usize = 200 * 1024;
    let pki = pki();
    let server_config = server_config(&pki, false);
    let client_config = client_config(&pki, false);
    let burst: Arc<Vec<u8>> = Arc::new((0..BURST).map(|i| (i * 7 % 256) as u8).collect());
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let addr_tx = Arc::new(Mutex::new(addr_tx));
    let mesh: Mesh<(usize, Handoff)> = Mesh::new(2, 4);
    let expected = burst.clone();
    let running = ShardPool::new(2)
        .name("tls-burst")
        .start(move |ctx| {
            let mesh = mesh.clone();
            let addr_tx = addr_tx.clone();
            let server_config = server_config.clone();
            let expected = expected.clone();
            async move {
                let port = ctx.join(&mesh).await.unwrap();
                if ctx.id == 0 {
                    let listener = TcpListener::bind(localhost()).unwrap();
                    addr_tx
                        .lock()
                        .unwrap()
                        .send(listener.local_addr().unwrap())
                        .unwrap();
                    let tcp = listener.accept().await.unwrap();
                    let mut tls = tls::accept(tcp, server_config, HANDSHAKE).await.unwrap();
                    // Let the whole burst arrive, then read small bites until a recv brings more
                    // than rustls takes (records straddle the 32 KiB receive size).
                    rt::timer::sleep(Duration::from_millis(100)).await;
                    let mut consumed = 0;
                    let mut bite = [0u8; 1000];
                    while tls.buffered_ciphertext() == 0 {
                        assert!(
                            consumed + bite.len() < BURST,
                            "rustls took every recv whole"
                        );
                        tls.read_exact(&mut bite).await.unwrap();
                        assert_eq!(&bite[..], &expected[consumed..consumed + bite.len()]);
                        consumed += bite.len();
                    }
                    let handoff = tls.into_handoff().unwrap();
                    assert!(!handoff.read_ahead.is_empty());
                    port.send_to(1, (consumed, handoff)).await.unwrap();
                } else {
                    let (_, (consumed, handoff)) = port.recv().await.unwrap();
                    let mut tls = TlsStream::from_handoff(handoff).unwrap();
                    let mut rest = vec![0u8; BURST - consumed];
                    tls.read_exact(&mut rest).await.unwrap();
                    assert!(
                        rest == expected[consumed..],
                        "burst corrupted after the move"
                    );
                    tls.write_all(b"ok").await.unwrap();
                    tls.close().await.unwrap();
                }
            }
        })
        .unwrap();
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    block_on_shard(move || async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls::connect(tcp, client_config, server_name(), HANDSHAKE)
            .await
            .unwrap();
        tls.write_all(&burst).await.unwrap();
        tls.flush().await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"ok");
    })
    .unwrap();
    running.join().unwrap();
}

/// A reader that takes small bites out of a large response exercises the path where rustls's
/// plaintext buffer is full and received ciphertext waits in the stream.
#[test]
fn slow_small_reads_of_a_large_response() {
    const SIZE: usize = 2 * 1024 * 1024;
    let pki = pki();
    let server_config = server_config(&pki, false);
    let client_config = client_config(&pki, false);
    block_on_shard(move || async move {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = rt::spawn_local(async move {
            let tcp = listener.accept().await.unwrap();
            let mut tls = tls::accept(tcp, server_config, HANDSHAKE).await.unwrap();
            let body: Vec<u8> = (0..SIZE).map(|i| (i % 241) as u8).collect();
            tls.write_all(&body).await.unwrap();
            tls.close().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls::connect(tcp, client_config, server_name(), HANDSHAKE)
            .await
            .unwrap();
        let mut got = Vec::with_capacity(SIZE);
        let mut bite = [0u8; 777];
        loop {
            let n = tls.read(&mut bite).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&bite[..n]);
        }
        server.await;
        assert_eq!(got.len(), SIZE);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 241) as u8));
    })
    .unwrap();
}

/// A burst of mutual-TLS handshakes, all started at once: servers on two shards sharing the
/// port (SO_REUSEPORT), clients on two other shards, each connection a task that waits on
/// glommio's one-shot read readiness between flights. Every handshake completes and carries
/// its reply; a readiness wake-up lost anywhere would leave its handshake waiting until the
/// handshake timeout and fail it with `TlsError::Timeout`.
#[test]
fn a_burst_of_concurrent_handshakes_on_two_shards_all_complete() {
    const CONNECTIONS: usize = 200;
    let pki = pki();
    let server_config = server_config(&pki, true);
    let client_config = client_config(&pki, true);
    // Reserve a port, then let both server shards bind it.
    let addr = std::net::TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap();
    let (bound_tx, bound_rx) = mpsc::channel::<()>();
    let bound_tx = Arc::new(Mutex::new(bound_tx));
    let servers = ShardPool::new(2)
        .pin(false)
        .name("tls-burst-server")
        .start(move |ctx| {
            let server_config = server_config.clone();
            let bound_tx = bound_tx.clone();
            async move {
                let listener = TcpListener::bind(addr).unwrap();
                bound_tx.lock().unwrap().send(()).unwrap();
                while let Some(Ok(tcp)) = listener.accept_until(&ctx.shutdown).await {
                    let server_config = server_config.clone();
                    rt::spawn_detached(async move {
                        let mut tls = tls::accept(tcp, server_config, HANDSHAKE).await.unwrap();
                        let mut request = [0u8; 5];
                        tls.read_exact(&mut request).await.unwrap();
                        tls.write_all(b"hello").await.unwrap();
                        tls.flush().await.unwrap();
                        let mut rest = Vec::new();
                        let _ = tls.read_to_end(&mut rest).await;
                    });
                }
            }
        })
        .unwrap();
    for _ in 0..2 {
        bound_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    let completed = ShardPool::new(2)
        .pin(false)
        .name("tls-burst-client")
        .run(move |ctx| {
            let client_config = client_config.clone();
            async move {
                let tasks: Vec<_> = (ctx.id..CONNECTIONS)
                    .step_by(ctx.count)
                    .map(|_| {
                        let client_config = client_config.clone();
                        rt::spawn_local(async move {
                            let tcp = TcpStream::connect(addr).await.unwrap();
                            let mut tls =
                                tls::connect(tcp, client_config, server_name(), HANDSHAKE)
                                    .await
                                    .unwrap();
                            tls.write_all(b"hello").await.unwrap();
                            tls.flush().await.unwrap();
                            let mut reply = [0u8; 5];
                            tls.read_exact(&mut reply).await.unwrap();
                            assert_eq!(&reply, b"hello");
                            tls
                        })
                    })
                    .collect();
                // Keep every connection open until all are done, so all are in flight at once.
                let mut open = Vec::new();
                for task in tasks {
                    open.push(task.await);
                }
                open.len()
            }
        })
        .unwrap();
    assert_eq!(completed.iter().sum::<usize>(), CONNECTIONS);
    servers.shutdown().trigger();
    servers.join().unwrap();
}
