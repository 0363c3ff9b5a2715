//! Spec §1.3: live and test, and different projects, never see each other's objects.

use axum::http::StatusCode;
use polpo_api::scope::Environment;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn objects_are_invisible_outside_their_scope() {
    let app = TestApp::spawn().await;
    let other_project_live = app.key_of("globex", Environment::Live).await;
    let other_project_test = app.key_of("globex", Environment::Test).await;
    let live_agent = app.create_agent(&app.live_key, "writer").await;
    let live_id = live_agent["id"].as_str().unwrap().to_string();

    for outsider in [&app.test_key, &other_project_live, &other_project_test] {
        for target in [live_id.as_str(), "writer"] {
            let path = format!("/v1/agents/{target}");
            let get = app.get(&path, outsider).await;
            assert_eq!(get.status, StatusCode::NOT_FOUND);
            // Answered exactly like an id that never existed.
            let never = app
                .get(&format!("/v1/agents/{}", polpo_api::ids::new_id("agt_")), outsider)
                .await;
            assert_eq!(get.json()["code"], never.json()["code"]);
            assert_eq!(
                app.patch(&path, outsider, json!({"role": "x"})).await.status,
                StatusCode::NOT_FOUND
            );
            assert_eq!(app.delete(&path, outsider).await.status, StatusCode::NOT_FOUND);
            assert_eq!(
                app.get(&format!("{path}/memory"), outsider).await.status,
                StatusCode::NOT_FOUND
            );
        }
        assert_eq!(app.get("/v1/agents", outsider).await.json(), json!([]));
    }
    // Untouched by all of that.
    assert_eq!(
        app.get(&format!("/v1/agents/{live_id}"), &app.live_key).await.json(),
        live_agent
    );

    // The same name may exist once per scope, and each key sees only its own.
    let test_agent = app.create_agent(&app.test_key, "writer").await;
    let other_agent = app.create_agent(&other_project_live, "writer").await;
    assert_ne!(test_agent["id"], live_agent["id"]);
    assert_eq!(app.get("/v1/agents/writer", &app.test_key).await.json(), test_agent);
    assert_eq!(
        app.get("/v1/agents/writer", &other_project_live).await.json(),
        other_agent
    );
    assert_eq!(app.get("/v1/agents/writer", &app.live_key).await.json(), live_agent);
    let listed = app.get("/v1/agents", &app.live_key).await.json();
    assert_eq!(listed, json!([live_agent]));
}

#[tokio::test]
async fn memory_is_scoped_too() {
    let app = TestApp::spawn().await;
    let put = app
        .call(
            "PUT",
            "/v1/memory",
            Some(&app.live_key),
            Some(json!({"content": "live facts"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(app.get("/v1/memory", &app.test_key).await.json()["content"], "");
    let other = app.key_of("globex", Environment::Live).await;
    assert_eq!(app.get("/v1/memory", &other).await.json()["content"], "");
    assert_eq!(
        app.get("/v1/memory", &app.live_key).await.json()["content"],
        "live facts"
    );
}
