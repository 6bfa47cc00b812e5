//! `aio-bench takeover`: how long a task leased by a SIGKILLed gateway waits before a live one takes
//! it over and finishes it (issue 22's crash goal: within 5 s).
//!
//! Two gateway processes, A and B, on one fresh database; a KIE upstream and a webhook receiver in this
//! process (one clock). B starts first and runs for `instance_stale_ms` and a heartbeat, so it judges
//! other instances (as a live peer does in production). N tasks are created through A: born claimed by
//! A (the create fast path), their submits hang at the upstream, so A holds every lease. A is
//! SIGKILLed; from then on the upstream answers submits at once and calls back 50 ms later. Per task:
//! - takeover: kill → B's submit of the task reaches the upstream;
//! - result: kill → B's webhook for the task arrives (enqueued with the settlement, so `GET` already
//!   answers `succeeded`; the bench checks that through B at the end).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::gateway::{self, Gateway};
use crate::result_time::{ms, percentiles};

/// How long after B's submit the upstream job finishes and calls back.
const JOB_TAKES: Duration = Duration::from_millis(50);

pub struct Options {
    gateway: Option<PathBuf>,
    tasks: usize,
    heartbeat_ms: u64,
    stale_ms: u64,
    lease_secs: u64,
}

pub fn parse(args: &[String]) -> anyhow::Result<Options> {
    // The shipped configuration's values.
    let mut options = Options { gateway: None, tasks: 32, heartbeat_ms: 1000, stale_ms: 3000, lease_secs: 60 };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--gateway" => options.gateway = Some(value()?.into()),
            "--tasks" => options.tasks = value()?.parse()?,
            "--heartbeat-ms" => options.heartbeat_ms = value()?.parse()?,
            "--stale-ms" => options.stale_ms = value()?.parse()?,
            "--lease-secs" => options.lease_secs = value()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    ensure!((1..=1000).contains(&options.tasks), "--tasks: 1 to 1000");
    Ok(options)
}

struct Upstream {
    /// Set once A is dead: submits are answered from then on.
    killed: watch::Receiver<bool>,
    /// Submits held open (A's).
    held: AtomicU64,
    next: AtomicU64,
    /// Prompt → when its first submit after the kill arrived.
    resubmitted: Mutex<HashMap<String, Instant>>,
    /// Task id → when its webhook arrived.
    webhooks: Mutex<HashMap<String, Instant>>,
}

/// KIE's recordInfo `data` for a finished job (as in KIE's docs, `resultJson` a string).
fn record(id: &str) -> Value {
    let result = json!({"resultUrls": [format!("https://cdn.example.com/{id}.png")]}).to_string();
    json!({"taskId": id, "model": "seedream/4.5-text-to-image", "state": "success", "resultJson": result,
           "failCode": "", "failMsg": "", "costTime": 1, "createTime": 0, "updateTime": 0})
}

async fn create(State(up): State<Arc<Upstream>>, Json(body): Json<Value>) -> Json<Value> {
    let mut killed = up.killed.clone();
    if !*killed.borrow_and_update() {
        // A's submit: held until A is dead (then nobody reads the answer), 5 minutes at most.
        up.held.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(300), killed.wait_for(|dead| *dead)).await;
        return Json(json!({"code": 500, "msg": "held"}));
    }
    let prompt = body["input"]["prompt"].as_str().unwrap_or_default().to_owned();
    up.resubmitted.lock().expect("resubmitted").entry(prompt).or_insert_with(Instant::now);
    let id = format!("tko-{}", up.next.fetch_add(1, Ordering::Relaxed));
    if let Some(url) = body["callBackUrl"].as_str().map(str::to_owned) {
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(JOB_TAKES).await;
            let body = json!({"code": 200, "msg": "success", "data": record(&id)});
            let _ = reqwest::Client::new().post(url).json(&body).send().await;
        });
    }
    Json(json!({"code": 200, "msg": "success", "data": {"taskId": id}}))
}

async fn record_info() -> Json<Value> {
    Json(json!({"code": 200, "message": "success", "data": record("tko")}))
}

async fn hook(State(up): State<Arc<Upstream>>, Json(body): Json<Value>) -> &'static str {
    if let Some(task_id) = body["task_id"].as_str() {
        up.webhooks.lock().expect("webhooks").entry(task_id.to_owned()).or_insert_with(Instant::now);
    }
    "ok"
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let binary = match &options.gateway {
        Some(binary) => binary.clone(),
        None => gateway::build()?.join("aio-gateway"),
    };
    let (kill, killed) = watch::channel(false);
    let up = Arc::new(Upstream {
        killed,
        held: AtomicU64::new(0),
        next: AtomicU64::new(0),
        resubmitted: Mutex::default(),
        webhooks: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let router = Router::new()
        .route("/api/v1/jobs/createTask", post(create))
        .route("/api/v1/jobs/recordInfo", get(record_info))
        .route("/hook", post(hook))
        .with_state(Arc::clone(&up));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (server, database) = gateway::fresh_database();
    let gateway = |name: &str| -> anyhow::Result<Gateway> {
        Ok(Gateway {
            binary: binary.clone(),
            database_url: format!("{server}/{database}"),
            upstream: base_url.clone(),
            port: gateway::free_port()?,
            log: std::env::temp_dir().join(format!("aio-bench-takeover-{name}.log")),
            extra: vec![
                ("AIO__PROVIDERS__KIE__CALLBACKS".into(), "true".into()),
                ("AIO__TASKS__DISPATCH_WAIT_MS".into(), "0".into()),
                ("AIO__TASKS__HEARTBEAT_MS".into(), options.heartbeat_ms.to_string()),
                ("AIO__TASKS__INSTANCE_STALE_MS".into(), options.stale_ms.to_string()),
                ("AIO__TASKS__LEASE_SECS".into(), options.lease_secs.to_string()),
                ("AIO__WEBHOOKS__ALLOW_HTTP".into(), "true".into()),
                ("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS".into(), "127.0.0.0/8".into()),
            ],
            config: None,
        })
    };
    let (a, b) = (gateway("a")?, gateway("b")?);
    a.admin(&["migrate"])?;
    let result = measure(&options, &a, &b, &up, &kill, &base_url).await;
    if let Ok(pool) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#)).execute(&pool).await;
    }
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let results = gateway::root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("takeover.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

async fn measure(
    options: &Options,
    a: &Gateway,
    b: &Gateway,
    up: &Arc<Upstream>,
    kill: &watch::Sender<bool>,
    base_url: &str,
) -> anyhow::Result<Value> {
    let load_before = load_average();
    let account = a.admin(&["accounts", "create", "--name", "takeover", "--credits", "1000000"])?["account_id"]
        .as_i64()
        .context("account_id")?;
    let key = a.admin(&["keys", "create", "--account", &account.to_string()])?["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let auth = format!("Bearer {key}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let pool = PgPool::connect(&a.database_url).await?;

    let b_process = b.serve().await?;
    let b_up = Instant::now();
    let mut a_process = a.serve().await?;

    // The tasks, through A: born leased by A, their submits held at the upstream.
    let url = format!("http://127.0.0.1:{}/api/v1/images/generations", a.port);
    let hook = format!("{base_url}/hook");
    let creates = (0..options.tasks).map(|i| {
        let prompt = format!("takeover {i}");
        let body = json!({"model": "seedream/4.5-text-to-image", "prompt": prompt, "callback_url": hook});
        let request = client.post(&url).header("authorization", &auth).json(&body).send();
        async move {
            let task: Value = request.await?.error_for_status()?.json().await?;
            anyhow::Ok((prompt, task["task_id"].as_str().context("task_id")?.to_owned()))
        }
    });
    let tasks: HashMap<String, String> = futures_join(creates).await?.into_iter().collect();
    let give_up = Instant::now() + Duration::from_secs(30);
    while up.held.load(Ordering::Relaxed) < options.tasks as u64 {
        ensure!(Instant::now() < give_up, "A never submitted every task");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (leased_by_a,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tasks WHERE leased_by = (SELECT id FROM instances WHERE pid = $1)")
            .bind(i64::from(a_process.pid()))
            .fetch_one(&pool)
            .await?;
    ensure!(leased_by_a == options.tasks as i64, "{leased_by_a} of {} tasks leased by A", options.tasks);
    // B judges other instances once its own heartbeats have gone through for instance_stale_ms.
    let judging = Duration::from_millis(options.stale_ms + options.heartbeat_ms);
    tokio::time::sleep(judging.saturating_sub(b_up.elapsed())).await;

    let killed_at = Instant::now();
    a_process.0.kill()?;
    a_process.0.wait()?;
    kill.send_replace(true);
    let load_at_kill = load_average();

    let give_up = killed_at + Duration::from_secs(options.lease_secs + 30);
    loop {
        let hooks = up.webhooks.lock().expect("webhooks").len();
        if hooks >= tasks.len() {
            break;
        }
        ensure!(Instant::now() < give_up, "not every task finished within lease_secs + 30 s of the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished = Instant::now();
    // The webhook is enqueued with the settlement: B's GET answers `succeeded` for every task.
    let mut succeeded = 0;
    for id in tasks.values() {
        let task: Value = client
            .get(format!("http://127.0.0.1:{}/api/v1/tasks/{id}", b.port))
            .header("authorization", &auth)
            .send()
            .await?
            .json()
            .await?;
        succeeded += usize::from(task["status"] == "succeeded");
    }
    drop(b_process);
    pool.close().await;

    let (resubmitted, hooks) = (up.resubmitted.lock().expect("resubmitted"), up.webhooks.lock().expect("webhooks"));
    let takeover: Vec<f64> = tasks.keys().filter_map(|p| Some(ms(*resubmitted.get(p)? - killed_at))).collect();
    let result: Vec<f64> = tasks.values().filter_map(|id| Some(ms(*hooks.get(id)? - killed_at))).collect();
    Ok(json!({
        "tasks": options.tasks,
        "settings": {
            "tasks.heartbeat_ms": options.heartbeat_ms,
            "tasks.instance_stale_ms": options.stale_ms,
            "tasks.lease_secs": options.lease_secs,
        },
        "upstream_job_ms": JOB_TAKES.as_millis() as u64,
        "kill_to_resubmit_ms": percentiles(&takeover),
        "kill_to_webhook_ms": percentiles(&result),
        "succeeded_on_b_get": succeeded,
        "all_finished_after_kill_ms": ms(finished - killed_at),
        "load_average": {"start": load_before, "at_kill": load_at_kill, "end": load_average()},
    }))
}

/// Runs `futures` concurrently; all their results, or the first error.
async fn futures_join<T: Send + 'static>(
    futures: impl Iterator<Item = impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static>,
) -> anyhow::Result<Vec<T>> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await??);
    }
    Ok(results)
}
