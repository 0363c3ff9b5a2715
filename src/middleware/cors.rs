//! CORS for browser clients (spec §1.1): off unless `server.cors_allowed_origins` lists
//! origins. When on, a preflight is answered before authentication (browsers send it without
//! the key), and responses expose the headers clients read.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The response headers a browser client may read (spec §1.1).
const EXPOSED: &[&str] = &[
    "x-request-id",
    "x-session-id",
    "x-next-cursor",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "retry-after",
    "retry-after-ms",
    "idempotent-replayed",
];

/// The request headers a browser client may send.
const ALLOWED: &[&str] = &["x-api-key", "idempotency-key", "last-event-id", "x-session-id"];

/// The layer for the configured origins; `None` when none is configured. An origin that is not
/// a valid header value is an error for the start-up to report.
pub fn layer(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o).map_err(|_| format!("server.cors_allowed_origins: {o:?} is not an origin")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut allowed: Vec<HeaderName> = vec![header::AUTHORIZATION, header::CONTENT_TYPE];
    allowed.extend(ALLOWED.iter().map(|h| HeaderName::from_static(h)));
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers(allowed)
            .expose_headers(EXPOSED.iter().map(|h| HeaderName::from_static(h)).collect::<Vec<_>>())
            .max_age(std::time::Duration::from_secs(600)),
    ))
}
