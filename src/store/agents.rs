//! The `agents` table. The agent document is stored whole as JSON in `body`; the columns beside
//! it exist for scoping, lookup, uniqueness and keyset pagination.

use super::{Exec, changed_one, scoped, scoped_as};
use crate::scope::Scope;

#[derive(sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub body: String,
    /// Kept beside the document so that the task runner can check it when it claims.
    #[sqlx(default)]
    pub max_concurrency: Option<i64>,
}

/// The unique constraint behind "duplicate name" (`409`).
pub const NAME_CONSTRAINT: &str = "agents_name_key";

pub async fn insert<'c>(ex: impl Exec<'c>, scope: &Scope, row: &AgentRow, created_at: i64) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO agents (project, environment, id, name, body, max_concurrency, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $7)";
    scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.name)
        .bind(&row.body)
        .bind(row.max_concurrency)
        .bind(created_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get_by_id<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<Option<AgentRow>, sqlx::Error> {
    let sql = "SELECT id, name, body FROM agents WHERE project = $1 AND environment = $2 AND id = $3";
    scoped_as(sql, scope).bind(id).fetch_optional(ex).await
}

pub async fn get_by_name<'c>(ex: impl Exec<'c>, scope: &Scope, name: &str) -> Result<Option<AgentRow>, sqlx::Error> {
    let sql = "SELECT id, name, body FROM agents WHERE project = $1 AND environment = $2 AND name = $3";
    scoped_as(sql, scope).bind(name).fetch_optional(ex).await
}

/// An agent with the project's memory and its own, as a chat turn reads them.
#[derive(sqlx::FromRow)]
pub struct AgentWithMemories {
    #[sqlx(flatten)]
    pub agent: AgentRow,
    pub project_memory: Option<String>,
    pub agent_memory: Option<String>,
}

/// The agent with id (or, when `by_name`, name) `key`, and both memories, in one statement.
pub async fn get_with_memories<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    key: &str,
    by_name: bool,
) -> Result<Option<AgentWithMemories>, sqlx::Error> {
    let column = if by_name { "name" } else { "id" };
    // Only the column name is formatted into the text; every value is bound.
    let sql = format!(
        "SELECT a.id, a.name, a.body, p.content AS project_memory, m.content AS agent_memory
         FROM agents a
         LEFT JOIN memories p ON p.project = a.project AND p.environment = a.environment AND p.owner = $4
         LEFT JOIN memories m ON m.project = a.project AND m.environment = a.environment AND m.owner = a.id
         WHERE a.project = $1 AND a.environment = $2 AND a.{column} = $3"
    );
    scoped_as(&sql, scope)
        .bind(key)
        .bind(super::memory::PROJECT_OWNER)
        .fetch_optional(ex)
        .await
}

/// Replaces the document; `false` when the agent is gone.
pub async fn update<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    row: &AgentRow,
    updated_at: i64,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE agents SET body = $4, max_concurrency = $5, updated_at = $6
               WHERE project = $1 AND environment = $2 AND id = $3";
    let query = scoped(sql, scope)
        .bind(&row.id)
        .bind(&row.body)
        .bind(row.max_concurrency)
        .bind(updated_at);
    changed_one(ex, query).await
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, id: &str) -> Result<bool, sqlx::Error> {
    let sql = "DELETE FROM agents WHERE project = $1 AND environment = $2 AND id = $3";
    changed_one(ex, scoped(sql, scope).bind(id)).await
}

/// One page in creation (= id) order, after the given id when present.
pub async fn list<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<AgentRow>, sqlx::Error> {
    let sql = "SELECT id, name, body FROM agents
               WHERE project = $1 AND environment = $2 AND id > $3
               ORDER BY id LIMIT $4";
    scoped_as(sql, scope)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(ex)
        .await
}
