//! `GET /api/v1/tasks/{task_id}/events`: the task object on every change until it ends, `Last-Event-ID`
//! resume, the cap on open streams per key; in process on SQLite, and across two gateway processes on
//! one PostgreSQL database (the API process hears the worker's changes through LISTEN/NOTIFY).

use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::Value;

use crate::contract;
use crate::helpers::{
    assert_error, bearer, http_client, new_account, seed_request, Backend, Gateway, TestApp, TestDatabase,
};

/// One server-sent event: its id and its task.
#[derive(Debug)]
struct TaskEvent {
    id: String,
    task: Value,
}

/// Reads `task` events until the server ends the stream (the 60 s bound only stops a hang).
async fn read_events(mut response: reqwest::Response) -> Vec<TaskEvent> {
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.expect("read the stream") {
            text.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the stream ends at a terminal status");
    parse(&text)
}

fn parse(text: &str) -> Vec<TaskEvent> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let field =
            |name: &str| block.lines().find_map(|line| line.strip_prefix(name).map(|v| v.trim_start().to_owned()));
        // Keep-alive comments (`:`) carry no event.
        let Some(data) = field("data:") else { continue };
        assert_eq!(field("event:").as_deref(), Some("task"), "{block}");
        events.push(TaskEvent { id: field("id:").expect("an id"), task: serde_json::from_str(&data).expect("JSON") });
    }
    events
}

fn events_request(
    client: &reqwest_middleware::ClientWithMiddleware,
    base: &str,
    key: &str,
    task_id: &str,
) -> reqwest_middleware::RequestBuilder {
    client.get(format!("{base}/api/v1/tasks/{task_id}/events")).header(AUTHORIZATION, bearer(key))
}

fn statuses(events: &[TaskEvent]) -> Vec<&str> {
    events.iter().map(|e| e.task["status"].as_str().unwrap()).collect()
}

/// The stream's states are the task's, in order, each once, ending at the terminal one.
fn assert_follows_the_task(events: &[TaskEvent]) {
    let statuses = statuses(events);
    assert_eq!(statuses.last(), Some(&"succeeded"), "{statuses:?}");
    let order = ["pending", "running", "succeeded"];
    let ranks: Vec<usize> = statuses.iter().map(|s| order.iter().position(|o| o == s).unwrap()).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "each state once, in order: {statuses:?}");
    let last = &events.last().unwrap().task;
    assert_eq!(last["credits"]["state"], "charged", "{last}");
    assert!(last["output"]["images"][0]["url"].is_string(), "{last}");
}

#[tokio::test]
async fn a_stream_follows_its_task_to_the_end_and_resumes_after_the_last_event_on_sqlite() {
    let app = TestApp::builder()
        .backend(Backend::Sqlite)
        .configure(|settings| settings.providers.get_mut("simulated").unwrap().delay = Some(Duration::from_millis(500)))
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().unwrap();

    let events = read_events(events_request(&app.client, &app.address, &key, task_id).send().await.unwrap()).await;
    assert_follows_the_task(&events);

    // Resuming after the last event: nothing new, the stream just ends. After an older one: the
    // current state again.
    let last = &events.last().unwrap().id;
    let resumed = events_request(&app.client, &app.address, &key, task_id).header("last-event-id", last);
    assert!(read_events(resumed.send().await.unwrap()).await.is_empty());
    let resumed = events_request(&app.client, &app.address, &key, task_id).header("last-event-id", "0-pending");
    assert_eq!(statuses(&read_events(resumed.send().await.unwrap()).await), ["succeeded"]);
}

#[tokio::test]
async fn a_cancelled_task_ends_its_stream_and_streams_are_capped_per_key() {
    let app = TestApp::builder()
        .driven()
        .configure(|settings| settings.events.max_streams_per_key = std::num::NonZeroU32::new(1).unwrap())
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let (_, other) = app.new_account(100).await;
    let task = app.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().unwrap();

    let mut open = events_request(&app.client, &app.address, &key, task_id).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    // The stream's first event (the task as it is) is read before the cancel: the answer's headers can
    // come back before the stream has read the task.
    let first = tokio::time::timeout(Duration::from_secs(60), open.chunk()).await.expect("a first event");
    let first = first.expect("read the stream").expect("the stream's first chunk");
    let second = events_request(&app.client, &app.address, &key, task_id).send().await.unwrap();
    assert_error(second, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another account's key has its own streams, and cannot see this task.
    let foreign = events_request(&app.client, &app.address, &other, task_id).send().await.unwrap();
    assert_error(foreign, StatusCode::NOT_FOUND, "not_found").await;

    let response = app.cancel(&key, task_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = parse(std::str::from_utf8(&first).expect("UTF-8"));
    events.extend(read_events(open).await);
    assert_eq!(statuses(&events), ["pending", "cancelled"]);
    // The stream ended and gave its slot back.
    let again = events_request(&app.client, &app.address, &key, task_id).send().await.unwrap();
    assert_eq!(statuses(&read_events(again).await), ["cancelled"]);
}

/// Two processes on one database: an API-only gateway serves the stream, a worker runs the engine.
/// The API process hears each change through NOTIFY (its metrics count what it received).
#[tokio::test]
async fn a_stream_on_one_process_follows_a_task_settled_by_another_on_postgres() {
    let database = TestDatabase::new(5).await;
    let files = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let client = http_client();
    let env = [("AIO__PROVIDERS__SIMULATED__DELAY_MS", "1000")];
    let mut api = Gateway::start_with(&database.url, files.path(), &logs.path().join("api.log"), "api", &env);
    let mut worker = Gateway::start_with(&database.url, files.path(), &logs.path().join("worker.log"), "worker", &env);
    api.ready(&client).await;
    worker.ready(&client).await;
    let (_, key) = new_account(&database.pool, 100).await;

    let task_id = api.create(&client, &key, "A lighthouse in a storm").await;
    let checked = contract::checked(client.clone(), &api.address);
    let events = read_events(events_request(&checked, &api.address, &key, &task_id).send().await.unwrap()).await;
    assert_follows_the_task(&events);

    let metrics = client.get(format!("{}/metrics", api.address)).send().await.unwrap().text().await.unwrap();
    let received: f64 = metrics
        .lines()
        .find(|line| line.starts_with("aio_task_events_total{kind=\"received\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(received >= 2.0, "the API process heard the worker's changes: {metrics}");
}
