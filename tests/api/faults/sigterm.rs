//! SIGTERM while plain chat requests and chat streams are in flight (spec §10.5).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fakes::{FakeProvider, OK_TEXT};
use crate::helpers::{ServerProcess, TestDatabase, complete_frames, eventually, post_json, talking_streams};

/// The shutdown deadline the SIGTERM test configures (`server.shutdown_timeout`).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// After the deadline the server waits at most this long for tracked work (docs/ARCHITECTURE.md,
/// "Background work") before it exits.
const TRACKED_WORK_WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_requests_ends_streams_and_exits_zero() {
    const PLAIN: usize = 10;
    const STREAMS: usize = 10;
    // `pace-250` answers in about two seconds, well within the deadline; `slow` streams for
    // 20 s, far past it.
    let openai = FakeProvider::openai().await;
    let database = TestDatabase::new().await;
    let config: PathBuf = database.dir.0.join("polpo.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshutdown_timeout = \"{}s\"\n\n[providers.openai]\nbase_url = \"{}\"\n",
            SHUTDOWN_TIMEOUT.as_secs(),
            openai.base_url
        ),
    )
    .unwrap();
    let mut server = ServerProcess::start(
        &database.dir.0,
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("POLPO_CONFIG", config.to_str().unwrap()),
            ("OPENAI_API_KEY", "sk-upstream-openai-secret"),
        ],
    );
    let base = server.base_url.clone();
    let key = server.key();
    for (name, model) in [("steady", "openai:pace-250"), ("talker", "openai:slow")] {
        let created = post_json(&base, "/v1/agents", &key, json!({"name": name, "model": model})).await;
        assert_eq!(created.status(), 201);
    }

    // Streams stay open until the server ends them; plain answers are awaited in full.
    let mut streams = talking_streams(&base, &key, STREAMS).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let plain: Vec<tokio::task::JoinHandle<(u16, Value)>> = (0..PLAIN)
        .map(|i| {
            let request = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": "steady", "messages": [{"role": "user", "content": format!("plain {i}")}]}));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            })
        })
        .collect();
    // Every plain request has reached the provider: it is in flight when the signal comes.
    let in_flight = eventually(Duration::from_secs(10), || async {
        openai.requests().len() >= STREAMS + PLAIN
    })
    .await;
    assert!(in_flight, "only {} provider calls started", openai.requests().len());

    // The fault: SIGTERM.
    let signalled = Instant::now();
    let exit_within = SHUTDOWN_TIMEOUT + TRACKED_WORK_WAIT;
    let status = tokio::task::block_in_place(|| server.terminate(exit_within))
        .unwrap_or_else(|| panic!("still running {exit_within:?} after SIGTERM"));
    let exited_after = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.log());

    let mut finished = 0;
    for answer in plain {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], OK_TEXT, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        finished += 1;
    }
    let mut ended_unavailable = 0;
    for stream in &mut streams {
        tokio::time::timeout(Duration::from_secs(5), &mut stream.done)
            .await
            .expect("a client stream stayed open after the server exited")
            .unwrap();
        let text = stream.received();
        let frames = complete_frames(&text);
        assert!(!frames.iter().any(|f| f == "[DONE]"), "a 20 s stream finished: {text}");
        let last: Value = serde_json::from_str(frames.last().unwrap()).unwrap();
        assert_eq!(
            last["error"]["code"], "unavailable",
            "session {}: {text}",
            stream.session
        );
        ended_unavailable += 1;
    }

    println!("fault: SIGTERM under load ({PLAIN} plain chat requests and {STREAMS} chat streams in flight)");
    println!("  injected: SIGTERM with server.shutdown_timeout = {SHUTDOWN_TIMEOUT:?}");
    println!(
        "  observed: {finished}/{PLAIN} plain requests answered 200 in full; {ended_unavailable}/{STREAMS} streams ended with an unavailable error frame"
    );
    println!(
        "  observed: exit status 0 after {exited_after:.1?} (bound: the deadline plus {TRACKED_WORK_WAIT:?} for tracked work)"
    );
}
