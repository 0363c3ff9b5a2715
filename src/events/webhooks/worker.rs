//! The delivery worker (spec §8.3): fans committed events out to delivery records and sends
//! them, in order per webhook, with exponential backoff. All of it is driven from the database,
//! so deliveries survive restarts and several instances share the work through leases.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::destination::{Destination, check_url};
use super::signing::sign;
use crate::clock;
use crate::config::WebhooksConfig;
use crate::events::filter::Filter;
use crate::scope::Scope;
use crate::store::webhooks::{DeliveryRow, ScopedWebhook};
use crate::store::{self, Db};

/// The delivery body: `{id, event, timestamp, data}` in that order.
fn body(delivery: &DeliveryRow) -> Result<String, sqlx::Error> {
    let payload: serde_json::Value = store::read_json(&delivery.payload, "event payload")?;
    let timestamp = payload.get("timestamp").cloned().unwrap_or(serde_json::Value::Null);
    let event = serde_json::Value::String(delivery.event.clone());
    Ok(format!(
        r#"{{"id":"evt_{}","event":{event},"timestamp":{timestamp},"data":{}}}"#,
        delivery.seq, delivery.payload
    ))
}

/// 10 s, 20 s, 40 s, … (from `retry_base`) capped at an hour, ±20 % jitter.
fn backoff(base: Duration, attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let plain = base
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(Duration::from_secs(3600));
    let mut byte = [0u8; 1];
    let jitter = if getrandom::fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0 * 0.4 - 0.2
    } else {
        0.0
    };
    plain.mul_f64(1.0 + jitter)
}

/// How long a worker holds a delivery it is sending.
const LEASE: Duration = Duration::from_secs(60);
/// How often the worker reads every webhook of every scope (new webhooks of other instances,
/// retries that have come due), wake-ups or not.
const TICK: Duration = Duration::from_millis(500);

/// Deliveries in flight at once on one instance, over all webhooks.
const MAX_IN_FLIGHT: usize = 64;

/// What the worker has to look at since it last looked: the scopes with new commits (this
/// instance's and, on Postgres, the others'), and whether a webhook was created here. A commit in a
/// scope without webhooks at the last full read neither wakes the worker nor costs it a read (a
/// chat turn's commit would otherwise wake a second thread for nothing); every webhook of every
/// scope is read again at least every [`TICK`], which is how webhooks created on another instance
/// are found.
#[derive(Default)]
pub struct Pending {
    scopes: Mutex<Scopes>,
    everything: AtomicBool,
    wake: Notify,
}

#[derive(Default)]
struct Scopes {
    /// The scopes that held a webhook at the last full read.
    known: HashSet<Scope>,
    /// Those of them with news since the worker last looked.
    news: HashSet<Scope>,
}

impl Pending {
    /// New events in `scope`, or a delivery of one of its webhooks just sent (the next may be due).
    pub fn scope(&self, scope: &Scope) {
        {
            let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
            // Already noted: the wake-up that noted it has not been taken yet.
            if !scopes.known.contains(scope) || !scopes.news.insert(scope.clone()) {
                return;
            }
        }
        self.wake.notify_one();
    }

    /// A webhook was created: read them all now rather than at the next tick.
    pub fn everything(&self) {
        self.everything.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take(&self) -> (bool, HashSet<Scope>) {
        let scopes = std::mem::take(&mut self.scopes.lock().unwrap_or_else(|p| p.into_inner()).news);
        (self.everything.swap(false, Ordering::AcqRel), scopes)
    }

    /// After a full read: the scopes that hold a webhook now.
    fn known(&self, known: HashSet<Scope>) {
        let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
        scopes.news.retain(|s| known.contains(s));
        scopes.known = known;
    }
}

pub struct Worker {
    pub db: Db,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub settings: WebhooksConfig,
    pub pending: Arc<Pending>,
    pub shutdown: CancellationToken,
    /// Where each delivery runs, tracked for shutdown.
    pub tasks: TaskTracker,
    pub clients: Clients,
}

/// The most of an answer's body a delivery reads (it is not kept).
const ANSWER_READ: usize = 64 * 1024;

/// The longest a delivery waits for the rest of an answer's body once its head has come; a
/// receiver that has answered but keeps its body open does not hold its webhook's next delivery
/// for the whole `webhooks.timeout`.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Clients kept at most; past it the kept ones are dropped (their connections close) and the
/// count starts again.
const CLIENTS_KEPT: usize = 256;

/// The HTTP clients of past deliveries, one per destination host and checked address, so that
/// the deliveries to one place reuse its connections (and TLS sessions) instead of opening one
/// each. A client only ever connects to the address it was made for, which the delivery's own
/// check has just allowed; a host that resolves elsewhere gets another client.
#[derive(Default)]
pub struct Clients {
    kept: Mutex<HashMap<(String, Option<SocketAddr>), reqwest::Client>>,
}

impl Clients {
    /// The client for `destination`, made now if none is kept.
    fn get(&self, destination: &Destination, settings: &WebhooksConfig) -> reqwest::Result<reqwest::Client> {
        let key = (destination.host.clone(), destination.addrs.first().copied());
        if let Some(client) = self.kept.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(client.clone());
        }
        // No proxy from the environment: a proxy would reach the destination by its own lookup,
        // past the address checks.
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        // Connect to the address that was checked, never to a second lookup's answer.
        if destination.host.parse::<IpAddr>().is_err()
            && let Some(addr) = key.1
        {
            builder = builder.resolve(&destination.host, addr);
        }
        let client = builder.build()?;
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= CLIENTS_KEPT {
            kept.clear();
        }
        kept.insert(key, client.clone());
        Ok(client)
    }
}

/// Which webhooks have a delivery in flight here, and the bound on all of them.
#[derive(Default)]
struct InFlight {
    webhooks: Mutex<HashSet<String>>,
}

impl InFlight {
    fn key(w: &ScopedWebhook) -> String {
        format!("{}/{}/{}", w.scope.project, w.scope.environment.as_str(), w.webhook.id)
    }

    /// Marks the webhook busy; `false` when it already was.
    fn start(&self, key: &str) -> bool {
        self.webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
    }

    fn end(&self, key: &str) {
        self.webhooks.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

impl Worker {
    /// Runs until shutdown. Each webhook's deliveries go one at a time, in order, each on its own
    /// task: a slow or hanging endpoint holds up only its own webhook, never another tenant's.
    pub async fn run(self) {
        let worker = Arc::new(self);
        let in_flight = Arc::new(InFlight::default());
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut next_full = TokioInstant::now();
        loop {
            tokio::select! {
                () = worker.shutdown.cancelled() => return,
                () = worker.pending.wake.notified() => {}
                () = tokio::time::sleep_until(next_full) => {}
            }
            let (everything, scopes) = worker.pending.take();
            let webhooks = if everything || TokioInstant::now() >= next_full {
                next_full = TokioInstant::now() + TICK;
                match store::webhooks::all(&worker.db.pool).await {
                    Ok(webhooks) => {
                        worker.pending.known(webhooks.iter().map(|w| w.scope.clone()).collect());
                        webhooks
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook worker cannot read webhooks");
                        continue;
                    }
                }
            } else {
                let mut webhooks = Vec::new();
                for scope in scopes {
                    match store::webhooks::of_scope(&worker.db.pool, &scope).await {
                        Ok(rows) => webhooks.extend(rows.into_iter().map(|webhook| ScopedWebhook {
                            scope: scope.clone(),
                            webhook,
                        })),
                        Err(e) => tracing::warn!(error = %e, "webhook worker cannot read webhooks"),
                    }
                }
                webhooks
            };
            for webhook in &webhooks {
                if let Err(e) = worker.fan_out(webhook).await {
                    tracing::warn!(error = %e, webhook_id = %webhook.webhook.id, "webhook fan-out failed");
                }
            }
            for webhook in webhooks {
                let key = InFlight::key(&webhook);
                if !in_flight.start(&key) {
                    continue;
                }
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    in_flight.end(&key);
                    break;
                };
                let (me, in_flight) = (Arc::clone(&worker), Arc::clone(&in_flight));
                worker.tasks.spawn(async move {
                    let sent = me.deliver_head(&webhook).await;
                    drop(slot);
                    in_flight.end(&key);
                    // The webhook's next delivery may be due at once.
                    if sent {
                        me.pending.scope(&webhook.scope);
                    }
                });
            }
        }
    }

    /// Creates delivery records for events committed after the webhook's cursor.
    async fn fan_out(&self, w: &ScopedWebhook) -> Result<(), sqlx::Error> {
        let batch = store::events::list_after(&self.db.pool, &w.scope, w.webhook.cursor, 500).await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        // Patterns that cannot be read fail the fan-out (logged, retried next round); they never
        // fall back to a filter that would match every event.
        let patterns: Vec<String> = store::read_json(&w.webhook.events, "webhook events")?;
        let filter = Filter::from_patterns(patterns)
            .map_err(|problem| sqlx::Error::Decode(format!("stored webhook events: {problem}").into()))?;
        let now = clock::now_ms();
        let mut tx = self.db.begin().await?;
        // The cursor moves first: it is this transaction's write lock, and it fails when another
        // instance fanned out the same events.
        if !store::webhooks::advance(&mut *tx, &w.scope, &w.webhook.id, w.webhook.cursor, last).await? {
            return Ok(());
        }
        for event in batch.into_iter().filter(|e| filter.matches(&e.name)) {
            let delivery = DeliveryRow {
                seq: event.seq,
                event: event.name,
                payload: event.payload,
                status: "pending".into(),
                attempts: 0,
                last_status_code: None,
                last_error: None,
                last_attempt_at: None,
                next_attempt_at: now,
                duration_ms: None,
                lease_until: 0,
                // The give-up clock starts at the event, not at this fan-out (spec §8.3).
                created_at: event.created_at,
            };
            store::webhooks::insert_delivery(&mut *tx, &w.scope, &w.webhook.id, &delivery).await?;
        }
        tx.commit().await
    }

    /// Sends the webhook's oldest pending delivery when it is due; true when one was sent.
    async fn deliver_head(&self, w: &ScopedWebhook) -> bool {
        let now = clock::now_ms();
        let head = match store::webhooks::head(&self.db.pool, &w.scope, &w.webhook.id).await {
            Ok(Some(head)) if head.next_attempt_at <= now && head.lease_until < now => head,
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "webhook worker cannot read deliveries");
                return false;
            }
        };
        let lease = now + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        match store::webhooks::claim(&self.db.pool, &w.scope, &w.webhook.id, head.seq, now, lease).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "webhook worker cannot claim a delivery");
                return false;
            }
        }
        let mut delivery = head;
        let started = Instant::now();
        let outcome = self.send(w, &delivery).await;
        let finished = clock::now_ms();
        delivery.attempts += 1;
        delivery.last_attempt_at = Some(finished);
        delivery.duration_ms = Some(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX));
        match outcome {
            Ok(status) => {
                delivery.status = "succeeded".into();
                delivery.last_status_code = Some(i64::from(status));
                delivery.last_error = None;
            }
            Err((status, error)) => {
                delivery.last_status_code = status.map(i64::from);
                delivery.last_error = Some(error);
                let give_up_at =
                    delivery.created_at + i64::try_from(self.settings.give_up_after.as_millis()).unwrap_or(i64::MAX);
                let wait =
                    i64::try_from(backoff(self.settings.retry_base, delivery.attempts).as_millis()).unwrap_or(i64::MAX);
                if finished.saturating_add(wait) > give_up_at {
                    delivery.status = "failed".into();
                } else {
                    delivery.next_attempt_at = finished + wait;
                }
            }
        }
        let outcome = match delivery.status.as_str() {
            "pending" => "retrying",
            other => other,
        };
        self.metrics
            .add(crate::metrics::WEBHOOK_DELIVERIES, &[("outcome", outcome)], 1.0);
        if let Err(e) = store::webhooks::record(&self.db.pool, &w.scope, &w.webhook.id, lease, &delivery).await {
            tracing::warn!(error = %e, "webhook worker cannot record a delivery");
        }
        true
    }

    /// One attempt; `Ok(status)` for a 2xx, else the status (if any) and what went wrong.
    async fn send(&self, w: &ScopedWebhook, delivery: &DeliveryRow) -> Result<u16, (Option<u16>, String)> {
        let destination = check_url(&w.webhook.url, &self.settings)
            .await
            .map_err(|e| (None, format!("refused: {e}")))?;
        let client = self
            .clients
            .get(&destination, &self.settings)
            .map_err(|e| (None, format!("client: {e}")))?;
        let body = body(delivery).map_err(|e| (None, format!("the stored event cannot be read: {e}")))?;
        let signature = sign(&w.webhook.secret, clock::now_ms() / 1000, &body);
        let mut response = client
            .post(destination.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("polpo-webhooks/", env!("CARGO_PKG_VERSION")))
            .header("polpo-event", &delivery.event)
            .header("polpo-delivery", format!("evt_{}", delivery.seq))
            .header("polpo-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| (None, describe(&e)))?;
        let status = response.status();
        // The answer's body is read, up to a size and a time, so that its connection can carry
        // the next delivery; the connection of a longer or slower one closes.
        let _ = tokio::time::timeout(ANSWER_WAIT, async {
            let mut read = 0;
            while read <= ANSWER_READ
                && let Ok(Some(chunk)) = response.chunk().await
            {
                read += chunk.len();
            }
        })
        .await;
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err((Some(status.as_u16()), format!("answered {}", status.as_u16())))
        }
    }
}

/// A transport error described without its URL.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "body error"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        let base = Duration::from_secs(10);
        for (attempts, expected) in [(1, 10.0), (2, 20.0), (3, 40.0), (20, 3600.0)] {
            let wait = backoff(base, attempts).as_secs_f64();
            assert!(
                wait >= expected * 0.8 - 0.01 && wait <= expected * 1.2 + 0.01,
                "{attempts}: {wait}"
            );
        }
    }
}
