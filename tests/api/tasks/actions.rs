//! Spec §5.5: pause, queue, kill, retry, run and reassess — what each does to a running task and
//! its provider request, and the `409` every refused action answers.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use polpo_api::config::{Config, ProviderConfig};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{act, agent, events_of, get, task, until_status};
use crate::fakes::FakeProvider;
use crate::helpers::{TestApp, eventually};

async fn fakes() -> (FakeProvider, FakeProvider) {
    (FakeProvider::openai().await, FakeProvider::anthropic().await)
}

/// Waits until the task is `in_progress` and the fake has received `requests` requests.
async fn until_running(app: &TestApp, openai: &FakeProvider, id: &str, requests: usize) -> Value {
    let running = eventually(Duration::from_secs(15), || async {
        get(app, id).await["status"] == "in_progress" && openai.requests().len() >= requests
    })
    .await;
    let task = get(app, id).await;
    assert!(running, "not running with {requests} request(s): {task:#}");
    assert_eq!(openai.requests().len(), requests);
    task
}

/// Waits at most a second for the fake to see more than `before` streams abandoned; returns
/// how long that took.
async fn abandoned_within_a_second(openai: &FakeProvider, before: usize, since: Instant) -> Duration {
    let seen = eventually(Duration::from_secs(1), || async { openai.abandoned_streams() > before }).await;
    let took = since.elapsed();
    assert!(seen, "the provider request was not cancelled");
    assert!(took <= Duration::from_secs(1), "cancelled after {took:?}");
    took
}

#[tokio::test]
async fn pause_cancels_the_running_attempt_at_once_and_consumes_no_retry() {
    let (openai, anthropic) = fakes().await;
    let app = TestApp::with_fakes(&openai, &anthropic, Config::default()).await;
    // `openai:slow` streams a word every 100 ms for 20 s.
    agent(&app, "slow", "openai:slow").await;
    let created = task(
        &app,
        json!({"title": "Long essay", "assignTo": "slow", "maxRetries": 1}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    until_running(&app, &openai, id, 1).await;

    let before = openai.abandoned_streams();
    let paused_at = Instant::now();
    let paused = act(&app, id, "pause").await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    let paused = paused.json();
    assert_eq!(paused["status"], "draft");
    assert!(paused["phase"].is_null());
    abandoned_within_a_second(&openai, before, paused_at).await;

    let draft = get(&app, id).await;
    assert_eq!(draft["status"], "draft");
    assert_eq!(draft["retries"], 0, "a pause consumes no retry");
    let attempts = draft["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["error"]["code"], "interrupted");
    assert!(attempts[0]["finishedAt"].is_string());
    assert!(draft["result"]["error"].is_null());
    let moves: Vec<(Value, Value)> = events_of(&app, id, "task:transition")
        .await
        .iter()
        .map(|e| (e["data"]["from"].clone(), e["data"]["to"].clone()))
        .collect();
    assert_eq!(moves.last().unwrap(), &(json!("in_progress"), json!("draft")));
    assert!(events_of(&app, id, "task:retry").await.is_empty(), "no automatic retry");
    let finished = events_of(&app, id, "agent:finished").await;
    assert_eq!(finished.len(), 1, "the attempt ended: {finished:#?}");
    assert_eq!(finished[0]["data"]["error"]["code"], "interrupted");

    // Pausing a draft changes nothing.
    let again = act(&app, id, "pause").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["status"], "draft");

    // Queued, it runs again: a new attempt, from the start.
    let queued = act(&app, id, "queue").await;
    assert_eq!(queued.status, StatusCode::OK, "{}", queued.text);
    assert_eq!(queued.json()["status"], "pending");
    let running = until_running(&app, &openai, id, 2).await;
    let attempts = running["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1]["phase"], "execution");
    assert_eq!(running["retries"], 0);
    assert_eq!(running["phase"], "execution");
}

#[tokio::test]
async fn kill_fails_a_running_task_and_cancels_its_provider_request() {
    let (openai, anthropic) = fakes().await;
    let app = TestApp::with_fakes(&openai, &anthropic, Config::default()).await;
    agent(&app, "slow", "openai:slow").await;
    let created = task(&app, json!({"title": "Long essay", "assignTo": "slow"})).await;
    let id = created["id"].as_str().unwrap();
    until_running(&app, &openai, id, 1).await;

    let before = openai.abandoned_streams();
    let killed_at = Instant::now();
    let killed = act(&app, id, "kill").await;
    assert_eq!(killed.status, StatusCode::OK, "{}", killed.text);
    let killed = killed.json();
    assert_eq!(killed["status"], "failed");
    assert_eq!(killed["result"]["error"]["code"], "killed");
    assert!(killed["finishedAt"].is_string());
    abandoned_within_a_second(&openai, before, killed_at).await;
    let failed = get(&app, id).await;
    assert_eq!(failed["status"], "failed");
    let attempts = failed["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["error"]["code"], "killed");
    assert_eq!(openai.requests().len(), 1, "nothing runs after a kill");
    let finished = events_of(&app, id, "agent:finished").await;
    assert_eq!(finished.len(), 1, "the attempt ended: {finished:#?}");
    assert_eq!(finished[0]["data"]["error"]["code"], "killed");

    // A killed task can be retried.
    let retried = act(&app, id, "retry").await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    let retried = retried.json();
    assert_eq!(retried["status"], "pending");
    assert!(retried["result"]["error"].is_null());
    assert!(retried["finishedAt"].is_null());
    let retry = events_of(&app, id, "task:retry").await;
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0]["data"]["reason"], "manual");
    until_running(&app, &openai, id, 2).await;
}

/// The statuses each action accepts (changing the task or not), as §5.5 lists them.
fn accepted(action: &str) -> &'static [&'static str] {
    match action {
        "run" => &[
            "draft",
            "pending",
            "awaiting_approval",
            "assigned",
            "in_progress",
            "review",
            "failed",
        ],
        "pause" => &["draft", "pending", "assigned", "in_progress", "review"],
        "retry" => &["failed"],
        "kill" => &[
            "draft",
            "pending",
            "awaiting_approval",
            "assigned",
            "in_progress",
            "review",
        ],
        "reassess" => &["done", "failed"],
        "queue" => &["draft"],
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn every_refused_action_answers_409_with_the_allowed_statuses() {
    let (openai, anthropic) = fakes().await;
    let mut config = Config::default();
    // A reviewer that takes 20 s: a reviewed task stays in `review`.
    config.assessment.model = Some("openai:slow".into());
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    agent(&app, "echo", "mock/echo").await;
    agent(&app, "slow", "openai:slow").await;
    // Every task has an expectation, so that reassess answers 409 rather than 400. mock/echo
    // answers the brief, which starts with "# ".
    let check = json!([{"type": "contains", "text": "# "}]);
    let make = |title: &str, extra: Value| {
        let mut body = json!({"title": title, "assignTo": "echo", "expectations": check});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let draft = task(&app, make("Draft", json!({"draft": true}))).await;
    let draft_id = draft["id"].as_str().unwrap().to_string();
    let mut ids = vec![("draft", draft_id.clone())];
    let pending = task(&app, make("Pending", json!({"dependsOn": [draft_id]}))).await;
    ids.push(("pending", pending["id"].as_str().unwrap().to_string()));
    let running = task(
        &app,
        make(
            "Running",
            json!({"assignTo": "slow", "expectations": [{"type": "contains", "text": "tick"}]}),
        ),
    )
    .await;
    ids.push(("in_progress", running["id"].as_str().unwrap().to_string()));
    let reviewed = task(
        &app,
        make(
            "Reviewed",
            json!({"expectations": [{"type": "llm_review", "criteria": "Fine"}]}),
        ),
    )
    .await;
    ids.push(("review", reviewed["id"].as_str().unwrap().to_string()));
    let approval = task(&app, make("Approval", json!({"sideEffects": true}))).await;
    ids.push(("awaiting_approval", approval["id"].as_str().unwrap().to_string()));
    let done = task(&app, make("Done", json!({}))).await;
    ids.push(("done", done["id"].as_str().unwrap().to_string()));
    let failed = task(&app, make("Failed", json!({"draft": true}))).await;
    let failed_id = failed["id"].as_str().unwrap().to_string();
    assert_eq!(act(&app, &failed_id, "kill").await.status, StatusCode::OK);
    ids.push(("failed", failed_id));
    for (status, id) in &ids {
        until_status(&app, id, status, Duration::from_secs(15)).await;
    }
    assert_eq!(
        get(&app, &ids[1].1).await["status"],
        "pending",
        "waits for its draft dependency"
    );

    for (status, id) in &ids {
        for action in ["run", "pause", "retry", "kill", "reassess", "queue"] {
            let allowed = accepted(action);
            if allowed.contains(status) {
                continue;
            }
            let response = act(&app, id, action).await;
            assert_eq!(
                response.status,
                StatusCode::CONFLICT,
                "{action} from {status}: {}",
                response.text
            );
            let body = response.json();
            assert_eq!(body["code"], "conflict", "{}", response.text);
            let got: BTreeSet<&str> = body["details"]["allowed"]
                .as_array()
                .unwrap_or_else(|| panic!("{action} from {status}: no details.allowed: {body}"))
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            let want: BTreeSet<&str> = allowed.iter().copied().collect();
            assert_eq!(got, want, "{action} from {status}");
            assert_eq!(body["details"]["status"], *status);
        }
        assert_eq!(
            get(&app, id).await["status"],
            *status,
            "refused actions leave {status} as it was"
        );
    }
    // `run` on a task already under way, and `pause` on a draft, answer 200 and change nothing.
    for (status, id) in &ids {
        let action = match *status {
            "pending" | "in_progress" | "review" | "awaiting_approval" => "run",
            "draft" => "pause",
            _ => continue,
        };
        let response = act(&app, id, action).await;
        assert_eq!(response.status, StatusCode::OK, "{action} from {status}");
        assert_eq!(response.json()["status"], *status, "{action} from {status}");
    }

    // Pausing a task under review cancels the reviewer's request.
    let review_id = &ids[3].1;
    let before = openai.abandoned_streams();
    let paused_at = Instant::now();
    let paused = act(&app, review_id, "pause").await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.json()["status"], "draft");
    abandoned_within_a_second(&openai, before, paused_at).await;
    assert_eq!(get(&app, review_id).await["retries"], 0);
}

#[tokio::test]
async fn reassess_moves_a_failed_task_to_done_once_its_expectations_pass() {
    let (openai, anthropic) = fakes().await;
    let app = TestApp::with_fakes(&openai, &anthropic, Config::default()).await;
    // `openai:ok` always answers "Hello from the fake provider."
    agent(&app, "ok", "openai:ok").await;
    let created = task(
        &app,
        json!({"title": "Greeting", "assignTo": "ok", "maxRetries": 0,
               "expectations": [{"type": "contains", "text": "Goodbye"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(15)).await;
    assert_eq!(failed["result"]["error"]["code"], "review_failed");

    // Reassessed as it is, it still fails.
    let same = act(&app, id, "reassess").await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    let same = same.json();
    assert_eq!(same["status"], "failed");
    assert_eq!(same["result"]["assessment"]["trigger"], "reassess");
    assert_eq!(same["result"]["assessment"]["passed"], false);

    let patched = app
        .patch(
            &format!("/v1/tasks/{id}"),
            &app.test_key,
            json!({"expectations": [{"type": "contains", "text": "Hello"}]}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let reassessed = act(&app, id, "reassess").await;
    assert_eq!(reassessed.status, StatusCode::OK, "{}", reassessed.text);
    let done = reassessed.json();
    assert_eq!(done["status"], "done");
    assert!(done["result"]["error"].is_null());
    assert!(done["finishedAt"].is_string());
    let assessment = &done["result"]["assessment"];
    assert_eq!(assessment["passed"], true);
    assert_eq!(assessment["trigger"], "reassess");
    assert_eq!(assessment["checks"][0]["message"], "the output contains \"Hello\"");
    assert_eq!(
        done["result"]["attempts"].as_array().unwrap().len(),
        1,
        "no new attempt"
    );
    assert_eq!(get(&app, id).await, done, "what the response says is stored");
    assert_eq!(openai.requests().len(), 1, "nothing ran again");
    let moves: Vec<(Value, Value)> = events_of(&app, id, "task:transition")
        .await
        .iter()
        .map(|e| (e["data"]["from"].clone(), e["data"]["to"].clone()))
        .collect();
    assert_eq!(moves.last().unwrap(), &(json!("failed"), json!("done")));
    assert_eq!(events_of(&app, id, "task:completed").await.len(), 1);
    assert_eq!(
        events_of(&app, id, "assessment:complete").await.len(),
        3,
        "the attempt's and two reassessments"
    );

    // A done task whose check still passes stays done.
    let again = act(&app, id, "reassess").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json()["status"], "done");
    assert_eq!(
        events_of(&app, id, "task:transition").await.len(),
        moves.len(),
        "no move"
    );
}

/// A POST with `{}` through another instance's router.
async fn post_via(router: &Router, path: &str, key: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn reassess_moves_a_done_task_to_failed_when_the_new_review_fails() {
    let (openai, anthropic) = fakes().await;
    let mut config = Config::default();
    // The first reviewer, `openai:echo`, repeats the output under review; the output is the
    // brief, whose first ```json block is a review scoring 5. The mock reviewer of the
    // instances below scores the same output 1, since it carries MOCK_FAIL.
    config.assessment.model = Some("openai:echo".into());
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    agent(&app, "writer", "mock/echo").await;
    let review = json!({"scores": [{"dimension": "overall", "score": 5, "reasoning": "MOCK_FAIL is fine"}],
                        "feedback": "Good."});
    let created = task(
        &app,
        json!({"title": "Verdict", "assignTo": "writer",
               "description": format!("```json\n{review}\n```"),
               "expectations": [{"type": "llm_review", "criteria": "Fair"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let done = until_status(&app, id, "done", Duration::from_secs(15)).await;
    assert_eq!(done["result"]["assessment"]["globalScore"], 5.0);
    let path = format!("/v1/tasks/{id}/reassess");

    // A reviewer that fails: 502, and the task is left as it was.
    let mut failing = Config::default();
    failing.assessment.model = Some("openai:fail-500".into());
    failing.providers.insert(
        "openai".into(),
        ProviderConfig {
            base_url: Some(openai.base_url.clone()),
            ..ProviderConfig::default()
        },
    );
    let broken = polpo_api::app::router(app.another_instance(failing).await);
    let (status, body) = post_via(&broken, &path, &app.test_key).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(get(&app, id).await, done, "unchanged");

    // The mock reviewer fails the output: done → failed.
    let mut strict = Config::default();
    strict.assessment.model = Some("mock/echo".into());
    let strict = polpo_api::app::router(app.another_instance(strict).await);
    let (status, body) = post_via(&strict, &path, &app.test_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["result"]["error"]["code"], "review_failed");
    let assessment = &body["result"]["assessment"];
    assert_eq!(
        (
            &assessment["passed"],
            &assessment["globalScore"],
            &assessment["trigger"]
        ),
        (&json!(false), &json!(1.0), &json!("reassess"))
    );
    assert_eq!(assessment["reviewerModel"], "mock/echo");
    assert!(body["outcomes"].is_array());
    let moves: Vec<(Value, Value)> = events_of(&app, id, "task:transition")
        .await
        .iter()
        .map(|e| (e["data"]["from"].clone(), e["data"]["to"].clone()))
        .collect();
    assert_eq!(moves.last().unwrap(), &(json!("done"), json!("failed")));
}
