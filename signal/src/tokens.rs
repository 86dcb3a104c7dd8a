//! Play and publish tokens: what an RTSP URL carries to prove that the server issued it.
//!
//! The form is the platform's: the URL path is `/v1.0/live/{content}.{signature}` with
//! `content = base64url(JSON)` and `signature = base64url(HMAC-SHA256(key, content))`, so the
//! token rides in the path (some clients mangle long query strings). Unlike the platform, the
//! key lives in the data directory (URLs survive a restart), the JSON carries an expiry that
//! is checked, and the operation (`play` or `publish`) is signed too: a play URL cannot publish.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The path prefix of every play and publish URL.
pub const LIVE_PATH_PREFIX: &str = "/v1.0/live/";

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenOp {
    /// Watch the stream (RTSP DESCRIBE/SETUP/PLAY).
    Play,
    /// Feed the stream (RTSP ANNOUNCE/SETUP/RECORD).
    Publish,
}

/// The signed content of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamGrant {
    /// Device UID (or pulled source id).
    pub uid: String,
    /// Channel number.
    pub channel: u8,
    /// `mainStream`, `subStream` or `externStream`.
    #[serde(rename = "streamType")]
    pub stream_type: String,
    /// What the holder may do.
    pub op: TokenOp,
    /// Unix seconds after which the token is refused.
    pub exp: u64,
    /// For a recording's replay (`streamType` `replay`): the file name the device replays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Why a token was refused. `Forged`, `Malformed` and `Expired` are 401 in RTSP terms,
/// `WrongOperation` is 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The path holds no token.
    #[error("no stream token in the URL")]
    Missing,
    /// Not of the form content.signature, or the content is not our JSON.
    #[error("malformed stream token")]
    Malformed,
    /// The signature does not match: not issued by this server.
    #[error("stream token signature does not match")]
    Forged,
    /// Issued by this server, but expired.
    #[error("stream token expired at {exp}")]
    Expired {
        /// Unix seconds.
        exp: u64,
    },
    /// A play token used to publish, or the other way round.
    #[error("stream token grants {granted:?}, not {wanted:?}")]
    WrongOperation {
        /// What the token allows.
        granted: TokenOp,
        /// What was attempted.
        wanted: TokenOp,
    },
}

impl TokenError {
    /// The RTSP (and HTTP) status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::WrongOperation { .. } => 403,
            _ => 401,
        }
    }
}

/// Signs and checks tokens with the data directory's token key.
#[derive(Clone)]
pub struct TokenSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer over `key` (from [`crate::secrets::Secrets::token_key`]).
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The path (`/v1.0/live/…`) of a URL granting `grant`.
    pub fn sign_path(&self, grant: &StreamGrant) -> String {
        let json = serde_json::to_vec(grant).unwrap_or_default();
        let content = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(content.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{LIVE_PATH_PREFIX}{content}.{signature}")
    }

    /// A full URL: `{scheme}://{host}:{port}/v1.0/live/{token}`.
    pub fn sign_url(&self, scheme: &str, host: &str, port: u16, grant: &StreamGrant) -> String {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("{scheme}://{host}:{port}{}", self.sign_path(grant))
    }

    /// Checks the token in an RTSP request path (anything after the token's last `/`
    /// segment, such as a `trackID=0` control suffix, is the caller's to strip first).
    pub fn verify_path(
        &self,
        path: &str,
        wanted: TokenOp,
        now: u64,
    ) -> Result<StreamGrant, TokenError> {
        let token = path
            .strip_prefix(LIVE_PATH_PREFIX)
            .ok_or(TokenError::Missing)?;
        let token = token.trim_end_matches('/');
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN || token.contains('/') {
            return Err(TokenError::Malformed);
        }
        let (content, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(content.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Forged)?;
        let json = URL_SAFE_NO_PAD
            .decode(content)
            .map_err(|_| TokenError::Malformed)?;
        let grant: StreamGrant =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if grant.exp < now {
            return Err(TokenError::Expired { exp: grant.exp });
        }
        if grant.op != wanted {
            return Err(TokenError::WrongOperation {
                granted: grant.op,
                wanted,
            });
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(op: TokenOp, exp: u64) -> StreamGrant {
        StreamGrant {
            uid: "952700000A5S348E".into(),
            channel: 0,
            stream_type: "mainStream".into(),
            op,
            exp,
            file: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let signer = TokenSigner::new([7; 32]);
        let path = signer.sign_path(&grant(TokenOp::Play, 100));
        assert!(path.starts_with(LIVE_PATH_PREFIX));
        assert_eq!(
            signer.verify_path(&path, TokenOp::Play, 50).unwrap(),
            grant(TokenOp::Play, 100)
        );
        assert_eq!(
            signer.verify_path(&path, TokenOp::Play, 101),
            Err(TokenError::Expired { exp: 100 })
        );
        let err = signer.verify_path(&path, TokenOp::Publish, 50).unwrap_err();
        assert_eq!(err.status(), 403);
        let other = TokenSigner::new([8; 32]);
        assert_eq!(
            other.verify_path(&path, TokenOp::Play, 50),
            Err(TokenError::Forged)
        );
        assert_eq!(
            signer.verify_path("/v1.0/live/", TokenOp::Play, 50),
            Err(TokenError::Missing)
        );
        assert_eq!(
            signer.verify_path("/other", TokenOp::Play, 50),
            Err(TokenError::Missing)
        );
        assert_eq!(
            signer.verify_path("/v1.0/live/abc", TokenOp::Play, 50),
            Err(TokenError::Malformed)
        );
        // A token whose content was changed (another UID) no longer matches its signature.
        let (content, sig) = path[LIVE_PATH_PREFIX.len()..].split_once('.').unwrap();
        let mut forged = grant(TokenOp::Play, 100);
        forged.uid = "AAAAAAAAAAAAAAAA".into();
        let forged_content = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_ne!(forged_content, content);
        let forged_path = format!("{LIVE_PATH_PREFIX}{forged_content}.{sig}");
        assert_eq!(
            signer.verify_path(&forged_path, TokenOp::Play, 50),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn url_form() {
        let signer = TokenSigner::new([1; 32]);
        let url = signer.sign_url("rtsp", "localhost", 61008, &grant(TokenOp::Play, 5));
        assert!(url.starts_with("rtsp://localhost:61008/v1.0/live/"));
        let url = signer.sign_url("rtsp", "::1", 61008, &grant(TokenOp::Play, 5));
        assert!(url.starts_with("rtsp://[::1]:61008/v1.0/live/"));
    }
}
