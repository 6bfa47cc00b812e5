//! `GET /api/v1/models` and `GET /api/v1/models/{model_id}`: the live catalog. Provider base URLs
//! and keys never appear here; clients see each route's label only.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::ApiPath;
use crate::app::AppState;
use crate::catalog::{Catalog, Model};

const ENDPOINT: &str = "/api/v1/images/generations";

#[derive(Debug, Serialize)]
pub struct ModelView {
    id: String,
    name: String,
    vendor: String,
    description: Option<String>,
    provider_label: String,
    endpoint: &'static str,
    /// The default first.
    sub_models: Vec<String>,
    credits: i64,
    usd: f64,
    input_types: Vec<String>,
    output: String,
    runtime: &'static str,
    webhook: bool,
    parameters: Vec<Value>,
    example_request: String,
    routes: Vec<RouteView>,
}

#[derive(Debug, Serialize)]
struct RouteView {
    provider_label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend_node: Option<String>,
}

fn view(catalog: &Catalog, model: &Model, usd_per_credit: f64, base_url: &str) -> ModelView {
    let mut route_labels = Vec::new();
    for route in model.sub_models.iter().flat_map(|s| &s.routes) {
        let label = catalog.provider_label(&route.provider).to_owned();
        if !route_labels.contains(&label) {
            route_labels.push(label);
        }
    }
    let default_sub = &model.sub_models[0];
    ModelView {
        id: model.id.clone(),
        name: model.name.clone(),
        vendor: model.vendor.clone(),
        description: model.description.clone(),
        provider_label: format!("{} / {}", model.vendor, route_labels.first().map(String::as_str).unwrap_or("-")),
        endpoint: ENDPOINT,
        sub_models: model.sub_models.iter().map(|s| s.id.clone()).collect(),
        credits: model.credits,
        usd: round_cents(model.credits as f64 * usd_per_credit),
        input_types: model.input_types.clone(),
        output: model.output.clone(),
        runtime: "async",
        webhook: model.webhook,
        parameters: parameters(model),
        example_request: example(model, &default_sub.id, base_url),
        routes: route_labels.into_iter().map(|provider_label| RouteView { provider_label, backend_node: None }).collect(),
    }
}

fn round_cents(usd: f64) -> f64 {
    (usd * 10_000.0).round() / 10_000.0
}

fn parameters(model: &Model) -> Vec<Value> {
    let mut list = vec![json!({
        "name": "prompt", "type": "string", "required": true, "default": null, "values": null,
        "max_length": model.max_prompt_chars,
        "description": "What to draw (or how to edit the input images)."
    })];
    for p in &model.parameters {
        list.push(json!({
            "name": p.name, "type": "string", "required": false, "default": p.default, "values": p.values,
            "description": p.description
        }));
    }
    let with_images: Vec<String> = model
        .sub_models
        .iter()
        .filter(|s| s.max_image_urls > 0)
        .map(|s| format!("{} takes {}–{}", s.id, s.min_image_urls, s.max_image_urls))
        .collect();
    if !with_images.is_empty() {
        list.push(json!({
            "name": "image_urls", "type": "array", "required": false, "default": null, "values": null,
            "description": format!("Input image URLs (https): {}; other sub-models take none.", with_images.join("; "))
        }));
    }
    if model.webhook {
        list.push(json!({
            "name": "callback_url", "type": "string", "required": false, "default": null, "values": null,
            "description": "https URL that receives the task object when it finishes."
        }));
    }
    list
}

fn example(model: &Model, sub_model: &str, base_url: &str) -> String {
    let mut body = json!({"model": sub_model, "prompt": "A serene mountain lake at sunrise with reflections, photorealistic"});
    for p in &model.parameters {
        body[&p.name] = json!(p.values.iter().find(|v| **v != p.default).unwrap_or(&p.default));
    }
    format!(
        "curl -X POST {base_url}{ENDPOINT} -H \"Authorization: Bearer $AIO_KEY\" -H \"Content-Type: application/json\" --data-raw '{body}'"
    )
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let usd = state.settings.billing.usd_per_credit;
    let base_url = &state.settings.server.public_base_url;
    let models: Vec<ModelView> = state.catalog.models().iter().map(|m| view(&state.catalog, m, usd, base_url)).collect();
    let providers: BTreeSet<&str> = models.iter().flat_map(|m| m.routes.iter().map(|r| r.provider_label.as_str())).collect();
    let cheapest = models.iter().min_by_key(|m| m.credits);
    let summary = json!({
        "endpoint": ENDPOINT,
        "models": models.len(),
        "providers": providers.len(),
        "credit_range": {
            "min": models.iter().map(|m| m.credits).min(),
            "max": models.iter().map(|m| m.credits).max(),
        },
        "webhook_coverage": format!("{}/{}", models.iter().filter(|m| m.webhook).count(), models.len()),
        "lowest_cost_model": cheapest.map(|m| json!({"id": m.id, "name": m.name, "credits": m.credits})),
    });
    Json(json!({"data": models, "endpoint_summary": summary}))
}

pub async fn get(State(state): State<AppState>, ApiPath(model_id): ApiPath<String>) -> Result<Json<ModelView>, ApiError> {
    let model = state.catalog.get(&model_id).ok_or_else(|| ApiError::not_found("Model"))?;
    let base_url = &state.settings.server.public_base_url;
    Ok(Json(view(&state.catalog, model, state.settings.billing.usd_per_credit, base_url)))
}
