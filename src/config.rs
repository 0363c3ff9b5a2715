//! Settings: built-in defaults, then the TOML file, then environment variables, then flags (spec §10).
//!
//! Unknown keys are a start-up error. Secrets (provider keys) are never part of `Config`: only the
//! names of the variables that hold them are, and the keys themselves are read by `providers`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The file read when neither `--config` nor `POLPO_CONFIG` names one. Missing is fine.
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub upstream: UpstreamConfig,
    pub events: EventsConfig,
    pub sessions: SessionsConfig,
    pub webhooks: WebhooksConfig,
    pub workers: WorkersConfig,
    pub assessment: AssessmentConfig,
    pub schedule: ScheduleConfig,
    pub rate_limit: RateLimitConfig,
    pub idempotency: IdempotencyConfig,
    /// Per-project settings, by slug.
    pub projects: BTreeMap<String, ProjectConfig>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    #[serde(deserialize_with = "de_size")]
    pub body_limit: usize,
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Browser origins allowed to call the API (spec §1.1); empty: CORS off.
    pub cors_allowed_origins: Vec<String>,
    /// How long a connection may take to send a request's head, counted from when the server
    /// starts waiting for it (an idle keep-alive connection included); then it is closed.
    /// Zero: no limit.
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// Chat turns that may wait for this instance's database at once (reading what the turn
    /// needs, or queued to commit); a turn beyond it is answered `503 unavailable` with
    /// `Retry-After` at once instead of queueing without bound.
    pub chat_backlog: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `None` means the embedded SQLite file `polpo.db` in the working directory.
    pub url: Option<String>,
    pub max_connections: u32,
    /// Postgres: how long a request waits for a connection before it is answered
    /// `503 unavailable`. Short, so that a database outage is answered at once, not after a hang.
    #[serde(deserialize_with = "de_duration")]
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a verified key is trusted without asking the database; capped at 5 s (spec §1.2.3).
    #[serde(deserialize_with = "de_duration")]
    pub cache_ttl: Duration,
}

/// Time limits on model provider calls (spec §3.9).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// TCP + TLS connection set-up.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// From sending the request to the provider's first chunk.
    #[serde(deserialize_with = "de_duration")]
    pub first_chunk_timeout: Duration,
    /// Longest silence between two chunks of a stream.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Longest whole answer.
    #[serde(deserialize_with = "de_duration")]
    pub total_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_chunk_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(600),
        }
    }
}

/// The event log and streams (spec §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// How long events are kept before the background purge deletes them.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// Events buffered per stream subscriber; a subscriber that falls further behind is dropped.
    pub subscriber_buffer: usize,
    /// Keep-alive comment interval on every stream.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 86_400),
            subscriber_buffer: 1000,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// Chat sessions (spec §3.6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// How long a session that never received a message (its first call failed before the
    /// provider answered) is kept, so that the client can retry in it; then it is deleted.
    #[serde(deserialize_with = "de_duration")]
    pub empty_retention: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            empty_retention: Duration::from_secs(3600),
        }
    }
}

/// Idempotency keys (spec §1.8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long a key's record is kept from its first request; then the key is new again.
    #[serde(deserialize_with = "de_duration")]
    pub ttl: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(86_400),
        }
    }
}

/// The task runner (spec §5.8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Attempts one instance runs at once.
    pub max_concurrent_tasks: usize,
    /// How long a claim holds a task without a heartbeat.
    #[serde(deserialize_with = "de_duration")]
    pub lease_duration: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat_interval: Duration,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            max_concurrent_tasks: 8,
            lease_duration: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

/// Task review (spec §5.7 step 3).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssessmentConfig {
    /// The reviewer model; `None`: the attempt's own model.
    pub model: Option<String>,
}

/// Per-key limits (spec §1.7).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Tokens added to a key's bucket every second.
    pub requests_per_second: f64,
    /// The bucket's capacity.
    pub burst: u32,
    /// Chat, task, mission and event streams a key may hold open at once.
    pub max_concurrent_streams: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 10.0,
            burst: 20,
            max_concurrent_streams: 5,
        }
    }
}

/// What one project may set apart from the rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectConfig {
    /// Replaces `[rate_limit]` for the project's keys.
    pub rate_limit: Option<RateLimitConfig>,
    /// Replaces `assessment.model` for the project's tasks.
    pub assessment_model: Option<String>,
}

/// Mission schedules (spec §6.8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// A tick missed while no instance ran is still fired when it is younger than this.
    #[serde(deserialize_with = "de_duration")]
    pub catch_up_window: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            catch_up_window: Duration::from_secs(300),
        }
    }
}

/// Webhook delivery (spec §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// A delivery succeeds on a 2xx within this time.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Hosts that may be reached over plain http.
    pub allow_http_hosts: Vec<String>,
    /// Allows loopback, private, link-local and similar destinations (never metadata addresses).
    pub allow_private_networks: bool,
    /// The first retry wait; each later one doubles, up to an hour.
    #[serde(deserialize_with = "de_duration")]
    pub retry_base: Duration,
    /// How long after the event a failing delivery is retried before it is marked failed.
    #[serde(deserialize_with = "de_duration")]
    pub give_up_after: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            allow_http_hosts: Vec::new(),
            allow_private_networks: false,
            retry_base: Duration::from_secs(10),
            give_up_after: Duration::from_secs(86_400),
        }
    }
}

/// One `[providers.<name>]` table (spec §4.3). Every member is optional so that a table may only
/// override one setting of a built-in provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: Option<ProviderKind>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub enabled: Option<bool>,
    /// Models listed by `GET /v1/models` (spec §3.14); any model may still be named.
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            body_limit: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
            header_read_timeout: Duration::from_secs(30),
            chat_backlog: 256,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(5),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {name}: {message}")]
    Env { name: &'static str, message: String },
}

impl Config {
    /// Loads the file (explicit path: must exist; default path: optional), then applies the
    /// environment. `env` is injected so tests never touch the process environment.
    pub fn load(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = match explicit {
            Some(path) => Self::from_file(path)?,
            None => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                if path.exists() {
                    Self::from_file(path)?
                } else {
                    Self::default()
                }
            }
        };
        config.apply_env(env)?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that would not fail a request but break the server: a stream pinging
    /// without pause, a task runner that cannot beat, a lease that lapses between two beats.
    fn check(&self) -> Result<(), String> {
        let workers = &self.workers;
        if self.events.keepalive.is_zero() {
            return Err("events.keepalive must be longer than 0s".into());
        }
        if workers.heartbeat_interval.is_zero() {
            return Err("workers.heartbeat_interval must be longer than 0s".into());
        }
        if workers.heartbeat_interval >= workers.lease_duration {
            return Err(format!(
                "workers.heartbeat_interval ({:?}) must be shorter than workers.lease_duration ({:?}), \
                 or a running task's lease lapses between two heartbeats",
                workers.heartbeat_interval, workers.lease_duration
            ));
        }
        Ok(())
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(bind) = env("POLPO_BIND") {
            self.server.bind = bind;
        }
        if let Some(url) = env("DATABASE_URL").filter(|u| !u.is_empty()) {
            self.database.url = Some(url);
        }
        if let Some(level) = env("POLPO_LOG") {
            self.log.level = level;
        }
        if let Some(format) = env("POLPO_LOG_FORMAT") {
            self.log.format = match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::Env {
                        name: "POLPO_LOG_FORMAT",
                        message: format!("expected text or json, got {other:?}"),
                    });
                }
            };
        }
        Ok(())
    }

    /// The verified-key cache lifetime, never above the 5 s the spec allows.
    pub fn auth_cache_ttl(&self) -> Duration {
        self.auth.cache_ttl.min(Duration::from_secs(5))
    }
}

/// Parses `250ms`, `5s`, `10m`, `24h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("invalid duration {text:?}: use ms, s, m, h or d")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Parses `512KiB`, `1MiB` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let factor = match unit {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return Err(format!("invalid size {text:?}: use KiB or MiB")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let text = String::deserialize(d)?;
    parse_size(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_use_the_documented_suffixes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5w").is_err());
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("1MB").is_err());
    }

    #[test]
    fn the_shipped_default_file_matches_the_built_in_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let file = Config::from_file(&path).unwrap();
        let built_in = Config::default();
        assert_eq!(file.server.bind, built_in.server.bind);
        assert_eq!(file.server.body_limit, built_in.server.body_limit);
        assert_eq!(file.server.shutdown_timeout, built_in.server.shutdown_timeout);
        assert_eq!(file.server.chat_backlog, built_in.server.chat_backlog);
        assert_eq!(file.server.header_read_timeout, built_in.server.header_read_timeout);
        assert_eq!(file.database.max_connections, built_in.database.max_connections);
        assert_eq!(file.database.acquire_timeout, built_in.database.acquire_timeout);
        assert_eq!(file.auth.cache_ttl, built_in.auth.cache_ttl);
        assert_eq!(file.idempotency.ttl, built_in.idempotency.ttl);
        assert_eq!(file.log.format, built_in.log.format);
    }

    #[test]
    fn settings_that_would_break_streams_or_the_task_runner_are_refused() {
        for (text, name) in [
            ("[events]\nkeepalive = \"0s\"", "events.keepalive"),
            ("[workers]\nheartbeat_interval = \"0ms\"", "workers.heartbeat_interval"),
            (
                "[workers]\nlease_duration = \"10s\"\nheartbeat_interval = \"10s\"",
                "workers.lease_duration",
            ),
        ] {
            let error = Config::from_toml(text).unwrap_err();
            assert!(error.contains(name), "{text:?}: {error}");
        }
        let fine = Config::from_toml(
            "[events]\nkeepalive = \"1ms\"\n\n[workers]\nlease_duration = \"2s\"\nheartbeat_interval = \"1999ms\"",
        );
        assert!(fine.is_ok(), "{fine:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[server]\nbindd = \"x\"\n").unwrap_err();
        assert!(err.contains("bindd"), "{err}");
    }

    #[test]
    fn the_auth_cache_is_capped_at_five_seconds() {
        let config = Config::from_toml("[auth]\ncache_ttl = \"1m\"\n").unwrap();
        assert_eq!(config.auth_cache_ttl(), Duration::from_secs(5));
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |name: &str| match name {
            "POLPO_BIND" => Some("0.0.0.0:9000".to_string()),
            "DATABASE_URL" => Some("postgres://db/polpo".to_string()),
            _ => None,
        };
        let mut config = Config::from_toml("[server]\nbind = \"127.0.0.1:1\"\n").unwrap();
        config.apply_env(&env).unwrap();
        assert_eq!(config.server.bind, "0.0.0.0:9000");
        assert_eq!(config.database.url.as_deref(), Some("postgres://db/polpo"));
    }
}
