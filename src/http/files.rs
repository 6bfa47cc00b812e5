//! `GET /files/{name}`: result images from the file store. With links through the gateway (no
//! `files.public_base_url`) a request needs the link's `exp` and `sig`: an expired or forged link is
//! a 403. Names are never reused, so a response may be cached as long as its link is valid.
//! `Range: bytes=…` (one range) answers 206.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::openapi::ErrorEnvelope;
use super::AppState;
use crate::error::Error;
use crate::files::{ByteRange, FileStore, LinkError};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// When the link expires (unix seconds), as the task's image URL has it.
    exp: Option<i64>,
    /// The link's signature, as the task's image URL has it.
    sig: Option<String>,
}

#[utoipa::path(
    get,
    path = "/files/{name}",
    operation_id = "getFile",
    tag = "catalog",
    params(("name" = String, Path, description = "The file name from a task's `output.images[].url`."), LinkQuery),
    responses(
        (status = 200, description = "The image.", body = String, content_type = "image/png"),
        (status = 206, description = "The requested byte range of the image.", body = String, content_type = "image/png"),
        (status = 400, description = "`exp` is not a number.", body = ErrorEnvelope),
        (status = 403, description = "The link has expired or is not valid: read the task again for a fresh one.", body = ErrorEnvelope),
        (status = 404, description = "No such file.", body = ErrorEnvelope),
        (status = 416, description = "The range lies outside the file.", body = ErrorEnvelope),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(link): ApiQuery<LinkQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let files = &state.files;
    if !FileStore::is_valid_name(&name) {
        return Err(Error::not_found("File").into());
    }
    let cache_control = if files.signs_links() {
        let (Some(expires), Some(signature)) = (link.exp, link.sig.as_deref()) else {
            return Err(forbidden(LinkError::Forged));
        };
        files.check_link(&name, expires, signature).map_err(forbidden)?;
        // Cacheable while the link is valid, by the client only: the link is the client's.
        let remaining = expires.saturating_sub(chrono::Utc::now().timestamp()).max(0);
        format!("private, max-age={remaining}, immutable")
    } else {
        "public, max-age=31536000, immutable".to_owned()
    };
    let range = headers.get(RANGE).and_then(|v| v.to_str().ok()).and_then(ByteRange::parse);
    let read = files.read(&name, range).await.map_err(|error| Error::Internal(error.into()))?;
    let file = match read {
        None => return Err(Error::not_found("File").into()),
        Some(Ok(file)) => file,
        Some(Err(size)) => {
            let mut response = ApiError::from(Error::Invalid(format!(
                "The range `Range: {}` lies outside the file of {size} bytes.",
                headers.get(RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default()
            )))
            .into_response();
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            response.headers_mut().insert(CONTENT_RANGE, header(&format!("bytes */{size}")));
            return Ok(response);
        }
    };
    let mut response = Response::new(Body::from_stream(file.body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(file.content_type));
    headers.insert(CACHE_CONTROL, header(&cache_control));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    match file.range {
        Some(range) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
            headers.insert(CONTENT_RANGE, header(&format!("bytes {}-{}/{}", range.start, range.end - 1, file.size)));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        None => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(file.size));
        }
    }
    Ok(response)
}

fn forbidden(why: LinkError) -> ApiError {
    let message = match why {
        LinkError::Expired => "This file link has expired. Read the task again for a fresh link.",
        LinkError::Forged => "This file link is not valid. Use the link from the task's output.",
    };
    Error::Forbidden(message.into()).into()
}

/// A header value of ASCII text this module formats.
fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
