//! `loadgen`: load against the relay (or any RTSP server) with a report for capacity planning.
//!
//! `loadgen devices` runs simulated ROP cameras against the server (provisioning, keep-alive and
//! signalling links, streams on demand); `loadgen viewers` asks the client API for play sessions
//! of online devices and plays them, measuring frame latency from the devices' SEI stamps.
//! `loadgen rtsp` plays S streams of any RTSP server (URL templates with `{n}` or URL lists)
//! with V viewers each over TCP interleaved, optionally publishing them first (ffmpeg, or
//! loadgen's own synthetic H.264 with SEI send stamps for frame latency), and writes a JSON
//! report and an SVG chart; the exit code says whether the `--expect` targets were met (0 met,
//! 3 missed, 1 could not run). `loadgen peers` puts the reports of several servers under the
//! same load side by side.

mod devices;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

use loadgen::device::synthetic::StreamShape;
use loadgen::report::{error_counts, Expectation, Report, RunConfig, Sample, Summary};
use loadgen::rtsp_load::{self, LoadConfig, PlayTarget};
use loadgen::rtsp_publish::{PublishConfig, PublisherRecord, Publishers};
use loadgen::svg::{self, Panel, Series};
use loadgen::url_template;

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Generic RTSP mode: S streams x V viewers on any RTSP server (publishing them first if
    /// asked).
    Rtsp(RtspArgs),
    /// Device mode: N simulated ROP cameras (provisioned, online, streaming when asked).
    // Later options override earlier ones: a split fleet's workers get the parent's options with
    // their own --devices/--first-index/--ramp/--report appended.
    #[command(args_override_self = true)]
    Devices(devices::DevicesArgs),
    /// Viewer mode: play sessions from the client API for online devices, played over RTSP.
    Viewers(devices::ViewersArgs),
    /// Capacity planning: the hardware a deployment needs, from the costs measured in reports
    /// of earlier `devices` and `viewers` runs.
    Plan(PlanArgs),
    /// Several servers under the same `loadgen rtsp` load, side by side: a Markdown table of
    /// ratios (against a baseline server and against iperf3's loopback ceiling) and a chart.
    Peers(PeersArgs),
}

#[derive(Debug, Args)]
struct PeersArgs {
    /// SERVER=REPORT.json: the `--report` of a `loadgen rtsp` run against SERVER, once per
    /// server and size (streams x viewers per stream).
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
    /// The server the others are compared with (default: the first one named).
    #[arg(long)]
    baseline: Option<String>,
    /// `iperf3 -c 127.0.0.1 -J` output from the same run: the loopback TCP ceiling.
    #[arg(long)]
    iperf3: Option<PathBuf>,
    /// Bitrate of each published stream: a size is held when the viewers get at least 90 % of it.
    #[arg(long, value_parser = devices::parse_bitrate, default_value = "2M")]
    bitrate: u64,
    /// Write the SVG chart here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn read_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn peers_command(args: PeersArgs) -> anyhow::Result<bool> {
    use loadgen::peers;
    let mut runs = Vec::new();
    for run in &args.runs {
        let Some((server, path)) = run.split_once('=') else {
            bail!("--run {run:?}: expected SERVER=REPORT.json");
        };
        let path = PathBuf::from(path);
        let json = read_json(&path)?;
        runs.push(peers::read_run(
            &path.display().to_string(),
            server,
            &json,
            args.bitrate,
        )?);
    }
    let iperf = match &args.iperf3 {
        Some(path) => Some(peers::read_iperf(
            &path.display().to_string(),
            &read_json(path)?,
        )?),
        None => None,
    };
    let baseline = args
        .baseline
        .clone()
        .or_else(|| runs.first().map(|r| r.server.clone()))
        .unwrap_or_default();
    print!(
        "{}",
        peers::render_markdown(&runs, &baseline, iperf.as_ref())
    );
    if let Some(path) = &args.svg {
        std::fs::write(path, peers::chart(&runs, iperf.as_ref()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(true)
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// JSON reports (`--report`) of `loadgen devices` runs (at least one with idle devices and
    /// one with live streams, both with --server-pid) and of the `loadgen viewers` runs beside
    /// them.
    #[arg(long = "report", required = true)]
    reports: Vec<PathBuf>,
    /// Devices online.
    #[arg(long)]
    devices: u64,
    /// Live streams at once.
    #[arg(long, default_value_t = 0)]
    streams: u64,
    /// Viewers in all (default: one per stream).
    #[arg(long)]
    viewers: Option<u64>,
    /// Bitrate of a stream, e.g. 2M or 512k.
    #[arg(long, value_parser = devices::parse_bitrate, default_value = "2M")]
    bitrate: u64,
    /// Cores of the host in mind: says whether the deployment fits on it.
    #[arg(long)]
    cores: Option<u32>,
    /// Print the model and the plan as JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn plan_command(args: PlanArgs) -> anyhow::Result<bool> {
    use loadgen::plan;
    let mut reports = Vec::new();
    for path in &args.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        reports.push(plan::read_report(&path.display().to_string(), &json)?);
    }
    let model = plan::CostModel::fit(plan::observations(reports)?)?;
    let deployment = plan::Deployment {
        devices: args.devices,
        streams: args.streams,
        viewers: args.viewers.unwrap_or(args.streams),
        bitrate_mbps: args.bitrate as f64 / 1e6,
        cores: args.cores,
    };
    let priced = model.price(&deployment);
    if args.json {
        let out = serde_json::json!({"model": model, "plan": priced});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", plan::render_text(&model, &priced));
    }
    Ok(priced
        .utilisation_on_given_cores
        .is_none_or(|u| u <= plan::TARGET_UTILISATION))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublisherKind {
    /// ffmpeg pushes `--publish-file` (looped, `-c copy -re`) or a test pattern over RTSP/TCP,
    /// one process per stream. Its frames carry no send stamps: no latency measured.
    Ffmpeg,
    /// loadgen pushes synthetic H.264 (`--bitrate`, `--fps`, `--gop`) with an SEI send stamp
    /// in every frame, so the viewers measure end-to-end frame latency through the server.
    Loadgen,
}

#[derive(Debug, Args)]
struct RtspArgs {
    /// URL the viewers play (rtsp://[user:pass@]host:port/path); with --streams, a template
    /// with `{n}` for the stream's index (0-based), or `@FILE` with one URL per line.
    #[arg(long)]
    play_url: String,
    /// Streams: viewer `i` plays stream `i % streams`; each has its own publisher.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Viewers in all (default: one per stream).
    #[arg(long, conflicts_with = "viewers_per_stream")]
    viewers: Option<usize>,
    /// Viewers of each stream (viewers in all: this times --streams).
    #[arg(long)]
    viewers_per_stream: Option<usize>,
    /// URL to publish to before the viewers start (ANNOUNCE/RECORD); a template or `@FILE`
    /// like --play-url (e.g. the signed URLs of `relay url publish --count S`).
    #[arg(long)]
    publish_url: Option<String>,
    /// Publisher program.
    #[arg(long, value_enum, default_value = "ffmpeg")]
    publisher: PublisherKind,
    /// Media file to publish, looped without re-encoding (ffmpeg).
    #[arg(long, conflicts_with = "publish_testsrc")]
    publish_file: Option<PathBuf>,
    /// Instead of a file, encode a 1280x720 30 fps test pattern at this bitrate (e.g. 4M; ffmpeg).
    #[arg(long)]
    publish_testsrc: Option<String>,
    /// Video bitrate of the loadgen publisher's synthetic H.264, e.g. 2M or 512k.
    #[arg(long, value_parser = devices::parse_bitrate, default_value = "2M")]
    bitrate: u64,
    /// Frames per second (loadgen publisher).
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Frames from one keyframe to the next (loadgen publisher).
    #[arg(long, default_value_t = 50)]
    gop: u32,
    /// How long the viewers play (after the first one starts).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Viewers started per second (publishers start at the same rate before them).
    #[arg(long, default_value = "100/s", value_parser = parse_rate)]
    ramp: f64,
    /// Executor threads for the viewers (unpinned).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// How long to wait for each stream to become playable (e.g. for its publisher) before
    /// the viewers start.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    run: crate::RunOutput,
}

impl RtspArgs {
    fn total_viewers(&self) -> usize {
        match (self.viewers, self.viewers_per_stream) {
            (_, Some(per_stream)) => per_stream * self.streams,
            (Some(viewers), None) => viewers,
            (None, None) => self.streams,
        }
    }
}

/// What every mode shares: the server it samples, the targets it checks, where its report goes.
#[derive(Debug, Args)]
struct RunOutput {
    /// PID of the server, for its CPU (total and per thread) and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Targets, e.g. `loss=0,ttfk-p99<500ms,latency-p99<5ms,disconnects=0,gbps>1` (players) or
    /// `offline=0,online-time<60s,rss-mb<1024,errors=0` (devices). Missed targets: exit code 3.
    #[arg(long)]
    expect: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write an SVG chart of the run over time (throughput or devices, CPU, memory) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress line every second.
    #[arg(long)]
    quiet: bool,
}

impl RunOutput {
    fn expectations(&self) -> anyhow::Result<Vec<Expectation>> {
        match &self.expect {
            Some(list) => Ok(Expectation::parse_list(list)?),
            None => Ok(Vec::new()),
        }
    }
}

pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("{text:?}: expected a positive rate such as 100/s")),
    }
}

/// A publisher process, stopped when dropped.
struct Publisher(Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The streams' publishers while the run lasts.
enum Publishing {
    Ffmpeg(Vec<Publisher>),
    Loadgen(Publishers),
}

impl Publishing {
    /// Stops the publishers; the loadgen's own say how they did.
    fn stop(self) -> anyhow::Result<Vec<PublisherRecord>> {
        match self {
            Publishing::Ffmpeg(processes) => {
                drop(processes);
                Ok(Vec::new())
            }
            Publishing::Loadgen(publishers) => Ok(publishers.stop()?),
        }
    }
}

/// Starts one publisher per URL; returns them with a description for the report.
fn start_publishers(args: &RtspArgs, urls: &[String]) -> anyhow::Result<(Publishing, String)> {
    if args.publisher == PublisherKind::Loadgen {
        if args.publish_file.is_some() || args.publish_testsrc.is_some() {
            bail!("--publish-file and --publish-testsrc are for --publisher ffmpeg");
        }
        let targets = urls
            .iter()
            .map(|url| PlayTarget::parse(url).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shape = StreamShape {
            bitrate_bps: args.bitrate,
            fps: args.fps.max(1),
            gop: args.gop.max(1),
            ..StreamShape::default()
        };
        let publishers = Publishers::start(PublishConfig {
            targets,
            shape,
            ramp_per_sec: args.ramp,
            stamps: true,
        })?;
        let description = format!(
            "loadgen synthetic H.264 {} kbit/s {} fps GOP {} with SEI send stamps",
            args.bitrate / 1000,
            shape.fps,
            shape.gop
        );
        return Ok((Publishing::Loadgen(publishers), description));
    }
    let mut processes = Vec::with_capacity(urls.len());
    let mut description = String::new();
    for (n, url) in urls.iter().enumerate() {
        if n > 0 {
            std::thread::sleep(Duration::from_secs_f64(1.0 / args.ramp));
        }
        let (child, what) = spawn_ffmpeg(args, url)?;
        processes.push(Publisher(child));
        description = what;
    }
    Ok((Publishing::Ffmpeg(processes), description))
}

/// Waits until every loadgen publisher is recording, for at most `limit` after the last one
/// was due to start.
fn wait_recording(publishers: &Publishers, args: &RtspArgs) -> anyhow::Result<()> {
    let (streams, limit) = (args.streams, args.wait);
    let deadline = std::time::Instant::now()
        + rtsp_load::start_offset(streams.saturating_sub(1), args.ramp)
        + limit;
    loop {
        let recording = publishers.totals().recording.load(Ordering::Relaxed);
        if recording >= streams as u64 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "{recording} of {streams} publishers recording after {}; last failure: {}",
                humantime::format_duration(limit),
                publishers.last_error().as_deref().unwrap_or("none")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_ffmpeg(args: &RtspArgs, url: &str) -> anyhow::Result<(Child, String)> {
    let mut command = Command::new("ffmpeg");
    command.args(["-hide_banner", "-nostdin", "-loglevel", "error"]);
    let description = if let Some(file) = &args.publish_file {
        command
            .args(["-re", "-stream_loop", "-1", "-i"])
            .arg(file)
            .args(["-c", "copy"]);
        format!("ffmpeg -c copy loop of {}", file.display())
    } else if let Some(bitrate) = &args.publish_testsrc {
        command
            .args(["-re", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate])
            .args(["-g", "30", "-pix_fmt", "yuv420p"]);
        format!("ffmpeg testsrc2 1280x720@30 libx264 {bitrate}")
    } else {
        bail!("--publisher ffmpeg needs --publish-file or --publish-testsrc");
    };
    command
        .args(["-f", "rtsp", "-rtsp_transport", "tcp"])
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let child = command
        .spawn()
        .context("starting ffmpeg (is it installed?)")?;
    Ok((child, description))
}

pub(crate) fn chart(report: &Report) -> String {
    let samples = &report.samples;
    let line = |name: &str, value: &dyn Fn(&Sample) -> Option<f64>| Series {
        name: name.to_owned(),
        points: samples
            .iter()
            .filter_map(|s| Some((s.t_secs, value(s)?)))
            .collect(),
    };
    let mut cpu = vec![line("server total", &|s| {
        s.server.as_ref().map(|p| p.cpu_pct)
    })];
    if let Some(server) = &report.summary.server {
        for (thread, mean) in &server.threads_cpu_pct_mean {
            if *mean >= 1.0 {
                let thread = thread.clone();
                cpu.push(line(&thread.clone(), &move |s| {
                    s.server
                        .as_ref()
                        .map(|p| *p.threads.get(&thread).unwrap_or(&0.0))
                }));
            }
        }
    }
    cpu.push(line("loadgen", &|s| s.loadgen_cpu_pct));
    let mut panels = vec![
        Panel {
            title: "Received by all viewers".into(),
            unit: "Gbit/s".into(),
            series: vec![line("throughput", &|s| Some(s.rx_bits_per_sec / 1e9))],
        },
        Panel {
            title: "Viewers".into(),
            unit: "count".into(),
            series: vec![
                line("playing", &|s| Some(s.viewers_playing as f64)),
                line("saw a keyframe", &|s| Some(s.viewers_with_keyframe as f64)),
            ],
        },
        Panel {
            title: "CPU".into(),
            unit: "% of one core".into(),
            series: cpu,
        },
    ];
    if report.summary.server.is_some() {
        panels.push(Panel {
            title: "Server memory".into(),
            unit: "RSS MB".into(),
            series: vec![line("RSS", &|s| {
                s.server
                    .as_ref()
                    .map(|p| p.rss_bytes as f64 / (1024.0 * 1024.0))
            })],
        });
    }
    svg::render(
        &format!(
            "{} RTSP viewers of {} streams: steady {:.3} Gbit/s, loss {}, time to keyframe p99 {:.0} ms",
            report.config.viewers,
            report.config.streams,
            report.summary.steady_gbps,
            report.summary.lost_packets,
            report.summary.ttfk_ms.p99
        ),
        "seconds since start",
        &panels,
    )
}

fn rtsp_command(args: RtspArgs) -> anyhow::Result<bool> {
    let expectations = args.run.expectations()?;
    let viewers = args.total_viewers();
    match rt::raise_fd_limit() {
        Ok((soft, _)) if soft < (viewers + args.streams) as u64 + 64 => eprintln!(
            "warning: open-file limit {soft} is below {viewers} viewers and {} publishers plus margin",
            args.streams
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    let targets = url_template::read_list(&args.play_url, args.streams)
        .context("--play-url")?
        .iter()
        .map(|url| PlayTarget::parse(url).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let publishing = match &args.publish_url {
        Some(template) => {
            let urls = url_template::read_list(template, args.streams).context("--publish-url")?;
            Some(start_publishers(&args, &urls)?)
        }
        None => None,
    };
    if let Some((Publishing::Loadgen(publishers), _)) = &publishing {
        // A server may answer a DESCRIBE only once the stream has data (GStreamer's blocks).
        wait_recording(publishers, &args)?;
    }
    for target in &targets {
        rtsp_load::wait_until_playable(target, args.wait)
            .map_err(|e| anyhow::anyhow!("{} is not playable: {e}", target.url))?;
    }
    let config = LoadConfig {
        targets,
        viewers,
        duration: args.duration,
        ramp_per_sec: args.ramp,
        shards: args.shards,
        server_pid: args.run.server_pid,
        progress: !args.run.quiet,
        describe_retry: Duration::ZERO,
    };
    let started_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let outcome = rtsp_load::run(&config)?;
    let (publisher, publishers) = match publishing {
        Some((publishing, description)) => (Some(description), publishing.stop()?),
        None => (None, Vec::new()),
    };
    let summary = Summary::compute(
        viewers,
        &outcome.records,
        &outcome.samples,
        outcome.ramp_end_secs,
    );
    let report = Report {
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_unix_secs,
        config: RunConfig {
            mode: "rtsp",
            play_url: args.play_url.clone(),
            publisher,
            streams: args.streams,
            viewers,
            duration_secs: args.duration.as_secs_f64(),
            ramp_per_sec: args.ramp,
            loadgen_shards: args.shards,
            server_pid: args.run.server_pid,
        },
        expectations: expectations.iter().map(|e| e.evaluate(&summary)).collect(),
        summary,
        samples: outcome.samples,
        errors: error_counts(&outcome.records, 16),
        viewers: {
            let mut records = outcome.records;
            records.sort_by_key(|r| r.id);
            records
        },
        publishers,
    };
    output_viewer_report(&report, args.run.report.as_deref(), args.run.svg.as_deref())?;
    Ok(report.targets_met())
}

/// Prints the summary, the errors and the targets; writes the JSON report and the chart.
pub(crate) fn output_viewer_report(
    report: &Report,
    json: Option<&std::path::Path>,
    svg: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    print!("{}", report.summary.render_text());
    if !report.publishers.is_empty() {
        let sum =
            |f: &dyn Fn(&PublisherRecord) -> u64| report.publishers.iter().map(f).sum::<u64>();
        println!(
            "publishers: {} streams, {} sessions recorded, {} failures, {} frames sent",
            report.publishers.len(),
            sum(&|p| u64::from(p.sessions)),
            sum(&|p| u64::from(p.failures)),
            sum(&|p| p.frames)
        );
        for publisher in report.publishers.iter().filter(|p| p.failures > 0) {
            println!(
                "  stream {}: {} failures, last: {}",
                publisher.stream,
                publisher.failures,
                publisher.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    for (reason, count) in &report.errors {
        println!("  {count} x {reason}");
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
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = svg {
        std::fs::write(path, chart(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Mode::Rtsp(args) => rtsp_command(args),
        Mode::Devices(args) => devices::devices_command(args),
        Mode::Viewers(args) => devices::viewers_command(args),
        Mode::Plan(args) => plan_command(args),
        Mode::Peers(args) => peers_command(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
