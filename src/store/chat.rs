//! Chat sessions and their messages (spec §3.6, §3.13).

use super::{Exec, changed_one, scoped, scoped_as};
use crate::scope::Scope;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub agent: Option<String>,
    #[sqlx(rename = "user_id")]
    pub user: Option<String>,
    /// JSON object text.
    pub metadata: String,
    pub title: String,
    pub message_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub session_id: String,
    pub role: String,
    /// JSON text: a string, a parts array, or `null`.
    pub content: String,
    /// JSON array text of `{id, name, arguments}`, or `None`.
    pub tool_calls: Option<String>,
    pub tool_call_id: Option<String>,
    pub model: Option<String>,
    pub finish_reason: Option<String>,
    /// JSON object text of the usage, or `None`.
    pub usage: Option<String>,
    pub created_at: i64,
}

const SESSION_COLUMNS: &str = "id, agent, user_id, metadata, title, message_count, created_at, updated_at";
const MESSAGE_COLUMNS: &str =
    "id, session_id, role, content, tool_calls, tool_call_id, model, finish_reason, usage, created_at";

pub async fn insert_session<'c>(ex: impl Exec<'c>, scope: &Scope, s: &SessionRow) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO chat_sessions (project, environment, id, agent, user_id, metadata, title, message_count,
                                          created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    scoped(sql, scope)
        .bind(&s.id)
        .bind(&s.agent)
        .bind(&s.user)
        .bind(&s.metadata)
        .bind(&s.title)
        .bind(s.message_count)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get_session<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<SessionRow>, sqlx::Error> {
    let sql =
        format!("SELECT {SESSION_COLUMNS} FROM chat_sessions WHERE project = $1 AND environment = $2 AND id = $3");
    scoped_as(&sql, scope).bind(id).fetch_optional(ex).await
}

/// A page of sessions that hold at least one message; `agent` and `user` filter when non-empty.
pub async fn list_sessions<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    agent: &str,
    user: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM chat_sessions
         WHERE project = $1 AND environment = $2 AND id > $3 AND message_count > 0
           AND ($4 = '' OR agent = $4) AND ($5 = '' OR user_id = $5)
         ORDER BY id LIMIT $6"
    );
    scoped_as(&sql, scope)
        .bind(after)
        .bind(agent)
        .bind(user)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// Counts `added` new messages on the session; `false` when the session is gone.
pub async fn touch_session<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    id: &str,
    added: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE chat_sessions SET message_count = message_count + $4, updated_at = $5
               WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id).bind(added).bind(now)).await
}

/// Deletes sessions of every scope that never received a message and were created before
/// `before`; returns how many.
pub async fn purge_empty_sessions<'c>(ex: impl Exec<'c>, before: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM chat_sessions WHERE message_count = 0 AND created_at < $1")
        .bind(before)
        .execute(ex)
        .await?;
    Ok(done.rows_affected())
}

pub async fn delete_session<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let sql = "DELETE FROM chat_sessions WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id)).await
}

pub async fn delete_messages<'c>(ex: impl Exec<'c>, scope: &Scope, session_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM chat_messages WHERE project = $1 AND environment = $2 AND session_id = $3";
    scoped(sql, scope).bind(session_id).execute(ex).await?;
    Ok(())
}

pub async fn insert_message<'c>(ex: impl Exec<'c>, scope: &Scope, m: &MessageRow) -> Result<(), sqlx::Error> {
    let sql =
        "INSERT INTO chat_messages (project, environment, id, session_id, role, content, tool_calls, tool_call_id,
                                          model, finish_reason, usage, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    scoped(sql, scope)
        .bind(&m.id)
        .bind(&m.session_id)
        .bind(&m.role)
        .bind(&m.content)
        .bind(&m.tool_calls)
        .bind(&m.tool_call_id)
        .bind(&m.model)
        .bind(&m.finish_reason)
        .bind(&m.usage)
        .bind(m.created_at)
        .execute(ex)
        .await?;
    Ok(())
}

/// Messages of a session in conversation order, after `after` (`""` = from the start).
pub async fn list_messages<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    session_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM chat_messages
         WHERE project = $1 AND environment = $2 AND session_id = $3 AND id > $4
         ORDER BY id LIMIT $5"
    );
    scoped_as(&sql, scope)
        .bind(session_id)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await
}
