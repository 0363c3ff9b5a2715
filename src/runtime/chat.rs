//! The chat turn up to the provider's first chunk (spec §3.4–§3.6): resolve the target, open the
//! session, compose what the provider receives, and hand over to the drive in `turn` that reads
//! the provider stream.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::ProviderKind;
use crate::error::ApiError;
use crate::events::Hold;
use crate::ids;
use crate::providers::split_model;
use crate::providers::types::{ChatMessage, ChatRequest, Chunk, FinishReason, ModelClient, Params, Role, Usage};
use crate::runtime::Runtime;
use crate::runtime::agents;
use crate::runtime::prompt;
use crate::runtime::sessions::{self, SESSION_PREFIX};
use crate::runtime::turn::Drive;
pub use crate::runtime::turn::Interrupt;
use crate::scope::Scope;
use crate::store;

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
    /// The agent with both memories, read with it.
    agent: Option<Arc<agents::WithMemories>>,
    /// The model string as written in the agent or the request, e.g. `anthropic:claude-sonnet-4-5`.
    model: String,
    client: Arc<dyn ModelClient>,
    provider: String,
    kind: ProviderKind,
    provider_model: String,
}

fn model_error(problem: String) -> ApiError {
    ApiError::BadRequest {
        message: format!("invalid model: {problem}"),
        param: Some("model".into()),
        fields: BTreeMap::new(),
    }
}

fn provider_target(rt: &Runtime, agent: Option<Arc<agents::WithMemories>>, model: &str) -> Result<Target, ApiError> {
    let (provider, parsed) = rt.providers.check_model(model).map_err(model_error)?;
    let client = rt
        .clients
        .get(&provider.name)
        .ok_or_else(|| model_error(format!("provider {:?} is not usable", provider.name)))?;
    Ok(Target {
        agent,
        model: model.to_string(),
        client,
        provider: provider.name.clone(),
        kind: provider.kind,
        provider_model: parsed.model.to_string(),
    })
}

async fn resolve_target(rt: &Runtime, scope: &Scope, request: &CompletionRequest) -> Result<Target, ApiError> {
    if let Some(name) = &request.agent {
        let found = agents::find_with_memories(rt, scope, name)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                message: format!("Agent {name:?} not found"),
                param: Some("agent".into()),
            })?;
        // A provider-form model overrides the agent's model for this call; anything else is ignored.
        let model = match &request.model {
            Some(m) if split_model(m).is_some() => m.clone(),
            _ => found.agent.model.clone(),
        };
        return provider_target(rt, Some(found), &model);
    }
    let Some(model) = &request.model else {
        return Err(ApiError::BadRequest {
            message: "either model or agent is required".into(),
            param: Some("model".into()),
            fields: BTreeMap::new(),
        });
    };
    if split_model(model).is_some() {
        return provider_target(rt, None, model);
    }
    match agents::find_with_memories(rt, scope, model).await? {
        Some(found) => {
            let model = found.agent.model.clone();
            provider_target(rt, Some(found), &model)
        }
        None => Err(ApiError::NotFound {
            message: format!("Agent {model:?} not found"),
            param: Some("model".into()),
        }),
    }
}

/// Events the turn's drive reports to the HTTP side, in this order: `Started` once the provider
/// produced its first chunk (a streamed answer's new messages are then stored), then deltas,
/// then one of `Completed` (the new messages and the reply are committed) or `Failed`. A turn
/// whose client left reports nothing more.
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
    pub events: TurnEvents,
}

/// Where the drive puts its events for the reader; shared by the two.
#[derive(Default)]
pub(super) struct Outbox {
    events: Mutex<VecDeque<TurnEvent>>,
    /// Cancelled when the reader is gone: the client left.
    left: CancellationToken,
}

impl Outbox {
    /// Hands `event` to the reader; `false` when the client has left.
    pub(super) fn send(&self, event: TurnEvent) -> bool {
        if self.left.is_cancelled() {
            return false;
        }
        self.lock().push_back(event);
        true
    }

    /// Resolves once the reader has taken every event handed to it, or the client has left.
    /// Needs no wake-up: the reader polls the drive only when it has taken everything, and a
    /// drive left by its reader runs with `left` cancelled.
    pub(super) async fn taken(&self) {
        std::future::poll_fn(|_| {
            if self.left.is_cancelled() || self.lock().is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Resolves when the client has left.
    pub(super) async fn closed(&self) {
        self.left.cancelled().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<TurnEvent>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The events of one turn, read by whoever answers for it. The turn is driven by its reader's
/// own task, as part of reading: a chunk goes from the provider's connection to the client's
/// without a hand-off to another task (each of which could wake a sleeping thread to run it).
/// The drive runs only when everything it reported has been read, so a client that reads slowly
/// slows the provider stream down as well. When the reader
/// goes away before the end (the client left), the rest of the turn runs in a tracked task of
/// its own, which sees the client gone and stores what was said (spec §3.6 rule 5).
pub struct TurnEvents {
    drive: Option<BoxFuture<'static, ()>>,
    outbox: Arc<Outbox>,
    rt: Runtime,
}

impl TurnEvents {
    /// The next event; `None` once the turn has ended.
    pub async fn recv(&mut self) -> Option<TurnEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TurnEvent>> {
        loop {
            if let Some(event) = self.outbox.lock().pop_front() {
                return Poll::Ready(Some(event));
            }
            let Some(drive) = self.drive.as_mut() else {
                return Poll::Ready(None);
            };
            if drive.as_mut().poll(cx).is_ready() {
                self.drive = None;
            } else if self.outbox.lock().is_empty() {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for TurnEvents {
    fn drop(&mut self) {
        let Some(drive) = self.drive.take() else { return };
        self.outbox.left.cancel();
        // Outside a runtime (the process is ending) the drive can only be dropped.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.rt.spawn(drive);
        }
    }
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

/// Runs everything up to the provider's first chunk; the rest is driven by reading the turn's
/// events.
/// `interrupt`, when given, ends the turn early as `interrupted` with its error (the HTTP layer
/// passes one that resolves when the caller's key is revoked; a turn without a request passes
/// none).
pub async fn start(
    rt: &Runtime,
    scope: &Scope,
    session_header: Option<&str>,
    request: CompletionRequest,
    interrupt: Option<Interrupt>,
) -> Result<Turn, StartError> {
    // A turn is refused while the server runs behind its work (`super::lag`), or when the
    // database's backlog is full: reading what the turn needs is counted in it, the provider's
    // answer is awaited outside it. A refusal is not logged one by one (under overload there are
    // thousands a second); `polpo_http_requests_total` counts the 503s.
    if super::lag::behind() {
        return Err(ApiError::Unavailable(String::new()).into());
    }
    let admission = rt
        .group
        .admit(rt.config.server.chat_backlog)
        .ok_or_else(|| ApiError::Unavailable(String::new()))?;
    let target = resolve_target(rt, scope, &request).await?;
    // Only OpenAI-kind providers return log probabilities (spec §3.2); `false` is always fine.
    let logprobs = request.params.openai_only.get("logprobs") == Some(&serde_json::Value::Bool(true));
    if logprobs && target.kind != ProviderKind::Openai {
        return Err(ApiError::BadRequest {
            message: format!(
                "logprobs: true needs an OpenAI-kind provider; {:?} cannot return log probabilities",
                target.model
            ),
            param: Some("logprobs".into()),
            fields: BTreeMap::new(),
        }
        .into());
    }
    let agent_name = target.agent.as_ref().map(|a| a.agent.name.clone());

    let existing = match session_header.filter(|h| *h != "new") {
        Some(id) => {
            let row = store::chat::get_session(&rt.db.pool, scope, id)
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
        Some(row) => sessions::transcript(&rt.db, scope, &row.id).await?,
        None => Vec::new(),
    };
    let new = sessions::new_messages(&transcript, &request.messages);
    if transcript.len() + new.len() > sessions::MAX_TURN_MESSAGES {
        return Err(StartError {
            error: ApiError::BadRequest {
                message: format!(
                    "this session and these messages come to more than {} messages; start a new session",
                    sessions::MAX_TURN_MESSAGES
                ),
                param: Some("messages".into()),
                fields: BTreeMap::new(),
            },
            session_id: existing.as_ref().map(|s| s.id.clone()),
        });
    }
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

    let provider_request = compose_request(&target, &request, &transcript, &new);
    drop(admission);
    let outbox = Arc::new(Outbox::default());
    let drive = Drive {
        rt: rt.clone(),
        provider: target.provider.clone(),
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
        hold: if request.stream { None } else { Hold::current() },
    };
    let mut events = TurnEvents {
        drive: Some(Box::pin(
            rt.tasks.track_future(drive.run(Arc::clone(&outbox), interrupt)),
        )),
        outbox,
        rt: rt.clone(),
    };
    match events.recv().await {
        Some(TurnEvent::Started) => Ok(Turn {
            session_id,
            model: target.model,
            events,
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
fn compose_request(
    target: &Target,
    request: &CompletionRequest,
    transcript: &[ChatMessage],
    new: &[ChatMessage],
) -> ChatRequest {
    let system: Vec<&ChatMessage> = request.messages.iter().filter(|m| m.role == Role::System).collect();
    let mut params = request.params.clone();
    let mut messages = Vec::with_capacity(transcript.len() + new.len() + 1);
    match &target.agent {
        Some(found) => {
            let agent = &found.agent;
            let caller = system.iter().map(|m| m.text_content()).collect::<Vec<_>>().join("\n\n");
            let text = prompt::compose(agent, &found.project_memory, &found.agent_memory, &caller);
            messages.push(ChatMessage::text(Role::System, text));
            params.temperature = params.temperature.or(agent.temperature);
            params.max_tokens = params.max_tokens.or(agent.max_tokens);
            // The request's `reasoning_effort` overrides the agent's `reasoning` (spec §3.2).
            params.reasoning = params.reasoning.or(agent.reasoning);
        }
        None => messages.extend(system.into_iter().cloned()),
    }
    messages.extend(transcript.iter().cloned());
    messages.extend(new.iter().cloned());
    ChatRequest {
        model: target.provider_model.clone(),
        messages,
        params,
    }
}
