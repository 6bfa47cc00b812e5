//! The model catalog (`config/models.toml`): models, sub-models, parameters, prices and the provider
//! routes that serve them; and the validation of a create request against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{ProviderKind, ProviderMode, Settings};
use crate::error::Error;
use crate::pricing::{self, PriceRule, Quote};
use crate::tasks::{CallbackEvent, TaskInput};
use crate::url_guard::Guard;

pub mod summary;

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
    /// Price of one image, in credits, before `price_rules`.
    pub credits: i64,
    /// Applied in order to the per-image price (see [`crate::pricing`]).
    #[serde(default)]
    pub price_rules: Vec<PriceRule>,
    /// The most images one request may ask for (`n`); default 1.
    #[serde(default = "default_max_images")]
    pub max_images: u32,
    pub webhook: bool,
    pub input_types: Vec<String>,
    pub output: String,
    pub max_prompt_chars: usize,
    /// `[min, max]` seconds a generation usually takes at the provider: the engine polls first at
    /// `min`, often until `max`, then backs off. Default [`DEFAULT_RUNTIME_SECS`].
    #[serde(default = "default_runtime_secs")]
    pub runtime_secs: [u32; 2],
    #[serde(default)]
    pub parameters: Vec<Parameter>,
    /// The first one is the default.
    pub sub_models: Vec<SubModel>,
    /// How the OpenAI images API (`/v1/images/…`) names and sizes this model.
    #[serde(default)]
    pub openai: OpenAiNames,
    /// What the model does well, one short line each (the model page's capabilities).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// What it is used for, one short line each.
    #[serde(default)]
    pub use_cases: Vec<String>,
    /// Questions a new user asks about it, with their answers.
    #[serde(default)]
    pub faq: Vec<Faq>,
}

/// One question of a model's FAQ and its answer.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Faq {
    pub q: String,
    pub a: String,
}

/// The OpenAI-compatible routes' view of a model: other names clients may use for it, and how
/// OpenAI's `size` and `quality` become the model's `aspect_ratio` and `quality`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiNames {
    /// Other model ids accepted on `/v1/images/…` (e.g. `gpt-image-1`), unique across the catalog.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// OpenAI `size` (`1024x1024`) → one of the model's `aspect_ratio` values. A size not listed is
    /// refused (the message lists these); `auto` or no size means the model's default.
    #[serde(default)]
    pub sizes: BTreeMap<String, String>,
    /// OpenAI `quality` (`low`, `medium`, `high`, `standard`, `hd`) → one of the model's `quality`
    /// values; `auto` or no quality means the model's default.
    #[serde(default)]
    pub quality: BTreeMap<String, String>,
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
    /// What clients see for this route instead of the provider id (default: the provider's `label`).
    #[serde(default)]
    pub provider_label: Option<String>,
    /// Lower is tried first; routes of equal priority share the load by `weight`.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// How our parameters become the provider's input fields on this route, by our parameter name
    /// (`prompt`, `aspect_ratio`, `quality`, `image_urls`); a parameter without an entry goes under our
    /// name as it is. The only place request fields are mapped: adapters add just their envelope.
    #[serde(default)]
    pub map: BTreeMap<String, FieldMap>,
    /// Input fields sent as they are on every request of this route, e.g. `num_images = 1`.
    #[serde(default)]
    pub fixed: Map<String, Value>,
}

/// Where one of our parameters goes in a provider's input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    /// The provider's field name (default: ours).
    #[serde(default)]
    pub to: Option<String>,
    /// Our value → the provider's (any JSON value). When given, it covers every value the
    /// parameter allows.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Another parameter whose value picks the table, `values = { <its value> = { <ours> = <theirs> } }`:
    /// for a provider field that depends on both (a pixel size from aspect ratio and quality).
    #[serde(default)]
    pub by: Option<String>,
    /// The provider has no such field: send nothing.
    #[serde(default)]
    pub omit: bool,
}

/// The parameters a route may map: every model has a prompt, (edit sub-models) image URLs and (models
/// with `max_images` above 1) a number of images `n`.
const ALWAYS_MAPPABLE: [&str; 3] = ["prompt", "image_urls", "n"];

impl Route {
    /// The provider's input fields for `input` on this route.
    pub fn mapped_input(&self, input: &TaskInput) -> Map<String, Value> {
        map_input(&self.map, &self.fixed, input)
    }

    /// What is wrong with this route's mapping for `model`, one line each.
    fn mapping_problems(&self, model: &Model) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, rule) in &self.map {
            let at = format!("route `{}` → `{}`: map.{name}", self.provider, self.upstream_model);
            if rule.to.as_deref().is_some_and(|to| to.trim().is_empty()) {
                problems.push(format!("{at}: `to` must not be empty (use omit = true to send nothing)"));
            }
            let Some(parameter) = model.parameter(name) else {
                if !ALWAYS_MAPPABLE.contains(&name.as_str()) {
                    problems.push(format!("{at}: the model has no parameter `{name}`"));
                } else if !rule.values.is_empty() || rule.by.is_some() {
                    problems.push(format!("{at}: `{name}` is free text, it has no values to map"));
                }
                continue;
            };
            let Some(by) = &rule.by else {
                problems.extend(coverage_problems(&at, rule.values.keys(), parameter));
                continue;
            };
            let Some(by_parameter) = model.parameter(by).filter(|_| by != name) else {
                problems.push(format!("{at}: `by` must name another parameter of the model, not `{by}`"));
                continue;
            };
            if rule.values.is_empty() {
                problems.push(format!("{at}: `by` needs `values`"));
            }
            problems.extend(coverage_problems(&at, rule.values.keys(), by_parameter));
            for (by_value, table) in &rule.values {
                let at = format!("{at}.values.{by_value}");
                match table.as_object() {
                    Some(table) => problems.extend(coverage_problems(&at, table.keys(), parameter)),
                    None => problems.push(format!("{at}: must be a table of `{name}` values")),
                }
            }
        }
        problems
    }
}

/// `fixed`, then each of our parameters as `map` says: left out (`omit`), under another name (`to`),
/// with the provider's value (`values`, picked by ours, or `by` another parameter's and ours), or else
/// under our name as it is.
fn map_input(map: &BTreeMap<String, FieldMap>, fixed: &Map<String, Value>, input: &TaskInput) -> Map<String, Value> {
    let ours = [
        ("prompt", Some(json!(input.prompt))),
        ("aspect_ratio", input.aspect_ratio.as_ref().map(|v| json!(v))),
        ("quality", input.quality.as_ref().map(|v| json!(v))),
        ("image_urls", (!input.image_urls.is_empty()).then(|| json!(input.image_urls))),
        ("n", input.n.map(|n| json!(n))),
    ];
    let our_text = |name: &str| ours.iter().find(|(ours, _)| *ours == name)?.1.as_ref()?.as_str();
    let mut fields = fixed.clone();
    for (name, value) in &ours {
        let Some(value) = value else { continue };
        let rule = map.get(*name);
        if rule.is_some_and(|rule| rule.omit) {
            continue;
        }
        let field = rule.and_then(|rule| rule.to.clone()).unwrap_or_else(|| (*name).to_owned());
        let theirs = rule.and_then(|rule| match &rule.by {
            Some(by) => rule.values.get(our_text(by)?)?.get(value.as_str()?).cloned(),
            None => rule.values.get(value.as_str()?).cloned(),
        });
        fields.insert(field, theirs.unwrap_or_else(|| value.clone()));
    }
    fields
}

/// A value table's problems against the parameter it translates: it covers exactly its values.
fn coverage_problems<'a>(at: &str, keys: impl Iterator<Item = &'a String>, parameter: &Parameter) -> Vec<String> {
    let keys: Vec<&String> = keys.collect();
    if keys.is_empty() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    for value in keys.iter().copied().filter(|v| !parameter.values.contains(*v)) {
        problems
            .push(format!("{at}: `{value}` is not one of the parameter's values ({})", parameter.values.join(", ")));
    }
    for value in parameter.values.iter().filter(|v| !keys.contains(v)) {
        problems.push(format!("{at}: the parameter's value `{value}` is not mapped"));
    }
    problems
}

fn default_max_images() -> u32 {
    1
}

fn default_weight() -> u32 {
    1
}

/// The runtime of a model that declares none: a first look after a second, then every few seconds.
pub const DEFAULT_RUNTIME_SECS: [u32; 2] = [1, 30];

/// A declared runtime above this is a mistake (the engine's deadline is minutes).
const MAX_RUNTIME_SECS: u32 = 3600;

fn default_runtime_secs() -> [u32; 2] {
    DEFAULT_RUNTIME_SECS
}

/// When a running task is polled, from its model's `runtime_secs`: first at `min` (nothing is ready
/// before), then every `(max − min) / POLLS_IN_WINDOW` (within [`MIN_POLL_INTERVAL`], `cap`) while the
/// model usually finishes, then backing off by half the time past `max` (×1.5 per poll), up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollSchedule {
    pub min: Duration,
    pub max: Duration,
}

/// Polls spread over the runtime window: a result waits half a window / 7 for its poll on average.
const POLLS_IN_WINDOW: u32 = 7;

/// The shortest interval between two polls of a task.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(250);

impl PollSchedule {
    /// The wait before the next poll of a task that has been running (accepted upstream) for
    /// `running_for`; never above `cap` (`tasks.poll_max_ms`).
    pub fn next(&self, running_for: Duration, cap: Duration) -> Duration {
        let cap = cap.max(MIN_POLL_INTERVAL);
        let interval = ((self.max.saturating_sub(self.min)) / POLLS_IN_WINDOW).clamp(MIN_POLL_INTERVAL, cap);
        if running_for < self.min {
            return (self.min - running_for).min(cap);
        }
        if running_for < self.max {
            return interval;
        }
        ((running_for - self.max) / 2).clamp(interval, cap)
    }
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
            .map(|route| {
                (route.priority, rand::Rng::gen::<f64>(&mut rng).powf(1.0 / f64::from(route.weight.max(1))), route)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        keyed.into_iter().map(|(_, _, route)| route).collect()
    }
}

impl Model {
    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// How its running tasks are polled, from `runtime_secs`.
    pub fn poll_schedule(&self) -> PollSchedule {
        let [min, max] = self.runtime_secs;
        PollSchedule { min: Duration::from_secs(min.into()), max: Duration::from_secs(max.into()) }
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
    /// The serving simulated providers (none in live mode).
    simulated: BTreeSet<String>,
    mode: ProviderMode,
    /// Catalog models not offered: no provider that serves them is configured.
    hidden: Vec<HiddenModel>,
    /// This gateway's node name (`server.node_name`, default the host name): the backend node of
    /// every route that is not a worker node's.
    node_name: String,
}

/// A model of the catalog file that is not offered because none of its routes' providers serves.
#[derive(Debug, Clone)]
pub struct HiddenModel {
    pub id: String,
    pub name: String,
    /// The labels of the real providers its routes name: configuring any one of them offers it.
    pub providers: Vec<String>,
}

impl Catalog {
    pub fn load(settings: &Settings) -> anyhow::Result<Catalog> {
        let path = &settings.catalog.models_path;
        let models = read(path)?;
        let report = check(&models, settings);
        anyhow::ensure!(
            report.errors.is_empty(),
            "invalid catalog {}:\n  {}",
            path.display(),
            report.errors.join("\n  ")
        );
        // At serve time a route to a provider that is not configured is only unused, like a route to
        // an inactive one: the shipped catalog names every provider, a deployment configures a few.
        for warning in report.unknown_providers.iter().chain(&report.warnings) {
            tracing::warn!("catalog: {warning}");
        }
        let mode = settings.provider_mode();
        let serves = |p: &crate::config::ProviderSettings| {
            p.is_active() && (p.kind != ProviderKind::Simulated || mode.serves_simulated())
        };
        let provider_labels: BTreeMap<String, String> = settings
            .providers
            .iter()
            .filter(|(_, p)| serves(p))
            .map(|(id, p)| (id.clone(), p.label.clone().unwrap_or_else(|| id.clone())))
            .collect();
        let backend_nodes: BTreeMap<String, String> = settings
            .providers
            .iter()
            .filter(|(id, p)| p.kind == ProviderKind::Worker && provider_labels.contains_key(*id))
            .map(|(id, p)| (id.clone(), p.node_label.clone().unwrap_or_else(|| id.clone())))
            .collect();
        let simulated: BTreeSet<String> = settings
            .providers
            .iter()
            .filter(|(id, p)| p.kind == ProviderKind::Simulated && provider_labels.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let mut hidden = Vec::new();
        let models = models
            .into_iter()
            .filter_map(|mut model| {
                let real_providers: BTreeSet<String> = model
                    .sub_models
                    .iter()
                    .flat_map(|s| &s.routes)
                    .filter_map(|r| {
                        let provider = settings.providers.get(&r.provider);
                        if provider.is_some_and(|p| p.kind == ProviderKind::Simulated) {
                            return None;
                        }
                        let label = r.provider_label.clone().or_else(|| provider.and_then(|p| p.label.clone()));
                        Some(label.unwrap_or_else(|| r.provider.clone()))
                    })
                    .collect();
                for sub in &mut model.sub_models {
                    if mode == ProviderMode::Demo {
                        sub.routes = demo_routes(sub, &simulated);
                    }
                    sub.routes.retain(|r| provider_labels.contains_key(&r.provider));
                }
                model.sub_models.retain(|s| !s.routes.is_empty());
                if model.sub_models.is_empty() {
                    let providers = real_providers.into_iter().collect();
                    hidden.push(HiddenModel { id: model.id, name: model.name, providers });
                    return None;
                }
                Some(model)
            })
            .collect();
        let mut catalog = Catalog {
            models,
            default_model: settings.catalog.default_model.clone(),
            provider_labels,
            backend_nodes,
            simulated,
            mode,
            hidden,
            node_name: settings.server.node_name(),
        };
        if catalog.resolve(None).is_err() {
            // The configured providers do not serve it (e.g. only OpenAI is configured): the first
            // model offered is the default instead, rather than refusing to start.
            let Some(first) = catalog.models.first().map(|m| m.sub_models[0].id.clone()) else {
                anyhow::bail!("catalog.default_model: `{}` is not an active sub-model", catalog.default_model);
            };
            tracing::warn!(configured = %catalog.default_model, default = %first, "catalog.default_model is not served by the configured providers; using the first model offered");
            catalog.default_model = first;
        }
        Ok(catalog)
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// The catalog's models that are not offered (see [`HiddenModel`]).
    pub fn hidden(&self) -> &[HiddenModel] {
        &self.hidden
    }

    /// Demo, live or staging (see [`ProviderMode`]).
    pub fn mode(&self) -> ProviderMode {
        self.mode
    }

    /// Whether this provider is the simulated one: its images are placeholders.
    pub fn is_simulated(&self, provider_id: &str) -> bool {
        self.simulated.contains(provider_id)
    }

    pub fn get(&self, model_id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == model_id)
    }

    /// A model id, sub-model id or OpenAI alias (see [`OpenAiNames::aliases`]) as [`Catalog::resolve`]
    /// reads it; with `edit`, a model id means its first sub-model that takes input images.
    pub fn resolve_openai(&self, name: Option<&str>, edit: bool) -> Result<(&Model, &SubModel), Error> {
        let name = name.map(|name| {
            self.models.iter().find(|m| m.openai.aliases.iter().any(|a| a == name)).map_or(name, |m| m.id.as_str())
        });
        let (model, sub_model) = self.resolve(name)?;
        if !edit || sub_model.max_image_urls > 0 || name.is_some_and(|name| name == sub_model.id) {
            return Ok((model, sub_model));
        }
        let edit = model.sub_models.iter().find(|s| s.max_image_urls > 0).ok_or_else(|| {
            Error::Invalid(format!("`model`: {} cannot edit images; GET /v1/models lists the models.", model.id))
        })?;
        Ok((model, edit))
    }

    pub fn sub_model(&self, sub_model_id: &str) -> Option<&SubModel> {
        self.models.iter().flat_map(|m| &m.sub_models).find(|s| s.id == sub_model_id)
    }

    /// The sub-model's route to this provider and upstream model.
    pub fn route(&self, sub_model_id: &str, provider: &str, upstream_model: &str) -> Option<&Route> {
        self.sub_model(sub_model_id)?
            .routes
            .iter()
            .find(|r| r.provider == provider && r.upstream_model == upstream_model)
    }

    /// The provider's input fields for `input` on a route: as the route maps them, or under our names
    /// when the catalog no longer has the route (a task created before the catalog changed).
    pub fn provider_input(
        &self,
        sub_model_id: &str,
        provider: &str,
        upstream_model: &str,
        input: &TaskInput,
    ) -> Map<String, Value> {
        match self.route(sub_model_id, provider, upstream_model) {
            Some(route) => route.mapped_input(input),
            None => map_input(&BTreeMap::new(), &Map::new(), input),
        }
    }

    /// What clients see for a route: its own `provider_label`, else its provider's label.
    pub fn route_label<'a>(&'a self, route: &'a Route) -> &'a str {
        route
            .provider_label
            .as_deref()
            .or_else(|| self.provider_labels.get(&route.provider).map(String::as_str))
            .unwrap_or(&route.provider)
    }

    /// The backend node a worker provider forwards to; `None` for other providers.
    pub fn backend_node(&self, provider_id: &str) -> Option<&str> {
        self.backend_nodes.get(provider_id).map(String::as_str)
    }

    /// The node that serves a route: a worker's backend node, else this gateway itself.
    pub fn serving_node(&self, provider_id: &str) -> &str {
        self.backend_node(provider_id).unwrap_or(&self.node_name)
    }

    /// A model id means its default sub-model; a sub-model id means itself; none means the default.
    pub fn resolve(&self, name: Option<&str>) -> Result<(&Model, &SubModel), Error> {
        let name = name.unwrap_or(&self.default_model);
        for model in &self.models {
            if model.id == name {
                return Ok((model, &model.sub_models[0]));
            }
            if let Some(sub) = model.sub_models.iter().find(|s| s.id == name) {
                return Ok((model, sub));
            }
        }
        Err(Error::Invalid(format!("`model`: unknown model `{name}`. GET /api/v1/models lists the available models.")))
    }

    /// Checks every field of a create request against the catalog and fills in the defaults.
    pub fn validate(&self, request: CreateRequest, guard: &Guard) -> Result<ValidRequest<'_>, Error> {
        let (model, sub_model) = self.resolve(request.model.as_deref())?;
        let invalid = |message: String| Err(Error::Invalid(message));

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
            return invalid(format!(
                "`image_urls`: {} takes {min} to {max} image URLs; got {}.",
                sub_model.id,
                image_urls.len()
            ));
        }
        // What was checked is what is forwarded: the parsed, normalised URL, never the client's spelling
        // (which another parser may read as another host).
        let image_urls = image_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                guard
                    .check_url(url)
                    .map(String::from)
                    .map_err(|why| Error::Invalid(format!("`image_urls[{i}]`: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut callback_url = None;
        if let Some(url) = &request.callback_url {
            if !model.webhook {
                return invalid(format!(
                    "`callback_url`: {} does not support webhooks; poll GET /api/v1/tasks/{{task_id}} instead.",
                    model.id
                ));
            }
            let url = guard.check_url(url).map_err(|why| Error::Invalid(format!("`callback_url`: {why}")))?;
            callback_url = Some(String::from(url));
        }

        let n = request.n.unwrap_or(1);
        if n == 0 || n > model.max_images {
            return invalid(format!("`n`: {} makes 1 to {} images per request; got {n}.", model.id, model.max_images));
        }

        let callback_events = match request.callback_events {
            None => None,
            Some(_) if request.callback_url.is_none() => {
                return invalid("`callback_events`: only with a `callback_url`.".into());
            }
            Some(names) => Some(callback_events(&names)?),
        };

        // `n` is stored only above 1, so a request for one image is what it always was.
        let input = TaskInput { prompt: prompt.to_owned(), aspect_ratio, quality, image_urls, n: (n > 1).then_some(n) };
        Ok(ValidRequest {
            model,
            sub_model,
            route: sub_model.routes_in_order()[0],
            quote: pricing::quote(model, &input),
            input,
            callback_url,
            callback_events,
        })
    }
}

/// `callback_events`: at least one of `completed` and `started`, each once, in that order whatever
/// order they came in (so equal requests hash equal). `progress` is refused: no provider reports it.
fn callback_events(names: &[String]) -> Result<Vec<CallbackEvent>, Error> {
    let mut events = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let event = match name.as_str() {
            "completed" => CallbackEvent::Completed,
            "started" => CallbackEvent::Started,
            "progress" => {
                return Err(Error::Invalid(format!(
                    "`callback_events[{i}]`: `progress` is not sent: no provider reports progress yet."
                )))
            }
            other => {
                return Err(Error::Invalid(format!(
                    "`callback_events[{i}]`: `{other}` is not one of completed, started."
                )))
            }
        };
        if !events.contains(&event) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(Error::Invalid("`callback_events`: name at least one event (completed, started).".into()));
    }
    events.sort_by_key(|event| *event != CallbackEvent::Completed);
    Ok(events)
}

/// The value of a declared parameter: the given one if allowed, else its default. A parameter the
/// model does not declare may not be given.
fn choose(model: &Model, name: &str, given: Option<String>) -> Result<Option<String>, Error> {
    let Some(parameter) = model.parameter(name) else {
        return match given {
            Some(_) => Err(Error::Invalid(format!("`{name}`: {} has no {name} parameter.", model.id))),
            None => Ok(None),
        };
    };
    match given {
        None => Ok(Some(parameter.default.clone())),
        Some(value) if parameter.values.contains(&value) => Ok(Some(value)),
        Some(value) => Err(Error::Invalid(format!(
            "`{name}`: `{value}` is not allowed for {}; use one of {}.",
            model.id,
            parameter.values.join(", ")
        ))),
    }
}

/// Demo mode: the sub-model's own simulated routes, else one to the simulated provider, so that every
/// model of the catalog is there to try on a fresh machine.
fn demo_routes(sub: &SubModel, simulated: &BTreeSet<String>) -> Vec<Route> {
    let own: Vec<Route> = sub.routes.iter().filter(|r| simulated.contains(&r.provider)).cloned().collect();
    if !own.is_empty() {
        return own;
    }
    let Some(provider) = simulated.iter().next() else { return Vec::new() };
    vec![Route {
        provider: provider.clone(),
        upstream_model: sub.id.clone(),
        provider_label: None,
        priority: 0,
        weight: 1,
        map: BTreeMap::new(),
        fixed: Map::new(),
    }]
}

/// Reads and parses a catalog file.
pub fn read(path: &Path) -> anyhow::Result<Vec<Model>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading catalog {}", path.display()))?;
    let file: CatalogFile = toml::from_str(&text).with_context(|| format!("parsing catalog {}", path.display()))?;
    Ok(file.models)
}

/// What [`check`] found, one line each.
#[derive(Debug, Default)]
pub struct Report {
    /// The catalog is unusable.
    pub errors: Vec<String>,
    /// Routes to providers the configuration does not have: an error for `check-config`, a warning
    /// when serving (the routes are unused).
    pub unknown_providers: Vec<String>,
    /// Routes to inactive providers (key unset), models without an active route.
    pub warnings: Vec<String>,
}

/// Everything wrong or doubtful with a catalog under these settings.
pub fn check(models: &[Model], settings: &Settings) -> Report {
    let mut report = Report::default();
    let mode = settings.provider_mode();
    // Demo mode: the simulated provider serves every model.
    let demo_served = mode == ProviderMode::Demo
        && settings.providers.values().any(|p| p.kind == ProviderKind::Simulated && p.is_active());
    let problems = &mut report.errors;
    let mut ids = BTreeSet::new();
    // Provider id → the sub-models whose routes name it, for one line per provider.
    let mut unknown: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut inactive: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for model in models {
        let at = format!("model `{}`", model.id);
        if !ids.insert(model.id.clone()) {
            problems.push(format!("{at}: id used twice"));
        }
        if model.credits < 0 {
            problems.push(format!("{at}: credits must not be negative"));
        }
        problems.extend(pricing::problems(&at, model));
        if model.max_prompt_chars == 0 {
            problems.push(format!("{at}: max_prompt_chars must be above 0"));
        }
        let [min, max] = model.runtime_secs;
        if min > max || max == 0 || max > MAX_RUNTIME_SECS {
            problems.push(format!(
                "{at}: runtime_secs must be [min, max] seconds with min ≤ max and 0 < max ≤ {MAX_RUNTIME_SECS}"
            ));
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
        problems.extend(openai_problems(&at, model));
        for alias in &model.openai.aliases {
            if !ids.insert(alias.clone()) {
                problems.push(format!("{at}: openai alias `{alias}` is already an id or alias"));
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
            if sub.routes.is_empty() {
                problems.push(format!("{at}: sub-model `{}` has no route", sub.id));
            }
            let kind = |route: &Route| settings.providers.get(&route.provider).map(|p| p.kind);
            let simulated = sub.routes.iter().filter(|r| kind(r) == Some(ProviderKind::Simulated)).count();
            let real = sub.routes.iter().filter(|r| kind(r).is_some_and(|k| k != ProviderKind::Simulated)).count();
            if simulated > 0 && real > 0 && !settings.catalog.allow_simulated_fallback {
                problems.push(format!(
                    "{at}: sub-model `{}` mixes simulated and real routes: a simulated image would be billed as \
                     a real one (demo mode needs no simulated route; staging sets catalog.allow_simulated_fallback)",
                    sub.id
                ));
            }
            for route in &sub.routes {
                problems.extend(route.mapping_problems(model).into_iter().map(|p| format!("{at}: {p}")));
                match settings.providers.get(&route.provider) {
                    Some(provider) if provider.kind == ProviderKind::Simulated && !mode.serves_simulated() => {}
                    Some(provider) if provider.is_active() => active_routes += 1,
                    Some(_) => inactive.entry(&route.provider).or_default().push(&sub.id),
                    None => unknown.entry(&route.provider).or_default().push(&sub.id),
                }
            }
        }
        if active_routes == 0 && !demo_served && !model.sub_models.is_empty() {
            report.warnings.push(format!("{at}: no active provider route; it is not offered"));
        }
    }
    for (provider, subs) in unknown {
        report.unknown_providers.push(format!(
            "routes of {} name provider `{provider}`, which is not configured ([providers.{provider}]); they are unused",
            subs.join(", ")
        ));
    }
    for (provider, subs) in inactive {
        let variable =
            settings.providers.get(provider).and_then(|p| p.api_key_env.as_deref()).unwrap_or("its key variable");
        report.warnings.push(format!(
            "provider `{provider}` is inactive (${variable} is unset): routes of {} are unused",
            subs.join(", ")
        ));
    }
    report
}

/// What is wrong with a model's OpenAI sizes and qualities: each must name one of its values.
fn openai_problems(at: &str, model: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, parameter) in [(&model.openai.sizes, "aspect_ratio"), (&model.openai.quality, "quality")] {
        for (theirs, ours) in table {
            let allowed = model.parameter(parameter).is_some_and(|p| p.values.contains(ours));
            if !allowed {
                problems.push(format!("{at}: openai `{theirs}` maps to `{ours}`, not a value of its `{parameter}`"));
            }
        }
    }
    problems
}

/// The body of `POST /api/v1/images/generations`. Unknown fields are refused by name.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// A model id (its default sub-model) or a sub-model id; default `catalog.default_model`.
    #[schema(example = "seedream/4.5-text-to-image")]
    pub model: Option<String>,
    /// Required: not empty after trimming, at most the model's `max_prompt_chars`.
    #[schema(
        example = "A serene mountain lake at sunrise with reflections, photorealistic",
        min_length = 1,
        value_type = String,
        required = true
    )]
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
    /// With `callback_url`: which events it receives, `completed` (the default) and/or `started`.
    #[schema(example = json!(["started", "completed"]), value_type = Option<Vec<CallbackEvent>>)]
    pub callback_events: Option<Vec<String>>,
    /// How many images (default 1), up to the model's `max_images`. The price is per image; only the
    /// images delivered are charged.
    #[schema(example = 1, minimum = 1)]
    pub n: Option<u32>,
}

/// A request that passed validation: what to store, what it costs, and which route serves it.
pub struct ValidRequest<'a> {
    pub model: &'a Model,
    pub sub_model: &'a SubModel,
    pub route: &'a Route,
    pub input: TaskInput,
    pub callback_url: Option<String>,
    pub callback_events: Option<Vec<CallbackEvent>>,
    /// What it costs: the credits to hold, per image × `n`, and how.
    pub quote: Quote,
}

#[cfg(test)]
mod tests {
    use super::PollSchedule;

    #[test]
    fn polls_first_at_the_minimum_runtime_then_often_then_back_off() {
        let secs = std::time::Duration::from_secs_f64;
        let schedule = PollSchedule { min: secs(3.0), max: secs(10.0) };
        let cap = secs(30.0);
        assert_eq!(schedule.next(secs(0.0), cap), secs(3.0));
        assert_eq!(schedule.next(secs(1.0), cap), secs(2.0));
        assert_eq!(schedule.next(secs(3.0), cap), secs(1.0));
        assert_eq!(schedule.next(secs(9.5), cap), secs(1.0));
        assert_eq!(schedule.next(secs(10.0), cap), secs(1.0));
        assert_eq!(schedule.next(secs(14.0), cap), secs(2.0));
        assert_eq!(schedule.next(secs(100.0), cap), cap);
        // A narrow window never polls more often than every 250 ms; the cap wins over everything.
        let narrow = PollSchedule { min: secs(1.0), max: secs(1.0) };
        assert_eq!(narrow.next(secs(1.0), cap), secs(0.25));
        assert_eq!(schedule.next(secs(0.0), secs(2.0)), secs(2.0));
    }

    use super::*;

    /// A model with `aspect_ratio` (1:1, 16:9) and `quality` (basic, high), and one route written in
    /// catalog TOML.
    fn model_with_route(route: &str) -> Model {
        let text = format!(
            r#"
            [[models]]
            id = "m"
            name = "M"
            vendor = "V"
            credits = 1
            webhook = false
            input_types = ["text"]
            output = "image"
            max_prompt_chars = 10
            parameters = [
                {{ name = "aspect_ratio", default = "1:1", values = ["1:1", "16:9"], description = "" }},
                {{ name = "quality", default = "basic", values = ["basic", "high"], description = "" }},
            ]
            [[models.sub_models]]
            id = "m/t2i"
            description = ""
            [[models.sub_models.routes]]
            provider = "p"
            upstream_model = "x"
            {route}
            "#
        );
        let file: CatalogFile = toml::from_str(&text).expect("a valid catalog");
        file.models.into_iter().next().expect("one model")
    }

    fn input(aspect_ratio: &str, quality: &str, image_urls: &[&str]) -> TaskInput {
        TaskInput {
            prompt: "a lake".into(),
            aspect_ratio: Some(aspect_ratio.into()),
            quality: Some(quality.into()),
            image_urls: image_urls.iter().map(|u| u.to_string()).collect(),
            n: None,
        }
    }

    #[test]
    fn a_route_maps_names_and_values_omits_and_adds_fixed_fields() {
        let model = model_with_route(
            r#"map.aspect_ratio = { to = "image_size", values = { "1:1" = { width = 1024, height = 1024 }, "16:9" = "landscape_16_9" } }
            map.quality = { omit = true }
            map.image_urls = { to = "images" }
            fixed = { num_images = 1, prompt = "overridden by ours" }"#,
        );
        let route = &model.sub_models[0].routes[0];
        assert!(route.mapping_problems(&model).is_empty(), "{:?}", route.mapping_problems(&model));
        let fields = route.mapped_input(&input("16:9", "high", &["https://a.example/1.png"]));
        assert_eq!(
            Value::Object(fields),
            json!({"prompt": "a lake", "image_size": "landscape_16_9", "images": ["https://a.example/1.png"], "num_images": 1})
        );
        let fields = route.mapped_input(&input("1:1", "basic", &[]));
        assert_eq!(
            Value::Object(fields),
            json!({"prompt": "a lake", "image_size": {"width": 1024, "height": 1024}, "num_images": 1})
        );
    }

    #[test]
    fn a_route_without_a_mapping_sends_our_fields_under_our_names() {
        let model = model_with_route("");
        let fields = model.sub_models[0].routes[0].mapped_input(&input("16:9", "high", &["https://a.example/1.png"]));
        assert_eq!(
            Value::Object(fields),
            json!({"prompt": "a lake", "aspect_ratio": "16:9", "quality": "high", "image_urls": ["https://a.example/1.png"]})
        );
    }

    #[test]
    fn a_value_may_be_picked_by_another_parameter() {
        let model = model_with_route(
            r#"map.aspect_ratio = { to = "size", by = "quality", values = { basic = { "1:1" = "2048*2048", "16:9" = "2048*1152" }, high = { "1:1" = "4096*4096", "16:9" = "4096*2304" } } }
            map.quality = { omit = true }"#,
        );
        let route = &model.sub_models[0].routes[0];
        assert!(route.mapping_problems(&model).is_empty(), "{:?}", route.mapping_problems(&model));
        assert_eq!(
            Value::Object(route.mapped_input(&input("16:9", "high", &[]))),
            json!({"prompt": "a lake", "size": "4096*2304"})
        );
        assert_eq!(
            Value::Object(route.mapped_input(&input("1:1", "basic", &[]))),
            json!({"prompt": "a lake", "size": "2048*2048"})
        );
    }

    #[test]
    fn tables_picked_by_another_parameter_are_checked() {
        let problems = |route: &str| {
            let model = model_with_route(route);
            model.sub_models[0].routes[0].mapping_problems(&model).join("\n")
        };
        let found = problems(r#"map.aspect_ratio = { by = "quality", values = { basic = { "1:1" = 1 }, ultra = 2 } }"#);
        for expected in [
            "map.aspect_ratio: `ultra` is not one of the parameter's values (basic, high)",
            "map.aspect_ratio: the parameter's value `high` is not mapped",
            "map.aspect_ratio.values.basic: the parameter's value `16:9` is not mapped",
            "map.aspect_ratio.values.ultra: must be a table of `aspect_ratio` values",
        ] {
            assert!(found.contains(expected), "{expected:?} in {found}");
        }
        let found = problems(r#"map.aspect_ratio = { by = "aspect_ratio", values = { "1:1" = {} } }"#);
        assert!(
            found.contains("map.aspect_ratio: `by` must name another parameter of the model, not `aspect_ratio`"),
            "{found}"
        );
        let found = problems(r#"map.quality = { by = "aspect_ratio" }"#);
        assert!(found.contains("map.quality: `by` needs `values`"), "{found}");
        let found = problems(r#"map.prompt = { by = "quality" }"#);
        assert!(found.contains("map.prompt: `prompt` is free text"), "{found}");
    }

    #[test]
    fn invalid_mappings_are_reported() {
        let model = model_with_route(
            r#"map.style = { to = "style" }
            map.quality = { to = "", values = { basic = "2K", ultra = "8K" } }
            map.prompt = { values = { a = "b" } }"#,
        );
        let problems = model.sub_models[0].routes[0].mapping_problems(&model).join("\n");
        for expected in [
            "map.style: the model has no parameter `style`",
            "map.quality: `to` must not be empty",
            "map.quality: `ultra` is not one of the parameter's values (basic, high)",
            "map.quality: the parameter's value `high` is not mapped",
            "map.prompt: `prompt` is free text",
        ] {
            assert!(problems.contains(expected), "{expected:?} in {problems}");
        }
    }
}
