//! `/v1/events`: the live event stream (SSE) and its polling twin (spec §7).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::input::QueryParams;
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::events::filter::Filter;
use crate::events::hub::StoredEvent;
use crate::scope::Scope;
use crate::store::{self, Db};

/// How often an open stream re-checks its key, so that a revoked key's streams end within 5 s.
const KEY_RECHECK: Duration = Duration::from_secs(1);
/// The oldest key verification an open stream trusts.
const KEY_MAX_AGE: Duration = Duration::from_secs(3);
const BATCH: i64 = 500;

fn read_filter(query: &mut QueryParams) -> Result<Filter, ApiError> {
    Filter::parse(&query.take("filter").unwrap_or_default())
        .map_err(|problem| ApiError::invalid_field("filter", problem))
}

fn frame(event: &StoredEvent) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default()
        .id(event.seq.to_string())
        .event(&event.name)
        .data(&event.payload))
}

/// Where a reader resuming after `after` must start, and the oldest retained event when events
/// after `after` were already deleted by retention (spec §7.4 rule 3).
async fn resume_point(db: &Db, scope: &Scope, after: i64, latest: i64) -> Result<(i64, Option<i64>), ApiError> {
    if after >= latest {
        return Ok((after, None));
    }
    let oldest = store::events::oldest(&db.pool, scope).await?.unwrap_or(latest + 1);
    if oldest > after + 1 {
        Ok((oldest - 1, Some(oldest)))
    } else {
        Ok((after, None))
    }
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
    let latest = store::events::latest(&state.db.pool, &auth.scope).await?;
    let resume_text = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query_resume);
    let resume = match resume_text {
        None => None,
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) if (0..=latest).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::invalid_field(
                    "Last-Event-ID",
                    format!("must be an event id from 0 to {latest} (the latest of this project and environment)"),
                ));
            }
        },
    };
    let (start, reset) = match resume {
        Some(n) => resume_point(&state.db, &auth.scope, n, latest).await?,
        None => (latest, None),
    };
    // Subscribe first, then read the backlog: nothing committed in between is missed, and
    // duplicates are dropped by sequence number.
    let mut subscription = state.hub.subscribe(&auth.scope).await?;
    let guard = state.metrics.open_stream("events");
    let frames = async_stream::stream! {
        let _open = guard;
        yield Ok::<_, Infallible>(SseEvent::default().retry(Duration::from_millis(3000)));
        if let Some(oldest) = reset {
            let data = json!({"reason": "expired", "oldestAvailable": oldest, "timestamp": crate::clock::format_ms(crate::clock::now_ms())});
            yield Ok(SseEvent::default().event("reset").data(data.to_string()));
        }
        let mut last = start;
        loop {
            let batch = match store::events::list_after(&state.db.pool, &auth.scope, last, BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream could not read the backlog");
                    return;
                }
            };
            let full = batch.len() == usize::try_from(BATCH).unwrap_or(usize::MAX);
            for row in batch {
                last = row.seq;
                if filter.matches(&row.name) {
                    yield frame(&StoredEvent { seq: row.seq, name: row.name, payload: row.payload });
                }
            }
            if !full {
                break;
            }
        }
        let mut recheck = tokio::time::interval(KEY_RECHECK);
        loop {
            let next: Option<Arc<StoredEvent>> = tokio::select! {
                // Streams close at the start of the drain; clients reconnect elsewhere.
                () = state.shutdown.cancelled() => return,
                _ = recheck.tick() => {
                    if !state.verifier.still_valid(&state.db, &auth, KEY_MAX_AGE).await {
                        return;
                    }
                    continue;
                }
                next = subscription.events.recv() => next,
            };
            // `None`: this subscriber fell too far behind and was dropped; it resumes by id.
            let Some(event) = next else { return };
            if event.seq > last {
                last = event.seq;
                if filter.matches(&event.name) {
                    yield frame(&event);
                }
            }
        }
    };
    let keepalive = state.config.events.keepalive;
    let mut response = Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(keepalive).text("ping"))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
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
    params(("after" = Option<i64>, Query, description = "sequence number, default 0"),
           ("limit" = Option<i64>, Query, description = "1–1000, default 100"), ("filter" = Option<String>, Query)),
    responses((status = 200, body = [HistoryEvent],
               headers(("x-next-cursor" = String, description = "last id when more events exist"),
                       ("x-events-reset" = String, description = "true when events after `after` were deleted"))),
              (status = 400, body = crate::api::ErrorBody)))]
pub async fn event_history(
    State(state): State<AppState>,
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
    let latest = store::events::latest(&state.db.pool, &auth.scope).await?;
    let (mut cursor, reset) = resume_point(&state.db, &auth.scope, after, latest).await?;
    let mut items = Vec::new();
    'scan: loop {
        let batch = store::events::list_after(&state.db.pool, &auth.scope, cursor, BATCH).await?;
        let full = batch.len() == usize::try_from(BATCH).unwrap_or(usize::MAX);
        for row in batch {
            cursor = row.seq;
            if filter.matches(&row.name) {
                items.push(row);
                if items.len() > limit {
                    break 'scan;
                }
            }
        }
        if !full {
            break;
        }
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let body: Vec<HistoryEvent> = items
        .into_iter()
        .map(|row| {
            let data: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
            let timestamp = data.get("timestamp").and_then(Value::as_str).map(str::to_string);
            HistoryEvent {
                id: row.seq,
                event: row.name,
                timestamp,
                data,
            }
        })
        .collect();
    let next = more.then(|| body.last().map(|e| e.id)).flatten();
    let mut response = Json(body).into_response();
    if let Some(next) = next {
        response.headers_mut().insert("x-next-cursor", HeaderValue::from(next));
    }
    if reset.is_some() {
        response
            .headers_mut()
            .insert("x-events-reset", HeaderValue::from_static("true"));
    }
    Ok(response)
}
