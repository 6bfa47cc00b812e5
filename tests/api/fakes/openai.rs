//! A fake OpenAI-compatible images API: `POST /v1/images/generations` answering at once with
//! `{"created", "data": [{"b64_json"}]}` (GPT image models) or `[{"url"}]` (when told), errors as
//! `{"error": {message, type, param, code}}`; `url` answers point at `GET /results/image.png`. Scripts
//! (endpoints `generate`, `result`) answer first. `GET /v1/models/{id}` answers the model object for
//! the models it serves (what `providers check` asks).
//!
//! Sources: the OpenAI SDK's image types (`b64_json` for GPT image models; openai/openai-python
//! src/openai/types/images_response.py), the error envelope and `insufficient_quota` answer as OpenAI
//! sends them (github.com/mattvr/ShellGPT/issues/23), the `model_not_found` answer for a shut-down model
//! (dev.to/flarecanary: "The model `dall-e-3` has been deprecated…"), and models.retrieve
//! (`{id, object: "model", created, owned_by}`).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::json;

use super::{authorized, png_bytes, Recorder, Server, Step};

pub const KEY: &str = "sk-openai-test-key-5ecr3t";

/// The image models this fake serves: the live GPT Image 2.6 pair (developers.openai.com/api/docs/
/// models/gpt-image-2.6-sunburst; /deprecations names gpt-image-2.6-flare). gpt-image-1 and dall-e-3
/// are shut down: asked for them, the fake answers `model_not_found` as OpenAI does.
pub const MODELS: [&str; 2] = ["gpt-image-2.6-sunburst", "gpt-image-2.6-flare"];

/// OpenAI's answer when our account cannot pay.
pub fn insufficient_quota() -> Step {
    Step::Json(
        429,
        json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota", "param": null, "code": "insufficient_quota"
        }}),
    )
}

/// The PNG every b64_json answer carries.
pub fn image() -> Vec<u8> {
    png_bytes(42)
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    /// Answer `url` instead of `b64_json`.
    urls: Mutex<bool>,
}

pub struct FakeOpenAi {
    state: Arc<Fake>,
    _server: Server,
}

impl FakeOpenAi {
    pub async fn start() -> FakeOpenAi {
        let (state, server) = super::start("OpenAI", Router::new().fallback(handle), |base_url| Fake {
            base_url,
            recorder: Recorder::default(),
            urls: Mutex::new(false),
        })
        .await;
        FakeOpenAi { state, _server: server }
    }

    /// Answer with `url` (as dall-e models do by default) instead of `b64_json`.
    pub fn answer_urls(&self, urls: bool) -> &Self {
        *self.state.urls.lock().expect("urls") = urls;
        self
    }

    pub fn script(&self, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.state.recorder.script("generate", steps);
        self
    }

    pub fn requests(&self) -> Vec<super::Request> {
        self.state.recorder.requests()
    }

    /// Answers for the next result image downloads.
    pub fn script_results(&self, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.state.recorder.script("result", steps);
        self
    }

    /// The downloads of the result image.
    pub fn downloads(&self) -> Vec<super::Request> {
        self.state.recorder.requests_to("/results/")
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    pub fn result_url(&self) -> String {
        format!("{}/results/image.png", self.state.base_url)
    }

    /// Adds an `openai` provider pointed at this fake.
    pub fn configure(&self, settings: &mut aio_gateway::config::Settings) {
        use aio_gateway::config::{ProviderKind, ProviderSettings};
        let provider = ProviderSettings {
            label: Some("OpenAI".into()),
            base_url: Some(self.state.base_url.clone()),
            api_key: Some(KEY.into()),
            timeout: std::time::Duration::from_secs(1),
            ..ProviderSettings::new(ProviderKind::Openai)
        };
        settings.providers.insert("openai".into(), provider);
    }
}

/// OpenAI's error answer.
pub fn error(status: u16, message: &str, code: &str) -> Step {
    Step::Json(
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

/// OpenAI's answer for a model that does not exist or was shut down.
fn not_found(model: &str) -> Step {
    let message = format!("The model `{model}` does not exist or you do not have access to it.");
    error(404, &message, "model_not_found")
}

async fn handle(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    fake.recorder.record(method.clone(), &uri, headers.clone(), body.clone());
    if method == Method::GET && uri.path() == "/results/image.png" {
        if let Some(step) = fake.recorder.next("result").await {
            return step.into_response();
        }
        return ([("content-type", "image/png")], image()).into_response();
    }
    if method == Method::GET {
        if let Some(id) = uri.path().strip_prefix("/v1/models/") {
            if !authorized(&headers, &format!("Bearer {KEY}")) {
                return error(401, "Incorrect API key provided", "invalid_api_key").into_response();
            }
            if !MODELS.contains(&id) {
                return not_found(id).into_response();
            }
            return axum::Json(json!({"id": id, "object": "model", "created": 1762300000, "owned_by": "system"}))
                .into_response();
        }
    }
    if method != Method::POST || uri.path() != "/v1/images/generations" {
        return error(404, "Unknown request URL", "unknown_url").into_response();
    }
    if let Some(step) = fake.recorder.next("generate").await {
        return step.into_response();
    }
    if !authorized(&headers, &format!("Bearer {KEY}")) {
        return error(401, "Incorrect API key provided", "invalid_api_key").into_response();
    }
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if request["prompt"].as_str().is_none() || request["model"].as_str().is_none() {
        return error(400, "model and prompt are required", "invalid_value").into_response();
    }
    let model = request["model"].as_str().unwrap_or_default();
    if !MODELS.contains(&model) {
        return not_found(model).into_response();
    }
    let item = if *fake.urls.lock().expect("urls") {
        json!({"url": format!("{}/results/image.png", fake.base_url), "revised_prompt": "a lake"})
    } else {
        json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(image())})
    };
    axum::Json(json!({"created": 1713833628, "data": [item], "usage": {"total_tokens": 100}})).into_response()
}
