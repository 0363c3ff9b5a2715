//! `/v1/tasks`: tasks and their actions (spec §5.4, §5.5). Reading bodies is in `input`; the
//! rules are in `runtime::tasks`.

pub mod input;
pub mod shapes;
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
use crate::runtime::tasks::model::ID_PREFIX;
use crate::runtime::tasks::{Status, Task, actions, create};
use crate::store::tasks::ListFilter;

/// A task create body (spec §5.1); `null` for an optional field means absent.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct TaskRequest {
    #[schema(min_length = 1, max_length = 200)]
    title: String,
    /// An agent name or id.
    #[schema(min_length = 1, max_length = 256)]
    assign_to: String,
    /// ≤ 64 KiB of UTF-8.
    description: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    group: Option<String>,
    /// Task ids or titles of 1–200 characters.
    #[schema(max_items = 64)]
    depends_on: Option<Vec<String>>,
    #[schema(max_items = 32)]
    expectations: Option<Vec<shapes::ExpectationInput>>,
    #[schema(max_items = 32)]
    expected_outcomes: Option<Vec<shapes::ExpectedOutcomeInput>>,
    #[schema(minimum = -1000, maximum = 1000)]
    priority: Option<i64>,
    #[schema(minimum = 0, maximum = 10)]
    max_retries: Option<i64>,
    /// Milliseconds.
    #[schema(minimum = 1000, maximum = 86400000)]
    max_duration: Option<i64>,
    retry_policy: Option<shapes::RetryPolicyInput>,
    side_effects: Option<bool>,
    /// RFC 3339 timestamp.
    #[schema(format = DateTime, min_length = 1, max_length = 64)]
    deadline: Option<String>,
    #[schema(max_length = 256)]
    user: Option<String>,
    #[schema(schema_with = crate::api::openapi::metadata_schema)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
    /// Start as `draft` instead of `pending`.
    draft: Option<bool>,
}

/// A task PATCH body: present fields change, `null` resets an optional field.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct TaskPatch {
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    #[serde(default)]
    title: Option<String>,
    #[schema(min_length = 1, max_length = 256, nullable = false)]
    #[serde(default)]
    assign_to: Option<String>,
    /// ≤ 64 KiB of UTF-8.
    description: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    group: Option<String>,
    /// Task ids or titles of 1–200 characters.
    #[schema(max_items = 64)]
    depends_on: Option<Vec<String>>,
    #[schema(max_items = 32)]
    expectations: Option<Vec<shapes::ExpectationInput>>,
    #[schema(max_items = 32)]
    expected_outcomes: Option<Vec<shapes::ExpectedOutcomeInput>>,
    #[schema(minimum = -1000, maximum = 1000)]
    priority: Option<i64>,
    #[schema(minimum = 0, maximum = 10)]
    max_retries: Option<i64>,
    /// Milliseconds.
    #[schema(minimum = 1000, maximum = 86400000)]
    max_duration: Option<i64>,
    retry_policy: Option<shapes::RetryPolicyInput>,
    side_effects: Option<bool>,
    /// RFC 3339 timestamp.
    #[schema(format = DateTime, min_length = 1, max_length = 64)]
    deadline: Option<String>,
    #[schema(max_length = 256)]
    user: Option<String>,
    #[schema(schema_with = crate::api::openapi::metadata_schema)]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// An action body: `{}`, or `stream` on `run`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RunRequest {
    /// `true`: answer with the task-run stream (spec §5.6).
    stream: Option<bool>,
}

/// List tasks, filtered by status (comma list), group, agent, mission or run (spec §5.4).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks",
    params(("status" = Option<String>, Query, description = "comma-separated statuses", pattern = r"^((draft|pending|awaiting_approval|assigned|in_progress|review|done|failed)(,(draft|pending|awaiting_approval|assigned|in_progress|review|done|failed))*)?$"),
           ("group" = Option<String>, Query), ("assignTo" = Option<String>, Query),
           ("missionId" = Option<String>, Query), ("runId" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^task_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Task]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_tasks(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, ID_PREFIX)?;
    let statuses = query.take("status").unwrap_or_default();
    for status in statuses.split(',').filter(|s| !s.is_empty()) {
        if Status::parse(status.trim()).is_none() {
            return Err(ApiError::invalid_field("status", format!("unknown status {status:?}")));
        }
    }
    let statuses = statuses.replace(' ', "");
    let (group, assign_to) = (
        query.take("group").unwrap_or_default(),
        query.take("assignTo").unwrap_or_default(),
    );
    let (mission_id, run_id) = (
        query.take("missionId").unwrap_or_default(),
        query.take("runId").unwrap_or_default(),
    );
    query.finish()?;
    let filter = ListFilter {
        statuses: &statuses,
        group: &group,
        assign_to: &assign_to,
        mission_id: &mission_id,
        run_id: &run_id,
    };
    let after = page.after.clone().unwrap_or_default();
    let tasks = actions::list(&rt, &auth.scope, &filter, &after, page.fetch()).await?;
    Ok(page.respond(tasks, |t| &t.id))
}

/// Create a task, `pending` (or `draft`); it runs once its dependencies are done (spec §5.4).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = TaskRequest,
    responses((status = 201, body = Task), (status = 400, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "an open task of the group has this title")))]
pub async fn create_task(
    State(rt): State<Runtime>,
    auth: AuthContext,
    body: JsonObject,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let (changes, draft) = input::read(body, true)?;
    let task = create::create(&rt, &auth.scope, changes, draft).await?;
    Ok((StatusCode::CREATED, Json(task)))
}

/// Read one task (spec §5.4).
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = Task), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_task(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    Ok(Json(actions::get(&rt, &auth.scope, &id).await?))
}

/// Change a task (spec §5.4): priority, metadata and deadline while open; the rest in draft,
/// pending or failed.
#[utoipa::path(patch, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path)), request_body = TaskPatch,
    responses((status = 200, body = Task), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)))]
pub async fn update_task(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Task>, ApiError> {
    let (changes, _) = input::read(body, false)?;
    Ok(Json(create::update(&rt, &auth.scope, &id, changes).await?))
}

/// Delete a task, stopping it first; `force=true` fails its open dependents (spec §5.4).
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path), ("force" = Option<bool>, Query)),
    responses((status = 204), (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)))]
pub async fn delete_task(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let force = query.flag("force")?;
    query.finish()?;
    actions::delete(&rt, &auth.scope, &id, force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An action body: `{}` (and `stream` for `run`).
fn empty_body(body: JsonObject, known: &[&str]) -> Result<Fields, ApiError> {
    Ok(Fields::new(body.0, known, &[]))
}

/// Run a task: `draft` or `failed` → `pending`; a task already under way is left as it is
/// (spec §5.5). With `stream: true`, the answer follows the task to its end (spec §5.6).
#[utoipa::path(post, path = "/v1/tasks/{id}/run", tag = "tasks", params(("id" = String, Path)),
    request_body = RunRequest,
    responses((status = 200, description = "the task, or with `stream: true` a text/event-stream of task.chunk frames ending in [DONE]",
               content((Task = "application/json"), (String = "text/event-stream"))),
              (status = 404, body = crate::api::ErrorBody),
              (status = 409, body = crate::api::ErrorBody, description = "the task is done")))]
pub async fn run_task(
    State(state): State<AppState>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let mut f = empty_body(body, &["stream"])?;
    let follow = f.boolean("stream").into_option().unwrap_or(false);
    f.finish()?;
    if follow {
        return stream::follow(state, auth, id).await;
    }
    Ok(Json(actions::run(&state.runtime, &auth.scope, &id).await?).into_response())
}

macro_rules! action {
    ($name:ident, $path:literal, $call:path, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "tasks", params(("id" = String, Path)),
            responses((status = 200, body = Task), (status = 400, body = crate::api::ErrorBody),
                      (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)))]
        pub async fn $name(
            State(rt): State<Runtime>,
            auth: AuthContext,
            Path(id): Path<String>,
            body: JsonObject,
        ) -> Result<Json<Task>, ApiError> {
            empty_body(body, &[])?.finish()?;
            Ok(Json($call(&rt, &auth.scope, &id).await?))
        }
    };
}

action!(
    pause_task,
    "/v1/tasks/{id}/pause",
    actions::pause,
    "Pause a task: back to `draft`; a running attempt is cancelled, no retry consumed (spec §5.5)."
);
action!(
    retry_task,
    "/v1/tasks/{id}/retry",
    actions::retry,
    "Retry a failed task: `pending` with retries reset (spec §5.5)."
);
action!(
    kill_task,
    "/v1/tasks/{id}/kill",
    actions::kill,
    "Kill a task: `failed` with error `killed`; running work and a pending approval are cancelled (spec §5.5)."
);
action!(
    reassess_task,
    "/v1/tasks/{id}/reassess",
    actions::reassess,
    "Re-run the assessment on the current output; done and failed flip accordingly (spec §5.5)."
);
action!(
    queue_task,
    "/v1/tasks/{id}/queue",
    actions::queue,
    "Queue a draft task: `pending` (spec §5.5)."
);
