//! `/v1/webhooks`: webhook endpoints and their delivery records (spec §8.1). No events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::input::{Field, Fields, JsonObject, Page, QueryParams};
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::clock;
use crate::error::ApiError;
use crate::events::filter::Filter;
use crate::events::webhooks;
use crate::ids;
use crate::store;
use crate::store::webhooks::{DeliveryRow, WebhookRow};

const ID_PREFIX: &str = "wh_";
/// Most webhooks one project and environment may have.
const MAX_WEBHOOKS: i64 = 20;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    id: String,
    url: String,
    events: Vec<String>,
    description: Option<String>,
    /// Only in the create response; never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(with = "clock::serde_ms")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(with = "clock::serde_ms")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
}

impl Webhook {
    fn from_row(row: WebhookRow, with_secret: bool) -> Self {
        Self {
            events: serde_json::from_str(&row.events).unwrap_or_default(),
            secret: with_secret.then_some(row.secret),
            id: row.id,
            url: row.url,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `evt_<sequence>`.
    event_id: String,
    event: String,
    /// `pending`, `succeeded` or `failed`.
    status: String,
    attempts: i64,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    #[serde(with = "clock::serde_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_attempt_at: Option<i64>,
    #[serde(with = "clock::serde_ms::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    next_attempt_at: Option<i64>,
    duration_ms: Option<i64>,
    #[serde(with = "clock::serde_ms")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
}

impl Delivery {
    fn from_row(row: DeliveryRow) -> Self {
        let pending = row.status == "pending";
        Self {
            event_id: format!("evt_{}", row.seq),
            event: row.event,
            status: row.status,
            attempts: row.attempts,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            last_attempt_at: row.last_attempt_at,
            next_attempt_at: pending.then_some(row.next_attempt_at),
            duration_ms: row.duration_ms,
            created_at: row.created_at,
        }
    }
}

#[derive(serde::Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct WebhookRequest {
    /// `https` URL (≤ 2048 characters) of a public host.
    url: String,
    /// 1–32 event patterns, as the event stream's `filter`.
    events: Vec<String>,
    description: Option<String>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook {id:?} not found"))
}

/// List webhooks (spec §8.1).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, body = [Webhook]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, ID_PREFIX)?;
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let rows = store::webhooks::list(&state.db.pool, &auth.scope, &after, page.fetch()).await?;
    Ok(
        page.respond(rows.into_iter().map(|r| Webhook::from_row(r, false)).collect(), |w| {
            &w.id
        }),
    )
}

/// Create a webhook; the response alone carries its signing secret (spec §8.1, §8.2).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = WebhookRequest,
    responses((status = 201, body = Webhook), (status = 400, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "already 20 webhooks")))]
pub async fn create_webhook(
    State(state): State<AppState>,
    auth: AuthContext,
    body: JsonObject,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let mut f = Fields::new(
        body.0,
        &["url", "events", "description"],
        &["id", "secret", "createdAt", "updatedAt"],
    );
    let url = f.string("url", 1, 2048);
    let events = f.string_list("events", 32, |_| None);
    let description = f.string("description", 0, 500).into_option();
    let url = match url {
        Field::Value(url) => match webhooks::check_url(&url, &state.config.webhooks).await {
            Ok(_) => Some(url),
            Err(problem) => {
                f.error("url".into(), problem);
                None
            }
        },
        _ => {
            if !f.has_error("url") {
                f.error("url".into(), "required");
            }
            None
        }
    };
    let events = match events {
        Field::Value(patterns) if !patterns.is_empty() => match Filter::from_patterns(patterns.clone()) {
            Ok(_) => Some(patterns),
            Err(problem) => {
                f.error("events".into(), problem);
                None
            }
        },
        _ => {
            if !f.has_error("events") {
                f.error("events".into(), "required: 1 to 32 event patterns");
            }
            None
        }
    };
    f.finish()?;
    let (Some(url), Some(events)) = (url, events) else {
        return Err(ApiError::bad_request("url and events are required"));
    };
    if store::webhooks::count(&state.db.pool, &auth.scope).await? >= MAX_WEBHOOKS {
        return Err(ApiError::conflict(format!(
            "this project and environment already have {MAX_WEBHOOKS} webhooks"
        )));
    }
    let now = clock::now_ms();
    let row = WebhookRow {
        id: ids::new_id(ID_PREFIX),
        url,
        events: serde_json::to_string(&events).map_err(ApiError::internal)?,
        description,
        secret: webhooks::generate_secret().map_err(ApiError::internal)?,
        // Only events committed after creation are delivered.
        cursor: store::events::latest(&state.db.pool, &auth.scope).await?,
        created_at: now,
        updated_at: now,
    };
    store::webhooks::insert(&state.db.pool, &auth.scope, &row).await?;
    Ok((StatusCode::CREATED, Json(Webhook::from_row(row, true))))
}

/// Read one webhook (spec §8.1).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Webhook), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    let row = store::webhooks::get(&state.db.pool, &auth.scope, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(Webhook::from_row(row, false)))
}

/// Delete a webhook; its pending deliveries are dropped (spec §8.1).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut tx = state.db.pool.begin().await?;
    let deleted = store::webhooks::delete(&mut *tx, &auth.scope, &id).await?;
    store::webhooks::delete_deliveries(&mut *tx, &auth.scope, &id).await?;
    tx.commit().await?;
    if !deleted {
        return Err(not_found(&id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delivery records of a webhook, in event order (spec §8.3).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("status" = Option<String>, Query, description = "pending, succeeded or failed"),
           ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, description = "evt_<sequence>")),
    responses((status = 200, body = [Delivery]), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let status = query.take("status").unwrap_or_default();
    if !["", "pending", "succeeded", "failed"].contains(&status.as_str()) {
        return Err(ApiError::invalid_field(
            "status",
            "must be pending, succeeded or failed",
        ));
    }
    let after = match query.take("after") {
        None => 0,
        Some(text) => text
            .strip_prefix("evt_")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid_field("after", "must be a delivery id such as evt_1042"))?,
    };
    // `after` is an event id here, so the page reads only `limit`.
    let mut page_query = query;
    let page = Page::from_query(&mut page_query, ID_PREFIX)?;
    page_query.finish()?;
    store::webhooks::get(&state.db.pool, &auth.scope, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let rows = store::webhooks::list_deliveries(&state.db.pool, &auth.scope, &id, &status, after, page.fetch()).await?;
    Ok(page.respond(rows.into_iter().map(Delivery::from_row).collect(), |d| &d.event_id))
}
