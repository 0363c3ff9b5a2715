//! `passthrough`: a bare HTTP/1.1 proxy in front of `fake-upstream`, for the floor of what any
//! server between a client and the fake costs on the same machine: each request's body is read
//! whole and sent to the upstream on a kept connection, and the upstream's answer (status,
//! headers, body, streamed as it comes) goes back unchanged. Nothing is parsed, checked or
//! stored. Built like polpo-api's own serving (Tokio's multi-threaded runtime with a worker per
//! core, hyper's HTTP/1.1 server, `TCP_NODELAY` on both sides), so that the difference from
//! polpo-api is the turn's own work: the key, the request's JSON, the agent, the provider's
//! answer read and the reply written, the rows and the events.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Parser)]
struct Args {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1:18083")]
    bind: std::net::SocketAddr,
    /// The upstream's full URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:18081/v1/chat/completions")]
    upstream: hyper::Uri,
    /// Tokio worker threads (0: one per core, as polpo-api).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Exits by itself after this many seconds.
    #[arg(long, default_value_t = 1800)]
    max_secs: u64,
}

type Upstream = Client<HttpConnector, Full<Bytes>>;
type Body = Either<Incoming, Full<Bytes>>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    assert!(args.bind.ip().is_loopback(), "passthrough listens on loopback only");
    assert!(
        matches!(args.upstream.host(), Some("127.0.0.1" | "localhost" | "[::1]")),
        "passthrough forwards to loopback only"
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    runtime.enable_all().build()?.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
        let listener = tokio::net::TcpListener::bind(args.bind).await?;
        eprintln!("passthrough listening on {} for {}", args.bind, args.upstream);
        let upstream = args.upstream;
        let service = || {
            let (client, upstream) = (client.clone(), upstream.clone());
            service_fn(move |req| forward(req, client.clone(), upstream.clone()))
        };
        polpo_bench::serve_http1(listener, service, Duration::from_secs(args.max_secs)).await
    })
}

/// The request's body to the upstream with its `content-type` and `authorization`, and the
/// upstream's answer back as it is; `502` when the upstream cannot be reached.
async fn forward(req: Request<Incoming>, client: Upstream, upstream: hyper::Uri) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let mut out = Request::post(upstream);
    for name in [hyper::header::CONTENT_TYPE, hyper::header::AUTHORIZATION] {
        if let Some(value) = parts.headers.get(&name) {
            out = out.header(name, value);
        }
    }
    let Ok(out) = out.body(Full::new(body)) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    match client.request(out).await {
        Ok(answer) => Ok(answer.map(Either::Left)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = code;
    response
}
