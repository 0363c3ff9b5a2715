//! The task object of spec §5.1 and its sub-objects (§5.2), and the one method that changes a
//! task's status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::assessment::{Check, Expectation, ExpectedOutcome, Outcome};
use super::status::{self, Phase, Reason, Status};
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::{Change, Event};

pub const ID_PREFIX: &str = "task_";

/// Token counts (spec §5.2 Usage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

impl Usage {
    pub fn of(prompt: i64, completion: i64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// Why a task or an attempt failed (spec §5.2 Error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

impl TaskError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub number: i64,
    pub agent: String,
    pub model: String,
    /// `execution` or `fix`.
    pub phase: Phase,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    pub output: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub error: Option<TaskError>,
    pub passed: Option<bool>,
    pub global_score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    pub passed: bool,
    pub global_score: Option<f64>,
    pub checks: Vec<Check>,
    pub feedback: String,
    pub reviewer_model: Option<String>,
    /// `initial`, `fix` or `reassess`.
    pub trigger: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    pub output: Option<String>,
    pub assessment: Option<Assessment>,
    pub attempts: Vec<Attempt>,
    pub usage: Usage,
    pub duration_ms: i64,
    pub error: Option<TaskError>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryPolicy {
    pub escalate_after: Option<i64>,
    pub fallback_agent: Option<String>,
    pub escalate_model: Option<String>,
}

/// The task object of spec §5.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    #[schema(example = "task_01jzc4n8q1w3e5r7t9y1u3i5o7")]
    pub id: String,
    pub title: String,
    pub description: String,
    /// The agent's name.
    pub assign_to: String,
    pub group: Option<String>,
    pub mission_id: Option<String>,
    pub run_id: Option<String>,
    pub depends_on: Vec<String>,
    /// Changed only by [`Task::transition`].
    status: Status,
    pub phase: Option<Phase>,
    pub expectations: Vec<Expectation>,
    pub expected_outcomes: Vec<ExpectedOutcome>,
    pub priority: i64,
    pub max_retries: i64,
    pub retries: i64,
    pub max_duration: Option<i64>,
    pub retry_policy: Option<RetryPolicy>,
    pub side_effects: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<Timestamp>,
    pub result: Option<TaskResult>,
    pub outcomes: Vec<Outcome>,
    pub user: Option<String>,
    pub metadata: BTreeMap<String, String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

/// The `409` for a move the status machine does not allow, naming what the action accepts.
pub fn illegal(action: &str, from: Status, accepted: &[Status]) -> ApiError {
    let names: Vec<&str> = accepted.iter().map(|s| s.as_str()).collect();
    ApiError::Conflict {
        message: format!(
            "cannot {action} a task that is {}; allowed from: {}",
            from.as_str(),
            names.join(", ")
        ),
        details: Some(serde_json::json!({"status": from.as_str(), "allowed": names})),
    }
}

impl Task {
    /// A new task in `status` (`pending` or `draft`); everything else as given.
    pub fn new(id: String, status: Status, at: Timestamp) -> Self {
        Self {
            id,
            title: String::new(),
            description: String::new(),
            assign_to: String::new(),
            group: None,
            mission_id: None,
            run_id: None,
            depends_on: Vec::new(),
            status,
            phase: None,
            expectations: Vec::new(),
            expected_outcomes: Vec::new(),
            priority: 0,
            max_retries: 2,
            retries: 0,
            max_duration: None,
            retry_policy: None,
            side_effects: false,
            deadline: None,
            result: None,
            outcomes: Vec::new(),
            user: None,
            metadata: BTreeMap::new(),
            created_at: at,
            updated_at: at,
            started_at: None,
            finished_at: None,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Moves the task to `to` if the status machine allows it for `reason` (else a `409` naming
    /// the statuses `action` accepts), sets the phase, `finishedAt` and `updatedAt`, and emits
    /// `task:transition` (and `task:completed` on `done`) in `change`. The caller writes the row
    /// in the same change.
    pub fn transition(
        &mut self,
        change: &mut Change,
        to: Status,
        phase: Option<Phase>,
        reason: Reason,
    ) -> Result<(), ApiError> {
        let from = self.status;
        if !status::allowed(from, to, reason) {
            tracing::warn!(task_id = %self.id, from = from.as_str(), to = to.as_str(), ?reason,
                "refused task status change");
            let accepted: Vec<Status> = status::ALL
                .into_iter()
                .filter(|s| status::allowed(*s, to, reason))
                .collect();
            return Err(illegal(&format!("move to {}", to.as_str()), from, &accepted));
        }
        self.status = to;
        self.phase = phase.or(status::default_phase(to));
        let at = Timestamp(change.at());
        self.updated_at = at.max(self.updated_at);
        self.finished_at = to.is_terminal().then_some(at);
        change.emit(Event::TaskTransition {
            task_id: self.id.clone(),
            from: from.as_str().to_string(),
            to: to.as_str().to_string(),
            task: serde_json::to_value(&*self).map_err(ApiError::internal)?,
        });
        Ok(())
    }

    /// The result, created empty on first use.
    pub fn result_mut(&mut self) -> &mut TaskResult {
        self.result.get_or_insert_with(TaskResult::default)
    }
}
