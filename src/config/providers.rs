//! The `[providers.<id>]` tables: which upstream, where, with which key, and how it calls back.

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::durations;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Simulated,
    Kie,
    Wavespeed,
    Fal,
    Replicate,
    Openai,
    Worker,
}

/// Which providers serve (SPEC §9): with no real provider configured the simulated one serves every
/// model (`demo`); once one is, only real ones do (`live`), unless `catalog.allow_simulated_fallback`
/// keeps the simulated routes beside them (`staging`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderMode {
    Demo,
    Live,
    Staging,
}

impl ProviderMode {
    pub fn serves_simulated(self) -> bool {
        self != ProviderMode::Live
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderMode::Demo => "demo",
            ProviderMode::Live => "live",
            ProviderMode::Staging => "staging",
        }
    }
}

/// One `[providers.<id>]` table. Secrets are named by environment variable, never given by value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub kind: ProviderKind,
    /// Shown to clients in the catalog, e.g. `KIE`.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `timeout_secs`. One upstream request may take this long (connect, send, answer).
    #[serde(rename = "timeout_secs", default = "default_timeout", with = "durations::positive_secs")]
    pub timeout: Duration,
    /// `delay_ms`. Simulated provider: completion delay when the prompt has no `[simulate:delay=MS]`.
    #[serde(rename = "delay_ms", default, with = "durations::option_millis")]
    pub delay: Option<Duration>,
    /// The key read from `api_key_env` at start-up ([`super::Settings::load`]); never serialised. A real
    /// provider without one is inactive: its routes are not used.
    #[serde(skip)]
    pub api_key: Option<SecretString>,
    /// Give the provider a callback URL (`/api/v1/callbacks/{id}/{token}`), for kinds that call back.
    #[serde(default = "default_true")]
    pub callbacks: bool,
    /// `callback_poll_secs`. With callbacks on, polling is only the fallback: at most one poll per this
    /// long.
    #[serde(rename = "callback_poll_secs", default = "default_callback_poll", with = "durations::secs")]
    pub callback_poll: Duration,
    /// Settle from a callback's own body instead of confirming it with the provider's status API.
    #[serde(default)]
    pub trust_callback_payload: bool,
    /// `record_grace_secs`. For this long after a task is created, a status answer saying the job does
    /// not exist (KIE's "recordInfo is null" right after createTask) means it is still starting.
    #[serde(rename = "record_grace_secs", default = "default_record_grace", with = "durations::secs")]
    pub record_grace: Duration,
    /// The name of the environment variable with the provider's callback signing key (KIE's
    /// `webhookHmacKey`, WaveSpeed's or Replicate's webhook secret); when set, unsigned or badly signed callbacks
    /// are refused.
    #[serde(default)]
    pub webhook_hmac_key_env: Option<String>,
    /// Read from `webhook_hmac_key_env` at start-up; never serialised.
    #[serde(skip)]
    pub webhook_hmac_key: Option<SecretString>,
    /// fal: where the public keys that sign its callbacks are published (default fal's own JWKS).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Worker: the backend node's name that the catalog shows on its routes (`backend_node`), e.g.
    /// `node30`; default the provider id.
    #[serde(default)]
    pub node_label: Option<String>,
    /// `max_submits`, e.g. `"20/10s"`: at most 20 submits to this provider in any 10 s. Tasks beyond
    /// wait `queued` (see [`crate::admission`]). Absent: no window.
    #[serde(default)]
    pub max_submits: Option<SubmitWindow>,
}

/// A provider's submit window: at most `max` submits in any `window`. Written `"20/10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitWindow {
    pub max: u32,
    pub window: Duration,
}

impl std::str::FromStr for SubmitWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a submit window like \"20/10s\" (submits / duration, both above 0)");
        let (max, window) = text.split_once('/').ok_or_else(bad)?;
        let max: u32 = max.trim().parse().map_err(|_| bad())?;
        let window = durations::parse_duration(window).map_err(|_| bad())?;
        if max == 0 || window.is_zero() {
            return Err(bad());
        }
        Ok(SubmitWindow { max, window })
    }
}

impl<'de> Deserialize<'de> for SubmitWindow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for SubmitWindow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}/{}", self.max, durations::format_duration(self.window)))
    }
}

fn default_true() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_record_grace() -> Duration {
    Duration::from_secs(60)
}

fn default_callback_poll() -> Duration {
    Duration::from_secs(30)
}

impl ProviderSettings {
    /// A provider of this kind with nothing else set.
    pub fn new(kind: ProviderKind) -> ProviderSettings {
        ProviderSettings {
            kind,
            label: None,
            base_url: None,
            api_key_env: None,
            timeout: default_timeout(),
            delay: None,
            api_key: None,
            callbacks: true,
            callback_poll: default_callback_poll(),
            trust_callback_payload: false,
            record_grace: default_record_grace(),
            webhook_hmac_key_env: None,
            webhook_hmac_key: None,
            jwks_url: None,
            node_label: None,
            max_submits: None,
        }
    }

    /// Whether this provider serves: the simulated one always, the others once their key is set.
    pub fn is_active(&self) -> bool {
        self.kind == ProviderKind::Simulated || self.api_key.is_some()
    }

    /// Reads the keys from the environment variables `api_key_env` and `webhook_hmac_key_env` name.
    pub(super) fn read_key(&mut self) {
        self.api_key = secret_from_env(self.api_key_env.as_deref());
        self.webhook_hmac_key = secret_from_env(self.webhook_hmac_key_env.as_deref());
    }

    /// What [`super::Settings::validate`] checks across this table's fields.
    pub(super) fn problems(&self, id: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kind != ProviderKind::Simulated {
            match self.base_url.as_deref().map(reqwest::Url::parse) {
                Some(Ok(url)) if matches!(url.scheme(), "http" | "https") => {}
                _ => problems.push(format!("providers.{id}.base_url: needs a URL like https://api.example.com")),
            }
        }
        if self.kind == ProviderKind::Worker && self.api_key_env.as_deref().is_none_or(str::is_empty) {
            problems.push(format!("providers.{id}.api_key_env: a worker node needs the variable of its API key"));
        }
        problems
    }
}

/// The value of the environment variable `name`; unset or empty: none.
fn secret_from_env(name: Option<&str>) -> Option<SecretString> {
    let value = std::env::var(name?).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| SecretString::from(value.to_owned()))
}
