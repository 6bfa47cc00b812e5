//! Replicate's predictions API (`kind = "replicate"`): `POST /v1/models/{owner}/{name}/predictions`
//! with `{input, webhook, webhook_events_filter}` (a route's `upstream_model` is `owner/name`; an
//! `owner/name:version` or bare version id goes to `POST /v1/predictions` with `version`), then `GET
//! /v1/predictions/{id}` until `succeeded`, `failed`, `canceled` or `aborted`; `POST
//! /v1/predictions/{id}/cancel` for jobs the gateway gave up on.
//!
//! Errors are plain HTTP statuses with `{"detail": …}`. Callbacks carry the prediction and are signed
//! with Standard Webhooks, checked by [`crate::webhooks::signing::verify`].

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};

use super::signed_callback;
use super::upstream::Upstream;
use super::{
    outcome, Callback, CallbackRefused, JobState, Provider, ProviderError, RouteCheck, SubmitRequest, Submitted,
};
use crate::tasks::{OutputImage, TaskError, TaskErrorCode};
use crate::webhooks::signing;

pub struct Replicate {
    upstream: Upstream,
    /// The `whsec_…` key of `GET /v1/webhooks/default/secret`: when set, callbacks must be signed.
    webhook_secret: Option<SecretString>,
}

impl Replicate {
    pub fn new(upstream: Upstream, webhook_secret: Option<SecretString>) -> Replicate {
        Replicate { upstream, webhook_secret }
    }

    /// Sends one request: the JSON body of a 2xx answer (create answers 201, or 200), else the mapped
    /// error (for a create, a 404 is the route's model Replicate does not have).
    async fn call(&self, request: reqwest::RequestBuilder, create: bool) -> Result<Value, ProviderError> {
        let request = request.header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"));
        let (status, body) = self.upstream.send(request).await?;
        if !(200..300).contains(&status) {
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").map(|d| d.as_str().map(str::to_owned).unwrap_or_else(|| d.to_string())))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(match create {
                true => self.upstream.submit_error_for(status, &detail),
                false => self.upstream.error_for(status, &detail),
            });
        }
        serde_json::from_slice(&body).map_err(|error| self.upstream.malformed("answer", error))
    }
}

/// A prediction: the create and get answers and a callback's body.
#[derive(Deserialize)]
struct Prediction {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: String,
    /// An array of URLs, or one URL.
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

impl Prediction {
    fn job_state(self, upstream: &Upstream) -> JobState {
        match self.status.as_str() {
            "succeeded" => {
                let urls: Vec<String> = match self.output {
                    Some(Value::String(url)) => vec![url],
                    Some(Value::Array(items)) => {
                        items.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                    }
                    _ => vec![],
                };
                outcome::finished(outcome::PROVIDER, urls.into_iter().map(|url| OutputImage { url }).collect())
            }
            "failed" => {
                let reason = match self.error {
                    Some(Value::String(reason)) => reason,
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                tracing::info!(provider = %upstream.id, reason = %outcome::short(&reason), "job failed upstream");
                JobState::Failed(outcome::failed(&reason))
            }
            "canceled" | "aborted" => JobState::Failed(TaskError {
                code: TaskErrorCode::UpstreamFailed,
                message: format!(
                    "The provider {} the job.",
                    if self.status == "canceled" { "canceled" } else { "aborted" }
                ),
            }),
            // starting, processing, and whatever Replicate adds later.
            _ => JobState::Running { check_after: None },
        }
    }
}

/// A job id as one path segment.
fn segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

#[async_trait]
impl Provider for Replicate {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        let model = request.upstream_model.trim_matches('/');
        let mut body = json!({"input": request.fields});
        let url = if model.contains(':') || !model.contains('/') {
            body["version"] = json!(model);
            self.upstream.url("/v1/predictions")
        } else {
            self.upstream.url(&format!("/v1/models/{model}/predictions"))
        };
        if let Some(callback_url) = request.callback_url {
            body["webhook"] = json!(callback_url);
            body["webhook_events_filter"] = json!(["completed"]);
        }
        let answer = self.call(self.upstream.http.post(url).json(&body), true).await?;
        match answer.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Submitted::Accepted { upstream_id: id.to_owned() }),
            _ => Err(self.upstream.malformed("create answer", "no id")),
        }
    }

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError> {
        let url = self.upstream.url(&format!("/v1/predictions/{}", segment(upstream_id)));
        let answer = self.call(self.upstream.http.get(url), false).await?;
        let prediction: Prediction =
            serde_json::from_value(answer).map_err(|error| self.upstream.malformed("prediction", error))?;
        Ok(prediction.job_state(&self.upstream))
    }

    async fn cancel(&self, upstream_id: &str) -> Result<(), ProviderError> {
        let url = self.upstream.url(&format!("/v1/predictions/{}/cancel", segment(upstream_id)));
        self.call(self.upstream.http.post(url), false).await.map(|_| ())
    }

    /// The model itself (`GET /v1/models/{owner}/{name}`, Replicate's models.get): key and model.
    async fn check(&self, model: &str) -> RouteCheck {
        let model = model.trim_matches('/');
        let model = model.split(':').next().unwrap_or(model);
        let what = format!("GET /v1/models/{model}");
        let request = self
            .upstream
            .http
            .get(self.upstream.url(&format!("/v1/models/{model}")))
            .header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"));
        match self.upstream.send(request).await {
            Ok((status, _)) => RouteCheck::from_status(&what, status, model.contains('/')),
            Err(error) => RouteCheck::unreachable(&what, &error),
        }
    }

    fn calls_back(&self) -> bool {
        true
    }

    async fn read_callback(&self, headers: &HeaderMap, body: &[u8]) -> Result<Callback, CallbackRefused> {
        if let Some(secret) = &self.webhook_secret {
            let (id, timestamp, header) = signed_callback::webhook_headers(headers)?;
            if !signing::verify(secret.expose_secret(), &id, timestamp, body, &header) {
                return Err(CallbackRefused("The callback signature is wrong."));
            }
        }
        let Ok(prediction) = serde_json::from_slice::<Prediction>(body) else {
            return Ok(Callback::default());
        };
        let upstream_id = prediction.id.clone();
        Ok(Callback { upstream_id, state: Some(prediction.job_state(&self.upstream)) })
    }
}
