//! Application state, router assembly, `serve`, background work and the shutdown signal.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use tokio::net::TcpListener;

use crate::api;
use crate::auth::KeyVerifier;
use crate::config::Config;
use crate::error::ApiError;
use crate::middleware;
use crate::middleware::rate_limit::Limiter;
use crate::providers::Providers;
use crate::runtime::Runtime;
use crate::store::Db;

/// Everything handlers share: the runtime context, and what only HTTP needs (key verification,
/// uptime). Cheap to clone; handlers take the part they need through `FromRef`.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub verifier: Arc<KeyVerifier>,
    /// Per-key request rate and open streams (spec §1.7).
    pub limiter: Arc<Limiter>,
    pub started: Instant,
}

impl AppState {
    pub fn new(db: Db, config: Config, providers: Providers) -> Result<Self, String> {
        // A bad origin is a start-up error, not a silently closed door.
        middleware::cors::layer(&config.server.cors_allowed_origins)?;
        let verifier = KeyVerifier::new(config.auth_cache_ttl());
        let limiter = Limiter::new(&config, db.backend);
        Ok(Self {
            runtime: Runtime::new(db, config, providers)?,
            verifier: Arc::new(verifier),
            limiter: Arc::new(limiter),
            started: Instant::now(),
        })
    }
}

impl FromRef<AppState> for Runtime {
    fn from_ref(state: &AppState) -> Self {
        state.runtime.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let (routes, _) = api::routes().split_for_parts();
    let routes = routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.runtime.config.server.body_limit));
    middleware::apply(routes, &state).with_state(state)
}

/// Runs the server on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish (the caller bounds that with the shutdown deadline).
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.runtime.shutdown.clone();
    // Streams write small frames: without TCP_NODELAY a stream's last frame waits for the
    // client's delayed ACK (about 40 ms).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    // One router for every connection: serving a `Router` itself would rebuild every route for
    // each new connection (axum turns it into routes per connection), which an open stream then
    // holds as long as it lasts.
    axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

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
