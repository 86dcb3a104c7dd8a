//! Device mode: a fleet of simulated ROP cameras over real sockets, as tasks on a few `rt`
//! shards (thousands per core, not a thread each). Each device provisions (or takes its cached
//! identity), opens its keep-alive and signalling links, stays online with heartbeats, answers
//! the server, streams when asked, and reconnects after a failure. [`Fleet::start`] ramps the
//! fleet up; [`Fleet::sample`] reads the live counters once a second for the progress line and
//! the report; [`Fleet::stop`] ends it and returns per-device online times and error counts.

pub mod device;
pub mod provision;
pub mod split;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::device::synthetic::{Filler, VideoSource};
use crate::device::EncryptPolicy;
use crate::procstat::{ProcSample, ProcSampler};
use crate::report::{micros_histogram, Percentiles};
use crate::rtsp_load::{start_offset, wait_for_ramp_slot, PlayTarget};
use provision::{IdentityCache, ProvisionTarget};

/// The UID of device `index`: 16 characters, as the platform's UIDs are.
pub fn device_uid(index: usize) -> String {
    format!("9527{index:012}")
}

/// Connections one source address may carry to one server port before we use the next
/// 127.x.y.z (the ephemeral range is ~28,000 ports).
pub const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// What the fleet does.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub provision: ProvisionTarget,
    /// The device ports' address (keep-alive, signalling, streams).
    pub device_ip: IpAddr,
    /// Devices `first..first + count` of the fleet (processes split a fleet this way).
    pub first: usize,
    pub count: usize,
    /// Devices started per second.
    pub ramp_per_sec: f64,
    pub heartbeat: Duration,
    /// Alarms per device per minute (0: none).
    pub alarms_per_min: f64,
    /// Frames encrypted on encryptTCP streams.
    pub encrypt: EncryptPolicy,
    pub source: VideoSource,
    /// Where identities are cached (None: provision every run, keep nothing).
    pub identities: Option<std::path::PathBuf>,
    pub shards: usize,
    /// Source addresses to spread connections over when connecting to loopback (0: one per
    /// [`CONNECTIONS_PER_SOURCE`] devices, at least one).
    pub sources: usize,
    /// Keep-alive and signalling ports to use instead of the ones registration named (a
    /// server behind a port mapping, or one listening on ephemeral ports).
    pub keepalive_port: Option<u16>,
    pub signaling_port: Option<u16>,
    /// Put SEI send stamps in the frames (off for servers that refuse SEI).
    pub stamps: bool,
    /// Record every answered alarm here, each alarm tagged in its AI type (`people,t<n>`,
    /// unique in the run) so that the partner's webhook log can be compared with what the
    /// server acknowledged.
    pub alarm_log: Option<Arc<AlarmLog>>,
}

impl FleetConfig {
    fn alarm_interval(&self) -> Option<Duration> {
        (self.alarms_per_min > 0.0 && self.alarms_per_min.is_finite())
            .then(|| Duration::from_secs_f64(60.0 / self.alarms_per_min))
    }

    fn source_count(&self) -> usize {
        if self.sources > 0 {
            self.sources
        } else {
            self.count.div_ceil(CONNECTIONS_PER_SOURCE).max(1)
        }
    }

    /// The local address device `index` connects from: 127.0.0.1, 127.0.0.2, ... in turn when
    /// the server is on loopback; the kernel's choice otherwise.
    pub fn source_address(&self, index: usize) -> Option<SocketAddr> {
        let IpAddr::V4(server) = self.device_ip else {
            return None;
        };
        if !server.is_loopback() || self.source_count() == 1 {
            return None;
        }
        let n = (index % self.source_count()) as u32 + 1;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + n);
        Some(SocketAddr::new(IpAddr::V4(ip), 0))
    }
}

/// Live counters of all shards.
#[derive(Debug, Default)]
pub struct Totals {
    pub started: AtomicU64,
    pub provisioned: AtomicU64,
    pub from_cache: AtomicU64,
    pub online: AtomicU64,
    /// Link handshakes completed (two per device session).
    pub handshakes: AtomicU64,
    pub errors: AtomicU64,
    /// Sessions started again after one was online and failed.
    pub reconnects: AtomicU64,
    pub heartbeats: AtomicU64,
    pub alarms: AtomicU64,
    /// Alarms the server answered with 200 (it committed them to its queue).
    pub alarms_acked: AtomicU64,
    /// Alarms the server answered with an error (not stored: a device sends them again).
    pub alarms_refused: AtomicU64,
    pub preview_starts: AtomicU64,
    pub preview_stops: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_ended: AtomicU64,
    pub frames_sent: AtomicU64,
    pub media_bytes_sent: AtomicU64,
    pub control_bytes_sent: AtomicU64,
}

/// What every device task of a shard shares.
#[derive(Clone)]
pub struct FleetShared {
    config: Arc<FleetConfig>,
    totals: Arc<Totals>,
    outcome: Arc<Mutex<Collected>>,
    cache: Option<Rc<IdentityCache>>,
    source: VideoSource,
    filler: Filler,
    alarm_log: Option<Arc<AlarmLog>>,
}

/// The answered alarms of a run, one line each: `uid`, AI type (with its tag), reply code,
/// tab-separated.
#[derive(Debug)]
pub struct AlarmLog(Mutex<std::io::LineWriter<std::fs::File>>);

impl AlarmLog {
    /// Creates (truncates) the log file.
    pub fn create(path: &std::path::Path) -> std::io::Result<AlarmLog> {
        // Line by line: a run stopped with a signal keeps every alarm answered before it.
        Ok(AlarmLog(Mutex::new(std::io::LineWriter::new(
            std::fs::File::create(path)?,
        ))))
    }

    /// Records one answered alarm.
    pub fn record(&self, uid: &str, ai_type: &str, code: u32) {
        use std::io::Write as _;
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{uid}\t{ai_type}\t{code}");
    }

    fn flush(&self) -> std::io::Result<()> {
        use std::io::Write as _;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

impl FleetShared {
    fn error(&self, kind: &str) {
        self.totals.errors.fetch_add(1, Ordering::Relaxed);
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        *outcome.errors.entry(kind.to_owned()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_to_30_s_with_equal_jitter() {
        let ms = |failures, random| reconnect_delay(failures, random).as_millis();
        assert_eq!((ms(1, 0.0), ms(1, 1.0)), (500, 1000));
        assert_eq!((ms(2, 0.0), ms(2, 1.0)), (1000, 2000));
        assert_eq!((ms(5, 0.0), ms(5, 1.0)), (8000, 16000));
        assert_eq!((ms(6, 0.0), ms(6, 1.0)), (15000, 30000));
        assert_eq!(ms(60, 1.0), 30000);
        assert_eq!(ms(0, 0.5), 750);
    }
}

#[derive(Debug, Default)]
struct Collected {
    /// Seconds from the fleet's start until each device was first online.
    online_at_secs: Vec<f64>,
    errors: BTreeMap<String, usize>,
}

/// One second of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSample {
    pub t_secs: f64,
    pub online: u64,
    pub started: u64,
    pub handshakes_per_sec: f64,
    pub errors_total: u64,
    pub reconnects_total: u64,
    pub streams: u64,
    pub tx_bits_per_sec: f64,
    pub server: Option<ProcSample>,
    pub loadgen_cpu_pct: Option<f64>,
}

/// A running fleet.
pub struct Fleet {
    config: Arc<FleetConfig>,
    totals: Arc<Totals>,
    outcome: Arc<Mutex<Collected>>,
    running: rt::shard::RunningShards<()>,
    alarm_log: Option<Arc<AlarmLog>>,
    started: Instant,
    last: (Instant, u64, u64),
    server: Option<ProcSampler>,
    own: ProcSampler,
}

impl Fleet {
    /// Starts the devices on their shards (they ramp up by themselves).
    pub fn start(config: FleetConfig, server_pid: Option<u32>) -> Result<Fleet, rt::ShardError> {
        let config = Arc::new(config);
        let totals = Arc::new(Totals::default());
        let outcome = Arc::new(Mutex::new(Collected::default()));
        let started = Instant::now();
        let filler = Filler::for_source(&config.source);
        let alarm_log = config.alarm_log.clone();
        let pool = rt::ShardPool::new(config.shards.max(1))
            .pin(false)
            .name("devices")
            .io_memory(1 << 20);
        let (c, t, o, log) = (
            config.clone(),
            totals.clone(),
            outcome.clone(),
            alarm_log.clone(),
        );
        let running = pool.start(move |ctx| {
            let shared = FleetShared {
                config: c.clone(),
                totals: t.clone(),
                outcome: o.clone(),
                cache: c
                    .identities
                    .as_deref()
                    .and_then(|dir| IdentityCache::open(dir).ok())
                    .map(Rc::new),
                source: c.source.clone(),
                filler: filler.clone(),
                alarm_log: log.clone(),
            };
            async move { shard_devices(ctx, shared, started).await }
        })?;
        let mut server = server_pid.map(|pid| ProcSampler::new(Some(pid)));
        if let Some(s) = server.as_mut() {
            s.sample();
        }
        let mut own = ProcSampler::new(None);
        own.sample();
        Ok(Fleet {
            config,
            totals,
            outcome,
            running,
            alarm_log,
            started,
            last: (started, 0, 0),
            server,
            own,
        })
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// When the last device is due to start, seconds after the start.
    pub fn ramp_end_secs(&self) -> f64 {
        start_offset(
            self.config.count.saturating_sub(1),
            self.config.ramp_per_sec,
        )
        .as_secs_f64()
    }

    /// Reads the counters (and the server's /proc) now.
    pub fn sample(&mut self) -> FleetSample {
        let now = Instant::now();
        let t = &self.totals;
        let handshakes = t.handshakes.load(Ordering::Relaxed);
        let bytes = t.media_bytes_sent.load(Ordering::Relaxed)
            + t.control_bytes_sent.load(Ordering::Relaxed);
        let seconds = now.duration_since(self.last.0).as_secs_f64().max(1e-6);
        let sample = FleetSample {
            t_secs: now.duration_since(self.started).as_secs_f64(),
            online: t.online.load(Ordering::Relaxed),
            started: t.started.load(Ordering::Relaxed),
            handshakes_per_sec: (handshakes - self.last.1) as f64 / seconds,
            errors_total: t.errors.load(Ordering::Relaxed),
            reconnects_total: t.reconnects.load(Ordering::Relaxed),
            streams: t
                .streams_started
                .load(Ordering::Relaxed)
                .saturating_sub(t.streams_ended.load(Ordering::Relaxed)),
            tx_bits_per_sec: (bytes - self.last.2) as f64 * 8.0 / seconds,
            server: self.server.as_mut().and_then(|s| s.sample()),
            loadgen_cpu_pct: self.own.sample().map(|s| s.cpu_pct),
        };
        self.last = (now, handshakes, bytes);
        sample
    }

    /// The progress line for a sample.
    pub fn progress_line(&self, sample: &FleetSample) -> String {
        progress_line(sample, self.config.count)
    }

    /// Ends the run: closes every device and returns what was collected.
    pub fn stop(self) -> Result<FleetOutcome, rt::ShardError> {
        self.stop_with_online_times().map(|(outcome, _)| outcome)
    }

    /// [`stop`](Self::stop), also returning each device's first-online time (seconds from the
    /// start, unsorted), which a split fleet's parent merges.
    pub fn stop_with_online_times(self) -> Result<(FleetOutcome, Vec<f64>), rt::ShardError> {
        self.running.shutdown().trigger();
        self.running.join()?;
        if let Some(log) = &self.alarm_log {
            if let Err(e) = log.flush() {
                eprintln!("warning: alarm log not written: {e}");
            }
        }
        let collected =
            std::mem::take(&mut *self.outcome.lock().unwrap_or_else(|e| e.into_inner()));
        let times = collected.online_at_secs.clone();
        let outcome = FleetOutcome::from_online_times(
            self.config.count,
            collected.online_at_secs,
            collected.errors,
            &self.totals,
        );
        Ok((outcome, times))
    }
}

/// The progress line for a sample of a fleet of `devices`.
pub fn progress_line(sample: &FleetSample, devices: usize) -> String {
    let mut line = format!(
        "t={:>4.0}s online {}/{} started {} handshakes {:.0}/s errors {} reconnects {} streams {} tx {:.1} Mbit/s",
        sample.t_secs,
        sample.online,
        devices,
        sample.started,
        sample.handshakes_per_sec,
        sample.errors_total,
        sample.reconnects_total,
        sample.streams,
        sample.tx_bits_per_sec / 1e6
    );
    if let Some(server) = &sample.server {
        line.push_str(&format!(
            " | server CPU {:.0}% RSS {:.1} MB",
            server.cpu_pct,
            server.rss_bytes as f64 / 1048576.0
        ));
    }
    if let Some(cpu) = sample.loadgen_cpu_pct {
        line.push_str(&format!(" | loadgen CPU {cpu:.0}%"));
    }
    line
}

/// What a fleet run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetOutcome {
    pub devices: usize,
    pub came_online: usize,
    /// Seconds from the start until every device had been online (None: some never were).
    pub all_online_secs: Option<f64>,
    /// Seconds from the start until each device was first online.
    pub online_at_secs: Percentiles,
    pub provisioned: u64,
    pub from_cache: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, usize>,
    pub heartbeats: u64,
    /// Alarms sent.
    pub alarms: u64,
    /// Alarms answered 200 (the server stored them: they must reach the webhook).
    pub alarms_acked: u64,
    /// Alarms answered with an error.
    pub alarms_refused: u64,
    pub preview_starts: u64,
    pub preview_stops: u64,
    pub keyframe_requests: u64,
    pub streams_started: u64,
    pub frames_sent: u64,
    pub media_bytes_sent: u64,
}

impl FleetOutcome {
    fn from_online_times(
        devices: usize,
        online_at_secs: Vec<f64>,
        error_kinds: BTreeMap<String, usize>,
        totals: &Totals,
    ) -> FleetOutcome {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut outcome = FleetOutcome {
            devices,
            came_online: 0,
            all_online_secs: None,
            online_at_secs: Percentiles::default(),
            provisioned: load(&totals.provisioned),
            from_cache: load(&totals.from_cache),
            reconnects: load(&totals.reconnects),
            errors: load(&totals.errors),
            error_kinds,
            heartbeats: load(&totals.heartbeats),
            alarms: load(&totals.alarms),
            alarms_acked: load(&totals.alarms_acked),
            alarms_refused: load(&totals.alarms_refused),
            preview_starts: load(&totals.preview_starts),
            preview_stops: load(&totals.preview_stops),
            keyframe_requests: load(&totals.keyframe_requests),
            streams_started: load(&totals.streams_started),
            frames_sent: load(&totals.frames_sent),
            media_bytes_sent: load(&totals.media_bytes_sent),
        };
        outcome.set_online_times(online_at_secs);
        outcome
    }

    /// Sets what follows from the devices' first-online times (seconds from the start):
    /// how many came online, when all of them were, and the percentiles.
    pub(crate) fn set_online_times(&mut self, mut online_at_secs: Vec<f64>) {
        online_at_secs.sort_by(f64::total_cmp);
        let mut histogram = micros_histogram();
        for secs in &online_at_secs {
            let _ = histogram.record((secs * 1e6).max(1.0) as u64);
        }
        self.came_online = online_at_secs.len();
        self.all_online_secs = (online_at_secs.len() >= self.devices && self.devices > 0)
            .then(|| online_at_secs.last().copied().unwrap_or(0.0));
        self.online_at_secs = Percentiles::from_histogram(&histogram, 1e6);
    }
}

/// Asks the client API for a play URL of each device, retrying until `wait` has passed.
pub fn play_targets(
    api: &ProvisionTarget,
    uids: &[String],
    stream_type: &str,
    wait: Duration,
) -> Result<Vec<PlayTarget>, String> {
    let device_ip = api.device_ip;
    let api = api.clone();
    let uids = uids.to_vec();
    let stream_type = stream_type.to_owned();
    let urls = rt::block_on_shard(move || async move {
        let deadline = Instant::now() + wait;
        let mut urls = Vec::new();
        for uid in &uids {
            loop {
                match provision::live_play_url(&api, uid, &stream_type).await {
                    Ok(url) => {
                        urls.push(url);
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("play session for {uid}: {e}"));
                    }
                    Err(_) => rt::timer::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Ok(urls)
    })
    .map_err(|e| e.to_string())??;
    urls.iter()
        .map(|url| {
            let mut target = PlayTarget::parse(url)?;
            target.addr.set_ip(device_ip);
            Ok(target)
        })
        .collect()
}

/// This shard's devices (every `count`-th one), each started at its ramp time.
async fn shard_devices(ctx: rt::ShardContext, shared: FleetShared, started: Instant) {
    let config = shared.config.clone();
    let mut tasks = Vec::new();
    for offset in (ctx.id..config.count).step_by(ctx.count.max(1)) {
        if !wait_for_ramp_slot(&ctx.shutdown, started, offset, config.ramp_per_sec).await {
            break;
        }
        let (shared, shutdown) = (shared.clone(), ctx.shutdown.clone());
        let index = config.first + offset;
        tasks.push(rt::spawn_local(async move {
            let _ = shutdown.until(device_life(&shared, index, started)).await;
        }));
    }
    for task in tasks {
        task.await;
    }
}

/// One device from its first start to the end of the run: provision (or load), go online,
/// serve; after a failure wait a little and start over.
async fn device_life(shared: &FleetShared, index: usize, started: Instant) {
    let totals = &shared.totals;
    totals.started.fetch_add(1, Ordering::Relaxed);
    let uid = device_uid(index);
    let was_online = Rc::new(RefCell::new(false));
    let mut failures = 0u32;
    loop {
        let cached = shared.cache.as_ref().and_then(|c| c.load(&uid));
        let from_cache = cached.is_some();
        let identity = match cached {
            Some(identity) => {
                totals.from_cache.fetch_add(1, Ordering::Relaxed);
                identity
            }
            None => match provision::provision(&shared.config.provision, &uid).await {
                Ok(identity) => {
                    totals.provisioned.fetch_add(1, Ordering::Relaxed);
                    if let Some(cache) = &shared.cache {
                        if let Err(e) = cache.store(&identity) {
                            shared.error(&format!("identity cache: {}", e.kind()));
                        }
                    }
                    identity
                }
                Err(e) => {
                    shared.error(&format!("provisioning: {}", e.kind()));
                    failures += 1;
                    backoff(failures).await;
                    continue;
                }
            },
        };
        let tls_config = match identity.tls_config() {
            Ok(config) => config,
            Err(e) => {
                shared.error(&e.kind());
                if let Some(cache) = &shared.cache {
                    cache.forget(&uid);
                }
                backoff(failures.max(1)).await;
                continue;
            }
        };
        if *was_online.borrow() {
            totals.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let online_flag = was_online.clone();
        let mut online_now = false;
        let result = device::run_session(shared, index, &identity, tls_config, || {
            online_now = true;
            totals.online.fetch_add(1, Ordering::Relaxed);
            let first = !*online_flag.borrow();
            *online_flag.borrow_mut() = true;
            if first {
                let mut outcome = shared.outcome.lock().unwrap_or_else(|e| e.into_inner());
                outcome.online_at_secs.push(started.elapsed().as_secs_f64());
            }
        })
        .await;
        if online_now {
            totals.online.fetch_sub(1, Ordering::Relaxed);
            failures = 0;
        }
        let Err(error) = result;
        shared.error(&error.kind());
        if error.identity_refused() && from_cache {
            // The server does not know this identity (a new server or data dir): enrol again.
            if let Some(cache) = &shared.cache {
                cache.forget(&uid);
            }
        }
        failures += 1;
        backoff(failures).await;
    }
}

/// The wait before reconnect attempt `failures` (1 for the first after a failure): a ceiling of
/// 1 s doubled per consecutive failure up to 30 s, and a random delay between half and all of
/// it ("equal jitter"), so that a fleet cut off at once (the server restarted) comes back spread
/// over the first second instead of in lockstep, and keeps spreading while the server is away.
/// A session that was online resets the count. This is what docs/architecture.md recommends to
/// device makers.
pub fn reconnect_delay(failures: u32, unit_random: f64) -> Duration {
    let ceiling_ms = (1000u64 << failures.saturating_sub(1).min(5)).min(30_000);
    let half = ceiling_ms / 2;
    Duration::from_millis(half + (half as f64 * unit_random.clamp(0.0, 1.0)) as u64)
}

async fn backoff(failures: u32) {
    rt::timer::sleep(reconnect_delay(failures, rand::random::<f64>())).await;
}
