//! `/v1/memory` and `/v1/agents/{idOrName}/memory` (spec §2.2 rule 3).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::ToSchema;

use super::agents::LONG_TEXT_BYTES;
use super::input::{Field, Fields, JsonObject};
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::agents::{self, Memory};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct MemoryRequest {
    /// The whole memory text (markdown, ≤ 64 KiB); an empty string clears it.
    content: String,
}

fn read_content(body: JsonObject) -> Result<String, ApiError> {
    let mut f = Fields::new(body.0, &["content"], &["updatedAt", "agent"]);
    let content = f.text("content", LONG_TEXT_BYTES);
    if !matches!(content, Field::Value(_)) && !f.has_error("content") {
        f.error(f.path("content"), "required");
    }
    f.finish()?;
    Ok(content.into_option().unwrap_or_default())
}

/// Read the project memory (spec §2.2).
#[utoipa::path(get, path = "/v1/memory", tag = "memory", responses((status = 200, body = Memory)))]
pub async fn get_project_memory(State(rt): State<Runtime>, auth: AuthContext) -> Result<Json<Memory>, ApiError> {
    Ok(Json(agents::read_memory(&rt.db, &auth.scope, None).await?))
}

/// Replace the project memory (spec §2.2).
#[utoipa::path(put, path = "/v1/memory", tag = "memory", request_body = MemoryRequest,
    responses((status = 200, body = Memory), (status = 400, body = crate::api::ErrorBody)))]
pub async fn put_project_memory(
    State(rt): State<Runtime>,
    auth: AuthContext,
    body: JsonObject,
) -> Result<Json<Memory>, ApiError> {
    let content = read_content(body)?;
    Ok(Json(agents::write_memory(&rt, &auth.scope, None, content).await?))
}

/// Read an agent's memory (spec §2.2).
#[utoipa::path(get, path = "/v1/agents/{idOrName}/memory", tag = "memory",
    params(("idOrName" = String, Path, description = "agent id (agt_…) or name")),
    responses((status = 200, body = Memory), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_agent_memory(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id_or_name): Path<String>,
) -> Result<Json<Memory>, ApiError> {
    let agent = agents::get(&rt.db, &auth.scope, &id_or_name).await?;
    Ok(Json(agents::read_memory(&rt.db, &auth.scope, Some(&agent)).await?))
}

/// Replace an agent's memory (spec §2.2).
#[utoipa::path(put, path = "/v1/agents/{idOrName}/memory", tag = "memory", request_body = MemoryRequest,
    params(("idOrName" = String, Path, description = "agent id (agt_…) or name")),
    responses((status = 200, body = Memory), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody)))]
pub async fn put_agent_memory(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id_or_name): Path<String>,
    body: JsonObject,
) -> Result<Json<Memory>, ApiError> {
    let agent = agents::get(&rt.db, &auth.scope, &id_or_name).await?;
    let content = read_content(body)?;
    Ok(Json(
        agents::write_memory(&rt, &auth.scope, Some(&agent), content).await?,
    ))
}
