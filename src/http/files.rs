//! `GET /files/{name}`: result images from the file store. Names are unguessable and never reused,
//! so responses may be cached for good.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

use super::error::ApiError;
use super::extract::ApiPath;
use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::error::Error;

#[utoipa::path(
    get,
    path = "/files/{name}",
    operation_id = "getFile",
    tag = "catalog",
    params(("name" = String, Path, description = "The file name from a task's `output.images[].url`.")),
    responses(
        (status = 200, description = "The image.", body = String, content_type = "image/png"),
        (status = 404, description = "No such file.", body = ErrorEnvelope),
    )
)]
pub async fn get(State(state): State<AppState>, ApiPath(name): ApiPath<String>) -> Result<impl IntoResponse, ApiError> {
    let bytes = state.files.read(&name).await.ok_or_else(|| Error::not_found("File"))?;
    let content_type = match name.rsplit('.').next() {
        Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    };
    Ok(([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "public, max-age=31536000, immutable")], bytes))
}
