//! SDP (RFC 4566) for RTSP: parsing what publishers ANNOUNCE (ffmpeg, GStreamer, other relays)
//! into typed media sections, and writing what the relay answers to DESCRIBE, either built from
//! a device stream's real parameter sets and AAC config, or an announced SDP passed through with
//! its control attributes rewritten to the relay's `trackID=N`. Lines the relay does not
//! interpret are kept in order so a pass-through loses nothing.

use std::fmt::{self, Write as _};

use base64::Engine as _;
use bytes::Bytes;

use super::aac::AudioSpecificConfig;

/// Size limits on an SDP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdpLimits {
    pub max_len: usize,
    pub max_lines: usize,
    pub max_line_len: usize,
    pub max_media: usize,
}

impl Default for SdpLimits {
    fn default() -> Self {
        SdpLimits {
            max_len: 64 * 1024,
            max_lines: 1024,
            max_line_len: 4096,
            max_media: 16,
        }
    }
}

/// An SDP the peer sent cannot be used. Always the announcing peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("SDP has more than {limit} lines")]
    TooManyLines { limit: usize },
    #[error("SDP line {line} is longer than {limit} bytes")]
    LineTooLong { line: usize, limit: usize },
    #[error("SDP has more than {limit} media sections")]
    TooManyMedia { limit: usize },
    #[error("SDP is not UTF-8 (byte {offset})")]
    NotUtf8 { offset: usize },
    #[error("SDP line {line}: expected {rule}")]
    Malformed { line: usize, rule: &'static str },
}

/// `a=name[:value]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

impl Attribute {
    pub fn new(name: &str, value: Option<&str>) -> Self {
        Attribute {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        }
    }
}

/// A whole session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=` value.
    pub origin: String,
    /// `s=` value.
    pub session_name: String,
    /// Other session-level lines (`i c b t r z k u e p`) in their order.
    pub fields: Vec<(char, String)>,
    pub attributes: Vec<Attribute>,
    pub media: Vec<MediaDescription>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `video`, `audio`, `application`...
    pub media: String,
    pub port: String,
    /// `RTP/AVP`, ...
    pub protocol: String,
    /// Payload types (as text, since non-RTP profiles put other things here).
    pub formats: Vec<String>,
    /// Other lines of the section (`i c b k`) in their order.
    pub fields: Vec<(char, String)>,
    pub attributes: Vec<Attribute>,
}

/// The codec of a media section, from its rtpmap (or static payload type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
    /// `mpeg4-generic` (RFC 3640), i.e. AAC.
    Aac,
    Opus,
    Pcmu,
    Pcma,
    /// Anything else; passed through untouched.
    Other(String),
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

/// Format parameters of `a=fmtp:`; names compare case-insensitively (RFC 6184, 3640).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fmtp(pub Vec<(String, String)>);

impl Fmtp {
    pub fn parse(params: &str) -> Fmtp {
        Fmtp(
            params
                .split(';')
                .filter_map(|p| {
                    let p = p.trim();
                    if p.is_empty() {
                        return None;
                    }
                    Some(match p.split_once('=') {
                        Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
                        None => (p.to_owned(), String::new()),
                    })
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A base64 parameter set list (`sprop-parameter-sets`, `sprop-vps`...) decoded; entries
    /// that are not valid base64 are skipped.
    pub fn base64_list(&self, name: &str) -> Vec<Bytes> {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        self.get(name)
            .map(|v| {
                v.split(',')
                    .filter_map(|item| engine.decode(item.trim()).ok())
                    .filter(|b| !b.is_empty())
                    .map(Bytes::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The AAC `config=` hex string.
    pub fn aac_config(&self) -> Option<AudioSpecificConfig> {
        let hex = self.get("config")?;
        if hex.len() % 2 != 0 || hex.len() > 64 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        AudioSpecificConfig::parse(&bytes?).ok()
    }
}

impl fmt::Display for Fmtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            if v.is_empty() {
                f.write_str(k)?;
            } else {
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

impl SessionDescription {
    pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
        Self::parse_with_limits(body, &SdpLimits::default())
    }

    pub fn parse_with_limits(body: &[u8], limits: &SdpLimits) -> Result<Self, SdpError> {
        if body.len() > limits.max_len {
            return Err(SdpError::TooLarge {
                len: body.len(),
                limit: limits.max_len,
            });
        }
        let text = std::str::from_utf8(body).map_err(|e| SdpError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        let mut sdp = SessionDescription {
            origin: String::new(),
            session_name: String::new(),
            fields: Vec::new(),
            attributes: Vec::new(),
            media: Vec::new(),
        };
        let mut seen_version = false;
        for (index, raw) in text.split('\n').enumerate() {
            let line_no = index + 1;
            if index >= limits.max_lines {
                return Err(SdpError::TooManyLines {
                    limit: limits.max_lines,
                });
            }
            if raw.len() > limits.max_line_len {
                return Err(SdpError::LineTooLong {
                    line: line_no,
                    limit: limits.max_line_len,
                });
            }
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            let malformed = |rule| SdpError::Malformed {
                line: line_no,
                rule,
            };
            let (kind, value) = match line.as_bytes() {
                [k, b'=', ..] if k.is_ascii_lowercase() => (char::from(*k), &line[2..]),
                _ => return Err(malformed("`<letter>=<value>`")),
            };
            if !seen_version {
                if kind != 'v' || value.trim() != "0" {
                    return Err(malformed("`v=0` first"));
                }
                seen_version = true;
                continue;
            }
            match kind {
                'm' => {
                    if sdp.media.len() >= limits.max_media {
                        return Err(SdpError::TooManyMedia {
                            limit: limits.max_media,
                        });
                    }
                    let mut parts = value.split_ascii_whitespace();
                    let (Some(media), Some(port), Some(protocol)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(malformed("`m=<media> <port> <proto> <fmt>...`"));
                    };
                    sdp.media.push(MediaDescription {
                        media: media.to_owned(),
                        port: port.to_owned(),
                        protocol: protocol.to_owned(),
                        formats: parts.map(str::to_owned).collect(),
                        fields: Vec::new(),
                        attributes: Vec::new(),
                    });
                }
                'a' => {
                    let (name, val) = match value.split_once(':') {
                        Some((n, v)) => (n, Some(v.trim())),
                        None => (value, None),
                    };
                    let attribute = Attribute::new(name.trim(), val);
                    match sdp.media.last_mut() {
                        Some(m) => m.attributes.push(attribute),
                        None => sdp.attributes.push(attribute),
                    }
                }
                'v' => return Err(malformed("a single `v=` line")),
                'o' if sdp.media.is_empty() => sdp.origin = value.to_owned(),
                's' if sdp.media.is_empty() => sdp.session_name = value.to_owned(),
                _ => match sdp.media.last_mut() {
                    Some(m) => m.fields.push((kind, value.to_owned())),
                    None => sdp.fields.push((kind, value.to_owned())),
                },
            }
        }
        if !seen_version {
            return Err(SdpError::Malformed {
                line: 1,
                rule: "`v=0` first",
            });
        }
        Ok(sdp)
    }

    /// A description for the relay's own streams: media sections come from the `with_*`
    /// constructors of [`MediaDescription`].
    pub fn new(session_name: &str, origin_address: &str, media: Vec<MediaDescription>) -> Self {
        let family = if origin_address.contains(':') {
            "IP6"
        } else {
            "IP4"
        };
        let any = if family == "IP6" { "::" } else { "0.0.0.0" };
        SessionDescription {
            origin: format!("- 0 0 IN {family} {origin_address}"),
            session_name: session_name.to_owned(),
            fields: vec![('c', format!("IN {family} {any}")), ('t', "0 0".to_owned())],
            attributes: vec![
                Attribute::new("control", Some("*")),
                Attribute::new("range", Some("npt=now-")),
            ],
            media,
        }
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        find_attribute(&self.attributes, name)
    }

    /// Makes the description serve from the relay: session control `*`, media `trackID=<index>`,
    /// live range. Everything else is kept.
    pub fn rewrite_controls(&mut self) {
        set_attribute(&mut self.attributes, "control", "*");
        set_attribute(&mut self.attributes, "range", "npt=now-");
        for (index, media) in self.media.iter_mut().enumerate() {
            set_attribute(
                &mut media.attributes,
                "control",
                &format!("trackID={index}"),
            );
        }
    }

    /// The media section a SETUP's control names: by exact control attribute, else by
    /// `trackID=N`/`streamid=N` index.
    pub fn media_by_control(
        &self,
        control: &str,
        track: Option<u32>,
    ) -> Option<(usize, &MediaDescription)> {
        self.media
            .iter()
            .enumerate()
            .find(|(_, m)| m.control() == Some(control))
            .or_else(|| {
                let index = usize::try_from(track?).ok()?;
                self.media.get(index).map(|m| (index, m))
            })
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("v=0\r\n");
        push_line(&mut out, 'o', &self.origin);
        push_line(
            &mut out,
            's',
            if self.session_name.is_empty() {
                " "
            } else {
                &self.session_name
            },
        );
        for (kind, value) in &self.fields {
            push_line(&mut out, *kind, value);
        }
        push_attributes(&mut out, &self.attributes);
        for media in &self.media {
            let mut m = format!("{} {} {}", media.media, media.port, media.protocol);
            for format in &media.formats {
                m.push(' ');
                m.push_str(format);
            }
            push_line(&mut out, 'm', &m);
            for (kind, value) in &media.fields {
                push_line(&mut out, *kind, value);
            }
            push_attributes(&mut out, &media.attributes);
        }
        out
    }
}

impl MediaDescription {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        find_attribute(&self.attributes, name)
    }

    pub fn control(&self) -> Option<&str> {
        self.attribute("control")
    }

    /// The first payload type of the `m=` line.
    pub fn payload_type(&self) -> Option<u8> {
        self.formats.first()?.parse().ok().filter(|pt| *pt < 128)
    }

    /// The rtpmap of the first payload type, or the static mapping of RFC 3551 for 0 and 8.
    pub fn rtpmap(&self) -> Option<RtpMap> {
        let pt = self.payload_type()?;
        for attr in self.attributes.iter().filter(|a| a.name == "rtpmap") {
            let Some((pt_text, map)) = attr.value.as_deref().and_then(|v| v.split_once(' ')) else {
                continue;
            };
            if pt_text.trim().parse() != Ok(pt) {
                continue;
            }
            let mut parts = map.trim().split('/');
            let encoding = parts.next()?.to_owned();
            let clock_rate = parts.next()?.parse().ok()?;
            let channels = parts.next().and_then(|c| c.parse().ok());
            return Some(RtpMap {
                payload_type: pt,
                encoding,
                clock_rate,
                channels,
            });
        }
        let static_map = |encoding: &str| RtpMap {
            payload_type: pt,
            encoding: encoding.to_owned(),
            clock_rate: 8000,
            channels: Some(1),
        };
        match pt {
            0 => Some(static_map("PCMU")),
            8 => Some(static_map("PCMA")),
            _ => None,
        }
    }

    /// The fmtp of the first payload type (empty when there is none).
    pub fn fmtp(&self) -> Fmtp {
        let Some(pt) = self.payload_type() else {
            return Fmtp::default();
        };
        self.attributes
            .iter()
            .filter(|a| a.name == "fmtp")
            .filter_map(|a| a.value.as_deref()?.split_once(' '))
            .find(|(p, _)| p.trim().parse() == Ok(pt))
            .map(|(_, params)| Fmtp::parse(params))
            .unwrap_or_default()
    }

    /// Sets format parameters of the first payload type (`a=fmtp:PT …`), replacing those of
    /// the same name (case-insensitively) and keeping the others in order; adds the attribute
    /// when there is none. Used to fill in parameter sets a publisher only sends in band.
    pub fn set_format_parameters(&mut self, params: &[(&str, String)]) {
        let Some(pt) = self.payload_type() else {
            return;
        };
        let mut fmtp = self.fmtp();
        for (name, value) in params {
            match fmtp
                .0
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                Some(entry) => entry.1 = value.clone(),
                None => fmtp.0.push(((*name).to_owned(), value.clone())),
            }
        }
        let encoded = fmtp
            .0
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(";");
        let value = format!("{pt} {encoded}");
        let existing = self.attributes.iter_mut().find(|a| {
            a.name == "fmtp"
                && a.value
                    .as_deref()
                    .and_then(|v| v.split_once(' '))
                    .is_some_and(|(p, _)| p.trim().parse() == Ok(pt))
        });
        match existing {
            Some(attribute) => attribute.value = Some(value),
            None => {
                // Before `a=control`, where players expect it; at the end otherwise.
                let at = self
                    .attributes
                    .iter()
                    .position(|a| a.name == "control")
                    .unwrap_or(self.attributes.len());
                self.attributes
                    .insert(at, Attribute::new("fmtp", Some(&value)));
            }
        }
    }

    pub fn codec(&self) -> Codec {
        let Some(map) = self.rtpmap() else {
            return Codec::Other(self.formats.first().cloned().unwrap_or_default());
        };
        let e = map.encoding.as_str();
        if e.eq_ignore_ascii_case("H264") {
            Codec::H264
        } else if e.eq_ignore_ascii_case("H265") {
            Codec::H265
        } else if e.eq_ignore_ascii_case("mpeg4-generic") {
            Codec::Aac
        } else if e.eq_ignore_ascii_case("opus") {
            Codec::Opus
        } else if e.eq_ignore_ascii_case("PCMU") {
            Codec::Pcmu
        } else if e.eq_ignore_ascii_case("PCMA") {
            Codec::Pcma
        } else {
            Codec::Other(map.encoding)
        }
    }

    fn rtp(media: &str, payload_type: u8, track: u32, rtpmap: String, fmtp: String) -> Self {
        MediaDescription {
            media: media.to_owned(),
            port: "0".to_owned(),
            protocol: "RTP/AVP".to_owned(),
            formats: vec![payload_type.to_string()],
            fields: Vec::new(),
            attributes: vec![
                Attribute::new("rtpmap", Some(&format!("{payload_type} {rtpmap}"))),
                Attribute::new("fmtp", Some(&format!("{payload_type} {fmtp}"))),
                Attribute::new("control", Some(&format!("trackID={track}"))),
            ],
        }
    }

    /// H.264 video from its SPS and PPS (NAL units without start codes).
    pub fn h264(payload_type: u8, sps: &[u8], pps: &[u8], track: u32) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut fmtp = "packetization-mode=1".to_owned();
        if let Some(profile) = sps.get(1..4) {
            let _ = write!(
                fmtp,
                ";profile-level-id={:02X}{:02X}{:02X}",
                profile[0], profile[1], profile[2]
            );
        }
        let _ = write!(
            fmtp,
            ";sprop-parameter-sets={},{}",
            b64.encode(sps),
            b64.encode(pps)
        );
        Self::rtp("video", payload_type, track, "H264/90000".to_owned(), fmtp)
    }

    /// H.265 video from its VPS, SPS and PPS.
    pub fn h265(payload_type: u8, vps: &[u8], sps: &[u8], pps: &[u8], track: u32) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        let fmtp = format!(
            "sprop-vps={};sprop-sps={};sprop-pps={}",
            b64.encode(vps),
            b64.encode(sps),
            b64.encode(pps)
        );
        Self::rtp("video", payload_type, track, "H265/90000".to_owned(), fmtp)
    }

    /// AAC (RFC 3640 AAC-hbr, as the AAC packetizer sends it).
    pub fn aac(payload_type: u8, config: AudioSpecificConfig, track: u32) -> Self {
        let rtpmap = format!(
            "MPEG4-GENERIC/{}/{}",
            config.sample_rate().unwrap_or(0),
            config.channels()
        );
        let fmtp = format!(
            "streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;\
             indexdeltalength=3;config={config}"
        );
        Self::rtp("audio", payload_type, track, rtpmap, fmtp)
    }
}

fn find_attribute<'a>(attributes: &'a [Attribute], name: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case(name))
        .map(|a| a.value.as_deref().unwrap_or(""))
}

fn set_attribute(attributes: &mut Vec<Attribute>, name: &str, value: &str) {
    match attributes
        .iter_mut()
        .find(|a| a.name.eq_ignore_ascii_case(name))
    {
        Some(a) => a.value = Some(value.to_owned()),
        None => attributes.push(Attribute::new(name, Some(value))),
    }
    let mut seen = false;
    attributes.retain(|a| {
        let duplicate = seen && a.name.eq_ignore_ascii_case(name);
        seen |= a.name.eq_ignore_ascii_case(name);
        !duplicate
    });
}

/// Writes `k=v\r\n`; CR and LF inside a value (from a parsed peer SDP) become spaces.
fn push_line(out: &mut String, kind: char, value: &str) {
    out.push(kind);
    out.push('=');
    out.extend(
        value
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
    );
    out.push_str("\r\n");
}

fn push_attributes(out: &mut String, attributes: &[Attribute]) {
    for a in attributes {
        match &a.value {
            Some(v) => push_line(out, 'a', &format!("{}:{v}", a.name)),
            None => push_line(out, 'a', &a.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h264::Sps;
    use crate::proto::rtsp::{Parsed, RtspRequest};

    /// The ANNOUNCE body of a recorded request sequence.
    fn announce_body(fixture: &[u8]) -> Bytes {
        let mut buf = fixture;
        loop {
            match RtspRequest::parse(buf).unwrap() {
                Parsed::Complete { message, consumed } => {
                    if !message.body.is_empty() {
                        return message.body;
                    }
                    buf = &buf[consumed..];
                }
                Parsed::Incomplete => panic!("no ANNOUNCE"),
            }
        }
    }

    #[test]
    fn ffmpeg_h264_aac_announce() {
        let body = announce_body(include_bytes!(
            "../../testdata/ffmpeg_announce_h264_aac.txt"
        ));
        let sdp = SessionDescription::parse(&body).unwrap();
        assert_eq!(sdp.session_name, "No Name");
        assert_eq!(sdp.media.len(), 2);
        let video = &sdp.media[0];
        assert_eq!(video.codec(), Codec::H264);
        assert_eq!(video.control(), Some("streamid=0"));
        assert_eq!(
            video.rtpmap(),
            Some(RtpMap {
                payload_type: 96,
                encoding: "H264".into(),
                clock_rate: 90000,
                channels: None
            })
        );
        let fmtp = video.fmtp();
        assert_eq!(fmtp.get("packetization-mode"), Some("1"));
        assert_eq!(fmtp.get("Profile-Level-Id"), Some("64000D"));
        let sets = fmtp.base64_list("sprop-parameter-sets");
        assert_eq!(sets.len(), 2);
        let sps = Sps::parse(&sets[0]).unwrap();
        assert_eq!((sps.width, sps.height), (320, 240));

        let audio = &sdp.media[1];
        assert_eq!(audio.codec(), Codec::Aac);
        assert_eq!(audio.rtpmap().unwrap().clock_rate, 16000);
        assert_eq!(audio.rtpmap().unwrap().channels, Some(1));
        let config = audio.fmtp().aac_config().unwrap();
        assert_eq!(config.sample_rate(), Some(16000));
        assert_eq!(audio.fields, vec![('b', "AS:69".to_owned())]);
    }

    #[test]
    fn format_parameters_are_filled_in_and_replaced() {
        let body = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n\
a=rtpmap:96 H264/90000\r\na=control:streamid=0\r\n";
        let mut sdp = SessionDescription::parse(body).unwrap();
        let video = &mut sdp.media[0];
        assert!(video.fmtp().get("sprop-parameter-sets").is_none());
        video.set_format_parameters(&[("packetization-mode", "1".into())]);
        video.set_format_parameters(&[(
            "sprop-parameter-sets",
            "Z0LADYyNQKD5APCIRqA=,aM48gA==".into(),
        )]);
        assert_eq!(video.fmtp().base64_list("sprop-parameter-sets").len(), 2);
        assert_eq!(video.fmtp().get("packetization-mode"), Some("1"));
        video.set_format_parameters(&[("packetization-mode", "0".into())]);
        assert_eq!(video.fmtp().get("packetization-mode"), Some("0"));
        let again = SessionDescription::parse(sdp.encode().as_bytes()).unwrap();
        assert_eq!(again.media[0].fmtp(), sdp.media[0].fmtp());
        assert_eq!(again.media[0].control(), Some("streamid=0"));
    }

    #[test]
    fn ffmpeg_h265_and_gstreamer_announces() {
        let body = announce_body(include_bytes!(
            "../../testdata/ffmpeg_announce_h265_aac.txt"
        ));
        let sdp = SessionDescription::parse(&body).unwrap();
        let video = &sdp.media[0];
        assert_eq!(video.codec(), Codec::H265);
        for name in ["sprop-vps", "sprop-sps", "sprop-pps"] {
            assert_eq!(video.fmtp().base64_list(name).len(), 1, "{name}");
        }

        let body = announce_body(include_bytes!("../../testdata/gstreamer_announce_h264.txt"));
        let sdp = SessionDescription::parse(&body).unwrap();
        assert_eq!(sdp.media.len(), 1);
        assert_eq!(sdp.media[0].control(), Some("stream=0"));
        assert_eq!(sdp.media[0].attribute("framerate"), Some("25"));
        assert_eq!(
            sdp.media[0].fields,
            vec![('c', "IN IP4 0.0.0.0".to_owned())]
        );
        assert_eq!(sdp.media_by_control("stream=0", Some(0)).unwrap().0, 0);
    }

    #[test]
    fn pass_through_rewrites_controls_and_round_trips() {
        let body = announce_body(include_bytes!(
            "../../testdata/ffmpeg_announce_h264_aac.txt"
        ));
        let mut sdp = SessionDescription::parse(&body).unwrap();
        sdp.rewrite_controls();
        let text = sdp.encode();
        assert!(text.contains("a=control:trackID=0\r\nm=audio"));
        assert!(text.ends_with("a=control:trackID=1\r\n"));
        assert!(text.contains("a=control:*\r\na=range:npt=now-\r\n"));
        assert!(!text.contains("streamid"));
        let reparsed = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(reparsed, sdp);
        assert_eq!(reparsed.encode(), text);
        assert_eq!(
            reparsed.media_by_control("trackID=1", Some(1)).unwrap().0,
            1
        );
    }

    #[test]
    fn built_from_stream_parameters() {
        let sps = [0x67, 0x64, 0x00, 0x1f, 0xac];
        let pps = [0x68, 0xee, 0x3c, 0x80];
        let config = AudioSpecificConfig {
            object_type: 2,
            sampling_frequency_index: 8,
            channel_configuration: 1,
        };
        let sdp = SessionDescription::new(
            "relay",
            "10.0.0.1",
            vec![
                MediaDescription::h264(96, &sps, &pps, 0),
                MediaDescription::aac(97, config, 1),
            ],
        );
        let text = sdp.encode();
        assert!(text.starts_with("v=0\r\no=- 0 0 IN IP4 10.0.0.1\r\ns=relay\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=control:*\r\na=range:npt=now-\r\n"));
        assert!(text.contains(
            "a=fmtp:96 packetization-mode=1;profile-level-id=64001F;sprop-parameter-sets=Z2QAH6w=,aO48gA==\r\n"
        ));
        assert!(text.contains("a=rtpmap:97 MPEG4-GENERIC/16000/1\r\n"));
        assert!(text.contains(
            "mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3;config=1408\r\n"
        ));
        let parsed = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(
            parsed.media[0].fmtp().base64_list("sprop-parameter-sets")[1],
            &pps[..]
        );
        assert_eq!(parsed.media[1].fmtp().aac_config(), Some(config));
        let h265 = MediaDescription::h265(96, &[0x40, 1], &[0x42, 1], &[0x44, 1], 0);
        assert_eq!(h265.codec(), Codec::H265);
        assert_eq!(h265.fmtp().base64_list("sprop-pps")[0], &[0x44, 1][..]);
    }

    #[test]
    fn codecs_and_static_types() {
        let text = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=x\r\nt=0 0\r\n\
            m=audio 0 RTP/AVP 0\r\n\
            m=audio 0 RTP/AVP 8\r\n\
            m=audio 0 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n\
            m=application 0 RTP/AVP 107\r\na=rtpmap:107 vnd.onvif.metadata/90000\r\n";
        let sdp = SessionDescription::parse(text.as_bytes()).unwrap();
        let codecs: Vec<Codec> = sdp.media.iter().map(MediaDescription::codec).collect();
        assert_eq!(
            codecs,
            [
                Codec::Pcmu,
                Codec::Pcma,
                Codec::Opus,
                Codec::Other("vnd.onvif.metadata".into())
            ]
        );
        assert_eq!(sdp.media[2].rtpmap().unwrap().channels, Some(2));
    }

    #[test]
    fn limits_and_errors() {
        assert_eq!(
            SessionDescription::parse(b"o=x\r\n"),
            Err(SdpError::Malformed {
                line: 1,
                rule: "`v=0` first"
            })
        );
        assert_eq!(
            SessionDescription::parse(b"v=0\r\nbogus\r\n"),
            Err(SdpError::Malformed {
                line: 2,
                rule: "`<letter>=<value>`"
            })
        );
        assert_eq!(
            SessionDescription::parse(b"v=0\r\nm=video\r\n"),
            Err(SdpError::Malformed {
                line: 2,
                rule: "`m=<media> <port> <proto> <fmt>...`"
            })
        );
        assert!(SessionDescription::parse(b"").is_err());
        let mut long = b"v=0\r\na=".to_vec();
        long.resize(5000, b'x');
        assert_eq!(
            SessionDescription::parse(&long),
            Err(SdpError::LineTooLong {
                line: 2,
                limit: 4096
            })
        );
        let mut many = b"v=0\r\n".to_vec();
        for _ in 0..17 {
            many.extend_from_slice(b"m=video 0 RTP/AVP 96\r\n");
        }
        assert_eq!(
            SessionDescription::parse(&many),
            Err(SdpError::TooManyMedia { limit: 16 })
        );
        let lines = "a=x\r\n".repeat(1100);
        assert_eq!(
            SessionDescription::parse(format!("v=0\r\n{lines}").as_bytes()),
            Err(SdpError::TooManyLines { limit: 1024 })
        );
        assert!(matches!(
            SessionDescription::parse(b"v=0\r\ns=\xff\r\n"),
            Err(SdpError::NotUtf8 { .. })
        ));
    }
}
