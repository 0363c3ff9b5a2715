//! Spec §5.7 steps 3–5: the review after an attempt — deterministic checks, reviewer calls,
//! fixes with the reviewer's feedback, and the failures a review ends in.

use std::time::Duration;

use polpo_api::config::Config;
use serde_json::{Value, json};

use super::{agent, events_of, label, task, until_status};
use crate::fakes::FakeProvider;
use crate::helpers::TestApp;

/// The text of a message as the fake received it: string content, or its text parts joined.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn roles(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_string())
        .collect()
}

/// An app on the fake providers whose reviewer is `reviewer`.
async fn app_reviewed_by(reviewer: &str) -> (TestApp, FakeProvider, FakeProvider) {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let mut config = Config::default();
    config.assessment.model = Some(reviewer.to_string());
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    (app, openai, anthropic)
}

#[tokio::test]
async fn a_review_that_fails_once_is_fixed_with_the_feedback_and_then_passes() {
    let app = TestApp::spawn().await;
    agent(&app, "writer", "mock/echo").await;
    // mock/echo answers the brief, which holds the description: the first output carries the
    // marker the mock reviewer fails. The fix attempt answers the fix message, which does not.
    let created = task(
        &app,
        json!({"title": "Release notes", "description": "Summarise 2.0. MOCK_FAIL", "assignTo": "writer",
               "expectations": [{"type": "llm_review", "criteria": "Clear and accurate notes"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let done = until_status(&app, id, "done", Duration::from_secs(20)).await;
    assert_eq!(done["retries"], 1, "the fix used one retry");
    let result = &done["result"];
    assert!(result["error"].is_null(), "{result:#}");
    let attempts = result["attempts"].as_array().unwrap();
    let phases: Vec<&str> = attempts.iter().map(|a| a["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["execution", "fix"]);
    assert_eq!(
        (&attempts[0]["passed"], &attempts[0]["globalScore"]),
        (&json!(false), &json!(1.0))
    );
    assert_eq!(
        (&attempts[1]["passed"], &attempts[1]["globalScore"]),
        (&json!(true), &json!(5.0))
    );
    assert!(attempts[0]["output"].as_str().unwrap().contains("MOCK_FAIL"));
    let fixed = attempts[1]["output"].as_str().unwrap();
    assert_eq!(
        result["output"], attempts[1]["output"],
        "the output is the latest attempt's"
    );

    // The feedback of the failed review reached the fix attempt: mock/echo answers with the
    // last user message, so the fix output is the fix message itself.
    let fix = events_of(&app, id, "task:fix").await;
    assert_eq!(fix.len(), 1, "{fix:#?}");
    assert_eq!(fix[0]["data"]["attempt"], 1);
    assert_eq!(fix[0]["data"]["maxRetries"], 2);
    let feedback = fix[0]["data"]["feedback"].as_str().unwrap();
    assert!(!feedback.is_empty() && !feedback.contains("MOCK_FAIL"), "{feedback}");
    assert!(
        fixed.contains(feedback),
        "feedback {feedback:?} not in the fix attempt: {fixed}"
    );
    assert!(
        fixed.contains("llm_review: score 1.0 < 3.0"),
        "the failed check is named: {fixed}"
    );

    let assessment = &result["assessment"];
    assert_eq!(assessment["passed"], true);
    assert_eq!(assessment["globalScore"], 5.0);
    assert_eq!(assessment["trigger"], "fix");
    assert_eq!(assessment["reviewerModel"], "mock/echo", "the attempt's model reviews");
    let check = &assessment["checks"][0];
    assert_eq!(check["type"], "llm_review");
    assert_eq!(check["message"], "score 5.0 ≥ 3.0");
    assert_eq!(check["scores"][0]["dimension"], "overall");
    assert_eq!(check["scores"][0]["score"], 5);
    // Usage counts the reviewer calls as well as the attempts.
    let attempt_tokens: i64 = attempts
        .iter()
        .map(|a| a["usage"]["totalTokens"].as_i64().unwrap())
        .sum();
    assert!(result["usage"]["totalTokens"].as_i64().unwrap() > attempt_tokens);

    let course: Vec<String> = events_of(
        &app,
        id,
        "task:created,task:transition,task:fix,agent:spawned,agent:finished,assessment:started,assessment:complete",
    )
    .await
    .iter()
    .map(label)
    .collect();
    assert_eq!(
        course,
        [
            "task:created",
            "task:transition assigned",
            "agent:spawned execution",
            "task:transition in_progress/execution",
            "agent:finished",
            "task:transition review/review",
            "assessment:started initial",
            "assessment:complete passed=false",
            "task:fix",
            "task:transition pending",
            "task:transition assigned",
            "agent:spawned fix",
            "task:transition in_progress/fix",
            "agent:finished",
            "task:transition review/review",
            "assessment:started fix",
            "assessment:complete passed=true",
            "task:transition done",
        ]
    );
    let scores: Vec<Value> = events_of(&app, id, "assessment:complete")
        .await
        .iter()
        .map(|e| e["data"]["globalScore"].clone())
        .collect();
    assert_eq!(scores, [json!(1.0), json!(5.0)]);
}

#[tokio::test]
async fn the_fix_attempt_gets_the_brief_its_previous_output_and_the_feedback() {
    let (app, openai, _anthropic) = app_reviewed_by("mock/echo").await;
    agent(&app, "echo", "openai:echo").await;
    let created = task(
        &app,
        json!({"title": "Changelog", "description": "List the changes. MOCK_FAIL", "assignTo": "echo",
               "expectations": [{"type": "contains", "text": "answer"},
                                {"type": "llm_review", "criteria": "Complete"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let done = until_status(&app, id, "done", Duration::from_secs(20)).await;
    let attempts = done["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a["model"] == "openai:echo"));
    assert_eq!(
        done["result"]["assessment"]["reviewerModel"], "mock/echo",
        "assessment.model reviews"
    );
    // The configured reviewer is not the agent's provider: the fake saw the two attempts only.
    let requests = openai.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let (first, second) = (&requests[0].body, &requests[1].body);
    assert_eq!(roles(first), ["system", "user"]);
    assert_eq!(roles(second), ["system", "user", "assistant", "user"]);
    let brief = text_of(&first["messages"][1]);
    assert!(
        brief.starts_with("# Changelog\n") && brief.contains("MOCK_FAIL"),
        "{brief}"
    );
    assert_eq!(text_of(&second["messages"][1]), brief, "the brief again");
    assert_eq!(
        text_of(&second["messages"][2]),
        attempts[0]["output"].as_str().unwrap(),
        "the previous output, as the assistant's"
    );
    let fix_message = text_of(&second["messages"][3]);
    let feedback = events_of(&app, id, "task:fix").await[0]["data"]["feedback"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fix_message.contains(&feedback), "{fix_message}");
    assert!(fix_message.contains("llm_review: score 1.0 < 3.0"), "{fix_message}");
    assert!(
        !fix_message.contains("contains:"),
        "only the failed checks are listed: {fix_message}"
    );
}

#[tokio::test]
async fn a_review_that_never_passes_fails_after_max_retries() {
    let (app, openai, _anthropic) = app_reviewed_by("mock/echo").await;
    // `openai:marked` always answers with the marker the mock reviewer fails.
    agent(&app, "stubborn", "openai:marked").await;
    let created = task(
        &app,
        json!({"title": "Tagline", "assignTo": "stubborn", "maxRetries": 1,
               "expectations": [{"type": "llm_review", "threshold": 3,
                                 "dimensions": [{"name": "accuracy", "description": "Correct", "weight": 2},
                                                {"name": "tone", "description": "Friendly"}]}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(20)).await;
    let result = &failed["result"];
    assert_eq!(result["error"]["code"], "review_failed", "{result:#}");
    assert_eq!(failed["retries"], 1);
    let attempts = result["attempts"].as_array().unwrap();
    let phases: Vec<&str> = attempts.iter().map(|a| a["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["execution", "fix"]);
    assert!(attempts.iter().all(|a| a["passed"] == false && a["globalScore"] == 1.0));
    let check = &result["assessment"]["checks"][0];
    assert_eq!(check["message"], "score 1.0 < 3.0");
    let dimensions: Vec<(Value, Value)> = check["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["dimension"].clone(), s["weight"].clone()))
        .collect();
    assert_eq!(
        dimensions,
        [(json!("accuracy"), json!(2.0)), (json!("tone"), json!(1.0))]
    );
    assert_eq!(events_of(&app, id, "task:fix").await.len(), 1);
    assert_eq!(openai.requests().len(), 2, "no attempt after maxRetries fixes");
    assert!(failed["finishedAt"].is_string());
}

#[tokio::test]
async fn a_reviewer_reply_that_is_not_json_is_asked_again_then_fails_the_task() {
    // `openai:ok` answers plain text whatever it is asked.
    let (app, openai, _anthropic) = app_reviewed_by("openai:ok").await;
    agent(&app, "writer", "mock/echo").await;
    let created = task(
        &app,
        json!({"title": "Summary", "assignTo": "writer",
               "expectations": [{"type": "llm_review", "criteria": "Short"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(20)).await;
    let result = &failed["result"];
    assert_eq!(result["error"]["code"], "assessment_failed", "{result:#}");
    assert_eq!(result["attempts"].as_array().unwrap().len(), 1, "no automatic retry");
    assert_eq!(failed["retries"], 0);
    let output = result["output"].as_str().unwrap();

    let requests = openai.requests();
    assert_eq!(requests.len(), 2, "asked once more, then given up");
    for request in &requests {
        assert_eq!(
            request.body["response_format"]["json_schema"]["name"], "polpo_review",
            "{:#}",
            request.body
        );
    }
    let (first, second) = (&requests[0].body, &requests[1].body);
    assert_eq!(roles(first), ["system", "user"]);
    assert_eq!(text_of(&first["messages"][1]), output, "the output, verbatim");
    assert_eq!(roles(second), ["system", "user", "assistant", "user"]);
    assert_eq!(text_of(&second["messages"][2]), crate::fakes::OK_TEXT, "its own reply");
    assert!(
        text_of(&second["messages"][3]).contains("not JSON"),
        "{:#}",
        second["messages"][3]
    );
    let complete = events_of(&app, id, "assessment:complete").await;
    assert_eq!(complete.len(), 1);
    assert_eq!(complete[0]["data"]["passed"], false);
    assert!(events_of(&app, id, "task:fix,task:retry").await.is_empty());
}

#[tokio::test]
async fn a_reviewer_that_keeps_failing_is_tried_three_times() {
    let (app, openai, _anthropic) = app_reviewed_by("openai:fail-500").await;
    agent(&app, "writer", "mock/echo").await;
    let created = task(
        &app,
        json!({"title": "Summary", "assignTo": "writer",
               "expectations": [{"type": "llm_review", "criteria": "Short"}]}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(20)).await;
    assert_eq!(failed["result"]["error"]["code"], "assessment_failed");
    assert_eq!(failed["result"]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(openai.requests().len(), 3);
}

#[tokio::test]
async fn deterministic_checks_pass_and_fail_as_written() {
    let (app, openai, _anthropic) = app_reviewed_by("mock/echo").await;
    // `openai:ok` always answers "Hello from the fake provider."
    agent(&app, "ok", "openai:ok").await;
    agent(&app, "echo", "mock/echo").await;

    let passing = task(
        &app,
        json!({"title": "Greeting", "assignTo": "ok",
               "expectations": [{"type": "contains", "text": "fake provider"},
                                {"type": "contains", "text": "HELLO FROM", "caseSensitive": false},
                                {"type": "regex", "pattern": "^Hello .*provider\\.$"}]}),
    )
    .await;
    let id = passing["id"].as_str().unwrap();
    let done = until_status(&app, id, "done", Duration::from_secs(20)).await;
    let assessment = &done["result"]["assessment"];
    assert_eq!(assessment["passed"], true);
    assert!(assessment["globalScore"].is_null(), "no score without a review");
    assert!(assessment["reviewerModel"].is_null());
    let messages: Vec<&str> = assessment["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["passed"], true, "{c}");
            c["message"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        messages,
        [
            "the output contains \"fake provider\"",
            "the output contains \"HELLO FROM\" (in any letter case)",
            "the output matches `^Hello .*provider\\.$`",
        ]
    );
    assert_eq!(done["result"]["attempts"][0]["passed"], true);
    assert!(done["result"]["attempts"][0]["globalScore"].is_null());
    assert_eq!(openai.requests().len(), 1, "no reviewer call");

    let failing = task(
        &app,
        json!({"title": "Number", "assignTo": "ok", "maxRetries": 0,
               "expectations": [{"type": "contains", "text": "hello"},
                                {"type": "regex", "pattern": "^\\d+$"},
                                {"type": "json_schema", "schema": {"type": "object"}},
                                {"type": "contains", "text": "Hello"}]}),
    )
    .await;
    let id = failing["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(20)).await;
    let result = &failed["result"];
    assert_eq!(result["error"]["code"], "review_failed");
    let checks = result["assessment"]["checks"].as_array().unwrap();
    let passed: Vec<&Value> = checks.iter().map(|c| &c["passed"]).collect();
    assert_eq!(passed, [false, false, false, true]);
    assert_eq!(checks[0]["message"], "the output does not contain \"hello\"");
    assert_eq!(checks[1]["message"], "the output does not match `^\\d+$`");
    assert!(
        checks[2]["message"].as_str().unwrap().contains("is not JSON"),
        "{}",
        checks[2]
    );
    // Without a review, the feedback is what the failed checks say.
    let feedback = result["assessment"]["feedback"].as_str().unwrap();
    assert!(
        feedback.contains("does not contain \"hello\"") && feedback.contains("does not match"),
        "{feedback}"
    );

    // JSON in the output: mock/echo answers the brief, whose first ```json block is the
    // description's.
    let data = json!({"version": "2.0", "items": [1, 2]});
    let with_json = task(
        &app,
        json!({"title": "Data", "assignTo": "echo",
               "description": format!("Return this:\n\n```json\n{data}\n```"),
               "expectations": [{"type": "json_schema",
                                 "schema": {"type": "object", "required": ["version"],
                                            "properties": {"version": {"type": "string"}}}}],
               "expectedOutcomes": [{"type": "json", "label": "Release data"},
                                    {"type": "text", "label": "Notes", "required": false},
                                    {"type": "url", "label": "Link", "required": false}]}),
    )
    .await;
    assert_eq!(with_json["outcomes"], json!([]), "no outcomes before done");
    let id = with_json["id"].as_str().unwrap();
    let done = until_status(&app, id, "done", Duration::from_secs(20)).await;
    assert_eq!(
        done["result"]["assessment"]["checks"][0]["message"],
        "the output JSON is valid against the schema"
    );
    let output = done["result"]["output"].as_str().unwrap();
    // The brief (echoed) says what is expected and how each outcome is taken.
    assert!(
        output.contains(
            "## Expected outcomes\n\n- Release data (JSON: the whole output, or its first ```json block; required)\n"
        ),
        "{output}"
    );
    assert_eq!(
        done["outcomes"],
        json!([{"type": "json", "label": "Release data", "text": null, "data": data, "url": null},
               {"type": "text", "label": "Notes", "text": output, "data": null, "url": null}]),
        "the optional URL outcome is left out"
    );

    let wrong_json = task(
        &app,
        json!({"title": "Bad data", "assignTo": "echo", "maxRetries": 0,
               "description": "```json\n{\"version\": 2}\n```",
               "expectations": [{"type": "json_schema",
                                 "schema": {"type": "object", "properties": {"version": {"type": "string"}}}}],
               "expectedOutcomes": [{"type": "url", "label": "Link"}]}),
    )
    .await;
    let id = wrong_json["id"].as_str().unwrap();
    let failed = until_status(&app, id, "failed", Duration::from_secs(20)).await;
    let checks = failed["result"]["assessment"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{checks:#?}");
    assert_eq!(checks[0]["type"], "json_schema");
    assert_eq!(checks[0]["passed"], false);
    assert!(
        checks[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("the output JSON is not valid against the schema: at /version"),
        "{}",
        checks[0]
    );
    assert_eq!(checks[1]["type"], "outcome", "a required outcome is a check");
    assert_eq!(checks[1]["passed"], false);
    assert!(
        checks[1]["message"].as_str().unwrap().contains("\"Link\""),
        "{}",
        checks[1]
    );
    assert_eq!(failed["outcomes"], json!([]));
}

#[tokio::test]
async fn after_enough_failed_attempts_the_fallback_agent_and_model_take_over() {
    let (app, openai, _anthropic) = app_reviewed_by("mock/echo").await;
    agent(&app, "first", "mock/echo").await;
    agent(&app, "fallback", "mock/echo").await;
    // The echo of the brief carries MOCK_FAIL, so the first attempt's review fails.
    let body = json!({"title": "Escalate", "assignTo": "first", "description": "MOCK_FAIL please",
        "expectations": [{"type": "llm_review", "criteria": "Good"}],
        "retryPolicy": {"escalateAfter": 1, "fallbackAgent": "fallback", "escalateModel": "openai:ok"}});
    let created = task(&app, body).await;
    let done = until_status(&app, created["id"].as_str().unwrap(), "done", Duration::from_secs(15)).await;
    let attempts = done["result"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{done:#}");
    assert_eq!(
        (&attempts[0]["agent"], &attempts[0]["model"]),
        (&json!("first"), &json!("mock/echo"))
    );
    assert_eq!(
        (&attempts[1]["agent"], &attempts[1]["model"]),
        (&json!("fallback"), &json!("openai:ok"))
    );
    assert_eq!(attempts[1]["phase"], "fix");
    // The escalated attempt reached the other provider, with the fallback agent's prompt.
    let sent = openai.last_request().body;
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Name: fallback"),
        "{sent}"
    );
}

#[tokio::test]
async fn a_project_can_have_its_own_reviewer_model() {
    let openai = FakeProvider::openai().await;
    let anthropic = FakeProvider::anthropic().await;
    let mut config = Config::default();
    config.projects.insert(
        "acme".into(),
        polpo_api::config::ProjectConfig {
            assessment_model: Some("openai:ok".into()),
            ..polpo_api::config::ProjectConfig::default()
        },
    );
    let app = TestApp::with_fakes(&openai, &anthropic, config).await;
    let other = app.key_of("globex", polpo_api::scope::Environment::Test).await;
    let body = json!({"title": "Notes", "assignTo": "writer",
                      "expectations": [{"type": "llm_review", "criteria": "Complete"}]});
    for key in [&app.test_key, &other] {
        let response = app
            .post("/v1/agents", key, json!({"name": "writer", "model": "mock/echo"}))
            .await;
        assert_eq!(response.status, axum::http::StatusCode::CREATED, "{}", response.text);
    }
    let ours = task(&app, body.clone()).await;
    let theirs = app.post("/v1/tasks", &other, body).await.json();
    // globex keeps the default: the attempt's own model reviews, and passes.
    let passed = crate::helpers::eventually(Duration::from_secs(20), || async {
        app.get(&format!("/v1/tasks/{}", theirs["id"].as_str().unwrap()), &other)
            .await
            .json()["status"]
            == "done"
    })
    .await;
    let theirs = app
        .get(&format!("/v1/tasks/{}", theirs["id"].as_str().unwrap()), &other)
        .await
        .json();
    assert!(passed, "{theirs:#}");
    assert_eq!(theirs["result"]["assessment"]["reviewerModel"], "mock/echo");
    // acme's reviewer is the configured model: the provider saw its review requests (its plain
    // reply is no review, so the assessment fails after its tries).
    let ours = until_status(&app, ours["id"].as_str().unwrap(), "failed", Duration::from_secs(20)).await;
    assert_eq!(ours["result"]["error"]["code"], "assessment_failed", "{ours:#}");
    let reviews: Vec<_> = openai
        .requests()
        .into_iter()
        .filter(|r| r.body["response_format"]["json_schema"]["name"] == "polpo_review")
        .collect();
    assert!(!reviews.is_empty(), "the project's reviewer was never asked");
    assert!(reviews.iter().all(|r| r.body["model"] == "ok"), "{reviews:#?}");
}
