//! Sleeping and deadlines on the current shard.

use std::future::Future;
use std::time::Duration;

/// A deadline passed before the awaited operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// Sleeps on the current shard's timer wheel.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `fut` for at most `duration`.
pub async fn timeout<T>(duration: Duration, fut: impl Future<Output = T>) -> Result<T, Elapsed> {
    futures_lite::future::or(async { Ok(fut.await) }, async {
        sleep(duration).await;
        Err(Elapsed(duration))
    })
    .await
}
