//! Application state, router assembly, `serve`, background work and the shutdown signal.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::auth::KeyVerifier;
use crate::config::Config;
use crate::error::ApiError;
use crate::events::hub::Hub;
use crate::metrics::Metrics;
use crate::middleware;
use crate::providers::{Clients, Providers};
use crate::store::Db;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub config: Arc<Config>,
    pub providers: Arc<Providers>,
    /// One client per usable provider.
    pub clients: Clients,
    pub verifier: Arc<KeyVerifier>,
    /// Live fan-out of the event log.
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Cancelled when the server starts draining (spec §10.5).
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline is reached: streams still open end with an
    /// `unavailable` error frame.
    pub hard_stop: CancellationToken,
}

impl AppState {
    pub fn new(db: Db, config: Config, providers: Providers) -> Result<Self, String> {
        let verifier = KeyVerifier::new(config.auth_cache_ttl());
        let clients = Clients::build(&providers, &config.upstream)?;
        let shutdown = CancellationToken::new();
        let hub = Hub::new(
            db.clone(),
            config.events.subscriber_buffer,
            EVENT_TICK,
            shutdown.clone(),
        );
        Ok(Self {
            hub: Arc::new(hub),
            db,
            providers: Arc::new(providers),
            clients,
            verifier: Arc::new(verifier),
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            shutdown,
            hard_stop: CancellationToken::new(),
            config: Arc::new(config),
        })
    }
}

/// How often an event feed re-reads the log without a wake-up (spec §7.5: under 5 s even when
/// notifications are lost).
const EVENT_TICK: std::time::Duration = std::time::Duration::from_secs(1);

pub fn router(state: AppState) -> Router {
    let (routes, _) = api::routes().split_for_parts();
    let routes = routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.config.server.body_limit));
    middleware::apply(routes, &state).with_state(state)
}

/// Runs the server on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish (the caller bounds that with the shutdown deadline).
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    // Streams write small frames: without TCP_NODELAY a stream's last frame waits for the
    // client's delayed ACK (about 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Starts the work that runs beside the HTTP server until shutdown: the event-log retention purge
/// and, on Postgres, the listener that wakes event feeds for other instances' commits.
pub fn spawn_background(state: &AppState) {
    if let Some(url) = state.config.database.url.clone() {
        tokio::spawn(Arc::clone(&state.hub).listen_postgres(url));
    }
    let worker = crate::events::webhooks::Worker {
        db: state.db.clone(),
        metrics: Arc::clone(&state.metrics),
        settings: state.config.webhooks.clone(),
        wake: Arc::clone(&state.hub.committed),
        shutdown: state.shutdown.clone(),
    };
    tokio::spawn(worker.run());
    let (db, retention, shutdown) = (state.db.clone(), state.config.events.retention, state.shutdown.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PURGE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let cutoff = crate::clock::now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            match crate::store::events::purge(&db.pool, cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "purged events past retention"),
                Err(e) => tracing::warn!(error = %e, "event purge failed"),
            }
            if let Err(e) = crate::store::webhooks::purge_deliveries(&db.pool, cutoff).await {
                tracing::warn!(error = %e, "webhook delivery purge failed");
            }
        }
    });
}

/// How often expired events are purged.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
