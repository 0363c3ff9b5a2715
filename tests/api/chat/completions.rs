//! Plain answers through agents and providers: the composed prompt sent upstream and the mock provider.

use axum::http::StatusCode;
use serde_json::json;

use super::{setup, user};
use crate::fakes::OK_TEXT;

#[tokio::test]
async fn an_agent_answers_through_an_openai_provider_with_its_composed_prompt() {
    let s = setup().await;
    s.agent(
        "writer",
        "openai:ok",
        json!({"systemPrompt": "You write release notes.", "role": "Writer", "temperature": 0.3, "maxTokens": 100,
               "identity": {"tone": "direct"}}),
    )
    .await;
    s.app
        .call(
            "PUT",
            "/v1/memory",
            Some(&s.app.test_key),
            Some(json!({"content": "Polpo 2.0 ships Friday."})),
        )
        .await;
    s.app
        .call(
            "PUT",
            "/v1/agents/writer/memory",
            Some(&s.app.test_key),
            Some(json!({"content": "Likes bullets."})),
        )
        .await;

    let response = s
        .chat(
            json!({"agent": "writer", "messages": [{"role": "developer", "content": "Answer in English."},
                                                   {"role": "user", "content": "Summarise 2.0"}], "max_tokens": 42}),
            None,
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let body = response.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["model"], "openai:ok",
        "the model string as written, not the agent name"
    );
    assert_eq!(body["choices"][0]["message"]["content"], OK_TEXT);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"].as_i64().unwrap() + body["usage"]["completion_tokens"].as_i64().unwrap()
    );
    assert!(response.header("x-session-id").unwrap().starts_with("sess_"));

    let sent = s.openai.last_request();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-upstream-openai-secret");
    assert_eq!(sent.body["model"], "ok");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(
        sent.body["stream_options"]["include_usage"], true,
        "usage is always requested upstream"
    );
    assert_eq!(sent.body["temperature"], 0.3, "agent default");
    assert_eq!(sent.body["max_completion_tokens"], 42, "request over agent default");
    let messages = sent.body["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        2,
        "one system message, then the user message: {messages:?}"
    );
    let system = messages[0]["content"].as_str().unwrap();
    let order = [
        "You write release notes.",
        "Name: writer",
        "Tone: direct",
        "Polpo 2.0 ships Friday.",
        "Likes bullets.",
        "Answer in English.",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|p| system.find(p).unwrap_or_else(|| panic!("{p} missing from {system}")))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "parts out of order: {system}"
    );
    assert_eq!(messages[1], json!({"role": "user", "content": "Summarise 2.0"}));
    assert!(sent.body.get("agent").is_none() && sent.body.get("metadata").is_none());
}

/// The agent's system message as the provider received it in the last call.
fn last_system_prompt(s: &super::Setup) -> String {
    let sent = s.openai.last_request();
    sent.body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn every_change_to_an_agent_or_its_memory_reaches_the_very_next_turn() {
    let s = setup().await;
    let key = s.app.test_key.clone();
    s.agent("writer", "openai:ok", json!({"systemPrompt": "First prompt."}))
        .await;
    let turn = || s.chat(json!({"agent": "writer", "messages": user("hi")}), None);
    let turn_by_id = |id: String| s.chat(json!({"agent": id, "messages": user("hi")}), None);

    // Read twice, so that a server which keeps what it read is serving the kept copy.
    for _ in 0..2 {
        assert_eq!(turn().await.status, StatusCode::OK);
        assert!(last_system_prompt(&s).contains("First prompt."));
    }
    let response = s
        .app
        .patch("/v1/agents/writer", &key, json!({"systemPrompt": "Second prompt."}))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let id = response.json()["id"].as_str().unwrap().to_string();
    assert_eq!(turn().await.status, StatusCode::OK);
    let prompt = last_system_prompt(&s);
    assert!(
        prompt.contains("Second prompt.") && !prompt.contains("First prompt."),
        "{prompt}"
    );
    assert_eq!(turn_by_id(id.clone()).await.status, StatusCode::OK);
    assert!(last_system_prompt(&s).contains("Second prompt."), "by id as by name");

    let put = |path: &'static str, content: &'static str| {
        s.app.call("PUT", path, Some(&key), Some(json!({"content": content})))
    };
    assert_eq!(put("/v1/memory", "Project fact one.").await.status, StatusCode::OK);
    assert_eq!(turn().await.status, StatusCode::OK);
    assert!(last_system_prompt(&s).contains("Project fact one."));
    assert_eq!(put("/v1/memory", "Project fact two.").await.status, StatusCode::OK);
    assert_eq!(turn_by_id(id.clone()).await.status, StatusCode::OK);
    let prompt = last_system_prompt(&s);
    assert!(
        prompt.contains("Project fact two.") && !prompt.contains("Project fact one."),
        "{prompt}"
    );
    assert_eq!(
        put("/v1/agents/writer/memory", "Agent fact.").await.status,
        StatusCode::OK
    );
    assert_eq!(turn().await.status, StatusCode::OK);
    assert!(last_system_prompt(&s).contains("Agent fact."));

    let response = s.app.delete("/v1/agents/writer", &key).await;
    assert_eq!(response.status, StatusCode::NO_CONTENT, "{}", response.text);
    let response = turn().await;
    assert_eq!(response.status, StatusCode::NOT_FOUND, "{}", response.text);
    assert_eq!(turn_by_id(id).await.status, StatusCode::NOT_FOUND);

    // A new agent of the same name has none of the old one's prompt or memory.
    s.agent("writer", "openai:ok", json!({"systemPrompt": "Third prompt."}))
        .await;
    assert_eq!(turn().await.status, StatusCode::OK);
    let prompt = last_system_prompt(&s);
    assert!(
        prompt.contains("Third prompt.") && !prompt.contains("Agent fact."),
        "{prompt}"
    );
}

#[tokio::test]
async fn the_mock_provider_behaves_as_documented() {
    let s = setup().await;
    let echo = s
        .chat(
            json!({"model": "mock/echo", "messages": [{"role": "system", "content": "be brief"},
                                                               {"role": "user", "content": "hello big world"}]}),
            None,
        )
        .await
        .json();
    assert_eq!(echo["choices"][0]["message"]["content"], "hello big world");
    assert_eq!(echo["usage"]["prompt_tokens"], 5);
    assert_eq!(echo["usage"]["completion_tokens"], 3);
    let tools = json!([{"type": "function", "function": {"name": "lookup"}}]);
    let tool = s
        .chat(
            json!({"model": "mock:tool", "messages": user("x"), "tools": tools}),
            None,
        )
        .await
        .json();
    assert_eq!(tool["choices"][0]["message"]["tool_calls"][0]["id"], "call_mock_1");
    assert_eq!(
        tool["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
    assert_eq!(
        s.chat(json!({"model": "mock/error-500", "messages": user("x")}), None)
            .await
            .status,
        StatusCode::BAD_GATEWAY
    );
    let limited = s
        .chat(json!({"model": "mock/error-429", "messages": user("x")}), None)
        .await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.header("retry-after"), Some("1"));
}
