//! `/v1/chat/sessions`: chat sessions and their messages (spec §3.13). No events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::input::{Page, QueryParams};
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::sessions::{self, MESSAGE_PREFIX, Message, SESSION_PREFIX, Session};

/// List sessions in creation order, optionally of one agent or user (spec §3.13).
#[utoipa::path(get, path = "/v1/chat/sessions", tag = "chat",
    params(("agent" = Option<String>, Query, description = "agent id or name"), ("user" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^sess_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Session]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_sessions(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, SESSION_PREFIX)?;
    let agent = query.take("agent");
    let user = query.take("user").unwrap_or_default();
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let found = sessions::list(&rt.db, &auth.scope, agent.as_deref(), &user, &after, page.fetch()).await?;
    Ok(page.respond(found, |s| &s.id))
}

/// Read one session (spec §3.13).
#[utoipa::path(get, path = "/v1/chat/sessions/{id}", tag = "chat", params(("id" = String, Path)),
    responses((status = 200, body = Session), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_session(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(sessions::get(&rt.db, &auth.scope, &id).await?))
}

/// The messages of a session in conversation order (spec §3.13).
#[utoipa::path(get, path = "/v1/chat/sessions/{id}/messages", tag = "chat",
    params(("id" = String, Path), ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^msg_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Message]), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn list_messages(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, MESSAGE_PREFIX)?;
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let found = sessions::messages(&rt.db, &auth.scope, &id, &after, page.fetch()).await?;
    Ok(page.respond(found, |m| &m.id))
}

/// Delete a session and its messages (spec §3.13).
#[utoipa::path(delete, path = "/v1/chat/sessions/{id}", tag = "chat", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_session(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    sessions::delete(&rt.db, &auth.scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
