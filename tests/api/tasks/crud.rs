//! Creating, reading, listing, changing and deleting tasks; bad input; illegal actions.

use axum::http::StatusCode;
use serde_json::json;

use super::{agent, task};
use crate::helpers::TestApp;

#[tokio::test]
async fn bad_input_is_refused_by_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let long = "x".repeat(201);
    for (body, field) in [
        (json!({"assignTo": "writer"}), "title"),
        (json!({"title": "t"}), "assignTo"),
        (json!({"title": long, "assignTo": "writer"}), "title"),
        (json!({"title": "t", "assignTo": "nobody"}), "assignTo"),
        (
            json!({"title": "t", "assignTo": "writer", "priority": 5000}),
            "priority",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "maxRetries": 11}),
            "maxRetries",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "maxDuration": 10}),
            "maxDuration",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "deadline": "2001-01-01T00:00:00Z"}),
            "deadline",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "deadline": "soon"}),
            "deadline",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "dependsOn": ["task_01jz0000000000000000000000"]}),
            "dependsOn[0]",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "dependsOn": ["No such title"]}),
            "dependsOn[0]",
        ),
        (json!({"title": "t", "assignTo": "writer", "status": "done"}), "status"),
        (json!({"title": "t", "assignTo": "writer", "colour": "red"}), "colour"),
        (
            json!({"title": "t", "assignTo": "writer", "retryPolicy": {"fallbackAgent": "ghost"}}),
            "retryPolicy.fallbackAgent",
        ),
        (
            json!({"title": "t", "assignTo": "writer", "retryPolicy": {"escalateModel": "nope:x"}}),
            "retryPolicy.escalateModel",
        ),
    ] {
        let response = app.post("/v1/tasks", &app.test_key, body.clone()).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{body}: {}", response.text);
        let fields = &response.json()["details"]["fields"];
        assert!(fields.get(field).is_some(), "{body}: {fields}");
    }
    assert_eq!(app.get("/v1/tasks", &app.test_key).await.json(), json!([]));
}

#[tokio::test]
async fn titles_are_unique_among_open_tasks_of_a_group_and_cycles_are_refused() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let a = task(
        &app,
        json!({"title": "Same", "assignTo": "writer", "group": "g", "draft": true}),
    )
    .await;
    assert_eq!(a["status"], "draft");
    let again = app
        .post(
            "/v1/tasks",
            &app.test_key,
            json!({"title": "Same", "assignTo": "writer", "group": "g"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    // Another group may use the title.
    task(
        &app,
        json!({"title": "Same", "assignTo": "writer", "group": "h", "draft": true}),
    )
    .await;
    let a_id = a["id"].as_str().unwrap();
    let b = task(
        &app,
        json!({"title": "B", "assignTo": "writer", "group": "g", "dependsOn": [a_id], "draft": true}),
    )
    .await;
    let b_id = b["id"].as_str().unwrap();
    // A → B would close the cycle B → A.
    let cycle = app
        .patch(
            &format!("/v1/tasks/{a_id}"),
            &app.test_key,
            json!({"dependsOn": [b_id]}),
        )
        .await;
    assert_eq!(cycle.status, StatusCode::BAD_REQUEST, "{}", cycle.text);
    let own = app
        .patch(
            &format!("/v1/tasks/{a_id}"),
            &app.test_key,
            json!({"dependsOn": [a_id]}),
        )
        .await;
    assert_eq!(own.status, StatusCode::BAD_REQUEST, "{}", own.text);
    // Deleting A is refused while B depends on it, unless forced; forced, B fails.
    let refused = app.delete(&format!("/v1/tasks/{a_id}"), &app.test_key).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    let forced = app.delete(&format!("/v1/tasks/{a_id}?force=true"), &app.test_key).await;
    assert_eq!(forced.status, StatusCode::NO_CONTENT, "{}", forced.text);
    let b = super::get(&app, b_id).await;
    assert_eq!(b["status"], "failed");
    assert_eq!(b["result"]["error"]["code"], "dependency_removed");
}

#[tokio::test]
async fn illegal_actions_answer_409_with_the_allowed_statuses() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let draft = task(&app, json!({"title": "Later", "assignTo": "writer", "draft": true})).await;
    let id = draft["id"].as_str().unwrap();
    let retry = app
        .post(&format!("/v1/tasks/{id}/retry"), &app.test_key, json!({}))
        .await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.text);
    assert_eq!(retry.json()["details"]["allowed"], json!(["failed"]));
    let killed = app
        .post(&format!("/v1/tasks/{id}/kill"), &app.test_key, json!({}))
        .await;
    assert_eq!(killed.status, StatusCode::OK, "{}", killed.text);
    assert_eq!(killed.json()["status"], "failed");
    assert_eq!(killed.json()["result"]["error"]["code"], "killed");
    let again = app
        .post(&format!("/v1/tasks/{id}/kill"), &app.test_key, json!({}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let queue = app
        .post(&format!("/v1/tasks/{id}/queue"), &app.test_key, json!({}))
        .await;
    assert_eq!(queue.status, StatusCode::CONFLICT);
    assert_eq!(queue.json()["details"]["allowed"], json!(["draft"]));
    let reassess = app
        .post(&format!("/v1/tasks/{id}/reassess"), &app.test_key, json!({}))
        .await;
    assert_eq!(
        reassess.status,
        StatusCode::BAD_REQUEST,
        "no expectations: {}",
        reassess.text
    );
    // A deleted agent with open tasks: 409 naming them, unless forced.
    let open = task(&app, json!({"title": "Open", "assignTo": "writer", "draft": true})).await;
    let refused = app.delete("/v1/agents/writer", &app.test_key).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.json()["details"]["taskIds"], json!([open["id"]]));
    let forced = app.delete("/v1/agents/writer?force=true", &app.test_key).await;
    assert_eq!(forced.status, StatusCode::NO_CONTENT);
    let open = super::get(&app, open["id"].as_str().unwrap()).await;
    assert_eq!(open["result"]["error"]["code"], "agent_deleted");
}
