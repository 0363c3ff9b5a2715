//! Tasks, their dependencies and approvals (spec §5). The task document is stored whole in
//! `body`; the columns beside it serve filters, title checks and the runner (timers, leases).

use super::{Backend, Exec, changed_one, scoped, scoped_as, scoped_scalar};
use crate::scope::{Environment, Scope};

/// The columns a task's document determines.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub id: String,
    pub title: String,
    pub task_group: Option<String>,
    pub assign_to: String,
    pub mission_id: Option<String>,
    pub run_id: Option<String>,
    pub status: String,
    pub priority: i64,
    pub body: String,
    pub deadline: Option<i64>,
    pub updated_at: i64,
}

/// A task with the runner's columns, as the runner and its timers see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRow {
    pub project: String,
    pub environment: String,
    pub id: String,
    pub status: String,
    pub body: String,
    pub lease_gen: i64,
    pub lease_until: i64,
    /// JSON: what the next attempt must answer, when it is a fix.
    pub next_input: Option<String>,
}

impl ClaimedRow {
    pub fn scope(&self) -> Option<Scope> {
        Some(Scope {
            project: self.project.clone(),
            environment: Environment::parse(&self.environment)?,
        })
    }
}

const COLUMNS: &str =
    "id, title, task_group, assign_to, mission_id, run_id, status, priority, body, deadline, updated_at";
const CLAIMED_COLUMNS: &str = "project, environment, id, status, body, lease_gen, lease_until, next_input";
/// Statuses whose tasks hold a worker (and count against an agent's `maxConcurrency`).
const RUNNING: &str = "('assigned', 'in_progress', 'review')";
/// True for a row of `tasks` run by a member of its run's volatile team, which shadows the
/// project agent of the same name: such a task is neither that agent's work nor its load.
const RUN_BY_TEAM: &str = "EXISTS (SELECT 1 FROM run_agents x WHERE x.project = tasks.project
    AND x.environment = tasks.environment AND x.run_id = tasks.run_id AND x.name = tasks.assign_to)";

/// Inserts a task; a task of a mission run carries the index of its definition (`node`), unique
/// within the run.
pub async fn insert<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    row: &TaskRow,
    created_at: i64,
    node: Option<i64>,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO tasks (project, environment, id, title, task_group, assign_to, mission_id, run_id, status,
                                  priority, body, run_after, deadline, attempt_deadline, lease_owner, lease_until,
                                  lease_gen, created_at, updated_at, run_node, held)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, NULL, NULL, 0, 0, $13, $14, $15, 0)";
    scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.title)
        .bind(&row.task_group)
        .bind(&row.assign_to)
        .bind(&row.mission_id)
        .bind(&row.run_id)
        .bind(&row.status)
        .bind(row.priority)
        .bind(&row.body)
        .bind(row.deadline)
        .bind(created_at)
        .bind(row.updated_at)
        .bind(node)
        .execute(ex)
        .await?;
    Ok(())
}

/// The tasks of a mission run, in definition order. With `hold` (the backend), they are held
/// (Postgres `FOR UPDATE`) until the transaction ends: a runner's claim skips them meanwhile, so
/// that what the run decides about them (hold, kill) cannot race a claim.
pub async fn of_run<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    run_id: &str,
    hold: Option<Backend>,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    let lock = if hold == Some(Backend::Postgres) {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks WHERE project = $1 AND environment = $2 AND run_id = $3 ORDER BY run_node{lock}"
    );
    scoped_as(&sql, scope).bind(run_id).fetch_all(ex).await
}

/// The tasks of a mission run that may not be claimed now, by id.
pub async fn held_of_run<'c>(ex: impl Exec<'c>, scope: &Scope, run_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT id FROM tasks WHERE project = $1 AND environment = $2 AND run_id = $3 AND held <> 0";
    scoped_scalar(sql, scope).bind(run_id).fetch_all(ex).await
}

/// Lets the runner claim the task (`held` false) or keeps it from doing so.
pub async fn set_held<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str, held: bool) -> Result<(), sqlx::Error> {
    let sql = "UPDATE tasks SET held = $4 WHERE project = $1 AND environment = $2 AND id = $3";
    scoped(sql, scope).bind(id).bind(i64::from(held)).execute(ex).await?;
    Ok(())
}

/// Removes the tasks of a mission, with their dependencies and approvals; returns their ids.
pub async fn delete_of_mission(
    ex: &mut sqlx::AnyConnection,
    scope: &Scope,
    mission_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT id FROM tasks WHERE project = $1 AND environment = $2 AND mission_id = $3 ORDER BY id";
    let ids: Vec<String> = scoped_scalar(sql, scope).bind(mission_id).fetch_all(&mut *ex).await?;
    for id in &ids {
        delete_dependencies(&mut *ex, scope, id).await?;
        delete_approvals(&mut *ex, scope, id).await?;
    }
    let sql = "DELETE FROM tasks WHERE project = $1 AND environment = $2 AND mission_id = $3";
    scoped(sql, scope).bind(mission_id).execute(&mut *ex).await?;
    Ok(ids)
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<TaskRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE project = $1 AND environment = $2 AND id = $3");
    scoped_as(&sql, scope).bind(id).fetch_optional(ex).await
}

/// The runner's view of one task: its document, lease generation and lease end.
pub async fn get_claimed<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<ClaimedRow>, sqlx::Error> {
    let sql = format!("SELECT {CLAIMED_COLUMNS} FROM tasks WHERE project = $1 AND environment = $2 AND id = $3");
    scoped_as(&sql, scope).bind(id).fetch_optional(ex).await
}

/// Filters of `GET /v1/tasks`; empty strings do not filter. `statuses` is a comma list.
pub struct ListFilter<'a> {
    pub statuses: &'a str,
    pub group: &'a str,
    pub assign_to: &'a str,
    pub mission_id: &'a str,
    pub run_id: &'a str,
}

pub async fn list<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    filter: &ListFilter<'_>,
    after: &str,
    limit: i64,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks
         WHERE project = $1 AND environment = $2 AND id > $3
           AND ($4 = '' OR (',' || $4 || ',') LIKE ('%,' || status || ',%'))
           AND ($5 = '' OR task_group = $5) AND ($6 = '' OR assign_to = $6)
           AND ($7 = '' OR mission_id = $7) AND ($8 = '' OR run_id = $8)
         ORDER BY id LIMIT $9"
    );
    scoped_as(&sql, scope)
        .bind(after)
        .bind(filter.statuses)
        .bind(filter.group)
        .bind(filter.assign_to)
        .bind(filter.mission_id)
        .bind(filter.run_id)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// Writes the document columns. With `fence`, only while the task still carries that lease
/// generation: `false` means the lease was lost (or the task is gone) and nothing was written.
pub async fn update<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    row: &TaskRow,
    fence: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE tasks SET title = $4, task_group = $5, assign_to = $6, status = $7, priority = $8, body = $9,
                      deadline = $10, updated_at = $11
               WHERE project = $1 AND environment = $2 AND id = $3 AND ($12 < 0 OR lease_gen = $12)";
    let query = scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.title)
        .bind(&row.task_group)
        .bind(&row.assign_to)
        .bind(&row.status)
        .bind(row.priority)
        .bind(&row.body)
        .bind(row.deadline)
        .bind(row.updated_at)
        .bind(fence.unwrap_or(-1));
    changed_one(ex, query).await
}

/// Ends any claim on the task (a new lease generation fences out a worker still running it),
/// and sets when it may run again (`run_after`, 0: at once) and what its next attempt must
/// answer (`next_input`, JSON).
pub async fn release<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    id: &str,
    run_after: i64,
    next_input: Option<&str>,
) -> Result<(), sqlx::Error> {
    let sql = "UPDATE tasks SET run_after = $4, next_input = $5, attempt_deadline = NULL, lease_owner = NULL,
                      lease_until = 0, lease_gen = lease_gen + 1
               WHERE project = $1 AND environment = $2 AND id = $3";
    scoped(sql, scope)
        .bind(id)
        .bind(run_after)
        .bind(next_input)
        .execute(ex)
        .await?;
    Ok(())
}

/// Starts the attempt's stored timer (`maxDuration`), under the lease; `false` when the lease
/// was lost. `next_input` stays until the attempt ends (every end releases the task), so that
/// an attempt interrupted by a shutdown or a dead worker runs again with the same input.
pub async fn start_attempt<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    id: &str,
    generation: i64,
    attempt_deadline: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE tasks SET attempt_deadline = $5
               WHERE project = $1 AND environment = $2 AND id = $3 AND lease_gen = $4";
    changed_one(ex, scoped(sql, scope).bind(id).bind(generation).bind(attempt_deadline)).await
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let sql = "DELETE FROM tasks WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id)).await
}

/// The id of the non-terminal task titled `title` in `group` (`None`: the ungrouped tasks).
pub async fn live_by_title<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    group: Option<&str>,
    title: &str,
) -> Result<Option<String>, sqlx::Error> {
    let sql = "SELECT id FROM tasks
               WHERE project = $1 AND environment = $2 AND COALESCE(task_group, '') = $3 AND title = $4
                 AND status NOT IN ('done', 'failed')
               ORDER BY id LIMIT 1";
    scoped_scalar(sql, scope)
        .bind(group.unwrap_or(""))
        .bind(title)
        .fetch_optional(ex)
        .await
}

/// Replaces the dependencies of `task_id`.
pub async fn set_dependencies(
    ex: &mut sqlx::AnyConnection,
    scope: &Scope,
    task_id: &str,
    depends_on: &[String],
) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM task_dependencies WHERE project = $1 AND environment = $2 AND task_id = $3";
    scoped(sql, scope).bind(task_id).execute(&mut *ex).await?;
    for dependency in depends_on {
        let sql = "INSERT INTO task_dependencies (project, environment, task_id, depends_on) VALUES ($1, $2, $3, $4)";
        scoped(sql, scope)
            .bind(task_id)
            .bind(dependency)
            .execute(&mut *ex)
            .await?;
    }
    Ok(())
}

/// What `task_id` depends on.
pub async fn dependencies_of<'c>(ex: impl Exec<'c>, scope: &Scope, task_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT depends_on FROM task_dependencies WHERE project = $1 AND environment = $2 AND task_id = $3
               ORDER BY depends_on";
    scoped_scalar(sql, scope).bind(task_id).fetch_all(ex).await
}

/// The non-terminal tasks that depend on `task_id`.
pub async fn live_dependents<'c>(ex: impl Exec<'c>, scope: &Scope, task_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT t.id FROM task_dependencies d
               JOIN tasks t ON t.project = d.project AND t.environment = d.environment AND t.id = d.task_id
               WHERE d.project = $1 AND d.environment = $2 AND d.depends_on = $3
                 AND t.status NOT IN ('done', 'failed')
               ORDER BY t.id";
    scoped_scalar(sql, scope).bind(task_id).fetch_all(ex).await
}

/// Open tasks outside mission `mission_id` that depend on one of its tasks (standalone tasks
/// may name a run's task by id).
pub async fn live_dependents_of_mission<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    mission_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let sql = "SELECT DISTINCT t.id FROM task_dependencies d
               JOIN tasks u ON u.project = d.project AND u.environment = d.environment AND u.id = d.depends_on
               JOIN tasks t ON t.project = d.project AND t.environment = d.environment AND t.id = d.task_id
               WHERE d.project = $1 AND d.environment = $2 AND u.mission_id = $3
                 AND (t.mission_id IS NULL OR t.mission_id <> $3)
                 AND t.status NOT IN ('done', 'failed')
               ORDER BY t.id";
    scoped_scalar(sql, scope).bind(mission_id).fetch_all(ex).await
}

/// Removes what the task depends on (rows naming it as a dependency stay with their tasks).
pub async fn delete_dependencies<'c>(ex: impl Exec<'c>, scope: &Scope, task_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM task_dependencies WHERE project = $1 AND environment = $2 AND task_id = $3";
    scoped(sql, scope).bind(task_id).execute(ex).await?;
    Ok(())
}

/// Claims the most urgent runnable task of any scope (spec §5.7 step 1): `pending`, not held by
/// its mission run (§6.7), past its backoff, every dependency `done`, its agent below
/// `maxConcurrency`. The claim moves it to `assigned` under a new lease generation; the caller
/// then records the transition. On Postgres, `FOR UPDATE SKIP LOCKED` lets instances claim side
/// by side without waiting on each other; SQLite runs one writer at a time.
pub async fn claim_one(
    ex: &mut sqlx::AnyConnection,
    backend: Backend,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<Option<ClaimedRow>, sqlx::Error> {
    let lock = if backend == Backend::Postgres {
        " FOR UPDATE OF t SKIP LOCKED"
    } else {
        ""
    };
    // A member of a run's volatile team shadows the project agent of the same name; its
    // `maxConcurrency` counts the tasks of that run.
    let sql = format!(
        "SELECT t.project, t.environment, t.id, t.assign_to, t.run_id,
                COALESCE(ra.max_concurrency, a.max_concurrency), ra.name FROM tasks t
         LEFT JOIN run_agents ra ON ra.project = t.project AND ra.environment = t.environment
                                AND ra.run_id = t.run_id AND ra.name = t.assign_to
         LEFT JOIN agents a ON ra.name IS NULL AND a.project = t.project AND a.environment = t.environment
                           AND a.name = t.assign_to
         WHERE t.status = 'pending' AND t.held = 0 AND t.run_after <= $1
           AND NOT EXISTS (SELECT 1 FROM task_dependencies d
                           JOIN tasks u ON u.project = d.project AND u.environment = d.environment AND u.id = d.depends_on
                           WHERE d.project = t.project AND d.environment = t.environment AND d.task_id = t.id
                             AND u.status <> 'done')
           AND (COALESCE(ra.max_concurrency, a.max_concurrency) IS NULL
                OR (SELECT COUNT(*) FROM tasks r
                    WHERE r.project = t.project AND r.environment = t.environment AND r.assign_to = t.assign_to
                      AND ((ra.name IS NULL AND NOT {by_team}) OR (ra.name IS NOT NULL AND r.run_id = t.run_id))
                      AND r.status IN {RUNNING}) < COALESCE(ra.max_concurrency, a.max_concurrency))
         ORDER BY t.priority DESC, t.id
         LIMIT 1{lock}",
        by_team = RUN_BY_TEAM.replace("tasks.", "r.")
    );
    type Candidate = (
        String,
        String,
        String,
        String,
        Option<String>,
        Option<i64>,
        Option<String>,
    );
    let Some((project, environment, id, agent, run_id, limit, team)) = sqlx::query_as::<_, Candidate>(&sql)
        .bind(now)
        .fetch_optional(&mut *ex)
        .await?
    else {
        return Ok(None);
    };
    if backend == Backend::Postgres && limit.is_some() {
        // Claims of a limited agent's tasks queue behind its row, so that two instances cannot both
        // take its last free slot; the count is read again once the lock is held.
        // A team member's row and count are those of its run.
        let run = team.and(run_id);
        let (row, count) = if run.is_some() {
            (
                "FROM run_agents WHERE project = $1 AND environment = $2 AND name = $3 AND run_id = $4",
                " AND run_id = $4",
            )
        } else {
            ("FROM agents WHERE project = $1 AND environment = $2 AND name = $3", "")
        };
        let count = if run.is_some() {
            count.to_string()
        } else {
            format!(" AND NOT {RUN_BY_TEAM}")
        };
        let sql = format!("SELECT max_concurrency {row} FOR UPDATE");
        let mut query = sqlx::query_scalar::<_, Option<i64>>(&sql)
            .bind(&project)
            .bind(&environment)
            .bind(&agent);
        if let Some(run) = &run {
            query = query.bind(run);
        }
        let max = query.fetch_optional(&mut *ex).await?;
        if let Some(Some(max)) = max {
            let sql = format!(
                "SELECT COUNT(*) FROM tasks WHERE project = $1 AND environment = $2 AND assign_to = $3{count}
                 AND status IN {RUNNING}"
            );
            let mut query = sqlx::query_scalar::<_, i64>(&sql)
                .bind(&project)
                .bind(&environment)
                .bind(&agent);
            if let Some(run) = &run {
                query = query.bind(run);
            }
            let running = query.fetch_one(&mut *ex).await?;
            if running >= max {
                return Ok(None);
            }
        }
    }
    let sql = format!(
        "UPDATE tasks SET status = 'assigned', lease_owner = $4, lease_until = $5, lease_gen = lease_gen + 1
         WHERE project = $1 AND environment = $2 AND id = $3 AND status = 'pending'
         RETURNING {CLAIMED_COLUMNS}"
    );
    sqlx::query_as(&sql)
        .bind(&project)
        .bind(&environment)
        .bind(&id)
        .bind(owner)
        .bind(lease_until)
        .fetch_optional(&mut *ex)
        .await
}

/// Renews a lease; `false` when it was lost.
pub async fn renew<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    id: &str,
    generation: i64,
    lease_until: i64,
) -> Result<bool, sqlx::Error> {
    let sql =
        "UPDATE tasks SET lease_until = $5 WHERE project = $1 AND environment = $2 AND id = $3 AND lease_gen = $4";
    changed_one(ex, scoped(sql, scope).bind(id).bind(generation).bind(lease_until)).await
}

/// Running tasks of any scope whose lease ended before `now` (their worker died or stalled).
pub async fn expired<'c>(ex: impl Exec<'c>, now: i64, limit: i64) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CLAIMED_COLUMNS} FROM tasks WHERE status IN {RUNNING} AND lease_until < $1 ORDER BY id LIMIT $2"
    );
    sqlx::query_as(&sql).bind(now).bind(limit).fetch_all(ex).await
}

/// Running tasks of any scope whose attempt outlived its `maxDuration` timer.
pub async fn past_attempt_deadline<'c>(
    ex: impl Exec<'c>,
    now: i64,
    limit: i64,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CLAIMED_COLUMNS} FROM tasks
         WHERE status IN {RUNNING} AND attempt_deadline IS NOT NULL AND attempt_deadline < $1 ORDER BY id LIMIT $2"
    );
    sqlx::query_as(&sql).bind(now).bind(limit).fetch_all(ex).await
}

/// Non-terminal tasks of any scope whose deadline passed.
pub async fn past_deadline<'c>(ex: impl Exec<'c>, now: i64, limit: i64) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {CLAIMED_COLUMNS} FROM tasks
         WHERE deadline IS NOT NULL AND deadline < $1 AND status NOT IN ('done', 'failed') ORDER BY id LIMIT $2"
    );
    sqlx::query_as(&sql).bind(now).bind(limit).fetch_all(ex).await
}

/// Counts of every scope's tasks by status, for `polpo_tasks`.
pub async fn count_by_status<'c>(ex: impl Exec<'c>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
        .fetch_all(ex)
        .await
}

/// Tasks of the scope assigned to the project agent `agent` that are not terminal (a team
/// member's tasks are not its own).
pub async fn live_of_agent<'c>(ex: impl Exec<'c>, scope: &Scope, agent: &str) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "SELECT id FROM tasks WHERE project = $1 AND environment = $2 AND assign_to = $3
         AND status NOT IN ('done', 'failed') AND NOT {RUN_BY_TEAM} ORDER BY id"
    );
    scoped_scalar(&sql, scope).bind(agent).fetch_all(ex).await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApprovalRow {
    pub id: String,
    pub task_id: String,
    pub status: String,
    pub body: String,
    pub created_at: i64,
}

pub async fn insert_approval<'c>(ex: impl Exec<'c>, scope: &Scope, row: &ApprovalRow) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO approvals (project, environment, id, task_id, status, body, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)";
    scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.task_id)
        .bind(&row.status)
        .bind(&row.body)
        .bind(row.created_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get_approval<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<ApprovalRow>, sqlx::Error> {
    let sql = "SELECT id, task_id, status, body, created_at FROM approvals
               WHERE project = $1 AND environment = $2 AND id = $3";
    scoped_as(sql, scope).bind(id).fetch_optional(ex).await
}

/// The pending approvals of a task.
pub async fn pending_approvals<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    task_id: &str,
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    let sql = "SELECT id, task_id, status, body, created_at FROM approvals
               WHERE project = $1 AND environment = $2 AND task_id = $3 AND status = 'pending' ORDER BY id";
    scoped_as(sql, scope).bind(task_id).fetch_all(ex).await
}

/// A page of approvals; `status` and `task_id` filter when non-empty.
pub async fn list_approvals<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    status: &str,
    task_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<ApprovalRow>, sqlx::Error> {
    let sql = "SELECT id, task_id, status, body, created_at FROM approvals
               WHERE project = $1 AND environment = $2 AND id > $3 AND ($4 = '' OR status = $4)
                 AND ($5 = '' OR task_id = $5)
               ORDER BY id LIMIT $6";
    scoped_as(sql, scope)
        .bind(after)
        .bind(status)
        .bind(task_id)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// Writes an approval's status and document; `false` when it was no longer `expected`.
pub async fn update_approval<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    row: &ApprovalRow,
    expected: &str,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE approvals SET status = $4, body = $5
               WHERE project = $1 AND environment = $2 AND id = $3 AND status = $6";
    changed_one(
        ex,
        scoped(sql, scope)
            .bind(&row.id)
            .bind(&row.status)
            .bind(&row.body)
            .bind(expected),
    )
    .await
}

pub async fn delete_approvals<'c>(ex: impl Exec<'c>, scope: &Scope, task_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM approvals WHERE project = $1 AND environment = $2 AND task_id = $3";
    scoped(sql, scope).bind(task_id).execute(ex).await?;
    Ok(())
}
