//! Spec §3 and §4: chat completions through agents and providers, against fake providers that
//! speak the OpenAI and Anthropic wire formats.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polpo_api::config::Config;
use serde_json::{Value, json};

use crate::fakes::{FakeProvider, OK_TEXT};
use crate::helpers::{TestApp, TestResponse, client, eventually};

struct Setup {
    openai: FakeProvider,
    anthropic: FakeProvider,
    app: TestApp,
}

async fn setup_with(config: Config) -> Setup {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    Setup { openai, anthropic, app }
}

async fn setup() -> Setup {
    setup_with(Config::default()).await
}

impl Setup {
    async fn agent(&self, name: &str, model: &str, extra: Value) -> Value {
        let mut body = json!({"name": name, "model": model});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let response = self.app.post("/v1/agents", &self.app.test_key, body).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        response.json()
    }

    async fn chat(&self, body: Value, session: Option<&str>) -> TestResponse {
        let mut builder = Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {}", self.app.test_key))
            .header("content-type", "application/json");
        if let Some(session) = session {
            builder = builder.header("x-session-id", session);
        }
        self.app.send(builder.body(Body::from(body.to_string())).unwrap()).await
    }

    async fn messages(&self, session: &str) -> Vec<Value> {
        let response = self
            .app
            .get(&format!("/v1/chat/sessions/{session}/messages"), &self.app.test_key)
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        response.json().as_array().unwrap().clone()
    }
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The `data:` payloads of a chat stream, checking the framing rules of spec §3.8 on the way.
fn data_frames(text: &str) -> Vec<String> {
    let mut frames = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        for line in block.lines() {
            assert!(
                !line.starts_with("id:") && !line.starts_with("event:"),
                "forbidden line {line:?}"
            );
            if line.starts_with(':') {
                continue;
            }
            let payload = line
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {line:?}"));
            if payload != "[DONE]" {
                let value: Value = serde_json::from_str(payload).expect("every data line is one JSON object");
                assert!(value.is_object());
            }
            frames.push(payload.to_string());
        }
    }
    frames
}

async fn stream(base: &str, key: &str, body: Value) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let response = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    // A cut stream may end with a transport error after its last frame; keep what arrived.
    let mut text = String::new();
    let mut response = response;
    while let Ok(Some(bytes)) = response.chunk().await {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    (status, headers, text)
}

fn json_frames(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}

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

#[tokio::test]
async fn a_streamed_completion_follows_the_openai_frame_rules() {
    let s = setup().await;
    s.agent("writer", "openai:ok", json!({})).await;
    let base = s.app.serve().await;
    for include_usage in [false, true] {
        let mut body = json!({"model": "writer", "stream": true, "messages": user("hi")});
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let (status, headers, text) = stream(&base, &s.app.test_key, body).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        assert!(headers["x-session-id"].to_str().unwrap().starts_with("sess_"));
        let frames = data_frames(&text);
        assert_eq!(frames.last().unwrap(), "[DONE]");
        let chunks = json_frames(&frames);
        let id = &chunks[0]["id"];
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == *id && c["object"] == "chat.completion.chunk" && c["model"] == "openai:ok")
        );
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, OK_TEXT);
        let finish: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish[0]["choices"][0]["delta"], json!({}));
        let usage: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
        if include_usage {
            assert_eq!(usage.len(), 1);
            assert_eq!(usage[0]["choices"], json!([]));
            assert_eq!(usage[0]["usage"]["prompt_tokens"], 11);
            assert_eq!(chunks.last().unwrap(), usage[0], "usage comes last, before [DONE]");
        } else {
            assert!(usage.is_empty(), "usage only when asked");
        }
        assert!(chunks.iter().all(|c| {
            c["choices"]
                .as_array()
                .unwrap()
                .iter()
                .all(|ch| ch["index"] == 0 && ch["logprobs"].is_null())
        }));
    }
}

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

#[tokio::test]
async fn provider_failures_before_streaming_become_documented_http_errors() {
    let mut config = Config::default();
    config.upstream.first_chunk_timeout = Duration::from_millis(500);
    let s = setup_with(config).await;
    for provider in ["openai", "anthropic"] {
        for (model, status, code) in [
            ("fail-401", 502, "upstream_error"),
            ("fail-400", 502, "upstream_error"),
            ("fail-429", 429, "rate_limited"),
            ("fail-500", 502, "upstream_error"),
            ("hang", 504, "upstream_timeout"),
        ] {
            let response = s
                .chat(
                    json!({"model": format!("{provider}:{model}"), "messages": user("x")}),
                    None,
                )
                .await;
            let label = format!("{provider}:{model}");
            assert_eq!(response.status.as_u16(), status, "{label}: {}", response.text);
            let error = &response.json()["error"];
            assert_eq!(error["code"], code, "{label}");
            let text = &response.text;
            for secret in ["sk-fake", "sk-upstream", "sk-ant", "127.0.0.1", "http://"] {
                assert!(!text.contains(secret), "{label} leaks {secret}: {text}");
            }
            assert!(
                response.header("x-session-id").is_some(),
                "{label}: the new session is returned"
            );
            if model == "fail-429" {
                assert_eq!(response.header("retry-after"), Some("7"));
                assert_eq!(response.header("retry-after-ms"), Some("7000"));
                assert_eq!(error["type"], "rate_limit_error");
            }
            if model == "fail-400" {
                assert!(
                    error["message"].as_str().unwrap().contains("max_tokens is too large"),
                    "{label}: {text}"
                );
            }
            if status == 502 {
                assert_eq!(error["type"], "api_error");
            }
            // A failure before the first chunk stores nothing.
            let session = response.header("x-session-id").unwrap().to_string();
            assert!(s.messages(&session).await.is_empty(), "{label}");
        }
    }
}

#[tokio::test]
async fn a_failure_mid_stream_is_one_error_frame_and_the_partial_reply_is_kept() {
    let s = setup().await;
    let base = s.app.serve().await;
    for model in [
        "openai:cut",
        "openai:non-json",
        "anthropic:cut",
        "anthropic:non-json",
        "anthropic:error-event",
    ] {
        let (status, headers, text) = stream(
            &base,
            &s.app.test_key,
            json!({"model": model, "stream": true, "messages": user("x")}),
        )
        .await;
        assert_eq!(status, 200, "{model}");
        let frames = data_frames(&text);
        assert_ne!(frames.last().unwrap(), "[DONE]", "{model}: no [DONE] after an error");
        let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "upstream_error", "{model}: {text}");
        assert_eq!(last["error"]["type"], "api_error");
        assert!(last["error"]["param"].is_null());
        assert_eq!(frames.iter().filter(|f| f.contains("\"error\"")).count(), 1, "{model}");
        let session = headers["x-session-id"].to_str().unwrap().to_string();
        let messages = s.messages(&session).await;
        assert_eq!(messages.len(), 2, "{model}");
        assert_eq!(messages[1]["finishReason"], "error", "{model}");
        assert!(
            !messages[1]["content"].as_str().unwrap().is_empty(),
            "{model}: partial text kept"
        );
        assert_eq!(messages[1]["usage"]["estimated"], true, "{model}");
    }
    // Non-streamed, the same failure is a 502.
    let response = s
        .chat(json!({"model": "openai:cut", "messages": user("x")}), None)
        .await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_provider_request_and_the_partial_reply_is_stored() {
    let s = setup().await;
    let base = s.app.serve().await;
    let mut response = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&s.app.test_key)
        .json(&json!({"model": "openai:slow", "stream": true, "messages": user("tick please")}))
        .send()
        .await
        .unwrap();
    let session = response.headers()["x-session-id"].to_str().unwrap().to_string();
    let mut seen = String::new();
    while !seen.contains("tick") {
        seen.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    drop(response);
    assert!(
        s.openai.wait_for_abandoned_stream(Duration::from_secs(1)).await,
        "the provider request is still open 1 s later"
    );
    let stored = eventually(Duration::from_secs(5), || async {
        let messages = s.messages(&session).await;
        messages.len() == 2 && messages[1]["finishReason"] == "interrupted"
    })
    .await;
    assert!(stored, "the partial reply was not stored");
    let reply = &s.messages(&session).await[1];
    assert!(reply["content"].as_str().unwrap().starts_with("tick"));
    assert!(
        reply["content"].as_str().unwrap().len() < 200 * 5,
        "the whole answer was not waited for"
    );
}

#[tokio::test]
async fn sessions_give_the_model_the_stored_history_once() {
    let s = setup().await;
    s.agent("echoer", "openai:echo", json!({})).await;
    let first = s
        .chat(json!({"agent": "echoer", "messages": user("first question")}), None)
        .await;
    let session = first.header("x-session-id").unwrap().to_string();
    // The client resends the whole history, as OpenAI clients do.
    let history = json!([
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first question"},
        {"role": "user", "content": "second question"}
    ]);
    let second = s
        .chat(json!({"agent": "echoer", "messages": history}), Some(&session))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.header("x-session-id"), Some(session.as_str()));
    let sent = s.openai.last_request().body["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = sent.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{sent:?}");
    // Only the new question again: the stored history still reaches the model.
    let third = s
        .chat(json!({"agent": "echoer", "messages": user("third")}), Some(&session))
        .await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(s.openai.last_request().body["messages"].as_array().unwrap().len(), 6);
    let stored = s.messages(&session).await;
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[5]["model"], "openai:echo");
    let info = s
        .app
        .get(&format!("/v1/chat/sessions/{session}"), &s.app.test_key)
        .await
        .json();
    assert_eq!(info["messageCount"], 6);
    assert_eq!(info["agent"], "echoer");
    assert_eq!(info["title"], "first question");
}

#[tokio::test]
async fn unknown_foreign_and_mismatched_sessions_are_refused() {
    let s = setup().await;
    s.agent("a", "mock/echo", json!({})).await;
    let unknown = s
        .chat(
            json!({"agent": "a", "messages": user("x")}),
            Some("sess_01jz8k2m4p6r8t0v2x4z6b8d0f"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "not_found");

    let live = s
        .app
        .post(
            "/v1/chat/completions",
            &s.app.live_key,
            json!({"model": "mock/echo", "messages": user("x")}),
        )
        .await;
    let live_session = live.header("x-session-id").unwrap().to_string();
    let foreign = s
        .chat(
            json!({"model": "mock/echo", "messages": user("x")}),
            Some(&live_session),
        )
        .await;
    assert_eq!(
        foreign.status,
        StatusCode::NOT_FOUND,
        "a live session is unknown to the test key"
    );
    assert_eq!(
        s.app
            .get(&format!("/v1/chat/sessions/{live_session}"), &s.app.test_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let gateway = s.chat(json!({"model": "mock/echo", "messages": user("x")}), None).await;
    let gateway_session = gateway.header("x-session-id").unwrap().to_string();
    let mismatch = s
        .chat(json!({"agent": "a", "messages": user("x")}), Some(&gateway_session))
        .await;
    assert_eq!(mismatch.status, StatusCode::CONFLICT);
    assert_eq!(mismatch.json()["error"]["code"], "conflict");
}

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

#[tokio::test]
async fn session_endpoints_list_read_and_delete() {
    let s = setup().await;
    s.agent("a", "mock/echo", json!({})).await;
    let first = s
        .chat(
            json!({"agent": "a", "messages": user("one\ntwo"), "user": "alice", "metadata": {"k": "v"}}),
            None,
        )
        .await;
    let session = first.header("x-session-id").unwrap().to_string();
    s.chat(json!({"model": "mock/echo", "messages": user("gateway")}), None)
        .await;

    let all = s.app.get("/v1/chat/sessions", &s.app.test_key).await.json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let of_agent = s.app.get("/v1/chat/sessions?agent=a", &s.app.test_key).await.json();
    assert_eq!(of_agent.as_array().unwrap().len(), 1);
    assert_eq!(of_agent[0]["title"], "one two");
    assert_eq!(of_agent[0]["user"], "alice");
    assert_eq!(of_agent[0]["metadata"], json!({"k": "v"}));
    let of_user = s.app.get("/v1/chat/sessions?user=alice", &s.app.test_key).await.json();
    assert_eq!(of_user[0]["id"], session);
    assert_eq!(
        s.app.get("/v1/chat/sessions?limit=0", &s.app.test_key).await.status,
        StatusCode::BAD_REQUEST
    );

    let messages = s.messages(&session).await;
    assert_eq!(messages[0]["role"], "user");
    // mock counts words: "Name: a" (the composed prompt) + "one two", then "one two" back.
    assert_eq!(messages[1]["usage"]["totalTokens"], 6);
    assert_eq!(messages[1]["finishReason"], "stop");
    assert!(messages[0]["model"].is_null() && messages[0]["usage"].is_null());

    // Events of the turn were written to the log in order.
    let scope = polpo_api::scope::Scope {
        project: "acme".into(),
        environment: polpo_api::scope::Environment::Test,
    };
    let events = polpo_api::store::events::list_after(&s.app.db.pool, &scope, 0, 100)
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        &names[..4],
        [
            "session:created",
            "message:added",
            "message:added",
            "completion:finished"
        ]
    );
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let finished: Value = serde_json::from_str(&events[3].payload).unwrap();
    assert_eq!(finished["agent"], "a");
    assert_eq!(finished["finishReason"], "stop");
    assert_eq!(finished["stream"], false);
    assert!(finished["timestamp"].is_string());

    assert_eq!(
        s.app
            .delete(&format!("/v1/chat/sessions/{session}"), &s.app.test_key)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.app
            .get(&format!("/v1/chat/sessions/{session}"), &s.app.test_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.app
            .get(&format!("/v1/chat/sessions/{session}/messages"), &s.app.test_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_stream_carries_keep_alives_and_ends_when_its_key_is_revoked() {
    let mut config = Config::default();
    config.events.keepalive = Duration::from_millis(30);
    let s = setup_with(config).await;
    let base = s.app.serve().await;
    let mut response = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&s.app.test_key)
        .json(&json!({"model": "openai:slow", "stream": true, "messages": user("tick")}))
        .send()
        .await
        .unwrap();
    let session = response.headers()["x-session-id"].to_str().unwrap().to_string();
    let mut text = String::new();
    while !text.contains("\n: ping\n") {
        text.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    let hash = polpo_api::auth::key::hash(&s.app.test_key);
    let row = polpo_api::store::keys::find_by_hash(&s.app.db.pool, &hash)
        .await
        .unwrap()
        .unwrap();
    polpo_api::auth::admin::revoke_key(&s.app.db, &row.id).await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(bytes)) = response.chunk().await {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream outlived its key by 5 s");
    let frames = data_frames(&text);
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "invalid_api_key");
    assert_eq!(last["error"]["type"], "authentication_error");
    assert!(s.openai.wait_for_abandoned_stream(Duration::from_secs(1)).await);
    let messages = crate::helpers::eventually(Duration::from_secs(5), || async {
        let rows = polpo_api::store::chat::list_messages(&s.app.db.pool, &s.app.state_scope(), &session, "", 10)
            .await
            .unwrap();
        rows.len() == 2 && rows[1].finish_reason.as_deref() == Some("interrupted")
    })
    .await;
    assert!(messages, "the partial reply was not stored as interrupted");
}

#[tokio::test]
async fn silence_mid_stream_ends_it_with_an_upstream_timeout_frame() {
    let mut config = Config::default();
    config.upstream.idle_timeout = Duration::from_millis(40);
    let s = setup_with(config).await;
    let base = s.app.serve().await;
    let (status, _, text) = stream(
        &base,
        &s.app.test_key,
        json!({"model": "openai:slow", "stream": true, "messages": user("x")}),
    )
    .await;
    assert_eq!(status, 200);
    let frames = data_frames(&text);
    let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{text}");
    assert_eq!(last["error"]["type"], "api_error");
}
