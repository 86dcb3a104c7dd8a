//! Counters of the alarm pipeline, shared (behind an `Arc`) by the device sessions that enqueue,
//! the sender that delivers, and the client API that prints them on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Alarm counters. Counters start at zero with the process (Prometheus counters); the two
/// gauges (depth, oldest) are loaded from the store at open and kept current by the queue.
#[derive(Debug, Default)]
pub struct AlarmMetrics {
    received: AtomicU64,
    queued: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    dropped_no_webhook: AtomicU64,
    dropped_backlog_full: AtomicU64,
    dead_lettered: AtomicU64,
    depth: AtomicU64,
    /// Unix ms of the oldest alarm in the queue; 0 = empty.
    oldest_received_at_ms: AtomicU64,
}

/// The counters at one moment (serializable for a JSON status endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Alarms devices sent (whether stored or not).
    pub received: u64,
    /// Alarms committed to the queue.
    pub queued: u64,
    /// Alarms the webhook acknowledged with a 2xx.
    pub delivered: u64,
    /// Failed delivery attempts that will be retried.
    pub retried: u64,
    /// Alarms counted and dropped because no webhook is configured.
    pub dropped_no_webhook: u64,
    /// Oldest alarms dropped to keep the backlog within its limit.
    pub dropped_backlog_full: u64,
    /// Alarms the webhook refused too often, moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Alarms waiting in the queue.
    pub depth: u64,
    /// Unix ms of the oldest waiting alarm, 0 when the queue is empty.
    pub oldest_received_at_ms: u64,
}

impl MetricsSnapshot {
    /// Alarms dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_no_webhook + self.dropped_backlog_full + self.dead_lettered
    }

    /// Age of the oldest waiting alarm at `now_ms`, in seconds (0 when none waits).
    pub fn oldest_age_secs(&self, now_ms: u64) -> f64 {
        if self.oldest_received_at_ms == 0 {
            return 0.0;
        }
        now_ms.saturating_sub(self.oldest_received_at_ms) as f64 / 1000.0
    }
}

impl AlarmMetrics {
    pub(crate) fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_queued(&self, n: u64) {
        self.queued.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_no_webhook(&self, n: u64) {
        self.dropped_no_webhook.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dropped_backlog_full(&self, n: u64) {
        self.dropped_backlog_full.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_backlog(&self, depth: u64, oldest_received_at_ms: u64) {
        self.depth.store(depth, Ordering::Relaxed);
        self.oldest_received_at_ms
            .store(oldest_received_at_ms, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            received: get(&self.received),
            queued: get(&self.queued),
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            dropped_no_webhook: get(&self.dropped_no_webhook),
            dropped_backlog_full: get(&self.dropped_backlog_full),
            dead_lettered: get(&self.dead_lettered),
            depth: get(&self.depth),
            oldest_received_at_ms: get(&self.oldest_received_at_ms),
        }
    }

    /// Appends the Prometheus text exposition of these counters to `out`; `now_ms` (Unix ms)
    /// gives the age of the oldest waiting alarm.
    pub fn render_prometheus(&self, now_ms: u64, out: &mut String) {
        let s = self.snapshot();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "rop_alarms_received_total",
            "counter",
            "Alarms (command 33) received from devices.",
            &[("", s.received.to_string())],
        );
        metric(
            "rop_alarms_queued_total",
            "counter",
            "Alarms committed to the durable queue.",
            &[("", s.queued.to_string())],
        );
        metric(
            "rop_alarms_delivered_total",
            "counter",
            "Alarms the webhook acknowledged with a 2xx.",
            &[("", s.delivered.to_string())],
        );
        metric(
            "rop_alarms_retried_total",
            "counter",
            "Failed webhook attempts that will be retried.",
            &[("", s.retried.to_string())],
        );
        metric(
            "rop_alarms_dropped_total",
            "counter",
            "Alarms that will never be delivered, by reason.",
            &[
                ("{reason=\"no_webhook\"}", s.dropped_no_webhook.to_string()),
                (
                    "{reason=\"backlog_full\"}",
                    s.dropped_backlog_full.to_string(),
                ),
                ("{reason=\"dead_letter\"}", s.dead_lettered.to_string()),
            ],
        );
        metric(
            "rop_alarms_queue_depth",
            "gauge",
            "Alarms waiting for delivery.",
            &[("", s.depth.to_string())],
        );
        metric(
            "rop_alarms_oldest_undelivered_age_seconds",
            "gauge",
            "Age of the oldest alarm waiting for delivery (0 when none waits).",
            &[("", format!("{:.3}", s.oldest_age_secs(now_ms)))],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_lines() {
        let m = AlarmMetrics::default();
        m.add_received(3);
        m.add_queued(2);
        m.add_dropped_no_webhook(1);
        m.set_backlog(2, 10_000);
        let mut out = String::new();
        m.render_prometheus(12_500, &mut out);
        assert!(out.contains("rop_alarms_received_total 3\n"), "{out}");
        assert!(out.contains("rop_alarms_dropped_total{reason=\"no_webhook\"} 1\n"));
        assert!(out.contains("rop_alarms_queue_depth 2\n"));
        assert!(out.contains("rop_alarms_oldest_undelivered_age_seconds 2.500\n"));
        assert!(out.contains("# TYPE rop_alarms_delivered_total counter\n"));
        assert_eq!(m.snapshot().dropped(), 1);
    }
}
