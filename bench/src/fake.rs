//! An instant KIE upstream (`aio-bench fake-upstream PORT`), run as its own process so that its CPU
//! is neither the gateway's nor the load generator's. `createTask` answers a new job id at once (and
//! calls the job's `callBackUrl` back at once with its success, when it has one); `recordInfo`
//! answers `success` at once, except for jobs whose id starts with `hold-`, which stay `generating`
//! for ever (the memory scenario's running tasks).
//!
//! `GET /floor/task` is the poll floor: a bare handler on the gateway's stack (axum on tokio) that
//! answers a fixed JSON body of a finished task's size, with nothing else to do.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::header;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

static NEXT: AtomicU64 = AtomicU64::new(1);

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let router = Router::new()
        .route("/api/v1/jobs/createTask", post(create))
        .route("/api/v1/jobs/recordInfo", get(record_info))
        .route("/floor/task", get(floor_task));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, router).await?;
    Ok(())
}

/// A new job; when the request names a `callBackUrl`, the job's success is posted there at once, as
/// KIE calls back (the body is the same record `recordInfo` answers).
async fn create(Json(request): Json<Value>) -> Json<Value> {
    let task_id = format!("bench-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    if let Some(url) = request["callBackUrl"].as_str().map(str::to_owned) {
        let body = json!({"code": 200, "msg": "success", "data": record(&task_id)});
        tokio::spawn(async move {
            static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(reqwest::Client::new);
            let _ = CLIENT.post(url).json(&body).send().await;
        });
    }
    Json(json!({"code": 200, "msg": "success", "data": {"taskId": task_id}}))
}

/// A finished task's answer, as the gateway's `GET /api/v1/tasks/{id}` gives it (same fields, same
/// size, a signed link), made once.
static FLOOR_TASK: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    let task = json!({
        "task_id": "task_01KBFLOORFLOORFLOORFLOORFL", "model": "seedream-4-5", "sub_model": "seedream/4.5-text-to-image",
        "status": "succeeded",
        "input": {"prompt": "A serene mountain lake at sunrise with reflections, photorealistic", "aspect_ratio": "16:9",
                  "quality": "high", "image_urls": []},
        "output": {"images": [{"url": "http://127.0.0.1:8080/files/Q2xvb3JGbG9vckZsb29yRmxvb3JGbG9vcg.png?exp=1764460800&sig=c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXI"}]},
        "error": null, "credits": {"price": 12, "charged": 12, "state": "charged"}, "callback_url": null,
        "provider": {"label": "KIE", "simulated": false},
        "created_at": "2026-11-30T01:00:00.000Z", "updated_at": "2026-11-30T01:00:01.000Z",
        "completed_at": "2026-11-30T01:00:01.000Z"
    });
    Bytes::from(task.to_string())
});

async fn floor_task() -> ([(header::HeaderName, &'static str); 1], Bytes) {
    ([(header::CONTENT_TYPE, "application/json")], FLOOR_TASK.clone())
}

async fn record_info(Query(query): Query<Vec<(String, String)>>) -> Json<Value> {
    let task_id = query.into_iter().find(|(k, _)| k == "taskId").map(|(_, v)| v).unwrap_or_default();
    Json(json!({"code": 200, "message": "success", "data": record(&task_id)}))
}

/// The job's record: `success` with one image, or `generating` for a `hold-` job.
fn record(task_id: &str) -> Value {
    let (state, result) = if task_id.starts_with("hold-") {
        ("generating", String::new())
    } else {
        ("success", json!({"resultUrls": [format!("https://cdn.example.com/{task_id}.png")]}).to_string())
    };
    json!({
        "taskId": task_id, "model": "seedream/4.5-text-to-image", "state": state, "resultJson": result,
        "failCode": "", "failMsg": "", "costTime": 1, "createTime": 0, "updateTime": 0
    })
}
