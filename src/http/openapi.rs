//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers' annotations and
//! the types they read and write, so it cannot drift from what the server does.

use axum::Json;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::error::ErrorCode;
use crate::config::ImageType;

use super::{
    admin, audit, billing, callbacks, deliveries, files, health, images, keys, models, session, tasks, usage,
    webhook_secret,
};

/// The body of every non-2xx answer (SPEC §3).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable and machine-readable.
    #[schema(example = "invalid_request")]
    code: ErrorCode,
    /// For people: what was wrong and what to do.
    message: String,
    /// Also in the `x-request-id` header.
    request_id: String,
    /// A limit's refusal (`model_not_allowed`, `credit_cap_reached`, `too_many_in_flight`, `queue_full`):
    /// whose limit (`queue_full`: always `account`).
    #[schema(nullable = false)]
    scope: Option<RefusalScope>,
    /// `model_not_allowed`: the sub-model refused.
    #[schema(nullable = false)]
    model: Option<String>,
    /// `credit_cap_reached`: the cap in credits.
    #[schema(nullable = false)]
    cap: Option<i64>,
    /// `credit_cap_reached`: the cap's period.
    #[schema(nullable = false)]
    period: Option<CapPeriod>,
    /// `credit_cap_reached`: when the period's count starts again (UTC).
    #[schema(nullable = false, format = DateTime)]
    resets_at: Option<String>,
    /// `too_many_in_flight`: the limit reached.
    #[schema(nullable = false)]
    max_in_flight: Option<i64>,
    /// `queue_full`: how many tasks an account may have `queued` (`tasks.max_queued_per_account`).
    #[schema(nullable = false)]
    max_queued: Option<i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum RefusalScope {
    Key,
    Account,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum CapPeriod {
    Day,
    Month,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "aio-gateway",
        description = "Asynchronous image generation: create a task, poll it, pay only for what succeeds.",
        license(name = "MIT")
    ),
    paths(
        images::create,
        images::quote,
        tasks::get,
        tasks::list,
        tasks::cancel,
        super::events::stream,
        deliveries::list,
        deliveries::retry,
        callbacks::receive,
        billing::credits,
        billing::credits_alias,
        billing::packages,
        billing::create_order,
        billing::list_orders,
        billing::stripe_webhook,
        billing::redeem,
        billing::list_all_orders,
        billing::create_codes,
        models::list,
        models::get,
        files::get,
        health::live,
        health::ready,
        super::metrics::render,
        document,
        keys::list,
        keys::create,
        keys::revoke,
        keys::update,
        usage::usage,
        admin::create,
        admin::list,
        admin::get,
        admin::update,
        admin::change_credits,
        audit::list,
        session::create,
        session::show,
        session::delete,
        webhook_secret::show,
        webhook_secret::rotate,
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&SecuritySchemes, &Answers),
    tags(
        (name = "tasks", description = "API key: create tasks, follow them, see credits."),
        (name = "billing", description = "API key or console cookie: buy credits (Stripe Checkout), orders, redemption codes; Stripe's signed webhook."),
        (name = "catalog", description = "Public: models and result files."),
        (name = "dashboard", description = "Session token (JWT) or the console's session cookie: sign-in, the caller's own keys, usage and webhook secret."),
        (name = "admin", description = "Session token (JWT) with role admin: accounts and credits, the audit log."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("aio_…")
                    .description(Some("An API key: `Authorization: Bearer aio_…`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "aio_session",
                    "The web console's session cookie, set by `POST /api/v1/session`; state-changing requests must be same-origin.",
                ),
            )),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("A session token (JWT) with `sub` (account id) and `role` (admin | user)."))
                    .build(),
            ),
        );
    }
}

/// What annotations cannot say: the headers every answer carries, and the image types the file route
/// serves (every type the file store keeps, [`ImageType::ALL`]).
struct Answers;

impl Modify for Answers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let string = || ObjectBuilder::new().schema_type(Type::String).build();
        let header =
            |schema: Object, description: &str| Header::builder().schema(schema).description(Some(description)).build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let error = |description: &str| {
                    let envelope = Content::new(Some(Ref::from_schema_name("ErrorEnvelope")));
                    RefOr::T(
                        ResponseBuilder::new().description(description).content("application/json", envelope).build(),
                    )
                };
                let responses = &mut operation.responses.responses;
                // Text the database cannot store (a NUL) in any parameter is refused by name.
                let parameters = operation.parameters.iter().flatten();
                if parameters.into_iter().any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query)) {
                    responses.entry("400".into()).or_insert_with(|| {
                        error("A parameter does not fit, e.g. holds a NUL character (the message names it).")
                    });
                }
                responses.entry("500".into()).or_insert_with(|| {
                    error("Something went wrong on our side (logged with the request id); the request can be retried.")
                });
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else { continue };
                    response.headers.insert(
                        "x-request-id".into(),
                        header(
                            string(),
                            "The request's id (the caller's own, when it sent a valid one); also `error.request_id`.",
                        ),
                    );
                    match status.as_str() {
                        "429" | "503" => {
                            let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).build();
                            response
                                .headers
                                .insert("Retry-After".into(), header(seconds, "Seconds to wait before retrying."));
                        }
                        "401" => {
                            response.headers.insert("WWW-Authenticate".into(), header(string(), "`Bearer`."));
                        }
                        _ => {}
                    }
                    if path == "/files/{name}" && matches!(status.as_str(), "200" | "206") {
                        response.content = ImageType::ALL
                            .into_iter()
                            .map(|image| {
                                let bytes = ObjectBuilder::new()
                                    .schema_type(Type::String)
                                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
                                    .build();
                                (image.mime().to_owned(), Content::new(Some(bytes)))
                            })
                            .collect();
                    }
                }
            }
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapiDocument",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1).", body = Object, content_type = "application/json"))
)]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The errors of every route that reads a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// Malformed JSON, an unknown field, a bad value (the message names the field).
    #[response(status = 400)]
    InvalidRequest(ErrorEnvelope),
    /// The body is over `server.body_limit_bytes`.
    #[response(status = 413)]
    PayloadTooLarge(ErrorEnvelope),
    /// The body is not `application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorEnvelope),
}

/// The errors of every API-key route.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum KeyErrors {
    /// Missing, malformed, unknown, revoked or expired API key (one answer for all).
    #[response(status = 401)]
    Unauthorized(ErrorEnvelope),
    /// A state-changing request signed in by the console's cookie, not from the console's origin (CSRF).
    #[response(status = 403)]
    CrossSite(ErrorEnvelope),
    /// The key's rate limit, or too many creates at once; see `Retry-After`.
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    RateLimited(ErrorEnvelope),
    /// The database is unreachable (`unavailable`), or more creates are waiting to be stored than the
    /// gateway queues (`overloaded`); see `Retry-After`.
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait.")))]
    Unavailable(ErrorEnvelope),
}

/// The errors of every session (dashboard) route.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SessionErrors {
    /// Missing, invalid or expired session token (one answer for all).
    #[response(status = 401)]
    Unauthorized(ErrorEnvelope),
    /// A state-changing request signed in by the console's cookie, not from the console's origin (CSRF).
    #[response(status = 403)]
    CrossSite(ErrorEnvelope),
    /// The database is unreachable; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorEnvelope),
}

/// The errors of every admin route.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AdminErrors {
    /// Missing, invalid or expired session token (one answer for all).
    #[response(status = 401)]
    Unauthorized(ErrorEnvelope),
    /// The session is a user's, not an admin's; or a state-changing request signed in by the console's
    /// cookie, not from the console's origin (CSRF).
    #[response(status = 403)]
    Forbidden(ErrorEnvelope),
    /// The database is unreachable; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorEnvelope),
}
