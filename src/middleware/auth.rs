//! Authentication before any handler runs: deny by default (spec §1.1/§1.2), except the public
//! allowlist.

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};

use crate::api;
use crate::app::AppState;
use crate::auth;

/// The only route where `?apiKey=` is accepted: browsers' `EventSource` cannot set headers.
const QUERY_KEY_PATH: &str = "/v1/events";

/// Verifies the caller's key and hands its `AuthContext` to the handler. A refusal is answered in
/// the REST shape; the errors layer re-renders it for the OpenAI-shaped path.
pub async fn authenticate<F>(state: &AppState, mut req: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let is_get = req.method() == Method::GET;
    let path = req.uri().path();
    if is_get && api::PUBLIC_GET_PATHS.contains(&path) {
        return next(req).await;
    }
    let allow_query = is_get && path == QUERY_KEY_PATH;
    let verified = match auth::credential(req.headers(), req.uri().query(), allow_query) {
        Ok(token) => state.verifier.verify(&state.runtime, &token).await,
        Err(refusal) => Err((refusal, None)),
    };
    match verified {
        Ok(context) => {
            tracing::Span::current().record("key_id", context.key_id.as_str());
            req.extensions_mut().insert(context);
            next(req).await
        }
        Err((refusal, key_id)) => {
            tracing::info!(
                reason = refusal.as_str(),
                key_id = key_id.as_deref(),
                "refused credential"
            );
            refusal.error().into_response()
        }
    }
}
