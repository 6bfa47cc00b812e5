//! OpenAI-compatible image APIs (`kind = "openai"`): one synchronous `POST /v1/images/generations`
//! with `{model, prompt, n, size, quality}`; the task completes within the submit. `b64_json` results
//! are stored in the gateway's file store and served under `/files/…`; `url` results pass through.
//! Errors are `{"error": {message, type, code}}` with the HTTP status.

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::upstream::Upstream;
use super::{outcome, JobState, Provider, ProviderError, RouteCheck, SubmitRequest, Submitted};
use crate::files::FileStore;
use crate::tasks::{OutputImage, TaskErrorCode};

/// OpenAI's `error.code`s for an account that cannot pay (all under HTTP 429): retrying does not help.
/// Source: learn.microsoft.com/…/dev-proxy/concepts/openai-insufficient-quota, quoting OpenAI's error
/// codes guide; `insufficient_quota` from OpenAI's own answers (github.com/mattvr/ShellGPT/issues/23).
const BILLING_CODES: [&str; 5] = [
    "insufficient_quota",
    "credit_balance_exhausted",
    "organization_spend_limit_exceeded",
    "project_spend_limit_exceeded",
    "organization_usage_limit_exceeded",
];

pub struct OpenAi {
    upstream: Upstream,
    files: FileStore,
}

impl OpenAi {
    pub fn new(upstream: Upstream, files: FileStore) -> OpenAi {
        OpenAi { upstream, files }
    }

    /// An error answer: content-policy refusals end the task as `content_policy`, the rest map as usual.
    fn error(&self, status: u16, body: &[u8]) -> ProviderError {
        let error = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error").cloned());
        let Some(error) = error else {
            return self.upstream.error_for(status, &String::from_utf8_lossy(body));
        };
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
        let code = error.get("code").and_then(Value::as_str).unwrap_or_default();
        let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
        // Billing states of our account share 429 with rate limits: `insufficient_quota` (the type,
        // and the code of older answers) and the codes that say which limit ran out.
        if BILLING_CODES.contains(&code) || kind == "insufficient_quota" {
            return self.upstream.unavailable(status, &format!("{code}: {message}"));
        }
        if code == "model_not_found" || status == 404 {
            return self.upstream.model_not_found(&format!("{code}: {message}"));
        }
        if status == 400
            && (code.contains("content_policy") || code.contains("moderation") || outcome::is_content_policy(message))
        {
            return ProviderError::permanent(
                TaskErrorCode::ContentPolicy,
                format!("The provider's content filter refused the request: {}", outcome::short(message)),
            );
        }
        self.upstream.error_for(status, message)
    }

    /// Stores a `b64_json` image and returns its `/files/…` URL.
    async fn store(&self, encoded: &str) -> Result<String, ProviderError> {
        let bytes = BASE64.decode(encoded.trim()).map_err(|error| self.upstream.malformed("b64_json", error))?;
        let extension = match bytes.as_slice() {
            [0xFF, 0xD8, ..] => "jpg",
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "webp",
            _ => "png",
        };
        let name = FileStore::new_name(extension);
        self.files.save(&name, &bytes).await.map_err(|error| {
            tracing::error!(provider = %self.upstream.id, error = %error, "cannot store a result image");
            ProviderError::local("The result could not be stored.")
        })?;
        Ok(self.files.url(&name))
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Image>,
}

#[derive(Deserialize)]
struct Image {
    #[serde(default)]
    b64_json: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

#[async_trait]
impl Provider for OpenAi {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        if !request.input.image_urls.is_empty() {
            return Err(ProviderError::permanent(
                TaskErrorCode::UpstreamRejected,
                "The provider rejected the request: this route does not take input images.",
            ));
        }
        // The route's mapping gives size, quality and any other field; n is always 1.
        let mut body = request.fields;
        body.insert("model".into(), json!(request.upstream_model));
        body.insert("n".into(), json!(1));
        let http = self
            .upstream
            .http
            .post(self.upstream.url("/v1/images/generations"))
            .header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"))
            .json(&body);
        let (status, answer) = self.upstream.send(http).await?;
        if !(200..300).contains(&status) {
            return Err(self.error(status, &answer));
        }
        let answer: Answer =
            serde_json::from_slice(&answer).map_err(|error| self.upstream.malformed("generations answer", error))?;
        let mut images = Vec::new();
        for image in answer.data {
            match (image.b64_json, image.url) {
                (Some(encoded), _) if !encoded.is_empty() => {
                    images.push(OutputImage { url: self.store(&encoded).await? })
                }
                (_, Some(url)) if !url.is_empty() => images.push(OutputImage { url }),
                _ => {}
            }
        }
        let images = outcome::require_images(outcome::PROVIDER, images)
            .map_err(|error| ProviderError::permanent(error.code, error.message))?;
        Ok(Submitted::Completed { images })
    }

    /// The model itself (`GET /v1/models/{id}`, OpenAI's models.retrieve): key and model.
    async fn check(&self, model: &str) -> RouteCheck {
        let what = format!("GET /v1/models/{model}");
        let segment: String = form_urlencoded::byte_serialize(model.as_bytes()).collect();
        let request = self
            .upstream
            .http
            .get(self.upstream.url(&format!("/v1/models/{segment}")))
            .header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"));
        match self.upstream.send(request).await {
            Ok((status, _)) => RouteCheck::from_status(&what, status, true),
            Err(error) => RouteCheck::unreachable(&what, &error),
        }
    }

    /// Never called: every job completes within its submit.
    async fn poll(&self, _upstream_id: &str) -> Result<JobState, ProviderError> {
        Err(ProviderError::permanent(TaskErrorCode::UpstreamFailed, super::LOST))
    }
}
