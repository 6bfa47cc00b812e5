//! The process: where it listens, what it runs, its database, its rate limits and its logs.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::durations;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP server binds, e.g. `0.0.0.0:8080`.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// How clients reach this gateway; used to build `/files/…` URLs and provider callback URLs.
    /// Empty: `http://` + the bound address.
    #[serde(deserialize_with = "base_url")]
    pub public_base_url: String,
    /// This gateway's node name: the catalog's `backend_node` of the routes it calls itself (every
    /// route but a worker node's). Empty (or absent): the host name (`$HOSTNAME`, else `/etc/hostname`).
    pub node_name: String,
    pub body_limit_bytes: NonZeroUsize,
    /// What this process does; several processes with different roles can share one database.
    pub role: Role,
    /// Serve `/metrics` on this separate address (e.g. `127.0.0.1:9090`) instead of on `listen`.
    /// Empty (or absent): `/metrics` is a route of the main listener.
    #[serde(with = "metrics_address")]
    pub metrics_listen: Option<SocketAddr>,
    /// `shutdown_grace_secs`. On SIGTERM/SIGINT: how long in-flight requests and provider calls may
    /// take to finish.
    #[serde(rename = "shutdown_grace_secs", with = "durations::secs")]
    pub shutdown_grace: Duration,
    /// `header_read_timeout_secs`. A connection must send a whole request head within this long (and a
    /// kept-alive one its next request); otherwise it is closed.
    #[serde(rename = "header_read_timeout_secs", with = "durations::positive_secs")]
    pub header_read_timeout: Duration,
    /// `request_body_timeout_secs`. A request body must arrive within this long (else it is refused).
    #[serde(rename = "request_body_timeout_secs", with = "durations::positive_secs")]
    pub request_body_timeout: Duration,
    /// `idle_timeout_secs`. A connection on which no byte moves either way for this long is closed
    /// (after the request it is serving, if any).
    #[serde(rename = "idle_timeout_secs", with = "durations::positive_secs")]
    pub idle_timeout: Duration,
    /// Connections open at once, per listener; more are closed as soon as they are accepted.
    pub max_connections: NonZeroUsize,
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

impl ServerSettings {
    /// `node_name`, or else the host name; `gateway` when neither is known.
    pub fn node_name(&self) -> String {
        let host_name = || {
            let from_env = std::env::var("HOSTNAME").ok();
            let from_file = || std::fs::read_to_string("/etc/hostname").ok();
            [from_env, from_file()].into_iter().flatten().map(|n| n.trim().to_owned()).find(|n| !n.is_empty())
        };
        Some(self.node_name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .or_else(host_name)
            .unwrap_or_else(|| "gateway".to_owned())
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_base_url: String::new(),
            node_name: String::new(),
            body_limit_bytes: const { NonZeroUsize::new(1024 * 1024).unwrap() },
            role: Role::All,
            metrics_listen: None,
            shutdown_grace: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: const { NonZeroUsize::new(1024).unwrap() },
        }
    }
}

fn listen_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| D::Error::custom(format!("`{text}` is not an address like 0.0.0.0:8080")))
}

/// `server.metrics_listen`: an address, or the empty string for none.
mod metrics_address {
    use serde::de::Error as _;

    use super::*;

    pub fn serialize<S: Serializer>(address: &Option<SocketAddr>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&address.map(|a| a.to_string()).unwrap_or_default())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
        match String::deserialize(deserializer)?.trim() {
            "" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("`{text}` is not an address like 127.0.0.1:9090"))),
        }
    }
}

pub(super) fn base_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    if !url.is_empty() && reqwest::Url::parse(&url).is_err() {
        return Err(D::Error::custom("not a URL like https://gateway.example.com"));
    }
    Ok(url)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Overridden by `DATABASE_URL`. May hold a password: never logged (nor echoed in errors).
    #[serde(deserialize_with = "database_url")]
    pub url: String,
    pub max_connections: NonZeroU32,
    /// `acquire_timeout_secs`.
    #[serde(rename = "acquire_timeout_secs", with = "durations::secs")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: super::DEFAULT_DATABASE_URL.into(),
            max_connections: const { NonZeroU32::new(20).unwrap() },
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// The database server kind a `database.url` names, by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    Postgres,
    Sqlite,
}

impl DatabaseBackend {
    pub fn of_url(url: &str) -> Option<DatabaseBackend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(DatabaseBackend::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(DatabaseBackend::Sqlite)
        } else {
            None
        }
    }
}

fn database_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    if DatabaseBackend::of_url(&url).is_none() {
        return Err(D::Error::custom("(DATABASE_URL) must start with postgres:// or sqlite://"));
    }
    Ok(url)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Per API key, unless the key has its own `rate_limit_per_minute`.
    pub requests_per_minute: NonZeroU32,
    /// Requests a key may send at once above the steady rate.
    pub burst: NonZeroU32,
    /// Per account, over all its keys and its console session together (with `burst`).
    pub account_requests_per_minute: NonZeroU32,
    /// Active (unrevoked, unexpired) API keys an account may have; creating more is `409`.
    pub max_keys_per_account: NonZeroU32,
    /// Creates in flight in this process at once; more get 429.
    pub max_concurrent_creates: NonZeroUsize,
    /// Share the per-key limits between replicas through this Redis (`redis://host:6379`). Empty:
    /// each process limits on its own. May hold a password: never logged.
    #[serde(deserialize_with = "redis_url")]
    pub redis_url: String,
    /// Prefix of the Redis keys, so several gateways (or tests) can share one Redis.
    pub redis_prefix: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: const { NonZeroU32::new(600).unwrap() },
            burst: const { NonZeroU32::new(60).unwrap() },
            account_requests_per_minute: const { NonZeroU32::new(1200).unwrap() },
            max_keys_per_account: const { NonZeroU32::new(20).unwrap() },
            max_concurrent_creates: const { NonZeroUsize::new(256).unwrap() },
            redis_url: String::new(),
            redis_prefix: "aio:".into(),
        }
    }
}

fn redis_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(D::Error::custom("must start with redis:// or rediss://"));
    }
    Ok(url)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `aio_gateway=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For terminals.
    Pretty,
    /// For log collectors.
    Json,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}
