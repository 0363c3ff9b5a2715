//! Webhooks and their delivery records (spec §8).

use super::{Exec, changed_one, scoped, scoped_as, scoped_scalar};
use crate::scope::{Environment, Scope};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub url: String,
    /// JSON array text of the event patterns.
    pub events: String,
    pub description: Option<String>,
    pub secret: String,
    pub cursor: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A webhook with its scope, as the delivery worker sees it.
#[derive(Debug, Clone)]
pub struct ScopedWebhook {
    pub scope: Scope,
    pub webhook: WebhookRow,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub seq: i64,
    pub event: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    pub next_attempt_at: i64,
    pub duration_ms: Option<i64>,
    pub lease_until: i64,
    pub created_at: i64,
}

const WEBHOOK_COLUMNS: &str = "id, url, events, description, secret, cursor, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "seq, event, payload, status, attempts, last_status_code, last_error, last_attempt_at, \
                                next_attempt_at, duration_ms, lease_until, created_at";

/// A webhook row with its scope columns, for reads across scopes.
#[derive(sqlx::FromRow)]
struct ScopedWebhookRow {
    project: String,
    environment: String,
    #[sqlx(flatten)]
    webhook: WebhookRow,
}

pub async fn insert<'c>(ex: impl Exec<'c>, scope: &Scope, w: &WebhookRow) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO webhooks (project, environment, id, url, events, description, secret, cursor, created_at,
                                     updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    scoped(sql, scope)
        .bind(&w.id)
        .bind(&w.url)
        .bind(&w.events)
        .bind(&w.description)
        .bind(&w.secret)
        .bind(w.cursor)
        .bind(w.created_at)
        .bind(w.updated_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn count<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM webhooks WHERE project = $1 AND environment = $2";
    scoped_scalar(sql, scope).fetch_one(ex).await
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<WebhookRow>, sqlx::Error> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project = $1 AND environment = $2 AND id = $3");
    scoped_as(&sql, scope).bind(id).fetch_optional(ex).await
}

pub async fn list<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    after: &str,
    limit: i64,
) -> Result<Vec<WebhookRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project = $1 AND environment = $2 AND id > $3 ORDER BY id LIMIT $4"
    );
    scoped_as(&sql, scope).bind(after).bind(limit).fetch_all(ex).await
}

/// Every webhook of one scope, for the worker (at most the API's limit per scope).
pub async fn of_scope<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<Vec<WebhookRow>, sqlx::Error> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project = $1 AND environment = $2 ORDER BY id");
    scoped_as(&sql, scope).fetch_all(ex).await
}

/// Every webhook of every scope (the worker's view).
pub async fn all<'c>(ex: impl Exec<'c>) -> Result<Vec<ScopedWebhook>, sqlx::Error> {
    let sql = format!("SELECT project, environment, {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id");
    let rows: Vec<ScopedWebhookRow> = sqlx::query_as(&sql).fetch_all(ex).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let environment = Environment::parse(&row.environment)?;
            Some(ScopedWebhook {
                scope: Scope {
                    project: row.project,
                    environment,
                },
                webhook: row.webhook,
            })
        })
        .collect())
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let sql = "DELETE FROM webhooks WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id)).await
}

pub async fn delete_deliveries<'c>(ex: impl Exec<'c>, scope: &Scope, webhook_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM webhook_deliveries WHERE project = $1 AND environment = $2 AND webhook_id = $3";
    scoped(sql, scope).bind(webhook_id).execute(ex).await?;
    Ok(())
}

/// Moves the fan-out cursor from `from` to `to`; `false` when another instance moved it first.
pub async fn advance<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str, from: i64, to: i64) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE webhooks SET cursor = $5 WHERE project = $1 AND environment = $2 AND id = $3 AND cursor = $4";
    changed_one(ex, scoped(sql, scope).bind(id).bind(from).bind(to)).await
}

pub async fn insert_delivery<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    webhook_id: &str,
    d: &DeliveryRow,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO webhook_deliveries (project, environment, webhook_id, seq, event, payload, status, attempts,
                                               next_attempt_at, lease_until, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING";
    scoped(sql, scope)
        .bind(webhook_id)
        .bind(d.seq)
        .bind(&d.event)
        .bind(&d.payload)
        .bind(&d.status)
        .bind(d.attempts)
        .bind(d.next_attempt_at)
        .bind(d.lease_until)
        .bind(d.created_at)
        .execute(ex)
        .await?;
    Ok(())
}

/// Where [`head`] finds a webhook's next delivery: through `webhook_deliveries_head_idx`, which
/// holds the pending deliveries alone, not by reading every delivery the webhook has had.
pub const HEAD_WHERE: &str = "WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND status = 'pending'
     ORDER BY seq LIMIT 1";

/// The oldest pending delivery of a webhook: the only one that may be sent (in order).
pub async fn head<'c>(ex: impl Exec<'c>, scope: &Scope, webhook_id: &str) -> Result<Option<DeliveryRow>, sqlx::Error> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries {HEAD_WHERE}");
    scoped_as(&sql, scope).bind(webhook_id).fetch_optional(ex).await
}

/// Claims a pending delivery until `lease_until`; `false` when another worker holds it.
pub async fn claim<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    webhook_id: &str,
    seq: i64,
    now: i64,
    lease_until: i64,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE webhook_deliveries SET lease_until = $6
               WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND seq = $4 AND status = 'pending'
                 AND lease_until < $5";
    let query = scoped(sql, scope)
        .bind(webhook_id)
        .bind(seq)
        .bind(now)
        .bind(lease_until);
    changed_one(ex, query).await
}

/// Records an attempt, fenced by the lease this worker took.
pub async fn record<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    webhook_id: &str,
    lease: i64,
    d: &DeliveryRow,
) -> Result<(), sqlx::Error> {
    let sql = "UPDATE webhook_deliveries SET status = $6, attempts = $7, last_status_code = $8, last_error = $9,
                      last_attempt_at = $10, next_attempt_at = $11, duration_ms = $12, lease_until = 0
               WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND seq = $4 AND lease_until = $5";
    scoped(sql, scope)
        .bind(webhook_id)
        .bind(d.seq)
        .bind(lease)
        .bind(&d.status)
        .bind(d.attempts)
        .bind(d.last_status_code)
        .bind(&d.last_error)
        .bind(d.last_attempt_at)
        .bind(d.next_attempt_at)
        .bind(d.duration_ms)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deliveries of a webhook in event order; `status` filters when non-empty.
pub async fn list_deliveries<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    webhook_id: &str,
    status: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND ($4 = '' OR status = $4) AND seq > $5
         ORDER BY seq LIMIT $6"
    );
    scoped_as(&sql, scope)
        .bind(webhook_id)
        .bind(status)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// The retention purge's statement for webhook deliveries ([`super::purge_batch`]): it finds its
/// rows through `webhook_deliveries_created_idx`, then each through the primary key.
pub const PURGE_DELIVERIES: &str = "DELETE FROM webhook_deliveries WHERE (project, environment, webhook_id, seq) IN
    (SELECT project, environment, webhook_id, seq FROM webhook_deliveries WHERE created_at < $1 LIMIT $2)";
