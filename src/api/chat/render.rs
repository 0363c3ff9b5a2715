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
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::as_str)}]
        })
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
        Chunk::Finish(_) | Chunk::Usage(_) => json!({}),
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
        while let Some(event) = events.recv().await {
            match event {
                TurnEvent::Started => {}
                TurnEvent::Delta(chunk) => yield data(&completion.chunk(delta_json(&chunk), None)),
                TurnEvent::Completed { finish, usage } => {
                    yield data(&completion.chunk(json!({}), Some(finish)));
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
    while let Some(event) = events.recv().await {
        match event {
            TurnEvent::Started => {}
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
                    "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish.as_str()}],
                    "usage": usage_json(usage),
                }));
            }
            TurnEvent::Failed(error) => return Err(error),
        }
    }
    Err(ApiError::internal("chat task ended without an answer"))
}
