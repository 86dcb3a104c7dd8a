//! `loadgen peers`: several RTSP servers under the same `loadgen rtsp` load, side by side, as
//! ratios (these machines are shared, so absolute figures wobble; ratios measured in the same
//! run hold). Each input is one run's JSON report, named after its server; runs of the same
//! size (streams x viewers per stream) are compared with the baseline server's run of that
//! size, and the relay cost with the loopback TCP ceiling measured by iperf3 in the same run.
//!
//! A size is *held* when every viewer played to the end with a keyframe, no packet was lost,
//! no publisher failed, and the viewers received at least [`HELD_THROUGHPUT`] of what the
//! publishers sent (a server that stalls loses nothing by sequence numbers, but delivers less).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::svg::{self, Panel, Series};

/// Share of the offered bitrate the viewers must receive for a size to count as held.
pub const HELD_THROUGHPUT: f64 = 0.9;

/// A report that does not say what a comparison needs (the caller gave the wrong file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PeersError {
    #[error("{report}: not a `loadgen rtsp` report ({missing} missing)")]
    NotARun { report: String, missing: String },
    #[error("{report}: not an iperf3 -J report ({missing} missing)")]
    NotIperf { report: String, missing: String },
}

/// One server at one size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerRun {
    pub server: String,
    pub streams: u64,
    pub viewers: u64,
    pub held: bool,
    /// Why the size was not held (the first reason).
    pub not_held: Option<String>,
    /// Steady Gbit/s received by all viewers.
    pub gbps: f64,
    /// Server CPU, percent of one core (mean over the steady window).
    pub cpu_pct: Option<f64>,
    pub rss_mb: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

impl PeerRun {
    pub fn viewers_per_stream(&self) -> u64 {
        self.viewers / self.streams.max(1)
    }

    /// Server CPU (percent of one core) per Gbit/s relayed to the viewers.
    pub fn cpu_per_gbps(&self) -> Option<f64> {
        let cpu = self.cpu_pct?;
        (self.gbps > 0.0).then(|| cpu / self.gbps)
    }

    /// Streams (of this fan-out) one core relays at this cost.
    pub fn streams_per_core(&self) -> Option<f64> {
        let cpu = self.cpu_pct?;
        (cpu > 0.0).then(|| self.streams as f64 * 100.0 / cpu)
    }
}

fn field<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    json.pointer(path).filter(|v| !v.is_null())
}

/// Reads one `loadgen rtsp` report of `server`; `bitrate_bps` is what each publisher sent.
pub fn read_run(
    source: &str,
    server: &str,
    json: &Value,
    bitrate_bps: u64,
) -> Result<PeerRun, PeersError> {
    let need = |path: &str| {
        field(json, path)
            .and_then(Value::as_f64)
            .ok_or_else(|| PeersError::NotARun {
                report: source.to_owned(),
                missing: path.to_owned(),
            })
    };
    let streams = need("/config/streams")? as u64;
    let requested = need("/summary/viewers_requested")?;
    let played = need("/summary/viewers_played")?;
    let with_keyframe = need("/summary/viewers_with_keyframe")?;
    let failed = need("/summary/viewers_failed")?;
    let disconnects = need("/summary/disconnects")?;
    let lost = need("/summary/lost_packets")?;
    let gbps = need("/summary/steady_gbps")?;
    let publisher_failures: f64 = field(json, "/publishers")
        .and_then(Value::as_array)
        .map(|all| {
            all.iter()
                .filter_map(|p| p.get("failures").and_then(Value::as_f64))
                .sum()
        })
        .unwrap_or(0.0);
    let offered_gbps = requested * bitrate_bps as f64 / 1e9;
    let not_held = [
        (
            played < requested,
            format!("{played} of {requested} viewers played"),
        ),
        (failed > 0.0, format!("{failed} viewers failed")),
        (disconnects > 0.0, format!("{disconnects} viewers cut off")),
        (
            with_keyframe < requested,
            format!("{with_keyframe} of {requested} viewers saw a keyframe"),
        ),
        (lost > 0.0, format!("{lost} packets lost")),
        (
            publisher_failures > 0.0,
            format!("{publisher_failures} publisher failures"),
        ),
        (
            gbps < HELD_THROUGHPUT * offered_gbps,
            format!("{gbps:.3} of {offered_gbps:.3} Gbit/s delivered"),
        ),
    ]
    .into_iter()
    .find_map(|(missed, why)| missed.then_some(why));
    let latency = |p: &str| {
        (field(json, "/summary/latency_ms/count").and_then(Value::as_f64) > Some(0.0))
            .then(|| field(json, &format!("/summary/latency_ms/{p}")).and_then(Value::as_f64))
            .flatten()
    };
    Ok(PeerRun {
        server: server.to_owned(),
        streams,
        viewers: requested as u64,
        held: not_held.is_none(),
        not_held,
        gbps,
        cpu_pct: field(json, "/summary/server/cpu_pct_mean").and_then(Value::as_f64),
        rss_mb: field(json, "/summary/server/rss_mb_max").and_then(Value::as_f64),
        latency_p50_ms: latency("p50"),
        latency_p99_ms: latency("p99"),
    })
}

/// The loopback TCP ceiling of the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Iperf {
    pub gbps: f64,
    /// The sender's CPU, percent of one core. On loopback the sender's system time carries
    /// the kernel's delivery to the receiving socket too, as a relay's sends do.
    pub sender_cpu_pct: f64,
}

impl Iperf {
    pub fn cpu_per_gbps(&self) -> f64 {
        self.sender_cpu_pct / self.gbps.max(1e-9)
    }
}

/// Reads `iperf3 -c ... -J` output (one TCP stream).
pub fn read_iperf(source: &str, json: &Value) -> Result<Iperf, PeersError> {
    let need = |path: &str| {
        field(json, path)
            .and_then(Value::as_f64)
            .ok_or_else(|| PeersError::NotIperf {
                report: source.to_owned(),
                missing: path.to_owned(),
            })
    };
    Ok(Iperf {
        gbps: need("/end/sum_received/bits_per_second")? / 1e9,
        sender_cpu_pct: need("/end/cpu_utilization_percent/host_total")?,
    })
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn sizes(runs: &[PeerRun]) -> Vec<(u64, u64)> {
    let set: BTreeSet<(u64, u64)> = runs
        .iter()
        .map(|r| (r.streams, r.viewers_per_stream()))
        .collect();
    set.into_iter().collect()
}

fn servers(runs: &[PeerRun]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for run in runs {
        if !names.contains(&run.server) {
            names.push(run.server.clone());
        }
    }
    names
}

/// The Markdown tables: a summary per server (largest size held, its costs as ratios), then
/// every run with ratios against `baseline` at the same size and against iperf3.
pub fn render_markdown(runs: &[PeerRun], baseline: &str, iperf: Option<&Iperf>) -> String {
    let mut out = String::new();
    let base_at = |streams: u64, per_stream: u64| {
        runs.iter().find(|r| {
            r.server == baseline && r.streams == streams && r.viewers_per_stream() == per_stream
        })
    };
    let iperf_cost = iperf.map(Iperf::cpu_per_gbps);
    let _ = writeln!(
        out,
        "| server | largest size held (streams x viewers) | CPU % per Gbit/s there | vs {baseline} | vs iperf3 | streams per core | frame latency p50 / p99 ms | p99 vs {baseline} | RSS MB | RSS vs {baseline} |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for server in servers(runs) {
        let largest = runs
            .iter()
            .filter(|r| r.server == server && r.held)
            .max_by_key(|r| (r.viewers, r.streams));
        let Some(run) = largest else {
            let _ = writeln!(out, "| {server} | none | - | - | - | - | - | - | - | - |");
            continue;
        };
        let base = base_at(run.streams, run.viewers_per_stream());
        let _ = writeln!(
            out,
            "| {server} | {} x {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            run.streams,
            run.viewers_per_stream(),
            number(run.cpu_per_gbps(), 0),
            ratio(run.cpu_per_gbps(), base.and_then(PeerRun::cpu_per_gbps)),
            ratio(run.cpu_per_gbps(), iperf_cost),
            number(run.streams_per_core(), 0),
            number(run.latency_p50_ms, 1),
            number(run.latency_p99_ms, 1),
            ratio(run.latency_p99_ms, base.and_then(|b| b.latency_p99_ms)),
            number(run.rss_mb, 0),
            ratio(run.rss_mb, base.and_then(|b| b.rss_mb)),
        );
    }
    if let Some(iperf) = iperf {
        let _ = writeln!(
            out,
            "| iperf3 (loopback TCP, 1 stream, sender) | {:.1} Gbit/s | {:.1} | - | 1.00x | - | - | - | - | - |",
            iperf.gbps,
            iperf.cpu_per_gbps()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| streams x viewers | server | held | Gbit/s | CPU % | CPU % per Gbit/s | vs {baseline} | vs iperf3 | latency p50 / p99 ms | RSS MB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (streams, per_stream) in sizes(runs) {
        let base = base_at(streams, per_stream);
        for run in runs
            .iter()
            .filter(|r| r.streams == streams && r.viewers_per_stream() == per_stream)
        {
            let _ = writeln!(
                out,
                "| {streams} x {per_stream} | {} | {} | {:.3} | {} | {} | {} | {} | {} / {} | {} |",
                run.server,
                match &run.not_held {
                    None => "yes".to_owned(),
                    Some(why) => format!("no: {why}"),
                },
                run.gbps,
                number(run.cpu_pct, 0),
                number(run.cpu_per_gbps(), 0),
                ratio(run.cpu_per_gbps(), base.and_then(PeerRun::cpu_per_gbps)),
                ratio(run.cpu_per_gbps(), iperf_cost),
                number(run.latency_p50_ms, 1),
                number(run.latency_p99_ms, 1),
                number(run.rss_mb, 0),
            );
        }
    }
    out
}

/// An SVG chart: per server, CPU per Gbit/s, p99 frame latency and RSS against the viewers in
/// all (one point per size).
pub fn chart(runs: &[PeerRun], iperf: Option<&Iperf>) -> String {
    let per_server = |value: &dyn Fn(&PeerRun) -> Option<f64>| -> Vec<Series> {
        servers(runs)
            .into_iter()
            .map(|server| {
                let mut points: Vec<(f64, f64)> = runs
                    .iter()
                    .filter(|r| r.server == server)
                    .filter_map(|r| Some((r.viewers as f64, value(r)?)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name: server,
                    points,
                }
            })
            .collect()
    };
    let mut cost = per_server(&PeerRun::cpu_per_gbps);
    if let Some(iperf) = iperf {
        let max = runs.iter().map(|r| r.viewers as f64).fold(1.0, f64::max);
        cost.push(Series {
            name: "iperf3 sender".into(),
            points: vec![(0.0, iperf.cpu_per_gbps()), (max, iperf.cpu_per_gbps())],
        });
    }
    let panels = [
        Panel {
            title: "Server CPU per Gbit/s relayed".into(),
            unit: "% of a core per Gbit/s".into(),
            series: cost,
        },
        Panel {
            title: "Frame latency p99 (publisher send to viewer receive)".into(),
            unit: "ms".into(),
            series: per_server(&|r| r.latency_p99_ms),
        },
        Panel {
            title: "Server memory".into(),
            unit: "RSS MB".into(),
            series: per_server(&|r| r.rss_mb),
        },
    ];
    svg::render(
        "RTSP relays under the same loadgen load (same machine, same run)",
        "viewers in all (streams x viewers per stream)",
        &panels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(streams: u64, viewers: u64, lost: u64, gbps: f64, cpu: f64, p99: f64) -> Value {
        json!({
            "config": {"streams": streams, "viewers": viewers},
            "summary": {
                "viewers_requested": viewers, "viewers_played": viewers,
                "viewers_with_keyframe": viewers, "viewers_failed": 0, "disconnects": 0,
                "lost_packets": lost, "steady_gbps": gbps,
                "latency_ms": {"count": 100, "p50": p99 / 4.0, "p99": p99},
                "server": {"cpu_pct_mean": cpu, "rss_mb_max": 50.0}
            },
            "publishers": [{"failures": 0}]
        })
    }

    #[test]
    fn held_needs_every_viewer_no_loss_and_the_offered_throughput() {
        let run = read_run(
            "a.json",
            "ours",
            &report(2, 10, 0, 0.02, 10.0, 4.0),
            2_000_000,
        )
        .unwrap();
        assert!(run.held, "{run:?}");
        assert_eq!(run.viewers_per_stream(), 5);
        assert_eq!(run.cpu_per_gbps(), Some(500.0));
        assert_eq!(run.streams_per_core(), Some(20.0));
        let lossy = read_run("b.json", "x", &report(2, 10, 3, 0.02, 10.0, 4.0), 2_000_000).unwrap();
        assert_eq!(lossy.not_held.as_deref(), Some("3 packets lost"));
        // 10 viewers of 2 Mbit/s are 0.02 Gbit/s: 0.015 is a stall, not a hold.
        let slow = read_run(
            "c.json",
            "x",
            &report(2, 10, 0, 0.015, 10.0, 4.0),
            2_000_000,
        )
        .unwrap();
        assert!(!slow.held);
        let mut failing = report(2, 10, 0, 0.02, 10.0, 4.0);
        failing["publishers"][0]["failures"] = json!(1);
        let failing = read_run("d.json", "x", &failing, 2_000_000).unwrap();
        assert_eq!(failing.not_held.as_deref(), Some("1 publisher failures"));
        assert!(matches!(
            read_run("e.json", "x", &json!({"summary": {}}), 1),
            Err(PeersError::NotARun { .. })
        ));
    }

    #[test]
    fn tables_give_ratios_against_the_baseline_and_iperf3() {
        let runs: Vec<PeerRun> = [
            ("ours", report(1, 10, 0, 0.02, 2.0, 2.0)),
            ("ours", report(4, 40, 0, 0.08, 8.0, 3.0)),
            ("other", report(1, 10, 0, 0.02, 6.0, 8.0)),
            ("other", report(4, 40, 9, 0.08, 30.0, 30.0)),
        ]
        .iter()
        .map(|(server, json)| read_run("r.json", server, json, 2_000_000).unwrap())
        .collect();
        let iperf = read_iperf(
            "i.json",
            &json!({"end": {"sum_received": {"bits_per_second": 20e9},
                            "cpu_utilization_percent": {"host_total": 100.0}}}),
        )
        .unwrap();
        assert_eq!(iperf.cpu_per_gbps(), 5.0);
        let table = render_markdown(&runs, "ours", Some(&iperf));
        // ours holds 4 x 10 at 100 % CPU per Gbit/s (20x iperf3's 5); other only 1 x 10, at 3x.
        assert!(
            table.contains(
                "| ours | 4 x 10 | 100 | 1.00x | 20.00x | 50 | 0.8 / 3.0 | 1.00x | 50 | 1.00x |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| other | 1 x 10 | 300 | 3.00x | 60.00x | 17 | 2.0 / 8.0 | 4.00x |"),
            "{table}"
        );
        assert!(
            table.contains("| 4 x 10 | other | no: 9 packets lost | 0.080 | 30 | 375 | 3.75x |"),
            "{table}"
        );
        let svg = chart(&runs, Some(&iperf));
        assert_eq!(svg.matches("<polyline").count(), 3 + 2 + 2);
        assert!(svg.contains("iperf3 sender"));
    }
}
