//! A fake KIE.ai jobs API: `POST /api/v1/jobs/createTask`, `GET /api/v1/jobs/recordInfo?taskId=`,
//! envelopes `{code, msg|message, data}`, `resultJson` as a string, and result images under
//! `/results/`. Each job runs through `waiting → queuing → generating` for `polls` polls, then ends
//! as `outcome` says. Scripts (endpoints `create`, `poll`) answer first.
//!
//! Sources of its answers: KIE's OpenAPI for createTask and recordInfo (docs.kie.ai/market/common/
//! get-task-detail; copies in github.com/henjicc/Henji-AI docs/api/KIE/Image Models/), including the
//! `{"code":422,"msg":"recordInfo is null","data":null}` of a task created a moment ago, and the
//! envelope codes (docs.kie.ai/common-api: 401, 402, 404, 422, 429, 455, 500, 501, 505).
//! unverified: KIE's exact answer to an unknown model is not documented; the fake answers the
//! envelope's 404 ("The requested resource or endpoint does not exist").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::{authorized, png_bytes, Plan, Recorder, Server, Step};

pub const KEY: &str = "kie-test-key-5ecr3t";

/// The jobs-API models this fake serves: KIE's market image models the catalogs use, as the market
/// docs list them (docs.kie.ai/market; henjicc/Henji-AI docs/api/KIE/Image Models/Seedream/004–007).
pub const MODELS: [&str; 4] = [
    "seedream/4.5-text-to-image",
    "seedream/4.5-edit",
    "bytedance/seedream-v4-text-to-image",
    "bytedance/seedream-v4-edit",
];

/// recordInfo for a task KIE created a moment ago and does not show yet (KIE's OpenAPI example).
pub fn record_null() -> Step {
    Step::Json(422, json!({"code": 422, "msg": "recordInfo is null", "data": null}))
}

/// How a job ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    Success,
    Fail { code: &'static str, message: &'static str },
}

struct Job {
    polls_left: usize,
    outcome: Outcome,
    callback_url: Option<String>,
}

/// How the fake signs the callbacks it sends.
#[derive(Debug, Clone, Copy)]
pub enum Signing {
    /// No `X-Webhook-*` headers.
    Unsigned,
    /// Signed with this key, as KIE does.
    With(&'static str),
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    plan: Plan<Outcome>,
    jobs: Mutex<HashMap<String, Job>>,
    /// Finish each new job at once and call back before answering createTask, signed like this.
    call_back_first: Mutex<Option<Signing>>,
    /// KIE's submit window (20 per 10 s): beyond `max` createTask requests in any `window`, the
    /// envelope's 429 (docs.kie.ai/common-api). `None`: no window.
    window: Mutex<Option<(usize, Duration)>>,
    /// When each createTask the window admitted arrived, and how many it refused.
    submits: Mutex<(Vec<Instant>, usize)>,
}

pub struct FakeKie {
    state: Arc<Fake>,
    _server: Server,
}

impl FakeKie {
    pub async fn start() -> FakeKie {
        let router = Router::new()
            .route("/api/v1/jobs/createTask", post(create))
            .route("/api/v1/jobs/recordInfo", get(record_info))
            .route("/api/v1/chat/credit", get(credit))
            .route("/results/{name}", get(result_image));
        let (state, server) = super::start("KIE", router, |base_url| Fake {
            base_url,
            recorder: Recorder::default(),
            plan: Plan::new(2, Outcome::Success),
            jobs: Mutex::new(HashMap::new()),
            call_back_first: Mutex::new(None),
            window: Mutex::new(None),
            submits: Mutex::new((Vec::new(), 0)),
        })
        .await;
        FakeKie { state, _server: server }
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// New jobs stay running for this many polls.
    pub fn polls(&self, polls: usize) -> &Self {
        self.state.plan.set_polls(polls);
        self
    }

    /// How new jobs end.
    pub fn outcome(&self, outcome: Outcome) -> &Self {
        self.state.plan.set_outcome(outcome);
        self
    }

    /// Answers for the next createTask (`create`), recordInfo (`poll`) or result image (`result`)
    /// requests.
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

    /// Refuses createTask with KIE's 429 beyond `max` in any `window`, as KIE does.
    pub fn submit_window(&self, max: usize, window: Duration) -> &Self {
        *self.state.window.lock().expect("window") = Some((max, window));
        self
    }

    /// When each admitted createTask arrived, in order, and how many the window refused.
    pub fn submit_times(&self) -> (Vec<Instant>, usize) {
        self.state.submits.lock().expect("submits").clone()
    }

    /// The downloads of result images.
    pub fn downloads(&self) -> Vec<super::Request> {
        self.state.recorder.requests_to("/results/")
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
    if !authorized(&headers, &format!("Bearer {KEY}")) {
        return error_under_200(401, "You do not have access permissions").into_response();
    }
    if let Some((max, window)) = *fake.window.lock().expect("window") {
        let now = Instant::now();
        let mut submits = fake.submits.lock().expect("submits");
        if submits.0.iter().filter(|at| now.duration_since(**at) < window).count() >= max {
            submits.1 += 1;
            return error_under_200(429, "Rate limited: too many requests").into_response();
        }
        submits.0.push(now);
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    if request["model"].as_str().is_none() || request["input"]["prompt"].as_str().is_none() {
        return error_under_200(422, "model and input.prompt are required").into_response();
    }
    if !request["model"].as_str().is_some_and(|model| MODELS.contains(&model)) {
        return error_under_200(404, "The requested resource or endpoint does not exist").into_response();
    }
    let first = *fake.call_back_first.lock().expect("call_back_first");
    let task_id = {
        let mut jobs = fake.jobs.lock().expect("jobs");
        let task_id = format!("task_kie_{}", jobs.len() + 1);
        let job = Job {
            polls_left: if first.is_some() { 0 } else { fake.plan.polls() },
            outcome: fake.plan.outcome(),
            callback_url: request["callBackUrl"].as_str().map(str::to_owned),
        };
        jobs.insert(task_id.clone(), job);
        task_id
    };
    if let Some(signing) = first {
        let status = fake.call_back(&task_id, signing).await;
        assert_eq!(status, 200, "the gateway takes a callback that comes before the createTask answer");
    }
    axum::Json(json!({"code": 200, "msg": "success", "data": {"taskId": task_id}})).into_response()
}

/// `GET /api/v1/chat/credit` (docs.kie.ai/common-api/get-account-credits): the documented example.
async fn credit(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    fake.recorder.record(method, &uri, headers.clone(), body);
    if !authorized(&headers, &format!("Bearer {KEY}")) {
        return error_under_200(401, "You do not have access permissions").into_response();
    }
    axum::Json(json!({"code": 200, "msg": "success", "data": 100})).into_response()
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
    if !authorized(&headers, &format!("Bearer {KEY}")) {
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

/// The result image every successful job returns (the `result` script answers first).
async fn result_image(State(fake): State<Arc<Fake>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    fake.recorder.record(method, &uri, headers, Bytes::new());
    if let Some(step) = fake.recorder.next("result").await {
        return step.into_response();
    }
    ([("content-type", "image/png")], result_png()).into_response()
}

/// The bytes of the result image.
pub fn result_png() -> Vec<u8> {
    png_bytes(7)
}

impl Fake {
    /// The callback body KIE sends for the job as it now stands (success or fail).
    fn callback_body(&self, task_id: &str) -> Value {
        let jobs = self.jobs.lock().expect("jobs");
        let job = jobs.get(task_id).expect("a job of this fake");
        let data = match &job.outcome {
            Outcome::Success => {
                let result = json!({"resultUrls": [format!("{}/results/{task_id}.png", self.base_url)]});
                record(task_id, "success", Some(result.to_string()), None)
            }
            Outcome::Fail { code, message } => record(task_id, "fail", None, Some((code, message))),
        };
        json!({"code": 200, "msg": "success", "data": data})
    }

    /// POSTs `body` to the job's callBackUrl; returns the gateway's status.
    async fn send(&self, task_id: &str, body: Value, signing: Signing) -> u16 {
        let url = self.jobs.lock().expect("jobs")[task_id].callback_url.clone().expect("the job has a callBackUrl");
        let mut request = reqwest::Client::new().post(url).json(&body);
        if let Signing::With(key) = signing {
            let timestamp = chrono::Utc::now().timestamp().to_string();
            request = request
                .header("X-Webhook-Timestamp", &timestamp)
                .header("X-Webhook-Signature", sign(key, task_id, &timestamp));
        }
        request.send().await.expect("POST the callback").status().as_u16()
    }

    async fn call_back(&self, task_id: &str, signing: Signing) -> u16 {
        let body = self.callback_body(task_id);
        self.send(task_id, body, signing).await
    }
}

/// KIE's callback signature: base64(HMAC-SHA256(key, taskId + "." + timestamp)).
pub fn sign(key: &str, task_id: &str, timestamp: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

impl FakeKie {
    /// Ends the job now (as its outcome says) and sends its callback; returns the gateway's status.
    pub async fn finish_and_call_back(&self, task_id: &str, signing: Signing) -> u16 {
        self.finish(task_id);
        self.state.call_back(task_id, signing).await
    }

    /// Ends the job: the next recordInfo answers its outcome.
    pub fn finish(&self, task_id: &str) {
        self.state.jobs.lock().expect("jobs").get_mut(task_id).expect("a job").polls_left = 0;
    }

    /// Sends the job's callback as it now stands, without changing the job.
    pub async fn call_back(&self, task_id: &str, signing: Signing) -> u16 {
        self.state.call_back(task_id, signing).await
    }

    /// Sends a callback for the job with this body instead (a forgery).
    pub async fn call_back_with(&self, task_id: &str, body: Value, signing: Signing) -> u16 {
        self.state.send(task_id, body, signing).await
    }

    /// Finish every new job at once and call back before answering createTask.
    pub fn call_back_before_answering(&self, signing: Signing) -> &Self {
        *self.state.call_back_first.lock().expect("call_back_first") = Some(signing);
        self
    }

    /// The callBackUrl the gateway sent with the job.
    pub fn callback_url(&self, task_id: &str) -> Option<String> {
        self.state.jobs.lock().expect("jobs").get(task_id).and_then(|job| job.callback_url.clone())
    }

    /// Points the settings' `kie` provider at this fake, with its key and a 1 s timeout.
    pub fn configure(&self, settings: &mut aio_gateway::config::Settings) {
        let kie = settings.providers.get_mut("kie").expect("the test settings have a kie provider");
        kie.base_url = Some(self.base_url().to_owned());
        kie.api_key = Some(KEY.into());
        kie.timeout = std::time::Duration::from_secs(1);
        // These tests poll; the callback tests turn callbacks on.
        kie.callbacks = false;
    }

    /// Like [`FakeKie::configure`], with callbacks on and polling so slow (60 s) that only a
    /// callback can end a task within a test.
    pub fn configure_callbacks(&self, settings: &mut aio_gateway::config::Settings, hmac_key: Option<&str>) {
        self.configure(settings);
        super::enable_callbacks(settings, "kie", hmac_key);
    }
}
