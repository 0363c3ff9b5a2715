//! `/v1/events`: the live event stream (SSE) and its polling twin (spec §7).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::input::QueryParams;
use super::sse::Event as SseEvent;
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::events::filter::Filter;
use crate::events::hub::{LiveEvent, StoredEvent};
use crate::runtime::Runtime;
use crate::runtime::event_log::{self, Opening};

fn read_filter(query: &mut QueryParams) -> Result<Filter, ApiError> {
    Filter::parse(&query.take("filter").unwrap_or_default())
        .map_err(|problem| ApiError::invalid_field("filter", problem))
}

fn frame(event: &StoredEvent) -> Bytes {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(&event.name)
        .data(&event.payload)
        .into()
}

/// Stream events as they are committed, resuming after `Last-Event-ID` (spec §7.1–§7.5).
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("filter" = Option<String>, Query, description = "comma-separated patterns, `*` matches any run"),
           ("Last-Event-ID" = Option<String>, Header, description = "sequence number to resume after"),
           ("lastEventId" = Option<String>, Query, description = "same as Last-Event-ID; the header wins"),
           ("apiKey" = Option<String>, Query, description = "the key, for browsers' EventSource")),
    responses((status = 200, content_type = "text/event-stream", description = "id/event/data frames"),
              (status = 400, body = crate::api::ErrorBody)))]
pub async fn stream_events(
    State(state): State<AppState>,
    auth: AuthContext,
    headers: HeaderMap,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let filter = read_filter(&mut query)?;
    let query_resume = query.take("lastEventId");
    query.take("apiKey");
    query.finish()?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query_resume);
    let rt = &state.runtime;
    let slot = state.limiter.open_stream(rt, &auth).await?;
    let Opening {
        start,
        reset,
        mut subscription,
    } = event_log::open(rt, &auth.scope, resume.as_deref()).await?;
    let guard = rt.metrics.open_stream("events");
    let (db, shutdown) = (rt.db.clone(), rt.shutdown.clone());
    let revoked = Arc::clone(&state.verifier).revoked(rt.clone(), auth.clone());
    let frames = async_stream::stream! {
        let _open = guard;
        tokio::pin!(revoked);
        // Made once, not for every event: each wait for a cancellation joins a list every
        // stream shares.
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        yield Ok::<Bytes, Infallible>(SseEvent::default().retry(Duration::from_millis(3000)).into());
        if let Some(oldest) = reset {
            let data = json!({"reason": "expired", "oldestAvailable": oldest, "timestamp": crate::clock::format_ms(crate::clock::now_ms())});
            yield Ok(SseEvent::default().event("reset").data(data.to_string()).into());
        }
        let mut last = start;
        loop {
            let batch = match event_log::batch(&db, &auth.scope, last).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream could not read the backlog");
                    return;
                }
            };
            let full = event_log::is_full(&batch);
            for event in batch {
                last = event.seq;
                if filter.matches(&event.name) {
                    yield Ok(frame(&event));
                }
            }
            if !full {
                break;
            }
        }
        loop {
            let next: Option<Arc<LiveEvent>> = tokio::select! {
                // Streams close at the start of the drain; clients reconnect elsewhere.
                () = &mut stopping => return,
                () = &mut revoked => return,
                next = subscription.events.recv() => next,
            };
            // `None`: this subscriber fell too far behind and was dropped; it resumes by id.
            let Some(event) = next else { return };
            if event.seq > last {
                last = event.seq;
                if filter.matches(&event.name) {
                    // The subscribers of a scope share the frame.
                    yield Ok(event.wire(frame));
                }
            }
        }
    };
    let keepalive = rt.config.events.keepalive;
    Ok(super::sse::response(super::holding(frames, slot), keepalive))
}

/// One event in the history (spec §7.6).
#[derive(Serialize, ToSchema)]
pub struct HistoryEvent {
    id: i64,
    event: String,
    timestamp: Option<String>,
    #[schema(value_type = Object)]
    data: Value,
}

/// Poll the event log (spec §7.6).
#[utoipa::path(get, path = "/v1/events/history", tag = "events",
    params(("after" = Option<i64>, Query, description = "sequence number, default 0", minimum = 0),
           ("limit" = Option<i64>, Query, description = "1–1000, default 100"), ("filter" = Option<String>, Query, pattern = r"^[a-z0-9:_*-]{0,100}(,[a-z0-9:_*-]{0,100}){0,31}$")),
    responses((status = 200, body = [HistoryEvent],
               headers(("x-next-cursor" = String, description = "last id when more events exist"),
                       ("x-events-reset" = String, description = "true when events after `after` were deleted"))),
              (status = 400, body = crate::api::ErrorBody)))]
pub async fn event_history(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let filter = read_filter(&mut query)?;
    let after = match query.take("after") {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid_field("after", "must be a non-negative event id"))?,
    };
    let limit = match query.take("limit") {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid_field("limit", "must be an integer from 1 to 1000"))?,
    };
    query.finish()?;
    let page = event_log::history(&rt.db, &auth.scope, &filter, after, limit).await?;
    let mut body = Vec::with_capacity(page.events.len());
    for row in page.events {
        let data: Value = crate::store::read_json(&row.payload, "event payload")?;
        let timestamp = data.get("timestamp").and_then(Value::as_str).map(str::to_string);
        body.push(HistoryEvent {
            id: row.seq,
            event: row.name,
            timestamp,
            data,
        });
    }
    let mut response = Json(body).into_response();
    if let Some(next) = page.next {
        response.headers_mut().insert("x-next-cursor", HeaderValue::from(next));
    }
    if page.reset {
        response
            .headers_mut()
            .insert("x-events-reset", HeaderValue::from_static("true"));
    }
    Ok(response)
}
