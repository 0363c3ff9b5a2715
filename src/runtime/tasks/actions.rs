//! Task actions (spec §5.5) and deletion (§5.4): each checks the status it starts from, records
//! what it cancels, and ends any claim a worker holds, which the worker notices at once.

use super::assessment;
use super::attempt;
use super::model::{Task, TaskError, illegal};
use super::status::{Reason, Status};
use super::store_rows::{self, Stored};
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::{Change, Event};
use crate::runtime::Runtime;
use crate::scope::Scope;
use crate::store;

/// Marks the attempt a worker is running as ended with `code` (spec §5.5: pause records
/// `interrupted`, kill `killed`), with its `agent:finished`.
pub fn stop_running_attempt(task: &mut Task, change: &mut Change, code: &str) {
    if !task.status().is_running() {
        return;
    }
    let at = Timestamp(change.at());
    let error = TaskError::new(code, format!("the attempt was stopped ({code})"));
    let in_review = task.status() == Status::Review;
    if let Some(attempt) = task.result.as_mut().and_then(|r| r.attempts.last_mut()) {
        if attempt.finished_at.is_none() {
            attempt.finished_at = Some(at);
            attempt.error = Some(error.clone());
            if let Some(event) = attempt::finished_event(task, Some(&error)) {
                change.emit(event);
            }
        } else if in_review && attempt.error.is_none() {
            // The model call ended but its review was cancelled: the attempt is recorded as
            // stopped too (spec §5.5), without a second `agent:finished`.
            attempt.error = Some(error);
        }
    }
}

/// Writes the task and ends any claim on it.
async fn write(change: &mut Change, scope: &Scope, task: &Task, next_input: Option<&str>) -> Result<(), ApiError> {
    if !store::tasks::update(change.conn(), scope, &store_rows::row(task)?, None).await? {
        return Err(store_rows::not_found(&task.id));
    }
    store::tasks::release(change.conn(), scope, &task.id, 0, next_input).await?;
    Ok(())
}

async fn load(rt: &Runtime, scope: &Scope, id: &str) -> Result<(Change, Task), ApiError> {
    let mut change = rt.change(scope).await?;
    let Stored { task } = store_rows::load(change.conn(), scope, id).await?;
    Ok((change, task))
}

pub async fn get(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let row = store::tasks::get(&rt.db.pool, scope, id)
        .await?
        .ok_or_else(|| store_rows::not_found(id))?;
    Ok(store_rows::from_body(&row.body)?)
}

pub async fn list(
    rt: &Runtime,
    scope: &Scope,
    filter: &store::tasks::ListFilter<'_>,
    after: &str,
    fetch: i64,
) -> Result<Vec<Task>, ApiError> {
    let rows = store::tasks::list(&rt.db.pool, scope, filter, after, fetch).await?;
    Ok(rows
        .iter()
        .map(|r| store_rows::from_body(&r.body))
        .collect::<Result<_, _>>()?)
}

/// Fails an open task in the caller's change (`code`), cancelling its running attempt and
/// pending approval: for an agent deleted with force, a dependency removed.
pub async fn stop_for(change: &mut Change, scope: &Scope, id: &str, code: &str, message: &str) -> Result<(), ApiError> {
    let Stored { mut task } = store_rows::load(change.conn(), scope, id).await?;
    if task.status().is_terminal() {
        return Ok(());
    }
    stop_running_attempt(&mut task, change, code);
    task.result_mut().error = Some(TaskError::new(code, message));
    task.transition(change, Status::Failed, None, Reason::Stop)?;
    super::approvals::cancel(change, scope, &task.id).await?;
    write(change, scope, &task, None).await
}

/// `queue`: `draft → pending`.
pub async fn queue(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let (mut change, mut task) = load(rt, scope, id).await?;
    if task.status() != Status::Draft {
        return Err(illegal("queue", task.status(), &[Status::Draft]));
    }
    task.transition(&mut change, Status::Pending, None, Reason::Regular)?;
    write(&mut change, scope, &task, None).await?;
    change.commit().await?;
    Ok(task)
}

/// `run`: `draft → pending`, `failed → pending` (as `retry`), running statuses unchanged.
pub async fn run(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let (change, task) = load(rt, scope, id).await?;
    drop(change);
    match task.status() {
        Status::Draft => queue(rt, scope, id).await,
        Status::Failed => retry(rt, scope, id).await,
        Status::Done => Err(illegal(
            "run",
            Status::Done,
            &[
                Status::Draft,
                Status::Pending,
                Status::AwaitingApproval,
                Status::Assigned,
                Status::InProgress,
                Status::Review,
                Status::Failed,
            ],
        )),
        _ => Ok(task),
    }
}

/// `retry`: `failed → pending`, retries reset, the error cleared, `task:retry {reason: manual}`.
pub async fn retry(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let (mut change, task) = load(rt, scope, id).await?;
    let task = retry_in(&mut change, scope, task).await?;
    change.commit().await?;
    Ok(task)
}

/// `retry` in the caller's change (a mission resume retries its run's failed tasks).
pub async fn retry_in(change: &mut Change, scope: &Scope, mut task: Task) -> Result<Task, ApiError> {
    if task.status() != Status::Failed {
        return Err(illegal("retry", task.status(), &[Status::Failed]));
    }
    task.retries = 0;
    if let Some(result) = task.result.as_mut() {
        result.error = None;
    }
    let attempts = task.result.as_ref().map_or(0, |r| r.attempts.len());
    change.emit(Event::TaskRetry {
        task_id: task.id.clone(),
        attempt: i64::try_from(attempts).unwrap_or(i64::MAX),
        max_retries: task.max_retries,
        reason: "manual".into(),
    });
    task.transition(change, Status::Pending, None, Reason::Regular)?;
    write(change, scope, &task, None).await?;
    Ok(task)
}

/// `pause`: running or pending → `draft`; a running attempt is cancelled and recorded
/// `interrupted`, no retry consumed.
pub async fn pause(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let (mut change, mut task) = load(rt, scope, id).await?;
    let status = task.status();
    if status == Status::Draft {
        return Ok(task);
    }
    if !matches!(
        status,
        Status::Pending | Status::Assigned | Status::InProgress | Status::Review
    ) {
        return Err(illegal(
            "pause",
            status,
            &[
                Status::Draft,
                Status::Pending,
                Status::Assigned,
                Status::InProgress,
                Status::Review,
            ],
        ));
    }
    stop_running_attempt(&mut task, &mut change, "interrupted");
    task.transition(&mut change, Status::Draft, None, Reason::Pause)?;
    write(&mut change, scope, &task, None).await?;
    change.commit().await?;
    Ok(task)
}

/// `kill`: any non-terminal → `failed` (`killed`); running work cancelled, a pending approval
/// cancelled.
pub async fn kill(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let (mut change, mut task) = load(rt, scope, id).await?;
    let status = task.status();
    if status.is_terminal() {
        let open: Vec<Status> = super::status::ALL.into_iter().filter(|s| !s.is_terminal()).collect();
        return Err(illegal("kill", status, &open));
    }
    stop_running_attempt(&mut task, &mut change, "killed");
    task.result_mut().error = Some(TaskError::new("killed", "the task was killed"));
    task.transition(&mut change, Status::Failed, None, Reason::Stop)?;
    super::approvals::cancel(&mut change, scope, &task.id).await?;
    write(&mut change, scope, &task, None).await?;
    change.commit().await?;
    Ok(task)
}

/// `reassess` (spec §5.5): the assessment re-run on the current output; a pass moves `failed`
/// to `done`, a failure `done` to `failed`. A reviewer failure leaves the task unchanged.
pub async fn reassess(rt: &Runtime, scope: &Scope, id: &str) -> Result<Task, ApiError> {
    let task = get(rt, scope, id).await?;
    if task.expectations.is_empty() {
        return Err(ApiError::bad_request("the task has no expectations to assess"));
    }
    if !task.status().is_terminal() {
        return Err(illegal("reassess", task.status(), &[Status::Done, Status::Failed]));
    }
    let output = task.result.as_ref().and_then(|r| r.output.clone()).unwrap_or_default();
    let model = task
        .result
        .as_ref()
        .and_then(|r| r.attempts.last())
        .map(|a| a.model.clone())
        .unwrap_or_default();
    let (assessment, usage) = attempt::assess(rt, scope, &task, &model, &output, "reassess")
        .await
        .map_err(|e| ApiError::Upstream {
            message: format!("the reviewer failed: {}", e.message),
            cause: e.message.clone(),
        })?;
    let (mut change, mut task) = load(rt, scope, id).await?;
    if !task.status().is_terminal() {
        return Err(illegal("reassess", task.status(), &[Status::Done, Status::Failed]));
    }
    let attempts = task.result.as_ref().map_or(0, |r| r.attempts.len());
    change.emit(Event::AssessmentComplete {
        task_id: task.id.clone(),
        attempt: i64::try_from(attempts).unwrap_or(i64::MAX),
        passed: assessment.passed,
        global_score: assessment.global_score,
        checks: serde_json::to_value(&assessment.checks).map_err(ApiError::internal)?,
    });
    let passed = assessment.passed;
    {
        let result = task.result_mut();
        result.usage.add(usage);
        result.assessment = Some(assessment);
    }
    match (task.status(), passed) {
        (Status::Failed, true) => {
            task.result_mut().error = None;
            task.outcomes = assessment::extract_outcomes(&task.expected_outcomes, &output).0;
            task.transition(&mut change, Status::Done, None, Reason::Reassess)?;
        }
        (Status::Done, false) => {
            task.result_mut().error = Some(TaskError::new("review_failed", "the reassessment did not pass"));
            task.transition(&mut change, Status::Failed, None, Reason::Reassess)?;
        }
        _ => {}
    }
    task.updated_at = Timestamp(change.at()).max(task.updated_at);
    write(&mut change, scope, &task, None).await?;
    change.commit().await?;
    Ok(task)
}

/// DELETE (spec §5.4): a running task is stopped first; a task of a mission run cannot be
/// deleted; open dependents block it unless `force`, which fails them (`dependency_removed`).
pub async fn delete(rt: &Runtime, scope: &Scope, id: &str, force: bool) -> Result<(), ApiError> {
    let (mut change, mut task) = load(rt, scope, id).await?;
    if task.run_id.is_some() {
        return Err(ApiError::conflict(
            "this task belongs to a mission run; delete the mission instead",
        ));
    }
    let dependents = store::tasks::live_dependents(change.conn(), scope, id).await?;
    if !dependents.is_empty() && !force {
        return Err(ApiError::Conflict {
            message: format!(
                "{} open task(s) depend on this task; delete with force=true to fail them",
                dependents.len()
            ),
            details: Some(serde_json::json!({"dependents": dependents})),
        });
    }
    let message = format!("the task it depends on ({id}) was deleted");
    for dependent in &dependents {
        stop_for(&mut change, scope, dependent, "dependency_removed", &message).await?;
    }
    if !task.status().is_terminal() {
        stop_running_attempt(&mut task, &mut change, "killed");
        task.result_mut().error = Some(TaskError::new("killed", "the task was deleted"));
        task.transition(&mut change, Status::Failed, None, Reason::Stop)?;
    }
    super::approvals::cancel(&mut change, scope, id).await?;
    store::tasks::delete(change.conn(), scope, id).await?;
    store::tasks::delete_dependencies(change.conn(), scope, id).await?;
    store::tasks::delete_approvals(change.conn(), scope, id).await?;
    change.emit(Event::TaskRemoved {
        task_id: id.to_string(),
    });
    change.commit().await?;
    Ok(())
}

/// Sets `polpo_tasks{status}` from the database (read at scrape time).
pub async fn refresh_metrics(rt: &Runtime) {
    match store::tasks::count_by_status(&rt.db.pool).await {
        Ok(counts) => {
            for status in super::status::ALL {
                let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
                #[allow(clippy::cast_precision_loss)]
                rt.metrics
                    .set(crate::metrics::TASKS, &[("status", status.as_str())], n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count tasks for metrics"),
    }
}
