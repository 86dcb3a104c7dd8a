//! A fleet split over several processes, and when a run's phases end.
//!
//! One process may hold only as many sockets as its open-file limit allows (20,000 on the shared
//! benchmark machines, two per device), so `loadgen devices --processes N` (or the automatic
//! choice, [`processes_for`]) starts N worker processes, each with a contiguous slice of the
//! device indices ([`partition`]) and its share of the ramp. Every second each worker prints its
//! [`FleetSample`] as one JSON line; the parent adds them up ([`sum_samples`]), samples the
//! server itself, and decides when the run ends ([`Phases`]). When stdin closes, a worker stops
//! and writes a [`WorkerResult`]; the parent merges them into one outcome ([`merge`]), with
//! every device's online time on the parent's clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{FleetOutcome, FleetSample};
use crate::procstat::ProcSample;

/// Descriptors a loadgen process keeps for itself beyond its devices' sockets (the executor's
/// rings and eventfds, the identity cache, stdio, streams started on demand).
pub const FD_HEADROOM: u64 = 512;

/// Processes needed for `devices` simulated cameras (two sockets each) under an open-file
/// limit of `fd_limit` per process: at least one.
pub fn processes_for(devices: usize, fd_limit: u64) -> usize {
    let per_process = fd_limit.saturating_sub(FD_HEADROOM).max(2) / 2;
    (devices as u64).div_ceil(per_process).max(1) as usize
}

/// Splits devices `first..first + count` into `processes` contiguous slices, sizes differing
/// by at most one: `(first index, count)` each. Slices are never empty (fewer processes than
/// asked when there are fewer devices).
pub fn partition(first: usize, count: usize, processes: usize) -> Vec<(usize, usize)> {
    let processes = processes.clamp(1, count.max(1));
    let base = count / processes;
    let extra = count % processes;
    let mut next = first;
    (0..processes)
        .map(|i| {
            let n = base + usize::from(i < extra);
            let slice = (next, n);
            next += n;
            slice
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What one worker process hands back when it stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerResult {
    /// When the worker's fleet started, microseconds since the Unix epoch (its online times
    /// count from here).
    pub started_unix_micros: u64,
    pub outcome: FleetOutcome,
    /// Each device's first-online time, seconds from the worker's start.
    pub online_at_secs: Vec<f64>,
}

/// One outcome for the whole fleet of `devices`: counters and error kinds added up, online
/// times moved to the parent's clock (`started_unix_micros`) and their percentiles recomputed.
/// Devices of a worker that left no result count as never online.
pub fn merge(
    parts: &[WorkerResult],
    started_unix_micros: u64,
    devices: usize,
) -> Option<FleetOutcome> {
    let mut merged = parts.first()?.outcome.clone();
    let mut times = Vec::new();
    let mut error_kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        let offset = (part.started_unix_micros as f64 - started_unix_micros as f64) / 1e6;
        times.extend(part.online_at_secs.iter().map(|t| t + offset));
        for (kind, n) in &part.outcome.error_kinds {
            *error_kinds.entry(kind.clone()).or_default() += n;
        }
        if i == 0 {
            continue;
        }
        let o = &part.outcome;
        // Every field listed (no `..`), so a new counter cannot be forgotten here.
        let FleetOutcome {
            devices,
            came_online: _,
            all_online_secs: _,
            online_at_secs: _,
            provisioned,
            from_cache,
            reconnects,
            errors,
            error_kinds: _,
            heartbeats,
            alarms,
            alarms_acked,
            alarms_refused,
            preview_starts,
            preview_stops,
            keyframe_requests,
            streams_started,
            frames_sent,
            media_bytes_sent,
        } = &mut merged;
        *devices += o.devices;
        *provisioned += o.provisioned;
        *from_cache += o.from_cache;
        *reconnects += o.reconnects;
        *errors += o.errors;
        *heartbeats += o.heartbeats;
        *alarms += o.alarms;
        *alarms_acked += o.alarms_acked;
        *alarms_refused += o.alarms_refused;
        *preview_starts += o.preview_starts;
        *preview_stops += o.preview_stops;
        *keyframe_requests += o.keyframe_requests;
        *streams_started += o.streams_started;
        *frames_sent += o.frames_sent;
        *media_bytes_sent += o.media_bytes_sent;
    }
    merged.error_kinds = error_kinds;
    merged.devices = merged.devices.max(devices);
    merged.set_online_times(times);
    Some(merged)
}

/// The fleet's second: the workers' latest samples added up, at the parent's `t_secs`, with
/// the server sampled by the parent. Loadgen CPU is the sum of the workers' (percent of one
/// core).
pub fn sum_samples(t_secs: f64, parts: &[FleetSample], server: Option<ProcSample>) -> FleetSample {
    let cpu: Vec<f64> = parts.iter().filter_map(|s| s.loadgen_cpu_pct).collect();
    FleetSample {
        t_secs,
        online: parts.iter().map(|s| s.online).sum(),
        started: parts.iter().map(|s| s.started).sum(),
        handshakes_per_sec: parts
            .iter()
            .map(|s| s.handshakes_per_sec)
            .fold(0.0, |a, b| a + b),
        errors_total: parts.iter().map(|s| s.errors_total).sum(),
        reconnects_total: parts.iter().map(|s| s.reconnects_total).sum(),
        streams: parts.iter().map(|s| s.streams).sum(),
        tx_bits_per_sec: parts
            .iter()
            .map(|s| s.tx_bits_per_sec)
            .fold(0.0, |a, b| a + b),
        server,
        loadgen_cpu_pct: (!cpu.is_empty()).then(|| cpu.iter().fold(0.0, |a, b| a + b)),
    }
}

/// When a device run's phases end. The ramp starts the devices; the run then waits until all
/// of them are online (at most `online_timeout` after the ramp), and from that moment stays
/// `duration` longer: the steady phase, over which the server's idle CPU is averaged. A
/// capacity planner asking for `--duration 60s` gets 60 s with the whole fleet online,
/// however long the fleet took to get there.
#[derive(Debug, Clone, PartialEq)]
pub struct Phases {
    devices: u64,
    ramp_end_secs: f64,
    online_timeout_secs: f64,
    duration_secs: f64,
    steady_from_secs: Option<f64>,
    /// Whether the steady phase began because the wait for the fleet ran out.
    timed_out: bool,
}

impl Phases {
    pub fn new(
        devices: usize,
        ramp_end_secs: f64,
        online_timeout_secs: f64,
        duration_secs: f64,
    ) -> Phases {
        Phases {
            devices: devices as u64,
            ramp_end_secs,
            online_timeout_secs,
            duration_secs,
            steady_from_secs: None,
            timed_out: false,
        }
    }

    /// Takes the sample at `t_secs` with `online` devices; returns whether the run is over.
    pub fn observe(&mut self, t_secs: f64, online: u64) -> bool {
        if self.steady_from_secs.is_none() {
            if online >= self.devices {
                self.steady_from_secs = Some(t_secs);
            } else if t_secs >= self.ramp_end_secs + self.online_timeout_secs {
                self.steady_from_secs = Some(t_secs);
                self.timed_out = true;
            }
        }
        self.steady_from_secs
            .is_some_and(|from| t_secs >= from + self.duration_secs)
    }

    /// When the steady phase began (the first sample with every device online, or the end
    /// of the wait), seconds from the start.
    pub fn steady_from_secs(&self) -> Option<f64> {
        self.steady_from_secs
    }

    /// The steady phase began without the whole fleet online.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Whether a sample at `t_secs` (covering the second before it) lies in the steady phase.
    pub fn is_steady(&self, t_secs: f64) -> bool {
        self.steady_from_secs
            .is_some_and(|from| t_secs > from + 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    #[test]
    fn processes_follow_the_descriptor_limit() {
        assert_eq!(processes_for(100, 20_000), 1);
        assert_eq!(processes_for(9_744, 20_000), 1);
        assert_eq!(processes_for(9_900, 20_000), 2);
        assert_eq!(processes_for(20_000, 20_000), 3);
        assert_eq!(processes_for(0, 20_000), 1);
        assert_eq!(
            processes_for(10, 100),
            10,
            "a tiny limit still gives a plan"
        );
    }

    #[test]
    fn partition_covers_every_device_once() {
        assert_eq!(partition(0, 9_900, 2), vec![(0, 4_950), (4_950, 4_950)]);
        assert_eq!(partition(100, 7, 3), vec![(100, 3), (103, 2), (105, 2)]);
        assert_eq!(partition(0, 2, 5), vec![(0, 1), (1, 1)]);
        assert_eq!(partition(0, 5, 1), vec![(0, 5)]);
    }

    fn outcome(devices: usize, heartbeats: u64, errors: &[(&str, usize)]) -> FleetOutcome {
        FleetOutcome {
            devices,
            came_online: 0,
            all_online_secs: None,
            online_at_secs: Percentiles::default(),
            provisioned: 0,
            from_cache: devices as u64,
            reconnects: 1,
            errors: errors.iter().map(|(_, n)| *n as u64).sum(),
            error_kinds: errors.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            heartbeats,
            alarms: 0,
            alarms_acked: 0,
            alarms_refused: 0,
            preview_starts: 0,
            preview_stops: 0,
            keyframe_requests: 0,
            streams_started: 0,
            frames_sent: 0,
            media_bytes_sent: 0,
        }
    }

    #[test]
    fn merged_outcome_adds_counters_and_shifts_online_times() {
        let parts = vec![
            WorkerResult {
                started_unix_micros: 1_000_000,
                outcome: outcome(2, 10, &[("keep-alive: closed", 1)]),
                online_at_secs: vec![1.0, 2.0],
            },
            WorkerResult {
                // Started half a second after the parent.
                started_unix_micros: 1_500_000,
                outcome: outcome(2, 5, &[("keep-alive: closed", 2), ("signalling: TLS", 1)]),
                online_at_secs: vec![3.5, 0.5],
            },
        ];
        let merged = merge(&parts, 1_000_000, 4).unwrap();
        assert_eq!(merged.devices, 4);
        assert_eq!(merged.came_online, 4);
        assert_eq!(merged.heartbeats, 15);
        assert_eq!(merged.from_cache, 4);
        assert_eq!(merged.reconnects, 2);
        assert_eq!(merged.errors, 4);
        assert_eq!(merged.error_kinds["keep-alive: closed"], 3);
        assert_eq!(merged.error_kinds["signalling: TLS"], 1);
        // Last device online at 3.5 + 0.5 s on the parent's clock.
        let all = merged.all_online_secs.unwrap();
        assert!((all - 4.0).abs() < 0.01, "{all}");
        assert_eq!(merged.online_at_secs.count, 4);
        assert!(merge(&[], 0, 4).is_none());
        // A worker lost: its devices were never online.
        let lost = merge(&parts[..1], 1_000_000, 4).unwrap();
        assert_eq!(
            (lost.devices, lost.came_online, lost.all_online_secs),
            (4, 2, None)
        );
    }

    #[test]
    fn a_part_that_missed_devices_means_not_all_online() {
        let parts = vec![
            WorkerResult {
                started_unix_micros: 0,
                outcome: outcome(2, 0, &[]),
                online_at_secs: vec![1.0, 2.0],
            },
            WorkerResult {
                started_unix_micros: 0,
                outcome: outcome(2, 0, &[]),
                online_at_secs: vec![1.0],
            },
        ];
        let merged = merge(&parts, 0, 4).unwrap();
        assert_eq!(merged.came_online, 3);
        assert_eq!(merged.all_online_secs, None);
    }

    fn sample(online: u64, cpu: Option<f64>) -> FleetSample {
        FleetSample {
            t_secs: 9.0,
            online,
            started: online + 1,
            handshakes_per_sec: 10.0,
            errors_total: 1,
            reconnects_total: 0,
            streams: 2,
            tx_bits_per_sec: 1e6,
            server: None,
            loadgen_cpu_pct: cpu,
        }
    }

    #[test]
    fn samples_add_up_at_the_parents_time() {
        let sum = sum_samples(3.0, &[sample(5, Some(20.0)), sample(7, Some(30.0))], None);
        assert_eq!(sum.t_secs, 3.0);
        assert_eq!(sum.online, 12);
        assert_eq!(sum.started, 14);
        assert_eq!(sum.handshakes_per_sec, 20.0);
        assert_eq!(sum.errors_total, 2);
        assert_eq!(sum.streams, 4);
        assert_eq!(sum.tx_bits_per_sec, 2e6);
        assert_eq!(sum.loadgen_cpu_pct, Some(50.0));
        assert_eq!(
            sum_samples(1.0, &[sample(1, None)], None).loadgen_cpu_pct,
            None
        );
    }

    #[test]
    fn duration_counts_from_all_online_not_from_the_ramp() {
        // 100 devices, ramp ends at 1 s, the fleet is online only at 12 s; 5 s of steady state.
        let mut phases = Phases::new(100, 1.0, 600.0, 5.0);
        for t in 1..12 {
            assert!(!phases.observe(t as f64, 50), "t={t}");
        }
        assert!(!phases.observe(12.0, 100));
        assert_eq!(phases.steady_from_secs(), Some(12.0));
        assert!(
            !phases.is_steady(12.0),
            "the sample that saw the last device come online"
        );
        assert!(phases.is_steady(13.0));
        // Devices dropping out later do not move the start of the steady phase.
        assert!(!phases.observe(16.0, 99));
        assert!(phases.observe(17.0, 100));
        assert!(!phases.timed_out());
    }

    #[test]
    fn a_fleet_that_never_completes_starts_the_steady_phase_at_the_timeout() {
        let mut phases = Phases::new(100, 2.0, 10.0, 3.0);
        for t in 1..12 {
            assert!(!phases.observe(t as f64, 99));
        }
        assert!(!phases.observe(12.0, 99));
        assert_eq!(phases.steady_from_secs(), Some(12.0));
        assert!(phases.timed_out());
        assert!(phases.observe(15.0, 99));
        // --duration 0: over as soon as everything is online.
        let mut now = Phases::new(10, 0.0, 60.0, 0.0);
        assert!(!now.observe(1.0, 9));
        assert!(now.observe(2.0, 10));
    }
}
