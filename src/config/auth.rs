//! API keys, the dashboard's session tokens (JWT) and the console's sign-in.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{durations, lists};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// `key_cache_ttl_secs`. How long a successful API-key lookup is served from memory. Revocation
    /// takes effect within it.
    #[serde(rename = "key_cache_ttl_secs", with = "durations::secs")]
    pub key_cache_ttl: Duration,
    /// Session tokens of the dashboard and admin routes.
    pub jwt: JwtSettings,
    /// The web console's sign-in (an API key exchanged for a session cookie).
    pub session: SessionSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            key_cache_ttl: Duration::from_secs(30),
            jwt: JwtSettings::default(),
            session: SessionSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// `ttl_secs`. How long a console session (its cookie and the token in it) lasts.
    #[serde(rename = "ttl_secs", with = "durations::positive_secs")]
    pub ttl: Duration,
    /// Accounts whose console sessions have the `admin` role; every other account signs in as `user`.
    /// From the environment: `AIO__AUTH__SESSION__ADMIN_ACCOUNTS=1,7`.
    #[serde(deserialize_with = "lists::deserialize_account_ids")]
    pub admin_accounts: Vec<i64>,
    /// `reauth_secs`. Creating an API key needs a session signed in at most this long ago (a stolen
    /// session cannot mint a lasting key).
    #[serde(rename = "reauth_secs", with = "durations::positive_secs")]
    pub reauth: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(3600), admin_accounts: Vec::new(), reauth: Duration::from_secs(600) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// Pinned: tokens signed any other way are refused.
    pub algorithm: JwtAlgorithm,
    /// HS256: the environment variable that holds the secret (at least 32 bytes). Unset variable: the
    /// dashboard and admin routes answer 401.
    pub secret_env: String,
    /// RS256/ES256: the PEM file of the public key.
    pub public_key_path: PathBuf,
    /// Checked when set.
    pub issuer: String,
    pub audience: String,
    /// `leeway_secs`. Clock skew tolerated on `exp`.
    #[serde(rename = "leeway_secs", with = "durations::secs")]
    pub leeway: Duration,
}

/// The signing algorithms a session token may be pinned to, spelled as in a JWT header.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// A shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// An RSA public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// An ECDSA P-256 public key.
    #[serde(rename = "ES256")]
    Es256,
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        })
    }
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            secret_env: "AIO_JWT_SECRET".into(),
            public_key_path: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
        }
    }
}
