//! Spec §5.9: side-effect tasks wait for a human; approve finishes them, reject re-runs them
//! with the feedback or fails them, kill cancels the decision; every step is an event on
//! `/v1/events` and at a webhook. The feedback survives an interrupted fix.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::{Value, json};

use super::{act, agent, events_of, get, label, task, until_status};
use crate::events::SseReader;
use crate::fakes::FakeProvider;
use crate::helpers::{TestApp, eventually};
use crate::webhooks::{Receiver, loopback_config};

const FILTER: &str = "task:transition,approval:*";

/// The task's one pending approval, once there is one.
async fn pending_approval(app: &TestApp, task_id: &str) -> Value {
    let list = app
        .get(&format!("/v1/approvals?status=pending&taskId={task_id}"), &app.test_key)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    list[0].clone()
}

async fn decide(app: &TestApp, approval_id: &str, decision: &str, body: Value) -> crate::helpers::TestResponse {
    app.post(&format!("/v1/approvals/{approval_id}/{decision}"), &app.test_key, body)
        .await
}

/// A webhook for the task and approval events; returns the receiver.
async fn webhook(app: &TestApp) -> Receiver {
    let receiver = Receiver::start(Vec::new()).await;
    let created = app
        .post(
            "/v1/webhooks",
            &app.test_key,
            json!({"url": receiver.url, "events": ["task:transition", "approval:*"]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    receiver
}

/// (`evt_<seq>`, event name) of the stored events about the task, in order.
async fn stored(app: &TestApp, task_id: &str) -> Vec<(String, String)> {
    events_of(app, task_id, FILTER)
        .await
        .iter()
        .map(|e| (format!("evt_{}", e["id"]), e["event"].as_str().unwrap().to_string()))
        .collect()
}

/// Waits until the receiver got every stored event about the task (duplicates dropped by id,
/// as receivers do), and checks they came in the stored order.
async fn assert_delivered_in_order(app: &TestApp, receiver: &Receiver, task_id: &str) {
    let expected = stored(app, task_id).await;
    let delivered = || {
        let mut seen: Vec<(String, String)> = Vec::new();
        for (_, body, status) in receiver.requests() {
            let body: Value = serde_json::from_str(&body).unwrap();
            let item = (
                body["id"].as_str().unwrap().to_string(),
                body["event"].as_str().unwrap().to_string(),
            );
            if status == 200 && body["data"]["taskId"] == task_id && !seen.contains(&item) {
                seen.push(item);
            }
        }
        seen
    };
    let arrived = eventually(Duration::from_secs(15), || async {
        delivered().len() >= expected.len()
    })
    .await;
    assert!(arrived, "webhook got {:?}, stored {expected:?}", delivered());
    assert_eq!(delivered(), expected);
}

#[tokio::test]
async fn a_side_effect_task_waits_for_approval_and_approve_finishes_it() {
    let app = TestApp::spawn_with(loopback_config()).await;
    let receiver = webhook(&app).await;
    agent(&app, "publisher", "mock/echo").await;
    let description = format!("Post the 2.0 notes. {}", "Lorem ipsum. ".repeat(60));
    let created = task(
        &app,
        json!({"title": "Publish notes", "description": description, "assignTo": "publisher",
               "sideEffects": true}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let waiting = until_status(&app, id, "awaiting_approval", Duration::from_secs(15)).await;
    assert!(waiting["phase"].is_null());
    let output = waiting["result"]["output"].as_str().unwrap();

    let approval = pending_approval(&app, id).await;
    let approval_id = approval["id"].as_str().unwrap();
    assert!(approval_id.starts_with("apr_"), "{approval_id}");
    assert_eq!(approval["taskId"], id);
    assert_eq!(approval["reason"], "side_effects");
    assert_eq!(approval["summary"], "Publish notes");
    assert!(output.chars().count() > 500);
    assert_eq!(
        approval["outputPreview"].as_str().unwrap(),
        output.chars().take(500).collect::<String>()
    );
    for field in ["missionId", "runId", "note", "feedback", "resolvedAt"] {
        assert!(approval[field].is_null(), "{field}: {approval:#}");
    }
    assert_eq!(approval["final"], false);
    assert!(approval["createdAt"].is_string());
    let read = app.get(&format!("/v1/approvals/{approval_id}"), &app.test_key).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), approval);
    // Filters.
    for (query, count) in [
        ("", 1),
        ("?status=pending", 1),
        ("?status=approved", 0),
        (&format!("?taskId={id}") as &str, 1),
        ("?taskId=task_01jz0000000000000000000000", 0),
    ] {
        let list = app.get(&format!("/v1/approvals{query}"), &app.test_key).await;
        assert_eq!(list.status, StatusCode::OK, "{query}: {}", list.text);
        assert_eq!(list.json().as_array().unwrap().len(), count, "{query}");
    }
    assert_eq!(
        app.get("/v1/approvals?status=maybe", &app.test_key).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/v1/approvals/apr_nothing", &app.test_key).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/v1/approvals/{approval_id}"), &app.live_key)
            .await
            .status,
        StatusCode::NOT_FOUND,
        "another environment does not see it"
    );

    let approved = decide(&app, approval_id, "approve", json!({"note": "Ship it"})).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    let approved = approved.json();
    assert_eq!(approved["status"], "approved");
    assert_eq!(approved["note"], "Ship it");
    assert!(approved["resolvedAt"].is_string());
    // The decision and the task's move are one write: the task is done at once.
    let done = get(&app, id).await;
    assert_eq!(done["status"], "done");
    assert!(done["finishedAt"].is_string());
    assert_eq!(done["result"]["attempts"].as_array().unwrap().len(), 1);

    // Deciding twice.
    for (decision, body) in [("approve", json!({})), ("reject", json!({"feedback": "Too late"}))] {
        let again = decide(&app, approval_id, decision, body).await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{decision}: {}", again.text);
    }
    assert_eq!(
        app.get(&format!("/v1/approvals/{approval_id}"), &app.test_key)
            .await
            .json(),
        approved
    );

    let course: Vec<String> = events_of(&app, id, FILTER).await.iter().map(label).collect();
    assert_eq!(
        course,
        [
            "task:transition assigned",
            "task:transition in_progress/execution",
            "task:transition review/review",
            "approval:requested",
            "task:transition awaiting_approval",
            "task:transition done",
            "approval:resolved approved",
        ]
    );
    let requested = &events_of(&app, id, "approval:requested").await[0]["data"];
    assert_eq!(requested["approvalId"], approval_id);
    let resolved = &events_of(&app, id, "approval:resolved").await[0]["data"];
    assert_eq!(
        (&resolved["approvalId"], &resolved["note"]),
        (&json!(approval_id), &json!("Ship it"))
    );
    assert_delivered_in_order(&app, &receiver, id).await;
}

#[tokio::test]
async fn a_rejected_task_runs_again_with_the_feedback_and_a_final_reject_fails_it() {
    let app = TestApp::spawn_with(loopback_config()).await;
    let base = app.serve().await;
    let receiver = webhook(&app).await;
    let mut stream = SseReader::open(&base, &app.test_key, &format!("/v1/events?filter={FILTER}"), None).await;
    agent(&app, "publisher", "mock/echo").await;
    // No automatic retries: a rejection still re-runs the task, consuming none.
    let created = task(
        &app,
        json!({"title": "Announce", "description": "Write the announcement.", "assignTo": "publisher",
               "sideEffects": true, "maxRetries": 0}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    until_status(&app, id, "awaiting_approval", Duration::from_secs(15)).await;
    let first = pending_approval(&app, id).await;
    let first_id = first["id"].as_str().unwrap();

    for body in [
        json!({}),
        json!({"feedback": ""}),
        json!({"final": true}),
        json!({"feedback": "x".repeat(8001)}),
    ] {
        let refused = decide(&app, first_id, "reject", body.clone()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}: {}", refused.text);
        assert!(
            refused.json()["details"]["fields"]["feedback"].is_string(),
            "{}",
            refused.text
        );
    }
    assert_eq!(get(&app, id).await["status"], "awaiting_approval");

    let feedback = "Mention the release date, 1 March.";
    let rejected = decide(&app, first_id, "reject", json!({"feedback": feedback})).await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    let rejected = rejected.json();
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["feedback"], feedback);
    assert_eq!(rejected["final"], false);

    // It runs again as a fix, and waits for a new decision.
    let again = eventually(Duration::from_secs(15), || async {
        let task = get(&app, id).await;
        task["status"] == "awaiting_approval" && task["result"]["attempts"].as_array().unwrap().len() == 2
    })
    .await;
    let rerun = get(&app, id).await;
    assert!(again, "{rerun:#}");
    assert_eq!(rerun["retries"], 0, "a rejection consumes no retry");
    let attempts = rerun["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts[1]["phase"], "fix");
    // mock/echo answers the last user message: the fix message carrying the feedback.
    let fixed = attempts[1]["output"].as_str().unwrap();
    assert!(fixed.contains(feedback), "{fixed}");
    let second = pending_approval(&app, id).await;
    let second_id = second["id"].as_str().unwrap();
    assert_ne!(second_id, first_id);
    assert_eq!(
        second["outputPreview"].as_str().unwrap(),
        fixed.chars().take(500).collect::<String>()
    );
    let all = app
        .get(&format!("/v1/approvals?taskId={id}"), &app.test_key)
        .await
        .json();
    let mut statuses: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_str().unwrap())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["pending", "rejected"]);

    let last_word = "We will not announce this.";
    let final_reject = decide(&app, second_id, "reject", json!({"feedback": last_word, "final": true})).await;
    assert_eq!(final_reject.status, StatusCode::OK, "{}", final_reject.text);
    assert_eq!(final_reject.json()["final"], true);
    let failed = get(&app, id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["result"]["error"],
        json!({"code": "rejected", "message": last_word})
    );
    assert_eq!(
        decide(&app, second_id, "approve", json!({})).await.status,
        StatusCode::CONFLICT
    );

    let events = events_of(&app, id, FILTER).await;
    let course: Vec<String> = events.iter().map(label).collect();
    assert_eq!(
        course,
        [
            "task:transition assigned",
            "task:transition in_progress/execution",
            "task:transition review/review",
            "approval:requested",
            "task:transition awaiting_approval",
            "task:transition pending",
            "approval:resolved rejected",
            "task:transition assigned",
            "task:transition in_progress/fix",
            "task:transition review/review",
            "approval:requested",
            "task:transition awaiting_approval",
            "task:transition failed",
            "approval:resolved rejected",
        ]
    );
    let resolved: Vec<Value> = events
        .iter()
        .filter(|e| e["event"] == "approval:resolved")
        .map(|e| {
            let d = &e["data"];
            json!([d["approvalId"], d["final"], d["feedback"]])
        })
        .collect();
    assert_eq!(
        resolved,
        [json!([first_id, false, feedback]), json!([second_id, true, last_word])]
    );

    // The live stream carried the same events in the same order.
    let frames = stream.take(events.len()).await;
    let live: Vec<(Option<i64>, Option<String>)> = frames.iter().map(|f| (f.id, f.event.clone())).collect();
    let stored: Vec<(Option<i64>, Option<String>)> = events
        .iter()
        .map(|e| (e["id"].as_i64(), e["event"].as_str().map(str::to_string)))
        .collect();
    assert_eq!(live, stored);
    assert_delivered_in_order(&app, &receiver, id).await;
}

#[tokio::test]
async fn kill_cancels_a_pending_approval() {
    let app = TestApp::spawn().await;
    agent(&app, "publisher", "mock/echo").await;
    let created = task(
        &app,
        json!({"title": "Tweet", "assignTo": "publisher", "sideEffects": true}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    until_status(&app, id, "awaiting_approval", Duration::from_secs(15)).await;
    let approval = pending_approval(&app, id).await;
    let approval_id = approval["id"].as_str().unwrap();
    let killed = act(&app, id, "kill").await;
    assert_eq!(killed.status, StatusCode::OK, "{}", killed.text);
    assert_eq!(killed.json()["status"], "failed");
    assert_eq!(killed.json()["result"]["error"]["code"], "killed");
    let cancelled = app
        .get(&format!("/v1/approvals/{approval_id}"), &app.test_key)
        .await
        .json();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["resolvedAt"].is_string());
    assert_eq!(
        decide(&app, approval_id, "approve", json!({})).await.status,
        StatusCode::CONFLICT
    );
    let resolved = events_of(&app, id, "approval:resolved").await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["data"]["status"], "cancelled");
    assert_eq!(resolved[0]["data"]["approvalId"], approval_id);
}

#[tokio::test]
async fn a_side_effect_task_is_never_fixed_or_retried_automatically() {
    let app = TestApp::spawn().await;
    agent(&app, "publisher", "mock/echo").await;
    let created = task(
        &app,
        json!({"title": "Post", "description": "MOCK_FAIL", "assignTo": "publisher", "sideEffects": true,
               "expectations": [{"type": "llm_review", "criteria": "Polite"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(15)).await;
    assert_eq!(failed["result"]["error"]["code"], "review_failed");
    assert_eq!(failed["result"]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(failed["retries"], 0);
    let list = app
        .get(&format!("/v1/approvals?taskId={id}"), &app.test_key)
        .await
        .json();
    assert_eq!(list, json!([]), "no approval for a failed review");
}

#[tokio::test]
async fn a_fix_interrupted_by_a_shutdown_runs_again_with_the_feedback() {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let app = TestApp::with_fakes(&openai, &anthropic, Config::default()).await;
    agent(&app, "publisher", "mock/echo").await;
    let created = task(
        &app,
        json!({"title": "Press release", "assignTo": "publisher", "sideEffects": true}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    until_status(&app, id, "awaiting_approval", Duration::from_secs(15)).await;
    // The fix runs on `openai:slow`, which takes 20 s: long enough to be interrupted.
    let patched = app
        .patch("/v1/agents/publisher", &app.test_key, json!({"model": "openai:slow"}))
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let approval = pending_approval(&app, id).await;
    let feedback = "Quote the CEO.";
    let rejected = decide(
        &app,
        approval["id"].as_str().unwrap(),
        "reject",
        json!({"feedback": feedback}),
    )
    .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    let running = eventually(Duration::from_secs(15), || async {
        get(&app, id).await["status"] == "in_progress" && openai.requests().len() == 1
    })
    .await;
    assert!(running, "{:#}", get(&app, id).await);

    // This instance shuts down; another one takes the task over.
    let mut config = Config::default();
    config.providers = app.state.runtime.config.providers.clone();
    let _peer = app.another_instance(config).await;
    app.state.runtime.shutdown.cancel();
    let again = eventually(Duration::from_secs(15), || async { openai.requests().len() == 2 }).await;
    assert!(again, "{:#}", get(&app, id).await);

    let rerun = &openai.requests()[1].body;
    let roles: Vec<&str> = rerun["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "still a fix: {rerun:#}");
    assert!(rerun["messages"][3].to_string().contains(feedback), "{rerun:#}");
    let task = get(&app, id).await;
    let attempts = task["result"]["attempts"].as_array().unwrap();
    let phases: Vec<(&str, Value)> = attempts
        .iter()
        .map(|a| (a["phase"].as_str().unwrap(), a["error"]["code"].clone()))
        .collect();
    assert_eq!(
        phases,
        [
            ("execution", Value::Null),
            ("fix", json!("interrupted")),
            ("fix", Value::Null)
        ]
    );
    let finished: Vec<Value> = events_of(&app, id, "agent:finished")
        .await
        .iter()
        .map(|e| json!([e["data"]["attempt"], e["data"]["error"]["code"]]))
        .collect();
    assert_eq!(
        finished,
        [json!([1, null]), json!([2, "interrupted"])],
        "the interrupted attempt ended"
    );
    assert_eq!(act(&app, id, "kill").await.status, StatusCode::OK);
}
