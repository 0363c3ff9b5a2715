//! The `agents` table. The agent document is stored whole as JSON in `body`; the columns beside
//! it exist for scoping, lookup, uniqueness and keyset pagination.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Exec;
use crate::scope::Scope;

pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub body: String,
}

/// The unique constraint behind "duplicate name" (`409`).
pub const NAME_CONSTRAINT: &str = "agents_name_key";

fn from_row(r: &AnyRow) -> Result<AgentRow, sqlx::Error> {
    Ok(AgentRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        body: r.try_get("body")?,
    })
}

pub async fn insert<'c>(ex: impl Exec<'c>, scope: &Scope, row: &AgentRow, created_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agents (project, environment, id, name, body, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(&row.id)
    .bind(&row.name)
    .bind(&row.body)
    .bind(created_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get_by_id<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<AgentRow>, sqlx::Error> {
    sqlx::query("SELECT id, name, body FROM agents WHERE project = $1 AND environment = $2 AND id = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(id)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub async fn get_by_name<'c>(ex: impl Exec<'c>, scope: &Scope, name: &str) -> Result<Option<AgentRow>, sqlx::Error> {
    sqlx::query("SELECT id, name, body FROM agents WHERE project = $1 AND environment = $2 AND name = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(name)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Replaces the document; `false` when the agent is gone.
pub async fn update<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    id: &str,
    body: &str,
    updated_at: i64,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE agents SET body = $4, updated_at = $5 WHERE project = $1 AND environment = $2 AND id = $3")
            .bind(&scope.project)
            .bind(scope.environment.as_str())
            .bind(id)
            .bind(body)
            .bind(updated_at)
            .execute(ex)
            .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM agents WHERE project = $1 AND environment = $2 AND id = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// One page in creation (= id) order, after the given id when present.
pub async fn list<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<AgentRow>, sqlx::Error> {
    sqlx::query(
        "SELECT id, name, body FROM agents
         WHERE project = $1 AND environment = $2 AND id > $3
         ORDER BY id LIMIT $4",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(after.unwrap_or(""))
    .bind(limit)
    .fetch_all(ex)
    .await?
    .iter()
    .map(from_row)
    .collect()
}
