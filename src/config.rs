//! Settings: built-in defaults, then the TOML file, then `AIO__SECTION__KEY` environment variables
//! (and `DATABASE_URL`). Validated once at start-up so a bad value fails fast, naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "config/gateway.toml";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/aio_gateway";

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
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { key_cache_ttl_secs: 30, jwt: JwtSettings::default() }
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
        let settings: Settings = figment.extract().map_err(|e| anyhow::anyhow!(describe_figment_error(e)))?;
        settings.validate()?;
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
        if !self.database.url.starts_with("postgres://") && !self.database.url.starts_with("postgresql://") {
            problems.push("database.url (DATABASE_URL): must start with postgres://".into());
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
        ] {
            if value == 0 {
                problems.push(format!("{key}: must be above 0"));
            }
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
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            problems.push(format!("log.format: `{}` is not one of pretty, json", self.log.format));
        }
        for (id, provider) in &self.providers {
            if provider.kind != ProviderKind::Simulated {
                problems.push(format!(
                    "providers.{id}.kind: `{:?}` is not available in this build (only `simulated` is)",
                    provider.kind
                ));
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
