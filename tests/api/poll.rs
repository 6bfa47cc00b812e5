//! The status poll's fast path (issue 15): finished tasks answered from this process's cache, the
//! moment a task finishes seen at once, another account's id still a 404, links signed afresh on
//! every answer, and `ETag` / `If-None-Match` → 304.

use reqwest::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;

use crate::helpers::{assert_error, bearer, Backend, TestApp};
use crate::storage::both;

both!(another_account_gets_404_for_a_cached_task, if_none_match_with_the_etag_answers_304);

/// A driven gateway (the simulated provider stores its result in the file store).
async fn app() -> TestApp {
    TestApp::builder().driven().spawn().await
}

async fn poll(app: &TestApp, key: &str, task_id: &str, if_none_match: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(&format!("/api/v1/tasks/{task_id}"))).header(AUTHORIZATION, bearer(key));
    if let Some(tag) = if_none_match {
        request = request.header(IF_NONE_MATCH, tag);
    }
    request.send().await.expect("GET the task")
}

fn etag(response: &reqwest::Response) -> String {
    response.headers().get(ETAG).expect("an ETag").to_str().expect("ASCII").to_owned()
}

#[tokio::test]
async fn a_finishing_task_is_seen_at_once_then_answered_from_the_cache() {
    let app = app().await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, crate::helpers::seed_request()).await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    // Unfinished: read from the database on every poll, so each change shows.
    assert_eq!(app.get_task(&key, &task_id).await["status"], "pending");
    app.run_pending().await;
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");
    app.settle_all().await;
    // The poll right after the task finished sees it finished (no unfinished state was cached).
    let done = app.get_task(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["credits"]["state"], "charged");

    // From now on the answer comes from the cache: a change to the row behind the gateway's back
    // (no code path changes a finished task) is not read any more.
    sqlx::query("UPDATE tasks SET input = jsonb_set(input, '{prompt}', '\"edited\"') WHERE id = $1")
        .bind(&task_id)
        .execute(app.pool())
        .await
        .unwrap();
    let cached = app.get_task(&key, &task_id).await;
    assert_eq!(cached["input"]["prompt"], done["input"]["prompt"]);
    assert_eq!(cached["status"], "succeeded");
}

async fn another_account_gets_404_for_a_cached_task(backend: Backend) {
    let app = TestApp::builder().backend(backend).driven().spawn().await;
    let (_, owner) = app.new_account(100).await;
    let (_, other) = app.new_account(100).await;
    let done = app.run_seed(&owner).await;
    let task_id = done["task_id"].as_str().unwrap();
    // Cached by the owner's polls.
    assert_eq!(app.get_task(&owner, task_id).await["status"], "succeeded");
    assert_eq!(app.get_task(&owner, task_id).await["status"], "succeeded");
    assert_error(poll(&app, &other, task_id, None).await, StatusCode::NOT_FOUND, "not_found").await;
    // And the owner still gets it afterwards.
    assert_eq!(app.get_task(&owner, task_id).await["task_id"], task_id);
}

#[tokio::test]
async fn cached_answers_carry_freshly_signed_links_that_work() {
    let app = TestApp::builder()
        .configure(|settings| settings.files.link_ttl = std::time::Duration::from_secs(3600))
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    let task_id = done["task_id"].as_str().unwrap();
    for _ in 0..3 {
        let before = chrono::Utc::now().timestamp();
        let task = app.get_task(&key, task_id).await;
        let url = task["output"]["images"][0]["url"].as_str().expect("an image link");
        let parsed = reqwest::Url::parse(url).unwrap();
        let expires: i64 = parsed.query_pairs().find(|(k, _)| k == "exp").expect("exp").1.parse().unwrap();
        // Signed now for the whole link lifetime, not when the task was first cached.
        assert!(expires >= before + 3600, "{url} expires at {expires}");
        let image = app.client.get(url).send().await.unwrap();
        assert_eq!(image.status(), StatusCode::OK, "{url}");
    }
}

async fn if_none_match_with_the_etag_answers_304(backend: Backend) {
    // Public links do not expire, so a finished task's answer stays byte for byte the same.
    let app = TestApp::builder()
        .backend(backend)
        .configure(|settings| settings.files.public_base_url = "https://cdn.example.com/results".into())
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let (_, other) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    let task_id = done["task_id"].as_str().unwrap();

    let first = poll(&app, &key, task_id, None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let tag = etag(&first);
    assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 34, "a strong ETag: {tag}");
    let body = first.text().await.unwrap();

    for header in [tag.clone(), format!("W/{tag}"), format!("\"other\", {tag}"), "*".to_owned()] {
        let again = poll(&app, &key, task_id, Some(&header)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "If-None-Match: {header}");
        assert_eq!(etag(&again), tag);
        assert!(again.text().await.unwrap().is_empty());
    }
    let changed = poll(&app, &key, task_id, Some("\"0123\"")).await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(etag(&changed), tag);
    assert_eq!(changed.text().await.unwrap(), body);
    // The tag proves nothing to another account: still 404.
    assert_error(poll(&app, &other, task_id, Some(&tag)).await, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn the_etag_changes_with_the_task() {
    let app = app().await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, crate::helpers::seed_request()).await;
    let task_id = task["task_id"].as_str().unwrap().to_owned();
    let pending = poll(&app, &key, &task_id, None).await;
    let pending_tag = etag(&pending);
    app.run_pending().await;
    // The state changed: the old tag no longer matches, the new answer comes in full.
    let running = poll(&app, &key, &task_id, Some(&pending_tag)).await;
    assert_eq!(running.status(), StatusCode::OK);
    assert_ne!(etag(&running), pending_tag);
    let running_tag = etag(&running);
    assert_eq!(running.json::<serde_json::Value>().await.unwrap()["status"], "running");
    assert_eq!(poll(&app, &key, &task_id, Some(&running_tag)).await.status(), StatusCode::NOT_MODIFIED);

    // Signed links change the body when they are signed in another second; equal bodies have equal
    // tags, different bodies different tags.
    app.settle_all().await;
    let a = poll(&app, &key, &task_id, None).await;
    let b = poll(&app, &key, &task_id, None).await;
    let (tag_a, tag_b) = (etag(&a), etag(&b));
    let (body_a, body_b) = (a.text().await.unwrap(), b.text().await.unwrap());
    assert_ne!(tag_a, running_tag);
    assert_eq!(body_a == body_b, tag_a == tag_b);
}
