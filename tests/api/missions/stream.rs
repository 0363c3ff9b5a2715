//! Spec §6.9: `execute` with `stream: true` follows the whole run: the first frame, every task's
//! text tagged with its task, the lifecycle of every task, and the finish — `stop` when the run
//! completed, `failed` when it failed or was aborted. A client that leaves stops nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{act, agent, get_run, mission, task_of, until_run};
use crate::helpers::{SseFrames, TestApp};

/// Executes mission `id` with `stream: true` and reads its frames.
async fn execute_streamed(base: &str, key: &str, id: &str) -> SseFrames {
    SseFrames::post(base, key, &format!("/v1/missions/{id}/execute")).await
}

/// The JSON frames (everything but `[DONE]`).
fn parsed(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| *f != "[DONE]")
        .map(|f| serde_json::from_str(f).unwrap_or_else(|e| panic!("not JSON ({e}): {f}")))
        .collect()
}

/// The content chunks as (taskId, text), in order.
fn contents(frames: &[Value]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter_map(|f| {
            let text = f["choices"][0]["delta"]["content"].as_str()?;
            let task = f["polpo"]["taskId"]
                .as_str()
                .unwrap_or_else(|| panic!("content without its taskId: {f}"));
            Some((task.to_string(), text.to_string()))
        })
        .collect()
}

/// The lifecycle frames as (event, payload), in order.
fn lifecycle(frames: &[Value]) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter_map(|f| Some((f["polpo"]["event"].as_str()?.to_string(), f["polpo"]["data"].clone())))
        .collect()
}

/// Checks the stream's end: a `finish_reason` frame, then `[DONE]`, and no other frame finishes.
fn assert_finish(frames: &[String], reason: &str) {
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"), "{frames:#?}");
    let json = parsed(frames);
    let last = json.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], reason, "{last}");
    assert_eq!(last["choices"][0]["delta"], json!({}), "{last}");
    let finishing = json
        .iter()
        .filter(|f| !f["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishing, 1, "one finish frame: {frames:#?}");
}

fn words(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn a_streamed_run_separates_parallel_outputs_and_ends_with_stop() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/slow-echo").await;
    let saved = mission(
        &app,
        json!({"name": "twins", "tasks": [
            {"title": "Left", "description": words("left", 30), "assignTo": "writer",
             "expectations": [{"type": "contains", "text": "left29"}]},
            {"title": "Right", "description": words("right", 30), "assignTo": "writer",
             "expectations": [{"type": "contains", "text": "right29"}]}]}),
    )
    .await;
    let id = saved["id"].as_str().unwrap();
    let base = app.serve().await;
    let mut follow = execute_streamed(&base, &app.test_key, id).await;
    let first = follow.first().await;
    let run_id = first["id"].as_str().unwrap().to_string();
    assert!(run_id.starts_with("run_"), "{first}");
    assert_eq!(first["object"], "mission.chunk");
    assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant"}));
    assert_eq!(first["polpo"]["event"], "mission:executed");
    assert_eq!(first["polpo"]["data"]["missionId"], id);
    assert_eq!(first["polpo"]["data"]["runId"], run_id.as_str());
    assert_eq!(first["polpo"]["data"]["taskCount"], 2);

    let frames = follow.rest().await;
    assert_finish(&frames, "stop");
    let json = parsed(&frames);
    for frame in &json {
        assert_eq!(frame["id"], run_id.as_str(), "{frame}");
        assert_eq!(frame["object"], "mission.chunk", "{frame}");
    }
    let run = until_run(&app, id, &run_id, "completed", Duration::from_secs(5)).await;
    let ids: BTreeSet<String> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();

    // Each task's text, put back together by taskId, is its stored output.
    let chunks = contents(&json);
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    for (task, text) in &chunks {
        texts.entry(task.clone()).or_default().push_str(text);
    }
    for title in ["Left", "Right"] {
        let task = task_of(&run, title);
        let task_id = task["id"].as_str().unwrap();
        assert_eq!(
            texts.get(task_id).map(String::as_str),
            task["result"]["output"].as_str(),
            "{title}"
        );
    }
    assert_eq!(texts.keys().cloned().collect::<BTreeSet<_>>(), ids);
    // The two outputs streamed side by side: their chunks alternate more than once.
    let switches = chunks.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(switches >= 2, "the outputs did not interleave ({switches} switches)");

    // Every task's lifecycle, nothing about other work, and no aliases.
    let events = lifecycle(&json);
    for task_id in &ids {
        let names: BTreeSet<&str> = events
            .iter()
            .filter(|(_, data)| data["taskId"] == task_id.as_str())
            .map(|(name, _)| name.as_str())
            .collect();
        for expected in [
            "task:created",
            "task:transition",
            "agent:spawned",
            "agent:finished",
            "assessment:started",
            "assessment:complete",
        ] {
            assert!(names.contains(expected), "{expected} missing for {task_id}: {names:?}");
        }
    }
    for (name, data) in &events {
        assert!(
            !["task:completed", "agent:completed", "assessment:completed"].contains(&name.as_str()),
            "alias {name} sent"
        );
        if let Some(task_id) = data["taskId"].as_str() {
            assert!(ids.contains(task_id), "{name} about another task: {data}");
        }
    }
    assert!(
        !events.iter().any(|(name, _)| name == "mission:executed"),
        "mission:executed comes once, first"
    );
    let (last_event, report) = events.last().unwrap();
    assert_eq!(last_event, "mission:completed");
    assert_eq!(report["runId"], run_id.as_str());
    assert_eq!(report["allPassed"], true);
}

#[tokio::test]
async fn the_stream_stays_open_through_holds_and_carries_their_events() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let saved = mission(
        &app,
        json!({"name": "gated", "tasks": [
            {"title": "Draft", "assignTo": "writer", "expectations": [{"type": "llm_review", "criteria": "Clear"}]},
            {"title": "Publish", "assignTo": "writer", "dependsOn": ["Draft"]}],
         "qualityGates": [{"name": "quality", "afterTasks": ["Draft"], "blocksTasks": ["Publish"], "minScore": 4}],
         "checkpoints": [{"name": "sign-off", "afterTasks": ["Draft"], "blocksTasks": ["Publish"]}],
         "delays": [{"name": "embargo", "afterTasks": ["Draft"], "blocksTasks": ["Publish"], "duration": "PT1S"}]}),
    )
    .await;
    let id = saved["id"].as_str().unwrap();
    let base = app.serve().await;
    let mut follow = execute_streamed(&base, &app.test_key, id).await;
    let run_id = follow.first().await["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    while !lifecycle(&parsed(&seen))
        .iter()
        .any(|(name, _)| name == "checkpoint:reached")
    {
        seen.push(follow.next().await.expect("the checkpoint before the end"));
    }
    assert_eq!(get_run(&app, id, &run_id).await["status"], "paused");
    let resumed = app
        .post(
            &format!("/v1/missions/{id}/checkpoints/sign-off/resume"),
            &app.test_key,
            json!({}),
        )
        .await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    let rest = follow.rest().await;
    assert_finish(&rest, "stop");
    seen.extend(rest);
    let names: Vec<String> = lifecycle(&parsed(&seen)).into_iter().map(|(name, _)| name).collect();
    for expected in [
        "quality:gate:passed",
        "checkpoint:reached",
        "checkpoint:resumed",
        "delay:started",
        "delay:expired",
        "mission:completed",
    ] {
        assert_eq!(
            names.iter().filter(|n| *n == expected).count(),
            1,
            "{expected} once in {names:?}"
        );
    }
    until_run(&app, id, &run_id, "completed", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_failed_or_aborted_run_ends_the_stream_with_failed() {
    let app = TestApp::spawn().await;
    agent(&app, "broken", "mock/error-500").await;
    agent(&app, "slow", "mock/slow-echo").await;
    let base = app.serve().await;

    let doomed = mission(
        &app,
        json!({"name": "doomed", "tasks": [{"title": "Fetch", "assignTo": "broken", "maxRetries": 0}]}),
    )
    .await;
    let id = doomed["id"].as_str().unwrap();
    let mut follow = execute_streamed(&base, &app.test_key, id).await;
    let run_id = follow.first().await["id"].as_str().unwrap().to_string();
    let frames = follow.rest().await;
    assert_finish(&frames, "failed");
    let events = lifecycle(&parsed(&frames));
    let (last_event, report) = events.last().unwrap();
    assert_eq!(last_event, "mission:completed");
    assert_eq!(report["allPassed"], false);
    assert_eq!(get_run(&app, id, &run_id).await["status"], "failed");

    // Aborted from another request while the stream follows it.
    let long = mission(
        &app,
        json!({"name": "long", "tasks": [{"title": "Essay", "description": words("w", 200), "assignTo": "slow"}]}),
    )
    .await;
    let id = long["id"].as_str().unwrap();
    let mut follow = execute_streamed(&base, &app.test_key, id).await;
    let run_id = follow.first().await["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    while contents(&parsed(&seen)).is_empty() {
        seen.push(follow.next().await.expect("text before the end"));
    }
    let aborted = act(&app, id, "abort", json!({})).await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.text);
    let frames = follow.rest().await;
    assert_finish(&frames, "failed");
    let events = lifecycle(&parsed(&frames));
    assert!(
        events
            .iter()
            .any(|(name, data)| name == "mission:aborted" && data["runId"] == run_id.as_str()),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|(name, _)| name == "mission:completed"),
        "{events:#?}"
    );
    assert_eq!(get_run(&app, id, &run_id).await["status"], "cancelled");
}

#[tokio::test]
async fn a_client_leaving_mid_run_stops_nothing() {
    let app = TestApp::spawn().await;
    agent(&app, "slow", "mock/slow-echo").await;
    let saved = mission(
        &app,
        json!({"name": "left-alone", "tasks": [{"title": "Essay", "description": words("w", 40), "assignTo": "slow"}]}),
    )
    .await;
    let id = saved["id"].as_str().unwrap();
    let base = app.serve().await;
    let mut follow = execute_streamed(&base, &app.test_key, id).await;
    let run_id = follow.first().await["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    while contents(&parsed(&seen)).is_empty() {
        seen.push(follow.next().await.expect("text before the end"));
    }
    drop(follow);

    let run = until_run(&app, id, &run_id, "completed", Duration::from_secs(15)).await;
    let essay = task_of(&run, "Essay");
    assert_eq!(essay["status"], "done", "{essay:#}");
    assert!(
        essay["result"]["output"].as_str().unwrap().contains("w39"),
        "the whole essay: {essay:#}"
    );
    assert_eq!(essay["result"]["attempts"].as_array().unwrap().len(), 1);
}
