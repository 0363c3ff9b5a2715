//! Live fan-out of the event log within one instance (spec §7.5). The events table is the source
//! of truth: one feed task per active scope re-reads it after every wake-up (a local commit, a
//! Postgres NOTIFY from another instance, or a periodic tick) and hands each new event to the
//! scope's subscribers. A subscriber whose buffer is full is dropped, never waited for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::scope::{Environment, Scope};
use crate::store::{self, Backend, Db};

/// An event as stored: sequence number, name and payload JSON text.
pub use crate::store::events::EventRow as StoredEvent;

type ScopeKey = (String, Environment);

/// An event as the feed hands it to every subscriber of its scope: the stored row, and the bytes
/// its readers write, made by the first reader that writes it and shared by the others.
pub struct LiveEvent {
    row: StoredEvent,
    wire: OnceLock<Bytes>,
}

impl LiveEvent {
    /// The event's wire form, made by `render` for the first reader that asks.
    pub fn wire(&self, render: impl FnOnce(&StoredEvent) -> Bytes) -> Bytes {
        self.wire.get_or_init(|| render(&self.row)).clone()
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = StoredEvent;

    fn deref(&self) -> &StoredEvent {
        &self.row
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<LiveEvent>>,
}

struct Feed {
    scope: Scope,
    subscribers: Mutex<Vec<Subscriber>>,
    wake: Notify,
}

pub struct Hub {
    db: Db,
    buffer: usize,
    /// Longest a feed sleeps without a wake-up: the bound on latency when notifications are lost.
    tick: Duration,
    feeds: Mutex<HashMap<ScopeKey, Arc<Feed>>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The scopes with new events, for the webhook worker.
    pub webhooks: Arc<super::webhooks::worker::Pending>,
    /// Woken by commits that can make a task runnable (a task created or moved, locally), and
    /// by every commit of another instance (whose events are not known here): the task runner
    /// looks for work then.
    pub runnable: Arc<Notify>,
    /// Woken by commits that can move a mission run on (a run's task changing status, a hold
    /// released), locally, and by every commit of another instance: the mission driver looks
    /// then.
    pub missions: Arc<Notify>,
    /// The agent text of running tasks, which travels beside the log.
    pub live: Arc<super::live::LiveText>,
    /// Scopes with new commits to announce to other instances (Postgres only).
    announcements: Mutex<Option<mpsc::UnboundedSender<Scope>>>,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    pub events: mpsc::Receiver<Arc<LiveEvent>>,
    feed: Arc<Feed>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self.feed.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.id != self.id);
    }
}

fn key(scope: &Scope) -> ScopeKey {
    (scope.project.clone(), scope.environment)
}

impl Hub {
    pub fn new(db: Db, buffer: usize, tick: Duration, shutdown: CancellationToken, tasks: TaskTracker) -> Self {
        Self {
            db,
            buffer: buffer.max(1),
            tick,
            feeds: Mutex::default(),
            next_id: AtomicU64::new(0),
            shutdown,
            tasks,
            webhooks: Arc::default(),
            runnable: Arc::new(Notify::new()),
            missions: Arc::new(Notify::new()),
            live: Arc::new(super::live::LiveText::new()),
            announcements: Mutex::default(),
        }
    }

    /// Subscribes to events of `scope` committed from now on (the feed's cursor); the caller
    /// reads any backlog from the table itself, after subscribing, and drops duplicates by seq.
    pub async fn subscribe(self: &Arc<Self>, scope: &Scope) -> Result<Subscription, sqlx::Error> {
        let (tx, rx) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Subscriber { id, tx };
        // Attaching happens under the map lock, which a feed also holds to retire: a subscriber
        // is never attached to a feed that has already stopped.
        let subscriber = match self.attach(scope, subscriber) {
            Ok(feed) => return Ok(Subscription { events: rx, feed, id }),
            Err(subscriber) => subscriber,
        };
        let start = store::events::latest(&self.db.pool, scope).await?;
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let feed = match feeds.get(&key(scope)) {
            Some(feed) => feed.clone(),
            None => {
                let feed = Arc::new(Feed {
                    scope: scope.clone(),
                    subscribers: Mutex::default(),
                    wake: Notify::new(),
                });
                feeds.insert(key(scope), feed.clone());
                self.tasks.spawn(Arc::clone(self).run_feed(feed.clone(), start));
                feed
            }
        };
        feed.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(subscriber);
        Ok(Subscription { events: rx, feed, id })
    }

    fn attach(&self, scope: &Scope, subscriber: Subscriber) -> Result<Arc<Feed>, Subscriber> {
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        match feeds.get(&key(scope)) {
            Some(feed) => {
                feed.subscribers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(subscriber);
                Ok(feed.clone())
            }
            None => Err(subscriber),
        }
    }

    /// Called after a commit that wrote events of `scope`.
    pub fn wake(&self, scope: &Scope) {
        self.webhooks.scope(scope);
        if let Some(feed) = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).get(&key(scope)) {
            feed.wake.notify_one();
        }
    }

    /// Tells the other instances (Postgres) that `scope` has new events, after the commit.
    pub fn announce(&self, scope: &Scope) {
        if let Some(tx) = self.announcements.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(scope.clone());
        }
    }

    /// On Postgres: starts sending announcements; returns the loop to run as a tracked task.
    /// Scopes queued while a NOTIFY is sent go out together, one NOTIFY per scope, so a burst
    /// of commits costs a few notifications, not one each.
    pub fn start_announcing(&self) -> impl Future<Output = ()> + use<> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Scope>();
        *self.announcements.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let (db, shutdown) = (self.db.clone(), self.shutdown.clone());
        async move {
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => return,
                    first = rx.recv() => match first {
                        Some(scope) => scope,
                        None => return,
                    },
                };
                let mut scopes = vec![first];
                while let Ok(more) = rx.try_recv() {
                    if !scopes.contains(&more) {
                        scopes.push(more);
                    }
                }
                for scope in &scopes {
                    if let Err(e) = store::events::notify(&db.pool, scope).await {
                        tracing::debug!(error = %e, "could not announce events; other instances poll");
                    }
                }
            }
        }
    }

    fn wake_all(&self) {
        for feed in self.feeds.lock().unwrap_or_else(|p| p.into_inner()).values() {
            feed.wake.notify_one();
        }
    }

    async fn run_feed(self: Arc<Self>, feed: Arc<Feed>, mut cursor: i64) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = feed.wake.notified() => {}
                () = tokio::time::sleep(self.tick) => {}
            }
            if self.retire_if_idle(&feed) {
                return;
            }
            loop {
                let batch = match store::events::list_after(&self.db.pool, &feed.scope, cursor, 500).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::warn!(error = %e, "event feed could not read the log; retrying");
                        break;
                    }
                };
                let Some(last) = batch.last() else { break };
                cursor = last.seq;
                let full = batch.len() == 500;
                let events: Vec<Arc<LiveEvent>> = batch
                    .into_iter()
                    .map(|row| {
                        Arc::new(LiveEvent {
                            row,
                            wire: OnceLock::new(),
                        })
                    })
                    .collect();
                let mut subscribers = feed.subscribers.lock().unwrap_or_else(|p| p.into_inner());
                // A subscriber that cannot take an event is disconnected; it resumes by id.
                subscribers.retain(|s| events.iter().all(|e| s.tx.try_send(Arc::clone(e)).is_ok()));
                if !full {
                    break;
                }
            }
        }
        self.feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(&feed.scope));
    }

    /// Removes the feed when nobody listens any more; true when it did.
    fn retire_if_idle(&self, feed: &Arc<Feed>) -> bool {
        let mut feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner());
        let idle = feed.subscribers.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if idle {
            feeds.remove(&key(&feed.scope));
        }
        idle
    }

    /// On Postgres: listens for other instances' commits and wakes the matching feeds; after a
    /// reconnect every feed re-reads, since notifications may have been lost meanwhile.
    pub async fn listen_postgres(self: Arc<Self>, url: String) {
        if self.db.backend != Backend::Postgres {
            return;
        }
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "event listener cannot connect; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(e) = listener
                .listen_all([store::events::CHANNEL, super::live::CHANNEL])
                .await
            {
                tracing::warn!(error = %e, "event listener cannot LISTEN; retrying");
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            self.wake_all();
            loop {
                let next = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(notification)) if notification.channel() == super::live::CHANNEL => {
                        self.live.relayed(notification.payload());
                    }
                    Ok(Some(notification)) => {
                        if let Some(scope) = store::events::notified_scope(notification.payload()) {
                            self.wake(&scope);
                            self.runnable.notify_one();
                            self.missions.notify_one();
                        }
                    }
                    // The connection dropped and will be re-established: re-read everything.
                    Ok(None) => self.wake_all(),
                    Err(e) => {
                        tracing::warn!(error = %e, "event listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}
