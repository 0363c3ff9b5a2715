//! `/v1/missions`: missions, their runs, holds and reports (spec §6). Reading bodies is in
//! `input`, the streamed execution in `stream`; the rules are in `runtime::missions`.

pub mod input;
mod stream;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::input::{Fields, JsonObject, Page, QueryParams};
use crate::app::AppState;
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::missions::model::{
    Checkpoint, Delay, ID_PREFIX, Mission, QualityGate, RUN_PREFIX, Report, Run, STATUSES,
};
use crate::runtime::missions::{crud, runs};

/// A mission create or PATCH body (spec §6.1); see the mission object for every field.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct MissionRequest {
    /// Required on create; must not end in ` #<digits>`.
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    prompt: Option<String>,
    /// A JSON object for every brief, or (legacy) a string holding `{tasks, team?, qualityGates?,
    /// checkpoints?, delays?, data?}`.
    #[schema(value_type = Option<Object>)]
    data: Option<serde_json::Value>,
    #[schema(min_items = 1, max_items = 200)]
    tasks: Option<Vec<crate::api::tasks::shapes::TaskDefInput>>,
    /// `{name?, agents: AgentConfig[]}` or `AgentConfig[]`.
    #[schema(value_type = Option<Object>)]
    team: Option<serde_json::Value>,
    #[schema(minimum = 1.0, maximum = 5.0)]
    quality_threshold: Option<f64>,
    #[schema(format = DateTime, min_length = 1, max_length = 64)]
    deadline: Option<String>,
    /// 5-field cron (UTC) or an RFC 3339 instant.
    #[schema(min_length = 1, max_length = 200)]
    schedule: Option<String>,
    #[schema(format = DateTime, min_length = 1, max_length = 64)]
    end_date: Option<String>,
    quality_gates: Option<Vec<QualityGate>>,
    checkpoints: Option<Vec<Checkpoint>>,
    delays: Option<Vec<Delay>>,
}

/// The body of `execute`: `{}`, or `stream`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ExecuteRequest {
    /// `true`: answer with the run as server-sent events (spec §6.9).
    stream: Option<bool>,
}

/// The body of `resume`: `{}`, or `retryFailed`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct ResumeRequest {
    /// `true`: a failed run's failed tasks run again.
    retry_failed: Option<bool>,
}

/// List missions, optionally by status (spec §6.4).
#[utoipa::path(get, path = "/v1/missions", tag = "missions",
    params(("status" = Option<String>, Query, pattern = r"^(draft|scheduled|recurring|active|paused|completed|failed|cancelled)?$"),
           ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^msn_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Mission]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_missions(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, ID_PREFIX)?;
    let status = query.take("status").unwrap_or_default();
    if !status.is_empty() && !STATUSES.contains(&status.as_str()) {
        return Err(ApiError::invalid_field("status", format!("unknown status {status:?}")));
    }
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let missions = crud::list(&rt, &auth.scope, &status, &after, page.fetch()).await?;
    Ok(page.respond(missions, |m| &m.id))
}

/// Save a mission: `draft`, or `scheduled`/`recurring` with a schedule (spec §6.1–§6.4).
#[utoipa::path(post, path = "/v1/missions", tag = "missions", request_body = MissionRequest,
    responses((status = 201, body = Mission), (status = 400, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "a mission of this name exists")))]
pub async fn create_mission(
    State(rt): State<Runtime>,
    auth: AuthContext,
    body: JsonObject,
) -> Result<(StatusCode, Json<Mission>), ApiError> {
    let input = input::read(&rt, body, true)?;
    let mission = crud::create(&rt, &auth.scope, input).await?;
    Ok((StatusCode::CREATED, Json(mission)))
}

/// Read one mission (spec §6.4).
#[utoipa::path(get, path = "/v1/missions/{id}", tag = "missions", params(("id" = String, Path)),
    responses((status = 200, body = Mission), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_mission(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Mission>, ApiError> {
    Ok(Json(crud::get(&rt, &auth.scope, &id).await?))
}

/// Change a mission: each field given replaces the stored one; while a run is live only
/// `deadline` and `endDate` (spec §6.4).
#[utoipa::path(patch, path = "/v1/missions/{id}", tag = "missions", params(("id" = String, Path)),
    request_body = MissionRequest,
    responses((status = 200, body = Mission), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)))]
pub async fn update_mission(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Mission>, ApiError> {
    let input = input::read(&rt, body, false)?;
    Ok(Json(crud::update(&rt, &auth.scope, &id, input).await?))
}

/// Delete a mission, aborting a live run first, with every run's tasks (spec §6.4).
#[utoipa::path(delete, path = "/v1/missions/{id}", tag = "missions", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_mission(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    crud::delete(&rt, &auth.scope, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Execute a mission: a new run with its own tasks (spec §6.6); with `stream: true` the run as
/// server-sent events (§6.9).
#[utoipa::path(post, path = "/v1/missions/{id}/execute", tag = "missions", params(("id" = String, Path)),
    request_body = ExecuteRequest,
    responses((status = 202, body = Run), (status = 200, description = "a text/event-stream of mission.chunk frames ending in [DONE]", body = String, content_type = "text/event-stream"),
              (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "the mission is active or paused")))]
pub async fn execute_mission(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body.0, &["stream"], &[]);
    let follow = f.boolean("stream").into_option().unwrap_or(false);
    f.finish()?;
    if follow {
        return stream::follow(state, auth, id).await;
    }
    let run = runs::execute(&state.runtime, &auth.scope, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

/// A mission's runs by number (spec §6.4); `after` is a run id.
#[utoipa::path(get, path = "/v1/missions/{id}/runs", tag = "missions",
    params(("id" = String, Path), ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^run_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Run]), (status = 404, body = crate::api::ErrorBody)))]
pub async fn list_runs(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, RUN_PREFIX)?;
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let list = runs::list(&rt, &auth.scope, &id, &after, page.fetch()).await?;
    Ok(page.respond(list, |r| &r.id))
}

/// One run with its tasks, gates, checkpoints and delays (spec §6.5).
#[utoipa::path(get, path = "/v1/missions/{id}/runs/{runId}", tag = "missions",
    params(("id" = String, Path), ("runId" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_run(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path((id, run_id)): Path<(String, String)>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(runs::get(&rt, &auth.scope, &id, &run_id).await?))
}

/// Resume the latest run: a paused run's checkpoints, or a failed run (with `retryFailed`, its
/// failed tasks retried) (spec §6.4).
#[utoipa::path(post, path = "/v1/missions/{id}/resume", tag = "missions", params(("id" = String, Path)),
    request_body = ResumeRequest,
    responses((status = 200, body = Run), (status = 404, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "the latest run is not paused or failed")))]
pub async fn resume_mission(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Run>, ApiError> {
    let mut f = Fields::new(body.0, &["retryFailed"], &[]);
    let retry_failed = f.boolean("retryFailed").into_option().unwrap_or(false);
    f.finish()?;
    Ok(Json(runs::resume(&rt, &auth.scope, &id, retry_failed).await?))
}

/// Abort the live run: its open tasks are killed, the run and mission `cancelled`, the schedule
/// stopped (spec §6.4).
#[utoipa::path(post, path = "/v1/missions/{id}/abort", tag = "missions", params(("id" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "no active or paused run")))]
pub async fn abort_mission(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Run>, ApiError> {
    Fields::new(body.0, &[], &[]).finish()?;
    Ok(Json(runs::abort(&rt, &auth.scope, &id).await?))
}

/// Release one reached checkpoint of the live run (spec §6.4, §6.7).
#[utoipa::path(post, path = "/v1/missions/{id}/checkpoints/{name}/resume", tag = "missions",
    params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Run), (status = 404, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "not reached, or already resumed")))]
pub async fn resume_checkpoint(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path((id, name)): Path<(String, String)>,
    body: JsonObject,
) -> Result<Json<Run>, ApiError> {
    Fields::new(body.0, &[], &[]).finish()?;
    Ok(Json(runs::resume_checkpoint(&rt, &auth.scope, &id, &name).await?))
}

/// The report of a run, by default the latest (spec §6.4).
#[utoipa::path(get, path = "/v1/missions/{id}/report", tag = "missions",
    params(("id" = String, Path), ("runId" = Option<String>, Query)),
    responses((status = 200, body = Report), (status = 404, body = crate::api::ErrorBody)))]
pub async fn mission_report(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Json<Report>, ApiError> {
    let run_id = query.take("runId");
    query.finish()?;
    Ok(Json(runs::report(&rt, &auth.scope, &id, run_id.as_deref()).await?))
}
