//! The runtime context: everything business rules need to act, and nothing of HTTP. Handlers get
//! it from `AppState`; a background worker holds it alone, with no request behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::Change;
use crate::events::group::GroupCommit;
use crate::events::hub::Hub;
use crate::metrics::Metrics;
use crate::providers::{Clients, Providers};
use crate::scope::Scope;
use crate::store::Db;

/// Cheap to clone: one shared allocation, reached through `Deref` (a request clones it several
/// times, and some members, such as the provider clients' map, would allocate on every copy).
#[derive(Clone)]
pub struct Runtime(Arc<Members>);

/// What a [`Runtime`] shares.
pub struct Members {
    pub db: Db,
    /// Live fan-out of the event log.
    pub hub: Arc<Hub>,
    /// The write path for small, frequent changes (chat turns), committed many per transaction.
    pub group: Arc<GroupCommit>,
    pub providers: Arc<Providers>,
    /// One client per usable provider.
    pub clients: Clients,
    pub metrics: Arc<Metrics>,
    /// Settings, limits and timeouts.
    pub config: Arc<Config>,
    /// Cancelled when the server starts draining (spec §10.5).
    pub shutdown: CancellationToken,
    /// Cancelled when the shutdown deadline is reached: work still running stops and saves
    /// what it has.
    pub hard_stop: CancellationToken,
    /// Every task spawned beside the requests (chat turns, feeds, workers), so that shutdown
    /// can wait for them to save and release what they hold.
    pub tasks: TaskTracker,
    /// What chat turns read of agents, on SQLite (see `agents::AgentCache`).
    pub agent_cache: Arc<super::agents::AgentCache>,
}

/// How often an event feed re-reads the log without a wake-up (spec §7.5: under 5 s even when
/// notifications are lost).
const EVENT_TICK: Duration = Duration::from_secs(1);

impl std::ops::Deref for Runtime {
    type Target = Members;

    fn deref(&self) -> &Members {
        &self.0
    }
}

impl Runtime {
    pub fn new(db: Db, config: Config, providers: Providers) -> Result<Self, String> {
        let clients = Clients::build(&providers, &config.upstream)?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let hub = Hub::new(
            db.clone(),
            config.events.subscriber_buffer,
            EVENT_TICK,
            shutdown.clone(),
            tasks.clone(),
        );
        let hub = Arc::new(hub);
        let metrics = Arc::new(Metrics::default());
        Ok(Self(Arc::new(Members {
            group: Arc::new(GroupCommit::new(
                db.clone(),
                Arc::clone(&hub),
                Arc::clone(&metrics),
                tasks.clone(),
            )),
            hub,
            agent_cache: Arc::new(super::agents::AgentCache::new(db.backend)),
            db,
            providers: Arc::new(providers),
            clients,
            metrics,
            config: Arc::new(config),
            shutdown,
            hard_stop: CancellationToken::new(),
            tasks,
        })))
    }

    /// Runs `work` as a tracked task.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Opens the single write path for a change of `scope` that emits events.
    pub async fn change(&self, scope: &Scope) -> Result<Change, sqlx::Error> {
        Change::begin(&self.db, &self.hub, scope).await
    }

    /// The write path for a change whose scope it learns from what it reads first.
    pub async fn change_unscoped(&self) -> Result<Change, sqlx::Error> {
        Change::begin_unscoped(&self.db, &self.hub).await
    }

    /// After the server stopped: lets tracked work end, waiting at most `within`. True when
    /// everything ended in time.
    pub async fn drain(&self, within: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait()).await.is_ok()
    }
}
