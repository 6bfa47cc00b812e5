//! A fake Stripe API: `POST /v1/checkout/sessions`, form-encoded and authorised with the secret key
//! as Stripe takes them, answering the Checkout Session object. The object's shape is Stripe's own
//! fixture, `resources["checkout.session"]` of `openapi/fixtures3.json` in the stripe/openapi
//! repository (commit f6c2a48), kept in `tests/billing/stripe-fixtures.json` with the event, charge
//! and dispute fixtures the tests build webhook payloads from; the fake fills in what the request
//! set (amounts, currency, URLs, metadata) and a new id. A repeated `Idempotency-Key` gets the same
//! session, as at Stripe. Errors are Stripe's `{"error": {"message", "type"}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::{authorized, Recorder, Server, Step};

pub const SECRET_KEY: &str = "sk_test_fake_51NzAbCdEfGh";
pub const WEBHOOK_SECRET: &str = "whsec_test_current_7f3a9c";

/// Stripe's fixtures (see the module comment).
pub fn fixtures() -> Value {
    serde_json::from_str(include_str!("../../billing/stripe-fixtures.json")).expect("the Stripe fixtures parse")
}

pub fn fixture(name: &str) -> Value {
    fixtures()[name].clone()
}

struct Fake {
    base_url: String,
    recorder: Recorder,
    /// Sessions by id, and the session of each idempotency key.
    sessions: Mutex<HashMap<String, Value>>,
    by_idempotency_key: Mutex<HashMap<String, String>>,
}

pub struct FakeStripe {
    state: Arc<Fake>,
    _server: Server,
}

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let router = Router::new().route("/v1/checkout/sessions", post(create_session));
        let (state, server) = super::start("Stripe", router, |base_url| Fake {
            base_url,
            recorder: Recorder::default(),
            sessions: Mutex::new(HashMap::new()),
            by_idempotency_key: Mutex::new(HashMap::new()),
        })
        .await;
        FakeStripe { state, _server: server }
    }

    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    pub fn requests(&self) -> Vec<super::Request> {
        self.state.recorder.requests()
    }

    /// Answers for the next session creates.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.state.recorder.script("create", steps);
        self
    }

    /// The session as created.
    pub fn session(&self, id: &str) -> Value {
        self.state.sessions.lock().unwrap().get(id).cloned().unwrap_or_else(|| panic!("no session {id}"))
    }

    /// The session of the checkout URL the gateway handed out.
    pub fn session_of_url(&self, url: &str) -> Value {
        let id = url.rsplit('/').next().expect("a checkout URL");
        self.session(id)
    }
}

fn stripe_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": "invalid_request_error"}}))).into_response()
}

async fn create_session(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.recorder.record(method, &uri, headers.clone(), body.clone());
    if let Some(step) = fake.recorder.next("create").await {
        return step.into_response();
    }
    if !authorized(&headers, &format!("Bearer {SECRET_KEY}")) {
        return stripe_error(StatusCode::UNAUTHORIZED, "Invalid API Key provided.");
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type != "application/x-www-form-urlencoded" {
        return stripe_error(StatusCode::BAD_REQUEST, "Stripe takes form-encoded bodies.");
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(key) = &idempotency_key {
        let known = fake.by_idempotency_key.lock().unwrap().get(key).cloned();
        if let Some(id) = known {
            return axum::Json(fake.sessions.lock().unwrap()[&id].clone()).into_response();
        }
    }
    for required in [
        "mode",
        "success_url",
        "cancel_url",
        "line_items[0][price_data][currency]",
        "line_items[0][price_data][unit_amount]",
        "line_items[0][price_data][product_data][name]",
        "line_items[0][quantity]",
    ] {
        if !form.contains_key(required) {
            return stripe_error(StatusCode::BAD_REQUEST, &format!("Missing required param: {required}."));
        }
    }
    let Ok(amount) = form["line_items[0][price_data][unit_amount]"].parse::<i64>() else {
        return stripe_error(StatusCode::BAD_REQUEST, "Invalid integer: unit_amount.");
    };
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')).map(|k| (k.to_owned(), json!(v)))
        })
        .collect();
    let id = format!("cs_test_{}", aio_gateway::ids::new_secret(58));
    let now = chrono::Utc::now().timestamp();
    let mut session = fixture("checkout.session");
    let fields = json!({
        "id": id,
        "url": format!("{}/c/pay/{id}", fake.base_url),
        "amount_subtotal": amount,
        "amount_total": amount,
        "currency": form["line_items[0][price_data][currency]"],
        "client_reference_id": form.get("client_reference_id"),
        "metadata": metadata,
        "mode": form["mode"],
        "success_url": form["success_url"],
        "cancel_url": form["cancel_url"],
        "created": now,
        "expires_at": now + 86_400,
        "status": "open",
        "payment_status": "unpaid",
        // Payment-mode sessions get their PaymentIntent when the buyer pays.
        "payment_intent": null,
    });
    for (key, value) in fields.as_object().unwrap() {
        session[key] = value.clone();
    }
    fake.sessions.lock().unwrap().insert(id.clone(), session.clone());
    if let Some(key) = idempotency_key {
        fake.by_idempotency_key.lock().unwrap().insert(key, id);
    }
    axum::Json(session).into_response()
}
