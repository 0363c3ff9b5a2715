//! The OpenAI wire shapes of an answer (spec §3.7, §3.8): one `chat.completion`, or a stream of
//! `chat.completion.chunk` frames ending in `[DONE]`, or one error frame.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::response::sse::Event as SseEvent;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::providers::types::{Chunk, FinishReason, Usage};
use crate::runtime::chat::TurnEvent;
use crate::runtime::sessions::StoredToolCall;

/// The fields every chunk and completion repeats.
pub(super) struct Completion {
    pub(super) id: String,
    pub(super) created: i64,
    pub(super) model: String,
}

impl Completion {
    fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        self.chunk_with(delta, Value::Null, finish)
    }

    fn chunk_with(&self, delta: Value, logprobs: Value, finish: Option<FinishReason>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish.map(FinishReason::as_str)}]
        })
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

fn usage_json(usage: Usage) -> Value {
    json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
           "total_tokens": usage.prompt_tokens + usage.completion_tokens})
}

fn delta_json(chunk: &Chunk) -> Value {
    match chunk {
        Chunk::Text(text) => json!({"content": text}),
        Chunk::ToolCallStart { index, id, name } => json!({"tool_calls": [
            {"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
        Chunk::ToolCallArguments { index, arguments } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
        }
        Chunk::Finish(_) | Chunk::Usage(_) | Chunk::Logprobs(_) => json!({}),
    }
}

fn data(value: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(value.to_string()))
}

/// The stream of spec §3.8: role chunk, deltas, finish chunk, optional usage chunk, `[DONE]`;
/// or one error frame and the end, without `[DONE]`.
pub(super) fn stream_frames(
    completion: Completion,
    mut events: tokio::sync::mpsc::Receiver<TurnEvent>,
    include_usage: bool,
    guard: crate::metrics::StreamGuard,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    async_stream::stream! {
        let _open = guard;
        yield data(&completion.chunk(json!({"role": "assistant", "content": ""}), None));
        // The provider's logprobs come just before the content they describe and go out on
        // the same chunk.
        let mut logprobs = Value::Null;
        while let Some(event) = events.recv().await {
            match event {
                TurnEvent::Started => {}
                TurnEvent::Delta(Chunk::Logprobs(value)) => logprobs = value,
                TurnEvent::Delta(chunk) => {
                    yield data(&completion.chunk_with(delta_json(&chunk), logprobs.take(), None));
                }
                TurnEvent::Completed { finish, usage } => {
                    yield data(&completion.chunk_with(json!({}), logprobs.take(), Some(finish)));
                    if include_usage {
                        yield data(&json!({
                            "id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
                            "model": completion.model, "choices": [], "usage": usage_json(usage)
                        }));
                    }
                    yield Ok(SseEvent::default().data("[DONE]"));
                    return;
                }
                TurnEvent::Failed(error) => {
                    yield data(&json!({"error": error.report().openai_error()}));
                    return;
                }
            }
        }
    }
}

/// A non-streamed answer: the whole reply as one `chat.completion` (spec §3.7).
pub(super) async fn collect(
    completion: Completion,
    mut events: tokio::sync::mpsc::Receiver<TurnEvent>,
) -> Result<Value, ApiError> {
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
                let mut message = json!({"role": "assistant", "content": text, "refusal": null});
                if !calls.is_empty() {
                    if text.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = calls
                        .values()
                        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                        .collect();
                }
                return Ok(json!({
                    "id": completion.id, "object": "chat.completion", "created": completion.created,
                    "model": completion.model,
                    "choices": [{"index": 0, "message": message, "logprobs": logprobs.to_json(), "finish_reason": finish.as_str()}],
                    "usage": usage_json(usage),
                }));
            }
            TurnEvent::Failed(error) => return Err(error),
        }
    }
    Err(ApiError::internal("chat task ended without an answer"))
}
