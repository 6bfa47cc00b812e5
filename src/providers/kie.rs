//! KIE.ai's jobs API (`kind = "kie"`): `POST /api/v1/jobs/createTask` with `{model, callBackUrl,
//! input}`, then `GET /api/v1/jobs/recordInfo?taskId=` until the state is `success` or `fail`.
//!
//! Every answer is an envelope `{code, msg|message, data}` whose `code` is the real status, even under
//! HTTP 200. `resultJson` is a JSON document inside a string: decoded twice.

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::signed_callback::{self, header};
use super::upstream::Upstream;
use super::{
    outcome, Callback, CallbackRefused, JobState, Provider, ProviderError, RouteCheck, SubmitRequest, Submitted,
};
use crate::tasks::{OutputImage, TaskErrorCode};

pub struct Kie {
    upstream: Upstream,
    /// KIE's `webhookHmacKey`: when configured, callbacks must carry its signature.
    hmac_key: Option<SecretString>,
}

impl Kie {
    pub fn new(upstream: Upstream, hmac_key: Option<SecretString>) -> Kie {
        Kie { upstream, hmac_key }
    }

    /// `X-Webhook-Signature` = base64(HMAC-SHA256(key, taskId + "." + X-Webhook-Timestamp)). KIE
    /// does not sign the body, which is one reason a callback is confirmed with recordInfo.
    fn verify(&self, key: &SecretString, headers: &HeaderMap, task_id: &str) -> Result<(), CallbackRefused> {
        let (Some(timestamp), Some(signature)) =
            (header(headers, "x-webhook-timestamp"), header(headers, "x-webhook-signature"))
        else {
            return Err(CallbackRefused("The callback is not signed."));
        };
        signed_callback::timestamp(timestamp, chrono::Utc::now().timestamp())?;
        let signature =
            BASE64.decode(signature).map_err(|_| CallbackRefused("The callback signature is not base64."))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
            .map_err(|_| CallbackRefused("The callback key is unusable."))?;
        mac.update(format!("{task_id}.{timestamp}").as_bytes());
        mac.verify_slice(&signature).map_err(|_| CallbackRefused("The callback signature is wrong."))
    }

    /// Sends one request: `Ok(data)` when the envelope's `code` is 200, else `Err((code, msg))`; a
    /// non-JSON error page gives its HTTP status.
    async fn open(&self, request: reqwest::RequestBuilder) -> Result<Result<Value, (u16, String)>, ProviderError> {
        let request = request.header(reqwest::header::AUTHORIZATION, self.upstream.authorization("Bearer"));
        let (status, body) = self.upstream.send(request).await?;
        let envelope = match serde_json::from_slice::<Envelope>(&body) {
            Ok(envelope) => envelope,
            Err(_) if status != 200 => return Ok(Err((status, String::from_utf8_lossy(&body).into_owned()))),
            Err(error) => return Err(self.upstream.malformed("answer", error)),
        };
        let code = envelope.code.unwrap_or(status);
        let code = if code == 200 && status != 200 { status } else { code };
        if code != 200 {
            return Ok(Err((code, envelope.msg.or(envelope.message).unwrap_or_default())));
        }
        Ok(Ok(envelope.data.unwrap_or(Value::Null)))
    }

    /// KIE's own codes first (455 maintenance, 433 sub-key limit, 501 generation failed, 505 feature
    /// disabled), then the usual HTTP meanings.
    fn error_for(&self, code: u16, detail: &str) -> ProviderError {
        match code {
            455 => self.upstream.error_for(503, detail),
            433 | 505 => self.upstream.unavailable(code, detail),
            501 => ProviderError::permanent(TaskErrorCode::UpstreamFailed, outcome::generation_failed(Some(detail))),
            _ => self.upstream.error_for(code, detail),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    code: Option<u16>,
    msg: Option<String>,
    message: Option<String>,
    data: Option<Value>,
}

/// `data` of recordInfo, and of a callback.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    state: String,
    #[serde(default)]
    result_json: Option<String>,
    #[serde(default)]
    fail_code: Option<Value>,
    #[serde(default)]
    fail_msg: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResultJson {
    #[serde(default)]
    result_urls: Vec<String>,
}

impl Record {
    fn job_state(self, upstream: &Upstream) -> Result<JobState, ProviderError> {
        match self.state.as_str() {
            "success" => {
                let text = self.result_json.unwrap_or_default();
                let result: ResultJson =
                    serde_json::from_str(&text).map_err(|error| upstream.malformed("resultJson", error))?;
                let images = result.result_urls.into_iter().map(|url| OutputImage { url }).collect();
                Ok(outcome::finished(outcome::PROVIDER, images))
            }
            "fail" => {
                let reason = self.fail_msg.unwrap_or_default();
                tracing::info!(provider = %upstream.id, fail_code = ?self.fail_code, reason = %outcome::short(&reason), "job failed upstream");
                Ok(JobState::Failed(outcome::failed(&reason)))
            }
            // waiting, queuing, generating, and whatever KIE adds later.
            _ => Ok(JobState::Running { check_after: None }),
        }
    }
}

#[async_trait]
impl Provider for Kie {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        let mut body = json!({"model": request.upstream_model, "input": request.fields});
        if let Some(callback_url) = request.callback_url {
            body["callBackUrl"] = json!(callback_url);
        }
        let post = self.upstream.http.post(self.upstream.url("/api/v1/jobs/createTask")).json(&body);
        // A 404 here is the model (the route's `upstream_model`) KIE does not have.
        let data = self.open(post).await?.map_err(|(code, message)| match code {
            404 => self.upstream.model_not_found(&message),
            _ => self.error_for(code, &message),
        })?;
        // `taskId`; KIE's own verification sample spells it `task_id`.
        match data.get("taskId").or_else(|| data.get("task_id")).and_then(Value::as_str) {
            Some(upstream_id) if !upstream_id.is_empty() => {
                Ok(Submitted::Accepted { upstream_id: upstream_id.to_owned() })
            }
            _ => Err(self.upstream.malformed("createTask answer", "no data.taskId")),
        }
    }

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError> {
        let request =
            self.upstream.http.get(self.upstream.url("/api/v1/jobs/recordInfo")).query(&[("taskId", upstream_id)]);
        let data = match self.open(request).await? {
            Ok(data) => data,
            // Right after createTask KIE has no record yet: `{"code":422,"msg":"recordInfo is null"}`.
            Err((422, message)) if message.contains("recordInfo is null") => return Ok(JobState::Unknown),
            Err((code, message)) => return Err(self.error_for(code, &message)),
        };
        let record: Record =
            serde_json::from_value(data).map_err(|error| self.upstream.malformed("recordInfo", error))?;
        record.job_state(&self.upstream)
    }

    /// The account's credit balance (`GET /api/v1/chat/credit`, docs.kie.ai/common-api/get-account-credits):
    /// key and balance; KIE has no call that says whether a model exists.
    async fn check(&self, _model: &str) -> RouteCheck {
        const WHAT: &str = "GET /api/v1/chat/credit";
        match self.open(self.upstream.http.get(self.upstream.url("/api/v1/chat/credit"))).await {
            Ok(Ok(data)) => RouteCheck { balance: data.as_f64(), ..RouteCheck::from_status(WHAT, 200, false) },
            Ok(Err((code, _))) => RouteCheck::from_status(WHAT, code, false),
            Err(error) => RouteCheck::unreachable(WHAT, &error),
        }
    }

    fn calls_back(&self) -> bool {
        true
    }

    /// The body reuses recordInfo's shape: `{code, msg, data: {taskId | task_id, state, resultJson, …}}`.
    async fn read_callback(&self, headers: &HeaderMap, body: &[u8]) -> Result<Callback, CallbackRefused> {
        let data = serde_json::from_slice::<Envelope>(body).ok().and_then(|envelope| envelope.data).unwrap_or_default();
        let upstream_id = data.get("taskId").or_else(|| data.get("task_id")).and_then(Value::as_str).map(str::to_owned);
        if let Some(key) = &self.hmac_key {
            self.verify(key, headers, upstream_id.as_deref().unwrap_or_default())?;
        }
        let state =
            serde_json::from_value::<Record>(data).ok().and_then(|record| record.job_state(&self.upstream).ok());
        Ok(Callback { upstream_id, state })
    }
}
