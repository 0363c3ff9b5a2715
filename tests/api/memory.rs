//! Spec §2.2 rule 3: project and agent memory.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn project_memory_reads_empty_then_holds_what_was_put() {
    let app = TestApp::spawn().await;
    let empty = app.get("/v1/memory", &app.test_key).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json(), json!({"content": "", "updatedAt": null}));
    let put = app
        .call(
            "PUT",
            "/v1/memory",
            Some(&app.test_key),
            Some(json!({"content": "# Facts\nWe ship on Fridays."})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert!(put.json()["updatedAt"].is_string());
    let read = app.get("/v1/memory", &app.test_key).await.json();
    assert_eq!(read["content"], "# Facts\nWe ship on Fridays.");
    let cleared = app
        .call("PUT", "/v1/memory", Some(&app.test_key), Some(json!({"content": ""})))
        .await
        .json();
    assert_eq!(cleared["content"], "");
}

#[tokio::test]
async fn agent_memory_names_its_agent_and_is_bounded() {
    let app = TestApp::spawn().await;
    let agent = app.create_agent(&app.test_key, "ada").await;
    let id = agent["id"].as_str().unwrap();
    let put = app
        .call(
            "PUT",
            &format!("/v1/agents/{id}/memory"),
            Some(&app.test_key),
            Some(json!({"content": "likes Rust"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let read = app.get("/v1/agents/ada/memory", &app.test_key).await.json();
    assert_eq!(read["agent"], "ada");
    assert_eq!(read["content"], "likes Rust");
    // Agent memory is separate from project memory.
    assert_eq!(app.get("/v1/memory", &app.test_key).await.json()["content"], "");

    let too_big = "x".repeat(64 * 1024 + 1);
    for body in [
        json!({"content": too_big}),
        json!({}),
        json!({"content": 5}),
        json!({"content": "ok", "extra": 1}),
    ] {
        let response = app
            .call("PUT", "/v1/agents/ada/memory", Some(&app.test_key), Some(body))
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        app.get("/v1/agents/ada/memory", &app.test_key).await.json()["content"],
        "likes Rust"
    );
    let missing = app
        .call(
            "PUT",
            "/v1/agents/ghost/memory",
            Some(&app.test_key),
            Some(json!({"content": "x"})),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}
