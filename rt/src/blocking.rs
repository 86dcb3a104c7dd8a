//! Work that blocks a thread (an fsync of the embedded store) run off the shard, so that a
//! shard's other connections keep being served meanwhile. glommio gives each executor a
//! blocking thread pool placed like the executor (on a pinned shard: the same core, which is
//! idle while the thread waits for the disk).

use std::future::Future;

/// Runs `work` on the current executor's blocking thread pool and completes with its result.
/// Must be called on a shard (or a `block_on_shard` executor).
pub fn unblock<F, R>(work: F) -> impl Future<Output = R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(work)
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_off_the_executor_thread() {
        let (executor_thread, worker_thread) = crate::block_on_shard(|| async {
            let here = std::thread::current().id();
            let there = super::unblock(|| std::thread::current().id()).await;
            (here, there)
        })
        .unwrap();
        assert_ne!(executor_thread, worker_thread);
    }
}
