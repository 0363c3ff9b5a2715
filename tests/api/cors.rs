//! Spec §1.1: CORS is off unless origins are configured; then a browser's preflight is answered
//! without a key, answers carry the allowed origin and expose the headers clients read, and an
//! `EventSource` (key in the query) can open `/v1/events`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polpo_api::config::Config;

use crate::helpers::{TestApp, TestResponse};

const ORIGIN: &str = "https://app.example.com";

async fn preflight(app: &TestApp, origin: &str) -> TestResponse {
    let request = Request::builder()
        .method("OPTIONS")
        .uri("/v1/agents")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
        .body(Body::empty())
        .unwrap();
    app.send(request).await
}

async fn from_browser(app: &TestApp, uri: &str, key: Option<&str>) -> TestResponse {
    let mut builder = Request::builder().uri(uri).header("origin", ORIGIN);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    app.send(builder.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn without_configured_origins_no_cors_header_is_sent() {
    let app = TestApp::spawn().await;
    let response = preflight(&app, ORIGIN).await;
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "a preflight is just a request without a key"
    );
    assert!(response.header("access-control-allow-origin").is_none());
    let response = from_browser(&app, "/v1/agents", Some(&app.test_key)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.header("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn configured_origins_get_preflights_and_exposed_headers() {
    let mut config = Config::default();
    config.server.cors_allowed_origins = vec![ORIGIN.to_string()];
    let app = TestApp::spawn_with(config).await;

    let response = preflight(&app, ORIGIN).await;
    assert!(response.status.is_success(), "preflight answered {}", response.status);
    assert_eq!(response.header("access-control-allow-origin"), Some(ORIGIN));
    let methods = response
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    for method in ["GET", "POST", "PATCH", "DELETE"] {
        assert!(methods.contains(method), "{method} not allowed: {methods}");
    }
    let headers = response
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type", "idempotency-key"] {
        assert!(headers.contains(header), "{header} not allowed: {headers}");
    }

    let response = from_browser(&app, "/v1/agents?limit=1", Some(&app.test_key)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("access-control-allow-origin"), Some(ORIGIN));
    let exposed = response
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in [
        "x-request-id",
        "x-session-id",
        "x-next-cursor",
        "x-ratelimit-remaining-requests",
        "retry-after",
        "retry-after-ms",
        "idempotent-replayed",
    ] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
    // A refusal carries the header too, so that the browser lets the client read the error.
    let response = from_browser(&app, "/v1/agents", None).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.header("access-control-allow-origin"), Some(ORIGIN));

    // An EventSource cannot send headers: the key travels in the query.
    let response = from_browser(&app, &format!("/v1/events?apiKey={}", app.test_key), None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("access-control-allow-origin"), Some(ORIGIN));

    let response = preflight(&app, "https://evil.example.net").await;
    assert!(
        response.header("access-control-allow-origin").is_none(),
        "an unlisted origin was allowed"
    );
}

#[test]
fn an_origin_that_is_not_a_header_value_stops_the_start() {
    let mut config = Config::default();
    config.server.cors_allowed_origins = vec!["https://bad\norigin".to_string()];
    let problem = polpo_api::middleware::cors::layer(&config.server.cors_allowed_origins).unwrap_err();
    assert!(problem.contains("cors_allowed_origins"), "{problem}");
}
