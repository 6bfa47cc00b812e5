//! fal.ai's queue API (`kind = "fal"`): `POST /{owner}/{app}[/{path}]?fal_webhook=` with the raw model
//! input (a route's `upstream_model` is that path, e.g. `fal-ai/bytedance/seedream/v4.5/text-to-image`),
//! `Authorization: Key …`. The job is then addressed as `{owner}/{app}/requests/{request_id}` (from the
//! returned `response_url`): `GET …/status` answers 202 while `IN_QUEUE`/`IN_PROGRESS` and 200 when
//! `COMPLETED`; then `GET …` gives the output, or the job's error (4xx `detail`, or an `error_type`).
//! `PUT …/cancel` for jobs the gateway gave up on.
//!
//! Callbacks are signed with Ed25519: `X-Fal-Webhook-Signature` (hex) over `request_id \n user_id \n
//! timestamp \n hex(sha256(body))`, checked against the keys of fal's JWKS (`jwks_url`, cached 24 h).
//! A callback names only the request id, so it is a trigger: the gateway confirms with the status API.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::signed_callback::{self, header};
use super::upstream::Upstream;
use super::{
    outcome, Callback, CallbackRefused, JobState, Provider, ProviderError, RouteCheck, SubmitRequest, Submitted,
};
use crate::tasks::{OutputImage, TaskErrorCode};

/// Where fal publishes its webhook signing keys.
pub const DEFAULT_JWKS_URL: &str = "https://rest.alpha.fal.ai/.well-known/jwks.json";
const JWKS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub struct Fal {
    upstream: Upstream,
    jwks_url: String,
    /// fal's public keys and when they were fetched.
    keys: Mutex<Option<(Instant, Vec<Vec<u8>>)>>,
}

impl Fal {
    pub fn new(upstream: Upstream, jwks_url: Option<String>) -> Fal {
        Fal { upstream, jwks_url: jwks_url.unwrap_or_else(|| DEFAULT_JWKS_URL.to_owned()), keys: Mutex::new(None) }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Key"))
    }

    /// The job's address under the base URL: the returned `response_url` when it is on the configured
    /// host, else `{owner}/{app}/requests/{id}` from the model path.
    fn job_path(&self, model: &str, request_id: &str, response_url: Option<&str>) -> String {
        let prefix = format!("{}/", self.upstream.base_url);
        if let Some(path) = response_url.and_then(|url| url.strip_prefix(&prefix)) {
            if path.contains("/requests/") {
                return path.trim_end_matches('/').to_owned();
            }
        }
        let app: Vec<&str> = model.split('/').take(2).collect();
        format!("{}/requests/{request_id}", app.join("/"))
    }

    /// fal's public Ed25519 keys, from the JWKS (cached; refetched when a day old).
    async fn public_keys(&self) -> Result<Vec<Vec<u8>>, CallbackRefused> {
        let mut cached = self.keys.lock().await;
        if let Some((fetched, keys)) = cached.as_ref() {
            if fetched.elapsed() < JWKS_MAX_AGE {
                return Ok(keys.clone());
            }
        }
        let answer = self.upstream.http.get(&self.jwks_url).send().await;
        let jwks: Value = match answer {
            Ok(response) if response.status().is_success() => response.json().await.unwrap_or_default(),
            other => {
                tracing::warn!(provider = %self.upstream.id, error = ?other.err(), "cannot fetch the webhook keys");
                return Err(CallbackRefused("The provider's signing keys are unavailable."));
            }
        };
        let keys: Vec<Vec<u8>> = jwks["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|key| key["kty"] == "OKP" && key["crv"] == "Ed25519")
            .filter_map(|key| BASE64URL.decode(key["x"].as_str()?.trim_end_matches('=')).ok())
            .collect();
        *cached = Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), CallbackRefused> {
        let (Some(request_id), Some(user_id), Some(timestamp), Some(signature)) = (
            header(headers, "x-fal-webhook-request-id"),
            header(headers, "x-fal-webhook-user-id"),
            header(headers, "x-fal-webhook-timestamp"),
            header(headers, "x-fal-webhook-signature"),
        ) else {
            return Err(CallbackRefused("The callback is not signed."));
        };
        signed_callback::timestamp(timestamp, chrono::Utc::now().timestamp())?;
        let signature = hex::decode(signature).map_err(|_| CallbackRefused("The callback signature is not hex."))?;
        let message = format!("{request_id}\n{user_id}\n{timestamp}\n{}", hex::encode(Sha256::digest(body)));
        let keys = self.public_keys().await?;
        let valid = keys.iter().any(|key| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
                .verify(message.as_bytes(), &signature)
                .is_ok()
        });
        valid.then_some(()).ok_or(CallbackRefused("The callback signature is wrong."))
    }

    /// The output of a `COMPLETED` job, or its error.
    async fn result(&self, path: &str) -> Result<JobState, ProviderError> {
        let request = self.authorized(self.upstream.http.get(self.upstream.url(&format!("/{path}"))));
        let (status, headers, body) = self.upstream.send_full(request).await?;
        let answer: Option<Value> = serde_json::from_slice(&body).ok();
        if !(200..300).contains(&status) {
            // A model error (4xx `detail`) or a request error (`X-Fal-Error-Type`) ends the job.
            let error_type = error_type(&headers, answer.as_ref());
            let detail = answer.as_ref().and_then(|a| a.get("detail")).map(detail_text).unwrap_or_default();
            if !matches!(status, 400 | 422) && error_type.is_none() {
                return Err(self.upstream.error_for(status, &detail));
            }
            tracing::info!(provider = %self.upstream.id, error_type = ?error_type, reason = %outcome::short(&detail), "job failed upstream");
            let mut error = outcome::failed(&detail);
            if error_type.as_deref() == Some("bad_request") {
                error.code = TaskErrorCode::UpstreamRejected;
            }
            return Ok(JobState::Failed(error));
        }
        let answer = answer.ok_or_else(|| self.upstream.malformed("result", "not JSON"))?;
        let images = answer["images"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|image| image["url"].as_str().map(|url| OutputImage { url: url.to_owned() }))
            .collect();
        let flags: Vec<bool> =
            answer["has_nsfw_concepts"].as_array().into_iter().flatten().filter_map(Value::as_bool).collect();
        Ok(outcome::finished_unless_flagged(outcome::PROVIDER, images, &flags))
    }

    /// A non-2xx answer to a submit or a status request.
    fn refused(&self, status: u16, headers: &HeaderMap, body: &[u8], submit: bool) -> ProviderError {
        let answer = serde_json::from_slice::<Value>(body).ok();
        let error_type = error_type(headers, answer.as_ref());
        let detail = answer
            .as_ref()
            .and_then(|answer| answer.get("detail").map(detail_text))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        match error_type {
            // fal's own infrastructure (timeouts, runners): its status says whether to retry.
            Some(error_type) => {
                tracing::warn!(provider = %self.upstream.id, status, error_type = %error_type, "request error");
                self.upstream.error_for(status, &detail)
            }
            // No such app or path: the route's model is not on fal.
            None if submit => self.upstream.submit_error_for(status, &detail),
            None => self.upstream.error_for(status, &detail),
        }
    }
}

/// fal's machine-readable request error: the `X-Fal-Error-Type` header, or the body's `error_type`
/// (fal.ai/docs/documentation/model-apis/request-errors).
fn error_type(headers: &HeaderMap, answer: Option<&Value>) -> Option<String> {
    header(headers, "x-fal-error-type")
        .map(str::to_owned)
        .or_else(|| answer?.get("error_type")?.as_str().map(str::to_owned))
        .filter(|error_type| !error_type.is_empty())
}

/// fal's `detail`: a string, or a list of `{loc, msg, type}`.
fn detail_text(detail: &Value) -> String {
    match detail {
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            items.iter().map(|item| item["msg"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
struct Queued {
    request_id: String,
    #[serde(default)]
    response_url: Option<String>,
}

#[async_trait]
impl Provider for Fal {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        let model = request.upstream_model.trim_matches('/');
        let mut http = self.upstream.http.post(self.upstream.url(&format!("/{model}"))).json(&request.fields);
        if let Some(callback_url) = request.callback_url {
            http = http.query(&[("fal_webhook", callback_url)]);
        }
        let (status, headers, body) = self.upstream.send_full(self.authorized(http)).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(status, &headers, &body, true));
        }
        let queued: Queued =
            serde_json::from_slice(&body).map_err(|error| self.upstream.malformed("queue answer", error))?;
        let path = self.job_path(model, &queued.request_id, queued.response_url.as_deref());
        Ok(Submitted::Accepted { upstream_id: path })
    }

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError> {
        let request = self.authorized(self.upstream.http.get(self.upstream.url(&format!("/{upstream_id}/status"))));
        let (status, headers, body) = self.upstream.send_full(request).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(status, &headers, &body, false));
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|error| self.upstream.malformed("status", error))?;
        match answer["status"].as_str() {
            Some("COMPLETED") => self.result(upstream_id).await,
            Some(_) => Ok(JobState::Running { check_after: None }),
            None => Err(self.upstream.malformed("status", "no status")),
        }
    }

    async fn cancel(&self, upstream_id: &str) -> Result<(), ProviderError> {
        let request = self.authorized(self.upstream.http.put(self.upstream.url(&format!("/{upstream_id}/cancel"))));
        self.upstream.send(request).await.map(|_| ())
    }

    /// unverified: fal documents no call on its queue host that checks a key or an endpoint without
    /// running it; the route is reported as not checked.
    async fn check(&self, _model: &str) -> RouteCheck {
        RouteCheck {
            detail: "not checked: fal has no documented non-billing call on the queue API".into(),
            ..RouteCheck::default()
        }
    }

    fn calls_back(&self) -> bool {
        true
    }

    /// Always verified (fal's keys are public). The body (`{request_id, status: OK|ERROR, payload}`)
    /// is not read: the job is addressed by more than its request id, so the status API decides.
    async fn read_callback(&self, headers: &HeaderMap, body: &[u8]) -> Result<Callback, CallbackRefused> {
        self.verify(headers, body).await?;
        Ok(Callback::default())
    }
}
