//! Faults injected into the running binary under load, each test printing what was injected and
//! what was observed: Postgres stopped for ten seconds (spec §1.6 `unavailable`, §5.8), and
//! SIGTERM while plain requests and chat streams are in flight (spec §10.5).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::events::SseReader;
use crate::fakes::{FakeProvider, OK_TEXT};
use crate::helpers::{
    ServerProcess, TempDir, TestDatabase, WatchedStream, complete_frames, eventually, post_json, postgres_under_test,
};

/// A Postgres server of the test's own (`scripts/throwaway-postgres`), which it can stop and
/// start again without touching the server the rest of the suite uses. Removed on drop.
struct OwnPostgres {
    url: String,
    dir: String,
}

impl OwnPostgres {
    fn script(args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/throwaway-postgres");
        let output = Command::new(script).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "throwaway-postgres {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn start() -> Self {
        let printed = Self::script(&["start"]);
        let var = |name: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {printed:?}"))
                .to_string()
        };
        Self {
            url: var("TEST_DATABASE_URL"),
            dir: var("PG_THROWAWAY_DIR"),
        }
    }

    /// Stops the server (a fast shutdown: sessions ended, committed data kept).
    async fn stop(&self) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::script(&["pause", &dir]))
            .await
            .unwrap();
    }

    /// Starts it again on the same port and data.
    async fn start_again(&self) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::script(&["resume", &dir]))
            .await
            .unwrap();
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        Self::script(&["stop", &self.dir]);
    }
}

/// One answer the load received: when it was sent (from the start of the test), how long it
/// took, its status (`0`: no HTTP answer at all) and what came with it.
#[derive(Debug, Clone)]
struct Answer {
    what: String,
    /// A streamed chat completion (OpenAI error shape, error frames), not a REST call.
    chat: bool,
    sent: Duration,
    took: Duration,
    status: u16,
    retry_after: Option<String>,
    /// `x-session-id` of a chat answer.
    session: Option<String>,
    body: String,
}

/// Clients creating and reading agents, and clients streaming chat completions, as fast as the
/// server answers, until told to stop. Keeps every answer and the names of the agents whose
/// creation was answered `201`.
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    created: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, key: &str, (rest, chat): (usize, usize), t0: Instant) -> Self {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let created = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // Far above any answer time the test accepts, so that a hang shows as a slow answer.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut clients: Vec<tokio::task::JoinHandle<()>> = (0..chat)
            .map(|i| {
                let (answers, stop) = (answers.clone(), stop.clone());
                let (http, base, key) = (http.clone(), base.to_string(), key.to_string());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let turn = http
                            .post(format!("{base}/v1/chat/completions"))
                            .bearer_auth(&key)
                            .json(&json!({
                                "model": "mock/echo", "stream": true,
                                "messages": [{"role": "user", "content": format!("chat {i} turn {n}")}],
                            }));
                        let answer = send(turn, format!("chat stream {i}-{n}"), t0).await;
                        answers.lock().unwrap().push(Answer { chat: true, ..answer });
                    }
                })
            })
            .collect();
        clients.extend((0..rest).map(|i| {
            let (answers, created, stop) = (answers.clone(), created.clone(), stop.clone());
            let (http, base, key) = (http.clone(), base.to_string(), key.to_string());
            tokio::spawn(async move {
                let (mut n, mut last) = (0, None);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("load-{i}-{n}");
                    let create = http
                        .post(format!("{base}/v1/agents"))
                        .bearer_auth(&key)
                        .json(&json!({"name": name, "model": "mock/echo"}));
                    let answer = send(create, format!("POST agent {name}"), t0).await;
                    if answer.status == 201 {
                        created.lock().unwrap().push(name.clone());
                        last = Some(name);
                    }
                    answers.lock().unwrap().push(answer);
                    // Reads the newest agent this client created (a refused create made none).
                    if let Some(name) = &last {
                        let read = http.get(format!("{base}/v1/agents/{name}")).bearer_auth(&key);
                        let answer = send(read, format!("GET agent {name}"), t0).await;
                        answers.lock().unwrap().push(answer);
                    }
                }
            })
        }));
        Self {
            answers,
            created,
            stop,
            clients,
        }
    }

    fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    async fn finish(self) -> (Vec<Answer>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        let created = self.created.lock().unwrap().clone();
        (answers, created)
    }
}

async fn send(request: reqwest::RequestBuilder, what: String, t0: Instant) -> Answer {
    let sent = t0.elapsed();
    let started = Instant::now();
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let session = response
                .headers()
                .get("x-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.text().await.unwrap_or_default();
            Answer {
                what,
                chat: false,
                sent,
                took: started.elapsed(),
                status,
                retry_after,
                session,
                body,
            }
        }
        Err(e) => Answer {
            what,
            chat: false,
            sent,
            took: started.elapsed(),
            status: 0,
            retry_after: None,
            session: None,
            body: e.to_string(),
        },
    }
}

/// One line per answer, for failure messages.
fn describe<'a>(answers: impl IntoIterator<Item = &'a Answer>) -> String {
    answers
        .into_iter()
        .map(|a| {
            format!(
                "{}: {} sent at {:.1?}, took {:.1?}: {}",
                a.what, a.status, a.sent, a.took, a.body
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A `2xx`; for a chat stream, one that ended with `[DONE]`.
    Served,
    /// `503 unavailable` with `Retry-After: 1` in the path's error shape (spec §1.6, §3.11), or a
    /// chat stream that ended with an `unavailable` error frame.
    Unavailable,
    /// Anything else: a `500`, a hang, a cut connection, a wrong shape.
    Wrong,
}

fn verdict(answer: &Answer) -> Verdict {
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let refused = answer.status == 503 && answer.retry_after.as_deref() == Some("1");
    if !answer.chat {
        return match answer.status {
            200..=299 => Verdict::Served,
            503 if refused && body["code"] == "unavailable" && body["error"] == "service unavailable" => {
                Verdict::Unavailable
            }
            _ => Verdict::Wrong,
        };
    }
    if answer.status == 503 {
        return if refused && body["error"]["code"] == "unavailable" && body["error"]["type"] == "api_error" {
            Verdict::Unavailable
        } else {
            Verdict::Wrong
        };
    }
    let frames = complete_frames(&answer.body);
    let last: Value = frames
        .last()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or(Value::Null);
    match (answer.status, frames.last().map(String::as_str)) {
        (200, Some("[DONE]")) => Verdict::Served,
        (200, Some(_)) if last["error"]["code"] == "unavailable" => Verdict::Unavailable,
        _ => Verdict::Wrong,
    }
}

fn success(answer: &Answer) -> bool {
    verdict(answer) == Verdict::Served
}

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
    let key = server.stdout_lines.last().cloned().expect("a sandbox key on stdout");
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
    let key = server.stdout_lines.last().cloned().expect("a sandbox key on stdout");
    for (name, model) in [("steady", "openai:pace-250"), ("talker", "openai:slow")] {
        let created = post_json(&base, "/v1/agents", &key, json!({"name": name, "model": model})).await;
        assert_eq!(created.status(), 201);
    }

    // Streams stay open until the server ends them; plain answers are awaited in full.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let opened = futures_util::future::join_all((0..STREAMS).map(|i| {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({
                "model": "talker", "stream": true,
                "messages": [{"role": "user", "content": format!("stream {i}, keep talking")}],
            }))
            .send()
    }))
    .await;
    let mut streams: Vec<WatchedStream> = opened.into_iter().map(|r| WatchedStream::watch(r.unwrap())).collect();
    let talking = eventually(Duration::from_secs(30), || async {
        streams.iter().all(|s| s.content().contains("tick"))
    })
    .await;
    assert!(talking, "not every stream received content");
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
