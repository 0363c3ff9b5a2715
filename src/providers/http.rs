//! What the HTTP providers share: sending a JSON request on the shared client, and turning an
//! upstream error answer into a `ProviderError` without leaking secrets.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::types::{ProviderError, scrub_secrets};
use super::upstream::{Client, Endpoint, Response};

/// A provider's endpoint, read from its base URL and `path` when its client is built; a URL that
/// cannot be called fails each request with its reason.
pub fn endpoint(base_url: &str, path: &str) -> Result<Endpoint, String> {
    Endpoint::parse(&format!("{base_url}{path}")).map_err(|e| e.to_string())
}

/// Sends a JSON body; a transport failure is an upstream error.
pub async fn send(
    client: &Client,
    endpoint: &Result<Endpoint, String>,
    headers: &[(&'static str, &str)],
    body: &impl Serialize,
) -> Result<Response, ProviderError> {
    let endpoint = endpoint.as_ref().map_err(|e| ProviderError::Upstream(e.clone()))?;
    let body = serde_json::to_vec(body).map_err(|e| ProviderError::Upstream(format!("request not encodable: {e}")))?;
    client
        .post_json(endpoint, headers, &body)
        .await
        .map_err(|e| ProviderError::Upstream(e.to_string()))
}

/// Maps a non-2xx answer (spec §3.9). `message_of` digs the provider's own message out of its
/// JSON error body.
pub async fn error_for(response: Response, message_of: fn(&Value) -> Option<String>) -> ProviderError {
    let status = response.status();
    let retry_after = retry_after(&response);
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .as_ref()
        .and_then(message_of)
        .map(|m| scrub_secrets(&m));
    match status {
        401 | 403 => ProviderError::Unauthorized { status },
        429 => ProviderError::RateLimited { retry_after },
        400..=499 => ProviderError::Rejected { status, message },
        s => ProviderError::Upstream(format!("status {s}: {}", message.unwrap_or_default())),
    }
}

/// `retry-after-ms`, else `retry-after` in seconds.
fn retry_after(response: &Response) -> Option<Duration> {
    let get = |name: &str| response.header(name);
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
