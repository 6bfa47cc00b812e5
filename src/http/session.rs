//! `POST|GET|DELETE /api/v1/session`: the web console's sign-in, BFF style. The browser sends an API
//! key once; the answer sets a cookie holding a short-lived session token (HS256, see
//! [`crate::jwt::SessionSigner`]), so the page never keeps the key. The cookie is `HttpOnly`,
//! `SameSite=Strict`, and `Secure` when the gateway is reached over https (`server.public_base_url`
//! starts with `https://`, or a proxy says `X-Forwarded-Proto: https`).
//!
//! Routes that take a session or an API key also take this cookie. A state-changing request
//! authenticated by the cookie must come from the console's own origin (CSRF): `Sec-Fetch-Site:
//! same-origin` where the browser sends it, else an `Origin` naming this gateway; neither is refused.

use axum::extract::State;
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, Audit};
use super::openapi::{BodyErrors, ErrorEnvelope, SessionErrors};
use super::AppState;
use crate::accounts;
use crate::audit::{Action, Target};
use crate::error::Error;
use crate::jwt::{Role, Session};
use crate::tasks::timestamp;

pub const COOKIE_NAME: &str = "aio_session";
/// Over https the cookie is `__Host-` prefixed: browsers then take it only from this exact origin,
/// `Secure`, with `Path=/` and no `Domain`, so a sibling subdomain cannot plant one.
pub const SECURE_COOKIE_NAME: &str = "__Host-aio_session";

fn cookie_name(headers: &HeaderMap, state: &AppState) -> &'static str {
    if over_https(headers, state) {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An active API key of the account (`aio_…`).
    #[schema(min_length = 1, max_length = 200)]
    api_key: String,
}

/// Who the session is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    account_id: i64,
    /// The account's name.
    name: String,
    /// `admin` for the accounts of `auth.session.admin_accounts`, else `user`.
    role: Role,
    /// RFC 3339: when the session ends (sign in again then).
    #[schema(format = DateTime)]
    expires_at: String,
}

async fn view(state: &AppState, session: Session) -> Result<SessionView, ApiError> {
    let account = accounts::get(&state.pool, session.account_id).await?.ok_or(ApiError::InvalidToken)?;
    let expires_at = chrono::DateTime::from_timestamp(i64::try_from(session.expires_at).unwrap_or(i64::MAX), 0)
        .map(timestamp)
        .unwrap_or_default();
    Ok(SessionView { account_id: account.account_id, name: account.name, role: session.role, expires_at })
}

#[utoipa::path(
    post,
    path = "/api/v1/session",
    operation_id = "signIn",
    tag = "dashboard",
    request_body = SignIn,
    responses(
        (status = 200, description = "Signed in: the session cookie is set.", body = SessionView,
         headers(("Set-Cookie" = String, description = "`aio_session=…; HttpOnly; SameSite=Strict; Path=/` (and `Secure` over https)."))),
        (status = 401, description = "The key is unknown, revoked or expired.", body = ErrorEnvelope),
        (status = 403, description = "A browser request from another origin.", body = ErrorEnvelope),
        (status = 429, description = "The key's rate limit: a sign-in counts as one use of the key.", body = ErrorEnvelope,
         headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The database is unreachable.", body = ErrorEnvelope),
        BodyErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    audit: Audit,
    ApiJson(request): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    // Login CSRF: a browser on another site must not sign this browser in to its account.
    if same_origin(&headers, &state) == Some(false) {
        return Err(cross_site());
    }
    let caller = state.auth.authenticate_key(request.api_key.trim()).await?;
    // A sign-in is a use of the key (and an audit log entry): within the key's rate limit.
    state.limits.check_key(&caller.key_id, caller.rate_limit_per_minute).await?;
    let role =
        if state.settings.auth.session.admin_accounts.contains(&caller.account_id) { Role::Admin } else { Role::User };
    let ttl = state.settings.auth.session.ttl;
    let (token, expires_at) = state.sessions.mint(caller.account_id, role, ttl, Some(&caller.key_id))?;
    let cookie = Cookie::build((cookie_name(&headers, &state), token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_https(&headers, &state))
        .max_age(cookie::time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)))
        .build();
    let session = Session {
        account_id: caller.account_id,
        role,
        expires_at,
        issued_at: None,
        token_id: None,
        key_id: Some(caller.key_id.clone()),
    };
    let body = view(&state, session).await?;
    // A failed sign-in is not recorded: it changes nothing, and anyone could fill the log with them
    // (it is logged, and counted by `aio_http_requests_total{status="401"}`).
    let actor = audit.caller(&caller);
    let after = serde_json::json!({"role": role});
    crate::audit::record(
        &state.pool,
        &actor,
        Action::SessionSignIn,
        Target::account(caller.account_id),
        None,
        Some(after),
    )
    .await?;
    tracing::info!(account_id = caller.account_id, key_id = %caller.key_id, ?role, "console session started");
    Ok(([(SET_COOKIE, cookie.to_string())], Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/session",
    operation_id = "getSession",
    tag = "dashboard",
    responses(
        (status = 200, description = "The session of the cookie (or bearer token).", body = SessionView),
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn show(State(state): State<AppState>, session: Session) -> Result<Json<SessionView>, ApiError> {
    Ok(Json(view(&state, session).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/session",
    operation_id = "signOut",
    tag = "dashboard",
    responses(
        (status = 204, description = "Signed out: the cookie is cleared (also when there was none).",
         headers(("Set-Cookie" = String, description = "`aio_session=; Max-Age=0; …`"))),
        (status = 403, description = "A browser request from another origin.", body = ErrorEnvelope),
    )
)]
/// Clears the cookie, and records the token's id as signed out until it expires, so a copy of it no
/// longer works anywhere either.
pub async fn delete(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if same_origin(&headers, &state) == Some(false) {
        return Err(cross_site());
    }
    if let Some(session) = cookie_token(&headers, &state).and_then(|token| state.sessions.verify(&token)) {
        crate::sessions::sign_out(&state.pool, &session).await?;
        tracing::info!(account_id = session.account_id, "console session signed out");
    }
    let cookie = Cookie::build((cookie_name(&headers, &state), ""))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(over_https(&headers, &state))
        .removal()
        .build();
    Ok((StatusCode::NO_CONTENT, [(SET_COOKIE, cookie.to_string())]).into_response())
}

/// The session of the request's cookie, `None` without one. A cookie that does not verify is a 401;
/// a state-changing request must also be same-origin (403 otherwise).
pub fn from_cookie(parts: &Parts, state: &AppState) -> Result<Option<Session>, ApiError> {
    let Some(token) = cookie_token(&parts.headers, state) else {
        return Ok(None);
    };
    let session = state.sessions.verify(&token).ok_or(ApiError::InvalidToken)?;
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && same_origin(&parts.headers, state) != Some(true) {
        return Err(cross_site());
    }
    Ok(Some(session))
}

fn cookie_token(headers: &HeaderMap, state: &AppState) -> Option<String> {
    let name = cookie_name(headers, state);
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

fn cross_site() -> ApiError {
    ApiError::from(Error::Forbidden(
        "Cross-site request refused: requests signed in by the console's cookie must come from the console's own origin."
            .into(),
    ))
}

/// Whether a browser says the request comes from this gateway's own pages: `Sec-Fetch-Site` when
/// sent, else `Origin` compared with the `Host` the request was sent to and with
/// `server.public_base_url`. `None` when there is neither header (not a browser's request).
fn same_origin(headers: &HeaderMap, state: &AppState) -> Option<bool> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return Some(site.as_bytes() == b"same-origin");
    }
    let origin = headers.get(ORIGIN)?;
    // `Origin: null` (sandboxed frames, some redirects) parses to no URL and is refused.
    let Some(origin_url) = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()) else {
        return Some(false);
    };
    let origin = origin_url.origin();
    let public = url::Url::parse(&state.settings.server.public_base_url).ok().map(|u| u.origin());
    // The Host header with the scheme this gateway is reached by (not the Origin's own, or
    // `http://gateway` would pass for a gateway served over https).
    let scheme = if over_https(headers, state) { "https" } else { "http" };
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|host| url::Url::parse(&format!("{scheme}://{host}")).ok())
        .map(|u| u.origin());
    Some(origin.is_tuple() && (public.as_ref() == Some(&origin) || host.as_ref() == Some(&origin)))
}

fn over_https(headers: &HeaderMap, state: &AppState) -> bool {
    state.settings.server.public_base_url.starts_with("https://")
        || headers.get("x-forwarded-proto").is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"))
}
