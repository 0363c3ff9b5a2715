//! The Anthropic Messages wire format (`POST /v1/messages`) for `FakeProvider`.

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{Frames, PROMPT_TOKENS, Reply, TOOL_ARGS, Wire, text_of};

pub struct Anthropic;

fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn event(data: &Value) -> String {
    format!("event: {}\ndata: {data}\n\n", data["type"].as_str().unwrap_or_default())
}

fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text(_) => "end_turn",
        Reply::Tool { .. } => "tool_use",
    }
}

impl Wire for Anthropic {
    fn check(method: &Method, path: &str, headers: &HeaderMap, body: &Value) -> Result<(), (u16, Value)> {
        if method != Method::POST || path != "/v1/messages" {
            return Err((404, error_body("not_found_error", "Not Found")));
        }
        if !headers.contains_key("anthropic-version") {
            return Err((
                400,
                error_body("invalid_request_error", "anthropic-version: header is required"),
            ));
        }
        if !body.is_object() {
            return Err((
                400,
                error_body(
                    "invalid_request_error",
                    "There was an issue with your request body: it is not valid JSON",
                ),
            ));
        }
        Ok(())
    }

    fn error(status: u16) -> Value {
        match status {
            401 => error_body("authentication_error", "invalid x-api-key"),
            400 => error_body("invalid_request_error", "max_tokens is too large: 999999999"),
            429 => error_body(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
            ),
            _ => error_body("overloaded_error", "Overloaded"),
        }
    }

    fn first_tool(body: &Value) -> Option<String> {
        body["tools"][0]["name"].as_str().map(str::to_owned)
    }

    fn tool_result(body: &Value) -> Option<String> {
        let last = body["messages"].as_array()?.last()?;
        let blocks = last["content"].as_array()?;
        blocks
            .iter()
            .find(|b| b["type"] == "tool_result")
            .map(|b| text_of(&b["content"]))
    }

    fn frames(model: &str, reply: &Reply, _request: &Value) -> Frames {
        let message = json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
        });
        let (block, deltas) = match reply {
            Reply::Text(text) => {
                let pieces = Reply::chunks(text)
                    .into_iter()
                    .map(|c| json!({"type": "text_delta", "text": c}));
                (json!({"type": "text", "text": ""}), pieces.collect::<Vec<_>>())
            }
            Reply::Tool { name } => {
                let pieces = TOOL_ARGS
                    .iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}));
                (
                    json!({"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {}}),
                    pieces.collect(),
                )
            }
        };
        let head = vec![
            event(&json!({"type": "message_start", "message": message})),
            event(&json!({"type": "ping"})),
            event(&json!({"type": "content_block_start", "index": 0, "content_block": block})),
        ];
        let deltas = deltas
            .into_iter()
            .map(|d| event(&json!({"type": "content_block_delta", "index": 0, "delta": d})));
        let tail = vec![
            event(&json!({"type": "content_block_stop", "index": 0})),
            event(&json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
                "usage": {"output_tokens": reply.completion_tokens()},
            })),
            event(&json!({"type": "message_stop"})),
        ];
        Frames {
            head,
            deltas: deltas.collect(),
            tail,
        }
    }

    fn garbage() -> String {
        "event: content_block_delta\ndata: this is not json\n\n".into()
    }

    fn error_event() -> Option<String> {
        Some(event(&error_body("overloaded_error", "Overloaded")))
    }

    fn complete(model: &str, reply: &Reply) -> Value {
        let block = match reply {
            Reply::Text(text) => json!({"type": "text", "text": text}),
            Reply::Tool { name } => {
                json!({"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {"city": "Rome"}})
            }
        };
        json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [block],
            "stop_reason": stop_reason(reply), "stop_sequence": null,
            "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": reply.completion_tokens()},
        })
    }
}
