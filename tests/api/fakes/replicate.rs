//! A fake Replicate: `POST /v1/models/{owner}/{name}/predictions` (answering 201, or 200 when told),
//! `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`, errors as `{"detail": …}`. Each
//! prediction is `starting`, then `processing` for `polls` polls, then ends as `outcome` says.
//! Callbacks carry the prediction, signed with Standard Webhooks. Scripts (endpoints `create`,
//! `poll`) answer first. `GET /v1/models/{owner}/{name}` answers the model object for the models it
//! serves (what `providers check` asks).
//!
//! Sources: Replicate's prediction docs (replicate.com/docs/topics/predictions/lifecycle and
//! /create-a-prediction: the prediction object, statuses, `{"detail": …}` errors), its webhook docs
//! (replicate.com/docs/topics/webhooks), and its HTTP API's models.get (api.replicate.com/openapi.json).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aio_gateway::config::ProviderKind;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::{authorized, png_bytes, post_callback, webhook_headers, Plan, Recorder, Server, Step};

pub const KEY: &str = "r8_replicate-test-token-5ecr3t";
/// A Standard Webhooks secret: `whsec_` + base64 of the HMAC key.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The models this fake serves (`owner/name`): black-forest-labs/flux-schnell, ideogram-ai/ideogram-v3-turbo
/// (replicate.com/ideogram-ai/ideogram-v2a/api lists the v3 family), google/nano-banana-2
/// (replicate.com/google/nano-banana-2/versions/…/api) and bytedance/seedream-4.5 (the Replicate-only test
/// catalog; unverified). google/imagen-4 is not among them: Google shut Imagen down on 2026-08-17.
pub const MODELS: [&str; 4] = [
    "black-forest-labs/flux-schnell",
    "ideogram-ai/ideogram-v3-turbo",
    "google/nano-banana-2",
    "bytedance/seedream-4.5",
];

#[derive(Debug, Clone)]
pub enum Outcome {
    Success,
    Fail(&'static str),
}

struct Job {
    model: String,
    polls_left: usize,
    outcome: Outcome,
    canceled: bool,
    webhook: Option<String>,
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    plan: Plan<Outcome>,
    create_status: Mutex<u16>,
    jobs: Mutex<HashMap<String, Job>>,
}

pub struct FakeReplicate {
    state: Arc<Fake>,
    _server: Server,
}

impl FakeReplicate {
    pub async fn start() -> FakeReplicate {
        let (state, server) = super::start("Replicate", Router::new().fallback(handle), |base_url| Fake {
            base_url,
            recorder: Recorder::default(),
            plan: Plan::new(2, Outcome::Success),
            create_status: Mutex::new(201),
            jobs: Mutex::new(HashMap::new()),
        })
        .await;
        FakeReplicate { state, _server: server }
    }

    pub fn polls(&self, polls: usize) -> &Self {
        self.state.plan.set_polls(polls);
        self
    }

    pub fn outcome(&self, outcome: Outcome) -> &Self {
        self.state.plan.set_outcome(outcome);
        self
    }

    /// The status a successful create answers: 201 (default) or 200 (the docs leave it open).
    pub fn create_status(&self, status: u16) -> &Self {
        *self.state.create_status.lock().expect("create_status") = status;
        self
    }

    pub fn script(&self, endpoint: &'static str, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.state.recorder.script(endpoint, steps);
        self
    }

    pub fn creates(&self) -> Vec<super::Request> {
        self.state.recorder.requests().into_iter().filter(|r| r.path.ends_with("/predictions")).collect()
    }

    pub fn polls_received(&self) -> Vec<super::Request> {
        self.state.recorder.requests().into_iter().filter(|r| r.method == Method::GET).collect()
    }

    pub fn cancels(&self) -> Vec<super::Request> {
        self.state.recorder.requests().into_iter().filter(|r| r.path.ends_with("/cancel")).collect()
    }

    pub fn result_url(&self, id: &str) -> String {
        format!("{}/results/{id}.png", self.state.base_url)
    }

    /// Ends the job and POSTs the prediction to its webhook, signed with `secret` (or unsigned).
    pub async fn finish_and_call_back(&self, id: &str, secret: Option<&str>) -> u16 {
        self.state.jobs.lock().expect("jobs").get_mut(id).expect("a job").polls_left = 0;
        let body = self.state.prediction(id).to_string();
        self.send(id, body, secret).await
    }

    /// POSTs `body` to the job's webhook, signed with `secret` (or unsigned).
    pub async fn send(&self, id: &str, body: String, secret: Option<&str>) -> u16 {
        let url = self.state.jobs.lock().expect("jobs")[id].webhook.clone().expect("the job has a webhook");
        let headers = match secret {
            None => vec![],
            Some(secret) => {
                webhook_headers(id, &body, |webhook_id, timestamp, body| sign(secret, webhook_id, timestamp, body))
            }
        };
        post_callback(url, body, headers).await
    }

    /// Adds a `replicate` provider pointed at this fake; callbacks off (polling).
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    pub fn configure(&self, settings: &mut aio_gateway::config::Settings) {
        let provider = super::polling_provider(ProviderKind::Replicate, "Replicate", &self.state.base_url, KEY);
        settings.providers.insert("replicate".into(), provider);
    }

    /// Like [`FakeReplicate::configure`], with callbacks on, polling once a minute, and the secret.
    pub fn configure_callbacks(&self, settings: &mut aio_gateway::config::Settings, secret: Option<&str>) {
        self.configure(settings);
        super::enable_callbacks(settings, "replicate", secret);
    }
}

/// Standard Webhooks, written out independently of the gateway's: `v1,` + base64(HMAC-SHA256(
/// base64-decoded secret after `whsec_`, `id.timestamp.body`)).
pub fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(secret.trim_start_matches("whsec_")).expect("a base64 secret");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", engine.encode(mac.finalize().into_bytes()))
}

/// Replicate's error answer.
pub fn error(status: u16, detail: &str) -> Step {
    Step::Json(status, json!({"detail": detail}))
}

impl Fake {
    fn prediction(&self, id: &str) -> Value {
        let jobs = self.jobs.lock().expect("jobs");
        let job = &jobs[id];
        let (status, output, error) = match (&job.outcome, job.polls_left, job.canceled) {
            (_, _, true) => ("canceled", Value::Null, Value::Null),
            (_, left, _) if left > 0 => ("processing", Value::Null, Value::Null),
            (Outcome::Success, _, _) => {
                ("succeeded", json!([format!("{}/results/{id}.png", self.base_url)]), Value::Null)
            }
            (Outcome::Fail(reason), _, _) => ("failed", Value::Null, json!(reason)),
        };
        let get = format!("{}/v1/predictions/{id}", self.base_url);
        json!({
            "id": id, "model": job.model, "version": "hidden", "input": {}, "status": status,
            "output": output, "error": error, "logs": "", "metrics": {},
            "created_at": "2026-11-26T12:00:00.000Z", "started_at": null, "completed_at": null,
            "urls": {"get": get, "cancel": format!("{get}/cancel"), "web": format!("https://replicate.com/p/{id}")}
        })
    }
}

async fn handle(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    if method == Method::GET && path.starts_with("/results/") {
        return ([("content-type", "image/png")], png_bytes(11)).into_response();
    }
    fake.recorder.record(method.clone(), &uri, headers.clone(), body.clone());
    let authorized = authorized(&headers, &format!("Bearer {KEY}"));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "models", owner, name, "predictions"]) => {
            if let Some(step) = fake.recorder.next("create").await {
                return step.into_response();
            }
            if !authorized {
                return error(401, "Unauthenticated").into_response();
            }
            if !MODELS.contains(&format!("{owner}/{name}").as_str()) {
                return error(404, "Not found.").into_response();
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
            if request["input"]["prompt"].as_str().is_none() {
                return error(422, "input.prompt is required").into_response();
            }
            let id = {
                let mut jobs = fake.jobs.lock().expect("jobs");
                let id = format!("rep{}", jobs.len() + 1);
                let job = Job {
                    model: format!("{owner}/{name}"),
                    polls_left: fake.plan.polls(),
                    outcome: fake.plan.outcome(),
                    canceled: false,
                    webhook: request["webhook"].as_str().map(str::to_owned),
                };
                jobs.insert(id.clone(), job);
                id
            };
            let mut prediction = fake.prediction(&id);
            prediction["status"] = json!("starting");
            let status = StatusCode::from_u16(*fake.create_status.lock().expect("status")).expect("status");
            (status, axum::Json(prediction)).into_response()
        }
        ("GET", ["v1", "predictions", id]) => {
            if let Some(step) = fake.recorder.next("poll").await {
                return step.into_response();
            }
            if !authorized {
                return error(401, "Unauthenticated").into_response();
            }
            let running = {
                let mut jobs = fake.jobs.lock().expect("jobs");
                let Some(job) = jobs.get_mut(*id) else {
                    return error(404, "Not found.").into_response();
                };
                let running = job.polls_left > 0 && !job.canceled;
                job.polls_left = job.polls_left.saturating_sub(1);
                running
            };
            let mut prediction = fake.prediction(id);
            if running {
                prediction["status"] = json!("processing");
                prediction["output"] = Value::Null;
                prediction["error"] = Value::Null;
            }
            axum::Json(prediction).into_response()
        }
        ("GET", ["v1", "models", owner, name]) => {
            if !authorized {
                return error(401, "Unauthenticated").into_response();
            }
            let model = format!("{owner}/{name}");
            if !MODELS.contains(&model.as_str()) {
                return error(404, "Not found.").into_response();
            }
            axum::Json(json!({
                "url": format!("https://replicate.com/{model}"), "owner": owner, "name": name,
                "description": "", "visibility": "public", "run_count": 1, "latest_version": {"id": "0000"}
            }))
            .into_response()
        }
        ("POST", ["v1", "predictions", id, "cancel"]) => {
            if !authorized {
                return error(401, "Unauthenticated").into_response();
            }
            match fake.jobs.lock().expect("jobs").get_mut(*id) {
                Some(job) => job.canceled = true,
                None => return error(404, "Not found.").into_response(),
            }
            axum::Json(fake.prediction(id)).into_response()
        }
        _ => error(404, "Not found.").into_response(),
    }
}
