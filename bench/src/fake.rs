//! An instant KIE upstream (`aio-bench fake-upstream PORT`), run as its own process so that its CPU
//! is neither the gateway's nor the load generator's. `createTask` answers a new job id at once;
//! `recordInfo` answers `success` at once, except for jobs whose id starts with `hold-`, which stay
//! `generating` for ever (the memory scenario's running tasks).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Query;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

static NEXT: AtomicU64 = AtomicU64::new(1);

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let router =
        Router::new().route("/api/v1/jobs/createTask", post(create)).route("/api/v1/jobs/recordInfo", get(record_info));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, router).await?;
    Ok(())
}

async fn create() -> Json<Value> {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    Json(json!({"code": 200, "msg": "success", "data": {"taskId": format!("bench-{id}")}}))
}

async fn record_info(Query(query): Query<Vec<(String, String)>>) -> Json<Value> {
    let task_id = query.into_iter().find(|(k, _)| k == "taskId").map(|(_, v)| v).unwrap_or_default();
    let (state, result) = if task_id.starts_with("hold-") {
        ("generating", String::new())
    } else {
        ("success", json!({"resultUrls": [format!("https://cdn.example.com/{task_id}.png")]}).to_string())
    };
    Json(json!({"code": 200, "message": "success", "data": {
        "taskId": task_id, "model": "seedream/4.5-text-to-image", "state": state, "resultJson": result,
        "failCode": "", "failMsg": "", "costTime": 1, "createTime": 0, "updateTime": 0
    }}))
}
