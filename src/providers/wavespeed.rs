//! WaveSpeed AI v3 (`kind = "wavespeed"`): `POST /api/v3/{owner}/{model}[/{variant}]` with the raw
//! model inputs (the route's `upstream_model` is that path, e.g. `bytedance/seedream-v4.5`), a
//! callback as `?webhook=`, then `GET /api/v3/predictions/{id}/result` until `completed` or `failed`.
//!
//! Answers are envelopes `{code, message, data}`; `code` is read even under HTTP 200. Callbacks carry
//! the bare prediction, signed Standard-Webhooks-style but not compatibly: `webhook-signature:
//! v3,<hex>` over `{id}.{timestamp}.{body}` with the secret (minus `whsec_`) as raw bytes.

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::signed_callback;
use super::upstream::Upstream;
use super::{
    outcome, Callback, CallbackRefused, JobState, Provider, ProviderError, RouteCheck, SubmitRequest, Submitted,
};
use crate::tasks::OutputImage;
use crate::webhooks::signing;

pub struct WaveSpeed {
    upstream: Upstream,
    /// The webhook secret (`GET /api/v3/webhook/secret`): when configured, callbacks must be signed.
    webhook_secret: Option<SecretString>,
}

impl WaveSpeed {
    pub fn new(upstream: Upstream, webhook_secret: Option<SecretString>) -> WaveSpeed {
        WaveSpeed { upstream, webhook_secret }
    }

    /// Sends one request and opens the envelope: `data` when `code` is 200, else the mapped error
    /// (for a submit, a 404 is the route's model path WaveSpeed does not have).
    async fn call(&self, request: reqwest::RequestBuilder, submit: bool) -> Result<Value, ProviderError> {
        let error_for = |code: u16, detail: &str| match submit {
            true => self.upstream.submit_error_for(code, detail),
            false => self.upstream.error_for(code, detail),
        };
        let request = request.header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"));
        let (status, body) = self.upstream.send(request).await?;
        let envelope = match serde_json::from_slice::<Envelope>(&body) {
            Ok(envelope) => envelope,
            Err(_) if status != 200 => return Err(error_for(status, &String::from_utf8_lossy(&body))),
            Err(error) => return Err(self.upstream.malformed("answer", error)),
        };
        let code = match envelope.code.unwrap_or(status) {
            200 if status != 200 => status,
            code => code,
        };
        if code != 200 {
            return Err(error_for(code, envelope.message.as_deref().unwrap_or("")));
        }
        Ok(envelope.data.unwrap_or(Value::Null))
    }

    /// `v3,<hex HMAC-SHA256>` of `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the secret's
    /// UTF-8 bytes after `whsec_` (not base64-decoded).
    fn verify(&self, secret: &SecretString, headers: &HeaderMap, body: &[u8]) -> Result<(), CallbackRefused> {
        let (id, timestamp, header) = signed_callback::webhook_headers(headers)?;
        let secret = secret.expose_secret();
        let key = secret.strip_prefix("whsec_").unwrap_or(secret).as_bytes();
        let valid = header.split_whitespace().filter_map(|entry| entry.strip_prefix("v3,")).any(|signature| {
            hex::decode(signature).is_ok_and(|signature| signing::verify_digest(key, &id, timestamp, body, &signature))
        });
        valid.then_some(()).ok_or(CallbackRefused("The callback signature is wrong."))
    }
}

#[derive(Deserialize)]
struct Envelope {
    code: Option<u16>,
    message: Option<String>,
    data: Option<Value>,
}

/// A prediction: `data` of submit and result, and a callback's whole body.
#[derive(Deserialize)]
struct Prediction {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    outputs: Option<Vec<String>>,
    #[serde(default)]
    error: Option<String>,
    /// The safety checker's verdict, one flag per output.
    #[serde(default)]
    has_nsfw_contents: Option<Vec<bool>>,
}

impl Prediction {
    fn job_state(self, upstream: &Upstream) -> JobState {
        match self.status.as_str() {
            "completed" => {
                let images = self.outputs.unwrap_or_default().into_iter().map(|url| OutputImage { url }).collect();
                let flags = self.has_nsfw_contents.unwrap_or_default();
                outcome::finished_unless_flagged(outcome::PROVIDER, images, &flags)
            }
            "failed" => {
                let reason = self.error.unwrap_or_default();
                tracing::info!(provider = %upstream.id, reason = %outcome::short(&reason), "job failed upstream");
                JobState::Failed(outcome::failed(&reason))
            }
            // created, processing, and whatever WaveSpeed adds later.
            _ => JobState::Running { check_after: None },
        }
    }
}

#[async_trait]
impl Provider for WaveSpeed {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        let path = format!("/api/v3/{}", request.upstream_model.trim_matches('/'));
        let mut http = self.upstream.http.post(self.upstream.url(&path)).json(&request.fields);
        if let Some(callback_url) = request.callback_url {
            http = http.query(&[("webhook", callback_url)]);
        }
        let data = self.call(http, true).await?;
        match data.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Submitted::Accepted { upstream_id: id.to_owned() }),
            _ => Err(self.upstream.malformed("submit answer", "no data.id")),
        }
    }

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError> {
        let path = format!("/api/v3/predictions/{}/result", urlencoding(upstream_id));
        let data = self.call(self.upstream.http.get(self.upstream.url(&path)), false).await?;
        let prediction: Prediction =
            serde_json::from_value(data).map_err(|error| self.upstream.malformed("result", error))?;
        Ok(prediction.job_state(&self.upstream))
    }

    /// The account's balance (`GET /api/v3/balance`, wavespeed.ai/docs-common-api/balance): key and
    /// balance (USD); WaveSpeed's documented calls do not say whether a model path exists.
    async fn check(&self, _model: &str) -> RouteCheck {
        const WHAT: &str = "GET /api/v3/balance";
        let request = self
            .upstream
            .http
            .get(self.upstream.url("/api/v3/balance"))
            .header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"));
        match self.upstream.send(request).await {
            Ok((status, body)) => {
                let envelope: Option<Envelope> = serde_json::from_slice(&body).ok();
                let code = envelope.as_ref().and_then(|e| e.code).unwrap_or(status);
                let code = if (200..300).contains(&status) { code } else { status };
                let balance = envelope.and_then(|e| e.data).and_then(|data| data["balance"].as_f64());
                RouteCheck { balance, ..RouteCheck::from_status(WHAT, code, false) }
            }
            Err(error) => RouteCheck::unreachable(WHAT, &error),
        }
    }

    fn calls_back(&self) -> bool {
        true
    }

    /// The body is the bare prediction object (no envelope), for completed and failed jobs.
    async fn read_callback(&self, headers: &HeaderMap, body: &[u8]) -> Result<Callback, CallbackRefused> {
        if let Some(secret) = &self.webhook_secret {
            self.verify(secret, headers, body)?;
        }
        let Ok(prediction) = serde_json::from_slice::<Prediction>(body) else {
            return Ok(Callback::default());
        };
        let upstream_id = prediction.id.clone();
        Ok(Callback { upstream_id, state: Some(prediction.job_state(&self.upstream)) })
    }
}

/// A job id as one path segment.
fn urlencoding(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}
