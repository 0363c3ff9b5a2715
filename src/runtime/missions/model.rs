//! The mission object (spec §6.1, §6.3), the run object (§6.5) and the report (§6.4), as
//! stored and as shown.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::Timestamp;
use crate::runtime::tasks::Task;
use crate::runtime::tasks::assessment::{Expectation, ExpectedOutcome};
use crate::runtime::tasks::model::RetryPolicy;

pub const ID_PREFIX: &str = "msn_";
pub const RUN_PREFIX: &str = "run_";

/// One task definition of a mission (spec §6.1 TaskDef), stored with its defaults applied and
/// `assignTo` as a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDef {
    pub title: String,
    pub description: String,
    pub assign_to: String,
    pub depends_on: Vec<String>,
    pub expectations: Vec<Expectation>,
    pub expected_outcomes: Vec<ExpectedOutcome>,
    pub max_retries: i64,
    pub priority: i64,
    pub side_effects: bool,
    pub max_duration: Option<i64>,
    pub retry_policy: Option<RetryPolicy>,
}

/// A mission's volatile team: agent configurations (spec §2.1 create fields) created for each
/// run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Team {
    pub name: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub agents: Vec<Value>,
}

impl Team {
    /// The member names, in order.
    pub fn names(&self) -> Vec<String> {
        self.agents
            .iter()
            .filter_map(|a| a["name"].as_str().map(str::to_string))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualityGate {
    pub name: String,
    pub after_tasks: Vec<String>,
    pub blocks_tasks: Vec<String>,
    pub min_score: Option<f64>,
    pub require_all_passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub name: String,
    pub after_tasks: Vec<String>,
    pub blocks_tasks: Vec<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub name: String,
    pub after_tasks: Vec<String>,
    pub blocks_tasks: Vec<String>,
    /// ISO 8601, 1 s to 30 days.
    pub duration: String,
}

/// What a run executes: the mission's definitions when the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub name: String,
    pub prompt: Option<String>,
    pub data: Option<Value>,
    pub tasks: Vec<TaskDef>,
    pub team: Option<Team>,
    pub quality_threshold: f64,
    pub quality_gates: Vec<QualityGate>,
    pub checkpoints: Vec<Checkpoint>,
    pub delays: Vec<Delay>,
}

/// Mission statuses (spec §6.3).
pub const STATUSES: &[&str] = &[
    "draft",
    "scheduled",
    "recurring",
    "active",
    "paused",
    "completed",
    "failed",
    "cancelled",
];

/// The mission object of spec §6.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mission {
    #[schema(example = "msn_01jzc4n8q1w3e5r7t9y1u3i5o7")]
    pub id: String,
    pub name: String,
    pub prompt: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    pub tasks: Vec<TaskDef>,
    pub team: Option<Team>,
    pub quality_threshold: f64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline: Option<Timestamp>,
    pub schedule: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub end_date: Option<Timestamp>,
    pub quality_gates: Vec<QualityGate>,
    pub checkpoints: Vec<Checkpoint>,
    pub delays: Vec<Delay>,
    /// `draft`, `scheduled`, `recurring`, `active`, `paused`, `completed`, `failed`, `cancelled`.
    pub status: String,
    pub execution_count: i64,
    pub task_count: i64,
    pub current_run_id: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl Mission {
    pub fn plan(&self) -> Plan {
        Plan {
            name: self.name.clone(),
            prompt: self.prompt.clone(),
            data: self.data.clone(),
            tasks: self.tasks.clone(),
            team: self.team.clone(),
            quality_threshold: self.quality_threshold,
            quality_gates: self.quality_gates.clone(),
            checkpoints: self.checkpoints.clone(),
            delays: self.delays.clone(),
        }
    }

    pub fn is_live(&self) -> bool {
        matches!(self.status.as_str(), "active" | "paused")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateState {
    pub name: String,
    /// `waiting`, `passed` or `failed`.
    pub status: String,
    pub avg_score: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointState {
    pub name: String,
    /// `waiting`, `reached` or `resumed`.
    pub status: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub reached_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resumed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DelayState {
    pub name: String,
    /// `waiting`, `running` or `expired`.
    pub status: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

/// A run as stored: its state and the plan it executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRun {
    pub id: String,
    pub mission_id: String,
    pub number: i64,
    pub group: String,
    /// `active`, `paused`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// `api` or `schedule`.
    pub trigger: String,
    pub gates: Vec<GateState>,
    pub checkpoints: Vec<CheckpointState>,
    pub delays: Vec<DelayState>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub plan: Plan,
}

impl StoredRun {
    pub fn is_live(&self) -> bool {
        matches!(self.status.as_str(), "active" | "paused")
    }
}

/// The run object of spec §6.5.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    #[schema(example = "run_01jzc4n8q1w3e5r7t9y1u3i5o7")]
    pub id: String,
    pub mission_id: String,
    pub number: i64,
    pub group: String,
    pub status: String,
    pub trigger: String,
    pub tasks: Vec<Task>,
    pub gates: Vec<GateState>,
    pub checkpoints: Vec<CheckpointState>,
    pub delays: Vec<DelayState>,
    pub avg_score: Option<f64>,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportTask {
    pub task_id: String,
    pub title: String,
    pub status: String,
    pub duration_ms: Option<i64>,
    pub score: Option<f64>,
    pub output_preview: Option<String>,
}

/// The report of spec §6.4.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub mission_id: String,
    pub run_id: String,
    pub run_number: i64,
    pub status: String,
    pub all_passed: bool,
    pub total_duration_ms: i64,
    pub avg_score: Option<f64>,
    pub tasks: Vec<ReportTask>,
}

/// A task's score: its assessment's global score when it has an `llm_review` check (spec §5.2).
pub fn score(task: &Task) -> Option<f64> {
    let reviewed = task
        .expectations
        .iter()
        .any(|e| matches!(e, Expectation::LlmReview { .. }));
    if !reviewed {
        return None;
    }
    task.result.as_ref()?.assessment.as_ref()?.global_score
}

/// The mean of the scores present, `None` when there is none.
pub fn mean(scores: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = scores.flatten().collect();
    if present.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    Some(present.iter().sum::<f64>() / present.len() as f64)
}

const PREVIEW_CHARS: usize = 500;

/// The first 500 characters of `text`.
pub fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS).collect()
}

impl Run {
    pub fn of(stored: StoredRun, tasks: Vec<Task>) -> Self {
        let avg_score = mean(tasks.iter().map(score));
        Self {
            id: stored.id,
            mission_id: stored.mission_id,
            number: stored.number,
            group: stored.group,
            status: stored.status,
            trigger: stored.trigger,
            tasks,
            gates: stored.gates,
            checkpoints: stored.checkpoints,
            delays: stored.delays,
            avg_score,
            started_at: stored.started_at,
            finished_at: stored.finished_at,
        }
    }
}

impl Report {
    pub fn of(stored: &StoredRun, tasks: &[Task], now: Timestamp) -> Self {
        let end = stored.finished_at.unwrap_or(now);
        Self {
            mission_id: stored.mission_id.clone(),
            run_id: stored.id.clone(),
            run_number: stored.number,
            status: stored.status.clone(),
            all_passed: stored.status == "completed",
            total_duration_ms: end.ms().saturating_sub(stored.started_at.ms()),
            avg_score: mean(tasks.iter().map(score)),
            tasks: tasks
                .iter()
                .map(|t| ReportTask {
                    task_id: t.id.clone(),
                    title: t.title.clone(),
                    status: t.status().as_str().to_string(),
                    duration_ms: t
                        .result
                        .as_ref()
                        .filter(|r| !r.attempts.is_empty())
                        .map(|r| r.duration_ms),
                    score: score(t),
                    output_preview: t.result.as_ref().and_then(|r| r.output.as_deref()).map(preview),
                })
                .collect(),
        }
    }
}
