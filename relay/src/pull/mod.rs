//! Pull sources: the relay connects to a camera that serves RTSP or RTSPS itself and publishes
//! what it receives into the stream hub, exactly as an RTSP publisher would, so viewers of the
//! source's UID (channel 0, `mainStream`) get the same fan-out, GOP cache, play tokens and
//! metrics as for any stream.
//!
//! - [`client`]: the RTSP client session without I/O (handshake, authentication, header rules,
//!   keepalives, TEARDOWN).
//! - [`auth`]: Basic and Digest answers to a source's 401.
//! - [`conn`]: one attempt on the owner shard (connect, TLS, handshake, media into the hub, over
//!   the RTSP connection or per-track UDP socket pairs).
//! - [`udp`]: what a UDP track accepts (the source's address only, RTP/RTCP sizes) and the
//!   sequence gaps it counts as lost, without I/O.
//! - [`PullShard`] (here): each shard owns and supervises the sources hashed to it
//!   (`signal::session::shard_of_uid`, like a device). The control plane tells it what to run
//!   with typed [`SourceCommand`]s on the shard's own `rt::xchan` queue ([`PullWiring::new`]),
//!   the way it reaches device sessions; nothing is polled and no map is shared. One task per
//!   source connects when wanted, reconnects with exponential backoff and jitter, and keeps the
//!   source's state, which the shard answers when the control plane asks (API, metrics).
//!
//! ```text
//!  control plane:  Upsert{spec, generation} ─▶ new source: supervise (answers its first state:
//!                  idle, or connecting with the first attempt under way); another generation:
//!                  TEARDOWN, then the new spec · Remove{uid} ─▶ TEARDOWN · Status ─▶ states
//!  on demand:  DESCRIBE of the source's stream ─▶ OnDemand::start ─▶ wanted ─▶ connect ─▶ Playing
//!              (the DESCRIBE waits for that attempt: 503 "Source Unavailable" if it fails)
//!              sweep (1 s): no viewer for the linger time ─▶ stop ─▶ TEARDOWN ─▶ Idle
//!  always-on:  wanted from the start
//!  failure:    Backoff (0.5 s, doubling to 30 s, ±25 % jitter; `[pull]` backoff_*) ─▶ connect again while wanted;
//!              viewers keep their connection for the hub's publisher grace meanwhile
//! ```

pub mod auth;
pub mod client;
pub mod conn;
#[doc(hidden)]
pub mod fuzzing;
pub mod udp;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rt::xchan::{OneshotSender, Receiver};
use signal::sources::{
    PullState, PullStatus, SourceCommand, SourceDirectory, SourceSpec, SourceState,
};
use tracing::{info, warn};

use crate::hub::LocalNotify;
use crate::shard::{OnDemand, PreviewStarted, Shard};
use crate::stream_key::{StreamKey, StreamKind};

/// Timings of pull connections (`[pull]` of the config file, [`PullSettings::from_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullSettings {
    /// TCP connect and TLS handshake.
    pub connect_timeout: Duration,
    /// Each handshake response.
    pub response_timeout: Duration,
    /// Longest time without a byte from a playing source.
    pub media_timeout: Duration,
    /// How long an on-demand source stays connected without viewers.
    pub linger: Duration,
    /// First delay after a failure; doubled per failure up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// How long a viewer's DESCRIBE waits for an on-demand source to play.
    pub start_timeout: Duration,
}

impl Default for PullSettings {
    fn default() -> Self {
        PullSettings {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(10),
            media_timeout: Duration::from_secs(20),
            linger: Duration::from_secs(10),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            start_timeout: Duration::from_secs(15),
        }
    }
}

impl PullSettings {
    /// The `[pull]` table; the linger is `[device] stream_linger_secs` unless `[pull]` sets one
    /// (one linger for every on-demand stream, device previews and pull sources alike).
    pub fn from_config(config: &signal::config::Config) -> PullSettings {
        let pull = &config.pull;
        PullSettings {
            connect_timeout: Duration::from_secs(pull.connect_timeout_secs),
            response_timeout: Duration::from_secs(pull.response_timeout_secs),
            media_timeout: Duration::from_secs(pull.media_timeout_secs),
            linger: Duration::from_secs(
                pull.linger_secs.unwrap_or(config.device.stream_linger_secs),
            ),
            backoff_min: Duration::from_millis(pull.backoff_min_ms),
            backoff_max: Duration::from_millis(pull.backoff_max_ms),
            start_timeout: Duration::from_secs(pull.start_timeout_secs),
        }
    }
}

/// What every shard needs to supervise its sources: the timings, and the control plane's
/// command queue of each shard (each shard takes its own at start).
#[derive(Clone)]
pub struct PullWiring {
    /// One command receiver per shard, taken by that shard at start.
    pub commands: Arc<std::sync::Mutex<Vec<Option<Receiver<SourceCommand>>>>>,
    /// Timings.
    pub settings: PullSettings,
}

impl std::fmt::Debug for PullWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullWiring")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PullWiring {
    /// One command queue per shard: returns the wiring for the shards and the control plane's
    /// [`SourceDirectory`] over those queues. Commands sent before the shards start (the
    /// config file's and the store's sources) wait in the queues.
    pub fn new(settings: PullSettings, shards: usize) -> (PullWiring, SourceDirectory) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| rt::xchan::channel(signal::sources::COMMAND_QUEUE))
            .map(|(tx, rx)| (tx, Some(rx)))
            .unzip();
        (
            PullWiring {
                commands: Arc::new(std::sync::Mutex::new(receivers)),
                settings,
            },
            SourceDirectory::new(senders),
        )
    }

    fn take_commands(&self, shard: usize) -> Option<Receiver<SourceCommand>> {
        self.commands
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_mut(shard)
            .and_then(Option::take)
    }
}

/// The stream a source publishes.
pub fn source_stream(uid: &str) -> Option<StreamKey> {
    StreamKey::new(uid, 0, StreamKind::Main).ok()
}

/// The next delay after `previous` (none: the first failure), with ±25 % jitter.
pub fn next_backoff(previous: Option<Duration>, settings: &PullSettings) -> Duration {
    let base = match previous {
        None => settings.backoff_min,
        Some(d) => (d * 2).min(settings.backoff_max),
    };
    base.max(settings.backoff_min)
}

fn jittered(delay: Duration) -> Duration {
    let quarter = delay.as_millis() as u64 / 4;
    let offset = rand::thread_rng().gen_range(0..=quarter * 2);
    Duration::from_millis(delay.as_millis() as u64 - quarter + offset)
}

/// One supervised source on its owner shard.
struct Pull {
    spec: Arc<SourceSpec>,
    generation: u64,
    key: StreamKey,
    /// Connect (always-on sources, or someone is watching).
    wanted: Cell<bool>,
    /// No viewer since then (on-demand linger).
    unwatched_since: Cell<Option<Instant>>,
    /// Raised when `wanted` or `removed` changed.
    wake: LocalNotify,
    /// Ends the current attempt (TEARDOWN).
    stop: LocalNotify,
    removed: Cell<bool>,
    playing: Cell<bool>,
    /// DESCRIBEs waiting for the next attempt's outcome (PLAY reached, or failed).
    starts: RefCell<Vec<Rc<StartWaiter>>>,
    /// Where the connection is (answered to the control plane's `Status`).
    status: RefCell<PullStatus>,
    /// The control plane's `Upsert`, answered with the first state the task records.
    upserted: RefCell<Option<OneshotSender<PullStatus>>>,
}

/// One DESCRIBE's wait for an attempt's outcome.
#[derive(Default)]
struct StartWaiter {
    outcome: Cell<Option<bool>>,
    notify: LocalNotify,
}

impl Pull {
    /// Ends the source's task (removed, replaced or shutting down): TEARDOWN if connected.
    fn end(&self) {
        self.removed.set(true);
        self.stop.notify();
        self.wake.notify();
    }

    /// Records a change of state (this generation's own: a replaced spec is another `Pull`).
    fn report(&self, update: impl FnOnce(&mut PullStatus)) {
        update(&mut self.status.borrow_mut());
        if let Some(reply) = self.upserted.borrow_mut().take() {
            reply.send(self.status.borrow().clone());
        }
    }

    /// Tells every waiting DESCRIBE whether the attempt reached PLAY.
    fn settle_starts(&self, played: bool) {
        for waiter in self.starts.borrow_mut().drain(..) {
            waiter.outcome.set(Some(played));
            waiter.notify.notify();
        }
    }
}

/// The sources one shard owns, and their tasks.
pub struct PullShard {
    shard: Rc<Shard>,
    settings: PullSettings,
    pulls: RefCell<HashMap<String, Rc<Pull>>>,
}

impl std::fmt::Debug for PullShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullShard")
            .field("shard", &self.shard.id)
            .field("pulls", &self.pulls.borrow().len())
            .finish()
    }
}

/// Records the attempt's progress in the source's state.
struct Reporter<'a> {
    pull: &'a Pull,
}

impl conn::PullObserver for Reporter<'_> {
    fn playing(&self) {
        self.pull.playing.set(true);
        self.pull.report(|s| {
            s.state = PullState::Playing;
            s.sessions += 1;
        });
        self.pull.settle_starts(true);
    }
}

impl PullShard {
    /// Starts supervising this shard's sources: registers as an on-demand starter, serves the
    /// control plane's commands and sweeps the on-demand sources every second until shutdown.
    pub fn start(wiring: &PullWiring, shard: Rc<Shard>) -> Rc<PullShard> {
        let this = Rc::new(PullShard {
            shard: shard.clone(),
            settings: wiring.settings,
            pulls: RefCell::new(HashMap::new()),
        });
        let on_demand: Rc<dyn OnDemand> = this.clone();
        shard.set_on_demand(&on_demand);
        if let Some(commands) = wiring.take_commands(shard.id) {
            rt::spawn_detached(serve_commands(
                Rc::downgrade(&this),
                commands,
                shard.clone(),
            ));
        }
        let sweeper = {
            let weak = Rc::downgrade(&this);
            rt::Sweeper::every(Duration::from_secs(1), move |now| {
                if let Some(this) = weak.upgrade() {
                    this.sweep(now);
                }
            })
        };
        let shutdown = shard.shutdown.clone();
        let weak = Rc::downgrade(&this);
        rt::spawn_detached(async move {
            shutdown.wait().await;
            sweeper.stop();
            if let Some(this) = weak.upgrade() {
                for pull in this.pulls.borrow_mut().drain().map(|(_, p)| p) {
                    pull.end();
                }
            }
        });
        this
    }

    /// Carries out one command of the control plane.
    fn command(&self, command: SourceCommand) {
        match command {
            SourceCommand::Upsert {
                spec,
                generation,
                reply,
            } => self.upsert(spec, generation, reply),
            SourceCommand::Remove { uid, reply } => {
                if let Some(pull) = self.pulls.borrow_mut().remove(&uid) {
                    info!(shard = self.shard.id, source = %uid, "pull source removed");
                    pull.end();
                }
                if let Some(reply) = reply {
                    reply.send(());
                }
            }
            SourceCommand::Status { uid, reply } => {
                let pulls = self.pulls.borrow();
                let state = |pull: &Rc<Pull>| SourceState {
                    uid: pull.spec.uid.clone(),
                    generation: pull.generation,
                    status: pull.status.borrow().clone(),
                };
                reply.send(match uid {
                    Some(uid) => pulls.get(&uid).map(state).into_iter().collect(),
                    None => pulls.values().map(state).collect(),
                });
            }
            // A command this shard does not know: dropping its reply cancels the asker.
            _ => {}
        }
    }

    /// Supervises `spec` from now on; a source running another generation is stopped first.
    fn upsert(
        &self,
        spec: Arc<SourceSpec>,
        generation: u64,
        reply: Option<OneshotSender<PullStatus>>,
    ) {
        if self.shard.shutdown.is_triggered() {
            return;
        }
        let mut pulls = self.pulls.borrow_mut();
        if let Some(running) = pulls.get(&spec.uid) {
            if running.generation == generation {
                if let Some(reply) = reply {
                    reply.send(running.status.borrow().clone());
                }
                return;
            }
            info!(shard = self.shard.id, source = %spec.uid, "pull source changed: reconnecting");
            running.end();
        }
        let Some(key) = source_stream(&spec.uid) else {
            return;
        };
        let pull = Rc::new(Pull {
            wanted: Cell::new(!spec.on_demand),
            spec,
            generation,
            key,
            unwatched_since: Cell::new(None),
            wake: LocalNotify::new(),
            stop: LocalNotify::new(),
            removed: Cell::new(false),
            playing: Cell::new(false),
            starts: RefCell::new(Vec::new()),
            status: RefCell::new(PullStatus::default()),
            upserted: RefCell::new(reply),
        });
        pulls.insert(pull.spec.uid.clone(), pull.clone());
        rt::spawn_detached(supervise(self.shard.clone(), self.settings, pull));
    }

    /// Stops on-demand sources nobody watched for the linger time.
    fn sweep(&self, now: Instant) {
        if self.shard.shutdown.is_triggered() {
            return;
        }
        for pull in self.pulls.borrow().values() {
            if !pull.spec.on_demand || !pull.wanted.get() {
                continue;
            }
            if self.shard.audience(&pull.key) > 0 {
                pull.unwatched_since.set(None);
                continue;
            }
            let since = pull.unwatched_since.get().unwrap_or(now);
            pull.unwatched_since.set(Some(since));
            if now.saturating_duration_since(since) >= self.settings.linger {
                info!(shard = self.shard.id, source = %pull.spec.uid, "no viewer for the linger time: disconnecting");
                pull.wanted.set(false);
                pull.unwatched_since.set(None);
                pull.stop.notify();
                pull.wake.notify();
            }
        }
    }
}

/// Serves the control plane's commands until the shard shuts down or the control plane goes
/// away.
async fn serve_commands(
    this: std::rc::Weak<PullShard>,
    commands: Receiver<SourceCommand>,
    shard: Rc<Shard>,
) {
    while let Some(Some(command)) = shard.shutdown.until(commands.recv()).await {
        let Some(this) = this.upgrade() else {
            return;
        };
        this.command(command);
        // A burst (the config file's sources at start, a list across shards) in one wake-up.
        for command in commands.drain() {
            this.command(command);
        }
    }
}

impl OnDemand for PullShard {
    fn start(self: Rc<Self>, stream: &StreamKey) -> Option<PreviewStarted> {
        if stream.channel() != 0 || stream.stream() != StreamKind::Main {
            return None;
        }
        let pull = self.pulls.borrow().get(stream.uid()).cloned()?;
        pull.unwatched_since.set(None);
        if !pull.wanted.replace(true) {
            pull.wake.notify();
        }
        // Resolves with the next attempt: a source that fails (unreachable, 401, refused
        // handshake) answers the viewer 503 "Source Unavailable" at once, not after the timeout.
        let waiter = Rc::new(StartWaiter::default());
        pull.starts.borrow_mut().push(waiter.clone());
        Some(Box::pin(async move {
            waiter.notify.notified().await;
            match waiter.outcome.get() {
                Some(true) => Ok(()),
                _ => Err(crate::rtsp::session::Refusal::SourceUnavailable),
            }
        }))
    }

    fn start_timeout(&self) -> Duration {
        self.settings.start_timeout
    }

    /// An RTSP source cannot be asked for a keyframe; the viewer waits for the next one.
    fn viewer_without_gop(&self, _stream: &StreamKey) {}
}

/// The life of one source on its shard: wait until wanted, pull, back off after failures.
async fn supervise(shard: Rc<Shard>, settings: PullSettings, pull: Rc<Pull>) {
    let uid = pull.spec.uid.clone();
    let mut backoff: Option<Duration> = None;
    loop {
        if pull.removed.get() || shard.shutdown.is_triggered() {
            pull.settle_starts(false);
            return;
        }
        if !pull.wanted.get() {
            pull.report(|s| s.state = PullState::Idle);
            pull.wake.notified().await;
            continue;
        }
        pull.report(|s| {
            s.state = PullState::Connecting;
            s.attempts += 1;
        });
        pull.stop.take_notification();
        pull.playing.set(false);
        let reporter = Reporter { pull: &pull };
        let result = conn::pull_once(
            &shard, &pull.spec, &pull.key, &settings, &pull.stop, &reporter,
        )
        .await;
        if pull.playing.get() {
            backoff = None;
        }
        let error = match result {
            Ok(conn::PullEnd::Stopped) => continue,
            Err(e) => e.to_string(),
        };
        pull.settle_starts(false);
        if pull.removed.get() {
            return;
        }
        let delay = next_backoff(backoff, &settings);
        backoff = Some(delay);
        let delay = jittered(delay);
        warn!(shard = shard.id, source = %uid, url = %pull.spec.redacted_url(), retry_in = ?delay, "pull source failed: {error}");
        pull.report(|s| {
            s.state = PullState::Backoff {
                last_error: error.clone(),
                retry_in_ms: delay.as_millis() as u64,
            };
            s.last_error = error.clone();
        });
        pull.wake.take_notification();
        let _ = rt::timer::timeout(delay, pull.wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_default_config_are_the_defaults() {
        assert_eq!(
            PullSettings::from_config(&signal::config::Config::default()),
            PullSettings::default()
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let settings = PullSettings::default();
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let next = next_backoff(delay, &settings);
            seen.push(next);
            delay = Some(next);
        }
        assert_eq!(seen[0], Duration::from_millis(500));
        assert_eq!(seen[1], Duration::from_secs(1));
        assert_eq!(seen[9], Duration::from_secs(30));
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(4));
            assert!(
                j >= Duration::from_secs(3) && j <= Duration::from_secs(5),
                "{j:?}"
            );
        }
    }
}
