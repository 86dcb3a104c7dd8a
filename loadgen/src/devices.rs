//! The `devices` and `viewers` commands: their options, the run loop with the progress line,
//! and the reports. The work itself is in the library ([`loadgen::fleet`], [`loadgen::rtsp_load`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::Serialize;

use loadgen::device::clip::VideoClip;
use loadgen::device::synthetic::{StreamShape, VideoSource};
use loadgen::device::EncryptPolicy;
use loadgen::fleet::provision::ProvisionTarget;
use loadgen::fleet::{device_uid, play_targets, Fleet, FleetConfig, FleetOutcome, FleetSample};
use loadgen::procstat::ProcSample;
use loadgen::report::{error_counts, Expectation, ExpectationOutcome, Report, RunConfig};
use loadgen::report::{ServerSummary, Summary};
use loadgen::rtsp_load::{self, LoadConfig};
use loadgen::svg::{self, Panel, Series};

use crate::parse_rate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Encrypt {
    /// Every frame of an encryptTCP stream.
    All,
    /// Keyframes only (the platform's selective encryption).
    Keyframes,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// The client API (plain HTTP), for provisioning.
    #[arg(long, default_value = "127.0.0.1:61009", value_parser = parse_addr)]
    api: SocketAddr,
    /// Address of the device ports (CA, credentials, registration, keep-alive, signalling,
    /// streams); the initialization session's host name is used for TLS only.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Client API bearer token (when the server has `api.auth = "token"`).
    #[arg(long, env = "ROP_API_TOKEN")]
    api_token: Option<String>,
    /// Number of devices (of this process).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Index of this process's first device (UID 9527 + 12-digit index): split a fleet over
    /// processes with `--first-index 0 --devices 9000`, `--first-index 9000 --devices 9000`, ...
    #[arg(long, default_value_t = 0)]
    first_index: usize,
    /// Cache identities here; reruns against the same server do not provision again.
    #[arg(long)]
    identities: Option<PathBuf>,
    /// Devices started per second.
    #[arg(long, default_value = "200/s", value_parser = parse_rate)]
    ramp: f64,
    /// How long to stay online after the last device started.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Alarms per device per minute.
    #[arg(long, default_value_t = 0.0)]
    alarm_rate: f64,
    /// Heartbeat period on both links.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Which frames an encryptTCP stream encrypts (the server picks TLS, encryptTCP or TCP).
    #[arg(long, value_enum, default_value = "keyframes")]
    encrypt: Encrypt,
    /// Stream this Annex-B H.264/H.265 clip (looped) instead of synthetic frames.
    #[arg(long, conflicts_with = "synthetic")]
    clip: Option<PathBuf>,
    /// Synthetic H.264 at this bitrate (e.g. 2M, 512k).
    #[arg(long, default_value = "2M", value_parser = parse_bitrate)]
    synthetic: u64,
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Frames per GOP (synthetic).
    #[arg(long, default_value_t = 50)]
    gop: u32,
    /// Executor threads (unpinned).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Source addresses 127.0.0.1.. to spread connections over (0: one per 20,000 devices).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Frames without SEI send stamps (the platform's own server refuses SEI); viewers then
    /// measure no latency.
    #[arg(long)]
    no_stamps: bool,
    /// Keep-alive port to connect to instead of the one registration names.
    #[arg(long)]
    keepalive_port: Option<u16>,
    /// Signalling port to connect to instead of the one registration names.
    #[arg(long)]
    signaling_port: Option<u16>,
    /// Write every alarm the server answered to this file (`uid`, AI type, reply code,
    /// tab-separated), each alarm tagged in its AI type (`people,t<n>`) so that what the
    /// partner's webhook received can be compared with what the server acknowledged.
    #[arg(long)]
    alarm_log: Option<PathBuf>,
    #[command(flatten)]
    run: crate::RunOutput,
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    text.parse()
        .map_err(|e| format!("{text:?}: expected host:port or http://ip:port ({e})"))
}

pub(crate) fn parse_bitrate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, factor) = if let Some(n) = lower.strip_suffix('m') {
        (n, 1e6)
    } else if let Some(n) = lower.strip_suffix('k') {
        (n, 1e3)
    } else {
        (lower.as_str(), 1.0)
    };
    match number.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok((v * factor) as u64),
        _ => Err(format!("{text:?}: expected a bitrate such as 2M or 512k")),
    }
}

/// The device-mode report.
#[derive(Debug, Serialize)]
struct DevicesReport {
    loadgen_version: &'static str,
    started_unix_secs: u64,
    command: String,
    outcome: FleetOutcome,
    server: Option<ServerSummary>,
    /// The server's RSS before the first device started (bytes).
    server_rss_at_start_bytes: Option<u64>,
    /// (server RSS at the end - at the start) / devices that came online, KiB.
    server_rss_kib_per_device: Option<f64>,
    expectations: Vec<ExpectationOutcome>,
    samples: Vec<FleetSample>,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn video_source(clip: Option<&PathBuf>, shape: StreamShape) -> anyhow::Result<VideoSource> {
    let Some(path) = clip else {
        return Ok(VideoSource::Synthetic(shape));
    };
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let codec = if name.ends_with(".265") || name.ends_with(".hevc") {
        relay::proto::media::Codec::H265
    } else {
        relay::proto::media::Codec::H264
    };
    let clip = VideoClip::from_annex_b(codec, Bytes::from(data))
        .with_context(|| format!("{} as an Annex-B clip", path.display()))?;
    Ok(VideoSource::Clip {
        clip: Arc::new(clip),
        fps: shape.fps,
    })
}

pub fn devices_command(args: DevicesArgs) -> anyhow::Result<bool> {
    let expectations = args.run.expectations()?;
    let needed = args.devices as u64 * 2 + 64;
    match rt::raise_fd_limit() {
        Ok((soft, _)) if soft < needed => eprintln!(
            "warning: open-file limit {soft} is below the {needed} that {} devices need: \
             split the fleet over processes with --first-index/--devices",
            args.devices
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    let shape = StreamShape {
        bitrate_bps: args.synthetic,
        fps: args.fps.max(1),
        gop: args.gop.max(1),
        ..StreamShape::default()
    };
    let config = FleetConfig {
        provision: ProvisionTarget {
            api: args.api,
            device_ip: args.host,
            api_token: args.api_token.clone(),
        },
        device_ip: args.host,
        first: args.first_index,
        count: args.devices,
        ramp_per_sec: args.ramp,
        heartbeat: args.heartbeat,
        alarms_per_min: args.alarm_rate,
        encrypt: match args.encrypt {
            Encrypt::All => EncryptPolicy::All,
            Encrypt::Keyframes => EncryptPolicy::Keyframes,
        },
        source: video_source(args.clip.as_ref(), shape)?,
        identities: args.identities.clone(),
        shards: args.shards,
        sources: args.sources,
        keepalive_port: args.keepalive_port,
        signaling_port: args.signaling_port,
        stamps: !args.no_stamps,
        alarm_log: match &args.alarm_log {
            Some(path) => Some(Arc::new(
                loadgen::fleet::AlarmLog::create(path)
                    .with_context(|| format!("creating the alarm log {}", path.display()))?,
            )),
            None => None,
        },
    };
    let started_unix_secs = unix_secs();
    // The server's memory before the first device connects: the baseline of the per-device cost
    // (the first sample comes a second later, when a fast ramp is already online).
    let server_rss_at_start = args
        .run
        .server_pid
        .and_then(|pid| loadgen::procstat::ProcSampler::new(Some(pid)).rss_bytes());
    let mut fleet = Fleet::start(config, args.run.server_pid)?;
    let ramp_end = fleet.ramp_end_secs();
    let end = Instant::now() + Duration::from_secs_f64(ramp_end) + args.duration;
    let mut samples = Vec::new();
    let mut tick = Instant::now();
    while Instant::now() < end {
        tick += Duration::from_secs(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(end.saturating_duration_since(Instant::now())));
        }
        let sample = fleet.sample();
        if !args.run.quiet {
            eprintln!("{}", fleet.progress_line(&sample));
        }
        samples.push(sample);
    }
    let outcome = fleet.stop()?;
    let steady: Vec<&ProcSample> = samples
        .iter()
        .filter(|s| s.t_secs >= ramp_end)
        .filter_map(|s| s.server.as_ref())
        .collect();
    let all: Vec<&ProcSample> = samples.iter().filter_map(|s| s.server.as_ref()).collect();
    let server = ServerSummary::from_samples(&steady, &all);
    let server_rss_at_start = server_rss_at_start.or(all.first().map(|s| s.rss_bytes));
    let server_rss_kib_per_device = match (server_rss_at_start, all.last()) {
        (Some(first), Some(last)) if outcome.came_online > 0 => {
            Some((last.rss_bytes as f64 - first as f64) / 1024.0 / outcome.came_online as f64)
        }
        _ => None,
    };
    let report = DevicesReport {
        server_rss_at_start_bytes: server_rss_at_start,
        server_rss_kib_per_device,
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_unix_secs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        expectations: expectations
            .iter()
            .map(|e| e.evaluate_for_fleet(&outcome, server.as_ref()))
            .collect(),
        outcome,
        server,
        samples,
    };
    print_devices(&report);
    if let Some(path) = &args.run.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.run.svg {
        std::fs::write(path, devices_chart(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.expectations.iter().all(|e| e.met))
}

fn print_devices(report: &DevicesReport) {
    let o = &report.outcome;
    println!(
        "devices: {} requested, {} came online, all online after {}; online at p50 {:.1} s p99 {:.1} s",
        o.devices,
        o.came_online,
        o.all_online_secs
            .map(|s| format!("{s:.1} s"))
            .unwrap_or_else(|| "never".into()),
        o.online_at_secs.p50,
        o.online_at_secs.p99
    );
    println!(
        "provisioned {}, from cache {}, reconnects {}, errors {}, heartbeats {}, alarms {} ({} answered 200, {} refused)",
        o.provisioned,
        o.from_cache,
        o.reconnects,
        o.errors,
        o.heartbeats,
        o.alarms,
        o.alarms_acked,
        o.alarms_refused
    );
    println!(
        "streams: {} preview starts, {} streams, {} frames, {:.1} MB sent, {} keyframe requests",
        o.preview_starts,
        o.streams_started,
        o.frames_sent,
        o.media_bytes_sent as f64 / 1e6,
        o.keyframe_requests
    );
    for (kind, count) in &o.error_kinds {
        println!("  {count} x {kind}");
    }
    if let Some(server) = &report.server {
        println!(
            "server: CPU {:.1}% of a core after the ramp, RSS max {:.1} MB, {} KiB more per online device",
            server.cpu_pct_mean,
            server.rss_mb_max,
            report
                .server_rss_kib_per_device
                .map(|k| format!("{k:.1}"))
                .unwrap_or_else(|| "?".into())
        );
    }
    for outcome in &report.expectations {
        println!(
            "target {:<20} {} (measured {})",
            outcome.expectation.text,
            if outcome.met { "met" } else { "MISSED" },
            outcome
                .actual
                .map(|a| format!("{a:.3}"))
                .unwrap_or_else(|| "nothing".into())
        );
    }
}

fn devices_chart(report: &DevicesReport) -> String {
    let line = |name: &str, value: &dyn Fn(&FleetSample) -> Option<f64>| Series {
        name: name.to_owned(),
        points: report
            .samples
            .iter()
            .filter_map(|s| Some((s.t_secs, value(s)?)))
            .collect(),
    };
    let mut panels = vec![
        Panel {
            title: "Devices".into(),
            unit: "count".into(),
            series: vec![
                line("online", &|s| Some(s.online as f64)),
                line("started", &|s| Some(s.started as f64)),
            ],
        },
        Panel {
            title: "Link handshakes".into(),
            unit: "per second".into(),
            series: vec![line("handshakes", &|s| Some(s.handshakes_per_sec))],
        },
        Panel {
            title: "CPU".into(),
            unit: "% of one core".into(),
            series: vec![
                line("server", &|s| s.server.as_ref().map(|p| p.cpu_pct)),
                line("loadgen", &|s| s.loadgen_cpu_pct),
            ],
        },
    ];
    if report.server.is_some() {
        panels.push(Panel {
            title: "Server memory".into(),
            unit: "RSS MB".into(),
            series: vec![line("RSS", &|s| {
                s.server.as_ref().map(|p| p.rss_bytes as f64 / 1048576.0)
            })],
        });
    }
    svg::render(
        &format!(
            "{} ROP devices: {} online, all after {}",
            report.outcome.devices,
            report.outcome.came_online,
            report
                .outcome
                .all_online_secs
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "never".into())
        ),
        "seconds since start",
        &panels,
    )
}

#[derive(Debug, Args)]
pub struct ViewersArgs {
    /// The client API (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:61009", value_parser = parse_addr)]
    api: SocketAddr,
    /// Where the RTSP port is reached (play URLs name the server's host name).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, env = "ROP_API_TOKEN")]
    api_token: Option<String>,
    /// Streams: the main streams of devices `--first-index ..` (`loadgen devices` UIDs).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    #[arg(long, default_value_t = 0)]
    first_index: usize,
    #[arg(long, default_value_t = 1)]
    viewers_per_stream: usize,
    #[arg(long, default_value = "mainStream")]
    stream_type: String,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Viewers started per second.
    #[arg(long, default_value = "50/s", value_parser = parse_rate)]
    ramp: f64,
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// How long to wait for the devices to be online (play sessions refused until then).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    run: crate::RunOutput,
}

pub fn viewers_command(args: ViewersArgs) -> anyhow::Result<bool> {
    let expectations = args.run.expectations()?;
    if args.streams == 0 || args.viewers_per_stream == 0 {
        bail!("--streams and --viewers-per-stream must be at least 1");
    }
    let viewers = args.streams * args.viewers_per_stream;
    if let Err(e) = rt::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let api = ProvisionTarget {
        api: args.api,
        device_ip: args.host,
        api_token: args.api_token.clone(),
    };
    let uids: Vec<String> = (args.first_index..args.first_index + args.streams)
        .map(device_uid)
        .collect();
    let targets =
        play_targets(&api, &uids, &args.stream_type, args.wait).map_err(anyhow::Error::msg)?;
    let config = LoadConfig {
        targets,
        viewers,
        duration: args.duration,
        ramp_per_sec: args.ramp,
        shards: args.shards,
        server_pid: args.run.server_pid,
        progress: !args.run.quiet,
        // A server may answer the first DESCRIBE before the camera's stream is up (the
        // platform's answers 404 then): viewers try again for up to --wait.
        describe_retry: args.wait,
    };
    let report = run_viewers(&config, "viewers", &expectations, args.api.to_string())?;
    crate::output_viewer_report(&report, args.run.report.as_deref(), args.run.svg.as_deref())?;
    Ok(report.targets_met())
}

/// Runs viewers and makes the report.
pub fn run_viewers(
    config: &LoadConfig,
    mode: &'static str,
    expectations: &[Expectation],
    source: String,
) -> anyhow::Result<Report> {
    let started_unix_secs = unix_secs();
    let outcome = rtsp_load::run(config)?;
    let summary = Summary::compute(
        config.viewers,
        &outcome.records,
        &outcome.samples,
        outcome.ramp_end_secs,
    );
    let mut records = outcome.records;
    records.sort_by_key(|r| r.id);
    Ok(Report {
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_unix_secs,
        config: RunConfig {
            mode,
            play_url: format!(
                "{} streams from the client API at {source}",
                config.targets.len()
            ),
            publisher: None,
            streams: config.targets.len(),
            viewers: config.viewers,
            duration_secs: config.duration.as_secs_f64(),
            ramp_per_sec: config.ramp_per_sec,
            loadgen_shards: config.shards,
            server_pid: config.server_pid,
        },
        expectations: expectations.iter().map(|e| e.evaluate(&summary)).collect(),
        summary,
        samples: outcome.samples,
        errors: error_counts(&records, 16),
        viewers: records,
        publishers: Vec::new(),
    })
}
