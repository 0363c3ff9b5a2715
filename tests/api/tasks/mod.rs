//! Spec §5: tasks run in the background by agents, checked, fixed, retried, approved, and kept
//! durable; against the `mock` provider and the fake providers.

mod crud;
mod durability;
mod lifecycle;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually};

/// Creates an agent on `model`.
async fn agent(app: &TestApp, name: &str, model: &str) {
    let response = app
        .post("/v1/agents", &app.test_key, json!({"name": name, "model": model}))
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
}

/// Creates a task; returns it.
async fn task(app: &TestApp, body: Value) -> Value {
    let response = app.post("/v1/tasks", &app.test_key, body).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    response.json()
}

async fn get(app: &TestApp, id: &str) -> Value {
    let response = app.get(&format!("/v1/tasks/{id}"), &app.test_key).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.json()
}

/// Waits (at most `within`) until the task reaches `status`; returns it.
async fn until_status(app: &TestApp, id: &str, status: &str, within: Duration) -> Value {
    let reached = eventually(within, || async { get(app, id).await["status"] == status }).await;
    let task = get(app, id).await;
    assert!(reached, "task {id} did not reach {status}: {task:#}");
    task
}
