//! Approvals (spec §5.9): a side-effect task that passed its review waits for a human; approve
//! finishes it, reject re-runs it with the feedback, or fails it when final.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::attempt::NextInput;
use super::model::{Task, TaskError, illegal};
use super::status::{Reason, Status};
use super::store_rows;
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::{Change, Event};
use crate::ids;
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store::{self, tasks::ApprovalRow};

pub const ID_PREFIX: &str = "apr_";
const PREVIEW_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: String,
    pub task_id: String,
    pub mission_id: Option<String>,
    pub run_id: Option<String>,
    /// `pending`, `approved`, `rejected` or `cancelled`.
    pub status: String,
    /// Always `side_effects`.
    pub reason: String,
    /// The task's title.
    pub summary: String,
    /// The first 500 characters of the output.
    pub output_preview: String,
    pub note: Option<String>,
    pub feedback: Option<String>,
    #[serde(rename = "final")]
    pub is_final: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resolved_at: Option<Timestamp>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("approval {id:?} not found"))
}

fn to_row(approval: &Approval) -> Result<ApprovalRow, ApiError> {
    Ok(ApprovalRow {
        id: approval.id.clone(),
        task_id: approval.task_id.clone(),
        status: approval.status.clone(),
        body: serde_json::to_string(approval).map_err(ApiError::internal)?,
        created_at: approval.created_at.ms(),
    })
}

fn from_row(row: &ApprovalRow) -> Result<Approval, sqlx::Error> {
    store::read_json(&row.body, "approval document")
}

/// Creates the approval for a task that passed its review, in the caller's change.
pub async fn request(change: &mut Change, scope: &Scope, task: &mut Task, output: &str) -> Result<(), ApiError> {
    let approval = Approval {
        id: ids::new_id(ID_PREFIX),
        task_id: task.id.clone(),
        mission_id: task.mission_id.clone(),
        run_id: task.run_id.clone(),
        status: "pending".into(),
        reason: "side_effects".into(),
        summary: task.title.clone(),
        output_preview: output.chars().take(PREVIEW_CHARS).collect(),
        note: None,
        feedback: None,
        is_final: false,
        created_at: Timestamp(change.at()),
        resolved_at: None,
    };
    store::tasks::insert_approval(change.conn(), scope, &to_row(&approval)?).await?;
    change.emit(Event::ApprovalRequested {
        approval_id: approval.id,
        task_id: task.id.clone(),
        mission_id: task.mission_id.clone(),
        run_id: task.run_id.clone(),
    });
    Ok(())
}

/// Cancels the task's pending approvals (kill, delete), in the caller's change.
pub async fn cancel(change: &mut Change, scope: &Scope, task_id: &str) -> Result<(), ApiError> {
    for row in store::tasks::pending_approvals(change.conn(), scope, task_id).await? {
        let mut approval = from_row(&row)?;
        approval.status = "cancelled".into();
        approval.resolved_at = Some(Timestamp(change.at()));
        store::tasks::update_approval(change.conn(), scope, &to_row(&approval)?, "pending").await?;
        change.emit(Event::ApprovalResolved {
            approval_id: approval.id,
            task_id: task_id.to_string(),
            status: approval.status,
            is_final: approval.is_final,
            note: None,
            feedback: None,
        });
    }
    Ok(())
}

pub async fn get(rt: &Runtime, scope: &Scope, id: &str) -> Result<Approval, ApiError> {
    let row = store::tasks::get_approval(&rt.db.pool, scope, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(from_row(&row)?)
}

pub async fn list(
    rt: &Runtime,
    scope: &Scope,
    status: &str,
    task_id: &str,
    after: &str,
    fetch: i64,
) -> Result<Vec<Approval>, ApiError> {
    let rows = store::tasks::list_approvals(&rt.db.pool, scope, status, task_id, after, fetch).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// A human decision.
pub enum Decision {
    Approve { note: Option<String> },
    Reject { feedback: String, is_final: bool },
}

/// Resolves a pending approval and moves its task (spec §5.9).
pub async fn decide(rt: &Runtime, scope: &Scope, id: &str, decision: Decision) -> Result<Approval, ApiError> {
    let mut change = rt.change(scope).await?;
    let row = store::tasks::get_approval(change.conn(), scope, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    let mut approval = from_row(&row)?;
    if approval.status != "pending" {
        return Err(ApiError::conflict(format!(
            "approval {id:?} is already {}; only a pending approval can be decided",
            approval.status
        )));
    }
    let store_rows::Stored { mut task } = store_rows::load(change.conn(), scope, &approval.task_id).await?;
    if task.status() != Status::AwaitingApproval {
        return Err(illegal("decide on", task.status(), &[Status::AwaitingApproval]));
    }
    approval.resolved_at = Some(Timestamp(change.at()));
    let mut release = None;
    match decision {
        Decision::Approve { note } => {
            approval.status = "approved".into();
            approval.note = note;
            task.transition(&mut change, Status::Done, None, Reason::Regular)?;
        }
        Decision::Reject { feedback, is_final } => {
            approval.status = "rejected".into();
            approval.feedback = Some(feedback.clone());
            approval.is_final = is_final;
            if is_final {
                task.result_mut().error = Some(TaskError::new("rejected", feedback));
                task.transition(&mut change, Status::Failed, None, Reason::Regular)?;
            } else {
                // Re-runs as a fix with the feedback; no retry is consumed.
                let next = NextInput {
                    previous_output: task.result.as_ref().and_then(|r| r.output.clone()),
                    feedback,
                    failed_checks: Vec::new(),
                };
                release = Some(serde_json::to_string(&next).map_err(ApiError::internal)?);
                task.transition(&mut change, Status::Pending, None, Reason::Regular)?;
            }
        }
    }
    if !store::tasks::update_approval(change.conn(), scope, &to_row(&approval)?, "pending").await? {
        return Err(ApiError::conflict(format!("approval {id:?} was decided meanwhile")));
    }
    store::tasks::update(change.conn(), scope, &store_rows::row(&task)?, None).await?;
    if let Some(next) = &release {
        store::tasks::release(change.conn(), scope, &task.id, 0, Some(next)).await?;
    }
    change.emit(Event::ApprovalResolved {
        approval_id: approval.id.clone(),
        task_id: task.id.clone(),
        status: approval.status.clone(),
        is_final: approval.is_final,
        note: approval.note.clone(),
        feedback: approval.feedback.clone(),
    });
    change.commit().await?;
    Ok(approval)
}
