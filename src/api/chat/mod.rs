//! `POST /v1/chat/completions`: the OpenAI-compatible endpoint (spec §3). Reading the request
//! is in `request`, the OpenAI answer shapes in `render`; errors here use the OpenAI shape
//! (§3.11), which the error middleware renders.

mod extras;
mod render;
mod request;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};

use axum::response::{IntoResponse, Response};

use super::input::JsonObject;
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::ids;
use crate::runtime::chat::{self, StartError};
use render::Completion;

/// Headers an answer ends up with: the session's, the rate limit's three, the request id, its
/// type, length and date; the map is made that large at once rather than grown on the way out.
const ANSWER_HEADERS: usize = 10;

fn session_header(session_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(session_id) {
        headers.insert("x-session-id", value);
    }
    headers
}

/// Create a chat completion, streamed or not (spec §3).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat",
    request_body(content = Object, description = "An OpenAI chat completion request, plus `agent` and `metadata` (spec §3.2)"),
    params(("x-session-id" = Option<String>, Header, description = "`new` or absent starts a session; a session id continues it")),
    responses((status = 200, description = "a chat.completion object, or a text/event-stream of chat.completion.chunk frames ending in [DONE]",
               headers(("x-session-id" = String, description = "the session used"))),
              (status = 400, description = "OpenAI error shape"), (status = 404, description = "unknown agent or session"),
              (status = 409, description = "session of another agent"), (status = 429, description = "rate limited"),
              (status = 502, description = "provider failed"), (status = 504, description = "provider timed out")))]
pub async fn create_chat_completion(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, Response> {
    let request = request::read_request(body).map_err(IntoResponse::into_response)?;
    let header = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let stream = request.stream;
    let include_usage = request.include_usage;
    let rt = &state.runtime;
    let slot = if stream {
        Some(
            state
                .limiter
                .open_stream(rt, &auth)
                .await
                .map_err(IntoResponse::into_response)?,
        )
    } else {
        None
    };
    // The HTTP side ends a stream whose key is revoked (spec §1.2.3); the turn itself knows no keys.
    let revoked = Arc::clone(&state.verifier).revoked(rt.clone(), auth.clone());
    let interrupt: chat::Interrupt = Box::pin(async move {
        revoked.await;
        ApiError::InvalidApiKey
    });
    let turn = chat::start(rt, &auth.scope, header.as_deref(), request, Some(interrupt))
        .await
        .map_err(|StartError { error, session_id }| match session_id {
            Some(id) => (session_header(&id), error).into_response(),
            None => error.into_response(),
        })?;
    let completion = Completion {
        id: ids::new_id("chatcmpl-"),
        created: crate::clock::now_ms() / 1000,
        model: turn.model.clone(),
    };
    let headers = session_header(&turn.session_id);
    if let Some(slot) = slot {
        let keepalive = rt.config.events.keepalive;
        let guard = rt.metrics.open_stream("chat");
        let frames = render::stream_frames(completion, turn.events, include_usage, guard);
        let response = super::sse::response(super::holding(frames, slot), keepalive);
        return Ok(with_headers(response, headers));
    }
    match render::collect(completion, turn.events).await {
        Ok(answer) => Ok(with_headers(answer, headers)),
        Err(error) => Err((headers, error).into_response()),
    }
}

fn with_headers(mut response: Response, session: HeaderMap) -> Response {
    let mut headers = HeaderMap::with_capacity(ANSWER_HEADERS);
    headers.extend(std::mem::take(response.headers_mut()));
    headers.extend(session);
    *response.headers_mut() = headers;
    response
}
