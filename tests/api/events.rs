//! Spec §7: the event stream and history: order, resumption, filters, scoping, slow subscribers,
//! revocation, retention resets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use polpo_api::config::Config;
use polpo_api::events::{self, Event};
use polpo_api::scope::{Environment, Scope};
use polpo_api::store::{self, Backend};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{TestApp, client, eventually};

/// One SSE frame as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<i64>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads frames from a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
    pub ended: bool,
}

impl SseReader {
    pub async fn open(base: &str, key: &str, path_and_query: &str, last_event_id: Option<i64>) -> Self {
        let mut request = client()
            .get(format!("{base}{path_and_query}"))
            .bearer_auth(key)
            .timeout(Duration::from_secs(120));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
        Self {
            response,
            buffer: String::new(),
            ended: false,
        }
    }

    /// The next frame with data (comments and `retry:` skipped); `None` on timeout or end.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        frame.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        frame.event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        frame.data = v.to_string();
                    }
                }
                if !frame.data.is_empty() {
                    return Some(frame);
                }
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(_) => {
                    self.ended = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Exactly `n` frames, each within a generous deadline.
    pub async fn take(&mut self, n: usize) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(n);
        while frames.len() < n {
            match self.next(Duration::from_secs(10)).await {
                Some(frame) => frames.push(frame),
                None => panic!("stream stalled after {} of {n} frames", frames.len()),
            }
        }
        frames
    }
}

fn test_scope() -> Scope {
    Scope {
        project: "acme".into(),
        environment: Environment::Test,
    }
}

/// Writes `n` events to the scope's log in transactions of up to 100, as the server does.
pub async fn produce(app: &TestApp, scope: &Scope, n: usize, user: &str) {
    produce_paced(app, scope, n, user, "", |_| true).await;
}

/// As [`produce`], with `padding` added to each title, and waiting before each transaction
/// until `ready(events written so far)` says so.
async fn produce_paced(
    app: &TestApp,
    scope: &Scope,
    n: usize,
    user: &str,
    padding: &str,
    ready: impl Fn(usize) -> bool,
) {
    let mut left = n;
    while left > 0 {
        let written = n - left;
        assert!(
            eventually(Duration::from_secs(20), || async { ready(written) }).await,
            "the reading subscriber fell behind"
        );
        let batch = left.min(100);
        let events: Vec<Event> = (0..batch)
            .map(|i| Event::SessionCreated {
                session_id: format!("sess_{i}"),
                agent: None,
                title: format!("event {i}{padding}"),
                user: Some(user.to_string()),
            })
            .collect();
        let mut change = app.state.runtime.change(scope).await.unwrap();
        events.into_iter().for_each(|e| change.emit(e));
        change.commit().await.unwrap();
        left -= batch;
    }
}

async fn chat(app: &TestApp, key: &str, text: &str) {
    let response = app
        .post(
            "/v1/chat/completions",
            key,
            json!({"model": "mock/echo", "messages": [{"role": "user", "content": text}]}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
}

#[tokio::test]
async fn a_subscriber_gets_every_event_once_in_order_and_resumes_exactly() {
    let app = TestApp::spawn().await;
    let base = app.serve().await;
    let mut watcher = SseReader::open(&base, &app.test_key, "/v1/events", None).await;
    let mut early = SseReader::open(&base, &app.test_key, "/v1/events", None).await;

    chat(&app, &app.test_key, "one").await;
    let first = early.take(4).await;
    let names: Vec<&str> = first.iter().map(|f| f.event.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "session:created",
            "message:added",
            "message:added",
            "completion:finished"
        ]
    );
    let payload: Value = serde_json::from_str(&first[3].data).unwrap();
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(payload["model"], "mock/echo");
    let last_seen = first[3].id.unwrap();
    drop(early);

    // Missed while away: two more turns; then resume and also receive what comes live.
    chat(&app, &app.test_key, "two").await;
    chat(&app, &app.test_key, "three").await;
    let mut resumed = SseReader::open(&base, &app.test_key, "/v1/events", Some(last_seen)).await;
    let missed = resumed.take(8).await;
    assert_eq!(
        missed.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        ((last_seen + 1)..=(last_seen + 8)).collect::<Vec<_>>()
    );
    chat(&app, &app.test_key, "four").await;
    let live = resumed.take(4).await;
    assert_eq!(live[0].id, Some(last_seen + 9));
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_none(),
        "no duplicates"
    );

    // The subscriber connected throughout saw all 16, each once, in order.
    let all = watcher.take(16).await;
    let ids: Vec<i64> = all.iter().map(|f| f.id.unwrap()).collect();
    assert_eq!(ids, (1..=16).collect::<Vec<_>>());
    // The ?lastEventId= form works as the header does.
    let mut by_query = SseReader::open(&base, &app.test_key, &format!("/v1/events?lastEventId={}", 14), None).await;
    assert_eq!(
        by_query.take(2).await.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        [15, 16]
    );
}

#[tokio::test]
async fn an_earlier_number_cannot_commit_after_a_later_one() {
    let app = TestApp::spawn().await;
    let base = app.serve().await;
    let scope = test_scope();
    let mut live = SseReader::open(&base, &app.test_key, "/v1/events", None).await;
    let event = |title: &str| Event::SessionCreated {
        session_id: "sess_x".into(),
        agent: None,
        title: title.into(),
        user: None,
    };

    // Transaction A takes number 1 and holds it open.
    let mut a = app.db.pool.begin().await.unwrap();
    let (name, payload) = event("A").parts();
    let mut script = polpo_api::store::script::Script::default();
    polpo_api::store::events::append(
        &mut script,
        &scope,
        vec![(name, payload.to_string())],
        polpo_api::clock::now_ms(),
    );
    assert!(script.run(&mut a).await.unwrap());
    // A change through the write path, started later, cannot take a number (and commit) until
    // A ends.
    let runtime = app.state.runtime.clone();
    let b = tokio::spawn(async move {
        let mut b = runtime.change(&test_scope()).await.unwrap();
        b.emit(event("B"));
        b.commit().await.unwrap();
    });
    let b_done_early = eventually(Duration::from_millis(500), || async { b.is_finished() }).await;
    assert!(!b_done_early, "B committed while A still held an earlier number");
    a.commit().await.unwrap();
    b.await.unwrap();

    let frames = live.take(2).await;
    assert_eq!(
        frames
            .iter()
            .map(|f| (f.id.unwrap(), f.data.contains("\"A\"")))
            .collect::<Vec<_>>(),
        [(1, true), (2, false)]
    );
    let mut resumed = SseReader::open(&base, &app.test_key, "/v1/events", Some(0)).await;
    assert_eq!(
        resumed.take(2).await.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[tokio::test]
async fn filters_select_events_by_pattern() {
    let app = TestApp::spawn().await;
    let base = app.serve().await;
    let mut sessions_only = SseReader::open(&base, &app.test_key, "/v1/events?filter=session:*", None).await;
    let mut finished = SseReader::open(
        &base,
        &app.test_key,
        "/v1/events?filter=*:finished,%20session:created",
        None,
    )
    .await;
    chat(&app, &app.test_key, "hello").await;
    assert_eq!(sessions_only.take(1).await[0].event.as_deref(), Some("session:created"));
    assert!(sessions_only.next(Duration::from_millis(300)).await.is_none());
    let both = finished.take(2).await;
    assert_eq!(
        both.iter().map(|f| f.event.clone().unwrap()).collect::<Vec<_>>(),
        ["session:created", "completion:finished"]
    );

    for (filter, expected) in [
        ("message:added", vec!["message:added", "message:added"]),
        (
            "*:added,completion:*",
            vec!["message:added", "message:added", "completion:finished"],
        ),
        ("task:*", vec![]),
        (
            "*",
            vec![
                "session:created",
                "message:added",
                "message:added",
                "completion:finished",
            ],
        ),
    ] {
        let history = app
            .get(&format!("/v1/events/history?filter={filter}"), &app.test_key)
            .await;
        assert_eq!(history.status, StatusCode::OK);
        let names: Vec<String> = history
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, expected, "{filter}");
    }
    for bad in ["Task:*", "task:%3F", &"a".repeat(101)] {
        assert_eq!(
            app.get(&format!("/v1/events?filter={bad}"), &app.test_key).await.status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            app.get(&format!("/v1/events/history?filter={bad}"), &app.test_key)
                .await
                .status,
            StatusCode::BAD_REQUEST
        );
    }
}

#[tokio::test]
async fn live_and_test_events_never_cross() {
    let app = TestApp::spawn().await;
    let base = app.serve().await;
    let other = app.key_of("globex", Environment::Test).await;
    let mut test_stream = SseReader::open(&base, &app.test_key, "/v1/events", None).await;
    let mut other_stream = SseReader::open(&base, &other, "/v1/events", None).await;
    chat(&app, &app.live_key, "live one").await;
    chat(&app, &app.live_key, "live two").await;
    chat(&app, &app.test_key, "test one").await;
    let frames = test_stream.take(4).await;
    assert_eq!(frames[0].id, Some(1), "the test scope numbers its own events");
    assert!(test_stream.next(Duration::from_millis(300)).await.is_none());
    assert!(
        other_stream.next(Duration::from_millis(300)).await.is_none(),
        "another project sees nothing"
    );
    // Another project's id is no resume point here: past this scope's latest is refused …
    let response = app
        .call("GET", "/v1/events?lastEventId=8", Some(&app.test_key), None)
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    // … and within range it replays only this scope's own events.
    let history = app.get("/v1/events/history?after=0", &other).await.json();
    assert_eq!(history, json!([]));
    let live_history = app.get("/v1/events/history", &app.live_key).await.json();
    assert_eq!(live_history.as_array().unwrap().len(), 8);
    assert_eq!(
        app.get("/v1/events/history", &app.test_key)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn history_pages_and_reports_retention_resets() {
    let app = TestApp::spawn().await;
    let scope = test_scope();
    produce(&app, &scope, 25, "u").await;
    let page = app.get("/v1/events/history?limit=10", &app.test_key).await;
    let items = page.json();
    assert_eq!(items.as_array().unwrap().len(), 10);
    assert_eq!(items[0]["id"], 1);
    assert_eq!(items[0]["event"], "session:created");
    assert!(items[0]["timestamp"].is_string() && items[0]["data"]["title"] == "event 0");
    assert_eq!(page.header("x-next-cursor"), Some("10"));
    let rest = app.get("/v1/events/history?after=20&limit=10", &app.test_key).await;
    assert_eq!(rest.json().as_array().unwrap().len(), 5);
    assert!(rest.header("x-next-cursor").is_none());
    for bad in ["after=-1", "after=x", "limit=0", "limit=1001", "colour=red"] {
        assert_eq!(
            app.get(&format!("/v1/events/history?{bad}"), &app.test_key)
                .await
                .status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }

    // Retention deletes the first 25; a reader resuming after 5 is told and starts at the oldest.
    store::purge_batch(&app.db.pool, store::events::PURGE, polpo_api::clock::now_ms() + 1, 1000)
        .await
        .unwrap();
    produce(&app, &scope, 3, "u").await;
    let reset = app.get("/v1/events/history?after=5", &app.test_key).await;
    assert_eq!(reset.header("x-events-reset"), Some("true"));
    assert_eq!(reset.json()[0]["id"], 26);
    assert!(
        app.get("/v1/events/history?after=26", &app.test_key)
            .await
            .header("x-events-reset")
            .is_none()
    );

    let base = app.serve().await;
    let mut stream = SseReader::open(&base, &app.test_key, "/v1/events", Some(5)).await;
    let first = stream.take(1).await.remove(0);
    assert_eq!(first.event.as_deref(), Some("reset"));
    assert_eq!(first.id, None, "reset carries no id");
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["reason"], "expired");
    assert_eq!(data["oldestAvailable"], 26);
    assert_eq!(
        stream.take(3).await.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        [26, 27, 28]
    );
}

/// The plans of `statements` (parameters written in) on `app`'s database, each as the lines
/// its `EXPLAIN` gives. On PostgreSQL sequential scans are ruled out first: small tables are
/// read whole by choice, and with that ruled out the plan shows whether an index serves the
/// statement (the connection leaves the pool afterwards).
async fn plans(app: &TestApp, statements: &[String]) -> Vec<String> {
    let postgres = app.db.backend == Backend::Postgres;
    let mut conn = app.db.pool.acquire().await.unwrap();
    if postgres {
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let mut plans = Vec::new();
    for sql in statements {
        let (explain, column) = if postgres {
            (format!("EXPLAIN {sql}"), "QUERY PLAN")
        } else {
            (format!("EXPLAIN QUERY PLAN {sql}"), "detail")
        };
        let rows = sqlx::query(&explain).fetch_all(&mut *conn).await.unwrap();
        let lines: Vec<String> = rows.iter().map(|row| row.get::<String, _>(column)).collect();
        plans.push(lines.join("\n"));
    }
    conn.detach();
    plans
}

/// The purge that runs every minute deletes what is past retention through an index on either
/// database: a statement that read whole tables would take longer as they grow, and on SQLite it
/// holds the write lock, and every chat turn's commit waits, for all that time.
#[tokio::test]
async fn every_background_purge_finds_its_rows_through_an_index() {
    let app = TestApp::spawn().await;
    let statements: Vec<String> = [
        store::events::PURGE,
        store::webhooks::PURGE_DELIVERIES,
        store::idempotency::PURGE,
        store::chat::PURGE_EMPTY_SESSIONS,
    ]
    .iter()
    .map(|sql| sql.replace("$1", "0").replace("$2", "1"))
    .collect();
    let postgres = app.db.backend == Backend::Postgres;
    for (sql, plan) in statements.iter().zip(plans(&app, &statements).await) {
        // A search of an index by its key, not a read of a whole table or a whole index.
        let searched = if postgres {
            plan.contains("Index Cond") && !plan.contains("Seq Scan")
        } else {
            plan.contains("SEARCH") && !plan.contains("SCAN ")
        };
        assert!(searched, "{sql}:\n{plan}");
    }
}

/// A webhook's next delivery is found among its pending deliveries alone, through their own
/// index, on either database: the ones it has had are kept for the events' retention, and read
/// in order until the first pending one, they made each delivery slower than the one before.
#[tokio::test]
async fn a_webhooks_next_delivery_is_found_among_the_pending_ones_alone() {
    let app = TestApp::spawn().await;
    let sql = format!("SELECT seq FROM webhook_deliveries {}", store::webhooks::HEAD_WHERE)
        .replace("$1", "'acme'")
        .replace("$2", "'test'")
        .replace("$3", "'whk_1'");
    let plan = plans(&app, &[sql]).await.remove(0);
    assert!(plan.contains("webhook_deliveries_head_idx"), "{plan}");
}

/// The purge deletes what is past retention a few rows per statement, so that on SQLite the
/// turns' commits go between its statements, and it goes on until nothing expired is left:
/// seven expired rows of each kind with three per statement, six empty sessions (a last
/// statement that finds none), and nothing younger or still in use.
#[tokio::test]
async fn the_purge_deletes_every_expired_row_a_few_per_statement_and_nothing_else() {
    let app = TestApp::spawn_idle().await;
    let now = polpo_api::clock::now_ms();
    let insert_event = "INSERT INTO events (project, environment, seq, name, payload, created_at)
                        VALUES ('acme', 'test', $1, 'session:created', '{}', $2)";
    let insert_delivery = "INSERT INTO webhook_deliveries (project, environment, webhook_id, seq, event,
                           payload, status, attempts, next_attempt_at, lease_until, created_at)
                           VALUES ('acme', 'test', 'whk_1', $1, 'session:created', '{}', 'delivered', 1, 0, 0, $2)";
    let insert_record = "INSERT INTO idempotency_records (project, environment, idem_key, fingerprint, state,
                         token, locked_at, created_at)
                         VALUES ('acme', 'test', $1, 'f', 'done', 't', 0, $2)";
    let insert_session = "INSERT INTO chat_sessions (project, environment, id, metadata, title, message_count,
                          created_at, updated_at)
                          VALUES ('acme', 'test', $1, '{}', '', $2, $3, $3)";
    for i in 0..9_i64 {
        // The first seven are past every retention, the last two are new.
        let at = if i < 7 { 1 } else { now };
        for sql in [insert_event, insert_delivery] {
            sqlx::query(sql).bind(i).bind(at).execute(&app.db.pool).await.unwrap();
        }
        sqlx::query(insert_record)
            .bind(format!("key-{i}"))
            .bind(at)
            .execute(&app.db.pool)
            .await
            .unwrap();
        // Six old empty sessions, one old session with a message, two new empty ones.
        let messages = i64::from(i == 6);
        sqlx::query(insert_session)
            .bind(format!("ses_{i}"))
            .bind(messages)
            .bind(at)
            .execute(&app.db.pool)
            .await
            .unwrap();
    }

    app.state.runtime.purge_expired(3).await;

    for (table, kept) in [
        ("events", "seq"),
        ("webhook_deliveries", "seq"),
        ("idempotency_records", "idem_key"),
        ("chat_sessions", "id"),
    ] {
        let sql = format!("SELECT CAST({kept} AS TEXT) FROM {table} ORDER BY created_at, {kept}");
        let left: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&app.db.pool).await.unwrap();
        let expected: Vec<String> = match table {
            "idempotency_records" => vec!["key-7".into(), "key-8".into()],
            "chat_sessions" => vec!["ses_6".into(), "ses_7".into(), "ses_8".into()],
            _ => vec!["7".into(), "8".into()],
        };
        assert_eq!(left, expected, "{table}");
    }
}

#[tokio::test]
async fn a_revoked_key_ends_its_event_streams() {
    let app = TestApp::spawn().await;
    let base = app.serve().await;
    let mut stream = SseReader::open(&base, &app.test_key, "/v1/events", None).await;
    let hash = polpo_api::auth::key::hash(&app.test_key);
    let row = polpo_api::store::keys::find_by_hash(&app.db.pool, &hash)
        .await
        .unwrap()
        .unwrap();
    polpo_api::auth::admin::revoke_key(&app.db, &row.id).await.unwrap();
    assert!(stream.next(Duration::from_secs(5)).await.is_none());
    assert!(stream.ended, "the stream did not close within 5 s of the revocation");
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_subscriber_that_reads_nothing_is_dropped_without_slowing_others() {
    let mut config = Config::default();
    config.events.subscriber_buffer = 1000;
    let app = TestApp::spawn_with(config).await;
    let base = app.serve().await;
    let addr = base.trim_start_matches("http://").to_string();

    // A client with a tiny receive window that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\r\n",
        app.test_key
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, request.as_bytes())
        .await
        .unwrap();
    let mut reader = SseReader::open(&base, &app.test_key, "/v1/events", None).await;

    let before = rss_kib();
    // 2 KB events: 20 MB in all, far more than socket buffers hold for the stalled client.
    let padding = "x".repeat(2000);
    let consumed = AtomicUsize::new(0);
    let producer = async {
        let scope = test_scope();
        // Paced to the reading subscriber, which keeps up; the stalled one cannot.
        produce_paced(&app, &scope, 10_000, "u", &padding, |written| {
            written <= consumed.load(Ordering::SeqCst) + 200
        })
        .await;
    };
    let consumer = async {
        let mut last = 0;
        for _ in 0..10_000 {
            let frame = reader.take(1).await.remove(0);
            assert_eq!(frame.id.unwrap(), last + 1, "the reading subscriber missed events");
            last += 1;
            consumed.store(usize::try_from(last).unwrap(), Ordering::SeqCst);
        }
    };
    tokio::join!(producer, consumer);
    let after = rss_kib();
    println!("RSS before {before} KiB, after 10,000 events with a stalled subscriber {after} KiB");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "memory grew by {} KiB",
        after - before
    );

    // The stalled subscriber now reads: it gets at most what was buffered, then the end of the
    // response (the terminating chunk, or the connection closing).
    let mut received = Vec::new();
    let read_all = async {
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::io::AsyncReadExt::read(&mut stalled, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
            if received.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(20), read_all).await.is_ok(),
        "the stalled subscriber was never disconnected"
    );
    let text = String::from_utf8_lossy(&received);
    let delivered = text.matches("\nid: ").count() + usize::from(text.starts_with("id: "));
    assert!(
        delivered < 10_000,
        "the stalled subscriber was not dropped ({delivered} events delivered)"
    );
}

#[tokio::test]
async fn aliases_are_stored_with_their_own_numbers_and_filter_like_any_event() {
    let app = TestApp::spawn().await;
    let scope = test_scope();
    let usage = events::UsageCounts {
        prompt_tokens: 1,
        completion_tokens: 2,
        total_tokens: 3,
    };
    let batch = [
        Event::TaskTransition {
            task_id: "task_1".into(),
            from: "review".into(),
            to: "done".into(),
            task: json!({"id": "task_1"}),
        },
        Event::AgentFinished {
            task_id: "task_1".into(),
            agent: "a".into(),
            model: "mock/echo".into(),
            attempt: 1,
            duration_ms: 3,
            usage,
            error: None,
        },
    ];
    let mut change = app.state.runtime.change(&scope).await.unwrap();
    batch.into_iter().for_each(|e| change.emit(e));
    change.commit().await.unwrap();
    let all = app.get("/v1/events/history", &app.test_key).await.json();
    let listed: Vec<(i64, &str)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            (1, "task:transition"),
            (2, "task:completed"),
            (3, "agent:finished"),
            (4, "agent:completed")
        ]
    );
    assert_eq!(all[0]["data"], all[1]["data"], "an alias carries the same payload");
    for (filter, expected) in [
        ("*:completed", vec!["task:completed", "agent:completed"]),
        ("task:*", vec!["task:transition", "task:completed"]),
        ("agent:finished", vec!["agent:finished"]),
        (
            "task:transition,agent:finished",
            vec!["task:transition", "agent:finished"],
        ),
    ] {
        let history = app
            .get(&format!("/v1/events/history?filter={filter}"), &app.test_key)
            .await
            .json();
        let names: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, expected, "{filter}");
    }
}

#[tokio::test]
async fn browsers_can_carry_the_key_in_the_query_and_get_keep_alives() {
    let mut config = Config::default();
    config.events.keepalive = Duration::from_millis(100);
    let app = TestApp::spawn_with(config).await;
    let base = app.serve().await;
    let response = client()
        .get(format!("{base}/v1/events?apiKey={}", app.test_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let mut response = response;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains(": ping") {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            _ => panic!("no keep-alive comment in {text:?}"),
        }
    }
    assert!(text.starts_with("retry: 3000"), "{text:?}");
    // The query carrier is for the stream only.
    let history = client()
        .get(format!("{base}/v1/events/history?apiKey={}", app.test_key))
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 401);
}
