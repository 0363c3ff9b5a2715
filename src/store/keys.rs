//! The `api_keys` table: hashes and display prefixes only, never a plaintext key.

use super::{Exec, changed_one};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub project: String,
    pub environment: String,
    pub name: Option<String>,
    pub prefix: String,
    pub hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str = "id, project, environment, name, prefix, hash, created_at, expires_at, revoked_at, last_used_at";

pub async fn insert<'c>(ex: impl Exec<'c>, key: &KeyRow) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO api_keys (id, project, environment, name, prefix, hash, created_at, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    sqlx::query(sql)
        .bind(&key.id)
        .bind(&key.project)
        .bind(&key.environment)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.hash)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn find_by_hash<'c>(ex: impl Exec<'c>, hash: &str) -> Result<Option<KeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE hash = $1");
    sqlx::query_as(&sql).bind(hash).fetch_optional(ex).await
}

pub async fn list<'c>(ex: impl Exec<'c>, project: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE project = $1 ORDER BY id");
    sqlx::query_as(&sql).bind(project).fetch_all(ex).await
}

/// Sets `revoked_at` unless already set; `false` when no such key exists.
pub async fn revoke<'c>(ex: impl Exec<'c>, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
    changed_one(ex, sqlx::query(sql).bind(id).bind(now)).await
}

/// Records use, at most once a minute per key (spec §1.2.4).
pub async fn touch<'c>(ex: impl Exec<'c>, id: &str, now: i64) -> Result<(), sqlx::Error> {
    let sql = "UPDATE api_keys SET last_used_at = $2
               WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - 60000)";
    sqlx::query(sql).bind(id).bind(now).execute(ex).await?;
    Ok(())
}
