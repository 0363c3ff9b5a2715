//! The provider stream of one chat turn, driven by its reader (spec §3.6, §3.8–§3.10):
//! waiting for the first chunk, forwarding deltas, noticing a client that left, a revoked key, a
//! silent provider or the shutdown deadline, and storing what was said.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout, timeout_at};

use super::Runtime;
use super::chat::{Outbox, TurnEvent};
use crate::error::ApiError;
use crate::events::group::{GroupWrite, Plan};
use crate::events::{Event, Hold, UsageCounts};
use crate::ids;
use crate::metrics;
use crate::providers::types::{
    ChatMessage, ChatRequest, Chunk, ChunkStream, FinishReason, ModelClient, ProviderError, Usage,
};
use crate::runtime::sessions::{self, MESSAGE_PREFIX, StoredToolCall, StoredUsage};
use crate::scope::Scope;
use crate::store;

/// Maps a provider failure to the client's answer (spec §3.9); secrets stay in `cause`.
pub fn provider_error(error: ProviderError) -> ApiError {
    match error {
        ProviderError::Unauthorized { status } => ApiError::Upstream {
            message: "the model provider refused the server's credentials".into(),
            cause: format!("provider answered {status}"),
        },
        ProviderError::Rejected { status, message } => ApiError::Upstream {
            message: match &message {
                Some(m) => format!("the model provider rejected the request: {m}"),
                None => "the model provider rejected the request".into(),
            },
            cause: format!("provider answered {status}"),
        },
        ProviderError::RateLimited { retry_after } => ApiError::RateLimited {
            message: "the model provider is rate limiting requests; retry later".into(),
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        },
        ProviderError::Upstream(cause) => ApiError::Upstream {
            message: "the model provider returned an error".into(),
            cause,
        },
        ProviderError::Timeout => ApiError::UpstreamTimeout,
    }
}

/// Ends a streaming turn from outside: the reply so far is stored as `interrupted` and the
/// error goes to the client (the HTTP layer ends a stream whose key was revoked this way).
pub type Interrupt = futures_util::future::BoxFuture<'static, ApiError>;

/// The assistant reply as it accumulates.
#[derive(Default)]
struct Reply {
    text: String,
    tool_calls: BTreeMap<u32, StoredToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Reply {
    /// Takes a chunk in; returns it when the client should see it.
    fn absorb(&mut self, chunk: Chunk) -> Option<Chunk> {
        match &chunk {
            Chunk::Text(text) => self.text.push_str(text),
            Chunk::ToolCallStart { index, id, name } => {
                self.tool_calls.insert(
                    *index,
                    StoredToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                );
            }
            Chunk::ToolCallArguments { index, arguments } => {
                self.tool_calls
                    .entry(*index)
                    .or_insert_with(|| StoredToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    })
                    .arguments
                    .push_str(arguments);
            }
            Chunk::Finish(reason) => {
                self.finish = Some(*reason);
                return None;
            }
            Chunk::Usage(usage) => {
                self.usage = Some(*usage);
                return None;
            }
            // Shown to the client, not stored.
            Chunk::Logprobs(_) => {}
        }
        Some(chunk)
    }
}

/// How the stream ended.
enum Outcome {
    Finished,
    ClientLeft,
    Shutdown,
    Interrupted(ApiError),
    Failed(ApiError),
}

/// The provider's stream, its first chunk already read.
struct Upstream<'a> {
    first: Option<Chunk>,
    rest: &'a mut ChunkStream,
}

pub(super) struct Drive {
    pub(super) rt: Runtime,
    /// The provider's name, for metrics.
    pub(super) provider: String,
    /// A session this turn creates; not yet stored.
    pub(super) new_session: Option<store::chat::SessionRow>,
    pub(super) scope: Scope,
    pub(super) session_id: String,
    pub(super) agent: Option<String>,
    pub(super) model: String,
    pub(super) user: Option<String>,
    pub(super) stream: bool,
    pub(super) client: Arc<dyn ModelClient>,
    pub(super) request: ChatRequest,
    pub(super) new_messages: Vec<ChatMessage>,
    /// The hold of the request that waits for this (unstreamed) answer: the reply of a finished
    /// turn is committed by that request, with its idempotency record (spec §1.8).
    pub(super) hold: Option<Hold>,
}

impl Drive {
    pub(super) async fn run(self, tx: Arc<Outbox>, interrupt: Option<Interrupt>) {
        let limits = &self.rt.config.upstream;
        let deadline = Instant::now() + limits.total_timeout;
        let first_wait = limits.first_chunk_timeout.min(limits.total_timeout);
        let mut interrupt = interrupt.unwrap_or_else(|| Box::pin(std::future::pending()));
        let client = Arc::clone(&self.client);
        let request = self.request.clone();
        let opening = async move {
            let mut stream = client.stream(request).await?;
            let first = stream.next().await;
            Ok::<_, ProviderError>((stream, first))
        };
        let sent = std::time::Instant::now();
        let opened = tokio::select! {
            // The client left before anything happened: nothing to store (spec §3.6 rule 5).
            () = tx.closed() => return,
            opened = timeout(first_wait, opening) => opened,
        };
        let opened = match opened {
            Err(_) => Err(ApiError::UpstreamTimeout),
            Ok(Err(e)) | Ok(Ok((_, Some(Err(e))))) => Err(provider_error(e)),
            Ok(Ok((_, None))) => Err(provider_error(ProviderError::Upstream(
                "the provider closed the stream without answering".into(),
            ))),
            Ok(Ok((stream, Some(Ok(chunk))))) => Ok((stream, chunk)),
        };
        let outcome = opened.as_ref().map_or_else(|e| e.code(), |_| "ok");
        self.rt.metrics.add(
            metrics::UPSTREAM_REQUESTS,
            &[("provider", &self.provider), ("status", outcome)],
            1.0,
        );
        let (mut upstream, first): (ChunkStream, Chunk) = match opened {
            Ok(opened) => opened,
            Err(error) => return self.fail_early(&tx, error).await,
        };
        self.rt.metrics.observe(
            metrics::UPSTREAM_FIRST_CHUNK,
            &[("provider", &self.provider)],
            sent.elapsed(),
        );
        // A streamed answer stores the new messages before its first chunk goes out, so that
        // the session its header names can be read at once (spec §3.6 rule 5). An answer sent
        // whole names its session only when it ends: its new messages are committed with the
        // reply then, in one transaction.
        let mut pending = self.messages_write(&self.new_messages);
        if self.stream
            && let Some(write) = pending.take()
        {
            match self.rt.group.write(Box::new(write)).await.map_err(ApiError::from) {
                Ok(true) => {}
                Ok(false) => return self.fail_early(&tx, sessions::not_found(&self.session_id)).await,
                // With the database unreachable, storing the session alone would wait for it
                // again and fail the same way: the answer is the 503 now, not one wait later.
                Err(e @ ApiError::Unavailable(_)) => {
                    tx.send(TurnEvent::Failed(e));
                    return;
                }
                Err(e) => return self.fail_early(&tx, e).await,
            }
        }
        let mut reply = Reply::default();
        let outcome = if tx.send(TurnEvent::Started) {
            let stream = Upstream {
                first: Some(first),
                rest: &mut upstream,
            };
            self.pump(&tx, stream, &mut reply, deadline, &mut interrupt).await
        } else {
            Outcome::ClientLeft
        };
        // Dropping the stream closes the upstream request; nothing can interrupt the turn now.
        drop(upstream);
        drop(interrupt);
        let (finish, usage, estimated) = self.settle(&outcome, &reply);
        let hold = matches!(outcome, Outcome::Finished)
            .then_some(self.hold.as_ref())
            .flatten();
        let stored = self.store_reply(pending, &reply, &finish, usage, estimated, hold).await;
        if let Err(e) = &stored {
            tracing::error!(session_id = %self.session_id, error = ?e, "could not store the chat reply");
        }
        let event = match (outcome, stored) {
            // A reply the database could not keep is not a finished turn: the client is told
            // the server is unavailable instead of `[DONE]` (or `200`), and can retry.
            (Outcome::Finished, Err(e @ ApiError::Unavailable(_))) => TurnEvent::Failed(e),
            (Outcome::Finished, _) => TurnEvent::Completed {
                finish: reply.finish.unwrap_or(FinishReason::Stop),
                usage,
            },
            (Outcome::Failed(error), _) => {
                let report = error.report();
                tracing::warn!(session_id = %self.session_id, code = report.code, cause = report.log_cause.as_deref(),
                    "provider failed mid-stream");
                TurnEvent::Failed(error)
            }
            (Outcome::Shutdown, _) => TurnEvent::Failed(ApiError::Unavailable("shutdown deadline reached".into())),
            (Outcome::Interrupted(error), _) => TurnEvent::Failed(error),
            (Outcome::ClientLeft, _) => return,
        };
        tx.send(event);
    }

    /// Forwards chunks until the answer ends, the client leaves, the server stops or a limit hits.
    /// Each delta is handed over before the next chunk is read.
    async fn pump(
        &self,
        tx: &Outbox,
        mut upstream: Upstream<'_>,
        reply: &mut Reply,
        deadline: Instant,
        interrupt: &mut Interrupt,
    ) -> Outcome {
        let idle_timeout = self.rt.config.upstream.idle_timeout;
        let mut last_chunk = Instant::now();
        // Made once, not for every chunk: each wait for a cancellation joins a list (the hard
        // stop's, every turn's).
        let left = tx.closed();
        let stopping = self.rt.hard_stop.cancelled();
        tokio::pin!(left, stopping);
        loop {
            let chunk = match upstream.first.take() {
                Some(first) => first,
                None => {
                    let wait_until = (last_chunk + idle_timeout).min(deadline);
                    let next = tokio::select! {
                        biased;
                        () = &mut left => return Outcome::ClientLeft,
                        () = &mut stopping => return Outcome::Shutdown,
                        error = &mut *interrupt => return Outcome::Interrupted(error),
                        next = timeout_at(wait_until, upstream.rest.next()) => next,
                    };
                    match next {
                        Err(_) => return Outcome::Failed(ApiError::UpstreamTimeout),
                        Ok(None) => return Outcome::Finished,
                        Ok(Some(Err(e))) => return Outcome::Failed(provider_error(e)),
                        Ok(Some(Ok(chunk))) => {
                            last_chunk = Instant::now();
                            chunk
                        }
                    }
                }
            };
            let Some(delta) = reply.absorb(chunk) else { continue };
            if !tx.send(TurnEvent::Delta(delta)) {
                return Outcome::ClientLeft;
            }
            // The reader passes the delta on (a stream writes it out) before the turn reads on
            // or writes to the database.
            tx.taken().await;
        }
    }

    /// A failure before the first chunk: a new session is stored empty, so that its id, which
    /// the client receives, names a session it can retry in.
    async fn fail_early(&self, tx: &Outbox, error: ApiError) {
        if let Some(write) = self.messages_write(&[])
            && let Err(e) = self.rt.group.write(Box::new(write)).await
        {
            tracing::error!(session_id = %self.session_id, error = ?e, "could not store the new session");
        }
        tx.send(TurnEvent::Failed(error));
    }

    /// The stored finish reason and usage (estimated when the provider gave none).
    fn settle(&self, outcome: &Outcome, reply: &Reply) -> (String, Usage, bool) {
        let finish = match outcome {
            Outcome::Finished => {
                let default = if reply.tool_calls.is_empty() {
                    FinishReason::Stop
                } else {
                    FinishReason::ToolCalls
                };
                reply.finish.unwrap_or(default).as_str().to_string()
            }
            Outcome::ClientLeft | Outcome::Shutdown | Outcome::Interrupted(_) => "interrupted".to_string(),
            Outcome::Failed(_) => "error".to_string(),
        };
        match reply.usage {
            Some(usage) => (finish, usage, false),
            None => {
                let prompt_chars: usize = self
                    .request
                    .messages
                    .iter()
                    .map(|m| m.text_content().chars().count())
                    .sum();
                let completion_chars = reply.text.chars().count()
                    + reply
                        .tool_calls
                        .values()
                        .map(|c| c.name.len() + c.arguments.chars().count())
                        .sum::<usize>();
                let estimate = |chars: usize| i64::try_from(chars.div_ceil(4)).unwrap_or(i64::MAX);
                let usage = Usage {
                    prompt_tokens: estimate(prompt_chars),
                    completion_tokens: estimate(completion_chars),
                };
                (finish, usage, true)
            }
        }
    }

    /// The write of the new session (if this turn creates one) or the existing session's
    /// counters, and `messages`, with their events; `None` when there is nothing to write.
    fn messages_write(&self, messages: &[ChatMessage]) -> Option<StoreMessages> {
        if self.new_session.is_none() && messages.is_empty() {
            return None;
        }
        Some(StoreMessages {
            scope: self.scope.clone(),
            session_id: self.session_id.clone(),
            new_session: self.new_session.clone(),
            messages: messages
                .iter()
                .map(|message| store::chat::MessageRow {
                    id: ids::new_id(MESSAGE_PREFIX),
                    session_id: self.session_id.clone(),
                    role: message.role.as_str().to_string(),
                    content: message.content.clone().unwrap_or(Value::Null).to_string(),
                    tool_calls: tool_calls_json(message.tool_calls.iter().map(|c| StoredToolCall {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    })),
                    tool_call_id: message.tool_call_id.clone(),
                    model: None,
                    finish_reason: None,
                    usage: None,
                    created_at: 0,
                })
                .collect(),
        })
    }

    /// Stores the reply (after `before`, the new messages when they wait for it) and announces
    /// it; nothing when the session was deleted meanwhile. Inside `hold`, the change is left to
    /// the waiting request to commit.
    async fn store_reply(
        &self,
        before: Option<StoreMessages>,
        reply: &Reply,
        finish: &str,
        usage: Usage,
        estimated: bool,
        hold: Option<&Hold>,
    ) -> Result<(), ApiError> {
        let stored_usage = StoredUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            estimated: estimated.then_some(true),
        };
        let content = if reply.text.is_empty() && !reply.tool_calls.is_empty() {
            Value::Null
        } else {
            json!(reply.text)
        };
        let write = StoreReply {
            scope: self.scope.clone(),
            before,
            row: store::chat::MessageRow {
                id: ids::new_id(MESSAGE_PREFIX),
                session_id: self.session_id.clone(),
                role: "assistant".into(),
                content: content.to_string(),
                tool_calls: tool_calls_json(reply.tool_calls.values().cloned()),
                tool_call_id: None,
                model: Some(self.model.clone()),
                finish_reason: Some(finish.to_string()),
                usage: Some(serde_json::to_string(&stored_usage).map_err(ApiError::internal)?),
                created_at: 0,
            },
            finished: Event::CompletionFinished {
                session_id: self.session_id.clone(),
                agent: self.agent.clone(),
                model: self.model.clone(),
                usage: UsageCounts {
                    prompt_tokens: stored_usage.prompt_tokens,
                    completion_tokens: stored_usage.completion_tokens,
                    total_tokens: stored_usage.total_tokens,
                },
                finish_reason: finish.to_string(),
                stream: self.stream,
                user: self.user.clone(),
            },
        };
        match hold {
            // The waiting request commits the reply with its idempotency record.
            Some(hold) => {
                let mut change = self.rt.change(&self.scope).await?;
                let at = change.at();
                if let Some(events) = write.plan(at).run(change.conn()).await? {
                    for event in events {
                        change.emit(event);
                    }
                    hold.around(change.commit()).await?;
                }
            }
            None => {
                self.rt.group.write(Box::new(write)).await?;
            }
        }
        Ok(())
    }
}

/// The new session (or the existing session's counters) and the turn's new messages. The
/// session row is written first: it orders concurrent turns on SQLite and notices a session
/// deleted meanwhile (then nothing is written).
struct StoreMessages {
    scope: Scope,
    session_id: String,
    new_session: Option<store::chat::SessionRow>,
    /// Stamped with the transaction's instant when written.
    messages: Vec<store::chat::MessageRow>,
}

impl StoreMessages {
    /// The session and the messages, counting `also` more messages that the caller adds to the
    /// same plan; nothing is written when the session is gone.
    fn plan_counting(&self, at: i64, also: i64) -> Plan {
        let count = i64::try_from(self.messages.len())
            .unwrap_or(i64::MAX)
            .saturating_add(also);
        let mut plan = Plan::default();
        plan.events.reserve(self.messages.len() + 3);
        match &self.new_session {
            Some(row) => {
                let row = store::chat::SessionRow {
                    message_count: count,
                    updated_at: at,
                    ..row.clone()
                };
                store::chat::insert_session(&mut plan.script, &self.scope, &row);
                plan.events.push(Event::SessionCreated {
                    session_id: row.id,
                    agent: row.agent,
                    title: row.title,
                    user: row.user,
                });
            }
            None => store::chat::touch_session(&mut plan.script, &self.scope, &self.session_id, count, at),
        }
        add_messages(&mut plan, &self.scope, &self.messages, at);
        plan
    }
}

impl GroupWrite for StoreMessages {
    fn scope(&self) -> &Scope {
        &self.scope
    }

    fn plan(&self, at: i64) -> Plan {
        self.plan_counting(at, 0)
    }
}

/// Adds `messages` stamped `at` to `plan`, with their `message:added` events.
fn add_messages(plan: &mut Plan, scope: &Scope, messages: &[store::chat::MessageRow], at: i64) {
    store::chat::insert_messages(&mut plan.script, scope, messages, at);
    plan.events.extend(messages.iter().map(|row| Event::MessageAdded {
        session_id: row.session_id.clone(),
        message_id: row.id.clone(),
        role: row.role.clone(),
    }));
}

/// The assistant's reply, counted on its session, with `message:added` and the completion's
/// event, after the turn's new messages when they are written with it; nothing when the session
/// is gone.
struct StoreReply {
    scope: Scope,
    before: Option<StoreMessages>,
    /// Stamped with the transaction's instant when written.
    row: store::chat::MessageRow,
    finished: Event,
}

impl GroupWrite for StoreReply {
    fn scope(&self) -> &Scope {
        &self.scope
    }

    fn plan(&self, at: i64) -> Plan {
        // Written with the new messages, the reply is counted with them.
        let mut plan = match &self.before {
            Some(before) => before.plan_counting(at, 1),
            None => {
                let mut plan = Plan::default();
                store::chat::touch_session(&mut plan.script, &self.scope, &self.row.session_id, 1, at);
                plan
            }
        };
        add_messages(&mut plan, &self.scope, std::slice::from_ref(&self.row), at);
        plan.events.push(self.finished.clone());
        plan
    }
}

fn tool_calls_json(calls: impl Iterator<Item = StoredToolCall>) -> Option<String> {
    let calls: Vec<StoredToolCall> = calls.collect();
    if calls.is_empty() {
        None
    } else {
        serde_json::to_string(&calls).ok()
    }
}
