//! The application: shared state, building it from settings, serving until shutdown.

use std::sync::Arc;

use crate::store::Db;
use anyhow::Context;
use reqwest::dns::Resolve;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::KeyAuth;
use crate::catalog::Catalog;
use crate::config::{ProviderMode, Settings};
use crate::engine::Engine;
use crate::files::{FileStore, Rehost};
use crate::instances::Instance;
use crate::jwt::{JwtAuth, SessionSigner};
use crate::providers::Providers;
use crate::ratelimit::RateLimiter;
use crate::retention::Retention;
use crate::url_guard::{Guard, SystemResolver};
use crate::webhooks::Webhooks;

use crate::http::serve::{self, ConnectionLimits};
use crate::http::{AppState, Parts};

pub struct Application {
    listener: TcpListener,
    /// `server.metrics_listen`, when set: `/metrics` alone.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    /// This process in the `instances` table, when it runs the engine.
    instance: Option<Arc<Instance>>,
}

impl Application {
    /// Binds the listener (port 0 picks a free port) and wires the parts together. The database must
    /// already be migrated.
    pub async fn build(settings: Settings, pool: Db) -> anyhow::Result<Application> {
        Application::build_with_resolver(settings, pool, Arc::new(SystemResolver)).await
    }

    /// [`Application::build`] with the resolver outbound requests look host names up with (before the
    /// guard filters the addresses): tests map names of their own to the addresses they need.
    pub async fn build_with_resolver(
        mut settings: Settings,
        pool: Db,
        resolver: Arc<dyn Resolve>,
    ) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(&settings.server.listen)
            .await
            .with_context(|| format!("server.listen: cannot bind {}", settings.server.listen))?;
        let address = listener.local_addr()?;
        let metrics_listener = match settings.server.metrics_listen {
            None => None,
            Some(metrics_listen) => Some(
                TcpListener::bind(metrics_listen)
                    .await
                    .with_context(|| format!("server.metrics_listen: cannot bind {metrics_listen}"))?,
            ),
        };
        crate::monitoring::handle();
        if settings.server.public_base_url.is_empty() {
            let host = if address.ip().is_unspecified() { "127.0.0.1".to_string() } else { address.ip().to_string() };
            settings.server.public_base_url = format!("http://{host}:{}", address.port());
        }
        let catalog = Catalog::load(&settings)?;
        match catalog.mode() {
            ProviderMode::Demo => tracing::warn!(
                mode = "demo",
                "demo mode: no real provider is configured; the simulated provider serves every model with placeholder images"
            ),
            ProviderMode::Live => tracing::info!(mode = "live", "live mode: real providers only"),
            ProviderMode::Staging => tracing::warn!(
                mode = "staging",
                "staging mode: catalog.allow_simulated_fallback keeps simulated routes beside real ones; simulated images are billed"
            ),
        }
        let link_key = crate::files::link_key(&pool).await.context("reading the file link key")?;
        let files = FileStore::from_settings(&settings.files, &settings.server.public_base_url, link_key)?;
        let providers = Providers::from_settings(&settings, &pool, &files)?;
        let guard = Arc::new(Guard::new(&settings.webhooks).with_own_files(&settings.server.public_base_url));
        let rehost = if settings.results.rehost {
            let nodes: Vec<&str> = settings
                .providers
                .values()
                .filter(|p| p.kind == crate::config::ProviderKind::Worker)
                .filter_map(|p| p.base_url.as_deref())
                .collect();
            Some(Rehost::new(files.clone(), &settings.results, (*guard).clone(), Arc::clone(&resolver), &nodes)?)
        } else {
            None
        };
        let instance = Instance::new(pool.clone(), settings.tasks.heartbeat, settings.tasks.instance_stale);
        // Registered before the first request: the fast path leases the tasks it creates.
        let runs_engine = settings.server.role.runs_engine();
        if runs_engine {
            instance.register().await.context("registering this gateway instance")?;
        }
        let webhooks = Webhooks::new(pool.clone(), &settings.webhooks, resolver, &instance.id)?;
        let catalog = Arc::new(catalog);
        let engine = Engine::new(
            pool.clone(),
            providers,
            Arc::clone(&catalog),
            Arc::clone(&guard),
            &settings,
            Arc::clone(&webhooks),
            rehost,
            files.clone(),
            &instance.id,
        );
        let events = Arc::clone(engine.events());
        let limits = Arc::new(RateLimiter::new(&settings.rate_limit)?);
        let jwt = JwtAuth::from_settings(&settings.auth.jwt)?.map(Arc::new);
        if jwt.is_none() {
            tracing::warn!("auth.jwt has no key (HS256: ${} unset): bearer session tokens on the dashboard and admin routes answer 401 (the console's cookie still works)", settings.auth.jwt.secret_env);
        }
        let sessions = Arc::new(SessionSigner::from_settings(&settings.auth.jwt)?);
        if !sessions.shared {
            tracing::info!("console sessions are signed with a secret of this process: they end on restart and are not shared between replicas");
        }
        let auth = KeyAuth::new(pool.clone(), settings.auth.key_cache_ttl);
        let stripe = &settings.billing.stripe;
        let stripe = Arc::new(crate::billing::stripe::Client::new(&stripe.api_base, stripe.secret_key.clone())?);
        let state = AppState::new(Parts {
            pool,
            settings: Arc::new(settings),
            catalog,
            auth: Arc::new(auth),
            engine,
            webhooks,
            events,
            streams: Arc::default(),
            guard,
            files,
            finished: crate::tasks::FinishedTasks::shared(),
            limits,
            jwt,
            sessions,
            stripe,
        });
        Ok(Application { listener, metrics_listener, state, instance: runs_engine.then_some(instance) })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP and runs the engine and the webhook deliveries until `shutdown` is cancelled.
    /// Then: stop accepting; let in-flight requests finish and the engine's provider calls end, both
    /// within `server.shutdown_grace_secs`; hand back the leases of tasks still unfinished.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let role = self.state.settings.server.role;
        let grace = self.state.settings.server.shutdown_grace;
        let engine = Arc::clone(&self.state.engine);
        // The long-lived tasks, all stopped by `shutdown`; a clean stop waits for every one of them.
        let background = TaskTracker::new();
        let engine_loop = role.runs_engine().then(|| background.spawn(Arc::clone(&engine).run(shutdown.clone())));
        let webhooks =
            role.runs_engine().then(|| background.spawn(Arc::clone(&self.state.webhooks).run(shutdown.clone())));
        let retention =
            Retention::new(self.state.pool.clone(), self.state.files.clone(), self.state.settings.retention.clone());
        if role.runs_engine() && retention.enabled() {
            background.spawn(retention.run(shutdown.clone()));
        }
        // Every process publishes its changes; waiters on tasks (live events, synchronous waits) are
        // API requests.
        let (events, listen) = (Arc::clone(&self.state.events), role.serves_api());
        let events_shutdown = shutdown.clone();
        background.spawn(async move { events.run(listen, events_shutdown).await });
        // Stopped after the loops and the drain (below): it stays alive while they hand back leases.
        let instance_stop = CancellationToken::new();
        let heartbeat = self.instance.map(|instance| {
            let (engine, webhooks) = (Arc::clone(&engine), Arc::clone(&self.state.webhooks));
            let wake = move || {
                engine.wake();
                webhooks.wake();
            };
            background.spawn(instance.run(instance_stop.clone(), wake))
        });
        tracing::info!(address = %self.listener.local_addr()?, ?role, "serving");
        let limits = ConnectionLimits::of(&self.state.settings.server);
        let metrics = self.metrics_listener.map(|listener| {
            let router = crate::http::metrics_router(self.state.clone());
            background.spawn(serve::serve(listener, router, limits, shutdown.clone()))
        });
        let router = crate::http::router(self.state);
        let mut server = background.spawn(serve::serve(self.listener, router, limits, shutdown.clone()));
        background.close();
        tokio::select! {
            _ = shutdown.cancelled() => {}
            served = &mut server => {
                // The server stopped by itself: an error (or a cancel that raced this select).
                served??;
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: no new connections; finishing in-flight requests");
        if !server.is_finished() {
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(served) => served??,
                Err(_) => {
                    tracing::warn!("shutdown grace over: in-flight requests cut off");
                    server.abort();
                }
            }
        }
        if let Some(engine_loop) = engine_loop {
            engine_loop.await?;
            engine.drain(deadline).await;
        }
        if let Some(webhooks) = webhooks {
            webhooks.await?;
        }
        instance_stop.cancel();
        if let Some(heartbeat) = heartbeat {
            heartbeat.await?;
        }
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        background.wait().await;
        tracing::info!("stopped");
        Ok(())
    }
}
