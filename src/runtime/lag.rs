//! Whether the server runs behind its work. When more chat turns arrive than the processor can
//! serve, their tasks wait for the runtime's workers, where no count of the database's backlog
//! sees them. Each worker keeps up to 256 ready tasks of its own and moves half of them to the
//! runtime's shared queue when it has more: a server keeping up, even saturated, has almost none
//! there (at most one in the saturation runs of `bench/RESULTS.md`), one falling behind has
//! thousands. A new turn is refused with `503` and `Retry-After` while more than [`QUEUED`] wait
//! there, so that an overload is answered at once instead of queueing without bound.

/// Ready tasks in the runtime's shared queue past which new turns are refused.
pub const QUEUED: usize = 128;

/// Whether more than [`QUEUED`] ready tasks wait in the runtime's shared queue.
pub fn behind() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|handle| handle.metrics().global_queue_depth() > QUEUED)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn ready_tasks_the_workers_cannot_reach_make_the_server_behind_until_they_run() {
        assert!(!behind());
        // Tasks handed to the runtime from another thread wait in the shared queue while this
        // runtime's only thread is busy here.
        let handle = tokio::runtime::Handle::current();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..=QUEUED {
                    drop(handle.spawn(async {}));
                }
            });
        });
        assert!(behind(), "{} tasks waiting", handle.metrics().global_queue_depth());
        let deadline = Instant::now() + Duration::from_secs(5);
        while behind() && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert!(!behind(), "still behind after they ran");
    }
}
