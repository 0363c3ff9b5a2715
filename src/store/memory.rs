//! The `memories` table: project memory (owner `""`) and agent memory (owner = agent id).

use sqlx::Row;

use super::Exec;
use crate::scope::Scope;

pub const PROJECT_OWNER: &str = "";

pub struct MemoryRow {
    pub content: String,
    pub updated_at: i64,
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, owner: &str) -> Result<Option<MemoryRow>, sqlx::Error> {
    let row =
        sqlx::query("SELECT content, updated_at FROM memories WHERE project = $1 AND environment = $2 AND owner = $3")
            .bind(&scope.project)
            .bind(scope.environment.as_str())
            .bind(owner)
            .fetch_optional(ex)
            .await?;
    row.map(|r| {
        Ok(MemoryRow {
            content: r.try_get("content")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .transpose()
}

/// Project memory and one agent's memory in one query: `(project, agent)`.
pub async fn get_pair<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    agent_owner: &str,
) -> Result<(Option<MemoryRow>, Option<MemoryRow>), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT owner, content, updated_at FROM memories
         WHERE project = $1 AND environment = $2 AND owner IN ($3, $4)",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(PROJECT_OWNER)
    .bind(agent_owner)
    .fetch_all(ex)
    .await?;
    let (mut project, mut agent) = (None, None);
    for r in &rows {
        let owner: String = r.try_get("owner")?;
        let row = MemoryRow {
            content: r.try_get("content")?,
            updated_at: r.try_get("updated_at")?,
        };
        if owner == PROJECT_OWNER {
            project = Some(row)
        } else {
            agent = Some(row)
        }
    }
    Ok((project, agent))
}

pub async fn put<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    owner: &str,
    content: &str,
    updated_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO memories (project, environment, owner, content, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (project, environment, owner)
         DO UPDATE SET content = excluded.content, updated_at = excluded.updated_at",
    )
    .bind(&scope.project)
    .bind(scope.environment.as_str())
    .bind(owner)
    .bind(content)
    .bind(updated_at)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM memories WHERE project = $1 AND environment = $2 AND owner = $3")
        .bind(&scope.project)
        .bind(scope.environment.as_str())
        .bind(owner)
        .execute(ex)
        .await?;
    Ok(())
}
