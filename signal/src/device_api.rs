//! Client API routes that reach into online devices: the platform's online-device list and
//! alarm switch (`/v1.0/devices`, `/v1.0/devices/{uid}/settings/alarm`), and our device
//! detail with presence (`GET /v1.0/devices/{uid}`). They await the device's owner shard
//! through [`DeviceDirectory`], so they are async, unlike the store-only routes in
//! [`crate::api`]. Errors use the platform's symbols (`device_offline` 404, `cmd_timeout`…).

use http::{Method, StatusCode};

use crate::api::ControlPlane;
use crate::devices::{DeviceError, DevicePresence, MAX_LIST_LIMIT};
use crate::http_server::Request;
use crate::proto::http::{json_error, json_response, Response};

impl ControlPlane {
    /// Answers the device routes; `None` for every other request (the synchronous routes
    /// handle it). Authentication has been checked by the caller.
    pub(crate) async fn device_routes(&self, req: &Request) -> Option<Response> {
        let segments: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
        let method = req.method();
        Some(match segments.as_slice() {
            ["metrics"] => match (
                *method == Method::GET || *method == Method::HEAD,
                &self.devices,
            ) {
                (true, Some(devices)) => {
                    let stats = devices.stats().await.ok();
                    let sources = self.sources.list().await;
                    self.get_metrics(stats.as_deref(), &sources)
                }
                _ => return None,
            },
            ["v1.0", "devices"] => match *method {
                Method::GET | Method::HEAD => self.list_devices(req).await,
                _ => return None,
            },
            ["v1.0", "devices", uid] if *uid != "initialization-session" => match *method {
                Method::GET | Method::HEAD => {
                    if let Err(e) = pki::validate_uid(uid) {
                        return Some(invalid_parameter(&e.to_string()));
                    }
                    match self.presence(uid).await {
                        Ok(presence) => self.get_device(uid, presence.as_ref()),
                        Err(e) => device_error(&e),
                    }
                }
                _ => return None,
            },
            ["openapi.json"] => match *method {
                Method::GET | Method::HEAD => openapi(),
                _ => method_not_allowed("GET, HEAD"),
            },
            // Route, then method (405 with Allow), then the UID (400), as any HTTP router does.
            ["v1.0", "devices", uid, "settings", "alarm"] => match *method {
                Method::GET | Method::HEAD | Method::PUT => {
                    if let Err(e) = pki::validate_uid(uid) {
                        return Some(invalid_parameter(&e.to_string()));
                    }
                    if *method == Method::PUT {
                        self.put_alarm_switch(uid, req).await
                    } else {
                        self.get_alarm_switch(uid).await
                    }
                }
                _ => method_not_allowed("GET, HEAD, PUT"),
            },
            ["v1.0", "devices", uid, rest @ ..]
                if !rest.is_empty() && *uid != "initialization-session" =>
            {
                let allow = crate::device_control_api::control_route_allow(rest)?;
                if !allow.split(", ").any(|m| m == method.as_str()) {
                    return Some(method_not_allowed(allow));
                }
                if let Err(e) = pki::validate_uid(uid) {
                    return Some(invalid_parameter(&e.to_string()));
                }
                return self.device_control_routes(uid, rest, req).await;
            }
            _ => return None,
        })
    }

    async fn presence(&self, uid: &str) -> Result<Option<DevicePresence>, DeviceError> {
        match &self.devices {
            Some(devices) => devices.presence(uid).await,
            None => Ok(None),
        }
    }

    /// The platform's online-device list, with its cursor pagination as an extension:
    /// `?limit=N` cuts the page and the answer then carries `nextToken`, passed back as
    /// `?next_token=…` (or `nextToken`). Without `limit` every online device is listed, as the
    /// platform does.
    async fn list_devices(&self, req: &Request) -> Response {
        let mut limit = MAX_LIST_LIMIT;
        let mut after = None;
        let pairs: Vec<(String, String)> = req
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => limit = n,
                    _ => {
                        return invalid_parameter(&format!(
                            "limit must be between 1 and {MAX_LIST_LIMIT}"
                        ))
                    }
                },
                "next_token" | "nextToken" => {
                    if value.is_empty() || value.len() > 64 {
                        return invalid_parameter("next_token must be 1 to 64 bytes");
                    }
                    after = Some(value);
                }
                _ => {}
            }
        }
        let Some(devices) = &self.devices else {
            return json_response(
                StatusCode::OK,
                &serde_json::json!({ "totalRows": 0, "items": [] }),
            );
        };
        match devices.list(after.as_deref(), limit).await {
            Ok(page) => json_response(StatusCode::OK, &page),
            Err(e) => device_error(&e),
        }
    }

    async fn get_alarm_switch(&self, uid: &str) -> Response {
        let Some(devices) = &self.devices else {
            return device_error(&DeviceError::Offline);
        };
        match devices.alarm_switch(uid).await {
            Ok(enabled) => {
                json_response(StatusCode::OK, &serde_json::json!({ "enabled": enabled }))
            }
            Err(e) => device_error(&e),
        }
    }

    async fn put_alarm_switch(&self, uid: &str, req: &Request) -> Response {
        #[derive(serde::Deserialize)]
        struct Body {
            enabled: serde_json::Value,
        }
        let body = match req.json::<Body>() {
            Ok(body) => body,
            Err(response) => return response,
        };
        // The platform's own example shows the boolean as a string ("true") in one place.
        let enabled = match body.enabled {
            serde_json::Value::Bool(b) => b,
            serde_json::Value::String(s) if s == "true" => true,
            serde_json::Value::String(s) if s == "false" => false,
            _ => return invalid_parameter("enabled must be true or false"),
        };
        let Some(devices) = &self.devices else {
            return device_error(&DeviceError::Offline);
        };
        match devices.set_alarm_switch(uid, enabled).await {
            Ok(()) => json_response(StatusCode::OK, &serde_json::json!({ "message": "ok" })),
            Err(e) => device_error(&e),
        }
    }
}

/// The platform's error answer for a device that cannot be reached or did not answer.
pub(crate) fn device_error(e: &DeviceError) -> Response {
    let (symbol, status) = e.symbol_and_status();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let message = match e {
        DeviceError::Offline => "The device is offline".to_owned(),
        other => other.to_string(),
    };
    json_error(status, symbol, &message)
}

fn invalid_parameter(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

pub(crate) fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("allowed methods: {allow}"),
    );
    if let Ok(value) = http::HeaderValue::from_str(allow) {
        response.headers_mut().insert(http::header::ALLOW, value);
    }
    response
}

/// The OpenAPI 3 document of every route of the client port (kept exact by a unit test).
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

fn openapi() -> Response {
    let mut response = http::Response::new(OPENAPI.as_bytes().to_vec());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}
