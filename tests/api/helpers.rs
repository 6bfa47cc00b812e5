//! The test harness: one gateway per test, served in-process on a random port with fast engine
//! settings, on a fresh database of either backend (a PostgreSQL database cloned from a migrated
//! template, or a SQLite file); an HTTP client; a way to drive the engine without waiting; and the
//! ledger invariants of SPEC §2.3.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aio_gateway::app::Application;
use aio_gateway::audit::Actor;
use aio_gateway::config::{DatabaseSettings, ProviderKind, ProviderSettings, Role, Settings};
use aio_gateway::engine::Engine;
use aio_gateway::store::Db;
use aio_gateway::url_guard::SystemResolver;
use aio_gateway::webhooks::Webhooks;
use aio_gateway::{accounts, on_db, store};
use reqwest::dns::Resolve;
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, StatusCode};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::contract;
use crate::services::postgres_server;

pub fn models_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.toml"))
}

/// A task object's `credits` for one image of a model whose price rules do not apply: `price` per
/// image, its quote's breakdown the base and × 1.
pub fn plain_credits(price: i64, charged: i64, state: &str) -> Value {
    json!({"price": price, "charged": charged, "state": state,
           "breakdown": [{"step": "base", "credits": price}, {"step": "images", "n": 1, "credits": price}]})
}

/// The seed request of the spec (§2.1).
pub fn seed_request() -> Value {
    serde_json::json!({
        "model": "seedream/4.5-text-to-image",
        "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
        "aspect_ratio": "16:9",
        "quality": "high"
    })
}

/// A fresh, migrated PostgreSQL database (a copy of the template) that is dropped (with its
/// connections) when this is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// For the tests' own SQL.
    pub pool: PgPool,
    /// The same pool, as the gateway's storage functions take it.
    pub db: Db,
}

impl TestDatabase {
    pub async fn new(max_connections: u32) -> TestDatabase {
        let template = migrated_template();
        let name = format!("aio_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin =
            PgConnection::connect(&format!("{}/postgres", postgres_server())).await.expect("connect to PostgreSQL");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#).as_str())
            .await
            .expect("create the test database from the template");
        let _ = admin.close().await;
        let url = format!("{}/{name}", postgres_server());
        let settings = DatabaseSettings {
            url: url.clone(),
            max_connections: std::num::NonZeroU32::new(max_connections).unwrap(),
            acquire_timeout: Duration::from_secs(30),
        };
        let db = store::connect(&settings).await.expect("connect to the test database");
        let Db::Pg(pool) = db.clone() else { panic!("a postgres:// URL opens PostgreSQL") };
        TestDatabase { name, url, pool, db }
    }
}

/// The name of a database migrated with this checkout's PostgreSQL migrations, which each test's
/// database is copied from (`CREATE DATABASE … TEMPLATE`): migrating once per run, not per test. Named
/// by a hash of the migrations, so a changed migration gets a new template; built under an advisory
/// lock and published by a rename, so concurrent test binaries never see a half-migrated one.
fn migrated_template() -> String {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            // On this thread, so that a missing server fails the test with what to install.
            postgres_server();
            let mut hash = Sha256::new();
            let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .expect("read migrations/postgres")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            for file in files {
                hash.update(file.file_name().expect("a file name").as_encoded_bytes());
                hash.update(std::fs::read(&file).expect("read a migration"));
            }
            let digest = hash.finalize();
            let name = format!("aio_template_{}", digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>());
            // The caller's runtime cannot be blocked on: build it on a thread with its own.
            let template = name.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(create_template(&template));
            })
            .join()
            .expect("create the template database");
            name
        })
        .clone()
}

async fn create_template(name: &str) {
    const LOCK: i64 = 0x6169_6f5f_7465_7374; // "aio_test"
    let mut admin =
        PgConnection::connect(&format!("{}/postgres", postgres_server())).await.expect("connect to PostgreSQL");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK).execute(&mut admin).await.expect("lock");
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut admin)
        .await
        .expect("look");
    if exists.is_none() {
        let building = format!("{name}_building");
        admin.execute(format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#).as_str()).await.expect("drop");
        let url = format!("{}/{building}", postgres_server());
        let settings = DatabaseSettings {
            url,
            max_connections: std::num::NonZeroU32::MIN,
            acquire_timeout: Duration::from_secs(30),
        };
        let db = store::connect(&settings).await.expect("create the template database");
        store::migrate(&db).await.expect("migrate the template database");
        on_db!(&db, pool => pool.close().await);
        admin.execute(format!(r#"ALTER DATABASE "{building}" RENAME TO "{name}""#).as_str()).await.expect("rename");
    }
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK).execute(&mut admin).await.expect("unlock");
    let _ = admin.close().await;
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = format!("{}/postgres", postgres_server());
        let statement = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its own.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut connection) = PgConnection::connect(&admin_url).await {
                    let _ = connection.execute(statement.as_str()).await;
                    let _ = connection.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Settings for a test gateway: random port, the repository's catalog, the simulated provider with a
/// 200 ms delay, and an engine that ticks every 50 ms.
pub fn test_settings(database_url: &str, files_dir: PathBuf) -> Settings {
    let mut settings = Settings::default();
    settings.server.listen = ([127, 0, 0, 1], 0).into();
    settings.server.public_base_url = String::new();
    // The node name routes served by this gateway itself report (tests/api/catalog.rs reads the default).
    settings.server.node_name = "test-gateway".into();
    settings.server.role = Role::All;
    settings.database.url = database_url.to_owned();
    settings.database.max_connections = std::num::NonZeroU32::new(10).unwrap();
    settings.catalog.models_path = models_path();
    settings.files.dir = files_dir;
    settings.bootstrap.enabled = false;
    // Provider tests assert the fakes' own result URLs; the rehosting tests turn copying on.
    settings.results.rehost = false;
    settings.tasks.tick = Duration::from_millis(50);
    settings.tasks.poll_initial = Duration::from_millis(50);
    // No wait between polls above this: the models' runtimes (seconds) would slow every test down.
    settings.tasks.poll_max = Duration::from_millis(200);
    settings.tasks.retry_initial = Duration::from_millis(50);
    settings.tasks.lease = Duration::from_secs(2);
    settings.tasks.dispatch_wait = Duration::from_millis(2000);
    // Polling loops would trip the per-key limit; the rate-limit tests set their own.
    settings.rate_limit.requests_per_minute = std::num::NonZeroU32::new(1_000_000).unwrap();
    settings.rate_limit.burst = std::num::NonZeroU32::new(100_000).unwrap();
    settings.rate_limit.account_requests_per_minute = std::num::NonZeroU32::new(1_000_000).unwrap();
    let simulated = ProviderSettings {
        label: Some("Simulated".into()),
        delay: Some(Duration::from_millis(200)),
        ..ProviderSettings::new(ProviderKind::Simulated)
    };
    // The shipped real providers, inactive (no key) unless a test points one at its fake.
    let kie = ProviderSettings {
        label: Some("KIE".into()),
        base_url: Some("http://127.0.0.1:9".into()),
        api_key_env: Some("AIO_TEST_UNSET_KIE_KEY".into()),
        ..ProviderSettings::new(ProviderKind::Kie)
    };
    settings.providers = BTreeMap::from([("simulated".to_string(), simulated), ("kie".to_string(), kie)]);
    settings
}

pub struct TestApp {
    /// `http://127.0.0.1:{port}`
    pub address: String,
    /// The app's database (the same pool the app uses); [`TestApp::pool`] for PostgreSQL's own SQL.
    pub db: Db,
    /// Checks every answer of the gateway against its OpenAPI document ([`crate::contract`]).
    pub client: ClientWithMiddleware,
    pub shutdown: CancellationToken,
    /// The app's engine and webhook queue, for [`TestApp::run_pending`].
    engine: Arc<Engine>,
    webhooks: Arc<Webhooks>,
    /// What [`TestApp::restart`] builds the next gateway from.
    settings: Settings,
    resolver: Arc<dyn Resolve>,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Options only so that `restart` and `stop` can hand them on; dropped after the server was told to stop.
    files: Option<TempDir>,
    store: Option<TestStore>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A change to a test gateway's settings.
type Configure<'a> = Box<dyn FnOnce(&mut Settings) + 'a>;

/// How a test gateway is started: the one way, through [`TestApp::builder`] (the `spawn_app*`
/// functions are its common shapes).
pub struct AppBuilder<'a> {
    backend: Backend,
    resolver: Arc<dyn Resolve>,
    driven: bool,
    configure: Vec<Configure<'a>>,
}

impl TestApp {
    pub fn builder<'a>() -> AppBuilder<'a> {
        AppBuilder { backend: Backend::Postgres, resolver: Arc::new(SystemResolver), driven: false, configure: vec![] }
    }
}

impl<'a> AppBuilder<'a> {
    /// The storage backend (PostgreSQL unless set).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The resolver outbound requests look host names up with.
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Only `tests/api/catalogs/{file}` (a catalog that routes only to one provider).
    pub fn catalog(self, file: &str) -> Self {
        let path = catalog(file);
        self.configure(move |settings| settings.catalog.models_path = path)
    }

    /// No engine or webhook loop runs (the API role): the test drives them with
    /// [`TestApp::run_pending`], and [`TestApp::wait_terminal`] does so instead of waiting.
    pub fn driven(mut self) -> Self {
        self.driven = true;
        self
    }

    /// Changes the settings before the app is built (applied in the order given).
    pub fn configure(mut self, configure: impl FnOnce(&mut Settings) + 'a) -> Self {
        self.configure.push(Box::new(configure));
        self
    }

    pub async fn spawn(self) -> TestApp {
        let mut settings = test_settings("postgres://unused", PathBuf::new());
        for configure in self.configure {
            configure(&mut settings);
        }
        if self.driven {
            settings.server.role = Role::Api;
        }
        settings.validate().expect("test settings are valid");
        let store = TestStore::new(self.backend, settings.database.max_connections.get()).await;
        TestApp::start(settings, self.resolver, store, None).await
    }
}

pub async fn spawn_app() -> TestApp {
    TestApp::builder().spawn().await
}

/// A catalog file under `tests/api/catalogs`.
pub fn catalog(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/catalogs").join(file)
}

/// An app whose catalog is `tests/api/catalogs/{catalog_file}` (one that routes only to provider X),
/// with `configure` pointing provider X at its fake.
pub async fn spawn_app_only_on(catalog_file: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::builder().configure(configure).catalog(catalog_file).spawn().await
}

/// Like [`spawn_app`], with `configure` applied to the settings before the app is built.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::builder().configure(configure).spawn().await
}

/// Like [`spawn_app_with`], on the given backend.
pub async fn spawn_app_on(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::builder().backend(backend).configure(configure).spawn().await
}

impl TestApp {
    /// A gateway with `settings` on `store` (its URL replaces the settings' database URL), with
    /// `files` as its file store (a new folder when none).
    async fn start(
        mut settings: Settings,
        resolver: Arc<dyn Resolve>,
        store: TestStore,
        files: Option<TempDir>,
    ) -> TestApp {
        let files = files.unwrap_or_else(|| tempfile::tempdir().expect("create a files directory"));
        settings.database.url = store.url.clone();
        settings.files.dir = files.path().to_path_buf();
        let db = store.db.clone();
        let application = Application::build_with_resolver(settings.clone(), db.clone(), Arc::clone(&resolver))
            .await
            .expect("build the application");
        let port = application.port();
        let state = application.state();
        let (engine, webhooks) = (Arc::clone(&state.engine), Arc::clone(&state.webhooks));
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(application.run(shutdown.clone()));

        let address = format!("http://127.0.0.1:{port}");
        TestApp {
            client: contract::checked(http_client(), &address),
            address,
            db,
            shutdown,
            engine,
            webhooks,
            settings,
            resolver,
            running: Some(running),
            files: Some(files),
            store: Some(store),
        }
    }

    /// A gateway on `store` (any backend), e.g. one a test filled or another gateway left.
    pub async fn serve(store: TestStore, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = test_settings(&store.url, PathBuf::new());
        configure(&mut settings);
        TestApp::start(settings, Arc::new(SystemResolver), store, None).await
    }

    /// The app's PostgreSQL pool, for the tests' own SQL (the app runs on PostgreSQL unless a test
    /// asked for SQLite).
    pub fn pool(&self) -> &PgPool {
        match &self.db {
            Db::Pg(pool) => pool,
            Db::Sqlite(_) => panic!("this app runs on SQLite: use app.db"),
        }
    }

    /// Stops the gateway as SIGTERM does (and waits until it has stopped); returns its database.
    pub async fn stop(mut self) -> TestStore {
        self.stop_serving().await;
        self.store.take().expect("the app's database")
    }

    async fn stop_serving(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.expect("the gateway task").expect("the gateway stops cleanly");
        }
    }

    /// Works off everything the engine and the webhook queue have due, until nothing is.
    pub async fn run_pending(&self) {
        loop {
            let steps = self.engine.run_pending().await.expect("run the engine");
            let attempts = self.webhooks.run_pending().await.expect("run the webhook queue");
            if steps + attempts == 0 {
                return;
            }
        }
    }

    /// Makes every scheduled task and webhook delivery due now, as if its wait had passed, and the
    /// simulated provider's jobs finish now.
    pub async fn advance(&self) {
        let now = self.db.dialect().now();
        for statement in [
            format!("UPDATE tasks SET next_poll_at = {now} WHERE status IN ('pending', 'running')"),
            format!("UPDATE simulated_jobs SET due_at = {now}"),
            format!("UPDATE webhook_deliveries SET next_attempt_at = {now} WHERE status = 'pending'"),
        ] {
            on_db!(&self.db, pool => sqlx::query(&statement).execute(pool).await.map(|_| ()))
                .expect("advance the clock");
        }
    }

    /// The folder of the app's local file store.
    pub fn files_dir(&self) -> &Path {
        &self.settings.files.dir
    }

    /// The app's file store as another replica on the same database would build it: the same
    /// settings, and the link key from the database.
    pub async fn file_store(&self) -> aio_gateway::files::FileStore {
        let key = aio_gateway::files::link_key(&self.db).await.expect("the link key");
        aio_gateway::files::FileStore::from_settings(&self.settings.files, &self.address, key).expect("the file store")
    }

    /// Whether no engine or webhook loop runs: the test drives them ([`AppBuilder::driven`]).
    pub fn is_driven(&self) -> bool {
        !self.settings.server.role.runs_engine()
    }

    /// Drives a [`AppBuilder::driven`] app until no task is unfinished and no delivery pending: each
    /// round works off what is due, then makes the rest due. The 30 s bound only stops a hang.
    pub async fn settle_all(&self) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.run_pending().await;
            let (open,): (i64,) = on_db!(&self.db, pool => sqlx::query_as(
                "SELECT (SELECT count(*) FROM tasks WHERE status IN ('queued', 'pending', 'running'))
                      + (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')",
            )
            .fetch_one(pool)
            .await)
            .expect("count unfinished work");
            if open == 0 {
                return;
            }
            assert!(tokio::time::Instant::now() < give_up, "{open} tasks or deliveries never finished");
            self.advance().await;
        }
    }

    /// Drives a [`AppBuilder::driven`] app's engine until the task is terminal: each round makes
    /// everything due and works it off, so a fake that answers `running` N times takes N rounds.
    /// The 30 s bound only keeps a broken engine from hanging the suite.
    async fn drive_until_terminal(&self, key: &str, task_id: &str) -> Value {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.run_pending().await;
            let task = self.get_task(key, task_id).await;
            if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return task;
            }
            assert!(tokio::time::Instant::now() < give_up, "task {task_id} did not finish: {task}");
            self.advance().await;
        }
    }
}

/// A local file store for domain calls that need one only to sign links (no file is written).
pub fn test_files() -> aio_gateway::files::FileStore {
    let dir = std::env::temp_dir().join("aio-test-files");
    aio_gateway::files::FileStore::new(dir, "http://127.0.0.1:1").expect("a file store")
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build the HTTP client")
}

/// A request of either client: a [`TestApp`]'s, which checks the answer against the OpenAPI document,
/// or a plain one (for gateway processes).
#[allow(async_fn_in_trait)]
pub trait Answer {
    async fn answer(self) -> Response;
}

impl Answer for reqwest::RequestBuilder {
    async fn answer(self) -> Response {
        self.send().await.expect("send the request")
    }
}

impl Answer for reqwest_middleware::RequestBuilder {
    async fn answer(self) -> Response {
        self.send().await.expect("send the request")
    }
}

/// Sends `request` and reads its answer as JSON, whatever the status.
pub async fn json_of(request: impl Answer) -> Value {
    request.answer().await.json().await.expect("a JSON answer")
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

impl TestApp {
    pub fn database_url(&self) -> &str {
        self.store.as_ref().map_or("", |store| store.url.as_str())
    }

    /// Shuts this gateway down the way SIGTERM does (and waits until it has stopped), then starts a
    /// new one with the same settings on the same database and files.
    pub async fn restart(mut self) -> TestApp {
        self.stop_serving().await;
        let files = self.files.take();
        let store = self.store.take().expect("the app's database");
        TestApp::start(self.settings.clone(), Arc::clone(&self.resolver), store, files).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A new account holding `credits`, and an API key for it.
    pub async fn new_account(&self, credits: i64) -> (i64, String) {
        new_account_on(&self.db, credits).await
    }

    pub async fn create(&self, key: &str, body: Value) -> Response {
        self.client
            .post(self.url("/api/v1/images/generations"))
            .header(AUTHORIZATION, bearer(key))
            .json(&body)
            .send()
            .await
            .expect("POST /api/v1/images/generations")
    }

    /// A create with a raw body and content type (or none).
    pub async fn create_raw(&self, key: &str, content_type: Option<&str>, body: impl Into<reqwest::Body>) -> Response {
        let mut request =
            self.client.post(self.url("/api/v1/images/generations")).header(AUTHORIZATION, bearer(key)).body(body);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        request.send().await.expect("POST /api/v1/images/generations")
    }

    /// A create that must answer 200; returns the task object.
    pub async fn create_ok(&self, key: &str, body: Value) -> Value {
        let response = self.create(key, body.clone()).await;
        let status = response.status();
        let task: Value = response.json().await.expect("create answers JSON");
        assert_eq!(status, StatusCode::OK, "create {body} answered {task}");
        task
    }

    pub async fn get(&self, key: &str, path: &str) -> Response {
        self.client.get(self.url(path)).header(AUTHORIZATION, bearer(key)).send().await.expect("GET")
    }

    /// `GET path` with a key, expecting 200 and JSON.
    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        let response = self.get(key, path).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::OK, "GET {path} answered {body}");
        body
    }

    pub async fn get_task(&self, key: &str, task_id: &str) -> Value {
        self.get_json(key, &format!("/api/v1/tasks/{task_id}")).await
    }

    /// Polls the task every 50 ms until it has ended (a driven app: drives it there).
    /// The 30 s bound only keeps a
    /// broken engine from hanging the suite; it is not a timing assertion.
    pub async fn wait_terminal(&self, key: &str, task_id: &str) -> Value {
        if self.is_driven() {
            return self.drive_until_terminal(key, task_id).await;
        }
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let task = self.get_task(key, task_id).await;
            if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return task;
            }
            assert!(tokio::time::Instant::now() < give_up, "task {task_id} did not finish: {task}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn credits(&self, key: &str) -> Value {
        self.get_json(key, "/api/v1/billing/credits").await
    }

    /// The account's balance and held credits, as billing reports them, must be these.
    pub async fn assert_balance(&self, key: &str, balance: i64, held: i64) {
        let credits = self.credits(key).await;
        assert_eq!((credits["balance"].as_i64(), credits["held"].as_i64()), (Some(balance), Some(held)), "{credits}");
    }

    /// The kinds of the account's ledger entries, oldest first.
    pub async fn ledger_kinds(&self, account_id: i64) -> Vec<String> {
        ledger_of(self.pool(), account_id).await.into_iter().map(|entry| entry.0).collect()
    }

    pub async fn count_tasks(&self) -> i64 {
        let (count,): (i64,) =
            on_db!(&self.db, pool => sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(pool).await)
                .expect("count tasks");
        count
    }
}

pub async fn new_account(pool: &PgPool, credits: i64) -> (i64, String) {
    new_account_on(&Db::Pg(pool.clone()), credits).await
}

/// [`new_account`] on either backend.
pub async fn new_account_on(db: &Db, credits: i64) -> (i64, String) {
    let account_id = accounts::create(db, &Actor::cli(), "test", credits).await.expect("create an account");
    let key = accounts::create_key(db, &Actor::cli(), account_id, Some("test"), None).await.expect("create a key");
    (account_id, key.api_key)
}

/// Asserts the error envelope of SPEC §3 and returns `(code, message)`.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> (String, String) {
    let actual = response.status();
    let headers: HeaderMap = response.headers().clone();
    let text = response.text().await.expect("error body");
    assert_eq!(actual, status, "expected {status} {code}, got {actual}: {text}");
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "error content-type {content_type:?}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let error = &body["error"];
    assert_eq!(error["code"], code, "error code in {body}");
    let message = error["message"].as_str().unwrap_or_else(|| panic!("no error.message in {body}")).to_owned();
    assert!(!message.is_empty(), "empty error.message in {body}");
    let request_id = error["request_id"].as_str().unwrap_or_else(|| panic!("no error.request_id in {body}"));
    let header_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    assert_eq!(Some(request_id), header_id, "error.request_id matches the x-request-id header in {body}");
    assert!(!request_id.is_empty(), "empty request id in {body}");
    (code.to_owned(), message)
}

/// One task and the sums of its ledger rows, by kind.
#[derive(sqlx::FromRow)]
struct TaskSettlement {
    id: String,
    status: String,
    price: i64,
    charged: i64,
    holds: i64,
    captures: i64,
    releases: i64,
    hold: i64,
    capture: i64,
    release: i64,
    foreign_rows: i64,
}

/// The ledger invariants of SPEC §2.3, over every account and task in the database:
/// balance = sum of ledger amounts ≥ 0; held = the prices of unfinished tasks; every task has exactly
/// one hold (−price), then after success exactly one capture (0) and, when fewer images were delivered
/// than asked for, one release of the rest (price − charged), after failure exactly
/// one release (+price) and no capture, and while unfinished neither; each ledger row's
/// `balance_after` is the running sum of its account's amounts.
pub async fn assert_ledger_consistent(pool: &PgPool) {
    assert_ledger_consistent_on(&Db::Pg(pool.clone())).await
}

/// [`assert_ledger_consistent`] on either backend (the SQL is the same on both).
pub async fn assert_ledger_consistent_on(db: &Db) {
    let accounts: Vec<(i64, i64, i64, i64, i64)> = on_db!(db, pool => sqlx::query_as(
        "SELECT a.id, a.balance, a.held,
                CAST(COALESCE((SELECT SUM(l.amount) FROM ledger l WHERE l.account_id = a.id), 0) AS BIGINT),
                CAST(COALESCE((SELECT SUM(t.price) FROM tasks t
                               WHERE t.account_id = a.id AND t.status IN ('queued', 'pending', 'running')), 0) AS BIGINT)
         FROM accounts a ORDER BY a.id",
    )
    .fetch_all(pool)
    .await)
    .expect("read accounts");
    for (id, balance, held, ledger_sum, open_prices) in accounts {
        assert!(balance >= 0, "account {id}: balance {balance} is negative");
        assert_eq!(balance, ledger_sum, "account {id}: balance {balance} != sum of its ledger {ledger_sum}");
        assert_eq!(held, open_prices, "account {id}: held {held} != prices of its unfinished tasks {open_prices}");
    }

    let tasks: Vec<TaskSettlement> = on_db!(db, pool => sqlx::query_as(
        "SELECT t.id, t.status, t.price,
                CAST(COALESCE(t.charged, CASE WHEN t.status = 'succeeded' THEN t.price ELSE 0 END) AS BIGINT) AS charged,
                COUNT(l.id) FILTER (WHERE l.kind = 'hold') AS holds,
                COUNT(l.id) FILTER (WHERE l.kind = 'capture') AS captures,
                COUNT(l.id) FILTER (WHERE l.kind = 'release') AS releases,
                CAST(COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'hold'), 0) AS BIGINT) AS hold,
                CAST(COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'capture'), 0) AS BIGINT) AS capture,
                CAST(COALESCE(SUM(l.amount) FILTER (WHERE l.kind = 'release'), 0) AS BIGINT) AS release,
                COUNT(l.id) FILTER (WHERE l.account_id <> t.account_id
                                       OR l.kind NOT IN ('hold', 'capture', 'release')) AS foreign_rows
         FROM tasks t LEFT JOIN ledger l ON l.task_id = t.id
         GROUP BY t.id, t.status, t.price, t.charged ORDER BY t.id",
    )
    .fetch_all(pool)
    .await)
    .expect("read tasks and their ledger rows");
    for TaskSettlement {
        id,
        status,
        price,
        charged,
        holds,
        captures,
        releases,
        hold,
        capture,
        release,
        foreign_rows,
    } in tasks
    {
        assert_eq!(holds, 1, "task {id} ({status}): {holds} holds");
        assert_eq!(hold, -price, "task {id}: hold amount {hold}, price {price}");
        assert_eq!(foreign_rows, 0, "task {id}: ledger rows of another account or kind");
        match status.as_str() {
            // Charged per image delivered: a capture of what was charged, a release of the rest.
            "succeeded" => {
                assert!((0..=price).contains(&charged), "task {id}: charged {charged} of {price}");
                let expected = (i64::from(charged > 0), i64::from(charged < price || charged == 0));
                assert_eq!(
                    (captures, releases),
                    expected,
                    "task {id} succeeded, charged {charged} of {price}: {captures} captures, {releases} releases"
                );
                assert_eq!(capture, 0, "task {id}: capture amount {capture}");
                assert_eq!(
                    release,
                    price - charged,
                    "task {id}: release amount {release}, charged {charged} of {price}"
                );
            }
            "failed" | "cancelled" => {
                assert_eq!(
                    (captures, releases),
                    (0, 1),
                    "task {id} {status}: {captures} captures, {releases} releases"
                );
                assert_eq!(release, price, "task {id}: release amount {release}, price {price}");
                assert_eq!(charged, 0, "task {id} {status}: charged {charged}");
            }
            "queued" | "pending" | "running" => {
                assert_eq!((captures, releases), (0, 0), "task {id} {status}: settled while unfinished");
            }
            other => panic!("task {id}: unknown status {other}"),
        }
    }

    let broken: Vec<(i64, i64, i64, i64)> = on_db!(db, pool => sqlx::query_as(
        "SELECT id, account_id, balance_after, running FROM (
             SELECT id, account_id, balance_after,
                    CAST(SUM(amount) OVER (PARTITION BY account_id ORDER BY id) AS BIGINT) AS running
             FROM ledger) entries
         WHERE balance_after <> running",
    )
    .fetch_all(pool)
    .await)
    .expect("read the ledger");
    assert!(
        broken.is_empty(),
        "ledger rows whose balance_after is not the running sum (id, account, after, sum): {broken:?}"
    );

    let orphans: Vec<(i64,)> = on_db!(db, pool => sqlx::query_as(
        "SELECT id FROM ledger WHERE kind IN ('hold', 'capture', 'release') AND task_id IS NULL
            OR kind NOT IN ('hold', 'capture', 'release') AND task_id IS NOT NULL",
    )
    .fetch_all(pool)
    .await)
    .expect("read the ledger");
    assert!(orphans.is_empty(), "ledger rows with a wrong task link: {orphans:?}");
}

/// Waits until every task in the database is `succeeded` or `failed`. The 60 s bound only keeps a
/// broken engine from hanging the suite.
pub async fn wait_all_terminal(pool: &PgPool) {
    wait_all_terminal_on(&Db::Pg(pool.clone())).await
}

/// [`wait_all_terminal`] on either backend.
pub async fn wait_all_terminal_on(db: &Db) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open: Vec<(String, String)> = on_db!(db, pool => sqlx::query_as(
            "SELECT id, status FROM tasks WHERE status IN ('queued', 'pending', 'running') ORDER BY id",
        )
        .fetch_all(pool)
        .await)
        .expect("read tasks");
        if open.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < give_up, "tasks never finished: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ledger of one account, oldest first: `(kind, amount, task_id)`.
pub async fn ledger_of(pool: &PgPool, account_id: i64) -> Vec<(String, i64, Option<String>)> {
    sqlx::query_as("SELECT kind, amount, task_id FROM ledger WHERE account_id = $1 ORDER BY id")
        .bind(account_id)
        .fetch_all(pool)
        .await
        .expect("read the ledger")
}

/// The environment variable that holds the tests' HS256 secret (`auth.jwt.secret_env`).
pub const JWT_SECRET_ENV: &str = "AIO_TEST_JWT_SECRET";
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";

/// Sets the tests' HS256 secret in this process's environment, once, before any app reads it.
pub fn jwt_secret() -> &'static str {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var(JWT_SECRET_ENV, JWT_SECRET));
    JWT_SECRET
}

/// A gateway whose dashboard and admin routes take HS256 tokens signed with [`JWT_SECRET`].
pub async fn spawn_dashboard_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    jwt_secret();
    spawn_app_with(|settings| {
        settings.auth.jwt.algorithm = aio_gateway::config::JwtAlgorithm::Hs256;
        settings.auth.jwt.secret_env = JWT_SECRET_ENV.into();
        configure(settings);
    })
    .await
}

/// An HS256 session token for `account_id` with `role`, as `token mint` makes them.
pub fn session_token(account_id: i64, role: aio_gateway::jwt::Role) -> String {
    let mut settings = aio_gateway::config::JwtSettings::default();
    jwt_secret();
    settings.secret_env = JWT_SECRET_ENV.into();
    aio_gateway::jwt::mint(&settings, account_id, role, Duration::from_secs(3600)).expect("mint a token")
}

impl TestApp {
    /// A request with a bearer token (API key or session token).
    pub fn with_bearer(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest_middleware::RequestBuilder {
        self.client.request(method, self.url(path)).header(AUTHORIZATION, bearer(token))
    }
}

/// A gateway process, killed (SIGKILL) and reaped when dropped, so a failing assertion never leaves
/// one behind.
pub struct Gateway {
    pub child: Child,
    pub address: String,
}

impl Gateway {
    pub fn start(database_url: &str, files_dir: &Path, log: &Path, role: &str) -> Gateway {
        Gateway::start_with(database_url, files_dir, log, role, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables (set last, so they win).
    pub fn start_with(database_url: &str, files_dir: &Path, log: &Path, role: &str, env: &[(&str, &str)]) -> Gateway {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("find a free port");
            probe.local_addr().expect("probe address").port()
        };
        let log = File::create(log).expect("create the log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_aio-gateway"));
        for (name, _) in std::env::vars() {
            if name.starts_with("AIO__") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"))
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("AIO__DATABASE__MAX_CONNECTIONS", "5")
            .env("AIO__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("AIO__SERVER__ROLE", role)
            .env("AIO__BOOTSTRAP__ENABLED", "false")
            .env("AIO__CATALOG__MODELS_PATH", models_path())
            .env("AIO__FILES__DIR", files_dir)
            .env("AIO__TASKS__LEASE_SECS", "2")
            .env("AIO__TASKS__TICK_MS", "100")
            .env("AIO__TASKS__POLL_INITIAL_MS", "100")
            .env("AIO__TASKS__POLL_MAX_MS", "1000")
            .env("AIO__TASKS__RETRY_INITIAL_MS", "100")
            .env("AIO__PROVIDERS__SIMULATED__DELAY_MS", "3000")
            .env("AIO__LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start the gateway binary");
        Gateway { child, address: format!("http://127.0.0.1:{port}") }
    }

    /// Waits until `/healthz` answers (the 30 s bound only stops a hang).
    pub async fn ready(&mut self, client: &reqwest::Client) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("{}/healthz", self.address)).send().await {
                if response.status() == StatusCode::OK {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the gateway exited early with {status}");
            }
            assert!(tokio::time::Instant::now() < give_up, "the gateway at {} never became ready", self.address);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no graceful shutdown, no chance to release leases or finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Creates a task with `prompt`; returns its id.
    pub async fn create(&self, client: &reqwest::Client, key: &str, prompt: &str) -> String {
        let response = client
            .post(format!("{}/api/v1/images/generations", self.address))
            .header(AUTHORIZATION, bearer(key))
            .json(&json!({"prompt": prompt}))
            .send()
            .await
            .expect("POST /api/v1/images/generations");
        let status = response.status();
        let task: Value = response.json().await.expect("task JSON");
        assert_eq!(status, StatusCode::OK, "create answered {task}");
        task["task_id"].as_str().expect("task_id").to_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestApp {
    /// Creates the seed request and waits until it is terminal.
    pub async fn run_seed(&self, key: &str) -> Value {
        let task = self.create_ok(key, seed_request()).await;
        self.wait_terminal(key, task["task_id"].as_str().expect("task id")).await
    }

    /// Creates the seed request and waits until the provider accepted it; returns the task id.
    pub async fn running_seed_task(&self, key: &str) -> String {
        let task = self.create_ok(key, seed_request()).await;
        let task_id = task["task_id"].as_str().expect("task_id").to_owned();
        if self.is_driven() {
            self.run_pending().await;
        }
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.get_task(key, &task_id).await["status"] != "running" {
            assert!(tokio::time::Instant::now() < give_up, "task {task_id} never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task_id
    }
}

/// The two storage backends, for tests that run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh, migrated database of either backend: a PostgreSQL database of its own, or a SQLite file in
/// a temporary folder. Dropped (database or folder) with this.
pub struct TestStore {
    pub db: Db,
    pub url: String,
    _postgres: Option<TestDatabase>,
    _folder: Option<TempDir>,
}

impl TestStore {
    pub async fn new(backend: Backend, max_connections: u32) -> TestStore {
        match backend {
            Backend::Postgres => {
                let database = TestDatabase::new(max_connections).await;
                TestStore {
                    db: database.db.clone(),
                    url: database.url.clone(),
                    _postgres: Some(database),
                    _folder: None,
                }
            }
            Backend::Sqlite => {
                let folder = tempfile::tempdir().expect("create a folder for the SQLite database");
                // A folder that does not exist yet: connecting creates it.
                let url = format!("sqlite://{}", folder.path().join("data").join("gateway.db").display());
                let settings = aio_gateway::config::DatabaseSettings {
                    url: url.clone(),
                    max_connections: std::num::NonZeroU32::new(max_connections).unwrap(),
                    acquire_timeout: Duration::from_secs(30),
                };
                let db = store::connect(&settings).await.expect("open (and create) the SQLite database");
                store::migrate(&db).await.expect("migrate the SQLite database");
                TestStore { db, url, _postgres: None, _folder: Some(folder) }
            }
        }
    }
}
