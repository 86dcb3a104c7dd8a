//! `/v1.0/sources`: pull sources through the client API (our extension; the platform has none).
//! A source is committed to the store before the answer, then put in the [`SourceDirectory`],
//! from which its owner shard picks it up within a second (or at once on a viewer's DESCRIBE).
//! Sources of the config file are listed but cannot be replaced or deleted here: the file is their
//! truth and would bring them back at the next start.

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api::ControlPlane;
use crate::device_api::method_not_allowed;
use crate::http_server::Request;
use crate::proto::http::{json_error, json_response, Response};
use crate::sources::{SourceEntry, SourceOrigin, SourceSpec};

impl ControlPlane {
    /// Routes `/v1.0/sources` and `/v1.0/sources/{uid}`; `None` for other paths.
    pub(crate) fn source_routes(&self, req: &Request) -> Option<Response> {
        let segments: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
        let method = req.method();
        Some(match segments.as_slice() {
            ["v1.0", "sources"] => match *method {
                Method::GET | Method::HEAD => self.list_sources(),
                Method::POST => self.post_source(req),
                _ => method_not_allowed("GET, HEAD, POST"),
            },
            ["v1.0", "sources", uid] => match *method {
                Method::GET | Method::HEAD => match self.sources.get(uid) {
                    Some(entry) => json_response(StatusCode::OK, &source_json(&entry)),
                    None => source_not_found(uid),
                },
                Method::DELETE => self.delete_source(uid),
                _ => method_not_allowed("GET, HEAD, DELETE"),
            },
            _ => return None,
        })
    }

    fn list_sources(&self) -> Response {
        let items: Vec<Value> = self.sources.list().iter().map(source_json).collect();
        json_response(StatusCode::OK, &json!({ "items": items }))
    }

    fn post_source(&self, req: &Request) -> Response {
        let spec: SourceSpec = match serde_json::from_slice(&req.body) {
            Ok(spec) => spec,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    &format!("The body must be a source object: {e}"),
                )
            }
        };
        if let Err(e) = spec.validate() {
            return json_error(StatusCode::BAD_REQUEST, "invalid_parameter", &e.to_string());
        }
        if self
            .sources
            .get(&spec.uid)
            .is_some_and(|e| e.origin == SourceOrigin::Config)
        {
            return config_source(&spec.uid);
        }
        if self.store.device(&spec.uid).ok().flatten().is_some() {
            return json_error(
                StatusCode::CONFLICT,
                "uid_in_use",
                "A provisioned device has this UID.",
            );
        }
        if let Err(e) = self.store.put_source(&spec) {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_internal_error",
                &format!("The source could not be stored: {e}"),
            );
        }
        let uid = spec.uid.clone();
        if !self.sources.insert(spec, SourceOrigin::Api) {
            let _ = self.store.delete_source(&uid);
            return json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sources",
                "The server holds as many sources as it accepts.",
            );
        }
        match self.sources.get(&uid) {
            Some(entry) => json_response(StatusCode::CREATED, &source_json(&entry)),
            None => source_not_found(&uid),
        }
    }

    fn delete_source(&self, uid: &str) -> Response {
        match self.sources.get(uid) {
            None => return source_not_found(uid),
            Some(entry) if entry.origin == SourceOrigin::Config => return config_source(uid),
            Some(_) => {}
        }
        if let Err(e) = self.store.delete_source(uid) {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_internal_error",
                &format!("The source could not be deleted: {e}"),
            );
        }
        self.sources.remove(uid);
        json_response(StatusCode::OK, &json!({ "uid": uid, "deleted": true }))
    }
}

/// A source as the API shows it: the spec with the password hidden, origin and state.
pub(crate) fn source_json(entry: &SourceEntry) -> Value {
    let mut value = serde_json::to_value(entry.spec.as_ref()).unwrap_or_default();
    value["url"] = Value::String(entry.spec.redacted_url());
    value["origin"] = serde_json::to_value(entry.origin).unwrap_or_default();
    value["status"] = serde_json::to_value(&entry.status).unwrap_or_default();
    value
}

fn source_not_found(uid: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "source_not_found",
        &format!("No pull source has the UID {uid:?}."),
    )
}

fn config_source(uid: &str) -> Response {
    json_error(
        StatusCode::CONFLICT,
        "source_in_config",
        &format!("The source {uid:?} is declared in the config file; change it there."),
    )
}
