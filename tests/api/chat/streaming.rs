//! Streamed completions: the OpenAI frame rules, keep-alives and key revocation ending a stream,
//! silence becoming an upstream timeout frame, and a client that leaves mid-stream (or while an
//! answer sent whole is still being made).

use std::time::Duration;

use polpo_api::config::Config;
use serde_json::{Value, json};

use super::{data_frames, json_frames, send_completion, setup, setup_with, stream, user};
use crate::fakes::OK_TEXT;
use crate::helpers::{client, eventually};

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
async fn a_client_that_leaves_cancels_the_provider_request_and_the_partial_reply_is_stored() {
    let s = setup().await;
    let base = s.app.serve().await;
    let body = json!({"model": "openai:slow", "stream": true, "messages": user("tick please")});
    let mut response = send_completion(&base, &s.app.test_key, &body).await;
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
async fn a_client_that_leaves_before_a_whole_answer_ends_still_has_its_partial_reply_stored() {
    let s = setup().await;
    let first = s
        .chat(json!({"model": "openai:ok", "messages": user("hi")}), None)
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let session = first.headers["x-session-id"].to_str().unwrap().to_string();
    let base = s.app.serve().await;
    let request = client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&s.app.test_key)
        .header("x-session-id", &session)
        .json(&json!({"model": "openai:slow", "messages": user("tick please")}))
        .send();
    let waiting = tokio::spawn(request);
    // The provider's first chunk has arrived once the server counts it: this turn's and the first.
    let first_chunks = r#"polpo_upstream_first_chunk_seconds_count{provider="openai"}"#;
    let answering = eventually(Duration::from_secs(5), || async {
        s.app.metric(first_chunks).await == 2.0
    })
    .await;
    assert!(answering, "the provider did not start answering within 5 s");
    waiting.abort();
    assert!(
        s.openai.wait_for_abandoned_stream(Duration::from_secs(1)).await,
        "the provider request is still open 1 s after the client left"
    );
    let stored = eventually(Duration::from_secs(5), || async {
        let messages = s.messages(&session).await;
        messages.len() == 4 && messages[2]["content"] == "tick please" && messages[3]["finishReason"] == "interrupted"
    })
    .await;
    assert!(
        stored,
        "the new message and the partial reply were not stored within 5 s: {:?}",
        s.messages(&session).await
    );
}

#[tokio::test]
async fn a_stream_carries_keep_alives_and_ends_when_its_key_is_revoked() {
    let mut config = Config::default();
    config.events.keepalive = Duration::from_millis(30);
    let s = setup_with(config).await;
    let base = s.app.serve().await;
    let body = json!({"model": "openai:slow", "stream": true, "messages": user("tick")});
    let mut response = send_completion(&base, &s.app.test_key, &body).await;
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

/// Streams that outlive the key's cached verification re-check it in the database while they
/// run (spec §1.2.3). Forty of them, ending together on the second they re-check at, each end
/// with `[DONE]` and keep their reply: a re-check under way when a stream ends must not hold
/// the connection its reply is written with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_ending_while_their_key_is_re_checked_all_finish_and_keep_their_replies() {
    let s = setup().await;
    let base = s.app.serve().await;
    let streams = (0..40).map(|i| {
        let base = base.clone();
        let key = s.app.test_key.clone();
        async move {
            let text = format!("stream {i}");
            let (status, headers, body) = stream(
                &base,
                &key,
                json!({"model": "openai:pace-1000", "stream": true, "messages": user(&text)}),
            )
            .await;
            assert_eq!(status, 200);
            let session = headers["x-session-id"].to_str().unwrap().to_string();
            (session, data_frames(&body).last().cloned())
        }
    });
    for (session, last) in futures_util::future::join_all(streams).await {
        assert_eq!(last.as_deref(), Some("[DONE]"), "stream of {session}");
        let messages = s.messages(&session).await;
        assert_eq!(messages.len(), 2, "{session}: {messages:?}");
        assert_eq!(messages[1]["content"], OK_TEXT);
        assert_eq!(messages[1]["finishReason"], "stop");
    }
}
