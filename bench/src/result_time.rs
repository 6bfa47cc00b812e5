//! `aio-bench time-to-result`: how long a finished image waits in the gateway before the client has it
//! (issue 22). A KIE upstream in this process finishes each job after a set time and, on the callback
//! path, POSTs its callback that very moment; a webhook receiver in this process records when each
//! task's webhook arrives. The webhook is enqueued in the transaction that settles the task, so when it
//! arrives `GET /api/v1/tasks/{id}` already answers `succeeded`: its arrival bounds both.
//!
//! - callback path: callback sent → webhook received;
//! - poll path (callbacks off): the job's completion → webhook received, and recordInfo calls per task.
//!
//! `--gateway BINARY` measures another build (e.g. main's, for the figures before; with `--catalog` and
//! `--config` its own catalog and configuration), otherwise the release build is made first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::gateway::{self, Gateway};

/// The model's runtime in the shipped catalog (Seedream 4.5, `runtime_secs = [3, 10]`): poll-path jobs
/// finish at points spread evenly over it.
const RUNTIME: (f64, f64) = (3.0, 10.0);

pub struct Options {
    gateway: Option<PathBuf>,
    catalog: Option<PathBuf>,
    config: Option<PathBuf>,
    concurrency: usize,
    /// Tasks per path.
    tasks: usize,
    /// When a callback-path job finishes after its submit.
    callback_after: Duration,
    /// When a poll-path job finishes after its submit; `None`: spread over [`RUNTIME`].
    poll_after: Option<Duration>,
}

pub fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        gateway: None,
        catalog: None,
        config: None,
        concurrency: 16,
        tasks: 64,
        callback_after: Duration::from_millis(500),
        poll_after: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--gateway" => options.gateway = Some(value()?.into()),
            "--catalog" => options.catalog = Some(value()?.into()),
            "--config" => options.config = Some(value()?.into()),
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--tasks" => options.tasks = value()?.parse()?,
            "--poll-after" => options.poll_after = Some(Duration::from_secs_f64(value()?.parse()?)),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(options)
}

/// One upstream job.
struct Job {
    done_at: Instant,
    polls: u64,
}

#[derive(Default)]
struct Upstream {
    base_url: String,
    /// How long new jobs take: `None` spreads them over [`RUNTIME`].
    fixed: Mutex<Option<Duration>>,
    jobs: Mutex<HashMap<String, Job>>,
    next: AtomicU64,
    /// Upstream job id → when its callback was sent.
    called_back: Mutex<HashMap<String, Instant>>,
    /// Task id (from the webhook body) → when its webhook arrived.
    webhooks: Mutex<HashMap<String, Instant>>,
}

async fn create(State(up): State<Arc<Upstream>>, Json(body): Json<Value>) -> Json<Value> {
    let n = up.next.fetch_add(1, Ordering::Relaxed);
    let id = format!("ttr-{n}");
    let takes = up.fixed.lock().expect("fixed").unwrap_or_else(|| {
        // Golden-ratio steps: evenly spread over the runtime, in no particular order.
        let spread = (n as f64 * 0.618_033_988_75).fract();
        Duration::from_secs_f64(RUNTIME.0 + spread * (RUNTIME.1 - RUNTIME.0))
    });
    let done_at = Instant::now() + takes;
    let callback_url = body["callBackUrl"].as_str().map(str::to_owned);
    up.jobs.lock().expect("jobs").insert(id.clone(), Job { done_at, polls: 0 });
    if let Some(url) = callback_url {
        let (up, id) = (Arc::clone(&up), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(done_at.into()).await;
            let body = json!({"code": 200, "msg": "success", "data": record(&id, true)});
            up.called_back.lock().expect("called back").insert(id, Instant::now());
            let _ = reqwest::Client::new().post(url).json(&body).send().await;
        });
    }
    Json(json!({"code": 200, "msg": "success", "data": {"taskId": id}}))
}

/// recordInfo's `data` (as in KIE's docs, `resultJson` a string).
fn record(id: &str, done: bool) -> Value {
    let (state, result) = if done {
        ("success", json!({"resultUrls": [format!("https://cdn.example.com/{id}.png")]}).to_string())
    } else {
        ("generating", String::new())
    };
    json!({"taskId": id, "model": "seedream/4.5-text-to-image", "state": state, "resultJson": result,
           "failCode": "", "failMsg": "", "costTime": 1, "createTime": 0, "updateTime": 0})
}

async fn record_info(State(up): State<Arc<Upstream>>, Query(query): Query<Vec<(String, String)>>) -> Json<Value> {
    let id = query.into_iter().find(|(k, _)| k == "taskId").map(|(_, v)| v).unwrap_or_default();
    let done = match up.jobs.lock().expect("jobs").get_mut(&id) {
        Some(job) => {
            job.polls += 1;
            Instant::now() >= job.done_at
        }
        None => true,
    };
    Json(json!({"code": 200, "message": "success", "data": record(&id, done)}))
}

async fn hook(State(up): State<Arc<Upstream>>, Json(body): Json<Value>) -> &'static str {
    if let Some(task_id) = body["task_id"].as_str() {
        up.webhooks.lock().expect("webhooks").entry(task_id.to_owned()).or_insert_with(Instant::now);
    }
    "ok"
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let binary = match &options.gateway {
        Some(binary) => binary.clone(),
        None => gateway::build()?.join("aio-gateway"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let up = Arc::new(Upstream { base_url: base_url.clone(), ..Upstream::default() });
    let router = Router::new()
        .route("/api/v1/jobs/createTask", post(create))
        .route("/api/v1/jobs/recordInfo", get(record_info))
        .route("/hook", post(hook))
        .with_state(Arc::clone(&up));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let (server, database) = gateway::fresh_database();
    let mut gateway = Gateway {
        binary,
        database_url: format!("{server}/{database}"),
        upstream: base_url.clone(),
        port: gateway::free_port()?,
        log: std::env::temp_dir().join("aio-bench-ttr-gateway.log"),
        extra: vec![
            ("AIO__WEBHOOKS__ALLOW_HTTP".into(), "true".into()),
            ("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS".into(), "127.0.0.0/8".into()),
        ],
        config: options.config.clone(),
    };
    if let Some(catalog) = &options.catalog {
        gateway.extra.push(("AIO__CATALOG__MODELS_PATH".into(), catalog.display().to_string()));
    }
    gateway.admin(&["migrate"])?;
    let account = gateway.admin(&["accounts", "create", "--name", "ttr", "--credits", "1000000000"])?["account_id"]
        .as_i64()
        .context("account_id")?;
    let key = gateway.admin(&["keys", "create", "--account", &account.to_string()])?["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    let result = measure(&options, &mut gateway, &up, &key).await;
    if let Ok(pool) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#)).execute(&pool).await;
    }
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let results = gateway::root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("time_to_result.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

async fn measure(options: &Options, gateway: &mut Gateway, up: &Arc<Upstream>, key: &str) -> anyhow::Result<Value> {
    // Callback path: KIE calls back (unsigned; the gateway confirms with recordInfo).
    *up.fixed.lock().expect("fixed") = Some(options.callback_after);
    gateway.extra.push(("AIO__PROVIDERS__KIE__CALLBACKS".into(), "true".into()));
    let process = gateway.serve().await?;
    let callback = tasks(options, gateway, up, key).await?;
    drop(process);
    let callback_ms: Vec<f64> = {
        let (sent, hooks) = (up.called_back.lock().expect("called back"), up.webhooks.lock().expect("webhooks"));
        callback.iter().filter_map(|(task, job)| Some(ms(*hooks.get(task)? - *sent.get(job)?))).collect()
    };

    // Poll path: no callbacks; jobs spread over the model's runtime, or all taking `--poll-after`.
    *up.fixed.lock().expect("fixed") = options.poll_after;
    gateway.extra.retain(|(name, _)| name != "AIO__PROVIDERS__KIE__CALLBACKS");
    gateway.extra.push(("AIO__PROVIDERS__KIE__CALLBACKS".into(), "false".into()));
    let process = gateway.serve().await?;
    let polled = tasks(options, gateway, up, key).await?;
    drop(process);
    let (poll_ms, polls): (Vec<f64>, Vec<f64>) = {
        let (jobs, hooks) = (up.jobs.lock().expect("jobs"), up.webhooks.lock().expect("webhooks"));
        polled
            .iter()
            .filter_map(|(task, job)| {
                let job = jobs.get(job)?;
                let late = hooks.get(task)?.saturating_duration_since(job.done_at);
                Some((ms(late), job.polls as f64))
            })
            .unzip()
    };
    Ok(json!({
        "concurrency": options.concurrency,
        "tasks_per_path": options.tasks,
        "callback_path": {"tasks": callback_ms.len(), "callback_to_webhook_ms": percentiles(&callback_ms)},
        "poll_path": {
            "tasks": poll_ms.len(),
            "job_runtime_secs": options.poll_after.map_or(json!([RUNTIME.0, RUNTIME.1]), |d| json!(d.as_secs_f64())),
            "completion_to_webhook_ms": percentiles(&poll_ms),
            "polls_per_task": {"mean": polls.iter().sum::<f64>() / polls.len().max(1) as f64, "max": polls.iter().cloned().fold(0.0, f64::max)},
        },
    }))
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

pub fn percentiles(values: &[f64]) -> Value {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    for value in values {
        let _ = histogram.record(((value * 1000.0) as u64).max(1));
    }
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

/// `options.tasks` tasks from `options.concurrency` workers, each creating one (with a webhook to this
/// process) and waiting for its webhook before the next; returns (task id, upstream job id) pairs.
async fn tasks(
    options: &Options,
    gateway: &Gateway,
    up: &Arc<Upstream>,
    key: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/api/v1/images/generations", gateway.port);
    let hook = format!("{}/hook", up.base_url);
    let pool = PgPool::connect(&gateway.database_url).await?;
    let left = Arc::new(AtomicU64::new(options.tasks as u64));
    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (client, url, hook, up, left) = (client.clone(), url.clone(), hook.clone(), Arc::clone(up), Arc::clone(&left));
            let auth = format!("Bearer {key}");
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                    let body = json!({"model": "seedream/4.5-text-to-image", "prompt": "time to result", "callback_url": hook});
                    let task: Value = client.post(&url).header("authorization", &auth).json(&body).send().await?.json().await?;
                    let id = task["task_id"].as_str().context("task_id")?.to_owned();
                    let give_up = Instant::now() + Duration::from_secs(120);
                    while !up.webhooks.lock().expect("webhooks").contains_key(&id) {
                        anyhow::ensure!(Instant::now() < give_up, "no webhook for {id}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    ids.push(id);
                }
                anyhow::Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for worker in workers {
        ids.extend(worker.await??);
    }
    let mut pairs = Vec::new();
    for id in ids {
        let (job,): (String,) =
            sqlx::query_as("SELECT upstream_id FROM tasks WHERE id = $1").bind(&id).fetch_one(&pool).await?;
        pairs.push((id, job));
    }
    pool.close().await;
    Ok(pairs)
}
