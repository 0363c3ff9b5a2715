//! Application state, router assembly, the request middleware and `serve`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::api;
use crate::auth::{self, KeyVerifier};
use crate::config::Config;
use crate::error::{ApiError, ErrorReport, ErrorShape};
use crate::providers::Providers;
use crate::runtime::Runtime;
use crate::store::Db;

/// Everything handlers share: the runtime context, and what only HTTP needs (key verification,
/// uptime). Cheap to clone; handlers take the part they need through `FromRef`.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub verifier: Arc<KeyVerifier>,
    pub started: Instant,
}

impl AppState {
    pub fn new(db: Db, config: Config, providers: Providers) -> Result<Self, String> {
        let verifier = KeyVerifier::new(config.auth_cache_ttl());
        Ok(Self {
            runtime: Runtime::new(db, config, providers)?,
            verifier: Arc::new(verifier),
            started: Instant::now(),
        })
    }
}

impl FromRef<AppState> for Runtime {
    fn from_ref(state: &AppState) -> Self {
        state.runtime.clone()
    }
}

/// The path whose errors use the OpenAI shape (spec §3.11).
const OPENAI_SHAPED_PATH: &str = "/v1/chat/completions";

pub fn router(state: AppState) -> Router {
    let (routes, _) = api::routes().split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.runtime.config.server.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), handle))
        .with_state(state)
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Request id, authentication before routing (deny by default, spec §1.1/§1.2), JSON error
/// bodies for every failure, metrics and the access log.
async fn handle(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = crate::ids::new_id("req_");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let shape = if path == OPENAI_SHAPED_PATH {
        ErrorShape::OpenAi
    } else {
        ErrorShape::Rest
    };
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = %route,
        key_id = tracing::field::Empty);

    let public = method == Method::GET && api::PUBLIC_GET_PATHS.contains(&path.as_str());
    let mut response = if public {
        next.run(req).instrument(span.clone()).await
    } else {
        let allow_query = method == Method::GET && path == "/v1/events";
        let verified = match auth::credential(req.headers(), req.uri().query(), allow_query) {
            Ok(token) => state.verifier.verify(&state.runtime.db, &token).await,
            Err(refusal) => Err((refusal, None)),
        };
        match verified {
            Ok(context) => {
                span.record("key_id", context.key_id.as_str());
                req.extensions_mut().insert(context);
                next.run(req).instrument(span.clone()).await
            }
            Err((refusal, key_id)) => {
                span.in_scope(|| {
                    tracing::info!(
                        reason = refusal.as_str(),
                        key_id = key_id.as_deref(),
                        "refused credential"
                    )
                });
                refusal.error().report().into_response(shape)
            }
        }
    };

    if response.status().is_client_error() || response.status().is_server_error() {
        response = normalize_error(response, shape);
        if let Some(cause) = response
            .extensions()
            .get::<ErrorReport>()
            .and_then(|r| r.log_cause.clone())
        {
            span.in_scope(|| tracing::error!(cause = %cause, "request failed"));
        }
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status();
    state
        .runtime
        .metrics
        .record_request(method.as_str(), &route, status.as_u16(), started.elapsed());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        )
    });
    response
}

/// Gives every error a JSON body of the right shape: ours are re-rendered for the OpenAI path;
/// framework answers (wrong method, body limit) get one built from their status. Headers such
/// as `Allow` are kept.
fn normalize_error(response: Response, shape: ErrorShape) -> Response {
    let report = response.extensions().get::<ErrorReport>().cloned();
    if report.is_some() && shape == ErrorShape::Rest {
        return response;
    }
    let report = report.unwrap_or_else(|| ApiError::from_status(response.status()).report());
    let (parts, _) = response.into_parts();
    let mut fresh = report.into_response(shape);
    for (name, value) in &parts.headers {
        if *name == header::ALLOW || name.as_str().starts_with("x-") || name.as_str().starts_with("retry-after") {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
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
