//! Spec §1.2: carriers, verification steps, the `401` bodies, revocation and expiry.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polpo_api::auth::admin;
use polpo_api::scope::Environment;
use polpo_api::store;

use crate::helpers::{TestApp, concrete_path, documented_operations, eventually};

/// Flips one character of the random part, keeping the key well-formed.
fn corrupt(key: &str) -> String {
    let mut bytes = key.as_bytes().to_vec();
    bytes[15] = if bytes[15] == b'a' { b'b' } else { b'a' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn every_route_without_a_key_answers_401_unauthorized() {
    let app = TestApp::spawn().await;
    let doc = app.call("GET", "/v1/openapi.json", None, None).await.json();
    let public = ["/health", "/ready", "/metrics", "/v1/openapi.json"];
    let mut checked = 0;
    let mut operations = documented_operations(&doc);
    // Deny by default covers what the document does not list too.
    operations.extend([
        ("GET".into(), "/v1/nope".into()),
        ("POST".into(), "/health".into()),
        ("DELETE".into(), "/v1/agents".into()),
    ]);
    for (method, template) in operations {
        if method == "GET" && public.contains(&template.as_str()) {
            continue;
        }
        let response = app.call(&method, &concrete_path(&template), None, None).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method} {template}");
        // The chat completions and models paths answer in the OpenAI error shape (spec §3.11,
        // §3.14).
        let body = response.json();
        let code = if template == "/v1/chat/completions" || template.starts_with("/v1/models") {
            &body["error"]["code"]
        } else {
            &body["code"]
        };
        assert_eq!(code, "unauthorized", "{method} {template}");
        assert_eq!(
            response.header("www-authenticate"),
            Some("Bearer"),
            "{method} {template}"
        );
        assert!(response.header("x-request-id").is_some_and(|id| id.starts_with("req_")));
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} operations checked");
}

#[tokio::test]
async fn a_corrupted_key_is_refused_without_touching_the_database() {
    let app = TestApp::spawn().await;
    // Warm up: one lookup for the good key.
    assert_eq!(app.get("/v1/agents", &app.test_key).await.status, StatusCode::OK);
    let before = app.metric("polpo_auth_key_lookups_total").await;
    for _ in 0..5 {
        let response = app.get("/v1/agents", &corrupt(&app.test_key)).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
        assert_eq!(response.json()["code"], "invalid_api_key");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(
        app.metric("polpo_auth_key_lookups_total").await,
        before,
        "a bad checksum reached the database"
    );

    // The counter does move for a well-formed key that is simply unknown.
    let unknown = polpo_api::auth::key::generate(Environment::Test).unwrap();
    let response = app.get("/v1/agents", &unknown).await;
    assert_eq!(response.json()["code"], "invalid_api_key");
    assert_eq!(app.metric("polpo_auth_key_lookups_total").await, before + 1.0);
}

#[tokio::test]
async fn malformed_credentials_are_unauthorized_and_say_nothing_more() {
    let app = TestApp::spawn().await;
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer sk_test_short", "Token abc"] {
        let request = Request::get("/v1/agents")
            .header("authorization", value)
            .body(Body::empty())
            .unwrap();
        let response = app.send(request).await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{value}");
        assert_eq!(
            response.json(),
            serde_json::json!({"error": "missing or malformed API key", "code": "unauthorized"})
        );
    }
}

#[tokio::test]
async fn keys_are_accepted_in_either_header_but_not_in_the_query_of_rest_routes() {
    let app = TestApp::spawn().await;
    let request = Request::get("/v1/agents")
        .header("x-api-key", &app.test_key)
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::OK);
    let request = Request::get("/v1/agents")
        .header("authorization", format!("bEaReR {}", app.test_key))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::OK);
    let response = app
        .call("GET", &format!("/v1/agents?apiKey={}", app.test_key), None, None)
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.json()["code"], "unauthorized");
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_five_seconds() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/v1/agents", &app.test_key).await.status, StatusCode::OK);
    let hash = polpo_api::auth::key::hash(&app.test_key);
    let row = store::keys::find_by_hash(&app.db.pool, &hash).await.unwrap().unwrap();
    admin::revoke_key(&app.db, &row.id).await.unwrap();
    let refused = eventually(Duration::from_secs(5), || async {
        let response = app.get("/v1/agents", &app.test_key).await;
        response.status == StatusCode::UNAUTHORIZED && response.json()["code"] == "invalid_api_key"
    })
    .await;
    assert!(refused, "revoked key still accepted 5 s after its revocation");
    // The other key of the project is unaffected.
    assert_eq!(app.get("/v1/agents", &app.live_key).await.status, StatusCode::OK);
}

/// Under load thousands of requests find the same key uncached at once; they wait for one lookup
/// instead of each asking the database (and waiting behind the others).
#[tokio::test]
async fn requests_arriving_together_with_an_uncached_key_ask_the_database_once() {
    const REQUESTS: usize = 100;
    let app = TestApp::spawn().await;
    let key = app.key_of("acme", Environment::Test).await;
    let before = app.metric("polpo_auth_key_lookups_total").await;
    let statuses = futures_util::future::join_all((0..REQUESTS).map(|_| app.get("/v1/agents", &key))).await;
    assert!(statuses.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(
        app.metric("polpo_auth_key_lookups_total").await - before,
        1.0,
        "{REQUESTS} requests sent together looked their key up more than once"
    );

    // Unknown keys are never cached, but requests sent together share their refusal too.
    let unknown = polpo_api::auth::key::generate(Environment::Test).unwrap();
    let before = app.metric("polpo_auth_key_lookups_total").await;
    let refused = futures_util::future::join_all((0..REQUESTS).map(|_| app.get("/v1/agents", &unknown))).await;
    assert!(refused.iter().all(|r| r.json()["code"] == "invalid_api_key"));
    let lookups = app.metric("polpo_auth_key_lookups_total").await - before;
    assert!(
        (1.0..REQUESTS as f64).contains(&lookups),
        "{lookups} lookups for {REQUESTS} requests sent together"
    );
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let app = TestApp::spawn().await;
    let key = admin::create_key(&app.db, "acme", Environment::Test, None, Some(Duration::from_millis(1)))
        .await
        .unwrap()
        .plaintext;
    let refused = eventually(Duration::from_secs(2), || async {
        app.get("/v1/agents", &key).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused);
    assert_eq!(app.get("/v1/agents", &key).await.json()["code"], "invalid_api_key");
}

#[tokio::test]
async fn only_hashes_and_display_prefixes_are_stored() {
    let app = TestApp::spawn().await;
    let row = store::keys::find_by_hash(&app.db.pool, &polpo_api::auth::key::hash(&app.test_key))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.prefix, &app.test_key[..12]);
    assert_eq!(row.environment, "test");
    assert_ne!(row.hash, app.test_key);
    assert_eq!(row.hash.len(), 64);
}
