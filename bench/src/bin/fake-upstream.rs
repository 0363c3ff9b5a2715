//! `fake-upstream`: an OpenAI-compatible `POST /v1/chat/completions` that answers at once, so a
//! benchmark measures the server in front of it and not a model.
//!
//! Non-streamed requests get a small `chat.completion`; `"stream": true` gets a role chunk, three
//! content chunks, a finish chunk, a usage chunk and `data: [DONE]`. `--chunk-delay-ms` (every
//! stream) or `--hold-delay-ms` (models whose name ends in `-hold`) waits between the chunks that
//! follow the first content chunk, which keeps streams open for a memory test.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Channel, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

#[derive(Parser, Clone, Copy)]
struct Args {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    bind: std::net::SocketAddr,
    /// Pause between the chunks after the first content chunk, for every stream.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// The same pause for models named `*-hold`.
    #[arg(long, default_value_t = 4000)]
    hold_delay_ms: u64,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Exits by itself after this many seconds.
    #[arg(long, default_value_t = 1800)]
    max_secs: u64,
}

type Body = Either<Full<Bytes>, Channel<Bytes, Infallible>>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    assert!(args.bind.ip().is_loopback(), "fake-upstream listens on loopback only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.bind).await?;
        eprintln!("fake-upstream listening on {}", args.bind);
        let service = || service_fn(move |req| handle(req, args));
        polpo_bench::serve_http1(listener, service, Duration::from_secs(args.max_secs)).await
    })
}

async fn handle(req: Request<Incoming>, args: Args) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::POST || req.uri().path() != "/v1/chat/completions" {
        return Ok(respond(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"message":"not found"}}"#.into(),
        ));
    }
    let body = match req.into_body().collect().await {
        Ok(b) => serde_json::from_slice::<Value>(&b.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let model = body["model"].as_str().unwrap_or("gpt-bench").to_string();
    if !body["stream"].as_bool().unwrap_or(false) {
        let text = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from bench"},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        });
        return Ok(respond(StatusCode::OK, "application/json", text.to_string().into()));
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}});
    // Four writes; the pause (if any) goes before each of the last three.
    let parts = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null)
            + &chunk(json!({"content": "Hello"}), Value::Null),
        chunk(json!({"content": " from"}), Value::Null),
        chunk(json!({"content": " bench"}), Value::Null),
        chunk(json!({}), json!("stop")) + &format!("data: {usage}\n\ndata: [DONE]\n\n"),
    ];
    let delay = if model.ends_with("-hold") {
        args.hold_delay_ms
    } else {
        args.chunk_delay_ms
    };
    if delay == 0 {
        return Ok(respond(StatusCode::OK, "text/event-stream", parts.concat().into()));
    }
    let (mut tx, channel) = Channel::<Bytes, Infallible>::new(1);
    tokio::spawn(async move {
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if tx.send_data(part.into()).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut response = Response::new(Either::Right(channel));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(response)
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static(content_type));
    response
}
