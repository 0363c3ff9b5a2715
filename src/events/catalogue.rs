//! The event catalogue (spec §7.7) as one typed definition: each event's wire name, payload and
//! alias. Emitting an event with the wrong payload does not compile.

use serde::Serialize;
use serde_json::Value;

/// Token counts as events and task results show them (spec §5.2 Usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageCounts {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

/// Every event of the catalogue (spec §7.7), named as on the wire; the fields are the payload
/// (without `timestamp`, which is added when the event is stored). Objects that other parts of
/// the API define in full (`task`, `checks`, `report`) are carried as JSON values.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", content = "data")]
pub enum Event {
    #[serde(rename = "task:created", rename_all = "camelCase")]
    TaskCreated { task_id: String, task: Value },
    #[serde(rename = "task:transition", rename_all = "camelCase")]
    TaskTransition {
        task_id: String,
        from: String,
        to: String,
        task: Value,
    },
    #[serde(rename = "task:updated", rename_all = "camelCase")]
    TaskUpdated {
        task_id: String,
        task: Value,
        fields: Vec<String>,
    },
    #[serde(rename = "task:removed", rename_all = "camelCase")]
    TaskRemoved { task_id: String },
    #[serde(rename = "task:retry", rename_all = "camelCase")]
    TaskRetry {
        task_id: String,
        attempt: i64,
        max_retries: i64,
        reason: String,
    },
    #[serde(rename = "task:fix", rename_all = "camelCase")]
    TaskFix {
        task_id: String,
        attempt: i64,
        max_retries: i64,
        feedback: String,
    },
    #[serde(rename = "task:timeout", rename_all = "camelCase")]
    TaskTimeout {
        task_id: String,
        reason: String,
        elapsed_ms: i64,
        limit_ms: i64,
    },
    #[serde(rename = "task:recovered", rename_all = "camelCase")]
    TaskRecovered {
        task_id: String,
        title: String,
        previous_status: String,
    },
    #[serde(rename = "agent:spawned", rename_all = "camelCase")]
    AgentSpawned {
        task_id: String,
        agent: String,
        model: String,
        attempt: i64,
        phase: String,
    },
    #[serde(rename = "agent:finished", rename_all = "camelCase")]
    AgentFinished {
        task_id: String,
        agent: String,
        model: String,
        attempt: i64,
        duration_ms: i64,
        usage: UsageCounts,
        error: Option<Value>,
    },
    #[serde(rename = "assessment:started", rename_all = "camelCase")]
    AssessmentStarted {
        task_id: String,
        attempt: i64,
        trigger: String,
    },
    #[serde(rename = "assessment:complete", rename_all = "camelCase")]
    AssessmentComplete {
        task_id: String,
        attempt: i64,
        passed: bool,
        global_score: Option<f64>,
        checks: Value,
    },
    #[serde(rename = "approval:requested", rename_all = "camelCase")]
    ApprovalRequested {
        approval_id: String,
        task_id: String,
        mission_id: Option<String>,
        run_id: Option<String>,
    },
    #[serde(rename = "approval:resolved", rename_all = "camelCase")]
    ApprovalResolved {
        approval_id: String,
        task_id: String,
        status: String,
        #[serde(rename = "final")]
        is_final: bool,
        note: Option<String>,
        feedback: Option<String>,
    },
    #[serde(rename = "mission:saved", rename_all = "camelCase")]
    MissionSaved {
        mission_id: String,
        name: String,
        status: String,
    },
    #[serde(rename = "mission:executed", rename_all = "camelCase")]
    MissionExecuted {
        mission_id: String,
        run_id: String,
        number: i64,
        group: String,
        task_count: i64,
        trigger: String,
    },
    #[serde(rename = "mission:completed", rename_all = "camelCase")]
    MissionCompleted {
        mission_id: String,
        run_id: String,
        all_passed: bool,
        report: Value,
    },
    #[serde(rename = "mission:resumed", rename_all = "camelCase")]
    MissionResumed {
        mission_id: String,
        run_id: String,
        retried: i64,
        pending: i64,
    },
    #[serde(rename = "mission:aborted", rename_all = "camelCase")]
    MissionAborted {
        mission_id: String,
        run_id: String,
        killed_tasks: Vec<String>,
    },
    #[serde(rename = "mission:deleted", rename_all = "camelCase")]
    MissionDeleted {
        mission_id: String,
        deleted_tasks: Vec<String>,
    },
    #[serde(rename = "checkpoint:reached", rename_all = "camelCase")]
    CheckpointReached {
        mission_id: String,
        run_id: String,
        checkpoint: String,
        message: Option<String>,
        after_tasks: Vec<String>,
        blocks_tasks: Vec<String>,
        reached_at: String,
    },
    #[serde(rename = "checkpoint:resumed", rename_all = "camelCase")]
    CheckpointResumed {
        mission_id: String,
        run_id: String,
        checkpoint: String,
    },
    #[serde(rename = "delay:started", rename_all = "camelCase")]
    DelayStarted {
        mission_id: String,
        run_id: String,
        delay: String,
        duration: String,
        started_at: String,
        expires_at: String,
    },
    #[serde(rename = "delay:expired", rename_all = "camelCase")]
    DelayExpired {
        mission_id: String,
        run_id: String,
        delay: String,
    },
    #[serde(rename = "quality:gate:passed", rename_all = "camelCase")]
    QualityGatePassed {
        mission_id: String,
        run_id: String,
        gate: String,
        avg_score: Option<f64>,
    },
    #[serde(rename = "quality:gate:failed", rename_all = "camelCase")]
    QualityGateFailed {
        mission_id: String,
        run_id: String,
        gate: String,
        avg_score: Option<f64>,
        reason: String,
    },
    #[serde(rename = "schedule:triggered", rename_all = "camelCase")]
    ScheduleTriggered {
        mission_id: String,
        run_id: String,
        schedule: String,
        scheduled_for: String,
    },
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
        let (name, payload) = self.wire();
        (name, serde_json::from_str(&payload).unwrap_or(Value::Null))
    }

    /// The wire name and the payload object's JSON text, from one serialisation and without a
    /// tree in between: the tagged form is `{"event":"<name>","data":{…}}`, and no wire name
    /// needs escaping. Serialising an event cannot fail (every map in it has string keys); were
    /// it to, the name would be empty and the payload `null`.
    fn wire(&self) -> (String, String) {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        let split = text
            .strip_prefix(r#"{"event":""#)
            .and_then(|rest| rest.split_once(r#"","data":"#))
            .map(|(name, data)| (name.len(), data.len()));
        let Some((name_len, data_len)) = split.filter(|&(_, d)| d > 0 && text.ends_with('}')) else {
            return (String::new(), "null".into());
        };
        let name_start = r#"{"event":""#.len();
        let name = text[name_start..name_start + name_len].to_string();
        let data_start = text.len() - data_len;
        text.truncate(text.len() - 1);
        text.drain(..data_start);
        (name, text)
    }

    /// The documented alias emitted right after this event, with the same payload (spec §7.7).
    pub fn alias(&self) -> Option<&'static str> {
        match self {
            Self::TaskTransition { to, .. } if to == "done" => Some("task:completed"),
            Self::AgentFinished { .. } => Some("agent:completed"),
            Self::AssessmentComplete { .. } => Some("assessment:completed"),
            _ => None,
        }
    }
}

/// The stored entries for `events`: each event's name and payload text, then its alias when it
/// has one, payloads stamped with `timestamp` as their last member.
pub fn entries(events: &[Event], timestamp: &str) -> Vec<(String, String)> {
    let stamp = serde_json::to_string(timestamp).unwrap_or_else(|_| "null".into());
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let (name, mut payload) = event.wire();
        if payload.ends_with('}') {
            payload.pop();
            if !payload.ends_with('{') {
                payload.push(',');
            }
            payload.push_str(r#""timestamp":"#);
            payload.push_str(&stamp);
            payload.push('}');
        }
        let alias = event.alias().map(|alias| (alias.to_string(), payload.clone()));
        out.push((name, payload));
        out.extend(alias);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aliases_follow_their_event_with_the_same_payload() {
        let done = Event::TaskTransition {
            task_id: "task_1".into(),
            from: "review".into(),
            to: "done".into(),
            task: json!({}),
        };
        let failed = Event::TaskTransition {
            task_id: "task_1".into(),
            from: "review".into(),
            to: "failed".into(),
            task: json!({}),
        };
        let stored = entries(&[done, failed], "2026-01-01T00:00:00.000Z");
        let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["task:transition", "task:completed", "task:transition"]);
        assert_eq!(stored[0].1, stored[1].1);
        let payload: Value = serde_json::from_str(&stored[0].1).unwrap();
        assert_eq!(
            payload,
            json!({"taskId": "task_1", "from": "review", "to": "done", "task": {}, "timestamp": "2026-01-01T00:00:00.000Z"})
        );
        let finished = Event::AgentFinished {
            task_id: "task_1".into(),
            agent: "a".into(),
            model: "mock/echo".into(),
            attempt: 1,
            duration_ms: 5,
            usage: UsageCounts {
                prompt_tokens: 1,
                completion_tokens: 1,
                total_tokens: 2,
            },
            error: None,
        };
        let complete = Event::AssessmentComplete {
            task_id: "task_1".into(),
            attempt: 1,
            passed: true,
            global_score: Some(4.0),
            checks: json!([]),
        };
        let names: Vec<String> = entries(&[finished, complete], "t")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "agent:finished",
                "agent:completed",
                "assessment:complete",
                "assessment:completed"
            ]
        );
    }

    #[test]
    fn reserved_words_and_nested_names_come_out_right() {
        let (name, data) = Event::ApprovalResolved {
            approval_id: "apr_1".into(),
            task_id: "task_1".into(),
            status: "rejected".into(),
            is_final: true,
            note: None,
            feedback: Some("redo".into()),
        }
        .parts();
        assert_eq!(name, "approval:resolved");
        assert_eq!(data["final"], true);
        let (name, data) = Event::QualityGateFailed {
            mission_id: "msn_1".into(),
            run_id: "run_1".into(),
            gate: "g".into(),
            avg_score: Some(2.5),
            reason: "low".into(),
        }
        .parts();
        assert_eq!(name, "quality:gate:failed");
        assert_eq!(data["avgScore"], 2.5);
    }

    #[test]
    fn payloads_without_members_and_with_nested_objects_are_stamped() {
        let stored = entries(
            &[
                Event::MissionAborted {
                    mission_id: "msn_\"1\"}".into(),
                    run_id: "run_1".into(),
                    killed_tasks: vec![],
                },
                Event::TaskCreated {
                    task_id: "task_1".into(),
                    task: json!({"a": {"b": "}"}}),
                },
            ],
            "2026-01-01T00:00:00.000Z",
        );
        let payloads: Vec<Value> = stored.iter().map(|(_, p)| serde_json::from_str(p).unwrap()).collect();
        assert_eq!(stored[0].0, "mission:aborted");
        assert_eq!(
            payloads[0],
            json!({"missionId": "msn_\"1\"}", "runId": "run_1", "killedTasks": [], "timestamp": "2026-01-01T00:00:00.000Z"})
        );
        assert_eq!(stored[1].0, "task:created");
        assert_eq!(
            payloads[1],
            json!({"taskId": "task_1", "task": {"a": {"b": "}"}}, "timestamp": "2026-01-01T00:00:00.000Z"})
        );
    }

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
