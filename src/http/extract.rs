//! Request extractors that fail with our envelope: JSON bodies, query strings, the calling key.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::audit::Actor;
use crate::auth::Caller;
use crate::error::Error;
use crate::jwt::{Role, Session};

/// A JSON body: 415 unless `application/json`, 413 over the body limit, 400 naming the field that
/// does not fit (unknown, wrong type, malformed).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = request.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(usize::MAX);
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                Error::Invalid("The request body could not be read.".into()).into()
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A body of any type, as bytes: 413 over the body limit, in the envelope like every error.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = request.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(usize::MAX);
        Bytes::from_request(request, state).await.map(RawBody).map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                Error::Invalid("The request body could not be read.".into()).into()
            }
        })
    }
}

/// The configured body limit, published to extractors by the router so 413 can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde reads a struct from an array too (fields by position): only an object is a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::Invalid("The body must be a JSON object.".into()).into());
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("The body is not valid JSON: {inner}.")
            }
            _ if path.is_empty() || path == "." => format!("{}.", strip_position(&inner.to_string())),
            _ => format!("`{path}`: {}.", strip_position(&inner.to_string())),
        };
        Error::Invalid(message)
    })?;
    // Nothing but white space may follow the object.
    deserializer.end().map_err(|error| Error::Invalid(format!("The body is not valid JSON: {error}.")))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 12"; the field path already says where.
fn strip_position(message: &str) -> &str {
    message.rfind(" at line ").map_or(message, |at| &message[..at])
}

/// Path parameters; a value that does not fit (bad percent-encoding) is a 404 like any unknown path.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|_| Error::NotFound("No route matches this path.".into()).into())
    }
}

/// A query string, 400 naming the parameter that does not fit.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(ApiQuery).map_err(|error| {
            let path = error.path().to_string();
            Error::Invalid(format!("`{path}`: {}.", error.into_inner())).into()
        })
    }
}

/// The optional `Idempotency-Key` header of a create, checked (1–255 characters, visible ASCII).
pub struct IdempotencyHeader(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(IdempotencyHeader(None));
        };
        let key = value
            .to_str()
            .map_err(|_| Error::Invalid("`Idempotency-Key`: must be printable ASCII characters.".into()))?;
        crate::idempotency::check_key(key)?;
        Ok(IdempotencyHeader(Some(key.to_owned())))
    }
}

/// Who is calling, for the audit log: the request's id (`X-Request-Id`, set by the middleware when
/// the client sent none) with the session or key it acts as.
pub struct Audit(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Audit(id))
    }
}

impl Audit {
    /// An admin session acts as `admin`, any other as its `account`.
    pub fn session(self, session: &Session) -> Actor {
        let key_id = session.key_id.as_deref();
        let actor = match session.role {
            Role::Admin => Actor::admin(session.account_id, key_id),
            Role::User => Actor::account(session.account_id, key_id),
        };
        actor.in_request(self.0)
    }

    /// A key acts as `key`; the console's cookie standing in for a key as its `account`.
    pub fn caller(self, caller: &Caller) -> Actor {
        let actor = if caller.key_id.starts_with(COOKIE_KEY_ID) {
            Actor::account(caller.account_id, None)
        } else {
            Actor::key(&caller.key_id)
        };
        actor.in_request(self.0)
    }
}

/// The `key_id` of a [`Caller`] signed in by the console's cookie rather than a key.
const COOKIE_KEY_ID: &str = "session_";

/// The caller of an API-key route. Every route that takes it requires a valid key, and counts against
/// the key's rate limit. Without an `Authorization` header the console's session cookie stands in for
/// a key (so its Run button works without keeping one), limited as one key per account.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = if parts.headers.contains_key(AUTHORIZATION) {
            let authorization = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            state.auth.authenticate(authorization).await?
        } else {
            cookie_caller(parts, state).await?
        };
        tracing::Span::current().record("account_id", caller.account_id);
        state.limits.check_key(&caller.key_id, caller.rate_limit_per_minute).await?;
        state.limits.check_account(caller.account_id).await?;
        Ok(caller)
    }
}

/// The console's session as the caller of a key route: one 401 for every kind of missing or bad cookie.
async fn cookie_caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let session = match super::session::from_cookie(parts, state) {
        Ok(Some(session)) => session,
        Ok(None) | Err(ApiError::InvalidToken) => return Err(Error::Unauthorized.into()),
        Err(other) => return Err(other),
    };
    if !crate::sessions::is_live(&state.pool, &state.auth, &session).await?
        || !crate::accounts::exists(&state.pool, session.account_id).await?
    {
        return Err(Error::Unauthorized.into());
    }
    Ok(Caller {
        account_id: session.account_id,
        key_id: format!("{COOKIE_KEY_ID}{}", session.account_id),
        rate_limit_per_minute: None,
    })
}

/// The holder of a valid session token (dashboard routes): any role, acting on its own account. The
/// token comes as `Authorization: Bearer`, or without that header in the console's session cookie.
impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let session = match parts.headers.get(AUTHORIZATION) {
            None => super::session::from_cookie(parts, state)?.ok_or(ApiError::InvalidToken)?,
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|value| value.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .ok_or(ApiError::InvalidToken)?;
                let jwt = state.jwt.as_ref().ok_or(ApiError::InvalidToken)?;
                jwt.verify(token).ok_or(ApiError::InvalidToken)?
            }
        };
        // A token for an account that does not exist, signed out, or of a revoked key is no session.
        if !crate::sessions::is_live(&state.pool, &state.auth, &session).await?
            || crate::accounts::get(&state.pool, session.account_id).await?.is_none()
        {
            return Err(ApiError::InvalidToken);
        }
        tracing::Span::current().record("account_id", session.account_id);
        Ok(session)
    }
}

/// A session with the `admin` role; a `user` session gets 403.
pub struct Admin(pub Session);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await?;
        if session.role != Role::Admin {
            return Err(Error::Forbidden("This route needs an admin session.".into()).into());
        }
        Ok(Admin(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        prompt: Option<String>,
        image_urls: Option<Vec<String>>,
    }

    fn message(body: &str) -> String {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::Domain(Error::Invalid(m))) => m,
            other => panic!("expected invalid_request, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert!(message(r#"{"prompt": 5}"#).starts_with("`prompt`: invalid type"));
        assert!(message(r#"{"image_urls": [1]}"#).starts_with("`image_urls[0]`: invalid type"));
        assert!(message(r#"{"colour": "red"}"#).contains("unknown field `colour`"));
        assert!(message(r#"{"prompt": "#).starts_with("The body is not valid JSON"));
        assert!(message("[]").contains("JSON object"));
        assert!(message(r#"{"prompt": "a"} trailing"#).starts_with("The body is not valid JSON"));
    }
}
