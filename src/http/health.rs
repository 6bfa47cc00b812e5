//! `/healthz` (the process answers) and `/readyz` (and can reach its database).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::app::AppState;
use crate::store;

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if store::is_ready(&state.pool).await {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError::Unavailable("The database is not reachable.".into()))
    }
}
