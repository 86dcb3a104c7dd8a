//! Device sessions through the public API, the way a shard's connection files drive them: a
//! simulated camera opens both links, the registry indexes them, the "client API" sends
//! requests through the registry, and the sweeper ends silent sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{
    Alarm, BatteryState, BodyMessage, Capabilities, ChannelCapabilities, Handshake, HandshakeReply,
    Heartbeat, HeartbeatReply, PreviewStart, PreviewStartReply, StreamMode, StreamType,
    VideoCodecId,
};
use signal::proto::core_packet::{cmd, CorePacket, CODE_LAST_CHUNK, CODE_OK};
use signal::proto::encrypt_tcp::{HELLO_OK, HELLO_STALE_KEY};
use signal::secrets::DeviceKeys;
use signal::session::sim::SimDevice;
use signal::session::{
    ConnId, DeviceRegistry, DeviceSession, LinkKind, Now, OfflineReason, Reply, RequestOutcome,
    SessionConfig, SessionEvent,
};

const UID: &str = "95270000ABCDEFGH";
const INDEX: &str = "keyIndexCurrent1";
const RETIRED: &str = "keyIndexRetired1";
const KEY: &str = "0123456789abcdef0123456789abcdef";

fn keys() -> Arc<DeviceKeys> {
    Arc::new(DeviceKeys {
        current_index: INDEX.to_owned(),
        keys: [
            (INDEX.to_owned(), KEY.to_owned()),
            (RETIRED.to_owned(), KEY.to_owned()),
        ]
        .into(),
    })
}

fn handshake() -> Handshake {
    Handshake {
        uid: UID.to_owned(),
        family: Some("battery".to_owned()),
        model: Some("Argus 4 Pro".to_owned()),
        firmware: Some("v3.1.0.2".to_owned()),
        network_type: Some("wifi".to_owned()),
        carrier: None,
    }
}

fn start() -> Now {
    Now::new(
        Instant::now(),
        UNIX_EPOCH + Duration::from_secs(1_750_000_000),
    )
}

/// Where a shard's connection files put what sessions report: alarms "persisted" (and acked
/// right after), request outcomes for waiters, offline reasons for metrics.
#[derive(Default)]
struct Sink {
    stored_alarms: Vec<(String, Alarm)>,
    outcomes: HashMap<(ConnId, u32), RequestOutcome>,
    offline: Vec<(ConnId, OfflineReason)>,
}

impl Sink {
    fn handle_events(&mut self, conn: ConnId, session: &mut DeviceSession) {
        while let Some(event) = session.poll_event() {
            match event {
                SessionEvent::AlarmReceived { request_id, alarm } => {
                    let uid = session.uid().unwrap_or_default().to_owned();
                    self.stored_alarms.push((uid, alarm));
                    assert!(session.ack_alarm(request_id));
                }
                SessionEvent::RequestDone(outcome) => {
                    self.outcomes.insert((conn, outcome.request_id), outcome);
                }
                SessionEvent::Offline { reason, .. } => self.offline.push((conn, reason)),
                _ => {}
            }
        }
    }
}

#[derive(Default)]
struct Shard {
    registry: DeviceRegistry,
    sink: Sink,
}

impl Shard {
    /// One read on `conn`, as its connection task does it. Returns the bytes to write and
    /// whether to close the connection afterwards.
    fn read(&mut self, conn: ConnId, bytes: &[u8], now: Now) -> (Bytes, bool) {
        let Some(replaced) = self.registry.receive(conn, bytes, now) else {
            return (Bytes::new(), true);
        };
        if let Some(mut evicted) = replaced {
            // A real shard also tells evicted.conn's task to close its socket.
            self.sink.handle_events(evicted.conn, &mut evicted.session);
        }
        self.flush(conn)
    }

    /// Drains events and output of `conn` (after a read, or after a request was queued).
    fn flush(&mut self, conn: ConnId) -> (Bytes, bool) {
        let Some(session) = self.registry.session_mut(conn) else {
            return (Bytes::new(), true);
        };
        self.sink.handle_events(conn, session);
        let out = session.take_output().unwrap_or_default();
        let closed = session.is_closed();
        if closed {
            self.registry.remove(conn);
        }
        (out, closed)
    }
}

fn packets(device: &mut SimDevice, bytes: &[u8]) -> Vec<CorePacket> {
    device
        .receive(bytes)
        .expect("the device reads the server's bytes")
}

/// Brings up both links of one device; returns the connections and the device sides.
fn both_links(shard: &mut Shard, now: Now) -> (ConnId, SimDevice, ConnId, SimDevice) {
    let config = Arc::new(SessionConfig::default());
    // Keep-alive: hello, then the handshake inside encryptTCP frames.
    let pair = AccessKeyPair::derive(INDEX, KEY.as_bytes(), UID);
    let (mut keep_alive_device, hello) = SimDevice::keep_alive(&pair, [7; 32]);
    let keep_alive = shard.registry.admit(DeviceSession::keep_alive(
        config.clone(),
        keys(),
        [9; 32],
        40_000,
        now.instant,
    ));
    let (out, closed) = shard.read(keep_alive, &hello, now);
    assert!(!closed);
    assert!(packets(&mut keep_alive_device, &out).is_empty());
    assert_eq!(keep_alive_device.hello_code(), Some(HELLO_OK));
    let (out, _) = shard.read(
        keep_alive,
        &keep_alive_device.handshake(&handshake(), 1),
        now,
    );
    let sent = packets(&mut keep_alive_device, &out);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        HandshakeReply::parse(&sent[0].body.to_contiguous())
            .unwrap()
            .heartbeat_interval_ms,
        20_000
    );

    // Signalling: TLS is the connection's; the session sees plaintext.
    let mut signalling_device = SimDevice::signalling();
    let signalling =
        shard
            .registry
            .admit(DeviceSession::signalling(config, UID, 80_000, now.instant));
    let (out, _) = shard.read(
        signalling,
        &signalling_device.handshake(&handshake(), 1),
        now,
    );
    let sent = packets(&mut signalling_device, &out);
    assert_eq!(sent.len(), 2);
    assert!(sent[0].body.is_empty());
    assert_eq!(sent[1].header.command, cmd::CAPABILITIES);
    let capabilities = Capabilities {
        channels: vec![ChannelCapabilities {
            channel: 0,
            stream_mask: 3,
            ptz_type: 0,
            ptz_control: 0,
            wifi_mode: 1,
        }],
    };
    let reply =
        signalling_device.reply_ok(cmd::CAPABILITIES, sent[1].header.request_id, &capabilities);
    let (out, _) = shard.read(signalling, &reply, now);
    assert!(out.is_empty());
    (keep_alive, keep_alive_device, signalling, signalling_device)
}

#[test]
fn a_device_with_both_links() {
    let now = start();
    let mut shard = Shard::default();
    let (keep_alive, mut ka_device, signalling, mut sig_device) = both_links(&mut shard, now);
    assert_eq!(shard.registry.online_devices(), 1);
    assert_eq!(shard.registry.len(), 2);

    // Battery from the keep-alive heartbeat; server time in the reply.
    let later = now.advanced(Duration::from_secs(20));
    let beat = Heartbeat {
        no_reply: false,
        battery: Some(BatteryState {
            percent: Some(64),
            charging: Some("0".to_owned()),
        }),
    };
    let (out, _) = shard.read(keep_alive, &ka_device.heartbeat(&beat, 2), later);
    let sent = packets(&mut ka_device, &out);
    let time = HeartbeatReply::parse(&sent[0].body.to_contiguous()).unwrap();
    assert_eq!(time.unix_secs, 1_750_000_020);

    let view = shard.registry.device(UID).unwrap();
    assert!(view.is_awake());
    assert_eq!(view.battery().unwrap().percent, Some(64));
    assert_eq!(view.capabilities().unwrap().channels[0].stream_mask, 3);
    assert_eq!(view.info().unwrap().firmware.as_deref(), Some("v3.1.0.2"));
    assert_eq!(view.last_heartbeat().unwrap().1, later.unix_millis);

    // Alarm: stored, then acked with 200.
    let alarm = Alarm {
        channel: 0,
        status: "start".to_owned(),
        ai_type: "people".to_owned(),
    };
    let (out, _) = shard.read(signalling, &sig_device.alarm(&alarm, 555), later);
    let sent = packets(&mut sig_device, &out);
    assert_eq!(shard.sink.stored_alarms, vec![(UID.to_owned(), alarm)]);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (
            sent[0].header.command,
            sent[0].header.request_id,
            sent[0].header.response_code
        ),
        (cmd::ALARM, 555, CODE_OK)
    );

    // The stream hub asks for a preview; the device answers with its binary reply.
    let (conn, session) = shard.registry.link_mut(UID, LinkKind::Signalling).unwrap();
    assert_eq!(conn, signalling);
    let stream_id = session
        .preview_start(0, StreamType::Main, StreamMode::Tls, 61006, later.instant)
        .unwrap();
    let (out, _) = shard.flush(signalling);
    let sent = packets(&mut sig_device, &out);
    let request = PreviewStart::parse(&sent[0].body.to_contiguous()).unwrap();
    assert_eq!(request.stream_id, stream_id);
    let reply = PreviewStartReply {
        fps: 25,
        codec: VideoCodecId::H264,
    }
    .encode();
    shard.read(
        signalling,
        &sig_device.reply(cmd::PREVIEW_START, stream_id, CODE_OK, &reply),
        later,
    );
    assert_eq!(
        shard.sink.outcomes[&(signalling, stream_id)].result,
        Ok(Reply::PreviewStarted(PreviewStartReply {
            fps: 25,
            codec: VideoCodecId::H264
        }))
    );

    // The client API asks for a snapshot: acknowledgement, chunks, 201.
    let (_, session) = shard.registry.link_mut(UID, LinkKind::Signalling).unwrap();
    let id = session
        .snapshot(0, StreamType::Main, later.instant)
        .unwrap();
    shard.flush(signalling);
    let mut bytes = sig_device.reply(cmd::SNAPSHOT, id, CODE_OK, b"").to_vec();
    bytes.extend_from_slice(&sig_device.reply(cmd::SNAPSHOT, id, CODE_OK, &[0xaa; 3000]));
    bytes.extend_from_slice(&sig_device.reply(cmd::SNAPSHOT, id, CODE_LAST_CHUNK, &[0xbb; 100]));
    for piece in bytes.chunks(997) {
        shard.read(signalling, piece, later);
    }
    let Ok(Reply::Snapshot(jpeg)) = &shard.sink.outcomes[&(signalling, id)].result else {
        panic!("{:?}", shard.sink.outcomes[&(signalling, id)]);
    };
    assert_eq!(jpeg.len(), 3100);
    assert_eq!(jpeg[2999..3001], [0xaa, 0xbb]);

    // Battery device goes to sleep: signalling closes, keep-alive stays; wake-up on keep-alive.
    let (_, session) = shard.registry.link_mut(UID, LinkKind::Signalling).unwrap();
    let sleep = session.sleep(later.instant).unwrap();
    shard.flush(signalling);
    let mut gone = shard.registry.disconnect(signalling).unwrap();
    shard.sink.handle_events(signalling, &mut gone);
    assert_eq!(
        shard.sink.outcomes[&(signalling, sleep)].result,
        Ok(Reply::Empty)
    );
    let view = shard.registry.device(UID).unwrap();
    assert!(!view.is_awake());
    let (_, session) = shard.registry.link_mut(UID, LinkKind::KeepAlive).unwrap();
    let wake = session.wake_up(later.instant).unwrap();
    let (out, _) = shard.flush(keep_alive);
    let sent = packets(&mut ka_device, &out);
    assert_eq!(sent[0].header.command, cmd::WAKE_UP);
    shard.read(
        keep_alive,
        &ka_device.reply(cmd::WAKE_UP, wake, CODE_OK, b""),
        later,
    );
    assert_eq!(
        shard.sink.outcomes[&(keep_alive, wake)].result,
        Ok(Reply::Empty)
    );

    // Silence: the sweeper ends the keep-alive link 40 s after its last heartbeat.
    assert!(shard
        .registry
        .sweep(later.instant + Duration::from_secs(40))
        .closed
        .is_empty());
    let sweep = shard
        .registry
        .sweep(later.instant + Duration::from_secs(41));
    assert_eq!(sweep.closed.len(), 1);
    assert_eq!(sweep.closed[0].conn, keep_alive);
    assert!(shard.registry.device(UID).is_none());
    assert!(shard.registry.is_empty());
}

#[test]
fn a_reconnecting_device_replaces_its_old_link() {
    let now = start();
    let mut shard = Shard::default();
    let (old_keep_alive, _, _, _) = both_links(&mut shard, now);
    // The camera reconnects its keep-alive link (NAT rebinding): the old one is closed.
    let pair = AccessKeyPair::derive(INDEX, KEY.as_bytes(), UID);
    let (mut device, hello) = SimDevice::keep_alive(&pair, [8; 32]);
    let config = Arc::new(SessionConfig::default());
    let new = shard.registry.admit(DeviceSession::keep_alive(
        config,
        keys(),
        [1; 32],
        1,
        now.instant,
    ));
    let (out, _) = shard.read(new, &hello, now);
    device.receive(&out).unwrap();
    shard.read(new, &device.handshake(&handshake(), 1), now);
    assert_eq!(
        shard.sink.offline,
        vec![(old_keep_alive, OfflineReason::Replaced)]
    );
    assert_eq!(shard.registry.links(UID).unwrap().keep_alive, Some(new));
    // The old connection's task finds its session gone and closes.
    assert_eq!(shard.read(old_keep_alive, b"x", now), (Bytes::new(), true));
}

#[test]
fn refused_devices_by_reason() {
    let now = start();
    let mut shard = Shard::default();
    let config = Arc::new(SessionConfig::default());

    // Retired key index: hello answered 400, closed.
    let retired = AccessKeyPair::derive(RETIRED, KEY.as_bytes(), UID);
    let (mut device, hello) = SimDevice::keep_alive(&retired, [7; 32]);
    let conn = shard.registry.admit(DeviceSession::keep_alive(
        config.clone(),
        keys(),
        [9; 32],
        1,
        now.instant,
    ));
    let (out, closed) = shard.read(conn, &hello, now);
    assert!(closed);
    device.receive(&out).unwrap();
    assert_eq!(device.hello_code(), Some(HELLO_STALE_KEY));

    // Certificate of UID, handshake of another.
    let mut device = SimDevice::signalling();
    let conn = shard.registry.admit(DeviceSession::signalling(
        config,
        "95270000OTHERUID",
        1,
        now.instant,
    ));
    let (out, closed) = shard.read(conn, &device.handshake(&handshake(), 1), now);
    assert!(closed && out.is_empty());

    let labels: Vec<_> = shard.sink.offline.iter().map(|(_, r)| r.label()).collect();
    assert_eq!(labels, ["stale_key_index", "uid_mismatch"]);
    assert!(shard.registry.is_empty());
}
