//! Shards: one pinned glommio executor per core, each running the same async entry point.
//!
//! A shard owns its state in `Rc`/`RefCell` and talks to other shards only through a
//! [`crate::mesh::Mesh`]. [`run_shards`] (or a [`ShardPool`] for more knobs) starts the shards
//! and blocks until all of them return; [`Shutdown`] is the cross-shard signal that ends them
//! gracefully (listeners stop accepting, connection tasks notice and finish).

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// io_uring submission queue depth of a shard. The kernel sizes a ring's cancellation hash by
/// its completion queue (2 x this), 8 buckets at glommio's default of 128 and at most 256 from
/// 4096 on, and every cancel (a read future dropped, glommio re-arming its timer) walks one
/// bucket of every poll in flight: with 9,900 idle cameras (a poll per link) half of the relay's
/// CPU went to `io_poll_find` under `io_async_cancel` (perf). The rings cost about 1 MiB per
/// shard at this depth.
pub const DEFAULT_RING_DEPTH: usize = 4096;

/// Starting or running the shards failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// A shard count of zero was asked for.
    #[error("a shard pool needs at least one shard")]
    NoShards,
    /// The executor thread for a shard could not be created (internal: thread limits, io_uring
    /// setup refused by the kernel, CPU missing).
    #[error("could not start shard {shard}: {source}")]
    Spawn {
        /// The shard that failed to start.
        shard: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A shard's entry point panicked (internal bug); the other shards were still joined.
    #[error("shard {shard} panicked")]
    Panicked {
        /// The shard that panicked.
        shard: usize,
    },
    /// The CPU affinity of the process could not be read for pinning.
    #[error("could not read the process CPU affinity: {0}")]
    Affinity(#[source] std::io::Error),
}

/// What a shard's entry point knows about itself.
#[derive(Debug, Clone)]
pub struct ShardContext {
    /// This shard's index, `0..count`.
    pub id: usize,
    /// Number of shards in the pool.
    pub count: usize,
    /// The pool's shutdown signal (also reachable through [`ShardPool::shutdown`]).
    pub shutdown: Shutdown,
    /// The CPU this shard is pinned to, if pinned.
    pub cpu: Option<usize>,
}

impl ShardContext {
    /// Joins a mesh as this shard (see [`crate::mesh::Mesh::join`]).
    pub async fn join<T: Send + 'static>(
        &self,
        mesh: &crate::mesh::Mesh<T>,
    ) -> Result<crate::mesh::MeshPort<T>, crate::mesh::JoinError> {
        mesh.join(self.id).await
    }
}

thread_local! {
    static CURRENT: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// This thread's shard index, or 0 outside a shard (e.g. a test executor).
pub fn shard_id() -> usize {
    CURRENT.with(|c| c.get().map(|(id, _)| id).unwrap_or(0))
}

/// Number of shards in this thread's pool, or 1 outside a shard pool.
pub fn shard_count() -> usize {
    CURRENT.with(|c| c.get().map(|(_, count)| count).unwrap_or(1))
}

/// A configurable pool of shards. [`run_shards`] is the short form.
#[derive(Debug, Clone)]
pub struct ShardPool {
    count: usize,
    pin: bool,
    name: String,
    spin_before_park: Option<Duration>,
    ring_depth: Option<usize>,
    io_memory: Option<usize>,
    shutdown: Shutdown,
}

impl ShardPool {
    /// A pool of `count` shards, pinned, named "shard".
    pub fn new(count: usize) -> ShardPool {
        ShardPool {
            count,
            pin: true,
            name: "shard".to_owned(),
            spin_before_park: None,
            ring_depth: None,
            io_memory: None,
            shutdown: Shutdown::new(),
        }
    }

    /// Pin each shard to one CPU of the process's affinity mask (shard `i` to the `i`-th allowed
    /// CPU, wrapping around when there are more shards than CPUs). Default: true.
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Thread name prefix; threads are named `{name}-{shard}`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Busy-poll this long before parking an idle shard (lower wake-up latency, more CPU).
    pub fn spin_before_park(mut self, spin: Duration) -> Self {
        self.spin_before_park = Some(spin);
        self
    }

    /// io_uring submission queue depth per shard ([`DEFAULT_RING_DEPTH`] unless set).
    pub fn ring_depth(mut self, depth: usize) -> Self {
        self.ring_depth = Some(depth);
        self
    }

    /// Memory registered with io_uring for storage I/O per shard (glommio's default is 10 MiB;
    /// this workspace does no file I/O through glommio, so a small value is fine).
    pub fn io_memory(mut self, bytes: usize) -> Self {
        self.io_memory = Some(bytes);
        self
    }

    /// Uses `shutdown` as the pool's signal instead of a fresh one.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The pool's shutdown signal; trigger it from anywhere (e.g. a signal handler thread).
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Starts the shards and returns at once; [`RunningShards::join`] waits for them.
    pub fn start<F, Fut, T>(self, entry: F) -> Result<RunningShards<T>, ShardError>
    where
        F: Fn(ShardContext) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if self.count == 0 {
            return Err(ShardError::NoShards);
        }
        let cpus = if self.pin {
            Some(allowed_cpus().map_err(ShardError::Affinity)?)
        } else {
            None
        };
        let mut handles = Vec::with_capacity(self.count);
        for id in 0..self.count {
            let cpu = cpus
                .as_ref()
                .and_then(|cpus| cpus.get(id % cpus.len()).copied());
            let placement = match cpu {
                Some(cpu) => Placement::Fixed(cpu),
                None => Placement::Unbound,
            };
            let mut builder =
                LocalExecutorBuilder::new(placement).name(&format!("{}-{id}", self.name));
            if let Some(spin) = self.spin_before_park {
                builder = builder.spin_before_park(spin);
            }
            builder = builder.ring_depth(self.ring_depth.unwrap_or(DEFAULT_RING_DEPTH));
            if let Some(bytes) = self.io_memory {
                builder = builder.io_memory(bytes);
            }
            let ctx = ShardContext {
                id,
                count: self.count,
                shutdown: self.shutdown.clone(),
                cpu,
            };
            let entry = entry.clone();
            let spawned = builder.spawn(move || {
                CURRENT.with(|c| c.set(Some((ctx.id, ctx.count))));
                entry(ctx)
            });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    // Shards already running may wait for this one (mesh joins): tell them to
                    // stop and leave their threads detached rather than block here forever.
                    self.shutdown.trigger();
                    return Err(ShardError::Spawn {
                        shard: id,
                        source: err.into(),
                    });
                }
            }
        }
        Ok(RunningShards {
            handles,
            shutdown: self.shutdown,
        })
    }

    /// Starts the shards and blocks until every one has returned; results are in shard order.
    pub fn run<F, Fut, T>(self, entry: F) -> Result<Vec<T>, ShardError>
    where
        F: Fn(ShardContext) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.start(entry)?.join()
    }
}

/// Shards started by [`ShardPool::start`].
pub struct RunningShards<T: Send + 'static> {
    handles: Vec<glommio::ExecutorJoinHandle<T>>,
    shutdown: Shutdown,
}

impl<T: Send + 'static> RunningShards<T> {
    /// The pool's shutdown signal.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Waits for every shard; results in shard order. If a shard panicked, the pool's shutdown is
    /// triggered so the others end too, and the first panicking shard is reported.
    pub fn join(self) -> Result<Vec<T>, ShardError> {
        let mut results = Vec::with_capacity(self.handles.len());
        let mut first_error = None;
        for (shard, handle) in self.handles.into_iter().enumerate() {
            match handle.join() {
                Ok(value) => results.push(value),
                Err(err) => {
                    self.shutdown.trigger();
                    let err = match err {
                        glommio::GlommioError::BuilderError(
                            glommio::BuilderErrorKind::ThreadPanic(_),
                        ) => ShardError::Panicked { shard },
                        other => ShardError::Spawn {
                            shard,
                            source: other.into(),
                        },
                    };
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(results),
        }
    }
}

/// Runs `count` shards (pinned to CPUs when `pin`), each executing `f(ctx)`, and blocks until
/// all return. Results are in shard order.
pub fn run_shards<F, Fut, T>(
    count: usize,
    pin: bool,
    name: &str,
    f: F,
) -> Result<Vec<T>, ShardError>
where
    F: Fn(ShardContext) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    ShardPool::new(count).pin(pin).name(name).run(f)
}

/// Runs `fut` on a fresh single, unpinned executor thread and returns its output: for tests and
/// small tools. Inside, [`shard_id`] is 0 and [`shard_count`] is 1.
pub fn block_on_shard<G, Fut, T>(make_future: G) -> Result<T, ShardError>
where
    G: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("block-on-shard")
        .spawn(move || {
            CURRENT.with(|c| c.set(Some((0, 1))));
            make_future()
        })
        .map_err(|err| ShardError::Spawn {
            shard: 0,
            source: err.into(),
        })?;
    RunningShards {
        handles: vec![handle],
        shutdown: Shutdown::new(),
    }
    .join()
    .map(|mut results| results.remove(0))
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain old data for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`, which lives across the call; pid 0 is the
    // calling thread.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET only reads `set`, and every index is below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(std::io::Error::other("empty CPU affinity mask"));
    }
    Ok(cpus)
}

/// A task running on the current shard. Dropping it cancels the task; [`Task::detach`] lets it
/// run on its own.
#[must_use = "dropping a Task cancels it; call .detach() to let it run"]
#[derive(Debug)]
pub struct Task<T>(glommio::Task<T>);

impl<T> Task<T> {
    /// Lets the task run to completion on its own.
    pub fn detach(self) {
        drop(self.0.detach());
    }

    /// Cancels the task and waits until it is dropped; returns its output if it had finished.
    pub async fn cancel(self) -> Option<T> {
        self.0.cancel().await
    }
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Spawns `fut` on the current shard.
pub fn spawn_local<T: 'static>(fut: impl Future<Output = T> + 'static) -> Task<T> {
    Task(glommio::spawn_local(fut))
}

/// Spawns `fut` on the current shard and lets it run on its own.
pub fn spawn_detached<T: 'static>(fut: impl Future<Output = T> + 'static) {
    drop(glommio::spawn_local(fut).detach());
}

/// A task queue on the current shard: tasks spawned into it share the CPU with other queues in
/// proportion to `shares`, so latency-critical work (media fan-out) is not starved by bulk work
/// (provisioning, webhooks) on the same shard.
#[derive(Debug, Clone, Copy)]
pub struct TaskQueue(glommio::TaskQueueHandle);

impl TaskQueue {
    /// Creates a queue with a static CPU share (relative weight, e.g. 1000 vs 100). With
    /// `latency` set, the scheduler preempts other queues at least that often while this one has
    /// work.
    pub fn new(name: &str, shares: usize, latency: Option<Duration>) -> TaskQueue {
        let latency = match latency {
            Some(every) => glommio::Latency::Matters(every),
            None => glommio::Latency::NotImportant,
        };
        TaskQueue(glommio::executor().create_task_queue(
            glommio::Shares::Static(shares.max(1)),
            latency,
            name,
        ))
    }

    /// Spawns `fut` into this queue on the current shard. Fails only if the queue belongs to
    /// another shard (caller bug).
    pub fn spawn<T: 'static>(
        &self,
        fut: impl Future<Output = T> + 'static,
    ) -> std::io::Result<Task<T>> {
        glommio::spawn_local_into(fut, self.0)
            .map(Task)
            .map_err(std::io::Error::from)
    }
}

/// Yields to other tasks if this one has run for longer than the shard's preemption slice; call
/// it inside long loops (fan-out to many viewers, sweeps over many sessions).
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await
}

/// Yields to other tasks unconditionally.
pub async fn yield_now() {
    glommio::executor().yield_task_queue_now().await
}

/// A cross-shard shutdown signal. Clone it freely (it is `Send + Sync`); [`trigger`] wakes every
/// waiter on every shard.
///
/// [`trigger`]: Shutdown::trigger
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    triggered: AtomicBool,
    next_key: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    /// A fresh, untriggered signal.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Triggers the signal (idempotent) and wakes every waiter.
    pub fn trigger(&self) {
        if self.inner.triggered.swap(true, Ordering::SeqCst) {
            return;
        }
        let wakers: Vec<Waker> = self.waiters().drain().map(|(_, w)| w).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether [`trigger`](Self::trigger) has been called.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Resolves once the signal is triggered.
    pub fn wait(&self) -> ShutdownWait {
        ShutdownWait {
            shutdown: self.clone(),
            key: None,
        }
    }

    /// Runs `fut` until it finishes (`Some`) or the signal is triggered (`None`, `fut` dropped).
    pub async fn until<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        futures_lite::future::or(async { Some(fut.await) }, async {
            self.wait().await;
            None
        })
        .await
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Future returned by [`Shutdown::wait`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct ShutdownWait {
    shutdown: Shutdown,
    key: Option<u64>,
}

impl Future for ShutdownWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = self.shutdown.inner.next_key.fetch_add(1, Ordering::Relaxed);
                self.key = Some(key);
                key
            }
        };
        let mut waiters = self.shutdown.waiters();
        // Re-check under the lock: trigger() sets the flag before draining the map.
        if self.shutdown.is_triggered() {
            return Poll::Ready(());
        }
        match waiters.get_mut(&key) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                waiters.insert(key, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownWait {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.shutdown.waiters().remove(&key);
        }
    }
}
