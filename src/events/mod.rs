//! The event catalogue (spec §7.7) as one typed definition, and appending events to the log in
//! the caller's transaction. Emitting an event with the wrong payload does not compile.

pub mod filter;
pub mod hub;
pub mod webhooks;

use serde::Serialize;
use serde_json::Value;

use crate::auth::Scope;
use crate::store::{self, Backend};

/// Token counts as events and task results show them (spec §5.2 Usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageCounts {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

/// Every event, named as on the wire; the fields are the payload (without `timestamp`, which is
/// added when the event is stored).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", content = "data")]
pub enum Event {
    #[serde(rename = "session:created", rename_all = "camelCase")]
    SessionCreated {
        session_id: String,
        agent: Option<String>,
        title: String,
        user: Option<String>,
    },
    #[serde(rename = "message:added", rename_all = "camelCase")]
    MessageAdded {
        session_id: String,
        message_id: String,
        role: String,
    },
    #[serde(rename = "completion:finished", rename_all = "camelCase")]
    CompletionFinished {
        session_id: String,
        agent: Option<String>,
        model: String,
        usage: UsageCounts,
        finish_reason: String,
        stream: bool,
        user: Option<String>,
    },
}

impl Event {
    /// The wire name and the payload object.
    pub fn parts(&self) -> (String, Value) {
        let mut tagged = serde_json::to_value(self).unwrap_or(Value::Null);
        let name = tagged
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let data = tagged.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        (name, data)
    }
}

/// Appends events to the scope's log inside the caller's transaction, numbering them from the
/// scope's counter row (spec §7.3: the row lock orders commits, so no smaller number can commit
/// after a larger one is visible).
///
/// On Postgres the same transaction sends a NOTIFY, delivered at commit, that wakes the feeds of
/// other instances; the caller wakes this instance's feed after commit ([`hub::Hub::wake`]).
pub async fn append(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    scope: &Scope,
    at_ms: i64,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let last = store::events::reserve(&mut **tx, scope, count).await?;
    let timestamp = crate::clock::format_ms(at_ms);
    for (offset, event) in (0..count).zip(events) {
        let (name, mut payload) = event.parts();
        if let Value::Object(map) = &mut payload {
            map.insert("timestamp".into(), Value::String(timestamp.clone()));
        }
        store::events::insert(
            &mut **tx,
            scope,
            last - count + 1 + offset,
            &name,
            &payload.to_string(),
            at_ms,
        )
        .await?;
    }
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(hub::PG_CHANNEL)
            .bind(format!("{}/{}", scope.project, scope.environment.as_str()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_to_their_wire_names_and_camel_case_payloads() {
        let (name, data) = Event::MessageAdded {
            session_id: "sess_1".into(),
            message_id: "msg_1".into(),
            role: "user".into(),
        }
        .parts();
        assert_eq!(name, "message:added");
        assert_eq!(
            data,
            serde_json::json!({"sessionId": "sess_1", "messageId": "msg_1", "role": "user"})
        );
    }
}
