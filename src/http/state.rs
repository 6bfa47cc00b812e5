//! What every handler can reach: the parts of the application, built by `app`.

use std::sync::Arc;

use crate::auth::KeyAuth;
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::engine::Engine;
use crate::files::FileStore;
use crate::jwt::{JwtAuth, SessionSigner};
use crate::ratelimit::RateLimiter;
use crate::store::Db;
use crate::task_events::TaskEvents;
use crate::url_guard::Guard;
use crate::webhooks::Webhooks;

/// What every handler can reach: one shared [`Parts`], so a clone (axum clones the state for every
/// request and extractor) is one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl AppState {
    pub fn new(parts: Parts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// The parts of the application a handler can reach.
pub struct Parts {
    pub pool: Db,
    pub settings: Arc<Settings>,
    pub catalog: Arc<Catalog>,
    pub auth: Arc<KeyAuth>,
    pub engine: Arc<Engine>,
    pub webhooks: Arc<Webhooks>,
    /// Task changes, for the live events stream and the OpenAI route's wait.
    pub events: Arc<TaskEvents>,
    /// Open live-event streams per key.
    pub streams: Arc<super::StreamSlots>,
    /// The outbound URL guard, for URLs in requests.
    pub guard: Arc<Guard>,
    pub files: FileStore,
    /// Finished tasks, for the status poll (`GET /api/v1/tasks/{id}`).
    pub finished: Arc<crate::tasks::FinishedTasks>,
    pub limits: Arc<RateLimiter>,
    /// Session tokens of the dashboard and admin routes; `None` when no key is configured.
    pub jwt: Option<Arc<JwtAuth>>,
    /// Signs and checks the web console's session cookies.
    pub sessions: Arc<SessionSigner>,
    /// Stripe's API, for top-up orders.
    pub stripe: Arc<crate::billing::stripe::Client>,
}
