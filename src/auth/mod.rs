//! Key authentication (spec §1.2): where the key is carried, how it is verified, the short
//! verified-key cache, and the `AuthContext` that handlers receive.

pub mod admin;
pub mod key;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::scope::{Environment, Scope};
use crate::store::{self, Db};

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

/// Verifies keys against the database, trusting a positive answer for at most `ttl` (≤ 5 s), so
/// a revoked key dies on every instance within that bound. Negative answers are never cached.
pub struct KeyVerifier {
    ttl: Duration,
    cache: Mutex<HashMap<String, CachedKey>>,
    lookups: AtomicU64,
}

/// How often an open stream re-checks its key, and the oldest verification it trusts, so that a
/// revoked key's streams end within 5 s (spec §1.2.3).
const KEY_RECHECK: Duration = Duration::from_secs(1);
const KEY_MAX_AGE: Duration = Duration::from_secs(3);

/// Bound on cached keys; the cache is cleared when it is reached.
const CACHE_CAPACITY: usize = 10_000;

impl KeyVerifier {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.min(Duration::from_secs(5)),
            cache: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Database lookups made so far (exported as `polpo_auth_key_lookups_total`). A key that
    /// fails the checksum never adds to it.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Steps 2–5 of spec §1.2.3. On refusal, also returns the key id when one was found.
    pub async fn verify(&self, db: &Db, token: &str) -> Result<AuthContext, (Refusal, Option<String>)> {
        let environment = key::check(token).map_err(|e| match e {
            key::KeyFormatError::Malformed => (Refusal::Malformed, None),
            key::KeyFormatError::BadChecksum => (Refusal::BadChecksum, None),
        })?;
        let hash = key::hash(token);
        let now = crate::clock::now_ms();
        if let Some(context) = self.cached(&hash, now) {
            return Ok(context);
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let row = match store::keys::find_by_hash(&db.pool, &hash).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err((Refusal::Unknown, None)),
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed");
                return Err((Refusal::LookupFailed, None));
            }
        };
        if row.revoked_at.is_some() {
            return Err((Refusal::Revoked, Some(row.id)));
        }
        if row.expires_at.is_some_and(|t| t <= now) {
            return Err((Refusal::Expired, Some(row.id)));
        }
        if Environment::parse(&row.environment) != Some(environment) {
            return Err((Refusal::Unknown, Some(row.id)));
        }
        if let Err(e) = store::keys::touch(&db.pool, &row.id, now).await {
            tracing::warn!(error = %e, key_id = %row.id, "could not record key use");
        }
        let context = AuthContext {
            key_id: row.id,
            scope: Scope {
                project: row.project,
                environment,
            },
            key_hash: hash.clone(),
        };
        self.remember(hash, context.clone(), row.expires_at);
        Ok(context)
    }

    fn cached(&self, hash: &str, now: i64) -> Option<AuthContext> {
        self.cached_within(hash, now, self.ttl)
    }

    fn cached_within(&self, hash: &str, now: i64, max_age: Duration) -> Option<AuthContext> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(hash)?;
        let fresh = entry.verified_at.elapsed() < max_age && entry.expires_at.is_none_or(|t| t > now);
        fresh.then(|| entry.context.clone())
    }

    /// For open streams: is the key behind `context` still valid? Trusts a verification at most
    /// `max_age` old, else asks the database. A database error keeps the stream (a blip must not
    /// cut every stream); a revoked, expired or vanished key ends it.
    async fn still_valid(&self, db: &Db, context: &AuthContext, max_age: Duration) -> bool {
        let now = crate::clock::now_ms();
        if self
            .cached_within(&context.key_hash, now, max_age.min(self.ttl))
            .is_some()
        {
            return true;
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        match store::keys::find_by_hash(&db.pool, &context.key_hash).await {
            Ok(Some(row)) if row.revoked_at.is_none() && row.expires_at.is_none_or(|t| t > now) => {
                self.remember(context.key_hash.clone(), context.clone(), row.expires_at);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-check a stream's key");
                true
            }
        }
    }

    /// Resolves once the key behind `context` is revoked, expired or gone; open streams end
    /// then.
    pub async fn revoked(self: std::sync::Arc<Self>, rt: Runtime, context: AuthContext) {
        let mut every = tokio::time::interval(KEY_RECHECK);
        every.reset();
        loop {
            every.tick().await;
            // In a task of its own: a stream may stop polling this future at any point (while
            // its client is slow, or when it ends), and a check left waiting for a database
            // connection would then keep the connection it is handed (on SQLite the only one)
            // from everyone else.
            let (verifier, db, context) = (std::sync::Arc::clone(&self), rt.db.clone(), context.clone());
            let check = rt
                .tasks
                .spawn(async move { verifier.still_valid(&db, &context, KEY_MAX_AGE).await });
            // A check that panicked says nothing against the key.
            if !check.await.unwrap_or(true) {
                return;
            }
        }
    }

    fn remember(&self, hash: String, context: AuthContext, expires_at: Option<i64>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(
            hash,
            CachedKey {
                context,
                expires_at,
                verified_at: Instant::now(),
            },
        );
    }
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
