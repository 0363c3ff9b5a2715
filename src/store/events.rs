//! The event log: `events` rows and the per-scope `event_counters` row that numbers them.

use sqlx::Row;

use super::Exec;
use crate::scope::Scope;

/// Takes `count` sequence numbers for the scope and returns the last one. The counter row stays
/// locked until the transaction ends, which serialises event-writing commits per scope.
pub async fn reserve<'c>(ex: impl Exec<'c>, scope: &Scope, count: i64) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO event_counters (project, environment, last_seq) VALUES ($1, $2, $3)
         ON CONFLICT (project, environment) DO UPDATE SET last_seq = event_counters.last_seq + $3
         RETURNING last_seq",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(count)
    .fetch_one(ex)
    .await?
    .try_get(0)
}

/// Inserts `(name, payload)` entries numbered from `first_seq`, in one statement.
pub async fn insert_many<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    first_seq: i64,
    entries: &[(String, String)],
    created_at: i64,
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    // Only placeholders are formatted into the text; every value is bound.
    let rows: Vec<String> = (0..entries.len())
        .map(|i| {
            let base = 4 + i * 3;
            format!("($1, $2, ${}, ${}, ${}, $3)", base, base + 1, base + 2)
        })
        .collect();
    let sql = format!(
        "INSERT INTO events (project, environment, seq, name, payload, created_at) VALUES {}",
        rows.join(", ")
    );
    let mut query = sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(created_at);
    for (seq, (name, payload)) in (first_seq..).zip(entries) {
        query = query.bind(seq).bind(name).bind(payload);
    }
    query.execute(ex).await?;
    Ok(())
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub name: String,
    pub payload: String,
}

/// Events after `after`, oldest first.
pub async fn list_after<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    sqlx::query(
        "SELECT seq, name, payload FROM events WHERE project = $1 AND environment = $2 AND seq > $3
         ORDER BY seq LIMIT $4",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await?
    .iter()
    .map(|r| {
        Ok(EventRow {
            seq: r.try_get("seq")?,
            name: r.try_get("name")?,
            payload: r.try_get("payload")?,
        })
    })
    .collect()
}

/// The last committed sequence number of the scope (0 before its first event).
pub async fn latest<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT last_seq FROM event_counters WHERE project = $1 AND environment = $2")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .fetch_optional(ex)
        .await?;
    row.map_or(Ok(0), |r| r.try_get(0))
}

/// The oldest retained sequence number, if any event is retained.
pub async fn oldest<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query("SELECT MIN(seq) FROM events WHERE project = $1 AND environment = $2")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .fetch_one(ex)
        .await?
        .try_get(0)
}

/// Deletes events created before `before` (retention, spec §7.3 rule 4); returns how many.
pub async fn purge<'c>(ex: impl Exec<'c>, before: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM events WHERE created_at < $1")
        .bind(before)
        .execute(ex)
        .await?;
    Ok(done.rows_affected())
}

/// The Postgres channel whose notifications wake event feeds; the payload is
/// `project/environment`.
pub const CHANNEL: &str = "polpo_events";

/// Announces new events of `scope` to every instance listening on [`CHANNEL`]; Postgres delivers
/// it when the transaction commits.
pub async fn notify<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("{}/{}", scope.project, scope.environment.as_str()))
        .execute(ex)
        .await?;
    Ok(())
}

/// The scope named by a notification's payload.
pub fn notified_scope(payload: &str) -> Option<Scope> {
    let (project, environment) = payload.split_once('/')?;
    Some(Scope {
        project: project.to_string(),
        environment: crate::scope::Environment::parse(environment)?,
    })
}
