//! The runtime context on its own: a chat turn as a background worker would run it, with no
//! router, no key and no request behind it. What it stores and announces is what an HTTP turn
//! stores and announces.

use std::collections::BTreeMap;
use std::time::Duration;

use polpo_api::config::Config;
use polpo_api::field::Field;
use polpo_api::providers::Providers;
use polpo_api::providers::types::{ChatMessage, Chunk, FinishReason, Params, Role};
use polpo_api::runtime::Runtime;
use polpo_api::runtime::agents::{self, AgentChanges};
use polpo_api::runtime::chat::{self, CompletionRequest, TurnEvent};
use polpo_api::runtime::sessions;
use polpo_api::scope::{Environment, Scope};
use polpo_api::store::{self, Db};
use serde_json::Value;

use crate::helpers::{TestDatabase, fake_provider_env};

fn agent_named(name: &str, model: &str) -> AgentChanges {
    AgentChanges {
        name: Field::Value(name.into()),
        role: Field::Absent,
        model: Field::Value(model.into()),
        system_prompt: Field::Absent,
        allowed_tools: Field::Absent,
        skills: Field::Absent,
        max_turns: Field::Absent,
        max_concurrency: Field::Absent,
        reasoning: Field::Absent,
        identity: Field::Absent,
        reports_to: Field::Absent,
        temperature: Field::Absent,
        max_tokens: Field::Absent,
        metadata: Field::Absent,
    }
}

#[tokio::test]
async fn a_chat_turn_runs_on_the_runtime_alone() {
    let database = TestDatabase::new().await;
    let mut config = Config::default();
    config.database.url = Some(database.url.clone());
    let db = Db::connect(Some(&database.url), 5).await.unwrap();
    store::migrate::run(&db).await.unwrap();
    let providers = Providers::from_config(&config.providers, &fake_provider_env).unwrap();
    let rt = Runtime::new(db.clone(), config, providers).unwrap();
    let scope = Scope {
        project: "acme".into(),
        environment: Environment::Live,
    };
    store::projects::insert(&db.pool, &scope.project, polpo_api::clock::now_ms())
        .await
        .unwrap();
    agents::create(&rt, &scope, agent_named("worker", "mock/echo"))
        .await
        .unwrap();

    let said = "Summarise the night's builds, please";
    let request = CompletionRequest {
        messages: vec![ChatMessage::text(Role::User, said)],
        agent: Some("worker".into()),
        model: None,
        stream: true,
        include_usage: false,
        params: Params::default(),
        metadata: BTreeMap::new(),
    };
    let Ok(mut turn) = chat::start(&rt, &scope, None, request, None).await else {
        panic!("the turn did not start");
    };
    assert_eq!(turn.model, "mock/echo");

    // The echo model answers with the last user message, word by word.
    let mut streamed = String::new();
    let mut deltas = 0;
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match turn.events.recv().await {
                Some(TurnEvent::Delta(Chunk::Text(text))) => {
                    deltas += 1;
                    streamed.push_str(&text);
                }
                Some(TurnEvent::Completed { finish, usage }) => return Some((finish, usage)),
                Some(other) => panic!("unexpected turn event {other:?}"),
                None => return None,
            }
        }
    })
    .await
    .expect("the turn did not complete within 10 s")
    .expect("the turn ended without completing");
    assert_eq!(streamed, said);
    assert_eq!(deltas, said.split_whitespace().count(), "streamed word by word");
    let (finish, usage) = finished;
    assert_eq!(finish, FinishReason::Stop);
    assert_eq!(usage.completion_tokens, 5);

    // The turn's task is tracked: it ends, and the runtime can drain.
    assert!(
        rt.drain(Duration::from_secs(5)).await,
        "the turn's task is still running"
    );

    let session = sessions::get(&rt.db, &scope, &turn.session_id).await.unwrap();
    assert_eq!(session.agent.as_deref(), Some("worker"));
    assert_eq!(session.title, said);
    assert_eq!(session.message_count, 2);
    let messages = sessions::messages(&rt.db, &scope, &turn.session_id, "", 10)
        .await
        .unwrap();
    let shape: Vec<(&str, &Value, Option<&str>)> = messages
        .iter()
        .map(|m| (m.role.as_str(), &m.content, m.finish_reason.as_deref()))
        .collect();
    assert_eq!(
        shape,
        [
            ("user", &Value::from(said), None),
            ("assistant", &Value::from(said), Some("stop")),
        ]
    );
    assert_eq!(messages[1].model.as_deref(), Some("mock/echo"));

    let events = store::events::list_after(&rt.db.pool, &scope, 0, 100).await.unwrap();
    let of_session: Vec<(String, Value)> = events
        .iter()
        .map(|e| (e.name.clone(), serde_json::from_str::<Value>(&e.payload).unwrap()))
        .filter(|(_, payload)| payload["sessionId"] == turn.session_id.as_str())
        .collect();
    let names: Vec<&str> = of_session.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "session:created",
            "message:added",
            "message:added",
            "completion:finished"
        ],
        "{events:?}"
    );
    assert_eq!(of_session[1].1["role"], "user");
    assert_eq!(of_session[2].1["role"], "assistant");
    assert_eq!(of_session[3].1["finishReason"], "stop");
    assert_eq!(of_session[3].1["agent"], "worker");
    db.pool.close().await;
}

/// Two instances on one database (spec §5.8): a transaction that reads before it writes, as a
/// task's release at shutdown does, is not refused because the other instance wrote in between.
/// On SQLite a transaction that starts reading and then writes would be refused at its first
/// write (`SQLITE_BUSY_SNAPSHOT`, which no busy wait retries) once another connection has
/// committed since its read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_reads_first_is_not_refused_for_another_instances_write() {
    let database = TestDatabase::new().await;
    let db = Db::connect(Some(&database.url), 5).await.unwrap();
    store::migrate::run(&db).await.unwrap();
    let peer = Db::connect(Some(&database.url), 5).await.unwrap();
    let now = polpo_api::clock::now_ms();

    let mut tx = db.begin().await.unwrap();
    let before = store::projects::list(&mut *tx).await.unwrap();
    let mut theirs = tokio::spawn({
        let peer = peer.clone();
        async move { store::projects::insert(&peer.pool, "theirs", now).await }
    });
    // The peer's write either commits now or waits for this transaction to end; a second is
    // its chance to commit first.
    let landed_first = tokio::time::timeout(Duration::from_secs(1), &mut theirs).await.ok();
    let ours = store::projects::insert(&mut *tx, "ours", now).await;
    assert!(ours.is_ok(), "our write was refused: {ours:?}");
    tx.commit().await.unwrap();
    let theirs = match landed_first {
        Some(done) => done,
        None => theirs.await,
    };
    assert!(theirs.unwrap().is_ok(), "the peer's write was refused");

    let slugs: Vec<String> = store::projects::list(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.slug)
        .collect();
    assert_eq!(slugs.len(), before.len() + 2, "{slugs:?}");
    assert!(
        slugs.contains(&"ours".to_string()) && slugs.contains(&"theirs".to_string()),
        "{slugs:?}"
    );
    db.pool.close().await;
    peer.pool.close().await;
}
