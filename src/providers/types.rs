//! The canonical request, chunk and usage types every provider speaks internally. Wire types
//! stay inside each provider file; the chat runtime sees only these.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The OpenAI role name; also how messages are stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// A tool call made by the model: `arguments` is JSON text, as OpenAI sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// One message in OpenAI terms. `content` is a string, an array of OpenAI content parts
/// (`{"type":"text",...}`, `{"type":"image_url",...}`), or `None` (assistant with tool calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: Option<Value>,
    pub name: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(Value::String(text.into())),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// The text of the message: the string, or its text parts joined with `\n`.
    pub fn text_content(&self) -> String {
        content_text(self.content.as_ref())
    }
}

/// The text of a content value: the string, or the `text` of its text parts joined with `\n`.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Generation parameters, already merged (request over agent defaults). `None` = not sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// OpenAI tool objects: `{"type":"function","function":{name, description?, parameters?, strict?}}`.
    pub tools: Option<Vec<Value>>,
    /// `"none" | "auto" | "required" | {"type":"function","function":{"name"}}`.
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// `{"type":"text"} | {"type":"json_object"} | {"type":"json_schema","json_schema":{...}}`.
    pub response_format: Option<Value>,
    pub user: Option<String>,
    pub reasoning: Option<Reasoning>,
    /// Parameters only OpenAI-kind providers understand (`logprobs`, `top_logprobs`,
    /// `logit_bias`, `store`, `service_tier`, …; spec §3.2), forwarded to them as given and
    /// ignored by the others.
    pub openai_only: Map<String, Value>,
}

/// What a provider is asked: `model` is the provider-side name (after `provider:`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub params: Params,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Assistant text.
    Text(String),
    /// A tool call begins: `index` orders the calls of one answer.
    ToolCallStart { index: u32, id: String, name: String },
    /// More JSON text of a tool call's arguments.
    ToolCallArguments { index: u32, arguments: String },
    /// How the answer ended.
    Finish(FinishReason),
    /// Token counts, whenever the provider reports them.
    Usage(Usage),
    /// The provider's `logprobs` object for the content that follows (OpenAI-kind providers,
    /// when asked), passed to the client unchanged.
    Logprobs(Value),
}

/// A provider failure, as the client may be told about it (spec §3.9). Details meant for the
/// log only never contain the provider key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// 401/403: our credentials were refused.
    #[error("the provider refused our credentials (status {status})")]
    Unauthorized { status: u16 },
    /// Another 4xx. `message` is the provider's own error message, when it gave one.
    #[error("the provider rejected the request (status {status})")]
    Rejected { status: u16, message: Option<String> },
    /// 429, with the provider's wait when it gave one.
    #[error("the provider rate-limited the request")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, connection failure, malformed or non-JSON data. The string is for the log.
    #[error("provider failure: {0}")]
    Upstream(String),
    /// No first chunk, no next chunk, or no complete answer in time.
    #[error("the provider did not answer in time")]
    Timeout,
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

/// A model API. `stream` resolves once the provider accepted the request (2xx headers); the
/// chunks follow on the stream. Dropping the stream cancels the upstream request.
pub trait ModelClient: Send + Sync {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, ProviderError>>;
}

/// Removes anything that looks like a credential from a provider's message before a client
/// may see it (spec §3.9): long tokens with key-like prefixes, and bearer values.
pub fn scrub_secrets(message: &str) -> String {
    message
        .split_whitespace()
        .map(|word| {
            let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-');
            let looks_secret = bare.len() >= 20
                && (bare.starts_with("sk-")
                    || bare.starts_with("sk_")
                    || bare.starts_with("key-")
                    || bare.starts_with("xai-")
                    || bare.starts_with("gsk_")
                    || bare.starts_with("AIza")
                    || bare.chars().filter(char::is_ascii_digit).count() >= 6);
            if looks_secret { "[redacted]" } else { word }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_parts_are_joined_with_newlines() {
        let parts = json!([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "https://x"}},
                           {"type": "text", "text": "b"}]);
        assert_eq!(content_text(Some(&parts)), "a\nb");
        assert_eq!(content_text(Some(&json!("plain"))), "plain");
        assert_eq!(content_text(None), "");
    }

    #[test]
    fn credentials_are_scrubbed_from_provider_messages() {
        let scrubbed = scrub_secrets("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz123456.");
        assert!(!scrubbed.contains("abcdefghijklmnop"), "{scrubbed}");
        assert!(scrubbed.starts_with("Incorrect API key provided:"));
        assert_eq!(scrub_secrets("max_tokens is too large"), "max_tokens is too large");
    }
}

// How much the model should think before answering (spec §2.1 `reasoning`). Not a doc comment:
// it would become the schema's description in /v1/openapi.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reasoning {
    Off,
    Minimal,
    Low,
    Medium,
    High,
    Xhigh,
}

pub const REASONING_VALUES: &[&str] = &["off", "minimal", "low", "medium", "high", "xhigh"];

impl Reasoning {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "off" => Self::Off,
            "minimal" => Self::Minimal,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            "xhigh" => Self::Xhigh,
            _ => return None,
        })
    }
}
