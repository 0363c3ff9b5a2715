//! Spec §5: tasks run in the background by agents, checked, fixed, retried, approved, and kept
//! durable; against the `mock` provider and the fake providers.

mod actions;
mod approvals;
mod crud;
mod durability;
mod lifecycle;
mod review;
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

/// Posts `action` (`pause`, `kill`, …) with an empty body.
async fn act(app: &TestApp, id: &str, action: &str) -> TestResponse {
    app.post(&format!("/v1/tasks/{id}/{action}"), &app.test_key, json!({}))
        .await
}

/// The stored events about task `id` whose names match `filter` (§7.1 patterns), oldest first.
async fn events_of(app: &TestApp, id: &str, filter: &str) -> Vec<Value> {
    let response = app
        .get(&format!("/v1/events/history?limit=1000&filter={filter}"), &app.test_key)
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let events = response.json().as_array().unwrap().clone();
    events.into_iter().filter(|e| e["data"]["taskId"] == id).collect()
}

/// An event as a short label: its name, then the status entered or the phase, where it has one.
fn label(event: &Value) -> String {
    let name = event["event"].as_str().unwrap();
    let data = &event["data"];
    let detail = match name {
        "task:transition" => match data["task"]["phase"].as_str() {
            Some(phase) => format!(" {}/{phase}", data["to"].as_str().unwrap()),
            None => format!(" {}", data["to"].as_str().unwrap()),
        },
        "agent:spawned" => format!(" {}", data["phase"].as_str().unwrap()),
        "assessment:started" => format!(" {}", data["trigger"].as_str().unwrap()),
        "assessment:complete" => format!(" passed={}", data["passed"]),
        "approval:resolved" => format!(" {}", data["status"].as_str().unwrap()),
        _ => String::new(),
    };
    format!("{name}{detail}")
}
