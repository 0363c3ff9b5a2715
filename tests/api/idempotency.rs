//! Spec §1.8: a POST retried with its `Idempotency-Key` is answered with the first answer, byte
//! for byte, and changes nothing; the same key on another request is refused; a request still
//! running answers `409` with a retry hint; streams are recorded but never replayed; answers the
//! client should retry (5xx) are not recorded; a claim left by a dead instance is taken over after
//! ten minutes; records expire after `idempotency.ttl`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use polpo_api::config::{Config, IdempotencyConfig};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResponse, eventually};

fn request(path: &str, key: &str, idempotency_key: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn post(app: &TestApp, path: &str, idempotency_key: &str, body: Value) -> TestResponse {
    app.send(request(path, &app.test_key, idempotency_key, &body)).await
}

/// The number of items a list route answers (first page of 100).
async fn count(app: &TestApp, path: &str) -> usize {
    let separator = if path.contains('?') { '&' } else { '?' };
    let list = app.get(&format!("{path}{separator}limit=100"), &app.test_key).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    list.json().as_array().unwrap().len()
}

async fn event_count(app: &TestApp) -> usize {
    count(app, "/v1/events/history").await
}

fn assert_replay(first: &TestResponse, again: &TestResponse) {
    assert_eq!(again.status, first.status, "{}", again.text);
    assert_eq!(again.text, first.text, "the replay differs from the first answer");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
}

#[tokio::test]
async fn twenty_concurrent_posts_with_one_key_create_one_agent_and_every_other_answer_replays_or_waits() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "writer", "model": "mock/echo", "role": "Writes copy"});
    // On Postgres half of the requests go to a second instance on the same database.
    let peer = if app._database.is_postgres() {
        Some(polpo_api::app::router(app.another_instance(Config::default()).await))
    } else {
        None
    };
    let answers = futures_util::future::join_all((0..20).map(|i| {
        let router = match (&peer, i % 2) {
            (Some(peer), 1) => peer.clone(),
            _ => app.router.clone(),
        };
        let req = request("/v1/agents", &app.test_key, "create-writer-1", &body);
        async move {
            use tower::ServiceExt;
            let response = router.oneshot(req).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            TestResponse {
                status,
                headers,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            }
        }
    }))
    .await;
    let created: Vec<&TestResponse> = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED && r.header("idempotent-replayed").is_none())
        .collect();
    assert_eq!(
        created.len(),
        1,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let first = created[0];
    for answer in &answers {
        match answer.status {
            StatusCode::CREATED if answer.header("idempotent-replayed").is_some() => {
                assert_eq!(answer.text, first.text);
            }
            StatusCode::CREATED => {}
            StatusCode::CONFLICT => {
                assert_eq!(answer.header("x-should-retry"), Some("true"), "{}", answer.text);
                assert_eq!(answer.header("retry-after"), Some("1"));
                assert_eq!(answer.json()["code"], "conflict");
            }
            other => panic!("unexpected {other}: {}", answer.text),
        }
    }
    assert_eq!(count(&app, "/v1/agents").await, 1);

    // A later retry replays the first answer byte for byte.
    let again = post(&app, "/v1/agents", "create-writer-1", body.clone()).await;
    assert_replay(first, &again);
    // The same key on a different body is refused and creates nothing.
    let other = post(
        &app,
        "/v1/agents",
        "create-writer-1",
        json!({"name": "editor", "model": "mock/echo"}),
    )
    .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST, "{}", other.text);
    assert!(other.json()["error"].as_str().unwrap().contains("Idempotency-Key"));
    assert_eq!(count(&app, "/v1/agents").await, 1);
    // So is the same body on another path.
    let elsewhere = post(&app, "/v1/tasks", "create-writer-1", body).await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST, "{}", elsewhere.text);
}

/// Every kind of POST: the retry answers what the first did and repeats none of its effects.
#[tokio::test]
async fn a_retried_post_of_every_kind_replays_its_answer_and_repeats_no_effect() {
    let mut config = Config::default();
    config.webhooks.allow_http_hosts = vec!["127.0.0.1".into()];
    config.webhooks.allow_private_networks = true;
    let app = TestApp::spawn_with(config).await;
    app.create_agent(&app.test_key, "writer").await;

    // Each case: the path, the body, and a count that the first request changed.
    // A draft: no attempt runs, so nothing but these requests writes events.
    let task = json!({"title": "Draft", "description": "Write the draft.", "assignTo": "writer", "draft": true});
    let first = post(&app, "/v1/tasks", "task-1", task.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let (tasks, events) = (count(&app, "/v1/tasks").await, event_count(&app).await);
    let again = post(&app, "/v1/tasks", "task-1", task).await;
    assert_replay(&first, &again);
    assert_eq!(
        (count(&app, "/v1/tasks").await, event_count(&app).await),
        (tasks, events)
    );
    let task_id = first.json()["id"].as_str().unwrap().to_string();

    let kill = format!("/v1/tasks/{task_id}/kill");
    let killed = post(&app, &kill, "kill-1", json!({})).await;
    assert_eq!(killed.status, StatusCode::OK, "{}", killed.text);
    let events = event_count(&app).await;
    // Without the key a second kill is refused (the task is already failed); with it, replayed.
    assert_eq!(
        app.post(&kill, &app.test_key, json!({})).await.status,
        StatusCode::CONFLICT
    );
    assert_replay(&killed, &post(&app, &kill, "kill-1", json!({})).await);
    assert_eq!(event_count(&app).await, events);

    let hook = json!({"url": "http://127.0.0.1:9/polpo", "events": ["task:*"]});
    let created = post(&app, "/v1/webhooks", "hook-1", hook.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_replay(&created, &post(&app, "/v1/webhooks", "hook-1", hook).await);
    assert_eq!(count(&app, "/v1/webhooks").await, 1);

    let mission = json!({"name": "digest", "tasks": [
        {"title": "Collect", "description": "Collect the news.", "assignTo": "writer"}]});
    let saved = post(&app, "/v1/missions", "mission-1", mission.clone()).await;
    assert_eq!(saved.status, StatusCode::CREATED, "{}", saved.text);
    assert_replay(&saved, &post(&app, "/v1/missions", "mission-1", mission).await);
    assert_eq!(count(&app, "/v1/missions").await, 1);
    let mission_id = saved.json()["id"].as_str().unwrap().to_string();
    let execute = format!("/v1/missions/{mission_id}/execute");
    let started = post(&app, &execute, "run-1", json!({})).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    assert_replay(&started, &post(&app, &execute, "run-1", json!({})).await);
    assert_eq!(count(&app, &format!("/v1/missions/{mission_id}/runs")).await, 1);
    let abort = format!("/v1/missions/{mission_id}/abort");
    let aborted = post(&app, &abort, "abort-1", json!({})).await;
    // The run may have completed already (the mock answers at once): 200 or 409, either replayed.
    assert!(
        [StatusCode::OK, StatusCode::CONFLICT].contains(&aborted.status),
        "{}",
        aborted.text
    );
    assert_replay(&aborted, &post(&app, &abort, "abort-1", json!({})).await);

    let chat = json!({"model": "writer", "messages": [{"role": "user", "content": "Hello there"}]});
    let answered = post(&app, "/v1/chat/completions", "chat-1", chat.clone()).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    let session = answered.header("x-session-id").unwrap().to_string();
    let messages = format!("/v1/chat/sessions/{session}/messages");
    let stored = count(&app, &messages).await;
    let again = post(&app, "/v1/chat/completions", "chat-1", chat).await;
    assert_replay(&answered, &again);
    assert_eq!(again.header("x-session-id"), Some(session.as_str()));
    assert_eq!(count(&app, &messages).await, stored);
    assert_eq!(count(&app, "/v1/chat/sessions").await, 1);

    // A refusal is an answer too: replayed as it was.
    let invalid = json!({"name": "bad name!", "model": "mock/echo"});
    let refused = post(&app, "/v1/agents", "agent-bad", invalid.clone()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text);
    assert_replay(&refused, &post(&app, "/v1/agents", "agent-bad", invalid).await);
}

#[tokio::test]
async fn a_key_still_running_gets_409_and_a_streamed_answer_is_never_replayed() {
    let app = TestApp::spawn().await;
    let base = app.serve().await;
    app.create_agent(&app.test_key, "writer").await;
    app.patch("/v1/agents/writer", &app.test_key, json!({"model": "mock/slow-echo"}))
        .await;
    let words: Vec<String> = (0..40).map(|i| format!("word{i}")).collect();
    let chat = json!({"model": "writer", "messages": [{"role": "user", "content": words.join(" ")}]});
    let client = crate::helpers::client();
    let send = |body: Value| {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&app.test_key)
            .header("idempotency-key", "slow-1")
            .json(&body)
            .send()
    };
    // The slow reply takes about two seconds; a retry meanwhile is told to come back.
    let state_of_key = || {
        sqlx::query_scalar::<_, String>("SELECT state FROM idempotency_records WHERE idem_key = 'slow-1'")
            .fetch_optional(&app.db.pool)
    };
    let (first, retried) = tokio::join!(send(chat.clone()), async {
        let claimed = eventually(Duration::from_secs(5), || async {
            state_of_key().await.unwrap().as_deref() == Some("in_flight")
        })
        .await;
        assert!(claimed, "the first request never claimed its key");
        send(chat.clone()).await.unwrap()
    });
    assert_eq!(retried.status(), StatusCode::CONFLICT);
    assert_eq!(retried.headers()["x-should-retry"], "true");
    assert_eq!(retried.headers()["retry-after"], "1");
    let first = first.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(state_of_key().await.unwrap().as_deref(), Some("done"));
    let first_body = first.text().await.unwrap();
    let replay = send(chat.clone()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), first_body);

    // A stream is recorded: the key cannot be used again, not even for the same request.
    let streamed = json!({"model": "mock/echo", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let send_stream = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&app.test_key)
            .header("idempotency-key", "stream-1")
            .json(&streamed)
            .send()
    };
    let stream = send_stream().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.text().await.unwrap().contains("data: [DONE]"));
    let again = send_stream().await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let error: Value = again.json().await.unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains("stream"),
        "{error}"
    );
}

#[tokio::test]
async fn a_failed_answer_is_not_recorded_and_the_key_can_be_retried() {
    let app = TestApp::spawn().await;
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let failed = post(&app, "/v1/chat/completions", "retry-me", chat("mock/error-500")).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.text);
    let again = post(&app, "/v1/chat/completions", "retry-me", chat("mock/error-500")).await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);
    assert_eq!(again.header("idempotent-replayed"), None, "a 5xx was replayed");
    // Nothing holds the key: the same key may now carry the request that succeeds.
    let fixed = post(&app, "/v1/chat/completions", "retry-me", chat("mock/echo")).await;
    assert_eq!(fixed.status, StatusCode::OK, "{}", fixed.text);
}

#[tokio::test]
async fn a_claim_left_by_a_dead_instance_is_taken_over_after_ten_minutes() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "writer", "model": "mock/echo"});
    let fingerprint = {
        // Claim the key as an instance that then died would have left it: first with a real
        // request so that the fingerprint is the server's own, then by marking it in flight.
        let first = post(&app, "/v1/agents", "orphan", body.clone()).await;
        assert_eq!(first.status, StatusCode::CREATED);
        sqlx::query_scalar::<_, String>("SELECT fingerprint FROM idempotency_records WHERE idem_key = 'orphan'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
    };
    app.delete("/v1/agents/writer", &app.test_key).await;
    let now = polpo_api::clock::now_ms();
    let orphan = |age: Duration| {
        let at = now - i64::try_from(age.as_millis()).unwrap();
        sqlx::query(
            "UPDATE idempotency_records SET state = 'in_flight', token = 'idm_dead', locked_at = $1,
                    status = NULL, body = NULL WHERE idem_key = 'orphan'",
        )
        .bind(at)
        .execute(&app.db.pool)
    };
    assert!(!fingerprint.is_empty());
    orphan(Duration::from_secs(9 * 60)).await.unwrap();
    let young = post(&app, "/v1/agents", "orphan", body.clone()).await;
    assert_eq!(young.status, StatusCode::CONFLICT, "{}", young.text);
    assert_eq!(count(&app, "/v1/agents").await, 0);

    orphan(Duration::from_secs(10 * 60 + 1)).await.unwrap();
    let taken = post(&app, "/v1/agents", "orphan", body.clone()).await;
    assert_eq!(taken.status, StatusCode::CREATED, "{}", taken.text);
    assert_eq!(taken.header("idempotent-replayed"), None);
    assert_replay(&taken, &post(&app, "/v1/agents", "orphan", body).await);
    assert_eq!(count(&app, "/v1/agents").await, 1);
}

#[tokio::test]
async fn a_record_expires_after_its_ttl_and_the_key_is_new_again() {
    let ttl = Duration::from_secs(2);
    let app = TestApp::spawn_with(Config {
        idempotency: IdempotencyConfig { ttl },
        ..Config::default()
    })
    .await;
    let started = std::time::Instant::now();
    let first = post(
        &app,
        "/v1/agents",
        "daily",
        json!({"name": "monday", "model": "mock/echo"}),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let tuesday = json!({"name": "tuesday", "model": "mock/echo"});
    // Until the ttl has passed the key belongs to the first request.
    let early = post(&app, "/v1/agents", "daily", tuesday.clone()).await;
    if started.elapsed() < ttl {
        assert_eq!(early.status, StatusCode::BAD_REQUEST, "{}", early.text);
    }
    let renewed = eventually(Duration::from_secs(5), || async {
        post(&app, "/v1/agents", "daily", tuesday.clone()).await.status == StatusCode::CREATED
    })
    .await;
    assert!(renewed, "the key was still taken 5 s after its ttl of 2 s");
    assert!(started.elapsed() >= ttl, "the key was new again before its ttl");
    assert_eq!(count(&app, "/v1/agents").await, 2);
}

#[tokio::test]
async fn a_malformed_key_is_refused_and_other_methods_ignore_it() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "writer", "model": "mock/echo"});
    for bad in ["", &"k".repeat(256)] {
        let r = post(&app, "/v1/agents", bad, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.text);
        assert!(
            r.json()["details"]["fields"]["Idempotency-Key"].is_string(),
            "{}",
            r.text
        );
    }
    let mut req = request("/v1/agents", &app.test_key, "x", &body);
    req.headers_mut().insert(
        "idempotency-key",
        axum::http::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    );
    assert_eq!(app.send(req).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(count(&app, "/v1/agents").await, 0);
    // The longest key is fine.
    let longest = post(&app, "/v1/agents", &"k".repeat(255), body).await;
    assert_eq!(longest.status, StatusCode::CREATED, "{}", longest.text);
    // GET ignores the header, even a malformed one.
    let get = Request::builder()
        .uri("/v1/agents")
        .header("authorization", format!("Bearer {}", app.test_key))
        .header("idempotency-key", "")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(get).await.status, StatusCode::OK);
}

#[tokio::test]
async fn keys_are_shared_within_a_scope_and_apart_across_scopes() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "writer", "model": "mock/echo"});
    let test = post(&app, "/v1/agents", "shared", body.clone()).await;
    assert_eq!(test.status, StatusCode::CREATED);
    // The live environment has its own records: the same key creates the live agent.
    let live = app.send(request("/v1/agents", &app.live_key, "shared", &body)).await;
    assert_eq!(live.status, StatusCode::CREATED, "{}", live.text);
    assert_eq!(live.header("idempotent-replayed"), None);
    assert_ne!(live.json()["id"], test.json()["id"]);
    // Another key of the same project and environment shares the records.
    let second_key = app.key_of("acme", polpo_api::scope::Environment::Test).await;
    let replay = app.send(request("/v1/agents", &second_key, "shared", &body)).await;
    assert_replay(&test, &replay);
}
