//! Connections (`server.header_read_timeout`, docs/DECISIONS.md): one that sends no whole
//! request head in time is closed, an idle keep-alive connection included; a response in
//! progress is not cut.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use polpo_api::config::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::events::SseReader;
use crate::helpers::TestApp;

/// Reads until the server closes the connection: what it sent, and when it closed; `None` if it
/// was still open after `wait`.
async fn until_closed(tcp: &mut TcpStream, wait: Duration) -> Option<(String, Instant)> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((String::from_utf8_lossy(&received).into_owned(), Instant::now())),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn a_connection_without_a_whole_request_head_is_closed_after_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let mut config = Config::default();
    config.server.header_read_timeout = timeout;
    let app = TestApp::spawn_with(config).await;
    let base = app.serve().await;
    let address = base.trim_start_matches("http://");

    // A head that never ends. The server's clock for it starts after this instant.
    let connecting = Instant::now();
    let mut partial = TcpStream::connect(address).await.unwrap();
    partial
        .write_all(b"GET /v1/agents HTTP/1.1\r\nhost: polpo\r\n")
        .await
        .unwrap();
    // A keep-alive connection left idle after one answered request.
    let mut idle = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET /v1/agents HTTP/1.1\r\nhost: polpo\r\nauthorization: Bearer {}\r\n\r\n",
        app.test_key
    );
    idle.write_all(request.as_bytes()).await.unwrap();
    // An event stream, open for longer than the limit.
    let mut events = SseReader::open(&base, &app.test_key, "/v1/events", None).await;
    let events_opened = Instant::now();

    let (sent, closed) = until_closed(&mut partial, Duration::from_secs(10))
        .await
        .expect("a connection with half a request head was still open after 10 s");
    assert!(
        closed - connecting >= timeout,
        "closed {:?} after it was opened, before the limit",
        closed - connecting
    );
    assert_eq!(sent, "", "a head that never ended was answered");
    let (answered, _) = until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection was still open after 10 s");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered:?}");

    // The event stream has been open for longer than the limit and still delivers.
    tokio::time::sleep_until((events_opened + 2 * timeout).into()).await;
    let turn = app
        .post(
            "/v1/chat/completions",
            &app.test_key,
            json!({"model": "mock/echo", "messages": [{"role": "user", "content": "after"}]}),
        )
        .await;
    assert_eq!(turn.status, StatusCode::OK, "{}", turn.text);
    let session = turn.header("x-session-id").unwrap();
    let frame = events.next(Duration::from_secs(10)).await.unwrap_or_else(|| {
        panic!(
            "the event stream ended ({}) or stalled after the header limit",
            events.ended
        )
    });
    assert!(frame.data.contains(session), "{frame:?}");
}
