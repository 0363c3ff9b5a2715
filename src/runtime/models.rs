//! The models a caller may name (spec §3.14): the scope's agents, the `mock` models and the
//! provider models the operator lists, as OpenAI's model objects.

use serde::Serialize;
use utoipa::ToSchema;

use super::Runtime;
use super::agents::{self, Agent};
use crate::config::ProviderKind;
use crate::error::ApiError;
use crate::providers::{MOCK_MODELS, split_model};
use crate::scope::Scope;

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRef {
    pub agent_id: String,
    pub model: String,
}

/// OpenAI's model object, with what Polpo adds for agents.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Model {
    /// The agent's name, or a model string such as `mock/echo`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds: an agent's creation; `0` for provider models, whose creation is not known.
    pub created: i64,
    /// `agent`, or the provider's name.
    pub owned_by: String,
    /// Agents only: the agent's id and the model it runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polpo: Option<AgentRef>,
}

impl Model {
    fn of_agent(agent: Agent) -> Self {
        Self {
            created: agent.created_at.ms() / 1000,
            polpo: Some(AgentRef {
                agent_id: agent.id,
                model: agent.model,
            }),
            id: agent.name,
            object: "model",
            owned_by: "agent".into(),
        }
    }

    fn of_provider(id: String, provider: &str) -> Self {
        Self {
            id,
            object: "model",
            created: 0,
            owned_by: provider.to_string(),
            polpo: None,
        }
    }
}

/// Agents read per page while listing.
const PAGE: i64 = 1000;

/// The `mock` models and the listed models of every usable provider, in that order.
fn provider_models(rt: &Runtime) -> Vec<Model> {
    let mut out = Vec::new();
    for provider in rt.providers.all_usable() {
        if provider.kind == ProviderKind::Mock {
            out.extend(
                MOCK_MODELS
                    .iter()
                    .map(|m| Model::of_provider(format!("{}/{m}", provider.name), &provider.name)),
            );
        }
    }
    for provider in rt.providers.all_usable() {
        out.extend(
            provider
                .models
                .iter()
                .map(|m| Model::of_provider(format!("{}:{m}", provider.name), &provider.name)),
        );
    }
    out
}

/// Every agent of the scope (by name, in creation order), then the provider models.
pub async fn list(rt: &Runtime, scope: &Scope) -> Result<Vec<Model>, ApiError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = agents::list(&rt.db, scope, after.as_deref(), PAGE).await?;
        let full = i64::try_from(page.len()).unwrap_or(i64::MAX) == PAGE;
        after = page.last().map(|a| a.id.clone());
        out.extend(page.into_iter().map(Model::of_agent));
        if !full {
            break;
        }
    }
    out.extend(provider_models(rt));
    Ok(out)
}

/// An agent (by name or id) or a listed provider model, `mock/echo` and `mock:echo` alike.
pub async fn get(rt: &Runtime, scope: &Scope, id: &str) -> Result<Model, ApiError> {
    if split_model(id).is_none()
        && let Some(agent) = agents::find(&rt.db, scope, id).await?
    {
        return Ok(Model::of_agent(agent));
    }
    let wanted = split_model(id);
    provider_models(rt)
        .into_iter()
        .find(|m| split_model(&m.id) == wanted && wanted.is_some())
        .ok_or_else(|| ApiError::NotFound {
            message: format!("The model {id:?} does not exist"),
            param: Some("model".into()),
        })
}
