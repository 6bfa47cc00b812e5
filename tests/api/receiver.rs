//! A webhook receiver for the tests: a small axum server on a loopback address that records every
//! request (headers, raw body, arrival time), answers from a script (then 200), and verifies
//! signatures with the `standardwebhooks` crate, an implementation independent of the gateway's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 ok`, also the answer once the script has run out.
    Ok,
    /// This status, with the body `status {code}`.
    Status(u16),
    /// Answer 200 only after this long (longer than the gateway's timeout).
    Hang(Duration),
    /// This status with `Retry-After: {value}`.
    RetryAfter(u16, String),
    /// `302 Found` to this location.
    Redirect(String),
    /// This status with exactly these body bytes (which need not be text).
    Raw(u16, Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
    }

    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    pub fn timestamp(&self) -> i64 {
        self.header("webhook-timestamp").parse().expect("webhook-timestamp is an integer")
    }

    /// The `v1,…` entries of `webhook-signature`.
    pub fn signatures(&self) -> Vec<String> {
        self.header("webhook-signature").split(' ').map(str::to_owned).collect()
    }

    /// Verifies the request as a receiver would, with the reference library: some signature in the
    /// header is valid for `secret`, and the timestamp is within its 5 minutes.
    pub fn verify(&self, secret: &str) -> Result<(), String> {
        verify_headers(secret, &self.headers, &self.body)
    }

    /// Verifies one of the signatures on its own (as if it were the only one sent).
    pub fn verify_signature(&self, secret: &str, signature: &str) -> Result<(), String> {
        let mut headers = self.headers.clone();
        headers.insert("webhook-signature", HeaderValue::from_str(signature).map_err(|e| e.to_string())?);
        verify_headers(secret, &headers, &self.body)
    }
}

fn verify_headers(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let webhook = standardwebhooks::Webhook::new(secret).map_err(|e| format!("secret: {e}"))?;
    webhook.verify(body, headers).map_err(|e| e.to_string())
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    arrived: Notify,
}

pub struct Receiver {
    /// `http://{address}/hook`
    pub url: String,
    pub port: u16,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// Listens on `ip` (a loopback address) at a free port.
    pub async fn start(ip: &str) -> Receiver {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind the receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        let app = Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&state);
            async move { answer(&state, headers, body).await }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url: format!("http://{ip}:{port}/hook"), port, shared, server }
    }

    /// The answers to the next requests, in order; after them, 200.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().expect("script").extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received").clone()
    }

    /// Waits until `count` requests have arrived and returns them all. The 30 s bound only keeps a
    /// broken delivery loop from hanging the suite; it is not a timing assertion.
    pub async fn wait_for(&self, count: usize) -> Vec<Received> {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let arrived = self.shared.arrived.notified();
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(Instant::now() < give_up, "the receiver got {} of {count} requests", received.len());
            let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
        }
    }
}

async fn answer(shared: &Shared, headers: HeaderMap, body: Bytes) -> Response {
    shared.received.lock().expect("received").push(Received { headers, body, at: Instant::now() });
    shared.arrived.notify_waiters();
    let reply = shared.script.lock().expect("script").pop_front().unwrap_or(Reply::Ok);
    match reply {
        Reply::Ok => (StatusCode::OK, "ok").into_response(),
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).expect("a status code");
            (status, format!("status {code}")).into_response()
        }
        Reply::Hang(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, "late").into_response()
        }
        Reply::RetryAfter(code, value) => {
            let status = StatusCode::from_u16(code).expect("a status code");
            (status, [(header::RETRY_AFTER, value)], "busy").into_response()
        }
        Reply::Redirect(location) => (StatusCode::FOUND, [(header::LOCATION, location)], "moved").into_response(),
        Reply::Raw(code, body) => (StatusCode::from_u16(code).expect("a status code"), body).into_response(),
    }
}
