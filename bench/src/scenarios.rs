//! The scenarios and the report: create, poll (closed and open loop), end to end, each beside its
//! floor measured in the same run; statements per task; memory; scale with bulk-loaded tasks.
//!
//! Floors: the poll floor is a bare handler on the same stack (axum on tokio, in the fake upstream's
//! process) answering a fixed task-sized JSON; the create floor is the create's SQL sent straight to
//! PostgreSQL (insert the task, hold on the account row, append the ledger row), one transaction per
//! create (unbatched) and 32 creates per transaction (batched).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::gateway::{self, Gateway, Process};
use crate::load::{self, Measured, Watch};
use crate::procstat::{self, CpuClock};
use crate::Options;

const CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Creates per transaction of the batched create floor.
const FLOOR_BATCH: usize = 32;
/// Connections of the bench's own pool (the create floor's clients); the gateway has 20.
const FLOOR_CONNECTIONS: u32 = 32;
/// The open loop's bound on requests outstanding.
const MAX_IN_FLIGHT: usize = 4096;

fn seed_request() -> Value {
    json!({
        "model": "seedream/4.5-text-to-image",
        "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
        "aspect_ratio": "16:9",
        "quality": "high"
    })
}

/// Everything the scenarios share.
struct Bench {
    client: reqwest::Client,
    gateway: String,
    upstream: String,
    key: String,
    /// `Bearer …` of 64 accounts' keys.
    spread_keys: Arc<Vec<String>>,
    account_id: i64,
    /// The account the create floor's SQL holds on.
    floor_account: i64,
    config: Gateway,
    process: Option<Process>,
    gateway_pid: u32,
    upstream_pid: u32,
    pool: PgPool,
    options: Options,
    rows: Vec<String>,
    report: serde_json::Map<String, Value>,
}

pub async fn all(options: Options) -> anyhow::Result<()> {
    let binaries = gateway::build()?;
    let load_before = procstat::load_average();
    eprintln!("load average before: {load_before}");
    let upstream_port = gateway::free_port()?;
    let upstream = format!("http://127.0.0.1:{upstream_port}");
    let fake = gateway::start_fake(&binaries, upstream_port)?;
    gateway::wait_http(&format!("{upstream}/api/v1/jobs/recordInfo?taskId=probe")).await?;

    let (server, database) = gateway::fresh_database();
    let port = gateway::free_port()?;
    let config = Gateway {
        binary: binaries.join("aio-gateway"),
        database_url: format!("{server}/{database}"),
        upstream: upstream.clone(),
        port,
        log: std::env::temp_dir().join("aio-bench-gateway.log"),
        extra: Vec::new(),
        config: None,
    };
    config.admin(&["migrate"])?;
    let account = |name: &str, credits: &str| -> anyhow::Result<i64> {
        config.admin(&["accounts", "create", "--name", name, "--credits", credits])?["account_id"]
            .as_i64()
            .context("account_id")
    };
    let account_id = account("bench", "1000000000000")?;
    let floor_account = account("floor", "1000000000000")?;
    let key = config.admin(&["keys", "create", "--account", &account_id.to_string()])?["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    // One key per account for the many-accounts create: what bounds one account's creates is its row.
    let mut spread_keys = Vec::new();
    for _ in 0..64 {
        let account = account("spread", "1000000000")?;
        let key = config.admin(&["keys", "create", "--account", &account.to_string()])?;
        spread_keys.push(format!("Bearer {}", key["api_key"].as_str().context("api_key")?));
    }
    let process = config.serve().await?;
    let pool = PgPoolOptions::new().max_connections(FLOOR_CONNECTIONS).connect(&config.database_url).await?;

    let mut bench = Bench {
        client: reqwest::Client::builder().pool_max_idle_per_host(4096).build()?,
        gateway: format!("http://127.0.0.1:{port}"),
        upstream,
        key,
        spread_keys: Arc::new(spread_keys),
        account_id,
        floor_account,
        gateway_pid: process.pid(),
        config,
        process: Some(process),
        upstream_pid: fake.pid(),
        pool,
        options,
        rows: Vec::new(),
        report: serde_json::Map::new(),
    };
    let result = bench.run().await;
    bench.process = None;
    drop(fake);
    bench.pool.close().await;
    drop_database(&server, &database).await;
    result?;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load_after = procstat::load_average();
    bench.report.insert("cores".into(), json!(cores));
    bench.report.insert("load_average_before".into(), json!(load_before));
    bench.report.insert("load_average_after".into(), json!(load_after));
    bench.report.insert("measure_secs".into(), json!(bench.options.measure.as_secs()));
    bench.report.insert(
        "unix_time".into(),
        json!(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    );
    let results = gateway::root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("latest.json"), serde_json::to_string_pretty(&Value::Object(bench.report.clone()))?)?;

    println!("\n{cores} cores; load average before {load_before}, after {load_after}");
    println!("{HEADER}");
    for row in &bench.rows {
        println!("{row}");
    }
    println!("\nwritten to bench/results/latest.json");
    Ok(())
}

const HEADER: &str = "| scenario | load | req/s | p50 ms | p99 ms | p99.9 ms | errors | floor: req/s, p50 / p99 ms | ÷ floor: req/s, p50, p99 | gateway CPU | PostgreSQL CPU | client CPU |
|---|---|---|---|---|---|---|---|---|---|---|---|";

async fn drop_database(server: &str, database: &str) {
    if let Ok(pool) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#)).execute(&pool).await;
    }
}

fn cores(value: Option<f64>) -> String {
    value.map_or("–".into(), |c| format!("{c:.2}"))
}

/// Whether a create floor error was printed (the first one is).
static FLOOR_ERROR_SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Task ids of the create floor: unique in this process.
static FLOOR_IDS: AtomicU64 = AtomicU64::new(0);

/// One transaction of the create floor: `batch` creates on `account` (the tasks in one insert, one
/// hold of their sum on the account row, the ledger rows in one insert).
async fn floor_create(pool: &PgPool, account: i64, batch: usize) -> sqlx::Result<()> {
    const PRICE: i64 = 12;
    let ids: Vec<String> =
        (0..batch).map(|_| format!("task_floor{:020}", FLOOR_IDS.fetch_add(1, Ordering::Relaxed))).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO tasks (id, account_id, model, sub_model, status, input, price, provider, upstream_model,
                            provider_label, simulated, deadline_at, next_poll_at)
         SELECT id, $2, 'seedream-4-5', 'seedream/4.5-text-to-image', 'pending', $3, $4, 'kie',
                'seedream/4.5-text-to-image', 'KIE', false, now() + interval '15 minutes', now() + interval '1 day'
         FROM UNNEST($1::text[]) AS id",
    )
    .bind(&ids)
    .bind(account)
    .bind(sqlx::types::Json(
        json!({"prompt": seed_request()["prompt"], "aspect_ratio": "16:9", "quality": "high", "image_urls": []}),
    ))
    .bind(PRICE)
    .execute(&mut *tx)
    .await?;
    let total = PRICE * batch as i64;
    let (after,): (i64,) = sqlx::query_as(
        "UPDATE accounts SET balance = balance - $2, held = held + $2 WHERE id = $1 AND balance >= $2 RETURNING balance",
    )
    .bind(account)
    .bind(total)
    .fetch_one(&mut *tx)
    .await?;
    let balances: Vec<i64> = (1..=batch as i64).map(|i| after + total - PRICE * i).collect();
    sqlx::query(
        "INSERT INTO ledger (account_id, kind, amount, task_id, balance_after)
         SELECT $1, 'hold', $2, id, balance FROM UNNEST($3::text[], $4::bigint[]) AS t (id, balance)",
    )
    .bind(account)
    .bind(-PRICE)
    .bind(&ids)
    .bind(&balances)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

impl Bench {
    async fn run(&mut self) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_mb = load::rss_mb(self.gateway_pid);
        eprintln!("idle: {idle_mb:.1} MB");
        let mut peak_mb: f64 = idle_mb;

        if self.wants("create") {
            let mut create = Vec::new();
            for concurrency in CONCURRENCY {
                let sampler = RssSampler::start(self.gateway_pid);
                let measured = self.create(concurrency).await;
                peak_mb = peak_mb.max(sampler.stop().await);
                let floor = self.floor_create(concurrency, 1).await?;
                self.row("create, one account", &format!("c={concurrency}"), &measured, Some(&floor));
                self.row("create floor: SQL, 1 per transaction", &format!("c={concurrency}"), &floor, None);
                create.push(json!({"concurrency": concurrency, "gateway": measured.json(), "floor": floor.json()}));
            }
            let batched = self.floor_create(64, FLOOR_BATCH).await?;
            self.row(
                "create floor: SQL, 32 per transaction (creates/s; latency per transaction)",
                "c=64",
                &batched,
                None,
            );
            let spread = self.create_spread(64).await;
            self.row("create, 64 accounts (one per worker)", "c=64", &spread, Some(&batched));
            self.report.insert("create".into(), Value::Array(create));
            self.report.insert("create_floor_batched_64".into(), batched.json());
            self.report.insert("create_64_accounts".into(), spread.json());
        }

        if self.wants("poll") || self.wants("open") {
            let ids = self.finished_task_ids().await?;
            if self.wants("poll") {
                let mut poll = Vec::new();
                for concurrency in CONCURRENCY {
                    let measured = self.poll(concurrency, Arc::clone(&ids)).await;
                    let floor = self.floor_poll(concurrency).await;
                    self.row("poll (finished task)", &format!("c={concurrency}"), &measured, Some(&floor));
                    poll.push(json!({"concurrency": concurrency, "gateway": measured.json(), "floor": floor.json()}));
                }
                self.report.insert("poll".into(), Value::Array(poll));
            }
            if self.wants("open") {
                let rate = self.options.poll_rate;
                let measured = self.poll_open(rate, Arc::clone(&ids)).await;
                let floor = self.floor_poll_open(rate).await;
                self.row("poll, open loop (finished task)", &format!("{rate:.0}/s"), &measured, Some(&floor));
                let rate = self.options.create_rate;
                let create = self.create_open(rate).await;
                self.row("create, one account, open loop", &format!("{rate:.0}/s"), &create, None);
                self.report.insert(
                    "open_loop".into(),
                    json!({"poll": {"gateway": measured.json(), "floor": floor.json()}, "create": create.json()}),
                );
            }
        }

        if self.wants("writes") {
            let writes = self.writes_per_task().await?;
            self.report.insert("writes_per_task".into(), writes);
        }

        if self.wants("e2e") {
            let mut end_to_end = Vec::new();
            for concurrency in [16, 64] {
                let measured = self.end_to_end(concurrency, Duration::from_millis(50)).await;
                self.row("end to end (tasks/s; time to result)", &format!("c={concurrency}"), &measured, None);
                end_to_end.push(json!({"concurrency": concurrency, "gateway": measured.json()}));
            }
            // The same with KIE's callbacks on (as shipped): the fake calls back the moment it accepts a
            // job, so a task ends as soon as the gateway hears it, not at its first scheduled poll; the
            // clients poll every 20 ms.
            let base = self.gateway.clone();
            self.restart(&[("AIO__PROVIDERS__KIE__CALLBACKS", "true"), ("AIO__SERVER__PUBLIC_BASE_URL", &base)])
                .await?;
            for concurrency in [64, 256] {
                let measured = self.end_to_end(concurrency, Duration::from_millis(20)).await;
                self.row(
                    "end to end, instant callbacks (tasks/s; time to result)",
                    &format!("c={concurrency}"),
                    &measured,
                    None,
                );
                end_to_end.push(json!({"concurrency": concurrency, "callbacks": true, "gateway": measured.json()}));
            }
            self.restart(&[]).await?;
            self.report.insert("end_to_end".into(), Value::Array(end_to_end));
        }

        if self.wants("scale") {
            let scale = self.scale().await?;
            self.report.insert("scale".into(), scale);
        }

        if self.wants("memory") {
            let running = self.running_tasks().await?;
            self.report.insert(
                "memory".into(),
                json!({"idle_mb": idle_mb, "create_load_peak_mb": peak_mb, "running_tasks": running}),
            );
            self.note("memory", &format!(
                "resident: idle {idle_mb:.1} MB, create load peak {peak_mb:.1} MB, {} running tasks {:.1} MB (gateway CPU {:.2} cores while polling them)",
                self.options.running, running["rss_mb"].as_f64().unwrap_or(f64::NAN), running["gateway_cpu_cores"].as_f64().unwrap_or(f64::NAN)
            ));
        }
        Ok(())
    }

    fn wants(&self, scenario: &str) -> bool {
        self.options.only.is_empty() || self.options.only.iter().any(|s| s == scenario)
    }

    /// Restarts the gateway with `extra` environment variables (on the same port and database).
    async fn restart(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        self.process = None;
        self.config.extra = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let process = self.config.serve().await?;
        self.gateway_pid = process.pid();
        self.process = Some(process);
        Ok(())
    }

    /// The processes to watch: `server`, and PostgreSQL's backends of the bench's database with its
    /// WAL writer, checkpointer and background writer (shared with other databases of the server).
    async fn watch(&self, server: u32) -> Watch {
        let postgres: Vec<(i32,)> = sqlx::query_as(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() OR backend_type IN ('walwriter', 'checkpointer', 'background writer')",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        Watch {
            server: Some(server),
            postgres: postgres.into_iter().filter_map(|(p,)| u32::try_from(p).ok()).collect(),
        }
    }

    fn row(&mut self, scenario: &str, load: &str, m: &Measured, floor: Option<&Measured>) {
        let (floor_text, ratio) = match floor {
            Some(f) => (
                format!("{:.0}, {:.2} / {:.2}", f.rate(), f.p50_ms, f.p99_ms),
                format!("{:.2}, {:.1}×, {:.1}×", m.rate() / f.rate(), m.p50_ms / f.p50_ms, m.p99_ms / f.p99_ms),
            ),
            None => ("–".into(), "–".into()),
        };
        let row = format!(
            "| {scenario} | {load} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {floor_text} | {ratio} | {} | {} | {:.2} |",
            m.rate(),
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.errors,
            cores(m.server_cpu),
            cores(m.postgres_cpu),
            m.client_cpu
        );
        eprintln!("{row}");
        self.rows.push(row);
    }

    /// A row with one figure in words.
    fn note(&mut self, scenario: &str, text: &str) {
        let row = format!("| {scenario} | – | {text} | | | | | | | | | |");
        eprintln!("{row}");
        self.rows.push(row);
    }

    async fn create(&self, concurrency: usize) -> Measured {
        let (client, url, auth) =
            (self.client.clone(), format!("{}/api/v1/images/generations", self.gateway), self.auth());
        let body = seed_request();
        load::run(concurrency, self.options.measure, &self.watch(self.gateway_pid).await, move |_, _| {
            let request = client.post(&url).header("authorization", &auth).json(&body).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    async fn create_open(&self, rate: f64) -> Measured {
        let (client, url, auth) =
            (self.client.clone(), format!("{}/api/v1/images/generations", self.gateway), self.auth());
        let body = seed_request();
        let watch = self.watch(self.gateway_pid).await;
        load::open_loop(rate, self.options.measure, MAX_IN_FLIGHT, &watch, move |_| {
            let request = client.post(&url).header("authorization", &auth).json(&body).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    /// The same creates, each worker with its own account.
    async fn create_spread(&self, concurrency: usize) -> Measured {
        let (client, url, keys) =
            (self.client.clone(), format!("{}/api/v1/images/generations", self.gateway), Arc::clone(&self.spread_keys));
        let body = seed_request();
        load::run(concurrency, self.options.measure, &self.watch(self.gateway_pid).await, move |worker, _| {
            let request = client.post(&url).header("authorization", &keys[worker % keys.len()]).json(&body).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    /// The create's SQL straight to PostgreSQL, `batch` creates per transaction on one account (the
    /// rate counts creates; the latency is per transaction). Its rows are removed afterwards.
    async fn floor_create(&self, concurrency: usize, batch: usize) -> anyhow::Result<Measured> {
        let (pool, account) = (self.pool.clone(), self.floor_account);
        let mut watch = self.watch(self.gateway_pid).await;
        watch.server = None;
        let mut measured = load::run(concurrency, self.options.measure, &watch, move |_, _| {
            let pool = pool.clone();
            async move {
                floor_create(&pool, account, batch).await.map_err(|error| {
                    if !FLOOR_ERROR_SHOWN.swap(true, Ordering::Relaxed) {
                        eprintln!("create floor: {error}");
                    }
                })
            }
        })
        .await;
        measured.requests *= batch as u64;
        sqlx::query("DELETE FROM ledger WHERE task_id LIKE 'task_floor%'").execute(&self.pool).await?;
        sqlx::query("DELETE FROM tasks WHERE id LIKE 'task_floor%'").execute(&self.pool).await?;
        Ok(measured)
    }

    /// Up to 10,000 of the bench account's tasks, once they have all finished (30 s at most; tasks
    /// are created first when there are none).
    async fn finished_task_ids(&self) -> anyhow::Result<Arc<Vec<String>>> {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks WHERE account_id = $1")
            .bind(self.account_id)
            .fetch_one(&self.pool)
            .await?;
        if count == 0 {
            self.create(16).await;
        }
        self.wait_finished().await?;
        self.task_ids().await
    }

    /// Waits (30 s at most) until no task is unfinished, except the create floor's.
    async fn wait_finished(&self) -> anyhow::Result<()> {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let (open,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM tasks WHERE status IN ('pending', 'running') AND id NOT LIKE 'task_floor%'",
            )
            .fetch_one(&self.pool)
            .await?;
            if open == 0 {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < give_up, "{open} tasks did not finish within 30 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Up to 10,000 of the created tasks' ids.
    async fn task_ids(&self) -> anyhow::Result<Arc<Vec<String>>> {
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM tasks WHERE account_id = $1 LIMIT 10000")
            .bind(self.account_id)
            .fetch_all(&self.pool)
            .await?;
        anyhow::ensure!(!ids.is_empty(), "no task was created");
        Ok(Arc::new(ids.into_iter().map(|(id,)| id).collect()))
    }

    async fn poll(&self, concurrency: usize, ids: Arc<Vec<String>>) -> Measured {
        let (client, base, auth) = (self.client.clone(), self.gateway.clone(), self.auth());
        load::run(concurrency, self.options.measure, &self.watch(self.gateway_pid).await, move |worker, n| {
            let id = &ids[(worker * 7919 + n as usize) % ids.len()];
            let request = client.get(format!("{base}/api/v1/tasks/{id}")).header("authorization", &auth).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    async fn poll_open(&self, rate: f64, ids: Arc<Vec<String>>) -> Measured {
        let (client, base, auth) = (self.client.clone(), self.gateway.clone(), self.auth());
        let watch = self.watch(self.gateway_pid).await;
        load::open_loop(rate, self.options.measure, MAX_IN_FLIGHT, &watch, move |n| {
            let id = &ids[n as usize % ids.len()];
            let request = client.get(format!("{base}/api/v1/tasks/{id}")).header("authorization", &auth).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    /// The poll floor: a bare handler answering a fixed finished task (see [`crate::fake`]).
    async fn floor_poll(&self, concurrency: usize) -> Measured {
        let (client, url) = (self.client.clone(), format!("{}/floor/task", self.upstream));
        load::run(concurrency, self.options.measure, &self.watch(self.upstream_pid).await, move |_, _| {
            let request = client.get(&url).header("authorization", "Bearer bench-upstream-key").send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    async fn floor_poll_open(&self, rate: f64) -> Measured {
        let (client, url) = (self.client.clone(), format!("{}/floor/task", self.upstream));
        let watch = self.watch(self.upstream_pid).await;
        load::open_loop(rate, self.options.measure, MAX_IN_FLIGHT, &watch, move |_| {
            let request = client.get(&url).header("authorization", "Bearer bench-upstream-key").send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    /// What PostgreSQL does per task, over creates at concurrency 16 run to their end (the engine
    /// submits and polls each at the instant fake, then settles it), without client polls: its
    /// transactions (`pg_stat_database` xact_commit + xact_rollback of the bench's database: one per
    /// explicit transaction and one per statement outside one) and rows written (`pg_stat_user_tables`
    /// n_tup_ins + n_tup_upd + n_tup_del). The gateway's background work (heartbeats, the engine's
    /// claim loop) is measured idle first and taken off. PostgreSQL publishes these counters when a
    /// backend has been idle for up to 10 s, hence the waits. `pg_stat_statements` would count
    /// statements but needs a server restart (`shared_preload_libraries`), which the bench does not do.
    async fn writes_per_task(&mut self) -> anyhow::Result<Value> {
        const FLUSH: Duration = Duration::from_secs(11);
        self.wait_finished().await?;
        tokio::time::sleep(FLUSH).await;
        let idle_start = (self.db_counters().await?, Instant::now());
        tokio::time::sleep(FLUSH).await;
        let idle_end = self.db_counters().await?;
        let idle_secs = idle_start.1.elapsed().as_secs_f64();
        let idle_xacts_per_sec = (idle_end.0 - idle_start.0 .0) as f64 / idle_secs;
        let idle_rows_per_sec = (idle_end.1 - idle_start.0 .1) as f64 / idle_secs;

        let (tasks_before,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(&self.pool).await?;
        let started = Instant::now();
        let before = self.db_counters().await?;
        let measured = self.create(16).await;
        self.wait_finished().await?;
        tokio::time::sleep(FLUSH).await;
        let after = self.db_counters().await?;
        let secs = started.elapsed().as_secs_f64();
        let (tasks_after,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(&self.pool).await?;
        let tasks = (tasks_after - tasks_before).max(1) as f64;
        let xacts = ((after.0 - before.0) as f64 - idle_xacts_per_sec * secs) / tasks;
        let rows = ((after.1 - before.1) as f64 - idle_rows_per_sec * secs) / tasks;
        self.note(
            "PostgreSQL work per task (create at c=16 run to success, no client polls)",
            &format!(
                "{xacts:.2} transactions, {rows:.2} rows written per task over {tasks:.0} tasks (idle gateway: {idle_xacts_per_sec:.1} transactions/s, taken off)"
            ),
        );
        Ok(json!({
            "tasks": tasks, "transactions_per_task": xacts, "rows_written_per_task": rows,
            "idle_transactions_per_sec": idle_xacts_per_sec, "idle_rows_written_per_sec": idle_rows_per_sec,
            "create": measured.json(),
        }))
    }

    /// (transactions, rows written) of the bench's database so far.
    async fn db_counters(&self) -> anyhow::Result<(i64, i64)> {
        let (xacts,): (i64,) = sqlx::query_as(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await?;
        let (rows,): (i64,) = sqlx::query_as(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((xacts, rows))
    }

    /// Create, then poll every `every` until the task is terminal: the latency is the time to result.
    async fn end_to_end(&self, concurrency: usize, every: Duration) -> Measured {
        let (client, base, auth) = (self.client.clone(), self.gateway.clone(), self.auth());
        let body = seed_request();
        load::run(concurrency, self.options.measure, &self.watch(self.gateway_pid).await, move |_, _| {
            let (client, base, auth, body) = (client.clone(), base.clone(), auth.clone(), body.clone());
            async move {
                let response = client
                    .post(format!("{base}/api/v1/images/generations"))
                    .header("authorization", &auth)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|_| ())?;
                let task: Value = response.json().await.map_err(|_| ())?;
                let id = task["task_id"].as_str().ok_or(())?.to_owned();
                let mut status = task["status"].as_str().unwrap_or_default().to_owned();
                while status == "pending" || status == "running" {
                    tokio::time::sleep(every).await;
                    let response = client
                        .get(format!("{base}/api/v1/tasks/{id}"))
                        .header("authorization", &auth)
                        .send()
                        .await
                        .map_err(|_| ())?;
                    let task: Value = response.json().await.map_err(|_| ())?;
                    status = task["status"].as_str().unwrap_or_default().to_owned();
                }
                if status == "succeeded" {
                    Ok(())
                } else {
                    Err(())
                }
            }
        })
        .await
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// Poll and create at concurrency 16 with 10,000 tasks in the database, then with `rows`
    /// (bulk-loaded, terminal); and the engine's claim query at both sizes.
    async fn scale(&mut self) -> anyhow::Result<Value> {
        // Start from an empty task table: the earlier scenarios left tens of thousands of tasks.
        sqlx::query("TRUNCATE webhook_attempts, webhook_deliveries, idempotency_keys, ledger, tasks CASCADE")
            .execute(&self.pool)
            .await?;
        let mut sizes = Vec::new();
        let mut loaded = 0;
        for target in [10_000, self.options.rows] {
            let started = Instant::now();
            self.bulk_load(loaded, target, "succeeded").await?;
            loaded = target;
            eprintln!("loaded {target} tasks in {:.1} s", started.elapsed().as_secs_f64());
            let ids = self.task_ids().await?;
            let poll = self.poll(16, ids).await;
            let create = self.create(16).await;
            let claim = self.explain_claim().await?;
            self.row(&format!("poll, {target} tasks in the table"), "c=16", &poll, None);
            self.row(&format!("create, {target} tasks in the table"), "c=16", &create, None);
            self.note(&format!("engine claim query, {target} tasks"), &claim);
            sizes.push(json!({"tasks": target, "poll": poll.json(), "create": create.json(), "claim_query": claim}));
        }
        let ratio = |what: &str| {
            let p50 = |i: usize| sizes[i][what]["p50_ms"].as_f64().unwrap_or(f64::NAN);
            p50(1) / p50(0)
        };
        let (poll_ratio, create_ratio) = (ratio("poll"), ratio("create"));
        self.note(
            &format!("scale p50 ratio ({} / 10,000 tasks)", self.options.rows),
            &format!("poll {poll_ratio:.2}, create {create_ratio:.2}"),
        );
        Ok(json!({"sizes": sizes, "poll_p50_ratio": poll_ratio, "create_p50_ratio": create_ratio}))
    }

    /// Inserts tasks `from..to` (ids `task_bulk…`) of the bench account, in chunks of 50,000 on two
    /// connections. A bulk load, not a measurement: the loading sessions skip the per-row foreign-key
    /// triggers (`session_replication_role = replica`; the rows are valid) and commit asynchronously.
    async fn bulk_load(&self, from: i64, to: i64, status: &str) -> anyhow::Result<()> {
        const CHUNK: i64 = 50_000;
        let chunks: Vec<(i64, i64)> = (from..to).step_by(CHUNK as usize).map(|s| (s, (s + CHUNK).min(to))).collect();
        let (first, second) = chunks.split_at(chunks.len() / 2);
        let load = |part: &[(i64, i64)]| {
            let part = part.to_vec();
            async move {
                let mut connection = self.pool.acquire().await?;
                sqlx::query("SET session_replication_role = replica").execute(&mut *connection).await?;
                sqlx::query("SET synchronous_commit = off").execute(&mut *connection).await?;
                for (start, end) in part {
                    self.insert_tasks(&mut connection, start, end, status).await?;
                }
                sqlx::query("RESET ALL").execute(&mut *connection).await?;
                anyhow::Ok(())
            }
        };
        let (first, second) = tokio::join!(load(first), load(second));
        first?;
        second?;
        sqlx::query("ANALYZE tasks").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_tasks(
        &self,
        connection: &mut sqlx::PgConnection,
        start: i64,
        end: i64,
        status: &str,
    ) -> anyhow::Result<()> {
        let running = status == "running";
        sqlx::query(
            "INSERT INTO tasks (id, account_id, model, sub_model, status, input, output, price, provider,
                                upstream_model, upstream_id, deadline_at, next_poll_at, completed_at)
             SELECT 'task_bulk' || lpad(g::text, 21, '0'), $1, 'seedream-4-5', 'seedream/4.5-text-to-image', $4,
                    '{\"prompt\": \"bulk\", \"aspect_ratio\": \"1:1\", \"quality\": \"basic\", \"image_urls\": []}'::jsonb,
                    CASE WHEN $5 THEN NULL ELSE '{\"images\": [{\"url\": \"https://cdn.example.com/x.png\"}]}'::jsonb END,
                    12, 'kie', 'seedream/4.5-text-to-image',
                    CASE WHEN $5 THEN 'hold-' || g ELSE 'bench-bulk-' || g END,
                    now() + interval '1 day', now() + make_interval(secs => (g % 30)::float8),
                    CASE WHEN $5 THEN NULL ELSE now() END
             FROM generate_series($2::bigint, $3::bigint - 1) g",
        )
        .bind(self.account_id)
        .bind(start)
        .bind(end)
        .bind(status)
        .bind(running)
        .execute(&mut *connection)
        .await?;
        Ok(())
    }

    /// `EXPLAIN (ANALYZE, BUFFERS)` of the engine's due-task selection, rolled back: its time and the
    /// buffers it touched, which must not grow with the table.
    async fn explain_claim(&self) -> anyhow::Result<String> {
        let mut transaction = self.pool.begin().await?;
        let (plan,): (Value,) = sqlx::query_as(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
             SELECT id FROM tasks WHERE status IN ('pending', 'running') AND next_poll_at <= now()
             ORDER BY next_poll_at LIMIT 100 FOR UPDATE SKIP LOCKED",
        )
        .fetch_one(&mut *transaction)
        .await?;
        transaction.rollback().await?;
        let top = &plan[0];
        Ok(format!(
            "{:.3} ms, {} buffers",
            top["Execution Time"].as_f64().unwrap_or(f64::NAN),
            top["Plan"]["Shared Hit Blocks"].as_i64().unwrap_or(0)
                + top["Plan"]["Shared Read Blocks"].as_i64().unwrap_or(0)
        ))
    }

    /// `running` tasks the fake never completes: resident memory and the gateway's CPU while its
    /// engine keeps polling them.
    async fn running_tasks(&mut self) -> anyhow::Result<Value> {
        let first = 10_000_000;
        self.bulk_load(first, first + self.options.running, "running").await?;
        let clock = CpuClock::of(self.gateway_pid);
        let sampler = RssSampler::start(self.gateway_pid);
        tokio::time::sleep(self.options.measure * 2).await;
        let rss_mb = sampler.stop().await;
        let cpu = clock.map(|c| c.cores());
        let (polled,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks WHERE status = 'running' AND attempts > 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(
            json!({"tasks": self.options.running, "rss_mb": rss_mb, "gateway_cpu_cores": cpu, "polled_at_least_once": polled}),
        )
    }
}

/// Samples a process's resident memory every 100 ms; `stop` returns the peak.
struct RssSampler {
    stop: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<f64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicU64::new(0));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while flag.load(Ordering::Relaxed) == 0 {
                peak = peak.max(load::rss_mb(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak.max(load::rss_mb(pid))
        });
        RssSampler { stop, task }
    }

    async fn stop(self) -> f64 {
        self.stop.store(1, Ordering::Relaxed);
        self.task.await.unwrap_or(f64::NAN)
    }
}
