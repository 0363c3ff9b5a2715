//! Webhook endpoints and their delivery records as the API shows them (spec §8.1, §8.3): the
//! destination and pattern rules, the per-scope limit, ids, secrets and cursors.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::Runtime;
use crate::clock::{self, Timestamp};
use crate::error::ApiError;
use crate::events::filter::Filter;
use crate::events::webhooks;
use crate::ids;
use crate::scope::Scope;
use crate::store;
use crate::store::webhooks::{DeliveryRow, WebhookRow};

pub const ID_PREFIX: &str = "wh_";
/// Most webhooks one project and environment may have.
const MAX_WEBHOOKS: i64 = 20;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    url: String,
    events: Vec<String>,
    description: Option<String>,
    /// Only in the create response; never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

impl Webhook {
    fn from_row(row: WebhookRow, with_secret: bool) -> Result<Self, ApiError> {
        Ok(Self {
            events: store::read_json(&row.events, "webhook events")?,
            secret: with_secret.then_some(row.secret),
            id: row.id,
            url: row.url,
            description: row.description,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
        })
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `evt_<sequence>`.
    pub event_id: String,
    event: String,
    /// `pending`, `succeeded` or `failed`.
    status: String,
    attempts: i64,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    last_attempt_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    next_attempt_at: Option<Timestamp>,
    duration_ms: Option<i64>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
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
            last_attempt_at: row.last_attempt_at.map(Timestamp),
            next_attempt_at: pending.then_some(Timestamp(row.next_attempt_at)),
            duration_ms: row.duration_ms,
            created_at: Timestamp(row.created_at),
        }
    }
}

/// A webhook as requested, its members already checked for shape.
pub struct Draft {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A draft whose destination and patterns passed the rules of spec §8.2.
pub struct Checked {
    url: String,
    events: Vec<String>,
    description: Option<String>,
}

/// Checks the destination (resolving its host) and the event patterns; on failure, every
/// problem by field.
pub async fn check(draft: Draft, rt: &Runtime) -> Result<Checked, BTreeMap<String, String>> {
    let mut problems = BTreeMap::new();
    let url = match draft.url {
        Some(url) => match webhooks::check_url(&url, &rt.config.webhooks).await {
            Ok(_) => Some(url),
            Err(problem) => {
                problems.insert("url".to_string(), problem);
                None
            }
        },
        None => {
            problems.insert("url".to_string(), "required".to_string());
            None
        }
    };
    let events = match draft.events {
        Some(patterns) if !patterns.is_empty() => match Filter::from_patterns(patterns.clone()) {
            Ok(_) => Some(patterns),
            Err(problem) => {
                problems.insert("events".to_string(), problem);
                None
            }
        },
        _ => {
            problems.insert("events".to_string(), "required: 1 to 32 event patterns".to_string());
            None
        }
    };
    match (url, events) {
        (Some(url), Some(events)) if problems.is_empty() => Ok(Checked {
            url,
            events,
            description: draft.description,
        }),
        _ => Err(problems),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook {id:?} not found"))
}

/// Creates the webhook; the answer alone carries its signing secret. The count limit and the
/// insert run in one transaction under the project's lock, so concurrent creations cannot pass
/// the limit together.
pub async fn create(rt: &Runtime, scope: &Scope, checked: Checked) -> Result<Webhook, ApiError> {
    let mut change = rt.change(scope).await?;
    store::projects::lock(change.conn(), &scope.project).await?;
    if store::webhooks::count(change.conn(), scope).await? >= MAX_WEBHOOKS {
        return Err(ApiError::conflict(format!(
            "this project and environment already have {MAX_WEBHOOKS} webhooks"
        )));
    }
    let now = clock::now_ms();
    let row = WebhookRow {
        id: ids::new_id(ID_PREFIX),
        url: checked.url,
        events: serde_json::to_string(&checked.events).map_err(ApiError::internal)?,
        description: checked.description,
        secret: webhooks::generate_secret().map_err(ApiError::internal)?,
        // Only events committed after creation are delivered.
        cursor: store::events::latest(change.conn(), scope).await?,
        created_at: now,
        updated_at: now,
    };
    store::webhooks::insert(change.conn(), scope, &row).await?;
    change.commit().await?;
    rt.hub.webhooks.everything();
    Webhook::from_row(row, true)
}

pub async fn list(rt: &Runtime, scope: &Scope, after: &str, fetch: i64) -> Result<Vec<Webhook>, ApiError> {
    let rows = store::webhooks::list(&rt.db.pool, scope, after, fetch).await?;
    rows.into_iter().map(|r| Webhook::from_row(r, false)).collect()
}

pub async fn get(rt: &Runtime, scope: &Scope, id: &str) -> Result<Webhook, ApiError> {
    let row = store::webhooks::get(&rt.db.pool, scope, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Webhook::from_row(row, false)
}

/// Deletes the webhook and drops its pending deliveries, in one transaction.
pub async fn delete(rt: &Runtime, scope: &Scope, id: &str) -> Result<(), ApiError> {
    let mut tx = rt.db.begin().await?;
    let deleted = store::webhooks::delete(&mut *tx, scope, id).await?;
    store::webhooks::delete_deliveries(&mut *tx, scope, id).await?;
    tx.commit().await?;
    if deleted { Ok(()) } else { Err(not_found(id)) }
}

/// Delivery records of a webhook in event order; `status` filters when non-empty.
pub async fn deliveries(
    rt: &Runtime,
    scope: &Scope,
    id: &str,
    status: &str,
    after: i64,
    fetch: i64,
) -> Result<Vec<Delivery>, ApiError> {
    get(rt, scope, id).await?;
    let rows = store::webhooks::list_deliveries(&rt.db.pool, scope, id, status, after, fetch).await?;
    Ok(rows.into_iter().map(Delivery::from_row).collect())
}
