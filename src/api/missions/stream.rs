//! `POST /v1/missions/{id}/execute` with `stream: true`: the whole run as server-sent events
//! (spec §6.9). Lifecycle frames come from the event log, so a client may follow from any
//! instance; every task's text comes from the live text relay, tagged with its `taskId`.
//! Leaving does not affect the run.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use crate::api::sse::Event as SseEvent;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::events::live;
use crate::runtime::missions::runs;

/// Aliases are left out; their canonical events are sent.
const ALIASES: &[&str] = &["task:completed", "agent:completed", "assessment:completed"];

fn chunk(id: &str, delta: Value, finish: Option<&str>, polpo: Option<Value>) -> Result<SseEvent, Infallible> {
    crate::api::chunk_frame("mission.chunk", id, delta, finish, polpo)
}

/// One task's text, tagged with its id.
type Texts = Pin<Box<dyn Stream<Item = (String, Arc<str>)> + Send>>;

fn texts(follower: live::Follower, task_id: String) -> Texts {
    Box::pin(async_stream::stream! {
        let mut follower = follower;
        loop {
            match follower.text.recv().await {
                Ok(text) => yield (task_id.clone(), text),
                // Too slow for the text: skip ahead; the lifecycle frames still come.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    })
}

/// The finish reason of a run status, when it has ended.
fn finish_of(status: &str) -> Option<&'static str> {
    match status {
        "completed" => Some("stop"),
        "failed" | "cancelled" => Some("failed"),
        _ => None,
    }
}

/// Executes the mission and follows its run to the end.
pub async fn follow(state: AppState, auth: AuthContext, mission_id: String) -> Result<Response, ApiError> {
    let rt = state.runtime.clone();
    let slot = state.limiter.open_stream(&rt, &auth).await?;
    // Subscribed before the run starts, so that none of its events is missed.
    let mut subscription = rt.hub.subscribe(&auth.scope).await?;
    let run = runs::execute(&rt, &auth.scope, &mission_id).await?;
    // The tasks were created pending in the run's commit; their text is followed at once, before
    // a worker can have claimed one and reached its model call.
    let task_ids: HashSet<String> = run.tasks.iter().map(|t| t.id.clone()).collect();
    let mut text = futures_util::stream::select_all(
        run.tasks
            .iter()
            .map(|t| texts(rt.hub.live.follow(live::key(&auth.scope, &t.id)), t.id.clone())),
    );
    let guard = rt.metrics.open_stream("mission");
    let revoked = Arc::clone(&state.verifier).revoked(rt.clone(), auth.clone());
    let keepalive = rt.config.events.keepalive;
    let run_id = run.id.clone();
    let run_mention = format!("\"runId\":\"{run_id}\"");
    let mission_mention = format!("\"missionId\":\"{mission_id}\"");
    let executed = json!({"event": "mission:executed", "data": {
        "missionId": run.mission_id, "runId": run.id, "number": run.number, "group": run.group,
        "taskCount": run.tasks.len(), "trigger": run.trigger, "timestamp": run.started_at,
    }});
    let frames = async_stream::stream! {
        let _open = guard;
        tokio::pin!(revoked);
        yield chunk(&run_id, json!({"role": "assistant"}), None, Some(executed));
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
                Some((task_id, content)) = text.next() => {
                    yield chunk(&run_id, json!({"content": &*content}), None, Some(json!({"taskId": task_id})));
                }
                event = subscription.events.recv() => {
                    let Some(event) = event else {
                        // Dropped as too slow: the run's state decides what comes next.
                        match runs::get(&rt, &auth.scope, &mission_id, &run_id).await {
                            Ok(now) if finish_of(&now.status).is_some() => {
                                yield chunk(&run_id, json!({}), finish_of(&now.status), None);
                                yield Ok(SseEvent::default().data("[DONE]"));
                            }
                            Ok(_) => {
                                if let Ok(again) = rt.hub.subscribe(&auth.scope).await {
                                    subscription = again;
                                    continue;
                                }
                            }
                            Err(_) => {
                                yield chunk(&run_id, json!({}), Some("failed"), None);
                                yield Ok(SseEvent::default().data("[DONE]"));
                            }
                        }
                        return;
                    };
                    let name = event.name.as_str();
                    if ALIASES.contains(&name) || (name == "mission:executed" && event.payload.contains(&run_mention)) {
                        continue;
                    }
                    let ours = event.payload.contains(&run_mention)
                        || (name == "mission:deleted" && event.payload.contains(&mission_mention))
                        || task_ids.iter().any(|id| event.payload.contains(&format!("\"taskId\":\"{id}\"")));
                    if !ours {
                        continue;
                    }
                    // An unreadable stored payload fails as it does everywhere else (a logged
                    // internal error), here as the stream's one error frame.
                    let data: Value = match crate::store::read_json(&event.payload, "event payload") {
                        Ok(data) => data,
                        Err(e) => {
                            let error = ApiError::from(e);
                            if let ApiError::Internal(cause) = &error {
                                tracing::error!(run_id = %run_id, cause = %cause, "mission stream failed");
                            }
                            yield crate::api::error_frame(&error);
                            return;
                        }
                    };
                    yield chunk(&run_id, json!({}), None, Some(json!({"event": name, "data": data})));
                    let finish = match name {
                        "mission:completed" if data["allPassed"] == true => Some("stop"),
                        "mission:completed" | "mission:aborted" | "mission:deleted" => Some("failed"),
                        _ => None,
                    };
                    if let Some(finish) = finish {
                        yield chunk(&run_id, json!({}), Some(finish), None);
                        yield Ok(SseEvent::default().data("[DONE]"));
                        return;
                    }
                }
            }
        }
    };
    Ok(crate::api::sse::response(crate::api::holding(frames, slot), keepalive))
}
