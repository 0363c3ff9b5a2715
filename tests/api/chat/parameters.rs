//! Spec §3.2: every field OpenAI's Chat Completions API defines is accepted; each is forwarded,
//! ignored or refused as the table says, per provider kind; log probabilities come back from
//! OpenAI-kind providers; `reasoning_effort` overrides the agent's reasoning.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{data_frames, json_frames, setup, stream, user};

/// A request carrying every field OpenAI defines, with the values clients and frameworks send
/// by default (`null` for the ones they leave unset).
fn every_field(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": false, "stream_options": null,
        "temperature": 1, "top_p": 1, "max_completion_tokens": 256, "max_tokens": null,
        "stop": null, "seed": 7, "presence_penalty": 0, "frequency_penalty": 0, "n": 1,
        "tools": null, "tool_choice": null, "parallel_tool_calls": true,
        "response_format": {"type": "text"}, "user": "user-1", "metadata": {"source": "framework"},
        "store": false, "logprobs": false, "top_logprobs": 0, "logit_bias": {},
        "reasoning_effort": "low", "service_tier": "auto", "prompt_cache_key": "cache-1",
        "prompt_cache_retention": "24h", "safety_identifier": "user-1-hash", "verbosity": "low",
        "modalities": ["text"], "prediction": {"type": "content", "content": "Hello"},
        "audio": null, "web_search_options": null, "functions": null, "function_call": null,
    })
}

fn keys(body: &Value) -> BTreeSet<String> {
    body.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn every_openai_field_is_accepted_and_only_the_documented_subset_is_forwarded() {
    let s = setup().await;
    s.agent("gpt", "openai:ok", json!({})).await;
    s.agent("claude", "anthropic:ok", json!({})).await;

    let response = s.chat(every_field("gpt"), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.json()["choices"][0]["finish_reason"], "stop");
    let sent = s.openai.last_request().body;
    let expected: BTreeSet<String> = [
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "max_completion_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
        "response_format",
        "user",
        "reasoning_effort",
        "store",
        "logprobs",
        "logit_bias",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "verbosity",
        "prediction",
        "modalities",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(keys(&sent), expected, "{sent}");
    for (field, value) in [
        ("store", json!(false)),
        ("logprobs", json!(false)),
        ("reasoning_effort", json!("low")),
        ("service_tier", json!("auto")),
        ("prompt_cache_key", json!("cache-1")),
        ("safety_identifier", json!("user-1-hash")),
        ("verbosity", json!("low")),
        ("prediction", json!({"type": "content", "content": "Hello"})),
    ] {
        assert_eq!(sent[field], value, "{field}");
    }

    let response = s.chat(every_field("claude"), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let sent = s.anthropic.last_request().body;
    for field in [
        "store",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "verbosity",
        "prediction",
        "modalities",
        "reasoning_effort",
    ] {
        assert!(
            sent.get(field).is_none(),
            "{field} reached the Anthropic provider: {sent}"
        );
    }
    // `reasoning_effort: low` is Anthropic thinking with a 2048-token budget (spec §4.5).
    assert_eq!(sent["thinking"]["budget_tokens"], 2048, "{sent}");
    assert_eq!(sent["metadata"], json!({"user_id": "user-1"}), "{sent}");

    let response = s.chat(every_field("mock/echo"), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.json()["choices"][0]["message"]["content"], "Say hello");

    // A field OpenAI does not define is still refused, by name.
    let mut made_up = every_field("gpt");
    made_up["frobnicate"] = json!(true);
    let response = s.chat(made_up, None).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{}", response.text);
    assert_eq!(response.json()["error"]["param"], "frobnicate");
}

#[tokio::test]
async fn log_probabilities_come_back_from_openai_kind_providers_only() {
    let s = setup().await;
    s.agent("gpt", "openai:ok", json!({})).await;
    s.agent("claude", "anthropic:ok", json!({})).await;
    let ask = |model: &str, stream: bool| json!({"model": model, "messages": user("Say hello"), "logprobs": true, "top_logprobs": 2, "stream": stream});

    let response = s.chat(ask("gpt", false), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let body = response.json();
    let sent = s.openai.last_request().body;
    assert_eq!((&sent["logprobs"], &sent["top_logprobs"]), (&json!(true), &json!(2)));
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let tokens = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let joined: String = tokens.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined, content, "the tokens spell the answer");
    assert!(tokens.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() == 2));

    let base = s.app.serve().await;
    let (status, _, text) = stream(&base, &s.app.test_key, ask("gpt", true)).await;
    assert_eq!(status, 200);
    let chunks = json_frames(&data_frames(&text));
    let with_content: Vec<&Value> = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .collect();
    assert!(!with_content.is_empty());
    for chunk in with_content {
        let piece = chunk["choices"][0]["delta"]["content"].as_str().unwrap();
        let logprobs = &chunk["choices"][0]["logprobs"]["content"];
        assert_eq!(
            logprobs[0]["token"], piece,
            "logprobs travel with their content: {chunk}"
        );
        assert_eq!(logprobs[0]["top_logprobs"].as_array().unwrap().len(), 2);
    }

    for model in ["claude", "mock/echo"] {
        let response = s.chat(ask(model, false), None).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{model}: {}", response.text);
        assert_eq!(response.json()["error"]["param"], "logprobs", "{model}");
        // `false` is always fine.
        let body = json!({"model": model, "messages": user("hi"), "logprobs": false});
        assert_eq!(s.chat(body, None).await.status, StatusCode::OK, "{model}");
    }
    // Without logprobs, answers carry `logprobs: null` as before.
    let response = s.chat(json!({"model": "gpt", "messages": user("hi")}), None).await;
    assert_eq!(response.json()["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn reasoning_effort_overrides_the_agents_reasoning() {
    let s = setup().await;
    s.agent("thinker", "openai:ok", json!({"reasoning": "high"})).await;
    s.agent("claude", "anthropic:ok", json!({"reasoning": "high"})).await;
    let ask = |model: &str, effort: Option<&str>| {
        let mut body = json!({"model": model, "messages": user("hi")});
        if let Some(effort) = effort {
            body["reasoning_effort"] = json!(effort);
        }
        body
    };
    for (effort, expected) in [
        (None, json!("high")),
        (Some("low"), json!("low")),
        (Some("none"), Value::Null),
    ] {
        let response = s.chat(ask("thinker", effort), None).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        let sent = s.openai.last_request().body;
        assert_eq!(
            sent.get("reasoning_effort").cloned().unwrap_or(Value::Null),
            expected,
            "{effort:?}"
        );
    }
    for (effort, budget) in [
        (None, json!(16384)),
        (Some("minimal"), json!(1024)),
        (Some("none"), Value::Null),
    ] {
        let response = s.chat(ask("claude", effort), None).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        let sent = s.anthropic.last_request().body;
        assert_eq!(sent["thinking"]["budget_tokens"], budget, "{effort:?}: {sent}");
    }
    // Gateway mode takes it too.
    let response = s.chat(ask("openai:ok", Some("medium")), None).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(s.openai.last_request().body["reasoning_effort"], "medium");
}

#[tokio::test]
async fn fields_this_server_does_not_serve_are_refused_with_what_to_use_instead() {
    let s = setup().await;
    let before = s.openai.requests().len();
    for (field, value, hint) in [
        ("functions", json!([{"name": "f", "parameters": {}}]), "tools"),
        ("function_call", json!("auto"), "tool_choice"),
        ("audio", json!({"voice": "alloy", "format": "mp3"}), "text"),
        ("web_search_options", json!({}), "tools"),
        ("modalities", json!(["text", "audio"]), "text"),
        ("reasoning_effort", json!("extreme"), "minimal"),
        ("top_logprobs", json!(3), "logprobs"),
        ("logit_bias", json!({"50256": 500}), "-100"),
        ("service_tier", json!("turbo"), "auto"),
    ] {
        let mut body = json!({"model": "openai:ok", "messages": user("hi")});
        body[field] = value;
        let response = s.chat(body, None).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{field}: {}", response.text);
        let error = &response.json()["error"];
        assert_eq!(error["param"], field, "{error}");
        assert!(error["message"].as_str().unwrap().contains(hint), "{field}: {error}");
    }
    assert_eq!(
        s.openai.requests().len(),
        before,
        "nothing refused reached the provider"
    );
}
