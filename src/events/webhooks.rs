//! Webhook delivery (spec §8): destination checks, signatures, and the worker that fans events
//! out to delivery records and sends them, in order per webhook, with exponential backoff. All
//! of it is driven from the database, so deliveries survive restarts and several instances
//! share the work through leases.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::filter::Filter;
use crate::clock;
use crate::config::WebhooksConfig;
use crate::ids::random_base62;
use crate::store::webhooks::{DeliveryRow, ScopedWebhook};
use crate::store::{self, Db};

/// `whsec_` + 32 base62 characters.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    Ok(format!("whsec_{}", random_base62(32)?))
}

/// The `Polpo-Signature` value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed
/// with the whole secret's bytes.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm cannot be reached.
        Err(_) => return format!("t={t},v1="),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Cloud metadata endpoints: refused whatever the configuration says.
fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets() == [169, 254, 169, 254],
        IpAddr::V6(v6) => v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
    }
}

/// Why an address is not a public destination (spec §8.2), or `None` when it is.
fn private_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("carrier-grade NAT")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_reason(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

/// Refuses an address as a destination; metadata addresses always, the rest unless private
/// networks are allowed.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), String> {
    if is_metadata(ip) {
        return Err(format!("{ip} is a cloud metadata address"));
    }
    match private_reason(ip) {
        Some(reason) if !allow_private => Err(format!("{ip} is a {reason} address")),
        _ => Ok(()),
    }
}

/// A destination that passed the checks: the URL and the addresses it may be reached at.
#[derive(Debug)]
pub struct Destination {
    pub url: reqwest::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Parses and checks a webhook URL, resolving its host (spec §8.2). The error is a sentence for
/// the client.
pub async fn check_url(text: &str, settings: &WebhooksConfig) -> Result<Destination, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    match url.scheme() {
        "https" => {}
        "http" if settings.allow_http_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) => {}
        "http" => return Err(format!("http is not allowed for {host}; use https")),
        other => return Err(format!("the scheme {other} is not allowed; use https")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL must not carry credentials".into());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| format!("the host {host} does not resolve"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("the host {host} does not resolve"));
    }
    for addr in &addrs {
        check_address(addr.ip(), settings.allow_private_networks)?;
    }
    Ok(Destination { url, host, addrs })
}

/// The delivery body: `{id, event, timestamp, data}` in that order.
fn body(delivery: &DeliveryRow) -> String {
    let payload: serde_json::Value = serde_json::from_str(&delivery.payload).unwrap_or(serde_json::Value::Null);
    let timestamp = payload.get("timestamp").cloned().unwrap_or(serde_json::Value::Null);
    let event = serde_json::Value::String(delivery.event.clone());
    format!(
        r#"{{"id":"evt_{}","event":{event},"timestamp":{timestamp},"data":{}}}"#,
        delivery.seq, delivery.payload
    )
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
/// How often the worker looks for work without a wake-up.
const TICK: Duration = Duration::from_millis(500);

pub struct Worker {
    pub db: Db,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub settings: WebhooksConfig,
    pub wake: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl Worker {
    pub async fn run(self) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            let webhooks = match store::webhooks::all(&self.db.pool).await {
                Ok(webhooks) => webhooks,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook worker cannot read webhooks");
                    continue;
                }
            };
            for webhook in &webhooks {
                if let Err(e) = self.fan_out(webhook).await {
                    tracing::warn!(error = %e, webhook_id = %webhook.webhook.id, "webhook fan-out failed");
                }
            }
            let sends = webhooks.iter().map(|w| self.deliver_head(w));
            futures_util::future::join_all(sends).await;
        }
    }

    /// Creates delivery records for events committed after the webhook's cursor.
    async fn fan_out(&self, w: &ScopedWebhook) -> Result<(), sqlx::Error> {
        let batch = store::events::list_after(&self.db.pool, &w.scope, w.webhook.cursor, 500).await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(());
        };
        let patterns: Vec<String> = serde_json::from_str(&w.webhook.events).unwrap_or_default();
        let filter = Filter::from_patterns(patterns).unwrap_or_default();
        let now = clock::now_ms();
        let mut tx = self.db.pool.begin().await?;
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
                created_at: now,
            };
            store::webhooks::insert_delivery(&mut *tx, &w.scope, &w.webhook.id, &delivery).await?;
        }
        tx.commit().await
    }

    /// Sends the webhook's oldest pending delivery when it is due.
    async fn deliver_head(&self, w: &ScopedWebhook) {
        let now = clock::now_ms();
        let head = match store::webhooks::head(&self.db.pool, &w.scope, &w.webhook.id).await {
            Ok(Some(head)) if head.next_attempt_at <= now && head.lease_until < now => head,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "webhook worker cannot read deliveries");
                return;
            }
        };
        let lease = now + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        match store::webhooks::claim(&self.db.pool, &w.scope, &w.webhook.id, head.seq, now, lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "webhook worker cannot claim a delivery");
                return;
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
    }

    /// One attempt; `Ok(status)` for a 2xx, else the status (if any) and what went wrong.
    async fn send(&self, w: &ScopedWebhook, delivery: &DeliveryRow) -> Result<u16, (Option<u16>, String)> {
        let destination = check_url(&w.webhook.url, &self.settings)
            .await
            .map_err(|e| (None, format!("refused: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .redirect(reqwest::redirect::Policy::none());
        // Connect to the address that was checked, never to a second lookup's answer.
        if destination.host.parse::<IpAddr>().is_err()
            && let Some(addr) = destination.addrs.first()
        {
            builder = builder.resolve(&destination.host, *addr);
        }
        let client = builder.build().map_err(|e| (None, format!("client: {e}")))?;
        let body = body(delivery);
        let signature = sign(&w.webhook.secret, clock::now_ms() / 1000, &body);
        let response = client
            .post(destination.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("polpo-webhooks/", env!("CARGO_PKG_VERSION")))
            .header("polpo-event", &delivery.event)
            .header("polpo-delivery", format!("evt_{}", delivery.seq))
            .header("polpo-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| (None, crate::providers::http::describe(&e)))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            Ok(status)
        } else {
            Err((Some(status), format!("answered {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_signature_test_vector_checks_out() {
        let body = r#"{"id":"evt_1042","event":"task:transition","timestamp":"2026-01-01T00:00:00.000Z","data":{"taskId":"task_01jz","from":"review","to":"done"}}"#;
        assert_eq!(
            sign("whsec_9fK2LmQ8rT4vX1bN7cZ3pD6sH0jW5yAe", 1_767_225_600, body),
            "t=1767225600,v1=a83931b5466963fc2070c376ca0a0692977ffacf63aa067ff6c56a57f5c0d519"
        );
    }

    #[test]
    fn metadata_addresses_are_refused_even_when_private_networks_are_allowed() {
        for ip in ["169.254.169.254", "fd00:ec2::254"] {
            assert!(check_address(ip.parse().unwrap(), true).is_err(), "{ip}");
            assert!(check_address(ip.parse().unwrap(), false).is_err(), "{ip}");
        }
    }

    #[test]
    fn private_ranges_are_refused_unless_allowed() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(check_address(ip.parse().unwrap(), false).is_err(), "{ip} accepted");
            assert!(
                check_address(ip.parse().unwrap(), true).is_ok(),
                "{ip} refused when allowed"
            );
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "100.128.0.1"] {
            assert!(check_address(ip.parse().unwrap(), false).is_ok(), "{ip} refused");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_credentials_and_destination() {
        let strict = WebhooksConfig::default();
        assert!(
            check_url("http://169.254.169.254/latest/meta-data", &strict)
                .await
                .is_err()
        );
        let open = WebhooksConfig {
            allow_http_hosts: vec!["169.254.169.254".into(), "127.0.0.1".into()],
            allow_private_networks: true,
            ..WebhooksConfig::default()
        };
        assert!(
            check_url("http://169.254.169.254/latest/meta-data", &open)
                .await
                .unwrap_err()
                .contains("metadata")
        );
        assert!(check_url("http://127.0.0.1:9/hook", &strict).await.is_err());
        assert!(
            check_url("https://127.0.0.1:9/hook", &strict)
                .await
                .unwrap_err()
                .contains("loopback")
        );
        assert!(check_url("http://127.0.0.1:9/hook", &open).await.is_ok());
        assert!(
            check_url("https://user:pw@93.184.216.34/hook", &strict)
                .await
                .unwrap_err()
                .contains("credentials")
        );
        assert!(check_url("ftp://93.184.216.34/hook", &strict).await.is_err());
        assert!(check_url("https://93.184.216.34/hook", &strict).await.is_ok());
    }

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
