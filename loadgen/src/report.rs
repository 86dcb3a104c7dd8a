//! What a load run measured, in the three forms people use: a JSON report for tools and
//! capacity planning, a human summary, and pass/fail targets (`--expect loss=0,ttfk-p99<500ms`)
//! that make the exit code meaningful in CI and in scripts. The maths (percentiles, steady-state
//! windows, target evaluation) is pure and tested here; the run itself lives elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::ProcSample;

/// Percentiles of one measured quantity, in the unit the field name says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Reads a histogram, dividing every value by `divisor` (e.g. 1000 for µs recorded, ms
    /// reported).
    pub fn from_histogram(histogram: &Histogram<u64>, divisor: f64) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        // hdrhistogram answers with the top of a value's bucket; the bucket's middle is closer.
        let at =
            |q: f64| histogram.median_equivalent(histogram.value_at_quantile(q)) as f64 / divisor;
        Percentiles {
            count: histogram.len(),
            mean: histogram.mean() / divisor,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.median_equivalent(histogram.max()) as f64 / divisor,
        }
    }
}

/// A histogram for durations in microseconds, up to an hour, 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// How a viewer's session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "reason")]
pub enum ViewerEnd {
    /// Still playing when the run ended (the good outcome).
    RunEnded,
    /// Was playing, then the server closed the connection or it broke.
    Disconnected(String),
    /// Never got to PLAY: connection refused, an RTSP error status, a timeout...
    Failed(String),
}

/// One viewer's measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewerRecord {
    pub id: usize,
    /// From starting the connection to the PLAY response.
    pub setup_us: Option<u64>,
    /// From starting the connection to the first packet of a video keyframe.
    pub ttfk_us: Option<u64>,
    /// Bytes received on the connection (RTSP and interleaved frames, with their headers).
    pub bytes: u64,
    /// RTP packets received (all tracks).
    pub packets: u64,
    /// RTP packets missing from the sequence numbers (all tracks).
    pub lost: u64,
    /// Packets that arrived with an older sequence number than one already seen.
    pub late: u64,
    /// Times a track's numbering started again (the publisher restarted with a new SSRC).
    pub restarts: u64,
    /// Time from the PLAY response to the end of the session.
    pub playing_secs: f64,
    pub end: ViewerEnd,
    /// End-to-end frame latency (camera send time in the frame's SEI stamp to arrival), µs;
    /// only for streams that carry stamps (loadgen's devices). Summed up in the summary.
    #[serde(skip)]
    pub latency_us: Option<Histogram<u64>>,
}

/// The whole load, once per sampling period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_secs: f64,
    /// Viewers connected and past PLAY.
    pub viewers_playing: u64,
    /// Viewers that have seen a keyframe.
    pub viewers_with_keyframe: u64,
    /// Bytes per second received by all viewers together, times 8.
    pub rx_bits_per_sec: f64,
    pub rx_packets_per_sec: f64,
    /// Totals so far.
    pub lost_total: u64,
    pub disconnects_total: u64,
    /// The server's CPU and memory (when its PID was given).
    pub server: Option<ProcSample>,
    /// The load generator's own CPU (its viewers compete with the server for the same cores).
    pub loadgen_cpu_pct: Option<f64>,
}

/// The server's resource use over the steady part of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSummary {
    /// Mean CPU in percent of one core.
    pub cpu_pct_mean: f64,
    /// Mean CPU per thread (per shard for a thread-per-core server), percent of one core.
    pub threads_cpu_pct_mean: BTreeMap<String, f64>,
    pub rss_mb_max: f64,
    pub rss_mb_end: f64,
    /// Open file descriptors, most and at the end (a leak shows as an end above the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_fds_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_fds_end: Option<u64>,
}

impl ServerSummary {
    /// Means over the `steady` samples; the RSS maximum over `all`.
    pub fn from_samples(steady: &[&ProcSample], all: &[&ProcSample]) -> Option<ServerSummary> {
        if steady.is_empty() {
            return None;
        }
        let mut threads: BTreeMap<String, f64> = BTreeMap::new();
        for sample in steady {
            for (name, pct) in &sample.threads {
                *threads.entry(name.clone()).or_default() += pct;
            }
        }
        let rss_mb = |s: &ProcSample| s.rss_bytes as f64 / (1024.0 * 1024.0);
        let n = steady.len() as f64;
        Some(ServerSummary {
            cpu_pct_mean: steady.iter().map(|s| s.cpu_pct).sum::<f64>() / n,
            // A thread that lived for part of the window counts as idle for the rest.
            threads_cpu_pct_mean: threads
                .into_iter()
                .map(|(name, sum)| (name, sum / n))
                .collect(),
            rss_mb_max: all.iter().map(|s| rss_mb(s)).fold(0.0, f64::max),
            rss_mb_end: steady.last().map(|s| rss_mb(s)).unwrap_or(0.0),
            open_fds_max: all.iter().filter_map(|s| s.open_fds).max(),
            open_fds_end: steady.last().and_then(|s| s.open_fds),
        })
    }
}

/// Aggregates of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub viewers_requested: usize,
    pub viewers_played: usize,
    pub viewers_failed: usize,
    pub viewers_with_keyframe: usize,
    pub disconnects: usize,
    pub setup_ms: Percentiles,
    pub ttfk_ms: Percentiles,
    /// End-to-end frame latency from the devices' SEI stamps (same host clock), ms.
    pub latency_ms: Percentiles,
    /// Mean bitrate of each viewer over its playing time, Mbit/s.
    pub viewer_mbps: Percentiles,
    pub bytes: u64,
    pub packets: u64,
    pub lost_packets: u64,
    pub late_packets: u64,
    /// Sequence restarts seen by all viewers together (publisher restarts times viewers).
    pub sequence_restarts: u64,
    /// lost / (received + lost).
    pub loss_ratio: f64,
    /// Seconds (from the start) after which every viewer had been started, plus a settling
    /// margin; the steady means below use samples after it.
    pub steady_from_secs: f64,
    /// Mean received Gbit/s (all viewers) in the steady window.
    pub steady_gbps: f64,
    pub peak_gbps: f64,
    pub steady_packets_per_sec: f64,
    pub server: Option<ServerSummary>,
    pub loadgen_cpu_pct_mean: Option<f64>,
}

/// Seconds after the last viewer started before the steady window opens: right after a ramp the
/// new viewers catch up on the cached GOP and the rate overshoots (by 20 % at 1000 viewers).
pub const SETTLE_SECS: f64 = 4.0;

impl Summary {
    /// Aggregates viewer records and samples; `ramp_end_secs` is when the last viewer was due.
    pub fn compute(
        viewers_requested: usize,
        records: &[ViewerRecord],
        samples: &[Sample],
        ramp_end_secs: f64,
    ) -> Summary {
        let mut setup = micros_histogram();
        let mut ttfk = micros_histogram();
        let mut latency = micros_histogram();
        // Bitrates in kbit/s, up to 100 Gbit/s.
        let mut kbps =
            Histogram::<u64>::new_with_bounds(1, 100_000_000, 3).expect("static bounds are valid");
        let (mut bytes, mut packets, mut lost, mut late) = (0u64, 0u64, 0u64, 0u64);
        let mut restarts = 0u64;
        let (mut played, mut failed, mut with_keyframe, mut disconnects) = (0, 0, 0, 0);
        for record in records {
            bytes += record.bytes;
            packets += record.packets;
            lost += record.lost;
            late += record.late;
            restarts += record.restarts;
            if let Some(us) = record.setup_us {
                played += 1;
                setup.saturating_record(us.max(1));
            }
            if let Some(h) = &record.latency_us {
                let _ = latency.add(h);
            }
            if let Some(us) = record.ttfk_us {
                with_keyframe += 1;
                ttfk.saturating_record(us.max(1));
            }
            match record.end {
                ViewerEnd::Failed(_) => failed += 1,
                ViewerEnd::Disconnected(_) => disconnects += 1,
                ViewerEnd::RunEnded => {}
            }
            if record.playing_secs > 0.5 {
                let rate = record.bytes as f64 * 8.0 / record.playing_secs / 1000.0;
                kbps.saturating_record((rate as u64).max(1));
            }
        }
        let steady_from_secs = ramp_end_secs + SETTLE_SECS;
        let steady: Vec<&Sample> = {
            let after: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.t_secs >= steady_from_secs)
                .collect();
            if after.is_empty() {
                samples.iter().collect()
            } else {
                after
            }
        };
        let mean = |values: &mut dyn Iterator<Item = f64>| {
            let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
            if n == 0 {
                0.0
            } else {
                sum / n as f64
            }
        };
        let steady_gbps = mean(&mut steady.iter().map(|s| s.rx_bits_per_sec)) / 1e9;
        let steady_packets_per_sec = mean(&mut steady.iter().map(|s| s.rx_packets_per_sec));
        let peak_gbps = samples
            .iter()
            .map(|s| s.rx_bits_per_sec / 1e9)
            .fold(0.0, f64::max);
        let server_samples: Vec<&ProcSample> =
            steady.iter().filter_map(|s| s.server.as_ref()).collect();
        let all_server: Vec<&ProcSample> =
            samples.iter().filter_map(|s| s.server.as_ref()).collect();
        let server = ServerSummary::from_samples(&server_samples, &all_server);
        let loadgen: Vec<f64> = steady.iter().filter_map(|s| s.loadgen_cpu_pct).collect();
        Summary {
            viewers_requested,
            viewers_played: played,
            viewers_failed: failed,
            viewers_with_keyframe: with_keyframe,
            disconnects,
            setup_ms: Percentiles::from_histogram(&setup, 1000.0),
            ttfk_ms: Percentiles::from_histogram(&ttfk, 1000.0),
            latency_ms: Percentiles::from_histogram(&latency, 1000.0),
            viewer_mbps: Percentiles::from_histogram(&kbps, 1000.0),
            bytes,
            packets,
            lost_packets: lost,
            late_packets: late,
            sequence_restarts: restarts,
            loss_ratio: if packets + lost == 0 {
                0.0
            } else {
                lost as f64 / (packets + lost) as f64
            },
            steady_from_secs,
            steady_gbps,
            peak_gbps,
            steady_packets_per_sec,
            server,
            loadgen_cpu_pct_mean: (!loadgen.is_empty()).then(|| mean(&mut loadgen.iter().copied())),
        }
    }

    /// A few lines for a terminal.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let p = |p: &Percentiles| {
            format!(
                "p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
                p.p50, p.p90, p.p99, p.p999, p.max
            )
        };
        let _ = writeln!(
            out,
            "viewers: {} requested, {} played, {} failed, {} with keyframe, {} disconnected",
            self.viewers_requested,
            self.viewers_played,
            self.viewers_failed,
            self.viewers_with_keyframe,
            self.disconnects
        );
        let _ = writeln!(out, "setup ms:            {}", p(&self.setup_ms));
        let _ = writeln!(out, "time to keyframe ms: {}", p(&self.ttfk_ms));
        if self.latency_ms.count > 0 {
            let _ = writeln!(
                out,
                "frame latency ms:    {} ({} frames)",
                p(&self.latency_ms),
                self.latency_ms.count
            );
        }
        let _ = writeln!(out, "viewer Mbit/s:       {}", p(&self.viewer_mbps));
        let _ = writeln!(
            out,
            "received: {} packets, {} lost ({:.4}%), {} late, {} sequence restarts; steady {:.3} Gbit/s ({:.0} packets/s), peak {:.3} Gbit/s",
            self.packets,
            self.lost_packets,
            self.loss_ratio * 100.0,
            self.late_packets,
            self.sequence_restarts,
            self.steady_gbps,
            self.steady_packets_per_sec,
            self.peak_gbps
        );
        if let Some(server) = &self.server {
            let threads: Vec<String> = server
                .threads_cpu_pct_mean
                .iter()
                .filter(|(_, pct)| **pct >= 0.5)
                .map(|(name, pct)| format!("{name} {pct:.0}%"))
                .collect();
            let _ = writeln!(
                out,
                "server: CPU {:.0}% ({}), RSS max {:.1} MB",
                server.cpu_pct_mean,
                threads.join(", "),
                server.rss_mb_max
            );
        }
        if let Some(cpu) = self.loadgen_cpu_pct_mean {
            let _ = writeln!(out, "loadgen: CPU {cpu:.0}%");
        }
        out
    }
}

/// A `--expect` term that cannot be understood (the operator's mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpectError {
    #[error("target {term:?}: expected METRIC OP VALUE with OP one of < <= = >= >")]
    NoOperator { term: String },
    #[error("target {term:?}: unknown metric {metric:?} (known: {known})")]
    UnknownMetric {
        term: String,
        metric: String,
        known: String,
    },
    #[error("target {term:?}: {value:?} is not a number with an optional unit ({units})")]
    BadValue {
        term: String,
        value: String,
        units: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "<=")]
    LessOrEqual,
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = ">=")]
    GreaterOrEqual,
    #[serde(rename = ">")]
    Greater,
}

impl Comparison {
    fn holds(self, actual: f64, target: f64) -> bool {
        match self {
            Comparison::Less => actual < target,
            Comparison::LessOrEqual => actual <= target,
            Comparison::Equal => (actual - target).abs() <= f64::EPSILON * target.abs().max(1.0),
            Comparison::GreaterOrEqual => actual >= target,
            Comparison::Greater => actual > target,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Millis,
    Count,
    Percent,
    Gbps,
    Megabytes,
}

/// The metrics a target can name, their unit, and where they come from.
const METRICS: &[(&str, Unit)] = &[
    ("loss", Unit::Count),
    ("loss-pct", Unit::Percent),
    ("late", Unit::Count),
    ("disconnects", Unit::Count),
    ("failed", Unit::Count),
    ("no-keyframe", Unit::Count),
    ("ttfk-p50", Unit::Millis),
    ("ttfk-p90", Unit::Millis),
    ("ttfk-p99", Unit::Millis),
    ("ttfk-p999", Unit::Millis),
    ("ttfk-max", Unit::Millis),
    ("setup-p50", Unit::Millis),
    ("setup-p99", Unit::Millis),
    ("setup-max", Unit::Millis),
    ("gbps", Unit::Gbps),
    ("server-cpu", Unit::Percent),
    ("rss-mb", Unit::Megabytes),
    ("latency-p50", Unit::Millis),
    ("latency-p99", Unit::Millis),
    ("latency-p999", Unit::Millis),
    ("latency-max", Unit::Millis),
    // Device mode.
    ("online-time", Unit::Millis),
    ("offline", Unit::Count),
    ("errors", Unit::Count),
    ("reconnects", Unit::Count),
];

/// One pass/fail target, e.g. `ttfk-p99<500ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expectation {
    pub text: String,
    pub metric: String,
    pub comparison: Comparison,
    /// In the metric's unit (ms for durations, percent, Gbit/s, MB, or a count).
    pub target: f64,
}

/// An evaluated target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpectationOutcome {
    pub expectation: Expectation,
    /// `None` when the run did not measure it (e.g. server CPU without `--server-pid`): a miss.
    pub actual: Option<f64>,
    pub met: bool,
}

impl Expectation {
    /// Parses a comma-separated list such as `loss=0,ttfk-p99<500ms,gbps>=1`.
    pub fn parse_list(list: &str) -> Result<Vec<Expectation>, ExpectError> {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Expectation::parse)
            .collect()
    }

    pub fn parse(term: &str) -> Result<Expectation, ExpectError> {
        let position = term
            .find(['<', '>', '='])
            .ok_or_else(|| ExpectError::NoOperator { term: term.into() })?;
        let (metric, rest) = term.split_at(position);
        let (comparison, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Comparison::LessOrEqual, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Comparison::GreaterOrEqual, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Comparison::Less, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Comparison::Greater, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Comparison::Equal, v.strip_prefix('=').unwrap_or(v))
        } else {
            return Err(ExpectError::NoOperator { term: term.into() });
        };
        let metric = metric.trim().to_ascii_lowercase();
        let Some(&(_, unit)) = METRICS.iter().find(|(name, _)| *name == metric) else {
            return Err(ExpectError::UnknownMetric {
                term: term.into(),
                metric,
                known: METRICS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let target = parse_value(value.trim(), unit).ok_or_else(|| ExpectError::BadValue {
            term: term.into(),
            value: value.trim().into(),
            units: match unit {
                Unit::Millis => "us, ms, s",
                Unit::Count => "none",
                Unit::Percent => "%",
                Unit::Gbps => "Gbit/s; or M, G",
                Unit::Megabytes => "MB, GB",
            },
        })?;
        Ok(Expectation {
            text: term.into(),
            metric,
            comparison,
            target,
        })
    }

    /// The measured value of this target's metric in `summary`.
    pub fn actual(&self, summary: &Summary) -> Option<f64> {
        let s = summary;
        Some(match self.metric.as_str() {
            "loss" => s.lost_packets as f64,
            "loss-pct" => s.loss_ratio * 100.0,
            "late" => s.late_packets as f64,
            "disconnects" => s.disconnects as f64,
            "failed" => s.viewers_failed as f64,
            "no-keyframe" => s.viewers_requested.saturating_sub(s.viewers_with_keyframe) as f64,
            "ttfk-p50" => measured(&s.ttfk_ms)?.p50,
            "ttfk-p90" => measured(&s.ttfk_ms)?.p90,
            "ttfk-p99" => measured(&s.ttfk_ms)?.p99,
            "ttfk-p999" => measured(&s.ttfk_ms)?.p999,
            "ttfk-max" => measured(&s.ttfk_ms)?.max,
            "setup-p50" => measured(&s.setup_ms)?.p50,
            "setup-p99" => measured(&s.setup_ms)?.p99,
            "setup-max" => measured(&s.setup_ms)?.max,
            "gbps" => s.steady_gbps,
            "server-cpu" => s.server.as_ref()?.cpu_pct_mean,
            "rss-mb" => s.server.as_ref()?.rss_mb_max,
            "latency-p50" => measured(&s.latency_ms)?.p50,
            "latency-p99" => measured(&s.latency_ms)?.p99,
            "latency-p999" => measured(&s.latency_ms)?.p999,
            "latency-max" => measured(&s.latency_ms)?.max,
            _ => return None,
        })
    }

    /// The measured value of this target's metric in a device-mode run.
    pub fn actual_for_fleet(
        &self,
        fleet: &crate::fleet::FleetOutcome,
        server: Option<&ServerSummary>,
    ) -> Option<f64> {
        Some(match self.metric.as_str() {
            "online-time" => fleet.all_online_secs? * 1000.0,
            "offline" => fleet.devices.saturating_sub(fleet.came_online) as f64,
            "errors" => fleet.errors as f64,
            "reconnects" => fleet.reconnects as f64,
            "server-cpu" => server?.cpu_pct_mean,
            "rss-mb" => server?.rss_mb_max,
            _ => return None,
        })
    }

    /// [`Expectation::actual_for_fleet`] compared with the target.
    pub fn evaluate_for_fleet(
        &self,
        fleet: &crate::fleet::FleetOutcome,
        server: Option<&ServerSummary>,
    ) -> ExpectationOutcome {
        let actual = self.actual_for_fleet(fleet, server);
        ExpectationOutcome {
            expectation: self.clone(),
            actual,
            met: actual.is_some_and(|a| self.comparison.holds(a, self.target)),
        }
    }

    pub fn evaluate(&self, summary: &Summary) -> ExpectationOutcome {
        let actual = self.actual(summary);
        ExpectationOutcome {
            expectation: self.clone(),
            actual,
            met: actual.is_some_and(|a| self.comparison.holds(a, self.target)),
        }
    }
}

fn measured(p: &Percentiles) -> Option<&Percentiles> {
    (p.count > 0).then_some(p)
}

fn parse_value(text: &str, unit: Unit) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() {
        return None;
    }
    let factor = match (unit, suffix.trim().to_ascii_lowercase().as_str()) {
        (_, "") => 1.0,
        (Unit::Millis, "ms") => 1.0,
        (Unit::Millis, "us" | "µs") => 0.001,
        (Unit::Millis, "s") => 1000.0,
        (Unit::Percent, "%") => 1.0,
        (Unit::Gbps, "g" | "gbit/s" | "gbps") => 1.0,
        (Unit::Gbps, "m" | "mbit/s" | "mbps") => 0.001,
        (Unit::Megabytes, "mb" | "m") => 1.0,
        (Unit::Megabytes, "gb" | "g") => 1024.0,
        _ => return None,
    };
    Some(number * factor)
}

/// How the run was configured, as recorded in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunConfig {
    pub mode: &'static str,
    pub play_url: String,
    pub publisher: Option<String>,
    /// Streams played (viewer `i` plays stream `i % streams`), each with its own publisher.
    pub streams: usize,
    pub viewers: usize,
    pub duration_secs: f64,
    pub ramp_per_sec: f64,
    pub loadgen_shards: usize,
    pub server_pid: Option<u32>,
}

/// The JSON report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub loadgen_version: &'static str,
    pub started_unix_secs: u64,
    pub config: RunConfig,
    pub summary: Summary,
    pub expectations: Vec<ExpectationOutcome>,
    pub samples: Vec<Sample>,
    /// The first few distinct failure and disconnect reasons, with counts.
    pub errors: BTreeMap<String, usize>,
    /// Every viewer's record, by id (e.g. to see whether late starters set up slower).
    pub viewers: Vec<ViewerRecord>,
    /// The loadgen's own publishers (`--publisher loadgen`), by stream.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publishers: Vec<crate::rtsp_publish::PublisherRecord>,
}

impl Report {
    /// Whether every target was met.
    pub fn targets_met(&self) -> bool {
        self.expectations.iter().all(|e| e.met)
    }
}

/// Counts distinct end reasons (at most `limit` kinds; the rest are lumped together).
pub fn error_counts(records: &[ViewerRecord], limit: usize) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        let reason = match &record.end {
            ViewerEnd::RunEnded => continue,
            ViewerEnd::Failed(r) => format!("failed: {r}"),
            ViewerEnd::Disconnected(r) => format!("disconnected: {r}"),
        };
        if counts.len() >= limit && !counts.contains_key(&reason) {
            *counts.entry("other".into()).or_default() += 1;
        } else {
            *counts.entry(reason).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: usize, ttfk_ms: Option<u64>, lost: u64, end: ViewerEnd) -> ViewerRecord {
        ViewerRecord {
            id,
            setup_us: Some(2_000 + id as u64),
            ttfk_us: ttfk_ms.map(|ms| ms * 1000),
            bytes: 1_000_000,
            packets: 1000,
            lost,
            late: 0,
            restarts: 0,
            playing_secs: 8.0,
            end,
            latency_us: None,
        }
    }

    fn sample(t: f64, bits: f64, cpu: f64) -> Sample {
        let mut threads = BTreeMap::new();
        threads.insert("shard-0".to_owned(), cpu * 0.75);
        threads.insert("shard-1".to_owned(), cpu * 0.25);
        Sample {
            t_secs: t,
            viewers_playing: 10,
            viewers_with_keyframe: 10,
            rx_bits_per_sec: bits,
            rx_packets_per_sec: bits / 10_000.0,
            lost_total: 0,
            disconnects_total: 0,
            server: Some(ProcSample {
                cpu_pct: cpu,
                threads,
                rss_bytes: (t as u64 + 10) << 20,
                open_fds: Some(40),
            }),
            loadgen_cpu_pct: Some(30.0),
        }
    }

    #[test]
    fn percentiles_of_time_to_keyframe() {
        let records: Vec<ViewerRecord> = (1..=100)
            .map(|i| record(i, Some(i as u64), 0, ViewerEnd::RunEnded))
            .collect();
        let summary = Summary::compute(100, &records, &[], 0.0);
        assert_eq!(summary.ttfk_ms.count, 100);
        assert!(
            (summary.ttfk_ms.p50 - 50.0).abs() < 0.1,
            "{:?}",
            summary.ttfk_ms
        );
        assert!((summary.ttfk_ms.p99 - 99.0).abs() < 0.1);
        assert!((summary.ttfk_ms.max - 100.0).abs() < 0.1);
        // 1 MB over 8 s = 1 Mbit/s each.
        assert!((summary.viewer_mbps.p50 - 1.0).abs() < 0.01);
        assert_eq!(summary.viewers_with_keyframe, 100);
    }

    #[test]
    fn frame_latency_merges_over_viewers_and_meets_targets() {
        let mut records = Vec::new();
        for (id, values) in [(0, [1_000u64, 2_000]), (1, [3_000, 40_000])] {
            let mut h = micros_histogram();
            for v in values {
                h.record(v).unwrap();
            }
            records.push(ViewerRecord {
                latency_us: Some(h),
                ..record(id, Some(10), 0, ViewerEnd::RunEnded)
            });
        }
        let summary = Summary::compute(2, &records, &[], 0.0);
        assert_eq!(summary.latency_ms.count, 4);
        assert!((summary.latency_ms.max - 40.0).abs() < 0.1);
        assert!((summary.latency_ms.p50 - 2.0).abs() < 0.01);
        let met = Expectation::parse("latency-p50<5ms")
            .unwrap()
            .evaluate(&summary);
        assert!(met.met);
        let missed = Expectation::parse("latency-max<5ms")
            .unwrap()
            .evaluate(&summary);
        assert!(!missed.met);
        assert!(summary.render_text().contains("frame latency ms"));
    }

    #[test]
    fn loss_failures_and_disconnects() {
        let records = vec![
            record(0, Some(10), 0, ViewerEnd::RunEnded),
            record(1, Some(10), 10, ViewerEnd::Disconnected("closed".into())),
            ViewerRecord {
                setup_us: None,
                ttfk_us: None,
                bytes: 0,
                packets: 0,
                playing_secs: 0.0,
                ..record(2, None, 0, ViewerEnd::Failed("404 Not Found".into()))
            },
        ];
        let summary = Summary::compute(3, &records, &[], 0.0);
        assert_eq!(summary.viewers_played, 2);
        assert_eq!(summary.viewers_failed, 1);
        assert_eq!(summary.disconnects, 1);
        assert_eq!(summary.lost_packets, 10);
        assert!((summary.loss_ratio - 10.0 / 2010.0).abs() < 1e-12);
        let errors = error_counts(&records, 8);
        assert_eq!(errors.get("failed: 404 Not Found"), Some(&1));
        assert_eq!(errors.get("disconnected: closed"), Some(&1));
    }

    #[test]
    fn steady_window_skips_the_ramp() {
        let samples: Vec<Sample> = (1..=10)
            .map(|t| {
                let ramping = t < 5;
                sample(
                    t as f64,
                    if ramping { 1e8 } else { 2e9 },
                    if ramping { 10.0 } else { 80.0 },
                )
            })
            .collect();
        let summary = Summary::compute(10, &[], &samples, 5.0 - SETTLE_SECS);
        assert_eq!(summary.steady_from_secs, 5.0);
        assert!((summary.steady_gbps - 2.0).abs() < 1e-9);
        assert!((summary.peak_gbps - 2.0).abs() < 1e-9);
        let server = summary.server.unwrap();
        assert!((server.cpu_pct_mean - 80.0).abs() < 1e-9);
        assert!((server.threads_cpu_pct_mean["shard-0"] - 60.0).abs() < 1e-9);
        assert!((server.rss_mb_max - 20.0).abs() < 1e-9);
        assert_eq!(summary.loadgen_cpu_pct_mean, Some(30.0));
    }

    #[test]
    fn targets_parse_with_units() {
        let list = Expectation::parse_list("loss=0, ttfk-p99<0.5s,gbps>=800M,rss-mb<=1GB").unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list[0].comparison, Comparison::Equal);
        assert_eq!(list[1].target, 500.0);
        assert_eq!(list[1].comparison, Comparison::Less);
        assert!((list[2].target - 0.8).abs() < 1e-12);
        assert_eq!(list[3].target, 1024.0);
        assert!(matches!(
            Expectation::parse("latency<5ms"),
            Err(ExpectError::UnknownMetric { .. })
        ));
        assert!(matches!(
            Expectation::parse("ttfk-p99 500ms"),
            Err(ExpectError::NoOperator { .. })
        ));
        assert!(matches!(
            Expectation::parse("loss=5ms"),
            Err(ExpectError::BadValue { .. })
        ));
    }

    #[test]
    fn targets_evaluate_against_a_summary() {
        let records: Vec<ViewerRecord> = (1..=10)
            .map(|i| record(i, Some(100 * i as u64), 0, ViewerEnd::RunEnded))
            .collect();
        let summary = Summary::compute(10, &records, &[], 0.0);
        let check = |t: &str| Expectation::parse(t).unwrap().evaluate(&summary).met;
        assert!(check("loss=0"));
        // 3 significant digits: 1000 ms is recorded within half a millisecond.
        assert!(check("ttfk-p99<=1001ms"));
        assert!(!check("ttfk-p99<999ms"));
        assert!(!check("ttfk-p99<500ms"));
        assert!(check("ttfk-p50<600ms"));
        // Not measured (no samples, no server PID) counts as missed.
        assert!(!check("server-cpu<100"));
    }
}
