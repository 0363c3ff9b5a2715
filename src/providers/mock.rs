//! The built-in `mock` provider (spec §4.6): deterministic, in process, no network, no key.
//! A product feature for sandbox users and offline development.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

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

/// The marker that makes the mock reviewer fail an output, so that fix attempts and failed
/// reviews can be tried without a real model.
const FAIL_MARKER: &str = "MOCK_FAIL";

/// What any answering mock model says when asked for a task review (spec §4.6, §5.7): the
/// `polpo_review` JSON scoring every dimension of the schema's enum 5, or 1 when the output
/// under review (the last user message) holds the fail marker. `None` for other requests.
fn review_reply(request: &ChatRequest) -> Option<String> {
    let format = request.params.response_format.as_ref()?;
    if format.get("type").and_then(Value::as_str) != Some("json_schema")
        || format.pointer("/json_schema/name").and_then(Value::as_str) != Some("polpo_review")
    {
        return None;
    }
    let dimensions = format
        .pointer("/json_schema/schema/properties/scores/items/properties/dimension/enum")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let failing = echo_reply(request).contains(FAIL_MARKER);
    let (score, reasoning, feedback) = if failing {
        (
            1,
            "The output does not meet this dimension.",
            "The output does not meet the criteria; address the reviewer's concerns and try again.",
        )
    } else {
        (
            5,
            "The output fully meets this dimension.",
            "The output meets every criterion.",
        )
    };
    let scores: Vec<Value> = dimensions
        .iter()
        .map(|dimension| json!({"dimension": dimension, "score": score, "reasoning": reasoning}))
        .collect();
    Some(json!({"scores": scores, "feedback": feedback}).to_string())
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
            let review = review_reply(&request);
            let reply = review.clone().unwrap_or_else(|| echo_reply(&request));
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
                "tool" if review.is_none() && first_tool_name(&request).is_some() => {
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
                    let mut items: Vec<Result<Chunk, ProviderError>> = split_words(&echo_reply(&request))
                        .into_iter()
                        .take(3)
                        .map(|w| Ok(Chunk::Text(w)))
                        .collect();
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

    fn review_request(model: &str, output: &str, schema_name: &str) -> ChatRequest {
        let dimension = json!({"type": "string", "enum": ["clarity", "accuracy"]});
        let schema = json!({"type": "object", "properties": {"scores": {"type": "array", "items": {
            "type": "object", "properties": {"dimension": dimension}}}}});
        let mut request = request(model, output);
        request.params.response_format = Some(json!({"type": "json_schema",
            "json_schema": {"name": schema_name, "strict": true, "schema": schema}}));
        request
    }

    async fn answer(request: ChatRequest) -> (String, Vec<Chunk>) {
        let chunks: Vec<Chunk> = MockClient
            .stream(request)
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let text = chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        (text, chunks)
    }

    #[tokio::test]
    async fn reviews_score_every_dimension_five_or_one_on_the_fail_marker() {
        for model in ["echo", "slow-echo", "tool"] {
            let (text, chunks) = answer(review_request(model, "Release notes for 2.0", "polpo_review")).await;
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(reply["scores"][0]["dimension"], "clarity", "{model}");
            assert_eq!(reply["scores"][1]["dimension"], "accuracy");
            assert!(
                reply["scores"].as_array().unwrap().iter().all(|s| s["score"] == 5),
                "{reply}"
            );
            assert!(reply["scores"][0]["reasoning"].is_string());
            assert_eq!(reply["feedback"], "The output meets every criterion.");
            let texts = chunks.iter().filter(|c| matches!(c, Chunk::Text(_))).count();
            assert!(texts > 1, "streamed word by word");
            assert_eq!(
                chunks[texts..],
                [
                    Chunk::Finish(FinishReason::Stop),
                    Chunk::Usage(Usage {
                        prompt_tokens: 6,
                        completion_tokens: word_count(&text)
                    })
                ]
            );
        }
        let (text, _) = answer(review_request("echo", "Broken. MOCK_FAIL", "polpo_review")).await;
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert!(
            reply["scores"].as_array().unwrap().iter().all(|s| s["score"] == 1),
            "{reply}"
        );
        assert_eq!(reply["scores"].as_array().unwrap().len(), 2);
        assert!(!reply["feedback"].as_str().unwrap().contains("MOCK_FAIL"));
        assert!(!text.contains("MOCK_FAIL"));
    }

    #[tokio::test]
    async fn only_the_review_schema_is_answered_as_a_review() {
        let (text, _) = answer(review_request("echo", "plain text", "other_schema")).await;
        assert_eq!(text, "plain text");
        let mut with_tools = review_request("tool", "check this", "other_schema");
        with_tools.params.tools = Some(vec![json!({"type": "function", "function": {"name": "lookup"}})]);
        let (_, chunks) = answer(with_tools).await;
        assert!(matches!(&chunks[0], Chunk::ToolCallStart { name, .. } if name == "lookup"));
        let failed = match MockClient
            .stream(review_request("error-500", "x", "polpo_review"))
            .await
        {
            Ok(_) => panic!("error-500 answered a review"),
            Err(e) => e,
        };
        assert!(matches!(failed, ProviderError::Upstream(_)));
        let cut: Vec<_> = MockClient
            .stream(review_request("cut", "one two three four", "polpo_review"))
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(cut[0], Ok(Chunk::Text("one ".into())));
        assert!(cut[3].is_err());
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
