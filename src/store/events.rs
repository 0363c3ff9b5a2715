//! The event log: `events` rows and the per-scope `event_counters` row that numbers them.

use super::script::{Script, Texts, Value};
use super::{Exec, scoped_as, scoped_scalar};
use crate::scope::Scope;

/// Appends `(name, payload)` entries to the scope's log: takes as many sequence numbers from the
/// scope's counter row, then inserts the entries numbered up to the counter's new value. The
/// counter row stays locked until the transaction ends, which serialises event-writing commits
/// per scope.
pub fn append(script: &mut Script, scope: &Scope, entries: Vec<(String, String)>, created_at: i64) {
    if entries.is_empty() {
        return;
    }
    let count = i64::try_from(entries.len()).unwrap_or(i64::MAX);
    script.push(
        "INSERT INTO event_counters (project, environment, last_seq) VALUES ($1, $2, $3)
         ON CONFLICT (project, environment) DO UPDATE SET last_seq = event_counters.last_seq + $3",
        {
            let mut values = Value::scope(scope, 1);
            values.push(Value::Int(count));
            values
        },
    );
    // Entry i is numbered `last - (count - 1 - i)`, the counter's row read once for them all.
    let sql = APPEND_TEXTS.get(entries.len(), || {
        // Only placeholders are formatted into the text; every value is bound.
        let rows: Vec<String> = (0..entries.len())
            .map(|i| {
                let base = 4 + i * 3;
                format!("(${}, ${}, ${})", base, base + 1, base + 2)
            })
            .collect();
        format!(
            "INSERT INTO events (project, environment, seq, name, payload, created_at)
             SELECT c.project, c.environment, c.last_seq - v.column1, v.column2, v.column3, $3
             FROM event_counters AS c, (VALUES {}) AS v
             WHERE c.project = $1 AND c.environment = $2",
            rows.join(", ")
        )
    });
    let mut values = Value::scope(scope, 1 + entries.len() * 3);
    values.push(Value::Int(created_at));
    for (behind, (name, payload)) in (0..count).rev().zip(entries) {
        values.push(Value::Int(behind));
        values.push(Value::Text(name));
        values.push(Value::Text(payload));
    }
    script.push(sql, values);
}

/// The texts of the events insert, for up to as many events as a busy group commit writes in
/// one scope.
static APPEND_TEXTS: Texts<64> = Texts::new();

/// A stored event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub name: String,
    pub payload: String,
    /// When the change it records was committed, in milliseconds.
    pub created_at: i64,
}

/// Events after `after`, oldest first.
pub async fn list_after<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let sql = "SELECT seq, name, payload, created_at FROM events
               WHERE project = $1 AND environment = $2 AND seq > $3 ORDER BY seq LIMIT $4";
    scoped_as(sql, scope).bind(after).bind(limit).fetch_all(ex).await
}

/// The last committed sequence number of the scope (0 before its first event).
pub async fn latest<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<i64, sqlx::Error> {
    let sql = "SELECT last_seq FROM event_counters WHERE project = $1 AND environment = $2";
    let last = scoped_scalar(sql, scope).fetch_optional(ex).await?;
    Ok(last.unwrap_or(0))
}

/// The oldest retained sequence number, if any event is retained.
pub async fn oldest<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<Option<i64>, sqlx::Error> {
    // MIN over no rows is one row holding NULL: `fetch_one` into an `Option`.
    let sql = "SELECT MIN(seq) FROM events WHERE project = $1 AND environment = $2";
    scoped_scalar(sql, scope).fetch_one(ex).await
}

/// The retention purge's statement for events (spec §7.3 rule 4; [`super::purge_batch`]): it
/// finds its rows through `events_created_idx`, then each through the primary key.
pub const PURGE: &str = "DELETE FROM events WHERE (project, environment, seq) IN
    (SELECT project, environment, seq FROM events WHERE created_at < $1 LIMIT $2)";

/// The Postgres channel whose notifications wake event feeds; the payload is
/// `project/environment`.
pub const CHANNEL: &str = "polpo_events";

/// Announces new events of `scope` to every instance listening on [`CHANNEL`]; Postgres delivers
/// it when the transaction commits.
pub async fn notify<'c>(ex: impl Exec<'c>, scope: &Scope) -> Result<(), sqlx::Error> {
    let payload = format!("{}/{}", scope.project, scope.environment.as_str());
    notify_channel(ex, CHANNEL, &payload).await
}

/// A Postgres notification on any channel (delivered at commit inside a transaction, at once
/// outside one).
pub async fn notify_channel<'c>(ex: impl Exec<'c>, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
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
