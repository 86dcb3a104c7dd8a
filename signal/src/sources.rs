//! Pull sources: cameras that serve RTSP or RTSPS themselves and that the relay connects to, so
//! they appear to viewers under a UID of their own like any device stream. This module holds what
//! a source *is* (the `[[sources]]` entries of the config file, the body of `POST /v1.0/sources`,
//! the store's record) and the rules it must follow; the RTSP client and the connection live in
//! `relay::pull`.
//!
//! Each side owns its part, as for devices: the control plane owns the catalog (which sources
//! exist, where they were declared, their generation) in [`SourceDirectory`], and tells a
//! source's owner shard (`session::shard_of_uid`) of each change with a typed [`SourceCommand`]
//! over that shard's `rt::xchan` queue; the owner shard owns the connection and its state, and
//! answers the API's and `/metrics`' [`SourceCommand::Status`] questions. No map is shared
//! between the control plane and the shards.
//!
//! ```text
//!  config load, POST (after the store commit) ─Upsert{spec, generation}─▶ owner shard ─▶ supervise
//!  DELETE (after the store commit)            ─Remove{uid}──────────────▶ owner shard ─▶ TEARDOWN
//!  GET /v1.0/sources[/uid], /metrics          ─Status─────────────────▶ owner shard(s) ─▶ states
//! ```
//!
//! Config and API records are one type, [`SourceSpec`], so a source declared in the file and one
//! added over the API behave the same. Sources from the file are not stored: the file stays the
//! truth for them, and the API refuses to replace or delete them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rt::xchan::{oneshot, OneshotReceiver, OneshotSender, Sender};
use serde::{Deserialize, Serialize};

/// Most header rules per source.
pub const MAX_HEADER_RULES: usize = 16;
/// Longest source URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest header value in a rule.
pub const MAX_HEADER_VALUE_LEN: usize = 1024;
/// Most sources (config and API together).
pub const MAX_SOURCES: usize = 4096;

/// Headers the RTSP client owns; a rule may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "CSeq",
    "Session",
    "Transport",
    "Authorization",
    "Content-Length",
    "Content-Type",
];

/// How media flows from the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullTransport {
    /// RTP interleaved on the RTSP connection (`RTP/AVP/TCP`): crosses NAT, one socket.
    #[default]
    Tcp,
    /// RTP and RTCP over UDP (`RTP/AVP;unicast;client_port=`), one socket pair per track on the
    /// owner shard; the RTSP connection stays for keepalives and TEARDOWN. `rtsp://` only: the
    /// datagrams are not encrypted.
    Udp,
}

/// A header the RTSP client adds to its handshake requests (OPTIONS, DESCRIBE, SETUP, PLAY), never
/// to keepalives or TEARDOWN once media flows.
///
/// - `value`: the header is set to this text, replacing one the client would send.
/// - `counter`: the first request carries this number; every later one carries the number the
///   server sent in the same header of its previous response, plus one (or, when that response
///   had none, the previous number sent plus one). Arlo base stations refuse a handshake whose
///   `Nonce` does not follow this rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// The header name.
    pub name: String,
    /// Fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Initial value of a counter header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<u64>,
}

/// One pull source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The UID viewers ask for (play-session, play URLs); channel 0, `mainStream`.
    pub uid: String,
    /// `rtsp://[user:password@]host[:port]/path` or `rtsps://...`; user and password are used for
    /// Basic or Digest authentication, whichever the source asks for.
    pub url: String,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub transport: PullTransport,
    /// PEM client certificate (chain) presented to an `rtsps://` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// PEM CA bundle the `rtsps://` source's certificate must chain to (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Connect on the first viewer, disconnect after the linger time (default); `false`: always
    /// connected.
    #[serde(default = "default_true")]
    pub on_demand: bool,
    /// Header rules of the handshake.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderRule>,
}

fn default_true() -> bool {
    true
}

/// Why a source was refused. The text names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source {field}: {reason}")]
pub struct SourceError {
    /// The offending field (`uid`, `url`, `headers[2].name`...).
    pub field: String,
    /// The rule it breaks.
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> Result<(), SourceError> {
    Err(SourceError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// Whether `name` is an RFC 2616 token (what a header name may be).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl SourceSpec {
    /// Checks what serde cannot: UID form, URL scheme, TLS files only for `rtsps`, header rules.
    pub fn validate(&self) -> Result<(), SourceError> {
        let uid_ok = (1..=32).contains(&self.uid.len())
            && self.uid.bytes().all(|b| b.is_ascii_alphanumeric());
        if !uid_ok {
            return refuse("uid", "must be 1 to 32 ASCII letters or digits");
        }
        if self.url.len() > MAX_URL_LEN || !self.url.bytes().all(|b| b.is_ascii_graphic()) {
            return refuse(
                "url",
                format!("must be at most {MAX_URL_LEN} printable ASCII characters"),
            );
        }
        let tls = match self.url.split_once("://") {
            Some((scheme, rest)) if !rest.is_empty() => {
                if scheme.eq_ignore_ascii_case("rtsps") {
                    true
                } else if scheme.eq_ignore_ascii_case("rtsp") {
                    false
                } else {
                    return refuse("url", "must start with rtsp:// or rtsps://");
                }
            }
            _ => return refuse("url", "must start with rtsp:// or rtsps://"),
        };
        if tls && self.transport == PullTransport::Udp {
            return refuse(
                "transport",
                "udp carries the media unencrypted beside an rtsps:// connection; use tcp",
            );
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return refuse(
                "client_cert",
                "client_cert and client_key go together (a certificate and its key)",
            );
        }
        if !tls && (self.client_cert.is_some() || self.ca.is_some()) {
            return refuse("url", "client_cert, client_key and ca need an rtsps:// URL");
        }
        for (field, path) in [
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
            ("ca", &self.ca),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return refuse(field, "must be a file path");
            }
        }
        if self.headers.len() > MAX_HEADER_RULES {
            return refuse(
                "headers",
                format!("at most {MAX_HEADER_RULES} header rules"),
            );
        }
        for (i, rule) in self.headers.iter().enumerate() {
            if !is_token(&rule.name) {
                return refuse(
                    format!("headers[{i}].name"),
                    "must be a header name (1 to 64 token characters)",
                );
            }
            if RESERVED_HEADERS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&rule.name))
            {
                return refuse(
                    format!("headers[{i}].name"),
                    "CSeq, Session, Transport, Authorization, Content-Length and Content-Type are the client's own",
                );
            }
            match (&rule.value, rule.counter) {
                (Some(value), None) => {
                    let clean = value.len() <= MAX_HEADER_VALUE_LEN
                        && !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
                    if !clean {
                        return refuse(
                            format!("headers[{i}].value"),
                            format!("at most {MAX_HEADER_VALUE_LEN} bytes, no CR, LF or NUL"),
                        );
                    }
                }
                (None, Some(_)) => {}
                _ => {
                    return refuse(
                        format!("headers[{i}]"),
                        "needs exactly one of value (fixed) or counter (initial number)",
                    )
                }
            }
        }
        Ok(())
    }

    /// The URL without its password (for logs and the API).
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// The rustls client configuration for an `rtsps://` source: its CA bundle (else the system's
/// roots) and its client certificate and key, if any. Read when a connection starts, so renewed
/// files are picked up by the next attempt.
pub fn tls_client_config(spec: &SourceSpec) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let certs = |path: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = read(path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", path.display()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(certs(path)?);
            if added == 0 {
                return Err(format!("{}: no usable CA certificate", path.display()));
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(loaded.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(pki::PROTOCOL_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("{}: no private key: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `scheme://user:***@host/...` for a URL with a password; other URLs unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// Where a source's pull connection is, as its owner shard reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum PullState {
    /// Not connected (on demand and nobody watching).
    Idle,
    /// Connecting or in the RTSP handshake.
    Connecting,
    /// Media flows into the stream hub.
    Playing,
    /// The last attempt failed; the next starts after the backoff.
    Backoff {
        /// What failed.
        last_error: String,
        /// Milliseconds until the next attempt, when reported.
        retry_in_ms: u64,
    },
}

/// Counters and state of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullStatus {
    /// Where the connection is.
    #[serde(flatten)]
    pub state: PullState,
    /// Connection attempts so far.
    pub attempts: u64,
    /// Attempts that reached PLAY.
    pub sessions: u64,
    /// The last error, kept after a later success (empty: none yet).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

impl Default for PullStatus {
    fn default() -> Self {
        PullStatus {
            state: PullState::Idle,
            attempts: 0,
            sessions: 0,
            last_error: String::new(),
        }
    }
}

/// Where a source comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceOrigin {
    /// `[[sources]]` in the config file.
    Config,
    /// `POST /v1.0/sources` (kept in the store).
    Api,
}

/// One source as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// What to pull.
    pub spec: Arc<SourceSpec>,
    /// Where it was declared.
    pub origin: SourceOrigin,
    /// Bumped when the spec is replaced, so the owner shard restarts the connection.
    pub generation: u64,
    /// As the owner shard answered (the default when it did not).
    pub status: PullStatus,
}

/// One source's state as its owner shard answers [`SourceCommand::Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    /// The source.
    pub uid: String,
    /// The spec generation the shard runs.
    pub generation: u64,
    /// Where its connection is.
    pub status: PullStatus,
}

/// What the control plane tells or asks the owner shard of a source
/// ([`crate::session::shard_of_uid`]). Commands to one shard arrive in the order they were sent.
#[derive(Debug)]
#[non_exhaustive]
pub enum SourceCommand {
    /// Supervise `spec`: a new source, or a replaced one (a generation other than the one the
    /// shard runs: the old connection gets TEARDOWN and a new one starts).
    Upsert {
        /// What to pull.
        spec: Arc<SourceSpec>,
        /// Its generation in the control plane's catalog.
        generation: u64,
        /// Answered with the source's first state once the shard supervises it: `idle` (on
        /// demand, playable from now on) or `connecting` (always-on, first attempt under way).
        reply: Option<OneshotSender<PullStatus>>,
    },
    /// Stop the source (TEARDOWN) and forget it.
    Remove {
        /// The source.
        uid: String,
        /// Answered once it is stopped.
        reply: Option<OneshotSender<()>>,
    },
    /// The state of the shard's sources (`uid`: that one only).
    Status {
        /// One source, or all of the shard's.
        uid: Option<String>,
        /// The answer.
        reply: OneshotSender<Vec<SourceState>>,
    },
}

/// Commands waiting per shard: every source of the config file and the store may go to one
/// shard before the shards start.
pub const COMMAND_QUEUE: usize = MAX_SOURCES + 256;

/// The control plane's sources and its handle on their owner shards, the way
/// [`crate::devices::DeviceDirectory`] is for device sessions. `Send + Sync`.
///
/// The catalog (spec, origin, generation per UID) belongs to the control plane: only it writes
/// the catalog (config load, the API after the store committed), and it tells the owner shard
/// each change with a [`SourceCommand`] over one bounded `rt::xchan` queue per shard. The shard
/// owns the connection and its state; the API and `/metrics` ask it ([`SourceCommand::Status`]).
/// The catalog's `std::sync::Mutex` is taken by the control plane's thread alone, never across
/// an await.
#[derive(Debug, Clone)]
pub struct SourceDirectory {
    catalog: Arc<Mutex<Catalog>>,
    shards: Vec<Sender<SourceCommand>>,
    /// Longest wait for a shard's answer.
    pub ask_timeout: Duration,
}

#[derive(Debug, Default)]
struct Catalog {
    sources: BTreeMap<String, CatalogEntry>,
    next_generation: u64,
}

#[derive(Debug)]
struct CatalogEntry {
    spec: Arc<SourceSpec>,
    origin: SourceOrigin,
    generation: u64,
}

impl CatalogEntry {
    fn with_status(&self, status: PullStatus) -> SourceEntry {
        SourceEntry {
            spec: self.spec.clone(),
            origin: self.origin,
            generation: self.generation,
            status,
        }
    }
}

impl SourceDirectory {
    /// A directory over one command queue per shard, in shard order (none: no data plane, the
    /// sources are only listed).
    pub fn new(shards: Vec<Sender<SourceCommand>>) -> Self {
        SourceDirectory {
            catalog: Arc::default(),
            shards,
            ask_timeout: Duration::from_secs(30),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock leaves a consistent map (every write is one insert or
        // remove), so a poisoned lock is still usable.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the owner shard of `uid`; `false` when its queue is full or it is gone.
    fn tell_owner(&self, uid: &str, command: SourceCommand) -> bool {
        if self.shards.is_empty() {
            return false;
        }
        let owner = crate::session::shard_of_uid(uid, self.shards.len());
        match self.shards[owner].try_send(command) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    source = uid,
                    shard = owner,
                    "pull source command not delivered to its shard: {e}"
                );
                false
            }
        }
    }

    async fn wait<T>(&self, answer: OneshotReceiver<T>) -> Option<T> {
        match rt::timer::timeout(self.ask_timeout, answer).await {
            Ok(Ok(value)) => Some(value),
            _ => None,
        }
    }

    /// Adds or replaces a source in the catalog and sends it to its owner shard; `None` (and
    /// nothing changed) when the catalog is full. The receiver, if any shard was told, answers
    /// with the source's first state on the shard.
    fn upsert(
        &self,
        spec: SourceSpec,
        origin: SourceOrigin,
        wait: bool,
    ) -> Option<(SourceEntry, Option<OneshotReceiver<PullStatus>>)> {
        let entry = {
            let mut catalog = self.lock();
            if catalog.sources.len() >= MAX_SOURCES && !catalog.sources.contains_key(&spec.uid) {
                return None;
            }
            catalog.next_generation += 1;
            let entry = CatalogEntry {
                spec: Arc::new(spec),
                origin,
                generation: catalog.next_generation,
            };
            let shown = entry.with_status(PullStatus::default());
            catalog.sources.insert(entry.spec.uid.clone(), entry);
            shown
        };
        let (reply, answer) = match wait {
            true => {
                let (reply, answer) = oneshot();
                (Some(reply), Some(answer))
            }
            false => (None, None),
        };
        let told = self.tell_owner(
            &entry.spec.uid,
            SourceCommand::Upsert {
                spec: entry.spec.clone(),
                generation: entry.generation,
                reply,
            },
        );
        Some((entry, answer.filter(|_| told)))
    }

    /// Adds or replaces a source and tells its owner shard without waiting (config load, before
    /// the shards run); `false` (and nothing changed) when the directory is full.
    pub fn insert(&self, spec: SourceSpec, origin: SourceOrigin) -> bool {
        self.upsert(spec, origin, false).is_some()
    }

    /// Adds or replaces a source and waits until its owner shard supervises it: an on-demand
    /// source is playable and an always-on one is connecting when this returns. `None` (and
    /// nothing changed) when the directory is full.
    pub async fn put(&self, spec: SourceSpec, origin: SourceOrigin) -> Option<SourceEntry> {
        let (mut entry, answer) = self.upsert(spec, origin, true)?;
        if let Some(answer) = answer {
            match self.wait(answer).await {
                Some(status) => entry.status = status,
                None => {
                    tracing::warn!(source = %entry.spec.uid, "the pull source's shard did not answer")
                }
            }
        }
        Some(entry)
    }

    /// Removes a source and waits until its owner shard stopped it; returns what it was.
    pub async fn remove(&self, uid: &str) -> Option<SourceEntry> {
        let removed = self.lock().sources.remove(uid)?;
        let (reply, answer) = oneshot();
        let command = SourceCommand::Remove {
            uid: uid.to_owned(),
            reply: Some(reply),
        };
        if self.tell_owner(uid, command) {
            self.wait(answer).await;
        }
        Some(removed.with_status(PullStatus::default()))
    }

    /// Whether a source has this UID.
    pub fn contains(&self, uid: &str) -> bool {
        self.lock().sources.contains_key(uid)
    }

    /// Where the source `uid` was declared.
    pub fn origin(&self, uid: &str) -> Option<SourceOrigin> {
        self.lock().sources.get(uid).map(|e| e.origin)
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.lock().sources.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every source with the default status, sorted by UID, without asking the shards.
    pub fn catalog(&self) -> Vec<SourceEntry> {
        self.with_states(&[])
    }

    /// The catalog's sources, each with the state in `states` of its current generation (a
    /// state of a replaced spec is ignored).
    fn with_states(&self, states: &[SourceState]) -> Vec<SourceEntry> {
        let reported: BTreeMap<&str, &SourceState> =
            states.iter().map(|s| (s.uid.as_str(), s)).collect();
        self.lock()
            .sources
            .values()
            .map(|entry| {
                let status = reported
                    .get(entry.spec.uid.as_str())
                    .filter(|s| s.generation == entry.generation)
                    .map(|s| s.status.clone())
                    .unwrap_or_default();
                entry.with_status(status)
            })
            .collect()
    }

    /// One source, with the state its owner shard answers.
    pub async fn get(&self, uid: &str) -> Option<SourceEntry> {
        if !self.contains(uid) {
            return None;
        }
        let (reply, answer) = oneshot();
        let command = SourceCommand::Status {
            uid: Some(uid.to_owned()),
            reply,
        };
        let states = match self.tell_owner(uid, command) {
            true => self.wait(answer).await.unwrap_or_default(),
            false => Vec::new(),
        };
        self.with_states(&states)
            .into_iter()
            .find(|e| e.spec.uid == uid)
    }

    /// Every source, sorted by UID, with the state every shard answers (a shard that does not
    /// answer leaves its sources at the default state).
    pub async fn list(&self) -> Vec<SourceEntry> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut answers = Vec::with_capacity(self.shards.len());
        for (shard, queue) in self.shards.iter().enumerate() {
            let (reply, answer) = oneshot();
            match queue.try_send(SourceCommand::Status { uid: None, reply }) {
                Ok(()) => answers.push(answer),
                Err(e) => tracing::warn!(shard, "pull source states not asked: {e}"),
            }
        }
        let mut states = Vec::new();
        for answer in answers {
            states.extend(self.wait(answer).await.unwrap_or_default());
        }
        self.with_states(&states)
    }
}

/// Prometheus lines of `sources` (from [`SourceDirectory::list`]): sources per state and
/// connection attempts.
pub fn render_metrics(sources: &[SourceEntry], out: &mut String) {
    use std::fmt::Write as _;
    let mut counts = [0u64; 4];
    let (mut attempts, mut sessions) = (0u64, 0u64);
    for entry in sources {
        let index = match entry.status.state {
            PullState::Idle => 0,
            PullState::Connecting => 1,
            PullState::Playing => 2,
            PullState::Backoff { .. } => 3,
        };
        counts[index] += 1;
        attempts += entry.status.attempts;
        sessions += entry.status.sessions;
    }
    let _ = writeln!(
        out,
        "# HELP rop_pull_sources Pull sources by connection state."
    );
    let _ = writeln!(out, "# TYPE rop_pull_sources gauge");
    for (state, count) in ["idle", "connecting", "playing", "backoff"]
        .iter()
        .zip(counts)
    {
        let _ = writeln!(out, "rop_pull_sources{{state=\"{state}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "# HELP rop_pull_attempts_total Connection attempts to pull sources."
    );
    let _ = writeln!(out, "# TYPE rop_pull_attempts_total counter");
    let _ = writeln!(out, "rop_pull_attempts_total {attempts}");
    let _ = writeln!(
        out,
        "# HELP rop_pull_sessions_total Pull connections that reached PLAY."
    );
    let _ = writeln!(out, "# TYPE rop_pull_sessions_total counter");
    let _ = writeln!(out, "rop_pull_sessions_total {sessions}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uid: &str, url: &str) -> SourceSpec {
        SourceSpec {
            uid: uid.into(),
            url: url.into(),
            transport: PullTransport::Tcp,
            client_cert: None,
            client_key: None,
            ca: None,
            on_demand: true,
            headers: Vec::new(),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(spec("CAM1", "rtsp://h/x").validate().is_ok());
        let mut udp = spec("CAM1", "rtsp://h/x");
        udp.transport = PullTransport::Udp;
        assert!(udp.validate().is_ok());
        assert_eq!(spec("C-1", "rtsp://h").validate().unwrap_err().field, "uid");
        assert_eq!(spec("C1", "http://h").validate().unwrap_err().field, "url");
        let mut s = spec("C1", "rtsp://h/x");
        s.ca = Some("/ca.pem".into());
        assert_eq!(s.validate().unwrap_err().field, "url");
        s.url = "rtsps://h/x".into();
        assert!(s.validate().is_ok());
        s.transport = PullTransport::Udp;
        assert_eq!(s.validate().unwrap_err().field, "transport");
        s.transport = PullTransport::Tcp;
        s.client_cert = Some("/c.pem".into());
        assert_eq!(s.validate().unwrap_err().field, "client_cert");
        s.client_key = Some("/k.pem".into());
        assert!(s.validate().is_ok());
        s.headers = vec![HeaderRule {
            name: "Nonce".into(),
            value: Some("1".into()),
            counter: Some(0),
        }];
        assert_eq!(s.validate().unwrap_err().field, "headers[0]");
        s.headers[0].value = None;
        assert!(s.validate().is_ok());
        s.headers[0].name = "CSeq".into();
        assert_eq!(s.validate().unwrap_err().field, "headers[0].name");
        s.headers[0] = HeaderRule {
            name: "X-A".into(),
            value: Some("a\r\nB: c".into()),
            counter: None,
        };
        assert_eq!(s.validate().unwrap_err().field, "headers[0].value");
    }

    #[test]
    fn toml_form_and_defaults() {
        let text = r#"
            uid = "ARLO1"
            url = "rtsps://u:p@10.0.0.2:554/cam/tcp/avc"
            client_cert = "/etc/c.pem"
            client_key = "/etc/k.pem"
            headers = [{ name = "Nonce", counter = 0 }, { name = "User-Agent", value = "x" }]
        "#;
        let s: SourceSpec = toml::from_str(text).unwrap();
        assert!(s.on_demand);
        assert_eq!(s.transport, PullTransport::Tcp);
        assert_eq!(s.headers[0].counter, Some(0));
        s.validate().unwrap();
        assert_eq!(s.redacted_url(), "rtsps://u:***@10.0.0.2:554/cam/tcp/avc");
    }

    #[test]
    fn directory_tells_the_owner_shard_and_shows_only_the_current_generation() {
        let (queues, receivers): (Vec<_>, Vec<_>) =
            (0..2).map(|_| rt::xchan::channel(COMMAND_QUEUE)).unzip();
        let dir = SourceDirectory::new(queues);
        let owner = crate::session::shard_of_uid("A", 2);
        assert!(dir.insert(spec("A", "rtsp://h/a"), SourceOrigin::Api));
        let upserted = |commands: Vec<SourceCommand>| match commands.as_slice() {
            [SourceCommand::Upsert {
                spec, generation, ..
            }] => (spec.url.clone(), *generation),
            other => panic!("expected one upsert, got {other:?}"),
        };
        let (url, first) = upserted(receivers[owner].drain());
        assert_eq!(url, "rtsp://h/a");
        assert!(
            receivers[1 - owner].drain().is_empty(),
            "only the owner is told"
        );
        let playing = |generation| SourceState {
            uid: "A".into(),
            generation,
            status: PullStatus {
                state: PullState::Playing,
                ..PullStatus::default()
            },
        };
        assert_eq!(
            dir.with_states(&[playing(first)])[0].status.state,
            PullState::Playing
        );
        // A replaced spec is a new generation: the shard restarts it, and what it said about
        // the old one is not shown for the new one.
        assert!(dir.insert(spec("A", "rtsp://h/b"), SourceOrigin::Api));
        let (url, second) = upserted(receivers[owner].drain());
        assert_eq!(url, "rtsp://h/b");
        assert!(second > first);
        assert_eq!(
            dir.with_states(&[playing(first)])[0].status,
            PullStatus::default()
        );
        assert_eq!(dir.origin("A"), Some(SourceOrigin::Api));
        assert_eq!(dir.catalog().len(), 1);
    }

    #[test]
    fn directory_refuses_more_than_max_sources() {
        let dir = SourceDirectory::new(Vec::new());
        for i in 0..MAX_SOURCES {
            assert!(dir.insert(spec(&format!("S{i}"), "rtsp://h/x"), SourceOrigin::Config));
        }
        assert!(!dir.insert(spec("ONEMORE", "rtsp://h/x"), SourceOrigin::Api));
        assert!(!dir.contains("ONEMORE"));
        // Replacing one that exists is not an addition.
        assert!(dir.insert(spec("S0", "rtsp://h/y"), SourceOrigin::Config));
        assert_eq!(dir.len(), MAX_SOURCES);
    }
}
