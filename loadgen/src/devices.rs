//! The `devices` and `viewers` commands: their options, the run loop with the progress line,
//! and the reports. The work itself is in the library ([`loadgen::fleet`], [`loadgen::rtsp_load`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::Serialize;

use loadgen::device::clip::VideoClip;
use loadgen::device::synthetic::{StreamShape, VideoSource};
use loadgen::device::EncryptPolicy;
use loadgen::fleet::provision::ProvisionTarget;
use loadgen::fleet::split::{self, Phases, WorkerResult};
use loadgen::fleet::{
    device_uid, play_targets, progress_line, Fleet, FleetConfig, FleetOutcome, FleetSample,
};
use loadgen::procstat::{ProcSample, ProcSampler};
use loadgen::report::{error_counts, Expectation, ExpectationOutcome, Report, RunConfig};
use loadgen::report::{ServerSummary, Summary};
use loadgen::rtsp_load::{self, start_offset, LoadConfig};
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
    /// Number of devices (split over --processes).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Index of the first device (UID 9527 + 12-digit index); with `--devices` it names the
    /// slice of a fleet this run simulates (e.g. two machines: `--first-index 0 --devices 9000`
    /// and `--first-index 9000 --devices 9000`).
    #[arg(long, default_value_t = 0)]
    first_index: usize,
    /// Cache identities here; reruns against the same server do not provision again.
    #[arg(long)]
    identities: Option<PathBuf>,
    /// Devices started per second.
    #[arg(long, default_value = "200/s", value_parser = parse_rate)]
    ramp: f64,
    /// How long to stay online once every device is online (the steady phase, over which the
    /// server's idle CPU is averaged); counts from the moment the whole fleet is online, however
    /// long that took. 0s: stop as soon as it is.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait after the ramp for every device to be online; then the steady phase
    /// (--duration) starts anyway and the missing devices are reported.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    online_timeout: Duration,
    /// Processes to split the devices over (contiguous index ranges, the ramp shared), each with
    /// its own open-file limit; the summary, report and chart are for the whole fleet.
    /// 0: as many as the open-file limit needs (two sockets per device).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Internal: run as one process of a split fleet (one JSON sample per second on stdout,
    /// stop when stdin closes, the worker result to --report).
    #[arg(long, hide = true)]
    worker: bool,
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
    /// Processes the fleet ran in.
    processes: usize,
    /// When the steady phase began (the whole fleet online, or the --online-timeout ran out),
    /// seconds from the start; the server summary averages over the samples after it.
    steady_from_secs: Option<f64>,
    /// The steady phase began because --online-timeout ran out, not with every device online.
    online_timed_out: bool,
    /// Devices that came online per second of the time until all were online.
    online_per_sec: Option<f64>,
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
    let fd_limit = match rt::raise_fd_limit() {
        Ok((soft, _)) => soft,
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            1024
        }
    };
    if args.worker {
        run_worker(&args)?;
        return Ok(true);
    }
    let processes = match args.processes {
        0 => split::processes_for(args.devices, fd_limit),
        n => n.min(args.devices.max(1)),
    };
    let needed = (args.devices as u64 * 2).div_ceil(processes as u64) + split::FD_HEADROOM;
    if fd_limit < needed {
        eprintln!(
            "warning: open-file limit {fd_limit} is below the {needed} that {} devices in {processes} \
             process(es) need: raise --processes",
            args.devices
        );
    }
    let started_unix_secs = unix_secs();
    // The server's memory before the first device connects: the baseline of the per-device cost
    // (the first sample comes a second later, when a fast ramp is already online).
    let server_rss_at_start = args
        .run
        .server_pid
        .and_then(|pid| loadgen::procstat::ProcSampler::new(Some(pid)).rss_bytes());
    let ramp_end = start_offset(args.devices.saturating_sub(1), args.ramp).as_secs_f64();
    let mut phases = Phases::new(
        args.devices,
        ramp_end,
        args.online_timeout.as_secs_f64(),
        args.duration.as_secs_f64(),
    );
    let (outcome, samples) = if processes > 1 {
        run_split(&args, processes, &mut phases)?
    } else {
        let mut fleet = Fleet::start(fleet_config(&args)?, args.run.server_pid)?;
        let samples = sample_until_done(&mut phases, args.devices, args.run.quiet, || {
            Some(fleet.sample())
        });
        (fleet.stop()?, samples)
    };
    let steady: Vec<&ProcSample> = samples
        .iter()
        .filter(|s| phases.is_steady(s.t_secs))
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
    let online_per_sec = outcome
        .all_online_secs
        .filter(|secs| *secs > 0.0)
        .map(|secs| outcome.came_online as f64 / secs);
    let report = DevicesReport {
        processes,
        steady_from_secs: phases.steady_from_secs(),
        online_timed_out: phases.timed_out(),
        online_per_sec,
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

/// The fleet of this process, from the options.
fn fleet_config(args: &DevicesArgs) -> anyhow::Result<FleetConfig> {
    let shape = StreamShape {
        bitrate_bps: args.synthetic,
        fps: args.fps.max(1),
        gop: args.gop.max(1),
        ..StreamShape::default()
    };
    Ok(FleetConfig {
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
    })
}

/// Samples once a second (`sample` returns None when there is nothing left to sample) until
/// [`Phases`] says the run is over; prints the progress line unless `quiet`.
fn sample_until_done(
    phases: &mut Phases,
    devices: usize,
    quiet: bool,
    mut sample: impl FnMut() -> Option<FleetSample>,
) -> Vec<FleetSample> {
    let mut samples = Vec::new();
    let mut tick = Instant::now();
    loop {
        tick += Duration::from_secs(1);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let Some(sample) = sample() else {
            break;
        };
        if !quiet {
            eprintln!("{}", progress_line(&sample, devices));
        }
        let done = phases.observe(sample.t_secs, sample.online);
        samples.push(sample);
        if done {
            break;
        }
    }
    samples
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One process of a split fleet: a JSON sample per second on stdout until stdin closes (or the
/// parent stops reading), then the [`WorkerResult`] to `--report`.
fn run_worker(args: &DevicesArgs) -> anyhow::Result<()> {
    let report = args
        .run
        .report
        .clone()
        .context("a --worker needs --report for its result")?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = stop.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        watcher.store(true, Ordering::Relaxed);
    });
    let started_unix_micros = unix_micros();
    let mut fleet = Fleet::start(fleet_config(args)?, None)?;
    let mut tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < tick + Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        tick += Duration::from_secs(1);
        let line = serde_json::to_string(&fleet.sample())?;
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    let (outcome, online_at_secs) = fleet.stop_with_online_times()?;
    let result = WorkerResult {
        started_unix_micros,
        outcome,
        online_at_secs,
    };
    std::fs::write(&report, serde_json::to_vec(&result)?)
        .with_context(|| format!("writing {}", report.display()))?;
    Ok(())
}

/// Runs the fleet as `processes` workers (this program with `--worker`, the same options and
/// its slice of the devices and of the ramp), adds up their samples each second, samples the
/// server itself, and merges their results.
fn run_split(
    args: &DevicesArgs,
    processes: usize,
    phases: &mut Phases,
) -> anyhow::Result<(FleetOutcome, Vec<FleetSample>)> {
    let slices = split::partition(args.first_index, args.devices, processes);
    let dir = std::env::temp_dir().join(format!("loadgen-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding the loadgen executable")?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let ramp_each = args.ramp / slices.len() as f64;
    let latest: Arc<Mutex<Vec<Option<FleetSample>>>> =
        Arc::new(Mutex::new(vec![None; slices.len()]));
    let started_unix_micros = unix_micros();
    let started = Instant::now();
    let mut workers = Vec::new();
    for (i, (first, count)) in slices.iter().enumerate() {
        let result = dir.join(format!("worker-{i}.json"));
        let mut command = Command::new(&exe);
        // Later options override earlier ones (args_override_self on the devices command).
        command
            .args(&argv)
            .args(["--devices", &count.to_string()])
            .args(["--first-index", &first.to_string()])
            .args(["--ramp", &format!("{ramp_each}/s")])
            .args(["--processes", "1", "--worker", "--quiet"])
            .arg("--report")
            .arg(&result);
        if let Some(log) = &args.alarm_log {
            command
                .arg("--alarm-log")
                .arg(format!("{}.{i}", log.display()));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {i} ({})", exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let latest = latest.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(sample) = serde_json::from_str::<FleetSample>(&line) {
                    latest.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(sample);
                }
            }
        });
        workers.push((child, result));
    }
    eprintln!(
        "{} devices in {} processes ({}), {ramp_each:.0}/s each",
        args.devices,
        slices.len(),
        slices
            .iter()
            .map(|(first, n)| format!("{first}..{}", first + n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut server = args.run.server_pid.map(|pid| ProcSampler::new(Some(pid)));
    if let Some(s) = server.as_mut() {
        s.sample();
    }
    let samples = sample_until_done(phases, args.devices, args.run.quiet, || {
        if workers
            .iter_mut()
            .all(|(child, _)| matches!(child.try_wait(), Ok(Some(_))))
        {
            return None;
        }
        let parts: Vec<FleetSample> = latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect();
        let server = server.as_mut().and_then(|s| s.sample());
        Some(split::sum_samples(
            started.elapsed().as_secs_f64(),
            &parts,
            server,
        ))
    });
    let mut results = Vec::new();
    for (i, (mut child, path)) in workers.into_iter().enumerate() {
        drop(child.stdin.take());
        let status = child
            .wait()
            .with_context(|| format!("waiting for worker {i}"))?;
        match std::fs::read(&path) {
            Ok(bytes) => results.push(
                serde_json::from_slice::<WorkerResult>(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            Err(e) => eprintln!(
                "warning: worker {i} ({status}) left no result in {}: {e}",
                path.display()
            ),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let outcome =
        split::merge(&results, started_unix_micros, args.devices).context("no worker result")?;
    Ok((outcome, samples))
}

fn print_devices(report: &DevicesReport) {
    let o = &report.outcome;
    println!(
        "devices: {} requested, {} came online, all online after {}{}; online at p50 {:.1} s p99 {:.1} s{}",
        o.devices,
        o.came_online,
        o.all_online_secs
            .map(|s| format!("{s:.1} s"))
            .unwrap_or_else(|| "never".into()),
        report
            .online_per_sec
            .map(|r| format!(" ({r:.0} devices/s)"))
            .unwrap_or_default(),
        o.online_at_secs.p50,
        o.online_at_secs.p99,
        if report.processes > 1 {
            format!(" [{} processes]", report.processes)
        } else {
            String::new()
        }
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
            "server: CPU {:.1}% of a core {}, RSS max {:.1} MB, {} KiB more per online device, {} open files at the end (most {})",
            server.cpu_pct_mean,
            match (report.steady_from_secs, report.online_timed_out) {
                (Some(from), false) => format!("with every device online (from t={from:.0}s)"),
                (Some(from), true) => format!("from t={from:.0}s (the fleet was not all online)"),
                (None, _) => "over the run".to_owned(),
            },
            server.rss_mb_max,
            report
                .server_rss_kib_per_device
                .map(|k| format!("{k:.1}"))
                .unwrap_or_else(|| "?".into()),
            server
                .open_fds_end
                .map_or_else(|| "?".into(), |n| n.to_string()),
            server
                .open_fds_max
                .map_or_else(|| "?".into(), |n| n.to_string())
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
        panels.push(Panel {
            title: "Server file descriptors".into(),
            unit: "open".into(),
            series: vec![line("open", &|s| {
                s.server.as_ref().and_then(|p| p.open_fds.map(|n| n as f64))
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
