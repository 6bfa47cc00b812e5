//! The OpenAI-compatible routes (`/v1/…`) for clients and SDKs that only speak OpenAI's images API:
//! `POST /v1/images/generations` (JSON), `POST /v1/images/edits` (multipart), `GET /v1/models`,
//! `GET /v1/models/{model}`. The same `aio_` keys; the request waits for its images
//! (`openai.sync_timeout_secs`) unless it says `Prefer: respond-async`. Errors are OpenAI's
//! `{"error": {message, type, param, code}}` with the statuses its SDKs turn into their exception
//! types (see `OpenAiError`). What a request means is `crate::openai`.

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::{LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::IdempotencyHeader;
use super::AppState;
use crate::auth::Caller;
use crate::config::ImageType;
use crate::error::Error;
use crate::files::FileStore;
use crate::openai::{self, Image, Images, ImagesRequest};
use crate::tasks::{TaskErrorCode, TaskView};

/// Input images per edit request, at most (the catalog's edit sub-models take up to 14).
const MAX_EDIT_IMAGES: usize = 16;

/// An error as OpenAI writes it. The status decides the SDK's exception type (`openai._client`
/// `_make_status_error`: 400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError,
/// 404 NotFoundError, 409 ConflictError, 422 UnprocessableEntityError, 429 RateLimitError, ≥500
/// InternalServerError). `retry: Some(false)` sends `x-should-retry: false`, which the SDKs obey: a
/// retry would create (and hold) another task, or cannot help.
#[derive(Debug)]
pub struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<String>,
    param: Option<String>,
    message: String,
    retry: Option<bool>,
    retry_after: Option<u64>,
}

impl OpenAiError {
    fn new(status: StatusCode, kind: &'static str, code: &str, message: String) -> OpenAiError {
        OpenAiError { status, kind, code: Some(code.to_owned()), param: None, message, retry: None, retry_after: None }
    }

    fn invalid(message: String) -> OpenAiError {
        // Our messages begin with the field in backquotes; OpenAI names it in `param`.
        let param = message.strip_prefix('`').and_then(|rest| rest.split_once('`')).map(|(field, _)| {
            match field.split('[').next().unwrap_or(field) {
                "aspect_ratio" => "size".to_owned(),
                "image_urls" => "image".to_owned(),
                other => other.to_owned(),
            }
        });
        OpenAiError {
            param,
            ..OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value", message)
        }
    }

    fn final_answer(mut self) -> OpenAiError {
        self.retry = Some(false);
        self
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::Domain(error) => error.into(),
            ApiError::PayloadTooLarge { .. } | ApiError::UnsupportedMediaType | ApiError::MethodNotAllowed => {
                OpenAiError::invalid(message)
            }
            ApiError::InvalidToken => Error::Unauthorized.into(),
        }
    }
}

impl From<Error> for OpenAiError {
    fn from(error: Error) -> Self {
        use StatusCode as S;
        match error {
            Error::Invalid(message) => OpenAiError::invalid(message),
            Error::Unauthorized => OpenAiError::new(
                S::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided. Use an aio-gateway key (`aio_…`) as the OpenAI API key.".into(),
            ),
            Error::Forbidden(message) => OpenAiError::new(S::FORBIDDEN, "permission_error", "forbidden", message),
            // OpenAI answers an exhausted quota with 429 `insufficient_quota`; retrying cannot help.
            Error::InsufficientCredits { price, available } => OpenAiError::new(
                S::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "insufficient_quota",
                format!("This request costs {price} credits; {available} are available."),
            )
            .final_answer(),
            Error::Limit(refusal) => match refusal.retry_after_secs() {
                None => OpenAiError::new(S::FORBIDDEN, "permission_error", refusal.code(), refusal.message()),
                Some(retry_after) => OpenAiError {
                    retry_after: Some(retry_after),
                    ..OpenAiError::new(S::TOO_MANY_REQUESTS, "requests", refusal.code(), refusal.message())
                },
            },
            Error::NotFound(message) => OpenAiError::new(S::NOT_FOUND, "invalid_request_error", "not_found", message),
            Error::Conflict(message) => {
                OpenAiError::new(S::CONFLICT, "invalid_request_error", "conflict", message).final_answer()
            }
            Error::RateLimited { retry_after_secs, message } => OpenAiError {
                retry_after: Some(retry_after_secs),
                ..OpenAiError::new(S::TOO_MANY_REQUESTS, "requests", "rate_limit_exceeded", message)
            },
            // The provider refused the task outright (nothing charged): the same request would be refused again.
            Error::Upstream(message) => {
                OpenAiError::new(S::BAD_REQUEST, "invalid_request_error", "upstream_rejected", message).final_answer()
            }
            Error::Overloaded(message) => OpenAiError {
                retry_after: Some(1),
                ..OpenAiError::new(S::SERVICE_UNAVAILABLE, "server_error", "overloaded", message)
            },
            Error::Unavailable(message) => OpenAiError {
                retry_after: Some(5),
                ..OpenAiError::new(S::SERVICE_UNAVAILABLE, "server_error", "unavailable", message)
            },
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                OpenAiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal_error",
                    "Something went wrong on our side; the request can be retried.".into(),
                )
            }
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(retry) = self.retry {
            headers.insert("x-should-retry", HeaderValue::from_static(if retry { "true" } else { "false" }));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The body of `POST /v1/images/generations`: OpenAI's fields. Those that change nothing here
/// (`user`, `style`, `background`, `moderation`, `output_format`, `output_compression`) are accepted
/// and ignored, as a client written for OpenAI sends them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationBody {
    model: Option<String>,
    prompt: Option<String>,
    n: Option<u32>,
    size: Option<String>,
    quality: Option<String>,
    response_format: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
    #[allow(dead_code)]
    style: Option<String>,
    #[allow(dead_code)]
    background: Option<String>,
    #[allow(dead_code)]
    moderation: Option<String>,
    #[allow(dead_code)]
    output_format: Option<String>,
    #[allow(dead_code)]
    output_compression: Option<u32>,
    stream: Option<bool>,
}

fn b64_json(response_format: Option<&str>) -> Result<bool, OpenAiError> {
    match response_format {
        None | Some("url") => Ok(false),
        Some("b64_json") => Ok(true),
        Some(other) => Err(OpenAiError::invalid(format!("`response_format`: `{other}` is not one of url, b64_json."))),
    }
}

/// `POST /v1/images/generations`.
pub async fn generations(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    idempotency: Result<IdempotencyHeader, ApiError>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let caller = caller?;
    let IdempotencyHeader(key) = idempotency?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OpenAiError::invalid(format!(
                "The request body is larger than {} bytes.",
                state.settings.server.body_limit_bytes
            ))
        } else {
            OpenAiError::invalid("The request body could not be read.".into())
        }
    })?;
    let body: GenerationBody = serde_json::from_slice(&body)
        .map_err(|error| OpenAiError::invalid(format!("The body is not a valid request: {error}.")))?;
    if body.stream == Some(true) {
        return Err(OpenAiError::invalid("`stream`: streaming is not supported; leave it out.".into()));
    }
    let request = ImagesRequest {
        model: body.model,
        prompt: body.prompt,
        n: body.n,
        size: body.size,
        quality: body.quality,
        b64_json: b64_json(body.response_format.as_deref())?,
        edit: None,
    };
    respond(&state, &caller, &headers, request, key).await
}

/// `POST /v1/images/edits` (multipart): `image` or `image[]` (one or more files), `prompt`, `model`,
/// `n`, `size`, `quality`, `response_format`, `user`. The images are stored in the file store and
/// passed to the model as its input image URLs.
pub async fn edits(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    idempotency: Result<IdempotencyHeader, ApiError>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, OpenAiError> {
    let caller = caller?;
    let IdempotencyHeader(key) = idempotency?;
    let mut multipart = multipart.map_err(|rejection| {
        OpenAiError::invalid(format!("The body must be multipart/form-data: {}.", rejection.body_text()))
    })?;
    let mut request = ImagesRequest::default();
    let mut images: Vec<String> = Vec::new();
    let mut response_format = None;
    let unreadable = |error: axum::extract::multipart::MultipartError| {
        OpenAiError::invalid(format!("The multipart body could not be read: {}.", error.body_text()))
    };
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" | "image[]" => {
                if images.len() >= MAX_EDIT_IMAGES {
                    return Err(OpenAiError::invalid(format!("`image`: at most {MAX_EDIT_IMAGES} images.")));
                }
                let bytes = field.bytes().await.map_err(unreadable)?;
                images.push(store_upload(&state.files, &bytes).await?);
            }
            "mask" => {
                return Err(OpenAiError::invalid(
                    "`mask`: masks are not supported; describe the change in the prompt.".into(),
                ))
            }
            "prompt" | "model" | "size" | "quality" | "response_format" | "n" | "user" | "background"
            | "output_format" | "output_compression" | "input_fidelity" => {
                let text = field.text().await.map_err(unreadable)?;
                match name.as_str() {
                    "prompt" => request.prompt = Some(text),
                    "model" => request.model = Some(text),
                    "size" => request.size = Some(text),
                    "quality" => request.quality = Some(text),
                    "response_format" => response_format = Some(text),
                    "n" => {
                        request.n = Some(
                            text.trim()
                                .parse()
                                .map_err(|_| OpenAiError::invalid(format!("`n`: `{text}` is not a whole number.")))?,
                        )
                    }
                    _ => {}
                }
            }
            "stream" => return Err(OpenAiError::invalid("`stream`: streaming is not supported.".into())),
            other => return Err(OpenAiError::invalid(format!("`{other}`: unknown parameter."))),
        }
    }
    if images.is_empty() {
        return Err(OpenAiError::invalid("`image`: required; send one or more image files.".into()));
    }
    request.b64_json = b64_json(response_format.as_deref())?;
    request.edit = Some(images);
    respond(&state, &caller, &headers, request, key).await
}

/// An uploaded image into the file store (PNG, JPEG or WebP, by its first bytes); its URL.
async fn store_upload(files: &FileStore, bytes: &[u8]) -> Result<String, OpenAiError> {
    let image_type =
        sniff(bytes).ok_or_else(|| OpenAiError::invalid("`image`: must be a PNG, JPEG or WebP file.".into()))?;
    let name = FileStore::new_name(image_type.extension());
    files.save(&name, bytes).await.map_err(|error| {
        tracing::error!(error = %error, "cannot store an uploaded image");
        OpenAiError::from(Error::Unavailable("The image could not be stored; retry shortly.".into()))
    })?;
    Ok(files.url(&name))
}

/// The image type of a file by its signature; never by what the client claims.
fn sniff(bytes: &[u8]) -> Option<ImageType> {
    let mime = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        "image/jpeg"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        return None;
    };
    ImageType::from_mime(mime)
}

/// Creates the tasks, then answers: `Prefer: respond-async` → 202 with the task; otherwise waits for
/// the images up to `openai.sync_timeout_secs`.
async fn respond(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request: ImagesRequest,
    key: Option<String>,
) -> Result<Response, OpenAiError> {
    let respond_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|preference| preference.trim().eq_ignore_ascii_case("respond-async"));
    let n = openai::count(request.n)?;
    if respond_async && n != 1 {
        return Err(OpenAiError::invalid("`n`: with `Prefer: respond-async`, one image per request.".into()));
    }
    let create = openai::create_request(&state.catalog, &request)?;
    let until = tokio::time::Instant::now() + state.settings.openai.sync_timeout;
    let created = {
        // Counts as a create while creating, not while waiting.
        let _slot = state.limits.create_permit()?;
        openai::create_tasks(&state.engine, caller.account_id, &caller.key_id, create, n, key).await?
    };
    if respond_async {
        let task = &created[0];
        let location = format!("/api/v1/tasks/{}", task.id);
        return Ok((
            StatusCode::ACCEPTED,
            [(LOCATION, location)],
            Json(TaskView::from(task).with_links(|url| state.files.link(url))),
        )
            .into_response());
    }
    let answer =
        openai::wait(&state.events, &state.files, caller.account_id, &created, until, request.b64_json).await?;
    match answer {
        Images::Done { created, data } => {
            let data: Vec<Value> = data
                .into_iter()
                .map(|image| match image {
                    Image::Url(url) => json!({"url": url}),
                    Image::B64(b64) => json!({"b64_json": b64}),
                })
                .collect();
            Ok(Json(json!({"created": created, "data": data})).into_response())
        }
        Images::Pending { task_ids } => {
            let seconds = state.settings.openai.sync_timeout.as_secs();
            let message = format!(
                "The images are not ready after {seconds} s. The generation goes on and is charged only if it \
                 succeeds: follow it with GET /api/v1/tasks/{{task_id}} (task ids: {}).",
                task_ids.join(", ")
            );
            let mut error =
                OpenAiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "task_pending", message).final_answer();
            error.param = Some(task_ids.join(","));
            Err(error)
        }
        Images::Failed { code, message } => Err(match code {
            TaskErrorCode::ContentPolicy => {
                OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "content_policy_violation", message)
                    .final_answer()
            }
            TaskErrorCode::UpstreamRejected => {
                OpenAiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", code.as_str(), message)
                    .final_answer()
            }
            TaskErrorCode::UpstreamFailed | TaskErrorCode::Timeout => {
                OpenAiError::new(StatusCode::BAD_GATEWAY, "server_error", code.as_str(), message)
            }
        }),
    }
}

/// `GET /v1/models`: OpenAI's list of the models (ids, sub-model ids and aliases all work as `model`).
pub async fn models(State(state): State<AppState>, caller: Result<Caller, ApiError>) -> Result<Response, OpenAiError> {
    caller?;
    let data: Vec<Value> = model_ids(&state).into_iter().map(|(id, owner)| model_object(&id, &owner)).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{model}`.
pub async fn model(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    caller?;
    let (_, owner) = model_ids(&state)
        .into_iter()
        .find(|(known, _)| *known == id)
        .ok_or_else(|| OpenAiError::from(Error::NotFound(format!("The model `{id}` does not exist."))))?;
    Ok(Json(model_object(&id, &owner)).into_response())
}

/// Every name `model` accepts, with its vendor: model ids, then their sub-model ids and aliases.
fn model_ids(state: &AppState) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for model in state.catalog.models() {
        ids.push((model.id.clone(), model.vendor.clone()));
        for name in model.sub_models.iter().map(|s| &s.id).chain(&model.openai.aliases) {
            ids.push((name.clone(), model.vendor.clone()));
        }
    }
    ids
}

fn model_object(id: &str, owner: &str) -> Value {
    // The catalog has no creation dates; 0 says so rather than inventing one.
    json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_errors_name_openai_params() {
        let error = OpenAiError::invalid("`aspect_ratio`: `7:5` is not allowed".into());
        assert_eq!(error.param.as_deref(), Some("size"));
        let error = OpenAiError::invalid("`image_urls[2]`: must use https.".into());
        assert_eq!(error.param.as_deref(), Some("image"));
        assert_eq!(OpenAiError::invalid("The body is not JSON.".into()).param, None);
    }

    #[test]
    fn uploads_are_recognised_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), ImageType::from_mime("image/png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), ImageType::from_mime("image/webp"));
        assert_eq!(sniff(b"GIF89a"), None);
        assert_eq!(sniff(b""), None);
    }
}
