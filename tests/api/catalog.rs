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
            "credit_range": {"min": 4, "max": 25},
            "webhook_coverage": "5/11",
            "lowest_cost_model": {"id": "cogview-4", "name": "CogView-4", "credits": 4}
        })
    );

    let seedream = model(&catalog, "seedream-4-5");
    assert_eq!((seedream["credits"].as_i64(), seedream["webhook"].as_bool()), (Some(12), Some(true)));
    assert_eq!(seedream["provider_label"], "ByteDance / KIE");
    // Live: no simulated route beside the real ones.
    assert_eq!(catalog["mode"], "live");
    assert_eq!(seedream["routes"], json!([{"provider_label": "KIE", "simulated": false}]));
    let cogview = model(&catalog, "cogview-4");
    assert_eq!(
        (cogview["vendor"].as_str(), cogview["provider_label"].as_str()),
        (Some("Zhipu"), Some("Zhipu / WaveSpeed"))
    );
    assert_eq!(
        model(&catalog, "seedream-4")["routes"],
        json!([{"provider_label": "KIE", "simulated": false}, {"provider_label": "WaveSpeed", "simulated": false}])
    );
    assert_eq!(
        model(&catalog, "gpt-image-2-6-sunburst")["routes"],
        json!([{"provider_label": "OpenAI", "simulated": false}])
    );

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
    assert_eq!(model(&catalog, "seedream-4")["routes"], json!([{"provider_label": "KIE", "simulated": false}]));
    let summary = &catalog["endpoint_summary"];
    // One real provider: the simulated one is gone.
    assert_eq!((summary["models"].as_u64(), summary["providers"].as_u64()), (Some(2), Some(1)), "{summary}");
    assert_eq!(summary["webhook_coverage"], "2/2");
    assert_eq!(summary["lowest_cost_model"]["id"], "seedream-4");

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
