//! The `memories` table: project memory (owner `""`) and agent memory (owner = agent id).

use super::{Exec, scoped, scoped_as};
use crate::scope::Scope;

pub const PROJECT_OWNER: &str = "";

#[derive(sqlx::FromRow)]
pub struct MemoryRow {
    pub content: String,
    pub updated_at: i64,
}

/// A memory with its owner, for reads of several owners at once.
#[derive(sqlx::FromRow)]
struct OwnedMemory {
    owner: String,
    #[sqlx(flatten)]
    memory: MemoryRow,
}

pub async fn get<'c>(ex: impl Exec<'c>, scope: &Scope, owner: &str) -> Result<Option<MemoryRow>, sqlx::Error> {
    let sql = "SELECT content, updated_at FROM memories WHERE project = $1 AND environment = $2 AND owner = $3";
    scoped_as(sql, scope).bind(owner).fetch_optional(ex).await
}

/// Project memory and one agent's memory in one query: `(project, agent)`.
pub async fn get_pair<'c>(
    ex: impl Exec<'c>,
    scope: &Scope,
    agent_owner: &str,
) -> Result<(Option<MemoryRow>, Option<MemoryRow>), sqlx::Error> {
    let sql = "SELECT owner, content, updated_at FROM memories
               WHERE project = $1 AND environment = $2 AND owner IN ($3, $4)";
    let rows: Vec<OwnedMemory> = scoped_as(sql, scope)
        .bind(PROJECT_OWNER)
        .bind(agent_owner)
        .fetch_all(ex)
        .await?;
    let (mut project, mut agent) = (None, None);
    for row in rows {
        if row.owner == PROJECT_OWNER {
            project = Some(row.memory)
        } else {
            agent = Some(row.memory)
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
    let sql = "INSERT INTO memories (project, environment, owner, content, updated_at) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (project, environment, owner)
               DO UPDATE SET content = excluded.content, updated_at = excluded.updated_at";
    scoped(sql, scope)
        .bind(owner)
        .bind(content)
        .bind(updated_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn delete<'c>(ex: impl Exec<'c>, scope: &Scope, owner: &str) -> Result<(), sqlx::Error> {
    let sql = "DELETE FROM memories WHERE project = $1 AND environment = $2 AND owner = $3";
    scoped(sql, scope).bind(owner).execute(ex).await?;
    Ok(())
}
