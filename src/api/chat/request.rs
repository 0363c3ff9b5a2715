//! Reading a chat completion request (spec §3.2, §3.3): every field checked, every problem
//! named by its path.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::api::input::{Field, Fields, JsonObject};
use crate::error::ApiError;
use crate::providers::types::{ChatMessage, Params, Role, ToolCall};
use crate::runtime::chat::CompletionRequest;

use super::extras;

const FIELDS: &[&str] = &[
    "messages",
    "agent",
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
    "metadata",
    "n",
];
/// Messages in one request: OpenAI's own bound.
const MAX_MESSAGES: usize = 2048;

fn tool_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks one content part; `images` says whether `image_url` parts are allowed.
fn check_part(part: &Value, path: &str, images: bool, f: &mut Fields) {
    match part.get("type").and_then(Value::as_str) {
        Some("text") if part.get("text").is_some_and(Value::is_string) => {}
        Some("text") => f.error(format!("{path}.text"), "must be a string"),
        Some("image_url") if images => {
            let url = part.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
            if !(url.starts_with("https://") || url.starts_with("data:")) {
                f.error(format!("{path}.image_url.url"), "must be an https or data: URL");
            }
        }
        Some(other) => f.error(
            format!("{path}.type"),
            format!("unsupported content part type {other:?}"),
        ),
        None => f.error(format!("{path}.type"), "required"),
    }
}

fn read_message(value: &Value, path: &str, f: &mut Fields) -> Option<ChatMessage> {
    let Some(object) = value.as_object() else {
        f.error(path.to_string(), "must be an object");
        return None;
    };
    let role = match object.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        Some(other) => {
            f.error(format!("{path}.role"), format!("unsupported role {other:?}"));
            return None;
        }
        None => {
            f.error(format!("{path}.role"), "required");
            return None;
        }
    };
    for key in object.keys() {
        if !["role", "content", "name", "tool_calls", "tool_call_id", "refusal"].contains(&key.as_str()) {
            f.error(format!("{path}.{key}"), "unknown field");
        }
    }
    let content = object.get("content").filter(|c| !c.is_null()).cloned();
    match &content {
        Some(Value::String(_)) => {}
        Some(Value::Array(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                check_part(part, &format!("{path}.content[{i}]"), role == Role::User, f);
            }
        }
        Some(_) => f.error(
            format!("{path}.content"),
            "must be a string or an array of content parts",
        ),
        None => {}
    }
    let mut tool_calls = Vec::new();
    if let Some(calls) = object.get("tool_calls").filter(|c| !c.is_null()) {
        match (role, calls.as_array()) {
            (Role::Assistant, Some(calls)) => {
                for (i, call) in calls.iter().enumerate() {
                    let id = call.get("id").and_then(Value::as_str);
                    let name = call.pointer("/function/name").and_then(Value::as_str);
                    let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
                    match (id, name, arguments) {
                        (Some(id), Some(name), Some(arguments)) => tool_calls.push(ToolCall {
                            id: id.to_string(),
                            name: name.to_string(),
                            arguments: arguments.to_string(),
                        }),
                        _ => f.error(
                            format!("{path}.tool_calls[{i}]"),
                            "needs id, function.name and function.arguments",
                        ),
                    }
                }
            }
            _ => f.error(
                format!("{path}.tool_calls"),
                "only assistant messages carry an array of tool calls",
            ),
        }
    }
    let tool_call_only = role == Role::Assistant && !tool_calls.is_empty();
    if content.is_none() && !tool_call_only {
        f.error(format!("{path}.content"), "required");
    }
    let tool_call_id = object.get("tool_call_id").and_then(Value::as_str).map(str::to_string);
    if role == Role::Tool && tool_call_id.is_none() {
        f.error(format!("{path}.tool_call_id"), "required for tool messages");
    }
    let name = object.get("name").and_then(Value::as_str).map(str::to_string);
    Some(ChatMessage {
        role,
        content,
        name,
        tool_calls,
        tool_call_id,
    })
}

fn read_tools(tools: Vec<Value>, f: &mut Fields) -> Vec<Value> {
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            f.error(format!("{path}.type"), "must be \"function\"");
        }
        match tool.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if tool_name_ok(name) => {}
            _ => f.error(
                format!("{path}.function.name"),
                "must be 1 to 64 characters of [A-Za-z0-9_-]",
            ),
        }
        if tool.pointer("/function/parameters").is_some_and(|p| !p.is_object()) {
            f.error(format!("{path}.function.parameters"), "must be an object");
        }
    }
    tools
}

/// Reads and validates the request body (spec §3.2, §3.3).
pub(super) fn read_request(body: JsonObject) -> Result<CompletionRequest, ApiError> {
    let mut object = body.0;
    // Structured members are taken out first and checked by hand; the rest by the field reader.
    let mut take = |key: &str| object.remove(key).filter(|v| !v.is_null());
    let messages_value = take("messages");
    let stream_options = take("stream_options");
    let stop = take("stop");
    let tools = take("tools");
    let tool_choice = take("tool_choice");
    let response_format = take("response_format");
    let structured: Map<String, Value> = extras::STRUCTURED
        .iter()
        .filter_map(|key| take(key).map(|v| ((*key).to_string(), v)))
        .collect();
    let known: Vec<&str> = FIELDS.iter().chain(extras::FIELDS).copied().collect();
    let mut f = Fields::new(object, &known, &[]);
    let mut messages = Vec::new();
    match messages_value {
        Some(Value::Array(items)) if items.len() > MAX_MESSAGES => {
            f.error("messages".into(), format!("must have at most {MAX_MESSAGES} messages"));
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                if let Some(m) = read_message(item, &format!("messages[{i}]"), &mut f) {
                    messages.push(m);
                }
            }
        }
        Some(Value::Array(_)) => f.error("messages".into(), "must contain at least one message"),
        Some(_) => f.error("messages".into(), "must be an array of messages"),
        None => f.error("messages".into(), "required"),
    }
    let agent = f.string("agent", 1, 256).into_option();
    let model = f.string("model", 1, 256).into_option();
    let stream = match f.boolean("stream") {
        Field::Value(b) => b,
        _ => false,
    };
    let include_usage = match &stream_options {
        None => false,
        Some(_) if !stream => {
            f.error("stream_options".into(), "only allowed with stream: true");
            false
        }
        Some(Value::Object(o)) => {
            // `include_obfuscation` only pads OpenAI's own chunks: accepted and ignored.
            if o.keys().any(|k| k != "include_usage" && k != "include_obfuscation") {
                f.error(
                    "stream_options".into(),
                    "only include_usage and include_obfuscation are supported",
                );
            }
            o.get("include_usage").and_then(Value::as_bool).unwrap_or(false)
        }
        Some(_) => {
            f.error("stream_options".into(), "must be an object");
            false
        }
    };
    let temperature = f.number("temperature", 0.0, 2.0).into_option();
    let top_p = f.number("top_p", 0.0, 1.0).into_option();
    let max_tokens = f.integer("max_tokens", 1, i64::from(i32::MAX)).into_option();
    let max_completion_tokens = f.integer("max_completion_tokens", 1, i64::from(i32::MAX)).into_option();
    if max_tokens.is_some() && max_completion_tokens.is_some() {
        f.error(
            "max_completion_tokens".into(),
            "give max_tokens or max_completion_tokens, not both",
        );
    }
    let stop = match stop {
        None => None,
        Some(Value::String(s)) => Some(vec![s]),
        Some(Value::Array(items)) => {
            let strings: Vec<String> = items.iter().filter_map(Value::as_str).map(str::to_string).collect();
            if strings.len() != items.len() || strings.len() > 4 {
                f.error("stop".into(), "must be a string or at most 4 strings");
            }
            Some(strings)
        }
        Some(_) => {
            f.error("stop".into(), "must be a string or an array of strings");
            None
        }
    };
    if stop
        .as_ref()
        .is_some_and(|s| s.iter().any(|s| !(1..=256).contains(&s.chars().count())))
    {
        f.error("stop".into(), "each stop sequence must be 1 to 256 characters long");
    }
    let seed = f.integer("seed", i64::MIN, i64::MAX).into_option();
    let presence_penalty = f.number("presence_penalty", -2.0, 2.0).into_option();
    let frequency_penalty = f.number("frequency_penalty", -2.0, 2.0).into_option();
    let tools = match tools {
        None => None,
        Some(Value::Array(items)) if items.len() <= 128 => Some(read_tools(items, &mut f)),
        Some(_) => {
            f.error("tools".into(), "must be an array of at most 128 tools");
            None
        }
    };
    if let Some(choice) = &tool_choice {
        match choice {
            Value::String(s) if ["none", "auto", "required"].contains(&s.as_str()) => {}
            Value::Object(_) => {
                let name = choice.pointer("/function/name").and_then(Value::as_str);
                let known = tools
                    .iter()
                    .flatten()
                    .any(|t| t.pointer("/function/name").and_then(Value::as_str) == name);
                if name.is_none() || !known {
                    f.error("tool_choice".into(), "must name a function listed in tools");
                }
            }
            _ => f.error("tool_choice".into(), "must be none, auto, required or a named function"),
        }
    }
    let parallel_tool_calls = f.boolean("parallel_tool_calls").into_option();
    if let Some(format) = &response_format {
        let kind = format.get("type").and_then(Value::as_str);
        let ok = match kind {
            Some("text" | "json_object") => true,
            Some("json_schema") => {
                format.pointer("/json_schema/name").is_some_and(Value::is_string)
                    && format.pointer("/json_schema/schema").is_some_and(Value::is_object)
            }
            _ => false,
        };
        if !ok {
            f.error(
                "response_format".into(),
                "must be text, json_object or json_schema with a name and a schema",
            );
        }
    }
    let user = f.string("user", 0, 256).into_option();
    let metadata = f.metadata("metadata").into_option().unwrap_or_default();
    if let Field::Value(n) = f.integer("n", i64::MIN, i64::MAX)
        && n != 1
    {
        f.error("n".into(), "only 1 is supported");
    }
    let extras = extras::read(&mut f, structured);
    f.finish()?;
    Ok(CompletionRequest {
        messages,
        agent,
        model,
        stream,
        include_usage,
        params: Params {
            temperature,
            top_p,
            max_tokens: max_tokens.or(max_completion_tokens),
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            user,
            reasoning: extras.reasoning,
            openai_only: extras.openai_only,
        },
        metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
    })
}
