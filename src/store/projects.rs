//! The `projects` table.

use sqlx::Row;

use super::Exec;

pub struct ProjectRow {
    pub slug: String,
    pub created_at: i64,
}

/// Inserts the project; `false` when the slug already exists.
pub async fn insert<'c>(ex: impl Exec<'c>, slug: &str, created_at: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO projects (slug, created_at) VALUES ($1, $2) ON CONFLICT (slug) DO NOTHING")
        .bind(slug)
        .bind(created_at)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn list<'c>(ex: impl Exec<'c>) -> Result<Vec<ProjectRow>, sqlx::Error> {
    let rows = sqlx::query("SELECT slug, created_at FROM projects ORDER BY created_at, slug")
        .fetch_all(ex)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ProjectRow {
                slug: r.try_get("slug")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

pub async fn exists<'c>(ex: impl Exec<'c>, slug: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) FROM projects WHERE slug = $1")
        .bind(slug)
        .fetch_one(ex)
        .await?;
    Ok(row.try_get::<i64, _>(0)? > 0)
}

pub async fn count<'c>(ex: impl Exec<'c>) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) FROM projects")
        .fetch_one(ex)
        .await?
        .try_get(0)
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
