//! In-process fake model providers (OpenAI Chat Completions, Anthropic Messages) that speak the
//! real wire formats, record every request, and misbehave on demand according to the `model`.
//!
//! Models: `ok`, `echo`, `tool`, `fail-401|400|429|500`, `cut`, `non-json`, `error-event`
//! (Anthropic only), `hang`, `slow`, `pace-<ms>` (the `ok` reply with `<ms>` between streamed
//! chunks); anything else behaves as `ok`.

mod anthropic;
mod openai;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::watch;

/// The reply of the `ok` model.
pub const OK_TEXT: &str = "Hello from the fake provider.";
/// The tool-call arguments, in the two pieces they are streamed in.
pub const TOOL_ARGS: [&str; 2] = ["{\"city\":", "\"Rome\"}"];
/// `prompt_tokens` / `input_tokens` reported for every request.
pub const PROMPT_TOKENS: u64 = 11;
/// Completion tokens reported for a tool call.
pub const TOOL_CALL_TOKENS: u64 = 7;

/// A running fake provider; the server stops accepting connections when this is dropped.
pub struct FakeProvider {
    /// OpenAI: `http://127.0.0.1:PORT/v1`; Anthropic: `http://127.0.0.1:PORT`.
    pub base_url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    /// Header names are lowercase; a repeated header keeps its last value.
    pub headers: HashMap<String, String>,
    /// The parsed JSON body (a JSON string holding the raw text when it was not JSON).
    pub body: Value,
}

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    abandoned: watch::Sender<usize>,
    /// Per model: streamed responses in flight now, and the most there ever were at once.
    in_flight: Mutex<HashMap<String, (usize, usize)>>,
}

impl FakeProvider {
    pub async fn openai() -> Self {
        Self::start::<openai::OpenAi>("/v1").await
    }

    pub async fn anthropic() -> Self {
        Self::start::<anthropic::Anthropic>("").await
    }

    async fn start<W: Wire>(prefix: &str) -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::default(),
            abandoned: watch::Sender::new(0),
            in_flight: Mutex::default(),
        });
        let router = Router::new().fallback(entry::<W>).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            base_url: format!("http://{addr}{prefix}"),
            shared,
            server,
        }
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The most recent request; panics if none arrived.
    pub fn last_request(&self) -> RecordedRequest {
        self.requests().pop().expect("the fake provider received no request")
    }

    /// Resolves true once a streamed response body of this fake has been dropped before it
    /// finished (the client went away / the connection closed mid-stream), false on timeout.
    pub async fn wait_for_abandoned_stream(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.abandoned.subscribe();
        matches!(tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0)).await, Ok(Ok(_)))
    }

    /// How many response bodies were dropped before they finished.
    pub fn abandoned_streams(&self) -> usize {
        *self.shared.abandoned.borrow()
    }

    /// Streamed responses of `model` (as the fake saw it, e.g. `pace-200`) in flight now: started
    /// and neither finished nor abandoned.
    pub fn in_flight(&self, model: &str) -> usize {
        self.shared.in_flight.lock().unwrap().get(model).map_or(0, |c| c.0)
    }

    /// The most streamed responses of `model` that were ever in flight at once.
    pub fn max_in_flight(&self, model: &str) -> usize {
        self.shared.in_flight.lock().unwrap().get(model).map_or(0, |c| c.1)
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What the requested model asks the fake to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    Echo,
    Tool,
    Fail(u16),
    Cut,
    NonJson,
    ErrorEvent,
    Hang,
    Slow,
    /// A fixed reply carrying the marker the mock reviewer fails (spec §4.6).
    Marked,
    /// The `ok` reply, streamed with this many milliseconds between chunks.
    Pace(u64),
}

impl Mode {
    fn of(model: &str) -> Self {
        if let Some(ms) = model.strip_prefix("pace-").and_then(|ms| ms.parse().ok()) {
            return Self::Pace(ms);
        }
        match model {
            "echo" => Self::Echo,
            "tool" => Self::Tool,
            "fail-401" => Self::Fail(401),
            "fail-400" => Self::Fail(400),
            "fail-429" => Self::Fail(429),
            "fail-500" => Self::Fail(500),
            "cut" => Self::Cut,
            "non-json" => Self::NonJson,
            "error-event" => Self::ErrorEvent,
            "hang" => Self::Hang,
            "slow" => Self::Slow,
            "marked" => Self::Marked,
            _ => Self::Ok,
        }
    }
}

/// The assistant turn the fake produces.
enum Reply {
    Text(String),
    Tool { name: String },
}

impl Reply {
    /// The text split after each whitespace run: the streamed deltas.
    fn chunks(text: &str) -> Vec<String> {
        text.split_inclusive(char::is_whitespace).map(str::to_owned).collect()
    }

    fn completion_tokens(&self) -> u64 {
        match self {
            Self::Text(text) => text.split_whitespace().count() as u64,
            Self::Tool { .. } => TOOL_CALL_TOKENS,
        }
    }
}

/// A streamed response in three parts, so that misbehaving modes can cut or splice it.
struct Frames {
    head: Vec<String>,
    /// One frame per text delta / tool-call piece.
    deltas: Vec<String>,
    tail: Vec<String>,
}

/// The provider-specific half of a fake.
trait Wire: Send + Sync + 'static {
    /// Rejects a wrong path, missing header or unparsable body with (status, error body).
    fn check(method: &Method, path: &str, headers: &HeaderMap, body: &Value) -> Result<(), (u16, Value)>;
    /// The error body for `fail-<status>`.
    fn error(status: u16) -> Value;
    fn first_tool(body: &Value) -> Option<String>;
    /// The text of the tool result when the last message is one.
    fn tool_result(body: &Value) -> Option<String>;
    fn frames(model: &str, reply: &Reply, request: &Value) -> Frames;
    fn garbage() -> String;
    /// The in-stream error event, for providers that have one.
    fn error_event() -> Option<String>;
    fn complete(model: &str, reply: &Reply) -> Value;
}

async fn entry<W: Wire>(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body = serde_json::from_slice::<Value>(&raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()));
    let recorded_headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.requests.lock().unwrap().push(RecordedRequest {
        path: uri.path().to_owned(),
        headers: recorded_headers,
        body: body.clone(),
    });
    if let Err((status, error)) = W::check(&method, uri.path(), &headers, &body) {
        return json(status, &error);
    }
    let model = body["model"].as_str().unwrap_or("ok").to_owned();
    let mode = Mode::of(&model);
    let reply = match mode {
        Mode::Hang => return std::future::pending().await,
        Mode::Fail(status) => {
            let mut response = json(status, &W::error(status));
            if status == 429 {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static("7"));
            }
            return response;
        }
        Mode::Echo => Reply::Text(last_user_text(&body)),
        Mode::Slow => Reply::Text("tick ".repeat(200)),
        Mode::Marked => Reply::Text("A draft that is not good enough. MOCK_FAIL".into()),
        Mode::Tool => match (W::tool_result(&body), W::first_tool(&body)) {
            (Some(result), _) => Reply::Text(format!("Tool said: {result}")),
            (None, Some(name)) => Reply::Tool { name },
            (None, None) => Reply::Text(OK_TEXT.into()),
        },
        _ => Reply::Text(OK_TEXT.into()),
    };
    if body["stream"] != true {
        let completion = W::complete(&model, &reply).to_string();
        return match mode {
            Mode::Cut => {
                let half = completion[..completion.len() / 2].to_owned();
                body_stream(
                    shared,
                    &model,
                    "application/json",
                    vec![half],
                    Duration::ZERO,
                    End::Abort,
                )
            }
            Mode::NonJson => ([(CONTENT_TYPE, "application/json")], "this is not json").into_response(),
            Mode::Slow => {
                let mut guard = Abandon {
                    shared,
                    finished: false,
                };
                tokio::time::sleep(Duration::from_secs(20)).await;
                guard.finished = true;
                ([(CONTENT_TYPE, "application/json")], completion).into_response()
            }
            _ => ([(CONTENT_TYPE, "application/json")], completion).into_response(),
        };
    }
    let Frames { mut head, deltas, tail } = W::frames(&model, &reply, &body);
    let mut prefix = |n: usize| {
        head.extend(deltas.iter().take(n).cloned());
        std::mem::take(&mut head)
    };
    let (frames, end) = match (mode, W::error_event()) {
        (Mode::Cut, _) => (prefix(2), End::Abort),
        (Mode::NonJson, _) => ([prefix(1), vec![W::garbage()], tail].concat(), End::Complete),
        (Mode::ErrorEvent, Some(event)) => ([prefix(1), vec![event]].concat(), End::Complete),
        _ => ([prefix(usize::MAX), tail].concat(), End::Complete),
    };
    let delay = match mode {
        Mode::Slow => Duration::from_millis(100),
        Mode::Pace(ms) => Duration::from_millis(ms),
        _ => Duration::ZERO,
    };
    body_stream(shared, &model, "text/event-stream", frames, delay, end)
}

fn json(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    (status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The text of the last user message: string content, or its text parts joined with "\n".
fn last_user_text(body: &Value) -> String {
    let messages = body["messages"].as_array().map(Vec::as_slice).unwrap_or_default();
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default()
}

/// String content as is; for arrays, the `text` of the `{"type":"text"}` parts joined with "\n".
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

enum End {
    Complete,
    /// Fail the body after the frames, so hyper drops the connection mid-body.
    Abort,
}

/// Counts a response body dropped before its last frame went out.
struct Abandon {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.abandoned.send_modify(|n| *n += 1);
        }
    }
}

/// Counts a response body in flight for its model from its creation until its last frame is
/// handed over or it is dropped unfinished.
struct InFlight {
    shared: Arc<Shared>,
    model: String,
    open: bool,
}

impl InFlight {
    fn open(shared: Arc<Shared>, model: &str) -> Self {
        {
            let mut counts = shared.in_flight.lock().unwrap();
            let (now, max) = counts.entry(model.to_owned()).or_default();
            *now += 1;
            *max = (*max).max(*now);
        }
        Self {
            shared,
            model: model.to_owned(),
            open: true,
        }
    }

    fn close(&mut self) {
        if std::mem::take(&mut self.open)
            && let Some((now, _)) = self.shared.in_flight.lock().unwrap().get_mut(&self.model)
        {
            *now -= 1;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.close();
    }
}

fn body_stream(
    shared: Arc<Shared>,
    model: &str,
    content_type: &'static str,
    frames: Vec<String>,
    delay: Duration,
    end: End,
) -> Response {
    // Counted from now: a body dropped before it was ever polled still leaves.
    let mut in_flight = InFlight::open(shared.clone(), model);
    let stream = async_stream::stream! {
        let mut guard = Abandon { shared, finished: false };
        let count = frames.len();
        for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Done before the last frame is handed over: the client may go away right after it.
            guard.finished = i + 1 == count;
            if guard.finished {
                in_flight.close();
            }
            yield Ok(Bytes::from(frame));
        }
        guard.finished = true;
        in_flight.close();
        if let End::Abort = end {
            // Let hyper flush what was yielded before the body fails and the connection drops.
            tokio::time::sleep(Duration::from_millis(50)).await;
            yield Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fake provider cut the stream"));
        }
    };
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}
