//! `/v1/approvals`: human decisions on side-effect tasks (spec §5.9).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use super::input::{Fields, JsonObject, Page, QueryParams};
use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::tasks::approvals::{self, Approval, Decision, ID_PREFIX};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ApproveRequest {
    #[schema(max_length = 4000)]
    note: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RejectRequest {
    /// The agent receives it in its next attempt unless `final`.
    #[schema(min_length = 1, max_length = 8000)]
    feedback: String,
    /// `true`: the task fails (`rejected`) instead of running again.
    #[serde(rename = "final")]
    is_final: Option<bool>,
}

/// List approvals, optionally by status or task (spec §5.9).
#[utoipa::path(get, path = "/v1/approvals", tag = "approvals",
    params(("status" = Option<String>, Query, description = "pending, approved, rejected or cancelled", pattern = r"^(pending|approved|rejected|cancelled)?$"),
           ("taskId" = Option<String>, Query), ("limit" = Option<i64>, Query), ("after" = Option<String>, Query, pattern = r"^apr_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses((status = 200, body = [Approval]), (status = 400, body = crate::api::ErrorBody)))]
pub async fn list_approvals(
    State(rt): State<Runtime>,
    auth: AuthContext,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let page = Page::from_query(&mut query, ID_PREFIX)?;
    let status = query.take("status").unwrap_or_default();
    if !["", "pending", "approved", "rejected", "cancelled"].contains(&status.as_str()) {
        return Err(ApiError::invalid_field(
            "status",
            "must be pending, approved, rejected or cancelled",
        ));
    }
    let task_id = query.take("taskId").unwrap_or_default();
    query.finish()?;
    let after = page.after.clone().unwrap_or_default();
    let found = approvals::list(&rt, &auth.scope, &status, &task_id, &after, page.fetch()).await?;
    Ok(page.respond(found, |a| &a.id))
}

/// Read one approval (spec §5.9).
#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "approvals", params(("id" = String, Path)),
    responses((status = 200, body = Approval), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_approval(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Approval>, ApiError> {
    Ok(Json(approvals::get(&rt, &auth.scope, &id).await?))
}

/// Approve: the task is done (spec §5.9).
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals", params(("id" = String, Path)),
    request_body = ApproveRequest,
    responses((status = 200, body = Approval), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)))]
pub async fn approve_approval(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Approval>, ApiError> {
    let mut f = Fields::new(body.0, &["note"], &[]);
    let note = f.string("note", 0, 4000).into_option();
    f.finish()?;
    Ok(Json(
        approvals::decide(&rt, &auth.scope, &id, Decision::Approve { note }).await?,
    ))
}

/// Reject: the task runs again with the feedback, or fails when `final` (spec §5.9).
#[utoipa::path(post, path = "/v1/approvals/{id}/reject", tag = "approvals", params(("id" = String, Path)),
    request_body = RejectRequest,
    responses((status = 200, body = Approval), (status = 400, body = crate::api::ErrorBody),
              (status = 404, body = crate::api::ErrorBody), (status = 409, body = crate::api::ErrorBody)))]
pub async fn reject_approval(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Approval>, ApiError> {
    let mut f = Fields::new(body.0, &["feedback", "final"], &[]);
    let feedback = f.string("feedback", 1, 8000).into_option();
    let is_final = f.boolean("final").into_option().unwrap_or(false);
    if feedback.is_none() && !f.has_error("feedback") {
        f.error("feedback".into(), "required");
    }
    f.finish()?;
    let feedback = feedback.unwrap_or_default();
    Ok(Json(
        approvals::decide(&rt, &auth.scope, &id, Decision::Reject { feedback, is_final }).await?,
    ))
}
