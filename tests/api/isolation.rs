//! Spec §1.3: a key sees and changes only its own project and environment. Every operation of
//! the OpenAPI document is tried with another project's key and with the same project's other
//! environment, against the first project's objects: ids answer `404`, lists show nothing of
//! theirs, references to them are refused, and nothing of theirs changes. An operation added to
//! the document without a rule here fails the test.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::scope::Environment;
use serde_json::{Value, json};

use crate::helpers::{TestApp, documented_operations, eventually};
use crate::webhooks::{Receiver, loopback_config};

/// The first project's objects, by the name the rules use.
struct Owned {
    agent_id: String,
    session_id: String,
    task_id: String,
    approval_id: String,
    mission_id: String,
    run_id: String,
    webhook_id: String,
}

const SECRET: &str = "acme-project-memory-secret";

async fn set_up(app: &TestApp, receiver: &Receiver) -> Owned {
    let key = &app.test_key;
    let agent = app
        .post("/v1/agents", key, json!({"name": "writer", "model": "mock/echo"}))
        .await
        .json();
    let webhook = app
        .post("/v1/webhooks", key, json!({"url": receiver.url, "events": ["*"]}))
        .await
        .json();
    app.call("PUT", "/v1/memory", Some(key), Some(json!({"content": SECRET})))
        .await;
    app.call(
        "PUT",
        "/v1/agents/writer/memory",
        Some(key),
        Some(json!({"content": "agent notes"})),
    )
    .await;
    let chat = app
        .post(
            "/v1/chat/completions",
            key,
            json!({"model": "writer", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    let session_id = chat.header("x-session-id").unwrap().to_string();
    let task = app
        .post(
            "/v1/tasks",
            key,
            json!({"title": "Ship", "assignTo": "writer", "sideEffects": true}),
        )
        .await
        .json();
    let task_id = task["id"].as_str().unwrap().to_string();
    let mission = app
        .post(
            "/v1/missions",
            key,
            json!({"name": "iso", "tasks": [
                {"title": "Draft", "assignTo": "writer"},
                {"title": "Send", "assignTo": "writer", "dependsOn": ["Draft"]}],
                "checkpoints": [{"name": "review", "afterTasks": ["Draft"], "blocksTasks": ["Send"]}]}),
        )
        .await
        .json();
    let mission_id = mission["id"].as_str().unwrap().to_string();
    let run = app
        .post(&format!("/v1/missions/{mission_id}/execute"), key, json!({}))
        .await
        .json();
    let run_id = run["id"].as_str().unwrap().to_string();
    // Everything settles: the approval waits, the run waits at its checkpoint, deliveries land.
    let settled = eventually(Duration::from_secs(20), || async {
        let approvals = app.get(&format!("/v1/approvals?taskId={task_id}"), key).await.json();
        let run = app
            .get(&format!("/v1/missions/{mission_id}/runs/{run_id}"), key)
            .await
            .json();
        let history = app.get("/v1/events/history?limit=1000", key).await.json();
        approvals.as_array().is_some_and(|a| a.len() == 1)
            && run["status"] == "paused"
            && receiver.requests().len() == history.as_array().unwrap().len()
    })
    .await;
    assert!(settled, "the first project's objects did not settle");
    let approvals = app.get(&format!("/v1/approvals?taskId={task_id}"), key).await.json();
    Owned {
        agent_id: agent["id"].as_str().unwrap().to_string(),
        session_id,
        task_id,
        approval_id: approvals[0]["id"].as_str().unwrap().to_string(),
        mission_id,
        run_id,
        webhook_id: webhook["id"].as_str().unwrap().to_string(),
    }
}

/// Everything the first project can read about its objects.
async fn snapshot(app: &TestApp, o: &Owned) -> Vec<(String, String)> {
    let paths = [
        format!("/v1/agents/{}", o.agent_id),
        "/v1/agents?limit=1000".to_string(),
        "/v1/memory".to_string(),
        "/v1/agents/writer/memory".to_string(),
        format!("/v1/chat/sessions/{}", o.session_id),
        format!("/v1/chat/sessions/{}/messages", o.session_id),
        "/v1/tasks?limit=1000".to_string(),
        format!("/v1/approvals/{}", o.approval_id),
        "/v1/missions?limit=1000".to_string(),
        format!("/v1/missions/{}/runs", o.mission_id),
        format!("/v1/missions/{}", o.mission_id),
        format!("/v1/webhooks/{}", o.webhook_id),
        "/v1/events/history?limit=1000".to_string(),
    ];
    let mut out = Vec::new();
    for path in paths {
        let response = app.get(&path, &app.test_key).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {}", response.text);
        out.push((path, response.text));
    }
    out
}

/// How one operation is tried by an outsider.
enum Rule {
    /// Needs no key: nothing to isolate.
    Public,
    /// A list of the caller's scope: none of the first project's ids may appear.
    List(String),
    /// An id (or name) of the first project in the path: `404`.
    ById(String, Value),
    /// Creates in the caller's own scope, referring to the first project's objects: refused
    /// with the status given.
    Refers(&'static str, Value, StatusCode),
    /// Writes the caller's own scope only (checked by the snapshot).
    Own(&'static str, Value),
    /// A stream of the caller's scope; the log it follows is checked through `List`.
    Stream,
}

fn rule(method: &str, template: &str, o: &Owned, receiver_url: &str) -> Option<Rule> {
    let fill = |t: &str| {
        t.replace("{idOrName}", &o.agent_id)
            .replace("{runId}", &o.run_id)
            .replace("{name}", "review")
    };
    let by_id = |id: &str, body: Value| Some(Rule::ById(fill(template).replace("{id}", id), body));
    let empty = json!({});
    Some(match (method, template) {
        ("GET", "/health" | "/metrics" | "/ready" | "/v1/openapi.json") => Rule::Public,
        (
            "GET",
            "/v1/agents" | "/v1/approvals" | "/v1/chat/sessions" | "/v1/missions" | "/v1/tasks" | "/v1/webhooks"
            | "/v1/models" | "/v1/events/history" | "/v1/memory",
        ) => Rule::List(format!("{template}?limit=1000")),
        ("GET", "/v1/events") => Rule::Stream,
        ("POST", "/v1/agents") => Rule::Own("/v1/agents", json!({"name": "writer", "model": "mock/echo"})),
        ("PUT", "/v1/memory") => Rule::Own("/v1/memory", json!({"content": "outsider"})),
        ("POST", "/v1/webhooks") => Rule::Own("/v1/webhooks", json!({"url": receiver_url, "events": ["*"]})),
        ("POST", "/v1/tasks") => Rule::Refers(
            "/v1/tasks",
            json!({"title": "Steal", "assignTo": o.agent_id, "dependsOn": [o.task_id]}),
            StatusCode::BAD_REQUEST,
        ),
        ("POST", "/v1/missions") => Rule::Refers(
            "/v1/missions",
            json!({"name": "steal", "tasks": [{"title": "Steal", "assignTo": o.agent_id}]}),
            StatusCode::BAD_REQUEST,
        ),
        ("POST", "/v1/chat/completions") => Rule::Refers(
            "/v1/chat/completions",
            json!({"model": o.agent_id, "messages": [{"role": "user", "content": "hi"}]}),
            StatusCode::NOT_FOUND,
        ),
        (_, "/v1/agents/{idOrName}/memory") => by_id(&o.agent_id, json!({"content": "x"}))?,
        (_, t) if t.starts_with("/v1/agents/") => by_id(&o.agent_id, json!({"role": "x"}))?,
        (_, t) if t.starts_with("/v1/chat/sessions/") => by_id(&o.session_id, empty)?,
        (_, "/v1/approvals/{id}/reject") => by_id(&o.approval_id, json!({"feedback": "no"}))?,
        (_, t) if t.starts_with("/v1/approvals/") => by_id(&o.approval_id, empty)?,
        (_, t) if t.starts_with("/v1/tasks/") => by_id(&o.task_id, empty)?,
        (_, t) if t.starts_with("/v1/missions/") => by_id(&o.mission_id, empty)?,
        (_, t) if t.starts_with("/v1/webhooks/") => by_id(&o.webhook_id, empty)?,
        (_, "/v1/models/{id}") => by_id(&o.agent_id, empty)?,
        _ => return None,
    })
}

async fn try_as(app: &TestApp, key: &str, method: &str, template: &str, rule: Rule, o: &Owned) {
    let ids = [
        &o.agent_id,
        &o.session_id,
        &o.task_id,
        &o.approval_id,
        &o.mission_id,
        &o.run_id,
        &o.webhook_id,
    ];
    match rule {
        Rule::Public | Rule::Stream => {}
        Rule::List(path) => {
            let response = app.get(&path, key).await;
            assert_eq!(response.status, StatusCode::OK, "{method} {path}: {}", response.text);
            for id in ids {
                assert!(!response.text.contains(id.as_str()), "{method} {path} shows {id}");
            }
            assert!(
                !response.text.contains(SECRET),
                "{method} {path} shows the project memory"
            );
        }
        Rule::ById(path, body) => {
            let body = (method != "GET" && method != "DELETE").then_some(body);
            let response = app.call(method, &path, Some(key), body).await;
            assert_eq!(
                response.status,
                StatusCode::NOT_FOUND,
                "{method} {path} ({template}): {}",
                response.text
            );
        }
        Rule::Refers(path, body, status) => {
            let response = app.call(method, path, Some(key), Some(body)).await;
            assert_eq!(response.status, status, "{method} {path}: {}", response.text);
        }
        Rule::Own(path, body) => {
            let response = app.call(method, path, Some(key), Some(body)).await;
            assert!(response.status.is_success(), "{method} {path}: {}", response.text);
        }
    }
}

#[tokio::test]
async fn every_operation_with_another_projects_or_environments_key_sees_and_changes_nothing() {
    let receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn_with(loopback_config()).await;
    let owned = set_up(&app, &receiver).await;
    let before = snapshot(&app, &owned).await;
    let doc: Value = serde_json::from_str(&app.call("GET", "/v1/openapi.json", None, None).await.text).unwrap();
    let operations = documented_operations(&doc);
    let outsiders = [
        ("another project", app.key_of("globex", Environment::Test).await),
        ("the other environment", app.live_key.clone()),
    ];
    let mut uncovered = Vec::new();
    for (who, key) in &outsiders {
        for (method, template) in &operations {
            match rule(method, template, &owned, &receiver.url) {
                Some(rule) => try_as(&app, key, method, template, rule, &owned).await,
                None => uncovered.push(format!("{method} {template}")),
            }
        }
        let after = snapshot(&app, &owned).await;
        for ((path, was), (_, is)) in before.iter().zip(&after) {
            assert_eq!(was, is, "{who} changed {path}");
        }
    }
    uncovered.dedup();
    assert!(
        uncovered.is_empty(),
        "operations without an isolation rule: {uncovered:?}"
    );
}
