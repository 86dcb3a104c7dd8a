//! Listeners, streams, vectored sends and handoff between shards, on 127.0.0.1 ephemeral ports.

use std::io::{IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rt::mesh::Mesh;
use rt::net::{Handoff, TcpListener, TcpStream};
use rt::shard::{block_on_shard, ShardPool};

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn two_shards_bind_the_same_port_and_both_accept() {
    const CONNECTIONS: usize = 64;
    let (port_tx, port_rx) = mpsc::channel::<SocketAddr>();
    let port_tx = Arc::new(std::sync::Mutex::new(port_tx));
    let accepted = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let total = Arc::new(AtomicUsize::new(0));
    let mesh: Mesh<SocketAddr> = Mesh::new(2, 4);
    let pool = ShardPool::new(2).pin(true).name("reuseport");
    let running = {
        let accepted = accepted.clone();
        let total = total.clone();
        pool.start(move |ctx| {
            let port_tx = port_tx.clone();
            let accepted = accepted.clone();
            let total = total.clone();
            let mesh = mesh.clone();
            async move {
                let port = ctx.join(&mesh).await.unwrap();
                let listener = if ctx.id == 0 {
                    let listener = TcpListener::bind(localhost()).unwrap();
                    let addr = listener.local_addr().unwrap();
                    port.send_to(1, addr).await.unwrap();
                    listener
                } else {
                    let (from, addr) = port.recv().await.unwrap();
                    assert_eq!(from, 0);
                    let listener = TcpListener::bind(addr).unwrap();
                    assert_eq!(listener.local_addr().unwrap(), addr);
                    port_tx.lock().unwrap().send(addr).unwrap();
                    listener
                };
                while let Some(conn) = listener.accept_until(&ctx.shutdown).await {
                    let mut conn = conn.unwrap();
                    let mut byte = [0u8; 1];
                    conn.read_exact(&mut byte).await.unwrap();
                    conn.write_all(&[ctx.id as u8]).await.unwrap();
                    accepted[ctx.id].fetch_add(1, Ordering::SeqCst);
                    if total.fetch_add(1, Ordering::SeqCst) + 1 == CONNECTIONS {
                        ctx.shutdown.trigger();
                    }
                }
            }
        })
        .unwrap()
    };
    let addr = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut served_by = [0usize; 2];
    for _ in 0..CONNECTIONS {
        let mut conn = StdTcpStream::connect(addr).unwrap();
        conn.write_all(b"x").unwrap();
        let mut shard = [0u8; 1];
        conn.read_exact(&mut shard).unwrap();
        served_by[shard[0] as usize] += 1;
    }
    running.join().unwrap();
    let counts = [
        accepted[0].load(Ordering::SeqCst),
        accepted[1].load(Ordering::SeqCst),
    ];
    assert_eq!(counts, served_by);
    assert_eq!(counts[0] + counts[1], CONNECTIONS);
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "one shard got nothing: {counts:?}"
    );
}

#[test]
fn accepted_connection_moves_to_another_shard_with_read_ahead() {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let addr_tx = Arc::new(std::sync::Mutex::new(addr_tx));
    let mesh: Mesh<Handoff> = Mesh::new(2, 8);
    let running = ShardPool::new(2)
        .name("handoff")
        .start(move |ctx| {
            let mesh = mesh.clone();
            let addr_tx = addr_tx.clone();
            async move {
                let port = ctx.join(&mesh).await.unwrap();
                if ctx.id == 0 {
                    let listener = TcpListener::bind(localhost()).unwrap();
                    addr_tx
                        .lock()
                        .unwrap()
                        .send(listener.local_addr().unwrap())
                        .unwrap();
                    let conn = listener.accept().await.unwrap();
                    // Peek first: the request names its owner without being consumed...
                    let mut head = [0u8; 6];
                    let n = conn.peek(&mut head).await.unwrap();
                    assert!(n > 0);
                    // ...then read a little more than the header, as a real parser would.
                    let mut buf = [0u8; 12];
                    let mut got = 0;
                    while got < buf.len() {
                        got += (&conn).read(&mut buf[got..]).await.unwrap();
                    }
                    assert_eq!(&buf[..6], b"OWNER1");
                    let owner = (buf[5] - b'0') as usize;
                    let handoff = conn.into_handoff(buf[6..].to_vec()).unwrap();
                    assert_eq!(handoff.read_ahead, b" hello");
                    port.send_to(owner, handoff).await.unwrap();
                } else {
                    let (from, handoff) = port.recv().await.unwrap();
                    assert_eq!(from, 0);
                    let peer = handoff.peer;
                    let mut conn = handoff.into_tcp().unwrap();
                    assert_eq!(conn.peer_addr().unwrap(), peer);
                    let mut rest = [0u8; 6 + 7];
                    conn.read_exact(&mut rest).await.unwrap();
                    assert_eq!(&rest, b" hello world!");
                    conn.write_all(format!("served by {}", ctx.id).as_bytes())
                        .await
                        .unwrap();
                    conn.close().await.unwrap();
                }
            }
        })
        .unwrap();
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut client = StdTcpStream::connect(addr).unwrap();
    client.write_all(b"OWNER1 hello").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    client.write_all(b" world!").unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "served by 1");
    running.join().unwrap();
}

/// A viewer that stops reading: the server's send buffer fills, `sendmsg` returns EAGAIN and
/// `send_all_vectored` must park on write readiness, then resume when the viewer reads again.
#[test]
fn send_all_vectored_survives_a_full_socket_buffer() {
    const CHUNKS: usize = 2048;
    const CHUNK: usize = 4000;
    let header = |i: usize| (i as u32).to_be_bytes();
    let payload: Arc<Vec<u8>> = Arc::new((0..CHUNK).map(|i| (i % 251) as u8).collect());
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let server_payload = payload.clone();
    let server = std::thread::spawn(move || {
        block_on_shard(move || async move {
            let listener = TcpListener::bind(localhost()).unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let conn = listener.accept().await.unwrap();
            conn.set_send_buffer_size(16 * 1024).unwrap();
            let headers: Vec<[u8; 4]> = (0..CHUNKS).map(header).collect();
            // Several packets per call: header + shared payload, 64 packets per batch.
            let started = Instant::now();
            for batch in headers.chunks(64) {
                let mut slices: Vec<IoSlice<'_>> = batch
                    .iter()
                    .flat_map(|h| [IoSlice::new(h), IoSlice::new(&server_payload)])
                    .collect();
                conn.send_all_vectored(&mut slices).await.unwrap();
            }
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            started.elapsed()
        })
        .unwrap()
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut client = StdTcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut first = vec![0u8; 10_000];
    client.read_exact(&mut first).unwrap();
    // Stop reading long enough for the server's buffers to fill up.
    std::thread::sleep(Duration::from_millis(300));
    let mut all = first;
    client.read_to_end(&mut all).unwrap();
    let send_time = server.join().unwrap();
    assert!(
        send_time >= Duration::from_millis(250),
        "sender never blocked: {send_time:?}"
    );
    assert_eq!(all.len(), CHUNKS * (4 + CHUNK));
    for (i, packet) in all.chunks(4 + CHUNK).enumerate() {
        assert_eq!(packet[..4], header(i), "packet {i} out of order");
        assert_eq!(&packet[4..], &payload[..], "packet {i} payload corrupted");
    }
}

#[test]
fn send_vectored_is_one_syscall_for_many_slices() {
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let server = std::thread::spawn(move || {
        block_on_shard(move || async move {
            let listener = TcpListener::bind(localhost()).unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let conn = listener.accept().await.unwrap();
            let parts: [&[u8]; 5] = [b"a", b"", b"bc", b"def", b"ghij"];
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            conn.send_vectored(&slices).unwrap()
        })
        .unwrap()
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut client = StdTcpStream::connect(addr).unwrap();
    let sent = server.join().unwrap();
    assert_eq!(sent, 10);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abcdefghij");
}

#[test]
fn connect_from_a_chosen_source_address() {
    let (peer, local) = block_on_shard(|| async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let source: SocketAddr = "127.0.0.2:0".parse().unwrap();
        let (client, server) =
            futures_lite::future::zip(TcpStream::connect_from(source, addr), listener.accept())
                .await;
        let mut client = client.unwrap();
        let mut server = server.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        (server.peer_addr().unwrap(), client.local_addr().unwrap())
    })
    .unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.2");
    assert_eq!(peer, local);
}

#[test]
fn connect_errors_are_reported() {
    block_on_shard(|| async {
        // Bind then drop a listener to get a port nobody listens on.
        let closed = {
            let l = TcpListener::bind(localhost()).unwrap();
            l.local_addr().unwrap()
        };
        let source: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let err = TcpStream::connect_from(source, closed).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = TcpStream::connect(closed).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    })
    .unwrap();
}

#[test]
fn peek_does_not_consume_and_unread_replays() {
    block_on_shard(|| async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            futures_lite::future::zip(TcpStream::connect(addr), listener.accept()).await;
        let mut client = client.unwrap();
        let mut server = server.unwrap();
        server.set_nodelay(true).unwrap();
        assert!(server.nodelay().unwrap());
        let mut buf = [0u8; 8];
        assert_eq!(
            server.try_peek(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        client.write_all(b"RTSP/1.0").await.unwrap();
        let n = server.peek(&mut buf).await.unwrap();
        assert!(n > 0 && b"RTSP/1.0".starts_with(&buf[..n]));
        let mut all = [0u8; 8];
        server.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"RTSP/1.0");
        server.unread(b"again").unwrap();
        let mut again = [0u8; 5];
        assert_eq!(server.peek(&mut again).await.unwrap(), 5);
        server.read_exact(&mut again).await.unwrap();
        assert_eq!(&again, b"again");
        drop(client);
        assert_eq!(server.read(&mut all).await.unwrap(), 0);
    })
    .unwrap();
}

#[test]
fn fd_survives_a_round_trip_through_owned_fd() {
    block_on_shard(|| async {
        let listener = TcpListener::bind(localhost()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            futures_lite::future::zip(TcpStream::connect(addr), listener.accept()).await;
        let mut client = client.unwrap();
        let fd = server.unwrap().into_owned_fd().unwrap();
        let mut server = TcpStream::from_owned_fd(fd).unwrap();
        client.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    })
    .unwrap();
}

#[test]
fn shards_know_their_ids() {
    let ids = ShardPool::new(3)
        .pin(false)
        .run(|ctx| async move { (ctx.id, rt::shard_id(), rt::shard_count()) })
        .unwrap();
    assert_eq!(ids, vec![(0, 0, 3), (1, 1, 3), (2, 2, 3)]);
    assert_eq!(
        block_on_shard(|| async { (rt::shard_id(), rt::shard_count()) }).unwrap(),
        (0, 1)
    );
}

/// Throughput of `send_all_vectored` against a reader that keeps up, and how often it parks on
/// write readiness. Run with `cargo test -p rt --test net -- --ignored --nocapture measure`.
#[test]
#[ignore = "measurement, prints numbers"]
fn measure_send_all_vectored_throughput() {
    const BATCHES: usize = 4096;
    const PACKETS: usize = 64;
    const PAYLOAD: usize = 1400;
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let server = std::thread::spawn(move || {
        block_on_shard(move || async move {
            let listener = TcpListener::bind(localhost()).unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let conn = listener.accept().await.unwrap();
            let payload = vec![7u8; PAYLOAD];
            let headers: Vec<[u8; 4]> = (0..PACKETS as u32).map(u32::to_be_bytes).collect();
            let before = rt::net::send_stats();
            let started = Instant::now();
            for _ in 0..BATCHES {
                let mut slices: Vec<IoSlice<'_>> = headers
                    .iter()
                    .flat_map(|h| [IoSlice::new(h), IoSlice::new(&payload)])
                    .collect();
                conn.send_all_vectored(&mut slices).await.unwrap();
            }
            let elapsed = started.elapsed();
            let after = rt::net::send_stats();
            (elapsed, before, after)
        })
        .unwrap()
    });
    let addr = addr_rx.recv().unwrap();
    let mut client = StdTcpStream::connect(addr).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = client.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    let (elapsed, before, after) = server.join().unwrap();
    assert_eq!(total, BATCHES * PACKETS * (4 + PAYLOAD));
    let mib = total as f64 / (1024.0 * 1024.0);
    println!(
        "send_all_vectored: {mib:.0} MiB in {elapsed:?} = {:.0} MiB/s; sendmsg calls {}, EAGAIN {}, readiness waits {}",
        mib / elapsed.as_secs_f64(),
        after.sendmsg_calls - before.sendmsg_calls,
        after.would_block - before.would_block,
        after.readiness_waits - before.readiness_waits,
    );
}
