//! A fake WaveSpeed v3 API: `POST /api/v3/{model path}[?webhook=]` with raw inputs, `GET
//! /api/v3/predictions/{id}/result` (and `GET /api/v3/predictions/{id}`), envelopes `{code, message,
//! data}`. Each job is `created`, then `processing` for `polls` polls, then ends as `outcome` says.
//! Callbacks carry the bare prediction, signed `v3,<hex>` with the raw secret. Scripts (endpoints
//! `submit`, `poll`) answer first.
//!
//! Sources: wavespeed.ai/docs/what-are-predictions and /docs/get-result (submit and result envelopes,
//! `has_nsfw_contents`), /docs-api/webhooks (callback body). unverified: the body of WaveSpeed's answer
//! to an unknown model path; the fake answers its usual envelope with code 404.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aio_gateway::config::ProviderKind;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::{authorized, png_bytes, post_callback, query_param, webhook_headers, Plan, Recorder, Server, Step};

pub const KEY: &str = "wavespeed-test-key-5ecr3t";
pub const SECRET: &str = "whsec_wavespeed-raw-secret";

/// The model paths this fake serves (`/api/v3/{path}`), each seen in WaveSpeed's docs:
/// bytedance/seedream-v4 and …/edit, wavespeed-ai/flux-dev (wavespeed.ai/docs/what-are-predictions,
/// /docs/check-usage), bytedance/seedream-v4.5 and …/edit (wavespeed.ai/docs/check-billings),
/// z-ai/cogview-4 (docs-api/z-ai/z-ai-cogview-4; unverified: page not in the stored docs).
pub const MODELS: [&str; 6] = [
    "bytedance/seedream-v4",
    "bytedance/seedream-v4/edit",
    "bytedance/seedream-v4.5",
    "bytedance/seedream-v4.5/edit",
    "wavespeed-ai/flux-dev",
    "z-ai/cogview-4",
];

#[derive(Debug, Clone)]
pub enum Outcome {
    Success,
    Fail(&'static str),
    /// Completed, with the image flagged by the safety checker (`has_nsfw_contents: [true]`).
    Flagged,
}

struct Job {
    model: String,
    polls_left: usize,
    outcome: Outcome,
    webhook: Option<String>,
}

/// How the fake signs its callbacks.
#[derive(Debug, Clone, Copy)]
pub enum Signing {
    Unsigned,
    /// `v3,<hex>` with this secret (minus `whsec_`) as the raw key, as WaveSpeed does.
    With(&'static str),
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    plan: Plan<Outcome>,
    jobs: Mutex<HashMap<String, Job>>,
    /// Finish each new job at once and call back before answering the submit, signed like this.
    call_back_first: Mutex<Option<Signing>>,
}

pub struct FakeWaveSpeed {
    state: Arc<Fake>,
    _server: Server,
}

impl FakeWaveSpeed {
    pub async fn start() -> FakeWaveSpeed {
        let (state, server) = super::start("WaveSpeed", Router::new().fallback(handle), |base_url| Fake {
            base_url,
            recorder: Recorder::default(),
            plan: Plan::new(2, Outcome::Success),
            jobs: Mutex::new(HashMap::new()),
            call_back_first: Mutex::new(None),
        })
        .await;
        FakeWaveSpeed { state, _server: server }
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
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

    pub fn requests(&self) -> Vec<super::Request> {
        self.state.recorder.requests()
    }

    pub fn submits(&self) -> Vec<super::Request> {
        self.requests().into_iter().filter(|r| r.method == Method::POST).collect()
    }

    pub fn polls_received(&self) -> Vec<super::Request> {
        self.state.recorder.requests_to("/api/v3/predictions/")
    }

    pub fn result_url(&self, id: &str) -> String {
        format!("{}/results/{id}.png", self.state.base_url)
    }

    /// Ends the job now: the next poll answers its outcome.
    pub fn finish(&self, id: &str) {
        self.state.jobs.lock().expect("jobs").get_mut(id).expect("a job").polls_left = 0;
    }

    /// Ends the job and POSTs its callback to the `?webhook=` URL; returns the gateway's status.
    pub async fn finish_and_call_back(&self, id: &str, signing: Signing) -> u16 {
        self.finish(id);
        let body = self.state.prediction(id).to_string();
        self.send(id, body, signing).await
    }

    /// Sends a callback for the job with this body (a forgery, or a replay).
    pub async fn send(&self, id: &str, body: String, signing: Signing) -> u16 {
        self.state.send(id, body, signing).await
    }

    /// Finish every new job at once and call back before answering the submit.
    pub fn call_back_before_answering(&self, signing: Signing) -> &Self {
        *self.state.call_back_first.lock().expect("call_back_first") = Some(signing);
        self
    }

    /// Points a `wavespeed` provider (added to the settings) at this fake; callbacks off (polling).
    pub fn configure(&self, settings: &mut aio_gateway::config::Settings) {
        let provider = super::polling_provider(ProviderKind::Wavespeed, "WaveSpeed", self.base_url(), KEY);
        settings.providers.insert("wavespeed".into(), provider);
    }

    /// Like [`FakeWaveSpeed::configure`], with callbacks on, polling slowed to once a minute, and the
    /// webhook secret (if any).
    pub fn configure_callbacks(&self, settings: &mut aio_gateway::config::Settings, secret: Option<&str>) {
        self.configure(settings);
        super::enable_callbacks(settings, "wavespeed", secret);
    }
}

/// WaveSpeed's callback signature: `v3,` + hex(HMAC-SHA256(secret minus `whsec_`, `id.ts.body`)).
pub fn sign(secret: &str, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
    use hmac::Mac;
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v3,{}", hex::encode(mac.finalize().into_bytes()))
}

/// An error answer in WaveSpeed's (assumed) shape, with the HTTP status equal to the code.
pub fn error(code: u16, message: &str) -> Step {
    Step::Json(code, json!({"code": code, "message": message, "data": null}))
}

/// WaveSpeed's envelope around `data`.
fn envelope(data: Value) -> Response {
    axum::Json(json!({"code": 200, "message": "success", "data": data})).into_response()
}

impl Fake {
    /// POSTs `body` to the job's `?webhook=` URL, signed as `signing` says; returns the gateway's status.
    async fn send(&self, id: &str, body: String, signing: Signing) -> u16 {
        let url = self.jobs.lock().expect("jobs")[id].webhook.clone().expect("the job has a webhook");
        let headers = match signing {
            Signing::Unsigned => vec![],
            Signing::With(secret) => {
                webhook_headers(id, &body, |webhook_id, timestamp, body| sign(secret, webhook_id, timestamp, body))
            }
        };
        post_callback(url, body, headers).await
    }

    /// The prediction object as the job now stands.
    fn prediction(&self, id: &str) -> Value {
        let jobs = self.jobs.lock().expect("jobs");
        let job = &jobs[id];
        let image = || vec![format!("{}/results/{id}.png", self.base_url)];
        let (status, outputs, error, flags) = match (&job.outcome, job.polls_left) {
            (_, left) if left > 0 => ("processing", vec![], "", vec![]),
            (Outcome::Success, _) => ("completed", image(), "", vec![false]),
            (Outcome::Flagged, _) => ("completed", image(), "", vec![true]),
            (Outcome::Fail(reason), _) => ("failed", vec![], *reason, vec![]),
        };
        json!({
            "id": id, "model": job.model, "input": {}, "status": status, "outputs": outputs,
            "urls": {"get": format!("{}/api/v3/predictions/{id}/result", self.base_url)},
            "has_nsfw_contents": flags, "created_at": "2026-11-26T12:00:00.000Z", "error": error,
            "timings": {"inference": 2500}
        })
    }
}

async fn handle(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    if method == Method::GET && path.starts_with("/results/") {
        return ([("content-type", "image/png")], png_bytes(9)).into_response();
    }
    fake.recorder.record(method.clone(), &uri, headers.clone(), body.clone());
    let authorized = authorized(&headers, &format!("Bearer {KEY}"));
    if method == Method::POST {
        if let Some(step) = fake.recorder.next("submit").await {
            return step.into_response();
        }
        if !authorized {
            return error(401, "Invalid API key").into_response();
        }
        let Some(model) = path.strip_prefix("/api/v3/").filter(|m| MODELS.contains(m)) else {
            return error(404, "model not found").into_response();
        };
        let input: Value = serde_json::from_slice(&body).unwrap_or_default();
        if input["prompt"].as_str().is_none() {
            return error(400, "prompt is required").into_response();
        }
        let webhook = query_param(uri.query().unwrap_or_default(), "webhook");
        let first = *fake.call_back_first.lock().expect("call_back_first");
        let id = {
            let mut jobs = fake.jobs.lock().expect("jobs");
            let id = format!("pred_{}", jobs.len() + 1);
            let job = Job {
                model: model.to_owned(),
                polls_left: if first.is_some() { 0 } else { fake.plan.polls() },
                outcome: fake.plan.outcome(),
                webhook,
            };
            jobs.insert(id.clone(), job);
            id
        };
        if let Some(signing) = first {
            let status = fake.send(&id, fake.prediction(&id).to_string(), signing).await;
            assert_eq!(status, 200, "the gateway takes a callback that comes before the submit answer");
        }
        let mut created = fake.prediction(&id);
        created["status"] = json!("created");
        return envelope(created);
    }
    if method == Method::GET && path == "/api/v3/balance" {
        if !authorized {
            return error(401, "Invalid API key").into_response();
        }
        // wavespeed.ai/docs/check-balance's example.
        return envelope(json!({"balance": 156.78, "currency": "USD"}));
    }
    if method == Method::GET {
        let id = path.strip_prefix("/api/v3/predictions/").map(|rest| rest.trim_end_matches("/result").to_owned());
        if let Some(id) = id {
            if let Some(step) = fake.recorder.next("poll").await {
                return step.into_response();
            }
            if !authorized {
                return error(401, "Invalid API key").into_response();
            }
            let known = {
                let mut jobs = fake.jobs.lock().expect("jobs");
                jobs.get_mut(&id).map(|job| {
                    // This poll answers the state before it: `processing` while polls are left.
                    let running = job.polls_left > 0;
                    job.polls_left = job.polls_left.saturating_sub(1);
                    running
                })
            };
            return match known {
                None => error(404, "prediction not found").into_response(),
                Some(true) => {
                    let mut prediction = fake.prediction(&id);
                    prediction["status"] = json!("processing");
                    prediction["outputs"] = json!([]);
                    envelope(prediction)
                }
                Some(false) => envelope(fake.prediction(&id)),
            };
        }
    }
    error(404, "not found").into_response()
}
