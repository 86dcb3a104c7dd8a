//! Shards, the cross-shard mesh, shutdown, and timers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rt::mesh::{Mesh, SendError};
use rt::shard::{block_on_shard, ShardPool, Shutdown};
use rt::timer::{sleep, timeout, Elapsed};

#[test]
fn mesh_delivers_every_message_in_order_per_sender() {
    const SHARDS: usize = 3;
    const PER_PEER: u32 = 2000;
    let mesh: Mesh<(usize, u32)> = Mesh::new(SHARDS, 64);
    let received = ShardPool::new(SHARDS)
        .pin(false)
        .name("mesh")
        .run(move |ctx| {
            let mesh = mesh.clone();
            async move {
                let port = std::rc::Rc::new(ctx.join(&mesh).await.unwrap());
                assert_eq!(port.id(), ctx.id);
                assert_eq!(port.shards(), SHARDS);
                let sender = {
                    let port = port.clone();
                    rt::spawn_local(async move {
                        for seq in 0..PER_PEER {
                            for to in 0..SHARDS {
                                // Includes sending to ourselves through the local queue.
                                port.send_to(to, (ctx.id, seq)).await.unwrap();
                            }
                        }
                    })
                };
                let mut next = [0u32; SHARDS];
                let mut total = 0;
                while total < PER_PEER as usize * SHARDS {
                    let (from, (origin, seq)) = port.recv().await.unwrap();
                    assert_eq!(from, origin);
                    assert_eq!(seq, next[from], "out of order from shard {from}");
                    next[from] += 1;
                    total += 1;
                }
                sender.await;
                total
            }
        })
        .unwrap();
    assert_eq!(received, vec![PER_PEER as usize * SHARDS; SHARDS]);
}

#[test]
fn mesh_send_errors_return_the_message() {
    let mesh: Mesh<String> = Mesh::new(2, 1);
    // Shard 1 stays away from its inbox until shard 0 has filled it.
    let filled = Arc::new(std::sync::Barrier::new(2));
    ShardPool::new(2)
        .pin(false)
        .run(move |ctx| {
            let mesh = mesh.clone();
            let filled = filled.clone();
            async move {
                assert!(matches!(
                    mesh.join(ctx.id + 10).await,
                    Err(rt::mesh::JoinError::NoSuchShard { .. })
                ));
                let port = ctx.join(&mesh).await.unwrap();
                assert!(matches!(
                    mesh.join(ctx.id).await,
                    Err(rt::mesh::JoinError::AlreadyJoined { .. })
                ));
                if ctx.id == 0 {
                    match port.try_send_to(7, "lost".to_owned()) {
                        Err(SendError::NoSuchShard { msg, .. }) => assert_eq!(msg, "lost"),
                        other => panic!("{other:?}"),
                    }
                    port.try_send_to(1, "one".to_owned()).unwrap();
                    // Capacity 1: the second try fails with the message handed back.
                    let err = port.try_send_to(1, "two".to_owned()).unwrap_err();
                    assert!(matches!(err, SendError::Full { to: 1, .. }));
                    assert_eq!(err.into_inner(), "two");
                    filled.wait();
                    // Self-sends are bounded the same way.
                    port.try_send_to(0, "me".to_owned()).unwrap();
                    assert!(matches!(
                        port.try_send_to(0, "me too".to_owned()),
                        Err(SendError::Full { to: 0, .. })
                    ));
                    assert_eq!(port.recv().await.unwrap(), (0, "me".to_owned()));
                    // Wait for shard 1 to leave, then sends fail as Closed.
                    let (from, msg) = port.recv().await.unwrap();
                    assert_eq!((from, msg.as_str()), (1, "bye"));
                    loop {
                        match port.send_to(1, "late".to_owned()).await {
                            Err(SendError::Closed { to: 1, .. }) => break,
                            Ok(()) => rt::timer::sleep(Duration::from_millis(5)).await,
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                    port.close();
                    assert!(port.recv().await.is_none());
                } else {
                    filled.wait();
                    assert_eq!(port.recv().await.unwrap(), (0, "one".to_owned()));
                    port.send_to(0, "bye".to_owned()).await.unwrap();
                    drop(port);
                }
            }
        })
        .unwrap();
}

#[test]
fn shutdown_stops_every_shard() {
    let pool = ShardPool::new(2).pin(false).name("shutdown");
    let shutdown = pool.shutdown();
    let woke = Arc::new(AtomicUsize::new(0));
    let running = {
        let woke = woke.clone();
        pool.start(move |ctx| {
            let woke = woke.clone();
            async move {
                // A "connection task" that notices shutdown through until().
                let idle = ctx.shutdown.until(sleep(Duration::from_secs(600))).await;
                assert!(idle.is_none());
                ctx.shutdown.wait().await;
                woke.fetch_add(1, Ordering::SeqCst);
                ctx.id
            }
        })
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(woke.load(Ordering::SeqCst), 0);
    let started = Instant::now();
    shutdown.trigger();
    assert_eq!(running.join().unwrap(), vec![0, 1]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(woke.load(Ordering::SeqCst), 2);
    assert!(shutdown.is_triggered());
}

#[test]
fn shutdown_after_trigger_resolves_immediately() {
    let shutdown = Shutdown::new();
    shutdown.trigger();
    shutdown.trigger();
    let ran = block_on_shard(move || async move {
        shutdown.wait().await;
        shutdown.until(async { 1 }).await
    })
    .unwrap();
    // `until` may pick either branch when both are ready; it must not hang.
    assert!(ran.is_none() || ran == Some(1));
}

#[test]
fn panicking_shard_is_reported() {
    let result = ShardPool::new(2)
        .pin(false)
        .name("panic")
        .run(|ctx| async move {
            if ctx.id == 1 {
                panic!("shard 1 fails on purpose");
            }
            ctx.id
        });
    assert!(matches!(result, Err(rt::ShardError::Panicked { shard: 1 })));
}

#[test]
fn timeout_fires_and_passes() {
    block_on_shard(|| async {
        let started = Instant::now();
        let err = timeout(Duration::from_millis(20), sleep(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert_eq!(err, Elapsed(Duration::from_millis(20)));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(20) && waited < Duration::from_secs(2));
        assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
    })
    .unwrap();
}

#[test]
fn detached_tasks_keep_running() {
    let count = block_on_shard(|| async {
        let counter = std::rc::Rc::new(std::cell::Cell::new(0));
        for _ in 0..10 {
            let counter = counter.clone();
            rt::spawn_detached(async move {
                rt::yield_if_needed().await;
                counter.set(counter.get() + 1);
            });
        }
        let cancelled = {
            let counter = counter.clone();
            rt::spawn_local(async move {
                sleep(Duration::from_secs(60)).await;
                counter.set(counter.get() + 100);
            })
        };
        drop(cancelled);
        sleep(Duration::from_millis(20)).await;
        counter.get()
    })
    .unwrap();
    assert_eq!(count, 10);
}

#[test]
fn fd_limit_can_be_raised() {
    let (soft, hard) = rt::raise_fd_limit().unwrap();
    assert!(soft > 0 && soft <= hard);
}

#[test]
fn sweeper_ticks_until_dropped() {
    use rt::sweeper::{IdleTable, Sweeper};
    use std::cell::RefCell;
    use std::rc::Rc;
    let (ticks, expired) = block_on_shard(|| async {
        let ticks = Rc::new(std::cell::Cell::new(0u32));
        let table = Rc::new(RefCell::new(IdleTable::new()));
        let expired = Rc::new(RefCell::new(Vec::new()));
        let now = Instant::now();
        table.borrow_mut().touch("quiet", now);
        table.borrow_mut().touch("chatty", now);
        let sweeper = {
            let (ticks, table, expired) = (ticks.clone(), table.clone(), expired.clone());
            Sweeper::every(Duration::from_millis(10), move |now| {
                ticks.set(ticks.get() + 1);
                let idle = table
                    .borrow_mut()
                    .take_idle(now, Duration::from_millis(150));
                expired.borrow_mut().extend(idle);
            })
        };
        for _ in 0..30 {
            sleep(Duration::from_millis(10)).await;
            table.borrow_mut().touch_existing("chatty", Instant::now());
        }
        drop(sweeper);
        let at_drop = ticks.get();
        sleep(Duration::from_millis(40)).await;
        assert_eq!(ticks.get(), at_drop, "sweeper kept running after drop");
        let expired = expired.borrow().clone();
        (at_drop, expired)
    })
    .unwrap();
    assert!((5..=40).contains(&ticks), "ticks: {ticks}");
    assert_eq!(expired, vec!["quiet"]);
}

#[test]
fn tasks_run_in_their_own_queue() {
    let out = block_on_shard(|| async {
        let fanout = rt::shard::TaskQueue::new("fanout", 1000, Some(Duration::from_millis(1)));
        let bulk = rt::shard::TaskQueue::new("bulk", 100, None);
        let a = fanout.spawn(async { 1 }).unwrap();
        let b = bulk.spawn(async { 2 }).unwrap();
        a.await + b.await
    })
    .unwrap();
    assert_eq!(out, 3);
}
