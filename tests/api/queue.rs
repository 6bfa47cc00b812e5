//! The admission queue (issue 20): a full `max_in_flight` or provider submit window queues the task
//! (credits held, `queue_position` shown) instead of refusing it; queued tasks are dispatched round
//! robin across accounts from the database; a task queued past `tasks.max_queue_secs` fails `timeout`.

use std::num::NonZeroUsize;
use std::time::Duration;

use aio_gateway::accounts;
use aio_gateway::audit::Actor;
use aio_gateway::limits::{self, Limits};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fakes::kie::FakeKie;
use crate::helpers::{assert_error, assert_ledger_consistent_on, wait_all_terminal_on, Backend, TestApp};
use crate::storage::both;

both!(
    a_full_max_in_flight_queues_and_every_task_ends,
    queued_tasks_time_out_or_cancel_and_are_released_once,
    a_provider_window_queues_a_burst_fairly_and_kie_never_refuses,
);

/// An account with `credits` and one key with these limits.
async fn limited(app: &TestApp, credits: i64, key: Limits) -> (i64, String) {
    let account_id = accounts::create(&app.db, &Actor::cli(), "queued", credits).await.expect("account");
    let created = accounts::create_key(&app.db, &Actor::cli(), account_id, Some("k"), None).await.expect("key");
    assert!(limits::set_key(&app.db, &Actor::cli(), Some(account_id), &created.key_id, &Limits::default(), &key)
        .await
        .expect("key limits"));
    (account_id, created.api_key)
}

fn id(task: &Value) -> &str {
    task["task_id"].as_str().expect("task_id")
}

async fn a_full_max_in_flight_queues_and_every_task_ends(backend: Backend) {
    let app = TestApp::builder().backend(backend).spawn().await;
    let (_, key) = limited(&app, 1000, Limits { max_in_flight: Some(2), ..Limits::default() }).await;
    let mut created = Vec::new();
    for i in 0..10 {
        created.push(app.create_ok(&key, json!({"prompt": format!("[simulate:delay=1500] lake {i}")})).await);
    }
    for (i, task) in created.iter().enumerate() {
        if i < 2 {
            assert!(matches!(task["status"].as_str(), Some("pending" | "running")), "{task}");
            assert_eq!(task["queue_position"], Value::Null, "{task}");
        } else {
            assert_eq!((&task["status"], &task["queue_position"]), (&json!("queued"), &json!(i - 1)), "{task}");
            assert_eq!(task["credits"]["state"], "held", "{task}");
        }
    }
    let queued = app.get_json(&key, "/api/v1/tasks?status=queued&limit=100").await;
    assert!(queued["data"].as_array().expect("data").len() <= 8, "{queued}");
    app.assert_balance(&key, 1000 - 120, 120).await;
    wait_all_terminal_on(&app.db).await;
    for task in &created {
        let done = app.get_task(&key, id(task)).await;
        assert_eq!((&done["status"], &done["queue_position"]), (&json!("succeeded"), &Value::Null), "{done}");
    }
    app.assert_balance(&key, 1000 - 120, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

async fn queued_tasks_time_out_or_cancel_and_are_released_once(backend: Backend) {
    let app = TestApp::builder()
        .backend(backend)
        .configure(|settings| {
            settings.tasks.max_queue = Duration::from_secs(1);
            settings.tasks.max_queued_per_account = NonZeroUsize::new(2).expect("2");
        })
        .spawn()
        .await;
    let (_, key) = limited(&app, 1000, Limits { max_in_flight: Some(1), ..Limits::default() }).await;
    let slow = app.create_ok(&key, json!({"prompt": "[simulate:delay=60000] slow"})).await;
    let waits = app.create_ok(&key, json!({"prompt": "waits"})).await;
    let cancelled = app.create_ok(&key, json!({"prompt": "cancelled"})).await;
    assert_eq!((&cancelled["status"], &cancelled["queue_position"]), (&json!("queued"), &json!(2)), "{cancelled}");
    // Two queued, the most this account may have.
    assert_error(
        app.create(&key, json!({"prompt": "one too many"})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
    )
    .await;

    let response = app.cancel(&key, id(&cancelled)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!((&body["status"], &body["credits"]["state"]), (&json!("cancelled"), &json!("refunded")), "{body}");

    let timed_out = app.wait_terminal(&key, id(&waits)).await;
    assert_eq!(
        (&timed_out["status"], &timed_out["error"]["code"]),
        (&json!("failed"), &json!("timeout")),
        "{timed_out}"
    );
    assert_eq!(app.get_task(&key, id(&slow)).await["status"], "running");
    app.assert_balance(&key, 1000 - 12, 12).await;
    for task in [&waits, &cancelled] {
        assert_eq!(app.task_ledger(id(task)).await, ["hold", "release"], "{task}");
    }
    assert_ledger_consistent_on(&app.db).await;
}

/// KIE's window of 20 submits per 10 s, shortened to 2 s: 100 tasks created at once by two accounts
/// all succeed, KIE never sees more than 20 submits in 2 s nor refuses one, and the queue serves
/// the two accounts in turn.
async fn a_provider_window_queues_a_burst_fairly_and_kie_never_refuses(backend: Backend) {
    let window = Duration::from_secs(2);
    let fake = FakeKie::start().await;
    fake.polls(0).submit_window(20, window);
    let app = TestApp::builder()
        .backend(backend)
        .configure(|settings| {
            fake.configure(settings);
            settings.providers.get_mut("kie").expect("kie").max_submits = Some("20/2s".parse().expect("a window"));
        })
        .catalog("kie_only.toml")
        .spawn()
        .await;
    let (_, a) = app.new_account(10_000).await;
    let (_, b) = app.new_account(10_000).await;
    let creates = (0..50).flat_map(|i| {
        [(&a, format!("account-a {i}")), (&b, format!("account-b {i}"))]
            .map(|(key, prompt)| app.create_ok(key, json!({"prompt": prompt})))
    });
    let created = futures::future::join_all(creates).await;
    assert!(created.iter().any(|task| task["status"] == "queued"), "a burst of 100 fills the window");
    wait_all_terminal_on(&app.db).await;
    for (i, task) in created.iter().enumerate() {
        let key = if i % 2 == 0 { &a } else { &b };
        assert_eq!(app.get_task(key, id(task)).await["status"], "succeeded", "{task}");
    }
    let (times, refused) = fake.submit_times();
    assert_eq!((times.len(), refused), (100, 0), "every task submitted once, none refused");
    let mut busiest = 0;
    for (i, start) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|at| at.duration_since(*start) < window).count();
        assert!(within <= 20, "{within} submits within 2 s from submit {i}");
        busiest = busiest.max(within);
    }
    // Fair: the first 20 dispatched from the queue (after the 20 the window took at create) are
    // both accounts' in turn.
    let creates = fake.creates();
    let from_a = creates[20..40]
        .iter()
        .filter(|r| r.json()["input"]["prompt"].as_str().is_some_and(|p| p.starts_with("account-a")))
        .count();
    eprintln!("window test: at most {busiest} submits in any 2 s; {from_a} of submits 21-40 from account a");
    assert!((8..=12).contains(&from_a), "{from_a} of 20 from account a");
    assert_ledger_consistent_on(&app.db).await;
}
