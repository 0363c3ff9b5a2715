//! `/v1/models`: what OpenAI clients may name as `model` (spec §3.14). Only OpenAI clients call
//! these routes, so their errors use the chat shape (§3.11).

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::ApiError;
use crate::runtime::Runtime;
use crate::runtime::models::{self, Model};

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<Model>,
}

/// List the scope's agents, the `mock` models and the operator's listed provider models
/// (spec §3.14).
#[utoipa::path(get, path = "/v1/models", tag = "models",
    responses((status = 200, body = ModelList)))]
pub async fn list_models(State(rt): State<Runtime>, auth: AuthContext) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList {
        object: "list",
        data: models::list(&rt, &auth.scope).await?,
    }))
}

/// Retrieve an agent (name or id) or a listed model as a model (spec §3.14). A model string's
/// `/` travels percent-encoded (`mock%2Fecho`, as the SDKs send it), or use `mock:echo`.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", params(("id" = String, Path)),
    responses((status = 200, body = Model), (status = 404, description = "OpenAI error shape")))]
pub async fn get_model(
    State(rt): State<Runtime>,
    auth: AuthContext,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    Ok(Json(models::get(&rt, &auth.scope, &id).await?))
}
