//! The HTTP API: routes, the middleware stack, and the one error envelope.

mod admin;
mod audit;
mod billing;
mod callbacks;
mod console;
mod deliveries;
pub mod error;
mod events;
pub mod extract;
mod files;
mod health;
mod images;
mod keys;
mod metrics;
mod models;
mod openai;
pub mod openapi;
pub mod serve;
mod session;
mod state;
mod tasks;
mod usage;
mod webhook_secret;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{delete, get, post};
use axum::{middleware, Extension, Router};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::Error;
use error::ApiError;
pub use events::StreamSlots;
use extract::BodyLimit;
pub use state::{AppState, Parts};

pub fn router(state: AppState) -> Router {
    let routes = Router::new().route("/healthz", get(health::live)).route("/readyz", get(health::ready));
    let upload_limit = state.settings.openai.max_upload_bytes.get();
    let routes = if state.settings.server.role.serves_api() { routes.merge(api_routes(upload_limit)) } else { routes };
    let routes = if state.settings.server.metrics_listen.is_none() {
        routes.route("/metrics", get(metrics::render))
    } else {
        routes
    };
    with_middleware(routes, state)
}

/// The router of `server.metrics_listen`: `/metrics` alone.
pub fn metrics_router(state: AppState) -> Router {
    with_middleware(Router::new().route("/metrics", get(metrics::render)), state)
}

/// The middleware every listener shares: request ids, the request span, metrics, the error envelope,
/// body limits, panics as 500s.
fn with_middleware(routes: Router<AppState>, state: AppState) -> Router {
    let body_limit = state.settings.server.body_limit_bytes.get();
    let request_id = HeaderName::from_static("x-request-id");
    routes
        .fallback(|| async { ApiError::from(Error::NotFound("No route matches this path.".into())) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(metrics::track_http))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(state.settings.server.request_body_timeout))
        .layer(Extension(BodyLimit(body_limit)))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::map_request(drop_unsafe_request_id))
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUlid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(TraceLayer::new_for_http().make_span_with(request_span).on_response(finish_span))
                .layer(middleware::from_fn(error::render_errors))
                .layer(CatchPanicLayer::custom(error::panic_response)),
        )
        .with_state(state)
}

fn api_routes(upload_limit: usize) -> Router<AppState> {
    Router::new()
        .route("/api/v1/images/generations", post(images::create))
        .route("/api/v1/quotes", post(images::quote))
        .route("/api/v1/tasks", get(tasks::list))
        .route("/api/v1/tasks/{task_id}", get(tasks::get))
        .route("/api/v1/tasks/{task_id}/cancel", post(tasks::cancel))
        .route("/api/v1/tasks/{task_id}/events", get(events::stream))
        .route("/api/v1/tasks/{task_id}/deliveries", get(deliveries::list))
        .route("/api/v1/tasks/{task_id}/deliveries/retry", post(deliveries::retry))
        .route("/api/v1/billing/credits", get(billing::credits))
        .route("/billing/credits", get(billing::credits_alias))
        // Top-up (issue 21): packages, Stripe Checkout orders, Stripe's webhook, redemption codes.
        .route("/api/v1/billing/packages", get(billing::packages))
        .route("/api/v1/billing/orders", get(billing::list_orders).post(billing::create_order))
        .route("/api/v1/billing/stripe/webhook", post(billing::stripe_webhook))
        .route("/api/v1/billing/redeem", post(billing::redeem))
        .route("/api/v1/admin/orders", get(billing::list_all_orders))
        .route("/api/v1/admin/redemption-codes", post(billing::create_codes))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/{model_id}", get(models::get))
        .route("/files/{name}", get(files::get))
        .route("/api/v1/callbacks/{provider}/{token}", post(callbacks::receive))
        // Dashboard (session token): the caller's own keys and usage.
        .route("/api/v1/keys", get(keys::list).post(keys::create))
        .route("/api/v1/keys/{key_id}", delete(keys::revoke).patch(keys::update))
        .route("/api/v1/usage", get(usage::usage))
        // Admin (session token with role admin).
        .route("/api/v1/admin/accounts", get(admin::list).post(admin::create))
        .route("/api/v1/admin/accounts/{account_id}", get(admin::get).patch(admin::update))
        .route("/api/v1/admin/accounts/{account_id}/credits", post(admin::change_credits))
        .route("/api/v1/admin/audit", get(audit::list))
        // The web console: its sign-in (the session cookie) and its pages.
        .route("/api/v1/session", get(session::show).post(session::create).delete(session::delete))
        .route("/api/v1/webhooks/secret", get(webhook_secret::show))
        .route("/api/v1/webhooks/secret/rotate", post(webhook_secret::rotate))
        // OpenAI's images API for existing clients and SDKs (docs/openai.md).
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits).layer(DefaultBodyLimit::max(upload_limit)))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{model}", get(openai::model))
        .route("/", get(console::root))
        .route("/console", get(console::page))
        .route("/console/models/{model_id}", get(console::page))
        .route("/console/assets/{name}", get(console::asset))
}

/// A client's `X-Request-Id` is kept only when it is `[A-Za-z0-9_-]{1,64}`; any other (long, spaces,
/// `key=value` that would forge log fields) is dropped, and the request gets one of ours.
async fn drop_unsafe_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let headers = request.headers_mut();
    let safe = |value: &axum::http::HeaderValue| {
        let id = value.as_bytes();
        (1..=64).contains(&id.len()) && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    };
    let values = headers.get_all("x-request-id");
    let keep = values.iter().count() == 1 && values.iter().all(safe);
    if !keep {
        headers.remove("x-request-id");
    }
    request
}

/// Request ids for requests that come without one: `req_` + a ULID.
#[derive(Clone, Copy)]
struct MakeRequestUlid;

impl MakeRequestId for MakeRequestUlid {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        format!("req_{}", ulid::Ulid::new()).parse().ok().map(RequestId::new)
    }
}

/// One span per request: `route` (the matched pattern) is filled in by the metrics middleware,
/// `account_id` once the key or session is known, `status` and `latency_ms` when the answer leaves.
/// The query string and headers are left out: they are the client's (and `Authorization` holds its
/// key), and never needed to follow a request.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %loggable_path(request.uri().path()),
        request_id = %request_id,
        route = tracing::field::Empty,
        account_id = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

/// The path as logged: a provider callback's token is a per-task secret (whoever has it can trigger
/// that task's confirmation), so it is cut off.
fn loggable_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.strip_prefix("/api/v1/callbacks/").and_then(|rest| rest.split_once('/')) {
        Some((provider, _token)) => format!("/api/v1/callbacks/{provider}/…").into(),
        None => path.into(),
    }
}

fn finish_span<B>(response: &axum::http::Response<B>, latency: std::time::Duration, span: &tracing::Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    span.record("status", status);
    span.record("latency_ms", latency_ms);
    tracing::info!(status, latency_ms, "request finished");
}
