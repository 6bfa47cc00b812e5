//! `GET /api/v1/webhooks/secret` and `POST /api/v1/webhooks/secret/rotate`: the session's account's
//! webhook signing secret, to reveal and rotate from the console as the CLI does
//! (`webhooks secret show|rotate`).

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::extract::Audit;
use super::openapi::SessionErrors;
use super::AppState;
use crate::jwt::Session;
use crate::webhooks::secrets;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookSecret {
    /// `whsec_…`: verifies the `webhook-signature` of the account's webhooks.
    secret: String,
    /// After a rotation, how long the previous secret keeps signing next to this one.
    overlap_secs: u64,
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/secret",
    operation_id = "getWebhookSecret",
    tag = "dashboard",
    responses(
        (status = 200, description = "The account's current webhook secret (created on first use).", body = WebhookSecret),
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn show(State(state): State<AppState>, session: Session) -> Result<Json<WebhookSecret>, ApiError> {
    let signing = secrets::signing(&state.pool, session.account_id).await?;
    Ok(Json(WebhookSecret { secret: signing.current, overlap_secs: state.settings.webhooks.secret_overlap.as_secs() }))
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/secret/rotate",
    operation_id = "rotateWebhookSecret",
    tag = "dashboard",
    responses(
        (status = 200, description = "The new secret; the previous one also signs for `overlap_secs`.", body = WebhookSecret),
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn rotate(
    State(state): State<AppState>,
    session: Session,
    audit: Audit,
) -> Result<Json<WebhookSecret>, ApiError> {
    let overlap_secs = state.settings.webhooks.secret_overlap.as_secs();
    let actor = audit.session(&session);
    let secret = secrets::rotate(&state.pool, &actor, session.account_id, Duration::from_secs(overlap_secs)).await?;
    tracing::info!(account_id = session.account_id, "webhook secret rotated");
    Ok(Json(WebhookSecret { secret, overlap_secs }))
}
