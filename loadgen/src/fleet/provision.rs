//! Provisioning a simulated device the way a camera enrols (rop-protocol.md, "Provisioning
//! flow"): initialization session on the client API, the CA from the CA port (checked against
//! `caHash`), credentials with the one-time code, registration over mutual TLS. The result is an
//! [`Identity`], cached on disk per UID so that a rerun against the same server does not
//! provision again (and a server that no longer knows the device gets it re-provisioned).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use signal::proto::access_key::AccessKeyPair;
use signal::proto::http::{encode_request, Limits, ParsedResponse, ResponseParser};

/// How long one HTTP exchange (connect, TLS, request, response) may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response we read (a certificate chain and key is about 3 KB).
const MAX_RESPONSE: usize = 256 * 1024;

/// Everything a provisioned device keeps: its certificate and key, the CA, the access key pair
/// and where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: String,
    /// The server's name (for SNI and certificate checks), from the initialization session.
    pub host: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    #[serde(rename = "accesskey")]
    pub access_key: String,
    #[serde(rename = "secretAccesskey")]
    pub secret: String,
    #[serde(rename = "keepAliveTCPPort")]
    pub keepalive_port: u16,
    #[serde(rename = "signalingTLSPort")]
    pub signaling_port: u16,
}

impl Identity {
    pub fn access_keys(&self) -> AccessKeyPair {
        AccessKeyPair {
            access_key: self.access_key.clone(),
            secret: self.secret.clone(),
        }
    }

    /// The device's TLS client configuration (its certificate, trusting the CA).
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, ProvisionError> {
        pki::client_config_for_device(&self.ca_pem, &self.cert_pem, &self.key_pem)
            .map_err(|e| ProvisionError::Tls(format!("device TLS configuration: {e}")))
    }

    pub fn server_name(&self) -> Result<ServerName<'static>, ProvisionError> {
        server_name(&self.host)
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, ProvisionError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| ProvisionError::Protocol(format!("server host {host:?} is not a name")))
}

/// Why a device could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{step}: TLS: {source}")]
    TlsIo {
        step: &'static str,
        #[source]
        source: rt::TlsError,
    },
    #[error("{0}")]
    Tls(String),
    #[error("{step}: HTTP {status}: {body}")]
    Status {
        step: &'static str,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Protocol(String),
}

impl ProvisionError {
    /// A short label for error counts.
    pub fn kind(&self) -> String {
        match self {
            ProvisionError::Io { step, source } => format!("{step}: {}", source.kind()),
            ProvisionError::TlsIo { step, .. } => format!("{step}: TLS"),
            ProvisionError::Tls(_) => "TLS configuration".into(),
            ProvisionError::Status { step, status, .. } => format!("{step}: HTTP {status}"),
            ProvisionError::Protocol(_) => "unexpected response".into(),
        }
    }
}

/// Where the device's files live: one JSON file per UID.
#[derive(Debug, Clone)]
pub struct IdentityCache {
    dir: PathBuf,
}

impl IdentityCache {
    pub fn open(dir: &Path) -> io::Result<IdentityCache> {
        std::fs::create_dir_all(dir)?;
        Ok(IdentityCache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    /// The cached identity of `uid`, if there is a readable one.
    pub fn load(&self, uid: &str) -> Option<Identity> {
        let text = std::fs::read(self.path(uid)).ok()?;
        serde_json::from_slice::<Identity>(&text)
            .ok()
            .filter(|identity| identity.uid == uid)
    }

    /// Stores `identity` (written to a temporary file, then renamed: never half a file).
    pub fn store(&self, identity: &Identity) -> io::Result<()> {
        let path = self.path(&identity.uid);
        let temp = path.with_extension("json.tmp");
        std::fs::write(&temp, serde_json::to_vec_pretty(identity)?)?;
        std::fs::rename(temp, path)
    }

    /// Forgets `uid` (the server refused its identity).
    pub fn forget(&self, uid: &str) {
        let _ = std::fs::remove_file(self.path(uid));
    }
}

/// Where and how to provision.
#[derive(Debug, Clone)]
pub struct ProvisionTarget {
    /// The client API (plain HTTP).
    pub api: SocketAddr,
    /// Address the device ports are reached at (the initialization session names a host).
    pub device_ip: IpAddr,
    /// Bearer token for the client API, if it wants one.
    pub api_token: Option<String>,
}

/// Provisions `uid` from scratch.
pub async fn provision(target: &ProvisionTarget, uid: &str) -> Result<Identity, ProvisionError> {
    let step = "initialization session";
    let stream = connect(target.api, step).await?;
    let session = http_json(
        stream,
        step,
        "POST",
        "/v1.0/devices/initialization-session",
        target.api_token.as_deref(),
        Some(&json!({ "uid": uid })),
    )
    .await?;
    let host = text(&session, "host", step)?.to_owned();
    let port = |name: &str| {
        session[name]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| ProvisionError::Protocol(format!("{step}: no {name} in {session}")))
    };
    let (ca_port, cert_port, register_port) = (
        port("getCAPort")?,
        port("getCertPort")?,
        port("registerPort")?,
    );
    let code = text(&session, "code", step)?.to_owned();
    let ca_hash = text(&session, "caHash", step)?.to_owned();
    let name = server_name(&host)?;

    let step = "CA download";
    let stream = tls_connect(
        SocketAddr::new(target.device_ip, ca_port),
        unverified_config(),
        name.clone(),
        step,
    )
    .await?;
    let ca = http_json(stream, step, "GET", "/v1.0/ca", None, None).await?;
    let ca_pem = text(&ca, "ca", step)?.to_owned();
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(ca_pem.as_bytes()));
    if hash != ca_hash {
        return Err(ProvisionError::Protocol(format!(
            "{step}: the CA's SHA-256 {hash} is not the caHash {ca_hash} of the session"
        )));
    }

    let step = "credentials";
    let trusting = pki::client_config_trusting(&ca_pem)
        .map_err(|e| ProvisionError::Tls(format!("the server's CA: {e}")))?;
    let stream = tls_connect(
        SocketAddr::new(target.device_ip, cert_port),
        trusting,
        name.clone(),
        step,
    )
    .await?;
    let credentials = http_json(
        stream,
        step,
        "POST",
        "/v1.0/devices/credetials",
        None,
        Some(&json!({ "uid": uid, "code": code })),
    )
    .await?;
    let mut identity = Identity {
        uid: uid.to_owned(),
        host,
        ca_pem,
        cert_pem: text(&credentials, "cert", step)?.to_owned(),
        key_pem: text(&credentials, "key", step)?.to_owned(),
        access_key: String::new(),
        secret: String::new(),
        keepalive_port: 0,
        signaling_port: 0,
    };

    let step = "registration";
    let stream = tls_connect(
        SocketAddr::new(target.device_ip, register_port),
        identity.tls_config()?,
        name,
        step,
    )
    .await?;
    let registration = http_json(
        stream,
        step,
        "POST",
        "/v1.0/devices/registration",
        None,
        Some(&json!({ "uid": uid })),
    )
    .await?;
    let registered: Registration = serde_json::from_value(registration.clone())
        .map_err(|e| ProvisionError::Protocol(format!("{step}: {e}: {registration}")))?;
    identity.access_key = registered.access_key;
    identity.secret = registered.secret;
    identity.keepalive_port = registered.keepalive_port;
    identity.signaling_port = registered.signaling_port;
    Ok(identity)
}

/// A live play URL for `uid`'s channel 0 from the client API
/// (`POST /v1.0/devices/{uid}/live/play-session`).
pub async fn live_play_url(
    target: &ProvisionTarget,
    uid: &str,
    stream_type: &str,
) -> Result<String, ProvisionError> {
    let step = "play session";
    let stream = connect(target.api, step).await?;
    let session = http_json(
        stream,
        step,
        "POST",
        &format!("/v1.0/devices/{uid}/live/play-session"),
        target.api_token.as_deref(),
        Some(&json!({ "channel": 0, "streamType": stream_type })),
    )
    .await?;
    Ok(text(&session, "playURL", step)?.to_owned())
}

#[derive(Deserialize)]
struct Registration {
    #[serde(rename = "accesskey")]
    access_key: String,
    #[serde(rename = "secretAccesskey")]
    secret: String,
    #[serde(rename = "keepAliveTCPPort")]
    keepalive_port: u16,
    #[serde(rename = "signalingTLSPort")]
    signaling_port: u16,
}

fn text<'a>(value: &'a Value, field: &str, step: &str) -> Result<&'a str, ProvisionError> {
    value[field]
        .as_str()
        .ok_or_else(|| ProvisionError::Protocol(format!("{step}: no {field} in {value}")))
}

async fn connect(addr: SocketAddr, step: &'static str) -> Result<rt::TcpStream, ProvisionError> {
    rt::TcpStream::connect_timeout(addr, HTTP_TIMEOUT)
        .await
        .map_err(|source| ProvisionError::Io { step, source })
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    step: &'static str,
) -> Result<rt::TlsStream<rustls::ClientConnection>, ProvisionError> {
    let tcp = connect(addr, step).await?;
    rt::tls::connect(tcp, config, name, HTTP_TIMEOUT)
        .await
        .map_err(|source| ProvisionError::TlsIo { step, source })
}

/// One request on its own connection (`Connection: close`); the JSON body of a 200 response.
pub async fn http_json<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    step: &'static str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<Value, ProvisionError> {
    let exchange = async {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("connection", "close");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(body.map(Value::to_string).unwrap_or_default())
            .map_err(|e| ProvisionError::Protocol(format!("{step}: request: {e}")))?;
        let mut bytes = Vec::new();
        encode_request(&request, &mut bytes);
        let io = |source| ProvisionError::Io { step, source };
        stream.write_all(&bytes).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        let parser = ResponseParser::new(Limits {
            max_body: MAX_RESPONSE,
            ..Limits::default()
        });
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut chunk).await.map_err(io)?;
            received.extend_from_slice(&chunk[..n]);
            let parsed = if n == 0 {
                parser.parse_at_eof(&received)
            } else {
                parser.parse(&received)
            }
            .map_err(|e| ProvisionError::Protocol(format!("{step}: bad response: {e}")))?;
            match parsed {
                ParsedResponse::Complete { response, consumed } => {
                    if response.status().is_informational() {
                        received.drain(..consumed);
                        continue;
                    }
                    let status = response.status().as_u16();
                    let body = response.into_body();
                    if status != 200 {
                        return Err(ProvisionError::Status {
                            step,
                            status,
                            body: String::from_utf8_lossy(&body[..body.len().min(300)])
                                .into_owned(),
                        });
                    }
                    return serde_json::from_slice(&body).map_err(|e| {
                        ProvisionError::Protocol(format!("{step}: body is not JSON: {e}"))
                    });
                }
                ParsedResponse::Partial if received.len() > MAX_RESPONSE + 16 * 1024 => {
                    return Err(ProvisionError::Protocol(format!(
                        "{step}: response larger than {MAX_RESPONSE} bytes"
                    )))
                }
                ParsedResponse::Partial => {}
            }
        }
    };
    match rt::timer::timeout(HTTP_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ProvisionError::Io {
            step,
            source: io::Error::new(io::ErrorKind::TimedOut, "no complete response"),
        }),
    }
}

/// The CA port is what a device learns the CA from, so it cannot check the certificate there;
/// it checks the CA it downloads against the session's `caHash` instead (as cameras do).
fn unverified_config() -> Arc<rustls::ClientConfig> {
    let provider = pki::crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: &str) -> Identity {
        Identity {
            uid: uid.into(),
            host: "localhost".into(),
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            access_key: "testKeyIndex0001abcdef0123456789".into(),
            secret: "s".repeat(32),
            keepalive_port: 61003,
            signaling_port: 61005,
        }
    }

    #[test]
    fn cache_keeps_identities_across_opens_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let cache = IdentityCache::open(&dir.path().join("ids")).unwrap();
        assert_eq!(cache.load("95270000000000A1"), None);
        cache.store(&identity("95270000000000A1")).unwrap();
        let reopened = IdentityCache::open(&dir.path().join("ids")).unwrap();
        assert_eq!(
            reopened.load("95270000000000A1"),
            Some(identity("95270000000000A1"))
        );
        // A file under another UID's name is not taken for it.
        std::fs::copy(
            dir.path().join("ids/95270000000000A1.json"),
            dir.path().join("ids/95270000000000A2.json"),
        )
        .unwrap();
        assert_eq!(reopened.load("95270000000000A2"), None);
        // Garbage is no identity.
        std::fs::write(dir.path().join("ids/95270000000000A3.json"), b"{not json").unwrap();
        assert_eq!(reopened.load("95270000000000A3"), None);
        reopened.forget("95270000000000A1");
        assert_eq!(cache.load("95270000000000A1"), None);
    }
}
