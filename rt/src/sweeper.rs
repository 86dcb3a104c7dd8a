//! Per-shard periodic sweeps instead of a timer per connection.
//!
//! Ten thousand per-connection sleep loops cost about 40% of a core in timer churn; one task
//! per shard that wakes every interval and scans last-seen timestamps costs next to nothing.
//! Connections [`touch`](IdleTable::touch) their key when traffic arrives; a [`Sweeper`]
//! periodically collects the keys idle for too long (heartbeat timeouts, idle viewers, lingering
//! streams) and acts on them.

use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::shard::{spawn_local, Task};

/// A periodic task on the current shard. Dropping the `Sweeper` (or calling
/// [`stop`](Sweeper::stop)) ends it.
#[derive(Debug)]
#[must_use = "dropping a Sweeper stops it"]
pub struct Sweeper {
    stopped: Rc<Cell<bool>>,
    _task: Task<()>,
}

impl Sweeper {
    /// Calls `sweep(now)` every `interval` (at least 1 ms) on the current shard, starting one
    /// interval from now. Ticks missed while the shard was busy are skipped, not replayed.
    pub fn every<F>(interval: Duration, mut sweep: F) -> Sweeper
    where
        F: FnMut(Instant) + 'static,
    {
        Self::every_async(interval, move |now| {
            sweep(now);
            std::future::ready(())
        })
    }

    /// Like [`every`](Self::every) with an async sweep; the next tick is scheduled after the
    /// sweep completes, so sweeps never overlap.
    pub fn every_async<F, Fut>(interval: Duration, mut sweep: F) -> Sweeper
    where
        F: FnMut(Instant) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let interval = interval.max(Duration::from_millis(1));
        let stopped = Rc::new(Cell::new(false));
        let task = {
            let stopped = stopped.clone();
            spawn_local(async move {
                let mut next = Instant::now() + interval;
                loop {
                    let now = Instant::now();
                    if next > now {
                        crate::timer::sleep(next - now).await;
                    }
                    if stopped.get() {
                        return;
                    }
                    let now = Instant::now();
                    sweep(now).await;
                    next += interval;
                    let after = Instant::now();
                    if next <= after {
                        // Behind schedule: skip the missed ticks.
                        next = after + interval;
                    }
                }
            })
        };
        Sweeper {
            stopped,
            _task: task,
        }
    }

    /// Stops the sweeper after the current sweep (if any).
    pub fn stop(&self) {
        self.stopped.set(true);
    }
}

/// Last-seen timestamps per key on one shard, for idle and heartbeat timeouts.
#[derive(Debug, Clone)]
pub struct IdleTable<K> {
    last_seen: HashMap<K, Instant>,
}

impl<K> Default for IdleTable<K> {
    fn default() -> Self {
        IdleTable {
            last_seen: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> IdleTable<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records activity for `key` at `now` (inserting it if new).
    pub fn touch(&mut self, key: K, now: Instant) {
        self.last_seen.insert(key, now);
    }

    /// Records activity for an existing `key` without allocating a key; returns false if absent.
    pub fn touch_existing<Q>(&mut self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.last_seen.get_mut(key) {
            Some(seen) => {
                *seen = now;
                true
            }
            None => false,
        }
    }

    /// Stops tracking `key`; returns when it was last seen.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.last_seen.remove(key)
    }

    /// When `key` was last seen.
    pub fn last_seen<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.last_seen.get(key).copied()
    }

    /// Removes and returns every key not seen for longer than `max_idle` before `now`.
    pub fn take_idle(&mut self, now: Instant, max_idle: Duration) -> Vec<K> {
        let mut idle = Vec::new();
        self.last_seen.retain(|key, seen| {
            let keep = now.saturating_duration_since(*seen) <= max_idle;
            if !keep {
                idle.push(key.clone());
            }
            keep
        });
        idle
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_keys_are_taken_once() {
        let start = Instant::now();
        let mut table = IdleTable::new();
        table.touch("cam-a".to_owned(), start);
        table.touch("cam-b".to_owned(), start);
        assert!(table.touch_existing("cam-b", start + Duration::from_secs(30)));
        assert!(!table.touch_existing("cam-c", start));
        let idle = table.take_idle(start + Duration::from_secs(41), Duration::from_secs(40));
        assert_eq!(idle, vec!["cam-a".to_owned()]);
        assert_eq!(table.len(), 1);
        assert!(table
            .take_idle(start + Duration::from_secs(41), Duration::from_secs(40))
            .is_empty());
        assert_eq!(
            table.last_seen("cam-b"),
            Some(start + Duration::from_secs(30))
        );
        assert!(table.remove("cam-b").is_some());
        assert!(table.is_empty());
    }
}
