//! `POST /v1/tasks/{id}/run` with `stream: true`: the task followed live (spec §5.6). Lifecycle
//! frames come from the event log, so a client may follow from any instance; the agent's text
//! comes from the live text relay. Leaving does not affect the task.

use std::convert::Infallible;
use std::sync::Arc;

use crate::api::sse::Event as SseEvent;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::events::live;
use crate::runtime::tasks::{Task, actions};

/// Lifecycle events a follower sees; aliases (`task:completed`, …) are left out.
const FAMILIES: &[&str] = &["task:", "agent:", "assessment:", "approval:"];
const ALIASES: &[&str] = &["task:completed", "agent:completed", "assessment:completed"];

fn chunk(id: &str, delta: Value, finish: Option<&str>, polpo: Option<Value>) -> Result<SseEvent, Infallible> {
    crate::api::chunk_frame("task.chunk", id, delta, finish, polpo)
}

fn finish_of(task: &Task) -> Option<&'static str> {
    use crate::runtime::tasks::Status;
    match task.status() {
        Status::Done => Some("stop"),
        Status::Failed => Some("failed"),
        _ => None,
    }
}

/// Runs the task (as `run` does) and follows it.
pub async fn follow(state: AppState, auth: AuthContext, id: String) -> Result<Response, ApiError> {
    let rt = state.runtime.clone();
    // Subscribed before the snapshot is read, so that nothing happening in between is missed.
    let slot = state.limiter.open_stream(&rt, &auth).await?;
    let follower = rt.hub.live.follow(live::key(&auth.scope, &id));
    let mut subscription = rt.hub.subscribe(&auth.scope).await?;
    let task = actions::run(&rt, &auth.scope, &id).await?;
    let guard = rt.metrics.open_stream("task");
    let revoked = Arc::clone(&state.verifier).revoked(rt.clone(), auth.clone());
    let mention = format!("\"taskId\":\"{id}\"");
    let keepalive = rt.config.events.keepalive;
    let frames = async_stream::stream! {
        let _open = guard;
        let mut follower = follower;
        tokio::pin!(revoked);
        let snapshot = json!({"event": "task:snapshot", "data": {"task": task}});
        yield chunk(&id, json!({"role": "assistant"}), None, Some(snapshot));
        if let Some(finish) = finish_of(&task) {
            yield chunk(&id, json!({}), Some(finish), None);
            yield Ok(SseEvent::default().data("[DONE]"));
            return;
        }
        loop {
            // In this order: text already queued goes out before the event that ends its
            // attempt (text is relayed before that event commits).
            tokio::select! {
                biased;
                () = rt.shutdown.cancelled() => {
                    yield crate::api::error_frame(&ApiError::Unavailable("the server is shutting down".into()));
                    return;
                }
                () = &mut revoked => {
                    yield crate::api::error_frame(&ApiError::InvalidApiKey);
                    return;
                }
                text = follower.text.recv() => match text {
                    Ok(text) => yield chunk(&id, json!({"content": &*text}), None, None),
                    // Too slow for the text: skip ahead; the lifecycle frames still come.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => {}
                },
                event = subscription.events.recv() => {
                    let Some(event) = event else {
                        // Dropped as too slow: the task's state decides what comes next.
                        match actions::get(&rt, &auth.scope, &id).await {
                            Ok(task) if finish_of(&task).is_some() => {
                                yield chunk(&id, json!({}), finish_of(&task), None);
                                yield Ok(SseEvent::default().data("[DONE]"));
                            }
                            Ok(_) => {
                                if let Ok(again) = rt.hub.subscribe(&auth.scope).await {
                                    subscription = again;
                                    continue;
                                }
                            }
                            Err(_) => {
                                yield chunk(&id, json!({}), Some("failed"), None);
                                yield Ok(SseEvent::default().data("[DONE]"));
                            }
                        }
                        return;
                    };
                    let name = event.name.as_str();
                    if !FAMILIES.iter().any(|f| name.starts_with(f)) || ALIASES.contains(&name)
                        || !event.payload.contains(&mention)
                    {
                        continue;
                    }
                    // An unreadable stored payload fails as it does everywhere else (a logged
                    // internal error), here as the stream's one error frame.
                    let data: Value = match crate::store::read_json(&event.payload, "event payload") {
                        Ok(data) => data,
                        Err(e) => {
                            let error = ApiError::from(e);
                            if let ApiError::Internal(cause) = &error {
                                tracing::error!(task_id = %id, cause = %cause, "task stream failed");
                            }
                            yield crate::api::error_frame(&error);
                            return;
                        }
                    };
                    yield chunk(&id, json!({}), None, Some(json!({"event": name, "data": data})));
                    let finish = match name {
                        "task:transition" => match data["to"].as_str() {
                            Some("done") => Some("stop"),
                            Some("failed") => Some("failed"),
                            _ => None,
                        },
                        "task:removed" => Some("failed"),
                        _ => None,
                    };
                    if let Some(finish) = finish {
                        yield chunk(&id, json!({}), Some(finish), None);
                        yield Ok(SseEvent::default().data("[DONE]"));
                        return;
                    }
                }
            }
        }
    };
    Ok(crate::api::sse::response(crate::api::holding(frames, slot), keepalive))
}
