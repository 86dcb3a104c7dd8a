//! The sans-IO half of the webhook: the target URL, the JSON body, the signature, the encoded
//! request, and what a response means for the alarm. No sockets, no clocks (callers pass the
//! time in). The scheme is documented for partners in `docs/alarms.md`.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use http::{Method, StatusCode, Uri};
use serde::Serialize;
use sha2::Sha256;

use super::AlarmEvent;
use crate::proto::http::encode_request;

/// Signature header: `sha256=` and the lowercase hex HMAC-SHA256 of the body.
pub const SIGNATURE_HEADER: &str = "x-rop-signature";
/// The event id (also sent as `Idempotency-Key`).
pub const EVENT_ID_HEADER: &str = "x-rop-event-id";
/// Unix seconds when this attempt was sent (informational; `receivedAt` in the signed body is
/// the alarm's time).
pub const TIMESTAMP_HEADER: &str = "x-rop-timestamp";

/// `ROP_ALARM_WEBHOOK` is not a URL we can post to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alarm webhook URL {url:?}: {reason}")]
#[non_exhaustive]
pub struct InvalidWebhookUrl {
    /// The URL as configured.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Where alarms go: an `http://` or `https://` URL. Path and query are sent verbatim (the
/// platform's partners put their authentication in the query); `user:password@` becomes HTTP
/// basic authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    uri: Uri,
    https: bool,
    host: String,
    port: u16,
    authorization: Option<String>,
}

impl WebhookTarget {
    /// Parses and checks a webhook URL.
    pub fn parse(url: &str) -> Result<Self, InvalidWebhookUrl> {
        let invalid = |reason| InvalidWebhookUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| invalid("not a valid absolute URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if port == 0 {
            return Err(invalid("port 0"));
        }
        if url.contains('#') {
            return Err(invalid("a fragment (#) is never sent; remove it"));
        }
        let authorization = authority.as_str().rsplit_once('@').map(|(userinfo, _)| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(userinfo);
            format!("Basic {encoded}")
        });
        Ok(WebhookTarget {
            host: host.to_owned(),
            uri,
            https,
            port,
            authorization,
        })
    }

    /// Whether the target is HTTPS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Host name or IP address (without brackets), for resolving and for TLS.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (80 or 443 unless the URL names one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL with any `user:password@` hidden, for logs.
    pub fn redacted(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let path = self.uri.path();
        let query = if self.uri.query().is_some() {
            "?…"
        } else {
            ""
        };
        format!("{scheme}://{}:{}{path}{query}", self.host, self.port)
    }
}

/// The webhook's JSON body: the platform's `{uid, channelId, status, AItype}` plus our
/// `eventId` and `receivedAt`.
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    uid: &'a str,
    #[serde(rename = "channelId")]
    channel_id: String,
    status: &'a str,
    #[serde(rename = "AItype")]
    ai_type: &'a str,
    #[serde(rename = "eventId")]
    event_id: &'a str,
    #[serde(rename = "receivedAt")]
    received_at: String,
}

/// The JSON body for `event`. `channelId` is a string, as the platform sends it; an empty
/// status or AI type becomes `none`, the platform's value for "nothing".
pub fn webhook_body(event: &AlarmEvent) -> Vec<u8> {
    fn none_if_empty(s: &str) -> &str {
        if s.is_empty() {
            "none"
        } else {
            s
        }
    }
    let body = WebhookBody {
        uid: &event.uid,
        channel_id: event.channel_id.to_string(),
        status: none_if_empty(&event.status),
        ai_type: none_if_empty(&event.ai_type),
        event_id: &event.event_id,
        received_at: format_unix_ms(event.received_at_ms),
    };
    // Serializing strings to JSON cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `2026-11-23T21:18:06.123Z` for Unix milliseconds.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            ms % 1000
        ),
        Err(_) => ms.to_string(),
    }
}

/// Signs webhook bodies with the key in `DATA/secrets/alarm-webhook.key`.
#[derive(Clone)]
pub struct WebhookSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSigner(..)")
    }
}

impl WebhookSigner {
    /// A signer with `key`.
    pub fn new(key: [u8; 32]) -> Self {
        WebhookSigner { key }
    }

    /// `sha256=` followed by the lowercase hex HMAC-SHA256(key, body).
    pub fn signature(&self, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for byte in digest {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 15)]));
        }
        out
    }

    /// Whether `header` is the right signature of `body` (constant time), for partners' tests.
    pub fn verify(&self, body: &[u8], header: &str) -> bool {
        let Some(hex) = header.strip_prefix("sha256=") else {
            return false;
        };
        let Some(tag) = decode_hex(hex) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: &u8| char::from(*c).to_digit(16);
            match pair {
                [high, low] => Some((digit(high)? * 16 + digit(low)?) as u8),
                _ => None,
            }
        })
        .collect()
}

/// The whole HTTP/1.1 request posting `event` to `target`, signed, sent at `now_unix_secs`.
pub fn encode_webhook_request(
    target: &WebhookTarget,
    signer: &WebhookSigner,
    event: &AlarmEvent,
    now_unix_secs: u64,
    out: &mut Vec<u8>,
) {
    let body = webhook_body(event);
    let signature = signer.signature(&body);
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(target.uri.clone())
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "user-agent",
            concat!("rop-relay/", env!("CARGO_PKG_VERSION")),
        )
        .header(SIGNATURE_HEADER, signature)
        .header(TIMESTAMP_HEADER, now_unix_secs.to_string());
    // Event ids are ULIDs (ASCII) that we made; a header value cannot be refused for them, but a
    // corrupt store record could hold anything, so go through HeaderValue.
    if let Ok(id) = HeaderValue::from_str(&event.event_id) {
        builder = builder
            .header(EVENT_ID_HEADER, id.clone())
            .header("idempotency-key", id);
    }
    if let Some(auth) = &target.authorization {
        builder = builder.header("authorization", auth.as_str());
    }
    match builder.body(body) {
        Ok(request) => encode_request(&request, out),
        Err(error) => tracing::error!(%error, "cannot build the webhook request"),
    }
}

/// What a webhook response means for the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// 2xx: the partner has it; remove it from the queue.
    Delivered,
    /// 408, 429 or 5xx: the partner could not take it now; try again later (after the
    /// `Retry-After` it gave, if any, in seconds).
    RetryLater {
        /// The partner's `Retry-After`, when it sent a number of seconds.
        retry_after: Option<Duration>,
    },
    /// Any other status (3xx: we do not follow redirects; 4xx: the partner refuses this
    /// request): retried a bounded number of times, then dead-lettered.
    Rejected,
}

/// Classifies a final response.
pub fn classify_response(status: StatusCode, headers: &HeaderMap) -> ResponseVerdict {
    if status.is_success() {
        return ResponseVerdict::Delivered;
    }
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return ResponseVerdict::RetryLater { retry_after };
    }
    ResponseVerdict::Rejected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AlarmEvent {
        AlarmEvent {
            event_id: "01HF7YAT00AAAAAAAAAAAAAAAA".into(),
            uid: "952700000A5S348E".into(),
            channel_id: 0,
            status: "MD".into(),
            ai_type: String::new(),
            received_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn body_is_the_platforms_plus_event_id() {
        let body = String::from_utf8(webhook_body(&event())).unwrap();
        assert_eq!(
            body,
            r#"{"uid":"952700000A5S348E","channelId":"0","status":"MD","AItype":"none","eventId":"01HF7YAT00AAAAAAAAAAAAAAAA","receivedAt":"2023-11-14T22:13:20.123Z"}"#
        );
    }

    #[test]
    fn signature_matches_openssl() {
        // printf '%s' 'hello' | openssl dgst -sha256 -mac HMAC -macopt hexkey:0101…01 (32 bytes)
        let signer = WebhookSigner::new([1; 32]);
        let sig = signer.signature(b"hello");
        assert_eq!(
            sig,
            "sha256=3a4d75699f355339725ecf666241ddd9c5ca105542c40a7f5607efc7ece5f67e"
        );
        assert!(signer.verify(b"hello", &sig));
        assert!(!signer.verify(b"hellO", &sig));
        assert!(!signer.verify(b"hello", "sha256=zz"));
        assert!(!WebhookSigner::new([2; 32]).verify(b"hello", &sig));
    }

    #[test]
    fn urls() {
        let t = WebhookTarget::parse("https://partner.example/alarm?key=abc").unwrap();
        assert!(t.is_https());
        assert_eq!((t.host(), t.port()), ("partner.example", 443));
        assert_eq!(t.redacted(), "https://partner.example:443/alarm?…");
        let t = WebhookTarget::parse("http://[::1]:8080/x").unwrap();
        assert_eq!((t.host(), t.port()), ("::1", 8080));
        let t = WebhookTarget::parse("http://u:p@h/").unwrap();
        assert_eq!(t.authorization.as_deref(), Some("Basic dTpw"));
        for bad in [
            "ftp://h/",
            "partner.example/alarm",
            "https:///x",
            "http://h:0/",
            "http://h/#f",
        ] {
            assert!(WebhookTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_is_signed_and_framed() {
        let target = WebhookTarget::parse("http://127.0.0.1:9/hook?authcode=x").unwrap();
        let signer = WebhookSigner::new([7; 32]);
        let mut out = Vec::new();
        encode_webhook_request(&target, &signer, &event(), 1_700_000_001, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("POST /hook?authcode=x HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("host: 127.0.0.1:9\r\n"));
        assert!(head.contains("x-rop-event-id: 01HF7YAT00AAAAAAAAAAAAAAAA\r\n"));
        assert!(head.contains("idempotency-key: 01HF7YAT00AAAAAAAAAAAAAAAA\r\n"));
        assert!(head.contains("x-rop-timestamp: 1700000001\r\n"));
        assert!(text.contains(&format!("content-length: {}\r\n\r\n", body.len())));
        let sig = head
            .lines()
            .find_map(|l| l.strip_prefix("x-rop-signature: "))
            .unwrap();
        assert!(signer.verify(body.as_bytes(), sig));
    }

    #[test]
    fn verdicts() {
        let none = HeaderMap::new();
        assert_eq!(
            classify_response(StatusCode::NO_CONTENT, &none),
            ResponseVerdict::Delivered
        );
        let mut retry = HeaderMap::new();
        retry.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            classify_response(StatusCode::SERVICE_UNAVAILABLE, &retry),
            ResponseVerdict::RetryLater {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify_response(StatusCode::TOO_MANY_REQUESTS, &none),
            ResponseVerdict::RetryLater { retry_after: None }
        );
        assert_eq!(
            classify_response(StatusCode::NOT_FOUND, &none),
            ResponseVerdict::Rejected
        );
        assert_eq!(
            classify_response(StatusCode::MOVED_PERMANENTLY, &none),
            ResponseVerdict::Rejected
        );
    }
}
