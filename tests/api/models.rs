//! Spec §3.14: `/v1/models` lists what an OpenAI client may name as `model`, and answers errors
//! in the chat shape.

use axum::http::StatusCode;
use polpo_api::config::{Config, ProviderConfig};
use polpo_api::scope::Environment;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn models_list_agents_then_mock_then_the_operators_models() {
    let mut config = Config::default();
    config.providers.insert(
        "openai".into(),
        ProviderConfig {
            models: vec!["gpt-4o-mini".into()],
            ..ProviderConfig::default()
        },
    );
    // A listed model of a provider without a key is not usable, so not listed.
    config.providers.insert(
        "groq".into(),
        ProviderConfig {
            models: vec!["llama-3.3-70b".into()],
            ..ProviderConfig::default()
        },
    );
    let app = TestApp::spawn_with(config).await;
    for (name, model) in [("writer", "mock/echo"), ("coder", "openai:gpt-4o")] {
        let response = app
            .post("/v1/agents", &app.test_key, json!({"name": name, "model": model}))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    let response = app.get("/v1/models", &app.test_key).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let list = response.json();
    assert_eq!(list["object"], "list");
    assert_eq!(
        ids(&list),
        [
            "writer",
            "coder",
            "mock/echo",
            "mock/slow-echo",
            "mock/error-500",
            "mock/error-429",
            "mock/cut",
            "mock/tool",
            "openai:gpt-4o-mini"
        ]
    );
    let writer = &list["data"][0];
    assert_eq!(writer["object"], "model");
    assert_eq!(writer["owned_by"], "agent");
    assert_eq!(writer["polpo"]["model"], "mock/echo");
    assert!(writer["polpo"]["agentId"].as_str().unwrap().starts_with("agt_"));
    assert!(writer["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(list["data"][2]["owned_by"], "mock");
    assert_eq!(list["data"][8]["owned_by"], "openai");

    // The other environment's key sees none of these agents.
    let live = app.get("/v1/models", &app.live_key).await.json();
    assert_eq!(ids(&live)[0], "mock/echo");
    let other = app.key_of("other", Environment::Test).await;
    assert!(!ids(&app.get("/v1/models", &other).await.json()).contains(&"writer".to_string()));
}

#[tokio::test]
async fn one_model_by_agent_name_id_or_model_string_and_404_in_the_chat_shape() {
    let app = TestApp::spawn().await;
    let agent = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "writer", "model": "mock/echo"}),
        )
        .await
        .json();
    for id in ["writer", agent["id"].as_str().unwrap()] {
        let response = app.get(&format!("/v1/models/{id}"), &app.test_key).await;
        assert_eq!(response.status, StatusCode::OK, "{id}: {}", response.text);
        let model = response.json();
        assert_eq!((&model["id"], &model["owned_by"]), (&json!("writer"), &json!("agent")));
        assert_eq!(model["polpo"]["agentId"], agent["id"]);
    }
    // SDKs percent-encode the slash; the colon form names the same model.
    for path in ["mock%2Fecho", "mock:echo"] {
        let response = app.get(&format!("/v1/models/{path}"), &app.test_key).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {}", response.text);
        assert_eq!(response.json()["id"], "mock/echo");
    }
    for path in ["nope", "mock%2Fnope", "openai:gpt-4o", "mock/echo"] {
        let response = app.get(&format!("/v1/models/{path}"), &app.test_key).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}: {}", response.text);
        let error = &response.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{error}");
        assert_eq!(error["code"], "not_found");
    }
    let response = app.call("GET", "/v1/models", None, None).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.json()["error"]["code"], "unauthorized");
}
