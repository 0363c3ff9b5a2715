//! Work that runs beside the requests until shutdown, every loop a tracked task: the Postgres
//! listener that wakes event feeds for other instances' commits, the webhook delivery worker,
//! the task runner, the mission driver, the retention purge (old events and deliveries, empty
//! chat sessions), the WAL checkpoints of a SQLite file, and the allocator trim that gives back
//! what a burst of requests used.

use std::sync::Arc;
use std::time::Duration;

use super::Runtime;
use crate::events::webhooks::Worker;
use crate::store;

/// How often expired events are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Rows one statement of the purge deletes at most. On SQLite a statement holds the database's
/// write lock while it runs, and every turn's commit waits for it: the events of one minute at
/// 100 turns a second (24,000 rows) took 124 ms to delete in one statement, a thousand of them
/// a few milliseconds (bench/RESULTS.md, item 42).
const PURGE_BATCH: u32 = 1000;

/// How often the WAL of a SQLite file is copied back into the file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// How often the memory in use is compared with its peak (`crate::heap`).
const HEAP_CHECK_EVERY: Duration = Duration::from_secs(1);

impl Runtime {
    pub fn start_background(&self) {
        if let Some(url) = self.config.database.url.clone() {
            self.spawn(Arc::clone(&self.hub).listen_postgres(url));
        }
        if self.db.backend == store::Backend::Postgres {
            self.spawn(self.hub.live.start_relay(self.db.clone(), self.shutdown.clone()));
            self.spawn(self.hub.start_announcing());
        }
        let worker = Worker {
            db: self.db.clone(),
            metrics: Arc::clone(&self.metrics),
            settings: self.config.webhooks.clone(),
            pending: Arc::clone(&self.hub.webhooks),
            shutdown: self.shutdown.clone(),
            tasks: self.tasks.clone(),
            clients: Default::default(),
        };
        self.spawn(worker.run());
        self.spawn(purge(self.clone()));
        self.spawn(trim_heap(self.clone()));
        if self.db.backend == store::Backend::Sqlite {
            self.spawn(checkpoint_wal(self.clone()));
        }
        self.spawn(super::tasks::runner::run(self.clone()));
        self.spawn(super::missions::driver::run(self.clone()));
    }
}

/// Copies the WAL of a SQLite file back into the file twice a second, and sooner whenever the
/// commits have added one to two thousand pages to it (`store::Db::wal_filled`), on a connection
/// of its own; then finishes the copy and starts the WAL again from its beginning, with the
/// writes held for that moment (`store::finish_checkpoint`). Left to the writing connections,
/// the copy (and its fsyncs) would run inside whichever commit crossed the WAL's size mark, on a
/// request's worker, and the restart (with the fsync of the WAL's new header) inside the first
/// commit after the copy; those turns, and every turn whose commit comes after theirs, would wait
/// for them.
async fn checkpoint_wal(rt: Runtime) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = None;
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => break,
            _ = every.tick() => {}
            () = rt.db.wal_filled() => {}
        }
        if conn.is_none() {
            conn = match store::checkpoint_connection(&rt.db).await {
                Ok(Some(opened)) => Some(opened),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open a connection for WAL checkpoints; retrying");
                    continue;
                }
            };
        }
        let Some(open) = conn.as_mut() else { continue };
        let finished = match store::checkpoint(open).await {
            Ok(done) => {
                tracing::trace!(pages = done.copied, "WAL checkpoint");
                // A WAL of one frame holds only the last restart's write: nothing was written
                // since, and an idle server writes nothing.
                if done.frames > 1 {
                    store::finish_checkpoint(&rt.db, open).await
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            tracing::warn!(error = %e, "WAL checkpoint or restart failed; reconnecting");
            conn = None;
        }
    }
    if let Some(open) = conn {
        let _ = sqlx::Connection::close(open).await;
    }
}

/// Gives the system back the memory a burst used, once the memory in use has fallen far below
/// its peak (`crate::heap`). The trim walks the allocator's arenas, so it runs on a blocking
/// thread, not on a request's worker.
async fn trim_heap(rt: Runtime) {
    let mut trim = crate::heap::Trim::default();
    let mut every = tokio::time::interval(HEAP_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let checked;
        (trim, checked) = match tokio::task::spawn_blocking(move || {
            let trimmed = trim.tick();
            (trim, trimmed)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "heap trim failed");
                return;
            }
        };
        if let Some(in_use) = checked {
            tracing::debug!(in_use_bytes = in_use, "gave freed memory back to the system");
        }
    }
}

/// Deletes events and webhook deliveries past `events.retention` (spec §7.3 rule 4), idempotency
/// records past `idempotency.ttl` (§1.8), and chat sessions that stayed empty past
/// `sessions.empty_retention`: once at start, then every minute.
async fn purge(rt: Runtime) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            () = rt.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        rt.purge_expired(PURGE_BATCH).await;
    }
}

impl Runtime {
    /// One pass of the retention purge, each table in statements of at most `batch` rows.
    pub async fn purge_expired(&self, batch: u32) {
        let now = crate::clock::now_ms();
        let cutoff = |kept: Duration| now.saturating_sub(crate::clock::duration_ms(kept));
        let retained = cutoff(self.config.events.retention);
        let statements = [
            (store::events::PURGE, retained, "events past retention"),
            (
                store::webhooks::PURGE_DELIVERIES,
                retained,
                "webhook deliveries past retention",
            ),
            (
                store::idempotency::PURGE,
                cutoff(self.config.idempotency.ttl),
                "expired idempotency records",
            ),
            // A session whose first call failed before the provider answered stays empty; it
            // is kept for a while so that the client can retry in it (spec §3.6 rule 5).
            (
                store::chat::PURGE_EMPTY_SESSIONS,
                cutoff(self.config.sessions.empty_retention),
                "empty chat sessions",
            ),
        ];
        for (sql, before, what) in statements {
            match self.purge_all(sql, before, batch).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "purged {what}"),
                Err(e) => tracing::warn!(error = %e, "purge of {what} failed"),
            }
        }
    }

    /// Runs the purge statement `sql` (see [`store::purge_batch`]) until it deletes fewer
    /// than `batch` rows or the server shuts down; returns how many rows it deleted in all. Each
    /// statement is a transaction of its own, which on SQLite takes its turn with the turns'
    /// commits on the direct connection ([`store::Db::begin`]): those queued meanwhile write
    /// before the next statement, instead of asking SQLite for its lock again and again.
    async fn purge_all(&self, sql: &str, before: i64, batch: u32) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let n = store::purge_batch(&mut *tx, sql, before, i64::from(batch)).await?;
            tx.commit().await?;
            deleted += n;
            if n < u64::from(batch) || self.shutdown.is_cancelled() {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }
}
