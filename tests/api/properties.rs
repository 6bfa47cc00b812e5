//! Property tests (proptest): random and mutated create bodies through the real HTTP route never
//! get a 5xx, and random and mutated provider answers and callbacks never make an adapter panic.
//! Case counts are modest so the suite stays fast; `PROPTEST_CASES` raises them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aio_gateway::config::{ProviderKind, Settings};
use aio_gateway::files::FileStore;
use aio_gateway::providers::{Providers, SubmitRequest};
use aio_gateway::tasks::TaskInput;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Map, Value};

use crate::fakes::{polling_provider, Server};
use crate::helpers::{bearer, seed_request, spawn_app};

fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(default);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Any JSON document, a few levels deep, with strings that include odd Unicode and NUL.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,24}".prop_map(Value::from),
        "[\\x00-\\x7f]{0,8}".prop_map(Value::from),
        Just(Value::from("x".repeat(5000))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Field names that mean something to the gateway or to a provider adapter, or nothing at all.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "model",
            "prompt",
            "aspect_ratio",
            "quality",
            "image_urls",
            "callback_url",
            "code",
            "msg",
            "message",
            "data",
            "taskId",
            "task_id",
            "state",
            "resultJson",
            "failMsg",
            "failCode",
            "id",
            "status",
            "outputs",
            "output",
            "error",
            "urls",
            "get",
            "images",
            "url",
            "b64_json",
            "request_id",
            "response_url",
            "payload",
            "detail",
            "logs",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

/// `template` with some of its values (at any depth) replaced, removed, or made strings.
fn mutated(template: Value) -> impl Strategy<Value = Value> {
    prop::collection::vec((any::<prop::sample::Index>(), 0..4u8, any_json()), 0..5).prop_map(move |edits| {
        let mut value = template.clone();
        for (at, how, replacement) in edits {
            let paths = paths(&value);
            let path = at.get(&paths);
            edit(&mut value, path, how, replacement);
        }
        value
    })
}

/// Every node's path (keys and indexes, as strings), the root first.
fn paths(value: &Value) -> Vec<Vec<String>> {
    let mut out = vec![vec![]];
    let children: Vec<(String, &Value)> = match value {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Value::Array(items) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
        _ => vec![],
    };
    for (key, child) in children {
        out.extend(paths(child).into_iter().map(|mut p| {
            p.insert(0, key.clone());
            p
        }));
    }
    out
}

fn edit(value: &mut Value, path: &[String], how: u8, replacement: Value) {
    let Some((last, parents)) = path.split_last() else {
        *value = replacement;
        return;
    };
    let mut node = value;
    for key in parents {
        node = match node {
            Value::Object(map) => map.get_mut(key).expect("path"),
            Value::Array(items) => &mut items[key.parse::<usize>().expect("index")],
            _ => return,
        };
    }
    match (node, how) {
        (Value::Object(map), 0) => {
            map.remove(last);
        }
        (Value::Object(map), 1) => {
            let text = map.get(last).map(Value::to_string).unwrap_or_default();
            map.insert(last.clone(), Value::String(text));
        }
        (Value::Object(map), _) => {
            map.insert(last.clone(), replacement);
        }
        (Value::Array(items), _) => {
            if let Ok(i) = last.parse::<usize>() {
                items[i] = replacement;
            }
        }
        _ => {}
    }
}

/// The bytes of a JSON document with a few bytes flipped, or cut short, or arbitrary bytes.
fn body_bytes(document: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => document.prop_map(|v| v.to_string().into_bytes()),
        1 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
    .prop_flat_map(|bytes| {
        let len = bytes.len().max(1);
        (Just(bytes), prop::collection::vec((0..len, any::<u8>()), 0..3), 0..=len)
    })
    .prop_map(|(mut bytes, flips, cut)| {
        for (at, byte) in flips {
            if at < bytes.len() {
                bytes[at] = byte;
            }
        }
        if cut < bytes.len() && cut % 7 == 0 {
            bytes.truncate(cut);
        }
        bytes
    })
}

/// The full seed request with every optional field, as mutation material.
fn full_request() -> Value {
    let mut request = seed_request();
    request["image_urls"] = json!([]);
    request["callback_url"] = json!("https://client.example.com/hooks/aio");
    request
}

/// The seed request with a random prompt and random choices among the model's own values (and a
/// few others): mostly accepted, so the create path past validation is exercised too.
fn valid_looking() -> impl Strategy<Value = Value> {
    let ratios = prop::sample::select(vec!["1:1", "4:3", "3:4", "16:9", "9:16", "2:3", "3:2", "21:9", "5:4"]);
    let qualities = prop::sample::select(vec!["basic", "high", "ultra"]);
    ("\\PC{1,80}", ratios, qualities).prop_map(|(prompt, ratio, quality)| {
        json!({"model": "seedream/4.5-text-to-image", "prompt": prompt, "aspect_ratio": ratio, "quality": quality})
    })
}

#[test]
fn random_and_mutated_create_bodies_never_get_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (app, key) = runtime.block_on(async {
        let app = spawn_app().await;
        let (_, key) = app.new_account(1_000_000_000).await;
        (app, key)
    });
    let bodies = prop_oneof![
        2 => valid_looking().prop_map(|v| v.to_string().into_bytes()),
        3 => body_bytes(mutated(seed_request())),
        2 => body_bytes(mutated(full_request())),
        1 => body_bytes(any_json()),
    ];
    let content_types = prop::sample::select(vec![
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        None,
    ]);
    // A connection per request: a pooled connection the server closes while idle can fail the next
    // request on it (a client-side race that says nothing about the body).
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let mut runner = TestRunner::new(cases(96));
    let statuses = Mutex::new(BTreeMap::<u16, usize>::new());
    runner
        .run(&(bodies, content_types), |(body, content_type)| {
            let (status, text) = runtime.block_on(async {
                let mut request = client
                    .post(app.url("/api/v1/images/generations"))
                    .header(AUTHORIZATION, bearer(&key))
                    .body(body.clone());
                if let Some(content_type) = content_type {
                    request = request.header(CONTENT_TYPE, content_type);
                }
                let response = request.send().await.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
                Ok::<_, TestCaseError>((response.status(), response.text().await.unwrap_or_default()))
            })?;
            *statuses.lock().expect("statuses").entry(status.as_u16()).or_default() += 1;
            prop_assert!(status.as_u16() < 500, "{status} for {:?}: {text}", String::from_utf8_lossy(&body));
            let answer: Value =
                serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {text}")))?;
            if status != StatusCode::OK {
                prop_assert!(answer["error"]["code"].is_string(), "no error envelope: {text}");
            }
            Ok(())
        })
        .expect("create bodies");
    // The mutations reach past the JSON decoding: some bodies are accepted, some refused.
    let statuses = statuses.into_inner().expect("statuses");
    assert!(statuses.contains_key(&200) && statuses.contains_key(&400), "answers: {statuses:?}");
}

/// One upstream for every adapter: it answers each request with the status and body the current
/// case sets.
#[derive(Default)]
struct Echo {
    answer: Mutex<(u16, Vec<u8>)>,
    /// Requests answered, so the test knows the adapters really asked.
    served: AtomicUsize,
}

async fn echo(State(echo): State<Arc<Echo>>) -> axum::response::Response {
    echo.served.fetch_add(1, Ordering::Relaxed);
    let (status, body) = echo.answer.lock().expect("answer").clone();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    (status, [("content-type", "application/json")], Bytes::from(body)).into_response()
}

/// Each adapter's usual answers, as mutation material.
fn provider_answers() -> Vec<Value> {
    let kie_record = crate::fakes::kie::record(
        "task_kie_1",
        "success",
        Some(json!({"resultUrls": ["https://example.com/r.png"]}).to_string()),
        None,
    );
    vec![
        json!({"code": 200, "msg": "success", "data": {"taskId": "task_kie_1"}}),
        json!({"code": 200, "message": "success", "data": kie_record}),
        json!({"code": 200, "message": "success", "data": {"id": "ws1", "status": "completed",
               "outputs": ["https://example.com/r.png"], "urls": {"get": "http://127.0.0.1:9/x"}, "error": ""}}),
        json!({"id": "r1", "status": "succeeded", "output": ["https://example.com/r.png"], "error": null,
               "urls": {"get": "http://127.0.0.1:9/x", "cancel": "http://127.0.0.1:9/c"}}),
        json!({"status": "COMPLETED", "request_id": "f1", "response_url": "http://127.0.0.1:9/r",
               "images": [{"url": "https://example.com/r.png"}]}),
        json!({"request_id": "f1", "status": "OK", "payload": {"images": [{"url": "https://example.com/r.png"}]}}),
        json!({"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}, {"url": "https://example.com/r.png"}]}),
        json!({"error": {"message": "bad", "type": "invalid_request_error", "code": "content_policy_violation"}}),
        json!({"detail": [{"loc": ["body", "prompt"], "msg": "bad", "type": "value_error"}]}),
    ]
}

/// Headers a callback might carry: the signature headers of each provider, with random values.
fn callback_headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let names = prop::sample::select(vec![
        "x-webhook-timestamp",
        "x-webhook-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-fal-webhook-request-id",
        "x-fal-webhook-user-id",
        "x-fal-webhook-timestamp",
        "x-fal-webhook-signature",
    ]);
    let values = prop_oneof![
        "[ -~]{0,40}",
        "[0-9]{1,12}",
        Just(chrono::Utc::now().timestamp().to_string()),
        "v1,[A-Za-z0-9+/=]{0,60}"
    ];
    prop::collection::vec((names, values), 0..5)
}

/// Every HTTP adapter pointed at `base_url`; with webhook secrets when `signed` (callbacks are then
/// checked before they are read), without (callback bodies are read in full).
fn adapters(base_url: &str, files: &std::path::Path, signed: bool) -> Providers {
    let mut settings = Settings::default();
    let kinds = [
        ("kie", ProviderKind::Kie),
        ("wavespeed", ProviderKind::Wavespeed),
        ("replicate", ProviderKind::Replicate),
        ("openai", ProviderKind::Openai),
        ("fal", ProviderKind::Fal),
    ];
    settings.providers = kinds
        .iter()
        .map(|(id, kind)| {
            let mut provider = polling_provider(*kind, id, base_url, "property-test-key");
            provider.webhook_hmac_key = signed.then(|| "property-test-secret".into());
            provider.jwks_url = Some(format!("{base_url}/jwks"));
            (id.to_string(), provider)
        })
        .collect::<BTreeMap<_, _>>();
    // No adapter here touches the database; the pool never connects.
    let pool = sqlx::PgPool::connect_lazy("postgres://unused@127.0.0.1:9/unused").expect("lazy pool");
    let store = FileStore::new(files.to_path_buf(), base_url).expect("file store");
    Providers::from_settings(&settings, &pool.into(), &store).expect("providers")
}

#[test]
fn random_and_mutated_provider_answers_never_panic_an_adapter() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let files = tempfile::tempdir().expect("files directory");
    let (echo_state, _server, [unsigned, signed]) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let base_url = format!("http://127.0.0.1:{}", listener.local_addr().expect("address").port());
        let state = Arc::new(Echo::default());
        let server = Server::serve(listener, Router::new().fallback(echo).with_state(Arc::clone(&state)));
        let providers = [false, true].map(|signed| adapters(&base_url, files.path(), signed));
        (state, server, providers)
    });
    let ids = ["kie", "wavespeed", "replicate", "openai", "fal"];
    let answers = prop::sample::select(provider_answers()).prop_flat_map(|template| body_bytes(mutated(template)));
    let statuses = prop::sample::select(vec![200u16, 200, 200, 201, 202, 400, 401, 402, 404, 422, 429, 500, 503]);
    let mut runner = TestRunner::new(cases(64));
    runner
        .run(&(answers, statuses, callback_headers()), |(body, status, headers)| {
            *echo_state.answer.lock().expect("answer") = (status, body.clone());
            let mut header_map = HeaderMap::new();
            for (name, value) in &headers {
                if let Ok(value) = HeaderValue::from_str(value) {
                    header_map.insert(HeaderName::from_static(name), value);
                }
            }
            runtime.block_on(async {
                let input = TaskInput {
                    prompt: "a lake".into(),
                    aspect_ratio: Some("16:9".into()),
                    quality: Some("high".into()),
                    image_urls: vec![],
                    n: None,
                };
                let fields = json!({"prompt": "a lake", "aspect_ratio": "16:9", "quality": "high"});
                let fields = fields.as_object().cloned().expect("an object");
                for id in ids {
                    let provider = unsigned.get(id).expect("configured provider");
                    let request = SubmitRequest {
                        task_id: "task_property",
                        upstream_model: "owner/model",
                        input: &input,
                        callback_url: Some("http://127.0.0.1:9/cb"),
                        fields: fields.clone(),
                    };
                    // Any answer is fine; a panic fails the case.
                    let _ = provider.submit(request).await;
                    let _ = provider.poll("job-1").await;
                    let _ = provider.read_callback(&header_map, &body).await;
                    let checked = signed.get(id).expect("configured provider");
                    let _ = checked.read_callback(&header_map, &body).await;
                }
            });
            Ok(())
        })
        .expect("provider answers");
    // Every adapter asks the echo upstream at least once in every case.
    let cases = runner.config().cases as usize;
    let served = echo_state.served.load(Ordering::Relaxed);
    assert!(served >= cases * ids.len(), "the upstream answered {served} requests in {cases} cases");
}
