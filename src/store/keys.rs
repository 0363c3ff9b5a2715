//! The `api_keys` table: hashes and display prefixes only, never a plaintext key.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Exec;

#[derive(Debug, Clone)]
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

fn from_row(r: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        id: r.try_get("id")?,
        project: r.try_get("project")?,
        environment: r.try_get("environment")?,
        name: r.try_get("name")?,
        prefix: r.try_get("prefix")?,
        hash: r.try_get("hash")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

pub async fn insert<'c>(ex: impl Exec<'c>, key: &KeyRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, project, environment, name, prefix, hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
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
    sqlx::query(&sql)
        .bind(hash)
        .fetch_optional(ex)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

pub async fn list<'c>(ex: impl Exec<'c>, project: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE project = $1 ORDER BY id");
    sqlx::query(&sql)
        .bind(project)
        .fetch_all(ex)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Sets `revoked_at` unless already set; `false` when no such key exists.
pub async fn revoke<'c>(ex: impl Exec<'c>, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(ex)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records use, at most once a minute per key (spec §1.2.4).
pub async fn touch<'c>(ex: impl Exec<'c>, id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = $2
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - 60000)",
    )
    .bind(id)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}
