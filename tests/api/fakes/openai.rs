//! A fake OpenAI-compatible images API: `POST /v1/images/generations` answering at once with
//! `{"created", "data": [{"b64_json"}]}` (GPT image models) or `[{"url"}]` (when told), errors as
//! `{"error": {message, type, param, code}}`; `url` answers point at `GET /results/image.png`. Scripts
//! (endpoints `generate`, `result`) answer first.

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

async fn handle(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    fake.recorder.record(method.clone(), &uri, headers.clone(), body.clone());
    if method == Method::GET && uri.path() == "/results/image.png" {
        if let Some(step) = fake.recorder.next("result").await {
            return step.into_response();
        }
        return ([("content-type", "image/png")], image()).into_response();
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
    let item = if *fake.urls.lock().expect("urls") {
        json!({"url": format!("{}/results/image.png", fake.base_url), "revised_prompt": "a lake"})
    } else {
        json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(image())})
    };
    axum::Json(json!({"created": 1713833628, "data": [item], "usage": {"total_tokens": 100}})).into_response()
}
