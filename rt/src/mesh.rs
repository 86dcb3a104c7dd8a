//! Typed messages between shards, and the routing function that says which shard owns a key.
//!
//! A [`Mesh<T>`] is built once, before the shards start, with one bounded single-producer
//! single-consumer channel for every ordered pair of shards (glommio shared channels). Each
//! shard [`join`](Mesh::join)s it with its own id and gets a [`MeshPort<T>`] that sends to any
//! shard (including itself, through a local queue) and receives from all of them.
//!
//! Cost: a message to a shard that is parked wakes it through an eventfd, which costs tens of
//! microseconds end to end. Batch: send one message per burst of work (a `Vec` of items, a
//! handoff, a command), never one per media frame or packet.
//!
//! glommio's own `MeshBuilder` is not used: it numbers peers by executor id rather than by our
//! shard id, and it shares an `Rc` between threads when cloned.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::Stream;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// First and longest wait between attempts to send into a full inbox.
const FULL_BACKOFF_MIN: Duration = Duration::from_micros(50);
const FULL_BACKOFF_MAX: Duration = Duration::from_millis(1);

/// The shard that owns `key` among `shards` shards: FNV-1a (64-bit) of the key's UTF-8 bytes,
/// modulo `shards`. Stable across processes, restarts and platforms. `shards == 0` returns 0.
pub fn owner_shard(key: &str, shards: usize) -> usize {
    owner_shard_bytes(key.as_bytes(), shards)
}

/// [`owner_shard`] for a key given as bytes.
pub fn owner_shard_bytes(key: &[u8], shards: usize) -> usize {
    if shards == 0 {
        return 0;
    }
    (fnv1a_64(key) % shards as u64) as usize
}

/// FNV-1a, 64-bit.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// Joining a mesh failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The shard id is not below the mesh size (caller bug).
    #[error("shard {shard} cannot join a mesh of {shards} shards")]
    NoSuchShard {
        /// The id asked for.
        shard: usize,
        /// The mesh size.
        shards: usize,
    },
    /// Each shard may join a mesh once (caller bug).
    #[error("shard {shard} has already joined this mesh")]
    AlreadyJoined {
        /// The id asked for.
        shard: usize,
    },
}

/// Why a message could not be sent; carries the message back.
#[non_exhaustive]
pub enum SendError<T> {
    /// The destination is not a shard of this mesh (caller bug).
    NoSuchShard {
        /// The destination asked for.
        to: usize,
        /// The mesh size.
        shards: usize,
        /// The message, returned.
        msg: T,
    },
    /// The destination's inbox from this shard is full (only from `try_send_to`).
    Full {
        /// The destination.
        to: usize,
        /// The message, returned.
        msg: T,
    },
    /// The destination has dropped or closed its port (it is shutting down).
    Closed {
        /// The destination.
        to: usize,
        /// The message, returned.
        msg: T,
    },
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::NoSuchShard { msg, .. }
            | SendError::Full { msg, .. }
            | SendError::Closed { msg, .. } => msg,
        }
    }

    /// The destination shard.
    pub fn to(&self) -> usize {
        match self {
            SendError::NoSuchShard { to, .. }
            | SendError::Full { to, .. }
            | SendError::Closed { to, .. } => *to,
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NoSuchShard { to, shards, .. } => {
                write!(f, "shard {to} does not exist in a mesh of {shards} shards")
            }
            SendError::Full { to, .. } => write!(f, "inbox of shard {to} is full"),
            SendError::Closed { to, .. } => write!(f, "shard {to} has left the mesh"),
        }
    }
}

impl<T> std::error::Error for SendError<T> {}

/// The unconnected channel ends that belong to one shard.
struct ShardEnds<T: Send + 'static> {
    /// `senders[to]`: this shard -> `to`; `None` for `to == self`.
    senders: Vec<Option<SharedSender<T>>>,
    /// `receivers[from]`: `from` -> this shard; `None` for `from == self`.
    receivers: Vec<Option<SharedReceiver<T>>>,
}

struct MeshInner<T: Send + 'static> {
    shards: usize,
    capacity: usize,
    ends: Mutex<Vec<Option<ShardEnds<T>>>>,
}

/// A full mesh of bounded channels between `shards` shards, built before they start.
/// Cheap to clone; `Send + Sync`, so a clone can be captured by the shard entry closure.
pub struct Mesh<T: Send + 'static> {
    inner: Arc<MeshInner<T>>,
}

impl<T: Send + 'static> Clone for Mesh<T> {
    fn clone(&self) -> Self {
        Mesh {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Mesh<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("shards", &self.inner.shards)
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl<T: Send + 'static> Mesh<T> {
    /// A mesh for `shards` shards where each ordered pair has a channel holding up to `capacity`
    /// messages (rounded up to a power of two, at least 1).
    pub fn new(shards: usize, capacity: usize) -> Mesh<T> {
        let capacity = capacity.max(1).next_power_of_two();
        let mut senders: Vec<Vec<Option<SharedSender<T>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        let mut receivers: Vec<Vec<Option<SharedReceiver<T>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (tx, rx) = shared_channel::new_bounded(capacity);
                    senders[from][to] = Some(tx);
                    receivers[to][from] = Some(rx);
                }
            }
        }
        let ends = senders
            .into_iter()
            .zip(receivers)
            .map(|(senders, receivers)| Some(ShardEnds { senders, receivers }))
            .collect();
        Mesh {
            inner: Arc::new(MeshInner {
                shards,
                capacity,
                ends: Mutex::new(ends),
            }),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards
    }

    /// Joins as shard `shard`, on that shard's executor. Completes once every other shard has
    /// joined too, so all shards must call it (concurrently, e.g. at the start of their entry
    /// point).
    pub async fn join(&self, shard: usize) -> Result<MeshPort<T>, JoinError> {
        let shards = self.inner.shards;
        let ends = {
            let mut all = self
                .inner
                .ends
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = all
                .get_mut(shard)
                .ok_or(JoinError::NoSuchShard { shard, shards })?;
            slot.take().ok_or(JoinError::AlreadyJoined { shard })?
        };
        // Connecting an end waits for its peer to connect the other end, so every end is
        // connected concurrently: sequential connects would deadlock between two shards.
        let sender_tasks: Vec<_> = ends
            .senders
            .into_iter()
            .map(|tx| tx.map(|tx| glommio::spawn_local(tx.connect())))
            .collect();
        let receiver_tasks: Vec<_> = ends
            .receivers
            .into_iter()
            .map(|rx| rx.map(|rx| glommio::spawn_local(rx.connect())))
            .collect();
        let mut senders = Vec::with_capacity(shards);
        for task in sender_tasks {
            senders.push(match task {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        let mut receivers = Vec::with_capacity(shards);
        for task in receiver_tasks {
            receivers.push(match task {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        Ok(MeshPort {
            id: shard,
            shards,
            senders,
            receivers: RefCell::new(receivers),
            local: RefCell::new(LocalQueue {
                items: VecDeque::new(),
                capacity: self.inner.capacity,
                closed: false,
                recv_waker: None,
                send_wakers: Vec::new(),
            }),
            next_peer: Cell::new(0),
        })
    }
}

/// Messages a shard sends to itself, so callers can route by [`owner_shard`] without a special
/// case for the local shard.
struct LocalQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    closed: bool,
    recv_waker: Option<Waker>,
    send_wakers: Vec<Waker>,
}

/// One shard's end of a [`Mesh`]: send to any shard, receive from all.
///
/// Intended use: one task per shard loops on [`recv`](Self::recv) and dispatches; any task
/// sends. The port lives in an `Rc` on its shard; dropping it (or [`close`](Self::close)) tells
/// the other shards that this one has left.
pub struct MeshPort<T: Send + 'static> {
    id: usize,
    shards: usize,
    senders: Vec<Option<ConnectedSender<T>>>,
    receivers: RefCell<Vec<Option<ConnectedReceiver<T>>>>,
    local: RefCell<LocalQueue<T>>,
    next_peer: Cell<usize>,
}

impl<T: Send + 'static> fmt::Debug for MeshPort<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshPort")
            .field("id", &self.id)
            .field("shards", &self.shards)
            .finish()
    }
}

impl<T: Send + 'static> MeshPort<T> {
    /// This shard's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Sends `msg` to shard `to`, waiting while that inbox is full (polling every 50 µs..1 ms;
    /// size inboxes so that this is rare). Fails with `Closed` once `to` has left the mesh.
    pub async fn send_to(&self, to: usize, msg: T) -> Result<(), SendError<T>> {
        if to == self.id {
            let mut msg = Some(msg);
            return poll_fn(|cx| {
                let mut local = self.local.borrow_mut();
                if local.closed {
                    let msg = msg.take().expect("polled after completion");
                    return Poll::Ready(Err(SendError::Closed { to, msg }));
                }
                if local.items.len() >= local.capacity {
                    local.send_wakers.push(cx.waker().clone());
                    return Poll::Pending;
                }
                local
                    .items
                    .push_back(msg.take().expect("polled after completion"));
                if let Some(waker) = local.recv_waker.take() {
                    waker.wake();
                }
                Poll::Ready(Ok(()))
            })
            .await;
        }
        let sender = match self.senders.get(to) {
            Some(Some(sender)) => sender,
            _ => {
                return Err(SendError::NoSuchShard {
                    to,
                    shards: self.shards,
                    msg,
                })
            }
        };
        // glommio 0.9's blocking `send` never returns if the receiving shard leaves while the
        // queue is full (it waits for room that never comes), so a full inbox is waited out
        // here with short sleeps instead. Inboxes sized for batched traffic are rarely full.
        let mut msg = msg;
        let mut backoff = FULL_BACKOFF_MIN;
        loop {
            match sender.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(err) => match map_glommio_send_error(to, err) {
                    SendError::Full { msg: returned, .. } => {
                        msg = returned;
                        crate::timer::sleep(backoff).await;
                        backoff = (backoff * 2).min(FULL_BACKOFF_MAX);
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Sends `msg` to shard `to` if its inbox has room, without waiting.
    pub fn try_send_to(&self, to: usize, msg: T) -> Result<(), SendError<T>> {
        if to == self.id {
            let mut local = self.local.borrow_mut();
            if local.closed {
                return Err(SendError::Closed { to, msg });
            }
            if local.items.len() >= local.capacity {
                return Err(SendError::Full { to, msg });
            }
            local.items.push_back(msg);
            if let Some(waker) = local.recv_waker.take() {
                waker.wake();
            }
            return Ok(());
        }
        match self.senders.get(to) {
            Some(Some(sender)) => sender
                .try_send(msg)
                .map_err(|err| map_glommio_send_error(to, err)),
            _ => Err(SendError::NoSuchShard {
                to,
                shards: self.shards,
                msg,
            }),
        }
    }

    /// Receives the next message from any shard (including this one) as `(from, msg)`, taking
    /// peers in turn so that a busy shard cannot starve the others. Returns `None` once every
    /// shard's port, this one included, has been closed or dropped and all queues are drained.
    pub async fn recv(&self) -> Option<(usize, T)> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Poll form of [`recv`](Self::recv).
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<(usize, T)>> {
        let start = self.next_peer.get();
        self.next_peer.set((start + 1) % self.shards.max(1));
        let mut open = 0usize;
        let mut receivers = self.receivers.borrow_mut();
        for offset in 0..self.shards {
            let from = (start + offset) % self.shards;
            if from == self.id {
                let mut local = self.local.borrow_mut();
                if let Some(msg) = local.items.pop_front() {
                    for waker in local.send_wakers.drain(..) {
                        waker.wake();
                    }
                    return Poll::Ready(Some((from, msg)));
                }
                if !local.closed {
                    open += 1;
                    local.recv_waker = Some(cx.waker().clone());
                }
                continue;
            }
            let Some(Some(receiver)) = receivers.get_mut(from) else {
                continue;
            };
            match Pin::new(receiver).poll_next(cx) {
                Poll::Ready(Some(msg)) => return Poll::Ready(Some((from, msg))),
                Poll::Ready(None) => receivers[from] = None,
                Poll::Pending => open += 1,
            }
        }
        if open == 0 {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// Tells every other shard that this one will send nothing more, and refuses further local
    /// sends. Messages already queued can still be received.
    pub fn close(&self) {
        for sender in self.senders.iter().flatten() {
            sender.close();
        }
        let mut local = self.local.borrow_mut();
        local.closed = true;
        for waker in local.send_wakers.drain(..) {
            waker.wake();
        }
        if let Some(waker) = local.recv_waker.take() {
            waker.wake();
        }
    }
}

fn map_glommio_send_error<T>(to: usize, err: glommio::GlommioError<T>) -> SendError<T> {
    match err {
        glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg)) => {
            SendError::Full { to, msg }
        }
        glommio::GlommioError::Closed(glommio::ResourceType::Channel(msg)) => {
            SendError::Closed { to, msg }
        }
        // glommio only returns the two kinds above for channel sends; anything else cannot carry
        // the message back, which would lose it silently, so treat it as a runtime bug.
        other => unreachable!("unexpected glommio channel error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_vectors() {
        // Reference values from the FNV specification test suite.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn owner_shard_is_stable_and_in_range() {
        let uid = "95270000ABCDEFGH";
        let first = owner_shard(uid, 8);
        assert!(first < 8);
        assert_eq!(owner_shard(uid, 8), first);
        assert_eq!(owner_shard(uid, 1), 0);
        assert_eq!(owner_shard(uid, 0), 0);
        assert_eq!(owner_shard(uid, 8), (fnv1a_64(uid.as_bytes()) % 8) as usize);
    }

    #[test]
    fn owner_shard_spreads_keys() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(&format!("UID{i:013}"), 4)] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "uneven spread: {counts:?}");
        }
    }
}
