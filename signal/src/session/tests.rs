use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;

use super::sim::SimDevice;
use super::upgrade;
use super::*;
use crate::proto::access_key::AccessKeyPair;
use crate::proto::body::{
    Alarm, AlarmSwitch, BatteryState, BodyMessage, Capabilities, ChannelCapabilities, Handshake,
    HandshakeReply, Heartbeat, HeartbeatReply, PreviewStart, PreviewStartReply, SnapshotRequest,
    StreamMode, StreamType, VideoCodecId, XmlBody, XmlElement,
};
use crate::proto::core_packet::{
    cmd, CoreHeader, CorePacket, CODE_ERROR, CODE_LAST_CHUNK, CODE_OK,
};
use crate::proto::encrypt_tcp::{HELLO_OK, HELLO_STALE_KEY};
use crate::secrets::DeviceKeys;

const UID: &str = "95270000ABCDEFGH";
const OTHER_UID: &str = "95270000ZZZZZZZZ";
const CURRENT_INDEX: &str = "currentIndex0001";
const OLD_INDEX: &str = "oldKeyIndex00001";
const CURRENT_KEY: &str = "0123456789abcdef0123456789abcdef";
const OLD_KEY: &str = "fedcba9876543210fedcba9876543210";
const SERVER_NONCE: [u8; 32] = [b's'; 32];

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig::default())
}

fn device_keys() -> Arc<DeviceKeys> {
    Arc::new(DeviceKeys {
        current_index: CURRENT_INDEX.to_owned(),
        keys: [
            (CURRENT_INDEX.to_owned(), CURRENT_KEY.to_owned()),
            (OLD_INDEX.to_owned(), OLD_KEY.to_owned()),
        ]
        .into(),
    })
}

fn pair_for(uid: &str) -> AccessKeyPair {
    AccessKeyPair::derive(CURRENT_INDEX, CURRENT_KEY.as_bytes(), uid)
}

fn start() -> Now {
    Now::new(
        Instant::now(),
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
    )
}

fn handshake(uid: &str) -> Handshake {
    Handshake {
        uid: uid.to_owned(),
        family: Some("battery".to_owned()),
        model: Some("Argus 3".to_owned()),
        firmware: Some("v3.0.0.1".to_owned()),
        network_type: Some("wifi".to_owned()),
        carrier: None,
    }
}

fn drain(session: &mut DeviceSession) -> Vec<SessionEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// Output of the session as the device reads it.
fn delivered(session: &mut DeviceSession, device: &mut SimDevice) -> Vec<CorePacket> {
    match session.take_output() {
        Some(bytes) => device.receive(&bytes).expect("server bytes readable"),
        None => Vec::new(),
    }
}

fn keep_alive_session(now: Now) -> DeviceSession {
    DeviceSession::keep_alive(config(), device_keys(), SERVER_NONCE, 1000, now.instant)
}

/// A keep-alive session past its hello and handshake, with the device's side.
fn online_keep_alive(now: Now) -> (DeviceSession, SimDevice) {
    let mut session = keep_alive_session(now);
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    session.receive(&hello, now);
    assert!(delivered(&mut session, &mut device).is_empty());
    assert_eq!(device.hello_code(), Some(HELLO_OK));
    session.receive(&device.handshake(&handshake(UID), 1), now);
    let replies = delivered(&mut session, &mut device);
    assert_eq!(replies.len(), 1);
    drain(&mut session);
    (session, device)
}

/// A signalling session past its handshake and capabilities.
fn online_signalling(now: Now) -> (DeviceSession, SimDevice) {
    let mut session = DeviceSession::signalling(config(), UID, 500, now.instant);
    let mut device = SimDevice::signalling();
    session.receive(&device.handshake(&handshake(UID), 1), now);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 2, "handshake reply and capabilities request");
    let capabilities = Capabilities {
        channels: vec![ChannelCapabilities {
            channel: 0,
            stream_mask: 3,
            ptz_type: 0,
            ptz_control: 0,
            wifi_mode: 1,
        }],
    };
    session.receive(
        &device.reply_ok(cmd::CAPABILITIES, sent[1].header.request_id, &capabilities),
        now,
    );
    drain(&mut session);
    (session, device)
}

#[test]
fn signalling_handshake_replies_empty_200_and_asks_capabilities() {
    let now = start();
    let mut session = DeviceSession::signalling(config(), UID, 500, now.instant);
    assert_eq!(session.phase(), Phase::AwaitHandshake);
    let mut device = SimDevice::signalling();
    session.receive(&device.handshake(&handshake(UID), 77), now);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].header.command, cmd::HANDSHAKE);
    assert_eq!(sent[0].header.request_id, 77);
    assert_eq!(sent[0].header.response_code, CODE_OK);
    assert_eq!(sent[0].header.magic, 1);
    assert!(sent[0].body.is_empty());
    assert_eq!(sent[1].header.command, cmd::CAPABILITIES);
    assert_eq!(sent[1].header.request_id, 500);
    assert_eq!(sent[1].header.magic, 0);
    assert_eq!(sent[1].header.response_code, CODE_OK);
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::Online {
            uid: UID.to_owned(),
            link: LinkKind::Signalling,
            info: handshake(UID),
        }]
    );
    assert!(session.is_online());
    assert_eq!(session.uid(), Some(UID));
    assert!(session.presence().is_battery_device());

    let capabilities = Capabilities {
        channels: vec![ChannelCapabilities {
            channel: 0,
            stream_mask: 7,
            ptz_type: 2,
            ptz_control: 1,
            wifi_mode: 1,
        }],
    };
    session.receive(&device.reply_ok(cmd::CAPABILITIES, 500, &capabilities), now);
    // The session's own request: presence and an event, no RequestDone.
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::Capabilities(capabilities.clone())]
    );
    assert_eq!(session.presence().capabilities, Some(capabilities));
    assert_eq!(session.pending_requests(), 0);
}

#[test]
fn signalling_refuses_uid_other_than_certificate() {
    let now = start();
    let mut session = DeviceSession::signalling(config(), UID, 1, now.instant);
    let mut device = SimDevice::signalling();
    session.receive(&device.handshake(&handshake(OTHER_UID), 1), now);
    assert!(session.is_closed());
    assert!(session.take_output().is_none());
    let events = drain(&mut session);
    assert_eq!(
        events,
        vec![SessionEvent::Offline {
            reason: OfflineReason::UidMismatch {
                claimed: OTHER_UID.to_owned(),
                authenticated: UID.to_owned()
            },
            was_online: false,
        }]
    );
    let SessionEvent::Offline { reason, .. } = &events[0] else {
        unreachable!()
    };
    assert_eq!(reason.fault(), Fault::Device);
    assert_eq!(reason.label(), "uid_mismatch");
    // Closed sessions ignore input.
    session.receive(&device.heartbeat(&Heartbeat::default(), 2), now);
    assert!(drain(&mut session).is_empty());
    assert!(!session.has_output());
}

#[test]
fn invalid_uid_and_malformed_handshake_close() {
    let now = start();
    let mut session = DeviceSession::signalling(config(), UID, 1, now.instant);
    let mut device = SimDevice::signalling();
    session.receive(&device.handshake(&handshake("lowercase-uid"), 1), now);
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::Offline {
            reason: OfflineReason::InvalidUid { .. },
            ..
        }]
    ));
    let mut session = DeviceSession::signalling(config(), UID, 1, now.instant);
    let packet = device.packet(
        crate::proto::core_packet::CoreHeader::request(cmd::HANDSHAKE, 1),
        b"<body><Param013>",
    );
    session.receive(&packet, now);
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::Offline {
            reason: OfflineReason::BadHandshake(_),
            ..
        }]
    ));
}

#[test]
fn keep_alive_hello_and_handshake() {
    let now = start();
    let mut session = keep_alive_session(now);
    assert_eq!(session.phase(), Phase::AwaitHello);
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    session.receive(&hello, now);
    assert_eq!(session.phase(), Phase::AwaitHandshake);
    let reply = session.take_output().unwrap();
    assert_eq!(reply.len(), 100);
    assert_eq!(&reply[4..36], pair_for(UID).access_key.as_bytes());
    assert_eq!(&reply[36..68], &SERVER_NONCE);
    assert!(device.receive(&reply).unwrap().is_empty());
    assert_eq!(device.hello_code(), Some(HELLO_OK));
    // Requests are refused until the handshake.
    assert_eq!(
        session.wake_up(now.instant),
        Err(RequestRejected::NotOnline {
            phase: Phase::AwaitHandshake
        })
    );

    session.receive(&device.handshake(&handshake(UID), 9), now);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 1, "no capabilities request on keep-alive");
    assert_eq!(sent[0].header.command, cmd::HANDSHAKE);
    assert_eq!(sent[0].header.request_id, 9);
    let reply = HandshakeReply::parse(&sent[0].body.to_contiguous()).unwrap();
    assert_eq!(reply.heartbeat_interval_ms, 20_000);
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::Online {
            link: LinkKind::KeepAlive,
            ..
        }]
    ));
    assert_eq!(session.heartbeat_timeout(), Duration::from_secs(40));
}

#[test]
fn keep_alive_stale_key_index_gets_400() {
    let now = start();
    let mut session = keep_alive_session(now);
    let stale = AccessKeyPair::derive(OLD_INDEX, OLD_KEY.as_bytes(), UID);
    let (mut device, hello) = SimDevice::keep_alive(&stale, [b'c'; 32]);
    session.receive(&hello, now);
    let reply = session.take_output().expect("a stale key is answered");
    device.receive(&reply).unwrap();
    assert_eq!(device.hello_code(), Some(HELLO_STALE_KEY));
    assert!(session.is_closed());
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::Offline {
            reason: OfflineReason::StaleKeyIndex {
                index: OLD_INDEX.to_owned()
            },
            was_online: false
        }]
    );
}

#[test]
fn keep_alive_unknown_index_and_bad_signature_get_no_reply() {
    let now = start();
    let unknown = AccessKeyPair::derive("neverIssued00000", b"whatever", UID);
    let (_, hello) = SimDevice::keep_alive(&unknown, [b'c'; 32]);
    let mut session = keep_alive_session(now);
    session.receive(&hello, now);
    assert!(session.take_output().is_none());
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::Offline {
            reason: OfflineReason::UnknownKeyIndex { .. },
            ..
        }]
    ));

    let forged = AccessKeyPair {
        secret: "0000000000000000000000000000000A".to_owned(),
        ..pair_for(UID)
    };
    let (_, hello) = SimDevice::keep_alive(&forged, [b'c'; 32]);
    let mut session = keep_alive_session(now);
    session.receive(&hello, now);
    assert!(session.take_output().is_none());
    let events = drain(&mut session);
    assert!(
        matches!(
            events.as_slice(),
            [SessionEvent::Offline {
                reason: OfflineReason::BadHello(_),
                ..
            }]
        ),
        "{events:?}"
    );

    let mut session = keep_alive_session(now);
    session.receive(&[0x41; 100], now);
    assert!(session.is_closed());
}

#[test]
fn keep_alive_refuses_handshake_of_another_uid() {
    let now = start();
    let mut session = keep_alive_session(now);
    // A valid access key of UID, then a handshake naming OTHER_UID.
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    session.receive(&hello, now);
    device.receive(&session.take_output().unwrap()).unwrap();
    session.receive(&device.handshake(&handshake(OTHER_UID), 1), now);
    assert!(session.take_output().is_none());
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::Offline {
            reason: OfflineReason::AccessKeyMismatch {
                claimed: OTHER_UID.to_owned()
            },
            was_online: false
        }]
    );

    // With the binding off (devices sharing keys), the platform's behaviour.
    let config = Arc::new(SessionConfig {
        bind_access_key_to_uid: false,
        ..SessionConfig::default()
    });
    let mut session =
        DeviceSession::keep_alive(config, device_keys(), SERVER_NONCE, 1, now.instant);
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    session.receive(&hello, now);
    device.receive(&session.take_output().unwrap()).unwrap();
    session.receive(&device.handshake(&handshake(OTHER_UID), 1), now);
    assert!(session.is_online());
}

#[test]
fn keep_alive_4g_device_gets_carrier_interval() {
    let now = start();
    let mut session = keep_alive_session(now);
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    session.receive(&hello, now);
    device.receive(&session.take_output().unwrap()).unwrap();
    let cellular = Handshake {
        network_type: Some("4G".to_owned()),
        carrier: Some("46000".to_owned()),
        ..handshake(UID)
    };
    session.receive(&device.handshake(&cellular, 1), now);
    let sent = delivered(&mut session, &mut device);
    let reply = HandshakeReply::parse(&sent[0].body.to_contiguous()).unwrap();
    assert_eq!(reply.heartbeat_interval_ms, 1_140_000);
    assert_eq!(session.heartbeat_timeout(), Duration::from_secs(2280));
    assert!(!session.check_liveness(now.instant + Duration::from_secs(2000)));
    assert!(session.check_liveness(now.instant + Duration::from_secs(2281)));
}

#[test]
fn heartbeat_answered_with_server_time_and_battery_recorded() {
    let now = start();
    for signalling in [false, true] {
        let (mut session, mut device) = if signalling {
            online_signalling(now)
        } else {
            online_keep_alive(now)
        };
        let later = now.advanced(Duration::from_secs(20));
        let heartbeat = Heartbeat {
            no_reply: false,
            battery: Some(BatteryState {
                percent: Some(87),
                charging: Some("charging".to_owned()),
            }),
        };
        session.receive(&device.heartbeat(&heartbeat, 33), later);
        let sent = delivered(&mut session, &mut device);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].header.command, cmd::HEARTBEAT);
        assert_eq!(sent[0].header.request_id, 33);
        let reply = HeartbeatReply::parse(&sent[0].body.to_contiguous()).unwrap();
        assert_eq!(reply.unix_secs, 1_700_000_020);
        assert_eq!(reply.micros, 123_000);
        let presence = session.presence();
        assert_eq!(presence.battery.as_ref().unwrap().percent, Some(87));
        assert_eq!(presence.last_heartbeat, Some(later.instant));
        assert_eq!(presence.last_heartbeat_unix_millis, Some(later.unix_millis));

        // attr004 = 1: recorded, not answered.
        let quiet = Heartbeat {
            no_reply: true,
            battery: None,
        };
        let latest = later.advanced(Duration::from_secs(20));
        session.receive(&device.heartbeat(&quiet, 34), latest);
        assert!(session.take_output().is_none());
        assert_eq!(session.presence().last_heartbeat, Some(latest.instant));
        assert_eq!(
            session.presence().battery.as_ref().unwrap().percent,
            Some(87)
        );
        assert_eq!(session.stats().heartbeats, 2);
    }
}

#[test]
fn heartbeat_timeout_and_handshake_timeout() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let beat = now.advanced(Duration::from_secs(15));
    session.receive(&device.heartbeat(&Heartbeat::default(), 1), beat);
    assert_eq!(
        session.next_deadline(),
        Some(beat.instant + Duration::from_secs(40))
    );
    assert!(!session.check_liveness(beat.instant + Duration::from_secs(40)));
    assert!(session.check_liveness(beat.instant + Duration::from_millis(40_001)));
    let events = drain(&mut session);
    assert!(matches!(
        events.as_slice(),
        [SessionEvent::Offline {
            reason: OfflineReason::HeartbeatTimeout(_),
            was_online: true
        }]
    ));
    assert!(!session.check_liveness(beat.instant + Duration::from_secs(100)));

    let mut session = keep_alive_session(now);
    assert!(!session.check_liveness(now.instant + Duration::from_secs(10)));
    assert!(session.check_liveness(now.instant + Duration::from_secs(11)));
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::Offline {
            reason: OfflineReason::HandshakeTimeout(_),
            was_online: false
        }]
    ));
}

#[test]
fn alarm_is_acked_only_after_the_caller_says_so() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let alarm = Alarm {
        channel: 0,
        status: "start".to_owned(),
        ai_type: "people".to_owned(),
    };
    session.receive(&device.alarm(&alarm, 4242), now);
    assert!(session.take_output().is_none(), "no reply before the ack");
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::AlarmReceived {
            request_id: 4242,
            alarm
        }]
    );
    assert!(!session.ack_alarm(1), "unknown alarm");
    assert!(session.ack_alarm(4242));
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.command, cmd::ALARM);
    assert_eq!(sent[0].header.request_id, 4242);
    assert_eq!(sent[0].header.response_code, CODE_OK);
    assert!(sent[0].body.is_empty());
    assert!(!session.ack_alarm(4242), "acked once");
}

#[test]
fn alarm_flood_and_malformed_alarms_get_400() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let alarm = Alarm {
        channel: 1,
        status: "start".to_owned(),
        ai_type: "vehicle".to_owned(),
    };
    let limit = SessionConfig::default().max_unacked_alarms;
    for id in 0..limit as u32 {
        session.receive(&device.alarm(&alarm, id), now);
    }
    assert!(session.take_output().is_none());
    session.receive(&device.alarm(&alarm, 999), now);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.request_id, 999);
    assert_eq!(sent[0].header.response_code, CODE_ERROR);
    assert!(session.reject_alarm(3));
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent[0].header.response_code, CODE_ERROR);
    assert_eq!(sent[0].header.request_id, 3);

    let bad = device.packet(
        crate::proto::core_packet::CoreHeader::request(cmd::ALARM, 1000),
        b"<body><Param014/></body>",
    );
    session.receive(&bad, now);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent[0].header.response_code, CODE_ERROR);
    assert_eq!(session.stats().alarms_refused, 2);
    assert_eq!(session.stats().alarms, limit as u32);
}

#[test]
fn replies_are_matched_by_request_id() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let first = session
        .request(cmd::GENERAL_CONFIG_GET, None, now.instant)
        .unwrap();
    let body = XmlBody::new().with(XmlElement::new("Param007").with_leaf("attr001", "left"));
    let second = session.request(cmd::PTZ, Some(&body), now.instant).unwrap();
    assert_eq!(second, first + 1);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].header.command, cmd::PTZ);
    assert_eq!(XmlBody::parse(&sent[1].body.to_contiguous()).unwrap(), body);

    // Out of order; then an unmatched one; then a refusal.
    session.receive(&device.reply(cmd::PTZ, second, CODE_OK, b""), now);
    let config = XmlBody::new().with(XmlElement::new("Param009").with_leaf("attr001", "x"));
    session.receive(
        &device.reply(
            cmd::GENERAL_CONFIG_GET,
            first,
            CODE_OK,
            config.encode().as_bytes(),
        ),
        now,
    );
    session.receive(&device.reply(cmd::PTZ, 31337, CODE_OK, b""), now);
    assert_eq!(
        drain(&mut session),
        vec![
            SessionEvent::RequestDone(RequestOutcome {
                request_id: second,
                command: cmd::PTZ,
                result: Ok(Reply::Empty)
            }),
            SessionEvent::RequestDone(RequestOutcome {
                request_id: first,
                command: cmd::GENERAL_CONFIG_GET,
                result: Ok(Reply::Xml(config))
            }),
        ]
    );
    assert_eq!(session.stats().unmatched_replies, 1);

    let third = session.alarm_switch_set(true, now.instant).unwrap();
    let sent = delivered(&mut session, &mut device);
    assert_eq!(
        AlarmSwitch::parse(&sent[0].body.to_contiguous()).unwrap(),
        AlarmSwitch { enabled: true }
    );
    session.receive(
        &device.reply(cmd::ALARM_SWITCH_SET, third, CODE_ERROR, b""),
        now,
    );
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::RequestDone(RequestOutcome {
            request_id: third,
            command: cmd::ALARM_SWITCH_SET,
            result: Err(RequestError::Refused {
                command: cmd::ALARM_SWITCH_SET,
                code: CODE_ERROR
            })
        })]
    );

    let fourth = session.alarm_switch_get(now.instant).unwrap();
    session.receive(
        &device.reply_ok(
            cmd::ALARM_SWITCH_GET,
            fourth,
            &AlarmSwitch { enabled: false },
        ),
        now,
    );
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::RequestDone(RequestOutcome {
            result: Ok(Reply::AlarmSwitch(AlarmSwitch { enabled: false })),
            ..
        })]
    ));
}

#[test]
fn preview_start_uses_request_id_as_stream_id_and_reads_binary_reply() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let id = session
        .preview_start(
            0,
            StreamType::Sub,
            StreamMode::EncryptTcp,
            61007,
            now.instant,
        )
        .unwrap();
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent[0].header.command, cmd::PREVIEW_START);
    assert_eq!(sent[0].header.request_id, id);
    let start = PreviewStart::parse(&sent[0].body.to_contiguous()).unwrap();
    assert_eq!(
        start,
        PreviewStart {
            channel: 0,
            stream_id: id,
            stream_type: StreamType::Sub,
            mode: StreamMode::EncryptTcp,
            port: 61007
        }
    );
    let mut reply = PreviewStartReply {
        fps: 15,
        codec: VideoCodecId::H265,
    }
    .encode()
    .to_vec();
    reply.extend_from_slice(&[0xee; 9]);
    session.receive(&device.reply(cmd::PREVIEW_START, id, CODE_OK, &reply), now);
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::RequestDone(RequestOutcome {
            request_id: id,
            command: cmd::PREVIEW_START,
            result: Ok(Reply::PreviewStarted(PreviewStartReply {
                fps: 15,
                codec: VideoCodecId::H265
            }))
        })]
    );

    let short = session
        .preview_start(0, StreamType::Main, StreamMode::Tls, 61006, now.instant)
        .unwrap();
    delivered(&mut session, &mut device);
    session.receive(
        &device.reply(cmd::PREVIEW_START, short, CODE_OK, &[0; 10]),
        now,
    );
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::RequestDone(RequestOutcome {
            result: Err(RequestError::MalformedReply { .. }),
            ..
        })]
    ));

    let stop = session.preview_stop(0, id, now.instant).unwrap();
    let keyframe = session
        .request_keyframe(0, StreamType::Sub, now.instant)
        .unwrap();
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent[0].header.command, cmd::PREVIEW_STOP);
    assert_eq!(sent[0].header.request_id, stop);
    assert_eq!(sent[1].header.command, cmd::KEYFRAME_REQUEST);
    assert_eq!(sent[1].header.request_id, keyframe);
}

#[test]
fn replay_seek_names_the_replay_the_sequence_and_the_device_time() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let time = crate::proto::body::LocalTime::parse("2022-01-10", "00:01:07")
        .unwrap()
        .plus_seconds(90);
    let id = session.replay_seek(1, 43, 1024, time, now.instant).unwrap();
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent[0].header.command, cmd::REPLAY_SEEK);
    assert_eq!(sent[0].header.request_id, id);
    let body = sent[0].body.to_contiguous();
    let seek = crate::proto::body::ReplaySeek::parse(&body).unwrap();
    assert_eq!(seek.channel, 1);
    assert_eq!(seek.stream_id, 43);
    assert_eq!(seek.seek_seq, 1024);
    assert_eq!(seek.time.format(), "2022-01-10 00:02:37");
    let text: String = String::from_utf8_lossy(&body)
        .lines()
        .map(str::trim)
        .collect();
    assert!(
        text.contains(
            "<Param008><attr001>1</attr001><attr004>43</attr004><attr003>1024</attr003>\
             <attr002><attr001>2022</attr001><attr002>1</attr002><attr003>10</attr003>\
             <attr004>0</attr004><attr005>2</attr005><attr006>37</attr006></attr002></Param008>"
        ),
        "{text}"
    );
    session.receive(&device.reply(cmd::REPLAY_SEEK, id, CODE_OK, b""), now);
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::RequestDone(RequestOutcome {
            command: cmd::REPLAY_SEEK,
            result: Ok(_),
            ..
        })]
    ));
}

#[test]
fn snapshot_chunks_are_joined_until_201() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let id = session.snapshot(0, StreamType::Main, now.instant).unwrap();
    assert_eq!(
        session.snapshot(0, StreamType::Main, now.instant),
        Err(RequestRejected::SnapshotInProgress)
    );
    let sent = delivered(&mut session, &mut device);
    assert_eq!(
        SnapshotRequest::parse(&sent[0].body.to_contiguous()).unwrap(),
        SnapshotRequest {
            channel: 0,
            stream_type: StreamType::Main
        }
    );
    // Acknowledgement (not picture data), chunks, then the last one with 201; a chunk may
    // carry another request id (the platform routes chunks by command).
    session.receive(&device.reply(cmd::SNAPSHOT, id, CODE_OK, b"<body/>"), now);
    session.receive(
        &device.reply(cmd::SNAPSHOT, id, CODE_OK, b"\xff\xd8JPEG"),
        now,
    );
    session.receive(&device.reply(cmd::SNAPSHOT, 0, CODE_OK, b"-middle-"), now);
    assert!(drain(&mut session).is_empty());
    session.receive(
        &device.reply(cmd::SNAPSHOT, id, CODE_LAST_CHUNK, b"end\xff\xd9"),
        now,
    );
    assert_eq!(
        drain(&mut session),
        vec![SessionEvent::RequestDone(RequestOutcome {
            request_id: id,
            command: cmd::SNAPSHOT,
            result: Ok(Reply::Snapshot(Bytes::from_static(
                b"\xff\xd8JPEG-middle-end\xff\xd9"
            )))
        })]
    );

    // Over the limit.
    let config = Arc::new(SessionConfig {
        max_snapshot_bytes: 10,
        ..SessionConfig::default()
    });
    let mut small = DeviceSession::signalling(config, UID, 1, now.instant);
    let mut device = SimDevice::signalling();
    small.receive(&device.handshake(&handshake(UID), 1), now);
    drain(&mut small);
    let id = small.snapshot(0, StreamType::Main, now.instant).unwrap();
    small.receive(&device.reply(cmd::SNAPSHOT, id, CODE_OK, b""), now);
    small.receive(&device.reply(cmd::SNAPSHOT, id, CODE_OK, b"0123456"), now);
    small.receive(&device.reply(cmd::SNAPSHOT, id, CODE_OK, b"789ab"), now);
    assert!(matches!(
        drain(&mut small).as_slice(),
        [SessionEvent::RequestDone(RequestOutcome {
            result: Err(RequestError::SnapshotTooLarge { limit: 10 }),
            ..
        })]
    ));
}

#[test]
fn requests_time_out_and_fail_on_close() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let ptz = session.request(cmd::PTZ, None, now.instant).unwrap();
    let upgrade = session
        .request_with_timeout(cmd::UPGRADE, None, Duration::from_secs(60), now.instant)
        .unwrap();
    let sleep = session.sleep(now.instant).unwrap();
    delivered(&mut session, &mut device);
    assert!(session
        .expire(now.instant + Duration::from_secs(9))
        .is_empty());
    let expired = session.expire(now.instant + Duration::from_secs(10));
    assert_eq!(expired.len(), 2);
    assert!(expired.contains(&RequestOutcome {
        request_id: ptz,
        command: cmd::PTZ,
        result: Err(RequestError::TimedOut {
            command: cmd::PTZ,
            after: Duration::from_secs(10)
        })
    }));
    assert!(expired.iter().any(|o| o.request_id == sleep));
    // A late reply is counted and ignored.
    session.receive(&device.reply(cmd::PTZ, ptz, CODE_OK, b""), now);
    assert!(drain(&mut session).is_empty());

    let sleep = session.sleep(now.instant).unwrap();
    session.on_connection_closed();
    assert_eq!(
        drain(&mut session),
        vec![
            SessionEvent::RequestDone(RequestOutcome {
                request_id: upgrade,
                command: cmd::UPGRADE,
                result: Err(RequestError::LinkClosed {
                    command: cmd::UPGRADE
                })
            }),
            SessionEvent::RequestDone(RequestOutcome {
                request_id: sleep,
                command: cmd::SLEEP,
                result: Ok(Reply::Empty)
            }),
            SessionEvent::Offline {
                reason: OfflineReason::ConnectionClosed,
                was_online: true
            },
        ]
    );
    assert_eq!(
        session.request(cmd::PTZ, None, now.instant),
        Err(RequestRejected::NotOnline {
            phase: Phase::Closed
        })
    );
}

#[test]
fn request_limits_and_links() {
    let now = start();
    let (mut session, _) = online_signalling(now);
    assert_eq!(
        session.wake_up(now.instant),
        Err(RequestRejected::WrongLink {
            command: cmd::WAKE_UP,
            link: LinkKind::Signalling
        })
    );
    let limit = SessionConfig::default().max_pending_requests;
    for _ in 0..limit {
        session
            .request(cmd::RECORD_SEARCH, None, now.instant)
            .unwrap();
    }
    assert_eq!(
        session.request(cmd::RECORD_SEARCH, None, now.instant),
        Err(RequestRejected::TooManyPending { limit })
    );

    let (mut session, mut device) = online_keep_alive(now);
    let id = session.wake_up(now.instant).unwrap();
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent[0].header.command, cmd::WAKE_UP);
    assert!(sent[0].body.is_empty());
    session.receive(&device.reply(cmd::WAKE_UP, id, CODE_OK, b""), now);
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::RequestDone(RequestOutcome {
            result: Ok(Reply::Empty),
            ..
        })]
    ));
}

#[test]
fn announced_or_accepted_sleep_marks_the_device_asleep_until_woken() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    assert!(!session.presence().asleep);
    // The device announces sleep: answered 200, asleep until woken.
    let header = CoreHeader::request(cmd::SLEEP, 77);
    session.receive(&device.packet(header, b""), now);
    let sent = delivered(&mut session, &mut device);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.command, cmd::SLEEP);
    assert_eq!(sent[0].header.request_id, 77);
    assert_eq!(sent[0].header.response_code, CODE_OK);
    assert!(session.presence().asleep);
    assert!(drain(&mut session).is_empty());
    session.mark_awake();
    assert!(!session.presence().asleep);
    // Our sleep 233, accepted: asleep too; a refused one leaves it awake.
    let id = session.sleep(now.instant).unwrap();
    delivered(&mut session, &mut device);
    session.receive(&device.reply(cmd::SLEEP, id, CODE_ERROR, b""), now);
    drain(&mut session);
    assert!(!session.presence().asleep);
    let id = session.sleep(now.instant).unwrap();
    delivered(&mut session, &mut device);
    session.receive(&device.reply(cmd::SLEEP, id, CODE_OK, b""), now);
    drain(&mut session);
    assert!(session.presence().asleep);
}

#[test]
fn request_ids_skip_ids_in_use() {
    let now = start();
    let mut session = DeviceSession::signalling(
        Arc::new(SessionConfig {
            request_capabilities: false,
            ..SessionConfig::default()
        }),
        UID,
        u32::MAX,
        now.instant,
    );
    let mut device = SimDevice::signalling();
    session.receive(&device.handshake(&handshake(UID), 1), now);
    let a = session.request(cmd::PTZ, None, now.instant).unwrap();
    let b = session.request(cmd::PTZ, None, now.instant).unwrap();
    assert_eq!((a, b), (u32::MAX, 0));
}

#[test]
fn network_info_report_is_recorded() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let report = XmlBody::new().with(XmlElement::new("Param020").with_leaf("attr001", "wire"));
    let packet = device.packet(
        crate::proto::core_packet::CoreHeader::request(cmd::NETWORK_INFO_REPORT, 5),
        report.encode().as_bytes(),
    );
    session.receive(&packet, now);
    assert!(session.take_output().is_none());
    assert_eq!(session.presence().network_link.as_deref(), Some("wire"));
}

/// The whole keep-alive script (hello, handshake, heartbeat, alarm, reply) fed split at every
/// point gives the same events and the same bytes out.
#[test]
fn keep_alive_every_split_point() {
    let now = start();
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    let mut reference = keep_alive_session(now);
    reference.receive(&hello, now);
    device.receive(&reference.take_output().unwrap()).unwrap();
    let mut script = hello.to_vec();
    script.extend_from_slice(&device.handshake(&handshake(UID), 1));
    script.extend_from_slice(&device.heartbeat(
        &Heartbeat {
            no_reply: false,
            battery: Some(BatteryState {
                percent: Some(50),
                charging: None,
            }),
        },
        2,
    ));
    let alarm = Alarm {
        channel: 0,
        status: "start".to_owned(),
        ai_type: "other".to_owned(),
    };
    script.extend_from_slice(&device.alarm(&alarm, 3));
    script.extend_from_slice(&device.reply(cmd::WAKE_UP, 1000, CODE_OK, b""));

    let run = |cut: usize| {
        let mut session = keep_alive_session(now);
        session.receive(&script[..cut], now);
        let mut out = session
            .take_output()
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let mut events = drain(&mut session);
        session.receive(&script[cut..], now);
        out.extend_from_slice(&session.take_output().unwrap_or_default());
        events.extend(drain(&mut session));
        (events, out, session.presence().clone())
    };
    let expected = run(script.len());
    assert!(matches!(
        expected.0.first(),
        Some(SessionEvent::Online { .. })
    ));
    assert!(matches!(
        expected.0.last(),
        Some(SessionEvent::AlarmReceived { request_id: 3, .. })
    ));
    assert_eq!(expected.2.battery.as_ref().unwrap().percent, Some(50));
    for cut in 0..script.len() {
        assert_eq!(run(cut), expected, "split at {cut}");
    }
    // Byte at a time.
    let mut session = keep_alive_session(now);
    let mut out = Vec::new();
    for byte in &script {
        session.receive(std::slice::from_ref(byte), now);
        out.extend_from_slice(&session.take_output().unwrap_or_default());
    }
    assert_eq!(out, expected.1);
    assert_eq!(drain(&mut session), expected.0);
}

#[test]
fn signalling_every_split_point() {
    let now = start();
    let mut device = SimDevice::signalling();
    let mut script = device.handshake(&handshake(UID), 1).to_vec();
    script.extend_from_slice(&device.heartbeat(&Heartbeat::default(), 2));
    script.extend_from_slice(&device.reply_ok(
        cmd::CAPABILITIES,
        500,
        &Capabilities {
            channels: vec![ChannelCapabilities::default()],
        },
    ));
    let run = |cut: usize| {
        let mut session = DeviceSession::signalling(config(), UID, 500, now.instant);
        session.receive(&script[..cut], now);
        let mut out = session
            .take_output()
            .map(|b| b.to_vec())
            .unwrap_or_default();
        session.receive(&script[cut..], now);
        out.extend_from_slice(&session.take_output().unwrap_or_default());
        (drain(&mut session), out)
    };
    let expected = run(script.len());
    assert_eq!(expected.0.len(), 2);
    for cut in 0..script.len() {
        assert_eq!(run(cut), expected, "split at {cut}");
    }
}

#[test]
fn tampered_keep_alive_frame_closes() {
    let now = start();
    let (mut session, mut device) = online_keep_alive(now);
    let mut frame = device.heartbeat(&Heartbeat::default(), 2).to_vec();
    let last = frame.len() - 1;
    frame[last] ^= 1;
    session.receive(&frame, now);
    assert!(session.is_closed());
    assert!(matches!(
        drain(&mut session).as_slice(),
        [SessionEvent::Offline {
            reason: OfflineReason::BadFrame(_),
            was_online: true
        }]
    ));
}

#[test]
fn registry_replaces_older_session_of_the_same_device() {
    let now = start();
    let mut registry = DeviceRegistry::new();
    let mut first_device = SimDevice::signalling();
    let first = registry.admit(DeviceSession::signalling(config(), UID, 1, now.instant));
    assert!(registry.links(UID).is_none());
    assert!(matches!(
        registry.receive(first, &first_device.handshake(&handshake(UID), 1), now),
        Some(None)
    ));
    assert_eq!(registry.links(UID).unwrap().signalling, Some(first));
    assert_eq!(registry.online_devices(), 1);
    let id = {
        let (_, session) = registry.link_mut(UID, LinkKind::Signalling).unwrap();
        session.request(cmd::PTZ, None, now.instant).unwrap()
    };

    let mut second_device = SimDevice::signalling();
    let second = registry.admit(DeviceSession::signalling(config(), UID, 1, now.instant));
    let evicted = registry
        .receive(second, &second_device.handshake(&handshake(UID), 1), now)
        .unwrap()
        .expect("the older session is returned");
    assert_eq!(evicted.conn, first);
    let mut old = evicted.session;
    let events = drain(&mut old);
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::RequestDone(RequestOutcome { request_id, result: Err(RequestError::LinkClosed { .. }), .. }) if *request_id == id
    )));
    assert_eq!(
        events.last(),
        Some(&SessionEvent::Offline {
            reason: OfflineReason::Replaced,
            was_online: true
        })
    );
    assert!(registry.session(first).is_none());
    assert!(registry.receive(first, b"late", now).is_none());
    assert_eq!(registry.links(UID).unwrap().signalling, Some(second));
    assert_eq!(registry.len(), 1);

    // The keep-alive link of the same device is separate.
    let keep_alive = registry.admit(keep_alive_session(now));
    let (mut device, hello) = SimDevice::keep_alive(&pair_for(UID), [b'c'; 32]);
    registry.receive(keep_alive, &hello, now).unwrap();
    let reply = registry
        .session_mut(keep_alive)
        .unwrap()
        .take_output()
        .unwrap();
    device.receive(&reply).unwrap();
    let evicted = registry
        .receive(keep_alive, &device.handshake(&handshake(UID), 1), now)
        .unwrap();
    assert!(evicted.is_none());
    let view = registry.device(UID).unwrap();
    assert!(view.is_awake());
    assert_eq!(view.info().unwrap().model.as_deref(), Some("Argus 3"));
    assert_eq!(
        registry.links(UID).unwrap(),
        DeviceLinks {
            keep_alive: Some(keep_alive),
            signalling: Some(second)
        }
    );

    // The signalling connection drops: the device is asleep, still present.
    let mut gone = registry.disconnect(second).unwrap();
    assert!(matches!(
        drain(&mut gone).last(),
        Some(SessionEvent::Offline {
            reason: OfflineReason::ConnectionClosed,
            ..
        })
    ));
    let view = registry.device(UID).unwrap();
    assert!(!view.is_awake());
    assert!(registry.device(UID).unwrap().keep_alive.is_some());
    let closed = registry.close_device(UID, OfflineReason::ServerClosed("revoked"));
    assert_eq!(closed.len(), 1);
    assert!(registry.device(UID).is_none());
    assert!(registry.is_empty());
}

#[test]
fn registry_sweep_closes_silent_sessions_and_expires_requests() {
    let now = start();
    let mut registry = DeviceRegistry::new();
    let mut device = SimDevice::signalling();
    let conn = registry.admit(DeviceSession::signalling(config(), UID, 1, now.instant));
    registry.receive(conn, &device.handshake(&handshake(UID), 1), now);
    let pending = registry.admit(DeviceSession::signalling(
        config(),
        OTHER_UID,
        1,
        now.instant,
    ));
    let (_, session) = registry.link_mut(UID, LinkKind::Signalling).unwrap();
    let ptz = session.request(cmd::PTZ, None, now.instant).unwrap();

    let sweep = registry.sweep(now.instant + Duration::from_secs(5));
    assert!(sweep.closed.is_empty() && sweep.expired.is_empty());

    // 11 s: the capabilities request (internal, not reported) and the PTZ request expire;
    // the connection that never sent a handshake is closed.
    let sweep = registry.sweep(now.instant + Duration::from_secs(11));
    assert_eq!(sweep.expired.len(), 1);
    assert_eq!(sweep.expired[0].0, conn);
    assert_eq!(sweep.expired[0].1.request_id, ptz);
    assert_eq!(sweep.closed.len(), 1);
    assert_eq!(sweep.closed[0].conn, pending);

    let beat = now.advanced(Duration::from_secs(30));
    registry.receive(conn, &device.heartbeat(&Heartbeat::default(), 2), beat);
    assert!(registry
        .sweep(beat.instant + Duration::from_secs(40))
        .closed
        .is_empty());
    let sweep = registry.sweep(beat.instant + Duration::from_secs(41));
    assert_eq!(sweep.closed.len(), 1);
    let mut closed = sweep.closed.into_iter().next().unwrap();
    assert_eq!(closed.conn, conn);
    assert!(matches!(
        drain(&mut closed.session).last(),
        Some(SessionEvent::Offline {
            reason: OfflineReason::HeartbeatTimeout(_),
            was_online: true
        })
    ));
    assert!(registry.device(UID).is_none());
    assert!(registry.is_empty());
}

#[test]
fn shard_routing_agrees_between_uid_and_access_key() {
    for shards in [1, 2, 3, 8, 64] {
        for uid in [UID, OTHER_UID, "952700000A5S348E"] {
            let pair = pair_for(uid);
            assert_eq!(
                shard_of_access_key(pair.access_key.as_bytes(), shards),
                Some(shard_of_uid(uid, shards))
            );
            assert!(shard_of_uid(uid, shards) < shards);
        }
    }
    assert_eq!(shard_of_access_key(b"short", 4), None);
    assert_eq!(shard_of_access_key(&[b'z'; 32], 4), None);
}

#[test]
fn sessions_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<DeviceSession>();
    assert_send::<DeviceRegistry>();
}

/// Memory of an idle device's two sessions (the TLS state is the connection's, not ours).
#[test]
fn idle_memory_per_device() {
    let now = start();
    let (mut keep_alive, _) = online_keep_alive(now);
    let (mut signalling, _) = online_signalling(now);
    drain(&mut keep_alive);
    drain(&mut signalling);
    let inline = std::mem::size_of::<DeviceSession>();
    let total = 2 * inline + keep_alive.heap_bytes() + signalling.heap_bytes();
    println!(
        "DeviceSession: size_of {inline} B; heap: keep-alive {} B, signalling {} B; both {total} B",
        keep_alive.heap_bytes(),
        signalling.heap_bytes()
    );
    assert!(keep_alive.take_output().is_none() && signalling.take_output().is_none());
    assert!(
        total < 4096,
        "{total} bytes for the sessions of one idle device"
    );
}

#[test]
fn encrypt_tcp_state_size() {
    println!(
        "EncryptTcp: {} B, Presence: {} B, CorePacketReader: {} B, SessionEvent: {} B",
        std::mem::size_of::<super::transport::EncryptTcp>(),
        std::mem::size_of::<Presence>(),
        std::mem::size_of::<crate::proto::core_packet::CorePacketReader>(),
        std::mem::size_of::<SessionEvent>(),
    );
}

/// The fuzz target's entry point on structured and pseudo-random inputs in every mode.
#[test]
fn fuzz_entry_point_survives() {
    let mut device = SimDevice::signalling();
    let mut packets = Vec::new();
    packets.extend_from_slice(&device.heartbeat(&Heartbeat::default(), 2));
    packets.extend_from_slice(&device.alarm(
        &Alarm {
            channel: 0,
            status: "start".to_owned(),
            ai_type: "people".to_owned(),
        },
        3,
    ));
    packets.extend_from_slice(&device.reply(cmd::PREVIEW_START, 7, CODE_OK, &[0; 31]));
    packets.extend_from_slice(&device.reply(cmd::SNAPSHOT, 8, CODE_OK, b""));
    packets.extend_from_slice(&device.reply(cmd::SNAPSHOT, 8, CODE_LAST_CHUNK, b"jpeg"));
    for mode in 0..4u8 {
        let mut input = vec![mode];
        input.extend_from_slice(&packets);
        fuzzing::session(&input);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200u32 {
        let len = (round as usize * 37) % 700;
        let mut input = Vec::with_capacity(len + 1);
        input.push((round % 4) as u8);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            input.push(state as u8);
        }
        fuzzing::session(&input);
    }
}

// ----- firmware upgrade 67 -----

fn firmware(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The device's side of a transfer: every slice's bytes, in order, and the ids to answer.
#[derive(Default)]
struct FirmwareSink {
    bytes: Vec<u8>,
    unanswered: Vec<u32>,
    most_unanswered: usize,
    sleep: Option<u32>,
}

impl FirmwareSink {
    fn take(&mut self, packets: Vec<CorePacket>) {
        for packet in packets {
            match packet.header.command {
                cmd::UPGRADE => {
                    assert_eq!(
                        crate::proto::body::PacketExtension::parse(&packet.extension),
                        Ok(crate::proto::body::PacketExtension::BINARY_DATA),
                        "a slice carries the binary-data extension"
                    );
                    assert!(packet.body.len() <= upgrade::SLICE_LEN);
                    assert_eq!(packet.header.response_code, CODE_OK);
                    self.bytes.extend_from_slice(&packet.body.to_contiguous());
                    self.unanswered.push(packet.header.request_id);
                    self.most_unanswered = self.most_unanswered.max(self.unanswered.len());
                }
                cmd::SLEEP => self.sleep = Some(packet.header.request_id),
                other => panic!("unexpected command {other} during the transfer"),
            }
        }
    }
}

/// Supplies every `Read` event's bytes from `file`; returns the other upgrade events.
fn serve_reads(session: &mut DeviceSession, file: &[u8], now: Now) -> Vec<UpgradeEvent> {
    let mut others = Vec::new();
    while let Some(event) = session.poll_event() {
        match event {
            SessionEvent::Upgrade(UpgradeEvent::Read { offset, len }) => {
                let at = offset as usize;
                session
                    .upgrade_data(offset, &file[at..at + len], now.instant)
                    .unwrap();
            }
            SessionEvent::Upgrade(other) => others.push(other),
            other => panic!("unexpected event {other:?}"),
        }
    }
    others
}

fn start_upgrade(
    session: &mut DeviceSession,
    device: &mut SimDevice,
    size: usize,
    now: Now,
) -> u32 {
    let request = UpgradeRequest {
        file_name: "IPC_523B188MP.1569_230106789.RLC-812A.IMX415.8MP.REOLINK.pak".into(),
        file_size: size as u64,
        factory_reset: true,
    };
    let id = session.upgrade_start(&request, now.instant).unwrap();
    assert_eq!(
        session.upgrade_start(&request, now.instant),
        Err(RequestRejected::UpgradeInProgress)
    );
    let sent = delivered(session, device);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.command, cmd::UPGRADE);
    assert_eq!(sent[0].header.request_id, id);
    assert_eq!(sent[0].header.extension_length, 0);
    let start = crate::proto::body::UpgradeStart::parse(&sent[0].body.to_contiguous()).unwrap();
    assert_eq!(start.file_name, request.file_name);
    assert_eq!(start.file_size, size as u64);
    assert!(start.factory_reset);
    id
}

#[test]
fn upgrade_streams_the_file_in_36k_slices_with_at_most_30_unanswered_then_sleeps() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    // 70 slices and a 1000-byte tail: three windows' worth, the last one short.
    let file = firmware(70 * upgrade::SLICE_LEN + 1000);
    let start_id = start_upgrade(&mut session, &mut device, file.len(), now);
    assert!(
        drain(&mut session).is_empty(),
        "no read before the start reply"
    );
    session.receive(&device.reply(cmd::UPGRADE, start_id, CODE_OK, b""), now);
    let mut sink = FirmwareSink::default();
    let mut rounds = 0;
    loop {
        assert!(serve_reads(&mut session, &file, now).is_empty());
        sink.take(delivered(&mut session, &mut device));
        if sink.sleep.is_some() {
            break;
        }
        // The device answers the oldest slices a few at a time.
        let answer: Vec<u32> = sink
            .unanswered
            .drain(..sink.unanswered.len().min(7))
            .collect();
        assert!(!answer.is_empty(), "the transfer stalled");
        for id in answer {
            session.receive(&device.reply(cmd::UPGRADE, id, CODE_OK, b""), now);
        }
        let progress = session.upgrade_progress().unwrap();
        assert_eq!(progress.file_size, file.len() as u64);
        rounds += 1;
        assert!(rounds < 100);
    }
    assert!(
        sink.unanswered.is_empty(),
        "233 only once every slice is answered"
    );
    assert_eq!(sink.most_unanswered, upgrade::MAX_UNANSWERED_SLICES);
    assert!(sink.bytes == file, "the slices are the file, in order");
    let progress = session.upgrade_progress().unwrap();
    assert_eq!(progress.phase, UpgradePhase::Sleeping);
    assert_eq!(progress.acknowledged, file.len() as u64);
    session.receive(
        &device.reply(cmd::SLEEP, sink.sleep.unwrap(), CODE_OK, b""),
        now,
    );
    assert_eq!(
        drain(&mut session),
        [SessionEvent::Upgrade(UpgradeEvent::Sent)]
    );
    assert_eq!(session.upgrade_progress(), None);
    assert!(session.is_online());
}

#[test]
fn upgrade_fails_with_the_device_code_and_drops_its_other_slices() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let file = firmware(40 * upgrade::SLICE_LEN);
    let start_id = start_upgrade(&mut session, &mut device, file.len(), now);
    session.receive(&device.reply(cmd::UPGRADE, start_id, CODE_OK, b""), now);
    assert!(serve_reads(&mut session, &file, now).is_empty());
    let mut sink = FirmwareSink::default();
    sink.take(delivered(&mut session, &mut device));
    assert_eq!(sink.unanswered.len(), 30);
    // A request of the client API still goes out beside a full window.
    session.request(cmd::PTZ, None, now.instant).unwrap();
    let _ = delivered(&mut session, &mut device);
    session.receive(
        &device.reply(cmd::UPGRADE, sink.unanswered[3], 402, b""),
        now,
    );
    let events = drain(&mut session);
    let [SessionEvent::Upgrade(UpgradeEvent::Failed(failure))] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(
        *failure,
        UpgradeFailure::Refused {
            what: "a firmware slice",
            code: 402
        }
    );
    assert_eq!(failure.status(), UpgradeStatus::FileCheckFailed);
    assert_eq!(
        session.pending_requests(),
        1,
        "only the PTZ request is left"
    );
    let unmatched = session.stats().unmatched_replies;
    session.receive(
        &device.reply(cmd::UPGRADE, sink.unanswered[4], CODE_OK, b""),
        now,
    );
    assert_eq!(session.stats().unmatched_replies, unmatched + 1);
    assert!(drain(&mut session).is_empty());
    // The start refused outright: same_version.
    let start_id = start_upgrade(&mut session, &mut device, file.len(), now);
    session.receive(&device.reply(cmd::UPGRADE, start_id, 401, b""), now);
    let events = drain(&mut session);
    let [SessionEvent::Upgrade(UpgradeEvent::Failed(failure))] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(failure.status(), UpgradeStatus::SameVersion);
}

#[test]
fn upgrade_slice_timeout_and_link_close() {
    let now = start();
    let (mut session, mut device) = online_signalling(now);
    let file = firmware(3 * upgrade::SLICE_LEN);
    let start_id = start_upgrade(&mut session, &mut device, file.len(), now);
    session.receive(&device.reply(cmd::UPGRADE, start_id, CODE_OK, b""), now);
    assert!(serve_reads(&mut session, &file, now).is_empty());
    let _ = delivered(&mut session, &mut device);
    // Slices have the upgrade timeout (60 s), not the 10 s of other requests.
    let later = now.advanced(Duration::from_secs(30));
    assert!(session.expire(later.instant).is_empty());
    assert!(!session.has_events());
    let later = now.advanced(Duration::from_secs(61));
    assert!(
        session.expire(later.instant).is_empty(),
        "not a RequestDone"
    );
    assert!(session.has_events());
    let events = drain(&mut session);
    assert_eq!(
        events,
        [SessionEvent::Upgrade(UpgradeEvent::Failed(
            UpgradeFailure::TimedOut {
                what: "a firmware slice",
                after: Duration::from_secs(60)
            }
        ))]
    );

    // A close mid-transfer fails it; a close after the sleep request completes it.
    let start_id = start_upgrade(&mut session, &mut device, file.len(), now);
    session.receive(&device.reply(cmd::UPGRADE, start_id, CODE_OK, b""), now);
    let _ = serve_reads(&mut session, &file, now);
    let mut sink = FirmwareSink::default();
    sink.take(delivered(&mut session, &mut device));
    for id in std::mem::take(&mut sink.unanswered) {
        session.receive(&device.reply(cmd::UPGRADE, id, CODE_OK, b""), now);
    }
    sink.take(delivered(&mut session, &mut device));
    assert!(sink.sleep.is_some());
    assert!(sink.bytes == file);
    session.on_connection_closed();
    let events = drain(&mut session);
    assert_eq!(events[0], SessionEvent::Upgrade(UpgradeEvent::Sent));
    assert!(matches!(events[1], SessionEvent::Offline { .. }));

    let (mut session, mut device) = online_signalling(now);
    start_upgrade(&mut session, &mut device, file.len(), now);
    session.on_connection_closed();
    let events = drain(&mut session);
    assert_eq!(
        events[0],
        SessionEvent::Upgrade(UpgradeEvent::Failed(UpgradeFailure::LinkClosed))
    );
    // Not on the keep-alive link; a stray upgrade_data is refused.
    let (mut keep_alive, _) = online_keep_alive(now);
    let request = UpgradeRequest {
        file_name: "f.pak".into(),
        file_size: 1,
        factory_reset: false,
    };
    assert!(matches!(
        keep_alive.upgrade_start(&request, now.instant),
        Err(RequestRejected::WrongLink { .. })
    ));
    assert!(matches!(
        keep_alive.upgrade_data(0, b"x", now.instant),
        Err(RequestRejected::UnexpectedUpgradeData { .. })
    ));
}
