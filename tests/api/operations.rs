//! Spec §9: health, readiness, metrics and the OpenAPI document.

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::{Value, json};

use crate::helpers::{TestApp, concrete_path, documented_operations};

#[tokio::test]
async fn health_and_ready_answer_without_a_key() {
    let app = TestApp::spawn().await;
    let health = app.call("GET", "/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptimeSeconds"].is_u64());
    let ready = app.call("GET", "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json(), serde_json::json!({"status": "ready"}));
}

#[tokio::test]
async fn ready_fails_while_draining_or_without_a_database() {
    let app = TestApp::spawn().await;
    app.state.runtime.shutdown.cancel();
    let response = app.call("GET", "/ready", None, None).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.json()["code"], "unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));

    let app = TestApp::spawn().await;
    app.db.pool.close().await;
    let response = app.call("GET", "/ready", None, None).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.json()["details"]["checks"]["database"], "failing");
    // A key that cannot be checked is not declared invalid: the client is told to retry.
    let response = app.get("/v1/agents", &app.test_key).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.json()["code"], "unavailable");
    assert_eq!(response.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = TestApp::spawn().await;
    let agent = app.create_agent(&app.test_key, "ada").await;
    app.get(&format!("/v1/agents/{}", agent["id"].as_str().unwrap()), &app.test_key)
        .await;
    app.get("/v1/agents/ghost", &app.test_key).await;
    let response = app.call("GET", "/metrics", None, None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.header("content-type").unwrap().starts_with("text/plain"));
    let text = response.text;
    assert!(
        text.contains(r#"polpo_http_requests_total{method="POST",route="/v1/agents",status="201"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"polpo_http_requests_total{method="GET",route="/v1/agents/{idOrName}",status="200"} 1"#));
    assert!(text.contains(r#"polpo_http_requests_total{method="GET",route="/v1/agents/{idOrName}",status="404"} 1"#));
    assert!(
        text.contains(r#"polpo_http_request_duration_seconds_count{method="GET",route="/v1/agents/{idOrName}"} 2"#)
    );
    assert!(!text.contains("agt_"), "ids never become labels");
    assert!(!text.contains(&app.test_key[..12]), "keys never become labels");
}

#[tokio::test]
async fn metrics_cover_providers_and_open_streams() {
    let app = TestApp::spawn().await;
    for model in ["mock/echo", "mock/echo", "mock/error-500"] {
        let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        app.post("/v1/chat/completions", &app.test_key, body).await;
    }
    let text = app.call("GET", "/metrics", None, None).await.text;
    assert!(
        text.contains(r#"polpo_upstream_requests_total{provider="mock",status="ok"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"polpo_upstream_requests_total{provider="mock",status="upstream_error"} 1"#));
    assert!(text.contains(r#"polpo_upstream_first_chunk_seconds_count{provider="mock"} 2"#));

    let base = app.serve().await;
    let stream = crate::helpers::client()
        .get(format!("{base}/v1/events"))
        .bearer_auth(&app.test_key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let open = app.call("GET", "/metrics", None, None).await.text;
    assert!(open.contains(r#"polpo_sse_streams{kind="events"} 1"#), "{open}");
    drop(stream);
    let closed = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        app.call("GET", "/metrics", None, None)
            .await
            .text
            .contains(r#"polpo_sse_streams{kind="events"} 0"#)
    })
    .await;
    assert!(closed, "the gauge did not fall when the stream closed");
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let app = TestApp::spawn().await;
    // Anyone may send any method token, key or not: each must not become a series of its own.
    app.call("FOO0", "/v1/agents", None, None).await;
    app.call("FOO0", "/v1/agents", Some(&app.test_key), None).await;
    // A read of /metrics is counted after it is rendered: the first read adds its own series.
    app.call("GET", "/metrics", None, None).await;
    let before = app.call("GET", "/metrics", None, None).await.text;

    let made_up: Vec<String> = (1..=1000).map(|i| format!("FOO{i}")).collect();
    for (i, method) in made_up.iter().enumerate() {
        let key = (i % 2 == 0).then_some(app.test_key.as_str());
        let response = app.call(method, "/v1/agents", key, None).await;
        assert!(response.status.is_client_error(), "{method}: {}", response.status);
    }
    let after = app.call("GET", "/metrics", None, None).await.text;

    assert_eq!(after.lines().count(), before.lines().count(), "{after}");
    assert!(!after.contains("FOO"), "a made-up method became a label: {after}");
    assert!(
        after.contains(r#"polpo_http_requests_total{method="other",route="/v1/agents",status="401"} 501"#),
        "{after}"
    );
    assert!(after.contains(r#"polpo_http_requests_total{method="other",route="/v1/agents",status="405"} 501"#));
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let mut config = Config::default();
    config.metrics.enabled = false;
    let app = TestApp::spawn_with(config).await;
    let response = app.call("GET", "/metrics", None, None).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.json()["code"], "not_found");
}

/// Follows a local `$ref` such as `#/components/schemas/Agent`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let app = TestApp::spawn().await;
    let response = app.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(response.status, StatusCode::OK);
    let doc = response.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        assert!(resolve(&doc, &reference).is_some(), "dangling {reference}");
    }

    let operations = documented_operations(&doc);
    for expected in [
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/agents"),
        ("POST", "/v1/agents"),
        ("GET", "/v1/agents/{idOrName}"),
        ("PATCH", "/v1/agents/{idOrName}"),
        ("DELETE", "/v1/agents/{idOrName}"),
        ("GET", "/v1/agents/{idOrName}/memory"),
        ("PUT", "/v1/agents/{idOrName}/memory"),
        ("GET", "/v1/memory"),
        ("PUT", "/v1/memory"),
    ] {
        assert!(
            operations.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} undocumented"
        );
    }
    // Every documented operation is served (the route table and the document are one).
    for (method, template) in &operations {
        let response = app
            .call(method, &concrete_path(template), Some(&app.test_key), None)
            .await;
        assert_ne!(response.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template}");
        assert_ne!(
            response.text, r#"{"code":"not_found","error":"no such route"}"#,
            "{method} {template}"
        );
        assert!(doc["paths"][template][method.to_lowercase()]["responses"].is_object());
    }
}

/// Every operation of the document by its `operationId`, with its path and method.
fn operations_by_id(doc: &Value) -> std::collections::HashMap<String, (String, String, Value)> {
    let mut out = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if let Some(id) = operation["operationId"].as_str() {
                out.insert(id.to_string(), (path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_link_names_an_operation_and_its_parameters_and_a_client_can_follow_one() {
    let app = TestApp::spawn().await;
    let doc = app.call("GET", "/v1/openapi.json", None, None).await.json();
    let operations = operations_by_id(&doc);
    let mut links = 0;
    for (producer, (_, _, operation)) in &operations {
        for (status, response) in operation["responses"].as_object().unwrap() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                links += 1;
                let target = link["operationId"].as_str().unwrap();
                let (_, _, target_op) = operations
                    .get(target)
                    .unwrap_or_else(|| panic!("{producer} {status} {name}: no operation {target}"));
                for parameter in link["parameters"].as_object().into_iter().flatten().map(|p| p.0) {
                    let (place, name) = parameter.split_once('.').unwrap();
                    assert!(
                        target_op["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["in"] == place && p["name"] == name),
                        "{producer} → {target}: no {place} parameter {name}"
                    );
                }
            }
        }
    }
    assert!(links >= 30, "{links} links");

    // A client follows `create_agent` → `get_agent` as the link says.
    let created = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "linked", "model": "mock/echo"}),
        )
        .await
        .json();
    let link = &operations["create_agent"].2["responses"]["201"]["links"]["get_agent"];
    let pointer = link["parameters"]["path.idOrName"]
        .as_str()
        .unwrap()
        .strip_prefix("$response.body#")
        .unwrap();
    let value = created.pointer(pointer).unwrap().as_str().unwrap();
    let template = &operations["get_agent"].0;
    let response = app.get(&template.replace("{idOrName}", value), &app.test_key).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["name"], "linked");
}

#[tokio::test]
async fn every_post_documents_an_optional_idempotency_key_and_accepts_one() {
    let app = TestApp::spawn().await;
    let doc = app.call("GET", "/v1/openapi.json", None, None).await.json();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(post) = item.get("post") else { continue };
        let header = post["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
            .unwrap_or_else(|| panic!("POST {path} without Idempotency-Key"));
        assert_eq!(header["in"], "header");
        assert_eq!(header["required"], false);
        assert_eq!(header["schema"]["maxLength"], 255);
    }
    // `metadata` is bounded as spec §1.9 says, wherever a request takes it.
    let metadata = &doc["components"]["schemas"]["AgentRequest"]["properties"]["metadata"];
    assert_eq!(metadata["maxProperties"], 16);
    assert_eq!(metadata["propertyNames"]["maxLength"], 64);
    assert_eq!(metadata["additionalProperties"]["maxLength"], 512);
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/agents")
        .header("authorization", format!("Bearer {}", app.test_key))
        .header("content-type", "application/json")
        .header("idempotency-key", "create-keyed-1")
        .body(axum::body::Body::from(
            json!({"name": "keyed", "model": "mock/echo"}).to_string(),
        ))
        .unwrap();
    let response = app.send(request).await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(response.header("idempotent-replayed"), None);
}

/// The sizes in a SQLite WAL file: its header, and each frame's own header before its page.
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// The big-endian word at `at` in a WAL header or frame header.
fn wal_word(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4)?.try_into().ok().map(u32::from_be_bytes)
}

/// The bytes a frame takes in a WAL file whose header is `header`: its own header and a page of
/// the size the file's header gives.
fn wal_frame_bytes(header: &[u8]) -> Option<usize> {
    Some(FRAME_HEADER + usize::try_from(wal_word(header, 8)?).ok()?)
}

/// What a SQLite WAL file shows: the number of restarts its header counts (its checkpoint
/// sequence) and the pages of the frames written since the last one (those carrying the header's
/// salt), in order; `None` while the file or its header is missing.
fn wal_state(wal: &std::path::Path) -> Option<(u32, Vec<u32>)> {
    let bytes = std::fs::read(wal).ok()?;
    let header = bytes.get(..WAL_HEADER)?;
    let frame_bytes = wal_frame_bytes(header)?;
    let mut pages = Vec::new();
    let mut at = WAL_HEADER;
    while let Some(frame) = bytes.get(at..at + FRAME_HEADER) {
        if frame[8..16] != header[16..24] {
            break;
        }
        pages.push(wal_word(frame, 0)?);
        at += frame_bytes;
    }
    Some((wal_word(header, 12)?, pages))
}

/// After a complete checkpoint the server itself starts the WAL again from its beginning
/// (docs/DECISIONS.md, "WAL checkpoints off the request path"), so that no client's write has to
/// wait for the WAL's new header to reach the disk: with no request at all after the writes, the
/// WAL restarts within five seconds, and what was written reads back unchanged.
#[tokio::test]
async fn the_server_starts_the_sqlite_wal_again_itself_within_five_seconds() {
    let app = TestApp::spawn().await;
    if app._database.is_postgres() {
        return;
    }
    for i in 0..3 {
        let response = app
            .post(
                "/v1/agents",
                &app.test_key,
                json!({"name": format!("writer-{i}"), "model": "mock/echo"}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    let wal = app._database.dir.0.join("polpo.db-wal");
    let before = wal_state(&wal).map(|(restarts, _)| restarts);
    // Started again by the server: the count moved, or (should that have happened before it was
    // read) all the WAL holds since is the server's own write of the header page.
    let restarted = || match wal_state(&wal) {
        Some((restarts, pages)) => Some(restarts) != before || pages == [1],
        None => false,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !restarted() {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL had not started again 5 s after the last write ({:?})",
            wal_state(&wal).map(|(restarts, pages)| (restarts, pages.len()))
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for i in 0..3 {
        let response = app.get(&format!("/v1/agents/writer-{i}"), &app.test_key).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        assert_eq!(response.json()["model"], "mock/echo");
    }
}

/// On SQLite the server copies the WAL back into the database file while it runs, on a
/// connection of its own (docs/DECISIONS.md, "WAL checkpoints off the request path"): what a
/// client wrote is in `polpo.db` itself within five seconds, so the WAL stays small and a copy
/// of the file alone is recent.
#[tokio::test]
async fn what_a_client_writes_reaches_the_sqlite_file_itself_within_five_seconds() {
    let app = TestApp::spawn().await;
    if app._database.is_postgres() {
        return;
    }
    let marker = polpo_api::ids::new_id("marker_");
    let response = app
        .post(
            "/v1/agents",
            &app.test_key,
            json!({"name": "writer", "model": "mock/echo", "systemPrompt": marker}),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    let file = app._database.dir.0.join("polpo.db");
    let in_file = || {
        let bytes = std::fs::read(&file).unwrap_or_default();
        bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !in_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new agent was still only in the WAL after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Under a steady stream of chat turns a checkpoint beside their commits never copies the whole
/// WAL, and the WAL cannot start again until one has: it would grow to the 10,000 pages (40 MB) at
/// which the writing connection copies it itself, inside a turn's commit, while every other turn
/// waits. The server checkpoints whenever the commits have added one to two thousand pages, and
/// finishes the copy with the commits held for that moment (docs/DECISIONS.md, "WAL checkpoints
/// off the request path"): over five seconds of turns from sixteen clients the WAL starts again
/// and again, and its file never reaches that mark (a few thousand pages at most here; the
/// margin is for a disk that other work keeps busy, where each fsync waits longer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_steady_stream_of_turns_the_sqlite_wal_never_reaches_the_writers_mark() {
    const CLIENTS: usize = 16;
    let writers_mark = u64::from(polpo_api::store::WAL_AUTOCHECKPOINT_PAGES);
    let app = TestApp::spawn().await;
    if app._database.is_postgres() {
        return;
    }
    let wal = app._database.dir.0.join("polpo.db-wal");
    // The frames the file has room for after its header, read from the header alone (the whole
    // file, as `wal_state` reads it, every 10 ms would be most of the test's work).
    let pages = || {
        use std::io::Read;
        let mut header = [0_u8; WAL_HEADER];
        let Ok(mut file) = std::fs::File::open(&wal) else {
            return 0;
        };
        if file.read_exact(&mut header).is_err() {
            return 0;
        }
        let (Some(frame_bytes), Ok(meta)) = (wal_frame_bytes(&header), file.metadata()) else {
            return 0;
        };
        meta.len().saturating_sub(WAL_HEADER as u64) / frame_bytes as u64
    };
    let restarts = || wal_state(&wal).map_or(0, |(restarts, _)| restarts);
    let restarts_before = restarts();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let clients = futures_util::future::join_all((0..CLIENTS).map(|i| {
        let app = &app;
        async move {
            let mut turns = 0_u64;
            while std::time::Instant::now() < end {
                let body = json!({"model": "mock/echo", "messages": [{"role": "user", "content": format!("turn {turns} of {i}")}]});
                let response = app.post("/v1/chat/completions", &app.test_key, body).await;
                assert_eq!(response.status, StatusCode::OK, "{}", response.text);
                turns += 1;
            }
            turns
        }
    }));
    let mut largest = 0;
    let watch = async {
        while std::time::Instant::now() < end {
            largest = largest.max(pages());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let (turns, ()) = tokio::join!(clients, watch);
    let largest = largest.max(pages());
    let turns: u64 = turns.iter().sum();
    let restarted = restarts().wrapping_sub(restarts_before);
    assert!(
        largest < writers_mark,
        "the WAL file held {largest} pages after {turns} turns ({restarted} restarts)"
    );
    assert!(
        restarted >= 2,
        "the WAL started again {restarted} times during {turns} turns"
    );
}
