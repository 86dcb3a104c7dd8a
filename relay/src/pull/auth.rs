//! Client side of RTSP authentication: the `Authorization` header for a source that answered 401
//! with a Basic or Digest challenge (RFC 2617, and RFC 7616's MD5 and SHA-256 forms with
//! `qop=auth`). Cameras mostly send Digest MD5 without qop (live555, GStreamer, Hikvision) or
//! Basic; a server offering both gets Digest, so the password never crosses the wire.
#![forbid(unsafe_code)]

use base64::Engine as _;
use md5::Md5;
use sha2::{Digest as _, Sha256};

use crate::proto::rtsp::Challenge;

/// Digest hash algorithms we answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    fn parse(name: Option<&str>) -> Option<Algorithm> {
        match name.map(str::to_ascii_uppercase).as_deref() {
            None | Some("MD5") => Some(Algorithm::Md5),
            Some("MD5-SESS") => Some(Algorithm::Md5Sess),
            Some("SHA-256") => Some(Algorithm::Sha256),
            Some("SHA-256-SESS") => Some(Algorithm::Sha256Sess),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn hash(self, text: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(text.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(text.as_bytes())),
        }
    }

    fn is_session(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No Basic or Digest challenge with an algorithm we know.
    #[error("the source asks for authentication we do not speak: {offered}")]
    Unsupported {
        /// The schemes (and algorithms) offered.
        offered: String,
    },
    /// A Digest challenge without a nonce.
    #[error("Digest challenge without a nonce")]
    NoNonce,
}

/// The scheme chosen from a 401, kept for every later request of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
    scheme: Scheme,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Basic,
    Digest {
        realm: String,
        nonce: String,
        opaque: Option<String>,
        algorithm: Algorithm,
        /// `qop=auth` offered: send nc and cnonce.
        qop_auth: bool,
        cnonce: String,
        nonce_count: u32,
    },
}

impl Credentials {
    /// Chooses among the challenges of a 401 (Digest before Basic). `cnonce` is the client
    /// nonce used with `qop=auth` (random per session; fixed in tests).
    pub fn answer(
        username: &str,
        password: &str,
        challenges: &[Challenge],
        cnonce: String,
    ) -> Result<Credentials, AuthError> {
        let digest = challenges
            .iter()
            .filter(|c| c.is("Digest"))
            .find_map(|c| Algorithm::parse(c.param("algorithm")).map(|a| (c, a)));
        let scheme = if let Some((challenge, algorithm)) = digest {
            let nonce = challenge.param("nonce").ok_or(AuthError::NoNonce)?;
            let qop_auth = challenge.param("qop").is_some_and(|qop| {
                qop.split(',')
                    .any(|q| q.trim().eq_ignore_ascii_case("auth"))
            });
            Scheme::Digest {
                realm: challenge.param("realm").unwrap_or_default().to_owned(),
                nonce: nonce.to_owned(),
                opaque: challenge.param("opaque").map(str::to_owned),
                algorithm,
                qop_auth,
                cnonce,
                nonce_count: 0,
            }
        } else if challenges.iter().any(|c| c.is("Basic")) {
            Scheme::Basic
        } else {
            let offered: Vec<String> = challenges
                .iter()
                .map(|c| match c.param("algorithm") {
                    Some(a) => format!("{} {a}", c.scheme),
                    None => c.scheme.clone(),
                })
                .collect();
            return Err(AuthError::Unsupported {
                offered: if offered.is_empty() {
                    "no WWW-Authenticate challenge".to_owned()
                } else {
                    offered.join(", ")
                },
            });
        };
        Ok(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            scheme,
        })
    }

    /// Whether a Digest challenge says only the nonce went stale (retry with the new nonce).
    pub fn is_stale(challenges: &[Challenge]) -> bool {
        challenges.iter().any(|c| {
            c.is("Digest")
                && c.param("stale")
                    .is_some_and(|s| s.eq_ignore_ascii_case("true"))
        })
    }

    /// The `Authorization` value for a request of `method` on `uri`.
    pub fn authorization(&mut self, method: &str, uri: &str) -> String {
        match &mut self.scheme {
            Scheme::Basic => {
                let pair = format!("{}:{}", self.username, self.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Scheme::Digest {
                realm,
                nonce,
                opaque,
                algorithm,
                qop_auth,
                cnonce,
                nonce_count,
            } => {
                let algorithm = *algorithm;
                let mut ha1 =
                    algorithm.hash(&format!("{}:{realm}:{}", self.username, self.password));
                if algorithm.is_session() {
                    ha1 = algorithm.hash(&format!("{ha1}:{nonce}:{cnonce}"));
                }
                let ha2 = algorithm.hash(&format!("{method}:{uri}"));
                let mut value = format!(
                    "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\"",
                    quote_safe(&self.username)
                );
                let response = if *qop_auth {
                    *nonce_count += 1;
                    let nc = format!("{:08x}", nonce_count);
                    let response =
                        algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
                    value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
                    response
                } else {
                    algorithm.hash(&format!("{ha1}:{nonce}:{ha2}"))
                };
                value.push_str(&format!(", response=\"{response}\""));
                if algorithm != Algorithm::Md5 {
                    value.push_str(&format!(", algorithm={}", algorithm.name()));
                }
                if let Some(opaque) = opaque {
                    value.push_str(&format!(", opaque=\"{}\"", quote_safe(opaque)));
                }
                value
            }
        }
    }
}

/// A value put between quotes: quotes and backslashes escaped.
fn quote_safe(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenges(values: &[&str]) -> Vec<Challenge> {
        values
            .iter()
            .map(|v| Challenge::parse(v).unwrap())
            .collect()
    }

    #[test]
    fn rfc2617_example_response() {
        // RFC 2617 section 3.5 (with RTSP's method and URI it is the same computation).
        let offered = challenges(&[
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        ]);
        let mut creds =
            Credentials::answer("Mufasa", "Circle Of Life", &offered, "0a4f113b".into()).unwrap();
        let value = creds.authorization("GET", "/dir/index.html");
        assert!(
            value.contains(r#"response="6629fae49393a05397450978507c4ef1""#),
            "{value}"
        );
        assert!(value.contains("nc=00000001"));
        assert!(value.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
        assert!(creds.authorization("GET", "/").contains("nc=00000002"));
    }

    #[test]
    fn digest_without_qop_and_preferred_over_basic() {
        let offered = challenges(&[r#"Basic realm="cam""#, r#"Digest realm="cam", nonce="abc""#]);
        let mut creds = Credentials::answer("u", "p", &offered, "x".into()).unwrap();
        let value = creds.authorization("DESCRIBE", "rtsp://h/s");
        let ha1 = hex(&Md5::digest(b"u:cam:p"));
        let ha2 = hex(&Md5::digest(b"DESCRIBE:rtsp://h/s"));
        let expected = hex(&Md5::digest(format!("{ha1}:abc:{ha2}").as_bytes()));
        assert!(
            value.contains(&format!("response=\"{expected}\"")),
            "{value}"
        );
        assert!(!value.contains("qop"));
    }

    #[test]
    fn basic_and_unsupported() {
        let mut creds = Credentials::answer(
            "u",
            "p",
            &challenges(&[r#"Basic realm="x""#]),
            String::new(),
        )
        .unwrap();
        assert_eq!(creds.authorization("OPTIONS", "*"), "Basic dTpw");
        let err = Credentials::answer(
            "u",
            "p",
            &challenges(&[r#"Digest realm="x", nonce="n", algorithm=SHA-512-256"#]),
            String::new(),
        )
        .unwrap_err();
        assert!(matches!(err, AuthError::Unsupported { .. }));
        assert!(Credentials::is_stale(&challenges(&[
            r#"Digest realm="x", nonce="n", stale=TRUE"#
        ])));
    }
}
