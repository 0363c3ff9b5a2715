//! Health, readiness, metrics and the OpenAPI document (spec §9). No key needed.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
}

/// The process is up (spec §9).
#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}

/// The database answers within 1 s and the server is not draining (spec §9).
#[utoipa::path(get, path = "/ready", tag = "operations", security(()),
    responses((status = 200, description = "{\"status\":\"ready\"}"),
              (status = 503, body = crate::api::ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let draining = state.runtime.shutdown.is_cancelled();
    let database_ok = matches!(
        tokio::time::timeout(Duration::from_secs(1), state.runtime.db.ping()).await,
        Ok(Ok(()))
    );
    if database_ok && !draining {
        return Json(json!({"status": "ready"})).into_response();
    }
    let mut report = ApiError::Unavailable(String::new()).report();
    report.message = if draining {
        "server is shutting down"
    } else {
        "database is not answering"
    }
    .into();
    report.details = Some(json!({"checks": {
        "database": if database_ok { "ok" } else { "failing" },
        "server": if draining { "draining" } else { "ok" },
    }}));
    report.into_response(crate::error::ErrorShape::Rest)
}

/// Prometheus exposition (spec §9); `404` when `metrics.enabled = false`.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format 0.0.4"),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.runtime.config.metrics.enabled {
        return Err(ApiError::not_found("metrics are disabled"));
    }
    crate::runtime::tasks::actions::refresh_metrics(&state.runtime).await;
    crate::runtime::missions::refresh_metrics(&state.runtime).await;
    let text = state.runtime.metrics.render(state.verifier.lookups());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// This document (spec §9).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, content_type = "application/json", description = "OpenAPI 3.1 document")))]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::api::OPENAPI.as_str(),
    )
        .into_response()
}
