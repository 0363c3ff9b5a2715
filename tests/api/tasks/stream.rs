//! Spec §5.6: `run` with `stream: true` follows a task to its end: the agent's text, the
//! lifecycle frames, the finish and `[DONE]`; joinable mid-run, on another instance too; a
//! client that leaves does not stop the task.

use std::time::Duration;

use serde_json::{Value, json};

use super::{agent, task, until_status};
use crate::helpers::{SseFrames, TestApp, client};

/// Runs task `id` with `stream: true` and reads its frames.
async fn run_streamed(base: &str, key: &str, id: &str) -> SseFrames {
    SseFrames::post(base, key, &format!("/v1/tasks/{id}/run")).await
}

fn text_of(frames: &[String]) -> String {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

fn events_of(frames: &[String]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter_map(|f| f["polpo"]["event"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_streamed_run_carries_the_text_the_lifecycle_and_the_finish() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/slow-echo").await;
    let draft = task(
        &app,
        json!({"title": "Stream me", "description": "one two three four five",
                                  "assignTo": "writer", "draft": true}),
    )
    .await;
    let id = draft["id"].as_str().unwrap();
    let base = app.serve().await;
    let mut follow = run_streamed(&base, &app.test_key, id).await;
    let first: Value = serde_json::from_str(&follow.next().await.unwrap()).unwrap();
    assert_eq!(first["object"], "task.chunk");
    assert_eq!(first["id"], id);
    assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant"}));
    assert_eq!(first["polpo"]["event"], "task:snapshot");
    assert_eq!(first["polpo"]["data"]["task"]["id"], id);
    let frames = follow.rest().await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    let finish: Value = serde_json::from_str(&frames[frames.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let done = until_status(&app, id, "done", Duration::from_secs(5)).await;
    assert_eq!(text_of(&frames), done["result"]["output"].as_str().unwrap());
    let events = events_of(&frames);
    for expected in ["agent:spawned", "agent:finished", "task:transition"] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} missing from {events:?}"
        );
    }
    assert!(
        !events.iter().any(|e| e == "task:completed" || e == "agent:completed"),
        "{events:?}"
    );
    // A done task cannot be run again, streamed or not (spec §5.5).
    let again = client()
        .post(format!("{base}/v1/tasks/{id}/run"))
        .bearer_auth(&app.test_key)
        .json(&json!({"stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn a_second_client_joins_mid_run_on_another_instance_and_leaving_stops_nothing() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/slow-echo").await;
    let words: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
    let draft = task(
        &app,
        json!({"title": "Long", "description": words.join(" "), "assignTo": "writer",
                                  "draft": true}),
    )
    .await;
    let id = draft["id"].as_str().unwrap();
    let base = app.serve().await;
    // On Postgres the second client follows through another instance; SQLite runs one
    // instance, so there it joins the same one.
    let other_base = if app._database.is_postgres() {
        let other = app.another_instance(polpo_api::config::Config::default()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(polpo_api::app::serve(listener, other));
        format!("http://{addr}")
    } else {
        base.clone()
    };
    let mut first = run_streamed(&base, &app.test_key, id).await;
    // Wait for some text, then join.
    let mut seen = Vec::new();
    while text_of(&seen).is_empty() {
        seen.push(first.next().await.expect("text before the end"));
    }
    let mut second = run_streamed(&other_base, &app.test_key, id).await;
    let joined: Value = serde_json::from_str(&second.next().await.unwrap()).unwrap();
    assert_eq!(joined["polpo"]["data"]["task"]["status"], "in_progress");
    // The first client leaves; the task goes on.
    drop(first);
    let rest = second.rest().await;
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let done = until_status(&app, id, "done", Duration::from_secs(10)).await;
    let output = done["result"]["output"].as_str().unwrap();
    let later = text_of(&rest);
    assert!(!later.is_empty(), "the joining client got no text");
    assert!(
        output.ends_with(&later),
        "the joining client got the rest: {later:?} of {output:?}"
    );
    assert_eq!(done["result"]["attempts"].as_array().unwrap().len(), 1);
}

/// The one error frame a stream ends with: its OpenAI-shaped error code.
fn error_code(frames: &[String]) -> Option<String> {
    let last: Value = serde_json::from_str(frames.last()?).ok()?;
    last["error"]["code"].as_str().map(str::to_string)
}

#[tokio::test]
async fn a_revoked_key_or_a_shutdown_ends_the_stream_with_one_error_frame_and_the_task_goes_on() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/slow-echo").await;
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    let body = json!({"title": "Long", "description": words.join(" "), "assignTo": "writer", "draft": true});
    let first = task(&app, body.clone()).await;
    let base = app.serve().await;
    // A second key of the same scope follows and is then revoked.
    let other = polpo_api::auth::admin::create_key(&app.db, "acme", polpo_api::scope::Environment::Test, None, None)
        .await
        .unwrap();
    let id = first["id"].as_str().unwrap();
    let mut follow = run_streamed(&base, &other.plaintext, id).await;
    follow.next().await.expect("the snapshot");
    polpo_api::auth::admin::revoke_key(&app.db, &other.id).await.unwrap();
    let started = std::time::Instant::now();
    let rest = follow.rest().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream outlived its key"
    );
    assert_eq!(
        error_code(&rest).as_deref(),
        Some("invalid_api_key"),
        "{:?}",
        rest.last()
    );
    assert!(!rest.iter().any(|f| f == "[DONE]"));
    until_status(&app, id, "done", Duration::from_secs(30)).await;

    // Shutdown: the follower gets `unavailable`, without [DONE].
    let mut body = body;
    body["title"] = json!("Longer");
    let second = task(&app, body).await;
    let id = second["id"].as_str().unwrap();
    let mut follow = run_streamed(&base, &app.test_key, id).await;
    follow.next().await.expect("the snapshot");
    app.state.runtime.shutdown.cancel();
    let rest = follow.rest().await;
    assert_eq!(error_code(&rest).as_deref(), Some("unavailable"), "{:?}", rest.last());
    assert!(!rest.iter().any(|f| f == "[DONE]"));
}
