//! Answers the control plane's [`DeviceCommand`]s on a device's owner shard: presence, the
//! online list, closing a device's links (revocation), and requests to the device whose reply
//! comes back later through the session's `RequestDone` event.

use std::rc::Rc;
use std::time::Instant;

use rt::xchan::Receiver;
use signal::devices::{
    shard_page, ChannelPresence, DeviceCall, DeviceCommand, DeviceError, DevicePresence,
    OnlineDevice,
};
use signal::proto::body::StreamType;
use signal::session::{DeviceView, LinkKind, OfflineReason, RequestRejected};
use tracing::info;

use super::DeviceShard;

/// Serves commands until the shard shuts down or the control plane goes away.
pub(super) async fn serve_commands(shard: Rc<DeviceShard>, commands: Receiver<DeviceCommand>) {
    while let Some(Some(command)) = shard.shutdown.until(commands.recv()).await {
        shard.command(command);
        // A burst (a list across shards, many revocations) is answered in one wake-up.
        for command in commands.drain() {
            shard.command(command);
        }
    }
}

fn family(view: &DeviceView<'_>) -> String {
    match view.info().and_then(|i| i.family.as_deref()) {
        Some("battery") => "battery".to_owned(),
        _ => "powered".to_owned(),
    }
}

/// The presence of a device from its online sessions.
pub fn presence_of(uid: &str, view: &DeviceView<'_>) -> DevicePresence {
    let info = view.info();
    let battery = view.battery();
    let online_since = [view.keep_alive, view.signalling]
        .into_iter()
        .flatten()
        .filter_map(|s| s.presence().online_since_unix_millis)
        .min();
    let network_link = [view.signalling, view.keep_alive]
        .into_iter()
        .flatten()
        .find_map(|s| s.presence().network_link.clone());
    DevicePresence {
        uid: uid.to_owned(),
        signalling: view.signalling.is_some(),
        keep_alive: view.keep_alive.is_some(),
        family: family(view),
        model: info.and_then(|i| i.model.clone()),
        firmware: info.and_then(|i| i.firmware.clone()),
        network_type: info.and_then(|i| i.network_type.clone()),
        network_link,
        carrier: info.and_then(|i| i.carrier.clone()),
        online_since,
        last_heartbeat: view.last_heartbeat().map(|(_, unix_ms)| unix_ms),
        battery_percent: battery.and_then(|b| b.percent),
        charging: battery.and_then(|b| b.charging.clone()),
        asleep: family(view) == "battery" && view.signalling.is_none_or(|s| s.presence().asleep),
        streams: Vec::new(),
        capabilities: view.capabilities().map(|caps| {
            caps.channels
                .iter()
                .map(|c| ChannelPresence {
                    channel: c.channel,
                    streams: [StreamType::Main, StreamType::Sub, StreamType::Extern]
                        .into_iter()
                        .filter(|s| c.has_stream(*s))
                        .map(StreamType::as_str)
                        .collect(),
                    ptz_type: c.ptz_type,
                    ptz_control: c.ptz_control,
                    wifi_mode: c.wifi_mode,
                })
                .collect()
        }),
    }
}

impl DeviceShard {
    fn command(self: &Rc<Self>, command: DeviceCommand) {
        match command {
            DeviceCommand::Upgrade { uid, job, reply } => {
                rt::spawn_detached(super::upgrade::run(self.clone(), uid, job, reply));
            }
            DeviceCommand::Presence { uid, reply } => {
                let registry = self.registry.borrow();
                let presence = registry.device(&uid).map(|view| presence_of(&uid, &view));
                drop(registry);
                reply.send(presence.map(|mut presence| {
                    presence.streams = self.streams_of(&uid);
                    presence
                }));
            }
            DeviceCommand::List {
                after,
                limit,
                reply,
            } => {
                let registry = self.registry.borrow();
                let devices = registry.uids().filter_map(|uid| {
                    let view = registry.device(uid)?;
                    let info = view.info();
                    let text = |f: Option<&String>| f.cloned().unwrap_or_default();
                    Some((
                        uid,
                        OnlineDevice {
                            uid: uid.to_owned(),
                            family: family(&view),
                            model: text(info.and_then(|i| i.model.as_ref())),
                            firmware: text(info.and_then(|i| i.firmware.as_ref())),
                        },
                    ))
                });
                let page = shard_page(devices, registry.online_devices(), after.as_deref(), limit);
                reply.send(page);
            }
            DeviceCommand::Close { uid, reason, reply } => {
                let evicted = self
                    .registry
                    .borrow_mut()
                    .close_device(&uid, OfflineReason::ServerClosed(reason));
                let closed = evicted.len();
                // Its streams too: a revoked device must not keep sending video.
                let streams = self.close_streams_of(&uid);
                if closed > 0 || streams > 0 {
                    info!(
                        shard = self.id,
                        uid,
                        reason,
                        links = closed,
                        streams,
                        "device links closed by the server"
                    );
                }
                for evicted in evicted {
                    self.evict(evicted);
                }
                if let Some(reply) = reply {
                    reply.send(closed);
                }
            }
            DeviceCommand::Call { uid, call, reply } => {
                let now = Instant::now();
                let sent = {
                    let mut registry = self.registry.borrow_mut();
                    match registry.link_mut(&uid, LinkKind::Signalling) {
                        None => Err(DeviceError::Offline),
                        Some((conn, session)) => {
                            let id = match call {
                                DeviceCall::AlarmSwitchGet => session.alarm_switch_get(now),
                                DeviceCall::AlarmSwitchSet { enabled } => {
                                    session.alarm_switch_set(enabled, now)
                                }
                                DeviceCall::Snapshot {
                                    channel,
                                    stream_type,
                                } => session.snapshot(channel, stream_type, now),
                                DeviceCall::Command {
                                    command,
                                    body,
                                    timeout: Some(timeout),
                                } => session.request_with_timeout(
                                    command,
                                    body.as_ref(),
                                    timeout,
                                    now,
                                ),
                                DeviceCall::Command { command, body, .. } => {
                                    session.request(command, body.as_ref(), now)
                                }
                                _ => {
                                    return reply.send(Err(DeviceError::BadReply(
                                        "call not supported by this server".into(),
                                    )))
                                }
                            };
                            id.map(|id| (conn, id)).map_err(|e| match e {
                                RequestRejected::NotOnline { .. } => DeviceError::Offline,
                                RequestRejected::TooManyPending { .. }
                                | RequestRejected::SnapshotInProgress => DeviceError::Busy,
                                other => DeviceError::BadReply(other.to_string()),
                            })
                        }
                    }
                };
                match sent {
                    Ok((conn, id)) => {
                        self.waiters.borrow_mut().insert((conn, id), reply);
                        if let Some(signal) = self.conns.borrow().get(&conn) {
                            signal.notify.notify();
                        }
                    }
                    Err(e) => reply.send(Err(e)),
                }
            }
            DeviceCommand::Stats { reply } => reply.send(self.stats()),
            _ => {}
        }
    }
}
