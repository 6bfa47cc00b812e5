//! `GET|POST /api/v1/keys`, `PATCH|DELETE /api/v1/keys/{key_id}`: a session's own API keys (an admin
//! may set any key's limits). A new key is shown once, in the answer to its creation; listings show its
//! prefix only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Audit};
use super::openapi::{BodyErrors, ErrorEnvelope, SessionErrors};
use super::AppState;
use crate::accounts::{self, KeyInfo, OwnRevoke};
use crate::error::Error;
use crate::jwt::{Role, Session};
use crate::limits::{self, LimitsPatch};

const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    /// Newest first, revoked ones included.
    data: Vec<KeyInfo>,
}

#[utoipa::path(
    get,
    path = "/api/v1/keys",
    operation_id = "listKeys",
    tag = "dashboard",
    responses(
        (status = 200, description = "The caller's keys (prefixes only).", body = KeyList),
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn list(State(state): State<AppState>, session: Session) -> Result<Json<KeyList>, ApiError> {
    let data = accounts::list_keys(&state.pool, session.account_id).await?;
    Ok(Json(KeyList { data }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// A label for listings, up to 100 characters.
    #[schema(max_length = 100, example = "ci")]
    name: Option<String>,
    /// RFC 3339 time, in the future, after which the key stops working.
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    key_id: String,
    /// The key itself: shown this once, never again.
    api_key: String,
    prefix: String,
    #[schema(required = true)]
    name: Option<String>,
    #[schema(required = true)]
    expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    post,
    path = "/api/v1/keys",
    operation_id = "createKey",
    tag = "dashboard",
    request_body = NewKeyRequest,
    responses(
        (status = 201, description = "The new key, shown this once.", body = NewKey),
        (status = 409, description = "The account has `rate_limit.max_keys_per_account` active keys.", body = ErrorEnvelope),
        BodyErrors,
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    session: Session,
    audit: Audit,
    ApiJson(request): ApiJson<NewKeyRequest>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    // A stolen session must not mint a key that outlives it: only a recent sign-in may.
    let now = jsonwebtoken::get_current_timestamp();
    let reauth = state.settings.auth.session.reauth.as_secs();
    if !session.issued_at.is_some_and(|at| at <= now + 60 && now.saturating_sub(at) <= reauth) {
        return Err(Error::Forbidden(format!(
            "Creating an API key needs a sign-in of the last {} minutes: sign in again, then create the key.",
            reauth.div_ceil(60)
        ))
        .into());
    }
    let name = request.name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS) {
        return Err(Error::Invalid(format!("`name`: at most {MAX_NAME_CHARS} characters.")).into());
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(Error::Invalid("`expires_at`: must be in the future.".into()).into());
    }
    // Each key has its own rate limit bucket: an unbounded number of keys would be an unbounded rate.
    let max = state.settings.rate_limit.max_keys_per_account.get();
    if accounts::count_active_keys(&state.pool, session.account_id).await? >= i64::from(max) {
        return Err(Error::Conflict(format!(
            "This account has {max} active API keys, the most it may have: revoke one to create another."
        ))
        .into());
    }
    let actor = audit.session(&session);
    let created =
        accounts::create_key(&state.pool, &actor, session.account_id, name.as_deref(), request.expires_at).await?;
    tracing::info!(key_id = %created.key_id, "API key created");
    let prefix = created.api_key.chars().take(crate::auth::VISIBLE_PREFIX_CHARS).collect();
    let key = NewKey { key_id: created.key_id, api_key: created.api_key, prefix, name, expires_at: request.expires_at };
    Ok((StatusCode::CREATED, Json(key)))
}

#[utoipa::path(
    delete,
    path = "/api/v1/keys/{key_id}",
    operation_id = "revokeKey",
    tag = "dashboard",
    params(("key_id" = String, Path, description = "The key id, `key_…`.")),
    responses(
        (status = 204, description = "Revoked (also when it was revoked before)."),
        (status = 404, description = "No such key of this account.", body = ErrorEnvelope),
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
/// Revoking is idempotent: a key revoked before answers 204 too. Another account's key is 404.
pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    audit: Audit,
    ApiPath(key_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    match accounts::revoke_own_key(&state.pool, &audit.session(&session), session.account_id, &key_id).await? {
        OwnRevoke::NotFound => Err(Error::not_found("Key").into()),
        OwnRevoke::AlreadyRevoked => Ok(StatusCode::NO_CONTENT),
        OwnRevoke::Revoked { hash } => {
            state.auth.forget(&hash, &key_id);
            tracing::info!(key_id = %key_id, "API key revoked");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

#[utoipa::path(
    patch,
    path = "/api/v1/keys/{key_id}",
    operation_id = "updateKeyLimits",
    tag = "dashboard",
    params(("key_id" = String, Path, description = "The key id, `key_…`.")),
    request_body = LimitsPatch,
    responses(
        (status = 200, description = "The key with its limits. Fields not sent stay as they were; `null` clears a limit.", body = KeyInfo),
        (status = 404, description = "No such key of this account (an admin may name any key).", body = ErrorEnvelope),
        BodyErrors,
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
/// Sets a key's limits: `allowed_models`, `max_in_flight`, `daily_credit_cap`, `monthly_credit_cap`.
pub async fn update(
    State(state): State<AppState>,
    session: Session,
    audit: Audit,
    ApiPath(key_id): ApiPath<String>,
    ApiJson(patch): ApiJson<LimitsPatch>,
) -> Result<Json<KeyInfo>, ApiError> {
    let owner = (session.role != Role::Admin).then_some(session.account_id);
    let current = limits::of_key(&state.pool, owner, &key_id).await?.ok_or_else(|| Error::not_found("Key"))?;
    let next = patch.apply(current.clone(), |id| state.catalog.resolve(Some(id)).is_ok())?;
    let actor = audit.session(&session);
    if !limits::set_key(&state.pool, &actor, owner, &key_id, &current, &next).await? {
        return Err(Error::not_found("Key").into());
    }
    tracing::info!(key_id = %key_id, account_id = session.account_id, "key limits changed");
    let key = accounts::key(&state.pool, owner, &key_id).await?.ok_or_else(|| Error::not_found("Key"))?;
    Ok(Json(key))
}
