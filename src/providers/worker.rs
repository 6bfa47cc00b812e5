//! A backend node (`kind = "worker"`): another aio-gateway, or anything speaking SPEC §2.1/§2.2, that
//! holds the provider accounts. The edge forwards the validated request to `POST
//! /api/v1/images/generations` with the node's API key (an ordinary key of the edge's account on the
//! node) and follows the node's task at `GET /api/v1/tasks/{id}`; the node's status maps one to one.
//!
//! - The `Idempotency-Key` is derived from the edge task id and the callback URL is the same on every
//!   submit of a task ([`Provider::callback_token`]), so a resubmit after a crash gets the node's first
//!   task back instead of starting a second job (the node hashes the whole request, callback URL
//!   included, under the key).
//! - The node calls back with its outgoing webhook (SPEC §4): the task object, signed with Standard
//!   Webhooks by the node account's webhook secret. Only with that secret configured does the edge
//!   give the node a callback URL; without it the edge polls.
//! - Credits settle at each hop: the node charges the edge's account, the edge its client. The node
//!   refusing the edge (401, 402 out of credits, 403) is an operator problem: the client sees the
//!   neutral "unavailable" failure; the log and `aio_upstream_account_problems_total` say why.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Sha256;

use super::signed_callback;
use super::upstream::Upstream;
use super::{outcome, Callback, CallbackRefused, JobState, Provider, ProviderError, SubmitRequest, Submitted};
use crate::tasks::{OutputImage, TaskError, TaskErrorCode};
use crate::webhooks::signing;

pub struct Worker {
    upstream: Upstream,
    /// The `whsec_…` webhook secret of the edge's account on the node: it verifies the node's
    /// callbacks and derives the per-task callback tokens. `None`: no callbacks, polling only.
    webhook_secret: Option<SecretString>,
}

impl Worker {
    pub fn new(upstream: Upstream, webhook_secret: Option<SecretString>) -> Worker {
        Worker { upstream, webhook_secret }
    }

    /// Sends one request: the JSON of a 2xx answer, else the node's error mapped.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let request = request.header(AUTHORIZATION, self.upstream.authorization("Bearer"));
        let (status, body) = self.upstream.send(request).await?;
        if !(200..300).contains(&status) {
            return Err(self.node_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|error| self.upstream.malformed("answer", error))
    }

    /// The node's error envelope (SPEC §3) as a [`ProviderError`].
    fn node_error(&self, status: u16, body: &[u8]) -> ProviderError {
        let envelope: Option<NodeErrorEnvelope> = serde_json::from_slice(body).ok();
        let (code, message) = match envelope {
            Some(NodeErrorEnvelope { error }) => (error.code, error.message),
            None => (String::new(), String::from_utf8_lossy(body).into_owned()),
        };
        match (status, code.as_str()) {
            // The node refuses the edge's account (key, credits, permissions): the operator's problem.
            (401..=403, _) => self.upstream.unavailable(status, &format!("{code}: {message}")),
            // The node's provider refused the task outright: as final as our own upstream_rejected.
            // (A 502 without the envelope is a proxy in front of the node: retried.)
            (502, "upstream_error") => ProviderError::permanent(
                TaskErrorCode::UpstreamRejected,
                without_node_task_id(&self.upstream.redact(&message)),
            ),
            _ => self.upstream.error_for(status, &message),
        }
    }
}

/// The node's own `" Task {id} failed and nothing was charged."` tail: the client gets the edge's.
fn without_node_task_id(message: &str) -> String {
    match message.find(" Task task_") {
        Some(cut) => message[..cut].to_owned(),
        None => outcome::short(message),
    }
}

#[derive(Deserialize)]
struct NodeErrorEnvelope {
    error: NodeErrorBody,
}

#[derive(Deserialize)]
struct NodeErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The node's task object (SPEC §2.2): the submit and poll answers and the webhook body.
#[derive(Deserialize)]
struct NodeTask {
    task_id: String,
    status: String,
    #[serde(default)]
    output: Option<NodeOutput>,
    #[serde(default)]
    error: Option<NodeErrorBody>,
}

#[derive(Deserialize)]
struct NodeOutput {
    #[serde(default)]
    images: Vec<OutputImage>,
}

impl NodeTask {
    fn job_state(self) -> JobState {
        match self.status.as_str() {
            "succeeded" => outcome::finished(outcome::BACKEND_NODE, self.output.map(|o| o.images).unwrap_or_default()),
            "failed" => {
                let error = self.error.unwrap_or(NodeErrorBody { code: String::new(), message: String::new() });
                let code = match error.code.as_str() {
                    "upstream_rejected" => TaskErrorCode::UpstreamRejected,
                    "timeout" => TaskErrorCode::Timeout,
                    "content_policy" => TaskErrorCode::ContentPolicy,
                    _ => TaskErrorCode::UpstreamFailed,
                };
                // The node's message is already client-safe: it follows the same contract.
                let message = if error.message.trim().is_empty() {
                    outcome::generation_failed(None)
                } else {
                    outcome::short(&error.message)
                };
                JobState::Failed(TaskError { code, message })
            }
            // pending, running, and whatever a newer node adds.
            _ => JobState::Running { check_after: None },
        }
    }
}

/// A task id as one path segment.
fn segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// The `Idempotency-Key` of every submit of one edge task.
pub fn idempotency_key(task_id: &str) -> String {
    format!("aio-edge-{task_id}")
}

#[async_trait]
impl Provider for Worker {
    async fn submit(&self, request: SubmitRequest<'_>) -> Result<Submitted, ProviderError> {
        // A node takes our own fields (SPEC §2.1), which is what a route without a mapping sends.
        let mut body = Map::from_iter([("model".to_owned(), json!(request.upstream_model))]);
        body.extend(request.fields);
        if let Some(callback_url) = request.callback_url {
            body.insert("callback_url".into(), json!(callback_url));
        }
        let post = self
            .upstream
            .http
            .post(self.upstream.url("/api/v1/images/generations"))
            .header("Idempotency-Key", idempotency_key(request.task_id))
            .json(&body);
        let answer = self.call(post).await?;
        // Whatever its status (a replay may already be done), the task is followed by polling.
        match answer.get("task_id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => Ok(Submitted::Accepted { upstream_id: id.to_owned() }),
            _ => Err(self.upstream.malformed("create answer", "no task_id")),
        }
    }

    async fn poll(&self, upstream_id: &str) -> Result<JobState, ProviderError> {
        let url = self.upstream.url(&format!("/api/v1/tasks/{}", segment(upstream_id)));
        let answer = self.call(self.upstream.http.get(url)).await?;
        let task: NodeTask = serde_json::from_value(answer).map_err(|error| self.upstream.malformed("task", error))?;
        Ok(task.job_state())
    }

    /// The node's own cancel (`POST /api/v1/tasks/{id}/cancel`): it releases the edge's credits on the
    /// node. A node task that already ended (409) has nothing left to cancel.
    async fn cancel(&self, upstream_id: &str) -> Result<(), ProviderError> {
        let url = self.upstream.url(&format!("/api/v1/tasks/{}/cancel", segment(upstream_id)));
        let request = self.upstream.http.post(url).header(AUTHORIZATION, self.upstream.authorization("Bearer"));
        let (status, body) = self.upstream.send(request).await?;
        match status {
            200..=299 | 409 => Ok(()),
            _ => Err(self.node_error(status, &body)),
        }
    }

    fn calls_back(&self) -> bool {
        self.webhook_secret.is_some()
    }

    fn callback_token(&self, task_id: &str) -> Option<String> {
        // Unguessable without the secret, and the same for every submit of the task.
        let secret = self.webhook_secret.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).ok()?;
        mac.update(b"aio-gateway worker callback token\0");
        mac.update(task_id.as_bytes());
        Some(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    async fn read_callback(&self, headers: &HeaderMap, body: &[u8]) -> Result<Callback, CallbackRefused> {
        let Some(secret) = &self.webhook_secret else {
            return Err(CallbackRefused("Callbacks from this node are not configured."));
        };
        let (id, timestamp, header) = signed_callback::webhook_headers(headers)?;
        if !signing::verify(secret.expose_secret(), &id, timestamp, body, &header) {
            return Err(CallbackRefused("The callback signature is wrong."));
        }
        let Ok(task) = serde_json::from_slice::<NodeTask>(body) else {
            return Ok(Callback::default());
        };
        let upstream_id = Some(task.task_id.clone());
        Ok(Callback { upstream_id, state: Some(task.job_state()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_task(value: Value) -> JobState {
        serde_json::from_value::<NodeTask>(value).expect("a task object").job_state()
    }

    #[test]
    fn node_statuses_map_one_to_one() {
        let running = node_task(json!({"task_id": "t", "status": "running", "output": null, "error": null}));
        assert!(matches!(running, JobState::Running { .. }));
        assert!(matches!(node_task(json!({"task_id": "t", "status": "pending"})), JobState::Running { .. }));

        let done = node_task(
            json!({"task_id": "t", "status": "succeeded", "output": {"images": [{"url": "https://n/f.png"}]}}),
        );
        let JobState::Succeeded { images } = done else { panic!("succeeded") };
        assert_eq!(images[0].url, "https://n/f.png");

        for (code, expected) in [
            ("upstream_failed", TaskErrorCode::UpstreamFailed),
            ("upstream_rejected", TaskErrorCode::UpstreamRejected),
            ("timeout", TaskErrorCode::Timeout),
            ("content_policy", TaskErrorCode::ContentPolicy),
        ] {
            let failed =
                node_task(json!({"task_id": "t", "status": "failed", "error": {"code": code, "message": "why"}}));
            let JobState::Failed(error) = failed else { panic!("failed") };
            assert_eq!((error.code, error.message.as_str()), (expected, "why"));
        }
        let empty = node_task(json!({"task_id": "t", "status": "succeeded", "output": {"images": []}}));
        assert!(matches!(empty, JobState::Failed(TaskError { code: TaskErrorCode::UpstreamFailed, .. })));
    }

    #[test]
    fn the_node_task_id_tail_is_cut() {
        let message = "The provider rejected the request: no. Task task_01ABC failed and nothing was charged.";
        assert_eq!(without_node_task_id(message), "The provider rejected the request: no.");
        assert_eq!(without_node_task_id("Refused."), "Refused.");
    }
}
