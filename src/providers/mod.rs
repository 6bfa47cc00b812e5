//! Upstream providers behind one trait. A provider is an asynchronous job service: `submit` starts a
//! job and returns the provider's job id (or, for synchronous APIs, the result at once); `poll` asks
//! how the job is doing. Nothing outside a provider's own file knows its wire format.

pub mod fal;
pub mod kie;
pub mod openai;
mod outcome;
mod picture;
pub mod replicate;
mod signed_callback;
pub mod simulated;
mod upstream;
pub mod wavespeed;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Db;
use async_trait::async_trait;
use reqwest::header::HeaderMap;

use crate::config::{ProviderKind, Settings};
use crate::files::FileStore;
use crate::tasks::{OutputImage, TaskError, TaskErrorCode, TaskInput};
use upstream::Upstream;
pub use upstream::UNAVAILABLE;

/// A job the provider no longer knows.
pub const LOST: &str = "The provider lost the job.";

/// What a provider is asked to do for one task.
pub struct SubmitRequest<'a> {
    /// Providers that support idempotency keys get one derived from this, so that a resubmit after a
    /// crash never starts a second job.
    pub task_id: &'a str,
    /// The provider's own name for the model, from the catalog route.
    pub upstream_model: &'a str,
    /// The request as validated, for an adapter's own checks; what it sends is `fields`.
    pub input: &'a TaskInput,
    /// The provider's input fields, as the catalog route maps `input` (`catalog::Route::map`). Adapters
    /// send them as they are, adding only their envelope (model, callback).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Where the provider may call back when the job ends (providers that support it).
    pub callback_url: Option<&'a str>,
}

pub enum Submitted {
    /// The provider started a job with this id; poll it.
    Accepted { upstream_id: String },
    /// A synchronous provider finished the job within the submit call.
    Completed { images: Vec<OutputImage> },
}

pub enum JobState {
    /// Still working. `check_after` is the provider's hint of when to look again.
    Running {
        check_after: Option<Duration>,
    },
    Succeeded {
        images: Vec<OutputImage>,
    },
    Failed(TaskError),
    /// The provider does not know the job. KIE answers so for a moment after creating it: within the
    /// provider's `record_grace` the engine reads it as still running, after it as a lost job.
    Unknown,
}

/// A provider call that did not work. `retriable` errors (rate limits, 5xx, network) are tried again
/// with backoff; `route_unavailable` ones (our account cannot pay or is refused, the model is not
/// there) take the route out of service and the task to the next route; the others end the task with
/// `code` and `message`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub retriable: bool,
    pub route_unavailable: bool,
    pub code: TaskErrorCode,
    pub message: String,
    /// Whether the failure says something about the route's health, so counts toward its breaker.
    pub blame: Blame,
}

/// Who a failure is held against. Only [`Blame::Route`] counts toward a route's circuit breaker: a
/// breaker shared by every account must not be opened by one request's content, nor by our own storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The provider is failing or unreachable.
    Route,
    /// The request's own content (a validation-like answer, whatever its status).
    Request,
    /// The gateway itself (its database or file store).
    Gateway,
}

impl ProviderError {
    pub fn permanent(code: TaskErrorCode, message: impl Into<String>) -> Self {
        Self { retriable: false, route_unavailable: false, code, message: message.into(), blame: Blame::Request }
    }

    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            route_unavailable: false,
            code: TaskErrorCode::UpstreamFailed,
            message: message.into(),
            blame: Blame::Route,
        }
    }

    /// This route cannot serve now: the client sees only the neutral message.
    pub fn route_unavailable(message: impl Into<String>) -> Self {
        Self { retriable: false, route_unavailable: true, blame: Blame::Route, ..Self::retriable(message) }
    }

    /// A retriable failure of the gateway's own storage: retried, never held against the route.
    pub fn local(message: impl Into<String>) -> Self {
        Self { blame: Blame::Gateway, ..Self::retriable(message) }
    }

    /// Whether this failure counts toward the route's breaker.
    pub fn counts_against_route(&self) -> bool {
        self.retriable && self.blame == Blame::Route
    }

    pub fn into_task_error(self) -> TaskError {
        TaskError { code: self.code, message: self.message }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError>;

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError>;

    /// `providers check`: one authenticated call that bills nothing, for the route to `model`. The
    /// default checks nothing (a provider without such a call).
    async fn check(&self, _model: &str) -> RouteCheck {
        RouteCheck::default()
    }

    /// Best effort, for jobs the gateway gave up on (deadline). Providers without cancel do nothing.
    async fn cancel(&self, _upstream_id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Whether this provider can call back when a job ends (it gets a callback URL on submit).
    fn calls_back(&self) -> bool {
        false
    }

    /// A callback token derived from the task, for providers that must see the same callback URL on
    /// every submit of a task (a worker node treats a changed URL under the same `Idempotency-Key`
    /// as another request). `None`: a fresh random token per submit.
    fn callback_token(&self, _task_id: &str) -> Option<String> {
        None
    }

    /// Checks an inbound callback's signature, where the provider signs and its key is configured,
    /// and reads what the callback claims. The claim is a hint: unless the operator trusts callback
    /// payloads, the engine confirms it with [`Provider::poll`]. Async because checking may need the
    /// provider's public keys (fal's JWKS).
    async fn read_callback(&self, _headers: &HeaderMap, _body: &[u8]) -> Result<Callback, CallbackRefused> {
        Ok(Callback::default())
    }
}

/// What `providers check` learned of one route; `None` where the provider's call cannot tell.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RouteCheck {
    pub reachable: Option<bool>,
    pub key_accepted: Option<bool>,
    pub model_exists: Option<bool>,
    /// The account's remaining balance, in the provider's unit (KIE credits, WaveSpeed USD).
    pub balance: Option<f64>,
    /// What the call was, or why it tells nothing.
    pub detail: String,
}

impl RouteCheck {
    /// The route cannot serve: unreachable, key refused, or model missing.
    pub fn dead(&self) -> bool {
        [self.reachable, self.key_accepted, self.model_exists].contains(&Some(false))
    }

    /// The answer to `what`, read by its HTTP status: 2xx key and model fine, 401/403 key refused,
    /// 404 the model missing (for calls that name it).
    pub fn from_status(what: &str, status: u16, names_model: bool) -> RouteCheck {
        let ok = (200..300).contains(&status);
        RouteCheck {
            reachable: Some(true),
            key_accepted: match status {
                401 | 403 => Some(false),
                _ if ok || status == 404 => Some(true),
                _ => None,
            },
            model_exists: match (names_model, status) {
                (true, 404) => Some(false),
                (true, _) if ok => Some(true),
                _ => None,
            },
            balance: None,
            detail: format!("{what}: HTTP {status}"),
        }
    }

    /// The provider could not be reached.
    pub fn unreachable(what: &str, error: &ProviderError) -> RouteCheck {
        RouteCheck { reachable: Some(false), detail: format!("{what}: {error}"), ..RouteCheck::default() }
    }
}

/// What an inbound callback claims.
#[derive(Default)]
pub struct Callback {
    /// The provider's job id, when the body names it.
    pub upstream_id: Option<String>,
    /// The job's state, when the body carries one the adapter can read.
    pub state: Option<JobState>,
}

/// A callback whose signature is missing or wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallbackRefused(pub &'static str);

/// One active provider and how the engine treats it.
struct Entry {
    provider: Arc<dyn Provider>,
    /// `Some(slowest polling)` when the provider calls back.
    callback_poll: Option<Duration>,
    trust_callback_payload: bool,
    /// How long after a task's creation [`JobState::Unknown`] still means "running".
    record_grace: Duration,
}

/// The configured providers, by id (`[providers.<id>]`).
#[derive(Clone, Default)]
pub struct Providers {
    by_id: HashMap<String, Arc<Entry>>,
    /// `server.public_base_url`, which callback URLs are built from.
    public_base_url: String,
}

impl Providers {
    /// The active providers: a real provider without its key is left out.
    pub fn from_settings(settings: &Settings, pool: &Db, files: &FileStore) -> anyhow::Result<Providers> {
        let mut by_id: HashMap<String, Arc<Entry>> = HashMap::new();
        let mode = settings.provider_mode();
        for (id, config) in &settings.providers {
            if !config.is_active() {
                tracing::info!(provider = %id, key_variable = ?config.api_key_env, "provider inactive: its key is not set");
                continue;
            }
            // Never a simulated image billed beside real providers (SPEC §9).
            if config.kind == ProviderKind::Simulated && !mode.serves_simulated() {
                tracing::info!(provider = %id, "simulated provider off: a real provider is configured");
                continue;
            }
            let upstream = || -> anyhow::Result<Upstream> {
                Upstream::new(id, config)?.ok_or_else(|| anyhow::anyhow!("providers.{id}: needs base_url"))
            };
            let provider: Arc<dyn Provider> = match config.kind {
                ProviderKind::Kie => Arc::new(kie::Kie::new(upstream()?, config.webhook_hmac_key.clone())),
                ProviderKind::Wavespeed => {
                    Arc::new(wavespeed::WaveSpeed::new(upstream()?, config.webhook_hmac_key.clone()))
                }
                ProviderKind::Replicate => {
                    Arc::new(replicate::Replicate::new(upstream()?, config.webhook_hmac_key.clone()))
                }
                ProviderKind::Openai => Arc::new(openai::OpenAi::new(upstream()?, files.clone())),
                ProviderKind::Fal => Arc::new(fal::Fal::new(upstream()?, config.jwks_url.clone())),
                ProviderKind::Worker => Arc::new(worker::Worker::new(upstream()?, config.webhook_hmac_key.clone())),
                ProviderKind::Simulated => Arc::new(simulated::Simulated::new(
                    pool.clone(),
                    files.clone(),
                    config.delay.unwrap_or(Duration::from_millis(simulated::DEFAULT_DELAY_MS)),
                )),
            };
            let callback_poll = (config.callbacks && provider.calls_back()).then_some(config.callback_poll);
            let entry = Entry {
                provider,
                callback_poll,
                trust_callback_payload: config.trust_callback_payload,
                record_grace: config.record_grace,
            };
            by_id.insert(id.clone(), Arc::new(entry));
        }
        let public_base_url = settings.server.public_base_url.trim_end_matches('/').to_owned();
        Ok(Providers { by_id, public_base_url })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<dyn Provider>> {
        self.by_id.get(id).map(|entry| &entry.provider)
    }

    /// Whether the provider gets a callback URL; if so, it is polled at most once per this long.
    pub fn callback_poll(&self, id: &str) -> Option<Duration> {
        self.by_id.get(id).and_then(|entry| entry.callback_poll)
    }

    /// See [`JobState::Unknown`].
    pub fn record_grace(&self, id: &str) -> Duration {
        self.by_id.get(id).map(|entry| entry.record_grace).unwrap_or_default()
    }

    pub fn trusts_callback_payload(&self, id: &str) -> bool {
        self.by_id.get(id).is_some_and(|entry| entry.trust_callback_payload)
    }

    /// The URL a provider calls back on for the task holding `token`.
    pub fn callback_url(&self, id: &str, token: &str) -> String {
        format!("{}/api/v1/callbacks/{id}/{token}", self.public_base_url)
    }
}
