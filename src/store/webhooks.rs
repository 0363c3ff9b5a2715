//! Webhooks and their delivery records (spec §8).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Exec;
use crate::scope::{Environment, Scope};

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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

fn webhook(r: &AnyRow) -> Result<WebhookRow, sqlx::Error> {
    Ok(WebhookRow {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        events: r.try_get("events")?,
        description: r.try_get("description")?,
        secret: r.try_get("secret")?,
        cursor: r.try_get("cursor")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn delivery(r: &AnyRow) -> Result<DeliveryRow, sqlx::Error> {
    Ok(DeliveryRow {
        seq: r.try_get("seq")?,
        event: r.try_get("event")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        last_status_code: r.try_get("last_status_code")?,
        last_error: r.try_get("last_error")?,
        last_attempt_at: r.try_get("last_attempt_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        duration_ms: r.try_get("duration_ms")?,
        lease_until: r.try_get("lease_until")?,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn insert<'c>(ex: impl Exec<'c>, scope: &Scope, w: &WebhookRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhooks (project, environment, id, url, events, description, secret, cursor, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
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
    sqlx::query("SELECT COUNT(*) FROM webhooks WHERE project = $1 AND environment = $2")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .fetch_one(ex)
        .await?
        .try_get(0)
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<WebhookRow>, sqlx::Error> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE project = $1 AND environment = $2 AND id = $3");
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(id)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(webhook)
        .transpose()
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
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await?
        .iter()
        .map(webhook)
        .collect()
}

/// Every webhook of every scope (the worker's view).
pub async fn all<'c>(ex: impl Exec<'c>) -> Result<Vec<ScopedWebhook>, sqlx::Error> {
    let sql = format!("SELECT project, environment, {WEBHOOK_COLUMNS} FROM webhooks ORDER BY id");
    let rows = sqlx::query(&sql).fetch_all(ex).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let environment: String = r.try_get("environment")?;
        let Some(environment) = Environment::parse(&environment) else {
            continue;
        };
        out.push(ScopedWebhook {
            scope: Scope {
                project: r.try_get("project")?,
                environment,
            },
            webhook: webhook(r)?,
        });
    }
    Ok(out)
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhooks WHERE project = $1 AND environment = $2 AND id = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_deliveries<'c>(ex: impl Exec<'c>, scope: &Scope, webhook_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE project = $1 AND environment = $2 AND webhook_id = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(webhook_id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Moves the fan-out cursor from `from` to `to`; `false` when another instance moved it first.
pub async fn advance<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str, from: i64, to: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhooks SET cursor = $5 WHERE project = $1 AND environment = $2 AND id = $3 AND cursor = $4",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(id)
    .bind(from)
    .bind(to)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn insert_delivery<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    webhook_id: &str,
    d: &DeliveryRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (project, environment, webhook_id, seq, event, payload, status, attempts,
                                         next_attempt_at, lease_until, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
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

/// The oldest pending delivery of a webhook: the only one that may be sent (in order).
pub async fn head<'c>(ex: impl Exec<'c>, scope: &Scope, webhook_id: &str) -> Result<Option<DeliveryRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND status = 'pending'
         ORDER BY seq LIMIT 1"
    );
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(webhook_id)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(delivery)
        .transpose()
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
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET lease_until = $6
         WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND seq = $4 AND status = 'pending'
           AND lease_until < $5",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(webhook_id)
    .bind(seq)
    .bind(now)
    .bind(lease_until)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records an attempt, fenced by the lease this worker took.
pub async fn record<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    webhook_id: &str,
    lease: i64,
    d: &DeliveryRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $6, attempts = $7, last_status_code = $8, last_error = $9,
                last_attempt_at = $10, next_attempt_at = $11, duration_ms = $12, lease_until = 0
         WHERE project = $1 AND environment = $2 AND webhook_id = $3 AND seq = $4 AND lease_until = $5",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
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
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(webhook_id)
        .bind(status)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await?
        .iter()
        .map(delivery)
        .collect()
}

/// Deletes delivery records of events past retention.
pub async fn purge_deliveries<'c>(ex: impl Exec<'c>, before: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM webhook_deliveries WHERE created_at < $1")
        .bind(before)
        .execute(ex)
        .await?;
    Ok(done.rows_affected())
}
