//! HTTP routes of the control plane: the three provisioning ports devices use (CA download,
//! credentials, registration) and the client API partners use (`/v1.0/…`), mapped onto
//! [`Provisioning`] and the store. Request and response JSON are the platform's, so existing
//! devices and partner clients work unchanged; errors use its `{"error":{symbol,message}}` form.

use std::sync::Arc;

use http::{header, HeaderValue, Method, StatusCode};
use serde::Serialize;

use crate::clock::unix_now;
use crate::config::Config;
use crate::device_api::method_not_allowed;
use crate::http_server::{BodyChunks, ConnInfo, Handler, Request};
use crate::proto::http::{json_error, json_response, RequestHead, Response};
use crate::provisioning::{
    CredentialsRequest, Provisioning, ProvisioningError, RegistrationRequest,
};
use crate::store::Store;
use crate::tokens::TokenSigner;

/// `Accept`/`Content-Type` of raw PEM (our curl-friendly extension of the provisioning ports).
const PEM_MEDIA_TYPE: &str = "application/x-pem-file";
/// `Content-Type` of a raw PEM CSR body.
const PKCS10_MEDIA_TYPE: &str = "application/pkcs10";
/// Header carrying the long-term code when the credentials answer is raw PEM.
pub const LONG_TERM_CODE_HEADER: &str = "rop-long-term-code";

/// Which listener a request arrived on: each serves its own routes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 61000: `GET /v1.0/ca`.
    Ca,
    /// 61001: `POST /v1.0/devices/credetials`.
    Credentials,
    /// 61002 (mutual TLS): `POST /v1.0/devices/registration`.
    Registration,
    /// 61009/61010: the client API.
    Client,
}

/// Everything the control plane's routes need. Shared by every listener of the control plane.
pub struct ControlPlane {
    /// The configuration the server runs with.
    pub config: Config,
    /// The PKI.
    pub pki: Arc<pki::Pki>,
    /// The embedded store.
    pub store: Arc<Store>,
    /// Provisioning logic.
    pub provisioning: Provisioning,
    /// Play/publish URL signer.
    pub tokens: TokenSigner,
    /// Client API bearer token when `api.auth = "token"`.
    pub api_token: Option<String>,
    /// Called with a UID whose certificates were just revoked, to close its connections.
    pub on_revoke: Box<dyn Fn(&str) + Send + Sync>,
    /// The shards' device sessions (presence, device requests); `None` without a data plane.
    pub devices: Option<crate::devices::DeviceDirectory>,
    /// Alarm delivery counters (received, queued, delivered, …) for `/metrics`.
    pub alarm_metrics: Option<Arc<crate::alarms::AlarmMetrics>>,
    /// Ports of the data plane as bound (filled once the shards listen), for play URLs.
    pub advertised: Arc<AdvertisedPorts>,
    /// Wi-Fi scan sessions of the client API.
    pub wifi_scans: crate::wifi_scan::WifiScans,
    /// Uploaded firmware files (`DATA/firmware`).
    pub firmware: crate::firmware::FirmwareStore,
    /// Firmware upgrade sessions (persisted in the store).
    pub upgrades: Arc<crate::upgrade::UpgradeSessions>,
    /// Failed TLS handshakes on the control plane's HTTPS ports (61000-61002, 61010).
    pub tls_failures: std::sync::Mutex<crate::metrics::TlsFailures>,
    /// Pull sources (config file and API): the control plane's catalog, and its handle on the
    /// owner shards that run them.
    pub sources: crate::sources::SourceDirectory,
}

/// Data-plane ports the client API hands out, known only once the shards have bound them
/// (a configured port 0 binds an ephemeral one). Unset: the configured port.
#[derive(Debug, Default)]
pub struct AdvertisedPorts {
    rtsp: std::sync::atomic::AtomicU16,
    rtsps: std::sync::atomic::AtomicU16,
    keepalive: std::sync::atomic::AtomicU16,
    signaling: std::sync::atomic::AtomicU16,
}

impl AdvertisedPorts {
    /// Records the RTSP port the shards listen on.
    pub fn set_rtsp(&self, port: u16) {
        self.rtsp.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// The RTSP port for play URLs: the bound one, else `configured`.
    pub fn rtsp_or(&self, configured: u16) -> u16 {
        match self.rtsp.load(std::sync::atomic::Ordering::Relaxed) {
            0 => configured,
            bound => bound,
        }
    }

    /// Records the RTSPS port the shards listen on.
    pub fn set_rtsps(&self, port: u16) {
        self.rtsps.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// The RTSPS port for `rtsps://` play URLs: the bound one, else `configured`.
    pub fn rtsps_or(&self, configured: u16) -> u16 {
        match self.rtsps.load(std::sync::atomic::Ordering::Relaxed) {
            0 => configured,
            bound => bound,
        }
    }

    /// Records the keep-alive and signalling ports the shards listen on.
    pub fn set_device_links(&self, keepalive: u16, signaling: u16) {
        self.keepalive
            .store(keepalive, std::sync::atomic::Ordering::Relaxed);
        self.signaling
            .store(signaling, std::sync::atomic::Ordering::Relaxed);
    }

    /// The registration answer's `keepAliveTCPPort` and `signalingTLSPort` as bound, else
    /// the ones `registration` carries (the configured ones).
    pub fn device_links_into(&self, registration: &mut crate::provisioning::Registration) {
        let bound = |port: &std::sync::atomic::AtomicU16, configured: u16| match port
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => configured,
            bound => bound,
        };
        registration.keep_alive_tcp_port = bound(&self.keepalive, registration.keep_alive_tcp_port);
        registration.signaling_tls_port = bound(&self.signaling, registration.signaling_tls_port);
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

/// The HTTP handler of one listener of the control plane.
#[derive(Debug, Clone)]
pub struct PortHandler {
    /// The shared control plane.
    pub plane: Arc<ControlPlane>,
    /// Which listener this is.
    pub port: Port,
}

impl PortHandler {
    /// The firmware file name of a firmware upload on the client port.
    fn firmware_upload<'h>(&self, head: &'h RequestHead) -> Option<&'h str> {
        if self.port != Port::Client || head.method != Method::POST {
            return None;
        }
        head.path.strip_prefix("/v1.0/firmware/")
    }

    /// The API token check, counted per address when it fails.
    fn refuse_unauthorized(&self, head: &RequestHead, conn: &ConnInfo) -> Option<Response> {
        let refusal = self.plane.check_api_auth(head)?;
        crate::limits::record_failure("http", crate::limits::Failure::ApiToken, conn.peer.ip());
        Some(refusal)
    }
}

impl Handler for PortHandler {
    fn body_limit(&self, head: &RequestHead, _conn: &ConnInfo) -> Option<usize> {
        self.firmware_upload(head)
            .map(|_| usize::try_from(self.plane.firmware.max_bytes).unwrap_or(usize::MAX))
    }

    fn streams_body(&self, head: &RequestHead, _conn: &ConnInfo) -> bool {
        self.firmware_upload(head).is_some()
    }

    async fn handle_streamed<B: BodyChunks>(
        &self,
        head: RequestHead,
        body: &mut B,
        conn: &ConnInfo,
    ) -> Response {
        if let Some(refusal) = self.refuse_unauthorized(&head, conn) {
            return refusal;
        }
        let Some(name) = self.firmware_upload(&head) else {
            return url_not_found();
        };
        match self.plane.firmware.receive(name, body).await {
            Ok(size) => {
                tracing::info!(name, size, "firmware uploaded");
                json_response(StatusCode::OK, &serde_json::json!({ "message": "ok" }))
            }
            Err(e @ crate::firmware::FirmwareError::Io { .. }) => {
                tracing::warn!("{e}");
                internal_error(&e.to_string())
            }
            Err(e) => invalid_parameter(&e.to_string()),
        }
    }

    async fn handle(&self, request: Request, conn: &ConnInfo) -> Response {
        if self.port == Port::Client {
            if let Some(refusal) = self.refuse_unauthorized(&request.head, conn) {
                return refusal;
            }
            if let Some(response) = self.plane.source_routes(&request).await {
                return response;
            }
            if let Some(response) = self.plane.device_routes(&request).await {
                return response;
            }
        }
        self.plane.handle(self.port, &request, conn)
    }
}

impl ControlPlane {
    /// Answers one request that arrived on `port`.
    pub fn handle(&self, port: Port, req: &Request, conn: &ConnInfo) -> Response {
        let path = req.path();
        match port {
            Port::Ca => match (path, req.method()) {
                ("/v1.0/ca", &Method::GET) | ("/v1.0/ca", &Method::HEAD) => self.get_ca(req),
                ("/v1.0/ca", _) => method_not_allowed("GET, HEAD"),
                _ => url_not_found(),
            },
            Port::Credentials => match (path, req.method()) {
                ("/v1.0/devices/credetials", &Method::POST) => self.post_credentials(req, conn),
                ("/v1.0/devices/credetials", _) => method_not_allowed("POST"),
                _ => url_not_found(),
            },
            Port::Registration => match (path, req.method()) {
                ("/v1.0/devices/registration", &Method::POST) => self.post_registration(req, conn),
                ("/v1.0/devices/registration", _) => method_not_allowed("POST"),
                _ => url_not_found(),
            },
            Port::Client => {
                if let Some(refusal) = self.check_api_auth(&req.head) {
                    return refusal;
                }
                self.client_api(req)
            }
        }
    }

    fn check_api_auth(&self, head: &RequestHead) -> Option<Response> {
        let token = self.api_token.as_deref()?;
        if head.path == "/healthz" {
            return None;
        }
        let given = head
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => None,
            _ => {
                let mut response = json_error(
                    StatusCode::UNAUTHORIZED,
                    "auth_failed",
                    "A valid bearer token is required (Authorization: Bearer …).",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rop\""),
                );
                Some(response)
            }
        }
    }

    fn client_api(&self, req: &Request) -> Response {
        let path = req.path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = req.method();
        match segments.as_slice() {
            ["healthz"] => match *method {
                Method::GET | Method::HEAD => {
                    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
                }
                _ => method_not_allowed("GET, HEAD"),
            },
            ["metrics"] => match *method {
                Method::GET | Method::HEAD => self.get_metrics(None, &self.sources.catalog()),
                _ => method_not_allowed("GET, HEAD"),
            },
            ["v1.0", "certificates"] => match *method {
                Method::GET | Method::HEAD => self.get_certificates(),
                _ => method_not_allowed("GET, HEAD"),
            },
            ["v1.0", "device-keys", "rotation"] => match *method {
                Method::POST => self.post_device_key_rotation(),
                _ => method_not_allowed("POST"),
            },
            ["v1.0", "firmware", _] => method_not_allowed("POST"),
            ["v1.0", "devices", "initialization-session"] => match *method {
                Method::POST => self.post_initialization_session(req),
                _ => method_not_allowed("POST"),
            },
            ["v1.0", "devices"] => match *method {
                Method::GET | Method::HEAD => self.get_devices(req),
                _ => method_not_allowed("GET, HEAD"),
            },
            ["v1.0", "devices", uid] => match *method {
                Method::GET | Method::HEAD => self.get_device(uid, None),
                Method::DELETE => self.delete_device(uid),
                _ => method_not_allowed("GET, HEAD, DELETE"),
            },
            _ => url_not_found(),
        }
    }

    /// Every certificate in force with its days left: the hierarchy's and the devices' (what
    /// `relay pki status` prints while the server holds the store).
    fn get_certificates(&self) -> Response {
        match crate::provisioning::device_cert_status(&self.store, crate::clock::unix_now()) {
            Ok(devices) => json_response(
                StatusCode::OK,
                &serde_json::json!({ "hierarchy": self.pki.status(), "devices": devices }),
            ),
            Err(e) => internal_error(&format!("reading the store: {e}")),
        }
    }

    /// Counts a failed TLS handshake on one of the control plane's HTTPS ports.
    pub fn record_tls_failure(&self, port: crate::metrics::TlsPort, e: &rt::tls::TlsError) {
        if let Ok(mut failures) = self.tls_failures.lock() {
            failures.record_error(port, e);
        }
    }

    /// Prometheus text exposition, with the shards' counters when they answered and the pull
    /// sources' states (from [`crate::sources::SourceDirectory::list`]). Certificate
    /// expiry is here so that an operator alerts on it long before devices are locked out (the
    /// platform's server gives no warning).
    pub(crate) fn get_metrics(
        &self,
        shards: Option<&[crate::devices::LinkStats]>,
        sources: &[crate::sources::SourceEntry],
    ) -> Response {
        use std::fmt::Write as _;
        let mut out = String::new();
        out.push_str(
            "# HELP rop_certificate_days_left Whole days until the certificate expires.\n",
        );
        out.push_str("# TYPE rop_certificate_days_left gauge\n");
        for cert in self.pki.status() {
            let _ = writeln!(
                out,
                "rop_certificate_days_left{{certificate=\"{}\",serial=\"{}\"}} {}",
                cert.name, cert.serial_hex, cert.days_left
            );
        }
        let warn_days = crate::provisioning::EXPIRY_WARNING_DAYS;
        let hierarchy_expiring = self
            .pki
            .status()
            .iter()
            .filter(|c| c.days_left < warn_days)
            .count();
        let device_certs =
            crate::provisioning::device_cert_status(&self.store, crate::clock::unix_now())
                .unwrap_or_default();
        let devices_expiring = device_certs
            .iter()
            .filter(|c| c.days_left < warn_days)
            .count();
        out.push_str("# HELP rop_certificate_expiring Certificates in force (hierarchy and devices) within 30 days of expiry.\n");
        out.push_str("# TYPE rop_certificate_expiring gauge\n");
        let _ = writeln!(
            out,
            "rop_certificate_expiring {}",
            hierarchy_expiring + devices_expiring
        );
        out.push_str("# HELP rop_device_certificates_expiring Device certificates in force within 30 days of expiry.\n");
        out.push_str("# TYPE rop_device_certificates_expiring gauge\n");
        let _ = writeln!(out, "rop_device_certificates_expiring {devices_expiring}");
        if let Some(soonest) = device_certs.iter().map(|c| c.days_left).min() {
            out.push_str("# HELP rop_device_certificate_min_days_left Days left of the device certificate in force that expires first.\n");
            out.push_str("# TYPE rop_device_certificate_min_days_left gauge\n");
            let _ = writeln!(out, "rop_device_certificate_min_days_left {soonest}");
        }
        if let Ok(devices) = self.store.devices() {
            out.push_str("# HELP rop_devices_provisioned Devices known to the store, by state.\n");
            out.push_str("# TYPE rop_devices_provisioned gauge\n");
            let revoked = devices.iter().filter(|d| d.revoked).count();
            let _ = writeln!(
                out,
                "rop_devices_provisioned{{state=\"active\"}} {}",
                devices.len() - revoked
            );
            let _ = writeln!(
                out,
                "rop_devices_provisioned{{state=\"revoked\"}} {revoked}"
            );
        }
        if let Some(alarms) = &self.alarm_metrics {
            alarms.render_prometheus(crate::alarms::unix_now_ms(), &mut out);
        }
        if let Some(limits) = crate::limits::current() {
            limits.render_prometheus(&mut out);
        }
        let own_tls = self
            .tls_failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        match shards {
            Some(stats) => crate::devices::render_link_stats(stats, &own_tls, &mut out),
            None => own_tls.render_prometheus(&mut out),
        }
        crate::sources::render_metrics(sources, &mut out);
        let mut response = http::Response::new(out.into_bytes());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    fn get_ca(&self, req: &Request) -> Response {
        if accepts_pem(req) {
            return pem_response(self.pki.ca_pem().as_bytes().to_vec());
        }
        json_response(StatusCode::OK, &self.provisioning.ca(unix_now()))
    }

    fn post_credentials(&self, req: &Request, conn: &ConnInfo) -> Response {
        let request = if content_type_is(req, PKCS10_MEDIA_TYPE) {
            let query = query_pairs(req);
            let field = |name: &str| {
                query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let (Some(uid), Some(code)) = (field("uid"), field("code")) else {
                return invalid_parameter("a PKCS#10 body needs the query parameters uid and code");
            };
            let Ok(csr) = std::str::from_utf8(&req.body) else {
                return invalid_parameter("the CSR body must be PEM text");
            };
            CredentialsRequest {
                uid,
                code,
                csr: Some(csr.to_owned()),
            }
        } else {
            match req.json::<CredentialsRequest>() {
                Ok(r) => r,
                Err(response) => return response,
            }
        };
        match self.provisioning.credentials(&request, unix_now()) {
            Ok(credentials) if accepts_pem(req) && credentials.key.is_none() => {
                let mut response = pem_response(credentials.cert.into_bytes());
                if let Ok(code) = HeaderValue::from_str(&credentials.code) {
                    response.headers_mut().insert(LONG_TERM_CODE_HEADER, code);
                }
                response
            }
            Ok(credentials) => json_response(StatusCode::OK, &credentials),
            Err(e) => {
                if matches!(e, crate::provisioning::ProvisioningError::CodeInvalid(_)) {
                    // Codes are short: guessing them is counted and boxed per address.
                    crate::limits::record_failure(
                        "credentials",
                        crate::limits::Failure::Code,
                        conn.peer.ip(),
                    );
                }
                provisioning_error(&e)
            }
        }
    }

    fn post_registration(&self, req: &Request, conn: &ConnInfo) -> Response {
        let Some(uid) = conn.client_uid.as_deref() else {
            return json_error(
                StatusCode::FORBIDDEN,
                "auth_failed",
                "a device certificate is required",
            );
        };
        let request = match req.json::<RegistrationRequest>() {
            Ok(r) => r,
            Err(response) => return response,
        };
        match self.provisioning.register(uid, &request, unix_now()) {
            Ok(mut registration) => {
                // A configured port 0 is bound as an ephemeral one: devices get that one.
                self.advertised.device_links_into(&mut registration);
                json_response(StatusCode::OK, &registration)
            }
            Err(e) => provisioning_error(&e),
        }
    }

    fn post_initialization_session(&self, req: &Request) -> Response {
        #[derive(serde::Deserialize)]
        struct Body {
            uid: String,
        }
        let body = match req.json::<Body>() {
            Ok(b) => b,
            Err(response) => return response,
        };
        match self
            .provisioning
            .create_initialization_session(&body.uid, unix_now())
        {
            Ok(session) => json_response(StatusCode::OK, &session),
            Err(e) => provisioning_error(&e),
        }
    }

    fn get_devices(&self, _req: &Request) -> Response {
        // Without a data plane (no device sessions) no device is online; with one,
        // `device_routes` answers first.
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "totalRows": 0, "items": [] }),
        )
    }

    /// The device's store record with its presence (`None`: offline).
    pub(crate) fn get_device(
        &self,
        uid: &str,
        presence: Option<&crate::devices::DevicePresence>,
    ) -> Response {
        if let Err(e) = pki::validate_uid(uid) {
            return invalid_parameter(&e.to_string());
        }
        match self.store.device(uid) {
            Ok(Some(device)) => {
                #[derive(Serialize)]
                #[serde(rename_all = "camelCase")]
                struct DeviceView<'a> {
                    uid: &'a str,
                    online: bool,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    presence: Option<&'a crate::devices::DevicePresence>,
                    /// The firmware upgrade running now, if any.
                    #[serde(skip_serializing_if = "Option::is_none")]
                    upgrade: Option<crate::upgrade::UpgradeView>,
                    revoked: bool,
                    created_at: u64,
                    registered_at: Option<u64>,
                    certificates: Vec<CertView<'a>>,
                }
                #[derive(Serialize)]
                #[serde(rename_all = "camelCase")]
                struct CertView<'a> {
                    serial: &'a str,
                    issued_at: u64,
                    not_after: u64,
                    revoked: bool,
                }
                let view = DeviceView {
                    uid: &device.uid,
                    online: presence.is_some(),
                    presence,
                    upgrade: self.upgrades.running_for(uid),
                    revoked: device.revoked,
                    created_at: device.created_at,
                    registered_at: device.registered_at,
                    certificates: device
                        .certs
                        .iter()
                        .map(|c| CertView {
                            serial: &c.serial,
                            issued_at: c.issued_at,
                            not_after: c.not_after,
                            revoked: c.revoked,
                        })
                        .collect(),
                };
                json_response(StatusCode::OK, &view)
            }
            Ok(None) => device_not_found(uid),
            Err(e) => internal_error(&e.to_string()),
        }
    }

    /// `relay pki rotate-device-key` against a running server: the new index is on disk before
    /// the answer and in force for the next registration and the next hello.
    fn post_device_key_rotation(&self) -> Response {
        match self.provisioning.rotate_device_key() {
            Ok(index) => {
                tracing::info!(current_key_index = %index, "device key rotated");
                json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "currentKeyIndex": index }),
                )
            }
            Err(e) => internal_error(&format!("rotating the device key: {e}")),
        }
    }

    fn delete_device(&self, uid: &str) -> Response {
        match self.provisioning.revoke(uid, unix_now()) {
            Ok(Some(serials)) => {
                (self.on_revoke)(uid);
                json_response(
                    StatusCode::OK,
                    &serde_json::json!({ "uid": uid, "revokedSerials": serials }),
                )
            }
            Ok(None) => device_not_found(uid),
            Err(e) => provisioning_error(&e),
        }
    }
}

fn query_pairs(req: &Request) -> Vec<(String, String)> {
    req.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn content_type_is(req: &Request, media_type: &str) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(media_type))
}

fn accepts_pem(req: &Request) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(PEM_MEDIA_TYPE))
        })
}

fn pem_response(body: Vec<u8>) -> Response {
    let mut response = http::Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PEM_MEDIA_TYPE),
    );
    response
}

fn provisioning_error(e: &ProvisioningError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    json_error(status, e.symbol(), &e.to_string())
}

fn invalid_parameter(message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

fn internal_error(message: &str) -> Response {
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_internal_error",
        message,
    )
}

fn url_not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "url_not_found",
        "The url is not been found.",
    )
}

fn device_not_found(uid: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "device_not_found",
        &format!("device {uid} is not known to this server"),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
