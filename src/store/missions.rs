//! Missions, their runs, volatile teams and schedule ticks (spec §6). Documents are stored whole
//! in `body`; the columns beside them serve names, filters, the live-run scan and the schedule.

use super::{Backend, Exec, changed_one, scoped, scoped_as, scoped_scalar};
use crate::scope::{Environment, Scope};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MissionRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub body: String,
    pub next_fire_at: Option<i64>,
    pub updated_at: i64,
}

/// The unique constraint behind "duplicate name" (`409`).
pub const NAME_CONSTRAINT: &str = "missions_name_key";

const COLUMNS: &str = "id, name, status, body, next_fire_at, updated_at";

pub async fn insert<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    row: &MissionRow,
    created_at: i64,
) -> Result<(), sqlx::Error> {
    let sql =
        "INSERT INTO missions (project, environment, id, name, status, body, next_fire_at, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.status)
        .bind(&row.body)
        .bind(row.next_fire_at)
        .bind(created_at)
        .bind(row.updated_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<MissionRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM missions WHERE project = $1 AND environment = $2 AND id = $3");
    scoped_as(&sql, scope).bind(id).fetch_optional(ex).await
}

/// Reads the mission and, on Postgres, holds its row lock until the transaction ends: every
/// change of a mission and of its runs goes through it, one at a time.
pub async fn lock<'c>(
    ex: impl Exec<'c>,
    backend: Backend,
    scope: &Scope,
    id: &str,
) -> Result<Option<MissionRow>, sqlx::Error> {
    let lock = if backend == Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let sql = format!("SELECT {COLUMNS} FROM missions WHERE project = $1 AND environment = $2 AND id = $3{lock}");
    scoped_as(&sql, scope).bind(id).fetch_optional(ex).await
}

pub async fn by_name<'c>(ex: impl Exec<'c>, scope: &Scope, name: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = "SELECT id FROM missions WHERE project = $1 AND environment = $2 AND name = $3";
    scoped_scalar(sql, scope).bind(name).fetch_optional(ex).await
}

pub async fn list<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    status: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<MissionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM missions
         WHERE project = $1 AND environment = $2 AND id > $3 AND ($4 = '' OR status = $4)
         ORDER BY id LIMIT $5"
    );
    scoped_as(&sql, scope)
        .bind(after)
        .bind(status)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// Replaces the document and its columns; `false` when the mission is gone.
pub async fn update<'c>(ex: impl Exec<'c>, scope: &Scope, row: &MissionRow) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE missions SET name = $4, status = $5, body = $6, next_fire_at = $7, updated_at = $8
               WHERE project = $1 AND environment = $2 AND id = $3";
    let query = scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.status)
        .bind(&row.body)
        .bind(row.next_fire_at)
        .bind(row.updated_at);
    changed_one(ex, query).await
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let sql = "DELETE FROM missions WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id)).await
}

/// A mission whose schedule is due, with its scope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueRow {
    pub project: String,
    pub environment: String,
    pub id: String,
}

impl DueRow {
    pub fn scope(&self) -> Option<Scope> {
        Some(Scope {
            project: self.project.clone(),
            environment: Environment::parse(&self.environment)?,
        })
    }
}

/// Missions of any scope whose next tick is at or before `now`.
pub async fn due<'c>(ex: impl Exec<'c>, now: i64, limit: i64) -> Result<Vec<DueRow>, sqlx::Error> {
    let sql = "SELECT project, environment, id FROM missions
               WHERE next_fire_at IS NOT NULL AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2";
    sqlx::query_as(sql).bind(now).bind(limit).fetch_all(ex).await
}

/// Claims one tick of a mission's schedule; `false` when it was already claimed (fired or
/// skipped) by this or another instance.
pub async fn claim_tick<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    mission_id: &str,
    scheduled_for: i64,
    run_id: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let sql = "INSERT INTO schedule_ticks (project, environment, mission_id, scheduled_for, run_id, claimed_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
    changed_one(
        ex,
        scoped(sql, scope)
            .bind(mission_id)
            .bind(scheduled_for)
            .bind(run_id)
            .bind(now),
    )
    .await
}

/// Records the run a claimed tick started.
pub async fn set_tick_run<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    mission_id: &str,
    scheduled_for: i64,
    run_id: &str,
) -> Result<(), sqlx::Error> {
    let sql = "UPDATE schedule_ticks SET run_id = $5
               WHERE project = $1 AND environment = $2 AND mission_id = $3 AND scheduled_for = $4";
    scoped(sql, scope)
        .bind(mission_id)
        .bind(scheduled_for)
        .bind(run_id)
        .execute(ex)
        .await?;
    Ok(())
}

/// The ticks of a mission, oldest first: `(scheduledFor, runId)`.
pub async fn ticks<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    mission_id: &str,
) -> Result<Vec<(i64, Option<String>)>, sqlx::Error> {
    let sql = "SELECT scheduled_for, run_id FROM schedule_ticks
               WHERE project = $1 AND environment = $2 AND mission_id = $3 ORDER BY scheduled_for";
    scoped_as(sql, scope).bind(mission_id).fetch_all(ex).await
}

pub async fn delete_ticks<'c>(ex: impl Exec<'c>, scope: &Scope, mission_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM schedule_ticks WHERE project = $1 AND environment = $2 AND mission_id = $3";
    scoped(sql, scope).bind(mission_id).execute(ex).await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: String,
    pub mission_id: String,
    pub number: i64,
    pub status: String,
    pub body: String,
}

const RUN_COLUMNS: &str = "id, mission_id, number, status, body";

pub async fn insert_run<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    row: &RunRow,
    created_at: i64,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO mission_runs (project, environment, id, mission_id, number, status, body, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.mission_id)
        .bind(row.number)
        .bind(&row.status)
        .bind(&row.body)
        .bind(created_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get_run<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    mission_id: &str,
    run_id: &str,
) -> Result<Option<RunRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM mission_runs WHERE project = $1 AND environment = $2 AND mission_id = $3 AND id = $4"
    );
    scoped_as(&sql, scope)
        .bind(mission_id)
        .bind(run_id)
        .fetch_optional(ex)
        .await
}

/// A run by id alone (a task knows its run, not always its mission).
pub async fn run_by_id<'c>(ex: impl Exec<'c>, scope: &Scope, run_id: &str) -> Result<Option<RunRow>, sqlx::Error> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM mission_runs WHERE project = $1 AND environment = $2 AND id = $3");
    scoped_as(&sql, scope).bind(run_id).fetch_optional(ex).await
}

/// Runs of a mission after run `after` (an id; runs are created in number order, so id order is
/// number order, and the id of a run that no longer exists still places the page).
pub async fn list_runs<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    mission_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<RunRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM mission_runs
         WHERE project = $1 AND environment = $2 AND mission_id = $3 AND id > $4 ORDER BY id LIMIT $5"
    );
    scoped_as(&sql, scope)
        .bind(mission_id)
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await
}

pub async fn update_run<'c>(ex: impl Exec<'c>, scope: &Scope, row: &RunRow) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE mission_runs SET status = $4, body = $5 WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(&row.id).bind(&row.status).bind(&row.body)).await
}

pub async fn delete_runs<'c>(ex: impl Exec<'c>, scope: &Scope, mission_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM mission_runs WHERE project = $1 AND environment = $2 AND mission_id = $3";
    scoped(sql, scope).bind(mission_id).execute(ex).await?;
    Ok(())
}

/// Live runs of any scope after run `after` (by run id): `(project, environment, mission id,
/// run id)`.
pub async fn live_runs<'c>(ex: impl Exec<'c>, after: &str, limit: i64) -> Result<Vec<LiveRow>, sqlx::Error> {
    let sql = "SELECT project, environment, mission_id, id FROM mission_runs
               WHERE status IN ('active', 'paused') AND id > $1 ORDER BY id LIMIT $2";
    sqlx::query_as(sql).bind(after).bind(limit).fetch_all(ex).await
}

/// A live run with its scope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveRow {
    pub project: String,
    pub environment: String,
    pub mission_id: String,
    pub id: String,
}

impl LiveRow {
    pub fn scope(&self) -> Option<Scope> {
        Some(Scope {
            project: self.project.clone(),
            environment: Environment::parse(&self.environment)?,
        })
    }
}

pub async fn count_live_runs<'c>(ex: impl Exec<'c>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM mission_runs WHERE status IN ('active', 'paused')")
        .fetch_one(ex)
        .await
}

/// One member of a run's volatile team.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunAgentRow {
    pub name: String,
    pub body: String,
    pub max_concurrency: Option<i64>,
}

pub async fn insert_run_agent<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    run_id: &str,
    row: &RunAgentRow,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO run_agents (project, environment, run_id, name, body, max_concurrency)
               VALUES ($1, $2, $3, $4, $5, $6)";
    scoped(sql, scope)
        .bind(run_id)
        .bind(&row.name)
        .bind(&row.body)
        .bind(row.max_concurrency)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn run_agent<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    run_id: &str,
    name: &str,
) -> Result<Option<RunAgentRow>, sqlx::Error> {
    let sql = "SELECT name, body, max_concurrency FROM run_agents
               WHERE project = $1 AND environment = $2 AND run_id = $3 AND name = $4";
    scoped_as(sql, scope).bind(run_id).bind(name).fetch_optional(ex).await
}

pub async fn count_run_agents<'c>(ex: impl Exec<'c>, scope: &Scope, run_id: &str) -> Result<i64, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM run_agents WHERE project = $1 AND environment = $2 AND run_id = $3";
    scoped_scalar(sql, scope).bind(run_id).fetch_one(ex).await
}

pub async fn delete_run_agents<'c>(ex: impl Exec<'c>, scope: &Scope, run_id: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM run_agents WHERE project = $1 AND environment = $2 AND run_id = $3";
    scoped(sql, scope).bind(run_id).execute(ex).await?;
    Ok(())
}
