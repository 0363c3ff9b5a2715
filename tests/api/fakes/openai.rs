//! The OpenAI Chat Completions wire format (`POST /v1/chat/completions`) for `FakeProvider`.

use axum::http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{Frames, PROMPT_TOKENS, Reply, TOOL_ARGS, Wire, text_of, unix_now};

pub struct OpenAi;

fn error_body(message: &str, kind: &str, param: Value, code: Value) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

fn usage(reply: &Reply) -> Value {
    let completion = reply.completion_tokens();
    json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion})
}

fn chunk(model: &str, choices: Value, usage: Option<Value>) -> String {
    let mut chunk = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": unix_now(),
        "model": model, "system_fingerprint": null, "choices": choices,
    });
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    format!("data: {chunk}\n\n")
}

fn delta(model: &str, delta: Value, finish_reason: Value) -> String {
    delta_with(model, delta, Value::Null, finish_reason)
}

fn delta_with(model: &str, delta: Value, logprobs: Value, finish_reason: Value) -> String {
    let choice = json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason});
    chunk(model, json!([choice]), None)
}

/// OpenAI's `logprobs` object for one content delta when the request asked for them: the piece
/// as one token, with `top_logprobs` alternatives.
pub fn logprobs_of(piece: &str, request: &Value) -> Value {
    if request["logprobs"] != true {
        return Value::Null;
    }
    let token = |text: &str, logprob: f64| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    let top: Vec<Value> = (0..request["top_logprobs"].as_u64().unwrap_or(0))
        .map(|i| token(&format!("{piece}#{i}"), -1.0 - i as f64))
        .collect();
    let mut entry = token(piece, -0.25);
    entry["top_logprobs"] = json!(top);
    json!({"content": [entry], "refusal": null})
}

impl Wire for OpenAi {
    fn check(method: &Method, path: &str, _headers: &HeaderMap, body: &Value) -> Result<(), (u16, Value)> {
        if method != Method::POST || path != "/v1/chat/completions" {
            return Err((
                404,
                error_body(
                    &format!("Invalid URL ({method} {path})"),
                    "invalid_request_error",
                    Value::Null,
                    Value::Null,
                ),
            ));
        }
        if !body.is_object() {
            let message = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)";
            return Err((
                400,
                error_body(message, "invalid_request_error", Value::Null, Value::Null),
            ));
        }
        Ok(())
    }

    fn error(status: u16) -> Value {
        match status {
            401 => error_body(
                "Incorrect API key provided: sk-fake-abcdefghijklmnopqrstuvwxyz123456.",
                "invalid_request_error",
                Value::Null,
                json!("invalid_api_key"),
            ),
            400 => error_body(
                "max_tokens is too large: 999999999",
                "invalid_request_error",
                json!("max_tokens"),
                json!("invalid_value"),
            ),
            429 => error_body(
                "Rate limit reached for gpt-4o in organization org-fake on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 7s. Visit https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                json!("requests"),
                json!("rate_limit_exceeded"),
            ),
            _ => error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                Value::Null,
                Value::Null,
            ),
        }
    }

    fn first_tool(body: &Value) -> Option<String> {
        body["tools"][0]["function"]["name"].as_str().map(str::to_owned)
    }

    fn tool_result(body: &Value) -> Option<String> {
        let last = body["messages"].as_array()?.last()?;
        (last["role"] == "tool").then(|| text_of(&last["content"]))
    }

    fn frames(model: &str, reply: &Reply, request: &Value) -> Frames {
        let head = vec![delta(model, json!({"role": "assistant", "content": ""}), Value::Null)];
        let (deltas, finish_reason) = match reply {
            Reply::Text(text) => {
                let deltas = Reply::chunks(text)
                    .into_iter()
                    .map(|c| delta_with(model, json!({"content": c}), logprobs_of(&c, request), Value::Null));
                (deltas.collect(), "stop")
            }
            Reply::Tool { name } => {
                let start = json!({"index": 0, "id": "call_fake_1", "type": "function", "function": {"name": name, "arguments": ""}});
                let mut deltas = vec![delta(model, json!({"tool_calls": [start]}), Value::Null)];
                deltas.extend(TOOL_ARGS.iter().map(|piece| {
                    let call = json!({"index": 0, "function": {"arguments": piece}});
                    delta(model, json!({"tool_calls": [call]}), Value::Null)
                }));
                (deltas, "tool_calls")
            }
        };
        let mut tail = vec![delta(model, json!({}), json!(finish_reason))];
        if request["stream_options"]["include_usage"] == true {
            tail.push(chunk(model, json!([]), Some(usage(reply))));
        }
        tail.push("data: [DONE]\n\n".into());
        Frames { head, deltas, tail }
    }

    fn garbage() -> String {
        "data: this is not json\n\n".into()
    }

    fn error_event() -> Option<String> {
        None
    }

    fn complete(model: &str, reply: &Reply) -> Value {
        let (message, finish_reason) = match reply {
            Reply::Text(text) => (json!({"role": "assistant", "content": text, "refusal": null}), "stop"),
            Reply::Tool { name } => {
                let call = json!({"id": "call_fake_1", "type": "function", "function": {"name": name, "arguments": TOOL_ARGS.concat()}});
                (
                    json!({"role": "assistant", "content": null, "tool_calls": [call], "refusal": null}),
                    "tool_calls",
                )
            }
        };
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": unix_now(), "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
            "usage": usage(reply), "system_fingerprint": null,
        })
    }
}
