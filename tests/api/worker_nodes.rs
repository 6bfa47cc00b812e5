//! Worker nodes: an edge gateway forwards tasks to backend nodes, each a real `aio-gateway` process
//! with its own database, serving them with its simulated provider. The edge is in-process (or a
//! process too, where the test kills it); the node charges the edge's account, the edge its client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aio_gateway::config::{ProviderKind, ProviderSettings};
use aio_gateway::webhooks::{secrets, signing};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::Notify;

use crate::fakes::{post_callback, webhook_headers, Server};
use crate::helpers::{
    assert_error, assert_ledger_consistent, http_client, new_account, seed_request, spawn_app_with, Gateway, TestApp,
    TestDatabase,
};

/// A backend node: a gateway process on its own database, and the edge's account on it.
struct Node {
    gateway: Gateway,
    db: TestDatabase,
    dir: TempDir,
    account_id: i64,
    /// The edge's API key on the node.
    key: String,
    /// The node account's webhook secret, which signs the node's callbacks to the edge.
    secret: String,
}

impl Node {
    /// A node whose account for the edge holds `credits`. It may call back to 127.0.0.1 over http.
    async fn start(credits: i64) -> Node {
        let db = TestDatabase::new(5).await;
        let (account_id, key) = new_account(&db.pool, credits).await;
        let secret = secrets::signing(&db.db, account_id).await.expect("the node account's webhook secret").current;
        let dir = tempfile::tempdir().expect("a node directory");
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).expect("the node's files directory");
        let env = [
            ("AIO__WEBHOOKS__ALLOW_HTTP", "true"),
            ("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8"),
            ("AIO__PROVIDERS__SIMULATED__DELAY_MS", "300"),
        ];
        let mut gateway = Gateway::start_with(&db.url, &files, &dir.path().join("node.log"), "all", &env);
        gateway.ready(&http_client()).await;
        Node { gateway, db, dir, account_id, key, secret }
    }

    /// The node's tasks, oldest first: `(id, status, callback_url)`.
    async fn tasks(&self) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as("SELECT id, status, callback_url FROM tasks ORDER BY created_at")
            .fetch_all(&self.db.pool)
            .await
            .expect("the node's tasks")
    }

    /// The node's first task, once it has one (the 30 s bound only stops a hang).
    async fn first_task(&self) -> (String, String, Option<String>) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(task) = self.tasks().await.into_iter().next() {
                return task;
            }
            assert!(tokio::time::Instant::now() < give_up, "the node never got a task:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The edge account's balance on the node.
    async fn balance(&self) -> i64 {
        let (balance,): (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE id = $1")
            .bind(self.account_id)
            .fetch_one(&self.db.pool)
            .await
            .expect("the edge account on the node");
        balance
    }

    /// The node's Idempotency-Keys with their tasks.
    async fn idempotency_keys(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT key, task_id FROM idempotency_keys ORDER BY created_at")
            .fetch_all(&self.db.pool)
            .await
            .expect("the node's idempotency keys")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// A worker provider forwarding to `node` (none: configured but inactive), shown as `node_label`.
/// Polling only once an hour, so that within a test only the node's callback can end a task.
fn worker(node: Option<&Node>, node_label: &str) -> ProviderSettings {
    ProviderSettings {
        label: Some("Seedream node".into()),
        base_url: Some(node.map_or_else(|| "http://127.0.0.1:9".to_owned(), |n| n.gateway.address.clone())),
        api_key_env: Some("AIO_TEST_NODE_KEY".into()),
        api_key: node.map(|n| n.key.clone().into()),
        webhook_hmac_key: node.map(|n| n.secret.clone().into()),
        node_label: Some(node_label.into()),
        callback_poll: std::time::Duration::from_secs(3600),
        timeout: std::time::Duration::from_secs(10),
        ..ProviderSettings::new(ProviderKind::Worker)
    }
}

/// The shipped edge catalog: Seedream routes to `node30`, then `node31`.
fn edge_catalog() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/models.edge.toml"))
}

/// An in-process edge on the shipped edge catalog, with `node30` forwarding to `node_a` and `node31`
/// to `node_b`; with `rehost`, it copies the nodes' result images (as shipped).
async fn spawn_edge(node_a: Option<&Node>, node_b: Option<&Node>, rehost: bool) -> TestApp {
    spawn_app_with(|settings| {
        settings.results.rehost = rehost;
        settings.catalog.models_path = edge_catalog();
        settings.providers.insert("node30".into(), worker(node_a, "node30"));
        settings.providers.insert("node31".into(), worker(node_b, "node31"));
    })
    .await
}

async fn edge_column<T>(edge_pool: &sqlx::PgPool, column: &str, task_id: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let (value,): (T,) = sqlx::query_as(&format!("SELECT {column} FROM tasks WHERE id = $1"))
        .bind(task_id)
        .fetch_one(edge_pool)
        .await
        .expect("the edge task");
    value
}

#[tokio::test]
async fn the_seed_request_completes_through_a_node_called_back_with_a_verified_signature() {
    let node = Node::start(100).await;
    let edge = spawn_edge(Some(&node), None, true).await;

    // The catalog names the node behind each route; node31 is inactive, so it is not listed.
    let models: Value =
        edge.client.get(edge.url("/api/v1/models")).send().await.expect("models").json().await.expect("JSON");
    assert_eq!(
        models["data"][0]["routes"],
        json!([{"provider_label": "Seedream node", "simulated": false, "backend_node": "node30"}]),
        "{models}"
    );
    assert_eq!(models["data"][0]["lowest_cost_route"]["backend_node"], "node30", "{models}");
    // The node is one provider source of the edge.
    assert_eq!(models["endpoint_summary"]["sources"], 1, "{models}");
    assert!(!models.to_string().contains(&node.gateway.address), "node URLs are never shown: {models}");

    let (_, key) = edge.new_account(50).await;
    let task = edge.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().expect("task_id");
    let done = edge.wait_terminal(&key, task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}\nnode log:\n{}", node.log());
    let url = done["output"]["images"][0]["url"].as_str().expect("image url");
    // Rehosted by the edge from the node's own address, which the outbound guard alone would refuse
    // (plain http on loopback): the client gets the edge's copy, byte for byte the node's image.
    assert!(url.starts_with(&edge.url("/files/")), "the edge's copy: {url}");
    let copy = edge.client.get(url).send().await.expect("GET the image");
    assert_eq!(copy.status(), StatusCode::OK);
    let copy = copy.bytes().await.expect("the copy");

    // One task on the node, with the same input, and the edge's callback URL for this task.
    let node_tasks = node.tasks().await;
    assert_eq!(node_tasks.len(), 1, "{node_tasks:?}");
    let (node_task_id, status, callback_url) = &node_tasks[0];
    assert_eq!(status, "succeeded");
    let on_node: Value = edge
        .client
        .get(format!("{}/api/v1/tasks/{node_task_id}", node.gateway.address))
        .bearer_auth(&node.key)
        .send()
        .await
        .expect("GET the node's task")
        .json()
        .await
        .expect("task JSON");
    let original = on_node["output"]["images"][0]["url"].as_str().expect("the node's image url");
    assert!(original.starts_with(&format!("{}/files/", node.gateway.address)), "{original}");
    let original = edge.client.get(original).send().await.expect("GET the node's image").bytes().await.expect("bytes");
    assert_eq!(copy, original);
    let callback_url = callback_url.as_deref().expect("the edge gave the node a callback URL");
    assert!(callback_url.starts_with(&edge.url("/api/v1/callbacks/node30/")), "{callback_url}");
    assert_eq!(
        edge_column::<Option<String>>(edge.pool(), "upstream_id", task_id).await.as_deref(),
        Some(node_task_id.as_str())
    );
    assert_eq!(node.idempotency_keys().await, [(format!("aio-edge-{task_id}"), node_task_id.clone())]);
    // The edge polls once an hour here: its task ended because the node's signed callback arrived.
    assert!(edge_column::<bool>(edge.pool(), "callback_at IS NOT NULL", task_id).await);

    // Each hop charged once: the node the edge's account, the edge its client.
    edge.assert_balance(&key, 50 - 12, 0).await;
    assert_eq!(node.balance().await, 100 - 12);
    assert_ledger_consistent(edge.pool()).await;
    assert_ledger_consistent(&node.db.pool).await;
}

#[tokio::test]
async fn forged_callbacks_are_refused_and_change_nothing() {
    let node = Node::start(100).await;
    let edge = spawn_edge(Some(&node), None, false).await;
    let (_, key) = edge.new_account(50).await;
    // Long enough on the node for the forgeries to arrive first; the test waits for the end anyway.
    let body = json!({"prompt": "A lake [simulate:delay=3000]", "aspect_ratio": "16:9"});
    let task_id = edge.create_ok(&key, body).await["task_id"].as_str().expect("task_id").to_owned();
    let (node_task_id, _, callback_url) = node.first_task().await;
    let callback_url = callback_url.expect("a callback URL");

    let forged = json!({
        "task_id": node_task_id, "status": "succeeded",
        "output": {"images": [{"url": "https://forged.example/x.png"}]}, "error": null,
    })
    .to_string();
    let unsigned = post_callback(callback_url.clone(), forged.clone(), vec![]).await;
    let other_secret = signing::generate_secret();
    let wrong_key =
        webhook_headers("1", &forged, |id, ts, body| signing::signature_header(&[&other_secret], id, ts, body));
    let wrongly_signed = post_callback(callback_url.clone(), forged.clone(), wrong_key).await;
    let right_key =
        webhook_headers("2", &forged, |id, ts, body| signing::signature_header(&[&node.secret], id, ts, body));
    let unknown_token = post_callback(edge.url("/api/v1/callbacks/node30/not-a-token"), forged, right_key).await;
    assert_eq!((unsigned, wrongly_signed, unknown_token), (401, 401, 404));
    assert!(
        edge_column::<bool>(edge.pool(), "callback_at IS NULL", &task_id).await,
        "no forgery counted as a callback"
    );

    let done = edge.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let url = done["output"]["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&node.gateway.address), "the node's image, not the forged one: {url}");
    edge.assert_balance(&key, 50 - 12, 0).await;
    assert_ledger_consistent(edge.pool()).await;
    assert_ledger_consistent(&node.db.pool).await;
}

#[tokio::test]
async fn a_node_refusing_the_edge_account_is_unavailable_to_the_client_and_counted() {
    // The edge's account on the node has no credits: the node answers 402.
    let node = Node::start(0).await;
    let edge = spawn_edge(Some(&node), None, false).await;
    let (_, key) = edge.new_account(50).await;
    let task = edge.create_ok(&key, seed_request()).await;
    let done = edge.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"], json!({"code": "upstream_failed", "message": "The provider is unavailable."}));
    assert!(!done["error"].to_string().contains("insufficient"), "the node's words stay in the edge's log: {done}");
    edge.assert_balance(&key, 50, 0).await;

    let metrics = edge.client.get(edge.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let counted = metrics.lines().any(|line| {
        line.starts_with("aio_upstream_account_problems_total{") && line.contains("node30") && line.contains("402")
    });
    assert!(counted, "{metrics}");
    assert!(node.tasks().await.is_empty());
    assert_ledger_consistent(edge.pool()).await;
    assert_ledger_consistent(&node.db.pool).await;
}

#[tokio::test]
async fn the_nodes_refusals_and_failures_reach_the_client_as_the_node_reported_them() {
    let node = Node::start(100).await;
    let edge = spawn_edge(Some(&node), None, false).await;
    let (_, key) = edge.new_account(50).await;

    // The node's provider refuses the submit: the node answers 502, the edge's create too.
    let refused = edge.create(&key, json!({"prompt": "A lake [simulate:reject]"})).await;
    let (_, message) = assert_error(refused, StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert!(message.contains("[simulate:reject]") && message.matches(" Task task_").count() == 1, "{message}");

    // The job fails on the node: the same code and reason at the edge.
    let task = edge.create_ok(&key, json!({"prompt": "A lake [simulate:fail]"})).await;
    let done = edge.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    let expected =
        json!({"code": "upstream_failed", "message": "The provider could not generate the image ([simulate:fail])."});
    assert_eq!(done["error"], expected, "{done}");

    // Nothing charged at either hop.
    edge.assert_balance(&key, 50, 0).await;
    assert_eq!(node.balance().await, 100);
    assert_ledger_consistent(edge.pool()).await;
    assert_ledger_consistent(&node.db.pool).await;
}

#[tokio::test]
async fn a_node_that_is_down_is_failed_over_to_the_next_node() {
    let mut node_a = Node::start(100).await;
    let node_b = Node::start(100).await;
    let edge = spawn_edge(Some(&node_a), Some(&node_b), false).await;
    let models: Value =
        edge.client.get(edge.url("/api/v1/models")).send().await.expect("models").json().await.expect("JSON");
    let nodes: Vec<&str> = models["data"][0]["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["backend_node"].as_str())
        .collect();
    assert_eq!(nodes, ["node30", "node31"], "{models}");

    node_a.gateway.kill();
    let (_, key) = edge.new_account(50).await;
    let task = edge.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().expect("task_id");
    let done = edge.wait_terminal(&key, task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["output"]["images"][0]["url"].as_str().expect("url").starts_with(&node_b.gateway.address), "{done}");
    assert_eq!(edge_column::<String>(edge.pool(), "provider", task_id).await, "node31");
    assert_eq!(node_b.tasks().await.len(), 1);
    assert!(node_a.tasks().await.is_empty());

    edge.assert_balance(&key, 50 - 12, 0).await;
    assert_eq!((node_a.balance().await, node_b.balance().await), (100, 100 - 12));
    for pool in [edge.pool(), &node_a.db.pool, &node_b.db.pool] {
        assert_ledger_consistent(pool).await;
    }
}

/// Between the edge and a node: forwards everything, except that the first create's answer is never
/// passed on (the node has the task; the edge never hears of it).
struct Proxy {
    node: String,
    http: reqwest::Client,
    swallow_next_create: AtomicBool,
    creates: AtomicUsize,
    swallowed: Notify,
}

async fn forward(
    State(proxy): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = proxy.http.request(method.clone(), format!("{}{path}", proxy.node)).body(body);
    for name in ["authorization", "content-type", "idempotency-key"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let Ok(answer) = request.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let bytes = answer.bytes().await.unwrap_or_default();
    if method == Method::POST && uri.path() == "/api/v1/images/generations" {
        proxy.creates.fetch_add(1, Ordering::SeqCst);
        if proxy.swallow_next_create.swap(false, Ordering::SeqCst) {
            proxy.swallowed.notify_one();
            std::future::pending::<()>().await;
        }
    }
    (status, [("content-type", "application/json")], bytes).into_response()
}

impl Proxy {
    async fn start(node: &str) -> (Arc<Proxy>, String, Server) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the proxy");
        let url = format!("http://127.0.0.1:{}", listener.local_addr().expect("address").port());
        let proxy = Arc::new(Proxy {
            node: node.to_owned(),
            http: http_client(),
            swallow_next_create: AtomicBool::new(true),
            creates: AtomicUsize::new(0),
            swallowed: Notify::new(),
        });
        let router = axum::Router::new().fallback(forward).with_state(Arc::clone(&proxy));
        (proxy, url, Server::serve(listener, router))
    }
}

/// The edge as a process on `port` (the same across restarts: the node knows its callback URL),
/// reaching node30 (`node`'s account) at `node_url`; node31 is inactive.
fn start_edge_process(db: &TestDatabase, dir: &TempDir, port: u16, log: &str, node_url: &str, node: &Node) -> Gateway {
    let catalog_path = edge_catalog();
    let files: PathBuf = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("the edge's files directory");
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("AIO__SERVER__LISTEN", listen.as_str()),
        ("AIO__CATALOG__MODELS_PATH", catalog_path.to_str().expect("a UTF-8 path")),
        ("AIO__PROVIDERS__NODE30__KIND", "worker"),
        ("AIO__PROVIDERS__NODE30__BASE_URL", node_url),
        ("AIO__PROVIDERS__NODE30__NODE_LABEL", "node30"),
        ("AIO__PROVIDERS__NODE30__API_KEY_ENV", "AIO_TEST_NODE30_KEY"),
        ("AIO_TEST_NODE30_KEY", &node.key),
        ("AIO__PROVIDERS__NODE30__WEBHOOK_HMAC_KEY_ENV", "AIO_TEST_NODE30_WEBHOOK_SECRET"),
        ("AIO_TEST_NODE30_WEBHOOK_SECRET", &node.secret),
        ("AIO__PROVIDERS__NODE30__CALLBACK_POLL_SECS", "1"),
        ("AIO__PROVIDERS__NODE31__KIND", "worker"),
        ("AIO__PROVIDERS__NODE31__BASE_URL", "http://127.0.0.1:9"),
        ("AIO__PROVIDERS__NODE31__API_KEY_ENV", "AIO_TEST_UNSET_NODE31_KEY"),
        ("AIO__TASKS__DISPATCH_WAIT_MS", "200"),
        // The edge reaches the node through the proxy, but the node's result URLs name its own
        // address: outside the trusted node origin, so the guard must allow loopback http here.
        ("AIO__WEBHOOKS__ALLOW_HTTP", "true"),
        ("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8"),
    ];
    let mut gateway = Gateway::start_with(&db.url, &files, &dir.path().join(log), "all", &env);
    gateway.address = format!("http://{listen}");
    gateway
}

#[tokio::test]
async fn an_edge_killed_before_it_records_the_node_task_resubmits_without_a_second_node_task() {
    let node = Node::start(100).await;
    let (proxy, proxy_url, _server) = Proxy::start(&node.gateway.address).await;
    let db = TestDatabase::new(5).await;
    let (_, key) = new_account(&db.pool, 50).await;
    let dir = tempfile::tempdir().expect("an edge directory");
    let client = http_client();

    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("find a free port");
        probe.local_addr().expect("probe address").port()
    };
    let mut edge = start_edge_process(&db, &dir, port, "edge-1.log", &proxy_url, &node);
    edge.ready(&client).await;
    let swallowed = proxy.swallowed.notified();
    let task_id = edge.create(&client, &key, "A serene mountain lake at sunrise").await;
    // The node accepted the task; the edge is killed before it hears the node's task id.
    swallowed.await;
    edge.kill();
    let node_tasks = node.tasks().await;
    assert_eq!(node_tasks.len(), 1, "{node_tasks:?}");
    assert_eq!(edge_column::<String>(&db.pool, "status", &task_id).await, "pending");
    assert_eq!(edge_column::<Option<String>>(&db.pool, "upstream_id", &task_id).await, None);

    // Restarted, the edge submits again once the lease runs out: the node answers with its first task.
    let mut edge = start_edge_process(&db, &dir, port, "edge-2.log", &proxy_url, &node);
    edge.ready(&client).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let task = loop {
        let task: Value = client
            .get(format!("{}/api/v1/tasks/{task_id}", edge.address))
            .bearer_auth(&key)
            .send()
            .await
            .expect("GET the task")
            .json()
            .await
            .expect("task JSON");
        if matches!(task["status"].as_str(), Some("succeeded" | "failed")) {
            break task;
        }
        let log = std::fs::read_to_string(dir.path().join("edge-2.log")).unwrap_or_default();
        assert!(tokio::time::Instant::now() < give_up, "the task never finished: {task}\nedge log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("edge-2.log")).unwrap_or_default();
    assert_eq!(task["status"], "succeeded", "{task}\nedge log:\n{log}");
    assert_eq!(proxy.creates.load(Ordering::SeqCst), 2, "submitted twice");
    let node_tasks = node.tasks().await;
    assert_eq!(node_tasks.len(), 1, "one job on the node: {node_tasks:?}");
    assert_eq!(edge_column::<Option<String>>(&db.pool, "upstream_id", &task_id).await, Some(node_tasks[0].0.clone()));

    assert_eq!(node.balance().await, 100 - 12);
    let (balance, held): (i64, i64) =
        sqlx::query_as("SELECT balance, held FROM accounts").fetch_one(&db.pool).await.expect("the client's account");
    assert_eq!((balance, held), (50 - 12, 0));
    edge.kill();
    assert_ledger_consistent(&db.pool).await;
    assert_ledger_consistent(&node.db.pool).await;
}

#[tokio::test]
async fn a_task_cancelled_on_the_edge_is_cancelled_on_its_node_and_released_on_both() {
    let node = Node::start(100).await;
    let edge = spawn_edge(Some(&node), None, false).await;
    let (_, key) = edge.new_account(50).await;
    let mut request = seed_request();
    request["prompt"] = json!("A slow lake [simulate:delay=60000]");
    let task_id = edge.create_ok(&key, request).await["task_id"].as_str().expect("task_id").to_owned();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while edge.get_task(&key, &task_id).await["status"] != "running" {
        assert!(tokio::time::Instant::now() < give_up, "the node never accepted the task:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let response = edge.cancel(&key, &task_id).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The edge asked the node within the cancel request: its task is cancelled and released there too.
    let (_, status, _) = node.first_task().await;
    assert_eq!(status, "cancelled", "node log:\n{}", node.log());
    assert_eq!(node.balance().await, 100);
    edge.assert_balance(&key, 50, 0).await;
}
