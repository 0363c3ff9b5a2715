//! Idempotency records (spec §1.8), keyed by scope and the client's key string.

use super::{Exec, changed_one, scoped, scoped_as};
use crate::scope::Scope;

/// A claimed request still running (or abandoned by a crashed instance).
pub const IN_FLIGHT: &str = "in_flight";
/// A finished request whose answer is stored for replay.
pub const DONE: &str = "done";
/// A request answered with a stream: recorded, never replayed.
pub const STREAM: &str = "stream";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordRow {
    pub fingerprint: String,
    pub state: String,
    pub token: String,
    pub locked_at: i64,
    pub status: Option<i64>,
    pub body: Option<String>,
    pub session_id: Option<String>,
    pub created_at: i64,
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, key: &str) -> Result<Option<RecordRow>, sqlx::Error> {
    let sql = "SELECT fingerprint, state, token, locked_at, status, body, session_id, created_at
               FROM idempotency_records WHERE project = $1 AND environment = $2 AND idem_key = $3";
    scoped_as(sql, scope).bind(key).fetch_optional(ex).await
}

/// Claims a key nobody holds; `false` when a record already exists.
pub async fn claim<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    key: &str,
    fingerprint: &str,
    token: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let sql = "INSERT INTO idempotency_records (project, environment, idem_key, fingerprint, state, token, locked_at,
                                                created_at)
               VALUES ($1, $2, $3, $4, 'in_flight', $5, $6, $6)
               ON CONFLICT (project, environment, idem_key) DO NOTHING";
    changed_one(ex, scoped(sql, scope).bind(key).bind(fingerprint).bind(token).bind(now)).await
}

/// Claims a record again: an expired one as new (`fingerprint` and creation time replaced), or an
/// abandoned one as it is. Fenced by the token read with it, so one claimant wins.
pub async fn reclaim<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    key: &str,
    seen: &str,
    record: (&str, i64),
    token: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let (fingerprint, created_at) = record;
    let sql = "UPDATE idempotency_records
               SET fingerprint = $5, state = 'in_flight', token = $6, locked_at = $7, created_at = $8,
                   status = NULL, body = NULL, session_id = NULL
               WHERE project = $1 AND environment = $2 AND idem_key = $3 AND token = $4";
    let query = scoped(sql, scope)
        .bind(key)
        .bind(seen)
        .bind(fingerprint)
        .bind(token)
        .bind(now)
        .bind(created_at);
    changed_one(ex, query).await
}

/// Stores the answer of the claimant holding `token`; `false` when the record was taken over.
pub async fn complete<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    key: &str,
    token: &str,
    state: &str,
    answer: (i64, Option<&str>, Option<&str>),
) -> Result<bool, sqlx::Error> {
    let (status, body, session_id) = answer;
    let sql = "UPDATE idempotency_records SET state = $5, status = $6, body = $7, session_id = $8
               WHERE project = $1 AND environment = $2 AND idem_key = $3 AND token = $4 AND state = 'in_flight'";
    let query = scoped(sql, scope)
        .bind(key)
        .bind(token)
        .bind(state)
        .bind(status)
        .bind(body)
        .bind(session_id);
    changed_one(ex, query).await
}

/// Forgets the claim of `token` (an answer that is not stored: the client may retry the key).
pub async fn release<'c>(ex: impl Exec<'c>, scope: &Scope, key: &str, token: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM idempotency_records
               WHERE project = $1 AND environment = $2 AND idem_key = $3 AND token = $4 AND state = 'in_flight'";
    scoped(sql, scope).bind(key).bind(token).execute(ex).await?;
    Ok(())
}

/// The retention purge's statement for idempotency records (spec §1.8; [`super::purge_batch`]):
/// it finds its rows through `idempotency_records_created_idx`, then each through the primary key.
pub const PURGE: &str = "DELETE FROM idempotency_records WHERE (project, environment, idem_key) IN
    (SELECT project, environment, idem_key FROM idempotency_records WHERE created_at < $1 LIMIT $2)";
