//! Tools: Anthropic agents answering plain and streamed with tools, and tool-call round trips on
//! both providers.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{data_frames, json_frames, setup, stream, user};
use crate::fakes::OK_TEXT;

#[tokio::test]
async fn anthropic_agents_answer_plain_streamed_and_with_tools() {
    let s = setup().await;
    s.agent(
        "claude",
        "anthropic:ok",
        json!({"systemPrompt": "Be concise.", "maxTokens": 300}),
    )
    .await;
    let response = s
        .chat(
            json!({"agent": "claude", "messages": user("hello"), "stop": "END", "user": "u-1"}),
            None,
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let body = response.json();
    assert_eq!(body["choices"][0]["message"]["content"], OK_TEXT);
    assert_eq!(body["model"], "anthropic:ok");
    let sent = s.anthropic.last_request();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "sk-ant-upstream-secret");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.body["system"].as_str().unwrap().starts_with("Be concise."));
    assert_eq!(sent.body["max_tokens"], 300);
    assert_eq!(sent.body["stop_sequences"], json!(["END"]));
    assert_eq!(sent.body["metadata"]["user_id"], "u-1");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    );

    let base = s.app.serve().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    s.agent("claude-tools", "anthropic:tool", json!({})).await;
    let (status, _, text) = stream(
        &base,
        &s.app.test_key,
        json!({"agent": "claude-tools", "stream": true, "messages": user("weather?"), "tools": tools}),
    )
    .await;
    assert_eq!(status, 200);
    let frames = data_frames(&text);
    assert_eq!(frames.last().unwrap(), "[DONE]");
    let chunks = json_frames(&frames);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls[0][0]["id"], "toolu_fake_1");
    assert_eq!(calls[0][0]["type"], "function");
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    assert_eq!(calls[0][0]["function"]["arguments"], "");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"city\":\"Rome\"}");
    let last = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(s.anthropic.last_request().body["tools"][0]["name"], "get_weather");
}

#[tokio::test]
async fn a_tool_call_round_trip_works_on_both_providers() {
    let s = setup().await;
    for model in ["openai:tool", "anthropic:tool"] {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let first = s
            .chat(
                json!({"model": model, "messages": user("weather in Rome?"), "tools": tools}),
                None,
            )
            .await;
        assert_eq!(first.status, StatusCode::OK, "{model}: {}", first.text);
        let body = first.json();
        let message = &body["choices"][0]["message"];
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{model}");
        assert!(message["content"].is_null(), "{model}");
        let call = &message["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Rome\"}");
        let session = first.header("x-session-id").unwrap().to_string();

        let history = json!([
            {"role": "user", "content": "weather in Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 24C"}
        ]);
        let second = s
            .chat(
                json!({"model": model, "messages": history, "tools": tools}),
                Some(&session),
            )
            .await;
        assert_eq!(second.status, StatusCode::OK, "{model}: {}", second.text);
        assert_eq!(
            second.json()["choices"][0]["message"]["content"],
            "Tool said: sunny, 24C",
            "{model}"
        );
        let messages = s.messages(&session).await;
        let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(
            roles,
            ["user", "assistant", "tool", "assistant"],
            "{model}: history stored once"
        );
        assert_eq!(messages[1]["toolCalls"][0]["arguments"], "{\"city\":\"Rome\"}");
        assert_eq!(messages[2]["toolCallId"], call["id"]);
    }
    // Anthropic received the tool result as a tool_result block in a user message.
    let sent = s.anthropic.last_request().body;
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "user");
    assert_eq!(last["content"][0]["type"], "tool_result");
}
