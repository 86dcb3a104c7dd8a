//! The control plane's view of online devices: typed requests to the shard that owns a
//! device, and the answers. Device sessions live on their owner shard (`session::shard_of_uid`)
//! with no shared state; the control plane (client API, revocation) is not a member of the
//! shards' mesh, so it asks through one [`rt::xchan`] queue per shard and awaits a oneshot
//! reply. The shard side (relay's device connection files) answers [`DeviceCommand`]s.
//!
//! Every ask is bounded: a full queue is [`DeviceError::Busy`] (429), a shard that does not
//! answer within [`DeviceDirectory::ask_timeout`] is [`DeviceError::Unavailable`] (500), and a
//! device request that the device does not answer in time is [`DeviceError::Timeout`]
//! (the session's request timeout, 10 s by default).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rt::xchan::{oneshot, OneshotReceiver, OneshotSender, Sender, TrySendError};
use serde::Serialize;

use crate::metrics::{MediaStats, TlsFailures};
use crate::proto::body::XmlBody;
use crate::session::{shard_of_uid, Reply, RequestError};

/// Most devices one list request returns (the platform's `totalRows` range is 1-32767; we
/// allow a larger single page so that a platform client that does not page still sees every
/// device of a large deployment).
pub const MAX_LIST_LIMIT: usize = 100_000;

/// Presence of one online device, as the client API shows it (`GET /v1.0/devices/{uid}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePresence {
    /// The device.
    pub uid: String,
    /// Signalling link (61005) up: requests can reach the device.
    pub signalling: bool,
    /// Keep-alive link (61003) up.
    pub keep_alive: bool,
    /// `battery` or `powered` (the platform's list shows `powered` for devices that say
    /// nothing).
    pub family: String,
    /// Model from the handshake.
    pub model: Option<String>,
    /// Firmware version from the handshake.
    pub firmware: Option<String>,
    /// Network type from the handshake (`wifi`, `4G`, …).
    pub network_type: Option<String>,
    /// Network link from the latest network-info report 464.
    pub network_link: Option<String>,
    /// Carrier (MCC+MNC) of 4G devices.
    pub carrier: Option<String>,
    /// When the earliest of its links came online, Unix ms.
    pub online_since: Option<u64>,
    /// Latest heartbeat on either link, Unix ms.
    pub last_heartbeat: Option<u64>,
    /// Battery charge in percent, from the latest heartbeat that carried it.
    pub battery_percent: Option<u8>,
    /// Charging status as the device reports it.
    pub charging: Option<String>,
    /// Channels and what they offer, from the capabilities reply 199.
    pub capabilities: Option<Vec<ChannelPresence>>,
    /// The device announced sleep 233 (battery devices) and was not woken since, or has only
    /// its keep-alive link up: a preview first wakes it with 460.
    pub asleep: bool,
    /// Streams asked of the device now (previews), with their viewers.
    pub streams: Vec<StreamPresence>,
}

/// One stream of [`DevicePresence::streams`]: a preview the server asked of the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPresence {
    /// Channel.
    pub channel: u32,
    /// `mainStream`, `subStream` or `externStream`.
    pub stream_type: &'static str,
    /// Stream connection mode: `TLS`, `encryptTCP` or `TCP`.
    pub mode: &'static str,
    /// `starting` (preview start sent, no keyframe yet) or `live`.
    pub state: &'static str,
    /// When the server asked for the stream, Unix ms.
    pub since: u64,
    /// RTSP viewers now.
    pub viewers: usize,
    /// Media bytes received from the device.
    pub bytes: u64,
    /// Time from the viewer's DESCRIBE that asked for the stream to the device's first
    /// keyframe, ms (wake-up of a sleeping battery device included); `None` while starting.
    pub first_keyframe_ms: Option<u64>,
    /// The device was asleep and woken with 460 for this stream.
    pub woken: bool,
}

/// One channel of [`DevicePresence::capabilities`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelPresence {
    /// Channel number.
    pub channel: u32,
    /// Streams offered: `mainStream`, `subStream`, `externStream`.
    pub streams: Vec<&'static str>,
    /// PTZ type (0: none).
    pub ptz_type: u32,
    /// PTZ control bits.
    pub ptz_control: u32,
    /// Wi-Fi mode.
    pub wifi_mode: u32,
}

/// One item of the platform's online-device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnlineDevice {
    /// The device.
    pub uid: String,
    /// `battery` or `powered`.
    pub family: String,
    /// Model.
    pub model: String,
    /// Firmware version.
    pub firmware: String,
}

/// One shard's part of a device list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardPage {
    /// Devices online on the shard.
    pub total: usize,
    /// The first `limit` devices (by UID) after the cursor, sorted by UID.
    pub items: Vec<OnlineDevice>,
    /// How many devices after the cursor the shard has (more than `items` when cut).
    pub after_cursor: usize,
}

/// A page of the online-device list across all shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePage {
    /// Devices online in total.
    pub total_rows: usize,
    /// This page, sorted by UID.
    pub items: Vec<OnlineDevice>,
    /// The cursor of the next page (the platform's cursor pagination), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A request to a device over its signalling link.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceCall {
    /// Alarm switch get 461: answered with [`Reply::AlarmSwitch`].
    AlarmSwitchGet,
    /// Alarm switch set 462.
    AlarmSwitchSet {
        /// Alarm push on the device.
        enabled: bool,
    },
    /// Snapshot 109: answered with [`Reply::Snapshot`], the whole JPEG.
    Snapshot {
        /// Channel.
        channel: u32,
        /// Stream the picture is taken from.
        stream_type: crate::proto::body::StreamType,
    },
    /// Any other command with an XML body (PTZ, settings, Wi-Fi, records…).
    Command {
        /// Command id.
        command: u32,
        /// Body, if any.
        body: Option<XmlBody>,
        /// Its own timeout (else the session's default).
        timeout: Option<Duration>,
    },
}

/// Counters of one shard's device links, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Sessions on the shard, every phase.
    pub sessions: u64,
    /// Devices with at least one online link.
    pub online_devices: u64,
    /// Connections accepted on the keep-alive port.
    pub accepted_keepalive: u64,
    /// Connections accepted on the signalling port.
    pub accepted_signalling: u64,
    /// Connections handed to their owner shard.
    pub handed_off: u64,
    /// Connections received from another shard.
    pub received: u64,
    /// Signalling TLS handshakes that failed, by reason.
    pub tls_failures: crate::metrics::TlsFailures,
    /// Keep-alive connections that closed or stalled before a whole hello.
    pub hello_incomplete: u64,
    /// Keep-alive sessions that went online.
    pub online_keepalive: u64,
    /// Signalling sessions that went online.
    pub online_signalling: u64,
    /// Sessions that ended, by reason (refused hellos and handshakes included).
    pub closed: BTreeMap<&'static str, u64>,
    /// Alarms received.
    pub alarms: u64,
    /// The shard's streams, viewers and media counters.
    pub media: crate::metrics::MediaStats,
}

/// Prometheus text of the shards' counters (index = shard): device links, media, and TLS
/// handshake failures merged with `tls_elsewhere` (the control plane's own HTTPS ports).
pub fn render_link_stats(stats: &[LinkStats], tls_elsewhere: &TlsFailures, out: &mut String) {
    let sum = |f: &dyn Fn(&LinkStats) -> u64| stats.iter().map(f).sum::<u64>();
    let mut gauge = |name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    gauge(
        "rop_devices_online",
        "Devices with at least one online link.",
    );
    let _ = writeln!(out, "rop_devices_online {}", sum(&|s| s.online_devices));
    let counter = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    };
    let _ = writeln!(out, "# HELP rop_device_sessions Device link sessions per shard, every phase.\n# TYPE rop_device_sessions gauge");
    for (shard, s) in stats.iter().enumerate() {
        let _ = writeln!(
            out,
            "rop_device_sessions{{shard=\"{shard}\"}} {}",
            s.sessions
        );
    }
    counter(
        out,
        "rop_device_links_accepted_total",
        "Device connections accepted, by link.",
    );
    let _ = writeln!(
        out,
        "rop_device_links_accepted_total{{link=\"keepalive\"}} {}",
        sum(&|s| s.accepted_keepalive)
    );
    let _ = writeln!(
        out,
        "rop_device_links_accepted_total{{link=\"signalling\"}} {}",
        sum(&|s| s.accepted_signalling)
    );
    counter(
        out,
        "rop_device_links_online_total",
        "Device link handshakes accepted, by link.",
    );
    let _ = writeln!(
        out,
        "rop_device_links_online_total{{link=\"keepalive\"}} {}",
        sum(&|s| s.online_keepalive)
    );
    let _ = writeln!(
        out,
        "rop_device_links_online_total{{link=\"signalling\"}} {}",
        sum(&|s| s.online_signalling)
    );
    counter(
        out,
        "rop_device_links_handed_off_total",
        "Device connections moved to their owner shard.",
    );
    let _ = writeln!(
        out,
        "rop_device_links_handed_off_total {}",
        sum(&|s| s.handed_off)
    );
    counter(
        out,
        "rop_device_hello_incomplete_total",
        "Keep-alive connections closed or stalled before a whole hello.",
    );
    let _ = writeln!(
        out,
        "rop_device_hello_incomplete_total {}",
        sum(&|s| s.hello_incomplete)
    );
    let mut merged: BTreeMap<&str, u64> = BTreeMap::new();
    counter(
        out,
        "rop_device_links_closed_total",
        "Device link sessions that ended, by reason (refused hellos and handshakes included).",
    );
    for s in stats {
        for (reason, n) in &s.closed {
            *merged.entry(reason).or_default() += n;
        }
    }
    for (reason, n) in &merged {
        let _ = writeln!(
            out,
            "rop_device_links_closed_total{{reason=\"{reason}\"}} {n}"
        );
    }
    counter(
        out,
        "rop_device_alarms_received_total",
        "Alarms received from devices.",
    );
    let _ = writeln!(
        out,
        "rop_device_alarms_received_total {}",
        sum(&|s| s.alarms)
    );
    let mut media = MediaStats::default();
    let mut tls = tls_elsewhere.clone();
    for s in stats {
        media.merge(&s.media);
        tls.merge(&s.tls_failures);
    }
    tls.merge(&media.tls_failures);
    media.render_prometheus(out);
    tls.render_prometheus(out);
}

/// What the control plane asks a shard. Every variant carries its reply sender; a shard that
/// drops a command unanswered cancels the asker.
#[derive(Debug)]
#[non_exhaustive]
pub enum DeviceCommand {
    /// Presence of one device; `None` when it has no online link on this shard.
    Presence {
        /// The device.
        uid: String,
        /// The answer.
        reply: OneshotSender<Option<DevicePresence>>,
    },
    /// This shard's online devices after `after` (exclusive), at most `limit`.
    List {
        /// Cursor: the last UID of the previous page.
        after: Option<String>,
        /// Most items.
        limit: usize,
        /// The answer.
        reply: OneshotSender<ShardPage>,
    },
    /// Close every link of the device now (revocation, operator). Answers how many links
    /// were closed.
    Close {
        /// The device.
        uid: String,
        /// Why, for the session's offline reason and the log.
        reason: &'static str,
        /// The answer, when the asker waits.
        reply: Option<OneshotSender<usize>>,
    },
    /// A request to the device on its signalling link.
    Call {
        /// The device.
        uid: String,
        /// What to ask.
        call: DeviceCall,
        /// The device's answer.
        reply: OneshotSender<Result<Reply, DeviceError>>,
    },
    /// Runs a firmware upgrade on the device's signalling link (start 67, the file in slices,
    /// sleep 233), then waits for the device to come back with another firmware. The answer
    /// comes when it is over, minutes later; progress goes to the job's tracker.
    Upgrade {
        /// The device.
        uid: String,
        /// What to send and where to report.
        job: crate::upgrade::UpgradeJob,
        /// The outcome.
        reply: OneshotSender<crate::upgrade::UpgradeOutcome>,
    },
    /// The shard's link counters.
    Stats {
        /// The answer.
        reply: OneshotSender<LinkStats>,
    },
}

/// Why a device could not be asked, or did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The device has no signalling link (the platform's `device_offline`, 404).
    #[error("the device is offline")]
    Offline,
    /// The device did not answer in time (`cmd_timeout`).
    #[error("the device did not answer in time")]
    Timeout,
    /// The device answered with an error code (`cmd_exec_error`).
    #[error("the device refused the command (response code {code})")]
    Refused {
        /// The device's response code.
        code: u32,
    },
    /// The device's answer could not be used (`cmd_exec_error`).
    #[error("the device's answer is unusable: {0}")]
    BadReply(String),
    /// Too many requests outstanding to this device or its shard (`frequent_request`, 429).
    #[error("too many requests in flight")]
    Busy,
    /// The owner shard did not answer (stopping, or stuck): our fault.
    #[error("the device's shard did not answer")]
    Unavailable,
}

impl DeviceError {
    /// The platform's error symbol and HTTP status.
    pub fn symbol_and_status(&self) -> (&'static str, u16) {
        match self {
            DeviceError::Offline => ("device_offline", 404),
            DeviceError::Timeout => ("cmd_timeout", 400),
            DeviceError::Refused { .. } | DeviceError::BadReply(_) => ("cmd_exec_error", 400),
            DeviceError::Busy => ("frequent_request", 429),
            DeviceError::Unavailable => ("server_internal_error", 500),
        }
    }
}

impl From<RequestError> for DeviceError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::TimedOut { .. } => DeviceError::Timeout,
            RequestError::Refused { code, .. } => DeviceError::Refused { code },
            RequestError::LinkClosed { .. } => DeviceError::Offline,
            other => DeviceError::BadReply(other.to_string()),
        }
    }
}

/// The control plane's handle on the shards' device sessions. `Send + Sync`.
#[derive(Debug, Clone)]
pub struct DeviceDirectory {
    shards: Vec<Sender<DeviceCommand>>,
    /// Longest wait for a shard's answer (longer than any device request timeout).
    pub ask_timeout: Duration,
}

impl DeviceDirectory {
    /// A directory over one command queue per shard, in shard order.
    pub fn new(shards: Vec<Sender<DeviceCommand>>) -> Self {
        Self {
            shards,
            ask_timeout: Duration::from_secs(30),
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn send(&self, shard: usize, command: DeviceCommand) -> Result<(), DeviceError> {
        let Some(queue) = self.shards.get(shard) else {
            return Err(DeviceError::Unavailable);
        };
        queue.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => DeviceError::Busy,
            _ => DeviceError::Unavailable,
        })
    }

    async fn wait<T>(&self, answer: OneshotReceiver<T>) -> Result<T, DeviceError> {
        match rt::timer::timeout(self.ask_timeout, answer).await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(DeviceError::Unavailable),
        }
    }

    fn owner(&self, uid: &str) -> usize {
        shard_of_uid(uid, self.shards.len())
    }

    /// Presence of `uid`; `None` when it has no online link.
    pub async fn presence(&self, uid: &str) -> Result<Option<DevicePresence>, DeviceError> {
        let (reply, answer) = oneshot();
        let uid = uid.to_owned();
        self.send(self.owner(&uid), DeviceCommand::Presence { uid, reply })?;
        self.wait(answer).await
    }

    /// Online devices sorted by UID, the page after `after`, at most `limit` items.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<DevicePage, DeviceError> {
        let limit = limit.clamp(1, MAX_LIST_LIMIT);
        let mut answers = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (reply, answer) = oneshot();
            let after = after.map(str::to_owned);
            self.send(
                shard,
                DeviceCommand::List {
                    after,
                    limit,
                    reply,
                },
            )?;
            answers.push(answer);
        }
        let mut pages = Vec::with_capacity(answers.len());
        for answer in answers {
            pages.push(self.wait(answer).await?);
        }
        Ok(merge_pages(pages, limit))
    }

    /// Every shard's link counters, in shard order.
    pub async fn stats(&self) -> Result<Vec<LinkStats>, DeviceError> {
        let mut answers = Vec::with_capacity(self.shards.len());
        for shard in 0..self.shards.len() {
            let (reply, answer) = oneshot();
            self.send(shard, DeviceCommand::Stats { reply })?;
            answers.push(answer);
        }
        let mut stats = Vec::with_capacity(answers.len());
        for answer in answers {
            stats.push(self.wait(answer).await?);
        }
        Ok(stats)
    }

    /// Closes every link of `uid` without waiting (callable from synchronous code such as the
    /// revocation callback).
    pub fn close_now(&self, uid: &str, reason: &'static str) -> Result<(), DeviceError> {
        let uid = uid.to_owned();
        self.send(
            self.owner(&uid),
            DeviceCommand::Close {
                uid,
                reason,
                reply: None,
            },
        )
    }

    /// Closes every link of `uid`; answers how many were open.
    pub async fn close(&self, uid: &str, reason: &'static str) -> Result<usize, DeviceError> {
        let (reply, answer) = oneshot();
        let uid = uid.to_owned();
        self.send(
            self.owner(&uid),
            DeviceCommand::Close {
                uid,
                reason,
                reply: Some(reply),
            },
        )?;
        self.wait(answer).await
    }

    /// Starts a firmware upgrade of `uid` on its owner shard; the returned receiver gets the
    /// outcome once the upgrade is over (no ask timeout: every step of the upgrade has its own,
    /// and a shard that stops drops the sender).
    pub fn upgrade(
        &self,
        uid: &str,
        job: crate::upgrade::UpgradeJob,
    ) -> Result<OneshotReceiver<crate::upgrade::UpgradeOutcome>, DeviceError> {
        let (reply, answer) = oneshot();
        let uid = uid.to_owned();
        self.send(self.owner(&uid), DeviceCommand::Upgrade { uid, job, reply })?;
        Ok(answer)
    }

    /// Sends `call` to `uid` over its signalling link and awaits the device's answer.
    pub async fn call(&self, uid: &str, call: DeviceCall) -> Result<Reply, DeviceError> {
        let (reply, answer) = oneshot();
        let uid = uid.to_owned();
        self.send(self.owner(&uid), DeviceCommand::Call { uid, call, reply })?;
        self.wait(answer).await?
    }

    /// The device's alarm push switch (461).
    pub async fn alarm_switch(&self, uid: &str) -> Result<bool, DeviceError> {
        match self.call(uid, DeviceCall::AlarmSwitchGet).await? {
            Reply::AlarmSwitch(switch) => Ok(switch.enabled),
            other => Err(DeviceError::BadReply(format!(
                "expected an alarm switch, got {other:?}"
            ))),
        }
    }

    /// A JPEG from the device's camera (109, received in chunks).
    pub async fn snapshot(
        &self,
        uid: &str,
        channel: u32,
        stream_type: crate::proto::body::StreamType,
    ) -> Result<bytes::Bytes, DeviceError> {
        match self
            .call(
                uid,
                DeviceCall::Snapshot {
                    channel,
                    stream_type,
                },
            )
            .await?
        {
            Reply::Snapshot(picture) => Ok(picture),
            other => Err(DeviceError::BadReply(format!(
                "expected a snapshot, got {other:?}"
            ))),
        }
    }

    /// Sends `command` with `body` and returns the device's XML answer (an empty reply is an
    /// empty `<body/>`).
    pub async fn command(
        &self,
        uid: &str,
        command: u32,
        body: Option<XmlBody>,
        timeout: Option<Duration>,
    ) -> Result<XmlBody, DeviceError> {
        let call = DeviceCall::Command {
            command,
            body,
            timeout,
        };
        match self.call(uid, call).await? {
            Reply::Xml(body) => Ok(body),
            Reply::Empty => Ok(XmlBody::new()),
            other => Err(DeviceError::BadReply(format!(
                "expected an XML body, got {other:?}"
            ))),
        }
    }

    /// Switches the device's alarm push (462).
    pub async fn set_alarm_switch(&self, uid: &str, enabled: bool) -> Result<(), DeviceError> {
        self.call(uid, DeviceCall::AlarmSwitchSet { enabled })
            .await
            .map(drop)
    }
}

/// Merges the shards' pages: the first `limit` UIDs after the cursor across all shards.
pub fn merge_pages(pages: Vec<ShardPage>, limit: usize) -> DevicePage {
    let total_rows = pages.iter().map(|p| p.total).sum();
    let after_cursor: usize = pages.iter().map(|p| p.after_cursor).sum();
    let mut items: Vec<OnlineDevice> = pages.into_iter().flat_map(|p| p.items).collect();
    items.sort_unstable_by(|a, b| a.uid.cmp(&b.uid));
    items.truncate(limit);
    let next_token = (after_cursor > items.len())
        .then(|| items.last().map(|d| d.uid.clone()))
        .flatten();
    DevicePage {
        total_rows,
        items,
        next_token,
    }
}

/// One shard's page: its online devices (UID -> item) after `after`, the first `limit`.
pub fn shard_page<'a>(
    devices: impl Iterator<Item = (&'a str, OnlineDevice)>,
    total: usize,
    after: Option<&str>,
    limit: usize,
) -> ShardPage {
    let mut items: Vec<OnlineDevice> = devices
        .filter(|(uid, _)| after.is_none_or(|after| *uid > after))
        .map(|(_, item)| item)
        .collect();
    let after_cursor = items.len();
    if items.len() > limit {
        items.select_nth_unstable_by(limit, |a, b| a.uid.cmp(&b.uid));
        items.truncate(limit);
    }
    items.sort_unstable_by(|a, b| a.uid.cmp(&b.uid));
    ShardPage {
        total,
        items,
        after_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(uid: &str) -> OnlineDevice {
        OnlineDevice {
            uid: uid.to_owned(),
            family: "powered".into(),
            model: "M".into(),
            firmware: "F".into(),
        }
    }

    fn page(uids: &[&str], after: Option<&str>, limit: usize) -> ShardPage {
        shard_page(
            uids.iter().map(|u| (*u, device(u))),
            uids.len(),
            after,
            limit,
        )
    }

    #[test]
    fn pages_walk_every_device_once_across_shards() {
        let a: Vec<String> = (0..250).map(|i| format!("A{i:015}")).collect();
        let b: Vec<String> = (0..173).map(|i| format!("B{i:015}")).collect();
        let c: Vec<String> = (0..99).map(|i| format!("A{:015}", 1000 + i)).collect();
        let shards: Vec<Vec<&str>> = [&a, &b, &c]
            .iter()
            .map(|s| s.iter().map(String::as_str).collect())
            .collect();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let pages = shards
                .iter()
                .map(|uids| page(uids, cursor.as_deref(), 40))
                .collect();
            let merged = merge_pages(pages, 40);
            assert_eq!(merged.total_rows, 522);
            assert!(merged.items.len() <= 40);
            seen.extend(merged.items.iter().map(|d| d.uid.clone()));
            match merged.next_token {
                Some(token) => cursor = Some(token),
                None => break,
            }
        }
        let mut expected: Vec<String> = a.iter().chain(&b).chain(&c).cloned().collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn ten_thousand_devices_on_four_shards_page_through_once_each() {
        let uids: Vec<String> = (0..10_000u64)
            .map(|i| format!("9527{:012}", i.wrapping_mul(7_919) % 1_000_000_007))
            .collect();
        let shards: Vec<Vec<&str>> = (0..4)
            .map(|shard| {
                uids.iter()
                    .map(String::as_str)
                    .filter(|uid| shard_of_uid(uid, 4) == shard)
                    .collect()
            })
            .collect();
        let (mut seen, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let merged = merge_pages(
                shards
                    .iter()
                    .map(|uids| page(uids, cursor.as_deref(), 1000))
                    .collect(),
                1000,
            );
            assert_eq!(merged.total_rows, 10_000);
            pages += 1;
            seen.extend(merged.items.into_iter().map(|d| d.uid));
            match merged.next_token {
                Some(token) => cursor = Some(token),
                None => break,
            }
        }
        assert_eq!(pages, 10);
        let mut expected = uids.clone();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn one_page_without_a_token_when_everything_fits() {
        let merged = merge_pages(vec![page(&["B", "A"], None, 10)], 10);
        assert_eq!(merged.next_token, None);
        assert_eq!(
            merged
                .items
                .iter()
                .map(|d| d.uid.as_str())
                .collect::<Vec<_>>(),
            ["A", "B"]
        );
        let json = serde_json::to_value(&merged).unwrap();
        assert_eq!(json["totalRows"], 2);
        assert!(json.get("nextToken").is_none());
    }

    #[test]
    fn errors_map_to_the_platforms_symbols() {
        assert_eq!(
            DeviceError::Offline.symbol_and_status(),
            ("device_offline", 404)
        );
        assert_eq!(DeviceError::Timeout.symbol_and_status().0, "cmd_timeout");
        assert_eq!(DeviceError::Busy.symbol_and_status().1, 429);
        assert_eq!(
            DeviceError::from(RequestError::LinkClosed { command: 461 }),
            DeviceError::Offline
        );
    }
}
