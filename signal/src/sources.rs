//! Pull sources: cameras that serve RTSP or RTSPS themselves and that the relay connects to, so
//! they appear to viewers under a UID of their own like any device stream. This module holds what
//! a source *is* (the `[[sources]]` entries of the config file, the body of `POST /v1.0/sources`,
//! the store's record) and the rules it must follow; the RTSP client and the connection live in
//! `relay::pull`, and [`SourceDirectory`] is how the control plane and the shards share them.
//!
//! Config and API records are one type, [`SourceSpec`], so a source declared in the file and one
//! added over the API behave the same. Sources from the file are not stored: the file stays the
//! truth for them, and the API refuses to replace or delete them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

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

/// One source as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// What to pull.
    pub spec: Arc<SourceSpec>,
    /// Where it was declared.
    pub origin: SourceOrigin,
    /// Bumped when the spec is replaced, so the owner shard restarts the connection.
    pub generation: u64,
    /// Reported by the owner shard.
    pub status: PullStatus,
}

/// The sources of the process, shared by the control plane (which adds and removes them after
/// the store committed) and the shards (each reads the sources it owns and reports their state).
///
/// A `std::sync::Mutex` around a map: writes are rare (config load, API), reads happen on a
/// viewer's DESCRIBE of a stream nobody publishes and on each shard's one-second reconcile, and the
/// lock is never held across an await.
#[derive(Debug, Clone, Default)]
pub struct SourceDirectory {
    inner: Arc<Mutex<DirectoryInner>>,
}

#[derive(Debug, Default)]
struct DirectoryInner {
    sources: BTreeMap<String, SourceEntry>,
    next_generation: u64,
}

impl SourceDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DirectoryInner> {
        // A panic while holding the lock leaves a consistent map (every write is one insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces a source; returns `false` (and changes nothing) when the directory is full.
    pub fn insert(&self, spec: SourceSpec, origin: SourceOrigin) -> bool {
        let mut inner = self.lock();
        if inner.sources.len() >= MAX_SOURCES && !inner.sources.contains_key(&spec.uid) {
            return false;
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.sources.insert(
            spec.uid.clone(),
            SourceEntry {
                spec: Arc::new(spec),
                origin,
                generation,
                status: PullStatus::default(),
            },
        );
        true
    }

    /// Removes a source; returns what it was.
    pub fn remove(&self, uid: &str) -> Option<SourceEntry> {
        self.lock().sources.remove(uid)
    }

    /// One source.
    pub fn get(&self, uid: &str) -> Option<SourceEntry> {
        self.lock().sources.get(uid).cloned()
    }

    /// Every source, sorted by UID.
    pub fn list(&self) -> Vec<SourceEntry> {
        self.lock().sources.values().cloned().collect()
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.lock().sources.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sources `owns` says belong to the caller (its shard), as (spec, generation).
    pub fn owned_by(&self, owns: impl Fn(&str) -> bool) -> Vec<(Arc<SourceSpec>, u64)> {
        self.lock()
            .sources
            .values()
            .filter(|e| owns(&e.spec.uid))
            .map(|e| (e.spec.clone(), e.generation))
            .collect()
    }

    /// Records the state of `uid`'s connection (by its owner shard), if the source still exists.
    pub fn report(&self, uid: &str, generation: u64, update: impl FnOnce(&mut PullStatus)) {
        if let Some(entry) = self.lock().sources.get_mut(uid) {
            if entry.generation == generation {
                update(&mut entry.status);
            }
        }
    }

    /// Prometheus lines: sources per state and connection attempts.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let inner = self.lock();
        let mut counts = [0u64; 4];
        let (mut attempts, mut sessions) = (0u64, 0u64);
        for entry in inner.sources.values() {
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
    fn directory_reports_only_the_current_generation() {
        let dir = SourceDirectory::new();
        assert!(dir.insert(spec("A", "rtsp://h/a"), SourceOrigin::Api));
        let (_, generation) = dir.owned_by(|_| true)[0].clone();
        dir.report("A", generation, |s| s.state = PullState::Playing);
        assert_eq!(dir.get("A").unwrap().status.state, PullState::Playing);
        dir.insert(spec("A", "rtsp://h/b"), SourceOrigin::Api);
        dir.report("A", generation, |s| s.attempts = 9);
        let entry = dir.get("A").unwrap();
        assert_eq!(entry.status.attempts, 0, "a stale shard report is ignored");
        assert!(dir.remove("A").is_some());
        assert!(dir.is_empty());
    }
}
