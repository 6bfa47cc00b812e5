//! `GET /metrics`, and the middleware that counts and times every request by its route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::{monitoring, tasks};

/// The label of requests no route matched, so unknown paths cannot grow the label set.
const UNMATCHED: &str = "unmatched";

/// `GET /metrics`: samples the gauges (one cheap count on the partial index of unfinished tasks, the
/// pool's own numbers), then renders everything in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format. Bind it privately (`server.metrics_listen`).", body = String, content_type = "text/plain"),
        (status = 404, description = "With `server.metrics_listen` set, the metrics are served there, not on this port.", body = ErrorEnvelope),
    )
)]
pub async fn render(State(state): State<AppState>) -> Response {
    match tasks::count_open(&state.pool).await {
        Ok((pending, running)) => monitoring::open_tasks(pending, running),
        Err(error) => tracing::warn!(error = %error, "counting open tasks for /metrics failed"),
    }
    match tasks::admission::depth(&state.pool).await {
        Ok(queued) => monitoring::queued_tasks(queued),
        Err(error) => tracing::warn!(error = %error, "counting queued tasks for /metrics failed"),
    }
    let text = monitoring::render(&state.pool);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Counts and times every request by its route pattern and final status. Runs inside the request
/// span and records the route there too.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let route = route.unwrap_or_else(|| UNMATCHED.to_owned());
    tracing::Span::current().record("route", route.as_str());
    // Extension methods (any token is a valid method) would grow the label set: one label for them.
    let method = match *request.method() {
        Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::HEAD | Method::OPTIONS => {
            request.method().as_str().to_owned()
        }
        _ => "other".to_owned(),
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = [("route", route), ("method", method), ("status", response.status().as_u16().to_string())];
    monitoring::http_request(&labels, started);
    response
}
