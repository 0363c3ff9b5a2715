//! Spec §6: missions saved, validated, executed as runs with their own tasks, held by gates,
//! checkpoints and delays, scheduled, streamed and reported; against the `mock` provider.

mod crud;
mod durability;
mod holds;
mod import;
mod runs;
mod schedule;
mod stream;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResponse, eventually};

/// Creates an agent on `model`.
async fn agent(app: &TestApp, name: &str, model: &str) {
    let response = app
        .post("/v1/agents", &app.test_key, json!({"name": name, "model": model}))
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
}

/// Saves a mission; returns it.
async fn mission(app: &TestApp, body: Value) -> Value {
    let response = app.post("/v1/missions", &app.test_key, body).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    response.json()
}

/// Executes a mission; returns the run.
async fn execute(app: &TestApp, id: &str) -> Value {
    let response = app
        .post(&format!("/v1/missions/{id}/execute"), &app.test_key, json!({}))
        .await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text);
    response.json()
}

async fn get_mission(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/missions/{id}"), &app.test_key).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.json()
}

async fn get_run(app: &TestApp, id: &str, run_id: &str) -> Value {
    let response = app
        .get(&format!("/v1/missions/{id}/runs/{run_id}"), &app.test_key)
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.json()
}

/// Waits (at most `within`) until the run reaches `status`; returns it.
async fn until_run(app: &TestApp, id: &str, run_id: &str, status: &str, within: Duration) -> Value {
    let reached = eventually(within, || async { get_run(app, id, run_id).await["status"] == status }).await;
    let run = get_run(app, id, run_id).await;
    assert!(reached, "run {run_id} did not reach {status}: {run:#}");
    run
}

/// Posts a mission action (`resume`, `abort`, …) with `body`.
async fn act(app: &TestApp, id: &str, action: &str, body: Value) -> TestResponse {
    app.post(&format!("/v1/missions/{id}/{action}"), &app.test_key, body)
        .await
}

/// The stored events whose names match `filter` (§7.1 patterns), oldest first.
async fn events(app: &TestApp, filter: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/v1/events/history?limit=1000&filter={filter}"), &app.test_key)
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.json().as_array().unwrap().clone()
}

/// The run's task titled `title`.
fn task_of<'r>(run: &'r Value, title: &str) -> &'r Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["title"] == title)
        .unwrap_or_else(|| panic!("no task {title:?} in {run:#}"))
}
