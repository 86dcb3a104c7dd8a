//! XML bodies of ROP core packets: `<?xml …?><body><ParamNNN><attrNNN>…</attrNNN></ParamNNN></body>`
//! with the platform's obfuscated tag names (`rop-protocol.md`).
//!
//! [`XmlBody`] is a small, bounded element tree (size, depth and element-count limits; no DTD,
//! no custom entities) with accessors, so that commands whose bodies are not yet typed can be
//! handled and new fields read. Typed messages ([`Handshake`], [`Heartbeat`], [`Alarm`],
//! [`Capabilities`], [`PreviewStart`], …) convert from and to it with [`BodyMessage`]. Unknown
//! elements are ignored: devices add fields. Encoding follows the platform's server (xml2js:
//! declaration without `standalone`, two-space indentation), so devices see the bytes they
//! already parse; text is escaped with entities.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Limits applied while parsing a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body in bytes.
    pub max_bytes: usize,
    /// Deepest element nesting (`body` is depth 1).
    pub max_depth: usize,
    /// Most elements in one body.
    pub max_elements: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 16,
            max_elements: 2048,
        }
    }
}

/// Errors of the body codec: all are the peer's fault (a malformed or unexpected body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is larger than the limit.
    #[error("peer sent a {length}-byte XML body, over the limit of {limit}")]
    TooLarge {
        /// Body length.
        length: usize,
        /// Limit.
        limit: usize,
    },
    /// The body is not UTF-8.
    #[error("peer sent an XML body that is not UTF-8 (at byte {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The XML is malformed.
    #[error("peer sent malformed XML at byte {offset}: {message}")]
    Syntax {
        /// Byte offset where the parser stopped.
        offset: u64,
        /// The parser's message.
        message: String,
    },
    /// A document type declaration (refused: no DTDs, no entity tricks).
    #[error("peer sent an XML body with a DOCTYPE at byte {offset}")]
    DocType {
        /// Byte offset.
        offset: u64,
    },
    /// Nesting deeper than the limit.
    #[error("peer sent XML nested deeper than {limit} at byte {offset}")]
    TooDeep {
        /// Byte offset.
        offset: u64,
        /// Limit.
        limit: usize,
    },
    /// More elements than the limit.
    #[error("peer sent XML with more than {limit} elements (at byte {offset})")]
    TooManyElements {
        /// Byte offset.
        offset: u64,
        /// Limit.
        limit: usize,
    },
    /// Content outside the root element, or a second root.
    #[error("peer sent content outside the root element at byte {offset}")]
    OutsideRoot {
        /// Byte offset.
        offset: u64,
    },
    /// The document has no root element.
    #[error("peer sent an XML body without a root element")]
    NoRoot,
    /// The root element is not `body`.
    #[error("peer sent an XML body whose root is <{found}>, not <body>")]
    NotBody {
        /// The root's name.
        found: String,
    },
    /// A required element is missing.
    #[error("peer's XML body lacks {path}")]
    Missing {
        /// Path of the element, e.g. `Param013/attr001`.
        path: &'static str,
    },
    /// An element holds a value of the wrong form.
    #[error("peer's XML body has {path} = {value:?}, not {expected}")]
    InvalidValue {
        /// Path of the element.
        path: &'static str,
        /// The value found (cut to 64 characters).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The document's root element is not the one expected (an extension block that is not
    /// `<Extension>`).
    #[error("peer sent an XML document whose root is <{found}>, not <{expected}>")]
    WrongRoot {
        /// The root expected.
        expected: &'static str,
        /// The root's name (cut to 64 characters).
        found: String,
    },
    /// A binary body is shorter than its fixed layout.
    #[error(
        "peer sent a {length}-byte binary body, shorter than the {needed} bytes of its layout"
    )]
    BinaryTooShort {
        /// Length received.
        length: usize,
        /// Length needed.
        needed: usize,
    },
}

/// One element: name, text (unescaped; CDATA included) and children in document order.
/// Attributes are ignored: ROP bodies carry none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmlElement {
    /// Tag name.
    pub name: String,
    /// Text content (raw; accessors trim it).
    pub text: String,
    /// Child elements.
    pub children: Vec<XmlElement>,
}

impl XmlElement {
    /// An empty element.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// A leaf element holding `text`.
    pub fn leaf(name: impl Into<String>, text: impl ToString) -> Self {
        Self {
            name: name.into(),
            text: text.to_string(),
            children: Vec::new(),
        }
    }

    /// This element with `child` appended.
    pub fn with(mut self, child: XmlElement) -> Self {
        self.children.push(child);
        self
    }

    /// This element with a leaf child appended.
    pub fn with_leaf(self, name: &str, text: impl ToString) -> Self {
        self.with(XmlElement::leaf(name, text))
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&XmlElement> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name` (repeated elements form lists, e.g. capabilities per channel).
    pub fn children_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a XmlElement> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at `path` below this one (first match at each step).
    pub fn at(&self, path: &[&str]) -> Option<&XmlElement> {
        path.iter()
            .try_fold(self, |element, name| element.child(name))
    }

    /// The trimmed text of this element.
    pub fn text(&self) -> &str {
        self.text.trim()
    }

    /// The trimmed text at `path`, if the element exists.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path).map(XmlElement::text)
    }

    fn write(&self, out: &mut String, depth: usize) {
        for _ in 0..depth {
            out.push_str("  ");
        }
        out.push('<');
        out.push_str(&self.name);
        let text = self.text.as_str();
        if text.is_empty() && self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        out.push_str(&quick_xml::escape::partial_escape(text));
        if !self.children.is_empty() {
            for child in &self.children {
                out.push('\n');
                child.write(out, depth + 1);
            }
            out.push('\n');
            for _ in 0..depth {
                out.push_str("  ");
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }
}

/// The XML declaration the platform's server writes.
pub const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// A parsed `<body>`: the generic form of every XML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlBody {
    /// The `body` element.
    pub root: XmlElement,
}

impl Default for XmlBody {
    fn default() -> Self {
        Self::new()
    }
}

impl XmlBody {
    /// An empty `<body/>`.
    pub fn new() -> Self {
        Self {
            root: XmlElement::new("body"),
        }
    }

    /// This body with `param` appended under `body`.
    pub fn with(mut self, param: XmlElement) -> Self {
        self.root.children.push(param);
        self
    }

    /// The first `ParamNNN` element called `name`.
    pub fn param(&self, name: &str) -> Option<&XmlElement> {
        self.root.child(name)
    }

    /// The trimmed text at `path` below `body`.
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.root.text_at(path)
    }

    /// Parses with the default limits.
    pub fn parse(input: &[u8]) -> Result<Self, BodyError> {
        Self::parse_with_limits(input, &BodyLimits::default())
    }

    /// Parses with explicit limits. Trailing NUL bytes (sent by some firmware) are ignored.
    pub fn parse_with_limits(input: &[u8], limits: &BodyLimits) -> Result<Self, BodyError> {
        let root = parse_document(input, limits)?;
        if root.name != "body" {
            return Err(BodyError::NotBody {
                found: truncate(&root.name),
            });
        }
        Ok(XmlBody { root })
    }

    /// The body as the platform's server writes it.
    pub fn encode(&self) -> String {
        encode_document(&self.root)
    }
}

/// The document as the platform's server (xml2js) writes it: declaration, newline, the root
/// element indented by two spaces per level.
fn encode_document(root: &XmlElement) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(XML_DECLARATION);
    out.push('\n');
    root.write(&mut out, 0);
    out
}

/// Parses one XML document into its root element, within `limits`. Trailing NUL bytes (sent
/// by some firmware) and a byte-order mark are ignored.
fn parse_document(input: &[u8], limits: &BodyLimits) -> Result<XmlElement, BodyError> {
    if input.len() > limits.max_bytes {
        return Err(BodyError::TooLarge {
            length: input.len(),
            limit: limits.max_bytes,
        });
    }
    let end = input.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let text = std::str::from_utf8(&input[..end]).map_err(|e| BodyError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<XmlElement> = Vec::new();
    let mut root: Option<XmlElement> = None;
    let mut elements = 0usize;
    loop {
        let position = reader.buffer_position();
        let event = reader.read_event().map_err(|e| BodyError::Syntax {
            offset: reader.error_position(),
            message: e.to_string(),
        })?;
        match event {
            Event::Start(start) | Event::Empty(start) if root.is_some() && stack.is_empty() => {
                let _ = start;
                return Err(BodyError::OutsideRoot { offset: position });
            }
            Event::Start(start) => {
                open(
                    &mut stack,
                    &mut elements,
                    limits,
                    position,
                    start.name().as_ref(),
                )?;
            }
            Event::Empty(start) => {
                open(
                    &mut stack,
                    &mut elements,
                    limits,
                    position,
                    start.name().as_ref(),
                )?;
                close(&mut stack, &mut root);
            }
            Event::End(_) => close(&mut stack, &mut root),
            Event::Text(text) => {
                let unescaped = text.unescape().map_err(|e| BodyError::Syntax {
                    offset: position,
                    message: e.to_string(),
                })?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&unescaped),
                    None if unescaped.trim().is_empty() => {}
                    None => return Err(BodyError::OutsideRoot { offset: position }),
                }
            }
            Event::CData(data) => match stack.last_mut() {
                Some(top) => {
                    let raw = data.into_inner();
                    // The input is a str, so CDATA content is UTF-8.
                    top.text.push_str(&String::from_utf8_lossy(&raw));
                }
                None => return Err(BodyError::OutsideRoot { offset: position }),
            },
            Event::DocType(_) => return Err(BodyError::DocType { offset: position }),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(BodyError::Syntax {
            offset: reader.buffer_position(),
            message: format!(
                "<{}> is not closed",
                stack.last().map_or("", |e| e.name.as_str())
            ),
        });
    }
    root.ok_or(BodyError::NoRoot)
}

fn open(
    stack: &mut Vec<XmlElement>,
    elements: &mut usize,
    limits: &BodyLimits,
    position: u64,
    name: &[u8],
) -> Result<(), BodyError> {
    *elements += 1;
    if *elements > limits.max_elements {
        return Err(BodyError::TooManyElements {
            offset: position,
            limit: limits.max_elements,
        });
    }
    if stack.len() >= limits.max_depth {
        return Err(BodyError::TooDeep {
            offset: position,
            limit: limits.max_depth,
        });
    }
    stack.push(XmlElement::new(String::from_utf8_lossy(name).into_owned()));
    Ok(())
}

fn close(stack: &mut Vec<XmlElement>, root: &mut Option<XmlElement>) {
    // quick-xml checks that end tags match, so there is an element to close.
    let Some(mut element) = stack.pop() else {
        return;
    };
    if !element.children.is_empty() && element.text.trim().is_empty() {
        element.text.clear();
    }
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

/// A typed XML body.
pub trait BodyMessage: Sized {
    /// Reads the message from a parsed body.
    fn from_body(body: &XmlBody) -> Result<Self, BodyError>;
    /// The message as a body.
    fn to_body(&self) -> XmlBody;

    /// Parses bytes (default limits) into the message.
    fn parse(input: &[u8]) -> Result<Self, BodyError> {
        Self::from_body(&XmlBody::parse(input)?)
    }

    /// Encodes the message as the platform's server writes it.
    fn encode(&self) -> String {
        self.to_body().encode()
    }
}

fn required<'a>(
    body: &'a XmlBody,
    path: &[&str],
    name: &'static str,
) -> Result<&'a str, BodyError> {
    body.text_at(path).ok_or(BodyError::Missing { path: name })
}

fn optional(body: &XmlBody, path: &[&str]) -> Option<String> {
    body.text_at(path).map(str::to_owned)
}

fn number<T: std::str::FromStr>(value: &str, path: &'static str) -> Result<T, BodyError> {
    value.parse().map_err(|_| BodyError::InvalidValue {
        path,
        value: truncate(value),
        expected: "a decimal number",
    })
}

fn required_number<T: std::str::FromStr>(
    body: &XmlBody,
    path: &[&str],
    name: &'static str,
) -> Result<T, BodyError> {
    number(required(body, path, name)?, name)
}

fn optional_number<T: std::str::FromStr>(
    body: &XmlBody,
    path: &[&str],
    name: &'static str,
) -> Result<Option<T>, BodyError> {
    body.text_at(path)
        .filter(|v| !v.is_empty())
        .map(|v| number(v, name))
        .transpose()
}

/// Handshake 458 from the device (`Param013`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Handshake {
    /// attr001: the device UID.
    pub uid: String,
    /// attr002: device family; `battery` means the device sleeps and is woken with 460.
    pub family: Option<String>,
    /// attr003: model.
    pub model: Option<String>,
    /// attr004: firmware version.
    pub firmware: Option<String>,
    /// attr005: network type; `4G` selects the heartbeat interval from a carrier table.
    pub network_type: Option<String>,
    /// attr006: carrier (MCC+MNC).
    pub carrier: Option<String>,
}

impl Handshake {
    /// True when the device manages sleep (family `battery`).
    pub fn is_battery(&self) -> bool {
        self.family.as_deref() == Some("battery")
    }
}

impl BodyMessage for Handshake {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(Handshake {
            uid: required(body, &["Param013", "attr001"], "Param013/attr001")?.to_owned(),
            family: optional(body, &["Param013", "attr002"]),
            model: optional(body, &["Param013", "attr003"]),
            firmware: optional(body, &["Param013", "attr004"]),
            network_type: optional(body, &["Param013", "attr005"]),
            carrier: optional(body, &["Param013", "attr006"]),
        })
    }

    fn to_body(&self) -> XmlBody {
        let mut param = XmlElement::new("Param013").with_leaf("attr001", &self.uid);
        for (name, value) in [
            ("attr002", &self.family),
            ("attr003", &self.model),
            ("attr004", &self.firmware),
            ("attr005", &self.network_type),
            ("attr006", &self.carrier),
        ] {
            if let Some(value) = value {
                param = param.with_leaf(name, value);
            }
        }
        XmlBody::new().with(param)
    }
}

/// The server's handshake reply on encryptTCP links (`Param013.attr007`); on TLS links the
/// reply has no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeReply {
    /// attr007: heartbeat interval in milliseconds (20000 by default).
    pub heartbeat_interval_ms: u32,
}

impl BodyMessage for HandshakeReply {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(HandshakeReply {
            heartbeat_interval_ms: required_number(
                body,
                &["Param013", "attr007"],
                "Param013/attr007",
            )?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new()
            .with(XmlElement::new("Param013").with_leaf("attr007", self.heartbeat_interval_ms))
    }
}

/// Battery state reported in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatteryState {
    /// attr006: charge in percent.
    pub percent: Option<u8>,
    /// attr002: charging status as the device reports it.
    pub charging: Option<String>,
}

/// Heartbeat 0 from the device (`Param001`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// attr004 = 1: the device wants no reply.
    pub no_reply: bool,
    /// attr005: battery state, on battery devices.
    pub battery: Option<BatteryState>,
}

impl BodyMessage for Heartbeat {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        let battery = match body.root.at(&["Param001", "attr005"]) {
            Some(_) => Some(BatteryState {
                percent: optional_number(
                    body,
                    &["Param001", "attr005", "attr006"],
                    "Param001/attr005/attr006",
                )?,
                charging: optional(body, &["Param001", "attr005", "attr002"]),
            }),
            None => None,
        };
        Ok(Heartbeat {
            no_reply: body.text_at(&["Param001", "attr004"]) == Some("1"),
            battery,
        })
    }

    fn to_body(&self) -> XmlBody {
        let mut param = XmlElement::new("Param001");
        if self.no_reply {
            param = param.with_leaf("attr004", 1);
        }
        if let Some(battery) = &self.battery {
            let mut state = XmlElement::new("attr005");
            if let Some(percent) = battery.percent {
                state = state.with_leaf("attr006", percent);
            }
            if let Some(charging) = &battery.charging {
                state = state.with_leaf("attr002", charging);
            }
            param = param.with(state);
        }
        XmlBody::new().with(param)
    }
}

/// The server's heartbeat reply: its clock (`Param001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// attr002: Unix time, seconds.
    pub unix_secs: u64,
    /// attr003: microseconds within the second.
    pub micros: u32,
}

impl HeartbeatReply {
    /// The reply for a clock reading in Unix milliseconds (the platform's precision).
    pub fn from_unix_millis(millis: u64) -> Self {
        HeartbeatReply {
            unix_secs: millis / 1000,
            micros: (millis % 1000) as u32 * 1000,
        }
    }
}

impl BodyMessage for HeartbeatReply {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(HeartbeatReply {
            unix_secs: required_number(body, &["Param001", "attr002"], "Param001/attr002")?,
            micros: required_number(body, &["Param001", "attr003"], "Param001/attr003")?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param001")
                .with_leaf("attr002", self.unix_secs)
                .with_leaf("attr003", self.micros),
        )
    }
}

/// Alarm 33 from the device (`Param014.attr001`); forwarded to the webhook as
/// `{uid, channelId, status, AItype}`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Alarm {
    /// attr001: channel.
    pub channel: u32,
    /// attr002: status, as the device says it (passed through to the webhook).
    pub status: String,
    /// attr003: AI type (people, vehicle, …), passed through.
    pub ai_type: String,
}

impl BodyMessage for Alarm {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(Alarm {
            channel: required_number(
                body,
                &["Param014", "attr001", "attr001"],
                "Param014/attr001/attr001",
            )?,
            status: optional(body, &["Param014", "attr001", "attr002"]).unwrap_or_default(),
            ai_type: optional(body, &["Param014", "attr001", "attr003"]).unwrap_or_default(),
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param014").with(
                XmlElement::new("attr001")
                    .with_leaf("attr001", self.channel)
                    .with_leaf("attr002", &self.status)
                    .with_leaf("attr003", &self.ai_type),
            ),
        )
    }
}

/// Stream bitmask bit: main stream.
pub const STREAM_MASK_MAIN: u32 = 1;
/// Stream bitmask bit: sub stream.
pub const STREAM_MASK_SUB: u32 = 2;
/// Stream bitmask bit: extern stream.
pub const STREAM_MASK_EXTERN: u32 = 4;

/// Capabilities of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelCapabilities {
    /// attr001: channel.
    pub channel: u32,
    /// attr002.attr001: streams (bitmask of `STREAM_MASK_*`).
    pub stream_mask: u32,
    /// attr003.attr001: PTZ type (0 none).
    pub ptz_type: u32,
    /// attr003.attr002: PTZ control.
    pub ptz_control: u32,
    /// attr004.attr001: Wi-Fi mode.
    pub wifi_mode: u32,
}

impl ChannelCapabilities {
    /// True when the channel offers `stream`.
    pub fn has_stream(&self, stream: StreamType) -> bool {
        self.stream_mask & stream.mask() != 0
    }
}

/// Capabilities 199 reply (`Param005.attr001[]`, one per channel).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Per channel, in the device's order.
    pub channels: Vec<ChannelCapabilities>,
}

impl BodyMessage for Capabilities {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        let param = body
            .param("Param005")
            .ok_or(BodyError::Missing { path: "Param005" })?;
        let mut channels = Vec::new();
        for item in param.children_named("attr001") {
            let field = |path: &[&str], name: &'static str| -> Result<u32, BodyError> {
                match item.text_at(path).filter(|v| !v.is_empty()) {
                    Some(v) => number(v, name),
                    None => Ok(0),
                }
            };
            channels.push(ChannelCapabilities {
                channel: number(
                    item.text_at(&["attr001"]).ok_or(BodyError::Missing {
                        path: "Param005/attr001/attr001",
                    })?,
                    "Param005/attr001/attr001",
                )?,
                stream_mask: field(&["attr002", "attr001"], "Param005/attr001/attr002/attr001")?,
                ptz_type: field(&["attr003", "attr001"], "Param005/attr001/attr003/attr001")?,
                ptz_control: field(&["attr003", "attr002"], "Param005/attr001/attr003/attr002")?,
                wifi_mode: field(&["attr004", "attr001"], "Param005/attr001/attr004/attr001")?,
            });
        }
        Ok(Capabilities { channels })
    }

    fn to_body(&self) -> XmlBody {
        let mut param = XmlElement::new("Param005");
        for c in &self.channels {
            param = param.with(
                XmlElement::new("attr001")
                    .with_leaf("attr001", c.channel)
                    .with(XmlElement::new("attr002").with_leaf("attr001", c.stream_mask))
                    .with(
                        XmlElement::new("attr003")
                            .with_leaf("attr001", c.ptz_type)
                            .with_leaf("attr002", c.ptz_control),
                    )
                    .with(XmlElement::new("attr004").with_leaf("attr001", c.wifi_mode)),
            );
        }
        XmlBody::new().with(param)
    }
}

/// A channel's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `mainStream`.
    Main,
    /// `subStream`.
    Sub,
    /// `externStream`.
    Extern,
}

impl StreamType {
    /// The name on the wire (and in the client API).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Main => "mainStream",
            StreamType::Sub => "subStream",
            StreamType::Extern => "externStream",
        }
    }

    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mainStream" => Some(StreamType::Main),
            "subStream" => Some(StreamType::Sub),
            "externStream" => Some(StreamType::Extern),
            _ => None,
        }
    }

    /// The capability bit of this stream.
    pub fn mask(self) -> u32 {
        match self {
            StreamType::Main => STREAM_MASK_MAIN,
            StreamType::Sub => STREAM_MASK_SUB,
            StreamType::Extern => STREAM_MASK_EXTERN,
        }
    }

    fn parse_at(body: &XmlBody, path: &[&str], name: &'static str) -> Result<Self, BodyError> {
        let value = required(body, path, name)?;
        StreamType::from_name(value).ok_or_else(|| BodyError::InvalidValue {
            path: name,
            value: truncate(value),
            expected: "mainStream, subStream or externStream",
        })
    }
}

/// How the device connects its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// `TLS`: mutual TLS on 61006.
    Tls,
    /// `encryptTCP`: encryptTCP frames on 61007, encrypted as the device chooses.
    EncryptTcp,
    /// `TCP`: encryptTCP framing on 61007 with no encryption.
    Tcp,
}

impl StreamMode {
    /// The name on the wire (and in `ROP_STREAM_ENCRYPT_MODE`).
    pub fn as_str(self) -> &'static str {
        match self {
            StreamMode::Tls => "TLS",
            StreamMode::EncryptTcp => "encryptTCP",
            StreamMode::Tcp => "TCP",
        }
    }

    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "TLS" => Some(StreamMode::Tls),
            "encryptTCP" => Some(StreamMode::EncryptTcp),
            "TCP" => Some(StreamMode::Tcp),
            _ => None,
        }
    }
}

/// Preview start 3 from the server (`Param002`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewStart {
    /// attr001: channel.
    pub channel: u32,
    /// attr002: stream id (the request id of this preview start); media packets carry it.
    pub stream_id: u32,
    /// attr003: which stream.
    pub stream_type: StreamType,
    /// attr004: connection mode.
    pub mode: StreamMode,
    /// attr008: the port to connect to.
    pub port: u16,
}

impl BodyMessage for PreviewStart {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        let mode_value = required(body, &["Param002", "attr004"], "Param002/attr004")?;
        Ok(PreviewStart {
            channel: required_number(body, &["Param002", "attr001"], "Param002/attr001")?,
            stream_id: required_number(body, &["Param002", "attr002"], "Param002/attr002")?,
            stream_type: StreamType::parse_at(body, &["Param002", "attr003"], "Param002/attr003")?,
            mode: StreamMode::from_name(mode_value).ok_or_else(|| BodyError::InvalidValue {
                path: "Param002/attr004",
                value: truncate(mode_value),
                expected: "TLS, encryptTCP or TCP",
            })?,
            port: required_number(body, &["Param002", "attr008"], "Param002/attr008")?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param002")
                .with_leaf("attr001", self.channel)
                .with_leaf("attr002", self.stream_id)
                .with_leaf("attr003", self.stream_type.as_str())
                .with_leaf("attr004", self.mode.as_str())
                .with_leaf("attr008", self.port),
        )
    }
}

/// Replay start 5 from the server (`Param006.attr001`): the device streams the recording
/// `file` over a stream connection like a preview's, its media packets carrying `stream_id`.
/// The reply is binary like preview start's ([`PreviewStartReply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayStart {
    /// attr001: channel.
    pub channel: u32,
    /// attr007: the recording's file name, as the records list gives it.
    pub file: String,
    /// attr004: stream id (the request id of this replay start).
    pub stream_id: u32,
    /// attr009: connection mode.
    pub mode: StreamMode,
    /// attr017: the port to connect to.
    pub port: u16,
}

impl BodyMessage for ReplayStart {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        let at = |leaf| ["Param006", "attr001", leaf];
        let mode_value = required(body, &at("attr009"), "Param006/attr001/attr009")?;
        Ok(ReplayStart {
            channel: required_number(body, &at("attr001"), "Param006/attr001/attr001")?,
            file: required(body, &at("attr007"), "Param006/attr001/attr007")?.to_owned(),
            stream_id: required_number(body, &at("attr004"), "Param006/attr001/attr004")?,
            mode: StreamMode::from_name(mode_value).ok_or_else(|| BodyError::InvalidValue {
                path: "Param006/attr001/attr009",
                value: truncate(mode_value),
                expected: "TLS, encryptTCP or TCP",
            })?,
            port: required_number(body, &at("attr017"), "Param006/attr001/attr017")?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param006").with(
                XmlElement::new("attr001")
                    .with_leaf("attr001", self.channel)
                    .with_leaf("attr007", &self.file)
                    .with_leaf("attr004", self.stream_id)
                    .with_leaf("attr009", self.mode.as_str())
                    .with_leaf("attr017", self.port),
            ),
        )
    }
}

/// A device-local wall-clock time (the devices and the platform use no time zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime {
    /// The day.
    pub date: time::Date,
    /// Seconds since midnight, below 86 400.
    pub seconds: u32,
}

impl LocalTime {
    /// `YYYY-MM-DD` and `HH:MM:SS`.
    pub fn parse(date: &str, clock: &str) -> Option<Self> {
        let mut d = date.trim().splitn(3, '-');
        let year: i32 = d.next()?.parse().ok()?;
        let month: u8 = d.next()?.parse().ok()?;
        let day: u8 = d.next()?.parse().ok()?;
        let date =
            time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
        let mut c = clock.trim().splitn(3, ':');
        let h: u32 = c.next()?.parse().ok()?;
        let m: u32 = c.next()?.parse().ok()?;
        let s: u32 = c.next().unwrap_or("0").parse().ok()?;
        (h < 24 && m < 60 && s < 60).then_some(LocalTime {
            date,
            seconds: h * 3600 + m * 60 + s,
        })
    }

    /// `YYYY-MM-DD HH:MM:SS`.
    pub fn parse_joined(text: &str) -> Option<Self> {
        let (date, clock) = text.trim().split_once(' ')?;
        Self::parse(date, clock)
    }

    /// The device's form: attr001 year … attr006 second, under `name`.
    pub fn element(&self, name: &str) -> XmlElement {
        XmlElement::new(name)
            .with_leaf("attr001", self.date.year())
            .with_leaf("attr002", u8::from(self.date.month()))
            .with_leaf("attr003", self.date.day())
            .with_leaf("attr004", self.seconds / 3600)
            .with_leaf("attr005", self.seconds / 60 % 60)
            .with_leaf("attr006", self.seconds % 60)
    }

    /// Reads the device's form.
    pub fn from_element(element: &XmlElement) -> Option<Self> {
        let n = |name: &str| element.text_at(&[name])?.parse::<u32>().ok();
        let date = format!("{}-{}-{}", n("attr001")?, n("attr002")?, n("attr003")?);
        let clock = format!("{}:{}:{}", n("attr004")?, n("attr005")?, n("attr006")?);
        Self::parse(&date, &clock)
    }

    /// `secs` later (across midnight and month ends; the latest representable day stays).
    pub fn plus_seconds(self, secs: u32) -> Self {
        let total = u64::from(self.seconds) + u64::from(secs);
        let days = i64::try_from(total / 86_400).unwrap_or(i64::MAX);
        match self.date.checked_add(time::Duration::days(days)) {
            Some(date) => LocalTime {
                date,
                seconds: (total % 86_400) as u32,
            },
            None => self,
        }
    }

    /// One second later.
    pub fn plus_one_second(self) -> Self {
        self.plus_seconds(1)
    }

    pub fn format(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.date.year(),
            u8::from(self.date.month()),
            self.date.day(),
            self.seconds / 3600,
            self.seconds / 60 % 60,
            self.seconds % 60
        )
    }
}

/// When a recording starts and ends on the device's clock, read from its file name by the
/// cameras' naming convention `…/Rec<kind><nn>_[DST]YYYYMMDD_HHMMSS_HHMMSS_….mp4` (the
/// interfaces document's examples, e.g. `RecS02_DST20220110_000107_000310_2B14808_3F6F88.mp4`:
/// 2022-01-10 00:01:07 to 00:03:10). An end before the start is on the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordingSpan {
    /// The recording's first second.
    pub start: LocalTime,
    /// Its end.
    pub end: LocalTime,
}

impl RecordingSpan {
    /// The span a file name gives, if it follows the convention.
    pub fn from_file_name(path: &str) -> Option<Self> {
        let name = path.rsplit('/').next()?;
        if !name.starts_with("Rec") {
            return None;
        }
        let mut fields = name.split('_').skip(1);
        let date = fields.next()?;
        let date = date.strip_prefix("DST").unwrap_or(date);
        let (start, end) = (fields.next()?, fields.next()?);
        let digits =
            |text: &str, len| text.len() == len && text.bytes().all(|b| b.is_ascii_digit());
        if !digits(date, 8) || !digits(start, 6) || !digits(end, 6) {
            return None;
        }
        let date = format!("{}-{}-{}", &date[..4], &date[4..6], &date[6..]);
        let clock = |t: &str| format!("{}:{}:{}", &t[..2], &t[2..4], &t[4..]);
        let start = LocalTime::parse(&date, &clock(start))?;
        let mut end = LocalTime::parse(&date, &clock(end))?;
        if end < start {
            end = end.plus_seconds(86_400);
        }
        Some(RecordingSpan { start, end })
    }

    /// Its length in seconds.
    pub fn duration_secs(&self) -> u32 {
        let days = (self.end.date - self.start.date).whole_days();
        let secs = days * 86_400 + i64::from(self.end.seconds) - i64::from(self.start.seconds);
        u32::try_from(secs.max(0)).unwrap_or(u32::MAX)
    }
}

/// Replay seek 123 from the server (`Param008`): the device restarts the replay whose stream id
/// is `stream_id` at the device-local time `time`, and its media packets from then on carry
/// `seek_seq` in the header's response code (the platform starts a replay at 0 and adds 1024 per
/// seek), so that packets still in flight from before the seek can be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySeek {
    /// attr001: channel.
    pub channel: u32,
    /// attr004: the replay's stream id (the request id of its replay start).
    pub stream_id: u32,
    /// attr003: the seek sequence the media packets carry after the seek.
    pub seek_seq: u32,
    /// attr002: where to continue, device-local time (attr001 year … attr006 second).
    pub time: LocalTime,
}

impl BodyMessage for ReplaySeek {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        let time = body
            .root
            .at(&["Param008", "attr002"])
            .ok_or(BodyError::Missing {
                path: "Param008/attr002",
            })?;
        Ok(ReplaySeek {
            channel: required_number(body, &["Param008", "attr001"], "Param008/attr001")?,
            stream_id: required_number(body, &["Param008", "attr004"], "Param008/attr004")?,
            seek_seq: required_number(body, &["Param008", "attr003"], "Param008/attr003")?,
            time: LocalTime::from_element(time).ok_or(BodyError::InvalidValue {
                path: "Param008/attr002",
                value: String::new(),
                expected: "a date and time (attr001 year … attr006 second)",
            })?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param008")
                .with_leaf("attr001", self.channel)
                .with_leaf("attr004", self.stream_id)
                .with_leaf("attr003", self.seek_seq)
                .with(self.time.element("attr002")),
        )
    }
}

/// Replay stop 7 (`Param006.attr001`) of the replay whose stream id is `stream_id`; also the
/// body of record info 13 with `stream_id: None` (is `file` on the device?).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFile {
    /// attr001: channel.
    pub channel: u32,
    /// attr007: the recording's file name.
    pub file: String,
    /// attr004: the replay's stream id (replay stop only).
    pub stream_id: Option<u32>,
}

impl BodyMessage for RecordFile {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        let at = |leaf| ["Param006", "attr001", leaf];
        let stream_id = optional_number(body, &at("attr004"), "Param006/attr001/attr004")?;
        Ok(RecordFile {
            channel: required_number(body, &at("attr001"), "Param006/attr001/attr001")?,
            file: required(body, &at("attr007"), "Param006/attr001/attr007")?.to_owned(),
            stream_id,
        })
    }

    fn to_body(&self) -> XmlBody {
        let mut file = XmlElement::new("attr001")
            .with_leaf("attr001", self.channel)
            .with_leaf("attr007", &self.file);
        if let Some(stream_id) = self.stream_id {
            file = file.with_leaf("attr004", stream_id);
        }
        XmlBody::new().with(XmlElement::new("Param006").with(file))
    }
}

/// Preview stop 4 from the server (`Param002`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewStop {
    /// attr001: channel.
    pub channel: u32,
    /// attr002: the stream id of the preview.
    pub stream_id: u32,
}

impl BodyMessage for PreviewStop {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(PreviewStop {
            channel: required_number(body, &["Param002", "attr001"], "Param002/attr001")?,
            stream_id: required_number(body, &["Param002", "attr002"], "Param002/attr002")?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param002")
                .with_leaf("attr001", self.channel)
                .with_leaf("attr002", self.stream_id),
        )
    }
}

/// Keyframe request 189 from the server (`Param003`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequest {
    /// attr001: channel.
    pub channel: u32,
    /// attr002: stream.
    pub stream_type: StreamType,
}

impl BodyMessage for KeyframeRequest {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(KeyframeRequest {
            channel: required_number(body, &["Param003", "attr001"], "Param003/attr001")?,
            stream_type: StreamType::parse_at(body, &["Param003", "attr002"], "Param003/attr002")?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param003")
                .with_leaf("attr001", self.channel)
                .with_leaf("attr002", self.stream_type.as_str()),
        )
    }
}

/// Snapshot 109 request from the server (`Param004`); the reply is the JPEG in chunks, response
/// code 201 on the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// attr001: channel.
    pub channel: u32,
    /// attr005: stream.
    pub stream_type: StreamType,
}

impl BodyMessage for SnapshotRequest {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(SnapshotRequest {
            channel: required_number(body, &["Param004", "attr001"], "Param004/attr001")?,
            stream_type: StreamType::parse_at(body, &["Param004", "attr005"], "Param004/attr005")?,
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param004")
                .with_leaf("attr001", self.channel)
                .with_leaf("attr005", self.stream_type.as_str()),
        )
    }
}

/// Alarm push switch (`Param011.attr001`): the body of the 461 reply and of the 462 request.
/// Any value other than `0` means on, as the platform reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmSwitch {
    /// Alarm push enabled on the device.
    pub enabled: bool,
}

impl BodyMessage for AlarmSwitch {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(AlarmSwitch {
            enabled: required(body, &["Param011", "attr001"], "Param011/attr001")? != "0",
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new()
            .with(XmlElement::new("Param011").with_leaf("attr001", u8::from(self.enabled)))
    }
}

/// PIR configuration (`Param016`): the 212 reply and the 213 request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PirConfig {
    /// attr002: PIR enabled.
    pub enabled: bool,
    /// attr003: sensitivity.
    pub sensitivity: u32,
    /// attr001: reduce false alarms.
    pub reduce_false_alarm: bool,
}

impl BodyMessage for PirConfig {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(PirConfig {
            enabled: required(body, &["Param016", "attr002"], "Param016/attr002")? != "0",
            sensitivity: required_number(body, &["Param016", "attr003"], "Param016/attr003")?,
            reduce_false_alarm: required(body, &["Param016", "attr001"], "Param016/attr001")?
                != "0",
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param016")
                .with_leaf("attr002", u8::from(self.enabled))
                .with_leaf("attr003", self.sensitivity)
                .with_leaf("attr001", u8::from(self.reduce_false_alarm)),
        )
    }
}

/// Firmware upgrade start 67 from the server (`Param012`): the device is told the file's name
/// and size, then receives the file in command-67 requests with a binary body (see
/// [`PacketExtension::binary_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeStart {
    /// attr001: the firmware file name.
    pub file_name: String,
    /// attr002: the file size in bytes.
    pub file_size: u64,
    /// attr004: `1` restores factory settings once the upgrade succeeded, `0` keeps them.
    pub factory_reset: bool,
}

impl BodyMessage for UpgradeStart {
    fn from_body(body: &XmlBody) -> Result<Self, BodyError> {
        Ok(UpgradeStart {
            file_name: required(body, &["Param012", "attr001"], "Param012/attr001")?.to_owned(),
            file_size: required_number(body, &["Param012", "attr002"], "Param012/attr002")?,
            factory_reset: required(body, &["Param012", "attr004"], "Param012/attr004")? != "0",
        })
    }

    fn to_body(&self) -> XmlBody {
        XmlBody::new().with(
            XmlElement::new("Param012")
                .with_leaf("attr001", &self.file_name)
                .with_leaf("attr002", self.file_size)
                .with_leaf("attr004", u8::from(self.factory_reset)),
        )
    }
}

/// The extension block of a core packet (between the header and the body; its length is the
/// header's extension length): an `<Extension>` XML document. The platform's server writes one
/// only on the firmware slices of an upgrade, `<binaryData>1</binaryData>`: the body is raw
/// bytes of the file, not XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketExtension {
    /// `binaryData`: the body is binary (a firmware slice).
    pub binary_data: bool,
}

impl PacketExtension {
    /// The extension of a firmware slice.
    pub const BINARY_DATA: PacketExtension = PacketExtension { binary_data: true };

    /// Parses an extension block with the default limits.
    pub fn parse(input: &[u8]) -> Result<Self, BodyError> {
        let root = parse_document(input, &BodyLimits::default())?;
        if root.name != "Extension" {
            return Err(BodyError::WrongRoot {
                expected: "Extension",
                found: truncate(&root.name),
            });
        }
        let binary_data = root
            .text_at(&["binaryData"])
            .is_some_and(|v| !v.is_empty() && v != "0");
        Ok(PacketExtension { binary_data })
    }

    /// The block as the platform's server (xml2js) writes it.
    pub fn encode(&self) -> String {
        let root = XmlElement::new("Extension").with_leaf("binaryData", u8::from(self.binary_data));
        encode_document(&root)
    }
}

/// Video codec id in the preview-start reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodecId {
    /// 0: H.264.
    H264,
    /// 1: H.265.
    H265,
    /// Any other value.
    Other(u8),
}

/// The device's binary reply to preview start 3: at least 31 bytes, of which byte 17 is the
/// frame rate and byte 30 the codec; the rest is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviewStartReply {
    /// Frames per second.
    pub fps: u8,
    /// Video codec.
    pub codec: VideoCodecId,
}

impl PreviewStartReply {
    /// Length of the binary reply this module writes (the known layout).
    pub const LEN: usize = 31;

    /// Parses the binary reply.
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        if body.len() < Self::LEN {
            return Err(BodyError::BinaryTooShort {
                length: body.len(),
                needed: Self::LEN,
            });
        }
        let codec = match body[30] {
            0 => VideoCodecId::H264,
            1 => VideoCodecId::H265,
            other => VideoCodecId::Other(other),
        };
        Ok(PreviewStartReply {
            fps: body[17],
            codec,
        })
    }

    /// The 31-byte reply (unknown bytes zero), for the simulated device.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[17] = self.fps;
        out[30] = match self.codec {
            VideoCodecId::H264 => 0,
            VideoCodecId::H265 => 1,
            VideoCodecId::Other(v) => v,
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_spans_come_from_the_cameras_file_names() {
        let span = RecordingSpan::from_file_name(
            "/mnt/sda/Mp4Record/2022-01-10/RecS02_DST20220110_000107_000310_2B14808_3F6F88.mp4",
        )
        .unwrap();
        assert_eq!(span.start.format(), "2022-01-10 00:01:07");
        assert_eq!(span.end.format(), "2022-01-10 00:03:10");
        assert_eq!(span.duration_secs(), 123);
        // No DST mark; across midnight.
        let night = RecordingSpan::from_file_name(
            "Mp4Record/2022-03-06/RecM01_20220306_235930_000110_6732828_2821E4C.mp4",
        )
        .unwrap();
        assert_eq!(night.end.format(), "2022-03-07 00:01:10");
        assert_eq!(night.duration_secs(), 100);
        for other in [
            "/mnt/sda/clip.mp4",
            "RecM01_2022030_235930_000110.mp4",
            "RecM01_20221306_235930_000110.mp4",
            "RecM01_20220306_246000_000110.mp4",
            "RecM01_20220306_2359",
        ] {
            assert_eq!(RecordingSpan::from_file_name(other), None, "{other}");
        }
    }

    fn round_trip<T: BodyMessage + PartialEq + std::fmt::Debug>(message: T) {
        let encoded = message.encode();
        assert_eq!(T::parse(encoded.as_bytes()).unwrap(), message, "{encoded}");
    }

    #[test]
    fn encoding_matches_the_platform_byte_for_byte() {
        // What the platform's server (xml2js) writes for the handshake reply on encryptTCP.
        let expected = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<body>\n  <Param013>\n    <attr007>20000</attr007>\n  </Param013>\n</body>";
        assert_eq!(
            HandshakeReply {
                heartbeat_interval_ms: 20000
            }
            .encode(),
            expected
        );
        assert_eq!(
            XmlBody::new().encode(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<body/>"
        );
    }

    #[test]
    fn typed_round_trips() {
        round_trip(Handshake {
            uid: "95270000ABCDEFGH".into(),
            family: Some("battery".into()),
            model: Some("Argus 3 <Pro> & co".into()),
            firmware: Some("v3.0.0.1".into()),
            network_type: Some("4G".into()),
            carrier: Some("46000".into()),
        });
        round_trip(HandshakeReply {
            heartbeat_interval_ms: 20000,
        });
        round_trip(Heartbeat {
            no_reply: true,
            battery: Some(BatteryState {
                percent: Some(87),
                charging: Some("1".into()),
            }),
        });
        round_trip(Heartbeat::default());
        round_trip(HeartbeatReply::from_unix_millis(1_700_000_000_123));
        round_trip(Alarm {
            channel: 0,
            status: "1".into(),
            ai_type: "people".into(),
        });
        round_trip(Capabilities {
            channels: vec![
                ChannelCapabilities {
                    channel: 0,
                    stream_mask: 3,
                    ptz_type: 1,
                    ptz_control: 2,
                    wifi_mode: 0,
                },
                ChannelCapabilities {
                    channel: 1,
                    stream_mask: 7,
                    ..Default::default()
                },
            ],
        });
        round_trip(PreviewStart {
            channel: 0,
            stream_id: 42,
            stream_type: StreamType::Sub,
            mode: StreamMode::EncryptTcp,
            port: 61007,
        });
        round_trip(PreviewStop {
            channel: 0,
            stream_id: 42,
        });
        round_trip(ReplayStart {
            channel: 1,
            file: "/mnt/sda/Mp4Record/2022-01-10/RecS02_DST20220110_000107.mp4".into(),
            stream_id: 43,
            mode: StreamMode::Tls,
            port: 61006,
        });
        round_trip(ReplaySeek {
            channel: 1,
            stream_id: 43,
            seek_seq: 2048,
            time: LocalTime::parse("2022-12-31", "23:59:30")
                .unwrap()
                .plus_seconds(45),
        });
        assert_eq!(
            LocalTime::parse("2024-02-28", "23:00:00")
                .unwrap()
                .plus_seconds(2 * 86_400)
                .format(),
            "2024-03-01 23:00:00",
            "leap day"
        );
        round_trip(RecordFile {
            channel: 1,
            file: "a&b<c>.mp4".into(),
            stream_id: Some(43),
        });
        round_trip(RecordFile {
            channel: 0,
            file: "x.mp4".into(),
            stream_id: None,
        });
        let replay = ReplayStart {
            channel: 0,
            file: "f.mp4".into(),
            stream_id: 7,
            mode: StreamMode::EncryptTcp,
            port: 61007,
        }
        .encode();
        let replay: String = replay.lines().map(str::trim).collect();
        assert!(
            replay.contains(
                "<Param006><attr001><attr001>0</attr001><attr007>f.mp4</attr007>\
                 <attr004>7</attr004><attr009>encryptTCP</attr009><attr017>61007</attr017>\
                 </attr001></Param006>"
            ),
            "{replay}"
        );
        round_trip(KeyframeRequest {
            channel: 0,
            stream_type: StreamType::Main,
        });
        round_trip(SnapshotRequest {
            channel: 0,
            stream_type: StreamType::Extern,
        });
        round_trip(AlarmSwitch { enabled: true });
        round_trip(AlarmSwitch { enabled: false });
        round_trip(PirConfig {
            enabled: true,
            sensitivity: 50,
            reduce_false_alarm: false,
        });
        assert_eq!(
            HeartbeatReply::from_unix_millis(1_700_000_000_123).micros,
            123_000
        );
    }

    #[test]
    fn device_style_bodies_parse() {
        // Compact, with a space before `?>`, CDATA, unknown fields and a trailing NUL.
        let input = b"<?xml version=\"1.0\" encoding=\"UTF-8\" ?><body><Param013><attr001><![CDATA[95270000ABCDEFGH]]></attr001>\
<attr002>battery</attr002><attr099>new field</attr099><attr005> wifi </attr005></Param013><Param777/></body>\0";
        let handshake = Handshake::parse(input).unwrap();
        assert_eq!(handshake.uid, "95270000ABCDEFGH");
        assert!(handshake.is_battery());
        assert_eq!(handshake.network_type.as_deref(), Some("wifi"));
        assert_eq!(handshake.model, None);

        let caps = Capabilities::parse(
            b"<body><Param005><attr001><attr001>0</attr001><attr002><attr001>3</attr001></attr002></attr001>\
<attr001><attr001>1</attr001><attr002><attr001>1</attr001></attr002><attr003><attr001>2</attr001></attr003></attr001></Param005></body>",
        )
        .unwrap();
        assert_eq!(caps.channels.len(), 2);
        assert!(caps.channels[0].has_stream(StreamType::Sub));
        assert!(!caps.channels[1].has_stream(StreamType::Sub));
        assert_eq!(caps.channels[1].ptz_type, 2);

        let heartbeat =
            Heartbeat::parse(b"<body><Param001><attr004>1</attr004></Param001></body>").unwrap();
        assert!(heartbeat.no_reply && heartbeat.battery.is_none());
        let alarm = Alarm::parse(b"<body><Param014><attr001><attr001>0</attr001><attr002>start</attr002><attr003>md</attr003></attr001></Param014></body>").unwrap();
        assert_eq!(
            alarm,
            Alarm {
                channel: 0,
                status: "start".into(),
                ai_type: "md".into()
            }
        );
    }

    #[test]
    fn generic_body_accessors() {
        let body = XmlBody::parse(b"<body><Param019><attr003><attr001><attr001>a &amp; b</attr001></attr001><attr001><attr001>c</attr001></attr001></attr003></Param019></body>").unwrap();
        let list: Vec<_> = body
            .param("Param019")
            .unwrap()
            .child("attr003")
            .unwrap()
            .children_named("attr001")
            .map(|e| e.text_at(&["attr001"]).unwrap())
            .collect();
        assert_eq!(list, ["a & b", "c"]);
        assert_eq!(XmlBody::parse(body.encode().as_bytes()).unwrap(), body);
    }

    #[test]
    fn errors_are_precise() {
        assert!(matches!(
            Handshake::parse(b"<body><Param013/></body>"),
            Err(BodyError::Missing {
                path: "Param013/attr001"
            })
        ));
        assert!(matches!(
            PreviewStart::parse(b"<body><Param002><attr001>0</attr001><attr002>1</attr002><attr003>mainStream</attr003><attr004>UDP</attr004><attr008>1</attr008></Param002></body>"),
            Err(BodyError::InvalidValue { path: "Param002/attr004", .. })
        ));
        assert!(matches!(
            HandshakeReply::parse(b"<body><Param013><attr007>x</attr007></Param013></body>"),
            Err(BodyError::InvalidValue {
                path: "Param013/attr007",
                ..
            })
        ));
        assert!(matches!(
            XmlBody::parse(b"<notbody/>"),
            Err(BodyError::NotBody { .. })
        ));
        assert!(matches!(XmlBody::parse(b""), Err(BodyError::NoRoot)));
        assert!(matches!(
            XmlBody::parse(b"<body><a></b></body>"),
            Err(BodyError::Syntax { .. })
        ));
        assert!(matches!(
            XmlBody::parse(b"<body><a>"),
            Err(BodyError::Syntax { .. })
        ));
        assert!(matches!(
            XmlBody::parse(b"<body/><body/>"),
            Err(BodyError::OutsideRoot { offset: 7 })
        ));
        assert!(matches!(
            XmlBody::parse(b"<body>&bogus;</body>"),
            Err(BodyError::Syntax { .. })
        ));
        assert!(matches!(
            XmlBody::parse(b"<!DOCTYPE x [<!ENTITY a \"b\">]><body/>"),
            Err(BodyError::DocType { offset: 0 })
        ));
        assert!(matches!(
            XmlBody::parse(b"<body>\xff</body>"),
            Err(BodyError::InvalidUtf8 { offset: 6 })
        ));
        let deep = format!("{}{}", "<a>".repeat(20), "</a>".repeat(20));
        assert!(matches!(
            XmlBody::parse(deep.as_bytes()),
            Err(BodyError::TooDeep { limit: 16, .. })
        ));
        let many = format!("<body>{}</body>", "<a/>".repeat(3000));
        assert!(matches!(
            XmlBody::parse(many.as_bytes()),
            Err(BodyError::TooManyElements { limit: 2048, .. })
        ));
        let big = vec![b' '; 70_000];
        assert!(matches!(
            XmlBody::parse(&big),
            Err(BodyError::TooLarge { length: 70_000, .. })
        ));
    }

    #[test]
    fn preview_start_reply() {
        let mut reply = [0u8; 40];
        reply[17] = 25;
        reply[30] = 1;
        assert_eq!(
            PreviewStartReply::parse(&reply).unwrap(),
            PreviewStartReply {
                fps: 25,
                codec: VideoCodecId::H265
            }
        );
        let encoded = PreviewStartReply {
            fps: 15,
            codec: VideoCodecId::H264,
        }
        .encode();
        assert_eq!(PreviewStartReply::parse(&encoded).unwrap().fps, 15);
        assert_eq!(
            PreviewStartReply::parse(&reply[..30]),
            Err(BodyError::BinaryTooShort {
                length: 30,
                needed: 31
            })
        );
    }

    #[test]
    fn upgrade_start_and_the_binary_extension_are_the_platforms_bytes() {
        // What the platform's server (xml2js) writes for both.
        let start = UpgradeStart {
            file_name: "a.pak".into(),
            file_size: 1234,
            factory_reset: false,
        };
        assert_eq!(
            start.encode(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<body>\n  <Param012>\n    \
             <attr001>a.pak</attr001>\n    <attr002>1234</attr002>\n    <attr004>0</attr004>\n  \
             </Param012>\n</body>"
        );
        assert_eq!(UpgradeStart::parse(start.encode().as_bytes()), Ok(start));
        let reset = UpgradeStart::parse(
            b"<body><Param012><attr001>f.paks</attr001><attr002>9</attr002><attr004>1</attr004></Param012></body>",
        )
        .unwrap();
        assert!(reset.factory_reset);
        assert!(matches!(
            UpgradeStart::parse(b"<body><Param012><attr001>f</attr001><attr002>-1</attr002><attr004>1</attr004></Param012></body>"),
            Err(BodyError::InvalidValue { path: "Param012/attr002", .. })
        ));

        let extension = PacketExtension::BINARY_DATA.encode();
        assert_eq!(
            extension,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Extension>\n  <binaryData>1</binaryData>\n</Extension>"
        );
        assert_eq!(
            PacketExtension::parse(extension.as_bytes()),
            Ok(PacketExtension::BINARY_DATA)
        );
        assert_eq!(
            PacketExtension::parse(b"<Extension/>"),
            Ok(PacketExtension::default())
        );
        assert_eq!(
            PacketExtension::parse(b"<body><binaryData>1</binaryData></body>"),
            Err(BodyError::WrongRoot {
                expected: "Extension",
                found: "body".into()
            })
        );
        // A body is not an extension, nor the reverse.
        assert!(matches!(
            XmlBody::parse(extension.as_bytes()),
            Err(BodyError::NotBody { .. })
        ));
    }

    #[test]
    fn fuzz_entry_point_on_bodies() {
        let bodies = [
            Handshake { uid: "U".into(), family: Some(" x ".into()), ..Default::default() }.encode(),
            PacketExtension::BINARY_DATA.encode(),
            UpgradeStart { file_name: "f.pak".into(), file_size: 7, factory_reset: true }.encode(),
            Capabilities { channels: vec![ChannelCapabilities::default()] }.encode(),
            "<body><Param002><attr001>1</attr001><attr002>2</attr002><attr003>subStream</attr003><attr004>TLS</attr004><attr008>9</attr008></Param002></body>".to_owned(),
            "<body>text<Param011><attr001>x</attr001></Param011></body>".to_owned(),
        ];
        for body in &bodies {
            fuzzing::parse_body(body.as_bytes());
            for cut in 0..body.len() {
                fuzzing::parse_body(&body.as_bytes()[..cut]);
            }
        }
    }
}

/// Entry point of the fuzz target (`fuzz/fuzz_targets/rop_body.rs`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    fn typed_round_trip<T: BodyMessage + PartialEq + std::fmt::Debug>(body: &XmlBody) {
        if let Ok(message) = T::from_body(body) {
            let again = T::parse(message.encode().as_bytes());
            assert_eq!(again.as_ref(), Ok(&message));
        }
    }

    /// Arbitrary bytes as a body: never panics; every typed message read from it survives an
    /// encode-parse round trip; the binary preview reply too.
    pub fn parse_body(data: &[u8]) {
        let _ = PreviewStartReply::parse(data);
        if let Ok(extension) = PacketExtension::parse(data) {
            assert_eq!(
                PacketExtension::parse(extension.encode().as_bytes()),
                Ok(extension)
            );
        }
        let Ok(body) = XmlBody::parse(data) else {
            return;
        };
        let _ = XmlBody::parse(body.encode().as_bytes());
        typed_round_trip::<Handshake>(&body);
        typed_round_trip::<HandshakeReply>(&body);
        typed_round_trip::<Heartbeat>(&body);
        typed_round_trip::<HeartbeatReply>(&body);
        typed_round_trip::<Alarm>(&body);
        typed_round_trip::<Capabilities>(&body);
        typed_round_trip::<PreviewStart>(&body);
        typed_round_trip::<PreviewStop>(&body);
        typed_round_trip::<ReplayStart>(&body);
        typed_round_trip::<RecordFile>(&body);
        typed_round_trip::<ReplaySeek>(&body);
        typed_round_trip::<KeyframeRequest>(&body);
        typed_round_trip::<SnapshotRequest>(&body);
        typed_round_trip::<AlarmSwitch>(&body);
        typed_round_trip::<PirConfig>(&body);
        typed_round_trip::<UpgradeStart>(&body);
    }
}
