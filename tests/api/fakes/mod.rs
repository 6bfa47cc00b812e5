//! Fake upstream providers: each an axum app on 127.0.0.1:0 that speaks one provider's real protocol,
//! records every request, and answers from per-endpoint scripts (then its normal behaviour).

pub mod fal;
pub mod kie;
pub mod openai;
pub mod replicate;
pub mod stripe;
pub mod wavespeed;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aio_gateway::config::{ProviderKind, ProviderSettings, Settings};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{} body is not JSON ({e})", self.path))
    }

    /// The value of one query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// The value of one parameter of a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Whether the request's `Authorization` header is exactly `expected`.
pub fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected)
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// This status and JSON body.
    Json(u16, Value),
    /// This status and a body that is not JSON.
    Text(u16, &'static str),
    /// Wait this long (past the gateway's timeout), then answer as the fake normally would.
    Hang(Duration),
}

impl Step {
    pub fn into_response(self) -> Response {
        match self {
            Step::Json(status, body) => (status_code(status), axum::Json(body)).into_response(),
            Step::Text(status, body) => (status_code(status), body).into_response(),
            Step::Hang(_) => StatusCode::OK.into_response(),
        }
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).expect("a status code")
}

/// The recorded requests and the scripts, by endpoint name.
#[derive(Default)]
pub struct Recorder {
    requests: Mutex<Vec<Request>>,
    scripts: Mutex<HashMap<&'static str, VecDeque<Step>>>,
}

impl Recorder {
    pub fn record(&self, method: Method, uri: &Uri, headers: HeaderMap, body: Bytes) {
        let request = Request {
            method,
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            headers,
            body,
        };
        self.requests.lock().expect("requests").push(request);
    }

    pub fn script(&self, endpoint: &'static str, steps: impl IntoIterator<Item = Step>) {
        self.scripts.lock().expect("scripts").entry(endpoint).or_default().extend(steps);
    }

    /// The next scripted answer for `endpoint`, after waiting out any `Hang`s in front of it.
    pub async fn next(&self, endpoint: &'static str) -> Option<Step> {
        let step = self.scripts.lock().expect("scripts").get_mut(endpoint).and_then(VecDeque::pop_front);
        match step {
            Some(Step::Hang(delay)) => {
                tokio::time::sleep(delay).await;
                None
            }
            other => other,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }

    /// The requests to paths that start with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }
}

/// A running fake's server task, stopped on drop.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves `router` on a listener bound beforehand (so the router may know its own URL).
    pub fn serve(listener: tokio::net::TcpListener, router: Router) -> Server {
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Server { task }
    }
}

/// Binds 127.0.0.1:0 for the fake called `name`, builds its state from its base URL, and serves
/// `router` with that state; returns the state and the server (stopped on drop).
pub async fn start<S>(name: &str, router: Router<Arc<S>>, state: impl FnOnce(String) -> S) -> (Arc<S>, Server)
where
    S: Send + Sync + 'static,
{
    let listener =
        tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap_or_else(|e| panic!("bind the fake {name} ({e})"));
    let base_url = format!("http://127.0.0.1:{}", listener.local_addr().expect("address").port());
    let state = Arc::new(state(base_url));
    let server = Server::serve(listener, router.with_state(Arc::clone(&state)));
    (state, server)
}

/// How many polls a fake's new jobs stay running for, and how they end.
pub struct Plan<O> {
    polls: Mutex<usize>,
    outcome: Mutex<O>,
}

impl<O: Clone> Plan<O> {
    pub fn new(polls: usize, outcome: O) -> Plan<O> {
        Plan { polls: Mutex::new(polls), outcome: Mutex::new(outcome) }
    }

    pub fn set_polls(&self, polls: usize) {
        *self.polls.lock().expect("polls") = polls;
    }

    pub fn set_outcome(&self, outcome: O) {
        *self.outcome.lock().expect("outcome") = outcome;
    }

    /// The polls a new job runs for.
    pub fn polls(&self) -> usize {
        *self.polls.lock().expect("polls")
    }

    /// How a new job ends.
    pub fn outcome(&self) -> O {
        self.outcome.lock().expect("outcome").clone()
    }
}

/// POSTs a JSON callback `body` to `url` with these extra headers; returns the gateway's status.
pub async fn post_callback(url: String, body: String, headers: Vec<(&'static str, String)>) -> u16 {
    let mut request = reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().await.expect("POST the callback").status().as_u16()
}

/// Standard Webhooks' headers (`webhook-id` `msg_{id}`, `webhook-timestamp` now, `webhook-signature`)
/// for `body`, with `sign(webhook_id, timestamp, body)` as the signature.
pub fn webhook_headers(id: &str, body: &str, sign: impl Fn(&str, i64, &[u8]) -> String) -> Vec<(&'static str, String)> {
    let (webhook_id, timestamp) = (format!("msg_{id}"), chrono::Utc::now().timestamp());
    let signature = sign(&webhook_id, timestamp, body.as_bytes());
    vec![("webhook-id", webhook_id), ("webhook-timestamp", timestamp.to_string()), ("webhook-signature", signature)]
}

/// A `kind` provider labelled `label`, pointed at a fake at `base_url` with `key`, a 1 s timeout,
/// and callbacks off (polling).
pub fn polling_provider(kind: ProviderKind, label: &str, base_url: &str, key: &str) -> ProviderSettings {
    ProviderSettings {
        label: Some(label.into()),
        base_url: Some(base_url.to_owned()),
        api_key: Some(key.into()),
        timeout: std::time::Duration::from_secs(1),
        callbacks: false,
        ..ProviderSettings::new(kind)
    }
}

/// Turns callbacks on for the settings' `name` provider, with polling slowed to once a minute (so
/// only a callback can end a task within a test) and this webhook secret.
pub fn enable_callbacks(settings: &mut Settings, name: &str, secret: Option<&str>) {
    let provider = settings.providers.get_mut(name).unwrap_or_else(|| panic!("the settings have a {name} provider"));
    provider.callbacks = true;
    provider.callback_poll = std::time::Duration::from_secs(60);
    provider.webhook_hmac_key = secret.map(Into::into);
}

/// A small valid PNG, as a provider's result image.
pub fn png_bytes(seed: u8) -> Vec<u8> {
    // 1×1 RGBA, with `seed` as the red channel, through the `png` crate the gateway also uses.
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(&[seed, 10, 20, 255]).expect("png data");
    }
    out
}
