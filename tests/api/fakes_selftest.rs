//! Self-tests of the fake model providers in `fakes`, driven directly with reqwest.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fakes::{FakeProvider, OK_TEXT};

async fn post_openai(fake: &FakeProvider, body: Value) -> reqwest::Response {
    let url = format!("{}/chat/completions", fake.base_url);
    reqwest::Client::new()
        .post(url)
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn post_anthropic(fake: &FakeProvider, body: Value) -> reqwest::Response {
    let url = format!("{}/v1/messages", fake.base_url);
    let request = reqwest::Client::new().post(url).header("x-api-key", "sk-ant-test");
    request
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE body, with the `event:` name when there is one.
fn frames(body: &str) -> Vec<(Option<String>, String)> {
    let frames = body.split("\n\n").filter(|f| !f.is_empty());
    frames
        .map(|frame| {
            let field = |name: &str| frame.lines().find_map(|l| l.strip_prefix(name)).map(str::to_owned);
            (field("event: "), field("data: ").unwrap())
        })
        .collect()
}

#[tokio::test]
async fn openai_streams_ok_and_sends_usage_only_when_asked() {
    let fake = FakeProvider::openai().await;
    for include_usage in [true, false] {
        let request = json!({"model": "ok", "stream": true, "stream_options": {"include_usage": include_usage},
            "messages": [{"role": "user", "content": "hi"}]});
        let response = post_openai(&fake, request).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let data: Vec<String> = frames(&response.text().await.unwrap())
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(data.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, OK_TEXT);
        assert!(
            chunks
                .iter()
                .filter(|c| c["choices"][0]["delta"]["content"].is_string())
                .count()
                > 3
        );
        assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
        let usage: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
        if include_usage {
            assert_eq!(usage.len(), 1);
            assert_eq!(usage[0]["choices"], json!([]));
            assert_eq!(
                usage[0]["usage"],
                json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
            );
        } else {
            assert!(usage.is_empty());
        }
    }
    let recorded = fake.last_request();
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.headers["authorization"], "Bearer sk-test");
    assert_eq!(recorded.body["stream_options"]["include_usage"], false);
    assert_eq!(fake.requests().len(), 2);

    let echo = json!({"model": "echo", "messages": [{"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}]}]});
    let completion: Value = post_openai(&fake, echo).await.json().await.unwrap();
    assert_eq!(completion["choices"][0]["message"]["content"], "a b\nc");
    assert_eq!(completion["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn anthropic_streams_a_tool_call_in_the_real_event_order() {
    let fake = FakeProvider::anthropic().await;
    let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let request = json!({"model": "tool", "stream": true, "max_tokens": 100, "tools": tools,
        "messages": [{"role": "user", "content": "weather?"}]});
    let body = post_anthropic(&fake, request).await.text().await.unwrap();
    let frames = frames(&body);
    let events: Vec<&str> = frames.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    let expected = [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ];
    assert_eq!(
        events,
        [&expected[..], &["content_block_stop", "message_delta", "message_stop"]].concat()
    );
    let data: Vec<Value> = frames.iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(data[2]["content_block"]["id"], "toolu_fake_1");
    assert_eq!(data[2]["content_block"]["name"], "get_weather");
    let args: String = data
        .iter()
        .filter_map(|d| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(args, r#"{"city":"Rome"}"#);
    assert_eq!(data[6]["delta"]["stop_reason"], "tool_use");
    assert_eq!(fake.last_request().headers["x-api-key"], "sk-ant-test");

    let result =
        json!({"type": "tool_result", "tool_use_id": "toolu_fake_1", "content": [{"type": "text", "text": "18C"}]});
    let follow_up = json!({"model": "tool", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "weather?"}, {"role": "user", "content": [result]}]});
    let message: Value = post_anthropic(&fake, follow_up).await.json().await.unwrap();
    assert_eq!(message["content"][0]["text"], "Tool said: 18C");
    assert_eq!(message["stop_reason"], "end_turn");

    let unversioned = reqwest::Client::new()
        .post(format!("{}/v1/messages", fake.base_url))
        .json(&json!({"model": "ok"}));
    assert_eq!(unversioned.send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn fail_429_has_retry_after_and_a_real_error_body() {
    let openai = FakeProvider::openai().await;
    let response = post_openai(&openai, json!({"model": "fail-429", "messages": []})).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let anthropic = FakeProvider::anthropic().await;
    let response = post_anthropic(&anthropic, json!({"model": "fail-429", "messages": []})).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn cut_streams_two_chunks_then_breaks_the_connection() {
    for fake in [FakeProvider::openai().await, FakeProvider::anthropic().await] {
        let request = json!({"model": "cut", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let mut response = if fake.base_url.ends_with("/v1") {
            post_openai(&fake, request).await
        } else {
            post_anthropic(&fake, request).await
        };
        let mut received = Vec::new();
        let error = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => received.extend_from_slice(&bytes),
                Ok(None) => panic!("the cut stream ended cleanly"),
                Err(error) => break error,
            }
        };
        assert!(error.is_body() || error.is_decode(), "{error:?}");
        let received = String::from_utf8(received).unwrap();
        assert!(received.contains("from ") && !received.contains("the "), "{received}");
        assert!(!received.contains("[DONE]") && !received.contains("message_stop"));
        assert_eq!(fake.abandoned_streams(), 0);
    }
}

#[tokio::test]
async fn hang_never_answers() {
    let fake = FakeProvider::openai().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", fake.base_url);
    let error = client
        .post(url)
        .json(&json!({"model": "hang"}))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(fake.last_request().body["model"], "hang");
}

#[tokio::test]
async fn dropping_a_slow_stream_is_seen_as_abandoned() {
    let fake = FakeProvider::anthropic().await;
    let request = json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let mut response = post_anthropic(&fake, request).await;
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    assert!(!fake.wait_for_abandoned_stream(Duration::from_millis(150)).await);
    drop(response);
    assert!(fake.wait_for_abandoned_stream(Duration::from_secs(2)).await);
    assert_eq!(fake.abandoned_streams(), 1);
}

#[tokio::test]
async fn anthropic_error_event_and_non_json_frames() {
    let fake = FakeProvider::anthropic().await;
    let request = json!({"model": "error-event", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let body = post_anthropic(&fake, request).await.text().await.unwrap();
    let (event, data) = frames(&body).pop().unwrap();
    assert_eq!(event.as_deref(), Some("error"));
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["error"]["type"],
        "overloaded_error"
    );

    let request = json!({"model": "non-json", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let body = post_anthropic(&fake, request).await.text().await.unwrap();
    assert!(
        body.contains("data: this is not json\n\n")
            && body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    );
}
