//! `/v1.0/sources`: pull sources through the client API (our extension; the platform has none).
//! A source is committed to the store before the answer, then put in the control plane's
//! [`SourceDirectory`], which sends it to its owner shard and waits until the shard supervises
//! it: when the 201 leaves, an on-demand source is playable and an always-on one is connecting
//! (the answer's `status` is the shard's). States are the owner shards' answers, asked per
//! request, so these routes are async.
//! Sources of the config file are listed but cannot be replaced or deleted here: the file is their
//! truth and would bring them back at the next start.
//!
//! [`SourceDirectory`]: crate::sources::SourceDirectory

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api::ControlPlane;
use crate::device_api::method_not_allowed;
use crate::http_server::Request;
use crate::proto::http::{json_error, json_response, Response};
use crate::sources::{SourceEntry, SourceOrigin, SourceSpec, MAX_SOURCES};

impl ControlPlane {
    /// Routes `/v1.0/sources` and `/v1.0/sources/{uid}`; `None` for other paths.
    pub(crate) async fn source_routes(&self, req: &Request) -> Option<Response> {
        let segments: Vec<&str> = req.path().trim_start_matches('/').split('/').collect();
        let method = req.method();
        Some(match segments.as_slice() {
            ["v1.0", "sources"] => match *method {
                Method::GET | Method::HEAD => self.list_sources().await,
                Method::POST => self.post_source(req).await,
                _ => method_not_allowed("GET, HEAD, POST"),
            },
            ["v1.0", "sources", uid] => match *method {
                Method::GET | Method::HEAD => match self.sources.get(uid).await {
                    Some(entry) => json_response(StatusCode::OK, &source_json(&entry)),
                    None => source_not_found(uid),
                },
                Method::DELETE => self.delete_source(uid).await,
                _ => method_not_allowed("GET, HEAD, DELETE"),
            },
            _ => return None,
        })
    }

    async fn list_sources(&self) -> Response {
        let items: Vec<Value> = self.sources.list().await.iter().map(source_json).collect();
        json_response(StatusCode::OK, &json!({ "items": items }))
    }

    async fn post_source(&self, req: &Request) -> Response {
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
        let origin = self.sources.origin(&spec.uid);
        if origin == Some(SourceOrigin::Config) {
            return config_source(&spec.uid);
        }
        if self.store.device(&spec.uid).ok().flatten().is_some() {
            return json_error(
                StatusCode::CONFLICT,
                "uid_in_use",
                "A provisioned device has this UID.",
            );
        }
        if origin.is_none() && self.sources.len() >= MAX_SOURCES {
            return too_many_sources();
        }
        if let Err(e) = self.store.put_source(&spec) {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_internal_error",
                &format!("The source could not be stored: {e}"),
            );
        }
        let uid = spec.uid.clone();
        // Full only if another request added one since the check above: the directory has the
        // last word on its bound.
        match self.sources.put(spec, SourceOrigin::Api).await {
            Some(entry) => json_response(StatusCode::CREATED, &source_json(&entry)),
            None => {
                let _ = self.store.delete_source(&uid);
                too_many_sources()
            }
        }
    }

    async fn delete_source(&self, uid: &str) -> Response {
        match self.sources.origin(uid) {
            None => return source_not_found(uid),
            Some(SourceOrigin::Config) => return config_source(uid),
            Some(SourceOrigin::Api) => {}
        }
        if let Err(e) = self.store.delete_source(uid) {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_internal_error",
                &format!("The source could not be deleted: {e}"),
            );
        }
        self.sources.remove(uid).await;
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

fn too_many_sources() -> Response {
    json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_sources",
        "The server holds as many sources as it accepts.",
    )
}

fn config_source(uid: &str) -> Response {
    json_error(
        StatusCode::CONFLICT,
        "source_in_config",
        &format!("The source {uid:?} is declared in the config file; change it there."),
    )
}
