//! Chat sessions and their messages (spec §3.6, §3.13).

use super::script::{Script, Texts, Value};
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

/// Adds the insert of a new session to `script`.
pub fn insert_session(script: &mut Script, scope: &Scope, s: &SessionRow) {
    let mut values = Value::scope(scope, 8);
    values.extend([
        Value::Text(s.id.clone()),
        Value::MaybeText(s.agent.clone()),
        Value::MaybeText(s.user.clone()),
        Value::Text(s.metadata.clone()),
        Value::Text(s.title.clone()),
        Value::Int(s.message_count),
        Value::Int(s.created_at),
        Value::Int(s.updated_at),
    ]);
    script.push(
        "INSERT INTO chat_sessions (project, environment, id, agent, user_id, metadata, title, message_count,
                                    created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        values,
    );
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

/// Adds to `script` the count of `added` new messages on the session, as a guard: when the
/// session is gone, nothing of the script is written.
pub fn touch_session(script: &mut Script, scope: &Scope, id: &str, added: i64, now: i64) {
    let mut values = Value::scope(scope, 3);
    values.extend([Value::Text(id.to_string()), Value::Int(added), Value::Int(now)]);
    script.push_guard(
        "UPDATE chat_sessions SET message_count = message_count + $4, updated_at = $5
         WHERE project = $1 AND environment = $2 AND id = $3",
        values,
    );
}

/// The purge's statement for empty sessions ([`super::purge_batch`]): it finds its rows through
/// the partial index `chat_sessions_empty_idx`, which holds the empty sessions alone, not by
/// reading every session, then each through the primary key. The outer `message_count = 0` is
/// checked again on the row it deletes: on Postgres a session that received its first message
/// meanwhile is kept.
pub const PURGE_EMPTY_SESSIONS: &str =
    "DELETE FROM chat_sessions WHERE message_count = 0 AND (project, environment, id) IN
    (SELECT project, environment, id FROM chat_sessions WHERE message_count = 0 AND created_at < $1 LIMIT $2)";

pub async fn delete_session<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let sql = "DELETE FROM chat_sessions WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id)).await
}

pub async fn delete_messages<'c>(ex: impl Exec<'c>, scope: &Scope, session_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM chat_messages WHERE project = $1 AND environment = $2 AND session_id = $3";
    scoped(sql, scope).bind(session_id).execute(ex).await?;
    Ok(())
}

/// Messages one statement inserts at most (10 values each, within every backend's limit).
const MESSAGES_PER_STATEMENT: usize = 100;

/// The texts of the messages insert, for as many messages as a turn usually adds.
static INSERT_MESSAGES_TEXTS: Texts<16> = Texts::new();

/// Adds the insert of `messages` to `script`, in order, each stamped `created_at` (their own
/// `created_at` is not read).
pub fn insert_messages(script: &mut Script, scope: &Scope, messages: &[MessageRow], created_at: i64) {
    for chunk in messages.chunks(MESSAGES_PER_STATEMENT) {
        let sql = INSERT_MESSAGES_TEXTS.get(chunk.len(), || {
            // Only placeholders are formatted into the text; every value is bound.
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = 3 + i * 10;
                    format!(
                        "($1, $2, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b,
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8,
                        b + 9
                    )
                })
                .collect();
            format!(
                "INSERT INTO chat_messages (project, environment, id, session_id, role, content, tool_calls,
                                            tool_call_id, model, finish_reason, usage, created_at)
                 VALUES {}",
                rows.join(", ")
            )
        });
        let mut values = Value::scope(scope, chunk.len() * 10);
        for m in chunk {
            values.extend([
                Value::Text(m.id.clone()),
                Value::Text(m.session_id.clone()),
                Value::Text(m.role.clone()),
                Value::Text(m.content.clone()),
                Value::MaybeText(m.tool_calls.clone()),
                Value::MaybeText(m.tool_call_id.clone()),
                Value::MaybeText(m.model.clone()),
                Value::MaybeText(m.finish_reason.clone()),
                Value::MaybeText(m.usage.clone()),
                Value::Int(created_at),
            ]);
        }
        script.push(sql, values);
    }
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
