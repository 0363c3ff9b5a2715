//! Chat sessions as the API shows them (spec §3.13), and the transcript rules of spec §3.6.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::providers::types::{ChatMessage, Role, ToolCall, content_text};
use crate::runtime::agents;
use crate::scope::Scope;
use crate::store::chat::{MessageRow, SessionRow};
use crate::store::{self, Db};

pub const SESSION_PREFIX: &str = "sess_";
pub const MESSAGE_PREFIX: &str = "msg_";

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub title: String,
    /// The agent's name; `null` in gateway mode.
    pub agent: Option<String>,
    pub user: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub message_count: i64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Present (true) when the reply was cut before the provider reported usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoredToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    /// `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, the parts array as received, or `null` (assistant with tool calls only).
    #[schema(value_type = Object)]
    pub content: Value,
    pub tool_calls: Option<Vec<StoredToolCall>>,
    pub tool_call_id: Option<String>,
    pub model: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<StoredUsage>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl Session {
    fn from_row(row: SessionRow) -> Result<Self, ApiError> {
        Ok(Self {
            metadata: store::read_json(&row.metadata, "session metadata")?,
            id: row.id,
            title: row.title,
            agent: row.agent,
            user: row.user,
            message_count: row.message_count,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
        })
    }
}

/// The stored tool calls of a message (`None` when it has none).
fn stored_tool_calls(row: &MessageRow) -> Result<Option<Vec<StoredToolCall>>, sqlx::Error> {
    row.tool_calls
        .as_deref()
        .map(|t| store::read_json(t, "message tool calls"))
        .transpose()
}

impl Message {
    fn from_row(row: MessageRow) -> Result<Self, ApiError> {
        Ok(Self {
            content: store::read_json(&row.content, "message content")?,
            tool_calls: stored_tool_calls(&row)?,
            usage: row
                .usage
                .as_deref()
                .map(|u| store::read_json(u, "message usage"))
                .transpose()?,
            id: row.id,
            role: row.role,
            tool_call_id: row.tool_call_id,
            model: row.model,
            finish_reason: row.finish_reason,
            created_at: Timestamp(row.created_at),
        })
    }
}

/// A stored message as the provider sees it again.
fn to_chat_message(row: &MessageRow) -> Result<ChatMessage, sqlx::Error> {
    let role = match row.role.as_str() {
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        _ => Role::User,
    };
    let content = Some(store::read_json::<Value>(&row.content, "message content")?).filter(|v| !v.is_null());
    let tool_calls = stored_tool_calls(row)?.unwrap_or_default();
    Ok(ChatMessage {
        role,
        content,
        name: None,
        tool_calls: tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        tool_call_id: row.tool_call_id.clone(),
    })
}

/// Spec §3.6 rule 3: "the same message" for de-duplicating a resent history.
fn same_message(a: &ChatMessage, b: &ChatMessage) -> bool {
    a.role == b.role
        && content_text(a.content.as_ref()) == content_text(b.content.as_ref())
        && a.tool_calls == b.tool_calls
        && a.tool_call_id == b.tool_call_id
}

/// The new messages N: the request's non-system messages without the longest leading run that
/// repeats the stored transcript T.
pub fn new_messages(transcript: &[ChatMessage], request: &[ChatMessage]) -> Vec<ChatMessage> {
    let sent: Vec<&ChatMessage> = request.iter().filter(|m| m.role != Role::System).collect();
    let repeated = transcript
        .iter()
        .zip(&sent)
        .take_while(|(t, s)| same_message(t, s))
        .count();
    sent[repeated..].iter().map(|m| (*m).clone()).collect()
}

/// Messages a session may send upstream in one turn (its transcript and the new messages): the
/// bound OpenAI puts on one request.
pub const MAX_TURN_MESSAGES: usize = 2048;
/// Stored bytes a session's transcript may hold.
pub const MAX_TRANSCRIPT_BYTES: usize = 4 * 1024 * 1024;

fn too_long(what: String) -> ApiError {
    ApiError::BadRequest {
        message: format!("this session is too long to continue ({what}); start a new session"),
        param: Some("messages".into()),
        fields: std::collections::BTreeMap::new(),
    }
}

/// The transcript T of spec §3.6 rule 2: stored messages without interrupted or failed replies.
/// A session past [`MAX_TURN_MESSAGES`] messages or [`MAX_TRANSCRIPT_BYTES`] bytes cannot go on
/// (`400`): it is never read, nor sent upstream, beyond those bounds.
pub async fn transcript(db: &Db, scope: &Scope, session_id: &str) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::new();
    let mut after = String::new();
    let mut bytes = 0usize;
    loop {
        let page = store::chat::list_messages(&db.pool, scope, session_id, &after, 1000).await?;
        let done = page.len() < 1000;
        for row in &page {
            let display_only = matches!(row.finish_reason.as_deref(), Some("interrupted" | "error"));
            if !display_only {
                bytes += row.content.len();
                if out.len() >= MAX_TURN_MESSAGES {
                    return Err(too_long(format!("more than {MAX_TURN_MESSAGES} messages")));
                }
                if bytes > MAX_TRANSCRIPT_BYTES {
                    return Err(too_long(format!("more than {MAX_TRANSCRIPT_BYTES} bytes")));
                }
                out.push(to_chat_message(row)?);
            }
        }
        match page.last() {
            Some(last) if !done => after.clone_from(&last.id),
            _ => return Ok(out),
        }
    }
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("session {id:?} not found"))
}

pub async fn get(db: &Db, scope: &Scope, id: &str) -> Result<Session, ApiError> {
    let row = store::chat::get_session(&db.pool, scope, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Session::from_row(row)
}

/// A page of sessions in creation order; `agent` (an id or a name) and `user` filter. Sessions
/// keep the agent's name, so an id is resolved to it (an unknown id matches nothing).
pub async fn list(
    db: &Db,
    scope: &Scope,
    agent: Option<&str>,
    user: &str,
    after: &str,
    fetch: i64,
) -> Result<Vec<Session>, ApiError> {
    let agent_name = match agent {
        Some(a) if a.starts_with(agents::ID_PREFIX) => match agents::find(db, scope, a).await? {
            Some(agent) => agent.name,
            None => return Ok(Vec::new()),
        },
        Some(name) => name.to_string(),
        None => String::new(),
    };
    let rows = store::chat::list_sessions(&db.pool, scope, &agent_name, user, after, fetch).await?;
    rows.into_iter().map(Session::from_row).collect()
}

/// A page of a session's messages in conversation order.
pub async fn messages(db: &Db, scope: &Scope, id: &str, after: &str, fetch: i64) -> Result<Vec<Message>, ApiError> {
    get(db, scope, id).await?;
    let rows = store::chat::list_messages(&db.pool, scope, id, after, fetch).await?;
    rows.into_iter().map(Message::from_row).collect()
}

/// Deletes the session and its messages in one transaction.
pub async fn delete(db: &Db, scope: &Scope, id: &str) -> Result<(), ApiError> {
    let mut tx = db.begin().await?;
    let deleted = store::chat::delete_session(&mut *tx, scope, id).await?;
    store::chat::delete_messages(&mut *tx, scope, id).await?;
    tx.commit().await?;
    if deleted { Ok(()) } else { Err(not_found(id)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_history_is_not_duplicated() {
        let t = vec![
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::Assistant, "hello"),
        ];
        let request = vec![
            ChatMessage::text(Role::System, "be kind"),
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::Assistant, "hello"),
            ChatMessage::text(Role::User, "and now?"),
        ];
        assert_eq!(
            new_messages(&t, &request),
            vec![ChatMessage::text(Role::User, "and now?")]
        );
        // Only the new message sent: nothing to drop.
        let only_new = vec![ChatMessage::text(Role::User, "and now?")];
        assert_eq!(new_messages(&t, &only_new), only_new);
        // A diverging history is kept whole after the common prefix.
        let diverging = vec![
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::User, "other"),
        ];
        assert_eq!(
            new_messages(&t, &diverging),
            vec![ChatMessage::text(Role::User, "other")]
        );
    }
}
