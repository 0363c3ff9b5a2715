//! The OpenAI wire shapes of an answer (spec §3.7, §3.8): one `chat.completion`, or a stream of
//! `chat.completion.chunk` frames ending in `[DONE]`, or one error frame.

use std::collections::BTreeMap;
use std::convert::Infallible;

use crate::api::sse::Event as SseEvent;
use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::providers::types::{Chunk, FinishReason, Usage};
use crate::runtime::chat::{TurnEvent, TurnEvents};
use crate::runtime::sessions::StoredToolCall;

/// The fields every chunk and completion repeats.
pub(super) struct Completion {
    pub(super) id: String,
    pub(super) created: i64,
    pub(super) model: String,
}

/// The wire shapes, serialised straight from borrowed parts (no JSON tree per chunk), members
/// in the order OpenAI sends them.
mod wire {
    use serde::Serialize;
    use serde_json::Value;

    use crate::providers::types::Usage;

    /// A `chat.completion` (`choices` of [`AnswerChoice`]) or a `chat.completion.chunk` (of
    /// [`ChunkChoice`]); a chunk has `usage` only when it is the last one and was asked for.
    #[derive(Serialize)]
    pub struct Envelope<'a, C> {
        pub id: &'a str,
        pub object: &'static str,
        pub created: i64,
        pub model: &'a str,
        pub choices: C,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub usage: Option<Counts>,
    }

    #[derive(Serialize)]
    pub struct ChunkChoice<'a> {
        pub index: u32,
        pub delta: Delta<'a>,
        pub logprobs: &'a Value,
        pub finish_reason: Option<&'static str>,
    }

    #[derive(Serialize, Default)]
    pub struct Delta<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub role: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub content: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub tool_calls: Option<[CallDelta<'a>; 1]>,
    }

    #[derive(Serialize)]
    pub struct CallDelta<'a> {
        pub index: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub id: Option<&'a str>,
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        pub kind: Option<&'static str>,
        pub function: FunctionDelta<'a>,
    }

    #[derive(Serialize)]
    pub struct FunctionDelta<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub name: Option<&'a str>,
        pub arguments: &'a str,
    }

    #[derive(Serialize)]
    pub struct Counts {
        pub prompt_tokens: i64,
        pub completion_tokens: i64,
        pub total_tokens: i64,
    }

    impl From<Usage> for Counts {
        fn from(usage: Usage) -> Self {
            Self {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                total_tokens: usage.prompt_tokens + usage.completion_tokens,
            }
        }
    }

    #[derive(Serialize)]
    pub struct AnswerChoice<'a> {
        pub index: u32,
        pub message: Message<'a>,
        pub logprobs: Value,
        pub finish_reason: &'static str,
    }

    #[derive(Serialize)]
    pub struct Message<'a> {
        pub role: &'static str,
        pub content: Option<&'a str>,
        pub refusal: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub tool_calls: Vec<Call<'a>>,
    }

    #[derive(Serialize)]
    pub struct Call<'a> {
        pub id: &'a str,
        #[serde(rename = "type")]
        pub kind: &'static str,
        pub function: Function<'a>,
    }

    #[derive(Serialize)]
    pub struct Function<'a> {
        pub name: &'a str,
        pub arguments: &'a str,
    }
}

impl Completion {
    /// The fields every chunk and completion repeats, around `choices` and `usage`.
    fn envelope<C>(&self, object: &'static str, choices: C, usage: Option<Usage>) -> wire::Envelope<'_, C> {
        wire::Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage: usage.map(Into::into),
        }
    }

    /// One `chat.completion.chunk` frame.
    fn chunk(&self, delta: wire::Delta<'_>, logprobs: &Value, finish: Option<FinishReason>) -> SseEvent {
        let choice = wire::ChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason: finish.map(FinishReason::as_str),
        };
        frame(&self.envelope("chat.completion.chunk", [choice], None))
    }

    /// The last chunk of spec §3.8 when the client asked for usage: no choices, the counts.
    fn usage_chunk(&self, usage: Usage) -> SseEvent {
        let none: [wire::ChunkChoice<'_>; 0] = [];
        frame(&self.envelope("chat.completion.chunk", none, Some(usage)))
    }
}

/// The `logprobs` of a whole answer: the provider's per-chunk `content` (and `refusal`) lists
/// joined in order; `null` when the provider sent none.
#[derive(Default)]
struct Logprobs {
    seen: bool,
    content: Vec<Value>,
    refusal: Vec<Value>,
}

impl Logprobs {
    fn add(&mut self, chunk: &Value) {
        self.seen = true;
        for (key, list) in [("content", &mut self.content), ("refusal", &mut self.refusal)] {
            if let Some(items) = chunk.get(key).and_then(Value::as_array) {
                list.extend(items.iter().cloned());
            }
        }
    }

    fn to_json(&self) -> Value {
        if !self.seen {
            return Value::Null;
        }
        let refusal = if self.refusal.is_empty() {
            Value::Null
        } else {
            Value::Array(self.refusal.clone())
        };
        json!({"content": self.content, "refusal": refusal})
    }
}

/// The delta of a provider chunk (empty for those that carry no content).
fn delta(chunk: &Chunk) -> wire::Delta<'_> {
    match chunk {
        Chunk::Text(text) => wire::Delta {
            content: Some(text),
            ..wire::Delta::default()
        },
        Chunk::ToolCallStart { index, id, name } => wire::Delta {
            tool_calls: Some([wire::CallDelta {
                index: *index,
                id: Some(id),
                kind: Some("function"),
                function: wire::FunctionDelta {
                    name: Some(name),
                    arguments: "",
                },
            }]),
            ..wire::Delta::default()
        },
        Chunk::ToolCallArguments { index, arguments } => wire::Delta {
            tool_calls: Some([wire::CallDelta {
                index: *index,
                id: None,
                kind: None,
                function: wire::FunctionDelta { name: None, arguments },
            }]),
            ..wire::Delta::default()
        },
        Chunk::Finish(_) | Chunk::Usage(_) | Chunk::Logprobs(_) => wire::Delta::default(),
    }
}

/// One SSE frame whose data is `value`'s JSON text, written straight into the frame.
fn frame(value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().json_data(value)
}

/// The stream of spec §3.8: role chunk, deltas, finish chunk, optional usage chunk, `[DONE]`;
/// or one error frame and the end, without `[DONE]`.
pub(super) fn stream_frames(
    completion: Completion,
    mut events: TurnEvents,
    include_usage: bool,
    guard: crate::metrics::StreamGuard,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        let _open = guard;
        let role = wire::Delta {
            role: Some("assistant"),
            content: Some(""),
            ..wire::Delta::default()
        };
        yield Ok(completion.chunk(role, &Value::Null, None));
        // The provider's logprobs come just before the content they describe and go out on
        // the same chunk.
        let mut logprobs = Value::Null;
        let mut first = true;
        while let Some(event) = events.recv().await {
            match event {
                TurnEvent::Started => {}
                TurnEvent::Delta(Chunk::Logprobs(value)) => logprobs = value,
                TurnEvent::Delta(chunk) => {
                    yield Ok(completion.chunk(delta(&chunk), &logprobs.take(), None));
                    if std::mem::take(&mut first) {
                        // The connection writes what it holds when the stream has nothing more
                        // ready. Reading on drives the turn, and when the rest of the answer has
                        // already arrived it would run to its end, reply stored, before the
                        // first chunk left: the first chunk goes out first.
                        pause_once().await;
                    }
                }
                TurnEvent::Completed { finish, usage } => {
                    yield Ok(completion.chunk(wire::Delta::default(), &logprobs.take(), Some(finish)));
                    if include_usage {
                        yield Ok(completion.usage_chunk(usage));
                    }
                    yield Ok(SseEvent::default().data("[DONE]"));
                    return;
                }
                TurnEvent::Failed(error) => {
                    yield Ok(frame(&json!({"error": error.report().openai_error()})));
                    return;
                }
            }
        }
    }
}

/// `Pending` once, the task woken at once. Unlike `tokio::task::yield_now`, which defers the
/// wake-up until the worker has run its other tasks, the wake-up comes inside the connection's
/// poll, where the accept loop polls the connection again at once (`app::repolled`) instead of
/// queueing it, and waking a sleeping worker thread to share the queue.
async fn pause_once() {
    let mut paused = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut paused, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

/// A non-streamed answer: the whole reply as one `chat.completion` (spec §3.7).
pub(super) async fn collect(completion: Completion, mut events: TurnEvents) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut calls: BTreeMap<u32, StoredToolCall> = BTreeMap::new();
    let mut logprobs = Logprobs::default();
    while let Some(event) = events.recv().await {
        match event {
            TurnEvent::Started => {}
            TurnEvent::Delta(Chunk::Logprobs(value)) => logprobs.add(&value),
            TurnEvent::Delta(Chunk::Text(t)) => text.push_str(&t),
            TurnEvent::Delta(Chunk::ToolCallStart { index, id, name }) => {
                calls.insert(
                    index,
                    StoredToolCall {
                        id,
                        name,
                        arguments: String::new(),
                    },
                );
            }
            TurnEvent::Delta(Chunk::ToolCallArguments { index, arguments }) => {
                if let Some(call) = calls.get_mut(&index) {
                    call.arguments.push_str(&arguments);
                }
            }
            TurnEvent::Delta(_) => {}
            TurnEvent::Completed { finish, usage } => {
                let tool_calls: Vec<wire::Call<'_>> = calls
                    .values()
                    .map(|c| wire::Call {
                        id: &c.id,
                        kind: "function",
                        function: wire::Function {
                            name: &c.name,
                            arguments: &c.arguments,
                        },
                    })
                    .collect();
                let choice = wire::AnswerChoice {
                    index: 0,
                    message: wire::Message {
                        role: "assistant",
                        content: (tool_calls.is_empty() || !text.is_empty()).then_some(text.as_str()),
                        refusal: None,
                        tool_calls,
                    },
                    logprobs: logprobs.to_json(),
                    finish_reason: finish.as_str(),
                };
                let answer = completion.envelope("chat.completion", [choice], Some(usage));
                return Ok(Json(answer).into_response());
            }
            TurnEvent::Failed(error) => return Err(error),
        }
    }
    Err(ApiError::internal("chat task ended without an answer"))
}
