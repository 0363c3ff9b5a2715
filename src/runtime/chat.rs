//! The chat turn (spec §3.4–§3.10): resolve the target, open the session, compose what the
//! provider receives, and drive the provider stream in a task of its own so that a client that
//! leaves cancels the upstream request and the partial reply is still stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::auth::{AuthContext, KeyVerifier, Scope};
use crate::clock;
use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::events::hub::Hub;
use crate::events::{self, Event, UsageCounts};
use crate::ids;
use crate::providers::split_model;
use crate::providers::types::{
    ChatMessage, ChatRequest, Chunk, ChunkStream, FinishReason, ModelClient, Params, ProviderError, Role, Usage,
};
use crate::runtime::agents::{self, Agent};
use crate::runtime::prompt;
use crate::runtime::sessions::{self, MESSAGE_PREFIX, SESSION_PREFIX, StoredToolCall, StoredUsage};
use crate::store::{self, Db};

/// A validated chat completion request (spec §3.2).
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// Every request message in order; `developer` is already `Role::System`.
    pub messages: Vec<ChatMessage>,
    pub agent: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub params: Params,
    pub metadata: BTreeMap<String, String>,
}

/// Who answers (spec §3.4).
struct Target {
    agent: Option<Agent>,
    /// The model string as written in the agent or the request, e.g. `anthropic:claude-sonnet-4-5`.
    model: String,
    client: Arc<dyn ModelClient>,
    provider_model: String,
}

fn model_error(problem: String) -> ApiError {
    ApiError::BadRequest {
        message: format!("invalid model: {problem}"),
        param: Some("model".into()),
        fields: BTreeMap::new(),
    }
}

fn provider_target(state: &AppState, agent: Option<Agent>, model: &str) -> Result<Target, ApiError> {
    let (provider, parsed) = state.providers.check_model(model).map_err(model_error)?;
    let client = state
        .clients
        .get(&provider.name)
        .ok_or_else(|| model_error(format!("provider {:?} is not usable", provider.name)))?;
    Ok(Target {
        agent,
        model: model.to_string(),
        client,
        provider_model: parsed.model.to_string(),
    })
}

async fn resolve_target(state: &AppState, scope: &Scope, request: &CompletionRequest) -> Result<Target, ApiError> {
    if let Some(name) = &request.agent {
        let agent = agents::find(&state.db, scope, name)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                message: format!("Agent {name:?} not found"),
                param: Some("agent".into()),
            })?;
        // A provider-form model overrides the agent's model for this call; anything else is ignored.
        let model = match &request.model {
            Some(m) if split_model(m).is_some() => m.clone(),
            _ => agent.model.clone(),
        };
        return provider_target(state, Some(agent), &model);
    }
    let Some(model) = &request.model else {
        return Err(ApiError::BadRequest {
            message: "either model or agent is required".into(),
            param: Some("model".into()),
            fields: BTreeMap::new(),
        });
    };
    if split_model(model).is_some() {
        return provider_target(state, None, model);
    }
    match agents::find(&state.db, scope, model).await? {
        Some(agent) => {
            let model = agent.model.clone();
            provider_target(state, Some(agent), &model)
        }
        None => Err(ApiError::NotFound {
            message: format!("Agent {model:?} not found"),
            param: Some("model".into()),
        }),
    }
}

/// Events the driving task reports to the HTTP side, in this order: `Started` once the provider
/// produced its first chunk (and the new messages are stored), then deltas, then one of
/// `Completed` or `Failed`. A task whose client left reports nothing more.
#[derive(Debug)]
pub enum TurnEvent {
    Started,
    Delta(Chunk),
    Completed { finish: FinishReason, usage: Usage },
    Failed(ApiError),
}

/// A turn whose provider has started answering.
pub struct Turn {
    pub session_id: String,
    pub model: String,
    pub events: mpsc::Receiver<TurnEvent>,
}

/// A failure before the provider's first chunk, with the session id when one was resolved.
pub struct StartError {
    pub error: ApiError,
    pub session_id: Option<String>,
}

impl From<ApiError> for StartError {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            session_id: None,
        }
    }
}

/// First 60 characters of the first user message, newlines as spaces (spec §3.6 rule 1).
fn title_of(messages: &[ChatMessage]) -> String {
    let text = messages
        .iter()
        .find(|m| m.role == Role::User)
        .map(ChatMessage::text_content)
        .unwrap_or_default();
    text.chars()
        .take(60)
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// Runs everything up to the provider's first chunk; the rest continues in a task.
pub async fn start(
    state: &AppState,
    auth: &AuthContext,
    session_header: Option<&str>,
    request: CompletionRequest,
) -> Result<Turn, StartError> {
    let scope = &auth.scope;
    let target = resolve_target(state, scope, &request).await?;
    let agent_name = target.agent.as_ref().map(|a| a.name.clone());

    let existing = match session_header.filter(|h| *h != "new") {
        Some(id) => {
            let row = store::chat::get_session(&state.db.pool, scope, id)
                .await
                .map_err(ApiError::from)?;
            let row = row.ok_or_else(|| sessions::not_found(id))?;
            if row.agent != agent_name {
                return Err(StartError {
                    error: ApiError::conflict(format!(
                        "session {id:?} belongs to {}, not to {}",
                        row.agent
                            .as_deref()
                            .map_or("gateway mode".to_string(), |a| format!("agent {a:?}")),
                        agent_name
                            .as_deref()
                            .map_or("gateway mode".to_string(), |a| format!("agent {a:?}")),
                    )),
                    session_id: Some(row.id),
                });
            }
            Some(row)
        }
        None => None,
    };
    let transcript = match &existing {
        Some(row) => sessions::transcript(&state.db, scope, &row.id).await?,
        None => Vec::new(),
    };
    let new = sessions::new_messages(&transcript, &request.messages);
    let last_role = new.last().or(transcript.last()).map(|m| m.role);
    if !matches!(last_role, Some(Role::User | Role::Tool)) {
        return Err(StartError {
            error: ApiError::BadRequest {
                message: "the conversation must end with a user or tool message".into(),
                param: Some("messages".into()),
                fields: BTreeMap::new(),
            },
            session_id: existing.as_ref().map(|s| s.id.clone()),
        });
    }

    // A new session is stored with its first messages once the provider answers (one
    // transaction), or alone if the provider fails first (spec §3.6 rules 1 and 5).
    let (session_id, new_session) = match existing {
        Some(row) => (row.id, None),
        None => {
            let row = new_session_row(agent_name.clone(), &request)?;
            (row.id.clone(), Some(row))
        }
    };
    let with_session = |error: ApiError| StartError {
        error,
        session_id: Some(session_id.clone()),
    };

    let provider_request = compose_request(state, scope, &target, &request, &transcript, &new)
        .await
        .map_err(|error| StartError {
            error,
            session_id: new_session.is_none().then(|| session_id.clone()),
        })?;
    let (tx, mut rx) = mpsc::channel(64);
    let drive = Drive {
        db: state.db.clone(),
        hub: Arc::clone(&state.hub),
        verifier: Arc::clone(&state.verifier),
        auth: auth.clone(),
        scope: scope.clone(),
        session_id: session_id.clone(),
        new_session,
        agent: agent_name,
        model: target.model.clone(),
        user: request.params.user.clone(),
        stream: request.stream,
        client: target.client,
        request: provider_request,
        new_messages: new,
        limits: state.config.upstream.clone(),
        hard_stop: state.hard_stop.clone(),
    };
    tokio::spawn(drive.run(tx));
    match rx.recv().await {
        Some(TurnEvent::Started) => Ok(Turn {
            session_id,
            model: target.model,
            events: rx,
        }),
        Some(TurnEvent::Failed(error)) => Err(with_session(error)),
        _ => Err(with_session(ApiError::internal(
            "chat task ended before the provider answered",
        ))),
    }
}

fn new_session_row(agent: Option<String>, request: &CompletionRequest) -> Result<store::chat::SessionRow, ApiError> {
    let now = clock::now_ms();
    Ok(store::chat::SessionRow {
        id: ids::new_id(SESSION_PREFIX),
        agent,
        user: request.params.user.clone(),
        metadata: serde_json::to_string(&request.metadata).map_err(ApiError::internal)?,
        title: title_of(&request.messages),
        message_count: 0,
        created_at: now,
        updated_at: now,
    })
}

/// What the provider receives (spec §3.5).
async fn compose_request(
    state: &AppState,
    scope: &Scope,
    target: &Target,
    request: &CompletionRequest,
    transcript: &[ChatMessage],
    new: &[ChatMessage],
) -> Result<ChatRequest, ApiError> {
    let system: Vec<&ChatMessage> = request.messages.iter().filter(|m| m.role == Role::System).collect();
    let mut params = request.params.clone();
    let mut messages = Vec::with_capacity(transcript.len() + new.len() + 1);
    match &target.agent {
        Some(agent) => {
            let caller = system.iter().map(|m| m.text_content()).collect::<Vec<_>>().join("\n\n");
            let (project_memory, agent_memory) = store::memory::get_pair(&state.db.pool, scope, &agent.id).await?;
            let (project_memory, agent_memory) = (
                project_memory.map(|m| m.content).unwrap_or_default(),
                agent_memory.map(|m| m.content).unwrap_or_default(),
            );
            let text = prompt::compose(agent, &project_memory, &agent_memory, &caller);
            messages.push(ChatMessage::text(Role::System, text));
            params.temperature = params.temperature.or(agent.temperature);
            params.max_tokens = params.max_tokens.or(agent.max_tokens);
            params.reasoning = agent.reasoning;
        }
        None => messages.extend(system.into_iter().cloned()),
    }
    messages.extend(transcript.iter().cloned());
    messages.extend(new.iter().cloned());
    Ok(ChatRequest {
        model: target.provider_model.clone(),
        messages,
        params,
    })
}

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

/// How often a running completion re-checks its key, and the oldest verification it trusts, so
/// that a revoked key's streams end within 5 s.
const KEY_RECHECK: Duration = Duration::from_secs(1);
const KEY_MAX_AGE: Duration = Duration::from_secs(3);

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
        }
        Some(chunk)
    }
}

/// How the stream ended.
enum Outcome {
    Finished,
    ClientLeft,
    Shutdown,
    KeyRevoked,
    Failed(ApiError),
}

struct Drive {
    /// A session this turn creates; not yet stored.
    new_session: Option<store::chat::SessionRow>,
    db: Db,
    hub: Arc<Hub>,
    verifier: Arc<KeyVerifier>,
    /// Who asked; a stream whose key is revoked ends (spec §1.2.3).
    auth: AuthContext,
    scope: Scope,
    session_id: String,
    agent: Option<String>,
    model: String,
    user: Option<String>,
    stream: bool,
    client: Arc<dyn ModelClient>,
    request: ChatRequest,
    new_messages: Vec<ChatMessage>,
    limits: UpstreamConfig,
    hard_stop: CancellationToken,
}

impl Drive {
    async fn run(self, tx: mpsc::Sender<TurnEvent>) {
        let deadline = Instant::now() + self.limits.total_timeout;
        let first_wait = self.limits.first_chunk_timeout.min(self.limits.total_timeout);
        let client = Arc::clone(&self.client);
        let request = self.request.clone();
        let opening = async move {
            let mut stream = client.stream(request).await?;
            let first = stream.next().await;
            Ok::<_, ProviderError>((stream, first))
        };
        let opened = tokio::select! {
            // The client left before anything happened: nothing to store (spec §3.6 rule 5).
            () = tx.closed() => return,
            opened = timeout(first_wait, opening) => opened,
        };
        let (mut upstream, first): (ChunkStream, Chunk) = match opened {
            Err(_) => return self.fail_early(&tx, ApiError::UpstreamTimeout).await,
            Ok(Err(e)) | Ok(Ok((_, Some(Err(e))))) => return self.fail_early(&tx, provider_error(e)).await,
            Ok(Ok((_, None))) => {
                let error = ProviderError::Upstream("the provider closed the stream without answering".into());
                return self.fail_early(&tx, provider_error(error)).await;
            }
            Ok(Ok((stream, Some(Ok(chunk))))) => (stream, chunk),
        };
        if let Err(e) = self.store_new_messages().await {
            return self.fail_early(&tx, e).await;
        }
        let mut reply = Reply::default();
        let mut outcome = None;
        if tx.send(TurnEvent::Started).await.is_err() {
            outcome = Some(Outcome::ClientLeft);
        } else if let Some(delta) = reply.absorb(first)
            && tx.send(TurnEvent::Delta(delta)).await.is_err()
        {
            outcome = Some(Outcome::ClientLeft);
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => self.pump(&tx, &mut upstream, &mut reply, deadline).await,
        };
        // Dropping the stream closes the upstream request.
        drop(upstream);
        let (finish, usage, estimated) = self.settle(&outcome, &reply);
        if let Err(e) = self.store_reply(&reply, &finish, usage, estimated).await {
            tracing::error!(session_id = %self.session_id, error = ?e, "could not store the chat reply");
        }
        let event = match outcome {
            Outcome::Finished => TurnEvent::Completed {
                finish: reply.finish.unwrap_or(FinishReason::Stop),
                usage,
            },
            Outcome::Failed(error) => {
                let report = error.report();
                tracing::warn!(session_id = %self.session_id, code = report.code, cause = report.log_cause.as_deref(),
                    "provider failed mid-stream");
                TurnEvent::Failed(error)
            }
            Outcome::Shutdown => TurnEvent::Failed(ApiError::Unavailable("shutdown deadline reached".into())),
            Outcome::KeyRevoked => TurnEvent::Failed(ApiError::InvalidApiKey),
            Outcome::ClientLeft => return,
        };
        let _ = tx.send(event).await;
    }

    /// Forwards chunks until the answer ends, the client leaves, the server stops or a limit hits.
    async fn pump(
        &self,
        tx: &mpsc::Sender<TurnEvent>,
        upstream: &mut ChunkStream,
        reply: &mut Reply,
        deadline: Instant,
    ) -> Outcome {
        let mut recheck = tokio::time::interval(KEY_RECHECK);
        recheck.reset();
        // Silence is measured from the last chunk, not from the last key check.
        let mut last_chunk = Instant::now();
        loop {
            let wait_until = (last_chunk + self.limits.idle_timeout).min(deadline);
            let next = tokio::select! {
                biased;
                () = tx.closed() => return Outcome::ClientLeft,
                () = self.hard_stop.cancelled() => return Outcome::Shutdown,
                _ = recheck.tick() => {
                    if !self.verifier.still_valid(&self.db, &self.auth, KEY_MAX_AGE).await {
                        return Outcome::KeyRevoked;
                    }
                    continue;
                }
                next = timeout_at(wait_until, upstream.next()) => next,
            };
            match next {
                Err(_) => return Outcome::Failed(ApiError::UpstreamTimeout),
                Ok(None) => return Outcome::Finished,
                Ok(Some(Err(e))) => return Outcome::Failed(provider_error(e)),
                Ok(Some(Ok(chunk))) => {
                    last_chunk = Instant::now();
                    if let Some(delta) = reply.absorb(chunk)
                        && tx.send(TurnEvent::Delta(delta)).await.is_err()
                    {
                        return Outcome::ClientLeft;
                    }
                }
            }
        }
    }

    /// A failure before the first chunk: a new session is stored empty, so that its id, which
    /// the client receives, names a session it can retry in.
    async fn fail_early(&self, tx: &mpsc::Sender<TurnEvent>, error: ApiError) {
        if let Err(e) = self.store_session_and(&[]).await {
            tracing::error!(session_id = %self.session_id, error = ?e, "could not store the new session");
        }
        let _ = tx.send(TurnEvent::Failed(error)).await;
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
            Outcome::ClientLeft | Outcome::Shutdown | Outcome::KeyRevoked => "interrupted".to_string(),
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

    /// Stores N when the provider starts answering (spec §3.6 rule 5).
    async fn store_new_messages(&self) -> Result<(), ApiError> {
        self.store_session_and(&self.new_messages).await
    }

    /// In one transaction: the new session (if this turn creates one) or the existing session's
    /// counters, then `messages`, with their events.
    async fn store_session_and(&self, messages: &[ChatMessage]) -> Result<(), ApiError> {
        if self.new_session.is_none() && messages.is_empty() {
            return Ok(());
        }
        let now = clock::now_ms();
        let count = i64::try_from(messages.len()).unwrap_or(i64::MAX);
        let mut tx = self.db.pool.begin().await?;
        let mut announced = Vec::with_capacity(messages.len() + 1);
        // The session row is written first: it orders concurrent turns on SQLite and notices a
        // session deleted meanwhile.
        match &self.new_session {
            Some(row) => {
                let row = store::chat::SessionRow {
                    message_count: count,
                    updated_at: now,
                    ..row.clone()
                };
                store::chat::insert_session(&mut *tx, &self.scope, &row).await?;
                announced.push(Event::SessionCreated {
                    session_id: row.id.clone(),
                    agent: row.agent.clone(),
                    title: row.title.clone(),
                    user: row.user.clone(),
                });
            }
            None => {
                if !store::chat::touch_session(&mut *tx, &self.scope, &self.session_id, count, now).await? {
                    return Err(sessions::not_found(&self.session_id));
                }
            }
        }
        for message in messages {
            let row = store::chat::MessageRow {
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
                created_at: now,
            };
            store::chat::insert_message(&mut *tx, &self.scope, &row).await?;
            announced.push(Event::MessageAdded {
                session_id: self.session_id.clone(),
                message_id: row.id,
                role: row.role,
            });
        }
        events::append(&mut tx, self.db.backend, &self.scope, now, &announced).await?;
        tx.commit().await?;
        self.hub.wake(&self.scope);
        Ok(())
    }

    /// Stores the reply and announces it; nothing when the session was deleted meanwhile.
    async fn store_reply(&self, reply: &Reply, finish: &str, usage: Usage, estimated: bool) -> Result<(), ApiError> {
        let now = clock::now_ms();
        let mut tx = self.db.pool.begin().await?;
        if !store::chat::touch_session(&mut *tx, &self.scope, &self.session_id, 1, now).await? {
            return Ok(());
        }
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
        let row = store::chat::MessageRow {
            id: ids::new_id(MESSAGE_PREFIX),
            session_id: self.session_id.clone(),
            role: "assistant".into(),
            content: content.to_string(),
            tool_calls: tool_calls_json(reply.tool_calls.values().cloned()),
            tool_call_id: None,
            model: Some(self.model.clone()),
            finish_reason: Some(finish.to_string()),
            usage: Some(serde_json::to_string(&stored_usage).map_err(ApiError::internal)?),
            created_at: now,
        };
        store::chat::insert_message(&mut *tx, &self.scope, &row).await?;
        let announced = [
            Event::MessageAdded {
                session_id: self.session_id.clone(),
                message_id: row.id.clone(),
                role: row.role.clone(),
            },
            Event::CompletionFinished {
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
        ];
        events::append(&mut tx, self.db.backend, &self.scope, now, &announced).await?;
        tx.commit().await?;
        self.hub.wake(&self.scope);
        Ok(())
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
