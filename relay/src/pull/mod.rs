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
//! - [`PullShard`] (here): each shard supervises the sources it owns
//!   (`signal::session::shard_of_uid`, like a device): one task per source that connects when
//!   wanted, reconnects with exponential backoff and jitter, and reports its state to the
//!   [`SourceDirectory`] (API, metrics).
//!
//! ```text
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
use signal::sources::{PullState, SourceDirectory, SourceSpec};
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

/// What every shard needs to supervise its sources.
#[derive(Debug, Clone)]
pub struct PullWiring {
    /// The process's sources.
    pub directory: SourceDirectory,
    /// Timings.
    pub settings: PullSettings,
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
}

/// One DESCRIBE's wait for an attempt's outcome.
#[derive(Default)]
struct StartWaiter {
    outcome: Cell<Option<bool>>,
    notify: LocalNotify,
}

impl Pull {
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
    directory: SourceDirectory,
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

/// Reports the attempt's progress to the directory.
struct Reporter<'a> {
    directory: &'a SourceDirectory,
    pull: &'a Pull,
}

impl conn::PullObserver for Reporter<'_> {
    fn playing(&self) {
        self.pull.playing.set(true);
        self.directory
            .report(&self.pull.spec.uid, self.pull.generation, |s| {
                s.state = PullState::Playing;
                s.sessions += 1;
            });
        self.pull.settle_starts(true);
    }
}

impl PullShard {
    /// Starts supervising this shard's sources: registers as an on-demand starter and
    /// reconciles with the directory every second until shutdown.
    pub fn start(wiring: &PullWiring, shard: Rc<Shard>) -> Rc<PullShard> {
        let this = Rc::new(PullShard {
            shard: shard.clone(),
            directory: wiring.directory.clone(),
            settings: wiring.settings,
            pulls: RefCell::new(HashMap::new()),
        });
        let on_demand: Rc<dyn OnDemand> = this.clone();
        shard.set_on_demand(&on_demand);
        this.reconcile(Instant::now());
        let sweeper = {
            let weak = Rc::downgrade(&this);
            rt::Sweeper::every(Duration::from_secs(1), move |now| {
                if let Some(this) = weak.upgrade() {
                    this.reconcile(now);
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
                    pull.removed.set(true);
                    pull.stop.notify();
                    pull.wake.notify();
                }
            }
        });
        this
    }

    fn owns(&self, uid: &str) -> bool {
        signal::session::shard_of_uid(uid, self.shard.count) == self.shard.id
    }

    /// Follows the directory (new, changed and removed sources) and stops on-demand sources
    /// nobody watched for the linger time.
    fn reconcile(&self, now: Instant) {
        if self.shard.shutdown.is_triggered() {
            return;
        }
        let owned = self.directory.owned_by(|uid| self.owns(uid));
        let mut pulls = self.pulls.borrow_mut();
        pulls.retain(|uid, pull| {
            let current = owned
                .iter()
                .any(|(spec, generation)| &spec.uid == uid && *generation == pull.generation);
            if !current {
                info!(shard = self.shard.id, source = %uid, "pull source removed or changed");
                pull.removed.set(true);
                pull.stop.notify();
                pull.wake.notify();
            }
            current
        });
        for (spec, generation) in owned {
            if pulls.contains_key(&spec.uid) {
                continue;
            }
            let Some(key) = source_stream(&spec.uid) else {
                continue;
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
            });
            pulls.insert(pull.spec.uid.clone(), pull.clone());
            rt::spawn_detached(supervise(
                self.shard.clone(),
                self.directory.clone(),
                self.settings,
                pull,
            ));
        }
        for pull in pulls.values() {
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

impl OnDemand for PullShard {
    fn start(self: Rc<Self>, stream: &StreamKey) -> Option<PreviewStarted> {
        if stream.channel() != 0 || stream.stream() != StreamKind::Main {
            return None;
        }
        if !self.pulls.borrow().contains_key(stream.uid()) {
            // Added a moment ago (API): pick it up now rather than at the next sweep.
            self.directory.get(stream.uid())?;
            self.reconcile(Instant::now());
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
async fn supervise(
    shard: Rc<Shard>,
    directory: SourceDirectory,
    settings: PullSettings,
    pull: Rc<Pull>,
) {
    let uid = pull.spec.uid.clone();
    let generation = pull.generation;
    let mut backoff: Option<Duration> = None;
    loop {
        if pull.removed.get() || shard.shutdown.is_triggered() {
            pull.settle_starts(false);
            return;
        }
        if !pull.wanted.get() {
            directory.report(&uid, generation, |s| s.state = PullState::Idle);
            pull.wake.notified().await;
            continue;
        }
        directory.report(&uid, generation, |s| {
            s.state = PullState::Connecting;
            s.attempts += 1;
        });
        pull.stop.take_notification();
        pull.playing.set(false);
        let reporter = Reporter {
            directory: &directory,
            pull: &pull,
        };
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
        directory.report(&uid, generation, |s| {
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
