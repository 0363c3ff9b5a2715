//! OpenAI-compatible providers (spec §4.4): openai, xai, groq, openrouter, mistral, deepseek,
//! together, fireworks, google, ollama and custom ones. Always streams upstream, always asks for
//! usage.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::http;
use super::sse;
use super::types::Reasoning;
use super::types::{
    ChatMessage, ChatRequest, Chunk, ChunkStream, FinishReason, ModelClient, ProviderError, ToolCall, Usage,
};
use super::upstream::{Client, Endpoint, Response};

pub struct OpenAiClient {
    http: Client,
    /// `{base_url}/chat/completions`.
    endpoint: Result<Endpoint, String>,
    api_key: Option<String>,
    /// OpenAI itself wants `max_completion_tokens`; most compatible APIs still take `max_tokens`.
    max_tokens_field: &'static str,
}

impl OpenAiClient {
    pub fn new(http: Client, provider: &str, base_url: String, api_key: Option<String>) -> Self {
        let max_tokens_field = if provider == "openai" {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        Self {
            http,
            endpoint: http::endpoint(&base_url, "/chat/completions"),
            api_key,
            max_tokens_field,
        }
    }
}

impl ModelClient for OpenAiClient {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, ProviderError>> {
        Box::pin(async move {
            let body = to_wire(&request, self.max_tokens_field);
            let bearer = self.api_key.as_ref().map(|key| format!("Bearer {key}"));
            let headers: &[(&'static str, &str)] = match &bearer {
                Some(value) => &[("authorization", value.as_str())],
                None => &[],
            };
            let response = http::send(&self.http, &self.endpoint, headers, &body).await?;
            if !(200..300).contains(&response.status()) {
                return Err(http::error_for(response, error_message).await);
            }
            Ok(Box::pin(chunks(response)) as ChunkStream)
        })
    }
}

fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The request body in OpenAI form, written from the request as it is serialised, without a tree
/// of values built first. A parameter in `openai_only` takes the place of a same-named one.
pub struct Wire<'a> {
    request: &'a ChatRequest,
    max_tokens_field: &'a str,
}

pub fn to_wire<'a>(request: &'a ChatRequest, max_tokens_field: &'a str) -> Wire<'a> {
    Wire {
        request,
        max_tokens_field,
    }
}

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let request = self.request;
        let p = &request.params;
        let extra = &p.openai_only;
        let effort = match p.reasoning {
            None | Some(Reasoning::Off) => None,
            Some(Reasoning::Minimal) => Some("minimal"),
            Some(Reasoning::Low) => Some("low"),
            Some(Reasoning::Medium) => Some("medium"),
            Some(Reasoning::High) => Some("high"),
            Some(Reasoning::Xhigh) => Some("xhigh"),
        };
        let mut map = s.serialize_map(None)?;
        entry(&mut map, extra, "model", Some(&request.model))?;
        entry(&mut map, extra, "messages", Some(&WireMessages(&request.messages)))?;
        entry(&mut map, extra, "stream", Some(&true))?;
        entry(
            &mut map,
            extra,
            "stream_options",
            Some(&StreamOptions { include_usage: true }),
        )?;
        entry(&mut map, extra, "temperature", p.temperature.as_ref())?;
        entry(&mut map, extra, "top_p", p.top_p.as_ref())?;
        entry(&mut map, extra, self.max_tokens_field, p.max_tokens.as_ref())?;
        entry(&mut map, extra, "stop", p.stop.as_ref())?;
        entry(&mut map, extra, "seed", p.seed.as_ref())?;
        entry(&mut map, extra, "presence_penalty", p.presence_penalty.as_ref())?;
        entry(&mut map, extra, "frequency_penalty", p.frequency_penalty.as_ref())?;
        entry(&mut map, extra, "tools", p.tools.as_ref())?;
        entry(&mut map, extra, "tool_choice", p.tool_choice.as_ref())?;
        entry(&mut map, extra, "parallel_tool_calls", p.parallel_tool_calls.as_ref())?;
        entry(&mut map, extra, "response_format", p.response_format.as_ref())?;
        entry(&mut map, extra, "user", p.user.as_ref())?;
        entry(&mut map, extra, "reasoning_effort", effort.as_ref())?;
        for (key, value) in extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One member of the body, unless absent or given in `openai_only` instead.
fn entry<M: SerializeMap, V: Serialize + ?Sized>(
    map: &mut M,
    extra: &Map<String, Value>,
    key: &str,
    value: Option<&V>,
) -> Result<(), M::Error> {
    match value {
        Some(value) if !extra.contains_key(key) => map.serialize_entry(key, value),
        _ => Ok(()),
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

struct WireMessages<'a>(&'a [ChatMessage]);

impl Serialize for WireMessages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|m| WireMessage {
            role: m.role.as_str(),
            content: &m.content,
            name: m.name.as_deref(),
            tool_calls: (!m.tool_calls.is_empty()).then_some(WireCalls(&m.tool_calls)),
            tool_call_id: m.tool_call_id.as_deref(),
        }))
    }
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    /// `null` when the message has none, as OpenAI writes it.
    content: &'a Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<WireCalls<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

struct WireCalls<'a>(&'a [ToolCall]);

impl Serialize for WireCalls<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| WireCall {
            id: &c.id,
            r#type: "function",
            function: WireFunction {
                name: &c.name,
                arguments: &c.arguments,
            },
        }))
    }
}

/// A tool call as OpenAI writes it: `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

fn finish_reason(text: &str) -> FinishReason {
    match text {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// The chunks of one parsed `chat.completion.chunk` object.
pub fn parse_chunk(value: &Value) -> Result<Vec<Chunk>, ProviderError> {
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error in stream");
        return Err(ProviderError::Upstream(format!("error frame: {message}")));
    }
    let mut out = Vec::new();
    if let Some(choice) = value.get("choices").and_then(Value::as_array).and_then(|c| c.first()) {
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        // Before the content they describe, so that the client sees them on the same chunk.
        if let Some(logprobs) = choice.get("logprobs").filter(|l| l.is_object()) {
            out.push(Chunk::Logprobs(logprobs.clone()));
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            out.push(Chunk::Text(text.to_string()));
        }
        for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0);
            let function = call.get("function").unwrap_or(&Value::Null);
            let id = call.get("id").and_then(Value::as_str);
            let name = function.get("name").and_then(Value::as_str);
            if id.is_some() || name.is_some() {
                out.push(Chunk::ToolCallStart {
                    index,
                    id: id.unwrap_or_default().to_string(),
                    name: name.unwrap_or_default().to_string(),
                });
            }
            if let Some(arguments) = function
                .get("arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                out.push(Chunk::ToolCallArguments {
                    index,
                    arguments: arguments.to_string(),
                });
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            out.push(Chunk::Finish(finish_reason(reason)));
        }
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        let count = |k: &str| usage.get(k).and_then(Value::as_i64).unwrap_or(0);
        out.push(Chunk::Usage(Usage {
            prompt_tokens: count("prompt_tokens"),
            completion_tokens: count("completion_tokens"),
        }));
    }
    Ok(out)
}

/// The chunks of one frame's text. Frames of the usual shape are read straight into typed
/// fields, borrowing their strings; any other frame (a field of an unexpected type, an error
/// frame, a duplicate key) is read as a tree by [`parse_chunk`], which decides what it means.
fn read_chunk(text: &str) -> Result<Vec<Chunk>, ProviderError> {
    if let Ok(frame) = serde_json::from_str::<wire::Frame<'_>>(text)
        && !frame.error
    {
        return Ok(frame.into_chunks());
    }
    let value = serde_json::from_str::<Value>(text)
        .map_err(|_| ProviderError::Upstream("a stream frame is not JSON".into()))?;
    parse_chunk(&value)
}

/// The usual shape of a `chat.completion.chunk`, for [`read_chunk`]. Every field is optional,
/// as in [`parse_chunk`]; a field that is present with another type fails the whole read.
mod wire {
    use std::borrow::Cow;

    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use super::finish_reason;
    use crate::providers::types::{Chunk, Usage};

    #[derive(Deserialize)]
    pub struct Frame<'a> {
        /// Whether the frame has an `error` member at all (even `null`): such frames go to
        /// [`super::parse_chunk`].
        #[serde(default, deserialize_with = "present")]
        pub error: bool,
        #[serde(default, borrow)]
        choices: Option<Vec<Choice<'a>>>,
        #[serde(default)]
        usage: Option<UsageCounts>,
    }

    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(default, borrow)]
        delta: Option<Delta<'a>>,
        #[serde(default)]
        logprobs: Option<Value>,
        #[serde(default, borrow)]
        finish_reason: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct Delta<'a> {
        #[serde(default, borrow)]
        content: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        tool_calls: Option<Vec<Call<'a>>>,
    }

    #[derive(Deserialize)]
    struct Call<'a> {
        #[serde(default)]
        index: Option<u64>,
        #[serde(default, borrow)]
        id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        function: Option<Function<'a>>,
    }

    #[derive(Deserialize)]
    struct Function<'a> {
        #[serde(default, borrow)]
        name: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        arguments: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    struct UsageCounts {
        #[serde(default)]
        prompt_tokens: Option<i64>,
        #[serde(default)]
        completion_tokens: Option<i64>,
    }

    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| true)
    }

    impl Frame<'_> {
        /// The same chunks, in the same order, as [`super::parse_chunk`] gives for this frame.
        pub fn into_chunks(self) -> Vec<Chunk> {
            let mut out = Vec::new();
            if let Some(choice) = self.choices.and_then(|c| c.into_iter().next()) {
                if let Some(logprobs) = choice.logprobs.filter(Value::is_object) {
                    out.push(Chunk::Logprobs(logprobs));
                }
                if let Some(delta) = choice.delta {
                    if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                        out.push(Chunk::Text(text.into_owned()));
                    }
                    for call in delta.tool_calls.into_iter().flatten() {
                        let index = call.index.and_then(|i| u32::try_from(i).ok()).unwrap_or(0);
                        let (name, arguments) = match call.function {
                            Some(f) => (f.name, f.arguments),
                            None => (None, None),
                        };
                        if call.id.is_some() || name.is_some() {
                            out.push(Chunk::ToolCallStart {
                                index,
                                id: call.id.map(Cow::into_owned).unwrap_or_default(),
                                name: name.map(Cow::into_owned).unwrap_or_default(),
                            });
                        }
                        if let Some(arguments) = arguments.filter(|a| !a.is_empty()) {
                            out.push(Chunk::ToolCallArguments {
                                index,
                                arguments: arguments.into_owned(),
                            });
                        }
                    }
                }
                if let Some(reason) = choice.finish_reason {
                    out.push(Chunk::Finish(finish_reason(&reason)));
                }
            }
            if let Some(usage) = self.usage {
                out.push(Chunk::Usage(Usage {
                    prompt_tokens: usage.prompt_tokens.unwrap_or(0),
                    completion_tokens: usage.completion_tokens.unwrap_or(0),
                }));
            }
            out
        }
    }
}

fn chunks(response: Response) -> impl futures_util::Stream<Item = Result<Chunk, ProviderError>> + Send {
    let frames = sse::frames(response);
    async_stream::stream! {
        futures_util::pin_mut!(frames);
        let mut finished = false;
        while let Some(frame) = frames.next().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            if frame.data == "[DONE]" {
                return;
            }
            let parsed = read_chunk(&frame.data);
            match parsed {
                Ok(chunks) => {
                    for chunk in chunks {
                        finished |= matches!(chunk, Chunk::Finish(_));
                        yield Ok(chunk);
                    }
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        // Some compatible servers close without [DONE]; that is only an error mid-answer.
        if !finished {
            yield Err(ProviderError::Upstream("stream ended before the answer finished".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::types::{Params, Role};
    use serde_json::json;

    #[test]
    fn requests_always_stream_with_usage_and_map_reasoning() {
        let request = ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![
                ChatMessage::text(Role::System, "be brief"),
                ChatMessage {
                    role: Role::Assistant,
                    content: None,
                    name: None,
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
            ],
            params: Params {
                max_tokens: Some(50),
                reasoning: Some(Reasoning::High),
                ..Params::default()
            },
        };
        let body = serde_json::to_value(to_wire(&request, "max_completion_tokens")).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["max_completion_tokens"], 50);
        assert_eq!(body["reasoning_effort"], "high");
        assert!(body["messages"][1]["content"].is_null());
        assert_eq!(body["messages"][1]["tool_calls"][0]["function"]["name"], "f");
        assert!(body.get("temperature").is_none());
    }

    #[test]
    fn a_parameter_given_for_openai_alone_is_sent_once_in_place_of_a_same_named_one() {
        let mut request = ChatRequest {
            model: "gpt-4o".into(),
            messages: vec![ChatMessage::text(Role::User, "hi")],
            params: Params {
                temperature: Some(0.5),
                ..Params::default()
            },
        };
        request.params.openai_only.insert("temperature".into(), json!(0.1));
        request.params.openai_only.insert("logprobs".into(), json!(true));
        let text = serde_json::to_string(&to_wire(&request, "max_tokens")).unwrap();
        assert_eq!(text.matches("\"temperature\"").count(), 1, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["temperature"], 0.1);
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
    }

    #[test]
    fn chunks_carry_text_tool_calls_finish_and_usage() {
        let frame = json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
            "finish_reason": null}]});
        assert_eq!(
            parse_chunk(&frame).unwrap(),
            vec![Chunk::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "get_weather".into()
            }]
        );
        let frame = json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]});
        assert_eq!(
            parse_chunk(&frame).unwrap(),
            vec![Chunk::Text("hi".into()), Chunk::Finish(FinishReason::Stop)]
        );
        let frame = json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        assert_eq!(
            parse_chunk(&frame).unwrap(),
            vec![Chunk::Usage(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })]
        );
        assert!(parse_chunk(&json!({"error": {"message": "boom"}})).is_err());
    }

    #[test]
    fn frames_read_into_typed_fields_give_what_the_tree_reading_gives() {
        let frames = [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"caf\u00e9 \"quoted\"\n"},"logprobs":{"content":[]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_9","function":{"name":"f","arguments":"{\"a\""}},{"index":1,"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":4294967296,"id":"x"}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[{"delta":null,"logprobs":"no","finish_reason":"length"}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"{"choices":{"0":{}},"usage":"many"}"#,
            r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"error":null}"#,
            r#"{"error":{"message":"overloaded"}}"#,
            r#"[1,2]"#,
        ];
        for text in frames {
            let tree = parse_chunk(&serde_json::from_str::<Value>(text).unwrap());
            assert_eq!(read_chunk(text), tree, "{text}");
        }
        assert_eq!(
            read_chunk(r#"{"choices":[{"delta":{"content":"caf\u00e9"}}]}"#).unwrap(),
            vec![Chunk::Text("café".into())]
        );
        assert!(read_chunk("{not json").is_err());
    }
}
