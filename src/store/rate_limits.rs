//! The counters behind rate limits shared by instances (spec §1.7): a token bucket per key and
//! the streams each instance holds open per key.

use super::Exec;

/// Refills the key's bucket for the time since it was last touched (at `per_ms` tokens a
/// millisecond, up to `burst`), then takes up to `want` whole tokens. Returns what was taken
/// and what is left. One transaction holding the bucket's row.
pub async fn lease(
    ex: &mut sqlx::AnyConnection,
    key_id: &str,
    want: i64,
    burst: f64,
    per_ms: f64,
    now: i64,
) -> Result<(i64, f64), sqlx::Error> {
    let sql = "INSERT INTO rate_buckets (key_id, tokens, refilled_at) VALUES ($1, $2, $3)
               ON CONFLICT (key_id) DO UPDATE
               SET tokens = LEAST($2, rate_buckets.tokens + GREATEST(0, $3 - rate_buckets.refilled_at) * $4),
                   refilled_at = GREATEST(rate_buckets.refilled_at, $3)
               RETURNING tokens";
    let tokens: f64 = sqlx::query_scalar(sql)
        .bind(key_id)
        .bind(burst)
        .bind(now)
        .bind(per_ms)
        .fetch_one(&mut *ex)
        .await?;
    #[allow(clippy::cast_possible_truncation)]
    let taken = want.min(tokens.floor() as i64).max(0);
    if taken > 0 {
        #[allow(clippy::cast_precision_loss)]
        let spent = taken as f64;
        sqlx::query("UPDATE rate_buckets SET tokens = tokens - $2 WHERE key_id = $1")
            .bind(key_id)
            .bind(spent)
            .execute(&mut *ex)
            .await?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((taken, tokens - taken as f64))
}

/// Streams other instances hold open for the key (rows not expired).
pub async fn streams_elsewhere<'c>(
    ex: impl Exec<'c>,
    key_id: &str,
    instance: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let sql =
        // Postgres sums integers as numeric: cast back, for both backends to read one type.
        "SELECT CAST(COALESCE(SUM(open), 0) AS BIGINT) FROM stream_slots
         WHERE key_id = $1 AND instance <> $2 AND expires_at > $3";
    sqlx::query_scalar(sql)
        .bind(key_id)
        .bind(instance)
        .bind(now)
        .fetch_one(ex)
        .await
}

/// Records how many streams this instance holds open for the key, until `expires_at`.
pub async fn set_streams<'c>(
    ex: impl Exec<'c>,
    key_id: &str,
    instance: &str,
    open: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    let sql = "INSERT INTO stream_slots (key_id, instance, open, expires_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (key_id, instance) DO UPDATE SET open = $3, expires_at = $4";
    sqlx::query(sql)
        .bind(key_id)
        .bind(instance)
        .bind(open)
        .bind(expires_at)
        .execute(ex)
        .await?;
    Ok(())
}
