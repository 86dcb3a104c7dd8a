//! The client API's firmware upgrade routes: `POST /v1.0/devices/{uid}/upgrade-session`
//! (`{upgradeFile, factoryReset}` -> `{sessionId, expiredIn}`) and
//! `GET /v1.0/devices/{uid}/upgrade-session/{sessionId}` (`{status}` and our progress fields),
//! with the platform's validation and error symbols. The sessions are [`crate::upgrade`]'s.

use http::StatusCode;
use serde_json::Value;

use crate::api::ControlPlane;
use crate::device_api::device_error;
use crate::devices::DeviceError;
use crate::http_server::Request;
use crate::proto::http::{json_error, json_response, Response};

impl ControlPlane {
    /// Creates an upgrade session of a firmware uploaded before and starts the upgrade.
    pub(crate) async fn post_upgrade_session(&self, uid: &str, req: &Request) -> Response {
        let body = match req.json::<Value>() {
            Ok(Value::Object(body)) => body,
            Ok(_) => return invalid_parameter("the body must be a JSON object"),
            Err(response) => return response,
        };
        let file = match body.get("upgradeFile") {
            Some(Value::String(file)) if (1..=255).contains(&file.len()) => file.clone(),
            _ => return invalid_parameter("upgradeFile must be a string of 1 to 255 bytes"),
        };
        // Required by the interface (its default is false); a missing one is taken as false.
        let factory_reset = match body.get("factoryReset") {
            None => false,
            Some(Value::Bool(reset)) => *reset,
            Some(_) => return invalid_parameter("factoryReset must be true or false"),
        };
        let Some(devices) = &self.devices else {
            return device_error(&DeviceError::Offline);
        };
        match self
            .upgrades
            .create(devices, &self.firmware, uid, &file, factory_reset)
            .await
        {
            Ok(created) => json_response(StatusCode::OK, &created),
            Err(refusal) => {
                let (symbol, status) = refusal.symbol_and_status();
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                json_error(status, symbol, &refusal.to_string())
            }
        }
    }

    /// The status of an upgrade session.
    pub(crate) fn get_upgrade_session(&self, uid: &str, session_id: &str) -> Response {
        match self.upgrades.get(uid, session_id) {
            Ok(Some(view)) => json_response(StatusCode::OK, &view),
            Ok(None) => json_error(
                StatusCode::NOT_FOUND,
                "session_not_found",
                "The session is not been found.",
            ),
            Err(e) => json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_internal_error",
                &format!("reading the upgrade session: {e}"),
            ),
        }
    }
}

fn invalid_parameter(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}
