//! Channels between threads that are not members of one [`crate::Mesh`]: the control plane's
//! executor asking a shard something and awaiting the answer.
//!
//! A mesh needs every member to join at start-up and is shard-to-shard only; the control plane
//! runs on its own executor beside the shards and talks to them rarely (a client API request,
//! a revocation). These channels are deliberately simple: a `std::sync::Mutex` around a queue
//! and the receiver's `Waker`. glommio wakers may be woken from a foreign thread (the waker is
//! queued on the owning executor's notifier, which leaves its sleep), so a sender on any thread,
//! inside or outside an executor, wakes a task waiting on any executor. The lock is held only
//! to push or pop one item, never across an await.
//!
//! - [`channel`]: bounded multi-producer single-consumer queue; [`Sender::try_send`] never
//!   waits (a full queue is an error the caller reports, e.g. as "server busy").
//! - [`oneshot`]: one reply; dropping the sender unanswered completes the receiver with
//!   [`Canceled`], so a request lost in a shard that stopped never hangs its asker.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Why [`Sender::try_send`] did not queue a message; the message comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The queue holds `capacity` messages already (the receiver is behind).
    #[error("channel full")]
    Full(T),
    /// The receiver is gone.
    #[error("channel closed")]
    Closed(T),
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(msg) | TrySendError::Closed(msg) => msg,
        }
    }
}

struct Queue<T> {
    items: VecDeque<T>,
    capacity: usize,
    receiver_alive: bool,
    senders: usize,
    waker: Option<Waker>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a queue that is still consistent (push/pop only).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sending end of a [`channel`]; `Send + Sync + Clone`.
pub struct Sender<T> {
    queue: Arc<Mutex<Queue<T>>>,
}

/// The receiving end of a [`channel`]; awaited on one executor.
pub struct Receiver<T> {
    queue: Arc<Mutex<Queue<T>>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("xchan::Sender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("xchan::Receiver").finish_non_exhaustive()
    }
}

/// A bounded channel holding up to `capacity` messages (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let queue = Arc::new(Mutex::new(Queue {
        items: VecDeque::new(),
        capacity: capacity.max(1),
        receiver_alive: true,
        senders: 1,
        waker: None,
    }));
    (
        Sender {
            queue: queue.clone(),
        },
        Receiver { queue },
    )
}

impl<T> Sender<T> {
    /// Queues `msg` and wakes the receiver, without waiting.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut queue = lock(&self.queue);
            if !queue.receiver_alive {
                return Err(TrySendError::Closed(msg));
            }
            if queue.items.len() >= queue.capacity {
                return Err(TrySendError::Full(msg));
            }
            queue.items.push_back(msg);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// True once the receiver was dropped.
    pub fn is_closed(&self) -> bool {
        !lock(&self.queue).receiver_alive
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.queue).senders += 1;
        Sender {
            queue: self.queue.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut queue = lock(&self.queue);
            queue.senders -= 1;
            if queue.senders == 0 {
                queue.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Poll form of [`recv`](Self::recv).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut queue = lock(&self.queue);
        if let Some(msg) = queue.items.pop_front() {
            return Poll::Ready(Some(msg));
        }
        if queue.senders == 0 {
            return Poll::Ready(None);
        }
        match &queue.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => queue.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes every queued message now, without waiting (a batch per wake-up).
    pub fn drain(&self) -> Vec<T> {
        lock(&self.queue).items.drain(..).collect()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut queue = lock(&self.queue);
        queue.receiver_alive = false;
        queue.waker = None;
        // Dropping the messages drops any oneshot senders inside, which cancels their askers.
        let items = std::mem::take(&mut queue.items);
        drop(queue);
        drop(items);
    }
}

/// The receiver of a [`oneshot`] completes with this when the sender was dropped unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request was dropped without an answer")]
pub struct Canceled;

struct Slot<T> {
    value: Option<T>,
    sender_alive: bool,
    waker: Option<Waker>,
}

/// Sends the one reply of a [`oneshot`]; `Send`.
pub struct OneshotSender<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

/// Awaits the one reply of a [`oneshot`].
pub struct OneshotReceiver<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> std::fmt::Debug for OneshotSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneshotSender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for OneshotReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneshotReceiver").finish_non_exhaustive()
    }
}

/// A channel for exactly one value (a reply).
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        sender_alive: true,
        waker: None,
    }));
    (
        OneshotSender { slot: slot.clone() },
        OneshotReceiver { slot },
    )
}

impl<T> OneshotSender<T> {
    /// Delivers the reply (dropped if the receiver is gone).
    pub fn send(self, value: T) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        // Drop marks the sender gone; the value is already in place.
    }
}

impl<T> Drop for OneshotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.sender_alive = false;
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Future for OneshotReceiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.slot);
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Ok(value));
        }
        if !slot.sender_alive {
            return Poll::Ready(Err(Canceled));
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn request_and_reply_between_two_executors() {
        let (tx, rx) = channel::<(u32, OneshotSender<u32>)>(4);
        let server = std::thread::spawn(move || {
            crate::block_on_shard(move || async move {
                let mut served = 0;
                while let Some((n, reply)) = rx.recv().await {
                    reply.send(n * 2);
                    served += 1;
                }
                served
            })
            .unwrap()
        });
        let answers = crate::block_on_shard(move || async move {
            let mut answers = Vec::new();
            for n in 0..10 {
                let (reply, answer) = oneshot();
                tx.try_send((n, reply)).unwrap();
                answers.push(answer.await.unwrap());
            }
            answers
        })
        .unwrap();
        assert_eq!(answers, (0..10).map(|n| n * 2).collect::<Vec<_>>());
        assert_eq!(server.join().unwrap(), 10, "receiver ends when senders go");
    }

    #[test]
    fn full_closed_and_canceled() {
        let (tx, rx) = channel::<OneshotSender<u8>>(1);
        let (reply, answer) = oneshot();
        tx.try_send(reply).unwrap();
        let (second, _) = oneshot();
        assert!(matches!(tx.try_send(second), Err(TrySendError::Full(_))));
        drop(rx);
        assert!(tx.is_closed());
        let (third, _) = oneshot();
        assert!(matches!(tx.try_send(third), Err(TrySendError::Closed(_))));
        let result = crate::block_on_shard(move || async move {
            crate::timer::timeout(Duration::from_secs(5), answer).await
        })
        .unwrap();
        assert_eq!(
            result,
            Ok(Err(Canceled)),
            "dropped request cancels its asker"
        );
    }
}
