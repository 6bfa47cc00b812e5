//! `/healthz` (the process answers) and `/readyz` (and can reach its database).

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::error::Error;
use crate::store;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (liveness) or `ready` (readiness).
    #[schema(value_type = String, pattern = "^(ok|ready)$")]
    status: &'static str,
}

#[utoipa::path(get, path = "/healthz", operation_id = "liveness", tag = "operations", responses((status = 200, description = "The process is up.", body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readiness",
    tag = "operations",
    responses(
        (status = 200, description = "The process can reach its database.", body = Health),
        (status = 503, description = "The database is unreachable.", body = ErrorEnvelope),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if store::is_ready(&state.pool).await {
        Ok(Json(Health { status: "ready" }))
    } else {
        Err(Error::Unavailable("The database is not reachable.".into()).into())
    }
}
