//! A KIE upstream with faults, speaking the protocol of `fakes::kie` (its record shape, key and
//! callback signature). Each job's fate follows from the number in its prompt (`reliability task N`),
//! so a resubmitted task meets the same fate:
//! - 20 % fail upstream, 4 % never finish (they run past the gateway's deadline), the rest succeed
//!   after a short time;
//! - the first submit of 1 task in 10 answers 500 (an HTML error page), of another 1 in 10 answers 429;
//! - finished jobs call back once, not at all, three times at once (duplicates), again 2 s later
//!   (late), or are preceded by forged callbacks (a fake success with a wrong signature, unsigned).
//!
//! It records which jobs it reported as succeeded, and every callback's answer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::fakes::kie::{record, sign, KEY};
use crate::fakes::{authorized, png_bytes, Server, Step};
use crate::traffic::Traffic;

/// The webhook key the gateways are configured with (KIE's `webhookHmacKey`).
pub const HMAC_KEY: &str = "reliability-kie-hmac-key";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    Succeed,
    Fail,
    /// Never finishes: the gateway's deadline fails it.
    Stuck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calls {
    None,
    Once,
    Duplicated,
    Late,
    Forged,
}

/// What task `n` meets upstream (a fixed scramble of `n`, so the faults are spread over accounts).
pub fn fate(n: u64) -> Fate {
    match n.wrapping_mul(2_654_435_761) % 100 {
        0..=19 => Fate::Fail,
        20..=23 => Fate::Stuck,
        _ => Fate::Succeed,
    }
}

fn calls(n: u64) -> Calls {
    match n.wrapping_mul(40_503) % 10 {
        0 => Calls::None,
        1 => Calls::Duplicated,
        2 => Calls::Late,
        3 => Calls::Forged,
        _ => Calls::Once,
    }
}

/// The answer to the first submit of task `n`, if it is a fault.
fn submit_fault(n: u64) -> Option<Step> {
    match n % 10 {
        3 => Some(Step::Text(500, "<html>502 Bad Gateway</html>")),
        6 => Some(Step::Json(429, json!({"code": 429, "msg": "Too many requests", "data": null}))),
        _ => None,
    }
}

struct Job {
    n: u64,
    finish_at: Instant,
}

struct Fake {
    base_url: String,
    client: reqwest::Client,
    traffic: Arc<Traffic>,
    jobs: Mutex<HashMap<String, Job>>,
    /// Submits seen per task number.
    submits: Mutex<HashMap<u64, u32>>,
    /// Jobs recordInfo reported as `success`.
    succeeded: Mutex<HashSet<String>>,
}

pub struct ChaosKie {
    state: Arc<Fake>,
    _server: Server,
}

impl ChaosKie {
    pub async fn start(traffic: Arc<Traffic>) -> ChaosKie {
        let router = Router::new()
            .route("/api/v1/jobs/createTask", post(create))
            .route("/api/v1/jobs/recordInfo", get(record_info))
            .route("/results/{name}", get(|| async { ([("content-type", "image/png")], png_bytes(9)) }));
        let (state, server) = crate::fakes::start("chaos KIE", router, |base_url| Fake {
            base_url,
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
            traffic,
            jobs: Mutex::new(HashMap::new()),
            submits: Mutex::new(HashMap::new()),
            succeeded: Mutex::new(HashSet::new()),
        })
        .await;
        ChaosKie { state, _server: server }
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The upstream ids of the jobs this fake reported as succeeded.
    pub fn succeeded(&self) -> HashSet<String> {
        self.state.succeeded.lock().expect("succeeded").clone()
    }

    /// The task number of each job.
    pub fn job_numbers(&self) -> HashMap<String, u64> {
        self.state.jobs.lock().expect("jobs").iter().map(|(id, job)| (id.clone(), job.n)).collect()
    }
}

async fn create(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&headers, &format!("Bearer {KEY}")) {
        return Step::Json(200, json!({"code": 401, "msg": "You do not have access permissions"})).into_response();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(n) = request["input"]["prompt"].as_str().and_then(|p| p.rsplit(' ').next()).and_then(|n| n.parse().ok())
    else {
        return Step::Json(200, json!({"code": 422, "msg": "input.prompt is required"})).into_response();
    };
    let attempt = {
        let mut submits = fake.submits.lock().expect("submits");
        let seen = submits.entry(n).or_insert(0);
        *seen += 1;
        *seen
    };
    if attempt == 1 {
        if let Some(fault) = submit_fault(n) {
            return fault.into_response();
        }
    }
    let callback_url = request["callBackUrl"].as_str().map(str::to_owned);
    let run_for = Duration::from_millis(200 + (n * 37) % 800);
    let task_id = {
        let mut jobs = fake.jobs.lock().expect("jobs");
        let task_id = format!("chaos_{}", jobs.len() + 1);
        jobs.insert(task_id.clone(), Job { n, finish_at: Instant::now() + run_for });
        task_id
    };
    if let Some(url) = callback_url {
        tokio::spawn(call_back(Arc::clone(&fake), task_id.clone(), n, url, run_for));
    }
    axum::Json(json!({"code": 200, "msg": "success", "data": {"taskId": task_id}})).into_response()
}

async fn record_info(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers, &format!("Bearer {KEY}")) {
        return Step::Json(200, json!({"code": 401, "msg": "You do not have access permissions"})).into_response();
    }
    let task_id = query.get("taskId").cloned().unwrap_or_default();
    let Some(data) = fake.record_now(&task_id) else {
        return Step::Json(200, json!({"code": 404, "message": "task not found", "data": null})).into_response();
    };
    axum::Json(json!({"code": 200, "message": "success", "data": data})).into_response()
}

impl Fake {
    /// The job's record as it stands now; a `success` is remembered.
    fn record_now(&self, task_id: &str) -> Option<Value> {
        let (n, finish_at) = {
            let jobs = self.jobs.lock().expect("jobs");
            let job = jobs.get(task_id)?;
            (job.n, job.finish_at)
        };
        let finished = Instant::now() >= finish_at;
        Some(match fate(n) {
            Fate::Succeed if finished => {
                self.succeeded.lock().expect("succeeded").insert(task_id.to_owned());
                let result = json!({"resultUrls": [format!("{}/results/{task_id}.png", self.base_url)]});
                record(task_id, "success", Some(result.to_string()), None)
            }
            Fate::Fail if finished => record(task_id, "fail", None, Some(("500", "Internal error during generation"))),
            _ => record(task_id, "generating", None, None),
        })
    }

    /// POSTs a callback; records the answer (or that none came).
    async fn post(&self, url: &str, body: &Value, signature: Option<(&str, String)>, what: &'static str) {
        let mut request = self.client.post(url).json(body);
        if let Some((timestamp, signature)) = signature {
            request = request.header("X-Webhook-Timestamp", timestamp).header("X-Webhook-Signature", signature);
        }
        let sent = Instant::now();
        let answer = request.send().await;
        let status = answer.as_ref().ok().map(|r| r.status().as_u16());
        let code = match answer {
            Ok(response) => {
                response.json::<Value>().await.ok().and_then(|b| b["error"]["code"].as_str().map(str::to_owned))
            }
            Err(_) => None,
        };
        self.traffic.record(what, sent, status, code);
    }
}

/// Sends the job's callbacks once it has finished, as its number says.
async fn call_back(fake: Arc<Fake>, task_id: String, n: u64, url: String, run_for: Duration) {
    let calls = calls(n);
    if calls == Calls::Forged {
        // Claims success before the job ends, for whatever fate it has: wrongly signed, then unsigned.
        let result = json!({"resultUrls": ["https://evil.example/forged.png"]});
        let body =
            json!({"code": 200, "msg": "success", "data": record(&task_id, "success", Some(result.to_string()), None)});
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let forged = sign("not-the-key", &task_id, &timestamp);
        fake.post(&url, &body, Some((timestamp.as_str(), forged)), "forged callback").await;
        fake.post(&url, &body, None, "forged callback").await;
    }
    tokio::time::sleep(run_for).await;
    if fate(n) == Fate::Stuck || calls == Calls::None {
        return;
    }
    let Some(data) = fake.record_now(&task_id) else { return };
    let body = json!({"code": 200, "msg": "success", "data": data});
    let signed = || {
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = sign(HMAC_KEY, &task_id, &timestamp);
        Some((timestamp, signature))
    };
    let send = |signature: Option<(String, String)>| {
        let (fake, url, body) = (Arc::clone(&fake), url.clone(), body.clone());
        async move {
            let signature = signature.as_ref().map(|(t, s)| (t.as_str(), s.clone()));
            fake.post(&url, &body, signature, "callback").await
        }
    };
    match calls {
        Calls::Duplicated => {
            futures::future::join_all((0..3).map(|_| send(signed()))).await;
        }
        Calls::Late => {
            send(signed()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            send(signed()).await;
        }
        _ => send(signed()).await,
    }
}
