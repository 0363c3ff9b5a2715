//! The Anthropic Messages API provider (spec §4.5): request translation to the wire form, the
//! parser of its streamed events, and the client that ties them together.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};

use super::http;
use super::sse::{self, SseFrame};
use super::types::Reasoning;
use super::types::{
    ChatMessage, ChatRequest, Chunk, ChunkStream, FinishReason, ModelClient, ProviderError, Role, Usage, scrub_secrets,
};
use super::upstream::{Client, Endpoint};

const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; used when neither the request nor the agent set one.
const DEFAULT_MAX_TOKENS: i64 = 4096;
/// Room left for the visible answer on top of a thinking budget.
const ANSWER_ROOM: i64 = 4096;
const JSON_ONLY: &str = "Respond with a single JSON object and nothing else.";

/// A client of one Anthropic-kind provider. The key lives only here and in the request header.
#[derive(Clone)]
pub struct AnthropicClient {
    http: Client,
    base_url: String,
    /// `{base_url}/v1/messages`.
    endpoint: Result<Endpoint, String>,
    api_key: Option<String>,
}

impl AnthropicClient {
    /// `base_url` is the host root without a trailing slash, e.g. `https://api.anthropic.com`.
    pub fn new(http: Client, base_url: String, api_key: Option<String>) -> Self {
        Self {
            http,
            endpoint: http::endpoint(&base_url, "/v1/messages"),
            base_url,
            api_key,
        }
    }
}

impl std::fmt::Debug for AnthropicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicClient")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ModelClient for AnthropicClient {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, ProviderError>> {
        Box::pin(async move {
            let mut headers = vec![("anthropic-version", API_VERSION), ("accept", "text/event-stream")];
            if let Some(key) = &self.api_key {
                // A malformed key fails without being echoed (the client names the header only).
                headers.push(("x-api-key", key.as_str()));
            }
            let response = http::send(&self.http, &self.endpoint, &headers, &to_wire(&request)).await?;
            if !(200..300).contains(&response.status()) {
                return Err(http::error_for(response, error_message).await);
            }
            Ok(Box::pin(chunks(sse::frames(response))) as ChunkStream)
        })
    }
}

/// The provider's own message in an error body `{"type":"error","error":{"type","message"}}`.
fn error_message(body: &Value) -> Option<String> {
    body.get("error")?.get("message")?.as_str().map(str::to_string)
}

/// Frames in, chunks out; the stream must end with `message_stop`, anything shorter is a failure
/// (the answer would otherwise look complete to the client).
fn chunks(
    frames: impl Stream<Item = Result<SseFrame, ProviderError>> + Send + 'static,
) -> impl Stream<Item = Result<Chunk, ProviderError>> + Send {
    async_stream::try_stream! {
        let mut state = StreamState::default();
        futures_util::pin_mut!(frames);
        while let Some(frame) = frames.next().await {
            for chunk in state.feed(&frame?)? {
                yield chunk;
            }
            if state.done {
                return;
            }
        }
        Err(ProviderError::Upstream("stream ended early".into()))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Request translation

/// Translates a canonical request into the body of `POST /v1/messages` (always streaming).
pub fn to_wire(request: &ChatRequest) -> Value {
    let params = &request.params;
    let mut system: Vec<String> = Vec::new();
    // Anthropic requires user/assistant alternation, so same-role neighbours are merged; tool
    // results are user content, which also folds a user turn that follows them into one message.
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::System => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User => ("user", content_blocks(message.content.as_ref())),
            Role::Assistant => {
                let mut blocks = content_blocks(message.content.as_ref());
                blocks.extend(message.tool_calls.iter().map(|call| {
                    let input = serde_json::from_str::<Value>(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    json!({"type": "tool_use", "id": tool_id(&call.id), "name": call.name, "input": input})
                }));
                ("assistant", blocks)
            }
            Role::Tool => ("user", vec![tool_result(message)]),
        };
        match turns.last_mut() {
            _ if blocks.is_empty() => {}
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, mut content)| {
            // Anthropic wants tool results first in their user message; the sort is stable.
            content.sort_by_key(|block| block.get("type").and_then(Value::as_str) != Some("tool_result"));
            json!({"role": role, "content": content})
        })
        .collect();

    if let Some(instruction) = params.response_format.as_ref().and_then(json_instruction) {
        system.push(instruction);
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(true));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let mut max_tokens = params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    match params.reasoning.and_then(thinking_budget) {
        Some(budget) => {
            // The budget counts against max_tokens, and Anthropic refuses sampling parameters
            // while thinking, so they are dropped rather than sent.
            max_tokens = max_tokens.max(budget + ANSWER_ROOM);
            body.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": budget}));
        }
        None => {
            if let Some(t) = params.temperature {
                body.insert("temperature".into(), json!(t));
            }
            if let Some(p) = params.top_p {
                body.insert("top_p".into(), json!(p));
            }
        }
    }
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(stop) = params.stop.as_ref().filter(|s| !s.is_empty()) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(user) = &params.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    let tools: Vec<Value> = params.tools.iter().flatten().filter_map(wire_tool).collect();
    if !tools.is_empty() {
        // tool_choice without tools is refused upstream, so it is only sent alongside them.
        if let Some(choice) = params.tool_choice.as_ref().and_then(wire_tool_choice) {
            body.insert("tool_choice".into(), choice);
        }
        body.insert("tools".into(), Value::Array(tools));
    }
    // seed, penalties and parallel_tool_calls have no Anthropic counterpart: dropped (spec §4.5).
    Value::Object(body)
}

fn thinking_budget(reasoning: Reasoning) -> Option<i64> {
    match reasoning {
        Reasoning::Off => None,
        Reasoning::Minimal => Some(1024),
        Reasoning::Low => Some(2048),
        Reasoning::Medium => Some(8192),
        Reasoning::High => Some(16384),
        Reasoning::Xhigh => Some(32768),
    }
}

/// Anthropic has no JSON mode, so `response_format` becomes a system instruction.
fn json_instruction(format: &Value) -> Option<String> {
    match format.get("type").and_then(Value::as_str)? {
        "json_object" => Some(JSON_ONLY.to_string()),
        "json_schema" => match format.get("json_schema").and_then(|s| s.get("schema")) {
            Some(schema) => Some(format!("{JSON_ONLY} It must conform to this JSON schema: {schema}")),
            None => Some(JSON_ONLY.to_string()),
        },
        _ => None,
    }
}

/// Text and image blocks of an OpenAI content value. Empty text is left out because Anthropic
/// refuses empty text blocks; part types it cannot take (audio, files) are left out too.
fn content_blocks(content: Option<&Value>) -> Vec<Value> {
    let text_block = |text: &str| (!text.is_empty()).then(|| json!({"type": "text", "text": text}));
    match content {
        Some(Value::String(text)) => text_block(text).into_iter().collect(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part.get("type").and_then(Value::as_str)? {
                "text" => text_block(part.get("text").and_then(Value::as_str)?),
                "image_url" => {
                    let image = part.get("image_url")?;
                    Some(image_block(
                        image.get("url").and_then(Value::as_str).or_else(|| image.as_str())?,
                    ))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `data:<media>;base64,<data>` becomes a base64 source; anything else a URL source (a scheme
/// Anthropic cannot fetch is then refused upstream with its own message).
fn image_block(url: &str) -> Value {
    let inline = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(header, data)| Some((header.strip_suffix(";base64")?, data)));
    match inline {
        Some((media_type, data)) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

fn tool_result(message: &ChatMessage) -> Value {
    let mut block =
        json!({"type": "tool_result", "tool_use_id": tool_id(message.tool_call_id.as_deref().unwrap_or(""))});
    let content = match message.content.as_ref() {
        Some(Value::String(text)) if !text.is_empty() => Some(json!(text)),
        Some(parts @ Value::Array(_)) => Some(Value::Array(content_blocks(Some(parts)))).filter(|c| c != &json!([])),
        _ => None,
    };
    if let (Some(content), Some(object)) = (content, block.as_object_mut()) {
        object.insert("content".into(), content);
    }
    block
}

/// Anthropic accepts tool ids matching `^[a-zA-Z0-9_-]+$`; ids minted by other providers may
/// not, so both the tool_use and its tool_result get the same cleaned id.
fn tool_id(id: &str) -> String {
    if id.is_empty() {
        return "_".into();
    }
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

/// `{"type":"function","function":{name, description?, parameters?}}` → `{name, description?, input_schema}`.
fn wire_tool(tool: &Value) -> Option<Value> {
    let function = tool.get("function")?;
    let schema = function.get("parameters").cloned();
    let mut wire = json!({
        "name": function.get("name")?.as_str()?,
        "input_schema": schema.unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let (Some(description), Some(object)) = (function.get("description"), wire.as_object_mut()) {
        object.insert("description".into(), description.clone());
    }
    Some(wire)
}

fn wire_tool_choice(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => None,
        },
        _ => {
            let name = choice.get("function")?.get("name")?.as_str()?;
            Some(json!({"type": "tool", "name": name}))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream parsing

/// Turns Anthropic's streamed events into chunks, one frame at a time.
#[derive(Debug, Default)]
struct StreamState {
    /// Anthropic content-block index → our tool-call index (tool_use blocks only, in order).
    tool_calls: HashMap<u64, u32>,
    usage: Usage,
    /// `message_stop` was seen: the answer is complete.
    done: bool,
}

impl StreamState {
    fn feed(&mut self, frame: &SseFrame) -> Result<Vec<Chunk>, ProviderError> {
        if self.done || frame.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let data: Value =
            serde_json::from_str(&frame.data).map_err(|_| ProviderError::Upstream("stream data is not JSON".into()))?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(frame.event.as_deref())
            .unwrap_or("");
        let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                let field = |name: &str| int(data.pointer(&format!("/message/usage/{name}")));
                // Cached input is billed input too; the client sees the whole prompt.
                self.usage.prompt_tokens =
                    field("input_tokens") + field("cache_creation_input_tokens") + field("cache_read_input_tokens");
                self.usage.completion_tokens = field("output_tokens");
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tool_calls.len() as u32;
                        self.tool_calls.insert(int(data.get("index")) as u64, index);
                        let text = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("").to_string();
                        out.push(Chunk::ToolCallStart {
                            index,
                            id: text("id"),
                            name: text("name"),
                        });
                        // The input normally arrives as deltas after an empty `{}`; a non-empty
                        // one would otherwise be lost.
                        if let Some(input) = block
                            .get("input")
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                        {
                            out.push(Chunk::ToolCallArguments {
                                index,
                                arguments: input.to_string(),
                            });
                        }
                    }
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(Chunk::Text(text.to_string()));
                        }
                    }
                    _ => {} // thinking and redacted_thinking blocks are not shown
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let piece = |name: &str| delta.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => out.extend(piece("text").map(|t| Chunk::Text(t.to_string()))),
                    Some("input_json_delta") => {
                        let block = int(data.get("index")) as u64;
                        let index = *self.tool_calls.get(&block).ok_or_else(|| {
                            ProviderError::Upstream(format!("input_json_delta for block {block}, not a tool_use"))
                        })?;
                        if let Some(json) = piece("partial_json") {
                            out.push(Chunk::ToolCallArguments {
                                index,
                                arguments: json.to_string(),
                            });
                        }
                    }
                    _ => {} // thinking_delta, signature_delta, citations_delta
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(Chunk::Finish(finish_reason(reason)));
                }
                if let Some(output) = data.pointer("/usage/output_tokens").and_then(Value::as_i64) {
                    // Cumulative, so it replaces the count message_start gave.
                    self.usage.completion_tokens = output;
                }
            }
            "message_stop" => {
                self.done = true;
                out.push(Chunk::Usage(self.usage));
            }
            "error" => return Err(stream_error(&data)),
            _ => {} // ping, content_block_stop, and events added to the API later
        }
        Ok(out)
    }
}

fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop, // end_turn, stop_sequence, pause_turn, ...
    }
}

/// A mid-stream `error` event; Anthropic reports overload and rate limits this way after 200.
fn stream_error(data: &Value) -> ProviderError {
    let error = data.get("error").unwrap_or(&Value::Null);
    let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
    if kind == "rate_limit_error" {
        return ProviderError::RateLimited { retry_after: None };
    }
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    ProviderError::Upstream(format!("stream error {kind}: {}", scrub_secrets(message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseDecoder;
    use crate::providers::types::{Params, ToolCall};

    fn msg(role: Role, text: &str) -> ChatMessage {
        ChatMessage::text(role, text)
    }

    fn wire(messages: Vec<ChatMessage>, params: Params) -> Value {
        to_wire(&ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages,
            params,
        })
    }

    fn hi() -> Vec<ChatMessage> {
        vec![msg(Role::User, "hi")]
    }

    #[test]
    fn system_messages_go_to_the_top_and_the_rest_passes_through() {
        let params = Params {
            temperature: Some(0.5),
            top_p: Some(0.9),
            stop: Some(vec!["END".into()]),
            user: Some("u-1".into()),
            seed: Some(7),
            presence_penalty: Some(1.0),
            parallel_tool_calls: Some(false),
            ..Default::default()
        };
        let messages = vec![
            msg(Role::System, "You are terse."),
            msg(Role::System, "Answer in French."),
            msg(Role::User, "Hi"),
            msg(Role::User, "there"),
            msg(Role::Assistant, "Bonjour"),
        ];
        assert_eq!(
            wire(messages, params),
            json!({
                "model": "claude-sonnet-4-5",
                "stream": true,
                "system": "You are terse.\n\nAnswer in French.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Bonjour"}]},
                ],
                "max_tokens": 4096,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop_sequences": ["END"],
                "metadata": {"user_id": "u-1"},
            })
        );
    }

    #[test]
    fn tool_calls_become_tool_use_and_results_are_merged_into_one_user_turn() {
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        };
        let mut assistant = msg(Role::Assistant, "Let me check.");
        assistant.tool_calls = vec![
            call("call_1", "weather", r#"{"city":"Rome"}"#),
            call("call.2", "time", "no"),
        ];
        let result = |id: &str, text: &str| ChatMessage {
            tool_call_id: Some(id.into()),
            ..msg(Role::Tool, text)
        };
        let messages = vec![
            msg(Role::User, "Weather and time?"),
            assistant,
            result("call_1", "sunny"),
            result("call.2", "noon"),
            msg(Role::User, "Thanks"),
        ];
        let params = Params {
            max_tokens: Some(100),
            ..Default::default()
        };
        let wire = wire(messages, params);
        assert_eq!(wire["max_tokens"], 100);
        assert_eq!(
            wire["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather and time?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Rome"}},
                    {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                    {"type": "text", "text": "Thanks"},
                ]},
            ])
        );
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let mut user = msg(Role::User, "");
        user.content = Some(json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
        ]));
        assert_eq!(
            wire(vec![user], Params::default())["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ])
        );
    }

    #[test]
    fn tools_and_tool_choice_are_mapped() {
        let tools = vec![
            json!({"type": "function", "function": {"name": "weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}),
            json!({"type": "function", "function": {"name": "ping"}}),
        ];
        let with_choice = |choice: Value| {
            let params = Params {
                tools: Some(tools.clone()),
                tool_choice: Some(choice),
                ..Default::default()
            };
            wire(hi(), params)
        };
        let auto = with_choice(json!("auto"));
        assert_eq!(
            auto["tools"],
            json!([
                {"name": "weather", "description": "Weather now",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(auto["tool_choice"], json!({"type": "auto"}));
        assert_eq!(with_choice(json!("required"))["tool_choice"], json!({"type": "any"}));
        assert_eq!(with_choice(json!("none"))["tool_choice"], json!({"type": "none"}));
        let named = with_choice(json!({"type": "function", "function": {"name": "ping"}}));
        assert_eq!(named["tool_choice"], json!({"type": "tool", "name": "ping"}));
        let no_tools = Params {
            tool_choice: Some(json!("auto")),
            ..Default::default()
        };
        assert!(wire(hi(), no_tools).get("tool_choice").is_none());
    }

    #[test]
    fn reasoning_sets_a_budget_raises_max_tokens_and_drops_sampling() {
        let mut params = Params {
            reasoning: Some(Reasoning::Medium),
            max_tokens: Some(1000),
            temperature: Some(0.2),
            top_p: Some(0.5),
            ..Default::default()
        };
        let thinking = wire(hi(), params.clone());
        assert_eq!(thinking["thinking"], json!({"type": "enabled", "budget_tokens": 8192}));
        assert_eq!(thinking["max_tokens"], 8192 + 4096);
        assert!(thinking.get("temperature").is_none() && thinking.get("top_p").is_none());

        let mut big = params.clone();
        big.reasoning = Some(Reasoning::Xhigh);
        big.max_tokens = Some(50_000);
        let big = wire(hi(), big);
        assert_eq!(
            (&big["max_tokens"], &big["thinking"]["budget_tokens"]),
            (&json!(50_000), &json!(32768))
        );

        params.reasoning = Some(Reasoning::Off);
        let off = wire(hi(), params);
        assert!(off.get("thinking").is_none());
        assert_eq!((&off["max_tokens"], &off["temperature"]), (&json!(1000), &json!(0.2)));
    }

    #[test]
    fn response_format_appends_a_json_instruction_to_system() {
        let with_format = |format: Value, messages: Vec<ChatMessage>| {
            let params = Params {
                response_format: Some(format),
                ..Default::default()
            };
            wire(messages, params)
        };
        let object = with_format(
            json!({"type": "json_object"}),
            vec![msg(Role::System, "Be brief."), hi().remove(0)],
        );
        assert_eq!(object["system"], format!("Be brief.\n\n{JSON_ONLY}"));

        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": schema}});
        let system = with_format(format, hi())["system"].as_str().unwrap_or("").to_string();
        assert!(
            system.starts_with(JSON_ONLY) && system.contains(&schema.to_string()),
            "{system}"
        );

        assert!(with_format(json!({"type": "text"}), hi()).get("system").is_none());
    }

    /// A stream as Anthropic sends it (thinking enabled, one text block, one tool call).
    const RECORDED: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"The user wants weather."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: ping
data: {"type": "ping"}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":" now."}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01A","name":"weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"\"Rome\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

    fn recorded_frames() -> Vec<SseFrame> {
        SseDecoder::default().feed(RECORDED.as_bytes()).unwrap()
    }

    #[test]
    fn a_recorded_stream_becomes_chunks() {
        let mut state = StreamState::default();
        let chunks: Vec<Chunk> = recorded_frames().iter().flat_map(|f| state.feed(f).unwrap()).collect();
        assert!(state.done);
        assert_eq!(
            chunks,
            vec![
                Chunk::Text("Checking".into()),
                Chunk::Text(" now.".into()),
                Chunk::ToolCallStart {
                    index: 0,
                    id: "toolu_01A".into(),
                    name: "weather".into()
                },
                Chunk::ToolCallArguments {
                    index: 0,
                    arguments: "{\"city\": ".into()
                },
                Chunk::ToolCallArguments {
                    index: 0,
                    arguments: "\"Rome\"}".into()
                },
                Chunk::Finish(FinishReason::ToolCalls),
                Chunk::Usage(Usage {
                    prompt_tokens: 40,
                    completion_tokens: 89
                }),
            ]
        );
        assert_eq!(finish_reason("end_turn"), FinishReason::Stop);
        assert_eq!(finish_reason("max_tokens"), FinishReason::Length);
        assert_eq!(finish_reason("refusal"), FinishReason::ContentFilter);
    }

    #[tokio::test]
    async fn a_stream_cut_before_message_stop_ends_with_an_error() {
        let mut frames = recorded_frames();
        frames.pop();
        let items: Vec<_> = chunks(futures_util::stream::iter(frames.into_iter().map(Ok)))
            .collect()
            .await;
        assert_eq!(items.len(), 7, "{items:?}");
        assert_eq!(
            items.last(),
            Some(&Err(ProviderError::Upstream("stream ended early".into())))
        );
    }

    #[test]
    fn error_events_and_non_json_data_fail_the_stream() {
        let frame = |event: &str, data: &str| SseFrame {
            event: Some(event.into()),
            data: data.into(),
        };
        let mut state = StreamState::default();
        let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let failure = state.feed(&frame("error", overloaded));
        assert!(
            matches!(&failure, Err(ProviderError::Upstream(m)) if m.contains("Overloaded")),
            "{failure:?}"
        );
        let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}"#;
        assert_eq!(
            state.feed(&frame("error", limited)),
            Err(ProviderError::RateLimited { retry_after: None })
        );
        let garbage = state.feed(&frame("content_block_delta", "{not json"));
        assert!(matches!(garbage, Err(ProviderError::Upstream(_))), "{garbage:?}");
    }

    #[test]
    fn error_bodies_yield_their_message_and_debug_hides_the_key() {
        let body =
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}});
        assert_eq!(error_message(&body).as_deref(), Some("max_tokens: too big"));
        assert_eq!(error_message(&json!({"detail": "x"})), None);
        let key = Some("sk-ant-api03-secret".to_string());
        let client = AnthropicClient::new(
            Client::new(std::time::Duration::from_secs(1)).unwrap(),
            "https://api.anthropic.com".into(),
            key,
        );
        assert!(!format!("{client:?}").contains("sk-ant-api03-secret"));
    }
}
