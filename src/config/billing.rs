//! `[[billing.packages]]` (what a user can buy) and `[billing.stripe]` (where the payments go). The
//! Stripe keys come from `STRIPE_SECRET_KEY` and `STRIPE_WEBHOOK_SECRET`, never from the file.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The environment variable of Stripe's secret API key (`sk_live_…` / `sk_test_…`).
pub const STRIPE_SECRET_KEY_ENV: &str = "STRIPE_SECRET_KEY";
/// The environment variable of the webhook endpoint's signing secret(s) (`whsec_…`; several,
/// comma-separated, while the gateway's own secret is being changed).
pub const STRIPE_WEBHOOK_SECRET_ENV: &str = "STRIPE_WEBHOOK_SECRET";

/// One `[[billing.packages]]` entry: `credits` for `amount` (in the currency's smallest unit, e.g.
/// cents) of `currency`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub id: String,
    pub credits: i64,
    pub amount: i64,
    pub currency: String,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeSettings {
    /// Stripe's API host; tests point it at a fake.
    pub api_base: String,
    /// Read from `STRIPE_SECRET_KEY` at start-up; never serialised. Without it, orders are refused.
    #[serde(skip)]
    pub secret_key: Option<SecretString>,
    /// Read from `STRIPE_WEBHOOK_SECRET` at start-up; never serialised. Without one, every webhook is
    /// refused.
    #[serde(skip)]
    pub webhook_secrets: Vec<SecretString>,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self { api_base: "https://api.stripe.com".into(), secret_key: None, webhook_secrets: Vec::new() }
    }
}

impl StripeSettings {
    pub(super) fn read_secrets(&mut self) {
        self.secret_key = std::env::var(STRIPE_SECRET_KEY_ENV)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(SecretString::from);
        self.webhook_secrets = std::env::var(STRIPE_WEBHOOK_SECRET_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| SecretString::from(v.to_owned()))
            .collect();
    }
}

/// The most packages a gateway offers: the list is shown whole.
const MAX_PACKAGES: usize = 50;

/// What [`super::Settings::validate`] checks across the packages.
pub(super) fn package_problems(packages: &[Package], stripe: &StripeSettings) -> Vec<String> {
    let mut problems = Vec::new();
    if packages.len() > MAX_PACKAGES {
        problems.push(format!("billing.packages: at most {MAX_PACKAGES}"));
    }
    for (index, package) in packages.iter().enumerate() {
        let at = format!("billing.packages[{index}]");
        let id_ok = !package.id.is_empty()
            && package.id.len() <= 64
            && package.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            problems.push(format!("{at}.id: 1 to 64 letters, digits, `-` or `_`"));
        }
        if packages[..index].iter().any(|other| other.id == package.id) {
            problems.push(format!("{at}.id: `{}` is listed twice", package.id));
        }
        if !(1..=crate::ledger::MAX_AMOUNT).contains(&package.credits) {
            problems.push(format!("{at}.credits: 1 to {}", crate::ledger::MAX_AMOUNT));
        }
        // Stripe's own bound for one amount (99,999,999.99 in a two-decimal currency).
        if !(1..=99_999_999_999).contains(&package.amount) {
            problems.push(format!("{at}.amount: above 0, in the currency's smallest unit (cents)"));
        }
        if package.currency.len() != 3 || !package.currency.bytes().all(|b| b.is_ascii_lowercase()) {
            problems.push(format!("{at}.currency: a lowercase ISO 4217 code such as `usd`"));
        }
        if package.label.trim().is_empty() || package.label.chars().count() > 100 {
            problems.push(format!("{at}.label: 1 to 100 characters"));
        }
    }
    match reqwest::Url::parse(&stripe.api_base) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        _ => problems.push("billing.stripe.api_base: needs a URL like https://api.stripe.com".into()),
    }
    problems
}
