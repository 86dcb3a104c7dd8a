//! Client API routes that configure or query one device over its signalling link: the
//! platform's display name (104/105), PIR (212/213), PTZ (18), Wi-Fi (116/117/200), records
//! calendar and search (142/459), snapshot (109), battery state, and the live play session.
//! Each maps paths, methods, body and query names, the device's XML and the error symbols as
//! the platform's Core Server does, so a partner client sees the same answers.
//!
//! Request bodies are checked field by field (the platform answers `invalid_parameter` for
//! any mismatch; we say which field). Capability checks use the capabilities the device sent
//! after its handshake (199), as the platform's `SupportSignal` does; a device that never
//! sent them is asked anyway.

// Refusals are whole responses, built once per request and off any hot path.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use http::{header, HeaderValue, Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::api::ControlPlane;
use crate::device_api::{device_error, method_not_allowed};
use crate::devices::{ChannelPresence, DeviceDirectory, DeviceError, DevicePresence};
use crate::http_server::Request;
use crate::proto::body::{BodyMessage, LocalTime, RecordFile, StreamType, XmlBody, XmlElement};
use crate::proto::core_packet::cmd;
use crate::proto::http::{json_error, json_response, Response};
use crate::tokens::{StreamGrant, TokenOp};

/// The platform's page size of a record search (`MAX_REPLAY_COUNT`).
pub const RECORDS_PAGE: usize = 40;
/// How long a Wi-Fi scan or test may take on the device (the platform allows 30 s; we stay
/// under the directory's 30 s ask timeout so the device's silence is `cmd_timeout`).
pub const WIFI_DEVICE_TIMEOUT: Duration = Duration::from_secs(25);

/// The methods each route of this module answers (its `Allow` header), `None` for a path
/// that is none of them. The router checks the method against it before anything else about
/// the request (the UID, the query, the body), as any HTTP router does: a wrong method is 405
/// whatever else is wrong with the request.
pub(crate) fn control_route_allow(rest: &[&str]) -> Option<&'static str> {
    Some(match rest {
        ["settings", "general-config" | "pir-config" | "wifi-config"] => "GET, HEAD, PUT",
        ["wifi", "test" | "scan-task"]
        | ["live", "play-session"]
        | ["records", "play-session"]
        | ["upgrade-session"] => "POST",
        ["wifi", "scan", _]
        | ["upgrade-session", _]
        | ["states", "battery"]
        | ["records", "calendar"]
        | ["records", "calendar", ""]
        | ["records"]
        | ["snap", "snapshot.jpg"] => "GET, HEAD",
        // The platform serves POST for rotate; its own documentation's example sends PATCH.
        ["ptz", "zoom" | "focus"] => "PATCH",
        ["ptz", "rotate"] => "PATCH, POST",
        _ => return None,
    })
}

impl ControlPlane {
    /// Answers `/v1.0/devices/{uid}/{rest…}` for the routes of this module; `None` when the
    /// path is not one of them ([`control_route_allow`]).
    pub(crate) async fn device_control_routes(
        &self,
        uid: &str,
        rest: &[&str],
        req: &Request,
    ) -> Option<Response> {
        let allow = control_route_allow(rest)?;
        let method = req.method();
        let get = *method == Method::GET || *method == Method::HEAD;
        let directory = self.devices.as_ref();
        Some(match rest {
            ["settings", "general-config"] => match *method {
                _ if get => with_directory(directory, |d| get_general_config(d, uid)).await,
                Method::PUT => match device_name(req) {
                    Ok(name) => {
                        with_directory(directory, |d| set_general_config(d, uid, name)).await
                    }
                    Err(response) => response,
                },
                _ => method_not_allowed(allow),
            },
            ["settings", "pir-config"] => match *method {
                _ if get => with_directory(directory, |d| get_pir(d, uid)).await,
                Method::PUT => match pir_body(req) {
                    Ok(body) => {
                        with_directory(directory, |d| {
                            set_command(d, uid, cmd::PIR_CONFIG_SET, body)
                        })
                        .await
                    }
                    Err(response) => response,
                },
                _ => method_not_allowed(allow),
            },
            ["settings", "wifi-config"] => match *method {
                _ if get => match self.wifi_supported(uid).await {
                    Err(response) => response,
                    Ok(()) => with_directory(directory, |d| get_wifi(d, uid)).await,
                },
                Method::PUT => match wifi_body(req) {
                    Err(response) => response,
                    Ok(body) => match self.wifi_supported(uid).await {
                        Err(response) => response,
                        Ok(()) => {
                            with_directory(directory, |d| set_command(d, uid, cmd::WIFI_SET, body))
                                .await
                        }
                    },
                },
                _ => method_not_allowed(allow),
            },
            ["wifi", "test"] => match *method {
                Method::POST => match wifi_body(req) {
                    Err(response) => response,
                    Ok(body) => match self.wifi_supported(uid).await {
                        Err(response) => response,
                        Ok(()) => with_directory(directory, |d| test_wifi(d, uid, body)).await,
                    },
                },
                _ => method_not_allowed(allow),
            },
            ["wifi", "scan-task"] => match *method {
                Method::POST => match self.wifi_supported(uid).await {
                    Err(response) => response,
                    Ok(()) => match directory {
                        None => device_error(&DeviceError::Offline),
                        Some(d) => {
                            json_response(StatusCode::OK, &self.wifi_scans.start(d.clone(), uid))
                        }
                    },
                },
                _ => method_not_allowed(allow),
            },
            ["wifi", "scan", session_id] => match *method {
                _ if get => match self.wifi_scans.result(uid, session_id) {
                    Some(result) => json_response(StatusCode::OK, &result),
                    None => json_error(
                        StatusCode::NOT_FOUND,
                        "session_not_found",
                        "The session is not found.",
                    ),
                },
                _ => method_not_allowed(allow),
            },
            ["ptz", action @ ("zoom" | "focus")] => match *method {
                Method::PATCH => match ptz_lens_body(req, action) {
                    Err(response) => response,
                    Ok((channel, body)) => {
                        match self.ptz_supported(uid, channel, action, None).await {
                            Err(response) => response,
                            Ok(()) => {
                                with_directory(directory, |d| set_command(d, uid, cmd::PTZ, body))
                                    .await
                            }
                        }
                    }
                },
                _ => method_not_allowed(allow),
            },
            // The platform serves POST; its own documentation's example sends PATCH.
            ["ptz", "rotate"] => match *method {
                Method::POST | Method::PATCH => match ptz_rotate_body(req) {
                    Err(response) => response,
                    Ok((channel, direction, body)) => {
                        match self
                            .ptz_supported(uid, channel, "rotate", Some(direction))
                            .await
                        {
                            Err(response) => response,
                            Ok(()) => {
                                with_directory(directory, |d| set_command(d, uid, cmd::PTZ, body))
                                    .await
                            }
                        }
                    }
                },
                _ => method_not_allowed(allow),
            },
            ["states", "battery"] => match *method {
                _ if get => self.battery(uid).await,
                _ => method_not_allowed(allow),
            },
            ["live", "play-session"] => match *method {
                Method::POST => self.live_play_session(uid, req).await,
                _ => method_not_allowed(allow),
            },
            ["records", "play-session"] => match *method {
                Method::POST => self.record_play_session(uid, req).await,
                _ => method_not_allowed(allow),
            },
            ["records", "calendar"] | ["records", "calendar", ""] => match *method {
                _ if get => match calendar_query(req) {
                    Err(response) => response,
                    Ok(query) => {
                        with_directory(directory, |d| records_calendar(d, uid, query)).await
                    }
                },
                _ => method_not_allowed(allow),
            },
            ["records"] => match *method {
                _ if get => match records_query(req) {
                    Err(response) => response,
                    Ok(query) => with_directory(directory, |d| records_list(d, uid, query)).await,
                },
                _ => method_not_allowed(allow),
            },
            ["upgrade-session"] => match *method {
                Method::POST => self.post_upgrade_session(uid, req).await,
                _ => method_not_allowed(allow),
            },
            ["upgrade-session", session_id] => match *method {
                _ if get => self.get_upgrade_session(uid, session_id),
                _ => method_not_allowed(allow),
            },
            ["snap", "snapshot.jpg"] => match *method {
                _ if get => match snapshot_query(req) {
                    Err(response) => response,
                    Ok((channel, stream)) => match directory {
                        None => snapshot_error(&DeviceError::Offline),
                        Some(d) => match d.snapshot(uid, channel, stream).await {
                            Ok(jpeg) => {
                                let mut response = http::Response::new(jpeg.to_vec());
                                response.headers_mut().insert(
                                    header::CONTENT_TYPE,
                                    HeaderValue::from_static("image/jpeg"),
                                );
                                response
                            }
                            Err(e) => snapshot_error(&e),
                        },
                    },
                },
                _ => method_not_allowed(allow),
            },
            _ => return None,
        })
    }

    async fn device_presence(&self, uid: &str) -> Result<DevicePresence, Response> {
        let Some(directory) = &self.devices else {
            return Err(device_error(&DeviceError::Offline));
        };
        match directory.presence(uid).await {
            Ok(Some(presence)) => Ok(presence),
            Ok(None) => Err(device_error(&DeviceError::Offline)),
            Err(e) => Err(device_error(&e)),
        }
    }

    /// The platform serves Wi-Fi routes only to devices whose channel 0 reports a Wi-Fi
    /// mode of 1 (2.4 GHz) or 2 (5 GHz).
    async fn wifi_supported(&self, uid: &str) -> Result<(), Response> {
        let presence = self.device_presence(uid).await?;
        match presence.capabilities.as_deref().map(|c| channel_of(c, 0)) {
            Some(Some(channel)) if matches!(channel.wifi_mode, 1 | 2) => Ok(()),
            Some(_) => Err(cmd_not_support()),
            None => Ok(()),
        }
    }

    /// PTZ capability checks of the platform: PTZ type 2/4/5 zoom, 1/2/4/5 focus, 2-5 pan and
    /// tilt; control bit 2 set means four directions only.
    async fn ptz_supported(
        &self,
        uid: &str,
        channel: u32,
        action: &str,
        direction: Option<&str>,
    ) -> Result<(), Response> {
        let presence = self.device_presence(uid).await?;
        let Some(capabilities) = presence.capabilities.as_deref() else {
            return Ok(());
        };
        let Some(channel) = channel_of(capabilities, channel) else {
            return Err(channel_not_found());
        };
        let t = channel.ptz_type;
        let supported = match action {
            "zoom" => matches!(t, 2 | 4 | 5),
            "focus" => matches!(t, 1 | 2 | 4 | 5),
            _ => matches!(t, 2..=5),
        };
        if !supported {
            return Err(cmd_not_support());
        }
        let diagonal = matches!(
            direction,
            Some("leftUp" | "leftDown" | "rightUp" | "rightDown")
        );
        if diagonal && channel.ptz_control & 2 != 0 {
            return Err(json_error(
                StatusCode::BAD_REQUEST,
                "direction_not_support",
                "The direction is not support for the device.",
            ));
        }
        Ok(())
    }

    /// Battery state from the latest keep-alive heartbeat (no device request), as the
    /// platform answers it.
    async fn battery(&self, uid: &str) -> Response {
        let presence = match self.device_presence(uid).await {
            Ok(p) => p,
            Err(response) => return response,
        };
        let Some(percent) = presence.battery_percent else {
            return cmd_not_support();
        };
        let charge_status = match presence.charging.as_deref().map(str::trim) {
            Some("1") => Value::from("charging"),
            Some("2") => Value::from("completed"),
            Some("0") | None => Value::from("none"),
            // The platform maps only 0-2 and leaves anything else out of the JSON.
            Some(_) => Value::Null,
        };
        let mut body = Map::new();
        body.insert("percent".into(), percent.into());
        if !charge_status.is_null() {
            body.insert("chargeStatus".into(), charge_status);
        }
        json_response(StatusCode::OK, &body)
    }

    /// `{channel, streamType}` -> `{playURL, expiredIn}`: a signed play URL on our RTSP port.
    /// The stream starts when a player DESCRIBEs the URL, not here.
    /// The play URL of a recording's replay: the device is asked whether it has the file
    /// (record info 13); the URL's token names the file, and its DESCRIBE makes the owner shard
    /// send replay start 5.
    async fn record_play_session(&self, uid: &str, req: &Request) -> Response {
        let object = match body_object(req) {
            Ok(o) => o,
            Err(response) => return response,
        };
        let channel = match uint_field(&object, "channel", 0, 31) {
            Ok(c) => c,
            Err(response) => return response,
        };
        let file = match object.get("fileName").and_then(Value::as_str) {
            Some(f) if (1..=255).contains(&f.len()) && !f.chars().any(char::is_control) => f,
            _ => return invalid("fileName", "a recording's file name of 1 to 255 bytes"),
        };
        let Some(directory) = &self.devices else {
            return device_error(&DeviceError::Offline);
        };
        let info = RecordFile {
            channel,
            file: file.to_owned(),
            stream_id: None,
        };
        let found = match directory
            .command(uid, cmd::RECORD_INFO, Some(info.to_body()), None)
            .await
        {
            Ok(reply) => reply.text_at(&["Param006", "attr001", "attr001"]).is_some(),
            Err(e) => return device_error(&e),
        };
        if !found {
            return json_error(
                StatusCode::NOT_FOUND,
                "file_not_found",
                "The file is not been found.",
            );
        }
        let ttl = self.config.play_url_ttl_secs;
        let grant = StreamGrant {
            uid: uid.to_owned(),
            channel: u8::try_from(channel).unwrap_or(0),
            stream_type: "replay".to_owned(),
            op: TokenOp::Play,
            exp: crate::clock::unix_now() + ttl,
            file: Some(file.to_owned()),
        };
        let port = self.advertised.rtsp_or(self.config.listen.rtsp.port());
        let url = self
            .tokens
            .sign_url("rtsp", &self.config.hostname, port, &grant);
        json_response(StatusCode::OK, &json!({ "playURL": url, "expiredIn": ttl }))
    }

    async fn live_play_session(&self, uid: &str, req: &Request) -> Response {
        let object = match body_object(req) {
            Ok(o) => o,
            Err(response) => return response,
        };
        let channel = match uint_field(&object, "channel", 0, 31) {
            Ok(c) => c,
            Err(response) => return response,
        };
        let stream = match stream_type_field(&object, "streamType") {
            Ok(s) => s,
            Err(response) => return response,
        };
        // Extension (not in the platform's API): `"tls": true` asks for an rtsps:// URL on the
        // RTSPS port; absent or false keeps the platform's rtsp://.
        let tls = match object.get("tls") {
            None | Some(Value::Null) => false,
            Some(_) => match bool_field(&object, "tls") {
                Ok(tls) => tls,
                Err(response) => return response,
            },
        };
        if self.sources.contains(uid) {
            // A pull source publishes one stream: channel 0, mainStream.
            if channel != 0 {
                return channel_not_found();
            }
            if stream.as_str() != "mainStream" {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "stream_type_not_support",
                    "The stream type is not suport on this device.",
                );
            }
            return self.sign_play_url(uid, 0, stream.as_str(), tls);
        }
        let presence = match self.device_presence(uid).await {
            Ok(p) => p,
            Err(response) => return response,
        };
        if let Some(capabilities) = presence.capabilities.as_deref() {
            let Some(offered) = channel_of(capabilities, channel) else {
                return channel_not_found();
            };
            if !offered.streams.contains(&stream.as_str()) {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "stream_type_not_support",
                    "The stream type is not suport on this device.",
                );
            }
        }
        self.sign_play_url(
            uid,
            u8::try_from(channel).unwrap_or(0),
            stream.as_str(),
            tls,
        )
    }

    /// `{playURL, expiredIn}` for a stream, on the RTSP or RTSPS port.
    fn sign_play_url(&self, uid: &str, channel: u8, stream_type: &str, tls: bool) -> Response {
        let ttl = self.config.play_url_ttl_secs;
        let grant = StreamGrant {
            uid: uid.to_owned(),
            channel,
            stream_type: stream_type.to_owned(),
            op: TokenOp::Play,
            exp: crate::clock::unix_now() + ttl,
            file: None,
        };
        let (scheme, port) = if tls {
            (
                "rtsps",
                self.advertised.rtsps_or(self.config.listen.rtsps.port()),
            )
        } else {
            (
                "rtsp",
                self.advertised.rtsp_or(self.config.listen.rtsp.port()),
            )
        };
        let url = self
            .tokens
            .sign_url(scheme, &self.config.hostname, port, &grant);
        json_response(StatusCode::OK, &json!({ "playURL": url, "expiredIn": ttl }))
    }
}

async fn with_directory<'a, F, Fut>(directory: Option<&'a DeviceDirectory>, f: F) -> Response
where
    F: FnOnce(&'a DeviceDirectory) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    match directory {
        Some(d) => f(d).await,
        None => device_error(&DeviceError::Offline),
    }
}

fn channel_of(capabilities: &[ChannelPresence], channel: u32) -> Option<&ChannelPresence> {
    capabilities.iter().find(|c| c.channel == channel)
}

fn ok_message() -> Response {
    json_response(StatusCode::OK, &json!({ "message": "ok" }))
}

fn cmd_not_support() -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "cmd_not_support",
        "The cmd is not support for the device.",
    )
}

fn channel_not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "device_channel_not_found",
        "The channel of the device is not found.",
    )
}

fn invalid(field: &str, expected: &str) -> Response {
    json_error(
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        &format!("{field} must be {expected}"),
    )
}

fn bad_reply(command: u32, what: &str) -> Response {
    device_error(&DeviceError::BadReply(format!(
        "reply to command {command} lacks {what}"
    )))
}

/// The platform's snapshot route answers every failure as `snap_error` (400); a second
/// snapshot while one is running is `duplicate_snap`.
fn snapshot_error(e: &DeviceError) -> Response {
    match e {
        DeviceError::Busy => json_error(
            StatusCode::BAD_REQUEST,
            "duplicate_snap",
            "A snapshot of this device is already being taken.",
        ),
        DeviceError::Unavailable => device_error(e),
        other => json_error(
            StatusCode::BAD_REQUEST,
            "snap_error",
            &format!("The snapshot failed: {other}"),
        ),
    }
}

// ---- request bodies and queries -------------------------------------------------------

/// The request body as a JSON object.
pub(crate) fn body_object(req: &Request) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "the body must be a JSON object",
        )),
        Err(e) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            &format!("invalid JSON body: {e}"),
        )),
    }
}

pub(crate) fn uint_field(
    object: &Map<String, Value>,
    name: &str,
    min: u64,
    max: u64,
) -> Result<u32, Response> {
    object
        .get(name)
        .and_then(Value::as_u64)
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid(name, &format!("an integer from {min} to {max}")))
}

fn bool_field(object: &Map<String, Value>, name: &str) -> Result<bool, Response> {
    object
        .get(name)
        .and_then(Value::as_bool)
        .ok_or_else(|| invalid(name, "true or false"))
}

fn one_of<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    allowed: &[&str],
) -> Result<&'a str, Response> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|v| allowed.contains(v))
        .ok_or_else(|| invalid(name, &format!("one of {}", allowed.join(", "))))
}

fn stream_type_field(object: &Map<String, Value>, name: &str) -> Result<StreamType, Response> {
    let value = one_of(object, name, &["mainStream", "subStream", "externStream"])?;
    StreamType::from_name(value).ok_or_else(|| invalid(name, "a stream type"))
}

/// The platform's display-name rule: 1-31 of `-a-zA-Z0-9 `, no leading or trailing space.
fn device_name(req: &Request) -> Result<String, Response> {
    let object = body_object(req)?;
    let name = object.get("deviceName").and_then(Value::as_str);
    match name {
        Some(n)
            if (1..=31).contains(&n.len())
                && !n.starts_with(' ')
                && !n.ends_with(' ')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b' ') =>
        {
            Ok(n.to_owned())
        }
        _ => Err(invalid(
            "deviceName",
            "1-31 letters, digits, hyphens or spaces, not starting or ending with a space",
        )),
    }
}

/// PIR set 213: the API's sensitivity 0-100 is the device's 101 - value (as the platform).
fn pir_body(req: &Request) -> Result<XmlBody, Response> {
    let object = body_object(req)?;
    let enabled = bool_field(&object, "enabled")?;
    let sensitivity = uint_field(&object, "sensitivity", 0, 100)?;
    let reduce = bool_field(&object, "reduceMistakes")?;
    Ok(XmlBody::new().with(
        XmlElement::new("Param016")
            .with_leaf("attr002", u8::from(enabled))
            .with_leaf("attr003", 101 - sensitivity)
            .with_leaf("attr001", u8::from(reduce)),
    ))
}

fn wifi_text_ok(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_!@#$%^&*()-=+[]{}|;:'\",./<>?".contains(&b))
}

/// Wi-Fi set 117 / test 200: `Param019{attr002 station, attr004 ssid, attr005 key,
/// attr007 country}`.
fn wifi_body(req: &Request) -> Result<XmlBody, Response> {
    let object = body_object(req)?;
    let text = |name: &str, min: usize| {
        object
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| (min..=127).contains(&v.len()) && wifi_text_ok(v))
            .ok_or_else(|| {
                invalid(
                    name,
                    &format!("{min}-127 letters, digits or punctuation (no spaces)"),
                )
            })
    };
    let ssid = text("ssid", 1)?;
    let key = text("key", 0)?;
    let country = object
        .get("countryCode")
        .and_then(Value::as_str)
        .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        .ok_or_else(|| invalid("countryCode", "two capital letters"))?;
    Ok(XmlBody::new().with(
        XmlElement::new("Param019")
            .with_leaf("attr002", "station")
            .with_leaf("attr004", ssid)
            .with_leaf("attr005", key)
            .with_leaf("attr007", country),
    ))
}

fn ptz_body(channel: u32, command: &str, speed: Option<u32>) -> XmlBody {
    let mut param = XmlElement::new("Param017")
        .with_leaf("attr001", channel)
        .with_leaf("attr002", command);
    if let Some(speed) = speed {
        param = param.with_leaf("speed", speed);
    }
    XmlBody::new().with(param)
}

/// Zoom/focus: `{channel, action: inc|dec}` -> PTZ 18 `zoomInc`/`zoomDec`/`focusInc`/`focusDec`.
fn ptz_lens_body(req: &Request, what: &str) -> Result<(u32, XmlBody), Response> {
    let object = body_object(req)?;
    let channel = uint_field(&object, "channel", 0, 31)?;
    let action = one_of(&object, "action", &["inc", "dec"])?;
    let command = match (what, action) {
        ("zoom", "inc") => "zoomInc",
        ("zoom", _) => "zoomDec",
        (_, "inc") => "focusInc",
        _ => "focusDec",
    };
    Ok((channel, ptz_body(channel, command, None)))
}

const DIRECTIONS: &[&str] = &[
    "none",
    "left",
    "right",
    "up",
    "down",
    "leftUp",
    "leftDown",
    "rightUp",
    "rightDown",
];

/// Rotate: `{channel, direction, speed 1-64}` -> PTZ 18 with the direction (`none` = `stop`).
fn ptz_rotate_body(req: &Request) -> Result<(u32, &'static str, XmlBody), Response> {
    let object = body_object(req)?;
    let channel = uint_field(&object, "channel", 0, 31)?;
    let given = one_of(&object, "direction", DIRECTIONS)?;
    let direction = DIRECTIONS
        .iter()
        .copied()
        .find(|d| *d == given)
        .unwrap_or("none");
    let speed = uint_field(&object, "speed", 1, 64)?;
    let command = if direction == "none" {
        "stop"
    } else {
        direction
    };
    Ok((channel, direction, ptz_body(channel, command, Some(speed))))
}

fn query(req: &Request) -> Vec<(String, String)> {
    req.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn query_field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn query_uint(pairs: &[(String, String)], name: &str, min: u32, max: u32) -> Result<u32, Response> {
    query_field(pairs, name)
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(name, &format!("an integer from {min} to {max}")))
}

fn snapshot_query(req: &Request) -> Result<(u32, StreamType), Response> {
    let pairs = query(req);
    let stream = query_field(&pairs, "stream_type")
        .and_then(StreamType::from_name)
        .ok_or_else(|| invalid("stream_type", "one of mainStream, subStream, externStream"))?;
    let channel = query_uint(&pairs, "channel", 0, 31)?;
    Ok((channel, stream))
}

#[derive(Debug)]
struct CalendarQuery {
    channel: u32,
    start: LocalTime,
    end: LocalTime,
}

fn calendar_query(req: &Request) -> Result<CalendarQuery, Response> {
    let pairs = query(req);
    let year = query_uint(&pairs, "year", 2000, 3000)?;
    let month = query_uint(&pairs, "month", 1, 12)?;
    let channel = query_uint(&pairs, "channel", 0, 31)?;
    let first = LocalTime::parse(&format!("{year}-{month}-1"), "00:00:00")
        .ok_or_else(|| invalid("year", "a valid year"))?;
    let last_day = first.date.month().length(first.date.year());
    let last = LocalTime::parse(&format!("{year}-{month}-{last_day}"), "23:59:59")
        .ok_or_else(|| invalid("month", "a valid month"))?;
    Ok(CalendarQuery {
        channel,
        start: first,
        end: last,
    })
}

/// Records calendar 142: which days of the month have recordings (`date` 1-31).
async fn records_calendar(d: &DeviceDirectory, uid: &str, q: CalendarQuery) -> Response {
    let body = XmlBody::new().with(
        XmlElement::new("Param009")
            .with(q.start.element("attr001"))
            .with(q.end.element("attr002"))
            .with(
                XmlElement::new("attr003").with(
                    XmlElement::new("attr001")
                        .with_leaf("attr003", q.channel)
                        .with_leaf("attr001", q.channel),
                ),
            ),
    );
    let reply = match d.command(uid, cmd::RECORD_CALENDAR, Some(body), None).await {
        Ok(reply) => reply,
        Err(e) => return device_error(&e),
    };
    let mut items = Vec::new();
    if let Some(entry) = reply.root.at(&["Param009", "attr003", "attr001"]) {
        let channel = entry
            .text_at(&["attr001"])
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(q.channel);
        if let Some(days) = entry.child("attr002") {
            for day in days.children_named("attr001") {
                if let Some(index) = day
                    .text_at(&["attr001"])
                    .and_then(|v| v.parse::<u32>().ok())
                {
                    items.push(json!({ "channel": channel, "date": index + 1 }));
                }
            }
        }
    }
    json_response(
        StatusCode::OK,
        &json!({ "totalRows": items.len(), "items": items }),
    )
}

#[derive(Debug)]
struct RecordsQuery {
    channel: u32,
    stream: &'static str,
    start: LocalTime,
    end: LocalTime,
    /// Rows on earlier pages (from the token).
    rows: u64,
    /// The token's next page starts after `end`: the listing is over (the last page was full
    /// and its last file ended at the end of the span, e.g. 23:59:59).
    past_end: bool,
}

/// The platform's cursor: base64url JSON `{nextTime, rows}`.
fn records_query(req: &Request) -> Result<RecordsQuery, Response> {
    use base64::Engine as _;
    let pairs = query(req);
    let channel = query_uint(&pairs, "channel", 0, 31)?;
    let stream = match query_field(&pairs, "stream_type") {
        Some("mainStream") => "mainStream",
        Some("subStream") => "subStream",
        _ => return Err(invalid("stream_type", "mainStream or subStream")),
    };
    let date = query_field(&pairs, "record_date")
        .filter(|v| (1..=255).contains(&v.len()))
        .ok_or_else(|| invalid("record_date", "a date (YYYY-MM-DD)"))?;
    let clock = |name: &str| {
        query_field(&pairs, name)
            .filter(|v| (1..=16).contains(&v.len()))
            .and_then(|v| LocalTime::parse(date, v))
            .ok_or_else(|| invalid(name, "a time (HH:MM:SS) on a valid record_date"))
    };
    let mut start = clock("start_at")?;
    let end = clock("end_at")?;
    let mut rows = 0;
    let mut past_end = false;
    if let Some(token) = query_field(&pairs, "next_token") {
        let content = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .ok()
            .filter(|_| (1..=255).contains(&token.len()))
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok());
        let next = content.as_ref().and_then(|c| {
            let time = LocalTime::parse_joined(c.get("nextTime")?.as_str()?)?;
            Some((time, c.get("rows")?.as_u64()?))
        });
        let Some((time, previous)) = next else {
            return Err(invalid("next_token", "a token from a previous answer"));
        };
        start = time;
        rows = previous;
        past_end = start > end;
    } else if start >= end {
        return Err(invalid("start_at", "before end_at"));
    }
    Ok(RecordsQuery {
        channel,
        stream,
        start,
        end,
        rows,
        past_end,
    })
}

/// Record search 459: up to 40 files per page; a full page carries `nextToken`, whose next
/// page starts one second after that page's last file. A token past the span's end gives the
/// empty last page without asking the device.
async fn records_list(d: &DeviceDirectory, uid: &str, q: RecordsQuery) -> Response {
    use base64::Engine as _;
    if q.past_end {
        return json_response(StatusCode::OK, &json!({ "totalRows": q.rows, "items": [] }));
    }
    let body = XmlBody::new().with(
        XmlElement::new("Param006").with(
            XmlElement::new("attr001")
                .with_leaf("attr001", q.channel)
                .with_leaf("attr002", q.stream)
                .with_leaf("attr008", "all")
                .with(q.start.element("attr012"))
                .with(q.end.element("attr013")),
        ),
    );
    let reply = match d.command(uid, cmd::RECORD_SEARCH, Some(body), None).await {
        Ok(reply) => reply,
        Err(e) => return device_error(&e),
    };
    let mut items = Vec::new();
    let mut last_end = None;
    if let Some(files) = reply.param("Param006") {
        for file in files.children_named("attr001").take(RECORDS_PAGE) {
            let (Some(start), Some(end)) = (
                file.at(&["attr012"]).and_then(LocalTime::from_element),
                file.at(&["attr013"]).and_then(LocalTime::from_element),
            ) else {
                return bad_reply(cmd::RECORD_SEARCH, "valid start and end times");
            };
            last_end = Some(end);
            items.push(json!({
                "channel": file.text_at(&["attr001"]).and_then(|c| c.parse::<u32>().ok()).unwrap_or(q.channel),
                "fileName": file.text_at(&["attr007"]).unwrap_or_default(),
                "startTime": start.format(),
                "endTime": end.format(),
                "streamType": file.text_at(&["attr002"]).unwrap_or(q.stream),
            }));
        }
    }
    let total = reply
        .text_at(&["attr002"])
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(items.len() as u64)
        + q.rows;
    let mut answer = json!({ "totalRows": total, "items": items });
    if items_len(&answer) == RECORDS_PAGE {
        if let Some(end) = last_end {
            let token = json!({
                "nextTime": end.plus_one_second().format(),
                "rows": q.rows + RECORDS_PAGE as u64,
            });
            answer["nextToken"] = Value::from(
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string()),
            );
        }
    }
    json_response(StatusCode::OK, &answer)
}

fn items_len(answer: &Value) -> usize {
    answer["items"].as_array().map_or(0, Vec::len)
}

// ---- device commands ------------------------------------------------------------------

async fn set_command(d: &DeviceDirectory, uid: &str, command: u32, body: XmlBody) -> Response {
    match d.command(uid, command, Some(body), None).await {
        Ok(_) => ok_message(),
        Err(e) => device_error(&e),
    }
}

/// General config 104: the display name is `Param007.attr012`.
async fn get_general_config(d: &DeviceDirectory, uid: &str) -> Response {
    match d.command(uid, cmd::GENERAL_CONFIG_GET, None, None).await {
        Ok(reply) => match reply.text_at(&["Param007", "attr012"]) {
            Some(name) => json_response(StatusCode::OK, &json!({ "deviceName": name })),
            None => bad_reply(cmd::GENERAL_CONFIG_GET, "Param007/attr012"),
        },
        Err(e) => device_error(&e),
    }
}

async fn set_general_config(d: &DeviceDirectory, uid: &str, name: String) -> Response {
    let body = XmlBody::new().with(XmlElement::new("Param007").with_leaf("attr012", name));
    set_command(d, uid, cmd::GENERAL_CONFIG_SET, body).await
}

/// PIR 212: `Param016{attr001 reduce false alarms, attr002 enabled, attr003 101 - sensitivity}`.
async fn get_pir(d: &DeviceDirectory, uid: &str) -> Response {
    let reply = match d.command(uid, cmd::PIR_CONFIG_GET, None, None).await {
        Ok(reply) => reply,
        Err(e) => return device_error(&e),
    };
    let field = |name| reply.text_at(&["Param016", name]);
    let (Some(reduce), Some(enabled), Some(sensitivity)) = (
        field("attr001"),
        field("attr002"),
        field("attr003").and_then(|s| s.parse::<i64>().ok()),
    ) else {
        return bad_reply(cmd::PIR_CONFIG_GET, "Param016/attr001-003");
    };
    json_response(
        StatusCode::OK,
        &json!({
            "enabled": enabled != "0",
            "sensitivity": 101 - sensitivity,
            "reduceMistakes": reduce != "0",
        }),
    )
}

/// Wi-Fi get 116 with `Param019.attr008 = 1` (the current configuration).
async fn get_wifi(d: &DeviceDirectory, uid: &str) -> Response {
    let body = XmlBody::new().with(XmlElement::new("Param019").with_leaf("attr008", 1));
    let reply = match d.command(uid, cmd::WIFI_GET, Some(body), None).await {
        Ok(reply) => reply,
        Err(e) => return device_error(&e),
    };
    let field = |name| reply.text_at(&["Param019", name]);
    let Some(ssid) = field("attr004") else {
        return bad_reply(cmd::WIFI_GET, "Param019/attr004");
    };
    json_response(
        StatusCode::OK,
        &json!({
            "ssid": ssid,
            "channel": field("attr006").and_then(|c| c.parse::<i64>().ok()),
            "countryCode": field("attr007"),
        }),
    )
}

/// Wi-Fi test 200: the device refusing is `{"status":"error"}`, silence is `cmd_timeout`.
async fn test_wifi(d: &DeviceDirectory, uid: &str, body: XmlBody) -> Response {
    match d
        .command(uid, cmd::WIFI_TEST, Some(body), Some(WIFI_DEVICE_TIMEOUT))
        .await
    {
        Ok(_) => json_response(StatusCode::OK, &json!({ "status": "success" })),
        Err(
            e @ (DeviceError::Timeout
            | DeviceError::Offline
            | DeviceError::Busy
            | DeviceError::Unavailable),
        ) => device_error(&e),
        Err(_) => json_response(StatusCode::OK, &json!({ "status": "error" })),
    }
}

/// Reads a scan reply 116 (`Param019.attr003.attr001[] {attr001 ssid, attr002 signal,
/// attr003 0 none / 1 auto}`), skipping entries without a name, at most 64.
pub(crate) fn scanned_networks(reply: &XmlBody) -> Vec<Value> {
    let Some(list) = reply.root.at(&["Param019", "attr003"]) else {
        return Vec::new();
    };
    list.children_named("attr001")
        .filter_map(|item| {
            let ssid = item.text_at(&["attr001"]).filter(|s| !s.is_empty())?;
            let signal = item
                .text_at(&["attr002"])
                .and_then(|s| s.parse::<i64>().ok());
            let mode = match item.text_at(&["attr003"]) {
                Some("0") => "none",
                _ => "auto",
            };
            Some(json!({ "ssid": ssid, "signal": signal, "encryptMode": mode }))
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_parse_format_and_roll_over() {
        let t = LocalTime::parse("2022-01-01", "23:59:59").unwrap();
        assert_eq!(t.format(), "2022-01-01 23:59:59");
        assert_eq!(t.plus_one_second().format(), "2022-01-02 00:00:00");
        assert_eq!(
            LocalTime::parse_joined("2022-12-31 01:02:03")
                .unwrap()
                .format(),
            "2022-12-31 01:02:03"
        );
        assert!(LocalTime::parse("2022-02-30", "00:00:00").is_none());
        assert!(LocalTime::parse("2022-01-01", "24:00:00").is_none());
        let element = t.element("attr012");
        assert_eq!(LocalTime::from_element(&element), Some(t));
    }

    #[test]
    fn scan_reply_skips_unnamed_networks() {
        let reply = XmlBody::parse(
            b"<body><Param019><attr003><attr001><attr001>A</attr001><attr002>-40</attr002>\
              <attr003>0</attr003></attr001><attr001><attr001/><attr002>-80</attr002></attr001>\
              </attr003></Param019></body>",
        )
        .unwrap();
        assert_eq!(
            scanned_networks(&reply),
            vec![json!({ "ssid": "A", "signal": -40, "encryptMode": "none" })]
        );
    }

    #[test]
    fn openapi_document_is_openapi_3() {
        let doc: Value = serde_json::from_str(crate::device_api::OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1.0/devices/{uid}/live/play-session",
            "/v1.0/devices/{uid}/snap/snapshot.jpg",
            "/v1.0/sources",
            "/v1.0/sources/{uid}",
            "/openapi.json",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
    }
}
