//! Integration tests: the real router and binary on a real database (SQLite by default,
//! Postgres when `TEST_DATABASE_URL` names a server). Modules mirror the URL paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agents;
mod auth;
mod chat;
mod connections;
mod cors;
mod errors;
mod events;
mod fakes;
mod fakes_selftest;
mod faults;
mod helpers;
mod idempotency;
mod isolation;
mod layers;
mod memory;
mod missions;
mod models;
mod operations;
mod process;
mod rate_limits;
mod runtime;
mod scoping;
mod sdk;
mod tasks;
mod webhooks;
