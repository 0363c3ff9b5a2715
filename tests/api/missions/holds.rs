//! Spec §6.6 and §6.7: quality gates, checkpoints and delays hold the tasks they block, the
//! mission deadline ends a live run, and a run no task can move fails at once.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::{Value, json};

use super::{act, agent, events, execute, get_mission, get_run, mission, task_of, until_run};
use crate::helpers::{TestApp, eventually};

/// Milliseconds since the epoch of an API timestamp.
fn ms(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"));
    polpo_api::clock::parse_rfc3339(text).unwrap_or_else(|| panic!("not RFC 3339: {text}"))
}

fn attempts(task: &Value) -> Vec<Value> {
    task["result"]["attempts"].as_array().cloned().unwrap_or_default()
}

/// When the task's first attempt started.
fn first_start(task: &Value) -> i64 {
    let attempts = attempts(task);
    let first = attempts.first().unwrap_or_else(|| panic!("no attempt: {task:#}"));
    ms(&first["startedAt"])
}

/// The stored events named `name` about run `run_id`, oldest first.
async fn run_events(app: &TestApp, name: &str, run_id: &str) -> Vec<Value> {
    events(app, name)
        .await
        .into_iter()
        .filter(|e| e["data"]["runId"] == run_id)
        .collect()
}

/// Attempts counted by one instance (`polpo_task_attempts_total`, all series).
fn attempts_counted(state: &polpo_api::app::AppState) -> f64 {
    state
        .runtime
        .metrics
        .render(0)
        .lines()
        .filter(|l| l.starts_with("polpo_task_attempts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_failing_gate_fails_the_run_without_attempting_what_it_blocks_and_resume_rearms_it() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    agent(&app, "slow", "mock/slow-echo").await;
    // The reviewer scores the draft 1 (the marker) and no fix is allowed; `Publish` depends on
    // nothing, so only the gate keeps it from running. `Side` (60 words at 50 ms each) is still
    // running when the gate fails.
    let saved = mission(
        &app,
        json!({"name": "launch", "tasks": [
            {"title": "Draft", "description": "Write the post. MOCK_FAIL", "assignTo": "writer", "maxRetries": 0,
             "expectations": [{"type": "llm_review", "criteria": "Accurate"}]},
            {"title": "Publish", "description": "Publish the post.", "assignTo": "writer"},
            {"title": "Side", "description": (0..60).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "),
             "assignTo": "slow"}],
         "qualityGates": [{"name": "quality", "afterTasks": ["Draft"], "blocksTasks": ["Publish"], "minScore": 4}]}),
    )
    .await;
    let id = id_of(&saved);
    let run_id = id_of(&execute(&app, &id).await);

    let failed = until_run(&app, &id, &run_id, "failed", Duration::from_secs(20)).await;
    let draft = task_of(&failed, "Draft");
    assert_eq!(draft["status"], "failed", "{draft:#}");
    assert_eq!(draft["result"]["error"]["code"], "review_failed", "{draft:#}");
    let publish = task_of(&failed, "Publish");
    assert_eq!(publish["status"], "pending", "never released: {publish:#}");
    assert!(attempts(publish).is_empty(), "never attempted: {publish:#}");
    let side = task_of(&failed, "Side");
    assert_eq!(side["status"], "failed", "running work is stopped: {side:#}");
    assert_eq!(side["result"]["error"]["code"], "quality_gate_failed", "{side:#}");
    assert_eq!(
        failed["gates"],
        json!([{"name": "quality", "status": "failed", "avgScore": 1.0}])
    );
    let gate_failed = run_events(&app, "quality:gate:failed", &run_id).await;
    assert_eq!(gate_failed.len(), 1, "{gate_failed:#?}");
    assert_eq!(gate_failed[0]["data"]["gate"], "quality");
    assert_eq!(gate_failed[0]["data"]["avgScore"], 1.0);
    assert!(
        !gate_failed[0]["data"]["reason"].as_str().unwrap_or_default().is_empty(),
        "{:#}",
        gate_failed[0]
    );
    assert!(run_events(&app, "quality:gate:passed", &run_id).await.is_empty());
    assert_eq!(get_mission(&app, &id).await["status"], "failed");
    let completed = run_events(&app, "mission:completed", &run_id).await;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert_eq!(completed[0]["data"]["allPassed"], false);

    // The draft is rewritten without the marker; resume re-arms the gate and retries it.
    let draft_id = draft["id"].as_str().unwrap();
    let patched = app
        .patch(
            &format!("/v1/tasks/{draft_id}"),
            &app.test_key,
            json!({"description": "Write the post."}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let resumed = act(&app, &id, "resume", json!({"retryFailed": true})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    let resumed = resumed.json();
    assert_eq!(resumed["status"], "active", "{resumed:#}");
    assert_eq!(
        resumed["gates"],
        json!([{"name": "quality", "status": "waiting", "avgScore": null}])
    );
    let resumed_events = run_events(&app, "mission:resumed", &run_id).await;
    assert_eq!(resumed_events.len(), 1, "{resumed_events:#?}");
    assert_eq!(resumed_events[0]["data"]["retried"], 2, "Draft and Side");

    // Now the draft scores 5: the gate passes and releases `Publish`.
    let done = until_run(&app, &id, &run_id, "completed", Duration::from_secs(20)).await;
    assert_eq!(task_of(&done, "Side")["status"], "done");
    assert_eq!(
        done["gates"],
        json!([{"name": "quality", "status": "passed", "avgScore": 5.0}])
    );
    let passed = run_events(&app, "quality:gate:passed", &run_id).await;
    assert_eq!(passed.len(), 1, "{passed:#?}");
    assert_eq!(passed[0]["data"]["avgScore"], 5.0);
    let publish = task_of(&done, "Publish");
    assert_eq!(publish["status"], "done", "{publish:#}");
    assert_eq!(attempts(publish).len(), 1, "{publish:#}");
    assert!(
        first_start(publish) >= ms(&passed[0]["timestamp"]),
        "Publish started before the gate passed: {publish:#}"
    );
    assert_eq!(get_mission(&app, &id).await["status"], "completed");
}

#[tokio::test]
async fn a_checkpoint_pauses_the_run_while_unrelated_work_goes_on_until_it_is_resumed() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    agent(&app, "slow", "mock/slow-echo").await;
    // `Side` streams 60 words at 50 ms each: about 3 s, still running when `Outline` is done.
    let words: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
    let saved = mission(
        &app,
        json!({"name": "reviewed", "tasks": [
            {"title": "Outline", "assignTo": "writer"},
            {"title": "Write", "assignTo": "writer", "dependsOn": ["Outline"]},
            {"title": "Side", "description": words.join(" "), "assignTo": "slow"}],
         "checkpoints": [{"name": "review", "afterTasks": ["Outline"], "blocksTasks": ["Write"],
                          "message": "Read the outline first"}]}),
    )
    .await;
    let id = id_of(&saved);
    let run_id = id_of(&execute(&app, &id).await);

    let paused = until_run(&app, &id, &run_id, "paused", Duration::from_secs(10)).await;
    assert_eq!(get_mission(&app, &id).await["status"], "paused");
    assert_eq!(task_of(&paused, "Outline")["status"], "done");
    assert_eq!(paused["checkpoints"][0]["status"], "reached", "{paused:#}");
    let reached = run_events(&app, "checkpoint:reached", &run_id).await;
    assert_eq!(reached.len(), 1, "{reached:#?}");
    let data = &reached[0]["data"];
    assert_eq!(data["checkpoint"], "review");
    assert_eq!(data["message"], "Read the outline first");
    assert_eq!(data["afterTasks"], json!([task_of(&paused, "Outline")["id"]]));
    assert_eq!(data["blocksTasks"], json!([task_of(&paused, "Write")["id"]]));
    assert_eq!(data["reachedAt"], paused["checkpoints"][0]["reachedAt"]);
    let reached_at = ms(&data["reachedAt"]);

    // The unrelated branch finishes while the run stays paused; the blocked task waits.
    let side_id = task_of(&paused, "Side")["id"].as_str().unwrap().to_string();
    let side_done = eventually(Duration::from_secs(15), || async {
        task_of(&get_run(&app, &id, &run_id).await, "Side")["status"] == "done"
    })
    .await;
    let run = get_run(&app, &id, &run_id).await;
    assert!(side_done, "{run:#}");
    let side = task_of(&run, "Side");
    assert!(
        ms(&side["finishedAt"]) > reached_at,
        "{side_id} kept running after the checkpoint was reached: {side:#}"
    );
    assert_eq!(run["status"], "paused", "a reached checkpoint holds the run: {run:#}");
    let write = task_of(&run, "Write");
    assert_eq!(write["status"], "pending", "{write:#}");
    assert!(attempts(write).is_empty(), "{write:#}");

    let url = format!("/v1/missions/{id}/checkpoints/review/resume");
    let resumed = app.post(&url, &app.test_key, json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    let resumed = resumed.json();
    assert_eq!(resumed["checkpoints"][0]["status"], "resumed", "{resumed:#}");
    assert_eq!(
        resumed["status"], "active",
        "no checkpoint remains reached: {resumed:#}"
    );
    let resumed_at = ms(&resumed["checkpoints"][0]["resumedAt"]);
    let resumed_events = run_events(&app, "checkpoint:resumed", &run_id).await;
    assert_eq!(resumed_events.len(), 1, "{resumed_events:#?}");
    assert_eq!(resumed_events[0]["data"]["checkpoint"], "review");

    // Already resumed, and a name the mission does not have.
    let again = app.post(&url, &app.test_key, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.json()["details"]["status"], "resumed", "{}", again.text);

    let done = until_run(&app, &id, &run_id, "completed", Duration::from_secs(10)).await;
    let write = task_of(&done, "Write");
    assert_eq!(write["status"], "done", "{write:#}");
    assert!(first_start(write) >= resumed_at, "{write:#}");
    assert_eq!(get_mission(&app, &id).await["status"], "completed");
    let completed_again = act(&app, &id, "resume", json!({})).await;
    assert_eq!(completed_again.status, StatusCode::CONFLICT, "{}", completed_again.text);
    let unknown = app
        .post(
            &format!("/v1/missions/{id}/checkpoints/nope/resume"),
            &app.test_key,
            json!({}),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
}

#[tokio::test]
async fn mission_resume_releases_every_reached_checkpoint_and_the_run_waits_for_the_last() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let saved = mission(
        &app,
        json!({"name": "signed-off", "tasks": [
            {"title": "Draft", "assignTo": "writer"},
            {"title": "Ship", "assignTo": "writer", "dependsOn": ["Draft"]}],
         "checkpoints": [
            {"name": "legal", "afterTasks": ["Draft"], "blocksTasks": ["Ship"]},
            {"name": "editor", "afterTasks": ["Draft"], "blocksTasks": ["Ship"]}]}),
    )
    .await;
    let id = id_of(&saved);
    let run_id = id_of(&execute(&app, &id).await);
    let paused = until_run(&app, &id, &run_id, "paused", Duration::from_secs(10)).await;
    let statuses = |run: &Value| -> Vec<Value> {
        run["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].clone())
            .collect()
    };
    assert_eq!(statuses(&paused), [json!("reached"), json!("reached")]);

    // One of two released: still paused, `Ship` still held.
    let legal = app
        .post(
            &format!("/v1/missions/{id}/checkpoints/legal/resume"),
            &app.test_key,
            json!({}),
        )
        .await;
    assert_eq!(legal.status, StatusCode::OK, "{}", legal.text);
    let legal = legal.json();
    assert_eq!(legal["status"], "paused", "{legal:#}");
    assert_eq!(statuses(&legal), [json!("resumed"), json!("reached")]);
    assert_eq!(task_of(&legal, "Ship")["status"], "pending");

    let resumed = act(&app, &id, "resume", json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    assert_eq!(statuses(&resumed.json()), [json!("resumed"), json!("resumed")]);
    let released: Vec<Value> = run_events(&app, "checkpoint:resumed", &run_id)
        .await
        .iter()
        .map(|e| e["data"]["checkpoint"].clone())
        .collect();
    assert_eq!(released, [json!("legal"), json!("editor")]);
    assert_eq!(run_events(&app, "mission:resumed", &run_id).await.len(), 1);

    let done = until_run(&app, &id, &run_id, "completed", Duration::from_secs(10)).await;
    assert_eq!(task_of(&done, "Ship")["status"], "done");
}

/// A mission `Prepare` → (delay `cool-off`) → `Release`; returns the mission id.
async fn delayed_mission(app: &TestApp, duration: &str) -> String {
    agent(app, "writer", "mock/echo").await;
    let saved = mission(
        app,
        json!({"name": "embargoed", "tasks": [
            {"title": "Prepare", "assignTo": "writer"},
            {"title": "Release", "assignTo": "writer", "dependsOn": ["Prepare"]}],
         "delays": [{"name": "cool-off", "afterTasks": ["Prepare"], "blocksTasks": ["Release"],
                     "duration": duration}]}),
    )
    .await;
    id_of(&saved)
}

/// Waits (at most 10 s) for the run's `delay:started`; returns its payload.
async fn delay_started(app: &TestApp, run_id: &str) -> Value {
    let seen = eventually(Duration::from_secs(10), || async {
        !run_events(app, "delay:started", run_id).await.is_empty()
    })
    .await;
    assert!(seen, "no delay:started for {run_id}");
    run_events(app, "delay:started", run_id).await[0]["data"].clone()
}

#[tokio::test]
async fn a_delay_holds_its_tasks_for_its_whole_duration() {
    let app = TestApp::spawn().await;
    let id = delayed_mission(&app, "PT2S").await;
    let run_id = id_of(&execute(&app, &id).await);
    let started = delay_started(&app, &run_id).await;
    assert_eq!(started["delay"], "cool-off");
    assert_eq!(started["duration"], "PT2S");
    let (from, until) = (ms(&started["startedAt"]), ms(&started["expiresAt"]));
    assert_eq!(until - from, 2000, "{started:#}");
    let running = get_run(&app, &id, &run_id).await;
    assert_eq!(running["delays"][0]["status"], "running", "{running:#}");
    assert_eq!(task_of(&running, "Release")["status"], "pending");

    let done = until_run(&app, &id, &run_id, "completed", Duration::from_secs(15)).await;
    let release = task_of(&done, "Release");
    assert!(
        first_start(release) >= from + 2000,
        "Release started {} ms after the delay started",
        first_start(release) - from
    );
    assert_eq!(done["delays"][0]["status"], "expired", "{done:#}");
    let expired = run_events(&app, "delay:expired", &run_id).await;
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert!(ms(&expired[0]["timestamp"]) >= until, "{:#}", expired[0]);
}

#[tokio::test]
async fn a_running_delay_survives_a_restart_and_releases_its_task_once() {
    let app = TestApp::spawn().await;
    let id = delayed_mission(&app, "PT3S").await;
    let run_id = id_of(&execute(&app, &id).await);
    let started = delay_started(&app, &run_id).await;
    let until = ms(&started["expiresAt"]);

    // The instance stops its background work mid-delay; another one starts on the database.
    assert!(app.state.runtime.drain(Duration::from_secs(5)).await, "the drain ended");
    assert!(
        polpo_api::clock::now_ms() < until,
        "the restart happened before the delay expired"
    );
    let restarted = app.another_instance(Config::default()).await;

    let done = until_run(&app, &id, &run_id, "completed", Duration::from_secs(15)).await;
    let release = task_of(&done, "Release");
    assert_eq!(attempts(release).len(), 1, "ran once: {release:#}");
    assert!(
        first_start(release) >= until,
        "Release started {} ms before the delay expired",
        until - first_start(release)
    );
    let expired = run_events(&app, "delay:expired", &run_id).await;
    assert_eq!(expired.len(), 1, "{expired:#?}");
    // The attempt is counted by the instance that ran it, right after its last commit.
    let on_restarted = eventually(Duration::from_secs(5), || async { attempts_counted(&restarted) >= 1.0 }).await;
    assert!(on_restarted, "the restarted instance ran Release");
    assert_eq!(attempts_counted(&restarted), 1.0, "only Release ran after the restart");
    assert!(restarted.runtime.drain(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn the_mission_deadline_kills_open_tasks_and_fails_the_run() {
    let app = TestApp::spawn().await;
    agent(&app, "slow", "mock/slow-echo").await;
    // 200 words at 50 ms each: about 10 s, far past the deadline.
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    let saved = mission(
        &app,
        json!({"name": "due", "tasks": [
            {"title": "Long", "description": words.join(" "), "assignTo": "slow"},
            {"title": "After", "assignTo": "slow", "dependsOn": ["Long"]}]}),
    )
    .await;
    let id = id_of(&saved);
    let run_id = id_of(&execute(&app, &id).await);
    let running = eventually(Duration::from_secs(10), || async {
        task_of(&get_run(&app, &id, &run_id).await, "Long")["status"] == "in_progress"
    })
    .await;
    assert!(running, "{:#}", get_run(&app, &id, &run_id).await);

    let deadline = polpo_api::clock::now_ms() + 2000;
    let patched = app
        .patch(
            &format!("/v1/missions/{id}"),
            &app.test_key,
            json!({"deadline": polpo_api::clock::format_ms(deadline)}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.json()["status"], "active");

    let failed = until_run(&app, &id, &run_id, "failed", Duration::from_secs(8)).await;
    let finished = ms(&failed["finishedAt"]);
    assert!(finished >= deadline, "ended {} ms early", deadline - finished);
    assert!(
        finished - deadline <= 3000,
        "ended {} ms after the deadline",
        finished - deadline
    );
    for title in ["Long", "After"] {
        let task = task_of(&failed, title);
        assert_eq!(task["status"], "failed", "{task:#}");
        assert_eq!(task["result"]["error"]["code"], "mission_deadline", "{task:#}");
    }
    assert_eq!(get_mission(&app, &id).await["status"], "failed");
    let completed = run_events(&app, "mission:completed", &run_id).await;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert_eq!(completed[0]["data"]["allPassed"], false);
}

#[tokio::test]
async fn a_run_no_task_can_move_fails_at_once() {
    let app = TestApp::spawn().await;
    agent(&app, "broken", "mock/error-500").await;
    agent(&app, "writer", "mock/echo").await;
    let saved = mission(
        &app,
        json!({"name": "doomed", "tasks": [
            {"title": "Fetch", "assignTo": "broken", "maxRetries": 0},
            {"title": "Use", "assignTo": "writer", "dependsOn": ["Fetch"]}]}),
    )
    .await;
    let id = id_of(&saved);
    let run_id = id_of(&execute(&app, &id).await);
    let failed = until_run(&app, &id, &run_id, "failed", Duration::from_secs(10)).await;
    let fetch = task_of(&failed, "Fetch");
    assert_eq!(fetch["status"], "failed", "{fetch:#}");
    let waited = ms(&failed["finishedAt"]) - ms(&fetch["finishedAt"]);
    assert!(waited <= 2000, "the run ended {waited} ms after its last hope failed");
    let used = task_of(&failed, "Use");
    assert_eq!(used["status"], "pending", "{used:#}");
    assert!(attempts(used).is_empty(), "{used:#}");
    assert_eq!(get_mission(&app, &id).await["status"], "failed");
    let completed = run_events(&app, "mission:completed", &run_id).await;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert_eq!(completed[0]["data"]["allPassed"], false);

    // Held by a checkpoint and a delay that wait for the failed task: they can never arm.
    let saved = mission(
        &app,
        json!({"name": "held-forever", "tasks": [
            {"title": "Fetch", "assignTo": "broken", "maxRetries": 0},
            {"title": "Check", "assignTo": "writer"},
            {"title": "Later", "assignTo": "writer"}],
         "checkpoints": [{"name": "look", "afterTasks": ["Fetch"], "blocksTasks": ["Check"]}],
         "delays": [{"name": "wait", "afterTasks": ["Fetch"], "blocksTasks": ["Later"], "duration": "PT1S"}]}),
    )
    .await;
    let id = id_of(&saved);
    let run_id = id_of(&execute(&app, &id).await);
    let failed = until_run(&app, &id, &run_id, "failed", Duration::from_secs(10)).await;
    let waited = ms(&failed["finishedAt"]) - ms(&task_of(&failed, "Fetch")["finishedAt"]);
    assert!(waited <= 2000, "the run ended {waited} ms after Fetch failed");
    for title in ["Check", "Later"] {
        let task = task_of(&failed, title);
        assert_eq!(task["status"], "pending", "{task:#}");
        assert!(attempts(task).is_empty(), "{task:#}");
    }
    assert_eq!(failed["checkpoints"][0]["status"], "waiting");
    assert_eq!(failed["delays"][0]["status"], "waiting");
    // A checkpoint never reached cannot be resumed.
    let look = app
        .post(
            &format!("/v1/missions/{id}/checkpoints/look/resume"),
            &app.test_key,
            json!({}),
        )
        .await;
    assert_eq!(look.status, StatusCode::CONFLICT, "{}", look.text);
}
