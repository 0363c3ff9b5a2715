//! Provider failures: errors before streaming as documented HTTP errors, failures mid-stream as
//! one error frame with the partial reply kept.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::{Value, json};

use super::{data_frames, setup, setup_with, stream, user};

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

/// Load shedding: a turn beyond `server.chat_backlog` is answered `503 unavailable` with
/// `Retry-After` at once, in the OpenAI error shape, and stores nothing; the provider is never
/// called. The same turn on an instance with room is answered.
#[tokio::test]
async fn a_turn_beyond_the_backlog_is_refused_with_retry_after_and_stores_nothing() {
    let mut config = Config::default();
    config.server.chat_backlog = 0;
    let full = setup_with(config).await;
    for streamed in [false, true] {
        let refused = full
            .chat(
                json!({"model": "openai:gpt-4o", "stream": streamed, "messages": user("hello")}),
                None,
            )
            .await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text);
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(refused.json()["error"]["code"], "unavailable");
        assert_eq!(refused.json()["error"]["type"], "api_error");
        assert!(refused.header("x-session-id").is_none());
    }
    assert!(full.openai.requests().is_empty());
    let sessions = full.app.get("/v1/chat/sessions", &full.app.test_key).await;
    assert_eq!(sessions.json(), json!([]), "{}", sessions.text);
    let events = full.app.get("/v1/events/history", &full.app.test_key).await;
    assert_eq!(events.json(), json!([]));

    let room = setup().await;
    let answered = room
        .chat(json!({"model": "openai:gpt-4o", "messages": user("hello")}), None)
        .await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
}
