//! `polpo-api missions import` (spec §10.1 conventions): the README's example file saved by the
//! real binary into a server's database, read back over the API and walked to `completed` as
//! the README does; files that are not valid missions are refused with their field problems and
//! leave nothing behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use super::{act, agent, events, execute, get_mission, get_run, mission, task_of, until_run};
use crate::helpers::{TestApp, cli, eventually};

/// Tasks of the example run on `mock/echo` in milliseconds; its delay is 5 s. Generous for a
/// loaded machine.
const RUN_BOUND: Duration = Duration::from_secs(30);

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/launch-post.json")
}

/// Runs `missions import <file> --project <project> --env <env>` against the app's database;
/// returns (exit code, stdout, stderr). The binary runs off the async threads, so the app's
/// background work keeps going meanwhile.
async fn import_into(app: &TestApp, file: &Path, project: &str, env: &str) -> (i32, String, String) {
    let cwd = app._database.dir.0.clone();
    let url = app._database.url.clone();
    let args: Vec<String> = [
        "missions",
        "import",
        &file.display().to_string(),
        "--project",
        project,
        "--env",
        env,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&cwd, Some(&url), &args)
    })
    .await
    .unwrap()
}

/// The import into project `acme`, whose keys the app holds.
async fn import(app: &TestApp, file: &Path, env: &str) -> (i32, String, String) {
    import_into(app, file, "acme", env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_file_imports_once_and_runs_to_completed_through_checkpoint_delay_and_approval() {
    let app = TestApp::spawn().await;

    let (code, out, err) = import(&app, &example(), "test").await;
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "stdout carries only the mission: {out:?}");
    let (id, name) = lines[0].split_once('\t').expect("id and name, tab-separated");
    assert!(id.starts_with("msn_"), "{id}");
    assert_eq!(name, "launch-post");

    let mission = get_mission(&app, id).await;
    assert_eq!(mission["status"], "draft", "{mission:#}");
    assert_eq!(mission["taskCount"], 3);
    assert_eq!(mission["team"]["name"], "content");
    assert_eq!(mission["delays"][0]["duration"], "PT5S");
    assert_eq!(
        app.get(&format!("/v1/missions/{id}"), &app.live_key).await.status,
        StatusCode::NOT_FOUND,
        "imported into acme/test only"
    );

    let (code, out, err) = import(&app, &example(), "test").await;
    assert_eq!(code, 1, "a second import of the same name fails: {err}");
    assert!(out.is_empty(), "nothing on stdout: {out:?}");
    assert!(err.contains("a mission named \"launch-post\" already exists"), "{err}");
    let listed = app.get("/v1/missions", &app.test_key).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "still one mission: {listed:#}");

    // The README's walkthrough: execute, the checkpoint pauses the run, resume it, the delay
    // expires, Publish waits for approval, approve, the run completes.
    let run = execute(&app, id).await;
    let run_id = run["id"].as_str().unwrap().to_string();
    let paused = until_run(&app, id, &run_id, "paused", RUN_BOUND).await;
    assert_eq!(paused["gates"][0]["status"], "passed", "{paused:#}");
    assert_eq!(paused["checkpoints"][0]["status"], "reached");
    assert_eq!(task_of(&paused, "Draft post")["status"], "done");
    assert_eq!(task_of(&paused, "Publish")["status"], "pending");

    let resumed = act(&app, id, "checkpoints/editor-signoff/resume", json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    assert_eq!(resumed.json()["checkpoints"][0]["status"], "resumed");

    let awaiting = eventually(RUN_BOUND, || async {
        task_of(&get_run(&app, id, &run_id).await, "Publish")["status"] == "awaiting_approval"
    })
    .await;
    let run = get_run(&app, id, &run_id).await;
    assert!(awaiting, "Publish did not wait for approval: {run:#}");
    assert_eq!(
        run["delays"][0]["status"], "expired",
        "Publish ran only after the delay"
    );
    let publish_id = task_of(&run, "Publish")["id"].as_str().unwrap().to_string();
    let approvals = app
        .get(
            &format!("/v1/approvals?status=pending&taskId={publish_id}"),
            &app.test_key,
        )
        .await
        .json();
    let approval_id = approvals[0]["id"].as_str().expect("a pending approval").to_string();
    let approved = app
        .post(
            &format!("/v1/approvals/{approval_id}/approve"),
            &app.test_key,
            json!({"note": "Ship it"}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);

    until_run(&app, id, &run_id, "completed", RUN_BOUND).await;
    let saved = events(&app, "mission:saved").await;
    assert_eq!(saved.len(), 1, "the import is announced as an API create is: {saved:?}");
    assert_eq!(saved[0]["data"]["missionId"], id);
    let completed = events(&app, "mission:completed").await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0]["data"]["allPassed"], true);
    let report = app
        .get(&format!("/v1/missions/{id}/report"), &app.test_key)
        .await
        .json();
    assert_eq!(report["allPassed"], true, "{report:#}");
    assert_eq!(report["avgScore"], 5.0);
    assert_eq!(get_mission(&app, id).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_valid_mission_is_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let dir = app._database.dir.0.clone();
    let cycle = dir.join("cycle.json");
    let body = json!({
        "name": "loop",
        "team": [{"name": "w", "model": "mock/echo"}],
        "tasks": [{"title": "a", "dependsOn": ["b"]}, {"title": "b", "dependsOn": ["a"]}],
    });
    std::fs::write(&cycle, body.to_string()).unwrap();
    let (code, out, err) = import(&app, &cycle, "test").await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "nothing on stdout: {out:?}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("tasks[0].dependsOn: ") && l.contains("cycle")),
        "the problem on a line of its own as `path: problem`: {err}"
    );

    let list = dir.join("list.json");
    std::fs::write(&list, "[1, 2]").unwrap();
    let (code, out, err) = import(&app, &list, "test").await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("must hold one JSON object"), "{err}");

    // As deep as a request body may not be: refused the same way.
    let deep = dir.join("deep.json");
    let nested = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    std::fs::write(&deep, format!(r#"{{"name": "deep", "data": {{"x": {nested}}}}}"#)).unwrap();
    let (code, out, err) = import(&app, &deep, "test").await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("nested deeper than 64"), "{err}");

    let (code, out, err) = import(&app, &dir.join("missing.json"), "test").await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("cannot read"), "{err}");

    let (code, out, err) = import_into(&app, &example(), "ghost", "test").await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("no project \"ghost\""), "{err}");

    let (code, out, err) = import(&app, &example(), "prod").await;
    assert_eq!(code, 2, "an unknown environment is a usage error: {err}");
    assert!(out.is_empty(), "{out:?}");

    for key in [&app.test_key, &app.live_key] {
        let listed = app.get("/v1/missions", key).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
        assert_eq!(listed.json(), json!([]), "nothing was stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_through_the_api_is_a_duplicate_in_its_environment_only() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let saved = mission(
        &app,
        json!({"name": "launch-post", "tasks": [{"title": "Draft", "assignTo": "writer"}]}),
    )
    .await;

    let (code, out, err) = import(&app, &example(), "test").await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("already exists in project acme (test)"), "{err}");
    assert_eq!(
        get_mission(&app, saved["id"].as_str().unwrap()).await["taskCount"],
        1,
        "untouched"
    );

    let (code, out, err) = import(&app, &example(), "live").await;
    assert_eq!(code, 0, "the live environment has no mission of that name: {err}");
    let id = out.split('\t').next().unwrap();
    let live = app.get(&format!("/v1/missions/{id}"), &app.live_key).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text);
    assert_eq!(live.json()["taskCount"], 3);
}
