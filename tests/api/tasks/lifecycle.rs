//! A task's course: claimed, attempted, done; dependencies in order; events in the log.

use std::time::Duration;

use serde_json::json;

use super::{agent, task, until_status};
use crate::fakes::FakeProvider;
use crate::helpers::TestApp;

#[tokio::test]
async fn a_task_runs_in_the_background_and_records_its_attempt() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    let created = task(
        &app,
        json!({"title": "Say hello", "description": "Answer with a greeting.", "assignTo": "writer"}),
    )
    .await;
    assert_eq!(created["status"], "pending");
    assert!(created["id"].as_str().unwrap().starts_with("task_"));
    let id = created["id"].as_str().unwrap();
    let done = until_status(&app, id, "done", Duration::from_secs(10)).await;
    let result = &done["result"];
    let output = result["output"].as_str().unwrap();
    // mock/echo answers the brief: the title and description are in it.
    assert!(
        output.contains("# Say hello") && output.contains("Answer with a greeting."),
        "{output}"
    );
    let attempts = result["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["phase"], "execution");
    assert_eq!(attempts[0]["model"], "mock/echo");
    assert_eq!(attempts[0]["finishReason"], "stop");
    assert!(result["usage"]["totalTokens"].as_i64().unwrap() > 0);
    assert!(done["startedAt"].is_string() && done["finishedAt"].is_string());

    // Operators see it in the metrics (spec §9).
    let metrics = app.call("GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("polpo_tasks{status=\"done\"} 1"), "{metrics}");
    assert!(metrics.contains("polpo_tasks{status=\"pending\"} 0"), "{metrics}");
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            app.call("GET", "/metrics", None, None)
                .await
                .text
                .contains("polpo_task_attempts_total{outcome=\"passed\"} 1")
        })
        .await
    );

    let history = app
        .get("/v1/events/history?filter=task:*,agent:*&limit=100", &app.test_key)
        .await
        .json();
    let names: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let to = e["data"]["to"].as_str().map(|t| format!(" {t}")).unwrap_or_default();
            format!("{}{to}", e["event"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        names,
        [
            "task:created",
            "task:transition assigned",
            "agent:spawned",
            "task:transition in_progress",
            "agent:finished",
            "agent:completed",
            "task:transition review",
            "task:transition done",
            "task:completed done",
        ]
    );
}

#[tokio::test]
async fn a_chain_of_three_finishes_in_order_with_the_outputs_passed_on() {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let app = TestApp::with_fakes(&openai, &anthropic, polpo_api::config::Config::default()).await;
    agent(&app, "echo", "openai:echo").await;
    let a = task(
        &app,
        json!({"title": "Alpha", "description": "alpha-output", "assignTo": "echo", "group": "g"}),
    )
    .await;
    let a_id = a["id"].as_str().unwrap();
    let b = task(
        &app,
        json!({"title": "Beta", "description": "beta-output", "assignTo": "echo", "group": "g",
                              "dependsOn": [a_id]}),
    )
    .await;
    let b_id = b["id"].as_str().unwrap();
    // C names B by title within the group.
    let c = task(
        &app,
        json!({"title": "Gamma", "assignTo": "echo", "group": "g", "dependsOn": ["Beta"]}),
    )
    .await;
    assert_eq!(c["dependsOn"], json!([b_id]));
    let c_id = c["id"].as_str().unwrap();
    let c_done = until_status(&app, c_id, "done", Duration::from_secs(15)).await;
    let a_done = super::get(&app, a_id).await;
    let b_done = super::get(&app, b_id).await;
    let finished = |t: &serde_json::Value| t["finishedAt"].as_str().unwrap().to_string();
    let started = |t: &serde_json::Value| t["startedAt"].as_str().unwrap().to_string();
    assert!(finished(&a_done) <= started(&b_done), "B started before A finished");
    assert!(finished(&b_done) <= started(&c_done), "C started before B finished");
    // C's prompt at the provider carries A's and B's outputs.
    let request = openai
        .requests()
        .into_iter()
        .find(|r| r.body["messages"].to_string().contains("# Gamma"))
        .expect("C reached the provider");
    let sent = request.body["messages"].to_string();
    assert!(sent.contains("alpha-output") && sent.contains("beta-output"), "{sent}");
}

#[tokio::test]
async fn an_attempt_error_is_retried_after_its_backoff_then_the_task_fails() {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let app = TestApp::with_fakes(&openai, &anthropic, polpo_api::config::Config::default()).await;
    agent(&app, "flaky", "openai:fail-500").await;
    let created = task(
        &app,
        json!({"title": "Try twice", "assignTo": "flaky", "maxRetries": 1}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(20)).await;
    let attempts = failed["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{failed:#}");
    assert_eq!(failed["retries"], 1);
    assert_eq!(failed["result"]["error"]["code"], "upstream_error");
    assert!(attempts.iter().all(|a| a["error"]["code"] == "upstream_error"));
    // The second attempt waited out the first backoff: 5 s × 2^0 (spec §5.7 step 6).
    let ended = |t: &serde_json::Value| chrono_ms(t["finishedAt"].as_str().unwrap());
    let began = |t: &serde_json::Value| chrono_ms(t["startedAt"].as_str().unwrap());
    let waited = began(&attempts[1]) - ended(&attempts[0]);
    assert!(waited >= 5000, "the retry came after {waited} ms");
    let history = app
        .get("/v1/events/history?filter=task:retry&limit=10", &app.test_key)
        .await
        .json();
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["data"]["reason"], "error");
    assert_eq!(openai.requests().len(), 2);
}

fn chrono_ms(text: &str) -> i64 {
    polpo_api::clock::parse_rfc3339(text).unwrap()
}
