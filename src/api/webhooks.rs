//! `/v1/webhooks`: webhook endpoints and their delivery records (spec §8.1). No events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa::ToSchema;

use super::input::{Fields, JsonObject, Page, QueryParams};
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::webhooks::{self, Delivery, Draft, ID_PREFIX, Webhook};

#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct WebhookRequest {
    /// `https` URL of a public host.
    #[schema(min_length = 1, max_length = 2048, pattern = r"^https://")]
    url: String,
    #[schema(schema_with = event_patterns)]
    events: Vec<String>,
    #[schema(max_length = 500)]
    description: Option<String>,
}

/// 1–32 event patterns, as the event stream's `filter` (spec §7.1): `*` is a wildcard.
fn event_patterns() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[a-z0-9:_*-]{1,100}$")),
        )
        .min_items(Some(1))
        .max_items(Some(32))
        .description(Some("Event patterns, as the event stream's `filter`."))
        .build()
}

/// List webhooks (spec §8.1).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    params(("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^wh_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Webhook]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_webhooks(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, ID_PREFIX)?;
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let hooks = webhooks::list(&rt, &auth.scope, &after, page.fetch()).await?;
    Ok(page.respond(hooks, |w| &w.id))
}

/// Create a webhook; the response alone carries its signing secret (spec §8.1, §8.2).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = WebhookRequest,
    responses((status = 201, body = Webhook), (status = 400, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "already 20 webhooks")))]
pub async fn create_webhook(
    State(rt): State<Runtime>,
    auth: AuthContext,
    body: JsonObject,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let mut f = Fields::new(
        body.0,
        &["url", "events", "description"],
        &["id", "secret", "createdAt", "updatedAt"],
    );
    let draft = Draft {
        url: f.string("url", 1, 2048).into_option(),
        events: f.string_list("events", 32, |_| None).into_option(),
        description: f.string("description", 0, 500).into_option(),
    };
    let checked = webhooks::check(draft, &rt).await;
    if let Err(problems) = &checked {
        // A shape problem already noted for a field wins over the rule problem.
        for (path, problem) in problems {
            f.error(path.clone(), problem.clone());
        }
    }
    f.finish()?;
    let checked = checked.map_err(ApiError::invalid_fields)?;
    let webhook = webhooks::create(&rt, &auth.scope, checked).await?;
    Ok((StatusCode::CREATED, Json(webhook)))
}

/// Read one webhook (spec §8.1).
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Webhook), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_webhook(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(webhooks::get(&rt, &auth.scope, &id).await?))
}

/// Delete a webhook; its pending deliveries are dropped (spec §8.1).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_webhook(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    webhooks::delete(&rt, &auth.scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delivery records of a webhook, in event order (spec §8.3).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), ("status" = Option<String>, Query, description = "pending, succeeded or failed", pattern = r"^(pending|succeeded|failed)?$"),
           ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, description = "evt_<sequence>", pattern = r"^evt_[0-9]{1,18}$")),
    responses((status = 200, body = [Delivery]), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn list_deliveries(
    State(rt): State<Runtime>,
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
    let deliveries = webhooks::deliveries(&rt, &auth.scope, &id, &status, after, page.fetch()).await?;
    Ok(page.respond(deliveries, |d| &d.event_id))
}
