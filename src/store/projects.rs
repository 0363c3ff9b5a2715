//! The `projects` table.

use super::{Exec, changed_one};

#[derive(sqlx::FromRow)]
pub struct ProjectRow {
    pub slug: String,
    pub created_at: i64,
}

/// Inserts the project; `false` when the slug already exists.
pub async fn insert<'c>(ex: impl Exec<'c>, slug: &str, created_at: i64) -> Result<bool, sqlx::Error> {
    let sql = "INSERT INTO projects (slug, created_at) VALUES ($1, $2) ON CONFLICT (slug) DO NOTHING";
    changed_one(ex, sqlx::query(sql).bind(slug).bind(created_at)).await
}

pub async fn list<'c>(ex: impl Exec<'c>) -> Result<Vec<ProjectRow>, sqlx::Error> {
    sqlx::query_as("SELECT slug, created_at FROM projects ORDER BY created_at, slug")
        .fetch_all(ex)
        .await
}

pub async fn exists<'c>(ex: impl Exec<'c>, slug: &str) -> Result<bool, sqlx::Error> {
    let sql = "SELECT COUNT(*) FROM projects WHERE slug = $1";
    let count: i64 = sqlx::query_scalar(sql).bind(slug).fetch_one(ex).await?;
    Ok(count > 0)
}

pub async fn count<'c>(ex: impl Exec<'c>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM projects").fetch_one(ex).await
}

/// Holds the project's row lock until the transaction ends, so that checks over all of a
/// project's rows (such as a count limit) and the write that follows are not interleaved with
/// another transaction doing the same. SQLite runs one writer at a time, so there it only marks
/// the transaction as a writer.
pub async fn lock<'c>(ex: impl Exec<'c>, slug: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projects SET created_at = created_at WHERE slug = $1")
        .bind(slug)
        .execute(ex)
        .await?;
    Ok(())
}
