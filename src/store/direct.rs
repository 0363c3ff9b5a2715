//! SQLite writes made on the calling thread. sqlx runs each SQLite connection on a thread of its
//! own and hands every call to it and its answer back; a write then waits for two thread
//! wake-ups besides its own work. A file database also gets a second connection, opened here,
//! that the group commit writes through directly. Its transaction holds the thread for the write
//! alone (tens of microseconds for one turn, a few milliseconds for a full batch; longer only
//! when the file system holds a write up), and it never waits for a lock while holding the
//! thread (see [`Direct::transaction`]).
//!
//! Two connections that write must not run into each other's transactions. Every transaction on
//! the pool's connection holds the lock of this one ([`super::Db::begin`]), so the two take turns
//! in an async queue; a statement written on the pool outside a transaction waits for the write
//! lock with SQLite's busy handler, as before.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};

use super::script::Slots;

/// The longest a write waits for the database file's write lock, held by another process, before
/// the database counts as unavailable.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// The connection's page cache, in KiB (SQLite's default is 2000). It writes the pages that
/// inserts at the end of a table and its indexes touch; the pool's connection does the reads.
const CACHE_KIB: u32 = 512;

/// Statements kept prepared: the shapes of a turn's writes, by number of messages.
const PREPARED_STATEMENTS: usize = 64;

/// Commits after which [`Direct::filled`] wakes the WAL's checkpoints before their next tick. A
/// lone turn's commit adds 9 to 12 pages to the WAL, and a saturated server's about 17 (some six
/// turns of about three pages each, bench/RESULTS.md): 128 commits are 1,200 to 2,200 pages, a
/// twentieth of a second of a saturated server's commits, far from the 10,000 at which a commit
/// would copy the WAL itself.
const COMMITS_PER_CHECKPOINT: u32 = 128;

/// The second connection to a SQLite file, for writes made on the calling thread.
#[derive(Clone)]
pub struct Direct {
    conn: Arc<Mutex<Conn>>,
    commits: Arc<Commits>,
}

/// Commits counted for [`Direct::filled`].
#[derive(Default)]
struct Commits {
    count: AtomicU32,
    many: Notify,
}

/// The connection, with the parameters of the statements it ran lately.
struct Conn {
    conn: Connection,
    slots: Slots,
}

/// The turn of a transaction on the pool's connection; the direct connection writes again once
/// it is dropped.
pub struct Gate {
    _turn: OwnedMutexGuard<Conn>,
}

impl Direct {
    /// Opens the file (already migrated to WAL by the pool's connection) with the settings of the
    /// pool's connection, except the busy handler: a busy database is waited for without holding
    /// the thread.
    pub fn open(path: &Path, wal_autocheckpoint: u32) -> Result<Self, sqlx::Error> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::ZERO)?;
            conn.execute_batch(&format!(
                "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = {wal_autocheckpoint}; PRAGMA cache_size = -{CACHE_KIB};"
            ))?;
            conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
            Ok(conn)
        };
        Ok(Self {
            conn: Arc::new(Mutex::new(Conn {
                conn: open().map_err(error)?,
                slots: Slots::default(),
            })),
            commits: Arc::default(),
        })
    }

    /// Waits for the turn of a transaction on the pool's connection.
    pub async fn gate(&self) -> Gate {
        Gate {
            _turn: Arc::clone(&self.conn).lock_owned().await,
        }
    }

    /// Waits until this connection has committed [`COMMITS_PER_CHECKPOINT`] transactions since
    /// the last time this returned (or since it was opened), and starts counting again.
    pub async fn filled(&self) {
        self.commits.many.notified().await;
        self.commits.count.store(0, Ordering::Relaxed);
    }

    /// Runs `write` in one `BEGIN IMMEDIATE` transaction on the calling thread and commits it;
    /// an `Err` from `write` rolls it back. `write` gets the connection's [`Slots`] for its
    /// statements. While another process holds the file's write lock, the lock is asked for
    /// again after a pause that doubles from a millisecond, with the thread free meanwhile;
    /// `write` runs once, when the transaction holds the lock.
    pub async fn transaction<T>(
        &self,
        write: impl FnOnce(&Transaction<'_>, &mut Slots) -> rusqlite::Result<T>,
    ) -> Result<T, sqlx::Error> {
        let deadline = Instant::now() + BUSY_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt = {
                let mut turn = self.conn.lock().await;
                let Conn { conn, slots } = &mut *turn;
                match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
                    Ok(tx) => {
                        let written = write(&tx, slots)
                            .and_then(|out| tx.commit().map(|()| out))
                            .map_err(error);
                        if written.is_ok()
                            && self.commits.count.fetch_add(1, Ordering::Relaxed) + 1 == COMMITS_PER_CHECKPOINT
                        {
                            self.commits.many.notify_one();
                        }
                        return written;
                    }
                    Err(e) => e,
                }
            };
            if !busy(&attempt) || Instant::now() + pause > deadline {
                return Err(error(attempt));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// The error as sqlx reports the pool connection's: a busy or unreachable file as a connection
/// failure (`503`), a statement the database refuses as a database error.
fn error(e: rusqlite::Error) -> sqlx::Error {
    let Some(code) = e.sqlite_error_code() else {
        return sqlx::Error::Protocol(e.to_string());
    };
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => sqlx::Error::PoolTimedOut,
        ErrorCode::CannotOpen
        | ErrorCode::SystemIoFailure
        | ErrorCode::DiskFull
        | ErrorCode::ReadOnly
        | ErrorCode::NotADatabase
        | ErrorCode::DatabaseCorrupt => sqlx::Error::Io(std::io::Error::other(e.to_string())),
        _ => sqlx::Error::Database(Box::new(Refused {
            extended_code: match &e {
                rusqlite::Error::SqliteFailure(failure, _) => Some(failure.extended_code),
                _ => None,
            },
            message: e.to_string(),
        })),
    }
}

/// A statement the database refused.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Refused {
    /// SQLite's extended result code, which sqlx reports as the error's code.
    extended_code: Option<std::ffi::c_int>,
    message: String,
}

impl sqlx::error::DatabaseError for Refused {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.extended_code.map(|code| Cow::Owned(code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        use sqlx::error::ErrorKind;
        match self.extended_code {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => ErrorKind::UniqueViolation,
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
