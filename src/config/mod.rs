//! Settings: built-in defaults, then the TOML file, then `AIO__SECTION__KEY` environment variables
//! (and `DATABASE_URL`). Validated once at start-up so a bad value fails fast, naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";
/// An embedded SQLite file: a first start needs no database server.
pub const DEFAULT_DATABASE_URL: &str = crate::store::DEFAULT_SQLITE_URL;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub catalog: CatalogSettings,
    pub billing: BillingSettings,
    pub bootstrap: BootstrapSettings,
    pub tasks: TaskSettings,
    pub files: FileSettings,
    pub results: ResultSettings,
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
    pub rate_limit: RateLimitSettings,
    pub providers: BTreeMap<String, ProviderSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP server binds, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// How clients reach this gateway; used to build `/files/…` URLs and provider callback URLs.
    /// Empty: `http://` + the bound address.
    pub public_base_url: String,
    pub body_limit_bytes: usize,
    /// What this process does; several processes with different roles can share one database.
    pub role: Role,
    /// Serve `/metrics` on this separate address (e.g. `127.0.0.1:9090`) instead of on `listen`.
    /// Empty: `/metrics` is a route of the main listener.
    pub metrics_listen: String,
    /// On SIGTERM/SIGINT: how long in-flight requests and provider calls may take to finish.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The API and the task engine.
    All,
    /// The API only: new tasks wait for a process that runs the engine.
    Api,
    /// The task engine only; HTTP answers `/healthz` and `/readyz`.
    Worker,
}

impl Role {
    pub fn runs_engine(self) -> bool {
        self != Role::Api
    }

    pub fn serves_api(self) -> bool {
        self != Role::Worker
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_base_url: String::new(),
            body_limit_bytes: 1024 * 1024,
            role: Role::All,
            metrics_listen: String::new(),
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Overridden by `DATABASE_URL`. May hold a password: never logged.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: DEFAULT_DATABASE_URL.into(), max_connections: 20, acquire_timeout_secs: 10 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// How long a successful API-key lookup is served from memory. Revocation takes effect within it.
    pub key_cache_ttl_secs: u64,
    /// Session tokens of the dashboard and admin routes.
    pub jwt: JwtSettings,
    /// The web console's sign-in (an API key exchanged for a session cookie).
    pub session: SessionSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { key_cache_ttl_secs: 30, jwt: JwtSettings::default(), session: SessionSettings::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// How long a console session (its cookie and the token in it) lasts.
    pub ttl_secs: u64,
    /// Accounts whose console sessions have the `admin` role; every other account signs in as `user`.
    /// From the environment: `AIO__AUTH__SESSION__ADMIN_ACCOUNTS=1,7`.
    #[serde(deserialize_with = "deserialize_account_ids")]
    pub admin_accounts: Vec<i64>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { ttl_secs: 3600, admin_accounts: Vec::new() }
    }
}

/// A list of account ids, one id, or a comma-separated string of them (as environment variables give).
fn deserialize_account_ids<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        List(Vec<i64>),
        One(i64),
        Csv(String),
    }
    match Ids::deserialize(deserializer)
        .map_err(|_| serde::de::Error::custom("expected a list of account ids or a comma-separated string"))?
    {
        Ids::List(ids) => Ok(ids),
        Ids::One(id) => Ok(vec![id]),
        Ids::Csv(csv) => csv
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|id| id.parse().map_err(|_| serde::de::Error::custom(format!("`{id}` is not an account id"))))
            .collect(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// Pinned: tokens signed any other way are refused. `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// HS256: the environment variable that holds the secret (at least 32 bytes). Unset variable: the
    /// dashboard and admin routes answer 401.
    pub secret_env: String,
    /// RS256/ES256: the PEM file of the public key.
    pub public_key_path: PathBuf,
    /// Checked when set.
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp`.
    pub leeway_secs: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret_env: "AIO_JWT_SECRET".into(),
            public_key_path: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Per API key, unless the key has its own `rate_limit_per_minute`.
    pub requests_per_minute: u32,
    /// Requests a key may send at once above the steady rate.
    pub burst: u32,
    /// Creates in flight in this process at once; more get 429.
    pub max_concurrent_creates: usize,
    /// Share the per-key limits between replicas through this Redis (`redis://host:6379`). Empty:
    /// each process limits on its own. May hold a password: never logged.
    pub redis_url: String,
    /// Prefix of the Redis keys, so several gateways (or tests) can share one Redis.
    pub redis_prefix: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            burst: 60,
            max_concurrent_creates: 256,
            redis_url: String::new(),
            redis_prefix: "aio:".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSettings {
    pub default_model: String,
    pub models_path: PathBuf,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        Self { default_model: "seedream/4.5-text-to-image".into(), models_path: "config/models.toml".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    pub usd_per_credit: f64,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self { usd_per_credit: 0.01 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// On first start with no accounts, create `default` with `credits` and print its key once.
    pub enabled: bool,
    pub credits: i64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self { enabled: true, credits: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// A task not finished this long after creation fails with `timeout` and its hold is released.
    pub deadline_secs: u64,
    /// First poll of a running task after this long; later polls back off by 1.5× up to `poll_max_ms`.
    pub poll_initial_ms: u64,
    pub poll_max_ms: u64,
    /// A failed submit that may succeed later is retried after this long, doubling up to `poll_max_ms`.
    pub retry_initial_ms: u64,
    /// How often the engine looks for due tasks.
    pub tick_ms: u64,
    /// A claimed task is invisible to other workers this long; if its worker dies it is picked up again.
    pub lease_secs: u64,
    /// Due tasks claimed per tick, and how many provider calls run at once.
    pub batch_size: i64,
    pub max_in_flight: usize,
    /// How long the create request waits for the provider to accept the task before answering `pending`.
    pub dispatch_wait_ms: u64,
    /// A route's circuit opens after this many retriable submit failures in a row…
    pub breaker_failures: u32,
    /// …for this long; then one trial request decides whether it closes.
    pub breaker_cooldown_secs: u64,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            deadline_secs: 900,
            poll_initial_ms: 1000,
            poll_max_ms: 30_000,
            retry_initial_ms: 1000,
            tick_ms: 500,
            lease_secs: 60,
            batch_size: 100,
            max_in_flight: 64,
            dispatch_wait_ms: 5000,
            breaker_failures: 3,
            breaker_cooldown_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSettings {
    /// Where result images are stored; served under `/files/`. Share it between replicas.
    pub dir: PathBuf,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self { dir: "data/files".into() }
    }
}

/// Result images: with `rehost`, each image a provider returns by URL is downloaded (through the
/// outbound URL guard) into the file store, and the task's URLs are the gateway's own `/files/…`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultSettings {
    pub rehost: bool,
    /// A larger image fails the task (`upstream_failed`, credits released).
    pub max_bytes: u64,
    /// One download may take this long; a timeout is retried on the next poll.
    pub timeout_secs: u64,
    /// Content types accepted (of image/png, image/jpeg, image/webp); others fail the task. A list,
    /// or from the environment a comma-separated string.
    #[serde(with = "string_list")]
    pub content_types: Vec<String>,
}

/// The content types the file store can serve.
pub const RESULT_CONTENT_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];

impl Default for ResultSettings {
    fn default() -> Self {
        Self {
            rehost: true,
            max_bytes: 20 * 1024 * 1024,
            timeout_secs: 60,
            content_types: RESULT_CONTENT_TYPES.map(String::from).to_vec(),
        }
    }
}

/// Outgoing webhooks (SPEC §4) and the outbound URL guard (SPEC §8).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// The wait before each delivery attempt, ±20 % jitter: the first entry counts from the task's end,
    /// each later one from the previous attempt. Its length is the number of attempts; after the last
    /// failed one the delivery is `dead`. A list, or from the environment a comma-separated string.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// One attempt (connect, send, first 2 KiB of the answer) may take this long.
    pub timeout_secs: u64,
    /// Accept `http://` for `callback_url` and `image_urls` (otherwise https only).
    pub allow_http: bool,
    /// Private ranges the guard lets through, e.g. `10.20.0.0/16`. A list or a comma-separated string.
    #[serde(with = "cidr_list")]
    pub allowed_private_cidrs: Vec<ipnet::IpNet>,
    /// After a secret rotation the previous secret still signs (a second signature) this long.
    pub secret_overlap_secs: u64,
    /// How often the delivery loop looks for due deliveries.
    pub tick_ms: u64,
    /// Deliveries in flight at once, per process.
    pub max_in_flight: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let schedule = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"];
        Self {
            retry_schedule: schedule.iter().filter_map(|d| parse_duration(d).ok()).collect(),
            timeout_secs: 15,
            allow_http: false,
            allowed_private_cidrs: Vec::new(),
            secret_overlap_secs: 86_400,
            tick_ms: 500,
            max_in_flight: 32,
        }
    }
}

/// `500ms`, `0s`, `5s`, `5m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 5s, 5m or 2h"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("`{text}` is not a duration like 5s, 5m or 2h (units: ms, s, m, h, d)")),
    };
    number.checked_mul(millis).map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long"))
}

/// The inverse of [`parse_duration`], in the largest unit that divides the duration.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// A list of values from TOML (`["a", "b"]`) or an environment variable (`a,b`).
fn deserialize_list<'de, D, T>(deserializer: D, parse: fn(&str) -> Result<T, String>) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    let items = match ListOrCsv::deserialize(deserializer)
        .map_err(|_| serde::de::Error::custom("expected a list of strings or a comma-separated string"))?
    {
        ListOrCsv::List(items) => items,
        ListOrCsv::Csv(csv) => csv.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    };
    items.iter().map(|item| parse(item).map_err(serde::de::Error::custom)).collect()
}

mod duration_list {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(items: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(items.iter().map(|d| super::format_duration(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Duration>, D::Error> {
        super::deserialize_list(deserializer, super::parse_duration)
    }
}

mod string_list {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(items: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(items)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        super::deserialize_list(deserializer, |text| Ok(text.to_ascii_lowercase()))
    }
}

mod cidr_list {
    use ipnet::IpNet;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(items: &[IpNet], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(items.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
        super::deserialize_list(deserializer, |text| {
            text.parse().map_err(|_| format!("`{text}` is not a CIDR range like 10.0.0.0/8 or fd00::/8"))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` for terminals, `json` for log collectors.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `aio_gateway=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: "pretty".into(), level: "info".into() }
    }
}

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
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Simulated provider: completion delay when the prompt has no `[simulate:delay=MS]`.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// The key read from `api_key_env` at start-up ([`Settings::load`]); never serialised. A real
    /// provider without one is inactive: its routes are not used.
    #[serde(skip)]
    pub api_key: Option<SecretString>,
    /// Give the provider a callback URL (`/api/v1/callbacks/{id}/{token}`), for kinds that call back.
    #[serde(default = "default_true")]
    pub callbacks: bool,
    /// With callbacks on, polling is only the fallback: at most one poll per this many seconds.
    #[serde(default)]
    pub callback_poll_secs: Option<u64>,
    /// Settle from a callback's own body instead of confirming it with the provider's status API.
    #[serde(default)]
    pub trust_callback_payload: bool,
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
}

fn default_true() -> bool {
    true
}

pub const DEFAULT_CALLBACK_POLL_SECS: u64 = 30;

pub const DEFAULT_PROVIDER_TIMEOUT_SECS: u64 = 30;

impl ProviderSettings {
    /// A provider of this kind with nothing else set.
    pub fn new(kind: ProviderKind) -> ProviderSettings {
        ProviderSettings {
            kind,
            label: None,
            base_url: None,
            api_key_env: None,
            timeout_secs: None,
            delay_ms: None,
            api_key: None,
            callbacks: true,
            callback_poll_secs: None,
            trust_callback_payload: false,
            webhook_hmac_key_env: None,
            webhook_hmac_key: None,
            jwks_url: None,
            node_label: None,
        }
    }

    /// Whether this provider serves: the simulated one always, the others once their key is set.
    pub fn is_active(&self) -> bool {
        self.kind == ProviderKind::Simulated || self.api_key.is_some()
    }

    /// One upstream request may take this long (connect, send, answer).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(DEFAULT_PROVIDER_TIMEOUT_SECS))
    }

    /// Reads the keys from the environment variables `api_key_env` and `webhook_hmac_key_env` name.
    fn read_key(&mut self) {
        self.api_key = secret_from_env(self.api_key_env.as_deref());
        self.webhook_hmac_key = secret_from_env(self.webhook_hmac_key_env.as_deref());
    }

    /// The slowest polling for a task whose provider calls back.
    pub fn callback_poll(&self) -> Duration {
        Duration::from_secs(self.callback_poll_secs.unwrap_or(DEFAULT_CALLBACK_POLL_SECS))
    }
}

/// The value of the environment variable `name`; unset or empty: none.
fn secret_from_env(name: Option<&str>) -> Option<SecretString> {
    let value = std::env::var(name?).ok()?;
    let value = value.trim();
    (!value.is_empty()).then(|| SecretString::from(value.to_owned()))
}

impl Settings {
    /// Loads `path` (or the default path when it exists), then the environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match path {
            Some(path) => {
                if !path.exists() {
                    bail!("config file {} does not exist", path.display());
                }
                figment = figment.merge(Toml::file(path));
            }
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                figment = figment.merge(Toml::file(DEFAULT_CONFIG_PATH));
            }
            None => {}
        }
        figment = figment.merge(Env::prefixed("AIO__").split("__"));
        if let Ok(url) = std::env::var("DATABASE_URL") {
            figment = figment.merge(("database.url", url));
        }
        let mut settings: Settings = figment.extract().map_err(|e| anyhow::anyhow!(describe_figment_error(e)))?;
        settings.validate()?;
        for provider in settings.providers.values_mut() {
            provider.read_key();
        }
        Ok(settings)
    }

    /// Checks values the types cannot: every problem is reported, each naming its key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("server.listen: `{}` is not an address like 0.0.0.0:8080", self.server.listen));
        }
        if !self.server.metrics_listen.is_empty() && self.server.metrics_listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "server.metrics_listen: `{}` is not an address like 127.0.0.1:9090",
                self.server.metrics_listen
            ));
        }
        if !self.server.public_base_url.is_empty() && reqwest::Url::parse(&self.server.public_base_url).is_err() {
            problems.push("server.public_base_url: not a URL like https://gateway.example.com".to_string());
        }
        if self.server.body_limit_bytes == 0 {
            problems.push("server.body_limit_bytes: must be above 0".into());
        }
        if crate::store::Dialect::of_url(&self.database.url).is_none() {
            problems.push("database.url (DATABASE_URL): must start with postgres:// or sqlite://".into());
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections: must be above 0".into());
        }
        if self.bootstrap.credits < 0 {
            problems.push("bootstrap.credits: must not be negative".into());
        }
        if !(self.billing.usd_per_credit.is_finite() && self.billing.usd_per_credit >= 0.0) {
            problems.push("billing.usd_per_credit: must be a number ≥ 0".into());
        }
        let t = &self.tasks;
        for (key, value) in [
            ("tasks.deadline_secs", t.deadline_secs),
            ("tasks.poll_initial_ms", t.poll_initial_ms),
            ("tasks.poll_max_ms", t.poll_max_ms),
            ("tasks.retry_initial_ms", t.retry_initial_ms),
            ("tasks.tick_ms", t.tick_ms),
            ("tasks.lease_secs", t.lease_secs),
            ("tasks.max_in_flight", t.max_in_flight as u64),
            ("webhooks.timeout_secs", self.webhooks.timeout_secs),
            ("results.max_bytes", self.results.max_bytes),
            ("results.timeout_secs", self.results.timeout_secs),
            ("webhooks.tick_ms", self.webhooks.tick_ms),
            ("webhooks.max_in_flight", self.webhooks.max_in_flight as u64),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be above 0"));
            }
        }
        if self.auth.session.ttl_secs == 0 {
            problems.push("auth.session.ttl_secs: must be above 0".into());
        }
        if !matches!(self.auth.jwt.algorithm.as_str(), "HS256" | "RS256" | "ES256") {
            problems.push(format!("auth.jwt.algorithm: `{}` is not one of HS256, RS256, ES256", self.auth.jwt.algorithm));
        }
        let r = &self.rate_limit;
        for (key, value) in [
            ("rate_limit.requests_per_minute", u64::from(r.requests_per_minute)),
            ("rate_limit.burst", u64::from(r.burst)),
            ("rate_limit.max_concurrent_creates", r.max_concurrent_creates as u64),
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be above 0"));
            }
        }
        let redis_scheme = r.redis_url.starts_with("redis://") || r.redis_url.starts_with("rediss://");
        if !r.redis_url.is_empty() && !redis_scheme {
            problems.push("rate_limit.redis_url: must start with redis:// or rediss://".into());
        }
        if t.batch_size <= 0 {
            problems.push("tasks.batch_size: must be above 0".into());
        }
        for content_type in &self.results.content_types {
            if !RESULT_CONTENT_TYPES.contains(&content_type.as_str()) {
                problems.push(format!(
                    "results.content_types: `{content_type}` is not one of {}",
                    RESULT_CONTENT_TYPES.join(", ")
                ));
            }
        }
        if self.webhooks.retry_schedule.is_empty() {
            problems.push("webhooks.retry_schedule: needs at least one entry (the first attempt, e.g. 0s)".into());
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            problems.push(format!("log.format: `{}` is not one of pretty, json", self.log.format));
        }
        for (id, provider) in &self.providers {
            match provider.kind {
                ProviderKind::Simulated => {}
                ProviderKind::Kie
                | ProviderKind::Wavespeed
                | ProviderKind::Replicate
                | ProviderKind::Openai
                | ProviderKind::Fal
                | ProviderKind::Worker => {
                    match provider.base_url.as_deref().map(reqwest::Url::parse) {
                        Some(Ok(url)) if matches!(url.scheme(), "http" | "https") => {}
                        _ => problems.push(format!("providers.{id}.base_url: needs a URL like https://api.example.com")),
                    }
                    if provider.timeout_secs == Some(0) {
                        problems.push(format!("providers.{id}.timeout_secs: must be above 0"));
                    }
                }
            }
            if provider.kind == ProviderKind::Worker && provider.api_key_env.as_deref().is_none_or(str::is_empty) {
                problems.push(format!("providers.{id}.api_key_env: a worker node needs the variable of its API key"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", problems.join("\n  "))
        }
    }
}

/// Figment's errors already name the key; make them one line per problem and never echo values of
/// keys that could be secrets.
fn describe_figment_error(error: figment::Error) -> String {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let kind = e.kind.to_string();
            if key.is_empty() {
                kind
            } else {
                format!("{key}: {kind}")
            }
        })
        .collect();
    format!("invalid configuration:\n  {}", lines.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &str, value: impl Serialize) -> Result<Settings, String> {
        Figment::from(Serialized::defaults(Settings::default())).merge((key, value)).extract().map_err(|e| e.to_string())
    }

    #[test]
    fn console_admin_accounts_come_as_a_list_one_id_or_a_comma_separated_string() {
        let key = "auth.session.admin_accounts";
        let ids = |settings: Result<Settings, String>| settings.map(|s| s.auth.session.admin_accounts);
        assert_eq!(ids(with(key, vec![1, 7])), Ok(vec![1, 7]));
        assert_eq!(ids(with(key, 3)), Ok(vec![3]));
        // What AIO__AUTH__SESSION__ADMIN_ACCOUNTS=1,7 produces.
        assert_eq!(ids(with(key, "1, 7")), Ok(vec![1, 7]));
        assert_eq!(ids(with(key, "")), Ok(vec![]));
        assert!(with(key, "1,admin").is_err());
        assert!(Settings::default().auth.session.admin_accounts.is_empty());
    }

    #[test]
    fn webhook_lists_come_as_lists_or_comma_separated_strings() {
        let defaults = Settings::default().webhooks;
        let expected: Vec<String> = ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"].map(String::from).to_vec();
        assert_eq!(defaults.retry_schedule.iter().map(|d| format_duration(*d)).collect::<Vec<_>>(), expected);

        // What an environment variable such as AIO__WEBHOOKS__RETRY_SCHEDULE=0s,1s,2s produces: a string.
        let csv = with("webhooks.retry_schedule", "0s, 1s,2s,500ms").expect("comma-separated");
        let millis = [0, 1000, 2000, 500].map(Duration::from_millis).to_vec();
        assert_eq!(csv.webhooks.retry_schedule, millis);
        let list = with("webhooks.retry_schedule", ["0s", "1s", "2s", "500ms"]).expect("list");
        assert_eq!(list.webhooks.retry_schedule, millis);
        assert!(with("webhooks.retry_schedule", "0s,soon").is_err());
        assert!(with("webhooks.retry_schedule", "5").is_err(), "a duration needs a unit");

        let cidrs = with("webhooks.allowed_private_cidrs", "10.0.0.0/8,fd00::/8").expect("cidrs");
        let nets: Vec<String> = cidrs.webhooks.allowed_private_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "fd00::/8"]);
        assert!(with("webhooks.allowed_private_cidrs", "").expect("empty").webhooks.allowed_private_cidrs.is_empty());
        assert!(with("webhooks.allowed_private_cidrs", "10.0.0.0/33").is_err());
    }

    #[test]
    fn durations_parse_and_format_both_ways() {
        for text in ["0s", "500ms", "5s", "5m", "2h", "1d", "90s"] {
            assert_eq!(format_duration(parse_duration(text).expect(text)), text);
        }
        assert!(parse_duration("5x").is_err() && parse_duration("").is_err() && parse_duration("-1s").is_err());
    }

    #[test]
    fn a_provider_is_active_only_once_its_key_variable_is_set() {
        let mut kie =
            ProviderSettings { api_key_env: Some("AIO_SURELY_UNSET_VARIABLE".into()), ..ProviderSettings::new(ProviderKind::Kie) };
        kie.read_key();
        assert!(!kie.is_active());
        // Any variable that is set will do for the test; PATH always is.
        kie.api_key_env = Some("PATH".into());
        kie.read_key();
        assert!(kie.is_active());
        assert!(!format!("{kie:?}").contains(&std::env::var("PATH").unwrap_or_default()), "the key is redacted in Debug");
        assert!(ProviderSettings::new(ProviderKind::Simulated).is_active());
    }

    #[test]
    fn a_worker_node_needs_a_base_url_and_a_key_variable() {
        let mut settings = Settings::default();
        settings.providers.insert("node30".into(), ProviderSettings::new(ProviderKind::Worker));
        let error = settings.validate().expect_err("refused").to_string();
        assert!(error.contains("providers.node30.base_url") && error.contains("providers.node30.api_key_env"), "{error}");
        let node = settings.providers.get_mut("node30").expect("node30");
        node.base_url = Some("http://127.0.0.1:8081".into());
        node.api_key_env = Some("NODE30_API_KEY".into());
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn an_empty_schedule_is_refused() {
        let mut settings = Settings::default();
        settings.webhooks.retry_schedule.clear();
        let error = settings.validate().expect_err("refused").to_string();
        assert!(error.contains("webhooks.retry_schedule"), "{error}");
    }
}
