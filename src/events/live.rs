//! The agent text of running tasks, live (spec §5.6): the text is not an event and is not
//! stored, so it travels beside the log. Within an instance it is broadcast per task; on
//! Postgres it is relayed between instances by NOTIFY, in batches, so that a client following a
//! task on one instance sees the text of an attempt running on another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::scope::Scope;
use crate::store::{self, Db};

/// The Postgres channel of relayed text: `origin\nproject/environment/task\ntext`.
pub const CHANNEL: &str = "polpo_task_text";
/// How long text waits to be relayed with more.
const RELAY_EVERY: Duration = Duration::from_millis(50);
/// NOTIFY payloads must stay under 8000 bytes.
const RELAY_MAX_BYTES: usize = 7000;
/// Text chunks a slow follower may fall behind before it skips ahead.
const FOLLOWER_BUFFER: usize = 1024;

enum Relay {
    Text { key: String, text: String },
    Flush { key: String, done: oneshot::Sender<()> },
}

pub struct LiveText {
    /// This instance, so that its own relayed text is not delivered twice.
    origin: String,
    senders: Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>,
    relay: Mutex<Option<mpsc::UnboundedSender<Relay>>>,
}

/// A follower of one task's text; dropping it unsubscribes.
pub struct Follower {
    pub text: broadcast::Receiver<Arc<str>>,
    live: Arc<LiveText>,
    key: String,
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut senders = self.live.senders.lock().unwrap_or_else(|p| p.into_inner());
        // This follower's receiver is still counted while it is being dropped.
        if senders.get(&self.key).is_some_and(|s| s.receiver_count() <= 1) {
            senders.remove(&self.key);
        }
    }
}

pub fn key(scope: &Scope, task_id: &str) -> String {
    format!("{}/{}/{task_id}", scope.project, scope.environment.as_str())
}

impl LiveText {
    pub fn new() -> Self {
        Self {
            origin: crate::ids::new_id("ins_"),
            senders: Mutex::default(),
            relay: Mutex::default(),
        }
    }

    pub fn follow(self: &Arc<Self>, key: String) -> Follower {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let text = senders
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(FOLLOWER_BUFFER).0)
            .subscribe();
        Follower {
            text,
            live: Arc::clone(self),
            key,
        }
    }

    fn deliver(&self, key: &str, text: &str) {
        let senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = senders.get(key) {
            let _ = sender.send(Arc::from(text));
        }
    }

    /// Text of a running attempt: to this instance's followers at once, to the others' through
    /// the relay (Postgres only).
    pub fn publish(&self, key: &str, text: &str) {
        self.deliver(key, text);
        if let Some(relay) = self.relay.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = relay.send(Relay::Text {
                key: key.to_string(),
                text: text.to_string(),
            });
        }
    }

    /// Waits until the task's text so far has been relayed, so that it reaches other
    /// instances before the events that follow it.
    pub async fn flush(&self, key: &str) {
        let (done, wait) = oneshot::channel();
        let sent = self
            .relay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|relay| {
                relay
                    .send(Relay::Flush {
                        key: key.to_string(),
                        done,
                    })
                    .is_ok()
            });
        if sent {
            let _ = wait.await;
        }
    }

    /// A notification of [`CHANNEL`] from any instance.
    pub fn relayed(&self, payload: &str) {
        let mut parts = payload.splitn(3, '\n');
        let (Some(origin), Some(key), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if origin != self.origin {
            self.deliver(key, text);
        }
    }

    /// On Postgres: starts relaying published text; returns the relay loop to run as a tracked
    /// task.
    pub fn start_relay(self: &Arc<Self>, db: Db, shutdown: CancellationToken) -> impl Future<Output = ()> + use<> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        relay(db, self.origin.clone(), rx, shutdown)
    }
}

impl Default for LiveText {
    fn default() -> Self {
        Self::new()
    }
}

async fn send(db: &Db, origin: &str, key: &str, text: &str) {
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(RELAY_MAX_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let payload = format!("{origin}\n{key}\n{}", &rest[..end]);
        if let Err(e) = store::events::notify_channel(&db.pool, CHANNEL, &payload).await {
            tracing::debug!(error = %e, "could not relay task text");
            return;
        }
        rest = &rest[end..];
    }
}

async fn relay(db: Db, origin: String, mut rx: mpsc::UnboundedReceiver<Relay>, shutdown: CancellationToken) {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut every = tokio::time::interval(RELAY_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                for (key, text) in pending.drain() {
                    send(&db, &origin, &key, &text).await;
                }
            }
            message = rx.recv() => match message {
                None => return,
                Some(Relay::Text { key, text }) => pending.entry(key).or_default().push_str(&text),
                Some(Relay::Flush { key, done }) => {
                    if let Some(text) = pending.remove(&key) {
                        send(&db, &origin, &key, &text).await;
                    }
                    let _ = done.send(());
                }
            },
        }
    }
}
