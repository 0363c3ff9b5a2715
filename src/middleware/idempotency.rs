//! `Idempotency-Key` on POST (spec §1.8): a retried request is answered with the first one's
//! status and body instead of being run again.
//!
//! The key is claimed first ("in flight", committed on its own, so that a concurrent request
//! with the same key gets `409`). The request then runs with its changes held
//! ([`Hold`]): its last change is committed by this layer together with the stored answer, so a
//! crash can never leave the writes without the record or the record without the writes. An
//! answer that is not stored (`401`, `429`, any 5xx) releases the claim, as does a client that
//! leaves before the answer (its held change is rolled back). A claim left in flight by an
//! instance that died is taken over after ten minutes, fenced by the claim's token.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::errors;
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::events::Hold;
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store::idempotency::{self as records, DONE, IN_FLIGHT, RecordRow, STREAM};
use crate::{clock, ids};

const HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
const SESSION_HEADER: &str = "x-session-id";
/// A claim older than this whose request never finished belongs to a dead instance.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
/// Attempts at claiming a key that keeps changing under us (released, expired, taken over).
const CLAIM_TRIES: usize = 3;

pub async fn replay_or_record<F>(state: &AppState, req: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    if req.method() != Method::POST {
        return next(req).await;
    }
    let (Some(value), Some(auth)) = (req.headers().get(HEADER), req.extensions().get::<AuthContext>()) else {
        return next(req).await;
    };
    let Some(key) = valid_key(value) else {
        return ApiError::invalid_field("Idempotency-Key", "must be 1 to 255 printable ASCII characters")
            .into_response();
    };
    let scope = auth.scope.clone();
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.runtime.config.server.body_limit).await {
        Ok(bytes) => bytes,
        Err(e) => return unreadable(e).into_response(),
    };
    let path = parts.uri.path().to_string();
    let claim = Claim {
        rt: state.runtime.clone(),
        scope,
        key,
        token: ids::new_id("idm_"),
        fingerprint: fingerprint(&parts.method, &parts.uri, &bytes),
        settled: false,
    };
    match claim.take().await {
        Ok(None) => {}
        Ok(Some(answer)) => return answer,
        Err(e) => return e.into_response(),
    }
    let hold = Hold::default();
    let response = hold.around(next(Request::from_parts(parts, Body::from(bytes)))).await;
    claim.settle(hold, response, &path).await
}

/// 1–255 printable ASCII characters.
fn valid_key(value: &HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    (printable && (1..=255).contains(&bytes.len())).then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// A body that could not be read: over the limit, or cut by the client.
fn unreadable(e: axum::Error) -> ApiError {
    if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
        ApiError::PayloadTooLarge
    } else {
        ApiError::bad_request("the request body could not be read")
    }
}

/// Method, path with query, and the SHA-256 of the body's bytes.
fn fingerprint(method: &Method, uri: &axum::http::Uri, body: &Bytes) -> String {
    let target = uri.path_and_query().map_or_else(|| uri.path(), |p| p.as_str());
    let mut hash = Sha256::new();
    hash.update(method.as_str());
    hash.update(b" ");
    hash.update(target);
    hash.update(b"\n");
    hash.update(Sha256::digest(body));
    crate::ids::hex(&hash.finalize())
}

/// This request's hold on its key. Dropped before it is settled (the client left), it releases
/// the key in the background.
struct Claim {
    rt: Runtime,
    scope: Scope,
    key: String,
    token: String,
    fingerprint: String,
    settled: bool,
}

impl Claim {
    /// Claims the key for this request, or the answer a request holding it gets instead.
    async fn take(&self) -> Result<Option<Response>, ApiError> {
        let pool = &self.rt.db.pool;
        let ttl = clock::duration_ms(self.rt.config.idempotency.ttl);
        for _ in 0..CLAIM_TRIES {
            let now = clock::now_ms();
            if records::claim(pool, &self.scope, &self.key, &self.fingerprint, &self.token, now).await? {
                return Ok(None);
            }
            let Some(record) = records::get(pool, &self.scope, &self.key).await? else {
                continue;
            };
            let expired = record.created_at <= now.saturating_sub(ttl);
            let abandoned = record.state == IN_FLIGHT
                && record.locked_at <= now.saturating_sub(clock::duration_ms(ABANDONED_AFTER));
            if !expired && record.fingerprint != self.fingerprint {
                return Ok(Some(mismatch()));
            }
            if expired || abandoned {
                let created_at = if expired { now } else { record.created_at };
                let fresh = (self.fingerprint.as_str(), created_at);
                if records::reclaim(pool, &self.scope, &self.key, &record.token, fresh, &self.token, now).await? {
                    return Ok(None);
                }
                continue;
            }
            return Ok(Some(match record.state.as_str() {
                IN_FLIGHT => in_flight(),
                STREAM => streamed(),
                _ => replay(record),
            }));
        }
        Ok(Some(in_flight()))
    }

    /// Stores the answer with the request's last change, or releases the key when the answer
    /// is not one to store. Dropped half way (the client left), the claim is released: a no-op
    /// once the answer is stored.
    async fn settle(mut self, hold: Hold, response: Response, path: &str) -> Response {
        let response = self.store(hold, response, path).await;
        self.settled = true;
        response
    }

    async fn store(&self, hold: Hold, response: Response, path: &str) -> Response {
        let held = hold.take();
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            if let Some(change) = held
                && let Err(e) = change.commit().await
            {
                tracing::error!(error = %e, "committing a request's writes after a failed answer");
            }
            self.release().await;
            return response;
        }
        let streamed = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let (response, body) = if streamed {
            (response, None)
        } else {
            let (parts, body) = errors::shaped(response, path).into_parts();
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(bytes) => (Response::from_parts(parts, Body::from(bytes.clone())), Some(bytes)),
                Err(e) => {
                    drop(held);
                    self.release().await;
                    return ApiError::internal(format!("reading an answer to store: {e}")).into_response();
                }
            }
        };
        let body = body.map(|b| String::from_utf8_lossy(&b).into_owned());
        let session = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = (
            i64::from(response.status().as_u16()),
            body.as_deref(),
            session.as_deref(),
        );
        let state = if streamed { STREAM } else { DONE };
        let stored = match held {
            Some(mut change) => {
                match records::complete(change.conn(), &self.scope, &self.key, &self.token, state, answer).await {
                    Ok(true) => change.commit().await.map(|()| true),
                    other => other,
                }
            }
            None => records::complete(&self.rt.db.pool, &self.scope, &self.key, &self.token, state, answer).await,
        };
        match stored {
            Ok(true) => response,
            // Taken over as abandoned while this request ran: its writes were rolled back.
            Ok(false) => ApiError::Conflict {
                message: "this Idempotency-Key was taken over by a later request; retry to get its answer".into(),
                details: None,
            }
            .into_response(),
            Err(e) => {
                self.release().await;
                ApiError::from(e).into_response()
            }
        }
    }

    async fn release(&self) {
        if let Err(e) = records::release(&self.rt.db.pool, &self.scope, &self.key, &self.token).await {
            tracing::warn!(error = %e, "releasing an idempotency key");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let claim = Self {
            rt: self.rt.clone(),
            scope: self.scope.clone(),
            key: std::mem::take(&mut self.key),
            token: std::mem::take(&mut self.token),
            fingerprint: String::new(),
            settled: true,
        };
        self.rt.spawn(async move { claim.release().await });
    }
}

fn mismatch() -> Response {
    ApiError::bad_request(
        "this Idempotency-Key was used with a different request (method, path or body); use a new key",
    )
    .into_response()
}

fn in_flight() -> Response {
    let mut response =
        ApiError::conflict("a request with this Idempotency-Key is still being processed").into_response();
    let headers = response.headers_mut();
    headers.insert("x-should-retry", HeaderValue::from_static("true"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn streamed() -> Response {
    ApiError::conflict("this Idempotency-Key was used by a streamed request, which cannot be replayed").into_response()
}

/// The stored answer, byte for byte.
fn replay(record: RecordRow) -> Response {
    let status = u16::try_from(record.status.unwrap_or(200))
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    if let Some(session) = record.session_id.and_then(|s| HeaderValue::from_str(&s).ok()) {
        headers.insert(SESSION_HEADER, session);
    }
    let mut response = (status, headers, record.body.unwrap_or_default()).into_response();
    response.extensions_mut().insert(errors::Shaped);
    response
}
