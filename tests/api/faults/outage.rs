//! Postgres stopped for ten seconds under load (spec §1.6 `unavailable`, §5.8): prompt `503`s,
//! recovery without a restart, nothing committed lost.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::load::{Answer, Load, Verdict, describe, success, verdict};
use super::postgres::OwnPostgres;
use crate::events::SseReader;
use crate::helpers::{ServerProcess, TempDir, eventually, post_json, postgres_under_test};

/// The pool's longest wait for a connection, as the test configures it (`database.acquire_timeout`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// An answer during the outage waits for a connection once, at most `ACQUIRE_TIMEOUT`, and gets
/// this much more for everything else on a loaded machine (the rate limiter's look at the
/// database, at most 1 s, included).
const MARGIN: Duration = Duration::from_secs(3);
/// How long Postgres stays stopped.
const OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_answers_503_at_once_and_recovers_by_itself() {
    if !postgres_under_test() {
        // The embedded SQLite file is opened by the server's own process and cannot go away
        // while it runs; a database outage exists only with a database server.
        println!("fault: database outage: not injected (SQLite has no database server to stop)");
        return;
    }
    let postgres = tokio::task::spawn_blocking(OwnPostgres::start).await.unwrap();
    let dir = TempDir::new();
    let config = dir.0.join("polpo.toml");
    // Leases short enough that a task whose lease lapsed while the database was away is
    // reclaimed soon after it is back.
    std::fs::write(
        &config,
        format!(
            "[database]\nacquire_timeout = \"{}s\"\n\n[workers]\nlease_duration = \"3s\"\nheartbeat_interval = \"1s\"\n",
            ACQUIRE_TIMEOUT.as_secs()
        ),
    )
    .unwrap();
    let mut server = ServerProcess::start(
        &dir.0,
        &[
            ("DATABASE_URL", postgres.url.as_str()),
            ("POLPO_CONFIG", config.to_str().unwrap()),
        ],
    );
    let base = server.base_url.clone();
    let key = server.key();
    let t0 = Instant::now();

    // A task whose attempt (a slow echo of its brief, about four seconds) is running when the
    // database goes away, and an event stream open across the outage. The attempt either
    // records its result once the database is back or, its lease lapsed, runs again (spec §5.8):
    // either way the task ends done.
    let created = post_json(
        &base,
        "/v1/agents",
        &key,
        json!({"name": "worker", "model": "mock/slow-echo"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let mut events = SseReader::open(&base, &key, "/v1/events", None).await;
    let load = Load::start(&base, &key, (5, 2), t0);
    let warmed = eventually(Duration::from_secs(15), || async {
        load.answers().iter().filter(|a| success(a)).count() >= 30
    })
    .await;
    assert!(
        warmed,
        "the load got no answers before the outage: {:?}",
        load.answers()
    );
    let brief = "word ".repeat(80);
    let task = post_json(
        &base,
        "/v1/tasks",
        &key,
        json!({"title": "outlast the outage", "assignTo": "worker", "description": brief}),
    )
    .await;
    assert_eq!(task.status(), 201);
    let task: Value = task.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap().to_string();
    let task_status = || async {
        let response = crate::helpers::client()
            .get(format!("{base}/v1/tasks/{task_id}"))
            .bearer_auth(&key)
            .send()
            .await;
        match response {
            Ok(r) if r.status() == 200 => r.json::<Value>().await.unwrap()["status"].as_str().unwrap().to_string(),
            _ => String::new(),
        }
    };
    let running = eventually(Duration::from_secs(10), || async {
        ["assigned", "in_progress"].contains(&task_status().await.as_str())
    })
    .await;
    assert!(running, "the task never started: {}", task_status().await);

    // The fault: Postgres stopped for ten seconds.
    let stopping = t0.elapsed();
    postgres.stop().await;
    let down = t0.elapsed();
    tokio::time::sleep(OUTAGE.saturating_sub(down - stopping)).await;
    let restarting = t0.elapsed();
    postgres.start_again().await;
    let up = t0.elapsed();

    // Recovery: the server answers again by itself, and the load is served again.
    let ready = eventually(Duration::from_secs(15), || async {
        crate::helpers::client()
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "/ready did not recover within 15 s of Postgres being back");
    let ready_after = t0.elapsed() - up;
    let served_again = eventually(Duration::from_secs(15), || async {
        load.answers().iter().filter(|a| a.sent > up && success(a)).count() >= 10
    })
    .await;
    let (answers, created) = load.finish().await;
    assert!(served_again, "the load was not served again after the outage");
    let recovered_after = answers
        .iter()
        .filter(|a| a.sent > up && success(a))
        .map(|a| a.sent + a.took)
        .min()
        .unwrap()
        - up;

    // Never anything but a success or `503 unavailable` (for a chat stream already answering,
    // its error frame): a dropped connection is not a 500, and no request is left unanswered.
    let wrong: Vec<&Answer> = answers.iter().filter(|a| verdict(a) == Verdict::Wrong).collect();
    assert!(
        wrong.is_empty(),
        "answers neither a success nor unavailable in the documented shape:\n{}",
        describe(wrong)
    );
    let unavailable = |a: &&Answer| verdict(a) == Verdict::Unavailable;
    // Requests sent while Postgres was stopping, stopped or starting are answered within the
    // bound: one wait for a connection, and the margin.
    let during: Vec<&Answer> = answers.iter().filter(|a| a.sent >= stopping && a.sent < up).collect();
    let slowest = during.iter().map(|a| a.took).max().unwrap_or_default();
    let too_slow: Vec<&Answer> = during
        .iter()
        .copied()
        .filter(|a| a.took > ACQUIRE_TIMEOUT + MARGIN)
        .collect();
    assert!(
        too_slow.is_empty(),
        "answers slower than the acquire timeout ({ACQUIRE_TIMEOUT:?}) plus {MARGIN:?}:\n{}",
        describe(too_slow)
    );
    let refused_while_down = answers
        .iter()
        .filter(|a| unavailable(a) && a.sent >= down && a.sent + a.took <= restarting)
        .count();
    assert!(
        refused_while_down > 0,
        "no request was answered unavailable while Postgres was down"
    );
    let succeeded_while_down = answers
        .iter()
        .filter(|a| success(a) && a.sent >= down && a.sent + a.took <= restarting)
        .count();
    assert_eq!(succeeded_while_down, 0, "a request succeeded with Postgres down");

    // Nothing answered 201 was lost.
    let http = crate::helpers::client();
    let mut missing = Vec::new();
    for name in &created {
        let response = http
            .get(format!("{base}/v1/agents/{name}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            missing.push((name.clone(), response.status()));
        }
    }
    assert!(missing.is_empty(), "agents answered 201 and then lost: {missing:?}");
    // Nor any chat turn that ended with [DONE]: its session holds the question and the reply.
    let turns: Vec<&String> = answers
        .iter()
        .filter(|a| a.chat && success(a))
        .filter_map(|a| a.session.as_ref())
        .collect();
    for session in &turns {
        let response = http
            .get(format!("{base}/v1/chat/sessions/{session}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 || body["messageCount"] != 2 {
            missing.push((format!("session {session}: {body}"), status));
        }
    }
    assert!(
        missing.is_empty(),
        "chat turns answered in full and then lost: {missing:?}"
    );
    assert_eq!(
        turns.len(),
        answers.iter().filter(|a| a.chat && success(a)).count(),
        "a served chat turn without its session id"
    );

    // The task held when the database went away is finished, and the event stream open
    // across the outage tells of it.
    let done = eventually(Duration::from_secs(20), || async { task_status().await == "done" }).await;
    assert!(
        done,
        "the task did not finish after the outage: {}",
        task_status().await
    );
    let task_done_after = t0.elapsed() - up;
    let (mut told, mut told_done) = (Vec::new(), false);
    while let Some(frame) = events.next(Duration::from_secs(5)).await {
        if frame.data.contains(&task_id) {
            told_done = frame.event.as_deref() == Some("task:transition") && frame.data.contains("\"done\"");
            told.push(frame.event.unwrap_or_default());
            if told_done {
                break;
            }
        }
    }
    assert!(
        told_done,
        "the event stream opened before the outage did not report the task done: {told:?}"
    );
    // The loops that tick on their own met the outage, said so, and kept going.
    let log = server.log();
    let logged = |pattern: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(pattern))
            .count()
    };
    let worker_failures = [
        (
            "task runner",
            logged("task claim failed") + logged("task timers failed"),
        ),
        ("mission driver", logged("mission driver pass failed")),
        ("webhook worker", logged("webhook worker cannot read webhooks")),
    ];
    for (worker, failures) in worker_failures {
        assert!(failures > 0, "the {worker} logged no failure during the outage:\n{log}");
    }
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(15)))
        .expect("the server exited after SIGTERM");
    assert_eq!(status.code(), Some(0));

    println!(
        "fault: database outage under load (Postgres; 5 clients creating and reading agents, 2 streaming chat completions)"
    );
    println!(
        "  injected: Postgres fast shutdown at {stopping:.1?} (down at {down:.1?}), started again at {restarting:.1?} (up at {up:.1?})"
    );
    println!(
        "  observed: {} answers in all ({} chat streams), each a success or unavailable; {} sent while Postgres was stopping, down or starting: {} answered unavailable ({refused_while_down} of them with Postgres down), {} served, slowest {slowest:.1?} (bound {:?})",
        answers.len(),
        answers.iter().filter(|a| a.chat).count(),
        during.len(),
        during.iter().filter(|a| unavailable(a)).count(),
        during.iter().filter(|a| success(a)).count(),
        ACQUIRE_TIMEOUT + MARGIN
    );
    println!(
        "  observed: /ready 200 {ready_after:.1?} after Postgres was up; the load served again after {recovered_after:.1?}"
    );
    println!(
        "  observed: {} agents answered 201 and {} chat turns answered in full, all present; the task running when Postgres stopped done {task_done_after:.1?} after it was up, its events on the stream open across the outage: {}",
        created.len(),
        turns.len(),
        told.join(", ")
    );
    println!(
        "  observed: failed rounds logged and retried: {}; exit status 0 on SIGTERM afterwards",
        worker_failures.map(|(w, n)| format!("{w} {n}")).join(", ")
    );
}
