//! What clients read about the live catalog (`GET /api/v1/models`): each model's view (price,
//! parameters, position, runtime, call contract, the routes and the node serving each, the models
//! beside it on the endpoint) and the endpoint's summary, the decision panel's figures. Computed here
//! from the catalog; the HTTP layer only serialises. Provider base URLs and keys never appear.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::json;

use super::{Catalog, Faq, Model, Route};
use crate::config::ProviderMode;
use crate::pricing::{self, PriceRule};

/// The one endpoint every model is called on.
pub const ENDPOINT: &str = "/api/v1/images/generations";
/// Where a task's result is read.
pub const TASK_PATH: &str = "/api/v1/tasks/{task_id}";
/// Where what was charged is read.
pub const BILLING_PATH: &str = "/api/v1/usage";
/// How models are ranked by [`Position`].
const POSITION_ORDER: &str = "base credits, low to high";

/// What a view needs besides the catalog: the price of a credit and this gateway's public URL.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub usd_per_credit: f64,
    pub base_url: &'a str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelView {
    id: String,
    name: String,
    vendor: String,
    #[schema(required = true)]
    description: Option<String>,
    /// `Vendor / provider` of its first route, e.g. `ByteDance / KIE`.
    provider_label: String,
    endpoint: &'static str,
    /// The default first.
    sub_models: Vec<String>,
    /// Price of one image, in credits.
    credits: i64,
    /// The same price in US dollars (`billing.usd_per_credit`).
    usd: f64,
    /// Applied in order to the per-image price; see `POST /api/v1/quotes` for a request's price.
    price_rules: Vec<PriceRule>,
    /// The cheapest request (one image) and the dearest (`max_images` at the highest per-image price).
    price_range: PriceRange,
    /// The most images one request may ask for (`n`).
    max_images: u32,
    /// Where it ranks among the catalog's models by price.
    position: Position,
    input_types: Vec<String>,
    output: String,
    /// Always `async`: a create returns a task to poll.
    runtime: &'static str,
    /// `[min, max]` seconds a generation usually takes (declared in the catalog).
    runtime_secs: [u32; 2],
    /// `runtime_secs` in words, e.g. `3–10 seconds`.
    runtime_text: String,
    /// How its result reaches the client: `async task + polling`, or `async task + polling or webhook`.
    runtime_mode: &'static str,
    webhook: bool,
    /// What is charged: `successful requests` (a failed task's hold is released).
    billing: &'static str,
    /// The route a request is first sent to, with its price.
    lowest_cost_route: PricedRoute,
    /// How to call it.
    contract: CallContract,
    parameters: Vec<ParameterView>,
    /// A curl command for the default sub-model.
    example_request: String,
    routes: Vec<RouteView>,
    capabilities: Vec<String>,
    use_cases: Vec<String>,
    faq: Vec<Faq>,
    /// The other models on the same endpoint, cheapest first: a comparison table.
    same_endpoint: Vec<Comparison>,
}

/// A model's rank by price, e.g. 10 of 11: `rank` is 1 + the number of cheaper models.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Position {
    rank: usize,
    of: usize,
    /// `base credits, low to high`.
    order: &'static str,
}

/// A route and what one image costs on it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PricedRoute {
    /// `Vendor / provider`, e.g. `Zhipu AI / WaveSpeed`.
    provider_label: String,
    credits: i64,
    usd: f64,
    /// The node that serves it (see [`RouteView::backend_node`]).
    backend_node: String,
    /// All of it in one line, e.g. `Zhipu AI / WaveSpeed · 4 credits · $0.04`.
    text: String,
}

/// How a client calls a model, field by field.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallContract {
    /// This gateway's public URL, the base of every path (`server.public_base_url`).
    api_url: String,
    method: &'static str,
    endpoint: &'static str,
    /// `Authorization: Bearer`, followed by an API key.
    auth: &'static str,
    /// The request field naming the model: `model`, a model or sub-model id.
    model_field: &'static str,
    /// Where the task is read until it ends: `/api/v1/tasks/{task_id}`.
    result_path: &'static str,
    /// Where the images are in the task: `output.images[].url`.
    result_field: &'static str,
    /// Where what was charged is read: `/api/v1/usage`.
    billing_path: &'static str,
}

#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    provider_label: String,
    /// Served by the simulated provider: placeholder images (demo mode, or a staging fallback).
    simulated: bool,
    /// The node that serves the route: for a worker route the backend node it forwards to (its
    /// `node_label`, e.g. `node30`), else this gateway itself (`server.node_name`).
    backend_node: String,
}

/// One row of a model's comparison with another model on the same endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    id: String,
    name: String,
    credits: i64,
    usd: f64,
    /// Its lowest-cost route, `Vendor / provider`.
    provider_label: String,
    runtime_mode: &'static str,
    input_types: Vec<String>,
    output: String,
    /// The node serving its lowest-cost route.
    backend_node: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PriceRange {
    min: i64,
    max: i64,
}

/// One request parameter of a model, as the catalog shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParameterView {
    name: String,
    /// `string`, `integer` or `array`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// Required on the model's default sub-model (see `accepted_by` for the others).
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
    /// For `image_urls`: the sub-models that take it, with how many URLs each (required where `min` ≥ 1);
    /// every other sub-model refuses it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    accepted_by: Option<Vec<ImageCount>>,
    description: String,
}

/// How many input image URLs a sub-model takes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageCount {
    sub_model: String,
    min: usize,
    max: usize,
}

/// The endpoint's figures over the live catalog: the decision panel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointSummary {
    endpoint: &'static str,
    /// How many models.
    models: usize,
    /// How many distinct real providers serve them (the simulated one never counts).
    providers: usize,
    /// How many provider sources: distinct `Vendor / provider` pairs of real routes (the simulated
    /// provider never counts), e.g. `ByteDance / KIE` and `ByteDance / WaveSpeed` are two.
    sources: usize,
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
    usd: f64,
    /// Its lowest-cost route, `Vendor / provider`.
    provider_label: String,
    /// E.g. `Zhipu AI / WaveSpeed · 4 credits · $0.04`.
    text: String,
}

/// `GET /api/v1/models`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// `demo`: no real provider is configured and the simulated one serves every model (placeholder
    /// images); `live`: real providers only; `staging`: real ones with simulated fallbacks.
    mode: ProviderMode,
    data: Vec<ModelView>,
    endpoint_summary: EndpointSummary,
    /// Models of the catalog this gateway does not offer: none of the providers that serve them is
    /// configured (or its key is unset).
    hidden_models: Vec<HiddenModelView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HiddenModelView {
    id: String,
    name: String,
    /// The providers that would serve it (their labels): configuring any one of them offers it.
    providers: Vec<String>,
}

impl Context<'_> {
    /// The whole catalog with its summary.
    pub fn list(&self) -> ModelList {
        let models = self.catalog.models();
        let data: Vec<ModelView> = models.iter().map(|m| self.view(m)).collect();
        let catalog = self.catalog;
        // Every real route with its model: the simulated provider is never a source.
        let real_routes = move || {
            models.iter().flat_map(move |m| {
                let routes = m.sub_models.iter().flat_map(|s| &s.routes);
                routes.filter(move |r| !catalog.is_simulated(&r.provider)).map(move |r| (m, r))
            })
        };
        let providers: BTreeSet<&str> = real_routes().map(|(_, r)| catalog.route_label(r)).collect();
        let sources: BTreeSet<(&str, &str)> =
            real_routes().map(|(m, r)| (m.vendor.as_str(), catalog.route_label(r))).collect();
        let lowest_cost_model = models.iter().min_by_key(|m| m.credits).map(|m| {
            let route = self.lowest_cost_route(m);
            CheapestModel {
                id: m.id.clone(),
                name: m.name.clone(),
                credits: route.credits,
                usd: route.usd,
                provider_label: route.provider_label,
                text: route.text,
            }
        });
        let endpoint_summary = EndpointSummary {
            endpoint: ENDPOINT,
            models: models.len(),
            providers: providers.len(),
            sources: sources.len(),
            credit_range: CreditRange {
                min: models.iter().map(|m| m.credits).min(),
                max: models.iter().map(|m| m.credits).max(),
            },
            webhook_coverage: format!("{}/{}", models.iter().filter(|m| m.webhook).count(), models.len()),
            lowest_cost_model,
        };
        let hidden_models = catalog
            .hidden()
            .iter()
            .map(|h| HiddenModelView { id: h.id.clone(), name: h.name.clone(), providers: h.providers.clone() })
            .collect();
        ModelList { mode: self.catalog.mode(), data, endpoint_summary, hidden_models }
    }

    /// One model as clients see it.
    pub fn view(&self, model: &Model) -> ModelView {
        let catalog = self.catalog;
        // One entry per distinct (label, backend node): two nodes serving a model are two routes.
        let mut routes: Vec<RouteView> = Vec::new();
        for route in model.sub_models.iter().flat_map(|s| &s.routes) {
            let view = RouteView {
                provider_label: catalog.route_label(route).to_owned(),
                simulated: catalog.is_simulated(&route.provider),
                backend_node: catalog.serving_node(&route.provider).to_owned(),
            };
            if !routes.contains(&view) {
                routes.push(view);
            }
        }
        let models = catalog.models();
        let mut others: Vec<&Model> = models.iter().filter(|m| m.id != model.id).collect();
        others.sort_by_key(|m| m.credits);
        let [min, max] = model.runtime_secs;
        ModelView {
            id: model.id.clone(),
            name: model.name.clone(),
            vendor: model.vendor.clone(),
            description: model.description.clone(),
            provider_label: format!("{} / {}", model.vendor, routes.first().map_or("-", |r| r.provider_label.as_str())),
            endpoint: ENDPOINT,
            sub_models: model.sub_models.iter().map(|s| s.id.clone()).collect(),
            credits: model.credits,
            usd: self.usd(model.credits),
            price_rules: model.price_rules.clone(),
            price_range: {
                let (min, max) = pricing::range(model);
                PriceRange { min, max }
            },
            max_images: model.max_images,
            position: Position {
                rank: 1 + models.iter().filter(|m| m.credits < model.credits).count(),
                of: models.len(),
                order: POSITION_ORDER,
            },
            input_types: model.input_types.clone(),
            output: model.output.clone(),
            runtime: "async",
            runtime_secs: model.runtime_secs,
            runtime_text: if min == max { format!("{min} seconds") } else { format!("{min}–{max} seconds") },
            runtime_mode: runtime_mode(model),
            webhook: model.webhook,
            billing: "successful requests",
            lowest_cost_route: self.lowest_cost_route(model),
            contract: CallContract {
                api_url: self.base_url.to_owned(),
                method: "POST",
                endpoint: ENDPOINT,
                auth: "Authorization: Bearer",
                model_field: "model",
                result_path: TASK_PATH,
                result_field: "output.images[].url",
                billing_path: BILLING_PATH,
            },
            parameters: parameters(model),
            example_request: self.example(model),
            routes,
            capabilities: model.capabilities.clone(),
            use_cases: model.use_cases.clone(),
            faq: model.faq.clone(),
            same_endpoint: others.into_iter().map(|m| self.comparison(m)).collect(),
        }
    }

    fn comparison(&self, model: &Model) -> Comparison {
        let route = self.lowest_cost_route(model);
        Comparison {
            id: model.id.clone(),
            name: model.name.clone(),
            credits: route.credits,
            usd: route.usd,
            provider_label: route.provider_label,
            runtime_mode: runtime_mode(model),
            input_types: model.input_types.clone(),
            output: model.output.clone(),
            backend_node: route.backend_node,
        }
    }

    /// The default sub-model's first route (a real one before a simulated one, then by priority):
    /// every route of a model charges its price.
    fn lowest_cost_route(&self, model: &Model) -> PricedRoute {
        let catalog = self.catalog;
        let first: Option<&Route> =
            model.sub_models[0].routes.iter().min_by_key(|r| (catalog.is_simulated(&r.provider), r.priority));
        let (label, node) = first.map_or(("-", ""), |r| (catalog.route_label(r), catalog.serving_node(&r.provider)));
        let provider_label = format!("{} / {label}", model.vendor);
        let usd = self.usd(model.credits);
        PricedRoute {
            text: format!("{provider_label} · {} credits · {}", model.credits, usd_text(usd)),
            provider_label,
            credits: model.credits,
            usd,
            backend_node: node.to_owned(),
        }
    }

    fn usd(&self, credits: i64) -> f64 {
        (credits as f64 * self.usd_per_credit * 10_000.0).round() / 10_000.0
    }

    /// A curl command creating a task on the default sub-model, with a non-default value of each choice.
    fn example(&self, model: &Model) -> String {
        let mut body = json!({"model": model.sub_models[0].id, "prompt": "A serene mountain lake at sunrise with reflections, photorealistic"});
        for p in &model.parameters {
            body[&p.name] = json!(p.values.iter().find(|v| **v != p.default).unwrap_or(&p.default));
        }
        format!(
            "curl -X POST {}{ENDPOINT} -H \"Authorization: Bearer $AIO_KEY\" -H \"Content-Type: application/json\" --data-raw '{body}'",
            self.base_url
        )
    }
}

fn runtime_mode(model: &Model) -> &'static str {
    if model.webhook {
        "async task + polling or webhook"
    } else {
        "async task + polling"
    }
}

/// Dollars with two decimals, or as many as a price under a cent needs (`$0.04`, `$0.005`).
fn usd_text(usd: f64) -> String {
    let cents = format!("{usd:.2}");
    if (cents.parse::<f64>().unwrap_or(usd) - usd).abs() < 1e-9 {
        format!("${cents}")
    } else {
        format!("${}", format!("{usd:.4}").trim_end_matches('0'))
    }
}

fn parameters(model: &Model) -> Vec<ParameterView> {
    let free = |name: &str, kind: &'static str, description: String| ParameterView {
        name: name.to_owned(),
        kind,
        required: false,
        default: None,
        values: None,
        max_length: None,
        accepted_by: None,
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
    if model.max_images > 1 {
        let description =
            format!("How many images, 1 to {} (default 1); only delivered images are charged.", model.max_images);
        list.push(ParameterView { default: Some("1".into()), ..free("n", "integer", description) });
    }
    let with_images: Vec<ImageCount> = model
        .sub_models
        .iter()
        .filter(|s| s.max_image_urls > 0)
        .map(|s| ImageCount { sub_model: s.id.clone(), min: s.min_image_urls, max: s.max_image_urls })
        .collect();
    if !with_images.is_empty() {
        let ranges: Vec<String> =
            with_images.iter().map(|c| format!("{} takes {}–{}", c.sub_model, c.min, c.max)).collect();
        let description = format!("Input image URLs (https): {}; other sub-models take none.", ranges.join("; "));
        list.push(ParameterView {
            required: model.sub_models[0].min_image_urls > 0,
            accepted_by: Some(with_images),
            ..free("image_urls", "array", description)
        });
    }
    if model.webhook {
        list.push(free("callback_url", "string", "https URL that receives the task object when it finishes.".into()));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::usd_text;

    #[test]
    fn dollars_show_cents_or_the_digits_a_smaller_price_needs() {
        assert_eq!(usd_text(0.04), "$0.04");
        assert_eq!(usd_text(0.1), "$0.10");
        assert_eq!(usd_text(0.005), "$0.005");
        assert_eq!(usd_text(12.0), "$12.00");
    }
}
