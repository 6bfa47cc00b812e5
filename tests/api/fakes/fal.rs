//! A fake fal.ai queue API: `POST /{owner}/{app}[/{path}][?fal_webhook=]` with the raw input and
//! `Authorization: Key …`, answering `{request_id, response_url, status_url, cancel_url}` whose URLs
//! drop the subpath; `GET /{owner}/{app}/requests/{id}/status` (202 `IN_QUEUE`/`IN_PROGRESS`, 200
//! `COMPLETED`), `GET /{owner}/{app}/requests/{id}` (the output, or a 422 `detail`), `PUT …/cancel`,
//! and its own JWKS at `/.well-known/jwks.json`. Callbacks are Ed25519-signed like fal's. Scripts
//! (endpoints `submit`, `status`, `result`) answer first.
//!
//! Sources: fal's queue docs (docs.fal.ai/model-endpoints/queue: submit, status 202/200, result), its
//! request-error reference (fal.ai/docs/documentation/model-apis/request-errors: `{detail,
//! error_type}` and the `X-Fal-Error-Type` header), and the FLUX output schema with its
//! `has_nsfw_concepts: [bool]` (github.com/carlosdp/fal-rs src/endpoints/fal_ai/flux/mod.rs, generated
//! from fal's OpenAPI). unverified: the body fal sends for an unknown app; the fake answers 404 `detail`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aio_gateway::config::{ProviderKind, ProviderSettings};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use sha2::Digest;

use super::{authorized, post_callback, query_param, Plan, Recorder, Server, Step};

pub const KEY: &str = "fal-test-key-id:5ecr3t";
pub const USER_ID: &str = "user_fake_fal";

/// The endpoints this fake serves: fal-ai/flux/dev (docs.fal.ai/guides/generating-images-from-text),
/// fal-ai/recraft/v3/text-to-image (docs.litellm.ai/docs/providers/fal_ai), fal-ai/qwen-image (called so
/// with fal's own client in public integrations; unverified: no fal page for it in the stored docs),
/// fal-ai/bytedance/seedream/v4.5/text-to-image and …/edit (the fal-only test catalog; the Seedream v3
/// path family is on docs.litellm.ai/docs/providers/fal_ai; unverified for v4.5).
pub const MODELS: [&str; 5] = [
    "fal-ai/flux/dev",
    "fal-ai/recraft/v3/text-to-image",
    "fal-ai/qwen-image",
    "fal-ai/bytedance/seedream/v4.5/text-to-image",
    "fal-ai/bytedance/seedream/v4.5/edit",
];

#[derive(Debug, Clone)]
pub enum Outcome {
    Success,
    /// The result endpoint answers 422 with this `detail` message.
    Fail(&'static str),
    /// A result whose image the safety checker flagged (`has_nsfw_concepts: [true]`).
    Flagged,
    /// The result endpoint answers a request error: this `error_type`, in the body and the header.
    RequestError(u16, &'static str),
}

struct Job {
    polls_left: usize,
    outcome: Outcome,
    webhook: Option<String>,
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    plan: Plan<Outcome>,
    jobs: Mutex<HashMap<String, Job>>,
    keys: Ed25519KeyPair,
}

pub struct FakeFal {
    state: Arc<Fake>,
    _server: Server,
}

/// How the fake signs its callbacks.
#[derive(Debug, Clone, Copy)]
pub enum Signing {
    Unsigned,
    /// With the fake's own key (the one its JWKS publishes).
    Valid,
    /// With a key the JWKS does not know.
    Stranger,
}

impl FakeFal {
    pub async fn start() -> FakeFal {
        let keys = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("a key pair");
        let (state, server) = super::start("fal", Router::new().fallback(handle), |base_url| Fake {
            base_url,
            recorder: Recorder::default(),
            plan: Plan::new(2, Outcome::Success),
            jobs: Mutex::new(HashMap::new()),
            keys,
        })
        .await;
        FakeFal { state, _server: server }
    }

    pub fn polls(&self, polls: usize) -> &Self {
        self.state.plan.set_polls(polls);
        self
    }

    pub fn outcome(&self, outcome: Outcome) -> &Self {
        self.state.plan.set_outcome(outcome);
        self
    }

    pub fn script(&self, endpoint: &'static str, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.state.recorder.script(endpoint, steps);
        self
    }

    /// Every request but the JWKS.
    pub fn requests(&self) -> Vec<super::Request> {
        self.state.recorder.requests().into_iter().filter(|r| !r.path.starts_with("/.well-known")).collect()
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.recorder.requests_to("/.well-known/jwks.json").len()
    }

    pub fn result_url(&self, id: &str) -> String {
        format!("https://v3.fal.media/files/fake/{id}.png")
    }

    /// Ends the job and POSTs fal's callback body to its `fal_webhook`; returns the gateway's status.
    pub async fn finish_and_call_back(&self, id: &str, signing: Signing) -> u16 {
        self.state.jobs.lock().expect("jobs").get_mut(id).expect("a job").polls_left = 0;
        let body = json!({
            "request_id": id, "gateway_request_id": id, "status": "OK",
            "payload": {"images": [{"url": self.result_url(id), "content_type": "image/png"}], "seed": 1}
        });
        self.send(id, body.to_string(), signing).await
    }

    pub async fn send(&self, id: &str, body: String, signing: Signing) -> u16 {
        let url = self.state.jobs.lock().expect("jobs")[id].webhook.clone().expect("the job has a webhook");
        let mut headers = vec![];
        let key = match signing {
            Signing::Unsigned => None,
            Signing::Valid => Some(&self.state.keys),
            Signing::Stranger => None,
        };
        let stranger = Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).expect("a key pair");
        let key = if matches!(signing, Signing::Stranger) { Some(&stranger) } else { key };
        if let Some(key) = key {
            let timestamp = chrono::Utc::now().timestamp().to_string();
            let digest = hex::encode(sha2::Sha256::digest(body.as_bytes()));
            let message = format!("{id}\n{USER_ID}\n{timestamp}\n{digest}");
            headers = vec![
                ("X-Fal-Webhook-Request-Id", id.to_owned()),
                ("X-Fal-Webhook-User-Id", USER_ID.to_owned()),
                ("X-Fal-Webhook-Timestamp", timestamp),
                ("X-Fal-Webhook-Signature", hex::encode(key.sign(message.as_bytes()))),
            ];
        }
        post_callback(url, body, headers).await
    }

    /// Adds a `fal` provider pointed at this fake (and its JWKS); callbacks off (polling).
    pub fn configure(&self, settings: &mut aio_gateway::config::Settings) {
        let provider = ProviderSettings {
            jwks_url: Some(format!("{}/.well-known/jwks.json", self.state.base_url)),
            ..super::polling_provider(ProviderKind::Fal, "fal", &self.state.base_url, KEY)
        };
        settings.providers.insert("fal".into(), provider);
    }

    /// Like [`FakeFal::configure`], with callbacks on and polling once a minute.
    pub fn configure_callbacks(&self, settings: &mut aio_gateway::config::Settings) {
        self.configure(settings);
        super::enable_callbacks(settings, "fal", None);
    }
}

fn detail(status: u16, message: &str) -> Response {
    (StatusCode::from_u16(status).expect("status"), axum::Json(json!({"detail": message}))).into_response()
}

async fn handle(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    fake.recorder.record(method.clone(), &uri, headers.clone(), body.clone());
    let path = uri.path().to_owned();
    if path == "/.well-known/jwks.json" {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fake.keys.public_key().as_ref());
        return axum::Json(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "fake"}]})).into_response();
    }
    if !authorized(&headers, &format!("Key {KEY}")) {
        return detail(401, "Cannot access application: invalid key");
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", [owner, app, "requests", id, "status"]) => {
            if let Some(step) = fake.recorder.next("status").await {
                return step.into_response();
            }
            let mut jobs = fake.jobs.lock().expect("jobs");
            let Some(job) = jobs.get_mut(*id) else { return detail(404, "Request not found") };
            if job.polls_left > 0 {
                job.polls_left -= 1;
                let status = if job.polls_left > 0 { "IN_QUEUE" } else { "IN_PROGRESS" };
                return (StatusCode::ACCEPTED, axum::Json(json!({"status": status, "queue_position": job.polls_left})))
                    .into_response();
            }
            let response_url = format!("{}/{owner}/{app}/requests/{id}", fake.base_url);
            axum::Json(json!({"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 1.8}, "response_url": response_url}))
                .into_response()
        }
        ("GET", [_, _, "requests", id]) => {
            if let Some(step) = fake.recorder.next("result").await {
                return step.into_response();
            }
            let jobs = fake.jobs.lock().expect("jobs");
            let Some(job) = jobs.get(*id) else { return detail(404, "Request not found") };
            let output = |flagged: bool| {
                axum::Json(json!({
                    "images": [{"url": format!("https://v3.fal.media/files/fake/{id}.png"), "content_type": "image/png", "width": 2048, "height": 2048}],
                    "seed": 1, "has_nsfw_concepts": [flagged], "timings": {"inference": 1.8}
                }))
                .into_response()
            };
            match &job.outcome {
                Outcome::Success => output(false),
                Outcome::Flagged => output(true),
                Outcome::RequestError(status, error_type) => (
                    StatusCode::from_u16(*status).expect("status"),
                    [("x-fal-error-type", *error_type)],
                    axum::Json(json!({"detail": "Request timed out", "error_type": error_type})),
                )
                    .into_response(),
                Outcome::Fail(message) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"detail": [{"loc": ["body", "prompt"], "msg": message, "type": "value_error"}]})),
                )
                    .into_response(),
            }
        }
        ("PUT", [_, _, "requests", _, "cancel"]) => {
            axum::Json(json!({"status": "CANCELLATION_REQUESTED"})).into_response()
        }
        ("POST", [owner, app, ..]) => {
            if let Some(step) = fake.recorder.next("submit").await {
                return step.into_response();
            }
            if !MODELS.contains(&path.trim_start_matches('/')) {
                return detail(404, "Not found");
            }
            let input: Value = serde_json::from_slice(&body).unwrap_or_default();
            if input["prompt"].as_str().is_none() {
                return detail(422, "prompt: field required");
            }
            let webhook = query_param(uri.query().unwrap_or_default(), "fal_webhook");
            let id = {
                let mut jobs = fake.jobs.lock().expect("jobs");
                let id = format!("req-{}", jobs.len() + 1);
                let job = Job { polls_left: fake.plan.polls(), outcome: fake.plan.outcome(), webhook };
                jobs.insert(id.clone(), job);
                id
            };
            let base = format!("{}/{owner}/{app}/requests/{id}", fake.base_url);
            axum::Json(json!({
                "request_id": id, "gateway_request_id": id,
                "response_url": base, "status_url": format!("{base}/status"), "cancel_url": format!("{base}/cancel"),
                "queue_position": 0
            }))
            .into_response()
        }
        _ => detail(404, "Not found"),
    }
}
