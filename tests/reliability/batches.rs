//! Group commit under a crash (issue 15): a gateway process is SIGKILLed while 32 clients create
//! tasks on four accounts as fast as they can, so batches of creates are committing when it dies.
//! Then a second gateway takes over and the clients resend, with the same `Idempotency-Key`, every
//! request that got no answer. Every task a client was given is stored, every key names one task,
//! no task holds twice, and the books balance: `balance == sum(ledger)`, `held` = the open holds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::faults::client;
use crate::helpers::{assert_ledger_consistent, bearer, new_account, wait_all_terminal, Gateway, TestDatabase};

const ACCOUNTS: usize = 4;
const CLIENTS: u64 = 32;
/// Creates answered before the kill; each account pays for `AFFORDABLE`.
const KILL_AFTER: u64 = 300;
const AFFORDABLE: i64 = 250;
const PRICE: i64 = 12;

/// What one create attempt came to: a task, a refusal for credits, or no answer (in doubt).
enum Answer {
    Task(String),
    Refused,
    InDoubt,
}

async fn create(client: &reqwest::Client, address: &str, key: &str, attempt: u64) -> Answer {
    let sent = client
        .post(format!("{address}/api/v1/images/generations"))
        .header(AUTHORIZATION, bearer(key))
        .header("Idempotency-Key", format!("crash-{attempt}"))
        .json(&json!({"model": "seedream/4.5-text-to-image", "prompt": format!("crash task {attempt}")}))
        .send()
        .await;
    let Ok(response) = sent else { return Answer::InDoubt };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    match status {
        200 => Answer::Task(body["task_id"].as_str().expect("task_id").to_owned()),
        402 => Answer::Refused,
        // The process died mid-answer, or was too busy: the client does not know, and asks again.
        _ if body.is_null() || status == 503 => Answer::InDoubt,
        other => panic!("create {attempt} answered {other}: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_batches_commit_loses_no_answered_task_and_no_credit() {
    let database = TestDatabase::new(5).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("AIO__DATABASE__MAX_CONNECTIONS", "8"),
        ("AIO__RATE_LIMIT__REQUESTS_PER_MINUTE", "100000000"),
        ("AIO__RATE_LIMIT__BURST", "1000000"),
        ("AIO__RATE_LIMIT__ACCOUNT_REQUESTS_PER_MINUTE", "100000000"),
        ("AIO__PROVIDERS__SIMULATED__DELAY_MS", "500"),
    ];
    let start = |name: &str| {
        Gateway::start_with(
            &database.url,
            &dir.path().join("files"),
            &dir.path().join(format!("{name}.log")),
            "all",
            &env,
        )
    };
    let client = client();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(new_account(&database.pool, AFFORDABLE * PRICE).await);
    }
    let mut first = start("first");
    first.ready(&client).await;

    // The load: each client creates until the gateway stops answering.
    let answered = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let tasks: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let in_doubt: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, address, keys) = (client.clone(), first.address.clone(), accounts.clone());
        let (answered, next, dead, tasks, in_doubt) =
            (answered.clone(), next.clone(), dead.clone(), tasks.clone(), in_doubt.clone());
        clients.push(tokio::spawn(async move {
            while !dead.load(Ordering::Relaxed) {
                let attempt = next.fetch_add(1, Ordering::Relaxed);
                let key = &keys[attempt as usize % ACCOUNTS].1;
                match create(&client, &address, key, attempt).await {
                    Answer::Task(id) => {
                        tasks.lock().unwrap().insert(attempt, id);
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Answer::Refused => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Answer::InDoubt => in_doubt.lock().unwrap().push(attempt),
                }
            }
        }));
    }
    let give_up = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(Instant::now() < give_up, "the creates never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill();
    dead.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }

    // Every task a client was given before the crash is stored.
    let given: Vec<String> = tasks.lock().unwrap().values().cloned().collect();
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM tasks WHERE id = ANY($1)")
        .bind(&given)
        .fetch_all(&database.pool)
        .await
        .expect("read tasks");
    assert_eq!(stored.len(), given.len(), "tasks answered 200 but not stored");

    // Another gateway takes over; the requests in doubt are sent again with their keys.
    let mut second = start("second");
    second.ready(&client).await;
    let retried: Vec<u64> = in_doubt.lock().unwrap().clone();
    for attempt in &retried {
        let key = &accounts[*attempt as usize % ACCOUNTS].1;
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            match create(&client, &second.address, key, *attempt).await {
                Answer::Task(id) => {
                    tasks.lock().unwrap().insert(*attempt, id);
                    break;
                }
                Answer::Refused => break,
                Answer::InDoubt => {
                    assert!(Instant::now() < give_up, "create {attempt} never answered after the restart");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    wait_all_terminal(&database.pool).await;

    // One task per key, every given task stored, one hold each, and the books balance.
    let tasks = tasks.lock().unwrap().clone();
    let keyed: Vec<(String, String)> =
        sqlx::query_as("SELECT key, task_id FROM idempotency_keys").fetch_all(&database.pool).await.expect("read keys");
    let by_key: HashMap<String, String> = keyed.into_iter().collect();
    for (attempt, id) in &tasks {
        assert_eq!(by_key.get(&format!("crash-{attempt}")), Some(id), "create {attempt}: its key names another task");
    }
    let all: HashSet<String> = sqlx::query_scalar("SELECT id FROM tasks")
        .fetch_all(&database.pool)
        .await
        .expect("read tasks")
        .into_iter()
        .collect();
    let given: HashSet<String> = tasks.values().cloned().collect();
    assert!(given.is_subset(&all), "a task a client was given is missing");
    assert_eq!(all.len(), by_key.len(), "every stored task has its key, and only one");
    assert_ledger_consistent(&database.pool).await;
    eprintln!(
        "crash test: {} tasks given, {} requests in doubt at the kill, {} tasks stored",
        given.len(),
        retried.len(),
        all.len()
    );
    drop(second);
}
