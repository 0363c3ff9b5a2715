//! Application state, router assembly, `serve`, background work and the shutdown signal.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

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
///
/// HTTP/1.1 only, served by hyper's HTTP/1 connection directly: a server that also detects
/// HTTP/2 reads each connection's first 24 bytes apart, and the request read after them doubles
/// the connection's read buffer to 16 kB, which every open stream then holds.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.runtime.shutdown.clone();
    // One router for every connection (a clone shares its routes): serving a `Router` through
    // axum's make-service would rebuild every route for each new connection, which an open stream
    // then holds as long as it lasts.
    let router = router(state);
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        // Streams write small frames: without TCP_NODELAY a stream's last frame waits for the
        // client's delayed ACK (about 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // The request in progress finishes; an idle keep-alive connection closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A failed accept: a connection reset before it was accepted is skipped; anything else (out of
/// file descriptors, above all) is logged and the loop pauses a second rather than spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing 1 s");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
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
