//! The durable alarm queue: three redb tables in the server's store file.
//!
//! - `alarm_queue`: sequence number (u64, from `alarm_meta.next_seq`, never reused) -> the
//!   event as JSON. Key order is arrival order, so reading in key order keeps every device's
//!   alarms in the order the device sent them.
//! - `alarm_dead`: alarms the webhook refused too often (see `docs/alarms.md`), by the same
//!   sequence number, kept for an operator; bounded, oldest dropped first.
//! - `alarm_meta`: `next_seq`.
//!
//! Every change is one redb write transaction committed with immediate durability (fsync)
//! before the call returns: an [`AlarmQueue::enqueue`] that returned `Ok` survives kill -9 and a
//! power cut. The backlog is bounded ([`QueueSettings::max_backlog`]); beyond it the oldest
//! alarm (of any device) is dropped and counted, so a webhook that is down for days costs a
//! bounded amount of disk (about 300 bytes per alarm: 100,000 alarms ≈ 30 MB).

use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{AlarmEvent, AlarmMetrics};
use crate::store::{Store, StoreError};

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("alarm_queue");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("alarm_dead");
const META: TableDefinition<&str, u64> = TableDefinition::new("alarm_meta");
const NEXT_SEQ: &str = "next_seq";

/// Limits of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most alarms kept waiting; past it the oldest is dropped (counted as `backlog_full`).
    /// Default 100,000.
    pub max_backlog: u64,
    /// Most dead letters kept; past it the oldest is forgotten. Default 10,000.
    pub max_dead_letters: u64,
    /// Whether alarms are stored at all: false when no webhook is configured, and then
    /// [`AlarmQueue::enqueue`] only counts (`received`, `dropped{reason="no_webhook"}`).
    pub store_alarms: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_backlog: 100_000,
            max_dead_letters: 10_000,
            store_alarms: true,
        }
    }
}

impl QueueSettings {
    /// The settings `config` asks for: its backlog bound, and storing only when a webhook is
    /// configured.
    pub fn from_config(config: &crate::config::Config) -> Self {
        QueueSettings {
            max_backlog: config.alarm_backlog_max,
            store_alarms: config.alarm_webhook.is_some(),
            ..QueueSettings::default()
        }
    }
}

/// An alarm waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedAlarm {
    /// Its position in the queue (arrival order).
    pub seq: u64,
    /// The alarm.
    pub event: AlarmEvent,
}

/// An alarm given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its position in the queue when it was given up.
    pub seq: u64,
    /// The alarm.
    pub event: AlarmEvent,
    /// Why (the webhook's last status line).
    pub reason: String,
    /// When it was given up, Unix ms.
    pub failed_at_ms: u64,
}

/// The durable alarm queue. Cheap to clone; every clone is the same queue. Safe to use from
/// any thread (each call is one redb transaction; redb serializes writers).
#[derive(Debug, Clone)]
pub struct AlarmQueue {
    store: Arc<Store>,
    settings: Arc<QueueSettings>,
    metrics: Arc<AlarmMetrics>,
    wakeup: Arc<Wakeup>,
}

impl AlarmQueue {
    /// Opens the queue tables in `store` (creating them) and loads the backlog gauges.
    pub fn open(
        store: Arc<Store>,
        settings: QueueSettings,
        metrics: Arc<AlarmMetrics>,
    ) -> Result<Self, StoreError> {
        let txn = store.database()?.begin_write()?;
        {
            let queue = txn.open_table(QUEUE)?;
            txn.open_table(DEAD)?;
            txn.open_table(META)?;
            let (depth, oldest) = backlog(&queue)?;
            metrics.set_backlog(depth, oldest);
        }
        txn.commit()?;
        Ok(AlarmQueue {
            store,
            settings: Arc::new(settings),
            metrics,
            wakeup: Arc::new(Wakeup::default()),
        })
    }

    /// The counters (shared with whoever prints `/metrics`).
    pub fn metrics(&self) -> &Arc<AlarmMetrics> {
        &self.metrics
    }

    /// The limits this queue was opened with.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Commits `event` to the queue; when this returns `Ok` the alarm survives a crash and the
    /// device may be answered 200. Blocks for one fsync. When no webhook is configured it only
    /// counts the alarm. An `Err` means nothing was stored: answer the device with an error so
    /// that it retries.
    pub fn enqueue(&self, event: &AlarmEvent) -> Result<(), StoreError> {
        self.enqueue_batch(std::slice::from_ref(event))
    }

    /// Commits several alarms in one transaction (one fsync), in slice order: for a caller
    /// that gathers the alarms of many devices before answering them (group commit).
    pub fn enqueue_batch(&self, events: &[AlarmEvent]) -> Result<(), StoreError> {
        let count = events.len() as u64;
        self.metrics.add_received(count);
        if !self.settings.store_alarms {
            self.metrics.add_dropped_no_webhook(count);
            return Ok(());
        }
        if events.is_empty() {
            return Ok(());
        }
        let txn = self.store.database()?.begin_write()?;
        let dropped = {
            let mut queue = txn.open_table(QUEUE)?;
            let mut meta = txn.open_table(META)?;
            let mut next = match meta.get(NEXT_SEQ)? {
                Some(v) => v.value(),
                None => queue.last()?.map_or(1, |(k, _)| k.value() + 1),
            };
            for event in events {
                queue.insert(next, encode(event).as_slice())?;
                next += 1;
            }
            meta.insert(NEXT_SEQ, next)?;
            let mut dropped = 0;
            while queue.len()? > self.settings.max_backlog {
                if queue.pop_first()?.is_none() {
                    break;
                }
                dropped += 1;
            }
            if dropped > 0 {
                // Once the backlog is full every new alarm drops one: log the 1st, 2nd, 4th, …
                let before = self.metrics.snapshot().dropped_backlog_full;
                let after = before + dropped;
                if (before + 1..=after).any(u64::is_power_of_two) {
                    tracing::warn!(
                        dropped_so_far = after,
                        max = self.settings.max_backlog,
                        "alarm backlog full: oldest alarms dropped"
                    );
                }
            }
            let (depth, oldest) = backlog(&queue)?;
            self.metrics.set_backlog(depth, oldest);
            dropped
        };
        txn.commit()?;
        self.metrics.add_queued(count);
        self.metrics.add_dropped_backlog_full(dropped);
        self.wakeup.notify();
        Ok(())
    }

    /// Up to `limit` waiting alarms in arrival order, starting after `after` (from the start
    /// when `None`). Nothing is removed: see [`AlarmQueue::ack`].
    pub fn peek(&self, after: Option<u64>, limit: usize) -> Result<Vec<QueuedAlarm>, StoreError> {
        let txn = self.store.database()?.begin_read()?;
        let queue = txn.open_table(QUEUE)?;
        let start = match after {
            Some(seq) => seq.saturating_add(1),
            None => 0,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in queue.range(start..)? {
            if out.len() >= limit {
                break;
            }
            let (seq, value) = entry?;
            let seq = seq.value();
            out.push(QueuedAlarm {
                seq,
                event: decode("alarm_queue", seq, value.value())?,
            });
        }
        Ok(out)
    }

    /// Removes alarm `seq` after the webhook acknowledged it. False if it was not there any
    /// more (dropped for backlog while in flight).
    pub fn ack(&self, seq: u64) -> Result<bool, StoreError> {
        Ok(self.ack_batch(&[seq])? == 1)
    }

    /// Removes every alarm of `seqs` in one transaction (one fsync) after the webhook
    /// acknowledged them; returns how many were still there.
    pub fn ack_batch(&self, seqs: &[u64]) -> Result<usize, StoreError> {
        let txn = self.store.database()?.begin_write()?;
        let found = {
            let mut queue = txn.open_table(QUEUE)?;
            let mut found = 0;
            for &seq in seqs {
                found += usize::from(queue.remove(seq)?.is_some());
            }
            let (depth, oldest) = backlog(&queue)?;
            self.metrics.set_backlog(depth, oldest);
            found
        };
        txn.commit()?;
        Ok(found)
    }

    /// Moves alarm `seq` to the dead-letter table, in one transaction. False if it was not in
    /// the queue.
    pub fn dead_letter(&self, seq: u64, reason: &str, now_ms: u64) -> Result<bool, StoreError> {
        let txn = self.store.database()?.begin_write()?;
        let found = {
            let mut queue = txn.open_table(QUEUE)?;
            let Some(value) = queue.remove(seq)? else {
                return Ok(false);
            };
            let event: AlarmEvent = decode("alarm_queue", seq, value.value())?;
            drop(value);
            let letter = DeadLetter {
                seq,
                event,
                reason: reason.to_owned(),
                failed_at_ms: now_ms,
            };
            let mut dead = txn.open_table(DEAD)?;
            dead.insert(seq, encode(&letter).as_slice())?;
            while dead.len()? > self.settings.max_dead_letters {
                if dead.pop_first()?.is_none() {
                    break;
                }
            }
            let (depth, oldest) = backlog(&queue)?;
            self.metrics.set_backlog(depth, oldest);
            true
        };
        txn.commit()?;
        Ok(found)
    }

    /// The most recent `limit` dead letters, newest first.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let txn = self.store.database()?.begin_read()?;
        let dead = txn.open_table(DEAD)?;
        let mut out = Vec::new();
        for entry in dead.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (seq, value) = entry?;
            out.push(decode("alarm_dead", seq.value(), value.value())?);
        }
        Ok(out)
    }

    /// Alarms waiting, read from the store.
    pub fn depth(&self) -> Result<u64, StoreError> {
        let txn = self.store.database()?.begin_read()?;
        Ok(txn.open_table(QUEUE)?.len()?)
    }

    /// Resolves when an alarm was enqueued since the last time it resolved (for the sender).
    pub(crate) async fn enqueued(&self) {
        let wakeup = &self.wakeup;
        std::future::poll_fn(|cx| wakeup.poll(cx.waker())).await;
    }
}

/// `(depth, received_at_ms of the first entry or 0)`.
fn backlog(queue: &impl ReadableTable<u64, &'static [u8]>) -> Result<(u64, u64), StoreError> {
    let depth = queue.len()?;
    let oldest = match queue.first()? {
        Some((seq, value)) => {
            let seq = seq.value();
            decode::<AlarmEvent>("alarm_queue", seq, value.value())?
                .received_at_ms
                .max(1)
        }
        None => 0,
    };
    Ok((depth, oldest))
}

/// A one-waiter, cross-thread "something was enqueued" flag: enqueuers run on device shards or
/// the control plane, the sender on the control plane.
#[derive(Debug, Default)]
struct Wakeup {
    state: Mutex<(bool, Option<Waker>)>,
}

impl Wakeup {
    fn notify(&self) {
        let waker = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.0 = true;
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll(&self, waker: &Waker) -> Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut state.0) {
            return Poll::Ready(());
        }
        state.1 = Some(waker.clone());
        Poll::Pending
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    seq: u64,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: seq.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::body::Alarm;

    fn event(uid: &str, channel: u32, at: u64) -> AlarmEvent {
        let alarm = Alarm {
            channel,
            status: "MD".into(),
            ai_type: "people".into(),
        };
        AlarmEvent::new(uid, &alarm, at)
    }

    fn open(dir: &std::path::Path, settings: QueueSettings) -> AlarmQueue {
        let store = Arc::new(Store::open(dir).unwrap());
        AlarmQueue::open(store, settings, Arc::default()).unwrap()
    }

    #[test]
    fn fifo_peek_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path(), QueueSettings::default());
        let a = event("AAAAAAAAAAAAAAAA", 0, 1000);
        let b = event("BBBBBBBBBBBBBBBB", 1, 2000);
        let c = event("AAAAAAAAAAAAAAAA", 2, 3000);
        queue.enqueue(&a).unwrap();
        queue.enqueue_batch(&[b.clone(), c.clone()]).unwrap();
        let all = queue.peek(None, 10).unwrap();
        assert_eq!(
            all.iter().map(|q| &q.event).collect::<Vec<_>>(),
            vec![&a, &b, &c]
        );
        assert_eq!(queue.peek(Some(all[0].seq), 1).unwrap()[0].event, b);
        assert!(queue.ack(all[0].seq).unwrap());
        assert!(!queue.ack(all[0].seq).unwrap());
        let m = queue.metrics().snapshot();
        assert_eq!((m.received, m.queued, m.depth), (3, 3, 2));
        assert_eq!(m.oldest_received_at_ms, 2000);
        drop(queue);

        // A new process: the same alarms, and sequence numbers keep growing.
        let queue = open(dir.path(), QueueSettings::default());
        assert_eq!(queue.metrics().snapshot().depth, 2);
        assert!(queue.ack(all[1].seq).unwrap());
        assert!(queue.ack(all[2].seq).unwrap());
        assert_eq!(queue.metrics().snapshot().oldest_received_at_ms, 0);
        queue.enqueue(&a).unwrap();
        assert!(queue.peek(None, 1).unwrap()[0].seq > all[2].seq);
    }

    #[test]
    fn backlog_is_bounded_oldest_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let settings = QueueSettings {
            max_backlog: 3,
            ..QueueSettings::default()
        };
        let queue = open(dir.path(), settings);
        for i in 0..5 {
            queue
                .enqueue(&event("AAAAAAAAAAAAAAAA", i, 1000 + u64::from(i)))
                .unwrap();
        }
        let left: Vec<u32> = queue
            .peek(None, 10)
            .unwrap()
            .iter()
            .map(|q| q.event.channel_id)
            .collect();
        assert_eq!(left, vec![2, 3, 4]);
        let m = queue.metrics().snapshot();
        assert_eq!((m.dropped_backlog_full, m.depth), (2, 3));
        assert_eq!(m.oldest_received_at_ms, 1002);
    }

    #[test]
    fn dead_letters_are_kept_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let settings = QueueSettings {
            max_dead_letters: 2,
            ..QueueSettings::default()
        };
        let queue = open(dir.path(), settings);
        for i in 0..3 {
            queue.enqueue(&event("AAAAAAAAAAAAAAAA", i, 1000)).unwrap();
        }
        for q in queue.peek(None, 10).unwrap() {
            assert!(queue.dead_letter(q.seq, "400 Bad Request", 5).unwrap());
        }
        assert!(!queue.dead_letter(99, "x", 5).unwrap());
        let dead = queue.dead_letters(10).unwrap();
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].event.channel_id, 2);
        assert_eq!(dead[0].reason, "400 Bad Request");
        assert_eq!(queue.depth().unwrap(), 0);
    }

    #[test]
    fn without_webhook_alarms_are_counted_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let settings = QueueSettings {
            store_alarms: false,
            ..QueueSettings::default()
        };
        let queue = open(dir.path(), settings);
        queue.enqueue(&event("AAAAAAAAAAAAAAAA", 0, 1)).unwrap();
        let m = queue.metrics().snapshot();
        assert_eq!((m.received, m.queued, m.dropped_no_webhook), (1, 0, 1));
        assert_eq!(queue.depth().unwrap(), 0);
    }
}
