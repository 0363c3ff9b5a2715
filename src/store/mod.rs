//! SQL only: one file per table group. Every function takes an executor so that the caller owns
//! the transaction; the same statements run on SQLite and Postgres through sqlx's `Any` driver
//! (`$1` placeholders work on both; times are integer milliseconds, JSON documents are text).

pub mod agents;
pub mod chat;
pub mod direct;
pub mod events;
pub mod idempotency;
pub mod keys;
pub mod memory;
pub mod migrate;
pub mod missions;
pub mod projects;
pub mod rate_limits;
pub mod script;
pub mod tasks;
pub mod webhooks;

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Executor, FromRow, Transaction};

use crate::scope::Scope;

/// What store functions accept: the pool, a pooled connection or a transaction.
pub trait Exec<'c>: Executor<'c, Database = sqlx::Any> {}
impl<'c, T: Executor<'c, Database = sqlx::Any>> Exec<'c> for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// How to open a SQLite file again, for [`checkpoint_connection`]; `None` on Postgres and for
    /// in-memory databases.
    sqlite_file: Option<AnyConnectOptions>,
    /// A SQLite file's second connection, for writes made on the calling thread; `None` on
    /// Postgres and for in-memory databases.
    pub direct: Option<direct::Direct>,
}

/// A transaction on a pool connection. On SQLite it holds the turn of the direct connection
/// ([`direct::Gate`]) until it ends, so that the two connections never write at once.
pub struct Tx {
    tx: Transaction<'static, Any>,
    /// Dropped after the transaction (fields drop in order).
    _gate: Option<direct::Gate>,
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// Whether the error says the database cannot be reached (spec §1.6 `unavailable`) rather than
/// that a statement failed: no connection in time, a dropped socket, or the server ending the
/// session as it stops or starts.
pub fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // SQLSTATE class 08 (connection exception) and 57P01-57P03 (admin shutdown, crash
        // shutdown, cannot connect now): a stopped or restarting Postgres ends a session with these.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Where the embedded database lives when no URL is configured (spec §10.2).
pub const DEFAULT_SQLITE_URL: &str = "sqlite://polpo.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("{0}")]
    Migration(String),
}

/// How long a Postgres request waits for a connection unless `database.acquire_timeout` says
/// otherwise. A stopped server is retried for this long, then answered `503`.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// SQLite's one connection is a queue of writers, not a server that can go away: a wait for it
/// is load, so it is long enough that load never turns into `503`.
const SQLITE_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// How long a Postgres connection may have been idle in the pool and still be used without a
/// ping first. The pool pings every connection when it is given back, so one idle for less than
/// this was answering a moment ago; a connection is pinged before use only when it has been idle
/// longer (the server, or something between, may have dropped it meanwhile), not on every
/// acquire, which cost every statement made through the pool a second round trip.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// WAL pages after which a writing connection (the pool's, or the direct one of the chat turns'
/// writes) checkpoints on its own, inside the commit that crosses the mark. The server's own
/// checkpoints ([`checkpoint`], on a connection of their own) keep the WAL far below it; it is
/// the bound if they stop.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

impl Db {
    /// Connects to `url` (`None`: the embedded SQLite file). Nothing is migrated here.
    pub async fn connect(url: Option<&str>, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// As [`Db::connect`], with the longest wait for a Postgres connection.
    pub async fn connect_with(
        url: Option<&str>,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = url.unwrap_or(DEFAULT_SQLITE_URL);
        let backend = backend_of(url).ok_or(StoreError::UnsupportedUrl)?;
        let options = match backend {
            Backend::Sqlite => {
                let url = if url.contains("mode=") {
                    url.to_string()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                url.parse::<AnyConnectOptions>()?
            }
            Backend::Postgres => url.parse::<AnyConnectOptions>()?,
        };
        // SQLite has one writer at a time. One connection queues statements in the pool (an
        // async wait) instead of letting several connections spin on SQLITE_BUSY with sleeps.
        let max_connections = if backend == Backend::Sqlite {
            1
        } else {
            max_connections.max(1)
        };
        let acquire_timeout = match backend {
            Backend::Sqlite => SQLITE_QUEUE_WAIT,
            Backend::Postgres => acquire_timeout,
        };
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout);
        if backend == Backend::Sqlite {
            // A connection to a local file cannot be dropped by a server or a network, so it is
            // not pinged before each use: on SQLite that ping is one more hand-off to the
            // connection's thread for every transaction and every read.
            pool = pool.test_before_acquire(false).after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers proceed during a write; busy_timeout makes a second
                    // writer wait instead of failing at once.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute(format!("PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}").as_str())
                        .await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        } else {
            pool = pool.test_before_acquire(false).before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            });
        }
        let file = sqlite_path(Some(url)).filter(|_| backend == Backend::Sqlite);
        let sqlite_file = file.is_some().then(|| options.clone());
        let pool = pool.connect_with(options).await?;
        // Opened after the pool's connection, which has put the file in WAL mode.
        let direct = match file {
            Some(path) => Some(direct::Direct::open(&path, WAL_AUTOCHECKPOINT_PAGES)?),
            None => None,
        };
        Ok(Self {
            pool,
            backend,
            sqlite_file,
            direct,
        })
    }

    /// Begins a transaction on a pool connection, after the direct connection's writes on
    /// SQLite (see [`Tx`]). On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a
    /// transaction that reads first and writes later would otherwise be refused at its first
    /// write (`SQLITE_BUSY_SNAPSHOT`, which no busy wait retries) whenever another process on
    /// the file (a second instance, a CLI command) had committed since its read. Taken at the
    /// start, the lock is waited for like any other (`busy_timeout`).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let gate = self.direct_turn().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx { tx, _gate: gate })
    }

    /// Waits for the direct connection's turn, on a SQLite file; `None` where there is none.
    async fn direct_turn(&self) -> Option<direct::Gate> {
        match &self.direct {
            Some(direct) => Some(direct.gate().await),
            None => None,
        }
    }

    /// Waits until the direct connection has committed enough since the last time this returned
    /// for the WAL to want a checkpoint sooner than its clock would bring one
    /// ([`direct::Direct::filled`]); never where there is no direct connection.
    pub async fn wal_filled(&self) {
        match &self.direct {
            Some(direct) => direct.filled().await,
            None => std::future::pending().await,
        }
    }

    /// A trivial query, for readiness.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }
}

/// A connection of its own for the WAL checkpoints of a SQLite file, so that copying the WAL
/// back into the file (and its fsync) never holds up the pool's one connection; `None` on
/// Postgres and for in-memory databases.
pub async fn checkpoint_connection(db: &Db) -> Result<Option<AnyConnection>, sqlx::Error> {
    match &db.sqlite_file {
        Some(options) => Ok(Some(options.connect().await?)),
        None => Ok(None),
    }
}

/// What a WAL checkpoint found and did, in frames (pages).
#[derive(Debug, Clone, Copy)]
pub struct Checkpoint {
    /// Frames in the WAL.
    pub frames: i64,
    /// Frames now copied into the database file.
    pub copied: i64,
}

/// Copies what the WAL holds back into the database file as far as it can without waiting for
/// readers or writers (`PRAGMA wal_checkpoint(PASSIVE)`); the next write after a complete one
/// starts the WAL again from its beginning (see [`finish_checkpoint`]).
pub async fn checkpoint(conn: &mut AnyConnection) -> Result<Checkpoint, sqlx::Error> {
    let (_busy, frames, copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(conn).await?;
    Ok(Checkpoint { frames, copied })
}

/// Copies the rest of the WAL back into the file while the direct connection's writes wait
/// (their tasks free meanwhile), and when that copy is complete starts the WAL again from its
/// beginning. Run right after a [`checkpoint`] beside the writes, it copies only what was
/// committed during that one. Under a steady stream of commits a checkpoint beside them is never
/// complete by the time it could restart the WAL: the WAL would grow to the direct connection's
/// `wal_autocheckpoint`, and the commit that crosses it would copy all of it, and wait for the
/// fsyncs, on a request's worker while every other turn's commit waits behind it.
///
/// The restart is a write: the database header's `user_version`, written back unchanged. The
/// first write after a complete checkpoint restarts the WAL, and waits for its new header to reach
/// the disk (an fsync, even with `synchronous = NORMAL`); made here, no chat turn's commit has to.
pub async fn finish_checkpoint(db: &Db, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let _turn = db.direct_turn().await;
    let done = checkpoint(conn).await?;
    if done.copied == done.frames {
        let (version,): (i64,) = sqlx::query_as("PRAGMA user_version").fetch_one(&mut *conn).await?;
        // An integer read from the file, not text from outside.
        sqlx::query(&format!("PRAGMA user_version = {version}"))
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub fn backend_of(url: &str) -> Option<Backend> {
    if url.starts_with("sqlite:") {
        Some(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Backend::Postgres)
    } else {
        None
    }
}

/// The file behind a SQLite URL, or `None` for in-memory databases and other backends.
pub fn sqlite_path(url: Option<&str>) -> Option<PathBuf> {
    let url = url.unwrap_or(DEFAULT_SQLITE_URL);
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Takes the exclusive lock that keeps a second `serve` off the same SQLite file (spec §10.3).
/// The lock lives as long as the returned file; CLI commands do not take it.
pub fn lock_sqlite(url: Option<&str>) -> std::io::Result<Option<File>> {
    let Some(path) = sqlite_path(url) else {
        return Ok(None);
    };
    let mut lock_path = path.into_os_string();
    lock_path.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "another polpo-api serve is using this database ({})",
                lock_path.to_string_lossy()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Reads a JSON document stored as text. A document that cannot be read fails like a column
/// that cannot be decoded, everywhere: the read is an error (a `500` for a request, a logged
/// failure for a worker), never a silent default.
pub fn read_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(format!("stored {what} is not readable: {e}").into()))
}

// Scoped statements: every table is keyed by (project, environment), so scoped SQL reserves
// `$1` for the project and `$2` for the environment; callers bind their own values from `$3` on.

/// A scoped statement that returns no rows (or whose rows are not read).
pub fn scoped<'q>(sql: &'q str, scope: &'q Scope) -> Query<'q, Any, AnyArguments<'q>> {
    sqlx::query(sql).bind(&scope.project).bind(scope.environment.as_str())
}

/// A scoped statement whose rows decode into `T` by column name.
pub fn scoped_as<'q, T>(sql: &'q str, scope: &'q Scope) -> QueryAs<'q, Any, T, AnyArguments<'q>>
where
    T: for<'r> FromRow<'r, AnyRow>,
{
    sqlx::query_as(sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
}

/// A scoped statement that returns one value per row, read by position: aggregate columns are
/// named differently by each backend (`count` on Postgres, `COUNT(*)` on SQLite).
pub fn scoped_scalar<'q, T>(sql: &'q str, scope: &'q Scope) -> QueryScalar<'q, Any, T, AnyArguments<'q>>
where
    (T,): for<'r> FromRow<'r, AnyRow>,
{
    sqlx::query_scalar(sql)
        .bind(&scope.project)
        .bind(scope.environment.as_str())
}

/// Runs a statement aimed at one row; `true` when it changed that row (`false`: the row is gone,
/// or a condition in the statement did not hold).
pub async fn changed_one<'q, 'c>(
    ex: impl Exec<'c>,
    query: Query<'q, Any, AnyArguments<'q>>,
) -> Result<bool, sqlx::Error> {
    Ok(query.execute(ex).await?.rows_affected() == 1)
}

/// Runs one batch of a purge: `sql` deletes at most `$2` rows created before `$1`. Returns how
/// many it deleted; fewer than `limit` means none is left.
pub async fn purge_batch<'c>(ex: impl Exec<'c>, sql: &str, before: i64, limit: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(sql)
        .bind(before)
        .bind(limit)
        .execute(ex)
        .await?
        .rows_affected())
}

/// Maps a unique violation to a caller's error (for example a `409`); other errors convert as usual.
pub trait ResultExt<T> {
    /// `f()` when the error violates the unique constraint `constraint`. Postgres names the
    /// constraint; SQLite reports the columns only, so any unique violation matches there.
    fn on_unique<E: From<sqlx::Error>>(self, constraint: &str, f: impl FnOnce() -> E) -> Result<T, E>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_unique<E: From<sqlx::Error>>(self, constraint: &str, f: impl FnOnce() -> E) -> Result<T, E> {
        self.map_err(|err| match &err {
            sqlx::Error::Database(db)
                if db.is_unique_violation() && db.constraint().is_none_or(|c| c == constraint) =>
            {
                f()
            }
            _ => E::from(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_come_from_the_url() {
        assert_eq!(sqlite_path(None), Some(PathBuf::from("polpo.db")));
        assert_eq!(
            sqlite_path(Some("sqlite:///tmp/x.db?mode=rwc")),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path(Some("sqlite::memory:")), None);
        assert_eq!(sqlite_path(Some("postgres://h/db")), None);
    }
}
