//! The server's configuration: a TOML file (`relay serve --config FILE`), overridable by
//! environment variables, with embedded defaults that need no file at all.
//!
//! Names follow the platform's own configuration where one exists (`deviceStream.encryptMode`
//! becomes `ROP_STREAM_ENCRYPT_MODE`, `serverHost` becomes `ROP_HOSTNAME`, the port numbers are
//! the platform's), so an operator moving from the platform's server finds the same knobs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// An environment variable has a value this server does not understand.
    #[error("environment variable {name}={value:?}: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value is out of its range.
    #[error("config value {field}: {reason}")]
    Invalid {
        /// The field, in TOML dotted form.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// How devices are asked to send live streams: the platform's `deviceStream.encryptMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamEncryptMode {
    /// Mutual TLS on the stream TLS port ("full encryption").
    #[serde(rename = "TLS")]
    Tls,
    /// encryptTCP with encrypted frames ("selective encryption").
    #[serde(rename = "encryptTCP")]
    EncryptTcp,
    /// encryptTCP framing with every frame in the clear.
    #[serde(rename = "TCP")]
    Tcp,
}

impl StreamEncryptMode {
    /// The name the device protocol and the platform's configuration use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "TLS",
            Self::EncryptTcp => "encryptTCP",
            Self::Tcp => "TCP",
        }
    }
}

impl std::str::FromStr for StreamEncryptMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "TLS" => Ok(Self::Tls),
            "encryptTCP" => Ok(Self::EncryptTcp),
            "TCP" => Ok(Self::Tcp),
            other => Err(format!(
                "unknown mode {other:?}; expected TLS, encryptTCP or TCP"
            )),
        }
    }
}

/// Bind addresses of every listener. Device ports face the internet, client ports the LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// HTTPS: CA download for devices (platform port 61000).
    pub ca: SocketAddr,
    /// HTTPS: device credentials with a one-time code (61001).
    pub credentials: SocketAddr,
    /// HTTPS with mutual TLS: device registration (61002).
    pub registration: SocketAddr,
    /// encryptTCP: device keep-alive links (61003).
    pub keepalive: SocketAddr,
    /// RTSPS for clients (61004).
    pub rtsps: SocketAddr,
    /// TLS with mutual TLS: device signalling links (61005).
    pub signaling: SocketAddr,
    /// TLS with mutual TLS: device streams (61006).
    pub stream_tls: SocketAddr,
    /// encryptTCP: device streams, selectively encrypted or plain (61007).
    pub stream_tcp: SocketAddr,
    /// RTSP for clients: play, and publish with a publish token (61008).
    pub rtsp: SocketAddr,
    /// HTTP: the client API (61009).
    pub api: SocketAddr,
    /// HTTPS: the client API (61010).
    pub api_tls: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let at = |port| SocketAddr::new(any, port);
        Self {
            ca: at(61000),
            credentials: at(61001),
            registration: at(61002),
            keepalive: at(61003),
            rtsps: at(61004),
            signaling: at(61005),
            stream_tls: at(61006),
            stream_tcp: at(61007),
            rtsp: at(61008),
            api: at(61009),
            api_tls: at(61010),
        }
    }
}

impl ListenConfig {
    /// Every listener on `ip` with port 0, so that tests get ephemeral ports.
    pub fn ephemeral(ip: IpAddr) -> Self {
        let at = SocketAddr::new(ip, 0);
        Self {
            ca: at,
            credentials: at,
            registration: at,
            keepalive: at,
            rtsps: at,
            signaling: at,
            stream_tls: at,
            stream_tcp: at,
            rtsp: at,
            api: at,
            api_tls: at,
        }
    }
}

/// Client API settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// `none` (the platform's behaviour on a LAN) or `token`: a bearer token generated into
    /// `DATA/secrets/api-token` is required on every request.
    pub auth: ApiAuth,
    /// Serve HTTPS on `listen.api_tls` as well as HTTP.
    pub https: bool,
    /// Largest firmware file `POST /v1.0/firmware/{fileName}` accepts (streamed to disk).
    pub firmware_max_bytes: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            auth: ApiAuth::None,
            https: true,
            firmware_max_bytes: crate::firmware::DEFAULT_MAX_BYTES,
        }
    }
}

/// Client API authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiAuth {
    /// No authentication: client ports face the LAN only.
    None,
    /// `Authorization: Bearer <token>`.
    Token,
}

/// Device provisioning settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Lifetime of a one-time initialization code, seconds (the platform's `authCode.expiredIn`).
    pub code_ttl_secs: u64,
    /// Validity of device certificates, days (the platform's `cert.clientCertValidDays`).
    pub device_cert_days: u32,
    /// Heartbeat interval handed to devices at registration, seconds.
    pub heartbeat_interval_secs: u32,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        Self {
            code_ttl_secs: 60,
            device_cert_days: 180,
            heartbeat_interval_secs: 20,
        }
    }
}

/// Device sessions (keep-alive 61003 and signalling 61005).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// Silence after which a device link is offline, seconds (the platform's: 40, twice the
    /// 20 s heartbeat interval). When it is not longer than the heartbeat interval, keep-alive
    /// devices are told half of it as their interval.
    pub heartbeat_timeout_secs: u64,
    /// Time from connect to an accepted handshake (TLS, hello and 458 together), seconds.
    pub handshake_timeout_secs: u64,
    /// Time a device has to answer a request from the server, seconds (the platform's: 10).
    pub request_timeout_secs: u64,
    /// Longest wait of a viewer's DESCRIBE for a device's first keyframe after it asked for the
    /// stream (wake-up of a sleeping battery device and preview start included), seconds;
    /// then 503 "No Media From Device".
    pub stream_start_timeout_secs: u64,
    /// Time a device stream keeps flowing with no viewer before preview stop, seconds.
    pub stream_linger_secs: u64,
    /// A device stream connection that delivers no byte for this long is closed as silent
    /// (the device lost its network without a reset), seconds; its viewers wait for the stream
    /// to resume like after any lost stream connection.
    pub stream_media_timeout_secs: u64,
    /// How long viewers keep their connection when a stream's source goes away (a device's
    /// stream connection lost, an RTSP publisher or a pulled camera gone), seconds. Meanwhile
    /// the server asks the device for the stream again (at once when its signalling link is
    /// up, else as soon as the link is back); a stream that returns in time continues for the
    /// same viewers, otherwise their connections are closed.
    pub stream_grace_secs: u64,
    /// A DESCRIBE of the stream of a device that has no link online waits for an RTSP
    /// publisher (ANNOUNCE with a publish token) instead of answering 503 "Device Offline"
    /// at once. For deployments that feed device streams from elsewhere.
    pub wait_for_rtsp_publisher: bool,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_secs: 40,
            handshake_timeout_secs: 10,
            request_timeout_secs: 10,
            stream_start_timeout_secs: 10,
            stream_linger_secs: 10,
            stream_media_timeout_secs: 10,
            stream_grace_secs: 5,
            wait_for_rtsp_publisher: false,
        }
    }
}

/// Device stream ingest (61006/61007) and its RTP out (`[stream]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Drop encryptTCP frames whose HMAC-SHA256 trailer does not verify. The platform's server
    /// does not check it; turn off only for devices that send wrong trailers (each frame that
    /// fails is still counted in `rop_ingest_rejections_total{reason="bad_hmac"}`).
    pub verify_hmac: bool,
    /// Drop encryptTCP frames whose sequence number is not the previous plus one (replays).
    pub verify_sequence: bool,
    /// Close a stream connection whose handshake UID is not the device the hello's access key
    /// belongs to.
    pub bind_access_key_to_uid: bool,
    /// Largest RTP payload of the device streams, bytes (64 to 65000): H.264 FU-A and H.265 FU
    /// fragments are cut to fit. 1400 keeps packets under a 1500-byte MTU when a client
    /// relays them over UDP.
    pub rtp_max_payload: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            verify_hmac: true,
            verify_sequence: true,
            bind_access_key_to_uid: true,
            rtp_max_payload: 1400,
        }
    }
}

/// Firmware upgrade sessions (`[upgrade]`; the platform's `upgrade.*` and
/// `timeout.upgradeSignaling`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    /// Lifetime of an upgrade session (`expiredIn`), seconds: 60 to 3600 (the platform's
    /// `upgrade.sessionTTL`: 3600).
    pub session_ttl_secs: u64,
    /// Longest wait, once the device acknowledged the file and the sleep 233, for it to come
    /// back online with another firmware, seconds; then `unknown_error` (the platform's: 300).
    pub reboot_timeout_secs: u64,
    /// Time the device has to answer each 36 KiB firmware slice, seconds (the platform's
    /// `timeout.upgradeSignaling`: 60).
    pub slice_timeout_secs: u64,
    /// Most upgrades running at once; more are refused with `up_to_upgrade_session_limit`
    /// (the platform's `upgrade.maxSession`: 100).
    pub max_sessions: usize,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            session_ttl_secs: 3600,
            reboot_timeout_secs: 300,
            slice_timeout_secs: 60,
            max_sessions: 100,
        }
    }
}

/// Timings of pull sources (`[pull]`): how long the relay waits for a camera it pulls from, and
/// how it retries. Every wait for the camera has one of these deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// TCP connect, and the TLS handshake of `rtsps://` sources, seconds.
    pub connect_timeout_secs: u64,
    /// Each answer of the RTSP handshake (OPTIONS through PLAY), seconds.
    pub response_timeout_secs: u64,
    /// Longest silence of a playing source (no RTP, RTCP or RTSP byte) before the relay gives
    /// up on the connection and reconnects, seconds.
    pub media_timeout_secs: u64,
    /// Longest wait of a viewer's DESCRIBE for an on-demand source to reach PLAY, seconds;
    /// then 503 "Source Unavailable" (at once when the attempt fails before).
    pub start_timeout_secs: u64,
    /// Time an on-demand source stays connected with no viewer, seconds; absent:
    /// `[device] stream_linger_secs` (one linger for every on-demand stream).
    pub linger_secs: Option<u64>,
    /// First delay before reconnecting after a failure, milliseconds; doubled per failure
    /// (with ±25 % jitter) up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    /// Longest delay between two attempts, milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            response_timeout_secs: 10,
            media_timeout_secs: 20,
            start_timeout_secs: 15,
            linger_secs: None,
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Host name handed to devices and put in play URLs (`ROP_HOSTNAME`; default `localhost`).
    pub hostname: String,
    /// Extra names and addresses for the server certificate, besides `hostname`, `localhost`
    /// and `127.0.0.1`.
    pub certificate_hosts: Vec<String>,
    /// Number of shards (one per core when absent).
    pub shards: Option<usize>,
    /// The most secure stream mode devices are asked for (`ROP_STREAM_ENCRYPT_MODE`).
    pub stream_encrypt_mode: StreamEncryptMode,
    /// Where alarms are posted (`ROP_ALARM_WEBHOOK`); none: alarms are counted and dropped.
    pub alarm_webhook: Option<String>,
    /// PEM file with the CA certificate(s) an https alarm webhook must chain to, instead of the
    /// system's (`/etc/ssl/certs`) (`ROP_ALARM_WEBHOOK_CA`). For partners with a private CA.
    pub alarm_webhook_ca: Option<PathBuf>,
    /// Most alarms kept waiting for the webhook; beyond it the oldest alarm is dropped and
    /// counted (`rop_alarms_dropped_total{reason="backlog_full"}`). About 300 bytes of disk each.
    pub alarm_backlog_max: u64,
    /// Most alarm webhook requests in flight at once, each for a different device (a device's
    /// next alarm waits for the answer to its previous one), over as many keep-alive
    /// connections. A webhook that answers slowly still takes this many alarms per answer time.
    pub alarm_webhook_max_in_flight: usize,
    /// Default lifetime of play URLs, seconds (the platform's `rtsp.playSessionTTL` is 30 s).
    pub play_url_ttl_secs: u64,
    /// Listener addresses.
    pub listen: ListenConfig,
    /// Client API.
    pub api: ApiConfig,
    /// Device provisioning.
    pub provisioning: ProvisioningConfig,
    /// Device sessions.
    pub device: DeviceConfig,
    /// Device stream ingest.
    pub stream: StreamConfig,
    /// Firmware upgrade sessions.
    pub upgrade: UpgradeConfig,
    /// Connection limits and guessing protection (`[limits]`).
    pub limits: crate::limits::LimitsConfig,
    /// Timings of pull sources.
    pub pull: PullConfig,
    /// Pull sources (`[[sources]]`): cameras serving RTSP/RTSPS that the relay connects to.
    pub sources: Vec<crate::sources::SourceSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            hostname: "localhost".to_owned(),
            certificate_hosts: Vec::new(),
            shards: None,
            stream_encrypt_mode: StreamEncryptMode::Tls,
            alarm_webhook: None,
            alarm_webhook_ca: None,
            alarm_backlog_max: 100_000,
            alarm_webhook_max_in_flight: 8,
            play_url_ttl_secs: 30,
            listen: ListenConfig::default(),
            api: ApiConfig::default(),
            provisioning: ProvisioningConfig::default(),
            device: DeviceConfig::default(),
            stream: StreamConfig::default(),
            upgrade: UpgradeConfig::default(),
            limits: crate::limits::LimitsConfig::default(),
            pull: PullConfig::default(),
            sources: Vec::new(),
        }
    }
}

impl PullConfig {
    /// Checks the ranges: every wait at least a second (or 10 ms for backoff), none longer
    /// than an hour, and a backoff cap not below its start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        for (field, value) in [
            ("pull.connect_timeout_secs", self.connect_timeout_secs),
            ("pull.response_timeout_secs", self.response_timeout_secs),
            ("pull.media_timeout_secs", self.media_timeout_secs),
            ("pull.start_timeout_secs", self.start_timeout_secs),
        ] {
            if !(1..=300).contains(&value) {
                return invalid(field, "must be between 1 and 300");
            }
        }
        if self.linger_secs.is_some_and(|l| !(1..=3600).contains(&l)) {
            return invalid("pull.linger_secs", "must be between 1 and 3600");
        }
        if !(10..=3_600_000).contains(&self.backoff_min_ms) {
            return invalid("pull.backoff_min_ms", "must be between 10 and 3600000");
        }
        if !(self.backoff_min_ms..=3_600_000).contains(&self.backoff_max_ms) {
            return invalid(
                "pull.backoff_max_ms",
                "must be between pull.backoff_min_ms and 3600000",
            );
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path` if given (else the embedded defaults), applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file without applying the environment.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies `ROP_HOSTNAME`, `ROP_ALARM_WEBHOOK`, `ROP_ALARM_WEBHOOK_CA`,
    /// `ROP_STREAM_ENCRYPT_MODE` from `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(host) = lookup("ROP_HOSTNAME").filter(|v| !v.is_empty()) {
            self.hostname = host;
        }
        if let Some(url) = lookup("ROP_ALARM_WEBHOOK") {
            self.alarm_webhook = if url.is_empty() { None } else { Some(url) };
        }
        if let Some(ca) = lookup("ROP_ALARM_WEBHOOK_CA") {
            self.alarm_webhook_ca = if ca.is_empty() {
                None
            } else {
                Some(PathBuf::from(ca))
            };
        }
        if let Some(mode) = lookup("ROP_STREAM_ENCRYPT_MODE").filter(|v| !v.is_empty()) {
            self.stream_encrypt_mode = mode.parse().map_err(|reason| ConfigError::Env {
                name: "ROP_STREAM_ENCRYPT_MODE",
                value: mode,
                reason,
            })?;
        }
        Ok(())
    }

    /// Checks ranges and forms that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.hostname.is_empty() || self.hostname.len() > 63 {
            return invalid("hostname", "must be 1 to 63 bytes (the platform's limit)");
        }
        if self
            .hostname
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
        {
            return invalid("hostname", "must be a host name or an IP address");
        }
        if self.shards == Some(0) {
            return invalid("shards", "must be at least 1");
        }
        if !(5..=3600).contains(&self.provisioning.code_ttl_secs) {
            return invalid("provisioning.code_ttl_secs", "must be between 5 and 3600");
        }
        if !(1..=3650).contains(&self.provisioning.device_cert_days) {
            return invalid(
                "provisioning.device_cert_days",
                "must be between 1 and 3650",
            );
        }
        if !(5..=300).contains(&self.provisioning.heartbeat_interval_secs) {
            return invalid(
                "provisioning.heartbeat_interval_secs",
                "must be between 5 and 300",
            );
        }
        if !(1..=3600).contains(&self.device.heartbeat_timeout_secs) {
            return invalid(
                "device.heartbeat_timeout_secs",
                "must be between 1 and 3600",
            );
        }
        if !(1..=300).contains(&self.device.handshake_timeout_secs) {
            return invalid("device.handshake_timeout_secs", "must be between 1 and 300");
        }
        if !(1..=600).contains(&self.device.request_timeout_secs) {
            return invalid("device.request_timeout_secs", "must be between 1 and 600");
        }
        if !(1..=300).contains(&self.device.stream_start_timeout_secs) {
            return invalid(
                "device.stream_start_timeout_secs",
                "must be between 1 and 300",
            );
        }
        if !(1..=3600).contains(&self.device.stream_linger_secs) {
            return invalid("device.stream_linger_secs", "must be between 1 and 3600");
        }
        if !(1..=300).contains(&self.device.stream_media_timeout_secs) {
            return invalid(
                "device.stream_media_timeout_secs",
                "must be between 1 and 300",
            );
        }
        if !(1..=600).contains(&self.device.stream_grace_secs) {
            return invalid("device.stream_grace_secs", "must be between 1 and 600");
        }
        if !(60..=3600).contains(&self.upgrade.session_ttl_secs) {
            return invalid("upgrade.session_ttl_secs", "must be between 60 and 3600");
        }
        if !(1..=3600).contains(&self.upgrade.reboot_timeout_secs) {
            return invalid("upgrade.reboot_timeout_secs", "must be between 1 and 3600");
        }
        if !(1..=600).contains(&self.upgrade.slice_timeout_secs) {
            return invalid("upgrade.slice_timeout_secs", "must be between 1 and 600");
        }
        if !(1..=10_000).contains(&self.upgrade.max_sessions) {
            return invalid("upgrade.max_sessions", "must be between 1 and 10000");
        }
        if !(64..=65_000).contains(&self.stream.rtp_max_payload) {
            return invalid("stream.rtp_max_payload", "must be between 64 and 65000");
        }
        if !(1..=86_400).contains(&self.play_url_ttl_secs) {
            return invalid("play_url_ttl_secs", "must be between 1 and 86400");
        }
        if let Some(url) = &self.alarm_webhook {
            if let Err(e) = crate::alarms::WebhookTarget::parse(url) {
                return Err(ConfigError::Invalid {
                    field: "alarm_webhook",
                    reason: format!("must be an http:// or https:// URL: {}", e.reason),
                });
            }
        }
        if self
            .alarm_webhook_ca
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return invalid("alarm_webhook_ca", "must be a file path");
        }
        if !(1..=10_000_000).contains(&self.alarm_backlog_max) {
            return invalid("alarm_backlog_max", "must be between 1 and 10000000");
        }
        if !(1..=64).contains(&self.alarm_webhook_max_in_flight) {
            return invalid("alarm_webhook_max_in_flight", "must be between 1 and 64");
        }
        self.pull.validate()?;
        let mut uids = std::collections::HashSet::new();
        for source in &self.sources {
            if let Err(e) = source.validate() {
                return Err(ConfigError::Invalid {
                    field: "sources",
                    reason: format!("source {:?}: {e}", source.uid),
                });
            }
            if !uids.insert(source.uid.as_str()) {
                return Err(ConfigError::Invalid {
                    field: "sources",
                    reason: format!("uid {:?} is declared twice", source.uid),
                });
            }
        }
        Ok(())
    }

    /// Every host the server certificate must name: the hostname, localhost, 127.0.0.1 and
    /// the configured extras, without repeats.
    pub fn certificate_host_list(&self) -> Vec<String> {
        let mut hosts = vec![
            self.hostname.clone(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        hosts.extend(self.certificate_hosts.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        hosts.retain(|h| seen.insert(h.clone()));
        hosts
    }

    /// The play URL lifetime.
    pub fn play_url_ttl(&self) -> Duration {
        Duration::from_secs(self.play_url_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_platform_ports_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.ca.port(), 61000);
        assert_eq!(c.listen.api.port(), 61009);
        assert_eq!(c.stream_encrypt_mode, StreamEncryptMode::Tls);
        assert_eq!(c.certificate_host_list(), vec!["localhost", "127.0.0.1"]);
    }

    #[test]
    fn sample_config_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay.sample.toml");
        let c = Config::from_file(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.pull,
            PullConfig::default(),
            "the sample shows the defaults"
        );
    }

    #[test]
    fn sample_sources_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay.sample.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("# [[sources]]")
            .expect("the sample documents [[sources]]");
        let example: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").or(l.strip_prefix("#")).unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::from_toml(&example).unwrap();
        c.validate().unwrap();
        assert_eq!(c.sources[0].headers[0].counter, Some(0));
        assert!(c.sources[0].client_cert.is_some());
    }

    #[test]
    fn toml_overrides_and_unknown_keys() {
        let c = Config::from_toml(
            "hostname = \"cams.example.net\"\nstream_encrypt_mode = \"encryptTCP\"\n[listen]\nrtsp = \"127.0.0.1:7554\"\n",
        )
        .unwrap();
        assert_eq!(c.hostname, "cams.example.net");
        assert_eq!(c.stream_encrypt_mode, StreamEncryptMode::EncryptTcp);
        assert_eq!(c.listen.rtsp, "127.0.0.1:7554".parse().unwrap());
        assert_eq!(c.listen.api.port(), 61009);
        assert!(Config::from_toml("hostnme = \"x\"")
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn environment_overrides() {
        let mut c = Config::default();
        c.apply_env(|name| match name {
            "ROP_HOSTNAME" => Some("10.0.0.5".into()),
            "ROP_STREAM_ENCRYPT_MODE" => Some("TCP".into()),
            "ROP_ALARM_WEBHOOK" => Some("https://partner.example/alarm".into()),
            "ROP_ALARM_WEBHOOK_CA" => Some("/etc/partner-ca.pem".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.hostname, "10.0.0.5");
        assert_eq!(c.stream_encrypt_mode, StreamEncryptMode::Tcp);
        assert_eq!(
            c.alarm_webhook.as_deref(),
            Some("https://partner.example/alarm")
        );
        assert_eq!(
            c.alarm_webhook_ca.as_deref(),
            Some(Path::new("/etc/partner-ca.pem"))
        );
        let err = c
            .apply_env(|n| (n == "ROP_STREAM_ENCRYPT_MODE").then(|| "tls".into()))
            .unwrap_err();
        assert!(err.to_string().contains("ROP_STREAM_ENCRYPT_MODE"));
    }

    #[test]
    fn rejected_values() {
        let c = Config {
            hostname: String::new(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.provisioning.code_ttl_secs = 0;
        assert!(c.validate().is_err());
        let c = Config {
            alarm_webhook: Some("ftp://x".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            alarm_webhook: Some("https://".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            alarm_backlog_max: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        for (field, change) in [
            (
                "session_ttl_secs",
                (|c: &mut Config| c.upgrade.session_ttl_secs = 59) as fn(&mut Config),
            ),
            ("reboot_timeout_secs", |c: &mut Config| {
                c.upgrade.reboot_timeout_secs = 0
            }),
            ("slice_timeout_secs", |c: &mut Config| {
                c.upgrade.slice_timeout_secs = 601
            }),
            ("max_sessions", |c: &mut Config| c.upgrade.max_sessions = 0),
        ] {
            let mut c = Config::default();
            change(&mut c);
            assert!(c.validate().unwrap_err().to_string().contains(field));
        }
        for payload in [63, 65_001] {
            let mut c = Config::default();
            c.stream.rtp_max_payload = payload;
            assert!(c
                .validate()
                .unwrap_err()
                .to_string()
                .contains("rtp_max_payload"));
        }
    }

    #[test]
    fn pull_section_defaults_and_rejected_values() {
        let c = Config::default();
        assert_eq!(c.pull.connect_timeout_secs, 10);
        assert_eq!(c.pull.response_timeout_secs, 10);
        assert_eq!(c.pull.media_timeout_secs, 20);
        assert_eq!(c.pull.start_timeout_secs, 15);
        assert_eq!(c.pull.linger_secs, None);
        assert_eq!(c.pull.backoff_min_ms, 500);
        assert_eq!(c.pull.backoff_max_ms, 30_000);
        let c = Config::from_toml(
            "[pull]\nbackoff_min_ms = 50\nbackoff_max_ms = 200\nlinger_secs = 2\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.pull.linger_secs, Some(2));
        for (toml, field) in [
            (
                "[pull]\nconnect_timeout_secs = 0\n",
                "pull.connect_timeout_secs",
            ),
            (
                "[pull]\nmedia_timeout_secs = 301\n",
                "pull.media_timeout_secs",
            ),
            ("[pull]\nlinger_secs = 0\n", "pull.linger_secs"),
            ("[pull]\nbackoff_min_ms = 5\n", "pull.backoff_min_ms"),
            (
                "[pull]\nbackoff_min_ms = 1000\nbackoff_max_ms = 999\n",
                "pull.backoff_max_ms",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(err.to_string().contains(field), "{toml}: {err}");
        }
        assert!(Config::from_toml("[pull]\nbackoff_ms = 1\n")
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn stream_section_sets_the_ingest_policy_and_the_rtp_payload() {
        let c = Config::from_toml(
            "[stream]\nverify_hmac = false\nverify_sequence = false\nbind_access_key_to_uid = false\nrtp_max_payload = 1200\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.stream,
            StreamConfig {
                verify_hmac: false,
                verify_sequence: false,
                bind_access_key_to_uid: false,
                rtp_max_payload: 1200,
            }
        );
        assert_eq!(Config::default().stream, StreamConfig::default());
        assert!(StreamConfig::default().verify_hmac);
        assert!(Config::from_toml("[stream]\nverify_hmacs = true\n")
            .unwrap_err()
            .contains("unknown field"));
    }
}
