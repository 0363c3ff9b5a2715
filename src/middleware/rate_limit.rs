//! Per-key rate limits (spec §1.7): a token bucket (every authenticated request takes a token)
//! and a cap on the streams a key holds open, with the `x-ratelimit-*` headers on every
//! authenticated answer and `429 rate_limited` past either limit.
//!
//! On SQLite (one instance) the bucket lives in memory. On Postgres the bucket of record is a
//! database row that every instance draws from: an instance leases a few tokens at a time into a
//! local bucket and spends them without a round trip, so the limit holds for the key as a whole
//! and admits nothing the shared bucket did not grant. Leased tokens that go unused within a
//! second are dropped. Open streams are counted in memory and published per instance with an
//! expiry, so that a crashed instance's streams stop counting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::AuthContext;
use crate::config::{Config, RateLimitConfig};
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::store::{self, Backend};

/// Unused leased tokens are dropped after this long, so that a quiet instance cannot spend old
/// tokens in a later second.
const LEASE_LIFE: Duration = Duration::from_secs(1);
/// The longest wait for the shared bucket or the stream counts. Past it the request is
/// admitted, as when they cannot be read.
const LEASE_WAIT: Duration = Duration::from_secs(1);
/// After a look at the database failed, the limiter leaves it alone this long: longer than a
/// request's steps through the limiter (lease, stream count, published count), so that with the
/// database down a request meets the outage once in the limiter (at most `LEASE_WAIT`) and once
/// in its handler, not at every step.
const QUIET: Duration = Duration::from_secs(5);
/// A published stream count stops counting this long after it was last written.
const STREAMS_LIFE: Duration = Duration::from_secs(120);
/// How often an instance writes its stream counts again.
const STREAMS_RENEW: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Bucket {
    /// Tokens this instance may spend: the whole bucket in memory, or what it leased.
    tokens: f64,
    at: Instant,
    /// On Postgres: what the shared bucket held after the last lease.
    shared: f64,
}

/// The limiter of one instance.
pub struct Limiter {
    settings: RateLimitConfig,
    projects: HashMap<String, RateLimitConfig>,
    backend: Backend,
    instance: String,
    buckets: Mutex<HashMap<String, Bucket>>,
    /// One lease at a time per key on this instance: requests arriving together wait for it and
    /// share what it brings, instead of each leasing a batch and draining the shared bucket.
    leasing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    streams: Arc<Mutex<HashMap<String, i64>>>,
    renewing: AtomicBool,
    /// Until when the database is not asked, after a look at it failed.
    quiet_until: Mutex<Option<Instant>>,
}

/// What a request left in its key's bucket, for the headers.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub limit: u32,
    pub remaining: u32,
    pub reset: Duration,
}

impl Limiter {
    pub fn new(config: &Config, backend: Backend) -> Self {
        Self {
            settings: config.rate_limit,
            projects: config
                .projects
                .iter()
                .filter_map(|(slug, p)| Some((slug.clone(), p.rate_limit?)))
                .collect(),
            backend,
            instance: crate::ids::new_id("ins_"),
            buckets: Mutex::default(),
            leasing: Mutex::default(),
            streams: Arc::default(),
            renewing: AtomicBool::new(false),
            quiet_until: Mutex::default(),
        }
    }

    /// One look at the database for the limits, bounded by `LEASE_WAIT`; skipped (as failed)
    /// within `QUIET` of one that failed.
    async fn ask<T>(&self, query: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
        let quiet = *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        if quiet.is_some_and(|until| Instant::now() < until) {
            return Err(sqlx::Error::PoolTimedOut);
        }
        let result = tokio::time::timeout(LEASE_WAIT, query)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        if result.is_err() {
            *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + QUIET);
        }
        result
    }

    fn limits(&self, auth: &AuthContext) -> RateLimitConfig {
        self.projects.get(&auth.scope.project).copied().unwrap_or(self.settings)
    }

    /// Takes one token for the key, or says how long until one is there.
    pub async fn take(&self, rt: &Runtime, auth: &AuthContext) -> Result<Quota, Duration> {
        let limits = self.limits(auth);
        let burst = f64::from(limits.burst.max(1));
        let rate = limits.requests_per_second.max(0.001);
        let now = Instant::now();
        if self.backend == Backend::Sqlite {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let bucket = buckets.entry(auth.key_id.clone()).or_insert(Bucket {
                tokens: burst,
                at: now,
                shared: 0.0,
            });
            bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
            bucket.at = now;
            return spend(&mut bucket.tokens, 0.0, limits, rate);
        }
        if let Some(quota) = self.spend_local(&auth.key_id, now, limits, rate) {
            return Ok(quota);
        }
        let lease = Arc::clone(
            self.leasing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(auth.key_id.clone())
                .or_default(),
        );
        let _leasing = lease.lock().await;
        // The lease this request waited for may have brought enough.
        let now = Instant::now();
        if let Some(quota) = self.spend_local(&auth.key_id, now, limits, rate) {
            return Ok(quota);
        }
        // A batch of a quarter of the burst: few round trips, and little left unused when
        // several instances serve the key.
        let want = i64::from(limits.burst.div_ceil(4).max(1));
        let leased = self
            .ask(async {
                let mut tx = rt.db.begin().await?;
                let out = store::rate_limits::lease(
                    &mut tx,
                    &auth.key_id,
                    want,
                    burst,
                    rate / 1000.0,
                    crate::clock::now_ms(),
                )
                .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(out)
            })
            .await;
        let (taken, shared) = match leased {
            Ok(leased) => leased,
            Err(e) => {
                // The limit cannot be checked: the request goes through rather than failing.
                tracing::warn!(error = %e, "rate limit bucket unreadable; request admitted");
                return Ok(Quota {
                    limit: limits.burst,
                    remaining: 0,
                    reset: Duration::ZERO,
                });
            }
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(auth.key_id.clone()).or_insert(Bucket {
            tokens: 0.0,
            at: now,
            shared,
        });
        #[allow(clippy::cast_precision_loss)]
        let fresh = taken as f64;
        if now.duration_since(bucket.at) >= LEASE_LIFE {
            bucket.tokens = 0.0;
        }
        bucket.tokens += fresh;
        bucket.at = now;
        bucket.shared = shared;
        spend(&mut bucket.tokens, shared, limits, rate)
    }

    /// Spends a token leased earlier and still fresh, if the key's local bucket holds one.
    fn spend_local(&self, key_id: &str, now: Instant, limits: RateLimitConfig, rate: f64) -> Option<Quota> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.get_mut(key_id)?;
        if now.duration_since(bucket.at) < LEASE_LIFE && bucket.tokens >= 1.0 {
            let shared = bucket.shared;
            return spend(&mut bucket.tokens, shared, limits, rate).ok();
        }
        None
    }

    /// Opens a stream slot for the key, or `429` when it holds its maximum already. The slot
    /// is released when the returned guard is dropped.
    pub async fn open_stream(self: &Arc<Self>, rt: &Runtime, auth: &AuthContext) -> Result<StreamSlot, ApiError> {
        let max = i64::from(self.limits(auth).max_concurrent_streams);
        let elsewhere = if self.backend == Backend::Postgres {
            self.start_renewing(rt);
            let now = crate::clock::now_ms();
            let counted = self
                .ask(store::rate_limits::streams_elsewhere(
                    &rt.db.pool,
                    &auth.key_id,
                    &self.instance,
                    now,
                ))
                .await;
            match counted {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "stream counts unreadable; counting this instance only");
                    0
                }
            }
        } else {
            0
        };
        let open = {
            let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            let here = streams.entry(auth.key_id.clone()).or_insert(0);
            if *here + elsewhere >= max {
                return Err(ApiError::RateLimited {
                    message: format!("this key already has {max} streams open; close one and retry"),
                    retry_after: Duration::from_secs(1),
                });
            }
            *here += 1;
            *here
        };
        self.publish(rt, &auth.key_id, open).await;
        Ok(StreamSlot {
            limiter: Arc::clone(self),
            rt: rt.clone(),
            key_id: auth.key_id.clone(),
        })
    }

    /// Writes this instance's stream count for a key (Postgres only).
    async fn publish(&self, rt: &Runtime, key_id: &str, open: i64) {
        if self.backend != Backend::Postgres {
            return;
        }
        let expires = crate::clock::now_ms() + crate::clock::duration_ms(STREAMS_LIFE);
        let written = self
            .ask(store::rate_limits::set_streams(
                &rt.db.pool,
                key_id,
                &self.instance,
                open,
                expires,
            ))
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not publish a stream count");
        }
    }

    /// Keeps this instance's stream counts from expiring while its streams are open.
    fn start_renewing(self: &Arc<Self>, rt: &Runtime) {
        if self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (limiter, runtime) = (Arc::clone(self), rt.clone());
        rt.spawn(async move {
            loop {
                tokio::select! {
                    () = runtime.shutdown.cancelled() => return,
                    () = tokio::time::sleep(STREAMS_RENEW) => {}
                }
                let counts: Vec<(String, i64)> = {
                    let mut streams = limiter.streams.lock().unwrap_or_else(|p| p.into_inner());
                    streams.retain(|_, n| *n > 0);
                    streams.iter().map(|(k, n)| (k.clone(), *n)).collect()
                };
                for (key_id, open) in counts {
                    limiter.publish(&runtime, &key_id, open).await;
                }
            }
        });
    }
}

/// Spends one token of `tokens` (the rest of the key's bucket is `shared`).
fn spend(tokens: &mut f64, shared: f64, limits: RateLimitConfig, rate: f64) -> Result<Quota, Duration> {
    let burst = f64::from(limits.burst.max(1));
    if *tokens < 1.0 {
        let missing = 1.0 - (*tokens + shared).min(0.999);
        return Err(Duration::from_secs_f64(missing / rate));
    }
    *tokens -= 1.0;
    let left = (*tokens + shared).clamp(0.0, burst);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Quota {
        limit: limits.burst,
        remaining: left.floor() as u32,
        reset: Duration::from_secs_f64((burst - left) / rate),
    })
}

/// A stream slot held for as long as the stream is open.
pub struct StreamSlot {
    limiter: Arc<Limiter>,
    rt: Runtime,
    key_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let open = {
            let mut streams = self.limiter.streams.lock().unwrap_or_else(|p| p.into_inner());
            let here = streams.entry(self.key_id.clone()).or_insert(1);
            *here = (*here - 1).max(0);
            *here
        };
        if self.limiter.backend == Backend::Postgres {
            let (limiter, rt, key_id) = (Arc::clone(&self.limiter), self.rt.clone(), self.key_id.clone());
            self.rt.spawn(async move { limiter.publish(&rt, &key_id, open).await });
        }
    }
}

/// `850ms`, `1.5s`, `0s`: Go's duration syntax, as OpenAI's headers use it.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Takes a token for every authenticated request (authentication runs first, so refusals
/// and public routes take none) and writes the headers.
pub async fn limit<F>(state: &AppState, req: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let Some(auth) = req.extensions().get::<AuthContext>().cloned() else {
        return next(req).await;
    };
    let limits = state.limiter.limits(&auth);
    match state.limiter.take(&state.runtime, &auth).await {
        Ok(quota) => {
            let mut response = next(req).await;
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(quota.limit));
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(quota.remaining));
            if let Ok(reset) = HeaderValue::from_str(&go_duration(quota.reset)) {
                headers.insert("x-ratelimit-reset-requests", reset);
            }
            response
        }
        Err(wait) => {
            let mut response = ApiError::RateLimited {
                message: format!(
                    "rate limit of {} requests per second (burst {}) reached for this key",
                    limits.requests_per_second, limits.burst
                ),
                retry_after: wait,
            }
            .into_response();
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(limits.burst));
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0u32));
            if let Ok(reset) = HeaderValue::from_str(&go_duration(wait)) {
                headers.insert("x-ratelimit-reset-requests", reset);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_go_does() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(2)), "2s");
    }
}
