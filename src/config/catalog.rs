//! What is sold: the catalog, the price of a credit, and the credits of the first account.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogSettings {
    pub default_model: String,
    pub models_path: PathBuf,
    /// Staging only: keep the simulated provider's routes beside real ones (the catalog may then mix
    /// them, and a simulated image is billed like a real one). Off, the simulated provider serves only
    /// while no real provider is configured (demo mode).
    pub allow_simulated_fallback: bool,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        Self {
            default_model: "seedream/4.5-text-to-image".into(),
            models_path: "config/models.toml".into(),
            allow_simulated_fallback: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    #[serde(deserialize_with = "usd_per_credit")]
    pub usd_per_credit: f64,
    /// `[[billing.packages]]`: what users can buy through Stripe Checkout.
    pub packages: Vec<super::billing::Package>,
    pub stripe: super::billing::StripeSettings,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self { usd_per_credit: 0.01, packages: Vec::new(), stripe: Default::default() }
    }
}

fn usd_per_credit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(serde::de::Error::custom("must be a number ≥ 0"));
    }
    Ok(value)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    /// On first start with no accounts, create `default` with `credits` and print its key once.
    pub enabled: bool,
    #[serde(deserialize_with = "credits")]
    pub credits: i64,
    /// Write the key to this file (created with mode 0600, never overwritten) instead of printing it
    /// on stdout, which container runtimes keep in their logs. Empty: stdout.
    pub key_file: std::path::PathBuf,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self { enabled: true, credits: 1000, key_file: std::path::PathBuf::new() }
    }
}

fn credits<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let value = i64::deserialize(deserializer)?;
    if value < 0 {
        return Err(serde::de::Error::custom("must not be negative"));
    }
    Ok(value)
}
