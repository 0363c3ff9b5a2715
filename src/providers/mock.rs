//! The built-in `mock` provider (spec §4.6): deterministic, in process, no network, no key.
//! A product feature for sandbox users and offline development.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::types::{ChatRequest, Chunk, ChunkStream, FinishReason, ModelClient, ProviderError, Role, Usage};

pub struct MockClient;

/// Splits after each run of whitespace: `"hello world"` → `["hello ", "world"]`.
pub fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if in_space && !c.is_whitespace() {
            out.push(std::mem::take(&mut current));
        }
        in_space = c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn word_count(text: &str) -> i64 {
    i64::try_from(text.split_whitespace().count()).unwrap_or(i64::MAX)
}

/// What `echo` answers: the text of the last user message.
fn echo_reply(request: &ChatRequest) -> String {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.text_content())
        .unwrap_or_default()
}

fn prompt_tokens(request: &ChatRequest) -> i64 {
    request.messages.iter().map(|m| word_count(&m.text_content())).sum()
}

fn first_tool_name(request: &ChatRequest) -> Option<String> {
    let tool = request.params.tools.as_ref()?.first()?;
    tool.pointer("/function/name")
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl ModelClient for MockClient {
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChunkStream, ProviderError>> {
        Box::pin(async move {
            let prompt_tokens = prompt_tokens(&request);
            let reply = echo_reply(&request);
            let words = split_words(&reply);
            let completion_tokens = word_count(&reply);
            let usage = Chunk::Usage(Usage {
                prompt_tokens,
                completion_tokens,
            });
            let chunks: ChunkStream = match request.model.as_str() {
                "error-500" => return Err(ProviderError::Upstream("mock provider error 500".into())),
                "error-429" => {
                    return Err(ProviderError::RateLimited {
                        retry_after: Some(Duration::from_secs(1)),
                    });
                }
                "tool" if first_tool_name(&request).is_some() => {
                    let name = first_tool_name(&request).unwrap_or_default();
                    let chunks = vec![
                        Chunk::ToolCallStart {
                            index: 0,
                            id: "call_mock_1".into(),
                            name,
                        },
                        Chunk::ToolCallArguments {
                            index: 0,
                            arguments: "{}".into(),
                        },
                        Chunk::Finish(FinishReason::ToolCalls),
                        Chunk::Usage(Usage {
                            prompt_tokens,
                            completion_tokens: 1,
                        }),
                    ];
                    Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok)))
                }
                "cut" => {
                    let mut items: Vec<Result<Chunk, ProviderError>> =
                        words.into_iter().take(3).map(|w| Ok(Chunk::Text(w))).collect();
                    items.push(Err(ProviderError::Upstream("mock connection broken".into())));
                    Box::pin(futures_util::stream::iter(items))
                }
                model => {
                    let pause = (model == "slow-echo").then_some(Duration::from_millis(50));
                    let mut chunks: Vec<Chunk> = words.into_iter().map(Chunk::Text).collect();
                    chunks.push(Chunk::Finish(FinishReason::Stop));
                    chunks.push(usage);
                    Box::pin(async_stream::stream! {
                        for (i, chunk) in chunks.into_iter().enumerate() {
                            if let Some(pause) = pause && i > 0 {
                                tokio::time::sleep(pause).await;
                            }
                            yield Ok(chunk);
                        }
                    })
                }
            };
            Ok(chunks)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::types::{ChatMessage, Params};
    use futures_util::StreamExt;

    fn request(model: &str, text: &str) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![
                ChatMessage::text(Role::System, "be brief"),
                ChatMessage::text(Role::User, text),
            ],
            params: Params::default(),
        }
    }

    async fn collect(model: &str, text: &str) -> Vec<Result<Chunk, ProviderError>> {
        match MockClient.stream(request(model, text)).await {
            Ok(stream) => stream.collect().await,
            Err(e) => vec![Err(e)],
        }
    }

    #[test]
    fn words_split_after_whitespace_and_rejoin_exactly() {
        assert_eq!(split_words("hello world"), vec!["hello ", "world"]);
        assert_eq!(split_words("  a\n\nb "), vec!["  ", "a\n\n", "b "]);
        let text = "one  two\tthree\n";
        assert_eq!(split_words(text).concat(), text);
    }

    #[tokio::test]
    async fn echo_streams_the_last_user_message_with_usage() {
        let chunks: Vec<Chunk> = collect("echo", "hello world")
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            chunks,
            vec![
                Chunk::Text("hello ".into()),
                Chunk::Text("world".into()),
                Chunk::Finish(FinishReason::Stop),
                Chunk::Usage(Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2
                }),
            ]
        );
    }

    #[tokio::test]
    async fn failures_and_cuts_behave_as_documented() {
        assert!(matches!(
            collect("error-500", "x").await[0],
            Err(ProviderError::Upstream(_))
        ));
        assert_eq!(
            collect("error-429", "x").await[0],
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(1))
            })
        );
        let cut = collect("cut", "one two three four five").await;
        assert_eq!(cut.len(), 4);
        assert_eq!(cut[2], Ok(Chunk::Text("three ".into())));
        assert!(cut[3].is_err());
    }
}
