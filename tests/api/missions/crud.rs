//! Saving missions: create, read, list, PATCH and delete (spec §6.1–§6.4), the validation of
//! §6.2 by JSON path with nothing stored on error, the legacy `data` string, and the groups a
//! mission reserves for its runs (§5.1).

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::clock::{format_ms, now_ms};
use serde_json::{Value, json};

use super::{act, agent, events, execute, get_mission, mission, task_of};
use crate::helpers::{TestApp, eventually};

/// An instant `ms` from now, as the API writes it.
fn in_ms(ms: i64) -> String {
    format_ms(now_ms() + ms)
}

/// A description long enough to keep a `mock/slow-echo` attempt running for about a minute
/// (50 ms per word), so that a run stays live while a test acts on it.
fn long_description() -> String {
    vec!["word"; 1200].join(" ")
}

/// The `details.fields` keys of a 400, sorted.
fn failing_fields(response: &crate::helpers::TestResponse) -> Vec<String> {
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{}", response.text);
    let body = response.json();
    assert_eq!(body["code"], "bad_request", "{body}");
    let mut keys: Vec<String> = body["details"]["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("no details.fields: {body}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_saved_mission_shows_its_definitions_with_defaults_and_names() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let by_id = app.get("/v1/agents/writer", &app.test_key).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let created = app
        .post(
            "/v1/missions",
            &app.test_key,
            json!({
                "name": "launch-post",
                "prompt": "Publish the 2.0 post.",
                "data": {"version": "2.0"},
                "tasks": [
                    {"title": "Collect notes", "assignTo": by_id},
                    {"title": "Draft post", "description": "Write it.", "assignTo": "writer",
                     "dependsOn": ["Collect notes"], "maxRetries": 1, "priority": 7,
                     "expectations": [{"type": "contains", "text": "2.0"}]}
                ]
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let created = created.json();
    assert!(created["id"].as_str().unwrap().starts_with("msn_"), "{created}");
    assert_eq!(created["status"], "draft");
    assert_eq!(created["taskCount"], 2);
    assert_eq!(created["executionCount"], 0);
    assert_eq!(created["currentRunId"], Value::Null);
    assert_eq!(created["qualityThreshold"], 3.0);
    assert_eq!(created["data"], json!({"version": "2.0"}));
    assert_eq!(created["team"], Value::Null);
    for list in ["qualityGates", "checkpoints", "delays"] {
        assert_eq!(created[list], json!([]), "{list}");
    }
    // Defaults applied; the agent given by id is stored by name; the description defaults to
    // the title.
    let first = &created["tasks"][0];
    assert_eq!(first["assignTo"], "writer");
    assert_eq!(first["description"], "Collect notes");
    assert_eq!(first["dependsOn"], json!([]));
    assert_eq!(first["maxRetries"], 2);
    assert_eq!(first["priority"], 0);
    assert_eq!(first["sideEffects"], false);
    assert_eq!(first["expectations"], json!([]));
    let second = &created["tasks"][1];
    assert_eq!(second["description"], "Write it.");
    assert_eq!(second["dependsOn"], json!(["Collect notes"]));
    assert_eq!(
        (second["maxRetries"].clone(), second["priority"].clone()),
        (json!(1), json!(7))
    );
    assert_eq!(second["expectations"][0]["caseSensitive"], true);

    let id = created["id"].as_str().unwrap();
    assert_eq!(get_mission(&app, id).await, created);
    let saved = events(&app, "mission:*").await;
    assert_eq!(saved.len(), 1, "{saved:#?}");
    assert_eq!(saved[0]["event"], "mission:saved");
    assert_eq!(saved[0]["data"]["missionId"], id);
    assert_eq!(saved[0]["data"]["name"], "launch-post");
    assert_eq!(saved[0]["data"]["status"], "draft");

    let missing = app
        .get("/v1/missions/msn_01jz0000000000000000000000", &app.test_key)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
}

#[tokio::test]
async fn missions_are_listed_in_creation_order_by_status_and_by_page() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let tasks = json!([{"title": "Only", "assignTo": "writer"}]);
    let draft = mission(&app, json!({"name": "one", "tasks": tasks})).await;
    let recurring = mission(&app, json!({"name": "two", "tasks": tasks, "schedule": "0 9 * * 1"})).await;
    let scheduled = mission(
        &app,
        json!({"name": "three", "tasks": tasks, "schedule": in_ms(86_400_000)}),
    )
    .await;
    assert_eq!(recurring["status"], "recurring");
    assert_eq!(scheduled["status"], "scheduled");
    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = app.get("/v1/missions", &app.test_key).await;
    assert_eq!(
        ids(&all.json()),
        [&draft["id"], &recurring["id"], &scheduled["id"]].map(|v| v.as_str().unwrap().to_string())
    );
    assert_eq!(all.header("x-next-cursor"), None);
    for (status, expected) in [("recurring", &recurring), ("scheduled", &scheduled), ("draft", &draft)] {
        let listed = app.get(&format!("/v1/missions?status={status}"), &app.test_key).await;
        assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
        assert_eq!(ids(&listed.json()), [expected["id"].as_str().unwrap()], "{status}");
    }
    let none = app.get("/v1/missions?status=completed", &app.test_key).await;
    assert_eq!(none.json(), json!([]));
    let bad = app.get("/v1/missions?status=finished", &app.test_key).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);

    let page = app.get("/v1/missions?limit=2", &app.test_key).await;
    assert_eq!(
        ids(&page.json()),
        [&draft["id"], &recurring["id"]].map(|v| v.as_str().unwrap().to_string())
    );
    let cursor = page
        .header("x-next-cursor")
        .expect("a cursor after a full page")
        .to_string();
    assert_eq!(cursor, recurring["id"].as_str().unwrap());
    let rest = app
        .get(&format!("/v1/missions?limit=2&after={cursor}"), &app.test_key)
        .await;
    assert_eq!(ids(&rest.json()), [scheduled["id"].as_str().unwrap()]);
    assert_eq!(rest.header("x-next-cursor"), None);
    // Another environment of the project sees none of them.
    assert_eq!(app.get("/v1/missions", &app.live_key).await.json(), json!([]));
}

#[tokio::test]
async fn names_are_unique_and_may_not_look_like_a_later_run() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let tasks = json!([{"title": "Only", "assignTo": "writer"}]);
    mission(&app, json!({"name": "weekly", "tasks": tasks})).await;
    let again = app
        .post("/v1/missions", &app.test_key, json!({"name": "weekly", "tasks": tasks}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.json()["code"], "conflict");
    let run_like = app
        .post(
            "/v1/missions",
            &app.test_key,
            json!({"name": "weekly #3", "tasks": tasks}),
        )
        .await;
    assert_eq!(failing_fields(&run_like), ["name"]);
    // Only " #<digits>" at the end is reserved.
    mission(&app, json!({"name": "weekly #three", "tasks": tasks})).await;
    mission(&app, json!({"name": "#3 weekly", "tasks": tasks})).await;
    // The other environment may reuse the name (spec §1.3 rule 4).
    let live = app
        .post(
            "/v1/agents",
            &app.live_key,
            json!({"name": "writer", "model": "mock/echo"}),
        )
        .await;
    assert_eq!(live.status, StatusCode::CREATED, "{}", live.text);
    let other = app
        .post("/v1/missions", &app.live_key, json!({"name": "weekly", "tasks": tasks}))
        .await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.text);
}

#[tokio::test]
async fn an_invalid_plan_is_refused_naming_the_exact_path_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let ok = |title: &str| json!({"title": title, "assignTo": "writer"});
    let after = |title: &str, deps: &[&str]| json!({"title": title, "assignTo": "writer", "dependsOn": deps});
    let plan = |extra: Value| {
        let mut body = json!({"name": "plan", "tasks": [ok("Draft"), after("Review", &["Draft"])]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let hold = |after_tasks: &[&str], blocks_tasks: &[&str]| json!([{"name": "h", "afterTasks": after_tasks, "blocksTasks": blocks_tasks}]);
    let delay = |duration: &str| json!([{"name": "d", "afterTasks": ["Draft"], "blocksTasks": ["Review"], "duration": duration}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a cycle not through the first task",
            json!({"tasks": [ok("Start"), after("B", &["Start", "C"]), after("C", &["B"])]}),
            "tasks[1].dependsOn",
        ),
        (
            "a task depending on itself",
            json!({"tasks": [ok("Draft"), after("Review", &["Review"])]}),
            "tasks[1].dependsOn[0]",
        ),
        (
            "an unknown dependency",
            json!({"tasks": [ok("Draft"), after("Review", &["Drafts"])]}),
            "tasks[1].dependsOn[0]",
        ),
        (
            "an unknown afterTasks title",
            json!({"qualityGates": hold(&["Drafts"], &["Review"])}),
            "qualityGates[0].afterTasks[0]",
        ),
        (
            "an unknown blocksTasks title",
            json!({"checkpoints": hold(&["Draft"], &["Reviews"])}),
            "checkpoints[0].blocksTasks[0]",
        ),
        (
            "a hold blocking a task it waits for",
            json!({"delays": [{"name": "d", "afterTasks": ["Draft"], "blocksTasks": ["Review", "Draft"], "duration": "PT1M"}]}),
            "delays[0].blocksTasks[1]",
        ),
        (
            "a hold blocking a prerequisite of what it waits for",
            json!({"checkpoints": hold(&["Review"], &["Draft"])}),
            "checkpoints[0].blocksTasks[0]",
        ),
        (
            "an empty afterTasks",
            json!({"qualityGates": hold(&[], &["Review"])}),
            "qualityGates[0].afterTasks",
        ),
        (
            "an unknown agent",
            json!({"tasks": [ok("Draft"), {"title": "Review", "assignTo": "ghost"}]}),
            "tasks[1].assignTo",
        ),
        (
            "no team and no assignTo",
            json!({"tasks": [{"title": "Draft"}]}),
            "tasks[0].assignTo",
        ),
        (
            "a team member on an unusable model",
            json!({"team": {"name": "crew", "agents": [{"name": "ghostwriter", "model": "nope/none"}]}}),
            "team.agents[0].model",
        ),
        ("a minute out of range", json!({"schedule": "61 * * * *"}), "schedule"),
        ("three cron fields", json!({"schedule": "* * *"}), "schedule"),
        (
            "a schedule instant in the past",
            json!({"schedule": in_ms(-60_000)}),
            "schedule",
        ),
        (
            "a duration without P",
            json!({"delays": delay("30m")}),
            "delays[0].duration",
        ),
        (
            "a duration in months",
            json!({"delays": delay("P1M")}),
            "delays[0].duration",
        ),
        (
            "a duration over 30 days",
            json!({"delays": delay("P31D")}),
            "delays[0].duration",
        ),
        (
            "a deadline in the past",
            json!({"deadline": in_ms(-60_000)}),
            "deadline",
        ),
        (
            "an endDate without a schedule",
            json!({"endDate": in_ms(86_400_000)}),
            "endDate",
        ),
        (
            "an endDate with a one-time schedule",
            json!({"schedule": in_ms(3_600_000), "endDate": in_ms(86_400_000)}),
            "endDate",
        ),
        (
            "a threshold above 5",
            json!({"qualityThreshold": 6}),
            "qualityThreshold",
        ),
        ("no tasks", json!({"tasks": []}), "tasks"),
    ];
    for (what, extra, path) in cases {
        let response = app.post("/v1/missions", &app.test_key, plan(extra)).await;
        assert_eq!(failing_fields(&response), [path], "{what}: {}", response.text);
    }
    // Every failing field is named in one answer (spec §0.4 rule 8).
    let many = app
        .post(
            "/v1/missions",
            &app.test_key,
            plan(json!({"tasks": [ok("Draft"), {"title": "Review", "assignTo": "ghost"}],
                        "schedule": "* * *", "deadline": in_ms(-60_000)})),
        )
        .await;
    assert_eq!(failing_fields(&many), ["deadline", "schedule", "tasks[1].assignTo"]);

    assert_eq!(app.get("/v1/missions", &app.test_key).await.json(), json!([]));
    assert_eq!(events(&app, "mission:*").await, Vec::<Value>::new());
    // The same plan without the faults is accepted: the cases failed for the stated reason.
    mission(&app, plan(json!({"checkpoints": hold(&["Draft"], &["Review"])}))).await;
}

#[tokio::test]
async fn the_legacy_data_string_supplies_the_definitions() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let inner = json!({
        "tasks": [{"title": "Draft", "assignTo": "editor"}, {"title": "Review", "dependsOn": ["Draft"]}],
        "team": {"name": "crew", "agents": [{"name": "editor", "model": "mock/echo"}]},
        "qualityGates": [{"name": "g", "afterTasks": ["Draft"], "blocksTasks": ["Review"], "minScore": 4}],
        "data": {"audience": "developers"}
    });
    let created = mission(&app, json!({"name": "legacy", "data": inner.to_string()})).await;
    assert_eq!(created["data"], json!({"audience": "developers"}));
    assert_eq!(created["taskCount"], 2);
    assert_eq!(created["tasks"][0]["assignTo"], "editor");
    // Without assignTo a definition runs as the first team member.
    assert_eq!(created["tasks"][1]["assignTo"], "editor");
    assert_eq!(created["team"]["name"], "crew");
    assert_eq!(created["qualityGates"][0]["minScore"], 4.0);

    let without_data = json!({"tasks": [{"title": "Only", "assignTo": "writer"}]});
    let bare = mission(&app, json!({"name": "legacy-bare", "data": without_data.to_string()})).await;
    assert_eq!(bare["data"], Value::Null);

    for (what, body) in [
        (
            "combined with top-level tasks",
            json!({"name": "x", "data": without_data.to_string(), "tasks": [{"title": "Only", "assignTo": "writer"}]}),
        ),
        (
            "combined with a top-level team",
            json!({"name": "x", "data": without_data.to_string(), "team": [{"name": "a", "model": "mock/echo"}]}),
        ),
        ("not JSON", json!({"name": "x", "data": "tasks: [Draft]"})),
        ("a JSON array", json!({"name": "x", "data": "[1, 2]"})),
    ] {
        let response = app.post("/v1/missions", &app.test_key, body).await;
        assert_eq!(failing_fields(&response), ["data"], "{what}");
    }
    let listed = app.get("/v1/missions", &app.test_key).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed:#}");
}

#[tokio::test]
async fn a_patch_replaces_fields_and_validates_the_whole_mission_again() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let created = mission(
        &app,
        json!({
            "name": "weekly",
            "tasks": [{"title": "Draft", "assignTo": "writer"},
                      {"title": "Review", "assignTo": "writer", "dependsOn": ["Draft"]}],
            "checkpoints": [{"name": "c", "afterTasks": ["Draft"], "blocksTasks": ["Review"]}]
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/missions/{id}");
    let patched = app.patch(&path, &app.test_key, json!({"prompt": "Be brief."})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let patched = patched.json();
    assert_eq!(patched["prompt"], "Be brief.");
    assert_eq!(patched["tasks"], created["tasks"]);
    let before = get_mission(&app, id).await;

    // A cycle, and a change that leaves the checkpoint blocking a task that no longer exists:
    // each refused by path, the stored mission untouched.
    let cycle = app
        .patch(
            &path,
            &app.test_key,
            json!({"tasks": [{"title": "Draft", "assignTo": "writer", "dependsOn": ["Review"]},
                             {"title": "Review", "assignTo": "writer", "dependsOn": ["Draft"]}]}),
        )
        .await;
    assert_eq!(failing_fields(&cycle), ["tasks[0].dependsOn"]);
    let orphan = app
        .patch(
            &path,
            &app.test_key,
            json!({"tasks": [{"title": "Draft", "assignTo": "writer"}]}),
        )
        .await;
    assert_eq!(failing_fields(&orphan), ["checkpoints[0].blocksTasks[0]"]);
    let unknown = app.patch(&path, &app.test_key, json!({"colour": "red"})).await;
    assert_eq!(failing_fields(&unknown), ["colour"]);
    let read_only = app.patch(&path, &app.test_key, json!({"status": "active"})).await;
    assert_eq!(failing_fields(&read_only), ["status"]);
    assert_eq!(get_mission(&app, id).await, before);

    // The schedule sets the status: cron → recurring, instant → scheduled, null → draft.
    for (schedule, status) in [
        (json!("*/5 * * * *"), "recurring"),
        (json!(in_ms(86_400_000)), "scheduled"),
        (Value::Null, "draft"),
    ] {
        let response = app.patch(&path, &app.test_key, json!({"schedule": schedule})).await;
        assert_eq!(response.status, StatusCode::OK, "{schedule}: {}", response.text);
        assert_eq!(response.json()["status"], status, "{schedule}");
        assert_eq!(response.json()["schedule"], schedule);
    }
    // Null resets a field to its default.
    let reset = app
        .patch(&path, &app.test_key, json!({"prompt": null, "checkpoints": null}))
        .await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.text);
    assert_eq!(
        (reset.json()["prompt"].clone(), reset.json()["checkpoints"].clone()),
        (Value::Null, json!([]))
    );

    mission(
        &app,
        json!({"name": "monthly", "tasks": [{"title": "Only", "assignTo": "writer"}]}),
    )
    .await;
    let taken = app.patch(&path, &app.test_key, json!({"name": "monthly"})).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{}", taken.text);

    // One mission:saved per successful write, with the status it left.
    let saved: Vec<(Value, Value)> = events(&app, "mission:saved")
        .await
        .iter()
        .filter(|e| e["data"]["missionId"] == id)
        .map(|e| (e["data"]["name"].clone(), e["data"]["status"].clone()))
        .collect();
    let weekly = |s: &str| (json!("weekly"), json!(s));
    assert_eq!(
        saved,
        [
            weekly("draft"),
            weekly("draft"),
            weekly("recurring"),
            weekly("scheduled"),
            weekly("draft"),
            weekly("draft")
        ]
    );
}

#[tokio::test]
async fn while_a_run_is_live_only_the_deadline_and_end_date_may_change() {
    let app = TestApp::spawn().await;
    agent(&app, "slow", "mock/slow-echo").await;
    let created = mission(
        &app,
        json!({"name": "long", "tasks": [{"title": "Write", "description": long_description(), "assignTo": "slow"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/missions/{id}");
    let run = execute(&app, id).await;
    assert_eq!(get_mission(&app, id).await["status"], "active");
    let listed_as = |status: &'static str| {
        let app = &app;
        async move {
            let list = app
                .get(&format!("/v1/missions?status={status}"), &app.test_key)
                .await
                .json();
            list.as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed_as("active").await, [id]);
    assert_eq!(listed_as("draft").await, Vec::<String>::new());
    for change in [
        json!({"tasks": [{"title": "Other", "assignTo": "slow"}]}),
        json!({"prompt": "Faster."}),
        json!({"schedule": "0 9 * * *"}),
    ] {
        let refused = app.patch(&path, &app.test_key, change.clone()).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "{change}: {}", refused.text);
        assert_eq!(refused.json()["details"]["status"], "active");
    }
    let deadline = in_ms(3_600_000);
    let moved = app.patch(&path, &app.test_key, json!({"deadline": deadline})).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    let moved = moved.json();
    assert_eq!(moved["deadline"], deadline);
    assert_eq!(moved["status"], "active", "the status mirrors the live run");
    assert_eq!(moved["tasks"], created["tasks"]);
    let statuses: Vec<Value> = events(&app, "mission:saved")
        .await
        .iter()
        .map(|e| e["data"]["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("draft"), json!("active")]);

    let aborted = act(&app, id, "abort", json!({})).await;
    assert_eq!(aborted.status, StatusCode::OK, "{}", aborted.text);
    assert_eq!(aborted.json()["id"], run["id"]);
    assert_eq!(listed_as("cancelled").await, [id]);
    assert_eq!(listed_as("active").await, Vec::<String>::new());
    // Once the run has ended the definitions may change again.
    let after = app
        .patch(
            &path,
            &app.test_key,
            json!({"tasks": [{"title": "Other", "assignTo": "slow"}]}),
        )
        .await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);
    assert_eq!(after.json()["taskCount"], 1);
}

#[tokio::test]
async fn a_standalone_task_may_not_take_a_missions_group() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    mission(
        &app,
        json!({"name": "launch", "tasks": [{"title": "Only", "assignTo": "writer"}]}),
    )
    .await;
    for group in ["launch", "launch #2", "launch #17"] {
        let response = app
            .post(
                "/v1/tasks",
                &app.test_key,
                json!({"title": "Side job", "assignTo": "writer", "group": group, "draft": true}),
            )
            .await;
        assert_eq!(failing_fields(&response), ["group"], "{group}");
    }
    for group in ["launcher", "launch #", "launch #two", "Launch"] {
        let response = app
            .post(
                "/v1/tasks",
                &app.test_key,
                json!({"title": "Side job", "assignTo": "writer", "group": group, "draft": true}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{group}: {}", response.text);
    }
    // A draft task may not move into the group either.
    let side = app
        .post(
            "/v1/tasks",
            &app.test_key,
            json!({"title": "Loose", "assignTo": "writer", "draft": true}),
        )
        .await
        .json();
    let moved = app
        .patch(
            &format!("/v1/tasks/{}", side["id"].as_str().unwrap()),
            &app.test_key,
            json!({"group": "launch #3"}),
        )
        .await;
    assert_eq!(failing_fields(&moved), ["group"]);
}

#[tokio::test]
async fn deleting_a_live_mission_aborts_its_run_and_removes_its_tasks() {
    let app = TestApp::spawn().await;
    agent(&app, "slow", "mock/slow-echo").await;
    let created = mission(
        &app,
        json!({"name": "doomed", "tasks": [
            {"title": "Write", "description": long_description(), "assignTo": "slow"},
            {"title": "Edit", "assignTo": "slow", "dependsOn": ["Write"]}
        ]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let run = execute(&app, id).await;
    let run_id = run["id"].as_str().unwrap();
    let write_id = task_of(&run, "Write")["id"].as_str().unwrap().to_string();
    let edit_id = task_of(&run, "Edit")["id"].as_str().unwrap().to_string();
    // Wait until the first task's attempt is really running.
    let running = eventually(Duration::from_secs(10), || async {
        app.get(&format!("/v1/tasks/{write_id}"), &app.test_key).await.json()["status"] == "in_progress"
    })
    .await;
    assert!(running, "the first task never started");

    let deleted = app.delete(&format!("/v1/missions/{id}"), &app.test_key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert!(deleted.text.is_empty());
    let gone = app.get(&format!("/v1/missions/{id}"), &app.test_key).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
    let run_gone = app
        .get(&format!("/v1/missions/{id}/runs/{run_id}"), &app.test_key)
        .await;
    assert_eq!(run_gone.status, StatusCode::NOT_FOUND, "{}", run_gone.text);
    let tasks = app.get(&format!("/v1/tasks?missionId={id}"), &app.test_key).await;
    assert_eq!(tasks.json(), json!([]), "{}", tasks.text);
    for task_id in [&write_id, &edit_id] {
        let task = app.get(&format!("/v1/tasks/{task_id}"), &app.test_key).await;
        assert_eq!(task.status, StatusCode::NOT_FOUND, "{}", task.text);
    }
    let again = app.delete(&format!("/v1/missions/{id}"), &app.test_key).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);

    // mission:aborted (both tasks killed), then task:removed for each, then mission:deleted.
    let log: Vec<Value> = events(&app, "mission:aborted,task:removed,mission:deleted")
        .await
        .into_iter()
        .map(|e| json!([e["event"], e["data"]]))
        .collect();
    let names: Vec<&str> = log.iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["mission:aborted", "task:removed", "task:removed", "mission:deleted"]
    );
    let mut killed: Vec<&str> = log[0][1]["killedTasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    killed.sort_unstable();
    let mut both = [write_id.as_str(), edit_id.as_str()];
    both.sort_unstable();
    assert_eq!(killed, both);
    assert_eq!(log[0][1]["runId"], run_id);
    let mut removed: Vec<&str> = log[1..3].iter().map(|e| e[1]["taskId"].as_str().unwrap()).collect();
    removed.sort_unstable();
    assert_eq!(removed, both);
    let mut listed: Vec<&str> = log[3][1]["deletedTasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, both);
    // Its name and groups are free again.
    let reused = app
        .post(
            "/v1/tasks",
            &app.test_key,
            json!({"title": "Side job", "assignTo": "slow", "group": "doomed", "draft": true}),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CREATED, "{}", reused.text);
}

#[tokio::test]
async fn deleting_a_mission_fails_the_open_tasks_that_wait_on_its_tasks() {
    let app = TestApp::spawn().await;
    agent(&app, "slow", "mock/slow-echo").await;
    agent(&app, "writer", "mock/echo").await;
    let created = mission(
        &app,
        json!({"name": "source", "tasks": [{"title": "Write", "description": long_description(), "assignTo": "slow"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let run = execute(&app, id).await;
    let write_id = task_of(&run, "Write")["id"].as_str().unwrap();
    // A standalone task may wait on a run's task by id.
    let follower = app
        .post(
            "/v1/tasks",
            &app.test_key,
            json!({"title": "Publish", "assignTo": "writer", "dependsOn": [write_id]}),
        )
        .await;
    assert_eq!(follower.status, StatusCode::CREATED, "{}", follower.text);
    let follower_id = follower.json()["id"].as_str().unwrap().to_string();

    let deleted = app.delete(&format!("/v1/missions/{id}"), &app.test_key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    // It fails at once, as a forced task DELETE fails dependents, instead of running without
    // its input.
    let follower = app.get(&format!("/v1/tasks/{follower_id}"), &app.test_key).await.json();
    assert_eq!(follower["status"], "failed", "{follower:#}");
    assert_eq!(follower["result"]["error"]["code"], "dependency_removed");
    assert_eq!(follower["result"]["attempts"], json!([]));
    let transitions: Vec<Value> = events(&app, "task:transition")
        .await
        .into_iter()
        .filter(|e| e["data"]["taskId"] == follower_id.as_str())
        .map(|e| e["data"]["to"].clone())
        .collect();
    assert_eq!(transitions, [json!("failed")]);
}

#[tokio::test]
async fn an_end_date_before_the_schedules_first_tick_is_refused() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    // Daily at the minute an hour from now: the first tick falls after an end date half an hour
    // ahead.
    let tick = now_ms() + 3_600_000;
    let schedule = format!("{} {} * * *", (tick / 60_000) % 60, (tick / 3_600_000) % 24);
    let body = json!({"name": "never", "schedule": schedule,
        "endDate": format_ms(now_ms() + 1_800_000),
        "tasks": [{"title": "Once", "assignTo": "writer"}]});
    let response = app.post("/v1/missions", &app.test_key, body).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST, "{}", response.text);
    assert!(
        response.json()["details"]["fields"]["endDate"].is_string(),
        "{}",
        response.text
    );
    let listed = app.get("/v1/missions", &app.test_key).await.json();
    assert_eq!(listed, json!([]));
}
