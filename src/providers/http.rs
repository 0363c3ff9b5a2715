//! What the HTTP providers share: the pooled client, and turning an upstream error answer into a
//! `ProviderError` without leaking secrets.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::types::{ProviderError, scrub_secrets};

/// Connection settings for upstream calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
}

/// One pooled client shared by every provider of this process.
pub fn client(timeouts: Timeouts) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// A transport error described without its URL (which may carry a provider host).
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "body error"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Sends a request; a transport failure is an upstream error.
pub async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
    request.send().await.map_err(|e| ProviderError::Upstream(describe(&e)))
}

/// Maps a non-2xx answer (spec §3.9). `message_of` digs the provider's own message out of its
/// JSON error body.
pub async fn error_for(response: reqwest::Response, message_of: fn(&Value) -> Option<String>) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .as_ref()
        .and_then(message_of)
        .map(|m| scrub_secrets(&m));
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Unauthorized {
            status: status.as_u16(),
        },
        StatusCode::TOO_MANY_REQUESTS => ProviderError::RateLimited { retry_after },
        s if s.is_client_error() => ProviderError::Rejected {
            status: s.as_u16(),
            message,
        },
        s => ProviderError::Upstream(format!("status {}: {}", s.as_u16(), message.unwrap_or_default())),
    }
}

/// `retry-after-ms`, else `retry-after` in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 0.0)
    {
        return Some(Duration::from_millis(ms.ceil() as u64));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 0.0)
        .map(Duration::from_secs_f64)
}
