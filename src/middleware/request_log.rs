//! The request id, the `request` span every later log line belongs to, and the access log.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use tracing::Instrument;

use crate::error::ErrorReport;

/// Opens the request span around the rest of the stack, so that the layers and handlers inside
/// log with the request id without being handed it; `key_id` is left empty for `auth` to record.
pub async fn log<F>(req: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let started = Instant::now();
    let request_id = crate::ids::new_id("req_");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), route = %route,
        key_id = tracing::field::Empty);

    let mut response = next(req).instrument(span.clone()).await;

    // The client sees only "internal error"; the cause is logged here, where the request id is.
    if let Some(cause) = response
        .extensions()
        .get::<ErrorReport>()
        .and_then(|r| r.log_cause.clone())
    {
        span.in_scope(|| tracing::error!(cause = %cause, "request failed"));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        )
    });
    response
}
