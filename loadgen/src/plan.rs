//! Capacity planning (`loadgen plan`): what hardware a deployment needs, from costs measured by
//! earlier runs on real hardware rather than from guesses. Each report is reduced to one
//! [`Observation`] (devices online, live streams, viewers, the server's CPU and memory), the
//! per-device, per-stream and per-viewer costs are fitted from them ([`CostModel::fit`]), and a
//! [`Deployment`] is priced with that model ([`CostModel::price`]). Every assumption the model
//! makes is returned with the plan, so that a planner can see what the numbers rest on.
//!
//! The maths is pure and tested here; the command only reads files and prints.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// CPU utilisation the plan aims for: the rest absorbs reconnect storms, keyframe bursts and
/// the noise of a shared host.
pub const TARGET_UTILISATION: f64 = 0.7;
/// Descriptors a server holds besides its devices, streams and viewers (listeners, store,
/// firmware files, the API's own connections).
pub const FD_MARGIN: u64 = 256;
/// Memory beyond the server's RSS that a host needs: the kernel's socket buffers, page cache
/// and the operating system. The RSS is multiplied by this and [`HOST_MEMORY_BASE_MIB`] added.
pub const MEMORY_FACTOR: f64 = 1.5;
/// See [`MEMORY_FACTOR`].
pub const HOST_MEMORY_BASE_MIB: f64 = 1024.0;

/// One measured run, reduced to what the model needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// Where it came from (the report's file name).
    pub source: String,
    pub devices: f64,
    pub streams: f64,
    pub viewers: f64,
    /// Whether the viewer count was measured (a viewers report of the same run) or assumed to
    /// be one per stream.
    pub viewers_measured: bool,
    /// Mean media bitrate of one stream, Mbit/s, as the devices sent it.
    pub stream_mbps: f64,
    /// The server's mean CPU in the steady window, percent of one core.
    pub cpu_pct: f64,
    /// The server's RSS at the end and at the first sample, MiB.
    pub rss_mib: f64,
    pub base_rss_mib: f64,
    /// Seconds until every device had been online, if they all came online.
    pub all_online_secs: Option<f64>,
}

/// A report that cannot be used, and why (the operator's input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error("{report}: not a loadgen devices or viewers report ({why})")]
    NotAReport { report: String, why: String },
    #[error("{report}: the run sampled no server (give --server-pid when measuring)")]
    NoServerSamples { report: String },
    #[error("no devices report among the inputs: the plan needs at least one run of `loadgen devices --server-pid …`")]
    NoDevicesReport,
    #[error("no run with idle devices only (0 streams): the per-device cost cannot be separated from the streams' cost")]
    NoIdleRun,
    #[error("no run with live streams: the per-stream cost is unknown (run `loadgen devices` with `loadgen viewers` beside it)")]
    NoStreamRun,
}

/// A `loadgen viewers` report, kept until it is matched with the devices run it overlaps.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewersRun {
    pub source: String,
    pub started_unix_secs: f64,
    pub duration_secs: f64,
    pub viewers_played: f64,
}

/// What one report file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportKind {
    Devices {
        observation: Observation,
        started_unix_secs: f64,
        duration_secs: f64,
    },
    Viewers(ViewersRun),
}

fn number(value: &Value, path: &[&str]) -> Option<f64> {
    let mut at = value;
    for key in path {
        at = at.get(key)?;
    }
    at.as_f64()
}

/// Reads one JSON report of `loadgen devices` or `loadgen viewers`.
pub fn read_report(source: &str, json: &Value) -> Result<ReportKind, PlanError> {
    let not_a_report = |why: &str| PlanError::NotAReport {
        report: source.to_owned(),
        why: why.to_owned(),
    };
    if json.get("outcome").is_some() {
        let samples = json
            .get("samples")
            .and_then(Value::as_array)
            .ok_or_else(|| not_a_report("no samples"))?;
        let with_server: Vec<&Value> = samples
            .iter()
            .filter(|s| s.get("server").is_some_and(|v| !v.is_null()))
            .collect();
        let (Some(first), Some(last)) = (with_server.first(), with_server.last()) else {
            return Err(PlanError::NoServerSamples {
                report: source.to_owned(),
            });
        };
        let end_secs = number(last, &["t_secs"]).unwrap_or(0.0);
        // The steady window: with streams, the samples at the plateau of the stream count
        // (viewers start after the devices and stop before them); without, the second half of
        // the run, after ramp-up.
        let streams_of = |s: &Value| number(s, &["streams"]).unwrap_or(0.0);
        let peak_streams = with_server
            .iter()
            .map(|s| streams_of(s))
            .fold(0.0, f64::max);
        let steady: Vec<&&Value> = with_server
            .iter()
            .filter(|s| {
                if peak_streams > 0.0 {
                    streams_of(s) >= 0.95 * peak_streams
                } else {
                    number(s, &["t_secs"]).unwrap_or(0.0) >= end_secs / 2.0
                }
            })
            .collect();
        let mean = |path: &[&str]| {
            let values: Vec<f64> = steady.iter().filter_map(|s| number(s, path)).collect();
            if values.is_empty() {
                0.0
            } else {
                values.iter().sum::<f64>() / values.len() as f64
            }
        };
        let streams = mean(&["streams"]).round();
        let tx_mbps = mean(&["tx_bits_per_sec"]) / 1e6;
        let mib = |s: &Value| number(s, &["server", "rss_bytes"]).unwrap_or(0.0) / 1048576.0;
        let observation = Observation {
            source: source.to_owned(),
            devices: number(json, &["outcome", "came_online"])
                .ok_or_else(|| not_a_report("no outcome.came_online"))?,
            streams,
            viewers: streams,
            viewers_measured: false,
            stream_mbps: if streams > 0.0 {
                tx_mbps / streams
            } else {
                0.0
            },
            cpu_pct: mean(&["server", "cpu_pct"]),
            // Memory at its highest in the steady window (the allocator keeps what it had).
            rss_mib: steady.iter().map(|s| mib(s)).fold(mib(last), f64::max),
            base_rss_mib: number(json, &["server_rss_at_start_bytes"])
                .map(|b| b / 1048576.0)
                .unwrap_or_else(|| mib(first)),
            all_online_secs: number(json, &["outcome", "all_online_secs"]),
        };
        return Ok(ReportKind::Devices {
            observation,
            started_unix_secs: number(json, &["started_unix_secs"]).unwrap_or(0.0),
            duration_secs: end_secs,
        });
    }
    if json.get("summary").is_some() {
        return Ok(ReportKind::Viewers(ViewersRun {
            source: source.to_owned(),
            started_unix_secs: number(json, &["started_unix_secs"]).unwrap_or(0.0),
            duration_secs: number(json, &["config", "duration_secs"]).unwrap_or(0.0),
            viewers_played: number(json, &["summary", "viewers_played"])
                .ok_or_else(|| not_a_report("no summary.viewers_played"))?,
        }));
    }
    Err(not_a_report("neither `outcome` nor `summary`"))
}

/// Pairs each viewers run with the devices run it overlaps in time (the same measurement: the
/// devices stream because those viewers play them) and returns the observations.
pub fn observations(reports: Vec<ReportKind>) -> Result<Vec<Observation>, PlanError> {
    let mut devices = Vec::new();
    let mut viewers = Vec::new();
    for report in reports {
        match report {
            ReportKind::Devices {
                observation,
                started_unix_secs,
                duration_secs,
            } => devices.push((observation, started_unix_secs, duration_secs)),
            ReportKind::Viewers(run) => viewers.push(run),
        }
    }
    if devices.is_empty() {
        return Err(PlanError::NoDevicesReport);
    }
    for run in viewers {
        let overlap = |(_, start, duration): &(Observation, f64, f64)| {
            let end = start + duration;
            let run_end = run.started_unix_secs + run.duration_secs;
            (end.min(run_end) - start.max(run.started_unix_secs)).max(0.0)
        };
        let best = devices
            .iter_mut()
            .filter(|d| d.0.streams > 0.0)
            .max_by(|a, b| overlap(a).total_cmp(&overlap(b)));
        if let Some(device_run) = best {
            if overlap(device_run) > 0.0 {
                let observation = &mut device_run.0;
                if !observation.viewers_measured {
                    observation.viewers = 0.0;
                }
                observation.viewers += run.viewers_played;
                observation.viewers_measured = true;
            }
        }
    }
    Ok(devices.into_iter().map(|(o, _, _)| o).collect())
}

/// The fitted unit costs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostModel {
    /// CPU per online device (keep-alive, signalling, heartbeats), percent of one core.
    pub cpu_pct_per_device: f64,
    /// Memory per online device (both links, TLS state), KiB.
    pub kib_per_device: f64,
    /// CPU per Mbit/s of stream ingest (device -> server, decryption, packetization).
    pub cpu_pct_per_ingest_mbps: f64,
    /// CPU per Mbit/s sent to viewers.
    pub cpu_pct_per_egress_mbps: f64,
    /// Memory per Mbit/s of live stream (GOP cache, ring, buffers), MiB.
    pub mib_per_stream_mbps: f64,
    /// The server's RSS with nothing connected, MiB.
    pub base_rss_mib: f64,
    /// Devices per second coming online in the fastest measured run (whole server).
    pub online_per_sec: Option<f64>,
    /// What the model assumes beyond what was measured.
    pub assumptions: Vec<String>,
    pub observations: Vec<Observation>,
}

impl CostModel {
    /// Fits the unit costs: per-device costs from the runs without streams, then the streams'
    /// CPU (ingest and egress per Mbit/s, least squares over the runs with streams) and memory
    /// from what is left of each run once its devices are paid for.
    pub fn fit(observations: Vec<Observation>) -> Result<CostModel, PlanError> {
        let mut assumptions = Vec::new();
        let idle: Vec<&Observation> = observations
            .iter()
            .filter(|o| o.streams == 0.0 && o.devices > 0.0)
            .collect();
        if idle.is_empty() {
            return Err(PlanError::NoIdleRun);
        }
        let idle_devices: f64 = idle.iter().map(|o| o.devices).sum();
        let cpu_pct_per_device = idle.iter().map(|o| o.cpu_pct).sum::<f64>() / idle_devices;
        let kib_per_device = (idle
            .iter()
            .map(|o| (o.rss_mib - o.base_rss_mib).max(0.0))
            .sum::<f64>()
            * 1024.0
            / idle_devices)
            .max(0.0);
        // The freshest server's memory is the base: a relay that carried an earlier run holds
        // more before its devices connect, and that surplus is charged to its streams.
        let base_rss_mib = observations
            .iter()
            .map(|o| o.base_rss_mib)
            .fold(f64::INFINITY, f64::min);
        for o in &observations {
            if o.base_rss_mib > base_rss_mib * 1.2 + 8.0 {
                assumptions.push(format!(
                    "{} started on a relay already holding {:.0} MiB (the freshest held {:.0} MiB): its memory per stream reads high; restart the relay before each run",
                    o.source, o.base_rss_mib, base_rss_mib
                ));
            }
        }

        let streaming: Vec<&Observation> = observations
            .iter()
            .filter(|o| o.streams > 0.0 && o.stream_mbps > 0.0)
            .collect();
        if streaming.is_empty() {
            return Err(PlanError::NoStreamRun);
        }
        if streaming.iter().any(|o| !o.viewers_measured) {
            assumptions.push(
                "runs without a viewers report are taken to have had one viewer per stream"
                    .to_owned(),
            );
        }
        // Rows: ingest Mbit/s, egress Mbit/s -> CPU left after the devices.
        let rows: Vec<(f64, f64, f64)> = streaming
            .iter()
            .map(|o| {
                (
                    o.streams * o.stream_mbps,
                    o.viewers * o.stream_mbps,
                    (o.cpu_pct - o.devices * cpu_pct_per_device).max(0.0),
                )
            })
            .collect();
        let (ingest, egress) = fit_two(&rows).unwrap_or_else(|| {
            assumptions.push(
                "every run had the same viewers per stream, so a viewer's Mbit/s is taken to cost as much CPU as a stream's ingest (conservative: sending is cheaper than receiving and decrypting); a fan-out run (1 stream, many viewers) separates them"
                    .to_owned(),
            );
            let total: f64 = rows.iter().map(|r| r.0 + r.1).sum();
            let cpu: f64 = rows.iter().map(|r| r.2).sum();
            let per = if total > 0.0 { cpu / total } else { 0.0 };
            (per, per)
        });
        let stream_mbps: f64 = streaming.iter().map(|o| o.streams * o.stream_mbps).sum();
        let stream_mib: f64 = streaming
            .iter()
            .map(|o| (o.rss_mib - base_rss_mib - o.devices * kib_per_device / 1024.0).max(0.0))
            .sum();
        assumptions.push(
            "a stream's memory grows with its bitrate (the cached group of pictures does); viewers add no memory of their own (they reference the stream's buffers)"
                .to_owned(),
        );
        assumptions.push(
            "CPU grows linearly with devices and Mbit/s, and divides over cores (one shard per core, devices spread by UID hash)"
                .to_owned(),
        );
        let online_per_sec = observations
            .iter()
            .filter_map(|o| o.all_online_secs.map(|s| o.devices / s.max(0.001)))
            .fold(None, |best: Option<f64>, rate| {
                Some(best.map_or(rate, |b| b.max(rate)))
            });
        Ok(CostModel {
            cpu_pct_per_device,
            kib_per_device,
            cpu_pct_per_ingest_mbps: ingest,
            cpu_pct_per_egress_mbps: egress,
            mib_per_stream_mbps: stream_mib / stream_mbps,
            base_rss_mib,
            online_per_sec,
            assumptions,
            observations,
        })
    }

    /// What `deployment` needs under this model.
    pub fn price(&self, deployment: &Deployment) -> Plan {
        let d = deployment;
        let ingest_mbps = d.streams as f64 * d.bitrate_mbps;
        let egress_mbps = d.viewers as f64 * d.bitrate_mbps;
        let cpu_pct = d.devices as f64 * self.cpu_pct_per_device
            + ingest_mbps * self.cpu_pct_per_ingest_mbps
            + egress_mbps * self.cpu_pct_per_egress_mbps;
        let cores_busy = cpu_pct / 100.0;
        // (A hair below an integer is that integer: 4.2 / 0.7 is 6.000000000000001 in floats.)
        let cores = (cores_busy / TARGET_UTILISATION - 1e-9).ceil().max(1.0) as u32;
        let rss_mib = self.base_rss_mib
            + d.devices as f64 * self.kib_per_device / 1024.0
            + ingest_mbps * self.mib_per_stream_mbps;
        let memory_gib = ((rss_mib * MEMORY_FACTOR + HOST_MEMORY_BASE_MIB) / 1024.0).ceil() as u32;
        let descriptors = 2 * d.devices + d.streams + d.viewers + FD_MARGIN;
        Plan {
            deployment: d.clone(),
            cpu_cores_busy: cores_busy,
            cores,
            utilisation_on_given_cores: d.cores.map(|c| cores_busy / c.max(1) as f64),
            server_rss_mib: rss_mib,
            memory_gib,
            descriptors,
            ingress_mbps: ingest_mbps,
            egress_mbps,
            all_online_secs: self.online_per_sec.map(|rate| d.devices as f64 / rate),
        }
    }
}

/// Least squares for `r = a·x + b·y` over `rows` of (x, y, r); None when the rows do not
/// separate a from b (all in the same proportion) or a cost comes out negative (noise).
fn fit_two(rows: &[(f64, f64, f64)]) -> Option<(f64, f64)> {
    let (mut xx, mut xy, mut yy, mut xr, mut yr) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y, r) in rows {
        xx += x * x;
        xy += x * y;
        yy += y * y;
        xr += x * r;
        yr += y * r;
    }
    let det = xx * yy - xy * xy;
    // Relative test: near-proportional rows make det tiny against its terms.
    if det.abs() <= 1e-6 * (xx * yy).max(f64::MIN_POSITIVE) {
        return None;
    }
    let a = (xr * yy - yr * xy) / det;
    let b = (yr * xx - xr * xy) / det;
    (a >= 0.0 && b >= 0.0).then_some((a, b))
}

/// What is to be deployed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub devices: u64,
    pub streams: u64,
    pub viewers: u64,
    pub bitrate_mbps: f64,
    /// Cores of the host in mind, if any.
    pub cores: Option<u32>,
}

/// The priced deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub deployment: Deployment,
    /// CPU the load keeps busy, in cores.
    pub cpu_cores_busy: f64,
    /// Cores to provision (at [`TARGET_UTILISATION`]).
    pub cores: u32,
    /// Busy fraction of the cores given with `--cores`.
    pub utilisation_on_given_cores: Option<f64>,
    pub server_rss_mib: f64,
    /// Host memory to provision.
    pub memory_gib: u32,
    /// Open files the server needs (its `LimitNOFILE`).
    pub descriptors: u64,
    pub ingress_mbps: f64,
    pub egress_mbps: f64,
    /// Time for every device to come online at once at the fastest measured rate.
    pub all_online_secs: Option<f64>,
}

/// The plan and the model behind it, for a terminal.
pub fn render_text(model: &CostModel, plan: &Plan) -> String {
    let mut out = String::new();
    let d = &plan.deployment;
    let _ = writeln!(
        out,
        "deployment: {} devices, {} live streams at {:.2} Mbit/s, {} viewers",
        d.devices, d.streams, d.bitrate_mbps, d.viewers
    );
    let _ = writeln!(
        out,
        "measured costs (from {} runs):",
        model.observations.len()
    );
    for o in &model.observations {
        let _ = writeln!(
            out,
            "  {}: {} devices, {} streams x {:.2} Mbit/s, {} viewers{} -> CPU {:.1}%, RSS {:.0} MiB (base {:.0})",
            o.source,
            o.devices,
            o.streams,
            o.stream_mbps,
            o.viewers,
            if o.viewers_measured { "" } else { " (assumed)" },
            o.cpu_pct,
            o.rss_mib,
            o.base_rss_mib
        );
    }
    let _ = writeln!(
        out,
        "  per device: {:.4}% of a core, {:.1} KiB",
        model.cpu_pct_per_device, model.kib_per_device
    );
    let _ = writeln!(
        out,
        "  per Mbit/s: ingest {:.3}% of a core, egress {:.3}% of a core, {:.2} MiB of stream memory",
        model.cpu_pct_per_ingest_mbps, model.cpu_pct_per_egress_mbps, model.mib_per_stream_mbps
    );
    let _ = writeln!(out, "needs:");
    let _ = writeln!(
        out,
        "  CPU:     {:.2} cores busy -> {} cores at {:.0}% utilisation",
        plan.cpu_cores_busy,
        plan.cores,
        TARGET_UTILISATION * 100.0
    );
    if let (Some(cores), Some(u)) = (d.cores, plan.utilisation_on_given_cores) {
        let verdict = if u <= TARGET_UTILISATION {
            "fits"
        } else if u <= 1.0 {
            "fits without headroom"
        } else {
            "does NOT fit"
        };
        let _ = writeln!(
            out,
            "           on {cores} cores: {:.0}% busy, {verdict}",
            u * 100.0
        );
    }
    let _ = writeln!(
        out,
        "  memory:  server RSS {:.0} MiB -> {} GiB host memory (RSS x {MEMORY_FACTOR} + {:.0} GiB for kernel buffers and OS)",
        plan.server_rss_mib,
        plan.memory_gib,
        HOST_MEMORY_BASE_MIB / 1024.0
    );
    let _ = writeln!(
        out,
        "  files:   {} open descriptors (2 per device, 1 per stream and viewer, {FD_MARGIN} spare): set LimitNOFILE (tuning.md)",
        plan.descriptors
    );
    let _ = writeln!(
        out,
        "  network: {:.0} Mbit/s in, {:.0} Mbit/s out",
        plan.ingress_mbps, plan.egress_mbps
    );
    if let Some(secs) = plan.all_online_secs {
        let _ = writeln!(
            out,
            "  restart: all devices online in about {secs:.0} s at the fastest measured rate ({:.0} devices/s)",
            model.online_per_sec.unwrap_or(0.0)
        );
    }
    let _ = writeln!(out, "assumptions:");
    for a in &model.assumptions {
        let _ = writeln!(out, "  - {a}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(devices: f64, streams: f64, viewers: f64, cpu: f64, rss: f64) -> Observation {
        Observation {
            source: "test".into(),
            devices,
            streams,
            viewers,
            viewers_measured: true,
            stream_mbps: if streams > 0.0 { 2.0 } else { 0.0 },
            cpu_pct: cpu,
            rss_mib: rss,
            base_rss_mib: 10.0,
            all_online_secs: Some(devices / 500.0),
        }
    }

    /// Runs made up from known unit costs give those costs back, and the price adds them up.
    #[test]
    fn fit_recovers_the_unit_costs_and_price_adds_them_up() {
        // 0.002 %/device, 32 KiB/device; ingest 0.1 %/Mbit/s, egress 0.05 %/Mbit/s,
        // 0.5 MiB per stream Mbit/s; base 10 MiB.
        let cpu = |d: f64, s: f64, v: f64| d * 0.002 + s * 2.0 * 0.1 + v * 2.0 * 0.05;
        let rss = |d: f64, s: f64| 10.0 + d * 32.0 / 1024.0 + s * 2.0 * 0.5;
        let runs = vec![
            observation(5000.0, 0.0, 0.0, cpu(5000.0, 0.0, 0.0), rss(5000.0, 0.0)),
            observation(
                1000.0,
                100.0,
                100.0,
                cpu(1000.0, 100.0, 100.0),
                rss(1000.0, 100.0),
            ),
            observation(
                1000.0,
                10.0,
                500.0,
                cpu(1000.0, 10.0, 500.0),
                rss(1000.0, 10.0),
            ),
        ];
        let model = CostModel::fit(runs).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
        assert!(close(model.cpu_pct_per_device, 0.002), "{model:?}");
        assert!(close(model.kib_per_device, 32.0), "{model:?}");
        assert!(close(model.cpu_pct_per_ingest_mbps, 0.1), "{model:?}");
        assert!(close(model.cpu_pct_per_egress_mbps, 0.05), "{model:?}");
        assert!(close(model.mib_per_stream_mbps, 0.5), "{model:?}");
        assert!(close(model.online_per_sec.unwrap(), 500.0));

        let plan = model.price(&Deployment {
            devices: 10_000,
            streams: 1_000,
            viewers: 2_000,
            bitrate_mbps: 2.0,
            cores: Some(2),
        });
        // 20 + 200 + 200 = 420 % of a core: 4.2 cores busy, 6 cores at 70 %.
        assert!(close(plan.cpu_cores_busy, 4.2), "{plan:?}");
        assert_eq!(plan.cores, 6);
        assert!(close(plan.utilisation_on_given_cores.unwrap(), 2.1));
        // 10 + 312.5 + 1000 MiB.
        assert!(close(plan.server_rss_mib, 1322.5), "{plan:?}");
        assert_eq!(plan.memory_gib, 3); // (1322.5 * 1.5 + 1024) / 1024 = 2.94
        assert_eq!(plan.descriptors, 20_000 + 1_000 + 2_000 + FD_MARGIN);
        assert!(close(plan.ingress_mbps, 2000.0) && close(plan.egress_mbps, 4000.0));
        assert!(close(plan.all_online_secs.unwrap(), 20.0));
        let text = render_text(&model, &plan);
        assert!(text.contains("does NOT fit"), "{text}");
    }

    /// With every run at one viewer per stream the split cannot be measured: the model says
    /// so and charges viewers like ingest.
    #[test]
    fn one_viewer_per_stream_everywhere_is_an_assumption() {
        let runs = vec![
            observation(1000.0, 0.0, 0.0, 2.0, 42.0),
            observation(1000.0, 100.0, 100.0, 2.0 + 60.0, 400.0),
            observation(1000.0, 50.0, 50.0, 2.0 + 30.0, 200.0),
        ];
        let model = CostModel::fit(runs).unwrap();
        // 60 % over 200 + 200 Mbit/s.
        assert!(
            (model.cpu_pct_per_ingest_mbps - 0.15).abs() < 1e-9,
            "{model:?}"
        );
        assert_eq!(model.cpu_pct_per_ingest_mbps, model.cpu_pct_per_egress_mbps);
        assert!(model.assumptions.iter().any(|a| a.contains("fan-out")));
    }

    #[test]
    fn a_model_needs_an_idle_run_and_a_streaming_run() {
        let streaming = observation(1000.0, 100.0, 100.0, 50.0, 300.0);
        let idle = observation(1000.0, 0.0, 0.0, 2.0, 42.0);
        assert_eq!(
            CostModel::fit(vec![streaming]).unwrap_err(),
            PlanError::NoIdleRun
        );
        assert_eq!(
            CostModel::fit(vec![idle]).unwrap_err(),
            PlanError::NoStreamRun
        );
    }

    /// Reports as `loadgen devices` and `loadgen viewers` write them: the viewers run is paired
    /// with the devices run it overlaps.
    #[test]
    fn reports_become_observations() {
        let sample = |t: f64, streams: u64, cpu: f64, rss_mib: u64| {
            serde_json::json!({
                "t_secs": t, "online": 100, "started": 100, "handshakes_per_sec": 0.0,
                "errors_total": 0, "reconnects_total": 0, "streams": streams,
                "tx_bits_per_sec": streams as f64 * 2e6,
                "server": {"cpu_pct": cpu, "threads": {}, "rss_bytes": rss_mib * 1048576},
                "loadgen_cpu_pct": 5.0
            })
        };
        let devices = serde_json::json!({
            "started_unix_secs": 1000,
            "server_rss_at_start_bytes": 18 * 1048576,
            "outcome": {"devices": 100, "came_online": 100, "all_online_secs": 2.0},
            "samples": [sample(1.0, 0, 90.0, 20), sample(5.0, 10, 30.0, 50),
                        sample(10.0, 10, 32.0, 52)]
        });
        let viewers = serde_json::json!({
            "started_unix_secs": 1003,
            "config": {"duration_secs": 6.0},
            "summary": {"viewers_played": 20}
        });
        let other = serde_json::json!({"started_unix_secs": 5000, "config": {"duration_secs": 6.0},
                                       "summary": {"viewers_played": 7}});
        let reports = vec![
            read_report("d.json", &devices).unwrap(),
            read_report("v.json", &viewers).unwrap(),
            read_report("other.json", &other).unwrap(),
        ];
        let observations = observations(reports).unwrap();
        assert_eq!(observations.len(), 1);
        let o = &observations[0];
        assert_eq!((o.devices, o.streams, o.viewers), (100.0, 10.0, 20.0));
        assert!(o.viewers_measured);
        assert!((o.stream_mbps - 2.0).abs() < 1e-9);
        assert!((o.cpu_pct - 31.0).abs() < 1e-9, "steady half only: {o:?}");
        // The baseline read before the first device, not the first sample.
        assert_eq!((o.base_rss_mib, o.rss_mib), (18.0, 52.0));
        assert!(matches!(
            read_report("x.json", &serde_json::json!({"a": 1})),
            Err(PlanError::NotAReport { .. })
        ));
        let no_server = serde_json::json!({"outcome": {"came_online": 1}, "samples": []});
        assert!(matches!(
            read_report("y.json", &no_server),
            Err(PlanError::NoServerSamples { .. })
        ));
    }
}
