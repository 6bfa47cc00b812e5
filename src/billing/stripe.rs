//! Stripe, as far as the gateway needs it: creating a Checkout Session through the HTTP API
//! (`POST /v1/checkout/sessions`, form-encoded, the secret key as bearer) and verifying the
//! `Stripe-Signature` header of webhook deliveries exactly as Stripe specifies it
//! (<https://docs.stripe.com/webhooks#verify-manually>): `t=<unix time>,v1=<hex>[,v1=<hex>…]`, where a
//! `v1` is HMAC-SHA256 of `"{t}.{payload}"` with the endpoint's secret; any one matching `v1` will do
//! (Stripe sends one per active secret while a secret is rolled); other schemes (`v0`) are ignored;
//! the timestamp must be within the tolerance of now.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::Error;

/// How far a signed timestamp may be from now, either way (Stripe's libraries' default).
pub const TOLERANCE_SECS: i64 = 300;
/// The most `v1` values one header may carry before it is refused outright.
const MAX_SIGNATURES: usize = 16;

/// Why a webhook delivery was refused. Every case answers 400 and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// No header, or one without `t=` or without any `v1=`.
    Malformed,
    /// No `v1` matches any configured secret.
    Mismatch,
    /// The signature is right but `t` is more than the tolerance away from now (a replay).
    Stale,
}

impl SignatureError {
    pub fn message(self) -> &'static str {
        match self {
            SignatureError::Malformed => "The Stripe-Signature header is missing or malformed.",
            SignatureError::Mismatch => "No signature in the Stripe-Signature header matches this endpoint's secret.",
            SignatureError::Stale => "The Stripe-Signature timestamp is outside the 300 s tolerance.",
        }
    }
}

/// Checks `header` (the value of `Stripe-Signature`) over the raw `payload` with any of `secrets`, at
/// the unix time `now`.
pub fn verify(header: Option<&str>, payload: &[u8], secrets: &[SecretString], now: i64) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Malformed)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_none() => {
                timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            "v1" if signatures.len() < MAX_SIGNATURES => {
                // A value that is not hex can match nothing; it is skipped like another scheme's.
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matches = secrets.iter().any(|secret| {
        signatures.iter().any(|signature| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
                return false;
            };
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(payload);
            // Constant-time comparison.
            mac.verify_slice(signature).is_ok()
        })
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The parts of a Checkout Session the gateway reads.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub url: Option<String>,
}

/// What a Checkout Session is created with.
pub struct NewSession<'a> {
    pub order_id: &'a str,
    pub account_id: i64,
    pub label: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
}

pub struct Client {
    http: reqwest::Client,
    api_base: String,
    secret_key: Option<SecretString>,
}

impl Client {
    pub fn new(api_base: &str, secret_key: Option<SecretString>) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Client { http, api_base: api_base.trim_end_matches('/').to_owned(), secret_key })
    }

    pub fn is_configured(&self) -> bool {
        self.secret_key.is_some()
    }

    /// Creates a one-off payment Checkout Session for the order. The order id is the idempotency key
    /// (a retried create returns the same session) and travels as `client_reference_id` and metadata.
    pub async fn create_session(&self, new: &NewSession<'_>) -> Result<CheckoutSession, Error> {
        let key = self.secret_key.as_ref().ok_or_else(not_configured)?;
        let account_id = new.account_id.to_string();
        let amount = new.amount.to_string();
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("mode", "payment")
            .append_pair("client_reference_id", new.order_id)
            .append_pair("metadata[order_id]", new.order_id)
            .append_pair("metadata[account_id]", &account_id)
            .append_pair("payment_intent_data[metadata][order_id]", new.order_id)
            .append_pair("line_items[0][quantity]", "1")
            .append_pair("line_items[0][price_data][currency]", new.currency)
            .append_pair("line_items[0][price_data][unit_amount]", &amount)
            .append_pair("line_items[0][price_data][product_data][name]", new.label)
            .append_pair("success_url", new.success_url)
            .append_pair("cancel_url", new.cancel_url)
            .finish();
        let response = self
            .http
            .post(format!("{}/v1/checkout/sessions", self.api_base))
            .bearer_auth(key.expose_secret())
            .header("Idempotency-Key", new.order_id)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "Stripe unreachable");
                Error::Upstream("The payment provider could not be reached; try again shortly.".into())
            })?;
        let status = response.status();
        if !status.is_success() {
            // Stripe's error message names the problem (never the key); it is logged, not shown.
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            tracing::error!(status = status.as_u16(), message = %message, "Stripe refused the Checkout Session");
            return Err(Error::Upstream("The payment provider refused the checkout; try again later.".into()));
        }
        response.json::<CheckoutSession>().await.map_err(|error| {
            tracing::error!(error = %error, "Stripe's Checkout Session answer did not parse");
            Error::Upstream("The payment provider answered something unexpected.".into())
        })
    }
}

/// The refusal of an order while `STRIPE_SECRET_KEY` is unset.
pub fn not_configured() -> Error {
    Error::Conflict("Online top-up is not set up on this gateway (STRIPE_SECRET_KEY is unset).".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, timestamp: i64, payload: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(payload);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn one_matching_v1_among_several_is_enough_and_other_schemes_are_ignored() {
        let secrets = [SecretString::from("whsec_new")];
        let payload = br#"{"id":"evt_1"}"#;
        let now = 1_700_000_000;
        let good = sign("whsec_new", now, payload);
        let old = sign("whsec_old", now, payload);
        let header = format!("t={now},v1={old},v0=zz,v1={good}");
        assert_eq!(verify(Some(&header), payload, &secrets, now + 10), Ok(()));
        assert_eq!(verify(Some(&format!("t={now},v1={old}")), payload, &secrets, now), Err(SignatureError::Mismatch));
        assert_eq!(verify(Some(&header), b"{}", &secrets, now), Err(SignatureError::Mismatch));
        assert_eq!(verify(Some(&header), payload, &secrets, now + 301), Err(SignatureError::Stale));
        assert_eq!(verify(Some(&format!("v1={good}")), payload, &secrets, now), Err(SignatureError::Malformed));
        assert_eq!(verify(Some(&format!("t={now}")), payload, &secrets, now), Err(SignatureError::Malformed));
        assert_eq!(verify(None, payload, &secrets, now), Err(SignatureError::Malformed));
        assert_eq!(verify(Some(&header), payload, &[], now), Err(SignatureError::Mismatch));
    }
}
