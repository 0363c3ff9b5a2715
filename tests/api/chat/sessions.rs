//! Chat sessions: the stored history given to the model once, refused sessions, the session
//! endpoints, and sessions left empty by failed calls.

use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::{Value, json};

use super::{Setup, data_frames, send_completion, setup, stream, user};
use crate::helpers::{client, eventually};

#[tokio::test]
async fn sessions_give_the_model_the_stored_history_once() {
    let s = setup().await;
    s.agent("echoer", "openai:echo", json!({})).await;
    let first = s
        .chat(json!({"agent": "echoer", "messages": user("first question")}), None)
        .await;
    let session = first.header("x-session-id").unwrap().to_string();
    // The client resends the whole history, as OpenAI clients do.
    let history = json!([
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first question"},
        {"role": "user", "content": "second question"}
    ]);
    let second = s
        .chat(json!({"agent": "echoer", "messages": history}), Some(&session))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    assert_eq!(second.header("x-session-id"), Some(session.as_str()));
    let sent = s.openai.last_request().body["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = sent.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"], "{sent:?}");
    // Only the new question again: the stored history still reaches the model.
    let third = s
        .chat(json!({"agent": "echoer", "messages": user("third")}), Some(&session))
        .await;
    assert_eq!(third.status, StatusCode::OK);
    assert_eq!(s.openai.last_request().body["messages"].as_array().unwrap().len(), 6);
    let stored = s.messages(&session).await;
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[5]["model"], "openai:echo");
    let info = s
        .app
        .get(&format!("/v1/chat/sessions/{session}"), &s.app.test_key)
        .await
        .json();
    assert_eq!(info["messageCount"], 6);
    assert_eq!(info["agent"], "echoer");
    assert_eq!(info["title"], "first question");
}

#[tokio::test]
async fn unknown_foreign_and_mismatched_sessions_are_refused() {
    let s = setup().await;
    s.agent("a", "mock/echo", json!({})).await;
    let unknown = s
        .chat(
            json!({"agent": "a", "messages": user("x")}),
            Some("sess_01jz8k2m4p6r8t0v2x4z6b8d0f"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["code"], "not_found");

    let live = s
        .app
        .post(
            "/v1/chat/completions",
            &s.app.live_key,
            json!({"model": "mock/echo", "messages": user("x")}),
        )
        .await;
    let live_session = live.header("x-session-id").unwrap().to_string();
    let foreign = s
        .chat(
            json!({"model": "mock/echo", "messages": user("x")}),
            Some(&live_session),
        )
        .await;
    assert_eq!(
        foreign.status,
        StatusCode::NOT_FOUND,
        "a live session is unknown to the test key"
    );
    assert_eq!(
        s.app
            .get(&format!("/v1/chat/sessions/{live_session}"), &s.app.test_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let gateway = s.chat(json!({"model": "mock/echo", "messages": user("x")}), None).await;
    let gateway_session = gateway.header("x-session-id").unwrap().to_string();
    let mismatch = s
        .chat(json!({"agent": "a", "messages": user("x")}), Some(&gateway_session))
        .await;
    assert_eq!(mismatch.status, StatusCode::CONFLICT);
    assert_eq!(mismatch.json()["error"]["code"], "conflict");
}

#[tokio::test]
async fn session_endpoints_list_read_and_delete() {
    let s = setup().await;
    s.agent("a", "mock/echo", json!({})).await;
    let first = s
        .chat(
            json!({"agent": "a", "messages": user("one\ntwo"), "user": "alice", "metadata": {"k": "v"}}),
            None,
        )
        .await;
    let session = first.header("x-session-id").unwrap().to_string();
    s.chat(json!({"model": "mock/echo", "messages": user("gateway")}), None)
        .await;

    let all = s.app.get("/v1/chat/sessions", &s.app.test_key).await.json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let of_agent = s.app.get("/v1/chat/sessions?agent=a", &s.app.test_key).await.json();
    assert_eq!(of_agent.as_array().unwrap().len(), 1);
    assert_eq!(of_agent[0]["title"], "one two");
    assert_eq!(of_agent[0]["user"], "alice");
    assert_eq!(of_agent[0]["metadata"], json!({"k": "v"}));
    let of_user = s.app.get("/v1/chat/sessions?user=alice", &s.app.test_key).await.json();
    assert_eq!(of_user[0]["id"], session);
    assert_eq!(
        s.app.get("/v1/chat/sessions?limit=0", &s.app.test_key).await.status,
        StatusCode::BAD_REQUEST
    );

    let messages = s.messages(&session).await;
    assert_eq!(messages[0]["role"], "user");
    // mock counts words: "Name: a" (the composed prompt) + "one two", then "one two" back.
    assert_eq!(messages[1]["usage"]["totalTokens"], 6);
    assert_eq!(messages[1]["finishReason"], "stop");
    assert!(messages[0]["model"].is_null() && messages[0]["usage"].is_null());

    // Events of the turn were written to the log in order.
    let scope = polpo_api::scope::Scope {
        project: "acme".into(),
        environment: polpo_api::scope::Environment::Test,
    };
    let events = polpo_api::store::events::list_after(&s.app.db.pool, &scope, 0, 100)
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        &names[..4],
        [
            "session:created",
            "message:added",
            "message:added",
            "completion:finished"
        ]
    );
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let finished: Value = serde_json::from_str(&events[3].payload).unwrap();
    assert_eq!(finished["agent"], "a");
    assert_eq!(finished["finishReason"], "stop");
    assert_eq!(finished["stream"], false);
    assert!(finished["timestamp"].is_string());

    assert_eq!(
        s.app
            .delete(&format!("/v1/chat/sessions/{session}"), &s.app.test_key)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.app
            .get(&format!("/v1/chat/sessions/{session}"), &s.app.test_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.app
            .get(&format!("/v1/chat/sessions/{session}/messages"), &s.app.test_key)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn failed_calls_leave_no_listed_session_and_empty_ones_are_removed_later() {
    let s = setup().await;
    let key = &s.app.test_key;
    let mut failed = Vec::new();
    for _ in 0..10 {
        let body = json!({"model": "mock/error-429", "messages": user("hi")});
        let response = s.chat(body, None).await;
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS, "{}", response.text);
        failed.push(response.header("x-session-id").unwrap().to_string());
    }
    let listed = s.app.get("/v1/chat/sessions", key).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json(), json!([]), "no empty session is listed");
    // Each is still there to retry in (spec §3.6 rule 5), and a retry that succeeds lists it.
    let retried = &failed[0];
    assert_eq!(
        s.app.get(&format!("/v1/chat/sessions/{retried}"), key).await.status,
        StatusCode::OK
    );
    let body = json!({"model": "mock/echo", "messages": user("hi")});
    assert_eq!(s.chat(body, Some(retried)).await.status, StatusCode::OK);
    let listed = s.app.get("/v1/chat/sessions", key).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], retried.as_str());

    // An instance whose retention is zero removes the empty ones when its purge runs (first at
    // start), and keeps the one with messages.
    let mut config = Config::default();
    config.sessions.empty_retention = Duration::ZERO;
    let _other = s.app.another_instance(config).await;
    let last = failed.last().unwrap();
    let gone = eventually(Duration::from_secs(10), || async {
        s.app.get(&format!("/v1/chat/sessions/{last}"), key).await.status == StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "the empty session was not removed");
    for id in &failed[1..] {
        assert_eq!(
            s.app.get(&format!("/v1/chat/sessions/{id}"), key).await.status,
            StatusCode::NOT_FOUND,
            "{id}"
        );
    }
    assert_eq!(
        s.app.get(&format!("/v1/chat/sessions/{retried}"), key).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_session_past_its_bounds_is_refused_instead_of_sent_upstream_whole() {
    let s = setup().await;
    // 2047 messages and the reply: the session holds 2048, the most one turn may send.
    let many: Vec<Value> = (0..2047)
        .map(|i| json!({"role": "user", "content": format!("m{i}")}))
        .collect();
    let first = s.chat(json!({"model": "mock/echo", "messages": many}), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let session = first.header("x-session-id").unwrap().to_string();
    let next = s
        .chat(
            json!({"model": "mock/echo", "messages": user("one more")}),
            Some(&session),
        )
        .await;
    assert_eq!(next.status, StatusCode::BAD_REQUEST, "{}", next.text);
    assert_eq!(next.json()["error"]["param"], "messages");
    assert!(next.text.contains("new session"), "{}", next.text);
    assert_eq!(
        message_count(&s.app, &session).await,
        2048,
        "the refused turn stored nothing"
    );

    // Large turns: each stores about 1.2 MB (the request and its echo); past 4 MiB the session
    // cannot go on.
    let big = "x".repeat(600_000);
    let first = s
        .chat(json!({"model": "mock/echo", "messages": user(&big)}), None)
        .await;
    let session = first.header("x-session-id").unwrap().to_string();
    let mut refused = None;
    for turn in 1..10_i64 {
        let answer = s
            .chat(
                json!({"model": "mock/echo", "messages": user(&format!("{turn} {big}"))}),
                Some(&session),
            )
            .await;
        if answer.status != StatusCode::OK {
            refused = Some((turn, answer));
            break;
        }
    }
    let (turn, answer) = refused.expect("the session grew without bound");
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    assert!(turn >= 3, "refused after only {turn} turns");
    assert_eq!(
        message_count(&s.app, &session).await,
        2 * turn,
        "the refused turn stored nothing"
    );
}

async fn message_count(app: &crate::helpers::TestApp, session: &str) -> i64 {
    let response = app.get(&format!("/v1/chat/sessions/{session}"), &app.test_key).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.json()["messageCount"].as_i64().unwrap()
}

/// Spec §3.6 step 5: a completion's reply is committed before its answer ends, so whoever reads
/// the session next sees it, on any instance. On Postgres the reader is a second instance on the
/// same database; SQLite serves one instance, whose reader is then its own router.
#[tokio::test]
async fn a_reply_is_readable_from_another_instance_as_soon_as_its_answer_has_ended() {
    let s = setup().await;
    let key = &s.app.test_key;
    let reader = if s.app._database.is_postgres() {
        polpo_api::app::router(s.app.another_instance(Config::default()).await)
    } else {
        s.app.router.clone()
    };
    let messages_of = |session: String| {
        let reader = reader.clone();
        let request = axum::http::Request::get(format!("/v1/chat/sessions/{session}/messages"))
            .header("authorization", format!("Bearer {key}"))
            .body(axum::body::Body::empty())
            .unwrap();
        async move {
            use tower::ServiceExt;
            let response = reader.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        }
    };
    for round in 0..5 {
        let text = format!("plain answer {round}");
        let plain = s
            .chat(json!({"model": "mock/echo", "messages": user(&text)}), None)
            .await;
        assert_eq!(plain.status, StatusCode::OK, "{}", plain.text);
        let messages = messages_of(plain.header("x-session-id").unwrap().to_string()).await;
        assert_eq!(messages[1]["role"], "assistant", "{messages}");
        assert_eq!(messages[1]["content"], text.as_str());
    }
    let base = s.app.serve().await;
    for round in 0..5 {
        let text = format!("streamed answer {round}");
        let (status, headers, body) = stream(
            &base,
            key,
            json!({"model": "mock/echo", "stream": true, "messages": user(&text)}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(data_frames(&body).last().map(String::as_str), Some("[DONE]"));
        let messages = messages_of(headers["x-session-id"].to_str().unwrap().to_string()).await;
        assert_eq!(messages[1]["role"], "assistant", "{messages}");
        assert_eq!(messages[1]["content"], text.as_str());
    }
}

/// Spec §3.6 and §7.3 under concurrency: turns committed together (many per transaction) still
/// store each session, both messages and their events, each turn's events in its own order,
/// numbered without gaps, and a follow-up in the same session sees its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_turns_each_store_their_messages_and_events_in_order() {
    let s = setup().await;
    let key = &s.app.test_key;
    let base = s.app.serve().await;
    let turn = |text: String, session: Option<String>, streamed: bool| {
        let base = base.clone();
        async move {
            let mut request = crate::helpers::client()
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "mock/echo", "stream": streamed, "messages": user(&text)}));
            if let Some(session) = session {
                request = request.header("x-session-id", session);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let session = response.headers()["x-session-id"].to_str().unwrap().to_string();
            let body = response.text().await.unwrap();
            if streamed {
                assert_eq!(data_frames(&body).last().map(String::as_str), Some("[DONE]"));
            }
            session
        }
    };
    let firsts: Vec<_> = (0..30).map(|i| turn(format!("first {i}"), None, i % 2 == 0)).collect();
    let sessions = futures_util::future::join_all(firsts).await;
    let follow_ups: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, session)| turn(format!("second {i}"), Some(session.clone()), i % 3 == 0))
        .collect();
    assert_eq!(futures_util::future::join_all(follow_ups).await, sessions);

    for (i, session) in sessions.iter().enumerate() {
        let messages = s.app.get(&format!("/v1/chat/sessions/{session}/messages"), key).await;
        let contents: Vec<Value> = messages
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].clone())
            .collect();
        let (first, second) = (format!("first {i}"), format!("second {i}"));
        assert_eq!(
            contents,
            [json!(first), json!(first), json!(second), json!(second)],
            "{session}"
        );
    }
    let history = s.app.get("/v1/events/history?limit=1000", key).await;
    let events = history.json().as_array().unwrap().clone();
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "event ids with gaps: {ids:?}");
    for session in &sessions {
        let names: Vec<&str> = events
            .iter()
            .filter(|e| e["data"]["sessionId"] == session.as_str())
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        let turn = ["message:added", "message:added", "completion:finished"];
        let expected: Vec<&str> = std::iter::once("session:created").chain(turn).chain(turn).collect();
        assert_eq!(names, expected, "events of {session}");
    }
}

/// A session deleted while its turn streams (spec §3.13): the reply is not stored and the
/// session stays gone, and the database goes on serving the next turns.
#[tokio::test]
async fn a_reply_whose_session_was_deleted_during_its_stream_is_not_stored() {
    let s = setup().await;
    let key = &s.app.test_key;
    let base = s.app.serve().await;
    let body = json!({"model": "openai:pace-300", "stream": true, "messages": user("hello")});
    let mut response = send_completion(&base, key, &body).await;
    assert_eq!(response.status(), 200);
    let session = response.headers()["x-session-id"].to_str().unwrap().to_string();
    let mut text = String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()).to_string();
    // The new message is stored before the first chunk.
    assert_eq!(s.messages(&session).await.len(), 1);
    let deleted = s.app.delete(&format!("/v1/chat/sessions/{session}"), key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    while let Some(bytes) = response.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert_eq!(data_frames(&text).last().map(String::as_str), Some("[DONE]"), "{text}");

    let gone = s.app.get(&format!("/v1/chat/sessions/{session}"), key).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let history = s.app.get("/v1/events/history?limit=1000", key).await.json();
    let finished: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "completion:finished")
        .collect();
    assert!(
        finished.is_empty(),
        "a finish was logged for the deleted session: {finished:?}"
    );

    let next = s
        .chat(json!({"model": "mock/echo", "messages": user("after")}), None)
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    let next_session = next.header("x-session-id").unwrap().to_string();
    assert_eq!(s.messages(&next_session).await.len(), 2);
}

/// A connection of another writer that holds the database's write lock (on Postgres, the lock
/// of the messages table), taken after a first turn, so that the key's first use and its
/// rate-limit tokens are already written.
async fn another_writer_holding_the_lock(s: &Setup) -> sqlx::AnyConnection {
    use sqlx::{Connection, Executor};

    let first = s
        .chat(json!({"model": "openai:echo", "messages": user("before")}), None)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let mut other = sqlx::AnyConnection::connect(&s.app._database.url).await.unwrap();
    if s.app._database.is_postgres() {
        other.execute("BEGIN").await.unwrap();
        other
            .execute("LOCK TABLE chat_messages IN EXCLUSIVE MODE")
            .await
            .unwrap();
    } else {
        other.execute("BEGIN IMMEDIATE").await.unwrap();
    }
    other
}

/// Another process writing to the database (a CLI command beside the server, a migration tool)
/// holds its write lock: a turn that ends meanwhile waits for it instead of failing, then
/// commits, and its messages are readable once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_meets_another_writers_lock_waits_for_it_and_is_stored() {
    use sqlx::Executor;

    let s = setup().await;
    let mut other = another_writer_holding_the_lock(&s).await;
    let base = s.app.serve().await;
    let key = s.app.test_key.clone();
    let mut turn = tokio::task::JoinSet::new();
    turn.spawn(async move {
        send_completion(
            &base,
            &key,
            &json!({"model": "openai:echo", "messages": user("while locked")}),
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async { s.openai.requests().len() == 2 }).await,
        "the provider was never asked"
    );
    // The other writer keeps its lock a while after the provider has answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(turn.try_join_next().is_none(), "the turn ended while the lock was held");
    other.execute("COMMIT").await.unwrap();

    let answered = turn.join_next().await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);
    let session = answered.headers()["x-session-id"].to_str().unwrap().to_string();
    let stored = s.messages(&session).await;
    let roles: Vec<&str> = stored.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant"], "{stored:?}");
}

/// The session a streamed answer names in its head is readable, with its new messages, as
/// soon as the head arrives, even when storing them had to wait for another writer's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_names_a_session_that_is_readable_when_its_head_arrives() {
    use sqlx::Executor;

    let s = setup().await;
    let mut other = another_writer_holding_the_lock(&s).await;
    let base = s.app.serve().await;
    let key = s.app.test_key.clone();
    let mut turn = tokio::task::JoinSet::new();
    turn.spawn(async move {
        let body = json!({"model": "openai:ok", "stream": true, "messages": user("while locked")});
        let mut response = send_completion(&base, &key, &body).await;
        let session = response.headers()["x-session-id"].to_str().unwrap().to_string();
        let at_head = client()
            .get(format!("{base}/v1/chat/sessions/{session}/messages"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let at_head = (at_head.status(), at_head.text().await.unwrap());
        let mut text = String::new();
        while let Some(bytes) = response.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        (response.status(), session, at_head, text)
    });
    assert!(
        eventually(Duration::from_secs(5), || async { s.openai.requests().len() == 2 }).await,
        "the provider was never asked"
    );
    // The other writer keeps its lock a while after the provider has answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.execute("COMMIT").await.unwrap();

    let (status, session, at_head, text) = turn.join_next().await.unwrap().unwrap();
    assert_eq!(status, 200);
    let (at_head_status, at_head) = at_head;
    assert_eq!(
        at_head_status, 200,
        "the session was not readable when the head arrived: {at_head}"
    );
    // The reply may be stored by then too: the head carries the first chunk, after which the
    // turn reads on.
    let listed: Vec<Value> = serde_json::from_str(&at_head).unwrap();
    assert_eq!(listed[0]["role"], "user", "{at_head}");
    assert_eq!(listed[0]["content"], "while locked", "{at_head}");
    assert_eq!(data_frames(&text).last().map(String::as_str), Some("[DONE]"), "{text}");
    let stored = s.messages(&session).await;
    let roles: Vec<&str> = stored.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant"], "{stored:?}");
}
