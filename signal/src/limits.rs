//! Connection limits and guessing protection shared by every listener of one server: a global
//! cap and a per-IP cap on open connections, and a per-IP penalty box for peers that keep
//! failing authentication (play tokens, one-time codes, access keys). The device ports face the
//! internet; without these a single host could hold every descriptor or try keys forever.
//!
//! The accept loops ask [`ConnectionLimits::admit`] before doing anything with a new socket and
//! drop it at once when refused (no TLS handshake, no read); the returned [`ConnectionPermit`]
//! travels with the connection (through shard handoffs too) and frees its slot when dropped.
//! Authentication failures are reported with [`ConnectionLimits::record_failure`]; an address
//! with too many inside the window is refused for a while, logged once when it is boxed.
//! Everything is counted for `/metrics` ([`ConnectionLimits::render_prometheus`]).
//!
//! One instance serves all shards (the counts must be global): open counts are atomics and a
//! mutex-guarded map that is touched only on accept and close, never per packet. Each server
//! thread installs the instance with [`install`] so that accept loops reach it with
//! [`current`] without plumbing; a thread with none installed gets no limits.
//!
//! IPv6 peers are keyed by their /64 (one host usually owns the whole prefix); IPv4-mapped
//! addresses count as the IPv4 address.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// `[limits]` of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections over every port together; beyond it new ones are closed at once.
    /// 0: no limit (the descriptor limit still applies).
    pub max_connections: usize,
    /// Open connections from one IPv4 address or IPv6 /64. 0: no limit.
    pub max_connections_per_ip: usize,
    /// Authentication failures (bad play token, code or access key) one address may make
    /// within `failure_window_secs` before it is refused for `block_secs`. 0: no penalty.
    pub max_failures_per_ip: u32,
    /// Window of `max_failures_per_ip`, seconds.
    pub failure_window_secs: u64,
    /// How long an address that failed too often is refused, seconds.
    pub block_secs: u64,
    /// Loopback peers are exempt from the per-IP limits (load generators, local tools).
    pub exempt_loopback: bool,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 60_000,
            max_connections_per_ip: 512,
            max_failures_per_ip: 20,
            failure_window_secs: 60,
            block_secs: 300,
            exempt_loopback: true,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The server holds `max_connections`.
    Global,
    /// The peer's address holds `max_connections_per_ip`.
    PerIp,
    /// The peer's address failed authentication too often and is boxed.
    Blocked,
}

impl Refusal {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Global => "global_limit",
            Refusal::PerIp => "per_ip_limit",
            Refusal::Blocked => "auth_failures",
        }
    }
}

/// What failed authentication, for the counter's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// A play or publish token that does not verify.
    PlayToken,
    /// A wrong or expired one-time code on the credentials port.
    Code,
    /// An unknown access key or a hello signed with the wrong secret.
    AccessKey,
    /// A client API bearer token that does not match.
    ApiToken,
}

impl Failure {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Failure::PlayToken => "play_token",
            Failure::Code => "code",
            Failure::AccessKey => "access_key",
            Failure::ApiToken => "api_token",
        }
    }
}

/// The key addresses are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerKey(IpAddr);

impl PeerKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => PeerKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    PeerKey(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

#[derive(Debug, Default)]
struct PeerState {
    open: usize,
    failures: u32,
    window_start: Option<Instant>,
    blocked_until: Option<Instant>,
}

impl PeerState {
    /// Nothing to remember: no connection, no penalty, no failure in the current window.
    fn is_idle(&self, now: Instant, window: Duration) -> bool {
        self.open == 0
            && self.blocked_until.is_none_or(|until| until <= now)
            && self.window_start.is_none_or(|start| now >= start + window)
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// (listener, reason) -> connections refused.
    refused: BTreeMap<(&'static str, &'static str), u64>,
    /// (listener, failure) -> authentication failures reported.
    failures: BTreeMap<(&'static str, &'static str), u64>,
    /// Addresses boxed for failing too often.
    blocks: u64,
}

/// The limits of one server; see the module documentation.
#[derive(Debug)]
pub struct ConnectionLimits {
    config: LimitsConfig,
    open: AtomicUsize,
    accepted: AtomicU64,
    peers: Mutex<HashMap<PeerKey, PeerState>>,
    counters: Mutex<Counters>,
}

/// Peers remembered before idle ones are pruned.
const PRUNE_AT: usize = 4096;
/// Most peers remembered at all: failures from further addresses are counted, not tracked
/// (open connections are bounded by `max_connections` anyway).
const MAX_TRACKED_PEERS: usize = 65_536;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ConnectionLimits {
    /// Limits as configured.
    pub fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            config,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            peers: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Connections open now (holding a permit).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.config.exempt_loopback && ip.to_canonical().is_loopback()
    }

    /// Admits a new connection on `listener` from `peer`, or says why not (and counts it).
    pub fn admit(
        self: &Arc<Self>,
        listener: &'static str,
        peer: IpAddr,
    ) -> Result<ConnectionPermit, Refusal> {
        self.admit_at(listener, peer, Instant::now())
    }

    fn admit_at(
        self: &Arc<Self>,
        listener: &'static str,
        peer: IpAddr,
        now: Instant,
    ) -> Result<ConnectionPermit, Refusal> {
        let result = self.try_admit(peer, now);
        match result {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(ConnectionPermit {
                    limits: self.clone(),
                    peer: PeerKey::of(peer),
                })
            }
            Err(refusal) => {
                *lock(&self.counters)
                    .refused
                    .entry((listener, refusal.label()))
                    .or_default() += 1;
                Err(refusal)
            }
        }
    }

    fn try_admit(&self, peer: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = PeerKey::of(peer);
        let exempt = self.exempt(peer);
        let mut peers = lock(&self.peers);
        if let Some(state) = peers.get_mut(&key) {
            match state.blocked_until {
                Some(until) if until > now => return Err(Refusal::Blocked),
                Some(_) => state.blocked_until = None,
                None => {}
            }
        }
        let max = self.config.max_connections;
        if max > 0 && self.open.load(Ordering::Relaxed) >= max {
            return Err(Refusal::Global);
        }
        let state = peers.entry(key).or_default();
        let per_ip = self.config.max_connections_per_ip;
        if !exempt && per_ip > 0 && state.open >= per_ip {
            return Err(Refusal::PerIp);
        }
        state.open += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        if peers.len() > PRUNE_AT {
            let window = self.window();
            peers.retain(|_, state| !state.is_idle(now, window));
        }
        Ok(())
    }

    /// A permit for a connection admitted on another shard and handed to this one (its
    /// accepting shard's permit ends with the handoff): counted, never refused.
    pub fn adopt(self: &Arc<Self>, peer: IpAddr) -> ConnectionPermit {
        let key = PeerKey::of(peer);
        lock(&self.peers).entry(key).or_default().open += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        ConnectionPermit {
            limits: self.clone(),
            peer: key,
        }
    }

    fn release(&self, key: PeerKey) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let mut peers = lock(&self.peers);
        if let Some(state) = peers.get_mut(&key) {
            state.open = state.open.saturating_sub(1);
            if state.is_idle(Instant::now(), self.window()) {
                peers.remove(&key);
            }
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.failure_window_secs)
    }

    /// Reports a failed authentication from `peer` on `listener`; true when the address is
    /// now refused (it reached the limit: logged here, once per penalty).
    pub fn record_failure(&self, listener: &'static str, failure: Failure, peer: IpAddr) -> bool {
        self.record_failure_at(listener, failure, peer, Instant::now())
    }

    fn record_failure_at(
        &self,
        listener: &'static str,
        failure: Failure,
        peer: IpAddr,
        now: Instant,
    ) -> bool {
        *lock(&self.counters)
            .failures
            .entry((listener, failure.label()))
            .or_default() += 1;
        let max = self.config.max_failures_per_ip;
        if max == 0 || self.exempt(peer) {
            return false;
        }
        let window = self.window();
        let key = PeerKey::of(peer);
        let mut peers = lock(&self.peers);
        if !peers.contains_key(&key) && peers.len() >= MAX_TRACKED_PEERS {
            peers.retain(|_, state| !state.is_idle(now, window));
            if peers.len() >= MAX_TRACKED_PEERS {
                return false;
            }
        }
        let state = peers.entry(key).or_default();
        if state.blocked_until.is_some_and(|until| until > now) {
            return true;
        }
        if state.window_start.is_none_or(|start| now >= start + window) {
            state.window_start = Some(now);
            state.failures = 0;
        }
        state.failures += 1;
        if state.failures < max {
            return false;
        }
        state.blocked_until = Some(now + Duration::from_secs(self.config.block_secs));
        state.failures = 0;
        state.window_start = None;
        drop(peers);
        lock(&self.counters).blocks += 1;
        warn!(
            peer = %key.0,
            listener,
            failure = failure.label(),
            failures = max,
            window_secs = self.config.failure_window_secs,
            block_secs = self.config.block_secs,
            "too many authentication failures: address refused"
        );
        true
    }

    /// Prometheus text of the counters.
    pub fn render_prometheus(&self, out: &mut String) {
        let counters = lock(&self.counters);
        let _ = writeln!(
            out,
            "# HELP rop_connections_open Connections open on every port together.\n\
             # TYPE rop_connections_open gauge\nrop_connections_open {}",
            self.open_connections()
        );
        let _ = writeln!(
            out,
            "# HELP rop_connections_accepted_total Connections admitted by the limits.\n\
             # TYPE rop_connections_accepted_total counter\nrop_connections_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rop_connections_refused_total Connections closed at accept, by listener and reason.\n\
             # TYPE rop_connections_refused_total counter"
        );
        for ((listener, reason), n) in &counters.refused {
            let _ = writeln!(
                out,
                "rop_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rop_auth_failures_total Failed authentications (tokens, codes, access keys), by listener and kind.\n\
             # TYPE rop_auth_failures_total counter"
        );
        for ((listener, failure), n) in &counters.failures {
            let _ = writeln!(
                out,
                "rop_auth_failures_total{{listener=\"{listener}\",failure=\"{failure}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rop_auth_blocks_total Addresses refused for failing authentication too often.\n\
             # TYPE rop_auth_blocks_total counter\nrop_auth_blocks_total {}",
            counters.blocks
        );
    }
}

/// One admitted connection's slot; dropping it frees the slot. `Send`: it moves with the
/// connection to its owner shard.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    peer: PeerKey,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.release(self.peer);
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<ConnectionLimits>>> = const { RefCell::new(None) };
}

/// Makes `limits` this thread's limits (each shard and the control-plane thread, at start).
pub fn install(limits: Arc<ConnectionLimits>) {
    CURRENT.with(|current| *current.borrow_mut() = Some(limits));
}

/// This thread's limits, if installed.
pub fn current() -> Option<Arc<ConnectionLimits>> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Admits a connection under this thread's limits: `Ok(None)` when none are installed.
pub fn admit(listener: &'static str, peer: IpAddr) -> Result<Option<ConnectionPermit>, Refusal> {
    match current() {
        Some(limits) => limits.admit(listener, peer).map(Some),
        None => Ok(None),
    }
}

/// [`ConnectionLimits::adopt`] under this thread's limits.
pub fn adopt(peer: IpAddr) -> Option<ConnectionPermit> {
    current().map(|limits| limits.adopt(peer))
}

/// True when `hello` (a keep-alive or stream hello) names a device key this server has and is
/// signed with the secret of its access key: what a guesser cannot produce. Checked at the
/// door to count guesses per address; the session checks the hello again in full.
pub fn hello_is_authentic(hello: &[u8], keys: &crate::secrets::DeviceKeys) -> bool {
    use crate::proto::access_key::{secret_for, split_access_key};
    use crate::proto::encrypt_tcp::Hello;
    let Ok(parsed) = Hello::parse(hello) else {
        return false;
    };
    let Some((index, uid_hash)) = parsed.access_key_str().and_then(split_access_key) else {
        return false;
    };
    let Some(device_key) = keys.key(index) else {
        return false;
    };
    Hello::verify(
        hello,
        secret_for(device_key.as_bytes(), uid_hash).as_bytes(),
    )
    .is_ok()
}

/// Reports an authentication failure under this thread's limits (see
/// [`ConnectionLimits::record_failure`]); false when none are installed.
pub fn record_failure(listener: &'static str, failure: Failure, peer: IpAddr) -> bool {
    current().is_some_and(|limits| limits.record_failure(listener, failure, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(LimitsConfig {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_failures_per_ip: 3,
            failure_window_secs: 60,
            block_secs: 300,
            exempt_loopback: true,
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn per_ip_limit_refuses_and_frees_on_drop() {
        let limits = limits(100, 2);
        let a = limits.admit("rtsp", ip("203.0.113.7")).unwrap();
        let _b = limits.admit("api", ip("203.0.113.7")).unwrap();
        assert_eq!(
            limits.admit("rtsp", ip("203.0.113.7")).unwrap_err(),
            Refusal::PerIp
        );
        // Another address is not affected.
        let _c = limits.admit("rtsp", ip("203.0.113.8")).unwrap();
        drop(a);
        let _d = limits.admit("rtsp", ip("203.0.113.7")).unwrap();
        assert_eq!(limits.open_connections(), 3);
        let mut text = String::new();
        limits.render_prometheus(&mut text);
        assert!(text.contains(
            "rop_connections_refused_total{listener=\"rtsp\",reason=\"per_ip_limit\"} 1"
        ));
        assert!(text.contains("rop_connections_open 3"));
    }

    #[test]
    fn global_limit_counts_every_address_and_loopback_is_exempt_from_per_ip_only() {
        let limits = limits(3, 1);
        let _a = limits.admit("keepalive", ip("127.0.0.1")).unwrap();
        let _b = limits.admit("keepalive", ip("127.0.0.1")).unwrap();
        let _c = limits.admit("keepalive", ip("198.51.100.1")).unwrap();
        assert_eq!(
            limits.admit("keepalive", ip("198.51.100.2")).unwrap_err(),
            Refusal::Global
        );
        assert_eq!(
            limits.admit("keepalive", ip("127.0.0.1")).unwrap_err(),
            Refusal::Global
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = limits(100, 1);
        let _a = limits.admit("rtsp", ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limits
                .admit("rtsp", ip("2001:db8:1:2:ffff::9"))
                .unwrap_err(),
            Refusal::PerIp
        );
        let _b = limits.admit("rtsp", ip("2001:db8:1:3::1")).unwrap();
        let _c = limits.admit("rtsp", ip("192.0.2.1")).unwrap();
        assert_eq!(
            limits.admit("rtsp", ip("::ffff:192.0.2.1")).unwrap_err(),
            Refusal::PerIp
        );
    }

    #[test]
    fn failures_box_an_address_for_the_block_time_then_release_it() {
        let limits = limits(100, 100);
        let peer = ip("203.0.113.9");
        let start = Instant::now();
        assert!(!limits.record_failure_at("rtsp", Failure::PlayToken, peer, start));
        assert!(!limits.record_failure_at("rtsp", Failure::PlayToken, peer, start));
        assert!(limits.record_failure_at("rtsp", Failure::PlayToken, peer, start));
        assert_eq!(
            limits.admit_at("api", peer, start).unwrap_err(),
            Refusal::Blocked
        );
        assert!(limits.admit_at("api", ip("203.0.113.10"), start).is_ok());
        let later = start + Duration::from_secs(301);
        assert!(limits.admit_at("api", peer, later).is_ok());
        let mut text = String::new();
        limits.render_prometheus(&mut text);
        assert!(
            text.contains("rop_auth_failures_total{listener=\"rtsp\",failure=\"play_token\"} 3")
        );
        assert!(text.contains("rop_auth_blocks_total 1"));
        assert!(text.contains(
            "rop_connections_refused_total{listener=\"api\",reason=\"auth_failures\"} 1"
        ));
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_box() {
        let limits = limits(100, 100);
        let peer = ip("203.0.113.11");
        let start = Instant::now();
        for minute in 0..10 {
            let at = start + Duration::from_secs(61 * minute);
            assert!(!limits.record_failure_at("keepalive", Failure::AccessKey, peer, at));
        }
        assert!(limits.admit("keepalive", peer).is_ok());
    }

    #[test]
    fn loopback_is_never_boxed_when_exempt() {
        let limits = limits(100, 100);
        for _ in 0..10 {
            assert!(!limits.record_failure("rtsp", Failure::PlayToken, ip("::1")));
        }
        assert!(limits.admit("rtsp", ip("::1")).is_ok());
    }

    #[test]
    fn adopted_connections_count_without_being_refused() {
        let limits = limits(1, 1);
        let _a = limits.admit("rtsp", ip("203.0.113.20")).unwrap();
        let _b = limits.adopt(ip("203.0.113.20"));
        assert_eq!(limits.open_connections(), 2);
        assert_eq!(
            limits.admit("rtsp", ip("203.0.113.21")).unwrap_err(),
            Refusal::Global
        );
    }

    #[test]
    fn hello_authenticity_needs_a_known_key_index_and_the_right_secret() {
        use crate::proto::access_key::AccessKeyPair;
        use crate::proto::encrypt_tcp::Hello;
        let keys = crate::secrets::DeviceKeys {
            current_index: "keyIndex00000001".into(),
            keys: [("keyIndex00000001".into(), "k".repeat(32))].into(),
        };
        let hello = |pair: &AccessKeyPair, secret: &str| {
            let mut access_key = [0u8; 32];
            access_key.copy_from_slice(pair.access_key.as_bytes());
            Hello {
                code: 0,
                access_key,
                nonce: [1; 32],
            }
            .encode(secret.as_bytes())
        };
        let good = AccessKeyPair::derive("keyIndex00000001", "k".repeat(32).as_bytes(), "UID");
        assert!(hello_is_authentic(&hello(&good, &good.secret), &keys));
        assert!(!hello_is_authentic(&hello(&good, "guess"), &keys));
        let unknown = AccessKeyPair::derive("keyIndex00000002", b"other", "UID");
        assert!(!hello_is_authentic(
            &hello(&unknown, &unknown.secret),
            &keys
        ));
        assert!(!hello_is_authentic(&[0u8; 10], &keys));
    }

    #[test]
    fn sample_configuration_documents_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay.sample.toml");
        let config = crate::config::Config::from_file(&path).unwrap();
        assert_eq!(config.limits, LimitsConfig::default());
    }

    #[test]
    fn idle_peers_are_forgotten() {
        let limits = limits(100, 100);
        let permit = limits.admit("rtsp", ip("203.0.113.12")).unwrap();
        drop(permit);
        assert!(lock(&limits.peers).is_empty());
    }

    #[test]
    fn installed_limits_are_per_thread() {
        let limits = limits(1, 1);
        install(limits.clone());
        let permit = admit("rtsp", ip("203.0.113.13")).unwrap();
        assert!(permit.is_some());
        assert_eq!(
            admit("rtsp", ip("203.0.113.14")).unwrap_err(),
            Refusal::Global
        );
        std::thread::spawn(|| assert!(admit("rtsp", ip("203.0.113.15")).unwrap().is_none()))
            .join()
            .unwrap();
    }
}
