//! Chat sessions and their messages (spec §3.6, §3.13).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Exec;
use crate::scope::Scope;

#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub agent: Option<String>,
    pub user: Option<String>,
    /// JSON object text.
    pub metadata: String,
    pub title: String,
    pub message_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
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

fn session(r: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        agent: r.try_get("agent")?,
        user: r.try_get("user_id")?,
        metadata: r.try_get("metadata")?,
        title: r.try_get("title")?,
        message_count: r.try_get("message_count")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn message(r: &AnyRow) -> Result<MessageRow, sqlx::Error> {
    Ok(MessageRow {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        role: r.try_get("role")?,
        content: r.try_get("content")?,
        tool_calls: r.try_get("tool_calls")?,
        tool_call_id: r.try_get("tool_call_id")?,
        model: r.try_get("model")?,
        finish_reason: r.try_get("finish_reason")?,
        usage: r.try_get("usage")?,
        created_at: r.try_get("created_at")?,
    })
}

pub async fn insert_session<'c>(ex: impl Exec<'c>, scope: &Scope, s: &SessionRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chat_sessions (project, environment, id, agent, user_id, metadata, title, message_count,
                                    created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
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
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(id)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(session)
        .transpose()
}

/// A page of sessions; `agent` and `user` filter when non-empty.
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
         WHERE project = $1 AND environment = $2 AND id > $3
           AND ($4 = '' OR agent = $4) AND ($5 = '' OR user_id = $5)
         ORDER BY id LIMIT $6"
    );
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(after)
        .bind(agent)
        .bind(user)
        .bind(limit)
        .fetch_all(ex)
        .await?
        .iter()
        .map(session)
        .collect()
}

/// Counts `added` new messages on the session; `false` when the session is gone.
pub async fn touch_session<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    id: &str,
    added: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE chat_sessions SET message_count = message_count + $4, updated_at = $5
         WHERE project = $1 AND environment = $2 AND id = $3",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(id)
    .bind(added)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_session<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM chat_sessions WHERE project = $1 AND environment = $2 AND id = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete_messages<'c>(ex: impl Exec<'c>, scope: &Scope, session_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM chat_messages WHERE project = $1 AND environment = $2 AND session_id = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(session_id)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn insert_message<'c>(ex: impl Exec<'c>, scope: &Scope, m: &MessageRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chat_messages (project, environment, id, session_id, role, content, tool_calls, tool_call_id,
                                    model, finish_reason, usage, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
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
    sqlx::query(&sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(session_id)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await?
        .iter()
        .map(message)
        .collect()
}
