//! The shipped catalog (`config/models.toml`): what `GET /api/v1/models` offers as providers become
//! active, and the per-route parameter mappings it declares: each fake receives exactly the
//! provider's own fields and values.

use aio_gateway::config::{ProviderKind, Settings};
use aio_gateway::tasks::TaskInput;
use serde_json::{json, Value};

use crate::fakes;
use crate::fakes::fal::FakeFal;
use crate::fakes::kie::FakeKie;
use crate::fakes::openai::FakeOpenAi;
use crate::fakes::replicate::FakeReplicate;
use crate::fakes::wavespeed::FakeWaveSpeed;
use crate::helpers::{assert_ledger_consistent, catalog, spawn_app_with, TestApp};

/// Every real provider of the shipped configuration, active (a key is set) but never called.
fn activate_every_provider(settings: &mut Settings) {
    for (id, kind, label) in [
        ("kie", ProviderKind::Kie, "KIE"),
        ("wavespeed", ProviderKind::Wavespeed, "WaveSpeed"),
        ("fal", ProviderKind::Fal, "fal"),
        ("replicate", ProviderKind::Replicate, "Replicate"),
        ("openai", ProviderKind::Openai, "OpenAI"),
    ] {
        let key = format!("{id}-unused-key");
        settings.providers.insert(id.into(), fakes::polling_provider(kind, label, "http://127.0.0.1:9", &key));
    }
}

async fn models(app: &TestApp) -> (Value, String) {
    let response = app.client.get(app.url("/api/v1/models")).send().await.expect("GET /api/v1/models");
    let text = response.text().await.expect("body");
    (serde_json::from_str(&text).expect("JSON"), text)
}

fn model<'a>(catalog: &'a Value, id: &str) -> &'a Value {
    catalog["data"].as_array().expect("data").iter().find(|m| m["id"] == id).unwrap_or_else(|| panic!("no {id}"))
}

#[tokio::test]
async fn with_every_provider_active_the_catalog_offers_eleven_models_from_five_providers() {
    let app = spawn_app_with(activate_every_provider).await;
    let (catalog, text) = models(&app).await;

    let data = catalog["data"].as_array().expect("data");
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            "seedream-4-5",
            "seedream-4",
            "cogview-4",
            "flux-dev",
            "flux-schnell",
            "nano-banana-2",
            "ideogram-v3-turbo",
            "qwen-image",
            "recraft-v3",
            "gpt-image-2-6-sunburst",
            "gpt-image-2-6-flare"
        ]
    );
    let vendors: std::collections::BTreeSet<&str> = data.iter().filter_map(|m| m["vendor"].as_str()).collect();
    assert!(vendors.len() >= 5, "{vendors:?}");
    for m in data {
        assert_eq!(m["endpoint"], "/api/v1/images/generations", "{m}");
    }
    assert_eq!(
        catalog["endpoint_summary"],
        json!({
            "endpoint": "/api/v1/images/generations",
            "models": 11,
            "providers": 5,
            // Every real route's `Vendor / provider`: seedream-4 and flux-dev have a WaveSpeed fallback.
            "sources": 11,
            "credit_range": {"min": 4, "max": 25},
            "webhook_coverage": "5/11",
            "lowest_cost_model": {
                "id": "cogview-4",
                "name": "CogView-4",
                "credits": 4,
                "usd": 0.04,
                "provider_label": "Zhipu AI / WaveSpeed",
                "text": "Zhipu AI / WaveSpeed · 4 credits · $0.04"
            }
        })
    );

    let seedream = model(&catalog, "seedream-4-5");
    assert_eq!((seedream["credits"].as_i64(), seedream["webhook"].as_bool()), (Some(12), Some(true)));
    assert_eq!(seedream["provider_label"], "ByteDance / KIE");
    // Live: no simulated route beside the real ones.
    assert_eq!(catalog["mode"], "live");
    assert_eq!(
        seedream["routes"],
        json!([{"provider_label": "KIE", "simulated": false, "backend_node": "test-gateway"}])
    );
    let cogview = model(&catalog, "cogview-4");
    assert_eq!(
        (cogview["vendor"].as_str(), cogview["provider_label"].as_str()),
        (Some("Zhipu AI"), Some("Zhipu AI / WaveSpeed"))
    );
    assert_eq!(
        model(&catalog, "seedream-4")["routes"],
        json!([{"provider_label": "KIE", "simulated": false, "backend_node": "test-gateway"}, {"provider_label": "WaveSpeed", "simulated": false, "backend_node": "test-gateway"}])
    );
    assert_eq!(
        model(&catalog, "gpt-image-2-6-sunburst")["routes"],
        json!([{"provider_label": "OpenAI", "simulated": false, "backend_node": "test-gateway"}])
    );

    assert_eq!(catalog["hidden_models"], json!([]), "every provider active: nothing hidden");

    // Provider internals and keys never leak.
    for secret in ["base_url", "api_key", "upstream_model", "unused-key", "fal-ai/", "127.0.0.1:9", "image_size"] {
        assert!(!text.contains(secret), "the catalog exposes `{secret}`: {text}");
    }
}

#[tokio::test]
async fn only_models_with_an_active_route_are_offered() {
    // The harness configures `simulated` and `kie`; with KIE's key set, KIE's models appear and every
    // route to an unconfigured provider (wavespeed, fal, replicate, openai) is simply unused.
    let fake = FakeKie::start().await;
    let app = spawn_app_with(|settings| fake.configure(settings)).await;
    let (catalog, _) = models(&app).await;
    let ids: Vec<&str> = catalog["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["seedream-4-5", "seedream-4"]);
    assert_eq!(
        model(&catalog, "seedream-4")["routes"],
        json!([{"provider_label": "KIE", "simulated": false, "backend_node": "test-gateway"}])
    );
    let summary = &catalog["endpoint_summary"];
    // One real provider: the simulated one is gone.
    assert_eq!((summary["models"].as_u64(), summary["providers"].as_u64()), (Some(2), Some(1)), "{summary}");
    assert_eq!(summary["webhook_coverage"], "2/2");
    assert_eq!(summary["lowest_cost_model"]["id"], "seedream-4");

    // The other nine are listed as hidden, each with the providers that would offer it (never the
    // simulated one, never a provider id or URL).
    let hidden = catalog["hidden_models"].as_array().expect("hidden_models");
    let hidden_ids: Vec<&str> = hidden.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(
        hidden_ids,
        [
            "cogview-4",
            "flux-dev",
            "flux-schnell",
            "nano-banana-2",
            "ideogram-v3-turbo",
            "qwen-image",
            "recraft-v3",
            "gpt-image-2-6-sunburst",
            "gpt-image-2-6-flare"
        ]
    );
    for model in hidden {
        let providers = model["providers"].as_array().expect("providers");
        assert!(!providers.is_empty(), "{model}");
        assert!(providers.iter().all(|p| p != "Simulated" && p != "simulated"), "{model}");
        assert!(model["name"].as_str().is_some_and(|n| !n.is_empty()), "{model}");
    }
    assert_eq!(hidden[0], json!({"id": "cogview-4", "name": "CogView-4", "providers": ["WaveSpeed"]}));

    // A model whose routes are all unused is unknown to create.
    let (_, key) = app.new_account(100).await;
    let response = app.create(&key, json!({"model": "cogview-4", "prompt": "a cat"})).await;
    crate::helpers::assert_error(response, reqwest::StatusCode::BAD_REQUEST, "invalid_request").await;
}

/// Creates `body`, drives it to its end and checks it succeeded and settled once.
async fn run(app: &TestApp, body: Value) -> Value {
    let (_, key) = app.new_account(1000).await;
    let task = app.create_ok(&key, body).await;
    let done = app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_ledger_consistent(app.pool()).await;
    done
}

#[tokio::test]
async fn kie_seedream_4_receives_its_image_size_and_resolution_fields() {
    let fake = FakeKie::start().await;
    fake.polls(0);
    let app = TestApp::builder().configure(|settings| fake.configure(settings)).driven().spawn().await;
    run(&app, json!({"model": "seedream-4", "prompt": "a lake", "aspect_ratio": "16:9", "quality": "high"})).await;
    let body = fake.creates()[0].json();
    assert_eq!(body["model"], "bytedance/seedream-v4-text-to-image");
    assert_eq!(
        body["input"],
        json!({"prompt": "a lake", "image_size": "landscape_16_9", "image_resolution": "4K", "max_images": 1})
    );
}

#[tokio::test]
async fn wavespeed_cogview_4_receives_a_pixel_size() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(0);
    let app = TestApp::builder().configure(|settings| fake.configure(settings)).driven().spawn().await;
    run(&app, json!({"model": "cogview-4", "prompt": "a poster", "aspect_ratio": "9:16"})).await;
    let submit = &fake.submits()[0];
    assert_eq!(submit.path, "/api/v3/z-ai/cogview-4");
    assert_eq!(submit.json(), json!({"prompt": "a poster", "size": "768*1344"}));
}

#[tokio::test]
async fn openai_models_receive_their_own_sizes_and_qualities() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::builder().configure(|settings| fake.configure(settings)).driven().spawn().await;
    let sunburst =
        json!({"model": "gpt-image-2-6-sunburst", "prompt": "a fox", "aspect_ratio": "3:2", "quality": "high"});
    run(&app, sunburst).await;
    run(&app, json!({"model": "gpt-image-2-6-flare", "prompt": "a fox", "aspect_ratio": "9:16"})).await;
    let bodies: Vec<Value> = fake.requests().iter().map(|r| r.json()).collect();
    assert_eq!(
        bodies,
        [
            json!({"model": "gpt-image-2.6-sunburst", "prompt": "a fox", "n": 1, "size": "1536x1024", "quality": "high"}),
            json!({"model": "gpt-image-2.6-flare", "prompt": "a fox", "n": 1, "size": "1024x1792", "quality": "low"}),
        ]
    );
}

#[tokio::test]
async fn fal_and_replicate_models_receive_their_fields_and_fixed_values() {
    let fal = FakeFal::start().await;
    fal.polls(0);
    let replicate = FakeReplicate::start().await;
    replicate.polls(0);
    let app = spawn_app_with(|settings| {
        fal.configure(settings);
        replicate.configure(settings);
    })
    .await;
    run(&app, json!({"model": "flux-dev", "prompt": "a bird", "aspect_ratio": "4:3"})).await;
    run(&app, json!({"model": "flux-schnell", "prompt": "a bird", "aspect_ratio": "21:9"})).await;

    let submit = fal.requests().into_iter().find(|r| r.method == "POST").expect("a fal submit");
    assert_eq!(submit.path, "/fal-ai/flux/dev");
    assert_eq!(
        submit.json(),
        json!({"prompt": "a bird", "image_size": "landscape_4_3", "num_images": 1, "enable_safety_checker": true})
    );
    let create = &replicate.creates()[0];
    assert_eq!(create.path, "/v1/models/black-forest-labs/flux-schnell/predictions");
    assert_eq!(
        create.json()["input"],
        json!({"prompt": "a bird", "aspect_ratio": "21:9", "num_outputs": 1, "output_format": "png"})
    );
}

/// What the adapters once derived themselves, the test catalogs now map: WaveSpeed's `W*H` sizes from
/// aspect ratio and quality, OpenAI's sizes and qualities per model family.
#[test]
fn catalogs_map_sizes_and_qualities() {
    let fields = |path: &std::path::Path, upstream_model: &str, ratio: &str, quality: &str| {
        let models = aio_gateway::catalog::read(path).expect("a catalog");
        let route = models
            .iter()
            .flat_map(|model| &model.sub_models)
            .flat_map(|sub| &sub.routes)
            .find(|route| route.upstream_model == upstream_model)
            .expect("the route")
            .clone();
        let input = TaskInput {
            prompt: "p".into(),
            aspect_ratio: Some(ratio.into()),
            quality: Some(quality.into()),
            image_urls: vec![],
            n: None,
        };
        Value::Object(route.mapped_input(&input))
    };
    let wavespeed = &catalog("wavespeed_only.toml");
    assert_eq!(
        fields(wavespeed, "bytedance/seedream-v4.5", "1:1", "basic"),
        json!({"prompt": "p", "size": "2048*2048"})
    );
    assert_eq!(fields(wavespeed, "bytedance/seedream-v4.5", "16:9", "high")["size"], "4096*2304");
    assert_eq!(fields(wavespeed, "bytedance/seedream-v4.5", "9:16", "basic")["size"], "1152*2048");

    let openai = &catalog("openai_only.toml");
    assert_eq!(
        fields(openai, "gpt-image-2.6-sunburst", "16:9", "high"),
        json!({"prompt": "p", "size": "1536x1024", "quality": "high"})
    );
    assert_eq!(fields(openai, "gpt-image-2.6-sunburst", "1:1", "basic")["quality"], "medium");
    let shipped = &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/models.toml");
    assert_eq!(
        fields(shipped, "gpt-image-2.6-flare", "9:16", "high"),
        json!({"prompt": "p", "size": "1024x1792", "quality": "high"})
    );
}

#[tokio::test]
async fn each_model_has_its_position_runtime_call_contract_and_the_models_beside_it() {
    let app = spawn_app_with(activate_every_provider).await;
    let (catalog, _) = models(&app).await;
    let data = catalog["data"].as_array().expect("data");

    // Position: by base credits, low to high; equal prices share a rank.
    let mut ranked: Vec<(u64, i64)> = data
        .iter()
        .map(|m| {
            assert_eq!(m["position"]["of"], 11, "{m}");
            assert_eq!(m["position"]["order"], "base credits, low to high");
            (m["position"]["rank"].as_u64().expect("rank"), m["credits"].as_i64().expect("credits"))
        })
        .collect();
    ranked.sort();
    assert!(ranked.windows(2).all(|w| w[0].1 <= w[1].1), "ranks follow the price: {ranked:?}");
    assert_eq!(model(&catalog, "cogview-4")["position"]["rank"], 1);
    assert_eq!(model(&catalog, "gpt-image-2-6-sunburst")["position"]["rank"], 11);
    // Seedream 4.0 and Recraft V3 both cost 10: both sixth, and Seedream 4.5 (12) eighth.
    assert_eq!(model(&catalog, "seedream-4")["position"]["rank"], 6);
    assert_eq!(model(&catalog, "recraft-v3")["position"]["rank"], 6);

    let seedream = model(&catalog, "seedream-4-5");
    assert_eq!(seedream["position"]["rank"], 8);
    assert_eq!(seedream["runtime_secs"], json!([3, 10]));
    assert_eq!(seedream["runtime_text"], "3–10 seconds");
    assert_eq!(seedream["runtime_mode"], "async task + polling or webhook");
    assert_eq!(model(&catalog, "cogview-4")["runtime_mode"], "async task + polling");
    assert_eq!(seedream["billing"], "successful requests");
    assert_eq!(
        seedream["contract"],
        json!({
            "api_url": app.address,
            "method": "POST",
            "endpoint": "/api/v1/images/generations",
            "auth": "Authorization: Bearer",
            "model_field": "model",
            "result_path": "/api/v1/tasks/{task_id}",
            "result_field": "output.images[].url",
            "billing_path": "/api/v1/usage"
        })
    );
    assert_eq!(
        seedream["lowest_cost_route"],
        json!({
            "provider_label": "ByteDance / KIE",
            "credits": 12,
            "usd": 0.12,
            "backend_node": "test-gateway",
            "text": "ByteDance / KIE · 12 credits · $0.12"
        })
    );

    // `image_urls`: taken and required by the edit sub-model only.
    let image_urls = seedream["parameters"].as_array().expect("parameters").iter().find(|p| p["name"] == "image_urls");
    let image_urls = image_urls.expect("image_urls");
    assert_eq!(
        (&image_urls["required"], &image_urls["accepted_by"]),
        (&json!(false), &json!([{"sub_model": "seedream/4.5-edit", "min": 1, "max": 14}]))
    );
    let flux = model(&catalog, "flux-dev")["parameters"].as_array().expect("parameters").clone();
    assert!(flux.iter().all(|p| p["name"] != "image_urls"), "text-to-image only: {flux:?}");

    // Catalog data: every shipped model says what it does, what for, and answers questions.
    for m in data {
        for field in ["capabilities", "use_cases", "faq"] {
            assert!(!m[field].as_array().expect(field).is_empty(), "{} has {field}", m["id"]);
        }
        assert!(m["faq"].as_array().expect("faq").iter().all(|f| f["q"].is_string() && f["a"].is_string()), "{m}");
    }

    // The models beside it: the ten others, cheapest first, each with its lowest-cost route.
    let others = seedream["same_endpoint"].as_array().expect("same_endpoint");
    assert_eq!(others.len(), 10);
    assert!(others.iter().all(|o| o["id"] != "seedream-4-5"));
    let prices: Vec<i64> = others.iter().filter_map(|o| o["credits"].as_i64()).collect();
    assert!(prices.windows(2).all(|w| w[0] <= w[1]), "{prices:?}");
    assert_eq!(
        others[0],
        json!({
            "id": "cogview-4",
            "name": "CogView-4",
            "credits": 4,
            "usd": 0.04,
            "provider_label": "Zhipu AI / WaveSpeed",
            "runtime_mode": "async task + polling",
            "input_types": ["text"],
            "output": "image",
            "backend_node": "test-gateway"
        })
    );

    // One model reads as it does in the list; an unknown one is a 404.
    let one = crate::helpers::json_of(app.client.get(app.url("/api/v1/models/seedream-4-5"))).await;
    assert_eq!(&one, seedream);
    let missing = app.client.get(app.url("/api/v1/models/no-such-model")).send().await.expect("GET");
    crate::helpers::assert_error(missing, reqwest::StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn the_simulated_provider_is_never_a_provider_source() {
    // Staging: Seedream 4.5 on KIE with a simulated fallback route.
    let fake = FakeKie::start().await;
    let app = spawn_app_with(|settings| {
        fake.configure(settings);
        settings.catalog.models_path = catalog("kie_with_simulated_fallback.toml");
        settings.catalog.allow_simulated_fallback = true;
    })
    .await;
    let (catalog, _) = models(&app).await;
    assert_eq!(catalog["mode"], "staging");
    let seedream = model(&catalog, "seedream-4-5");
    assert_eq!(
        seedream["routes"],
        json!([
            {"provider_label": "KIE", "simulated": false, "backend_node": "test-gateway"},
            {"provider_label": "Simulated", "simulated": true, "backend_node": "test-gateway"}
        ])
    );
    let summary = &catalog["endpoint_summary"];
    assert_eq!((summary["providers"].as_u64(), summary["sources"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert_eq!(summary["lowest_cost_model"]["provider_label"], "ByteDance / KIE", "a real route first");
}

/// What `server.node_name` defaults to: the host name.
fn host_name() -> String {
    let from_env = std::env::var("HOSTNAME").ok().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    from_env
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|n| n.trim().to_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

#[tokio::test]
async fn a_gateway_names_itself_as_the_backend_node_of_its_own_routes() {
    for (configured, expected) in [("", host_name()), ("eu-node-7", "eu-node-7".to_owned())] {
        let app = spawn_app_with(|settings| settings.server.node_name = configured.to_owned()).await;
        let (catalog, _) = models(&app).await;
        for m in catalog["data"].as_array().expect("data") {
            assert_eq!(m["routes"][0]["backend_node"], expected.as_str(), "{m}");
            assert_eq!(m["lowest_cost_route"]["backend_node"], expected.as_str(), "{m}");
        }
    }
}
