//! The scenarios of issue 6 and the report: create, poll, end to end, each beside the floor (the same
//! load straight to the fake upstream); memory; scale with bulk-loaded tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::gateway::{self, Gateway};
use crate::load::{self, Measured};
use crate::procstat::{self, CpuClock};
use crate::Options;

const CONCURRENCY: [usize; 3] = [1, 16, 64];

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
    let upstream_port = gateway::free_port()?;
    let upstream = format!("http://127.0.0.1:{upstream_port}");
    let fake = gateway::start_fake(&binaries, upstream_port)?;
    gateway::wait_http(&format!("{upstream}/api/v1/jobs/recordInfo?taskId=probe")).await?;

    let (server, database) = gateway::fresh_database();
    let port = gateway::free_port()?;
    let gateway = Gateway {
        binary: binaries.join("aio-gateway"),
        database_url: format!("{server}/{database}"),
        upstream: upstream.clone(),
        port,
        log: std::env::temp_dir().join("aio-bench-gateway.log"),
        extra: Vec::new(),
        config: None,
    };
    gateway.admin(&["migrate"])?;
    let account_id = gateway.admin(&["accounts", "create", "--name", "bench", "--credits", "1000000000000"])?
        ["account_id"]
        .as_i64()
        .context("account_id")?;
    let key = gateway.admin(&["keys", "create", "--account", &account_id.to_string()])?["api_key"]
        .as_str()
        .context("api_key")?
        .to_owned();
    // One key per account for the many-accounts create: what bounds one account's creates is its row.
    let mut spread_keys = Vec::new();
    for _ in 0..64 {
        let account = gateway.admin(&["accounts", "create", "--name", "spread", "--credits", "1000000000"])?
            ["account_id"]
            .as_i64()
            .context("account_id")?;
        let key = gateway.admin(&["keys", "create", "--account", &account.to_string()])?;
        spread_keys.push(format!("Bearer {}", key["api_key"].as_str().context("api_key")?));
    }
    let process = gateway.serve().await?;
    let pool = PgPool::connect(&gateway.database_url).await?;

    let mut bench = Bench {
        client: reqwest::Client::builder().pool_max_idle_per_host(512).build()?,
        gateway: format!("http://127.0.0.1:{port}"),
        upstream,
        key,
        spread_keys: Arc::new(spread_keys),
        account_id,
        gateway_pid: process.pid(),
        upstream_pid: fake.pid(),
        pool,
        options,
        rows: Vec::new(),
        report: serde_json::Map::new(),
    };
    let result = bench.run().await;
    drop(process);
    drop(fake);
    bench.pool.close().await;
    drop_database(&server, &database).await;
    result?;

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    bench.report.insert("cores".into(), json!(cores));
    bench.report.insert("load_average_before".into(), json!(load_before));
    bench.report.insert("load_average_after".into(), json!(procstat::load_average()));
    bench.report.insert("measure_secs".into(), json!(bench.options.measure.as_secs()));
    bench.report.insert(
        "unix_time".into(),
        json!(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()),
    );
    let results = gateway::root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("latest.json"), serde_json::to_string_pretty(&Value::Object(bench.report.clone()))?)?;

    println!("\n{cores} cores; load average before {load_before}, after {}", procstat::load_average());
    println!("| scenario | concurrency | req/s | p50 ms | p99 ms | p99.9 ms | errors | floor p50 / p99 ms | overhead p50 / p99 ms | gateway CPU | client CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &bench.rows {
        println!("{row}");
    }
    println!("\nwritten to bench/results/latest.json");
    Ok(())
}

async fn drop_database(server: &str, database: &str) {
    if let Ok(pool) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{database}" WITH (FORCE)"#)).execute(&pool).await;
    }
}

fn cores(value: Option<f64>) -> String {
    value.map_or("–".into(), |c| format!("{c:.2}"))
}

impl Bench {
    async fn run(&mut self) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_mb = load::rss_mb(self.gateway_pid);
        eprintln!("idle: {idle_mb:.1} MB");

        let mut create = Vec::new();
        let mut peak_mb: f64 = idle_mb;
        for concurrency in CONCURRENCY {
            let sampler = RssSampler::start(self.gateway_pid);
            let measured = self.create(concurrency).await;
            peak_mb = peak_mb.max(sampler.stop().await);
            let floor = self.floor_create(concurrency).await;
            self.row("create", concurrency, &measured, Some(&floor));
            create.push(json!({"concurrency": concurrency, "gateway": measured.json(), "floor": floor.json()}));
        }
        self.report.insert("create".into(), Value::Array(create));
        let spread = self.create_spread(64).await;
        self.row("create, 64 accounts (one per worker)", 64, &spread, None);
        self.report.insert("create_64_accounts".into(), spread.json());

        let ids = self.task_ids().await?;
        let mut poll = Vec::new();
        for concurrency in CONCURRENCY {
            let measured = self.poll(concurrency, Arc::clone(&ids)).await;
            let floor = self.floor_poll(concurrency).await;
            self.row("poll", concurrency, &measured, Some(&floor));
            poll.push(json!({"concurrency": concurrency, "gateway": measured.json(), "floor": floor.json()}));
        }
        self.report.insert("poll".into(), Value::Array(poll));

        let mut end_to_end = Vec::new();
        for concurrency in [16, 64] {
            let measured = self.end_to_end(concurrency).await;
            self.row("end to end (tasks/s; time to result)", concurrency, &measured, None);
            end_to_end.push(json!({"concurrency": concurrency, "gateway": measured.json()}));
        }
        self.report.insert("end_to_end".into(), Value::Array(end_to_end));

        let scale = self.scale().await?;
        self.report.insert("scale".into(), scale);

        let running = self.running_tasks().await?;
        self.report.insert(
            "memory".into(),
            json!({"idle_mb": idle_mb, "create_load_peak_mb": peak_mb, "running_tasks": running}),
        );
        self.rows.push(format!(
            "| memory | – | resident: idle {idle_mb:.1} MB, create load peak {peak_mb:.1} MB, {} running tasks {:.1} MB (gateway CPU {:.2} cores while polling them) | | | | | | | | |",
            self.options.running, running["rss_mb"].as_f64().unwrap_or(f64::NAN), running["gateway_cpu_cores"].as_f64().unwrap_or(f64::NAN)
        ));
        Ok(())
    }

    fn row(&mut self, scenario: &str, concurrency: usize, m: &Measured, floor: Option<&Measured>) {
        let (floor_text, overhead) = match floor {
            Some(f) => (
                format!("{:.2} / {:.2}", f.p50_ms, f.p99_ms),
                format!("{:.2} / {:.2}", m.p50_ms - f.p50_ms, m.p99_ms - f.p99_ms),
            ),
            None => ("–".into(), "–".into()),
        };
        let row = format!(
            "| {scenario} | {concurrency} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {floor_text} | {overhead} | {} | {:.2} |",
            m.rate(),
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.errors,
            cores(m.server_cpu),
            m.client_cpu
        );
        eprintln!("{row}");
        self.rows.push(row);
    }

    async fn create(&self, concurrency: usize) -> Measured {
        let (client, url, auth) =
            (self.client.clone(), format!("{}/api/v1/images/generations", self.gateway), self.auth());
        let body = seed_request();
        load::run(concurrency, self.options.measure, Some(self.gateway_pid), move |_, _| {
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
        load::run(concurrency, self.options.measure, Some(self.gateway_pid), move |worker, _| {
            let request = client.post(&url).header("authorization", &keys[worker % keys.len()]).json(&body).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    /// The same creates, as the gateway forwards them, straight to the fake upstream.
    async fn floor_create(&self, concurrency: usize) -> Measured {
        let (client, url) = (self.client.clone(), format!("{}/api/v1/jobs/createTask", self.upstream));
        let body = json!({"model": "seedream/4.5-text-to-image", "input": {"prompt": seed_request()["prompt"], "aspect_ratio": "16:9", "quality": "high"}});
        load::run(concurrency, self.options.measure, Some(self.upstream_pid), move |_, _| {
            let request = client.post(&url).header("authorization", "Bearer bench-upstream-key").json(&body).send();
            async move { load::ok(request.await).await }
        })
        .await
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
        load::run(concurrency, self.options.measure, Some(self.gateway_pid), move |worker, n| {
            let id = &ids[(worker * 7919 + n as usize) % ids.len()];
            let request = client.get(format!("{base}/api/v1/tasks/{id}")).header("authorization", &auth).send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    async fn floor_poll(&self, concurrency: usize) -> Measured {
        let (client, base) = (self.client.clone(), self.upstream.clone());
        load::run(concurrency, self.options.measure, Some(self.upstream_pid), move |worker, n| {
            let url = format!("{base}/api/v1/jobs/recordInfo?taskId=bench-{}", worker as u64 * 100_000 + n);
            let request = client.get(url).header("authorization", "Bearer bench-upstream-key").send();
            async move { load::ok(request.await).await }
        })
        .await
    }

    /// Create, then poll every 50 ms until the task is terminal: the latency is the time to result.
    async fn end_to_end(&self, concurrency: usize) -> Measured {
        let (client, base, auth) = (self.client.clone(), self.gateway.clone(), self.auth());
        let body = seed_request();
        load::run(concurrency, self.options.measure, Some(self.gateway_pid), move |_, _| {
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
            self.row(&format!("poll, {target} tasks in the table"), 16, &poll, None);
            self.row(&format!("create, {target} tasks in the table"), 16, &create, None);
            self.rows.push(format!("| engine claim query, {target} tasks | – | {claim} | | | | | | | | |"));
            sizes.push(json!({"tasks": target, "poll": poll.json(), "create": create.json(), "claim_query": claim}));
        }
        let ratio = |what: &str| {
            let p50 = |i: usize| sizes[i][what]["p50_ms"].as_f64().unwrap_or(f64::NAN);
            p50(1) / p50(0)
        };
        let (poll_ratio, create_ratio) = (ratio("poll"), ratio("create"));
        self.rows.push(format!(
            "| scale p50 ratio ({} / 10,000 tasks) | 16 | poll {poll_ratio:.2}, create {create_ratio:.2} | | | | | | | | |",
            self.options.rows
        ));
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
