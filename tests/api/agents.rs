//! Spec §2.1–§2.2: agent CRUD, validation and pagination.

use axum::http::StatusCode;
use polpo_api::scope::{Environment, Scope};
use polpo_api::store;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn create_returns_the_full_agent_with_defaults() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "writer", "model": "anthropic:claude-sonnet-4-5", "role": "Writes copy"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED);
    let agent = response.json();
    assert!(agent["id"].as_str().unwrap().starts_with("agt_"));
    assert_eq!(agent["name"], "writer");
    assert_eq!(agent["model"], "anthropic:claude-sonnet-4-5");
    assert_eq!(agent["maxTurns"], 10);
    assert_eq!(agent["allowedTools"], json!([]));
    assert_eq!(agent["metadata"], json!({}));
    for field in [
        "systemPrompt",
        "maxConcurrency",
        "reasoning",
        "identity",
        "reportsTo",
        "temperature",
        "maxTokens",
    ] {
        assert!(agent[field].is_null(), "{field} should be null");
    }
    assert!(agent["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(agent["createdAt"], agent["updatedAt"]);
}

#[tokio::test]
async fn a_duplicate_name_is_a_conflict() {
    let app = TestApp::spawn().await;
    app.create_agent(&app.test_key, "writer").await;
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "writer", "model": "mock/echo"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(response.json()["code"], "conflict");
    assert_eq!(response.header("x-should-retry"), Some("false"));
}

#[tokio::test]
async fn agents_are_addressable_by_id_and_by_name() {
    let app = TestApp::spawn().await;
    let created = app.create_agent(&app.test_key, "researcher").await;
    let id = created["id"].as_str().unwrap();
    let by_id = app.get(&format!("/v1/agents/{id}"), &app.test_key).await;
    let by_name = app.get("/v1/agents/researcher", &app.test_key).await;
    assert_eq!(by_id.status, StatusCode::OK);
    assert_eq!(by_id.json(), created);
    assert_eq!(by_name.json(), created);
    let missing = app.get("/v1/agents/nobody", &app.test_key).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["code"], "not_found");
}

#[tokio::test]
async fn patch_replaces_fields_and_merges_identity_one_level() {
    let app = TestApp::spawn().await;
    app.create_agent(&app.test_key, "lead").await;
    let created = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "ada", "model": "mock/echo", "temperature": 0.2,
                   "identity": {"displayName": "Ada", "title": "Staff Engineer", "responsibilities": ["API design"],
                                "timezone": "Europe/Rome"}}),
        )
        .await
        .json();
    let response = app
        .patch(
            "/v1/agents/ada",
            &app.test_key,
            json!({"identity": {"title": null, "tone": "direct", "responsibilities": ["code review"]},
                   "temperature": null, "model": "openai:gpt-4o-mini", "reportsTo": "lead", "maxTurns": 3}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let agent = response.json();
    assert_eq!(agent["identity"]["displayName"], "Ada", "untouched members stay");
    assert!(agent["identity"]["title"].is_null(), "null removes a member");
    assert_eq!(agent["identity"]["tone"], "direct");
    assert_eq!(agent["identity"]["timezone"], "Europe/Rome");
    assert_eq!(
        agent["identity"]["responsibilities"],
        json!(["code review"]),
        "arrays are replaced whole"
    );
    assert!(agent["temperature"].is_null());
    assert_eq!(agent["model"], "openai:gpt-4o-mini");
    assert_eq!(agent["reportsTo"], "lead");
    assert_eq!(agent["maxTurns"], 3);
    assert_eq!(agent["createdAt"], created["createdAt"]);
    assert!(agent["updatedAt"].as_str().unwrap() >= created["updatedAt"].as_str().unwrap());
    // The change is stored, not only echoed.
    assert_eq!(app.get("/v1/agents/ada", &app.test_key).await.json(), agent);

    let cleared = app
        .patch(
            "/v1/agents/ada",
            &app.test_key,
            json!({"identity": null, "maxTurns": null}),
        )
        .await
        .json();
    assert!(cleared["identity"].is_null());
    assert_eq!(cleared["maxTurns"], 10, "null resets to the default");
}

#[tokio::test]
async fn patch_refuses_a_new_name_a_bad_model_and_self_reporting() {
    let app = TestApp::spawn().await;
    let before = app.create_agent(&app.test_key, "ada").await;
    for (body, field) in [
        (json!({"name": "grace"}), "name"),
        (json!({"model": "nope:thing"}), "model"),
        (json!({"reportsTo": "ada"}), "reportsTo"),
        (json!({"reportsTo": "ghost"}), "reportsTo"),
    ] {
        let response = app.patch("/v1/agents/ada", &app.test_key, body.clone()).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            response.json()["details"]["fields"][field].is_string(),
            "{body}: {}",
            response.text
        );
    }
    assert_eq!(
        app.get("/v1/agents/ada", &app.test_key).await.json(),
        before,
        "a refused PATCH changes nothing"
    );
}

#[tokio::test]
async fn delete_removes_the_agent_and_its_memory() {
    let app = TestApp::spawn().await;
    app.create_agent(&app.test_key, "temp").await;
    let put = app
        .call(
            "PUT",
            "/v1/agents/temp/memory",
            Some(&app.test_key),
            Some(json!({"content": "notes"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    let response = app.delete("/v1/agents/temp", &app.test_key).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    assert!(response.text.is_empty());
    assert_eq!(
        app.get("/v1/agents/temp", &app.test_key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/v1/agents/temp", &app.test_key).await.status,
        StatusCode::NOT_FOUND
    );
    // A new agent of the same name starts with empty memory.
    app.create_agent(&app.test_key, "temp").await;
    let memory = app.get("/v1/agents/temp/memory", &app.test_key).await.json();
    assert_eq!(memory["content"], "");
    assert!(memory["updatedAt"].is_null());
}

#[tokio::test]
async fn unknown_and_read_only_fields_are_named() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "a", "model": "mock/echo", "colour": "blue", "id": "agt_x"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let body = response.json();
    assert_eq!(body["code"], "bad_request");
    assert_eq!(body["details"]["fields"]["colour"], "unknown field");
    assert_eq!(body["details"]["fields"]["id"], "read-only field");
    assert!(body["error"].as_str().unwrap().contains("colour"));
    assert_eq!(
        app.get("/v1/agents", &app.test_key).await.json(),
        json!([]),
        "nothing was created"
    );
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "agt_sneaky", "model": "mock/echo", "temperature": 3, "maxTurns": 0,
                   "reasoning": "extreme", "identity": {"timezone": "Mars/Base", "shoeSize": "42"},
                   "metadata": {"k": 5}, "allowedTools": ["ok", "bad tool"]}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let fields = response.json()["details"]["fields"].clone();
    for path in [
        "name",
        "temperature",
        "maxTurns",
        "reasoning",
        "identity.timezone",
        "identity.shoeSize",
        "metadata.k",
        "allowedTools[1]",
    ] {
        assert!(fields[path].is_string(), "{path} missing from {fields}");
    }
}

#[tokio::test]
async fn model_strings_must_name_a_usable_provider() {
    let app = TestApp::spawn().await;
    for model in [
        "gpt-4o",
        "nope:model",
        "xai:grok-2",
        "mock/not-a-mock-model",
        "openai:",
        "Bad/model",
    ] {
        let response = app
            .post("/v1/agents", &app.test_key, json!({"name": "m", "model": model}))
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{model}");
        assert!(response.json()["details"]["fields"]["model"].is_string(), "{model}");
    }
    // xai has no key in this environment; the message says which variable to set.
    let response = app
        .post("/v1/agents", &app.test_key, json!({"name": "m", "model": "xai:grok-2"}))
        .await;
    assert!(response.text.contains("XAI_API_KEY"), "{}", response.text);
    // ollama needs no key, so it answers whoever listens on its address: off until configured.
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "m", "model": "ollama:llama3.1:8b"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.text.contains("[providers.ollama]"), "{}", response.text);
    for model in ["openai:gpt-4o", "anthropic/claude-sonnet-4-5", "mock:tool"] {
        let name = format!("m{}", model.len());
        let response = app
            .post("/v1/agents", &app.test_key, json!({"name": name, "model": model}))
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{model}: {}", response.text);
    }
    let response = app.post("/v1/agents", &app.test_key, json!({"name": "nomodel"})).await;
    assert_eq!(response.json()["details"]["fields"]["model"], "required");
}

#[tokio::test]
async fn ten_thousand_agents_are_listed_in_pages_of_a_thousand() {
    let app = TestApp::spawn().await;
    let scope = Scope {
        project: "acme".into(),
        environment: Environment::Test,
    };
    // Seeded through the store in one transaction to keep the test fast; listing is under test.
    let mut tx = app.db.pool.begin().await.unwrap();
    let mut expected = Vec::new();
    for i in 0..10_000 {
        let id = polpo_api::ids::new_id("agt_");
        let name = format!("agent-{i:05}");
        let body = json!({"id": id, "name": name, "role": null, "model": "mock/echo", "systemPrompt": null,
            "allowedTools": [], "skills": [], "maxTurns": 10, "maxConcurrency": null, "reasoning": null,
            "identity": null, "reportsTo": null, "temperature": null, "maxTokens": null, "metadata": {},
            "createdAt": "2026-01-01T00:00:00.000Z", "updatedAt": "2026-01-01T00:00:00.000Z"});
        let row = store::agents::AgentRow {
            id: id.clone(),
            name,
            body: body.to_string(),
            max_concurrency: None,
        };
        store::agents::insert(&mut *tx, &scope, &row, 0).await.unwrap();
        expected.push(id);
    }
    tx.commit().await.unwrap();
    // One agent in the live environment must not show up.
    app.create_agent(&app.live_key, "live-only").await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(cursor) => format!("/v1/agents?limit=1000&after={cursor}"),
            None => "/v1/agents?limit=1000".to_string(),
        };
        let response = app.get(&path, &app.test_key).await;
        assert_eq!(response.status, StatusCode::OK);
        let page = response.json();
        let page = page.as_array().unwrap();
        pages += 1;
        seen.extend(page.iter().map(|a| a["id"].as_str().unwrap().to_string()));
        match response.header("x-next-cursor") {
            Some(cursor) => {
                assert_eq!(page.len(), 1000);
                assert_eq!(cursor, page.last().unwrap()["id"].as_str().unwrap());
                after = Some(cursor.to_string());
            }
            None => break,
        }
        assert!(pages <= 11, "pagination does not end");
    }
    assert_eq!(pages, 10);
    assert_eq!(seen, expected, "every agent once, in creation order");
}

#[tokio::test]
async fn list_parameters_are_checked() {
    let app = TestApp::spawn().await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "after=nope",
        "after=task_01jz8k2m4p6r8t0v2x4z6b8d0f",
        "colour=blue",
    ] {
        let response = app.get(&format!("/v1/agents?{query}"), &app.test_key).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(response.json()["code"], "bad_request");
    }
    let a = app.create_agent(&app.test_key, "a").await;
    app.create_agent(&app.test_key, "b").await;
    app.create_agent(&app.test_key, "c").await;
    let response = app.get("/v1/agents?limit=2", &app.test_key).await;
    assert_eq!(response.json().as_array().unwrap().len(), 2);
    let cursor = response.header("x-next-cursor").unwrap().to_string();
    let rest = app.get(&format!("/v1/agents?after={cursor}"), &app.test_key).await;
    assert_eq!(rest.json()[0]["name"], "c");
    assert!(rest.header("x-next-cursor").is_none());
    // A deleted item still works as a cursor.
    app.delete("/v1/agents/a", &app.test_key).await;
    let after_deleted = app
        .get(
            &format!("/v1/agents?after={}", a["id"].as_str().unwrap()),
            &app.test_key,
        )
        .await;
    assert_eq!(after_deleted.json().as_array().unwrap().len(), 2);
}
