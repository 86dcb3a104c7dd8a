//! The name of one live stream: a device UID, a channel and one of the platform's three stream
//! qualities. It keys the shard's stream table, the stream hubs, play tokens and log lines, so it
//! has one canonical text form, `UID/channel/streamName` (for example `95270000ABCDEFGH/0/mainStream`),
//! using the platform's own stream names (`mainStream`, `subStream`, `externStream`).
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// Longest device UID accepted. The platform's UIDs are 16 characters; the margin leaves room
/// for other vendors' identifiers without letting a peer make the key arbitrarily large.
pub const MAX_UID_LEN: usize = 32;

/// Highest channel number of the platform's API (`0 - 31`).
pub const MAX_CHANNEL: u8 = 31;

/// One of the platform's stream qualities ("video clarity").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// `mainStream`: clear mode, the camera's full resolution.
    Main,
    /// `subStream`: fluent mode, the lowest resolution.
    Sub,
    /// `externStream`: balanced mode, between the two.
    Extern,
    /// `replay`: a recording on the device's storage, named by [`StreamKey::file`] (not one of
    /// [`StreamKind::ALL`]: no live stream has this name).
    Replay,
}

impl StreamKind {
    /// Every kind, in the order the platform lists them.
    pub const ALL: [StreamKind; 3] = [StreamKind::Main, StreamKind::Sub, StreamKind::Extern];

    /// The platform's name for this kind, as used in its API, its device protocol and our URLs.
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamKind::Main => "mainStream",
            StreamKind::Sub => "subStream",
            StreamKind::Extern => "externStream",
            StreamKind::Replay => "replay",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StreamKind {
    type Err = StreamKeyError;

    /// Accepts the platform's names in any ASCII case: URLs get retyped by hand.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| StreamKeyError::UnknownStream { name: truncated(s) })
    }
}

/// Why a stream key (or one of its parts) was rejected. The text always comes from a client or a
/// device, so every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamKeyError {
    /// The UID is empty, too long or has characters other than ASCII letters and digits.
    #[error("invalid device uid {uid:?}: expected 1 to {MAX_UID_LEN} ASCII letters or digits")]
    InvalidUid {
        /// The rejected UID (truncated to a printable length).
        uid: String,
    },
    /// The channel is not a number from 0 to [`MAX_CHANNEL`].
    #[error("invalid channel {channel:?}: expected a number from 0 to {MAX_CHANNEL}")]
    InvalidChannel {
        /// The rejected channel text (truncated).
        channel: String,
    },
    /// The stream name is none of `mainStream`, `subStream`, `externStream`.
    #[error("unknown stream {name:?}: expected mainStream, subStream or externStream")]
    UnknownStream {
        /// The rejected name (truncated).
        name: String,
    },
    /// The key text does not have the form `UID/channel/stream`.
    #[error("invalid stream key {key:?}: expected UID/channel/stream")]
    Malformed {
        /// The rejected key text (truncated).
        key: String,
    },
}

/// Identifies one live stream of one device: what a play URL names and what a stream hub serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    uid: String,
    channel: u8,
    stream: StreamKind,
    /// The recording of a [`StreamKind::Replay`] key.
    file: Option<std::sync::Arc<str>>,
}

/// Longest recording file name (the platform's `fileName` range).
pub const MAX_FILE_LEN: usize = 255;

impl StreamKey {
    /// Builds a key after checking the UID and channel ranges.
    pub fn new(
        uid: impl Into<String>,
        channel: u8,
        stream: StreamKind,
    ) -> Result<Self, StreamKeyError> {
        let uid = uid.into();
        validate_uid(&uid)?;
        if channel > MAX_CHANNEL {
            return Err(StreamKeyError::InvalidChannel {
                channel: channel.to_string(),
            });
        }
        if stream == StreamKind::Replay {
            return Err(StreamKeyError::UnknownStream {
                name: "replay without a file".into(),
            });
        }
        Ok(StreamKey {
            uid,
            channel,
            stream,
            file: None,
        })
    }

    /// The key of the replay of recording `file` (1 to 255 bytes, no control characters).
    pub fn replay(uid: impl Into<String>, channel: u8, file: &str) -> Result<Self, StreamKeyError> {
        let mut key = StreamKey::new(uid, channel, StreamKind::Main)?;
        if file.is_empty() || file.len() > MAX_FILE_LEN || file.chars().any(char::is_control) {
            return Err(StreamKeyError::UnknownStream {
                name: truncated(file),
            });
        }
        key.stream = StreamKind::Replay;
        key.file = Some(file.into());
        Ok(key)
    }

    /// The key a play or publish token names: `streamType` `replay` with its file, or a live
    /// stream.
    pub fn from_grant(grant: &signal::tokens::StreamGrant) -> Result<Self, StreamKeyError> {
        match (grant.stream_type.as_str(), grant.file.as_deref()) {
            ("replay", Some(file)) => StreamKey::replay(grant.uid.clone(), grant.channel, file),
            (kind, _) => StreamKey::new(grant.uid.clone(), grant.channel, kind.parse()?),
        }
    }

    /// The recording a replay key names.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The device UID.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The device channel (0 for single-channel cameras and doorbells).
    pub fn channel(&self) -> u8 {
        self.channel
    }

    /// The stream quality.
    pub fn stream(&self) -> StreamKind {
        self.stream
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.uid, self.channel, self.stream)?;
        match &self.file {
            Some(file) => write!(f, ":{}", truncated(file)),
            None => Ok(()),
        }
    }
}

impl FromStr for StreamKey {
    type Err = StreamKeyError;

    /// Parses the canonical `UID/channel/stream` form written by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        let (Some(uid), Some(channel), Some(stream), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(StreamKeyError::Malformed { key: truncated(s) });
        };
        StreamKey::new(uid, parse_channel(channel)?, stream.parse()?)
    }
}

/// Parses a channel number as it appears in URLs and the platform's query strings.
pub fn parse_channel(text: &str) -> Result<u8, StreamKeyError> {
    // `u8::from_str` accepts a leading '+'; the platform never writes one.
    let digits_only =
        !text.is_empty() && text.len() <= 2 && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u8>() {
        Ok(channel) if digits_only && channel <= MAX_CHANNEL => Ok(channel),
        _ => Err(StreamKeyError::InvalidChannel {
            channel: truncated(text),
        }),
    }
}

fn validate_uid(uid: &str) -> Result<(), StreamKeyError> {
    let valid = !uid.is_empty()
        && uid.len() <= MAX_UID_LEN
        && uid.bytes().all(|b| b.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(StreamKeyError::InvalidUid {
            uid: truncated(uid),
        })
    }
}

/// Peer text kept in an error, cut so that a hostile peer cannot make log lines huge.
fn truncated(text: &str) -> String {
    const MAX_ECHO: usize = 64;
    text.chars().take(MAX_ECHO).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for kind in StreamKind::ALL {
            let key = StreamKey::new("95270000ABCDEFGH", 3, kind).unwrap();
            let text = key.to_string();
            assert_eq!(text, format!("95270000ABCDEFGH/3/{}", kind.as_str()));
            assert_eq!(text.parse::<StreamKey>().unwrap(), key);
        }
    }

    #[test]
    fn platform_names() {
        assert_eq!(StreamKind::Main.to_string(), "mainStream");
        assert_eq!(StreamKind::Sub.to_string(), "subStream");
        assert_eq!(StreamKind::Extern.to_string(), "externStream");
        assert_eq!(
            "MAINSTREAM".parse::<StreamKind>().unwrap(),
            StreamKind::Main
        );
        assert!(matches!(
            "main".parse::<StreamKind>(),
            Err(StreamKeyError::UnknownStream { .. })
        ));
    }

    #[test]
    fn rejects_bad_keys() {
        let bad = [
            "",
            "UID/0",
            "UID/0/mainStream/extra",
            "/0/mainStream",
            "UID/32/mainStream",
            "UID/+1/mainStream",
            "UID/-1/mainStream",
            "UID/000/mainStream",
            "UID/0/thirdStream",
            "UI D/0/mainStream",
            "ÜID/0/mainStream",
        ];
        for text in bad {
            assert!(text.parse::<StreamKey>().is_err(), "{text:?} was accepted");
        }
        let long_uid = "A".repeat(MAX_UID_LEN + 1);
        assert!(StreamKey::new(long_uid, 0, StreamKind::Main).is_err());
        assert!(StreamKey::new("A", MAX_CHANNEL + 1, StreamKind::Main).is_err());
    }

    #[test]
    fn errors_echo_bounded_text() {
        let huge = "x".repeat(10_000);
        let Err(StreamKeyError::Malformed { key }) = huge.parse::<StreamKey>() else {
            panic!("expected Malformed");
        };
        assert_eq!(key.len(), 64);
    }

    #[test]
    fn replay_keys_name_their_file_and_only_tokens_make_them() {
        let file = "/mnt/sda/Mp4Record/2022-01-10/RecS02.mp4";
        let key = StreamKey::replay("95270000ABCDEFGH", 0, file).unwrap();
        assert_eq!(key.stream(), StreamKind::Replay);
        assert_eq!(key.file(), Some(file));
        assert_ne!(
            key,
            StreamKey::replay("95270000ABCDEFGH", 0, "other.mp4").unwrap()
        );
        assert!(StreamKey::new("95270000ABCDEFGH", 0, StreamKind::Replay).is_err());
        assert!(StreamKey::replay("95270000ABCDEFGH", 0, "").is_err());
        assert!(StreamKey::replay("95270000ABCDEFGH", 0, "a\nb").is_err());
        assert!(StreamKey::replay("95270000ABCDEFGH", 0, &"f".repeat(256)).is_err());
        assert!("95270000ABCDEFGH/0/replay".parse::<StreamKey>().is_err());
        let grant = signal::tokens::StreamGrant {
            uid: "95270000ABCDEFGH".into(),
            channel: 0,
            stream_type: "replay".into(),
            op: signal::tokens::TokenOp::Play,
            exp: 0,
            file: Some(file.into()),
        };
        assert_eq!(StreamKey::from_grant(&grant).unwrap(), key);
        let without_file = signal::tokens::StreamGrant {
            file: None,
            ..grant
        };
        assert!(StreamKey::from_grant(&without_file).is_err());
    }
}
