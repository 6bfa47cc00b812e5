//! The model catalog (`config/models.toml`): models, sub-models, parameters, prices and the provider
//! routes that serve them; and the validation of a create request against it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use serde::Deserialize;

use crate::config::{ProviderKind, Settings};
use crate::http::error::ApiError;
use crate::outbound::Guard;
use crate::tasks::TaskInput;

/// The request parameters a model may declare, besides the prompt and image URLs every model has.
const KNOWN_PARAMETERS: [&str; 2] = ["aspect_ratio", "quality"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    models: Vec<Model>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub id: String,
    pub name: String,
    pub vendor: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Price of one image, in credits.
    pub credits: i64,
    pub webhook: bool,
    pub input_types: Vec<String>,
    pub output: String,
    pub max_prompt_chars: usize,
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// The first one is the default.
    pub sub_models: Vec<SubModel>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameter {
    pub name: String,
    pub default: String,
    pub values: Vec<String>,
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubModel {
    pub id: String,
    pub description: String,
    #[serde(default)]
    pub min_image_urls: usize,
    #[serde(default)]
    pub max_image_urls: usize,
    pub routes: Vec<Route>,
}

/// One way to serve a sub-model: a configured provider and that provider's name for the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub provider: String,
    pub upstream_model: String,
    /// Lower is tried first; routes of equal priority share the load by `weight`.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl SubModel {
    /// Its active routes in the order to try them: by priority, and within one priority a weighted
    /// random order.
    pub fn routes_in_order(&self) -> Vec<&Route> {
        let mut rng = rand::thread_rng();
        // Weighted random order: sort by U^(1/weight), descending (Efraimidis–Spirakis).
        let mut keyed: Vec<(i32, f64, &Route)> = self
            .routes
            .iter()
            .map(|route| (route.priority, rand::Rng::gen::<f64>(&mut rng).powf(1.0 / f64::from(route.weight.max(1))), route))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        keyed.into_iter().map(|(_, _, route)| route).collect()
    }
}

impl Model {
    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

pub struct Catalog {
    /// Only models with at least one active route, and only their active routes.
    models: Vec<Model>,
    default_model: String,
    /// Active provider id → the label clients see.
    provider_labels: BTreeMap<String, String>,
    /// Active worker provider id → its backend node's label (`node_label`).
    backend_nodes: BTreeMap<String, String>,
}

impl Catalog {
    pub fn load(settings: &Settings) -> anyhow::Result<Catalog> {
        let path = &settings.catalog.models_path;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading catalog {}", path.display()))?;
        let file: CatalogFile = toml::from_str(&text).with_context(|| format!("parsing catalog {}", path.display()))?;
        let problems = check(&file.models, settings);
        anyhow::ensure!(problems.is_empty(), "invalid catalog {}:\n  {}", path.display(), problems.join("\n  "));
        let provider_labels: BTreeMap<String, String> = settings
            .providers
            .iter()
            .filter(|(_, p)| p.is_active())
            .map(|(id, p)| (id.clone(), p.label.clone().unwrap_or_else(|| id.clone())))
            .collect();
        let backend_nodes: BTreeMap<String, String> = settings
            .providers
            .iter()
            .filter(|(id, p)| p.kind == ProviderKind::Worker && provider_labels.contains_key(*id))
            .map(|(id, p)| (id.clone(), p.node_label.clone().unwrap_or_else(|| id.clone())))
            .collect();
        let models = file
            .models
            .into_iter()
            .filter_map(|mut model| {
                for sub in &mut model.sub_models {
                    sub.routes.retain(|r| provider_labels.contains_key(&r.provider));
                }
                model.sub_models.retain(|s| !s.routes.is_empty());
                (!model.sub_models.is_empty()).then_some(model)
            })
            .collect();
        let catalog =
            Catalog { models, default_model: settings.catalog.default_model.clone(), provider_labels, backend_nodes };
        catalog
            .resolve(None)
            .map_err(|_| anyhow::anyhow!("catalog.default_model: `{}` is not an active sub-model", catalog.default_model))?;
        Ok(catalog)
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    pub fn get(&self, model_id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == model_id)
    }

    pub fn sub_model(&self, sub_model_id: &str) -> Option<&SubModel> {
        self.models.iter().flat_map(|m| &m.sub_models).find(|s| s.id == sub_model_id)
    }

    pub fn provider_label<'a>(&'a self, provider_id: &'a str) -> &'a str {
        self.provider_labels.get(provider_id).map(String::as_str).unwrap_or(provider_id)
    }

    /// The backend node a worker provider forwards to; `None` for other providers.
    pub fn backend_node(&self, provider_id: &str) -> Option<&str> {
        self.backend_nodes.get(provider_id).map(String::as_str)
    }

    /// A model id means its default sub-model; a sub-model id means itself; none means the default.
    pub fn resolve(&self, name: Option<&str>) -> Result<(&Model, &SubModel), ApiError> {
        let name = name.unwrap_or(&self.default_model);
        for model in &self.models {
            if model.id == name {
                return Ok((model, &model.sub_models[0]));
            }
            if let Some(sub) = model.sub_models.iter().find(|s| s.id == name) {
                return Ok((model, sub));
            }
        }
        Err(ApiError::InvalidRequest(format!(
            "`model`: unknown model `{name}`. GET /api/v1/models lists the available models."
        )))
    }

    /// Checks every field of a create request against the catalog and fills in the defaults.
    pub fn validate(&self, request: CreateRequest, guard: &Guard) -> Result<ValidRequest<'_>, ApiError> {
        let (model, sub_model) = self.resolve(request.model.as_deref())?;
        let invalid = |message: String| Err(ApiError::InvalidRequest(message));

        let prompt = request.prompt.unwrap_or_default();
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return invalid("`prompt`: required, and must not be empty.".into());
        }
        let chars = prompt.chars().count();
        if chars > model.max_prompt_chars {
            return invalid(format!(
                "`prompt`: {chars} characters; {} allows at most {}.",
                model.id, model.max_prompt_chars
            ));
        }

        let aspect_ratio = choose(model, "aspect_ratio", request.aspect_ratio)?;
        let quality = choose(model, "quality", request.quality)?;

        let image_urls = request.image_urls.unwrap_or_default();
        let (min, max) = (sub_model.min_image_urls, sub_model.max_image_urls);
        if max == 0 && !image_urls.is_empty() {
            return invalid(format!(
                "`image_urls`: {} is text-to-image and takes no input images; use an edit sub-model.",
                sub_model.id
            ));
        }
        if image_urls.len() < min || image_urls.len() > max {
            return invalid(format!("`image_urls`: {} takes {min} to {max} image URLs; got {}.", sub_model.id, image_urls.len()));
        }
        for (i, url) in image_urls.iter().enumerate() {
            guard.check_url(url).map_err(|why| ApiError::InvalidRequest(format!("`image_urls[{i}]`: {why}")))?;
        }

        if let Some(url) = &request.callback_url {
            if !model.webhook {
                return invalid(format!(
                    "`callback_url`: {} does not support webhooks; poll GET /api/v1/tasks/{{task_id}} instead.",
                    model.id
                ));
            }
            guard.check_url(url).map_err(|why| ApiError::InvalidRequest(format!("`callback_url`: {why}")))?;
        }

        Ok(ValidRequest {
            model,
            sub_model,
            route: sub_model.routes_in_order()[0],
            input: TaskInput { prompt: prompt.to_owned(), aspect_ratio, quality, image_urls },
            callback_url: request.callback_url,
            price: model.credits,
        })
    }
}

/// The value of a declared parameter: the given one if allowed, else its default. A parameter the
/// model does not declare may not be given.
fn choose(model: &Model, name: &str, given: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(parameter) = model.parameter(name) else {
        return match given {
            Some(_) => Err(ApiError::InvalidRequest(format!("`{name}`: {} has no {name} parameter.", model.id))),
            None => Ok(None),
        };
    };
    match given {
        None => Ok(Some(parameter.default.clone())),
        Some(value) if parameter.values.contains(&value) => Ok(Some(value)),
        Some(value) => Err(ApiError::InvalidRequest(format!(
            "`{name}`: `{value}` is not allowed for {}; use one of {}.",
            model.id,
            parameter.values.join(", ")
        ))),
    }
}

/// Everything wrong with a catalog, one line each (empty when it is sound).
pub fn check(models: &[Model], settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for model in models {
        let at = format!("model `{}`", model.id);
        if !ids.insert(model.id.clone()) {
            problems.push(format!("{at}: id used twice"));
        }
        if model.credits < 0 {
            problems.push(format!("{at}: credits must not be negative"));
        }
        if model.max_prompt_chars == 0 {
            problems.push(format!("{at}: max_prompt_chars must be above 0"));
        }
        if model.sub_models.is_empty() {
            problems.push(format!("{at}: needs at least one sub-model"));
        }
        for parameter in &model.parameters {
            if !KNOWN_PARAMETERS.contains(&parameter.name.as_str()) {
                problems.push(format!(
                    "{at}: unknown parameter `{}` (known: {})",
                    parameter.name,
                    KNOWN_PARAMETERS.join(", ")
                ));
            }
            if !parameter.values.contains(&parameter.default) {
                problems.push(format!("{at}: parameter `{}` default is not one of its values", parameter.name));
            }
        }
        let mut active_routes = 0;
        for sub in &model.sub_models {
            if !ids.insert(sub.id.clone()) {
                problems.push(format!("{at}: sub-model id `{}` used twice", sub.id));
            }
            if sub.min_image_urls > sub.max_image_urls {
                problems.push(format!("{at}: sub-model `{}` has min_image_urls above max_image_urls", sub.id));
            }
            for route in &sub.routes {
                if settings.providers.contains_key(&route.provider) {
                    active_routes += 1;
                } else {
                    problems.push(format!(
                        "{at}: sub-model `{}` routes to provider `{}`, which is not configured",
                        sub.id, route.provider
                    ));
                }
            }
        }
        if active_routes == 0 {
            problems.push(format!("{at}: no active provider route"));
        }
    }
    problems
}

/// The body of `POST /api/v1/images/generations`. Unknown fields are refused by name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A model id (its default sub-model) or a sub-model id; default `catalog.default_model`.
    #[schema(example = "seedream/4.5-text-to-image")]
    pub model: Option<String>,
    /// Required: not empty after trimming, at most the model's `max_prompt_chars`.
    #[schema(example = "A serene mountain lake at sunrise with reflections, photorealistic", min_length = 1)]
    pub prompt: Option<String>,
    /// One of the model's values (default `1:1`).
    #[schema(example = "16:9")]
    pub aspect_ratio: Option<String>,
    /// `basic` (default) or `high`.
    #[schema(example = "high")]
    pub quality: Option<String>,
    /// Edit sub-models only: public `https` URLs of the input images.
    #[schema(max_items = 14)]
    pub image_urls: Option<Vec<String>>,
    /// Models with webhooks only: an `https` URL that receives the task when it ends.
    pub callback_url: Option<String>,
}

/// A request that passed validation: what to store, what it costs, and which route serves it.
pub struct ValidRequest<'a> {
    pub model: &'a Model,
    pub sub_model: &'a SubModel,
    pub route: &'a Route,
    pub input: TaskInput,
    pub callback_url: Option<String>,
    pub price: i64,
}
