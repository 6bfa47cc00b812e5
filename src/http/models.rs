//! `GET /api/v1/models` and `GET /api/v1/models/{model_id}`: the live catalog, as
//! [`crate::catalog::summary`] computes it. Provider base URLs and keys never appear here; clients see
//! each route's label only.

use axum::extract::State;
use axum::Json;

use super::error::ApiError;
use super::extract::ApiPath;
use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::catalog::summary::{Context, ModelList, ModelView};
use crate::error::Error;

fn context(state: &AppState) -> Context<'_> {
    Context {
        catalog: &state.catalog,
        usd_per_credit: state.settings.billing.usd_per_credit,
        base_url: &state.settings.server.public_base_url,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/models",
    operation_id = "listModels",
    tag = "catalog",
    responses((status = 200, description = "The live catalog and its summary.", body = ModelList))
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(context(&state).list())
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{model_id}",
    operation_id = "getModel",
    tag = "catalog",
    params(("model_id" = String, Path, description = "A model id, e.g. `seedream-4-5`.")),
    responses(
        (status = 200, description = "The model with its parameters, figures, call contract and an example request.", body = ModelView),
        (status = 404, description = "No such model.", body = ErrorEnvelope),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(model_id): ApiPath<String>,
) -> Result<Json<ModelView>, ApiError> {
    let model = state.catalog.get(&model_id).ok_or_else(|| Error::not_found("Model"))?;
    Ok(Json(context(&state).view(model)))
}
