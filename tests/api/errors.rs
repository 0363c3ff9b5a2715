//! Spec §0.4, §1.1, §1.6, §1.9: every failure is JSON with the right status, never plain text.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, TestResponse};

fn assert_json_error(response: &TestResponse, status: StatusCode, code: &str) {
    assert_eq!(response.status, status, "{}", response.text);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["code"], code);
    assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(response.header("x-request-id").is_some());
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let app = TestApp::spawn().await;
    let request = Request::post("/v1/agents")
        .header("authorization", format!("Bearer {}", app.test_key))
        .header("content-type", "application/json")
        .body(Body::from("{\"name\": \"x\", "))
        .unwrap();
    let response = app.send(request).await;
    assert_json_error(&response, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(response.header("x-should-retry"), Some("false"));
    for body in ["[1, 2]", "\"text\"", "null"] {
        let request = Request::post("/v1/agents")
            .header("authorization", format!("Bearer {}", app.test_key))
            .header("content-type", "application/json; charset=utf-8")
            .body(Body::from(body))
            .unwrap();
        assert_json_error(&app.send(request).await, StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn a_wrong_content_type_is_a_bad_request() {
    let app = TestApp::spawn().await;
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut builder = Request::post("/v1/agents").header("authorization", format!("Bearer {}", app.test_key));
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        let response = app
            .send(builder.body(Body::from(r#"{"name":"x","model":"mock/echo"}"#)).unwrap())
            .await;
        assert_json_error(&response, StatusCode::BAD_REQUEST, "bad_request");
        assert!(response.json()["error"].as_str().unwrap().contains("application/json"));
    }
    assert_eq!(app.get("/v1/agents", &app.test_key).await.json(), json!([]));
}

#[tokio::test]
async fn a_body_over_the_limit_is_payload_too_large() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(1024 * 1024 + 1);
    let body = json!({"name": "big", "model": "mock/echo", "systemPrompt": big});
    let response = app.post("/v1/agents", &app.test_key, body).await;
    assert_json_error(&response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(response.header("x-should-retry"), Some("false"));
    // Just under the limit but over the 64 KiB text bound: a field error instead.
    let body = json!({"name": "big", "model": "mock/echo", "systemPrompt": "x".repeat(65 * 1024)});
    let response = app.post("/v1/agents", &app.test_key, body).await;
    assert_json_error(&response, StatusCode::BAD_REQUEST, "bad_request");
    assert!(response.json()["details"]["fields"]["systemPrompt"].is_string());
}

#[tokio::test]
async fn unknown_routes_and_trailing_slashes_are_not_found() {
    let app = TestApp::spawn().await;
    for path in ["/v1/nothing", "/v1/agents/", "/", "/v2/agents"] {
        let response = app.get(path, &app.test_key).await;
        assert_json_error(&response, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn a_wrong_method_is_method_not_allowed_with_allow() {
    let app = TestApp::spawn().await;
    let response = app
        .call("PUT", "/v1/agents", Some(&app.test_key), Some(json!({})))
        .await;
    assert_json_error(&response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = response.header("allow").unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let response = app
        .call("POST", "/v1/memory", Some(&app.test_key), Some(json!({})))
        .await;
    assert_json_error(&response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

#[tokio::test]
async fn deep_nesting_is_refused() {
    let app = TestApp::spawn().await;
    let mut value = json!("leaf");
    for _ in 0..70 {
        value = json!({"k": value});
    }
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "n", "model": "mock/echo", "metadata": value}),
        )
        .await;
    assert_json_error(&response, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn every_response_has_a_fresh_request_id() {
    let app = TestApp::spawn().await;
    let request = Request::get("/health")
        .header("x-request-id", "req_client_chosen")
        .body(Body::empty())
        .unwrap();
    let first = app.send(request).await;
    let second = app.call("GET", "/health", None, None).await;
    let a = first.header("x-request-id").unwrap();
    let b = second.header("x-request-id").unwrap();
    assert!(a.starts_with("req_") && b.starts_with("req_"));
    assert_ne!(a, "req_client_chosen", "a client-supplied id is never reused");
    assert_ne!(a, b);
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_a_json_431() {
    let app = TestApp::spawn().await;
    let with = |extra: Vec<(String, String)>, path: &str| {
        let mut builder = axum::http::Request::get(path).header("authorization", format!("Bearer {}", app.test_key));
        for (name, value) in extra {
            builder = builder.header(name, value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    };
    let many: Vec<(String, String)> = (0..70).map(|i| (format!("x-extra-{i}"), "v".to_string())).collect();
    let response = app.send(with(many, "/v1/agents")).await;
    assert_eq!(response.status.as_u16(), 431, "{}", response.text);
    assert_eq!(response.json()["code"], "headers_too_large");
    let big = vec![("x-big".to_string(), "a".repeat(20_000))];
    let response = app.send(with(big.clone(), "/v1/agents")).await;
    assert_eq!(response.status.as_u16(), 431, "{}", response.text);
    // On the OpenAI-compatible paths, in OpenAI's shape.
    let response = app.send(with(big, "/v1/models")).await;
    assert_eq!(response.status.as_u16(), 431, "{}", response.text);
    assert_eq!(
        response.json()["error"]["code"],
        "headers_too_large",
        "{}",
        response.text
    );
    // Ordinary requests are unaffected.
    let fine = vec![("x-trace".to_string(), "a".repeat(1000))];
    assert_eq!(app.send(with(fine, "/v1/agents")).await.status.as_u16(), 200);
}
