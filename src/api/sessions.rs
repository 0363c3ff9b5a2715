//! `/v1/chat/sessions`: chat sessions and their messages (spec §3.13). No events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::input::{Page, QueryParams};
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::agents;
use crate::runtime::sessions::{self, MESSAGE_PREFIX, Message, SESSION_PREFIX, Session};
use crate::store;

/// List sessions in creation order, optionally of one agent or user (spec §3.13).
#[utoipa::path(get, path = "/v1/chat/sessions", tag = "chat",
    params(("agent" = Option<String>, Query, description = "agent id or name"), ("user" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, body = [Session]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, SESSION_PREFIX)?;
    let agent = query.take("agent");
    let user = query.take("user").unwrap_or_default();
    query.finish()?;
    // Sessions keep the agent's name; an id is resolved to it (an unknown id matches nothing).
    let agent_name = match agent {
        Some(a) if a.starts_with(agents::ID_PREFIX) => match agents::find(&state.db, &auth.scope, &a).await? {
            Some(agent) => agent.name,
            None => return Ok(page.respond(Vec::<Session>::new(), |s| &s.id)),
        },
        Some(name) => name,
        None => String::new(),
    };
    let after = page.after.clone().unwrap_or_default();
    let rows =
        store::chat::list_sessions(&state.db.pool, &auth.scope, &agent_name, &user, &after, page.fetch()).await?;
    Ok(page.respond(rows.into_iter().map(Session::from_row).collect(), |s| &s.id))
}

/// Read one session (spec §3.13).
#[utoipa::path(get, path = "/v1/chat/sessions/{id}", tag = "chat", params(("id" = String, Path)),
    responses((status = 200, body = Session), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_session(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(sessions::get(&state.db, &auth.scope, &id).await?))
}

/// The messages of a session in conversation order (spec §3.13).
#[utoipa::path(get, path = "/v1/chat/sessions/{id}/messages", tag = "chat",
    params(("id" = String, Path), ("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, body = [Message]), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, MESSAGE_PREFIX)?;
    query.finish()?;
    sessions::get(&state.db, &auth.scope, &id).await?;
    let after = page.after.clone().unwrap_or_default();
    let rows = store::chat::list_messages(&state.db.pool, &auth.scope, &id, &after, page.fetch()).await?;
    Ok(page.respond(rows.into_iter().map(Message::from_row).collect(), |m| &m.id))
}

/// Delete a session and its messages (spec §3.13).
#[utoipa::path(delete, path = "/v1/chat/sessions/{id}", tag = "chat", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_session(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    sessions::delete(&state.db, &auth.scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
