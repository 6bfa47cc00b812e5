//! Prices that follow the request: a model's per-image `credits`, then its `price_rules` in order
//! (each one whose `when` matches the request's parameters multiplies, sets or adds to the per-image
//! price), times the number of images asked for (`n`). The result is a [`Quote`]: the credits held on
//! create and the steps that led to them (`credits.breakdown` of the task object, frozen at create).
//!
//! Rounding: credits are integers; a `multiply` rounds up to the next whole credit at once (so a rule
//! never makes an image cheaper by rounding), `set` and `add` are whole credits already. A price never
//! goes below 0. Multipliers are exact to 1/1000 (`1.5`, `0.875`), so the arithmetic is integer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Model;
use crate::tasks::TaskInput;

/// One rule of a model's `price_rules`: when every `when` parameter has its value, exactly one of
/// `multiply`, `set` and `add` applies to the per-image price.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceRule {
    /// Parameter name → value (e.g. `{"quality": "high"}`); all must match. Empty: always.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// The per-image price × this, rounded up to a whole credit (exact to 1/1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiply: Option<f64>,
    /// The per-image price becomes this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<i64>,
    /// The per-image price + this (may be negative; the price stays ≥ 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<i64>,
}

/// One step of a quote, in order: `base` (the model's per-image credits), each matching `rule`, then
/// `images` (× `n`). `credits` is the price after the step.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PriceStep {
    /// `base`, `rule` or `images`.
    #[schema(example = "rule")]
    pub step: String,
    /// A rule's condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiply: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<i64>,
    /// The `images` step: how many images are asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// The price after this step, in credits.
    pub credits: i64,
}

/// What a request costs: `credits` (held on create: the price if every image is delivered), the price
/// of one image and how many are asked for, and how the price came about.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Quote {
    #[schema(example = 36)]
    pub credits: i64,
    #[schema(example = 18)]
    pub per_image: i64,
    #[schema(example = 2)]
    pub n: u32,
    pub breakdown: Vec<PriceStep>,
}

/// A multiplier in thousandths; `None` when it is not a positive multiple of 1/1000 below 1000.
fn per_mille(multiply: f64) -> Option<i64> {
    let scaled = multiply * 1000.0;
    let rounded = scaled.round();
    (multiply.is_finite() && rounded > 0.0 && rounded <= 1_000_000.0 && (scaled - rounded).abs() < 1e-6)
        .then_some(rounded as i64)
}

impl PriceRule {
    fn matches(&self, parameter: &dyn Fn(&str) -> Option<String>) -> bool {
        self.when.iter().all(|(name, value)| parameter(name).as_deref() == Some(value.as_str()))
    }

    fn apply(&self, price: i64) -> i64 {
        let next = if let Some(multiply) = self.multiply {
            let factor = per_mille(multiply).unwrap_or(1000);
            (price.saturating_mul(factor) + 999).div_euclid(1000)
        } else if let Some(set) = self.set {
            set
        } else {
            price.saturating_add(self.add.unwrap_or(0))
        };
        next.max(0)
    }
}

/// The quote for `input` on `model`: base, matching rules in order, × `n` (1 when not given).
pub fn quote(model: &Model, input: &TaskInput) -> Quote {
    let parameter = |name: &str| match name {
        "aspect_ratio" => input.aspect_ratio.clone(),
        "quality" => input.quality.clone(),
        _ => None,
    };
    let mut price = model.credits;
    let mut breakdown = vec![PriceStep::new("base", price)];
    for rule in model.price_rules.iter().filter(|rule| rule.matches(&parameter)) {
        price = rule.apply(price);
        breakdown.push(PriceStep {
            when: Some(rule.when.clone()),
            multiply: rule.multiply,
            set: rule.set,
            add: rule.add,
            ..PriceStep::new("rule", price)
        });
    }
    let n = input.images();
    let credits = price.saturating_mul(i64::from(n));
    breakdown.push(PriceStep { n: Some(n), ..PriceStep::new("images", credits) });
    Quote { credits, per_image: price, n, breakdown }
}

impl PriceStep {
    fn new(step: &str, credits: i64) -> PriceStep {
        PriceStep { step: step.into(), when: None, multiply: None, set: None, add: None, n: None, credits }
    }
}

/// The cheapest and dearest request of a model: one image at the lowest per-image price, and
/// `max_images` at the highest, over every combination of its parameters' values.
pub fn range(model: &Model) -> (i64, i64) {
    let prices: Vec<i64> = combinations(model).iter().map(|input| quote(model, input).per_image).collect();
    let min = prices.iter().copied().min().unwrap_or(model.credits);
    let max = prices.iter().copied().max().unwrap_or(model.credits);
    (min, max.saturating_mul(i64::from(model.max_images.max(1))))
}

/// Every combination of the model's parameter values, as inputs (one image each).
fn combinations(model: &Model) -> Vec<TaskInput> {
    let mut inputs =
        vec![TaskInput { prompt: String::new(), aspect_ratio: None, quality: None, image_urls: Vec::new(), n: None }];
    for parameter in &model.parameters {
        inputs = inputs
            .into_iter()
            .flat_map(|input| {
                parameter.values.iter().map(move |value| {
                    let mut input = input.clone();
                    match parameter.name.as_str() {
                        "aspect_ratio" => input.aspect_ratio = Some(value.clone()),
                        "quality" => input.quality = Some(value.clone()),
                        _ => {}
                    }
                    input
                })
            })
            .collect();
    }
    inputs
}

/// The most images one request may ask for, whatever the catalog says.
pub const MAX_IMAGES: u32 = 10;

/// What is wrong with a model's `max_images` and `price_rules`, one line each.
pub fn problems(at: &str, model: &Model) -> Vec<String> {
    let mut problems = Vec::new();
    if !(1..=MAX_IMAGES).contains(&model.max_images) {
        problems.push(format!("{at}: max_images must be 1 to {MAX_IMAGES}"));
    }
    for (i, rule) in model.price_rules.iter().enumerate() {
        let at = format!("{at}: price_rules[{i}]");
        let actions = [rule.multiply.is_some(), rule.set.is_some(), rule.add.is_some()];
        if actions.iter().filter(|given| **given).count() != 1 {
            problems.push(format!("{at}: needs exactly one of multiply, set, add"));
        }
        if rule.multiply.is_some_and(|m| per_mille(m).is_none()) {
            problems.push(format!("{at}: multiply must be above 0, at most 1000, in steps of 0.001"));
        }
        if rule.set.is_some_and(|set| set < 0) {
            problems.push(format!("{at}: set must not be negative"));
        }
        for (name, value) in &rule.when {
            match model.parameter(name) {
                None => problems.push(format!("{at}: when.{name}: the model has no parameter `{name}`")),
                Some(parameter) if !parameter.values.contains(value) => problems.push(format!(
                    "{at}: when.{name}: `{value}` is not one of its values ({})",
                    parameter.values.join(", ")
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(rules: &str, max_images: u32) -> Model {
        let text = format!(
            r#"
            id = "m"
            name = "M"
            vendor = "V"
            credits = 10
            webhook = false
            input_types = ["text"]
            output = "image"
            max_prompt_chars = 10
            max_images = {max_images}
            price_rules = {rules}
            parameters = [
                {{ name = "aspect_ratio", default = "1:1", values = ["1:1", "16:9"], description = "" }},
                {{ name = "quality", default = "basic", values = ["basic", "high"], description = "" }},
            ]
            sub_models = []
            "#
        );
        toml::from_str(&text).expect("a valid model")
    }

    fn input(aspect_ratio: &str, quality: &str, n: Option<u32>) -> TaskInput {
        TaskInput {
            prompt: "x".into(),
            aspect_ratio: Some(aspect_ratio.into()),
            quality: Some(quality.into()),
            image_urls: vec![],
            n,
        }
    }

    #[test]
    fn rules_apply_in_order_with_multiplies_rounded_up() {
        let model = model(
            r#"[{ when = { quality = "high" }, multiply = 1.15 }, { when = { aspect_ratio = "16:9" }, add = 2 },
               { when = { quality = "high", aspect_ratio = "16:9" }, set = 30 }]"#,
            4,
        );
        assert!(problems("m", &model).is_empty(), "{:?}", problems("m", &model));
        let basic = quote(&model, &input("1:1", "basic", None));
        assert_eq!((basic.credits, basic.per_image, basic.n), (10, 10, 1));
        // 10 × 1.15 = 11.5 → 12 (rounded up), × 2 images.
        let high = quote(&model, &input("1:1", "high", Some(2)));
        assert_eq!((high.credits, high.per_image), (24, 12));
        let steps: Vec<(&str, i64)> = high.breakdown.iter().map(|s| (s.step.as_str(), s.credits)).collect();
        assert_eq!(steps, [("base", 10), ("rule", 12), ("images", 24)]);
        let both = quote(&model, &input("16:9", "high", Some(3)));
        assert_eq!((both.per_image, both.credits, both.breakdown.len()), (30, 90, 5));
        assert_eq!(range(&model), (10, 120));
        // 10 × 1.1 is 11 exactly, never 12 through floating point.
        let tenth = model_with_multiply(1.1);
        assert_eq!(quote(&tenth, &input("1:1", "high", None)).credits, 11);
    }

    fn model_with_multiply(multiply: f64) -> Model {
        model(&format!("[{{ when = {{ quality = \"high\" }}, multiply = {multiply} }}]"), 1)
    }

    #[test]
    fn bad_rules_are_named() {
        let model = model(
            r#"[{ when = { style = "x" }, add = 1 }, { when = { quality = "ultra" }, set = -1 },
               { multiply = 0.0001 }, { add = 1, set = 2 }]"#,
            0,
        );
        let found = problems("model `m`", &model).join("\n");
        for expected in [
            "model `m`: max_images must be 1 to 10",
            "price_rules[0]: when.style: the model has no parameter `style`",
            "price_rules[1]: when.quality: `ultra` is not one of its values (basic, high)",
            "price_rules[1]: set must not be negative",
            "price_rules[2]: multiply must be above 0",
            "price_rules[3]: needs exactly one of multiply, set, add",
        ] {
            assert!(found.contains(expected), "{expected:?} in {found}");
        }
    }
}
