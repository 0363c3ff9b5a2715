//! Creating and changing tasks (spec §5.1, §5.4): the rules on agents, dependencies, cycles,
//! titles and deadlines, and the writes with their events.

use std::collections::{BTreeMap, BTreeSet};

use super::assessment::{Expectation, ExpectedOutcome};
use super::model::{ID_PREFIX, RetryPolicy, Task, illegal};
use super::status::Status;
use super::store_rows::{self, Stored};
use crate::clock::Timestamp;
use crate::error::ApiError;
use crate::events::{Change, Event};
use crate::field::Field;
use crate::ids;
use crate::runtime::{Runtime, agents};
use crate::scope::Scope;
use crate::store;

/// The writable fields of a create or PATCH request, already checked for shape.
#[derive(Debug, Clone, Default)]
pub struct TaskChanges {
    pub title: Option<String>,
    pub description: Field<String>,
    pub assign_to: Option<String>,
    pub group: Field<String>,
    pub depends_on: Field<Vec<String>>,
    pub expectations: Field<Vec<Expectation>>,
    pub expected_outcomes: Field<Vec<ExpectedOutcome>>,
    pub priority: Field<i64>,
    pub max_retries: Field<i64>,
    pub max_duration: Field<i64>,
    pub retry_policy: Field<RetryPolicy>,
    pub side_effects: Field<bool>,
    pub deadline: Field<Timestamp>,
    pub user: Field<String>,
    pub metadata: Field<BTreeMap<String, String>>,
}

/// Names of the fields `changes` sets, as on the wire (for `task:updated`).
fn names(changes: &TaskChanges) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |set: bool, name: &str| {
        if set {
            out.push(name.to_string());
        }
    };
    add(changes.title.is_some(), "title");
    add(!changes.description.is_absent(), "description");
    add(changes.assign_to.is_some(), "assignTo");
    add(!changes.group.is_absent(), "group");
    add(!changes.depends_on.is_absent(), "dependsOn");
    add(!changes.expectations.is_absent(), "expectations");
    add(!changes.expected_outcomes.is_absent(), "expectedOutcomes");
    add(!changes.priority.is_absent(), "priority");
    add(!changes.max_retries.is_absent(), "maxRetries");
    add(!changes.max_duration.is_absent(), "maxDuration");
    add(!changes.retry_policy.is_absent(), "retryPolicy");
    add(!changes.side_effects.is_absent(), "sideEffects");
    add(!changes.deadline.is_absent(), "deadline");
    add(!changes.user.is_absent(), "user");
    add(!changes.metadata.is_absent(), "metadata");
    out
}

/// Applies the fields that need no lookup.
fn apply_plain(task: &mut Task, changes: &TaskChanges) {
    let c = changes.clone();
    if let Some(title) = c.title {
        task.title = title;
    }
    c.description.set_or(&mut task.description, String::new);
    c.group.set(&mut task.group);
    c.expectations.set_or(&mut task.expectations, Vec::new);
    c.expected_outcomes.set_or(&mut task.expected_outcomes, Vec::new);
    c.priority.set_or(&mut task.priority, || 0);
    c.max_retries.set_or(&mut task.max_retries, || 2);
    c.max_duration.set(&mut task.max_duration);
    c.retry_policy.set(&mut task.retry_policy);
    c.side_effects.set_or(&mut task.side_effects, || false);
    c.deadline.set(&mut task.deadline);
    c.user.set(&mut task.user);
    c.metadata.set_or(&mut task.metadata, BTreeMap::new);
}

/// The agent and fallback agent exist (stored by name) and the escalation model is usable;
/// read before the change opens, since SQLite has a single connection.
async fn check_agents(
    rt: &Runtime,
    scope: &Scope,
    task: &mut Task,
    changes: &TaskChanges,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut problems = BTreeMap::new();
    if let Some(name) = &changes.assign_to {
        match agents::find(&rt.db, scope, name).await? {
            Some(agent) => task.assign_to = agent.name,
            None => {
                problems.insert("assignTo".to_string(), format!("no agent {name:?} in this project"));
            }
        }
    }
    if let Some(policy) = task.retry_policy.as_mut() {
        if let Some(name) = policy.fallback_agent.clone() {
            match agents::find(&rt.db, scope, &name).await? {
                Some(agent) => policy.fallback_agent = Some(agent.name),
                None => {
                    problems.insert(
                        "retryPolicy.fallbackAgent".to_string(),
                        format!("no agent {name:?} in this project"),
                    );
                }
            }
        }
        if let Some(model) = &policy.escalate_model
            && let Err(problem) = rt.providers.check_model(model)
        {
            problems.insert("retryPolicy.escalateModel".to_string(), problem);
        }
    }
    Ok(problems)
}

/// The rules read in the change: the deadline is ahead, dependencies resolve (by id, or by
/// title among the non-terminal tasks of the group) without self-reference or cycle, and the
/// title is free.
async fn check(
    change: &mut Change,
    scope: &Scope,
    task: &mut Task,
    changes: &TaskChanges,
    mut problems: BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if let Field::Value(deadline) = &changes.deadline
        && deadline.ms() <= change.at()
    {
        problems.insert("deadline".to_string(), "must be in the future".to_string());
    }
    if let Field::Value(group) = &changes.group
        && crate::runtime::missions::crud::group_is_reserved(change.conn(), scope, group).await?
    {
        problems.insert(
            "group".to_string(),
            format!("{group:?} is the group of a mission's runs"),
        );
    }
    if let Field::Value(wanted) = &changes.depends_on {
        let mut resolved = Vec::new();
        for (i, reference) in wanted.iter().enumerate() {
            let path = format!("dependsOn[{i}]");
            let found = if reference.starts_with(ID_PREFIX) {
                store::tasks::get(change.conn(), scope, reference).await?.map(|r| r.id)
            } else {
                store::tasks::live_by_title(change.conn(), scope, task.group.as_deref(), reference).await?
            };
            match found {
                Some(id) if id == task.id => {
                    problems.insert(path, "a task cannot depend on itself".to_string());
                }
                Some(id) => {
                    if !resolved.contains(&id) {
                        resolved.push(id);
                    }
                }
                None => {
                    problems.insert(path, format!("no task {reference:?} to depend on"));
                }
            }
        }
        if problems.is_empty() && reaches(change, scope, &resolved, &task.id).await? {
            problems.insert(
                "dependsOn".to_string(),
                "these dependencies would make a cycle".to_string(),
            );
        }
        task.depends_on = resolved;
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid_fields(problems));
    }
    if let Some(other) = store::tasks::live_by_title(change.conn(), scope, task.group.as_deref(), &task.title).await?
        && other != task.id
        && !task.status().is_terminal()
    {
        return Err(ApiError::Conflict {
            message: format!("a task titled {:?} is already open in this group", task.title),
            details: Some(serde_json::json!({"taskId": other})),
        });
    }
    Ok(())
}

/// True when `target` is reachable from `from` along dependencies (a new edge to `from` would
/// close a cycle).
async fn reaches(change: &mut Change, scope: &Scope, from: &[String], target: &str) -> Result<bool, sqlx::Error> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = from.to_vec();
    while let Some(id) = todo.pop() {
        if id == target {
            return Ok(true);
        }
        if seen.insert(id.clone()) {
            todo.extend(store::tasks::dependencies_of(change.conn(), scope, &id).await?);
        }
    }
    Ok(false)
}

/// Creates a task, `pending` (or `draft`), with `task:created` (spec §5.4).
pub async fn create(rt: &Runtime, scope: &Scope, changes: TaskChanges, draft: bool) -> Result<Task, ApiError> {
    let (Some(_), Some(_)) = (&changes.title, &changes.assign_to) else {
        return Err(ApiError::bad_request("title and assignTo are required"));
    };
    let status = if draft { Status::Draft } else { Status::Pending };
    let mut task = Task::new(ids::new_id(ID_PREFIX), status, Timestamp::now());
    apply_plain(&mut task, &changes);
    let problems = check_agents(rt, scope, &mut task, &changes).await?;
    let mut change = rt.change(scope).await?;
    // Title uniqueness and dependency checks read other tasks of the project: writers of one
    // project go one at a time.
    store::projects::lock(change.conn(), &scope.project).await?;
    task.created_at = Timestamp(change.at());
    task.updated_at = task.created_at;
    check(&mut change, scope, &mut task, &changes, problems).await?;
    let at = change.at();
    store::tasks::insert(change.conn(), scope, &store_rows::row(&task)?, at, None).await?;
    store::tasks::set_dependencies(change.conn(), scope, &task.id, &task.depends_on).await?;
    change.emit(Event::TaskCreated {
        task_id: task.id.clone(),
        task: serde_json::to_value(&task).map_err(ApiError::internal)?,
    });
    change.commit().await?;
    Ok(task)
}

/// PATCH (spec §5.4): `priority`, `metadata` and `deadline` in any non-terminal status; every
/// other field only in `draft`, `pending` or `failed`.
pub async fn update(rt: &Runtime, scope: &Scope, id: &str, changes: TaskChanges) -> Result<Task, ApiError> {
    let mut probe = super::actions::get(rt, scope, id).await?;
    apply_plain(&mut probe, &changes);
    let problems = check_agents(rt, scope, &mut probe, &changes).await?;
    let mut change = rt.change(scope).await?;
    store::projects::lock(change.conn(), &scope.project).await?;
    let Stored { mut task, .. } = store_rows::load(change.conn(), scope, id).await?;
    let fields = names(&changes);
    let anytime = ["priority", "metadata", "deadline"];
    let status = task.status();
    let editable = matches!(status, Status::Draft | Status::Pending | Status::Failed);
    if fields.iter().any(|f| !anytime.contains(&f.as_str())) && !editable {
        return Err(illegal(
            "change these fields of",
            status,
            &[Status::Draft, Status::Pending, Status::Failed],
        ));
    }
    if !fields.is_empty() && status.is_terminal() && !editable {
        return Err(illegal(
            "change",
            status,
            &[Status::Draft, Status::Pending, Status::Failed],
        ));
    }
    apply_plain(&mut task, &changes);
    // The agent names as resolved before the change opened.
    if changes.assign_to.is_some() {
        task.assign_to = probe.assign_to;
    }
    if let (Some(policy), Some(resolved)) = (task.retry_policy.as_mut(), probe.retry_policy) {
        policy.fallback_agent = resolved.fallback_agent;
    }
    check(&mut change, scope, &mut task, &changes, problems).await?;
    task.updated_at = Timestamp(change.at()).max(task.updated_at);
    if !store::tasks::update(change.conn(), scope, &store_rows::row(&task)?, None).await? {
        return Err(store_rows::not_found(id));
    }
    if !changes.depends_on.is_absent() {
        store::tasks::set_dependencies(change.conn(), scope, &task.id, &task.depends_on).await?;
    }
    change.emit(Event::TaskUpdated {
        task_id: task.id.clone(),
        task: serde_json::to_value(&task).map_err(ApiError::internal)?,
        fields,
    });
    change.commit().await?;
    Ok(task)
}
