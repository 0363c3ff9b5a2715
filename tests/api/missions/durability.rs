//! Spec §5.8, §6.6: a mission run is database state, so it survives `kill -9` of its server,
//! and a run's tasks are keyed by (run, definition), so no node can be created twice. The
//! live-run gauge follows runs as they start and end.

use std::time::Duration;

use polpo_api::runtime::tasks::{Status, Task};
use serde_json::{Value, json};

use super::{execute, mission};
use crate::helpers::{ServerProcess, TestApp, TestDatabase, client, eventually};

async fn call(base: &str, key: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut request = client()
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn start(database: &TestDatabase) -> ServerProcess {
    let config = database.dir.0.join("polpo.toml");
    std::fs::write(
        &config,
        "[workers]\nlease_duration = \"2s\"\nheartbeat_interval = \"500ms\"\n",
    )
    .unwrap();
    ServerProcess::start(
        &database.dir.0,
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("POLPO_CONFIG", config.to_str().unwrap()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_kill_nine_and_completes_with_each_task_created_once() {
    let database = TestDatabase::new().await;
    let mut server = start(&database);
    let key = server.key();
    let base = server.base_url.clone();
    call(
        &base,
        &key,
        "POST",
        "/v1/agents",
        Some(json!({"name": "plodder", "model": "mock/slow-echo"})),
    )
    .await;
    // Long descriptions: about two seconds of words each on `slow-echo`.
    let words = "word ".repeat(40);
    let body = json!({"name": "chain", "tasks": [
        {"title": "First", "description": words, "assignTo": "plodder"},
        {"title": "Second", "description": words, "assignTo": "plodder", "dependsOn": ["First"]},
        {"title": "Third", "description": words, "assignTo": "plodder", "dependsOn": ["First"]},
        {"title": "Last", "description": "short", "assignTo": "plodder", "dependsOn": ["Second", "Third"]},
    ]});
    let saved = call(&base, &key, "POST", "/v1/missions", Some(body)).await;
    let id = saved["id"].as_str().unwrap().to_string();
    let run = call(
        &base,
        &key,
        "POST",
        &format!("/v1/missions/{id}/execute"),
        Some(json!({})),
    )
    .await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let run_path = format!("/v1/missions/{id}/runs/{run_id}");

    // Killed while the middle of the diamond streams.
    let middle = eventually(Duration::from_secs(20), || async {
        let run = call(&base, &key, "GET", &run_path, None).await;
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["status"] == "in_progress" && t["title"] != "First")
    })
    .await;
    assert!(middle, "the run did not reach its middle tasks");
    server.child.kill().unwrap();
    let _ = server.child.wait();

    let server = start(&database);
    let base = server.base_url.clone();
    let finished = eventually(Duration::from_secs(60), || async {
        call(&base, &key, "GET", &run_path, None).await["status"] == "completed"
    })
    .await;
    let run = call(&base, &key, "GET", &run_path, None).await;
    assert!(finished, "the run did not complete after the restart: {run:#}");
    let titles: Vec<&str> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        ["First", "Second", "Third", "Last"],
        "one task per definition, in order"
    );
    let all = call(
        &base,
        &key,
        "GET",
        &format!("/v1/tasks?missionId={id}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 4, "no task was created twice: {all:#}");
    let interrupted: Vec<&Value> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["result"]["attempts"].as_array().unwrap().iter())
        .filter(|a| a["error"]["code"] == "interrupted")
        .collect();
    assert!(!interrupted.is_empty(), "the kill interrupted no attempt: {run:#}");
    let completed = call(
        &base,
        &key,
        "GET",
        "/v1/events/history?filter=mission:completed&limit=1000",
        None,
    )
    .await;
    assert_eq!(
        completed.as_array().unwrap().len(),
        1,
        "one end of the run: {completed:#}"
    );
    let mission = call(&base, &key, "GET", &format!("/v1/missions/{id}"), None).await;
    assert_eq!(mission["status"], "completed");
}

#[tokio::test]
async fn the_database_refuses_a_second_task_for_a_definition_of_a_run() {
    let app = TestApp::spawn().await;
    super::agent(&app, "writer", "mock/echo").await;
    let saved = mission(
        &app,
        json!({"name": "once", "tasks": [{"title": "Only", "assignTo": "writer"}]}),
    )
    .await;
    let run = execute(&app, saved["id"].as_str().unwrap()).await;
    let existing: Task = serde_json::from_value(run["tasks"][0].clone()).unwrap();
    let mut twin = Task::new("task_twin".into(), Status::Pending, existing.created_at);
    twin.title = existing.title.clone();
    twin.assign_to = existing.assign_to.clone();
    twin.mission_id = existing.mission_id.clone();
    twin.run_id = existing.run_id.clone();
    let row = polpo_api::runtime::tasks::store_rows::row(&twin).unwrap();
    let scope = app.state_scope();
    let again = polpo_api::store::tasks::insert(&app.db.pool, &scope, &row, 0, Some(0)).await;
    assert!(again.is_err(), "a second task for definition 0 of the run was stored");
    let tasks = app
        .get(
            &format!("/v1/tasks?runId={}", run["id"].as_str().unwrap()),
            &app.test_key,
        )
        .await
        .json();
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks:#}");
}

#[tokio::test]
async fn the_live_run_gauge_counts_runs_while_they_run() {
    let app = TestApp::spawn().await;
    super::agent(&app, "plodder", "mock/slow-echo").await;
    let before = app.metric("polpo_mission_runs_live").await;
    let saved = mission(
        &app,
        json!({"name": "gauge", "tasks": [{"title": "Slow", "description": "word ".repeat(30), "assignTo": "plodder"}]}),
    )
    .await;
    let id = saved["id"].as_str().unwrap();
    let run = execute(&app, id).await;
    assert_eq!(app.metric("polpo_mission_runs_live").await, before + 1.0);
    super::until_run(
        &app,
        id,
        run["id"].as_str().unwrap(),
        "completed",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(app.metric("polpo_mission_runs_live").await, before);
}
