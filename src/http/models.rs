//! `GET /api/v1/models` and `GET /api/v1/models/{model_id}`: the live catalog. Provider base URLs
//! and keys never appear here; clients see each route's label only.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::ApiPath;
use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::catalog::{Catalog, Model};
use crate::config::ProviderMode;
use crate::error::Error;

const ENDPOINT: &str = "/api/v1/images/generations";

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    id: String,
    name: String,
    vendor: String,
    #[schema(required = true)]
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
    parameters: Vec<ParameterView>,
    example_request: String,
    routes: Vec<RouteView>,
}

#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
struct RouteView {
    provider_label: String,
    /// Served by the simulated provider: placeholder images (demo mode, or a staging fallback).
    simulated: bool,
    /// For a worker route: the backend node it forwards to (`node_label`, e.g. `node30`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    backend_node: Option<String>,
}

fn view(catalog: &Catalog, model: &Model, usd_per_credit: f64, base_url: &str) -> ModelView {
    // One entry per distinct (label, backend node): two nodes serving a model are two routes.
    let mut routes: Vec<RouteView> = Vec::new();
    for route in model.sub_models.iter().flat_map(|s| &s.routes) {
        let view = RouteView {
            provider_label: catalog.route_label(route).to_owned(),
            simulated: catalog.is_simulated(&route.provider),
            backend_node: catalog.backend_node(&route.provider).map(str::to_owned),
        };
        if !routes.contains(&view) {
            routes.push(view);
        }
    }
    let default_sub = &model.sub_models[0];
    ModelView {
        id: model.id.clone(),
        name: model.name.clone(),
        vendor: model.vendor.clone(),
        description: model.description.clone(),
        provider_label: format!("{} / {}", model.vendor, routes.first().map_or("-", |r| r.provider_label.as_str())),
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
        routes,
    }
}

fn round_cents(usd: f64) -> f64 {
    (usd * 10_000.0).round() / 10_000.0
}

/// One request parameter of a model, as the catalog shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParameterView {
    name: String,
    /// `string` or `array`.
    #[serde(rename = "type")]
    kind: &'static str,
    required: bool,
    #[schema(required = true)]
    default: Option<String>,
    /// The allowed values, when the parameter is a choice.
    #[schema(required = true)]
    values: Option<Vec<String>>,
    /// For the prompt: its longest allowed length, in characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    max_length: Option<usize>,
    description: String,
}

fn parameters(model: &Model) -> Vec<ParameterView> {
    let free = |name: &str, kind: &'static str, description: String| ParameterView {
        name: name.to_owned(),
        kind,
        required: false,
        default: None,
        values: None,
        max_length: None,
        description,
    };
    let mut list = vec![ParameterView {
        required: true,
        max_length: Some(model.max_prompt_chars),
        ..free("prompt", "string", "What to draw (or how to edit the input images).".into())
    }];
    for p in &model.parameters {
        list.push(ParameterView {
            default: Some(p.default.clone()),
            values: Some(p.values.clone()),
            ..free(&p.name, "string", p.description.clone())
        });
    }
    let with_images: Vec<String> = model
        .sub_models
        .iter()
        .filter(|s| s.max_image_urls > 0)
        .map(|s| format!("{} takes {}–{}", s.id, s.min_image_urls, s.max_image_urls))
        .collect();
    if !with_images.is_empty() {
        let description = format!("Input image URLs (https): {}; other sub-models take none.", with_images.join("; "));
        list.push(free("image_urls", "array", description));
    }
    if model.webhook {
        list.push(free("callback_url", "string", "https URL that receives the task object when it finishes.".into()));
    }
    list
}

fn example(model: &Model, sub_model: &str, base_url: &str) -> String {
    let mut body =
        json!({"model": sub_model, "prompt": "A serene mountain lake at sunrise with reflections, photorealistic"});
    for p in &model.parameters {
        body[&p.name] = json!(p.values.iter().find(|v| **v != p.default).unwrap_or(&p.default));
    }
    format!(
        "curl -X POST {base_url}{ENDPOINT} -H \"Authorization: Bearer $AIO_KEY\" -H \"Content-Type: application/json\" --data-raw '{body}'"
    )
}

/// `GET /api/v1/models`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `demo`: no real provider is configured and the simulated one serves every model (placeholder
    /// images); `live`: real providers only; `staging`: real ones with simulated fallbacks.
    mode: ProviderMode,
    data: Vec<ModelView>,
    endpoint_summary: EndpointSummary,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointSummary {
    endpoint: &'static str,
    /// How many models.
    models: usize,
    /// How many distinct providers serve them.
    providers: usize,
    credit_range: CreditRange,
    /// Models with webhook support, e.g. `5/11`.
    webhook_coverage: String,
    #[schema(required = true)]
    lowest_cost_model: Option<CheapestModel>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditRange {
    #[schema(required = true)]
    min: Option<i64>,
    #[schema(required = true)]
    max: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheapestModel {
    id: String,
    name: String,
    credits: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/models",
    operation_id = "listModels",
    tag = "catalog",
    responses((status = 200, description = "The live catalog and its summary.", body = ModelList))
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let usd = state.settings.billing.usd_per_credit;
    let base_url = &state.settings.server.public_base_url;
    let models: Vec<ModelView> =
        state.catalog.models().iter().map(|m| view(&state.catalog, m, usd, base_url)).collect();
    let providers: BTreeSet<&str> =
        models.iter().flat_map(|m| m.routes.iter().map(|r| r.provider_label.as_str())).collect();
    let cheapest = models.iter().min_by_key(|m| m.credits);
    let endpoint_summary = EndpointSummary {
        endpoint: ENDPOINT,
        models: models.len(),
        providers: providers.len(),
        credit_range: CreditRange {
            min: models.iter().map(|m| m.credits).min(),
            max: models.iter().map(|m| m.credits).max(),
        },
        webhook_coverage: format!("{}/{}", models.iter().filter(|m| m.webhook).count(), models.len()),
        lowest_cost_model: cheapest.map(|m| CheapestModel {
            id: m.id.clone(),
            name: m.name.clone(),
            credits: m.credits,
        }),
    };
    Json(ModelList { mode: state.catalog.mode(), data: models, endpoint_summary })
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{model_id}",
    operation_id = "getModel",
    tag = "catalog",
    params(("model_id" = String, Path, description = "A model id, e.g. `seedream-4-5`.")),
    responses(
        (status = 200, description = "The model with its parameters and an example request.", body = ModelView),
        (status = 404, description = "No such model.", body = ErrorEnvelope),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(model_id): ApiPath<String>,
) -> Result<Json<ModelView>, ApiError> {
    let model = state.catalog.get(&model_id).ok_or_else(|| Error::not_found("Model"))?;
    let base_url = &state.settings.server.public_base_url;
    Ok(Json(view(&state.catalog, model, state.settings.billing.usd_per_credit, base_url)))
}
