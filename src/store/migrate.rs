//! Embedded schema migrations, one SQL file per backend and version (`migrations/<backend>/`).
//!
//! On Postgres an advisory lock serialises instances that start together, so each migration is
//! applied exactly once; every migration runs in its own transaction with its bookkeeping row.

use super::{Backend, Db, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sqlite: include_str!("../../migrations/sqlite/0001_foundation.sql"),
        postgres: include_str!("../../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "chat_and_events",
        sqlite: include_str!("../../migrations/sqlite/0002_chat_and_events.sql"),
        postgres: include_str!("../../migrations/postgres/0002_chat_and_events.sql"),
    },
    Migration {
        version: 3,
        name: "webhooks",
        sqlite: include_str!("../../migrations/sqlite/0003_webhooks.sql"),
        postgres: include_str!("../../migrations/postgres/0003_webhooks.sql"),
    },
    Migration {
        version: 4,
        name: "tasks",
        sqlite: include_str!("../../migrations/sqlite/0004_tasks.sql"),
        postgres: include_str!("../../migrations/postgres/0004_tasks.sql"),
    },
    Migration {
        version: 5,
        name: "missions",
        sqlite: include_str!("../../migrations/sqlite/0005_missions.sql"),
        postgres: include_str!("../../migrations/postgres/0005_missions.sql"),
    },
    Migration {
        version: 6,
        name: "rate_limits",
        sqlite: include_str!("../../migrations/sqlite/0006_rate_limits.sql"),
        postgres: include_str!("../../migrations/postgres/0006_rate_limits.sql"),
    },
    Migration {
        version: 7,
        name: "idempotency",
        sqlite: include_str!("../../migrations/sqlite/0007_idempotency.sql"),
        postgres: include_str!("../../migrations/postgres/0007_idempotency.sql"),
    },
    Migration {
        version: 8,
        name: "purge_indexes",
        sqlite: include_str!("../../migrations/sqlite/0008_purge_indexes.sql"),
        postgres: include_str!("../../migrations/postgres/0008_purge_indexes.sql"),
    },
    Migration {
        version: 9,
        name: "delivery_head_index",
        sqlite: include_str!("../../migrations/sqlite/0009_delivery_head_index.sql"),
        postgres: include_str!("../../migrations/postgres/0009_delivery_head_index.sql"),
    },
];

/// Arbitrary constant naming the migration lock among Postgres advisory locks.
const PG_LOCK_ID: i64 = 7_242_001;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS polpo_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

/// Applies every pending migration; returns how many were applied.
pub async fn run(db: &Db) -> Result<usize, StoreError> {
    let mut conn = db.pool.acquire().await?;
    if db.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_LOCK_ID)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply_pending(db.backend, &mut conn).await;
    if db.backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_LOCK_ID)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply_pending(
    backend: Backend,
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
) -> Result<usize, StoreError> {
    sqlx::query(CREATE_TABLE).execute(&mut **conn).await?;
    let applied = applied_versions(conn).await?;
    let mut count = 0;
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let sql = match backend {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        };
        let mut tx = sqlx::Connection::begin(&mut **conn).await?;
        sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|e| {
            StoreError::Migration(format!(
                "migration {} ({}) failed: {e}",
                migration.version, migration.name
            ))
        })?;
        sqlx::query("INSERT INTO polpo_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(migration.version)
            .bind(migration.name)
            .bind(crate::clock::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = migration.version, name = migration.name, "applied migration");
        count += 1;
    }
    Ok(count)
}

async fn applied_versions(conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM polpo_migrations")
        .fetch_all(conn)
        .await
}

/// Versions the code knows that the database has not applied (for `serve --no-migrate`).
pub async fn pending(db: &Db) -> Result<Vec<i64>, StoreError> {
    let mut conn = db.pool.acquire().await?;
    let exists: i64 = match db.backend {
        Backend::Sqlite => {
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'polpo_migrations'")
        }
        Backend::Postgres => {
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = 'polpo_migrations'")
        }
    }
    .fetch_one(&mut *conn)
    .await?;
    let applied = if exists > 0 {
        applied_versions(&mut conn).await?
    } else {
        Vec::new()
    };
    Ok(MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect())
}
