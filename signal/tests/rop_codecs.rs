//! Cross-module checks of the ROP device codecs: registration's access-key pair drives the
//! encryptTCP hello and session exactly as the platform's runtime computes them (known answers
//! computed with Node's crypto from the facts in `rop-protocol.md`), and a server-side
//! handshake reply travels through a padded server -> device frame to the device's parser.

use bytes::BytesMut;
use signal::proto::access_key::AccessKeyPair;
use signal::proto::body::{BodyMessage, Handshake, HandshakeReply};
use signal::proto::core_packet::{self as core, cmd, CoreHeader, CorePacket};
use signal::proto::encrypt_tcp::{
    Direction, FrameDecoder, FrameEncoder, FramePolicy, Hello, SessionKeys,
};

const UID: &str = "95270000ABCDEFGH";
const DEVICE_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn registration_keys_match_the_platform() {
    // The UID hash is the 16-character hex prefix, fed to the HMAC as ASCII text.
    let pair = AccessKeyPair::derive("testKeyIndex0001", DEVICE_KEY, UID);
    assert_eq!(pair.access_key, "testKeyIndex0001777da74e9a46f49c");
    assert_eq!(pair.secret, "1oeVItyN4K9SxCfQC3OODZQpiZNgn37Q");
}

#[test]
fn hello_then_handshake_reply_in_a_padded_server_frame() {
    let pair = AccessKeyPair::derive("testKeyIndex0001", DEVICE_KEY, UID);
    let secret = pair.secret.as_bytes();
    let mut access_key = [0u8; 32];
    access_key.copy_from_slice(pair.access_key.as_bytes());
    let client = Hello {
        code: 0,
        access_key,
        nonce: [b'c'; 32],
    }
    .encode(secret);
    let hello = Hello::parse(&client).unwrap();
    assert_eq!(hello.access_key_str(), Some(pair.access_key.as_str()));
    Hello::verify(&client, secret).unwrap();
    let keys = SessionKeys::derive(secret, &hello.nonce, &[b's'; 32]);

    // Device -> server: the handshake.
    let mut packet = BytesMut::new();
    let handshake = Handshake {
        uid: UID.into(),
        family: Some("battery".into()),
        ..Default::default()
    };
    core::encode_packet(
        CoreHeader::request(cmd::HANDSHAKE, 1),
        b"",
        handshake.encode().as_bytes(),
        &mut packet,
    )
    .unwrap();
    let mut wire = BytesMut::new();
    FrameEncoder::new(secret, &keys, Direction::DeviceToServer)
        .encode(&packet, true, &mut wire)
        .unwrap();
    let frame = FrameDecoder::new(secret, &keys, FramePolicy::default())
        .decode(&mut wire)
        .unwrap()
        .unwrap();
    let (received, used) =
        CorePacket::parse_one(&frame.body, core::DEFAULT_SIGNALLING_MAX_LEN).unwrap();
    assert_eq!(used, frame.body.len());
    assert_eq!(
        Handshake::parse(&received.body.to_contiguous()).unwrap(),
        handshake
    );

    // Server -> device: the reply, padded to 16 inside the encrypted frame.
    let mut reply = BytesMut::new();
    let body = HandshakeReply {
        heartbeat_interval_ms: 20000,
    }
    .encode();
    core::encode_packet(
        CoreHeader::response(cmd::HANDSHAKE, 1, core::CODE_OK),
        b"",
        body.as_bytes(),
        &mut reply,
    )
    .unwrap();
    let mut wire = BytesMut::new();
    FrameEncoder::new(secret, &keys, Direction::ServerToDevice)
        .encode(&reply, true, &mut wire)
        .unwrap();
    let frame = FrameDecoder::new(secret, &keys, FramePolicy::default())
        .decode(&mut wire)
        .unwrap()
        .unwrap();
    assert_eq!(frame.body.len() % 16, 0);
    let (packet, used) =
        CorePacket::parse_one(&frame.body, core::DEFAULT_SIGNALLING_MAX_LEN).unwrap();
    assert!(used <= frame.body.len());
    assert_eq!(packet.header.response_code, core::CODE_OK);
    let parsed = HandshakeReply::parse(&packet.body.to_contiguous()).unwrap();
    assert_eq!(parsed.heartbeat_interval_ms, 20000);
}
