//! Executing missions (spec §6.5, §6.6): runs that own their tasks, in dependency order and in
//! parallel, numbered with their own groups; abort, resume, reports; volatile teams that shadow
//! project agents only inside their run.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::clock::parse_rfc3339;
use serde_json::{Value, json};

use super::{act, agent, events, execute, get_mission, get_run, mission, task_of, until_run};
use crate::helpers::{TestApp, eventually};

/// The longest a short run on the `mock` provider may take, slow models and reviews included.
const RUN_BOUND: Duration = Duration::from_secs(60);

/// A timestamp field as milliseconds.
fn ms(value: &Value) -> i64 {
    parse_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}")))
        .unwrap_or_else(|| panic!("not RFC 3339: {value}"))
}

/// Words enough to keep a `mock/slow-echo` attempt running about a minute (50 ms per word).
fn long_text() -> String {
    vec!["word"; 1200].join(" ")
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// The number of team members stored for a run. Nothing in the API lists them (they are not
/// agents of the project), so the table is read directly.
async fn team_rows(app: &TestApp, run_id: &str) -> i64 {
    polpo_api::store::missions::count_run_agents(&app.db.pool, &app.state_scope(), run_id)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_diamond_runs_its_branches_in_parallel_and_reports_every_score() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/slow-echo").await;
    let review = json!([{"type": "llm_review", "criteria": "Clear and complete"}]);
    let def = |title: &str, deps: &[&str]| {
        json!({"title": title, "description": format!("Do step {title}."), "assignTo": "writer",
               "dependsOn": deps, "expectations": review})
    };
    let created = mission(
        &app,
        json!({"name": "diamond", "tasks": [def("A", &[]), def("B", &["A"]), def("C", &["A"]), def("D", &["B", "C"])]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let started = execute(&app, id).await;
    assert_eq!(started["status"], "active");
    assert_eq!(started["number"], 1);
    assert_eq!(started["trigger"], "api");
    let run_id = started["id"].as_str().unwrap();
    assert!(run_id.starts_with("run_"), "{started}");
    // B and D wait for their dependencies, which are the run's own tasks.
    assert_eq!(
        task_of(&started, "B")["dependsOn"],
        json!([task_of(&started, "A")["id"]])
    );

    let run = until_run(&app, id, run_id, "completed", RUN_BOUND).await;
    let attempt = |title: &str| task_of(&run, title)["result"]["attempts"][0].clone();
    let finished = |title: &str| ms(&task_of(&run, title)["finishedAt"]);
    let (b, c, d) = (attempt("B"), attempt("C"), attempt("D"));
    // B and C overlap: each started before the other's attempt ended.
    assert!(
        ms(&b["startedAt"]) < ms(&c["finishedAt"]) && ms(&c["startedAt"]) < ms(&b["finishedAt"]),
        "B {b:#} and C {c:#} did not run at the same time"
    );
    // A before both; D after both.
    for branch in [&b, &c] {
        assert!(finished("A") <= ms(&branch["startedAt"]), "A {run:#}");
    }
    assert!(
        ms(&d["startedAt"]) >= finished("B") && ms(&d["startedAt"]) >= finished("C"),
        "D started before B and C finished: {run:#}"
    );
    for title in ["A", "B", "C", "D"] {
        let task = task_of(&run, title);
        assert_eq!(task["status"], "done", "{title}");
        assert_eq!(task["group"], "diamond");
        assert_eq!(task["missionId"], id);
        assert_eq!(task["runId"], run_id);
    }
    assert_eq!(run["avgScore"], 5.0);
    assert!(ms(&run["finishedAt"]) >= finished("D"));

    let report = app.get(&format!("/v1/missions/{id}/report"), &app.test_key).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    let report = report.json();
    assert_eq!(report["runId"], run_id);
    assert_eq!(report["runNumber"], 1);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["allPassed"], true);
    assert_eq!(report["avgScore"], 5.0);
    assert_eq!(
        report["totalDurationMs"],
        ms(&run["finishedAt"]) - ms(&run["startedAt"])
    );
    let titles: Vec<&str> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["A", "B", "C", "D"]);
    for task in report["tasks"].as_array().unwrap() {
        assert_eq!(task["score"], 5.0, "{task}");
        assert_eq!(task["status"], "done", "{task}");
        assert!(task["outputPreview"].as_str().unwrap().contains("Do step"), "{task}");
    }
    assert_eq!(get_mission(&app, id).await["status"], "completed");

    let completed = events(&app, "mission:completed").await;
    assert_eq!(completed.len(), 1, "{completed:#?}");
    assert_eq!(completed[0]["data"]["runId"], run_id);
    assert_eq!(completed[0]["data"]["allPassed"], true);
    assert_eq!(completed[0]["data"]["report"]["avgScore"], 5.0);
    let executed = events(&app, "mission:executed").await;
    assert_eq!(executed.len(), 1);
    assert_eq!(
        executed[0]["data"],
        json!({"missionId": id, "runId": run_id, "number": 1, "group": "diamond", "taskCount": 4,
               "trigger": "api", "timestamp": executed[0]["data"]["timestamp"]})
    );
}

#[tokio::test]
async fn each_execution_is_a_numbered_run_with_its_own_tasks_and_an_abort_touches_only_the_latest() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    // The prompt goes into every brief: a slow model takes about a minute to echo it.
    let created = mission(
        &app,
        json!({"name": "digest", "prompt": long_text(), "tasks": [
            {"title": "Gather", "assignTo": "writer"},
            {"title": "Summarise", "assignTo": "writer", "dependsOn": ["Gather"]}
        ]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let first = execute(&app, id).await;
    let first_id = first["id"].as_str().unwrap().to_string();
    until_run(&app, id, &first_id, "completed", RUN_BOUND).await;
    let second = execute(&app, id).await;
    let second_id = second["id"].as_str().unwrap().to_string();
    until_run(&app, id, &second_id, "completed", RUN_BOUND).await;

    // What the finished runs look like before anything happens to the third.
    let snapshot = |run_id: String| {
        let app = &app;
        async move {
            let run = app
                .get(&format!("/v1/missions/{id}/runs/{run_id}"), &app.test_key)
                .await
                .text;
            let tasks = app.get(&format!("/v1/tasks?runId={run_id}"), &app.test_key).await.text;
            (run, tasks)
        }
    };
    let before = [snapshot(first_id.clone()).await, snapshot(second_id.clone()).await];

    let patched = app
        .patch("/v1/agents/writer", &app.test_key, json!({"model": "mock/slow-echo"}))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let third = execute(&app, id).await;
    let third_id = third["id"].as_str().unwrap().to_string();
    assert_eq!(get_mission(&app, id).await["status"], "active");
    let busy = act(&app, id, "execute", json!({})).await;
    assert_eq!(busy.status, StatusCode::CONFLICT, "{}", busy.text);

    let runs = [&first, &second, &third];
    for (i, run) in runs.iter().enumerate() {
        let number = i + 1;
        let group = if number == 1 {
            "digest".to_string()
        } else {
            format!("digest #{number}")
        };
        assert_eq!(run["number"], number);
        assert_eq!(run["group"], group.as_str());
        assert_eq!(run["missionId"], id);
        for task in run["tasks"].as_array().unwrap() {
            assert_eq!(task["group"], group.as_str(), "{task}");
            assert_eq!(task["runId"], run["id"], "{task}");
            assert_eq!(task["missionId"], id, "{task}");
        }
    }
    let mut all: Vec<String> = runs.iter().flat_map(|r| ids(&r["tasks"])).collect();
    assert_eq!(all.len(), 6);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "runs share task ids");
    // A run's group lists exactly its tasks.
    let by_group = app.get("/v1/tasks?group=digest%20%232", &app.test_key).await;
    assert_eq!(ids(&by_group.json()), ids(&second["tasks"]), "{}", by_group.text);

    let listed = app.get(&format!("/v1/missions/{id}/runs"), &app.test_key).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let listed = listed.json();
    assert_eq!(ids(&listed), [first_id.clone(), second_id.clone(), third_id.clone()]);
    let page = app.get(&format!("/v1/missions/{id}/runs?limit=2"), &app.test_key).await;
    assert_eq!(ids(&page.json()), [first_id.clone(), second_id.clone()]);
    assert_eq!(page.header("x-next-cursor"), Some(second_id.as_str()));
    let rest = app
        .get(&format!("/v1/missions/{id}/runs?after={second_id}"), &app.test_key)
        .await;
    assert_eq!(ids(&rest.json()), [third_id.as_str()]);
    // A cursor that names no run of the mission still places the page (spec §1.5).
    let before_all = app
        .get(
            &format!("/v1/missions/{id}/runs?after=run_00000000000000000000000000"),
            &app.test_key,
        )
        .await;
    assert_eq!(before_all.status, StatusCode::OK, "{}", before_all.text);
    assert_eq!(ids(&before_all.json()), ids(&listed));

    // Abort while the first task's attempt is running: it is cancelled with the run.
    let gather_id = task_of(&third, "Gather")["id"].as_str().unwrap().to_string();
    let running = eventually(Duration::from_secs(10), || async {
        app.get(&format!("/v1/tasks/{gather_id}"), &app.test_key).await.json()["status"] == "in_progress"
    })
    .await;
    assert!(running, "the third run never started its first task");
    let aborted = act(&app, id, "abort", json!({})).await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.text);
    let aborted = aborted.json();
    assert_eq!(aborted["id"], third_id.as_str());
    assert_eq!(aborted["status"], "cancelled");
    assert!(aborted["finishedAt"].is_string());
    for task in aborted["tasks"].as_array().unwrap() {
        assert_eq!(task["status"], "failed", "{task}");
        assert_eq!(task["result"]["error"]["code"], "mission_aborted", "{task}");
    }
    let attempts = task_of(&aborted, "Gather")["result"]["attempts"].clone();
    assert_eq!(attempts.as_array().unwrap().len(), 1, "{attempts:#}");
    assert_eq!(attempts[0]["model"], "mock/slow-echo");
    assert_eq!(attempts[0]["error"]["code"], "mission_aborted", "{attempts:#}");
    let mission_now = get_mission(&app, id).await;
    assert_eq!(mission_now["status"], "cancelled");
    assert_eq!(mission_now["executionCount"], 3);
    assert_eq!(mission_now["currentRunId"], third_id.as_str());
    let abort_events = events(&app, "mission:aborted").await;
    assert_eq!(abort_events.len(), 1);
    assert_eq!(abort_events[0]["data"]["runId"], third_id.as_str());
    assert_eq!(abort_events[0]["data"]["killedTasks"], json!(ids(&third["tasks"])));
    // An aborted run is not a failed one: no report event for it.
    let completions: Vec<Value> = events(&app, "mission:completed")
        .await
        .iter()
        .map(|e| e["data"]["runId"].clone())
        .collect();
    assert_eq!(completions, [json!(first_id), json!(second_id)]);

    let again = act(&app, id, "abort", json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let resumed = act(&app, id, "resume", json!({})).await;
    assert_eq!(resumed.status, StatusCode::CONFLICT, "{}", resumed.text);
    assert_eq!(resumed.json()["details"]["status"], "cancelled");

    let report = app
        .get(&format!("/v1/missions/{id}/report?runId={third_id}"), &app.test_key)
        .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    let report = report.json();
    assert_eq!(
        (
            report["runNumber"].clone(),
            report["status"].clone(),
            report["allPassed"].clone()
        ),
        (json!(3), json!("cancelled"), json!(false))
    );
    let earlier = app
        .get(&format!("/v1/missions/{id}/report?runId={first_id}"), &app.test_key)
        .await
        .json();
    assert_eq!(
        (
            earlier["runNumber"].clone(),
            earlier["status"].clone(),
            earlier["allPassed"].clone()
        ),
        (json!(1), json!("completed"), json!(true))
    );

    // Runs 1 and 2 and their tasks are exactly as they were.
    let after = [snapshot(first_id.clone()).await, snapshot(second_id.clone()).await];
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_failed_run_resumes_with_its_failed_tasks_retried() {
    let app = TestApp::spawn().await;
    agent(&app, "flaky", "mock/error-500").await;
    let created = mission(
        &app,
        json!({"name": "fragile", "tasks": [
            {"title": "Call", "assignTo": "flaky", "maxRetries": 1},
            {"title": "Use", "assignTo": "flaky", "dependsOn": ["Call"]}
        ]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let run_id = execute(&app, id).await["id"].as_str().unwrap().to_string();
    // "Use" can never start once "Call" failed: the run fails without waiting for it.
    let failed = until_run(&app, id, &run_id, "failed", RUN_BOUND).await;
    let call = task_of(&failed, "Call");
    assert_eq!(call["status"], "failed");
    assert_eq!(call["retries"], 1, "its one automatic retry was used");
    assert_eq!(call["result"]["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(call["result"]["error"]["code"], "upstream_error");
    assert_eq!(task_of(&failed, "Use")["status"], "pending");
    assert_eq!(get_mission(&app, id).await["status"], "failed");
    let completed = events(&app, "mission:completed").await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["data"]["allPassed"], false);

    // The cause is fixed, then the run resumes.
    let fixed = app
        .patch("/v1/agents/flaky", &app.test_key, json!({"model": "mock/echo"}))
        .await;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.text);
    let resumed = act(&app, id, "resume", json!({"retryFailed": true})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    let resumed = resumed.json();
    assert_eq!(resumed["id"], run_id.as_str());
    assert_eq!(resumed["status"], "active");
    assert_eq!(resumed["finishedAt"], Value::Null);
    let call = task_of(&resumed, "Call");
    assert_eq!(call["status"], "pending");
    assert_eq!(call["retries"], 0);
    assert_eq!(call["result"]["error"], Value::Null);
    let resume_events = events(&app, "mission:resumed").await;
    assert_eq!(resume_events.len(), 1);
    let data = &resume_events[0]["data"];
    assert_eq!(
        (
            data["missionId"].clone(),
            data["runId"].clone(),
            data["retried"].clone(),
            data["pending"].clone()
        ),
        (json!(id), json!(run_id), json!(1), json!(2))
    );

    let done = until_run(&app, id, &run_id, "completed", RUN_BOUND).await;
    for title in ["Call", "Use"] {
        assert_eq!(task_of(&done, title)["status"], "done", "{title}");
    }
    assert_eq!(
        task_of(&done, "Call")["result"]["attempts"].as_array().unwrap().len(),
        3
    );
    let mission_now = get_mission(&app, id).await;
    assert_eq!(mission_now["status"], "completed");
    assert_eq!(mission_now["executionCount"], 1, "a resume is not a new execution");
    let again = act(&app, id, "resume", json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
}

#[tokio::test]
async fn a_team_member_shadows_a_project_agent_only_inside_its_run() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    // About 40 words at 50 ms each: the run stays live for at least two seconds.
    let description = vec!["word"; 40].join(" ");
    let created = mission(
        &app,
        json!({
            "name": "crewed",
            "team": {"name": "crew", "agents": [{"name": "writer", "model": "mock/slow-echo"}]},
            "tasks": [{"title": "Write", "description": description, "assignTo": "writer"}]
        }),
    )
    .await;
    assert_eq!(created["team"]["agents"][0]["name"], "writer");
    let id = created["id"].as_str().unwrap();

    let first = execute(&app, id).await;
    let first_id = first["id"].as_str().unwrap();
    // While the run is live its member exists, yet the project's agents are unchanged.
    assert_eq!(team_rows(&app, first_id).await, 1);
    let listed = app.get("/v1/agents", &app.test_key).await.json();
    let listed: Vec<(Value, Value)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].clone(), a["model"].clone()))
        .collect();
    assert_eq!(listed, [(json!("writer"), json!("mock/echo"))]);
    assert_eq!(get_run(&app, id, first_id).await["status"], "active");

    let run = until_run(&app, id, first_id, "completed", RUN_BOUND).await;
    let attempt = &task_of(&run, "Write")["result"]["attempts"][0];
    assert_eq!(attempt["agent"], "writer");
    assert_eq!(
        attempt["model"], "mock/slow-echo",
        "the team member ran, not the project agent"
    );
    assert_eq!(team_rows(&app, first_id).await, 0, "the team outlived its run");

    // Without any project agent of that name the team still runs: it is made anew per run.
    let deleted = app.delete("/v1/agents/writer", &app.test_key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let second = execute(&app, id).await;
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(team_rows(&app, second_id).await, 1);
    assert_eq!(app.get("/v1/agents", &app.test_key).await.json(), json!([]));
    let run = until_run(&app, id, second_id, "completed", RUN_BOUND).await;
    assert_eq!(
        task_of(&run, "Write")["result"]["attempts"][0]["model"],
        "mock/slow-echo"
    );
    assert_eq!(team_rows(&app, second_id).await, 0);
}

#[tokio::test]
async fn execute_checks_the_definitions_against_the_agents_of_now() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    agent(&app, "editor", "mock/echo").await;
    let created = mission(
        &app,
        json!({"name": "orphaned", "tasks": [
            {"title": "Draft", "assignTo": "writer"},
            {"title": "Edit", "assignTo": "editor", "dependsOn": ["Draft"]}
        ]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let deleted = app.delete("/v1/agents/writer", &app.test_key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    // The stored definition is unchanged (spec §2.2 rule 2) but no longer runs.
    assert_eq!(get_mission(&app, id).await["tasks"][0]["assignTo"], "writer");

    let refused = act(&app, id, "execute", json!({})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    let fields: Vec<String> = refused.json()["details"]["fields"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(fields, ["tasks[0].assignTo"]);
    // Nothing started.
    let mission_now = get_mission(&app, id).await;
    assert_eq!(
        (
            mission_now["status"].clone(),
            mission_now["executionCount"].clone(),
            mission_now["currentRunId"].clone()
        ),
        (json!("draft"), json!(0), Value::Null)
    );
    let runs = app.get(&format!("/v1/missions/{id}/runs"), &app.test_key).await;
    assert_eq!(runs.json(), json!([]), "{}", runs.text);
    assert_eq!(app.get("/v1/tasks", &app.test_key).await.json(), json!([]));
    assert_eq!(events(&app, "mission:executed,task:created").await, Vec::<Value>::new());
    let no_report = app.get(&format!("/v1/missions/{id}/report"), &app.test_key).await;
    assert_eq!(no_report.status, StatusCode::NOT_FOUND, "{}", no_report.text);

    // With the agent back the same mission runs.
    agent(&app, "writer", "mock/echo").await;
    let run = execute(&app, id).await;
    until_run(&app, id, run["id"].as_str().unwrap(), "completed", RUN_BOUND).await;
    let unknown = act(&app, "msn_01jz0000000000000000000000", "execute", json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
}

#[tokio::test]
async fn a_project_agent_is_not_held_back_by_a_team_member_of_the_same_name() {
    let app = TestApp::spawn().await;
    let project = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "writer", "model": "mock/echo", "maxConcurrency": 1}),
        )
        .await;
    assert_eq!(project.status, StatusCode::CREATED, "{}", project.text);
    let created = mission(
        &app,
        json!({
            "name": "crewed",
            "team": [{"name": "writer", "model": "mock/slow-echo"}],
            "tasks": [{"title": "Write", "description": long_text(), "assignTo": "writer"}]
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let run = execute(&app, id).await;
    let run_id = run["id"].as_str().unwrap();
    let write_id = task_of(&run, "Write")["id"].as_str().unwrap().to_string();
    let running = eventually(Duration::from_secs(10), || async {
        app.get(&format!("/v1/tasks/{write_id}"), &app.test_key).await.json()["status"] == "in_progress"
    })
    .await;
    assert!(running, "the team member never started");

    // The team member's attempt (about a minute long) does not take the project agent's only slot.
    let side = app
        .post(
            "/v1/tasks",
            &app.test_key,
            json!({"title": "Side job", "assignTo": "writer"}),
        )
        .await;
    assert_eq!(side.status, StatusCode::CREATED, "{}", side.text);
    let side_id = side.json()["id"].as_str().unwrap().to_string();
    let done = eventually(Duration::from_secs(10), || async {
        app.get(&format!("/v1/tasks/{side_id}"), &app.test_key).await.json()["status"] == "done"
    })
    .await;
    assert!(done, "the project agent waited for the team member's attempt");

    // Nor are the team member's tasks the project agent's: deleting it leaves the run alone.
    let deleted = app.delete("/v1/agents/writer", &app.test_key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let run = get_run(&app, id, run_id).await;
    assert_eq!(run["status"], "active");
    assert_eq!(task_of(&run, "Write")["status"], "in_progress", "{run:#}");
    let aborted = act(&app, id, "abort", json!({})).await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.text);
}
