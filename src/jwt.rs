//! Session tokens (JWT, SPEC §7) for the dashboard and admin routes: `sub` is the account id, `role`
//! is `admin` or `user`. The algorithm is pinned by config (`auth.jwt.algorithm`): HS256 with a secret
//! read from the environment variable `auth.jwt.secret_env`, or RS256/ES256 with a public key PEM.
//! `exp` is required; `iss` and `aud` are checked when configured. `alg: none`, another algorithm than
//! the pinned one (HS/RS confusion), a bad signature, an expired token and a wrong issuer or audience
//! are all the same 401.

use std::time::Duration;

use anyhow::{bail, Context};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{JwtAlgorithm, JwtSettings};

/// HS256 secrets shorter than this are refused at start-up.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The account id, as a string (RFC 7519).
    pub sub: String,
    pub role: Role,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The token's id: a signed-out token is remembered by it until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The API key a console session was signed in with: the session ends when that key does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Who holds a valid session token.
#[derive(Debug, Clone)]
pub struct Session {
    pub account_id: i64,
    pub role: Role,
    /// When the token expires (Unix seconds).
    pub expires_at: u64,
    /// When it was issued (Unix seconds), if it says.
    pub issued_at: Option<u64>,
    pub token_id: Option<String>,
    pub key_id: Option<String>,
}

pub struct JwtAuth {
    algorithm: Algorithm,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtAuth {
    /// `None` when no key material is configured (the dashboard routes then answer 401); an error when
    /// it is configured but unusable.
    pub fn from_settings(settings: &JwtSettings) -> anyhow::Result<Option<JwtAuth>> {
        let algorithm = header_algorithm(settings.algorithm);
        let decoding = match settings.algorithm {
            JwtAlgorithm::Hs256 => match hs256_secret(settings)? {
                Some(secret) => DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                None => return Ok(None),
            },
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                if settings.public_key_path.as_os_str().is_empty() {
                    return Ok(None);
                }
                let path = &settings.public_key_path;
                let pem = std::fs::read(path)
                    .with_context(|| format!("auth.jwt.public_key_path: cannot read {}", path.display()))?;
                let key = if settings.algorithm == JwtAlgorithm::Rs256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                key.with_context(|| {
                    format!("auth.jwt.public_key_path: {} is not a {algorithm:?} public key PEM", path.display())
                })?
            }
        };
        Ok(Some(JwtAuth { algorithm, decoding, validation: validation(algorithm, settings) }))
    }

    /// The session a bearer token stands for; `None` for every kind of invalid token.
    pub fn verify(&self, token: &str) -> Option<Session> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        if data.header.alg != self.algorithm {
            return None;
        }
        let claims = data.claims;
        let account_id = claims.sub.parse::<i64>().ok().filter(|id| *id > 0)?;
        Some(Session {
            account_id,
            role: claims.role,
            expires_at: claims.exp,
            issued_at: claims.iat,
            token_id: claims.jti,
            key_id: claims.key_id,
        })
    }
}

fn validation(algorithm: Algorithm, settings: &JwtSettings) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_exp = true;
    // A token that says it is not valid yet is not.
    validation.validate_nbf = true;
    if settings.issuer.is_empty() {
        validation.iss = None;
    } else {
        validation.set_issuer(&[&settings.issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    if settings.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&[&settings.audience]);
        validation.required_spec_claims.insert("aud".into());
    }
    validation
}

/// Signs and checks the console's session cookies (HS256). With an HS256 secret configured it is that
/// secret, so every replica honours a cookie and a cookie's token is a bearer token too. Otherwise
/// (no secret, or RS256/ES256 where the gateway holds only the public key) it is a random secret of
/// this process: sessions then end when the process restarts and are not shared between replicas.
pub struct SessionSigner {
    encoding: EncodingKey,
    verifier: JwtAuth,
    issuer: Option<String>,
    audience: Option<String>,
    /// Whether the secret is the configured one (shared by every replica).
    pub shared: bool,
}

impl SessionSigner {
    pub fn from_settings(settings: &JwtSettings) -> anyhow::Result<SessionSigner> {
        let configured = match settings.algorithm {
            JwtAlgorithm::Hs256 => hs256_secret(settings)?,
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => None,
        };
        let shared = configured.is_some();
        let secret = configured.unwrap_or_else(|| {
            let bytes: [u8; 32] = rand::random();
            SecretString::from(hex::encode(bytes))
        });
        let bytes = secret.expose_secret().as_bytes();
        let verifier = JwtAuth {
            algorithm: Algorithm::HS256,
            decoding: DecodingKey::from_secret(bytes),
            validation: validation(Algorithm::HS256, settings),
        };
        Ok(SessionSigner {
            encoding: EncodingKey::from_secret(bytes),
            verifier,
            issuer: (!settings.issuer.is_empty()).then(|| settings.issuer.clone()),
            audience: (!settings.audience.is_empty()).then(|| settings.audience.clone()),
            shared,
        })
    }

    /// A token for `account_id` with `role`, valid for `ttl`, bound to the API key `key_id` when
    /// it was signed in with one.
    pub fn mint(
        &self,
        account_id: i64,
        role: Role,
        ttl: Duration,
        key_id: Option<&str>,
    ) -> anyhow::Result<(String, u64)> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: account_id.to_string(),
            role,
            exp: now + ttl.as_secs(),
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: Some(format!("ses_{}", ulid::Ulid::new())),
            key_id: key_id.map(str::to_owned),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing the session")?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Option<Session> {
        self.verifier.verify(token)
    }
}

/// The `alg` of a token header signed with `algorithm`.
fn header_algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

/// The HS256 secret from the environment variable the config names; `None` when it is unset or empty.
fn hs256_secret(settings: &JwtSettings) -> anyhow::Result<Option<SecretString>> {
    let secret = std::env::var(&settings.secret_env).unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    if secret.len() < MIN_SECRET_BYTES {
        bail!("auth.jwt.secret_env: ${} must hold at least {MIN_SECRET_BYTES} bytes", settings.secret_env);
    }
    Ok(Some(SecretString::from(secret)))
}

/// Mints an HS256 token (CLI `token mint`, for development). RS256/ES256 tokens are minted by whoever
/// holds the private key.
pub fn mint(settings: &JwtSettings, account_id: i64, role: Role, ttl: Duration) -> anyhow::Result<String> {
    if settings.algorithm != JwtAlgorithm::Hs256 {
        bail!("token mint signs HS256 tokens only; auth.jwt.algorithm is {}", settings.algorithm);
    }
    hs256_secret(settings)?
        .with_context(|| format!("token mint needs the HS256 secret in ${}", settings.secret_env))?;
    // With the secret configured, the session signer signs with exactly that secret.
    let (token, _) = SessionSigner::from_settings(settings)?.mint(account_id, role, ttl, None)?;
    Ok(token)
}

/// `90s`, `15m`, `1h`, `7d` (or plain seconds).
pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = number.parse().with_context(|| format!("--ttl `{text}`: expected e.g. 30m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3600,
        "d" => value * 86_400,
        _ => bail!("--ttl `{text}`: unit must be s, m, h or d"),
    };
    if seconds == 0 {
        bail!("--ttl must be above 0");
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_signers_without_a_configured_secret_trust_only_their_own_tokens() {
        let settings = JwtSettings { secret_env: "AIO_TEST_UNSET_SESSION_SECRET".into(), ..JwtSettings::default() };
        let signer = SessionSigner::from_settings(&settings).expect("a signer");
        let other = SessionSigner::from_settings(&settings).expect("another process");
        assert!(!signer.shared);
        let (token, expires_at) = signer.mint(7, Role::Admin, Duration::from_secs(60), Some("key_1")).expect("mint");
        let session = signer.verify(&token).expect("its own token");
        assert_eq!((session.account_id, session.role, session.expires_at), (7, Role::Admin, expires_at));
        assert_eq!(session.key_id.as_deref(), Some("key_1"));
        assert!(session.token_id.is_some_and(|id| id.starts_with("ses_")));
        assert!(other.verify(&token).is_none(), "another process's random secret");
        assert!(signer.verify(&format!("{token}x")).is_none());
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m").ok(), Some(Duration::from_secs(900)));
        assert!(parse_ttl("0s").is_err() && parse_ttl("h").is_err() && parse_ttl("1y").is_err());
    }
}
