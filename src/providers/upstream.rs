//! What every HTTP provider shares: the client (with the provider's timeout), and how HTTP-level
//! failures become [`ProviderError`]s: retriable (rate limits, 5xx, network, timeouts), route
//! unavailable (an operator problem such as a bad key or an empty account, or a model the provider
//! does not have: clients see only "unavailable", operators find it in the log and the metric), or
//! permanent (invalid input, a lost job).

use secrecy::{ExposeSecret, SecretString};

use super::outcome::short;
use super::{ProviderError, LOST};
use crate::config::ProviderSettings;
use crate::monitoring;
use crate::tasks::TaskErrorCode;

/// Whether a provider's error text blames the request (its input) rather than the provider.
fn reads_like_validation(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    ["invalid", "validation", "must be", "not allowed", "unsupported", "too long", "too large", "out of range"]
        .iter()
        .any(|word| detail.contains(word))
}

/// The neutral message for an upstream account problem: never the provider's own words.
pub const UNAVAILABLE: &str = "The provider is unavailable.";

/// How one configured HTTP provider is reached.
pub struct Upstream {
    /// The provider id, for logs.
    pub id: String,
    pub http: reqwest::Client,
    pub base_url: String,
    key: SecretString,
}

impl Upstream {
    /// `None` when the provider has no key (it is inactive) or no base URL.
    pub fn new(id: &str, settings: &ProviderSettings) -> anyhow::Result<Option<Upstream>> {
        let (Some(key), Some(base_url)) = (settings.api_key.clone(), settings.base_url.as_deref()) else {
            return Ok(None);
        };
        let timeout = settings.timeout;
        // Provider URLs come from the operator's configuration, not from clients: a plain client,
        // without proxies from the environment so that where it connects is what the config says.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("aio-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Upstream { id: id.to_owned(), http, base_url: base_url.trim_end_matches('/').to_owned(), key }))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `Bearer <key>`, or with another scheme (`Key <key>` for fal).
    pub fn authorization(&self, scheme: &str) -> String {
        format!("{scheme} {}", self.key.expose_secret())
    }

    /// Sends the request and reads the whole answer: `(status, body)`. Network errors and timeouts
    /// are retriable.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes), ProviderError> {
        self.send_full(request).await.map(|(status, _, body)| (status, body))
    }

    /// [`Upstream::send`] with the answer's headers, for providers that put meaning in them.
    pub async fn send_full(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), ProviderError> {
        let response = request.send().await.map_err(|error| self.transport_error(&error))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|error| self.transport_error(&error))?;
        Ok((status, headers, body))
    }

    fn transport_error(&self, error: &reqwest::Error) -> ProviderError {
        // reqwest's error text names the URL (never headers), so it is safe to log.
        tracing::warn!(provider = %self.id, error = %error, timeout = error.is_timeout(), "upstream request failed");
        if error.is_timeout() {
            ProviderError::retriable("The provider did not answer in time.")
        } else {
            ProviderError::retriable("The provider could not be reached.")
        }
    }

    /// `text` with every occurrence of the provider key replaced.
    pub fn redact(&self, text: &str) -> String {
        let key = self.key.expose_secret();
        if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, "[redacted]")
        }
    }

    /// A JSON answer the adapter cannot read: logged, retried (a proxy's error page, a deploy).
    pub fn malformed(&self, what: &str, error: impl std::fmt::Display) -> ProviderError {
        tracing::warn!(provider = %self.id, error = %error, "unreadable {what} from the provider");
        ProviderError::retriable("The provider sent an answer the gateway could not read.")
    }

    /// The usual meaning of an HTTP-style status `code` with the provider's `detail`.
    pub fn error_for(&self, code: u16, detail: &str) -> ProviderError {
        // Some providers quote the key they were given: it never reaches a message or the log.
        let detail = &self.redact(detail);
        match code {
            500 if reads_like_validation(detail) => {
                // A request the provider could not process, by the looks of it: retried, but not held
                // against the route, or any client could open the breaker every account shares.
                tracing::warn!(provider = %self.id, code, detail = %short(detail), "provider failed on this request");
                ProviderError {
                    blame: super::Blame::Request,
                    ..ProviderError::retriable(format!("The provider answered {code}; retrying."))
                }
            }
            429 | 500 | 502..=504 => {
                tracing::warn!(provider = %self.id, code, detail = %short(detail), "provider busy or failing");
                ProviderError::retriable(format!("The provider answered {code}; retrying."))
            }
            400 | 422 => ProviderError::permanent(
                TaskErrorCode::UpstreamRejected,
                format!("The provider rejected the request: {}", short(detail)),
            ),
            404 => ProviderError::permanent(TaskErrorCode::UpstreamFailed, LOST),
            _ => self.unavailable(code, detail),
        }
    }

    /// [`Upstream::error_for`] for a submit, where a 404 means the model (the route's path) is not there.
    pub fn submit_error_for(&self, code: u16, detail: &str) -> ProviderError {
        match code {
            404 => self.model_not_found(detail),
            _ => self.error_for(code, detail),
        }
    }

    /// An operator problem (credentials, billing, a disabled feature, an unexpected status): the route
    /// is unavailable; the client gets the neutral message, the provider's words go to the log only,
    /// and `aio_upstream_account_problems_total` counts it.
    pub fn unavailable(&self, code: u16, detail: &str) -> ProviderError {
        let detail = &self.redact(detail);
        tracing::error!(provider = %self.id, code, detail = %short(detail), "provider refused the gateway's account");
        monitoring::upstream_account_problem(&self.id, code);
        ProviderError::route_unavailable(UNAVAILABLE)
    }

    /// The provider does not have the route's model: a catalog problem, counted like an account one.
    pub fn model_not_found(&self, detail: &str) -> ProviderError {
        let detail = &self.redact(detail);
        tracing::error!(provider = %self.id, detail = %short(detail), "the provider does not serve this route's model");
        monitoring::upstream_account_problem(&self.id, 404);
        ProviderError::route_unavailable(UNAVAILABLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Blame;

    #[test]
    fn only_provider_failures_count_against_a_route() {
        assert!(ProviderError::retriable("503").counts_against_route());
        assert!(!ProviderError::local("our database").counts_against_route());
        assert!(!ProviderError::permanent(TaskErrorCode::UpstreamRejected, "bad input").counts_against_route());
        assert!(reads_like_validation("Invalid prompt: must be at most 1000 characters"));
        assert!(!reads_like_validation("CUDA out of memory"));
        let upstream = Upstream {
            id: "p".into(),
            http: reqwest::Client::new(),
            base_url: "https://p.example".into(),
            key: SecretString::from("k"),
        };
        let content = upstream.error_for(500, "validation error: image_size is not allowed");
        assert!(content.retriable && content.blame == Blame::Request && !content.counts_against_route());
        assert!(upstream.error_for(500, "internal error").counts_against_route());
        assert!(upstream.error_for(503, "busy").counts_against_route());
    }
}
