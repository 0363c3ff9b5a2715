//! Key authentication (spec §1.2): where the key is carried, how it is verified, the short
//! verified-key cache, and the `AuthContext` that handlers receive.

pub mod admin;
pub mod key;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::scope::{Environment, Scope};
use crate::store;
use crate::store::keys::KeyRow;

/// Who is calling: set by the authentication middleware, read by handlers.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub key_id: String,
    pub scope: Scope,
    /// SHA-256 of the key, so that long-lived streams can re-check it (never the key itself).
    pub key_hash: String,
}

impl<S: Send + Sync> FromRequestParts<S> for AuthContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthContext>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Why a request was refused; logged, never sent (spec §1.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    BadChecksum,
    Unknown,
    Revoked,
    Expired,
    /// The database could not be asked: `503`, so that clients retry instead of discarding a
    /// key that may be valid.
    LookupFailed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadChecksum => "bad_checksum",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::LookupFailed => "lookup_failed",
        }
    }

    pub fn error(self) -> ApiError {
        match self {
            Self::Missing | Self::Malformed => ApiError::Unauthorized,
            Self::LookupFailed => ApiError::Unavailable(String::new()),
            _ => ApiError::InvalidApiKey,
        }
    }
}

/// The credential of a request, by the carrier order of spec §1.2.2. `allow_query` is true only
/// for `GET /v1/events`, where `?apiKey=` stands in for headers browsers cannot set.
pub fn credential(headers: &HeaderMap, query: Option<&str>, allow_query: bool) -> Result<String, Refusal> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Refusal::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(Refusal::Malformed);
        }
        return Ok(token.to_string());
    }
    if let Some(value) = headers.get("x-api-key") {
        let token = value.to_str().map_err(|_| Refusal::Malformed)?.trim();
        return if token.is_empty() {
            Err(Refusal::Malformed)
        } else {
            Ok(token.to_string())
        };
    }
    if allow_query && let Some(token) = query.and_then(|q| query_value(q, "apiKey")) {
        return Ok(token);
    }
    Err(Refusal::Missing)
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        // A key is base62 with underscores: no percent-decoding can make a valid one.
        (k == name).then(|| v.to_string())
    })
}

struct CachedKey {
    context: AuthContext,
    expires_at: Option<i64>,
    verified_at: Instant,
}

/// What one database lookup of a key found, handed to every request that waited for it.
#[derive(Clone)]
enum Lookup {
    Found(Arc<KeyRow>),
    Missing,
    Failed,
}

/// A lookup in progress; it holds `None` until the lookup ends.
type Flight = watch::Receiver<Option<Lookup>>;

/// Verifies keys against the database, trusting a positive answer for at most `ttl` (≤ 5 s), so
/// a revoked key dies on every instance within that bound. Negative answers are never cached.
///
/// A key is looked up once at a time: the requests that find it missing or expired in the cache
/// wait for the lookup already in progress instead of each asking the database (under load,
/// thousands find the same key expired at once and, each waiting for the database behind the
/// others, hold their requests for seconds). A key in use is looked up again in the background
/// once its answer is half `ttl` old, so the requests that use it keep finding it cached.
pub struct KeyVerifier {
    ttl: Duration,
    cache: Mutex<HashMap<String, CachedKey>>,
    /// The lookup in progress per key hash.
    flights: Mutex<HashMap<String, Flight>>,
    lookups: AtomicU64,
}

/// How often an open stream re-checks its key, and the oldest verification it trusts, so that a
/// revoked key's streams end within 5 s (spec §1.2.3).
const KEY_RECHECK: Duration = Duration::from_secs(1);
const KEY_MAX_AGE: Duration = Duration::from_secs(3);

/// Bound on cached keys, and on keys being looked up at once; a map is cleared when it is
/// reached.
const CACHE_CAPACITY: usize = 10_000;

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeyVerifier {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.min(Duration::from_secs(5)),
            cache: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Database lookups made so far (exported as `polpo_auth_key_lookups_total`). A key that
    /// fails the checksum never adds to it.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Steps 2–5 of spec §1.2.3. On refusal, also returns the key id when one was found.
    pub async fn verify(self: &Arc<Self>, rt: &Runtime, token: &str) -> Result<AuthContext, (Refusal, Option<String>)> {
        let environment = key::check(token).map_err(|e| match e {
            key::KeyFormatError::Malformed => (Refusal::Malformed, None),
            key::KeyFormatError::BadChecksum => (Refusal::BadChecksum, None),
        })?;
        let hash = key::hash(token);
        let now = crate::clock::now_ms();
        if let Some(context) = self.cached(rt, &hash, environment, now, self.ttl) {
            return Ok(context);
        }
        let row = match self.looked_up(rt, &hash, environment).await {
            Lookup::Found(row) => row,
            Lookup::Missing => return Err((Refusal::Unknown, None)),
            Lookup::Failed => return Err((Refusal::LookupFailed, None)),
        };
        if row.revoked_at.is_some() {
            return Err((Refusal::Revoked, Some(row.id.clone())));
        }
        if row.expires_at.is_some_and(|t| t <= now) {
            return Err((Refusal::Expired, Some(row.id.clone())));
        }
        match context_of(&row, environment, hash) {
            Some(context) => Ok(context),
            None => Err((Refusal::Unknown, Some(row.id.clone()))),
        }
    }

    /// The cached context of `hash` when verified less than `max_age` (and `ttl`) ago, starting
    /// its lookup in the background once the answer is half `ttl` old.
    fn cached(
        self: &Arc<Self>,
        rt: &Runtime,
        hash: &str,
        environment: Environment,
        now: i64,
        max_age: Duration,
    ) -> Option<AuthContext> {
        let (context, age) = {
            let cache = locked(&self.cache);
            let entry = cache.get(hash)?;
            let age = entry.verified_at.elapsed();
            let fresh = age < max_age.min(self.ttl) && entry.expires_at.is_none_or(|t| t > now);
            (fresh.then(|| entry.context.clone())?, age)
        };
        if age >= self.ttl / 2 {
            drop(self.flight(rt, hash, environment));
        }
        Some(context)
    }

    /// Waits for the lookup of `hash` in progress, or starts one.
    async fn looked_up(self: &Arc<Self>, rt: &Runtime, hash: &str, environment: Environment) -> Lookup {
        let mut flight = self.flight(rt, hash, environment);
        match flight.wait_for(Option::is_some).await {
            Ok(found) => found.clone().unwrap_or(Lookup::Failed),
            // The lookup's task ended without an answer (it panicked, or the runtime stopped).
            Err(_) => Lookup::Failed,
        }
    }

    /// The lookup of `hash` in progress, or a new one. A lookup runs in a task of its own, so
    /// that it ends, and gives the database connection it holds back, whatever its requests do.
    /// It caches what it found (or drops the key from the cache when it found it revoked,
    /// expired or gone) before it leaves the map of lookups in progress, so a request after it
    /// finds either its answer cached or no lookup in progress.
    fn flight(self: &Arc<Self>, rt: &Runtime, hash: &str, environment: Environment) -> Flight {
        let mut flights = locked(&self.flights);
        if let Some(flight) = flights.get(hash) {
            return flight.clone();
        }
        if flights.len() >= CACHE_CAPACITY {
            flights.clear();
        }
        let (answer, flight) = watch::channel(None);
        flights.insert(hash.to_string(), flight.clone());
        drop(flights);
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let (verifier, db, hash, own) = (Arc::clone(self), rt.db.clone(), hash.to_string(), flight.clone());
        rt.spawn(async move {
            let verified_at = Instant::now();
            let found = match store::keys::find_by_hash(&db.pool, &hash).await {
                Ok(Some(row)) => Lookup::Found(Arc::new(row)),
                Ok(None) => Lookup::Missing,
                Err(e) => {
                    tracing::error!(error = %e, "key lookup failed");
                    Lookup::Failed
                }
            };
            let now = crate::clock::now_ms();
            match &found {
                Lookup::Found(row) if in_force(row, now) => {
                    if let Err(e) = store::keys::touch(&db.pool, &row.id, now).await {
                        tracing::warn!(error = %e, key_id = %row.id, "could not record key use");
                    }
                    if let Some(context) = context_of(row, environment, hash.clone()) {
                        verifier.remember(hash.clone(), context, row.expires_at, verified_at);
                    }
                }
                // A database error says nothing against the key: its answer expires as usual.
                Lookup::Failed => {}
                _ => drop(locked(&verifier.cache).remove(&hash)),
            }
            let mut flights = locked(&verifier.flights);
            if flights.get(&hash).is_some_and(|flight| flight.same_channel(&own)) {
                flights.remove(&hash);
            }
            drop(flights);
            answer.send_replace(Some(found));
        });
        flight
    }

    /// For open streams: is the key behind `context` still valid? Trusts a verification at most
    /// `max_age` old, else waits for a lookup. A database error keeps the stream (a blip must not
    /// cut every stream); a revoked, expired or vanished key ends it.
    async fn still_valid(self: &Arc<Self>, rt: &Runtime, context: &AuthContext, max_age: Duration) -> bool {
        let (hash, environment) = (&context.key_hash, context.scope.environment);
        let now = crate::clock::now_ms();
        if self.cached(rt, hash, environment, now, max_age).is_some() {
            return true;
        }
        match self.looked_up(rt, hash, environment).await {
            Lookup::Found(row) => in_force(&row, now),
            Lookup::Missing => false,
            Lookup::Failed => {
                tracing::warn!("could not re-check a stream's key");
                true
            }
        }
    }

    /// Resolves once the key behind `context` is revoked, expired or gone; open streams end
    /// then.
    pub async fn revoked(self: Arc<Self>, rt: Runtime, context: AuthContext) {
        let mut every = tokio::time::interval(KEY_RECHECK);
        every.reset();
        loop {
            every.tick().await;
            // The lookup runs in a task of its own (`flight`), so a stream may stop polling this
            // future at any point (while its client is slow, or when it ends) without keeping a
            // database connection (on SQLite the only one) from everyone else.
            if !self.still_valid(&rt, &context, KEY_MAX_AGE).await {
                return;
            }
        }
    }

    fn remember(&self, hash: String, context: AuthContext, expires_at: Option<i64>, verified_at: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = locked(&self.cache);
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(
            hash,
            CachedKey {
                context,
                expires_at,
                verified_at,
            },
        );
    }
}

/// Whether a key's record is neither revoked nor expired at `now` (spec §1.2.3 step 5).
fn in_force(row: &KeyRow, now: i64) -> bool {
    row.revoked_at.is_none() && row.expires_at.is_none_or(|t| t > now)
}

/// The context a valid key's record gives, unless its environment is not the token's.
fn context_of(row: &KeyRow, environment: Environment, key_hash: String) -> Option<AuthContext> {
    (Environment::parse(&row.environment) == Some(environment)).then(|| AuthContext {
        key_id: row.id.clone(),
        scope: Scope {
            project: row.project.clone(),
            environment,
        },
        key_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn authorization_wins_over_x_api_key_and_query() {
        let h = headers(&[("authorization", "bearer abc"), ("x-api-key", "def")]);
        assert_eq!(credential(&h, Some("apiKey=ghi"), true), Ok("abc".into()));
        let h = headers(&[("x-api-key", "def")]);
        assert_eq!(credential(&h, Some("apiKey=ghi"), true), Ok("def".into()));
    }

    #[test]
    fn the_query_carrier_counts_only_where_allowed() {
        let h = HeaderMap::new();
        assert_eq!(credential(&h, Some("x=1&apiKey=ghi"), true), Ok("ghi".into()));
        assert_eq!(credential(&h, Some("apiKey=ghi"), false), Err(Refusal::Missing));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_malformed() {
        assert_eq!(
            credential(&headers(&[("authorization", "Basic abc")]), None, false),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer ")]), None, false),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer")]), None, false),
            Err(Refusal::Malformed)
        );
    }
}
