//! Request validation: the offending param named, framework-level failures in the same shape.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use super::{setup, user};

#[tokio::test]
async fn requests_are_validated_with_the_offending_param_named() {
    let s = setup().await;
    s.agent("a", "mock/echo", json!({})).await;
    for (body, status, param) in [
        (
            json!({"model": "mock/echo", "messages": user("x"), "colour": 1}),
            400,
            "colour",
        ),
        (json!({"model": "mock/echo", "messages": []}), 400, "messages"),
        (
            json!({"model": "mock/echo", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "messages[0].role",
        ),
        (
            json!({"model": "mock/echo", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
            400,
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "mock/echo", "messages": [{"role": "tool", "content": "x"}]}),
            400,
            "messages[0].tool_call_id",
        ),
        (json!({"model": "mock/echo", "messages": user("x"), "n": 2}), 400, "n"),
        (
            json!({"model": "mock/echo", "messages": user("x"), "stream_options": {"include_usage": true}}),
            400,
            "stream_options",
        ),
        (
            json!({"model": "mock/echo", "messages": user("x"), "max_tokens": 5, "max_completion_tokens": 5}),
            400,
            "max_completion_tokens",
        ),
        (
            json!({"model": "mock/echo", "messages": user("x"), "temperature": 3}),
            400,
            "temperature",
        ),
        (
            json!({"model": "mock/echo", "messages": user("x"), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            400,
            "tool_choice",
        ),
        (json!({"messages": user("x")}), 400, "model"),
        (json!({"model": "nobody", "messages": user("x")}), 404, "model"),
        (json!({"agent": "nobody", "messages": user("x")}), 404, "agent"),
        (json!({"model": "xai:grok-2", "messages": user("x")}), 400, "model"),
        (
            json!({"model": "mock/echo", "messages": [{"role": "assistant", "content": "x"}]}),
            400,
            "messages",
        ),
    ] {
        let response = s.chat(body.clone(), None).await;
        assert_eq!(response.status.as_u16(), status, "{body}: {}", response.text);
        let error = &response.json()["error"];
        assert_eq!(error["param"], param, "{body}: {}", response.text);
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(response.header("x-should-retry"), Some("false"));
    }
    assert!(
        s.app
            .get("/v1/chat/sessions", &s.app.test_key)
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty(),
        "no session for a bad request"
    );
    // Framework-level failures use the same shape on this path.
    let request = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", s.app.test_key))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let response = s.app.send(request).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(response.json()["error"]["code"], "bad_request");
    let wrong_method = s.app.get("/v1/chat/completions", &s.app.test_key).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.json()["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_request_carries_at_most_two_thousand_and_forty_eight_messages() {
    let s = setup().await;
    let many = |n: usize| -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| json!({"role": "user", "content": format!("m{i}")}))
            .collect()
    };
    let at_limit = s
        .app
        .post(
            "/v1/chat/completions",
            &s.app.test_key,
            json!({"model": "mock/echo", "messages": many(2048)}),
        )
        .await;
    assert_eq!(at_limit.status, StatusCode::OK, "{}", at_limit.text);
    let over = s
        .app
        .post(
            "/v1/chat/completions",
            &s.app.test_key,
            json!({"model": "mock/echo", "messages": many(2049)}),
        )
        .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.json()["error"]["param"], "messages", "{}", over.text);
}
