//! One model call of a task, driven to its end without any request behind it: the attempt
//! itself or a reviewer call. The limits are the chat turn's (spec §3.9).

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::{Instant, timeout, timeout_at};

use crate::error::ApiError;
use crate::metrics;
use crate::providers::types::{ChatRequest, Chunk, FinishReason, ProviderError, Usage};
use crate::runtime::Runtime;
use crate::runtime::turn::provider_error;

/// What a finished call produced.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub text: String,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
}

/// A failed call: the error, what was said before it, and the provider's `Retry-After`.
#[derive(Debug)]
pub struct CallError {
    pub error: ApiError,
    pub partial: Answer,
    pub retry_after: Option<Duration>,
}

fn failure(error: ProviderError, partial: Answer) -> CallError {
    let retry_after = match &error {
        ProviderError::RateLimited { retry_after } => *retry_after,
        _ => None,
    };
    CallError {
        error: provider_error(error),
        partial,
        retry_after,
    }
}

/// Calls `model` (a model string such as `mock/echo`) with `request`; `on_text` sees every
/// content chunk as it arrives.
pub async fn call(
    rt: &Runtime,
    model: &str,
    mut request: ChatRequest,
    mut on_text: impl FnMut(&str),
) -> Result<Answer, CallError> {
    let (provider, client, provider_model) = match rt.providers.check_model(model) {
        Ok((provider, parsed)) => match rt.clients.get(&provider.name) {
            Some(client) => (provider.name.clone(), client, parsed.model.to_string()),
            None => return Err(not_configured(model)),
        },
        Err(_) => return Err(not_configured(model)),
    };
    request.model = provider_model;
    let limits = &rt.config.upstream;
    let deadline = Instant::now() + limits.total_timeout;
    let mut answer = Answer::default();
    let sent = std::time::Instant::now();
    let opened = timeout(
        limits.first_chunk_timeout.min(limits.total_timeout),
        client.stream(request),
    )
    .await;
    let status = match &opened {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => provider_error(e.clone()).code(),
        Err(_) => "upstream_timeout",
    };
    rt.metrics.add(
        metrics::UPSTREAM_REQUESTS,
        &[("provider", &provider), ("status", status)],
        1.0,
    );
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(failure(e, answer)),
        Err(_) => return Err(failure(ProviderError::Timeout, answer)),
    };
    let mut first = true;
    let mut wait_until = Instant::now() + limits.first_chunk_timeout;
    loop {
        let next = match timeout_at(wait_until.min(deadline), stream.next()).await {
            Err(_) => return Err(failure(ProviderError::Timeout, answer)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(failure(e, answer)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if first {
            first = false;
            rt.metrics.observe(
                metrics::UPSTREAM_FIRST_CHUNK,
                &[("provider", &provider)],
                sent.elapsed(),
            );
        }
        wait_until = Instant::now() + limits.idle_timeout;
        match next {
            Chunk::Text(text) => {
                on_text(&text);
                answer.text.push_str(&text);
            }
            Chunk::Finish(reason) => answer.finish = Some(reason),
            Chunk::Usage(usage) => answer.usage = usage,
            Chunk::ToolCallStart { .. } | Chunk::ToolCallArguments { .. } | Chunk::Logprobs(_) => {}
        }
    }
    Ok(answer)
}

fn not_configured(model: &str) -> CallError {
    CallError {
        error: ApiError::BadRequest {
            message: format!("the model {model:?} is not usable"),
            param: Some("model".into()),
            fields: Default::default(),
        },
        partial: Answer::default(),
        retry_after: None,
    }
}
