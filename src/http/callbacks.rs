//! `POST /api/v1/callbacks/{provider}/{token}`: a provider says a job ended. The token (one per
//! submit, only its hash stored) finds the task; the provider's signature is checked where it signs;
//! then the engine looks at the task now. A callback never settles anything by itself unless the
//! operator trusts that provider's payloads, so duplicate, late, forged or out-of-order callbacks
//! cannot double-settle a task or fail a succeeded one.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{ApiPath, RawBody};
use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::error::Error;
use crate::tasks;

#[utoipa::path(
    post,
    path = "/api/v1/callbacks/{provider}/{token}",
    operation_id = "providerCallback",
    tag = "operations",
    params(
        ("provider" = String, Path, description = "The provider id the gateway gave this URL to."),
        ("token" = String, Path, description = "The per-task token of the URL."),
    ),
    request_body(content = Object, description = "The provider's own callback body.", content_type = "application/json"),
    responses(
        (status = 200, description = "Received; the gateway confirms the result with the provider.", body = Object),
        (status = 400, description = "The body could not be read.", body = ErrorEnvelope),
        (status = 401, description = "The provider's signature does not verify.", body = ErrorEnvelope),
        (status = 404, description = "Unknown provider or token.", body = ErrorEnvelope),
        (status = 413, description = "The body is over `server.body_limit_bytes`.", body = ErrorEnvelope),
        (status = 503, description = "The database is unreachable.", body = ErrorEnvelope),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    ApiPath((provider_id, token)): ApiPath<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let providers = state.engine.providers();
    let (Some(provider), Some(task)) =
        (providers.get(&provider_id), tasks::by_callback_token(&state.pool, &provider_id, &token).await?)
    else {
        return Err(Error::not_found("Callback").into());
    };
    let callback = provider.read_callback(&headers, &body).await.map_err(|refused| {
        tracing::warn!(task_id = %task.id, provider = %provider_id, reason = %refused, "callback refused");
        Error::Unauthorized
    })?;
    // A callback about another job (an earlier submit's) is only a reason to look, never a result.
    let about_this_job = match (&callback.upstream_id, &task.upstream_id) {
        (Some(claimed), Some(known)) => claimed == known,
        _ => false,
    };
    tracing::info!(task_id = %task.id, provider = %provider_id, status = ?task.status, about_this_job, "callback received");
    state.engine.callback(&task, callback.state.filter(|_| about_this_job)).await?;
    Ok(Json(json!({"received": true})))
}
