//! A fake KIE.ai jobs API: `POST /api/v1/jobs/createTask`, `GET /api/v1/jobs/recordInfo?taskId=`,
//! envelopes `{code, msg|message, data}`, `resultJson` as a string, and result images under
//! `/results/`. Each job runs through `waiting → queuing → generating` for `polls` polls, then ends
//! as `outcome` says. Scripts (endpoints `create`, `poll`) answer first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::{png_bytes, Recorder, Server, Step};

pub const KEY: &str = "kie-test-key-5ecr3t";

/// How a job ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    Success,
    Fail { code: &'static str, message: &'static str },
}

struct Job {
    polls_left: usize,
    outcome: Outcome,
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    polls: Mutex<usize>,
    outcome: Mutex<Outcome>,
    jobs: Mutex<HashMap<String, Job>>,
}

pub struct FakeKie {
    state: Arc<Fake>,
    _server: Server,
}

impl FakeKie {
    pub async fn start() -> FakeKie {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the fake KIE");
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr().expect("address").port());
        let state = Arc::new(Fake {
            base_url,
            recorder: Recorder::default(),
            polls: Mutex::new(2),
            outcome: Mutex::new(Outcome::Success),
            jobs: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route("/api/v1/jobs/createTask", post(create))
            .route("/api/v1/jobs/recordInfo", get(record_info))
            .route("/results/{name}", get(result_image))
            .with_state(Arc::clone(&state));
        let server = Server::serve(listener, router);
        FakeKie { state, _server: server }
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// New jobs stay running for this many polls.
    pub fn polls(&self, polls: usize) -> &Self {
        *self.state.polls.lock().expect("polls") = polls;
        self
    }

    /// How new jobs end.
    pub fn outcome(&self, outcome: Outcome) -> &Self {
        *self.state.outcome.lock().expect("outcome") = outcome;
        self
    }

    /// Answers for the next createTask (`create`) or recordInfo (`poll`) requests.
    pub fn script(&self, endpoint: &'static str, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.state.recorder.script(endpoint, steps);
        self
    }

    pub fn requests(&self) -> Vec<super::Request> {
        self.state.recorder.requests()
    }

    pub fn creates(&self) -> Vec<super::Request> {
        self.state.recorder.requests_to("/api/v1/jobs/createTask")
    }

    pub fn polls_received(&self) -> Vec<super::Request> {
        self.state.recorder.requests_to("/api/v1/jobs/recordInfo")
    }

    /// The URL of the image every successful job returns.
    pub fn result_url(&self, task_id: &str) -> String {
        format!("{}/results/{task_id}.png", self.state.base_url)
    }
}

/// KIE's error envelope under HTTP 200, the way KIE answers most errors.
pub fn error_under_200(code: u16, message: &str) -> Step {
    Step::Json(200, json!({"code": code, "msg": message, "data": null}))
}

/// KIE's error envelope with the HTTP status equal to its code (the docs leave open which one KIE does).
pub fn error_with_status(code: u16, message: &str) -> Step {
    Step::Json(code, json!({"code": code, "msg": message, "data": null}))
}

async fn create(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    fake.recorder.record(method, &uri, headers.clone(), body.clone());
    if let Some(step) = fake.recorder.next("create").await {
        return step.into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return error_under_200(401, "You do not have access permissions").into_response();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    if request["model"].as_str().is_none() || request["input"]["prompt"].as_str().is_none() {
        return error_under_200(422, "model and input.prompt are required").into_response();
    }
    let mut jobs = fake.jobs.lock().expect("jobs");
    let task_id = format!("task_kie_{}", jobs.len() + 1);
    let job =
        Job { polls_left: *fake.polls.lock().expect("polls"), outcome: fake.outcome.lock().expect("outcome").clone() };
    jobs.insert(task_id.clone(), job);
    axum::Json(json!({"code": 200, "msg": "success", "data": {"taskId": task_id}})).into_response()
}

async fn record_info(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.recorder.record(method, &uri, headers.clone(), body);
    if let Some(step) = fake.recorder.next("poll").await {
        return step.into_response();
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
        return error_under_200(401, "You do not have access permissions").into_response();
    }
    let task_id = query.get("taskId").cloned().unwrap_or_default();
    let record = {
        let mut jobs = fake.jobs.lock().expect("jobs");
        let Some(job) = jobs.get_mut(&task_id) else {
            return error_under_200(404, "task not found").into_response();
        };
        if job.polls_left > 0 {
            job.polls_left -= 1;
            let state = ["generating", "queuing", "waiting"][job.polls_left.min(2)];
            record(&task_id, state, None, None)
        } else {
            match &job.outcome {
                Outcome::Success => {
                    let result = json!({"resultUrls": [format!("{}/results/{task_id}.png", fake.base_url)]});
                    record(&task_id, "success", Some(result.to_string()), None)
                }
                Outcome::Fail { code, message } => record(&task_id, "fail", None, Some((code, message))),
            }
        }
    };
    // recordInfo says `message` where createTask says `msg`.
    axum::Json(json!({"code": 200, "message": "success", "data": record})).into_response()
}

/// The `data` of recordInfo (and of a callback).
pub fn record(task_id: &str, state: &str, result_json: Option<String>, failure: Option<(&str, &str)>) -> Value {
    json!({
        "taskId": task_id,
        "model": "seedream/4.5-text-to-image",
        "state": state,
        "param": json!({"model": "seedream/4.5-text-to-image", "input": {}}).to_string(),
        "resultJson": result_json.unwrap_or_default(),
        "failCode": failure.map(|f| f.0).unwrap_or_default(),
        "failMsg": failure.map(|f| f.1).unwrap_or_default(),
        "costTime": 1500,
        "createTime": 1698765400000u64,
        "updateTime": 1698765432000u64,
    })
}

async fn result_image() -> impl IntoResponse {
    ([("content-type", "image/png")], png_bytes(7))
}

impl FakeKie {
    /// Points the settings' `kie` provider at this fake, with its key and a 1 s timeout.
    pub fn configure(&self, settings: &mut aio_gateway::config::Settings) {
        let kie = settings.providers.get_mut("kie").expect("the test settings have a kie provider");
        kie.base_url = Some(self.base_url().to_owned());
        kie.api_key = Some(KEY.into());
        kie.timeout_secs = Some(1);
    }
}
