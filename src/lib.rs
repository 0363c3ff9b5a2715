//! polpo-api: the server behind Polpo's hosted Agent API.
//!
//! - `cli`: operator commands (serve, migrate, projects, keys, missions import)
//! - `config`: settings from defaults, file, environment and flags
//! - `app`: shared state, router, serve
//! - `middleware`: request id and access log, metrics, error shapes, authentication; one file each
//! - `error`: the one error type and its two JSON shapes
//! - `auth`: API key format, verification, cache, request context, and operator key actions
//! - `api`: HTTP handlers, one file per resource, and the OpenAPI document
//! - `runtime`: business rules (agents, chat turns, sessions, webhooks, the event log as read)
//! - `events`: the event catalogue and the event log
//! - `providers`: model providers and model-string validation
//! - `store`: SQL for SQLite and Postgres, migrations
//! - `metrics`: Prometheus counters and histograms
//! - `scope`: the tenant key (project and environment), used by every layer
//! - `field`: absent / null / value, the shape of a PATCH field
//! - `ids`, `clock`: identifiers, secrets and timestamps
//! - `heap`: memory a burst used, given back to the system once it is over

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod field;
pub mod heap;
pub mod ids;
pub mod metrics;
pub mod middleware;
pub mod providers;
pub mod runtime;
pub mod scope;
pub mod store;
