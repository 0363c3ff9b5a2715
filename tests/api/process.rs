//! The binary as operators run it: first start, the CLI, logs, several instances, shutdown.

use std::time::Duration;

use crate::helpers::{
    ServerProcess, TempDir, TestDatabase, cli, client, complete_frames, eventually, post_json, talking_streams,
};

#[tokio::test]
async fn a_fresh_start_prints_a_usable_sandbox_key_once() {
    // The README's run command: no DATABASE_URL, nothing installed, SQLite in the working directory.
    let dir = TempDir::new();
    let mut server = ServerProcess::start(&dir.0, &[]);
    let key = server.key();
    assert!(key.starts_with("sk_test_") && key.len() == 40, "{key}");
    assert!(dir.0.join("polpo.db").exists());

    let http = client();
    let response = http
        .get(format!("{}/v1/agents", server.base_url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let created = post_json(
        &server.base_url,
        "/v1/agents",
        &key,
        serde_json::json!({"name": "helper", "model": "mock/echo"}),
    )
    .await;
    assert_eq!(created.status(), 201);

    // A second serve on the same file refuses to start.
    let (code, _, stderr) = cli(&dir.0, None, &["serve", "--bind", "127.0.0.1:0"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("another polpo-api serve"), "{stderr}");

    assert_eq!(
        server.terminate(Duration::from_secs(10)).map(|s| s.code()),
        Some(Some(0))
    );
    assert_eq!(
        server.printed_at_exit(),
        vec![key.clone()],
        "stdout carries only the key"
    );
    // The next start finds the project and prints nothing.
    let mut server = ServerProcess::start(&dir.0, &[]);
    let response = http
        .get(format!("{}/v1/agents/helper", server.base_url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        server.terminate(Duration::from_secs(10)).map(|s| s.code()),
        Some(Some(0))
    );
    assert!(server.printed_at_exit().is_empty());
}

#[tokio::test]
async fn the_cli_manages_projects_and_keys() {
    let database = TestDatabase::new().await;
    let dir = &database.dir.0;
    let url = Some(database.url.as_str());
    let (code, out, err) = cli(dir, url, &["projects", "create", "acme"]);
    assert_eq!((code, out.as_str()), (0, "acme\n"), "{err}");
    assert_eq!(cli(dir, url, &["projects", "create", "acme"]).0, 1, "duplicate slug");
    assert_eq!(cli(dir, url, &["projects", "create", "Bad_Slug"]).0, 1);
    let (code, out, _) = cli(dir, url, &["projects", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("acme\t"));

    let (code, out, err) = cli(
        dir,
        url,
        &[
            "keys",
            "create",
            "--project",
            "acme",
            "--env",
            "live",
            "--name",
            "ci",
            "--expires-in",
            "90d",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let key = *lines.last().unwrap();
    assert!(key.starts_with("sk_live_") && key.len() == 40);
    let key_id = lines[0].split_whitespace().next().unwrap();
    assert!(key_id.starts_with("key_"));
    assert!(lines[0].contains(&key[..12]));

    let (code, listing, _) = cli(dir, url, &["keys", "list", "--project", "acme"]);
    assert_eq!(code, 0);
    assert!(listing.contains(key_id) && listing.contains("live") && listing.contains("ci"));
    assert!(!listing.contains(key), "the list never shows the key");
    assert!(!listing.contains(&polpo_api::auth::key::hash(key)), "nor its hash");

    assert_eq!(cli(dir, url, &["keys", "revoke", key_id]).0, 0);
    assert_eq!(cli(dir, url, &["keys", "revoke", "key_unknown"]).0, 1);
    assert_eq!(
        cli(dir, url, &["keys", "create", "--project", "ghost", "--env", "test"]).0,
        1
    );
    assert_eq!(
        cli(dir, url, &["keys", "create", "--project", "acme", "--env", "prod"]).0,
        2,
        "usage error"
    );
    assert_eq!(
        cli(
            dir,
            url,
            &[
                "keys",
                "create",
                "--project",
                "acme",
                "--env",
                "test",
                "--expires-in",
                "5ms"
            ]
        )
        .0,
        2
    );
    assert_eq!(cli(dir, url, &["migrate"]).0, 0);
}

#[tokio::test]
async fn no_plaintext_key_in_the_database_or_the_logs() {
    let database = TestDatabase::new().await;
    let dir = &database.dir.0;
    let url = database.url.as_str();
    let mut server = ServerProcess::start(dir, &[("DATABASE_URL", url)]);
    let first_key = server.key();
    cli(dir, Some(url), &["projects", "create", "acme"]);
    let (_, out, _) = cli(
        dir,
        Some(url),
        &["keys", "create", "--project", "acme", "--env", "live"],
    );
    let live_key = out.lines().last().unwrap().to_string();

    let http = client();
    for key in [&first_key, &live_key] {
        let base = &server.base_url;
        http.get(format!("{base}/v1/agents"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        http.get(format!("{base}/v1/nope"))
            .header("x-api-key", key.as_str())
            .send()
            .await
            .unwrap();
        http.post(format!("{base}/v1/agents"))
            .bearer_auth(key)
            .json(&serde_json::json!({"name": key}))
            .send()
            .await
            .unwrap();
        let mut corrupted = key.clone().into_bytes();
        corrupted[20] ^= 1;
        let corrupted = String::from_utf8(corrupted).unwrap();
        http.get(format!("{base}/v1/agents"))
            .bearer_auth(&corrupted)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        server.terminate(Duration::from_secs(10)).map(|s| s.code()),
        Some(Some(0))
    );

    let log = server.log();
    assert!(log.contains("refused credential"), "the log has the refusals: {log}");
    let dump = dump_database(&database).await;
    assert!(dump.contains(&first_key[..12]), "the dump is real: prefixes are stored");
    for key in [&first_key, &live_key] {
        assert!(!log.contains(key.as_str()), "key in the log");
        assert!(!log.contains(&key[12..]), "secret part of a key in the log");
        assert!(!dump.contains(key.as_str()), "key in the database");
        assert!(!dump.contains(&key[12..]), "secret part of a key in the database");
    }
}

/// Every byte the database holds: the SQLite files, or every row of every table on Postgres.
async fn dump_database(database: &TestDatabase) -> String {
    if !database.is_postgres() {
        let mut out = String::new();
        for entry in std::fs::read_dir(&database.dir.0).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().contains("polpo.db") {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
            }
        }
        return out;
    }
    let db = polpo_api::store::Db::connect(Some(&database.url), 1).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut out = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t"))
            .fetch_all(&db.pool)
            .await
            .unwrap();
        out.push_str(&rows.join("\n"));
    }
    out
}

/// The sandbox key one of two first-starting instances printed, waited for at most 10 s.
fn key_of_either(a: &mut ServerProcess, b: &mut ServerProcess) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(key) = a.printed_key().or_else(|| b.printed_key()) {
            return key;
        }
        assert!(std::time::Instant::now() < deadline, "neither instance printed a key");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two `serve` processes on one migrated Postgres database; `None` on SQLite.
fn two_instances(database: &TestDatabase) -> Option<(ServerProcess, ServerProcess)> {
    if !database.is_postgres() {
        return None;
    }
    let (dir, url) = (&database.dir.0, database.url.as_str());
    cli(dir, Some(url), &["migrate"]);
    Some((
        ServerProcess::start(dir, &[("DATABASE_URL", url)]),
        ServerProcess::start(dir, &[("DATABASE_URL", url)]),
    ))
}

#[tokio::test]
async fn two_instances_share_one_postgres() {
    let database = TestDatabase::new().await;
    // SQLite is single-instance by design; that refusal is covered by the fresh-start test.
    let Some((mut a, mut b)) = two_instances(&database) else {
        return;
    };
    let (dir, url) = (&database.dir.0, database.url.as_str());
    key_of_either(&mut a, &mut b);
    cli(dir, Some(url), &["projects", "create", "acme"]);
    let (_, out, _) = cli(
        dir,
        Some(url),
        &["keys", "create", "--project", "acme", "--env", "live"],
    );
    let key = out.lines().last().unwrap().to_string();
    let key_id = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let http = client();
    let created = post_json(
        &a.base_url,
        "/v1/agents",
        &key,
        serde_json::json!({"name": "shared", "model": "mock/echo"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let agent: serde_json::Value = created.json().await.unwrap();
    let seen: serde_json::Value = http
        .get(format!("{}/v1/agents/shared", b.base_url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen, agent, "B serves what A wrote");
    let dup = post_json(
        &b.base_url,
        "/v1/agents",
        &key,
        serde_json::json!({"name": "shared", "model": "mock/echo"}),
    )
    .await;
    assert_eq!(dup.status(), 409);

    // Both have the key cached; revoke it (through the CLI, as an operator would).
    assert_eq!(
        http.get(format!("{}/v1/agents", b.base_url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(cli(dir, Some(url), &["keys", "revoke", &key_id]).0, 0);
    let revoked = std::time::Instant::now();
    for server in [&a, &b] {
        let left = Duration::from_secs(5).saturating_sub(revoked.elapsed());
        let refused = eventually(left, || async {
            http.get(format!("{}/v1/agents", server.base_url))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
                == 401
        })
        .await;
        assert!(
            refused,
            "{} still accepted the key 5 s after its revocation",
            server.base_url
        );
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let database = TestDatabase::new().await;
    let mut server = ServerProcess::start(&database.dir.0, &[("DATABASE_URL", database.url.as_str())]);
    let http = client();
    assert_eq!(
        http.get(format!("{}/ready", server.base_url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let status = server
        .terminate(Duration::from_secs(10))
        .expect("exited within the deadline");
    assert_eq!(status.code(), Some(0));
    assert!(server.log().contains("shutting down"));
}

#[tokio::test]
async fn no_migrate_refuses_a_database_behind_the_schema() {
    let database = TestDatabase::new().await;
    let (code, _, stderr) = cli(
        &database.dir.0,
        Some(&database.url),
        &["serve", "--no-migrate", "--bind", "127.0.0.1:0"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("behind"), "{stderr}");
}

#[tokio::test]
async fn events_cross_instances_on_one_postgres() {
    use crate::events::SseReader;
    let database = TestDatabase::new().await;
    // One SQLite file serves one instance; there is no other instance to hear from.
    let Some((mut a, mut b)) = two_instances(&database) else {
        return;
    };
    let key = key_of_either(&mut a, &mut b);
    let chat = |base: String| {
        let key = key.clone();
        async move {
            let body = serde_json::json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]});
            assert_eq!(post_json(&base, "/v1/chat/completions", &key, body).await.status(), 200);
        }
    };
    // Subscribe on B, produce on A.
    let mut on_b = SseReader::open(&b.base_url, &key, "/v1/events", None).await;
    chat(a.base_url.clone()).await;
    let first = on_b.take(4).await;
    assert_eq!(first.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    drop(on_b);
    // Missed while away, produced on B; resume on A.
    chat(b.base_url.clone()).await;
    let mut on_a = SseReader::open(&a.base_url, &key, "/v1/events", Some(4)).await;
    assert_eq!(
        on_a.take(4).await.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        [5, 6, 7, 8]
    );
    chat(b.base_url.clone()).await;
    assert_eq!(
        on_a.take(4).await.iter().map(|f| f.id.unwrap()).collect::<Vec<_>>(),
        [9, 10, 11, 12]
    );
}

#[tokio::test]
async fn sigterm_with_a_hundred_open_event_streams_exits_in_time() {
    let database = TestDatabase::new().await;
    // One key opens all hundred streams at once: its limits are raised accordingly.
    let config = database.dir.0.join("polpo.toml");
    std::fs::write(
        &config,
        "[rate_limit]\nrequests_per_second = 1000\nburst = 1000\nmax_concurrent_streams = 100\n",
    )
    .unwrap();
    let mut server = ServerProcess::start(
        &database.dir.0,
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("POLPO_CONFIG", config.to_str().unwrap()),
        ],
    );
    let key = server.key();
    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.push(crate::events::SseReader::open(&server.base_url, &key, "/v1/events", None).await);
    }
    let status = server
        .terminate(Duration::from_secs(10))
        .expect("exited within 10 s (the deadline is 30 s)");
    assert_eq!(status.code(), Some(0));
    for stream in &mut streams {
        assert!(stream.next(Duration::from_secs(2)).await.is_none());
        assert!(stream.ended, "an event stream was left open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_fifty_chat_streams_stores_every_partial_reply() {
    const STREAMS: usize = 50;
    // `slow` streams a word every 100 ms for 20 s: far longer than the 2 s shutdown deadline.
    let openai = crate::fakes::FakeProvider::openai().await;
    let database = TestDatabase::new().await;
    let config_path = database.dir.0.join("polpo.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nshutdown_timeout = \"2s\"\n\n[providers.openai]\nbase_url = \"{}\"\n",
            openai.base_url
        ),
    )
    .unwrap();
    let mut server = ServerProcess::start(
        &database.dir.0,
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("POLPO_CONFIG", config_path.to_str().unwrap()),
            ("OPENAI_API_KEY", "sk-upstream-openai-secret"),
        ],
    );
    let key = server.key();
    let created = post_json(
        &server.base_url,
        "/v1/agents",
        &key,
        serde_json::json!({"name": "talker", "model": "openai:slow"}),
    )
    .await;
    assert_eq!(created.status(), 201);

    let mut watched = talking_streams(&server.base_url, &key, STREAMS).await;

    // The deadline (2 s), half a second for streams to write their error frame, at most 5 s for
    // turns to save, and half a second to exit.
    let status =
        tokio::task::block_in_place(|| server.terminate(Duration::from_secs(8))).expect("exited within 8 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.log());
    assert!(server.log().contains("shutdown deadline reached"), "{}", server.log());

    let mut told_unavailable = 0;
    for w in &mut watched {
        tokio::time::timeout(Duration::from_secs(5), &mut w.done)
            .await
            .expect("a client stream stayed open after the server exited")
            .unwrap();
        let text = w.received();
        let frames = complete_frames(&text);
        assert!(!frames.iter().any(|f| f == "[DONE]"), "a stream finished: {text}");
        for frame in &frames {
            let frame: serde_json::Value = serde_json::from_str(frame).unwrap();
            if let Some(error) = frame.get("error") {
                assert_eq!(error["code"], "unavailable", "{text}");
                told_unavailable += 1;
            }
        }
    }

    let db = polpo_api::store::Db::connect(Some(&database.url), 1).await.unwrap();
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT session_id, content, finish_reason FROM chat_messages WHERE role = 'assistant' ORDER BY session_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    db.pool.close().await;
    assert_eq!(rows.len(), STREAMS, "one assistant message per stream");
    for w in &watched {
        let (_, content, finish) = rows
            .iter()
            .find(|(session, _, _)| *session == w.session)
            .unwrap_or_else(|| panic!("no reply stored for session {}", w.session));
        assert_eq!(finish.as_deref(), Some("interrupted"));
        let stored: String = serde_json::from_str(content).unwrap();
        let received = w.content();
        assert!(received.contains("tick"));
        // The reply is stored as the server had it; a frame may have been lost with the
        // connection, never invented.
        assert!(
            stored.starts_with(&received),
            "session {}: stored {stored:?}, the client received {received:?}",
            w.session
        );
    }
    // Replies are saved before their error frame goes out; the first ones are saved well
    // within the half second the server gives streams to say why they end.
    assert!(told_unavailable > 0, "no client was told the server is unavailable");
}
